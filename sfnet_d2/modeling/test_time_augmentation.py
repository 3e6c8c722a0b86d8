"""
Inference protocols of the official SFNet ``eval.py``, as a wrapper around a trained semantic
segmentation model (detectron2's ``SemanticSegmentor`` contract: a list of dicts with ``image``
(C, H, W) on the 0-255 scale in, a list of ``{"sem_seg": (K, height, width) logits}`` out), so that
detectron2's ``inference_on_dataset`` and evaluators work unchanged:

* whole image (``TEST.SFNET.MODE "whole"``): one forward pass over the image;
* sliding window (``"slide"``): square windows of ``SLIDE_CROP_SIZE`` with ``SLIDE_OVERLAP``
  cover the image; the logits of overlapping windows are averaged per pixel;
* multi-scale + flip (``SCALES``, ``FLIP``), combined with either mode: the image is resized by
  each factor (and mirrored), each pass's logits are resized back to the image size, and all passes
  are averaged.

Each pass calls the wrapped model itself, so its own preprocessing (``PIXEL_MEAN``/``PIXEL_STD``,
zero padding to ``size_divisibility`` and cropping it back) applies to every window and scale.

Fidelity to the official ``eval.py`` (lxtGH/SFSegNets@ba475ba eval.py and
scripts/submit_test/*.sh; line-level details in docs/EVALUATION.md):

* raw logits are averaged over windows, scales and flips, then argmax'ed (the official model's
  eval forward returns ``Upsample(logits)`` with no softmax, and ``eval.py`` takes ``np.mean`` of
  those; its ``softmax`` method is never called);
* the image is resized with Pillow-style bilinear filtering (antialiased when shrinking) to
  ``(int(H * s), int(W * s))`` and rounded back to uint8, as ``PIL.Image.resize(BILINEAR)`` does;
* window placement: stride ``ceil(tile * (1 - overlap))``, ``ceil((L - tile) / stride) + 1``
  windows per axis, the last one shifted back to end at the border; the tile grows with the scale
  factor when it is above 1 (``tile = int(crop * max(s, 1))``);
* an image side shorter than the tile gets one window of the image's own length: the official
  code does not pad the window to the tile size (our model still pads to ``size_divisibility``);
* logits are resized back with ``align_corners=True`` in whole mode (official ``F.upsample``) and
  with half-pixel bilinear (``align_corners=False``, = ``cv2.resize(INTER_LINEAR)``) in slide mode.

Deliberate differences: the per-pixel window count is the number of windows covering each pixel
(the official ``count_predictions[y1:y2, x1:x2] += 1`` indexes a (classes, H, W) array with
image coordinates, so its counts are wrong; we average correctly); a side much shorter than the
tile gets one window (the official formula gives zero there and fails).
"""
import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "SemanticSegmentorWithTTA",
    "wrap_with_inference_protocol",
    "sliding_window_spans",
    "sliding_windows",
    "resize_image",
]

_MODES = ("whole", "slide")


def sliding_window_spans(length: int, tile: int, stride: int) -> List[Tuple[int, int]]:
    """
    ``[start, end)`` of the windows along one image axis of ``length`` pixels, placed as the
    official ``sliding_window_cropping``: starts at multiples of ``stride``, each window ``tile``
    long and clipped to the border, a clipped window shifted back so that it ends at the border
    (still ``tile`` long when the axis allows it). An axis shorter than ``tile`` is one window.
    """
    if length < 1 or tile < 1 or stride < 1:
        raise ValueError(f"sliding windows need positive length/tile/stride, got "
                         f"{length}/{tile}/{stride}")
    # The official count, ceil((L - tile) / stride) + 1, reaches 0 when L <= tile - stride: keep
    # one window there (the official code would crop nothing and fail).
    count = max(math.ceil((length - tile) / stride) + 1, 1)
    spans = []
    for i in range(count):
        end = min(i * stride + tile, length)
        spans.append((max(end - tile, 0), end))
    return spans


def sliding_windows(height: int, width: int, tile: int,
                    overlap: float) -> List[Tuple[int, int, int, int]]:
    """
    The ``(y0, y1, x0, x1)`` windows (end exclusive) covering a ``height x width`` image with
    square ``tile`` windows overlapping by the fraction ``overlap``; stride
    ``ceil(tile * (1 - overlap))`` as in the official ``eval.py``. Ordered column by column of
    windows (x outer, y inner), as the official loop.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding-window overlap must be in [0, 1), got {overlap}")
    stride = math.ceil(tile * (1.0 - overlap))
    return [(y0, y1, x0, x1)
            for x0, x1 in sliding_window_spans(width, tile, stride)
            for y0, y1 in sliding_window_spans(height, tile, stride)]


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """
    Bilinear resize of a (C, H, W) image to ``size`` = (h, w) as ``PIL.Image.resize(BILINEAR)``
    does in the official ``eval.py``: antialiased (a wider triangle filter) when shrinking,
    half-pixel centres; a uint8 image is rounded back to uint8 (Pillow's integer arithmetic differs
    from this by at most 1 grey level). Same size: the image itself.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear",
                        align_corners=False, antialias=True)[0]
    if image.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out


class SemanticSegmentorWithTTA(nn.Module):
    """
    Whole-image or sliding-window inference, optionally over several scales and with horizontal
    flip, around a semantic segmentation model that follows ``SemanticSegmentor``'s inference
    contract. Inference only. See the module docstring and docs/EVALUATION.md.
    """

    @configurable
    def __init__(self, model: nn.Module, *, mode: str = "whole", scales: Sequence[float] = (1.0,),
                 flip: bool = False, slide_crop_size: int = 832, slide_overlap: float = 1.0 / 3,
                 slide_crop_grows_with_scale: bool = True, slide_batch_size: int = 1):
        """
        Args:
            model: the trained model (a ``DistributedDataParallel`` is unwrapped); called with
                lists of ``{"image", "height", "width"}`` and must return ``sem_seg`` logits at
                ``(height, width)``.
            mode: "whole" or "slide".
            scales: resize factors of the image, e.g. (0.5, 1.0, 2.0); (1.0,) = single scale.
            flip: also run every scale on the horizontally mirrored image.
            slide_crop_size: side of the square sliding window at scales <= 1 (official 832).
            slide_overlap: fraction of the window shared with the next one, in [0, 1)
                (official 1/3).
            slide_crop_grows_with_scale: the window side at a scale s > 1 is
                ``int(slide_crop_size * s)``, as in the official code; False keeps it fixed.
            slide_batch_size: windows per forward pass (results do not depend on it in eval mode).
        """
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"TEST.SFNET.MODE={mode!r}: expected one of {_MODES}")
        scales = tuple(float(s) for s in scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"TEST.SFNET.SCALES={list(scales)}: expected one or more positive "
                             "resize factors, e.g. [0.5, 1.0, 2.0]")
        if not 0.0 <= slide_overlap < 1.0:
            raise ValueError(f"TEST.SFNET.SLIDE_OVERLAP={slide_overlap}: expected a fraction in "
                             "[0, 1), e.g. 0.3333333333333333 (official 1/3)")
        if slide_crop_size < 1 or slide_batch_size < 1:
            raise ValueError(f"TEST.SFNET.SLIDE_CROP_SIZE={slide_crop_size} and "
                             f"TEST.SFNET.SLIDE_BATCH_SIZE={slide_batch_size} must be >= 1")
        if isinstance(model, DistributedDataParallel):
            model = model.module  # every process runs its own shard of the test set
        self.model = model
        self.mode = mode
        self.scales = scales
        self.flip = bool(flip)
        self.slide_crop_size = int(slide_crop_size)
        self.slide_overlap = float(slide_overlap)
        self.slide_crop_grows_with_scale = bool(slide_crop_grows_with_scale)
        self.slide_batch_size = int(slide_batch_size)
        # Mirror the wrapped model's mode: detectron2's inference_context restores the wrapper's
        # mode after evaluating, which must not switch an inference-only model (the optimised
        # --eval-only model refuses train(True)) to training.
        self.train(model.training)
        logging.getLogger(__name__).info(f"Inference protocol: {self.describe()}")

    @classmethod
    def from_config(cls, cfg, model):
        t = cfg.TEST.SFNET
        return {
            "model": model,
            "mode": t.MODE,
            "scales": t.SCALES,
            "flip": t.FLIP,
            "slide_crop_size": t.SLIDE_CROP_SIZE,
            "slide_overlap": t.SLIDE_OVERLAP,
            "slide_crop_grows_with_scale": t.SLIDE_CROP_GROWS_WITH_SCALE,
            "slide_batch_size": t.SLIDE_BATCH_SIZE,
        }

    def describe(self) -> str:
        """One line saying what the wrapper does, for the log."""
        if self.mode == "whole":
            what = "whole image"
        else:
            stride = math.ceil(self.slide_crop_size * (1.0 - self.slide_overlap))
            what = (f"sliding window {self.slide_crop_size}x{self.slide_crop_size} (overlap "
                    f"{self.slide_overlap:.4g}, stride {stride}"
                    f"{', grows with scales > 1' if self.slide_crop_grows_with_scale else ''})")
        passes = len(self.scales) * (2 if self.flip else 1)
        return (f"{what}, scales {list(self.scales)}, flip {'on' if self.flip else 'off'}: "
                f"mean of the logits of {passes} pass(es) per image")

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        if self.training:
            raise RuntimeError("SemanticSegmentorWithTTA is for inference only: call .eval() "
                               "(detectron2's inference_on_dataset does) and train the model it "
                               "wraps directly")
        return [{"sem_seg": self._inference_one(x)} for x in batched_inputs]

    def _inference_one(self, inputs: Dict) -> torch.Tensor:
        image = inputs["image"]
        height, width = image.shape[-2:]
        total, passes = None, 0
        for scale in self.scales:
            # int() truncation as the official (int(w * scale), int(h * scale)) PIL size
            size = (int(height * scale), int(width * scale))
            if min(size) < 1:
                raise ValueError(
                    f"TEST.SFNET.SCALES: scale {scale} turns the {height}x{width} image "
                    f"{inputs.get('file_name', '')} into {size[0]}x{size[1]}; use larger scales"
                )
            scaled = resize_image(image, size)
            for flipped in ((False, True) if self.flip else (False,)):
                logits = self._logits(scaled.flip(-1) if flipped else scaled, scale)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (height, width):
                    # official: F.upsample(align_corners=True) in whole mode, cv2.resize
                    # (INTER_LINEAR, half-pixel centres) in slide mode
                    logits = F.interpolate(logits[None], size=(height, width), mode="bilinear",
                                           align_corners=self.mode == "whole")[0]
                total = logits if total is None else total + logits
                passes += 1
        mean = total / passes
        out_h, out_w = inputs.get("height", height), inputs.get("width", width)
        if (out_h, out_w) != (height, width):
            # the data mapper resized the image: back to the dataset's size, as SemanticSegmentor
            mean = sem_seg_postprocess(mean, (height, width), out_h, out_w)
        return mean

    def _logits(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """(K, h, w) logits of one (possibly resized or mirrored) (C, h, w) image."""
        if self.mode == "whole":
            return self._run([image])[0]
        tile = self.slide_crop_size
        if self.slide_crop_grows_with_scale:
            tile = int(tile * max(scale, 1.0))
        height, width = image.shape[-2:]
        windows = sliding_windows(height, width, tile, self.slide_overlap)
        total, count = None, None
        for i in range(0, len(windows), self.slide_batch_size):
            batch = windows[i:i + self.slide_batch_size]
            outputs = self._run([image[:, y0:y1, x0:x1] for y0, y1, x0, x1 in batch])
            for (y0, y1, x0, x1), logits in zip(batch, outputs):
                if total is None:
                    total = logits.new_zeros((logits.shape[0], height, width))
                    count = logits.new_zeros((height, width))
                total[:, y0:y1, x0:x1] += logits
                count[y0:y1, x0:x1] += 1
        # every pixel is covered: the first window starts at 0, the last ends at the border and
        # consecutive windows overlap or touch (stride <= tile)
        return total / count

    def _run(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        outputs = self.model([{"image": im, "height": im.shape[-2], "width": im.shape[-1]}
                              for im in images])
        if not isinstance(outputs, (list, tuple)) or not all("sem_seg" in o for o in outputs):
            raise TypeError(
                f"{type(self.model).__name__} did not return a list of {{'sem_seg': logits}} "
                "dicts: the inference protocols wrap semantic segmentation models only"
            )
        return [o["sem_seg"] for o in outputs]


def wrap_with_inference_protocol(cfg, model: nn.Module) -> nn.Module:
    """
    The model to evaluate under ``cfg.TEST.SFNET``: ``model`` itself for the default protocol
    (whole image, scale 1, no flip: exactly ``SemanticSegmentor``'s own inference), else a
    ``SemanticSegmentorWithTTA`` around it.
    """
    if cfg.TEST.AUG.ENABLED:
        # detectron2's TEST.AUG.MIN_SIZES are absolute shortest-edge sizes for detection; the
        # official SFNet protocol scales each image by factors, hence our own keys.
        raise ValueError(
            "TEST.AUG.ENABLED=True: detectron2's TEST.AUG (MIN_SIZES/MAX_SIZE/FLIP) is not used by "
            "sfnet-d2. Set TEST.AUG.ENABLED False and use TEST.SFNET.SCALES (resize factors, "
            "e.g. [0.5, 1.0, 2.0]) and TEST.SFNET.FLIP True instead (docs/EVALUATION.md)"
        )
    t = cfg.TEST.SFNET
    if t.MODE == "whole" and [float(s) for s in t.SCALES] == [1.0] and not t.FLIP:
        return model
    return SemanticSegmentorWithTTA(cfg, model)
