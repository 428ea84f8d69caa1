"""P2P on CIFAR-10 (a prepared tfds 'cifar10'; no masks), as in the paper.

    python train/main.py --config=train/configs/cifar10.py --config.data.root=PATH

See docs/data.md for the folder layout `config.data.root` must have.
"""

from train.configs.paper import paper_config


def get_config():
    """The paper's hyperparameters on cifar10."""
    config = paper_config(name="tfds", layout="cifar10", eval_split="test", num_epochs=100)
    # CIFAR: resize to 256 and random-crop 224 in the reference: a near-full-area crop.
    config.data.crop_scale = (0.75, 1.0)
    return config
