"""
The DFNet backbones of "Partial Order Pruning" (Li et al., CVPR 2019), DF1 and DF2, built the
way the official SFSegNets code builds them for SFNet-DF1 / SFNet-DF2 (lxtGH/SFSegNets@ba475ba
network/dfnet.py, ``dfnetv1`` / ``dfnetv2`` with ``stride=32``, used by network/sfnet_dfnet.py).

Both versions share a two-conv stem and then stack ResNet BasicBlocks:

* stem: conv3x3(3->32, s2, no bias)+BN+ReLU, conv3x3(32->64, s2, no bias)+BN+ReLU (1/4, no pool);
* DF1: stage2 3x64 s2 (1/8), stage3 3x128 s2 (1/16), stage4 3x256 s2 (1/32),
  stage5 1x512 s1 (1/32);
* DF2: stage2_1 2x64 s2 (1/8), stage2_2 1x128, stage3_1 10x128 s2 (1/16), stage3_2 1x256,
  stage4_1 4x256 s2 (1/32), stage4_2 2x512.

Block details that the official code fixes and that the official state-dict shapes confirm:

* the stride of a stage sits on ``conv1`` (3x3) of its first block; every conv has no bias;
* the first block of a stage gets a 1x1 projection shortcut (conv with the stage stride + BN)
  whenever the stride is not 1 **or** the width changes. So DF1 ``stage2.0`` has a 64->64
  projection only because of its stride, and DF1 ``stage5.0`` (s1) and DF2 ``stage2_2.0``,
  ``stage3_2.0``, ``stage4_2.0`` have one only because of the width change;
* norm placement: the official ``_make_layer`` passes its norm layer (``Norm2d``, i.e. SyncBN in
  multi-GPU training) to the stem and the shortcut BNs, but **not** into ``BasicBlock``, whose
  ``bn1`` / ``bn2`` therefore stay plain per-process ``nn.BatchNorm2d``. We keep that split.

The SFNet head takes three features, fine to coarse; we expose them as ``res3``, ``res4``,
``res5`` with their true strides: DF1 = stage3 (128 @ 1/16), stage4 (256 @ 1/32), stage5
(512 @ 1/32), so two of them share stride 32; DF2 = stage2_2 (128 @ 1/8), stage3_2 (256 @ 1/16),
stage4_2 (512 @ 1/32).

Left out: the official backbones also create an ``AvgPool2d(7)`` that SFNet never calls (it has
no weights); the ImageNet-pretrained DFNet files may add an ``fc`` classifier, which
``official_dfnet_key_map`` (sfnet_d2/converters/official_backbones.py) drops.

Init: the official dfnet classes do no explicit initialisation, so a fresh model has PyTorch's
defaults (conv: kaiming_uniform(a=sqrt(5)); BN weight 1, bias 0). In the official pipeline they
are immediately overwritten by the ImageNet file; here they are overwritten by MODEL.WEIGHTS.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["DFNet", "DFNetBasicBlock", "DFNET_SPECS", "build_dfnet_backbone"]

# name -> (stages as (module name, width, number of blocks, stride of the first block),
#          {output name: stage whose output it is}). Module names are the official ones, so the
#          checkpoint mapping only renames inside a block.
DFNET_SPECS = {
    "DF1": (
        (("stage2", 64, 3, 2), ("stage3", 128, 3, 2), ("stage4", 256, 3, 2),
         ("stage5", 512, 1, 1)),
        {"res3": "stage3", "res4": "stage4", "res5": "stage5"},
    ),
    "DF2": (
        (("stage2_1", 64, 2, 2), ("stage2_2", 128, 1, 1), ("stage3_1", 128, 10, 2),
         ("stage3_2", 256, 1, 1), ("stage4_1", 256, 4, 2), ("stage4_2", 512, 2, 1)),
        {"res3": "stage2_2", "res4": "stage3_2", "res5": "stage4_2"},
    ),
}

# Norms that the official code would have given through ``Norm2d`` (BN, or SyncBN with
# --syncbn); for these the blocks' own BNs are per-process BN, as the official BasicBlock never
# receives the norm layer. Any other NORM (FrozenBN, GN, ...) has no official counterpart and is
# applied everywhere.
_BATCHNORM_KINDS = ("BN", "SyncBN", "naiveSyncBN", "nnSyncBN")


def official_block_norm(norm: str) -> str:
    """The norm the official code would give to BasicBlock's bn1/bn2 when the rest uses ``norm``."""
    return "BN" if norm in _BATCHNORM_KINDS else norm


class DFNetBasicBlock(nn.Module):
    """
    ResNet BasicBlock as in official DFNet: conv3x3(stride)+BN+ReLU, conv3x3+BN, plus the
    identity or a 1x1(stride)+BN projection, then ReLU. ``norm`` is for bn1/bn2,
    ``shortcut_norm`` for the projection's BN (the official code uses different layers for them).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, norm: str = "BN",
                 shortcut_norm: str = "BN"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False,
                            norm=get_norm(norm, channels))
        self.conv2 = Conv2d(channels, channels, 3, padding=1, bias=False,
                            norm=get_norm(norm, channels))
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = Conv2d(in_channels, channels, 1, stride=stride, bias=False,
                                   norm=get_norm(shortcut_norm, channels))

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class DFNetStem(nn.Module):
    """Official ``stage1``: two stride-2 3x3 convs (3->32->64), each + norm + ReLU; no pooling."""

    def __init__(self, in_channels: int = 3, norm: str = "BN"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False,
                            norm=get_norm(norm, 32))
        self.conv2 = Conv2d(32, 64, 3, stride=2, padding=1, bias=False, norm=get_norm(norm, 64))
        self.out_channels = 64
        self.stride = 4

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class DFNet(Backbone):
    """
    DFNet v1 ("DF1") or v2 ("DF2") returning up to ``res3``, ``res4``, ``res5`` (the three
    features the official SFNet head consumes, fine to coarse). The stem is ``self.stem``; the
    stages keep their official names (``self.stage2`` ... or ``self.stage2_1`` ...).

    ``norm`` is used for the stem and the projection shortcuts (official ``Norm2d``);
    ``block_norm`` for bn1/bn2 inside the blocks, by default what the official code does
    (:func:`official_block_norm`).
    """

    def __init__(self, name: str = "DF1", out_features: Sequence[str] = ("res3", "res4", "res5"),
                 norm: str = "BN", block_norm: Optional[str] = None, in_channels: int = 3):
        super().__init__()
        key = str(name).upper()
        if key not in DFNET_SPECS:
            raise ValueError(
                f"MODEL.DFNET.NAME={name!r} is not a DFNet version; "
                f"use one of {sorted(DFNET_SPECS)}"
            )
        stages, outputs = DFNET_SPECS[key]
        unknown = [f for f in out_features if f not in outputs]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.DFNET.OUT_FEATURES={list(out_features)}: unknown {unknown}; choose from "
                f"{sorted(outputs)}"
            )
        if block_norm is None:
            block_norm = official_block_norm(norm)
        self.version = key
        self.stem = DFNetStem(in_channels, norm)
        channels, stride = self.stem.out_channels, self.stem.stride
        stage_shapes: Dict[str, ShapeSpec] = {}
        stage_names: List[str] = []
        for stage_name, width, n_blocks, first_stride in stages:
            blocks = []
            for i in range(n_blocks):
                blocks.append(DFNetBasicBlock(channels, width, first_stride if i == 0 else 1,
                                              norm=block_norm, shortcut_norm=norm))
                channels = width
            stride *= first_stride
            self.add_module(stage_name, nn.Sequential(*blocks))
            stage_names.append(stage_name)
            stage_shapes[stage_name] = ShapeSpec(channels=channels, stride=stride)

        # Keep the official output order (fine to coarse), whatever order the config lists.
        self._out_features = [f for f in ("res3", "res4", "res5") if f in out_features]
        self._feature_stage = {f: outputs[f] for f in self._out_features}
        self._out_shapes = {f: stage_shapes[outputs[f]] for f in self._out_features}
        # Run only as far as the last requested output needs.
        last = max(stage_names.index(s) for s in self._feature_stage.values())
        self._stage_names = stage_names[: last + 1]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"DFNet takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        by_stage = {s: f for f, s in self._feature_stage.items()}
        outputs = {}
        x = self.stem(x)
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in by_stage:
                outputs[by_stage[name]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._out_shapes)

    @property
    def size_divisibility(self) -> int:
        # Padding inputs to a multiple of the total stride keeps every level an exact 2x of the
        # next, so the head's upsampling and flow warps see the grids the official code sees.
        return 32


@BACKBONE_REGISTRY.register()
def build_dfnet_backbone(cfg, input_shape: ShapeSpec) -> DFNet:
    """
    Config: ``MODEL.DFNET.NAME`` ("DF1" / "DF2"), ``MODEL.DFNET.OUT_FEATURES`` (subset of
    res3/res4/res5), ``MODEL.DFNET.NORM`` (stem and shortcut norms; the blocks' own BNs follow
    :func:`official_block_norm`).
    """
    return DFNet(
        name=cfg.MODEL.DFNET.NAME,
        out_features=cfg.MODEL.DFNET.OUT_FEATURES,
        norm=cfg.MODEL.DFNET.NORM,
        in_channels=input_shape.channels,
    )
