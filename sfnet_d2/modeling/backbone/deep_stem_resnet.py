"""
The deep-stem ResNet ("ResNet-D" in the SFNet code) at depths 18, 50 and 101, as the official
SFSegNets code builds it (lxtGH/SFSegNets@ba475ba network/resnet_d.py + the 'variant D' edit in
network/sfnet_resnet.py; shapes measured by running lxtGH/SFSegNets@ba475ba):

* stem: conv3x3(3->64, s2)+BN+ReLU, conv3x3(64->64)+BN+ReLU, conv3x3(64->128)+BN+ReLU,
  maxpool 3/2/1, so the first stage sees 128 channels (hence a 1x1 projection in res2 block 0
  even for ResNet-18);
* BasicBlock puts the stride on conv1, Bottleneck on its 3x3 conv2 (torchvision style);
* 'variant D' sets dilation = padding = 2 on every ``conv2`` of res4 and 4 on every ``conv2`` of
  res5 **but keeps their strides**, so the output stride stays 32 (res2..res5 at 1/4..1/32).

Option (off by default, ``MODEL.ROBUSTNET.*``): RobustNet's instance normalisation / whitening at
the stem's last norm and at the output of a stage's last block
(sfnet_d2/modeling/backbone/robustnet.py).
"""
from typing import Dict, Optional, Sequence

import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from sfnet_d2.modeling.backbone.robustnet import (InstanceWhitening, WhiteningLossMixin,
                                                  robustnet_backbone_options)
from sfnet_d2.modeling.backbone.stages import run_stages

__all__ = ["DeepStemResNet", "build_deep_stem_resnet_backbone", "RESNET_DEPTHS"]

# depth -> (block type, blocks per stage)
RESNET_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3))}


def _init_conv(conv: nn.Conv2d):
    # The official backbone init (torchvision's): kaiming normal, fan_out, relu; BN at (1, 0).
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, dilation=1, norm="BN"):
        super().__init__()
        # RobustNet: set to an InstanceWhitening applied after the residual sum, before the ReLU.
        self.instance_norm: Optional[nn.Module] = None
        self.conv1 = Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False,
                            norm=get_norm(norm, channels))
        self.conv2 = Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                            bias=False, norm=get_norm(norm, channels))
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = Conv2d(in_channels, channels, 1, stride=stride, bias=False,
                                   norm=get_norm(norm, channels))

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        if self.instance_norm is not None:  # not in place: the IN output feeds the whitening loss
            return F.relu(self.instance_norm(out + identity))
        return F.relu_(out + identity)


class BottleneckBlock(nn.Module):
    expansion = 4

    def __init__(self, in_channels, channels, stride=1, dilation=1, norm="BN"):
        super().__init__()
        self.instance_norm: Optional[nn.Module] = None  # as in BasicBlock
        out_channels = channels * self.expansion
        self.conv1 = Conv2d(in_channels, channels, 1, bias=False, norm=get_norm(norm, channels))
        self.conv2 = Conv2d(channels, channels, 3, stride=stride, padding=dilation,
                            dilation=dilation, bias=False, norm=get_norm(norm, channels))
        self.conv3 = Conv2d(channels, out_channels, 1, bias=False,
                            norm=get_norm(norm, out_channels))
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, 1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        if self.instance_norm is not None:
            return F.relu(self.instance_norm(out + identity))
        return F.relu_(out + identity)


class DeepStem(nn.Module):
    def __init__(self, in_channels=3, norm="BN", conv3_norm: Optional[nn.Module] = None):
        """``conv3_norm``: a module replacing the third conv's norm (RobustNet's ``bn3``)."""
        super().__init__()
        self.conv1 = Conv2d(in_channels, 64, 3, stride=2, padding=1, bias=False,
                            norm=get_norm(norm, 64))
        self.conv2 = Conv2d(64, 64, 3, padding=1, bias=False, norm=get_norm(norm, 64))
        self.conv3 = Conv2d(64, 128, 3, padding=1, bias=False,
                            norm=get_norm(norm, 128) if conv3_norm is None else conv3_norm)
        self._conv3_relu_inplace = conv3_norm is None  # an IN output must stay unchanged
        self.out_channels = 128

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = self.conv3(x)
        x = F.relu_(x) if self._conv3_relu_inplace else F.relu(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepStemResNet(WhiteningLossMixin, Backbone):
    """
    Deep-stem ResNet returning ``res2..res5`` (strides 4, 8, 16, 32). Each stage's blocks are in
    ``self.res{2..5}``; ``dilations`` gives the dilation of every block's 3x3 ``conv2`` per stage
    (official variant D: (1, 1, 2, 4)); strides are never changed by it.
    """

    def __init__(
        self,
        depth: int = 18,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        dilations: Sequence[int] = (1, 1, 2, 4),
        norm: str = "BN",
        freeze_at: int = 0,
        in_channels: int = 3,
        robustnet_mode: str = "none",
        robustnet_layers: Sequence[str] = (),
        robustnet_loss_weight: float = 0.6,
    ):
        """``robustnet_*``: RobustNet's instance normalisation / whitening (mode "none", "is",
        "in", "iw", "isw") at ``robustnet_layers`` among "stem", "res2".."res5", and the weight
        of its loss (sfnet_d2/modeling/backbone/robustnet.py)."""
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(
                f"MODEL.RESNETS.DEPTH={depth} is not a deep-stem ResNet depth; use one of "
                f"{sorted(RESNET_DEPTHS)}"
            )
        if len(dilations) != 4:
            raise ValueError(
                f"MODEL.SFNET.RESNET_DILATIONS must give 4 values (res2..res5), "
                f"got {list(dilations)}"
            )
        kind, blocks = RESNET_DEPTHS[depth]
        block_cls = BasicBlock if kind == "basic" else BottleneckBlock
        self.robustnet_mode = robustnet_mode
        self.robustnet_loss_weight = robustnet_loss_weight
        whiten = set(robustnet_layers) if robustnet_mode != "none" else set()
        self.stem = DeepStem(in_channels, norm, InstanceWhitening(128, robustnet_mode)
                             if "stem" in whiten else None)
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        channels_in = self.stem.out_channels
        stage_names = []
        widths = (64, 128, 256, 512)
        for i, (n_blocks, width, dilation) in enumerate(zip(blocks, widths, dilations)):
            name = f"res{i + 2}"
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n_blocks):
                layers.append(
                    block_cls(channels_in, width, stride if b == 0 else 1, dilation, norm))
                channels_in = width * block_cls.expansion
            if name in whiten:
                layers[-1].instance_norm = InstanceWhitening(channels_in, robustnet_mode)
            self.add_module(name, nn.Sequential(*layers))
            stage_names.append(name)
            self._out_feature_strides[name] = 4 * 2 ** i
            self._out_feature_channels[name] = channels_in
        unknown = [f for f in out_features if f not in stage_names]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.RESNETS.OUT_FEATURES={list(out_features)}: unknown {unknown}; "
                f"choose from {stage_names}"
            )
        self._out_features = list(out_features)
        self._stage_names = stage_names[: max(stage_names.index(f) for f in out_features) + 1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _init_conv(m)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0):
        """Freeze the stem (freeze_at >= 1) and the first ``freeze_at - 1`` stages."""
        frozen = ([self.stem] if freeze_at >= 1 else []) + [
            getattr(self, f"res{i + 2}") for i in range(max(freeze_at - 1, 0))
        ]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self

    def forward(self, x) -> Dict[str, "torch.Tensor"]:  # noqa: F821
        if x.dim() != 4:
            raise ValueError(
                f"DeepStemResNet takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        # Features only; in training with RobustNet IW/ISW the whitening loss is kept for
        # pop_auxiliary_losses() (robustnet.py, taken by SFNetSemanticSegmentor).
        return self.forward_with_whitening(x)

    def _forward_stages(self, x) -> Dict[str, "torch.Tensor"]:  # noqa: F821
        return run_stages(self, self.stem(x), self._stage_names, self._out_features)

    # output_shape(): detectron2's Backbone default, from _out_feature_channels/_strides.

    @property
    def size_divisibility(self) -> int:
        # Inputs padded to a multiple of the output stride keep every level exactly 2x the next,
        # so the flow warps and upsamplings map pixel grids the way the official code does.
        return 32


@BACKBONE_REGISTRY.register()
def build_deep_stem_resnet_backbone(cfg, input_shape: ShapeSpec) -> DeepStemResNet:
    """
    Config: ``MODEL.RESNETS.DEPTH`` (18/50/101), ``MODEL.RESNETS.OUT_FEATURES``,
    ``MODEL.RESNETS.NORM``, ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.SFNET.RESNET_DILATIONS``,
    ``MODEL.ROBUSTNET.*``.
    """
    mode, layers, loss_weight = robustnet_backbone_options(
        cfg, ("stem", "res2", "res3", "res4", "res5"))
    return DeepStemResNet(
        depth=cfg.MODEL.RESNETS.DEPTH,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        dilations=cfg.MODEL.SFNET.RESNET_DILATIONS,
        norm=cfg.MODEL.RESNETS.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_channels=input_shape.channels,
        robustnet_mode=mode,
        robustnet_layers=layers,
        robustnet_loss_weight=loss_weight,
    )
