"""
The SFNet decoders ("necks"), reusable on their own: they turn backbone features into one fused
feature map at the finest input level (stride 4 for ResNet/STDC). The semantic heads add a
classifier on top; the panoptic model feeds the same fused map to its kernel heads.

* ``SFNetDecoder`` - the aligned FPN of SFNet (official ``UperNetAlignHead`` without its
  classifier): PPM on the coarsest level, then top-down at every level
  ``f = lateral_i(x_i) + FAM_i(lateral_i(x_i), f)``, ``P_i = output_i(f)``, and the fused map
  ``cat([P_finest, up(P_..), ..., up(PPM)])`` (fine to coarse; the PPM output itself is last).
* ``SFNetLiteDecoder`` - the SFNet-Lite decoder (official ``UperNetAlignHeadV2``): one GD-FAM
  aligns the finest level with the PPM output in one step, and the 1/16 level is upsampled and
  concatenated: ``cat([GDFAM(lateral_0(x_fine), PPM(x_coarse)), up(lateral_1(x_mid))])``.

``fusion_parts(features)`` gives the maps that the fused map concatenates, each at its own
resolution, and ``forward_features(features)`` returns a dict with ``"fused"`` (the fused map),
``"dsn"`` (the intermediate maps deep supervision attaches to, coarse to fine) and, when asked,
``"flows"`` (the semantic flow of every flow-based alignment module, coarse to fine) for
visualisation.

Ablation variants of the paper (docs/ABLATIONS.md) are options of these two decoders, all off by
default (the defaults build exactly the official modules, with the official state_dict keys):
``MODEL.SFNET.ALIGN`` / ``ALIGN_LEVELS`` choose the alignment of each top-down step (alignment.py),
``MODEL.SFNET.CONTEXT`` the context module on the coarsest level (context.py), and
``FAM_UPSAMPLE`` / ``GDFAM_GATE`` / ``GDFAM_DUAL_FLOW`` the inside of FAM / GD-FAM.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from sfnet_d2.modeling.alignment.build import build_align_module, merge_coarse_into_fine, selected_align_levels
from sfnet_d2.modeling.heads.context import build_context_module

__all__ = ["SFNET_NECK_REGISTRY", "build_sfnet_neck", "SFNetDecoder", "SFNetLiteDecoder"]

SFNET_NECK_REGISTRY = Registry("SFNET_NECK")
SFNET_NECK_REGISTRY.__doc__ = """
Registry for SFNet decoders ("necks"): modules with ``forward_features(features) -> dict`` holding
a fused feature map ``"fused"`` and an ``output_shape()`` describing it.
"""


def build_sfnet_neck(cfg, input_shape: Dict[str, ShapeSpec], default: str = "SFNetDecoder"):
    """Build the neck named by ``MODEL.SFNET.NECK`` (``default`` when the key is empty)."""
    name = cfg.MODEL.SFNET.NECK or default
    neck = SFNET_NECK_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(neck, "forward_features", None)):
        raise ValueError(f"MODEL.SFNET.NECK={name} has no forward_features(); it cannot be a neck")
    return neck


def _select_inputs(input_shape: Dict[str, ShapeSpec], in_features: List[str]):
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: the backbone does not output "
            f"{missing}; it outputs {sorted(input_shape)} (check MODEL.RESNETS.OUT_FEATURES)"
        )
    return sorted(((f, input_shape[f]) for f in in_features), key=lambda kv: kv[1].stride)


def _lateral(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    # Official fpn_in: 1x1 conv *with* bias, then norm and ReLU.
    return Conv2d(in_channels, conv_dim, 1, bias=True, norm=get_norm(norm, conv_dim),
                  activation=F.relu)


class _SFNetNeck(nn.Module):
    """
    What both decoders share: the constructor arguments and their config reading, the context
    module on the coarsest level, the output shape and ``forward``. A decoder says which input
    levels it accepts (``_check_levels``) and builds its top-down part (``_build_top_down``).
    """

    DEFAULT_ALIGN = "fam"  # MODEL.SFNET.ALIGN = "" means this decoder's own alignment

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        conv_dim: int,
        norm: str = "BN",
        ppm_bins=(1, 2, 3, 6),
        flow_kernel_size: int = 3,
        warp_align_corners: bool = True,
        align: str = "",
        align_levels=("all",),
        context: str = "ppm",
        aspp_dilations=(6, 12, 18),
        fam_upsample: str = "bilinear",
        gdfam_gate: str = "atten",
        gdfam_dual_flow: bool = True,
    ):
        """
        NOTE: this interface is experimental.

        Args:
            input_shape: backbone output shapes.
            in_features: backbone levels to use; the coarsest feeds the context module (PPM).
                How many each decoder takes is in its class docstring.
            conv_dim: decoder width D (128 for SFNet-R18, 256 for R50/R101, 64 for STDC/DFNet).
            norm: normalisation of every decoder conv (detectron2 ``get_norm`` name).
            ppm_bins: PPM pooling sizes.
            flow_kernel_size: kernel of the flow-predicting conv in each FAM.
            warp_align_corners: ``align_corners`` of the flow warp (True at official HEAD).
            align, align_levels: alignment of the top-down steps (alignment.py; ablations);
                ``align=""`` means the decoder's own (``DEFAULT_ALIGN``: "fam" for
                SFNetDecoder, "gdfam" for SFNetLiteDecoder).
            context, aspp_dilations: module on the coarsest level (context.py; ablations).
            fam_upsample, gdfam_gate, gdfam_dual_flow: FAM / GD-FAM internals (ablations).
        """
        super().__init__()
        levels = _select_inputs(input_shape, in_features)
        self._check_levels(levels, in_features)
        self.in_features = [name for name, _ in levels]
        # The context module is registered first, then the top-down modules: the official order.
        self._build_context(context, levels[-1][1].channels, conv_dim, norm, ppm_bins,
                            aspp_dilations)
        align_options = dict(
            flow_kernel_size=flow_kernel_size, warp_align_corners=warp_align_corners,
            fam_upsample=fam_upsample, gdfam_gate=gdfam_gate, gdfam_dual_flow=gdfam_dual_flow,
        )
        self._build_top_down(levels, conv_dim, norm, align or self.DEFAULT_ALIGN, align_levels,
                             align_options)
        self.conv_dim = conv_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        sf = cfg.MODEL.SFNET
        return {
            "input_shape": input_shape,
            "in_features": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES,
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "ppm_bins": sf.PPM_BINS,
            "flow_kernel_size": sf.FLOW_KERNEL_SIZE,
            "warp_align_corners": sf.WARP_ALIGN_CORNERS,
            "align": sf.ALIGN or cls.DEFAULT_ALIGN,
            "align_levels": sf.ALIGN_LEVELS,
            "context": sf.CONTEXT,
            "aspp_dilations": sf.ASPP_DILATIONS,
            "fam_upsample": sf.FAM_UPSAMPLE,
            "gdfam_gate": sf.GDFAM_GATE,
            "gdfam_dual_flow": sf.GDFAM_DUAL_FLOW,
        }

    def _check_levels(self, levels, in_features):
        """Raise ValueError when this decoder cannot use the selected input levels."""
        raise NotImplementedError

    def _build_top_down(self, levels, conv_dim, norm, align, align_levels, align_options):
        """Build the lateral / alignment / output modules; set ``num_dsn_inputs``,
        ``_out_channels`` and ``_out_stride``. ``align_options`` go to build_align_module."""
        raise NotImplementedError

    def _build_context(self, kind, in_channels, conv_dim, norm, ppm_bins, aspp_dilations):
        # Registered under a name that says what it is (ppm / aspp / top_lateral): the default
        # keeps the official "neck.ppm.*" keys.
        name, module = build_context_module(kind, in_channels, conv_dim, norm=norm,
                                            ppm_bins=ppm_bins, aspp_dilations=aspp_dilations)
        self.add_module(name, module)
        self._context_name = name

    @property
    def context_module(self) -> nn.Module:
        """The module on the coarsest level (PPM, ASPP or a lateral conv, MODEL.SFNET.CONTEXT)."""
        return getattr(self, self._context_name)

    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._out_channels, stride=self._out_stride)

    def forward(self, features):
        return self.forward_features(features)["fused"]

    def fusion_parts(self, features: Dict[str, torch.Tensor]):
        """``(parts, dsn_inputs, flows)``: the maps the fused map concatenates, each at its own
        resolution, finest first (the fused map is ``parts[0]`` and every other part upsampled
        to its size, concatenated on channels); the deep-supervision inputs; the flows. Lets the
        inference path convolve the parts one at a time instead of materialising the
        concatenation (sfnet_d2/deployment/activation_memory.py)."""
        raise NotImplementedError

    def forward_features(self, features: Dict[str, torch.Tensor], return_flows: bool = False):
        parts, dsn_inputs, flows = self.fusion_parts(features)
        out = {"fused": concat_fusion_parts(parts), "dsn": dsn_inputs}
        if return_flows:
            out["flows"] = flows
        return out


def upsample_fusion_part(part: torch.Tensor, size) -> torch.Tensor:
    """One coarse part of the fused map at the finest part's size (official bilinear,
    align_corners=True)."""
    return F.interpolate(part, size=size, mode="bilinear", align_corners=True)


def concat_fusion_parts(parts: List[torch.Tensor]) -> torch.Tensor:
    size = parts[0].shape[-2:]
    return torch.cat([parts[0]] + [upsample_fusion_part(p, size) for p in parts[1:]], dim=1)


@SFNET_NECK_REGISTRY.register()
class SFNetDecoder(_SFNetNeck):
    """
    The aligned FPN of SFNet (official ``UperNetAlignHead`` without its classifier). Takes at
    least 2 input levels; the coarsest feeds the PPM. Constructor arguments: see
    :class:`_SFNetNeck`.
    """

    def _check_levels(self, levels, in_features):
        if len(levels) < 2:
            raise ValueError(
                f"SFNetDecoder needs at least 2 input levels, got IN_FEATURES={list(in_features)}"
            )

    def _build_top_down(self, levels, conv_dim, norm, align, align_levels, align_options):
        fine_levels = levels[:-1]
        # index i follows in_features order (fine to coarse), as the official fpn_in/fpn_out
        self.lateral_convs = nn.ModuleList(_lateral(s.channels, conv_dim, norm) for _, s in fine_levels)
        # Step i merges level i+1 (coarse) into level i; it is named by its coarse level.
        selected = selected_align_levels(align_levels, self.in_features[1:])
        self.align_kinds = [align if self.in_features[i + 1] in selected else "bilinear"
                            for i in range(len(fine_levels))]
        modules = [
            build_align_module(
                kind, conv_dim, scale_factor=levels[i + 1][1].stride // levels[i][1].stride,
                **align_options,
            )
            for i, kind in enumerate(self.align_kinds)
        ]
        # nn.Identity (no parameters) keeps the indices of the other levels' modules.
        self.align_modules = nn.ModuleList(m if m is not None else nn.Identity() for m in modules)
        self.output_convs = nn.ModuleList(
            Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False, norm=get_norm(norm, conv_dim),
                   activation=F.relu)
            for _ in fine_levels
        )
        self.num_dsn_inputs = len(fine_levels)
        self._out_channels = conv_dim * len(levels)
        self._out_stride = levels[0][1].stride

    def fusion_parts(self, features: Dict[str, torch.Tensor]):
        xs = [features[f] for f in self.in_features]
        ppm_out = self.context_module(xs[-1])
        f = ppm_out
        pyramid, dsn_inputs, flows = [], [], []
        for i in reversed(range(len(xs) - 1)):
            lateral = self.lateral_convs[i](xs[i])
            f, flow = merge_coarse_into_fine(self.align_kinds[i], self.align_modules[i], lateral, f)
            dsn_inputs.append(f)
            if flow is not None:
                flows.append(flow)
            pyramid.append(self.output_convs[i](f))
        pyramid.reverse()  # fine to coarse
        return pyramid + [ppm_out], dsn_inputs, flows


@SFNET_NECK_REGISTRY.register()
class SFNetLiteDecoder(_SFNetNeck):
    """
    The SFNet-Lite decoder (official ``UperNetAlignHeadV2``). ``in_features`` must be exactly 3
    backbone levels, fine to coarse: the finest (1/4) goes through the GD-FAM, the middle one
    (1/16 in the paper) is concatenated, the coarsest (1/32) feeds the PPM. Official R18-Lite:
    ["res2", "res4", "res5"]. Constructor arguments: see :class:`_SFNetNeck`.
    """

    DEFAULT_ALIGN = "gdfam"

    def _check_levels(self, levels, in_features):
        if len(levels) != 3:
            raise ValueError(
                "SFNetLiteDecoder takes exactly 3 levels (finest, middle, coarsest), got "
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}"
            )

    def _build_top_down(self, levels, conv_dim, norm, align, align_levels, align_options):
        (_, fine), (_, mid), (_, coarse) = levels
        self.lateral_convs = nn.ModuleList(
            [_lateral(fine.channels, conv_dim, norm), _lateral(mid.channels, conv_dim, norm)]
        )
        # One step: the context output (coarsest level) straight onto the finest level.
        selected = selected_align_levels(align_levels, self.in_features[2:])
        self.align_kind = align if self.in_features[2] in selected else "bilinear"
        self.align_module = build_align_module(
            self.align_kind, conv_dim, scale_factor=coarse.stride // fine.stride, **align_options
        )
        self.num_dsn_inputs = 1
        self._out_channels = 2 * conv_dim
        self._out_stride = fine.stride

    def fusion_parts(self, features: Dict[str, torch.Tensor]):
        x_fine, x_mid, x_coarse = (features[f] for f in self.in_features)
        ppm_out = self.context_module(x_coarse)
        fine = self.lateral_convs[0](x_fine)
        mid = self.lateral_convs[1](x_mid)
        aligned, flow = merge_coarse_into_fine(self.align_kind, self.align_module, fine, ppm_out)
        return [aligned, mid], [aligned], [flow] if flow is not None else []
