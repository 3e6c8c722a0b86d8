"""
Module-level rewrites for inference that keep the network's outputs (up to float rounding):

* :func:`fold_batchnorm` - every BatchNorm that directly follows a convolution is folded into the
  convolution's weight and bias (detectron2 ``Conv2d(norm=...)``, ``nn.Sequential(conv, bn)``;
  BatchNorm2d, SyncBatchNorm, detectron2's NaiveSyncBatchNorm and FrozenBatchNorm2d);
* :func:`strip_training_only_modules` - deep-supervision heads are deleted and dropout layers
  become ``nn.Identity`` (both already do nothing in eval mode, but a traced or exported module
  should not carry them);
* :func:`use_gather_warp` - the FAM / GD-FAM warps run as weighted gathers of channels-last rows
  (``sfnet_d2/modeling/alignment/gather_warp.py``): channels-last output, and GD-FAM's gate folded into the
  gather weights;
* ``replace_adaptive_avg_pooling`` (``sfnet_d2/deployment/static_pooling.py``, shared with the
  export) - ``nn.AdaptiveAvgPool2d`` becomes the same average written as two small matrix
  products, which oneDNN's TorchScript pass (``torch.jit.optimize_for_inference``) accepts for any
  input size (its own adaptive pooling refuses sizes that the bins do not divide, e.g. the PPM's
  3x3 and 6x6 bins on a 32x64 map).

All of them work on a module in eval mode and change it in place; callers that must keep the
original (``build_inference_model``) deep-copy it first.
"""
import logging
from typing import List, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "fold_batchnorm",
    "strip_training_only_modules",
    "unfoldable_norms",
    "use_gather_warp",
]

logger = logging.getLogger(__name__)

_FOLDABLE_NORMS = (_BatchNorm, FrozenBatchNorm2d)
# Normalisations that use statistics of the input itself and so cannot be folded into weights.
_DATA_DEPENDENT_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)


def _affine_of_norm(norm: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``norm(x) == x * scale + shift`` per channel, in float64."""
    if isinstance(norm, _BatchNorm):
        if norm.training:
            raise ValueError(
                f"fold_batchnorm: {where} ({type(norm).__name__}) is in training mode and uses "
                "batch statistics; call model.eval() before folding"
            )
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(
                f"fold_batchnorm: {where} ({type(norm).__name__}) has track_running_stats=False, "
                "so it normalises with batch statistics even in eval mode and cannot be folded"
            )
    mean = norm.running_mean.detach().double()
    var = norm.running_var.detach().double()
    channels = mean.numel()
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    weight = torch.ones(channels, dtype=torch.float64) if weight is None else weight.detach().double()
    bias = torch.zeros(channels, dtype=torch.float64) if bias is None else bias.detach().double()
    scale = weight / torch.sqrt(var + norm.eps)
    return scale, bias - mean * scale


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module, where: str) -> None:
    scale, shift = _affine_of_norm(norm, where)
    if scale.numel() != conv.out_channels:
        raise ValueError(
            f"fold_batchnorm: {where} normalises {scale.numel()} channels but its convolution "
            f"outputs {conv.out_channels}"
        )
    weight = conv.weight.detach()
    dtype, device = weight.dtype, weight.device
    scale_dev = scale.to(device)
    # conv(x) * s + t == conv_{w * s}(x) + (b * s + t): one scale per output channel, whatever the
    # groups (the weight's first dimension is always the output channel).
    new_weight = weight.double() * scale_dev.view(-1, *([1] * (weight.dim() - 1)))
    old_bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale_dev)
    new_bias = old_bias * scale_dev + shift.to(device)
    conv.weight = nn.Parameter(new_weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """
    Fold every BatchNorm that directly follows a convolution into that convolution, in place.
    Handles detectron2 ``Conv2d`` with a ``norm`` attribute (the norm is set to None) and
    consecutive ``(Conv2d, BatchNorm)`` pairs in an ``nn.Sequential`` (the norm becomes
    ``nn.Identity``). The model must be in eval mode. Returns the number of folded norms; norms
    that do not follow a convolution are left alone and reported by :func:`unfoldable_norms`.
    """
    folded = 0
    for name, module in model.named_modules():
        norm = getattr(module, "norm", None)
        if isinstance(module, nn.Conv2d) and isinstance(norm, _FOLDABLE_NORMS):
            _fold_into_conv(module, norm, f"{name}.norm")
            module.norm = None
            folded += 1
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (second_name, second) in zip(children, children[1:]):
                if (isinstance(first, nn.Conv2d) and getattr(first, "norm", None) is None
                        and isinstance(second, _FOLDABLE_NORMS)):
                    _fold_into_conv(first, second, f"{name}.{second_name}")
                    setattr(module, second_name, nn.Identity())
                    folded += 1
    return folded


def unfoldable_norms(model: nn.Module) -> List[str]:
    """Names of the normalisation layers still present (not foldable, or not after a conv)."""
    kinds = _FOLDABLE_NORMS + _DATA_DEPENDENT_NORMS
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def strip_training_only_modules(model: nn.Module) -> List[str]:
    """
    Delete deep-supervision heads (any ``dsn_heads`` attribute is set to None) and turn dropout
    layers into ``nn.Identity``, in place. Returns what was removed, for the log.
    """
    removed = []
    for name, module in list(model.named_modules()):
        if getattr(module, "dsn_heads", None) is not None:
            module.dsn_heads = None
            removed.append(f"{name}.dsn_heads" if name else "dsn_heads")
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.dropout._DropoutNd):
                setattr(module, child_name, nn.Identity())
                removed.append(f"{name}.{child_name}" if name else child_name)
    return removed




def use_gather_warp(model: nn.Module, enabled: bool = True) -> int:
    """Switch every flow-alignment module (anything with a ``gather_warp`` attribute: FAM,
    GD-FAM) to the gather form of the warp, in place. Returns how many were switched."""
    switched = 0
    for module in model.modules():
        if isinstance(getattr(module, "gather_warp", None), bool):
            module.gather_warp = enabled
            switched += 1
    return switched
