"""P2P on BAM scene (scene labels, object masks), as in the paper.

    python train/main.py --config=train/configs/bam_scene.py --config.data.root=PATH

See docs/data.md for the folder layout `config.data.root` must have.
"""

from train.configs.paper import paper_config


def get_config():
    """The paper's hyperparameters on bam_scene."""
    config = paper_config(name="folders", layout="bam_scene", eval_split="test", num_epochs=100)
    # The reference pairs BAM masks by sorted order and crops images to the mask size.
    config.data.mask_pairing = "sorted"
    config.data.crop_to_mask = True
    return config
