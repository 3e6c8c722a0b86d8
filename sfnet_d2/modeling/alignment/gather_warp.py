"""
The flow warp written as weighted gathers of channels-last rows: the form the optimised inference
path uses on CPU (sfnet_d2/deployment, docs/BENCHMARK.md). It computes what
``F.grid_sample(feature, grid, "bilinear", "zeros", align_corners)`` computes, up to float
rounding, and differs in three ways that matter for speed at 1024x2048:

* the output comes out channels-last. CPU ``grid_sample`` always returns a contiguous (NCHW)
  tensor, so in a channels-last network every warp was followed by a layout conversion (a
  concatenation or a convolution input of mixed layouts: about 0.2 s per SFNet-Lite-R18 image);
* each output pixel reads four whole rows of C contiguous channels (``F.embedding_bag`` with
  per-sample weights, one fused gather-multiply-add kernel) instead of strided single values;
* several weighted warps can be summed in the same pass: GD-FAM's ``warp(h) * g + warp(l) * (1-g)``
  becomes two gathers whose weights already carry the gate.

Tap positions follow ATen's ``grid_sample``: the grid coordinate ``x`` in [-1, 1] maps to the
input column ``(x + 1) * (W_in - 1) / 2`` (``align_corners=True``) or ``(x + 1) * W_in / 2 - 1/2``
(False); the four neighbours get the bilinear weights, and neighbours outside the input get weight
0 (``padding_mode="zeros"``; NaN coordinates too). The training model keeps ``grid_sample``
(its gradient with respect to the flow is what trains the flow); export keeps it as well (ONNX
GridSample is the portable form).
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["bilinear_taps", "gather_taps"]


def _unnormalize(coord: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    if align_corners:
        return (coord + 1) * ((size - 1) / 2)
    return (coord + 1) * (size / 2) - 0.5


def bilinear_taps(
    grid: torch.Tensor, in_height: int, in_width: int, align_corners: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The four bilinear taps of every sampling point of ``grid`` (N, H, W, 2; x first, in [-1, 1]
    as for ``grid_sample``) on an (N, C, in_height, in_width) input.

    Returns ``index`` (N*H*W, 4) int64, rows of the (N * in_height * in_width, C) channels-last
    table of the input (the sample's batch offset included), and ``weight`` (N*H*W, 4) in the
    grid's dtype; taps outside the input have weight 0 and a clamped (valid) index.
    """
    if grid.dim() != 4 or grid.shape[-1] != 2:
        raise ValueError(f"bilinear_taps: grid must be (N, H, W, 2), got {tuple(grid.shape)}")
    n = grid.shape[0]
    flat = grid.reshape(n, -1, 2)
    x = _unnormalize(flat[..., 0], in_width, align_corners)
    y = _unnormalize(flat[..., 1], in_height, align_corners)
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    # NaN coordinates stay NaN here and are caught by the bounds test below (NaN compares False).
    x0 = x0.clamp(-2, in_width + 1)
    y0 = y0.clamp(-2, in_height + 1)
    offsets = (torch.arange(n, device=grid.device) * (in_height * in_width)).view(n, 1)
    indices, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yy = y0 + dy
        y_in = (yy >= 0) & (yy <= in_height - 1)
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xx = x0 + dx
            inside = y_in & (xx >= 0) & (xx <= in_width - 1)
            row = yy.clamp(0, in_height - 1) * in_width + xx.clamp(0, in_width - 1)
            row = torch.nan_to_num(row, nan=0.0).long() + offsets
            indices.append(row)
            weights.append(torch.where(inside, wx * wy, torch.zeros((), dtype=grid.dtype)))
    index = torch.stack(indices, dim=-1).reshape(-1, 4)
    weight = torch.stack(weights, dim=-1).reshape(-1, 4)
    return index, weight


def _rows(feature: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> its (N*h*w, C) channels-last table (a view for a channels-last tensor)."""
    n, c, h, w = feature.shape
    return feature.permute(0, 2, 3, 1).reshape(n * h * w, c)


def gather_taps(
    feature: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, size: Tuple[int, int]
) -> torch.Tensor:
    """
    ``sum_k weight[:, k] * feature_row[index[:, k]]`` for every output pixel, as an (N, C, H, W)
    channels-last tensor with ``size`` = (H, W). ``index``/``weight`` come from
    :func:`bilinear_taps` (weights may be scaled, e.g. by a gate, before the call).
    """
    n, c = feature.shape[:2]
    out = F.embedding_bag(index, _rows(feature), per_sample_weights=weight.to(feature.dtype),
                          mode="sum")
    return out.view(n, int(size[0]), int(size[1]), c).permute(0, 3, 1, 2)
