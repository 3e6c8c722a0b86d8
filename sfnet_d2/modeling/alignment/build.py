"""
How the SFNet decoders merge a coarse feature into a fine one at each top-down step
(``MODEL.SFNET.ALIGN`` and ``MODEL.SFNET.ALIGN_LEVELS``; paper Tables 8a/8b, 9d, 10a and 16):

=============  ==========================================  ===================================
ALIGN          merged feature ``f`` at the fine level       module (``align_modules[i]``)
=============  ==========================================  ===================================
``fam``        ``low + FAM(low, high)``                     ``FlowAlignModule`` (SFNet default)
``gdfam``      ``GDFAM(low, high)`` (no residual: GD-FAM    ``GatedDualFlowAlignModule``
               already mixes ``low`` in)                    (SFNet-Lite default)
``deform``     ``low + DCN(low, high)``                     ``DeformableAlignModule``
``bilinear``   ``low + up(high)``, up = bilinear            none (``nn.Identity`` placeholder in
               align_corners=True: the plain FPN             ``SFNetDecoder`` so indices, and the
               baseline "FPN + PPM"                           official state_dict keys, stay put)
=============  ==========================================  ===================================

``low`` is the lateral (fpn_in) output of the fine level, ``high`` the merged feature of the level
above (or the context module's output). ``ALIGN_LEVELS`` names the *coarse* backbone level of each
step that uses ``ALIGN``; the other steps use ``bilinear``. This is the paper's naming: in
Table 8b the column F5 is the FAM that upsamples the PPM output on res5 onto res4, F4 the one that
upsamples the merged res4 map onto res3, F3 the one onto res2. ``["all"]`` (default) = every step.
"""
from typing import Optional, Sequence, Set

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.modeling.alignment.deform_align import DeformableAlignModule
from sfnet_d2.modeling.alignment.flow_alignment import FlowAlignModule, GatedDualFlowAlignModule

__all__ = ["ALIGN_CHOICES", "build_align_module", "merge_coarse_into_fine", "selected_align_levels"]

ALIGN_CHOICES = ("fam", "gdfam", "deform", "bilinear")


def selected_align_levels(align_levels: Sequence[str], coarse_levels: Sequence[str]) -> Set[str]:
    """The coarse levels (backbone feature names) whose step uses ``MODEL.SFNET.ALIGN``."""
    levels = list(align_levels)
    if levels == ["all"]:
        return set(coarse_levels)
    unknown = [name for name in levels if name not in coarse_levels]
    if unknown:
        raise ValueError(
            f"MODEL.SFNET.ALIGN_LEVELS={levels}: {unknown} is not the coarse level of any "
            f"top-down step of this decoder; use [\"all\"] or a subset of {list(coarse_levels)} "
            "(each step is named by the level it upsamples, e.g. res5 = the PPM output aligned "
            "onto res4, the paper's F5)"
        )
    return set(levels)


def build_align_module(
    kind: str,
    channels: int,
    *,
    scale_factor: int,
    flow_kernel_size: int = 3,
    warp_align_corners: bool = True,
    fam_upsample: str = "bilinear",
    gdfam_gate: str = "atten",
    gdfam_dual_flow: bool = True,
) -> Optional[nn.Module]:
    """The module for one top-down step, or ``None`` for ``bilinear`` (no parameters).
    ``scale_factor`` is the resolution ratio between the two levels (FAM_UPSAMPLE="deconv")."""
    if kind == "fam":
        return FlowAlignModule(channels, flow_kernel_size, warp_align_corners,
                               upsample=fam_upsample, scale_factor=scale_factor)
    if kind == "gdfam":
        return GatedDualFlowAlignModule(channels, flow_kernel_size, warp_align_corners,
                                        upsample=fam_upsample, scale_factor=scale_factor,
                                        gate=gdfam_gate, dual_flow=gdfam_dual_flow)
    if kind == "deform":
        return DeformableAlignModule(channels)
    if kind == "bilinear":
        return None
    raise ValueError(f"MODEL.SFNET.ALIGN={kind!r} is not one of {list(ALIGN_CHOICES)}")


def merge_coarse_into_fine(kind: str, module: Optional[nn.Module], low: torch.Tensor,
                           high: torch.Tensor):
    """``(f, flow)``: the merged fine-level feature, and the semantic flow of flow-based
    alignments (``None`` for ``deform`` and ``bilinear``)."""
    if kind == "fam":
        warped, flow = module(low, high, return_flow=True)
        return low + warped, flow
    if kind == "gdfam":
        return module(low, high, return_flow=True)
    if kind == "deform":
        return low + module(low, high), None
    if kind == "bilinear":
        up = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return low + up, None
    raise ValueError(f"MODEL.SFNET.ALIGN={kind!r} is not one of {list(ALIGN_CHOICES)}")
