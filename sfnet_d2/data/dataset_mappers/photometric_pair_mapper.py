"""
The two views of one image that RobustNet's instance selective whitening (ISW) measures its
covariance statistics on (official ``shachoi/RobustNet`` ``datasets/__init__.py``
``CityScapesAug``: the full training image, once unchanged and once through
``ColorJitter(0.8, 0.8, 0.8, 0.3)`` + ``RandomGaussianBlur``; no crop, no resize). Training
batches do not carry such pairs, so the statistics (sfnet_d2/engine/isw_hook.py) read them with
this mapper instead of a second output of the training mapper. User documentation:
docs/ROBUSTNET.md.

The jitter and blur are the project's training operations (sfnet_d2/data/transforms.py, the
official ones), seeded per call so that every process and every rerun draws the same views.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from sfnet_d2.data.transforms import RandomColorJitter, RandomGaussianBlur

__all__ = ["PhotometricPairMapper"]


class PhotometricPairMapper:
    """A dataset record and a seed -> ``(original, augmented)``: the full image as uint8
    (3, H, W) tensors, the second after colour jitter (always applied) and an optional Gaussian
    blur (``MODEL.ROBUSTNET.COVSTAT_COLOR_JITTER`` / ``COVSTAT_BLUR_SIGMA_RANGE``)."""

    @configurable
    def __init__(self, *, image_format: str = "RGB",
                 color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.3),
                 blur_sigma_range: Optional[Sequence[float]] = (0.15, 1.3)):
        if len(color_jitter) != 4:
            raise ValueError("MODEL.ROBUSTNET.COVSTAT_COLOR_JITTER must be [brightness, contrast, "
                             f"saturation, hue], got {list(color_jitter)}")
        augs = [RandomColorJitter(*color_jitter, image_format=image_format)]
        if blur_sigma_range:
            augs.append(RandomGaussianBlur(blur_sigma_range, prob=1.0))
        self.augmentations = T.AugmentationList(augs)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.ROBUSTNET
        return {"image_format": cfg.INPUT.FORMAT, "color_jitter": node.COVSTAT_COLOR_JITTER,
                "blur_sigma_range": node.COVSTAT_BLUR_SIGMA_RANGE or None}

    def __call__(self, record: dict, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        try:
            image = utils.read_image(record["file_name"], format=self.image_format)
        except (OSError, ValueError, SyntaxError) as e:
            raise OSError(f"ISW statistics: cannot read image {record['file_name']}: {e}") from e
        # The detectron2 augmentations draw from numpy's global generator: seed it for this view
        # and give the training stream its state back afterwards.
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            aug_input = T.AugInput(image.copy())
            self.augmentations(aug_input)
        finally:
            np.random.set_state(state)

        def chw(a):
            return torch.as_tensor(np.ascontiguousarray(a.transpose(2, 0, 1)))

        return chw(image), chw(aug_input.image)
