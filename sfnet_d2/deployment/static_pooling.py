"""
Export-friendly adaptive average pooling for a static input size.

The PPM's ``nn.AdaptiveAvgPool2d(bins)`` with bins (1, 2, 3, 6) cannot be exported to ONNX by
torch's TorchScript-based exporter when the bin count does not divide the feature size (at
1024x2048 the 1/32 feature is 32x64, which 3 and 6 do not divide), and TensorRT has no adaptive
pooling layer either. This is one of the export failures users of the official code and of
PaddleSeg's port reported (https://github.com/lxtGH/SFSegNets/issues/72,
https://github.com/PaddlePaddle/PaddleSeg/issues/1556).

For a fixed input size the pooling is a fixed linear map: output cell ``i`` of ``b`` averages
the input rows ``floor(i*H/b) .. ceil((i+1)*H/b) - 1`` (PyTorch's adaptive-pooling windows,
which may overlap), and the same along the columns. :class:`StaticAdaptiveAvgPool2d` computes it
as ``P_h @ x @ P_w^T`` with two constant averaging matrices built from the input size seen at
trace time, which exports as two ``MatMul`` nodes with constant weights. In float32 it equals
``F.adaptive_avg_pool2d`` up to summation-order rounding (about 1e-7 relative).
"""
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["adaptive_pool_matrix", "StaticAdaptiveAvgPool2d", "replace_adaptive_avg_pooling"]


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """
    The (out_size, in_size) float64 matrix whose row ``i`` averages PyTorch's adaptive-pooling
    window ``[floor(i * in / out), ceil((i + 1) * in / out))``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"adaptive_pool_matrix: sizes must be >= 1, got in={in_size}, out={out_size}")
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class StaticAdaptiveAvgPool2d(nn.Module):
    """
    Drop-in replacement for ``nn.AdaptiveAvgPool2d`` that traces to constant matrix products.
    The matrices depend on the input size, which is read as Python ints (constants in a trace):
    the traced/exported graph is only valid for the size it was traced with, like the rest of
    an SFNet export (the warp grid is a constant too).
    """

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if any(s is None for s in output_size):
            raise ValueError(
                f"StaticAdaptiveAvgPool2d: output_size {output_size} with None is not supported"
            )
        self.output_size: Tuple[int, int] = (int(output_size[0]), int(output_size[1]))
        self._cache: Dict[Tuple[int, int, torch.dtype, torch.device], Tuple[torch.Tensor, ...]] = {}

    def _matrices(self, height: int, width: int, like: torch.Tensor):
        key = (height, width, like.dtype, like.device)
        if key not in self._cache:
            rows = adaptive_pool_matrix(height, self.output_size[0])
            cols = adaptive_pool_matrix(width, self.output_size[1]).T.copy()
            # from_numpy: a constant in the trace, not a recorded sequence of index writes
            self._cache[key] = (
                torch.from_numpy(rows).to(device=like.device, dtype=like.dtype),
                torch.from_numpy(cols).to(device=like.device, dtype=like.dtype),
            )
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self._matrices(int(x.shape[-2]), int(x.shape[-1]), x)
        return torch.matmul(torch.matmul(rows, x), cols)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def replace_adaptive_avg_pooling(module: nn.Module) -> int:
    """
    Replace every ``nn.AdaptiveAvgPool2d`` inside ``module`` (in place) by a
    :class:`StaticAdaptiveAvgPool2d` with the same output size; returns how many were replaced.
    Pass a copy when the original model must stay untouched.
    """
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, StaticAdaptiveAvgPool2d(child.output_size))
                count += 1
    return count
