"""
DETR-style sine positional encoding (what K-Net adds to its kernel features through mmdet's
``SinePositionalEncoding(num_feats=128, normalize=True)`` of
mmdet/models/utils/positional_encoding.py, used in ZwwWayne/K-Net@5e50ee5
knet/det/semantic_fpn_wrapper.py).

For an all-valid (N, C, H, W) map with C = 2 * num_feats: the row index y and column index x
(1-based cumulative counts) are normalised to (0, 2*pi] with ``y / (H + eps) * 2*pi``, divided by
``temperature ** (2 * floor(i / 2) / num_feats)`` for feature i, sin on even and cos on odd
features (interleaved), and the y encoding comes first in the channel order, then x.
"""
import math

import torch
from torch import nn

__all__ = ["SinePositionalEncoding"]


class SinePositionalEncoding(nn.Module):
    def __init__(self, num_feats: int, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6):
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The encoding of ``x``'s spatial grid: (N, 2 * num_feats, H, W), same dtype/device."""
        n, _, h, w = x.shape
        # No padding mask (K-Net passes an all-zero mask): positions are 1..H and 1..W.
        y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)[:, None].expand(h, w)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)[None, :].expand(h, w)
        if self.normalize:
            y = y / (h + self.eps) * self.scale
            xs = xs / (w + self.eps) * self.scale
        i = torch.arange(self.num_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_feats)
        pos_y = y[..., None] / dim_t  # (H, W, F)
        pos_x = xs[..., None] / dim_t
        # interleave: sin of even features, cos of odd ones
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(2)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)  # (2F, H, W)
        return pos[None].expand(n, -1, -1, -1).to(x.dtype)
