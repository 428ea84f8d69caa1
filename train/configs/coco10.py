"""P2P on COCO-10 as in the paper: 10 single-category COCO classes, instance masks.

    python train/main.py --config=train/configs/coco10.py --config.data.root=PATH

See docs/data.md for the folder layout `config.data.root` must have.
"""

from train.configs.paper import paper_config


def get_config():
    """The paper's hyperparameters on coco10."""
    config = paper_config(name="folders", layout="coco10", eval_split="test", num_epochs=100)
    return config
