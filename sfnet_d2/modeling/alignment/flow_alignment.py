"""
Semantic-flow alignment: the flow warp, the Flow Alignment Module (FAM, SFNet) and the Gated Dual
Flow Alignment Module (GD-FAM, SFNet-Lite).

Fidelity to the official SFSegNets code (lxtGH/SFSegNets@ba475ba network/nn/operators.py;
behaviour measured by running lxtGH/SFSegNets@ba475ba):
* the warp's base grid is ``linspace(-1, 1)`` over the *output* size, and the flow is divided by
  (W_out, H_out), not by (W-1)/2: a flow value ``v`` moves the sampling point by ``v / W_out`` in
  grid units, i.e. ``v * (W_in - 1) / (2 * W_out)`` input pixels (about half a pixel per unit when
  input and output have the same size). Flow channel 0 is x, channel 1 is y.
* ``grid_sample(..., bilinear, zeros padding, align_corners)``; the official code at HEAD uses
  ``align_corners=True``, its first (ECCV) release used the torch default ``False``. Checkpoints
  trained with the old code may depend on it: config key ``MODEL.SFNET.WARP_ALIGN_CORNERS``.
* FAM warps the **original** coarse feature (all channels, not reduced, not pre-upsampled);
  the flow comes from ``cat([up(down_h(high)), down_l(low)])`` - coarse first.
* GD-FAM warps both the coarse feature and the original fine feature with two flows, and mixes
  them with a spatial gate computed from ``[mean_c(h), mean_c(low), max_c(h), max_c(low)]`` where
  ``h`` is the reduced, upsampled coarse feature and ``low`` the original fine feature.

Ablation options (paper Tables 9a and 10b; docs/ABLATIONS.md), all off by default so that the
default modules are exactly the official ones: how the reduced coarse feature is upsampled before
the flow conv (``upsample``, see feature_upsample.py), and for GD-FAM the gate (``gate``: the
official pooled "atten" gate, the official ``AlignedModulev2`` "conv" gate, or "none" = a fixed
gate of 1/2, i.e. the mean of the two warped features) and the second flow (``dual_flow=False``:
the fine feature is used unwarped).
"""
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.modeling.alignment.feature_upsample import build_coarse_upsampler
from sfnet_d2.modeling.alignment.gather_warp import bilinear_taps, gather_taps

__all__ = ["flow_warp", "FlowAlignModule", "GatedDualFlowAlignModule", "GDFAM_GATE_CHOICES"]

GDFAM_GATE_CHOICES = ("atten", "conv", "none")


def _base_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """The identity sampling grid of shape (1, H, W, 2), x first, in [-1, 1]."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


# Base grids and flow normalisers by (H, W, device, dtype): every warp at a given size and the
# two warps of a GD-FAM share one grid instead of rebuilding it each call. Least recently used
# sizes are dropped beyond _GRID_CACHE_SIZE (multi-scale testing visits a few sizes per image).
_GRID_CACHE: "OrderedDict[tuple, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_GRID_CACHE_SIZE = 16
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _building_graph() -> bool:
    # While a graph is being recorded (torch.jit.trace/script, ONNX export, torch.compile/export),
    # a cached tensor would be baked in as a constant of one size; rebuild the grid from ops
    # instead, so that exports keep the linspace computation.
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _grid_and_normaliser(height: int, width: int, flow: torch.Tensor):
    """The base grid (1, H, W, 2) and the flow divisor ``[W, H]``, cached outside graph capture.
    The cached tensors are shared: callers must never modify them in place."""
    if _building_graph():
        norm = torch.tensor([width, height], dtype=flow.dtype, device=flow.device)
        return _base_grid(height, width, flow), norm
    key = (height, width, flow.device, flow.dtype)
    cached = _GRID_CACHE.get(key)
    if cached is None:
        # Normal tensors even when first called under torch.inference_mode, so that a later
        # call with autograd on may use them.
        with torch.inference_mode(False), torch.no_grad():
            norm = torch.tensor([width, height], dtype=flow.dtype, device=flow.device)
            cached = (_base_grid(height, width, flow), norm)
        _GRID_CACHE[key] = cached
        while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
            _GRID_CACHE.popitem(last=False)
    else:
        _GRID_CACHE.move_to_end(key)
    return cached


def flow_warp(
    feature: torch.Tensor,
    flow: torch.Tensor,
    size: Tuple[int, int],
    align_corners: bool = True,
) -> torch.Tensor:
    """
    Sample ``feature`` (N, C, h, w) at the output positions of a ``size`` = (H, W) grid displaced
    by ``flow`` (N, 2, H, W), in the official SFNet flow units (see the module docstring).
    With zero flow and ``align_corners=True`` this is bilinear upsampling with align_corners=True.
    """
    out_h, out_w = int(size[0]), int(size[1])
    if flow.shape[-2:] != (out_h, out_w) or flow.shape[1] != 2:
        raise ValueError(
            f"flow_warp: flow must have shape (N, 2, {out_h}, {out_w}), got {tuple(flow.shape)}"
        )
    if flow.dtype in _HALF_DTYPES or feature.dtype in _HALF_DTYPES:
        # Reduced-precision inference (sfnet_d2/deployment): a bf16/fp16 grid misplaces samples by
        # up to about a pixel at 1/4 of 1024x2048 (8- or 11-bit mantissa over [-1, 1]), and CPU
        # bf16 grid_sample returns NaNs for channels-last input (torch 2.14); sample in float32.
        flow32 = flow.float()
        base_grid, norm = _grid_and_normaliser(out_h, out_w, flow32)
        grid = base_grid + flow32.permute(0, 2, 3, 1) / norm
        return F.grid_sample(
            feature.float(), grid, mode="bilinear", padding_mode="zeros",
            align_corners=align_corners,
        ).to(feature.dtype)
    base_grid, norm = _grid_and_normaliser(out_h, out_w, flow)
    grid = base_grid + flow.permute(0, 2, 3, 1) / norm
    return F.grid_sample(
        feature, grid.to(feature.dtype), mode="bilinear", padding_mode="zeros",
        align_corners=align_corners,
    )


def flow_taps(feature: torch.Tensor, flow: torch.Tensor, size: Tuple[int, int],
              align_corners: bool = True):
    """The bilinear taps (gather_warp.bilinear_taps) of :func:`flow_warp`'s sampling points:
    the same grid, for the gather form of the warp used by the optimised inference path."""
    base_grid, norm = _grid_and_normaliser(int(size[0]), int(size[1]), flow)
    grid = base_grid + flow.permute(0, 2, 3, 1) / norm
    return bilinear_taps(grid, feature.shape[-2], feature.shape[-1], align_corners)


def _use_gather_warp(module: nn.Module, feature: torch.Tensor) -> bool:
    # Set by the optimised inference path (sfnet_d2/deployment/optimize.py: use_gather_warp) for
    # float32 inference; reduced precision keeps flow_warp's float32 sampling and ONNX export
    # keeps GridSample.
    # CPU only: the gain is measured there (grid_sample's NCHW output on CPU); CUDA keeps the
    # grid_sample kernel until someone measures the gather form there.
    return (module.gather_warp and feature.dtype == torch.float32
            and feature.device.type == "cpu" and not torch.onnx.is_in_onnx_export())


def _upsample(x: torch.Tensor, size, upsampler: Optional[nn.Module] = None) -> torch.Tensor:
    # Every interpolation of the official code is bilinear with align_corners=True; `upsampler`
    # is the Table 9a ablation (MODEL.SFNET.FAM_UPSAMPLE), None by default.
    if upsampler is not None:
        return upsampler(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class FlowAlignModule(nn.Module):
    """
    FAM (SFNet, ECCV 2020, Fig. 3): predicts a 2-channel semantic flow between a fine feature
    ``low`` and a coarse feature ``high`` (both ``channels`` wide) and warps ``high`` onto
    ``low``'s grid. The caller adds the lateral feature afterwards (the official v1 head does
    ``f = low + FAM(low, f)``).
    """

    def __init__(self, channels: int, flow_kernel_size: int = 3, align_corners: bool = True,
                 upsample: str = "bilinear", scale_factor: int = 2):
        """``upsample``/``scale_factor``: how the reduced coarse feature reaches the fine size
        (feature_upsample.py; ``scale_factor`` = resolution ratio, used by "deconv" only)."""
        super().__init__()
        reduced = channels // 2
        self.down_low = nn.Conv2d(channels, reduced, 1, bias=False)
        self.down_high = nn.Conv2d(channels, reduced, 1, bias=False)
        # Default PyTorch init, not zero: the official flow conv is left at its default init.
        self.flow_make = nn.Conv2d(
            2 * reduced, 2, flow_kernel_size, padding=flow_kernel_size // 2, bias=False
        )
        self.upsample_high = build_coarse_upsampler(upsample, reduced, scale_factor)
        self.align_corners = align_corners
        # True: warp by weighted row gathers (gather_warp.py); set for inference only.
        self.gather_warp = False

    def forward(self, low: torch.Tensor, high: torch.Tensor, return_flow: bool = False):
        size = low.shape[-2:]
        high_reduced = _upsample(self.down_high(high), size, self.upsample_high)
        flow = self.flow_make(torch.cat([high_reduced, self.down_low(low)], dim=1))
        if _use_gather_warp(self, high):
            warped = gather_taps(high, *flow_taps(high, flow, size, self.align_corners), size)
        else:
            warped = flow_warp(high, flow, size, self.align_corners)
        return (warped, flow) if return_flow else warped


class GatedDualFlowAlignModule(nn.Module):
    """
    GD-FAM (SFNet-Lite, IJCV 2023, Sec. 3.3): two flows warp the coarse feature ``high`` and the
    fine feature ``low`` onto ``low``'s grid; a spatial gate chooses between them per pixel.
    Output = ``warp(high, flow_up) * gate + warp(low, flow_down) * (1 - gate)``, no residual.
    """

    def __init__(self, channels: int, flow_kernel_size: int = 3, align_corners: bool = True,
                 upsample: str = "bilinear", scale_factor: int = 2, gate: str = "atten",
                 dual_flow: bool = True):
        """
        Args (ablations, Table 10b; defaults = official ``AlignedModulev2PoolingAtten``):
            upsample, scale_factor: as in :class:`FlowAlignModule`.
            gate: "atten" = Sigmoid(3x3 conv) of the pooled maps (official 'spatial_atten');
                "conv" = Sigmoid(3x3 conv) of ``cat[h, down_low(low)]`` (official
                ``AlignedModulev2``, 'spatial'); "none" = a fixed gate of 1/2 (the mean).
            dual_flow: False predicts one flow (2 channels) and mixes the warped coarse feature
                with the *unwarped* fine one.
        """
        super().__init__()
        if gate not in GDFAM_GATE_CHOICES:
            raise ValueError(
                f"MODEL.SFNET.GDFAM_GATE={gate!r} is not one of {list(GDFAM_GATE_CHOICES)}"
            )
        reduced = channels // 2
        self.down_low = nn.Conv2d(channels, reduced, 1, bias=False)
        self.down_high = nn.Conv2d(channels, reduced, 1, bias=False)
        self.flow_make = nn.Conv2d(
            2 * reduced, 4 if dual_flow else 2, flow_kernel_size, padding=flow_kernel_size // 2,
            bias=False,
        )
        if gate == "atten":
            self.gate = nn.Conv2d(4, 1, 3, padding=1, bias=False)
        elif gate == "conv":
            self.gate = nn.Conv2d(2 * reduced, 1, 3, padding=1, bias=False)
        else:
            self.gate = None
        self.upsample_high = build_coarse_upsampler(upsample, reduced, scale_factor)
        self.gate_kind = gate
        self.dual_flow = dual_flow
        self.align_corners = align_corners
        # True: warp and mix by weighted row gathers (gather_warp.py); set for inference only.
        self.gather_warp = False

    def forward(self, low: torch.Tensor, high: torch.Tensor, return_flow: bool = False):
        size = low.shape[-2:]
        high_reduced = _upsample(self.down_high(high), size, self.upsample_high)
        low_reduced = self.down_low(low)
        flow = self.flow_make(torch.cat([high_reduced, low_reduced], dim=1))
        gate = self._gate(high_reduced, low, low_reduced)
        if _use_gather_warp(self, high):
            out = self._gather_mix(low, high, flow, gate, size)
            return (out, flow) if return_flow else out
        high_warped = flow_warp(high, flow[:, 0:2], size, self.align_corners)
        if self.dual_flow:
            low_warped = flow_warp(low, flow[:, 2:4], size, self.align_corners)
        else:
            low_warped = low
        if gate is None:
            out = 0.5 * (high_warped + low_warped)
        else:
            out = high_warped * gate + low_warped * (1 - gate)
        return (out, flow) if return_flow else out

    def _gate(self, high_reduced, low, low_reduced) -> Optional[torch.Tensor]:
        """The spatial gate (N, 1, H, W) weighting the warped coarse feature; None = 1/2."""
        if self.gate_kind == "atten":
            gate_input = torch.cat(
                [
                    high_reduced.mean(dim=1, keepdim=True),
                    low.mean(dim=1, keepdim=True),
                    high_reduced.amax(dim=1, keepdim=True),
                    low.amax(dim=1, keepdim=True),
                ],
                dim=1,
            )
            return torch.sigmoid(self.gate(gate_input))
        if self.gate_kind == "conv":
            return torch.sigmoid(self.gate(torch.cat([high_reduced, low_reduced], dim=1)))
        return None

    def _gather_mix(self, low, high, flow, gate, size) -> torch.Tensor:
        """The same output by weighted row gathers: the gate is folded into the tap weights, so
        warping and mixing are one pass per input and the result is channels-last."""
        gate = 0.5 if gate is None else gate.reshape(-1, 1)
        index, weight = flow_taps(high, flow[:, 0:2], size, self.align_corners)
        out = gather_taps(high, index, weight * gate, size)
        if self.dual_flow:
            index, weight = flow_taps(low, flow[:, 2:4], size, self.align_corners)
            return out + gather_taps(low, index, weight * (1 - gate), size)
        keep = 1 - gate if isinstance(gate, float) else (1 - gate).view(
            low.shape[0], 1, int(size[0]), int(size[1]))
        return out + low * keep
