"""P2P on ImageNet-9 as in the paper; test = backgrounds challenge "original" + fg masks.

    python train/main.py --config=train/configs/imagenet9.py --config.data.root=PATH

See docs/data.md for the folder layout `config.data.root` must have.
"""

from train.configs.paper import paper_config


def get_config():
    """The paper's hyperparameters on imagenet9."""
    config = paper_config(name="folders", layout="imagenet9", eval_split="test", num_epochs=100)
    return config
