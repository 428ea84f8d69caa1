"""The P2P training program: configs, training loop, evaluation, checkpointing."""
