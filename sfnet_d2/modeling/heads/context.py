"""
The context module on the coarsest backbone level of the SFNet decoders
(``MODEL.SFNET.CONTEXT``; paper Table 8a and 8c):

* ``"ppm"`` (default, official): the Pyramid Pooling Module (ppm.py), stored as ``neck.ppm``.
* ``"aspp"``: DeepLabv3's Atrous Spatial Pyramid Pooling, detectron2's own ``ASPP`` layer
  (1x1 branch, three 3x3 atrous branches with ``MODEL.SFNET.ASPP_DILATIONS``, an image-pooling
  branch, concatenation and a 1x1 projection, each conv + norm + ReLU except the pooled branch's,
  which has a bias and no norm), then Dropout 0.1 as the PPM has. Stored as ``neck.aspp``.
  Default rates (6, 12, 18): DeepLabv3's rates at output stride 16, also the default of the
  official SFSegNets ASPP module (network/nn/operators.py). Our decoders apply it at stride 32,
  where the same rates cover twice the image extent; the paper does not give its rates.
* ``"none"``: no context, only a lateral 1x1 conv + norm + ReLU (as ``lateral_convs``) to the
  decoder width - the plain FPN top level of Table 8a ("+FPN", "+FAM"). Stored as
  ``neck.top_lateral``.

The module name says what is inside, so checkpoints of different variants never load into each
other by accident, and the default keeps the official ``neck.ppm.*`` keys.
"""
from typing import Sequence, Tuple

import torch.nn.functional as F
from detectron2.layers import ASPP, Conv2d, get_norm
from torch import nn

from sfnet_d2.modeling.heads.ppm import PyramidPoolingModule

__all__ = ["CONTEXT_CHOICES", "build_context_module"]

CONTEXT_CHOICES = ("ppm", "aspp", "none")


def build_context_module(
    kind: str,
    in_channels: int,
    out_channels: int,
    *,
    norm: str,
    ppm_bins: Sequence[int] = (1, 2, 3, 6),
    aspp_dilations: Sequence[int] = (6, 12, 18),
) -> Tuple[str, nn.Module]:
    """Returns ``(attribute name, module)``; the module maps the coarsest backbone feature
    (``in_channels``) to the decoder width ``out_channels`` at the same resolution."""
    if kind == "ppm":
        return "ppm", PyramidPoolingModule(in_channels, out_channels, ppm_bins, norm)
    if kind == "aspp":
        if len(aspp_dilations) != 3:
            raise ValueError(
                f"MODEL.SFNET.ASPP_DILATIONS must give 3 rates (DeepLabv3), got {list(aspp_dilations)}"
            )
        return "aspp", ASPP(in_channels, out_channels, list(aspp_dilations), norm=norm,
                            activation=F.relu, dropout=0.1)
    if kind == "none":
        # Same form as the other lateral convs (official fpn_in: 1x1 conv with bias, norm, ReLU).
        return "top_lateral", Conv2d(in_channels, out_channels, 1, bias=True,
                                     norm=get_norm(norm, out_channels), activation=F.relu)
    raise ValueError(f"MODEL.SFNET.CONTEXT={kind!r} is not one of {list(CONTEXT_CHOICES)}")
