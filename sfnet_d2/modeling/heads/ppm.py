"""Pyramid Pooling Module (PSPNet), as the official SFNet code builds it (``PSPModule``)."""
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = ["PyramidPoolingModule"]


class PyramidPoolingModule(nn.Module):
    """
    Pools the input to each ``bins`` size, projects each with 1x1 conv + norm (no activation, as in
    the official code), upsamples (bilinear, align_corners=True) and concatenates
    ``[pooled_1, ..., pooled_k, input]`` (pooled priors first, input last), then fuses with a 1x1
    conv + norm + ReLU + Dropout2d(0.1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        norm: str = "BN",
        dropout: float = 0.1,
    ):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                Conv2d(in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)),
            )
            for b in bins
        )
        self.bottleneck = Conv2d(
            in_channels + len(bins) * out_channels,
            out_channels,
            1,
            bias=False,
            norm=get_norm(norm, out_channels),
            activation=F.relu,
        )
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        priors = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True)
            for stage in self.stages
        ]
        return self.dropout(self.bottleneck(torch.cat(priors + [x], dim=1)))
