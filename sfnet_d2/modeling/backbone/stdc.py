"""
STDC backbones (STDCNet813 = "STDC1", STDCNet1446 = "STDC2") as the official SFSegNets code builds
them for SFNet / SFNet-Lite (lxtGH/SFSegNets@ba475ba network/stdcnet.py used by
network/sfnet_stdcnet.py). Base width 64, 4 branches per block, the
"cat" block type, no ``conv_last``:

* stem: ConvX(3->32, 3x3, s2) then ConvX(32->64, 3x3, s2); ConvX = conv (no bias) + norm + ReLU.
  Its output is the official ``feat4`` (64 channels at 1/4), which we call ``res2``.
* ``res3`` / ``res4`` / ``res5``: CatBottleneck stages of width O = 256 / 512 / 1024 at 1/8, 1/16,
  1/32, with (2, 2, 2) blocks (STDC1) or (4, 5, 3) (STDC2); the first block of a stage has stride 2.
* CatBottleneck(O): four ConvX branches in a chain, 1x1 (in->O/2), 3x3 (O/2->O/4), 3x3
  (O/4->O/8), 3x3 (O/8->O/8), whose outputs are concatenated first-to-last (O/2+O/4+O/8+O/8 = O).
  In a stride-2 block the downsampling is *not* in a ConvX: the first branch's output goes through
  a depthwise 3x3 s2 conv + norm (no ReLU, ``avd``) before feeding the second branch, and the first
  branch's own slot in the concatenation is that output average-pooled (3x3, s2, pad 1, padding
  counted in the mean, the ``nn.AvgPool2d`` default). There is no residual connection.

Not built: the ImageNet classifier tail (``conv_last``, ``fc``, ``bn``, ``linear``; 3,125,248
parameters that SFNet keeps in its state_dict but never runs) and the ``x2``..``x32`` wrappers,
which make every official backbone tensor appear twice in the state_dict. The official key names
(SFNet checkpoints and the ImageNet STDC files use the same ones) are translated to ours by
``official_stdc_key_map`` (sfnet_d2/converters/official_backbones.py).

One official quirk we do not reproduce: the official CatBottleneck forwards ``norm_layer`` only to
``avd``, so with ``--syncbn`` only those norms are synchronised. Here ``MODEL.STDC.NORM`` applies to
every norm layer; with plain BN (or in a single process) the two are the same network.

Option (off by default, ``MODEL.ROBUSTNET.*``): RobustNet's instance normalisation / whitening in
place of the stem convs' norms and on the output of a stage's last block
(sfnet_d2/modeling/backbone/robustnet.py).
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from sfnet_d2.modeling.backbone.robustnet import (InstanceWhitening, WhiteningLossMixin,
                                                  robustnet_backbone_options)
from sfnet_d2.modeling.backbone.stages import run_stages

__all__ = ["STDC_LAYOUTS", "CatBottleneck", "STDCNet", "build_stdc_backbone"]

# MODEL.STDC.NAME -> CatBottleneck blocks in res3, res4, res5 (official STDCNet813 / STDCNet1446).
STDC_LAYOUTS = {"STDC1": (2, 2, 2), "STDC2": (4, 5, 3)}
_STAGE_WIDTHS = (256, 512, 1024)
_STAGE_NAMES = ("res3", "res4", "res5")
_STEM_CHANNELS = (32, 64)


def _conv_x(in_channels, out_channels, kernel_size, stride, norm, norm_module=None):
    """The official ConvX: bias-free conv, 'same' padding for odd kernels, norm, ReLU.
    ``norm_module`` replaces the norm (RobustNet); the ReLU is not in place."""
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, bias=False,
                  norm=get_norm(norm, out_channels) if norm_module is None else norm_module,
                  activation=F.relu)


class CatBottleneck(nn.Module):
    """
    The STDC module with concatenation (official ``CatBottleneck``, block_num 4). ``convs[0..3]``
    are the four chained branches; ``avd`` (stride 2 only) is the depthwise downsampling conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "BN"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"CatBottleneck stride must be 1 or 2, got {stride}")
        if out_channels % 8:
            raise ValueError(
                f"CatBottleneck out_channels must be a multiple of 8, got {out_channels}")
        self.stride = stride
        half, quarter, eighth = out_channels // 2, out_channels // 4, out_channels // 8
        # The official block puts no stride in any ConvX: avd below does the downsampling.
        self.convs = nn.ModuleList([
            _conv_x(in_channels, half, 1, 1, norm),
            _conv_x(half, quarter, 3, 1, norm),
            _conv_x(quarter, eighth, 3, 1, norm),
            _conv_x(eighth, eighth, 3, 1, norm),
        ])
        self.avd = None
        if stride == 2:
            # Depthwise 3x3 s2 + norm with no activation (official avd_layer).
            self.avd = Conv2d(half, half, 3, stride=2, padding=1, groups=half, bias=False,
                              norm=get_norm(norm, half))
        self.out_channels = out_channels

    def forward(self, x):
        first = self.convs[0](x)
        y = first if self.avd is None else self.avd(first)
        outs = []
        for conv in self.convs[1:]:
            y = conv(y)
            outs.append(y)
        if self.stride == 2:
            # The skip path pools the first branch (pre-avd) to the new resolution so that it can
            # be concatenated; count_include_pad=True as in the official nn.AvgPool2d(3, 2, 1).
            first = F.avg_pool2d(first, kernel_size=3, stride=2, padding=1)
        return torch.cat([first] + outs, dim=1)


class STDCStem(nn.Module):
    """Two ConvX 3x3 s2 (official features.0 = x2 and features.1 = x4): 64 channels at 1/4."""

    def __init__(self, in_channels: int = 3, norm: str = "BN", conv1_norm=None, conv2_norm=None):
        super().__init__()
        self.conv1 = _conv_x(in_channels, _STEM_CHANNELS[0], 3, 2, norm, conv1_norm)
        self.conv2 = _conv_x(_STEM_CHANNELS[0], _STEM_CHANNELS[1], 3, 2, norm, conv2_norm)
        self.out_channels = _STEM_CHANNELS[1]

    def forward(self, x):
        return self.conv2(self.conv1(x))


class STDCNet(WhiteningLossMixin, Backbone):
    """
    STDC1/STDC2 returning any of ``res2`` (64@1/4, the stem output), ``res3`` (256@1/8),
    ``res4`` (512@1/16), ``res5`` (1024@1/32). Stages are ``self.stem`` and
    ``self.res3..res5`` (``nn.Sequential`` of :class:`CatBottleneck`).
    """

    def __init__(
        self,
        name: str = "STDC1",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        norm: str = "BN",
        freeze_at: int = 0,
        in_channels: int = 3,
        robustnet_mode: str = "none",
        robustnet_layers: Sequence[str] = (),
        robustnet_loss_weight: float = 0.6,
    ):
        """``robustnet_*``: RobustNet's instance normalisation / whitening (mode "none", "is",
        "in", "iw", "isw") at ``robustnet_layers`` among "stem" (norm of the stride-2 stem conv),
        "res2" (norm of the stride-4 stem conv), "res3".."res5" (an IN module appended to the
        stage, on its last block's output), and the weight of its loss."""
        super().__init__()
        if name not in STDC_LAYOUTS:
            raise ValueError(
                f"MODEL.STDC.NAME={name!r} is not an STDC backbone; "
                f"use one of {sorted(STDC_LAYOUTS)}"
            )
        self.name = name
        self.robustnet_mode = robustnet_mode
        self.robustnet_loss_weight = robustnet_loss_weight
        whiten = set(robustnet_layers) if robustnet_mode != "none" else set()
        self.stem = STDCStem(
            in_channels, norm,
            InstanceWhitening(_STEM_CHANNELS[0], robustnet_mode) if "stem" in whiten else None,
            InstanceWhitening(_STEM_CHANNELS[1], robustnet_mode) if "res2" in whiten else None)
        names = ["res2"]
        self._out_feature_channels = {"res2": self.stem.out_channels}
        self._out_feature_strides = {"res2": 4}
        channels = self.stem.out_channels
        for i, (stage, width, n_blocks) in enumerate(
                zip(_STAGE_NAMES, _STAGE_WIDTHS, STDC_LAYOUTS[name])):
            blocks = []
            for b in range(n_blocks):
                blocks.append(CatBottleneck(channels, width, 2 if b == 0 else 1, norm))
                channels = width
            if stage in whiten:
                blocks.append(InstanceWhitening(width, robustnet_mode))
            self.add_module(stage, nn.Sequential(*blocks))
            names.append(stage)
            self._out_feature_channels[stage] = width
            self._out_feature_strides[stage] = 8 * 2 ** i
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.STDC.OUT_FEATURES={list(out_features)}: unknown {unknown}; "
                f"choose from {names}"
            )
        self._out_features = list(out_features)
        # Stages after the last requested output are built (so checkpoints keep their keys) but
        # not run.
        self._run_stages = list(_STAGE_NAMES[: max(names.index(f) for f in out_features)])
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self):
        # Official from-scratch init (init_params): kaiming normal with fan_out for every conv
        # (torch's default leaky_relu with a=0 has the ReLU gain sqrt(2)), norm weight 1, bias 0.
        # SFNet normally starts from the ImageNet STDC weights instead (converted with
        # sfnet_d2/converters/official_backbones.py).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int = 0):
        """
        ``freeze_at >= 1`` freezes the stem (which produces res2, so 2 means the same);
        ``freeze_at = k >= 3`` also freezes res3..res{k}.
        """
        frozen = ([self.stem] if freeze_at >= 1 else []) + [
            getattr(self, f"res{k}") for k in range(3, min(freeze_at, 5) + 1)
        ]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"STDCNet takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        # Features only; in training with RobustNet IW/ISW the whitening loss is kept for
        # pop_auxiliary_losses() (robustnet.py, taken by SFNetSemanticSegmentor).
        return self.forward_with_whitening(x)

    def _forward_stages(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        if "res2" in self._out_features:
            outputs["res2"] = x
        return run_stages(self, x, self._run_stages, self._out_features, outputs)

    # output_shape(): detectron2's Backbone default, from _out_feature_channels/_strides.

    @property
    def size_divisibility(self) -> int:
        # With inputs a multiple of the output stride every level is exactly half the previous
        # one, which the decoder's upsampling and flow warps assume.
        return 32


@BACKBONE_REGISTRY.register()
def build_stdc_backbone(cfg, input_shape: ShapeSpec) -> STDCNet:
    """
    Config: ``MODEL.STDC.NAME`` ("STDC1"/"STDC2"), ``MODEL.STDC.OUT_FEATURES``,
    ``MODEL.STDC.NORM``, ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.ROBUSTNET.*``.
    """
    mode, layers, loss_weight = robustnet_backbone_options(
        cfg, ("stem", "res2", "res3", "res4", "res5"))
    return STDCNet(
        name=cfg.MODEL.STDC.NAME,
        out_features=cfg.MODEL.STDC.OUT_FEATURES,
        norm=cfg.MODEL.STDC.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_channels=input_shape.channels,
        robustnet_mode=mode,
        robustnet_layers=layers,
        robustnet_loss_weight=loss_weight,
    )
