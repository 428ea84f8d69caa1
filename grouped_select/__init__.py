"""grouped_select: P2P (instance-wise grouped feature selection) in JAX and Flax NNX."""
