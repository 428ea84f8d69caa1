"""P2P on ImageNet (class folders; 20 epochs), as in the paper.

    python train/main.py --config=train/configs/imagenet.py --config.data.root=PATH

See docs/data.md for the folder layout `config.data.root` must have.
"""

from train.configs.paper import paper_config


def get_config():
    """The paper's hyperparameters on imagenet."""
    config = paper_config(
        name="folders",
        layout="imagenet",
        eval_split="validation",
        num_epochs=20,
    )
    config.data.eval_crop_fraction = 0.875  # resize 256, centre crop 224
    return config
