"""
Training augmentations of the official SFNet recipe (``RandomSizeAndCrop``), as detectron2
augmentations: rescale the whole image by a random factor (bicubic for the image, nearest for the
label), pad to the crop size (image with 0, label with the ignore value), random crop.
"""
from typing import Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, PadTransform
from PIL import Image

__all__ = ["RandomScale", "PadToSize", "build_sfnet_train_augmentations"]


class RandomScale(T.Augmentation):
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float, max_scale: float, interp=Image.BICUBIC):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(
                f"INPUT.SFNET.SCALE_RANGE must be 0 < min <= max, got [{min_scale}, {max_scale}]"
            )
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


class PadToSize(T.Augmentation):
    """Pad on the right/bottom up to ``size`` (h, w) where the image is smaller."""

    def __init__(self, size: Tuple[int, int], pad_value: float = 0, seg_pad_value: int = 255):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return NoOpTransform()
        return PadTransform(0, 0, pad_w, pad_h, orig_w=w, orig_h=h, pad_value=self.pad_value,
                            seg_pad_value=self.seg_pad_value)


def build_sfnet_train_augmentations(
    scale_range: Sequence[float], crop_size: Sequence[int], flip_prob: float, ignore_value: int
):
    if len(crop_size) == 1:
        crop_size = (crop_size[0], crop_size[0])
    if len(crop_size) != 2 or min(crop_size) <= 0:
        raise ValueError(f"INPUT.SFNET.CROP_SIZE must be [size] or [h, w] > 0, got {list(crop_size)}")
    if len(scale_range) != 2:
        raise ValueError(f"INPUT.SFNET.SCALE_RANGE must be [min, max], got {list(scale_range)}")
    augs = [
        RandomScale(*scale_range),
        PadToSize(tuple(crop_size), pad_value=0, seg_pad_value=ignore_value),
        T.RandomCrop("absolute", tuple(crop_size)),
    ]
    if flip_prob > 0:
        augs.append(T.RandomFlip(prob=flip_prob, horizontal=True, vertical=False))
    return augs
