"""
The deformable-convolution alignment baseline of the paper (Table 9d and Table 16:
``MODEL.SFNET.ALIGN = "deform"``).

Paper, Sec. 4.3: "We apply DCN on the concatenated feature map of the bilinear upsampled feature
map and the feature map of the next level"; Sec. 4.6: "we replace GD-FAM or FAM with a simple
concatenation followed by a deformable convolution". The paper gives no more detail. Our reading,
which makes DCN a drop-in replacement of FAM (same inputs, same output, same residual in the
decoder):

    up      = bilinear(high -> size(low), align_corners=True)
    offsets = Conv3x3(cat[up, low])          # 2 * k * k channels, with bias, zero-initialised
    out     = DeformConv_kxk(up, offsets)    # channels -> channels, no bias

and the decoder then adds the lateral feature, ``f = low + out``, as it does for FAM. The offsets
are predicted from the concatenation (as the paper says) and deform the sampling of the upsampled
coarse feature (what FAM's flow warps). Zero-initialised offsets (the usual DCN practice) make the
module start as a plain ``k x k`` convolution of the upsampled coarse feature. Uses
``torchvision.ops.deform_conv2d`` (CPU and CUDA kernels), not detectron2's compiled op.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

__all__ = ["DeformableAlignModule"]


class DeformableAlignModule(nn.Module):
    """Aligns a coarse feature ``high`` onto the grid of a fine feature ``low`` (both
    ``channels`` wide) with one deformable convolution whose offsets see both features."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"DeformableAlignModule: kernel_size must be odd, got {kernel_size}")
        self.offset_conv = nn.Conv2d(2 * channels, 2 * kernel_size * kernel_size, 3, padding=1,
                                     bias=True)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)
        self.deform_conv = DeformConv2d(channels, channels, kernel_size,
                                        padding=kernel_size // 2, bias=False)

    def forward(self, low: torch.Tensor, high: torch.Tensor, return_offsets: bool = False):
        up = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        # torchvision layout: (N, 2*k*k, H, W), a (dy, dx) pair per kernel tap, row-major taps.
        offsets = self.offset_conv(torch.cat([up, low], dim=1))
        out = self.deform_conv(up, offsets)
        return (out, offsets) if return_offsets else out
