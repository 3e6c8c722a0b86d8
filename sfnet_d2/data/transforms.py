"""
Training augmentations of the official SFNet recipe, as detectron2 augmentations
(lxtGH/SFSegNets@ba475ba datasets/__init__.py ``setup_loaders``, transforms/joint_transforms.py,
transforms/transforms.py; docs/TRAINING.md):

1. ``RandomScale``: rescale the whole image by a factor drawn from ``INPUT.SFNET.SCALE_RANGE``
   (bicubic for the image, nearest for the label), as the official ``RandomSizeAndCrop``;
2. ``PadToSize``: pad to the crop size where the image is smaller (image with 0, label with the
   ignore value), either centred as the official ``RandomCrop(nopad=False)`` or bottom/right;
3. ``CentroidAwareRandomCrop``: a random crop; for a class-uniform sample (a record carrying a
   class centroid, see ``uniform_sampling.py``) the crop is placed so that it contains the
   centroid, as the official centroid-aware crop does;
4. horizontal flip;
5. ``RandomColorJitter`` (official ``ColorJitter(0.25, 0.25, 0.25, 0.25)``) and
   ``RandomGaussianBlur`` (official ``RandomGaussianBlur``, sigma in [0.15, 1.3], always
   applied): photometric, they change the image only.

Geometric steps act on image, label and centroid together (``CentroidAugInput``), so the three
stay aligned.
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, NoOpTransform, PadTransform, Transform
from PIL import Image, ImageEnhance
from scipy import ndimage

__all__ = [
    "RandomScale",
    "PadToSize",
    "CentroidAwareRandomCrop",
    "CentroidAugInput",
    "ColorJitterTransform",
    "RandomColorJitter",
    "GaussianBlurTransform",
    "RandomGaussianBlur",
    "build_sfnet_train_augmentations",
]


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


PAD_MODES = ("centered", "bottom_right")


class PadToSize(T.Augmentation):
    """
    Pad up to ``size`` (h, w) along each side that is smaller than it.

    ``mode="bottom_right"`` adds exactly the missing rows/columns at the bottom/right.
    ``mode="centered"`` is the official ``RandomCrop(nopad=False)``: ``(size - side) // 2 + 1``
    on both sides of a short dimension, so the padded image is 1-2 pixels larger than the crop
    and the following random crop keeps the image near the crop's centre.
    """

    def __init__(self, size: Tuple[int, int], pad_value: float = 0, seg_pad_value: int = 255,
                 mode: str = "bottom_right"):
        super().__init__()
        if mode not in PAD_MODES:
            raise ValueError(f"INPUT.SFNET.PAD_MODE={mode!r} is not one of {PAD_MODES}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        th, tw = self.size
        if h >= th and w >= tw:
            return NoOpTransform()
        if self.mode == "centered":
            pad_y = (th - h) // 2 + 1 if th > h else 0
            pad_x = (tw - w) // 2 + 1 if tw > w else 0
            x0, y0, x1, y1 = pad_x, pad_y, pad_x, pad_y
        else:
            x0, y0, x1, y1 = 0, 0, max(tw - w, 0), max(th - h, 0)
        return PadTransform(x0, y0, x1, y1, orig_w=w, orig_h=h, pad_value=self.pad_value,
                            seg_pad_value=self.seg_pad_value)


class CentroidAugInput(T.AugInput):
    """
    detectron2's ``AugInput`` plus an optional ``centroid`` ((x, y) pixel of the input image)
    that every geometric transform moves along with the image. ``CentroidAwareRandomCrop`` reads
    it; after augmentation it holds the centroid's position in the output (``None`` if the
    record had none).
    """

    def __init__(self, image, *, sem_seg=None, centroid: Optional[Sequence[float]] = None):
        super().__init__(image, sem_seg=sem_seg)
        self.centroid = None if centroid is None else np.asarray(centroid, dtype=np.float64)

    def transform(self, tfm: Transform) -> None:
        super().transform(tfm)
        if self.centroid is not None:
            self.centroid = tfm.apply_coords(self.centroid.reshape(1, 2).copy())[0]


class CentroidAwareRandomCrop(T.Augmentation):
    """
    Random ``crop_size`` (h, w) crop of an image at least that large (pad it first).

    Without a centroid, the top-left corner is uniform over all valid positions (as
    ``T.RandomCrop("absolute")`` and the official crop). With a centroid (cx, cy) the official
    rule places the corner at ``x1 ~ U{cx - w + 1, ..., cx}`` (likewise y1), clamped into the
    image, so that the centroid pixel lies inside the crop. (The official bound ``cx - w`` can
    put the centroid one pixel outside; we keep it inside, as the official comment intends.)
    """

    def __init__(self, crop_size: Tuple[int, int]):
        super().__init__()
        self._init(locals())

    def __call__(self, aug_input) -> Transform:
        # the centroid is optional: inputs without the attribute (plain AugInput) crop uniformly
        tfm = self.get_transform(aug_input.image, getattr(aug_input, "centroid", None))
        aug_input.transform(tfm)
        return tfm

    def get_transform(self, image, centroid=None):
        h, w = image.shape[:2]
        ch, cw = self.crop_size
        if h < ch or w < cw:
            raise ValueError(
                f"CentroidAwareRandomCrop: a {w}x{h} (WxH) image is smaller than the {cw}x{ch} "
                "crop; put PadToSize before the crop"
            )
        if centroid is None:
            x0 = np.random.randint(w - cw + 1)
            y0 = np.random.randint(h - ch + 1)
        else:
            cx = int(min(max(math.floor(centroid[0]), 0), w - 1))
            cy = int(min(max(math.floor(centroid[1]), 0), h - 1))
            x0 = min(max(np.random.randint(cx - cw + 1, cx + 1), 0), w - cw)
            y0 = min(max(np.random.randint(cy - ch + 1, cy + 1), 0), h - ch)
        return CropTransform(int(x0), int(y0), cw, ch)


# ---- photometric (image-only) ----------------------------------------------------------------

class _ImageOnlyTransform(Transform):
    """A transform that changes pixel values only: labels and coordinates pass unchanged."""

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return NoOpTransform()  # a photometric change has no geometric inverse to undo


def _as_rgb_pil(image: np.ndarray, image_format: str) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Colour jitter needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}; "
            "set INPUT.SFNET.COLOR_JITTER.ENABLED False for other inputs"
        )
    rgb = image[:, :, ::-1] if image_format == "BGR" else image
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


class ColorJitterTransform(_ImageOnlyTransform):
    """
    Apply brightness, contrast, saturation (PIL ``ImageEnhance`` factors, 1 = unchanged) and a
    hue shift (fraction of a full turn in HSV, in [-0.5, 0.5]) in the given ``order``, the
    operations of the official ``transforms.ColorJitter``.
    """

    def __init__(self, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0, order: Sequence[str] = ("brightness", "contrast", "saturation",
                                                          "hue"), image_format: str = "RGB"):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"Colour jitter supports INPUT.FORMAT RGB or BGR, got {image_format!r}"
            )
        if not -0.5 <= hue <= 0.5:
            raise ValueError(f"hue shift must be in [-0.5, 0.5], got {hue}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        pil = _as_rgb_pil(img, self.image_format)
        for op in self.order:
            if op == "brightness":
                pil = ImageEnhance.Brightness(pil).enhance(self.brightness)
            elif op == "contrast":
                pil = ImageEnhance.Contrast(pil).enhance(self.contrast)
            elif op == "saturation":
                pil = ImageEnhance.Color(pil).enhance(self.saturation)
            elif op == "hue":
                pil = _shift_hue(pil, self.hue)
            else:
                raise ValueError(f"Unknown colour jitter operation {op!r}")
        out = np.asarray(pil)
        return np.ascontiguousarray(out[:, :, ::-1] if self.image_format == "BGR" else out)


def _shift_hue(pil: Image.Image, hue: float) -> Image.Image:
    if hue == 0:
        return pil
    h, s, v = pil.convert("HSV").split()
    # PIL's HSV hue is 0..255 for a full turn; the shift wraps around (official: uint8 add)
    shifted = (np.asarray(h, dtype=np.int64) + int(round(hue * 255))) % 256
    h = Image.fromarray(shifted.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class RandomColorJitter(T.Augmentation):
    """
    Official ``ColorJitter(brightness, contrast, saturation, hue)``: each enabled operation
    (value > 0) with a factor drawn from ``U[max(0, 1 - v), 1 + v]`` (hue: a shift from
    ``U[-v, v]``), applied in a random order. The official Cityscapes scripts use 0.25 for all
    four (``--color_aug 0.25``).
    """

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25,
                 saturation: float = 0.25, hue: float = 0.25, image_format: str = "RGB"):
        super().__init__()
        for name, value in (("BRIGHTNESS", brightness), ("CONTRAST", contrast),
                            ("SATURATION", saturation)):
            if value < 0:
                raise ValueError(f"INPUT.SFNET.COLOR_JITTER.{name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"INPUT.SFNET.COLOR_JITTER.HUE must be in [0, 0.5], got {hue}")
        self._init(locals())

    def get_transform(self, image):
        params = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
        order = []
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if v > 0:
                params[name] = float(np.random.uniform(max(0.0, 1.0 - v), 1.0 + v))
                order.append(name)
        if self.hue > 0:
            params["hue"] = float(np.random.uniform(-self.hue, self.hue))
            order.append("hue")
        if not order:
            return NoOpTransform()
        order = [order[i] for i in np.random.permutation(len(order))]
        return ColorJitterTransform(order=tuple(order), image_format=self.image_format, **params)


class GaussianBlurTransform(_ImageOnlyTransform):
    """
    Gaussian blur of each channel with standard deviation ``sigma`` (pixels), borders
    replicated, kernel truncated at 4 sigma: the filter of the official ``RandomGaussianBlur``
    (skimage ``gaussian``, which calls ``scipy.ndimage.gaussian_filter`` this way). The result is
    rounded to uint8 (the official code truncates, a -0.5 grey-level bias we do not copy).
    """

    def __init__(self, sigma: float):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"Gaussian blur sigma must be > 0, got {sigma}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        sigmas = (self.sigma, self.sigma) + (0,) * (img.ndim - 2)
        out = ndimage.gaussian_filter(img.astype(np.float64), sigma=sigmas, mode="nearest",
                                      truncate=4.0)
        if img.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(img.dtype)


class RandomGaussianBlur(T.Augmentation):
    """With probability ``prob``, blur with sigma drawn from ``U[sigma_range]`` (official: p=1,
    sigma = 0.15 + U[0, 1) * 1.15)."""

    def __init__(self, sigma_range: Sequence[float] = (0.15, 1.3), prob: float = 1.0):
        super().__init__()
        if len(sigma_range) != 2 or not 0 < sigma_range[0] <= sigma_range[1]:
            raise ValueError(
                "INPUT.SFNET.GAUSSIAN_BLUR.SIGMA_RANGE must be [min, max] with 0 < min <= max, "
                f"got {list(sigma_range)}"
            )
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.SFNET.GAUSSIAN_BLUR.PROB must be in [0, 1], got {prob}")
        self._init(locals())

    def get_transform(self, image):
        if self.prob < 1.0 and np.random.rand() >= self.prob:
            return NoOpTransform()
        return GaussianBlurTransform(float(np.random.uniform(*self.sigma_range)))


def build_sfnet_train_augmentations(
    scale_range: Sequence[float], crop_size: Sequence[int], flip_prob: float, ignore_value: int,
    *, pad_mode: str = "bottom_right", color_jitter: Optional[Sequence[float]] = None,
    blur_sigma_range: Optional[Sequence[float]] = None, blur_prob: float = 1.0,
    image_format: str = "RGB",
):
    """
    The official training pipeline: scale, pad, (centroid-aware) crop, flip, then the optional
    photometric steps on the crop. ``color_jitter`` = (brightness, contrast, saturation, hue) or
    None (off); ``blur_sigma_range`` = (min, max) or None (off).
    """
    if len(crop_size) == 1:
        crop_size = (crop_size[0], crop_size[0])
    if len(crop_size) != 2 or min(crop_size) <= 0:
        raise ValueError(f"INPUT.SFNET.CROP_SIZE must be [size] or [h, w] > 0, got {list(crop_size)}")
    if len(scale_range) != 2:
        raise ValueError(f"INPUT.SFNET.SCALE_RANGE must be [min, max], got {list(scale_range)}")
    crop_size = tuple(int(s) for s in crop_size)
    augs = [
        RandomScale(*scale_range),
        PadToSize(crop_size, pad_value=0, seg_pad_value=ignore_value, mode=pad_mode),
        CentroidAwareRandomCrop(crop_size),
    ]
    if flip_prob > 0:
        augs.append(T.RandomFlip(prob=flip_prob, horizontal=True, vertical=False))
    if color_jitter is not None:
        if len(color_jitter) != 4:
            raise ValueError(
                "colour jitter needs (brightness, contrast, saturation, hue), got "
                f"{list(color_jitter)}"
            )
        augs.append(RandomColorJitter(*color_jitter, image_format=image_format))
    if blur_sigma_range is not None:
        augs.append(RandomGaussianBlur(blur_sigma_range, blur_prob))
    return augs
