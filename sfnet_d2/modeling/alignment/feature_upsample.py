"""
How FAM / GD-FAM upsample the *reduced* coarse feature before predicting the flow (paper Table 9a:
bilinear 78.3, deconvolution 77.9, nearest neighbour 78.2 mIoU on Cityscapes val, SFNet R18).

Only this one upsampling changes: the warp itself stays ``grid_sample`` (bilinear) of the original
coarse feature, as in every FAM. The official code always uses bilinear, align_corners=True
(lxtGH/SFSegNets@ba475ba network/nn/operators.py, network/sfnet_resnet.py); that default needs
no module, so ``build_coarse_upsampler("bilinear", ...)`` returns ``None`` and the modules keep
their official state_dict keys.

* ``"nearest"``: ``F.interpolate(mode="nearest")`` to the fine size (no parameters).
* ``"deconv"``: a learned ``ConvTranspose2d`` (channels -> channels, no bias) with stride equal to
  the resolution ratio ``s`` between the two levels: kernel ``2s``, padding ``s/2`` for even ``s``
  (the FCN "backwards strided convolution"), kernel 3 / padding 1 for ``s = 1`` (e.g. DFNet v1,
  whose two coarsest levels are both at 1/32). The paper does not give its deconvolution's
  details; we initialise it as per-channel bilinear upsampling (as FCN does), so training starts
  from the ``"bilinear"`` behaviour up to the align_corners convention and the border.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UPSAMPLE_CHOICES", "NearestUpsample", "DeconvUpsample", "build_coarse_upsampler",
           "bilinear_deconv_kernel"]

UPSAMPLE_CHOICES = ("bilinear", "nearest", "deconv")


class NearestUpsample(nn.Module):
    """Nearest-neighbour upsampling to a given size (``MODEL.SFNET.FAM_UPSAMPLE = "nearest"``)."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="nearest")


def bilinear_deconv_kernel(scale_factor: int) -> torch.Tensor:
    """The 1-D bilinear interpolation kernel of a stride-``s`` transposed conv (length ``2s``):
    ``1 - |i - (s - 1/2)| / s`` for ``i = 0 .. 2s-1``, e.g. [1/4, 3/4, 3/4, 1/4] for ``s = 2``."""
    s = scale_factor
    i = torch.arange(2 * s, dtype=torch.float64)
    return 1 - (i - (s - 0.5)).abs() / s


class DeconvUpsample(nn.Module):
    """Learned upsampling by an integer factor (``MODEL.SFNET.FAM_UPSAMPLE = "deconv"``)."""

    def __init__(self, channels: int, scale_factor: int):
        super().__init__()
        s = int(scale_factor)
        if s == 1:
            kernel, padding = 3, 1
        elif s >= 2 and s % 2 == 0:
            kernel, padding = 2 * s, s // 2
        else:
            raise ValueError(
                f"MODEL.SFNET.FAM_UPSAMPLE='deconv' needs a resolution ratio of 1 or an even number "
                f"between the coarse and the fine feature, got {scale_factor}; use 'bilinear' or "
                "'nearest' for these levels"
            )
        self.scale_factor = s
        self.deconv = nn.ConvTranspose2d(channels, channels, kernel, stride=s, padding=padding,
                                         bias=False)
        with torch.no_grad():
            # Per-channel bilinear upsampling (identity across channels), FCN-style.
            self.deconv.weight.zero_()
            if s == 1:
                kernel_2d = torch.zeros(3, 3)
                kernel_2d[1, 1] = 1.0
            else:
                k1 = bilinear_deconv_kernel(s)
                kernel_2d = torch.outer(k1, k1).to(self.deconv.weight.dtype)
            for c in range(channels):
                self.deconv.weight[c, c] = kernel_2d

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        out = self.deconv(x)
        if tuple(out.shape[-2:]) != tuple(size):
            raise ValueError(
                f"MODEL.SFNET.FAM_UPSAMPLE='deconv': upsampling {tuple(x.shape[-2:])} by "
                f"{self.scale_factor} gives {tuple(out.shape[-2:])}, but the fine feature is "
                f"{tuple(size)}; the input size must be a multiple of the backbone's output stride "
                "(detectron2 pads to it when size_divisibility is set)"
            )
        return out


def build_coarse_upsampler(kind: str, channels: int, scale_factor: int) -> Optional[nn.Module]:
    """The upsampler for ``kind`` (``MODEL.SFNET.FAM_UPSAMPLE``); ``None`` means the official
    bilinear, align_corners=True interpolation, done without a module."""
    if kind == "bilinear":
        return None
    if kind == "nearest":
        return NearestUpsample()
    if kind == "deconv":
        return DeconvUpsample(channels, scale_factor)
    raise ValueError(
        f"MODEL.SFNET.FAM_UPSAMPLE={kind!r} is not one of {list(UPSAMPLE_CHOICES)}"
    )
