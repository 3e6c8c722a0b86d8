"""
The "network part" of a model: the pure tensor-to-tensor function that is exported.

A detectron2 model takes a list of dicts and returns a list of dicts; an exported graph takes a
fixed-size image tensor and returns tensors. For every meta-architecture a small ``nn.Module``
says what that network part is (registered with :func:`register_network_part` under the
meta-architecture's class name). Adding a model family to the exporter = writing one such
module and registering it; the exporter, the verification and the commands stay the same.

Input contract of every network part (chosen once, the same for TorchScript and ONNX):
``image``: float32, shape (N, 3, H, W) with N, H, W fixed at export; **raw pixel values in
0..255** (a uint8 image cast to float, not normalised), channels in the config's
``INPUT.FORMAT`` order (RGB for every SFNet config). The normalisation
``(x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD`` is part of the graph, so callers need no
model-specific constants; float32 rather than uint8 keeps the input type that every ONNX runtime
and TensorRT accept.
"""
import copy
import logging
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.deployment.static_pooling import replace_adaptive_avg_pooling

__all__ = [
    "NETWORK_PARTS",
    "register_network_part",
    "build_network_part",
    "SemanticNetworkPart",
    "PanopticKNetNetworkPart",
]

logger = logging.getLogger(__name__)

# meta-architecture class name -> network-part class
NETWORK_PARTS: Dict[str, Callable[..., nn.Module]] = {}


def register_network_part(meta_architecture: str):
    """
    Class decorator: register a network part for models whose class is named
    ``meta_architecture``. The class is constructed as ``cls(model, height, width)`` and must
    define ``output_names`` (a tuple naming its outputs, in order).
    """

    def wrap(cls):
        if meta_architecture in NETWORK_PARTS:
            raise ValueError(f"A network part for {meta_architecture} is already registered")
        if not getattr(cls, "output_names", None):
            raise ValueError(f"{cls.__name__} must define a non-empty `output_names` tuple")
        NETWORK_PARTS[meta_architecture] = cls
        return cls

    return wrap


def _pad_to_multiple(size: int, divisibility: int) -> int:
    if divisibility <= 1:
        return size
    return (size + divisibility - 1) // divisibility * divisibility


class _NetworkPartBase(nn.Module):
    """Normalisation and zero padding, as detectron2's meta-architectures do them."""

    output_names: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"Export size must be positive, got height={height}, width={width}")
        self.height, self.width = int(height), int(width)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)
        # the model's own padding rule: SFNetKNet keeps it on the model (at least 32),
        # SemanticSegmentor uses the backbone's
        divisibility = getattr(model, "size_divisibility", None)
        if divisibility is None:
            divisibility = getattr(model.backbone, "size_divisibility", 0)
        divisibility = int(divisibility or 0)
        self.padded_height = _pad_to_multiple(self.height, divisibility)
        self.padded_width = _pad_to_multiple(self.width, divisibility)

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (1, 3, self.height, self.width)

    def normalize_and_pad(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"This network part was built for {self.height}x{self.width} images, got "
                f"{tuple(image.shape)}; build it (or export) again for that size"
            )
        x = (image - self.pixel_mean) / self.pixel_std
        # ImageList.from_tensors pads the *normalised* image with zeros, bottom and right. A
        # concatenation with constant zeros rather than F.pad: F.pad exports to ONNX as a Pad
        # whose pads are computed at run time, which hides the static shapes from ONNX shape
        # inference (and from TensorRT's parser until it folds them).
        n, c = image.shape[0], image.shape[1]
        pad_h, pad_w = self.padded_height - self.height, self.padded_width - self.width
        if pad_w:
            x = torch.cat([x, x.new_zeros((int(n), int(c), self.height, pad_w))], dim=3)
        if pad_h:
            x = torch.cat([x, x.new_zeros((int(n), int(c), pad_h, self.padded_width))], dim=2)
        return x


@register_network_part("SemanticSegmentor")
@register_network_part("SFNetSemanticSegmentor")  # the same inference (meta_arch/semantic.py)
class SemanticNetworkPart(_NetworkPartBase):
    """
    detectron2's ``SemanticSegmentor`` with an SFNet head: image -> ``sem_seg`` logits
    (N, K, H, W) at the full input resolution, equal to the model's ``sem_seg`` output for an
    input of that size (bilinear upsampling with align_corners=True inside the head, then the
    padding cropped; no deep-supervision heads, which only run in training).
    """

    output_names = ("sem_seg",)

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__(model, height, width)
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize_and_pad(image))
        logits, _ = self.sem_seg_head(features)
        return logits[:, :, : self.height, : self.width]

    def reference_outputs(self, model: nn.Module, image: torch.Tensor):
        """The same outputs through the detectron2 model's own forward (for verification)."""
        outputs = model([{"image": img, "height": self.height, "width": self.width}
                         for img in image])
        return (torch.stack([o["sem_seg"] for o in outputs]).cpu(),)


@register_network_part("SFNetKNet")
class PanopticKNetNetworkPart(_NetworkPartBase):
    """
    The network part of the panoptic ``SFNetKNet`` (sfnet_d2/modeling/meta_arch/knet/): image ->
    ``cls_logits`` (N, K, C) and ``mask_probs`` (N, K, H, W), the last kernel-update stage's class
    logits and mask probabilities (sigmoid, resized to the input as the model's inference does:
    bilinear to the padded input, padding cropped). K = proposals + stuff kernels, classes in
    the model's internal order. The panoptic merge (score sorting, thresholds, overlaps) is
    data-dependent and stays in Python: ``model.panoptic_from_kernels(cls_logits[0],
    mask_probs[0])`` gives the model's ``{"panoptic_seg": ...}`` from these outputs.
    """

    output_names = ("cls_logits", "mask_probs")

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__(model, height, width)
        self.model = model
        self.mask_stride = int(model.feat_downsample_stride)

    def forward(self, image: torch.Tensor):
        return self._outputs(self.model, image)

    def reference_outputs(self, model: nn.Module, image: torch.Tensor):
        """The same outputs computed with the original model's modules (for verification: the
        exported copy may have BatchNorm folded and pooling rewritten)."""
        return self._outputs(model, image)

    def _outputs(self, model: nn.Module, image: torch.Tensor):
        _, stage_outputs = model.forward_head(self.normalize_and_pad(image))
        cls_logits, mask_logits = stage_outputs[-1]
        if self.mask_stride != 1:
            # stride-8 kernel masks -> stride 4, as SFNetKNet._upsample
            mask_logits = F.interpolate(mask_logits, scale_factor=self.mask_stride,
                                        mode="bilinear", align_corners=False)
        probs = F.interpolate(mask_logits.sigmoid(), size=(self.padded_height, self.padded_width),
                              mode="bilinear", align_corners=False)
        return cls_logits, probs[:, :, : self.height, : self.width]


def build_network_part(model: nn.Module, height: int, width: int,
                       fold_batchnorm: bool = False) -> nn.Module:
    """
    The export-ready network part of ``model`` for (height, width) images: a deep copy of the
    model's modules (the model itself is not modified), in eval mode, with adaptive pooling
    made static (see ``sfnet_d2/deployment/static_pooling.py``). With ``fold_batchnorm`` (the export command does it
    when ``DEPLOY.OPTIMIZE`` is on), the optimised inference path's rewrites are
    applied too (sfnet_d2/deployment/optimize.py): BatchNorm folded into the convolutions,
    dropout and deep-supervision heads removed. The ONNX exporter folds BatchNorm by itself;
    for TorchScript it saves one op per convolution.
    """
    name = type(model).__name__
    if name not in NETWORK_PARTS:
        raise ValueError(
            f"No exporter for MODEL.META_ARCHITECTURE={name}; exportable: {sorted(NETWORK_PARTS)}. "
            "Register one with sfnet_d2.deployment.register_network_part."
        )
    part = NETWORK_PARTS[name](copy.deepcopy(model).eval(), height, width).eval()
    replace_adaptive_avg_pooling(part)
    if fold_batchnorm:
        from sfnet_d2.deployment.optimize import fold_batchnorm as fold, strip_training_only_modules

        removed = strip_training_only_modules(part)
        logger.info(f"Folded {fold(part)} BatchNorm layers into convolutions; removed "
                    f"{len(removed)} training-only modules")
    for p in part.parameters():
        p.requires_grad_(False)
    return part
