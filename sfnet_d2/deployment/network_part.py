"""
The "network part" of a model: normalised, padded images in, raw outputs out. This module is the
one definition of it, used by export, the optimised inference path, FLOP counting and the
benchmark:

* :func:`padding_divisibility` - the padding rule (the multiple that a model pads its input to);
* :func:`normalize_and_pad` - the pre-processing: ``(x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD``,
  then zero padding at the bottom and right to that multiple, exactly as detectron2's
  ``ImageList.from_tensors`` pads in the meta-architectures;
* :class:`NetworkPart` - one subclass per meta-architecture (registered with
  :func:`register_network_part` under the meta-architecture's class name), all with the same
  interface: ``forward(images)`` maps the normalised, padded (N, 3, Hp, Wp) batch to a tuple of
  raw outputs (``raw_output_names``), ``outputs_at_input_size`` turns those into the outputs at
  the input's size (``output_names``); :func:`network_part_of` gives a model's part, sharing the
  model's modules;
* :class:`FixedSizeNetworkPart` - pre-processing, network part and outputs for one fixed image
  size: raw pixel values in, outputs at that size out. This is what is exported
  (:func:`build_network_part`).

Adding a model family = one :class:`NetworkPart` subclass, registered; the exporter, the
verification, the FLOP count and the benchmark stay the same.

Export input contract (chosen once, the same for TorchScript and ONNX): ``image``: float32,
shape (N, 3, H, W) with N, H, W fixed at export; **raw pixel values in 0..255** (a uint8 image
cast to float, not normalised), channels in the config's ``INPUT.FORMAT`` order (RGB for every
SFNet config). The normalisation is part of the graph, so callers need no model-specific
constants; float32 rather than uint8 keeps the input type that every ONNX runtime and TensorRT
accept.
"""
import copy
import logging
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.deployment.static_pooling import replace_adaptive_avg_pooling

__all__ = [
    "NETWORK_PARTS",
    "register_network_part",
    "padding_divisibility",
    "normalize_and_pad",
    "NetworkPart",
    "SemanticNetworkPart",
    "PanopticKNetNetworkPart",
    "network_part_of",
    "FixedSizeNetworkPart",
    "build_network_part",
]

logger = logging.getLogger(__name__)

# meta-architecture class name -> network-part class
NETWORK_PARTS: Dict[str, Callable[..., "NetworkPart"]] = {}


# ------------------------------------------------------------------------- pre-processing
def padding_divisibility(model: nn.Module) -> int:
    """
    The multiple that ``model`` zero-pads its normalised input to (0 or 1: no padding): its own
    ``size_divisibility`` where it has one (``SFNetKNet``: at least 32; the optimised inference
    model: its source model's), else its backbone's (detectron2's ``SemanticSegmentor`` pads to
    ``backbone.size_divisibility``).
    """
    divisibility = getattr(model, "size_divisibility", None)
    if divisibility is None:
        divisibility = getattr(getattr(model, "backbone", None), "size_divisibility", 0)
    return int(divisibility or 0)


def _round_up(size: int, divisibility: int) -> int:
    if divisibility <= 1:
        return size
    return (size + divisibility - 1) // divisibility * divisibility


def _zero_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zeros at the bottom and right of an (N, C, h, w) batch up to (height, width). A
    concatenation with constant zeros rather than F.pad: F.pad exports to ONNX as a Pad whose
    pads are computed at run time, which hides the static shapes from ONNX shape inference (and
    from TensorRT's parser until it folds them). The values are the same as F.pad's."""
    n, c, h, w = (int(s) for s in x.shape)
    if width > w:
        x = torch.cat([x, x.new_zeros((n, c, h, width - w))], dim=3)
    if height > h:
        x = torch.cat([x, x.new_zeros((n, c, height - h, width))], dim=2)
    return x


def normalize_and_pad(
    images: Union[torch.Tensor, Sequence[torch.Tensor]],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """
    The pre-processing of every model here, as its meta-architecture does it: normalise, then
    pad with zeros (after the normalisation) at the bottom and right to the batch's largest size
    rounded up to ``size_divisibility`` (see :func:`padding_divisibility`). The values equal
    detectron2's ``ImageList.from_tensors([(x - mean) / std ...], size_divisibility).tensor``.

    Args:
        images: an (N, 3, H, W) tensor, or a list of (3, H_i, W_i) tensors; raw pixel values of
            any dtype, on ``pixel_mean``'s device.
        pixel_mean, pixel_std: (3, 1, 1) tensors (``model.pixel_mean`` / ``pixel_std``).
    Returns:
        the (N, 3, Hp, Wp) float batch and the images' sizes [(H_i, W_i)] before padding.
        Sizes are Python ints, so a trace of this function (the export) has static shapes.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"normalize_and_pad: expected an (N, 3, H, W) tensor or a list of "
                             f"(3, H, W) tensors, got a tensor of shape {tuple(images.shape)}")
        groups = [images]
    else:
        if len(images) == 0:
            raise ValueError("normalize_and_pad: got no image")
        groups = [x[None] for x in images]
    sizes = [(int(g.shape[-2]), int(g.shape[-1])) for g in groups for _ in range(int(g.shape[0]))]
    height = _round_up(max(h for h, _ in sizes), size_divisibility)
    width = _round_up(max(w for _, w in sizes), size_divisibility)
    padded = [_zero_pad((g - pixel_mean) / pixel_std, height, width) for g in groups]
    return (padded[0] if len(padded) == 1 else torch.cat(padded)), sizes


# ------------------------------------------------------------------------- network parts
def register_network_part(meta_architecture: str):
    """
    Class decorator: register a :class:`NetworkPart` subclass for models whose class (or a base
    class) is named ``meta_architecture``. The class is constructed as ``cls(model)``.
    """

    def wrap(cls):
        if meta_architecture in NETWORK_PARTS:
            raise ValueError(f"A network part for {meta_architecture} is already registered")
        if not (isinstance(cls, type) and issubclass(cls, NetworkPart)):
            raise TypeError(f"{cls!r} must be a subclass of sfnet_d2.deployment.NetworkPart")
        if not cls.output_names or not cls.raw_output_names:
            raise ValueError(f"{cls.__name__} must define non-empty `output_names` and "
                             "`raw_output_names` tuples")
        NETWORK_PARTS[meta_architecture] = cls
        return cls

    return wrap


class NetworkPart(nn.Module):
    """
    The network of a model without its pre- and post-processing. Subclasses define:

    * ``forward(images)``: normalised, padded (N, 3, Hp, Wp) images (see
      :func:`normalize_and_pad`) -> tuple of raw outputs, named ``raw_output_names``;
    * ``outputs_at_input_size(raw, image_size, padded_size)``: those raw outputs -> the outputs
      for an input of ``image_size`` (H, W) padded to ``padded_size``, named ``output_names``
      (default: each raw output cropped to H x W in its last two dimensions);
    * optionally ``reference_outputs(model, image)``: the same outputs through the detectron2
      model's own forward, for the export's verification.
    """

    raw_output_names: Tuple[str, ...] = ()
    output_names: Tuple[str, ...] = ()

    def outputs_at_input_size(self, raw: Tuple[torch.Tensor, ...], image_size: Tuple[int, int],
                              padded_size: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
        h, w = image_size
        return tuple(t[..., :h, :w] for t in raw)

    def reference_outputs(self, model: nn.Module, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The outputs for (N, 3, H, W) raw pixel ``image`` computed with ``model``'s own
        modules (default: the same pipeline on ``model``'s network part; ``model`` may differ
        from the modules of this part, e.g. not BatchNorm-folded)."""
        height, width = (int(s) for s in image.shape[-2:])
        return FixedSizeNetworkPart(network_part_of(model), model, height, width).outputs(image)


@register_network_part("SemanticSegmentor")
class SemanticNetworkPart(NetworkPart):
    """
    detectron2's ``SemanticSegmentor`` with an SFNet (or any) semantic head: backbone +
    ``sem_seg_head`` in inference mode -> ``(sem_seg,)``, the (N, K, Hp, Wp) logits at the padded
    input's resolution (SFNet heads upsample bilinearly with align_corners=True; deep-supervision
    heads only run in training). At the input size: the padding cropped, which equals the
    model's ``sem_seg`` output for an input of that size.
    """

    raw_output_names = ("sem_seg",)
    output_names = ("sem_seg",)

    def __init__(self, model: nn.Module):
        super().__init__()
        # attribute names as in the model, so that module names (FLOP breakdown) are the same
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor]:
        logits, _ = self.sem_seg_head(self.backbone(images))
        return (logits,)

    def reference_outputs(self, model: nn.Module, image: torch.Tensor):
        """The model's own forward on the images (checks pre- and post-processing too)."""
        height, width = (int(s) for s in image.shape[-2:])
        outputs = model([{"image": img, "height": height, "width": width} for img in image])
        return (torch.stack([o["sem_seg"] for o in outputs]).cpu(),)


@register_network_part("SFNetKNet")
class PanopticKNetNetworkPart(NetworkPart):
    """
    The panoptic ``SFNetKNet`` (sfnet_d2/modeling/meta_arch/knet/): ``model.forward_head`` ->
    the last kernel-update stage's ``(cls_logits (N, K, C), mask_logits (N, K, Hp/s, Wp/s))``
    (s = the kernels' stride, 8). At the input size, as the model's inference does: masks
    upsampled to stride 4, sigmoid, bilinear to the padded input, padding cropped ->
    ``(cls_logits, mask_probs (N, K, H, W))``. K = proposals + stuff kernels, classes in the
    model's internal order. The panoptic merge (score sorting, thresholds, overlaps) is
    data-dependent and stays in Python: ``model.panoptic_from_kernels(cls_logits[0],
    mask_probs[0])`` gives the model's ``{"panoptic_seg": ...}`` from these outputs.
    """

    raw_output_names = ("cls_logits", "mask_logits")
    output_names = ("cls_logits", "mask_probs")

    def __init__(self, model: nn.Module):
        super().__init__()
        # the whole model (forward_head is its method); module names start with "model."
        self.model = model
        self.mask_stride = int(model.feat_downsample_stride)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _, stage_outputs = self.model.forward_head(images)
        cls_logits, mask_logits = stage_outputs[-1]
        return cls_logits, mask_logits

    def outputs_at_input_size(self, raw, image_size, padded_size):
        cls_logits, mask_logits = raw
        if self.mask_stride != 1:
            # stride-8 kernel masks -> stride 4, as SFNetKNet._upsample
            mask_logits = F.interpolate(mask_logits, scale_factor=self.mask_stride,
                                        mode="bilinear", align_corners=False)
        probs = F.interpolate(mask_logits.sigmoid(), size=tuple(padded_size), mode="bilinear",
                              align_corners=False)
        return cls_logits, probs[:, :, : image_size[0], : image_size[1]]


def _network_part_class(model: nn.Module):
    for cls in type(model).__mro__:
        if cls.__name__ in NETWORK_PARTS:
            return NETWORK_PARTS[cls.__name__]
    raise ValueError(
        f"No network part for MODEL.META_ARCHITECTURE={type(model).__name__}; known: "
        f"{sorted(NETWORK_PARTS)}. Register one with sfnet_d2.deployment.register_network_part."
    )


def network_part_of(model: nn.Module) -> NetworkPart:
    """The network part of ``model``, sharing its modules (nothing is copied; the part changes
    with the model). Looked up by the class name of ``model`` or of its nearest registered base
    class."""
    return _network_part_class(model)(model)


class FixedSizeNetworkPart(nn.Module):
    """
    Pre-processing + network part + outputs at the input size, for (N, 3, height, width) raw
    pixel images: the exported graph. Returns the outputs named ``output_names`` (a single
    output as a tensor). The padding is computed once from the size, so every shape
    in a trace of it is static.
    """

    def __init__(self, part: NetworkPart, model: nn.Module, height: int, width: int):
        """``model`` gives the normalisation constants and the padding rule."""
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"Export size must be positive, got height={height}, width={width}")
        self.part = part
        self.height, self.width = int(height), int(width)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)
        self.size_divisibility = padding_divisibility(model)
        self.padded_height = _round_up(self.height, self.size_divisibility)
        self.padded_width = _round_up(self.width, self.size_divisibility)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return self.part.output_names

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (1, 3, self.height, self.width)

    def forward(self, image: torch.Tensor):
        outputs = self.outputs(image)
        # one output as a plain tensor (what a TorchScript file of a semantic model returns)
        return outputs[0] if len(outputs) == 1 else outputs

    def outputs(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The outputs as a tuple, also when there is one."""
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"This network part was built for {self.height}x{self.width} images, got "
                f"{tuple(image.shape)}; build it (or export) again for that size"
            )
        images, _ = normalize_and_pad(image, self.pixel_mean, self.pixel_std,
                                      self.size_divisibility)
        return self.part.outputs_at_input_size(self.part(images), (self.height, self.width),
                                               (self.padded_height, self.padded_width))

    def reference_outputs(self, model: nn.Module, image: torch.Tensor):
        """The same outputs computed with ``model`` (for verification: this copy may have
        BatchNorm folded and pooling rewritten)."""
        return self.part.reference_outputs(model, image)


def build_network_part(model: nn.Module, height: int, width: int,
                       fold_batchnorm: bool = False) -> FixedSizeNetworkPart:
    """
    The export-ready :class:`FixedSizeNetworkPart` of ``model`` for (height, width) images: a
    deep copy of the model's modules (the model itself is not modified), in eval mode, with
    adaptive pooling made static (``sfnet_d2/deployment/static_pooling.py``). With
    ``fold_batchnorm`` (the export command does it when ``DEPLOY.OPTIMIZE`` is on),
    the optimised inference path's rewrites are applied too (sfnet_d2/deployment/optimize.py):
    BatchNorm folded into the convolutions, dropout and deep-supervision heads removed. The ONNX
    exporter folds BatchNorm by itself; for TorchScript it saves one op per convolution.
    """
    part_class = _network_part_class(model)  # fails before the copy for an unknown model
    model = copy.deepcopy(model).eval()
    part = FixedSizeNetworkPart(part_class(model), model, height, width).eval()
    replace_adaptive_avg_pooling(part)
    if fold_batchnorm:
        from sfnet_d2.deployment.optimize import fold_batchnorm as fold, strip_training_only_modules

        removed = strip_training_only_modules(part)
        logger.info(f"Folded {fold(part)} BatchNorm layers into convolutions; removed "
                    f"{len(removed)} training-only modules")
    for p in part.parameters():
        p.requires_grad_(False)
    return part
