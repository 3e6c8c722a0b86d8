"""
From the SFNet neck's fused map to K-Net's kernel features and initial kernels.

``KernelFeatureBranches`` stands where K-Net's ``SemanticFPNWrapper`` + the kernel head's
``loc_convs`` / ``seg_convs`` stand (ZwwWayne/K-Net@5e50ee5 knet/det/semantic_fpn_wrapper.py,
knet/det/kernel_head.py ``_decode_init_proposals``). K-Net's wrapper
sums four FPN levels into one stride-8 map; the SFNet neck has already fused (and flow-aligned) all
levels into one stride-4 map, so a single 3x3 stride-2 ConvModule (the op K-Net applies to its
stride-4 level P2) brings it to the kernel width and stride 8, the sine positional encoding is added
(K-Net adds it to the coarsest level before fusing), and the rest is K-Net's:
``conv_pred`` (1x1) -> ``loc_convs`` (1x1) = localisation feature, ``aux_conv`` (1x1) ->
``seg_convs`` (1x1) = semantic feature; every ConvModule is conv (no bias) -> GN(32) -> ReLU,
initialised normal(std 0.01).

``InitialKernelHead`` is ``ConvKernelHead._decode_init_proposals``:
``init_kernels`` (1x1 conv, no bias, normal std 1.0) gives the thing masks, ``conv_seg`` (1x1,
normal std 0.01, bias -log(99)) the semantic logits; ``x_feats = sem + loc`` feeds every update
stage; thing kernels = ``init_kernels.weight`` + the SUM of x_feats over each kernel's hard mask
(sigmoid > 0.5); stuff kernels = the rows of ``conv_seg.weight`` of the stuff classes, their
masks = the semantic logits of those classes.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn

from sfnet_d2.modeling.meta_arch.knet.position_encoding import SinePositionalEncoding

__all__ = ["KernelFeatureBranches", "InitialKernelHead"]


def _conv_module(in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1) -> Conv2d:
    # mmcv ConvModule(conv, norm, ReLU): no conv bias when a norm follows (bias="auto").
    return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=not norm,
                  norm=get_norm(norm, out_ch), activation=F.relu)


class KernelFeatureBranches(nn.Module):
    def __init__(self, in_channels: int, channels: int, downsample_stride: int = 2,
                 norm: str = "GN", positional_encoding: bool = True):
        """
        Args:
            in_channels: channels of the neck's fused map.
            channels: kernel-feature width (K-Net 256).
            downsample_stride: stride of the first conv (2: stride-4 neck map -> stride 8).
            norm: norm of every conv (detectron2 ``get_norm`` name; "GN" = GroupNorm(32)).
            positional_encoding: add the sine positional encoding after the first conv.
        """
        super().__init__()
        if downsample_stride not in (1, 2):
            raise ValueError(
                f"MODEL.KNET.FEAT_DOWNSAMPLE_STRIDE must be 1 or 2, got {downsample_stride}"
            )
        if positional_encoding and channels % 2:
            raise ValueError(
                f"MODEL.KNET.FEAT_CHANNELS={channels} must be even for the sine positional encoding"
            )
        self.input_conv = _conv_module(in_channels, channels, 3, norm, downsample_stride)
        self.position_encoding = (SinePositionalEncoding(channels // 2) if positional_encoding
                                  else None)
        self.conv_pred = _conv_module(channels, channels, 1, norm)   # -> localisation branch
        self.aux_conv = _conv_module(channels, channels, 1, norm)    # -> semantic branch
        self.loc_conv = _conv_module(channels, channels, 1, norm)
        self.seg_conv = _conv_module(channels, channels, 1, norm)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, fused: torch.Tensor):
        """Returns (localisation feature, semantic feature), each (N, channels, H/s, W/s)."""
        x = self.input_conv(fused)
        if self.position_encoding is not None:
            x = x + self.position_encoding(x)
        return self.loc_conv(self.conv_pred(x)), self.seg_conv(self.aux_conv(x))


class InitialKernelHead(nn.Module):
    def __init__(self, channels: int, num_proposals: int, num_thing_classes: int,
                 num_stuff_classes: int, hard_mask_thr: float = 0.5):
        """
        Args:
            channels: kernel width.
            num_proposals: number of thing kernels.
            num_thing_classes, num_stuff_classes: class counts, in K-Net's internal order
                (things first; see :class:`~.class_layout.KNetClassLayout`).
            hard_mask_thr: sigmoid threshold of the masks the initial kernels sum features over.
        """
        super().__init__()
        self.num_proposals = num_proposals
        self.num_thing_classes = num_thing_classes
        self.num_classes = num_thing_classes + num_stuff_classes
        self.hard_mask_thr = hard_mask_thr
        self.init_kernels = nn.Conv2d(channels, num_proposals, 1, bias=False)
        # sigmoid (focal) semantic classifier: one logit per class, no background logit
        self.conv_seg = nn.Conv2d(channels, self.num_classes, 1)
        nn.init.normal_(self.init_kernels.weight, std=1.0)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.constant_(self.conv_seg.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, loc: torch.Tensor, sem: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Returns a dict with
            "thing_masks": (N, P, h, w) mask logits of the P thing kernels,
            "seg_logits": (N, C, h, w) semantic logits (all classes, internal order),
            "x_feats": (N, D, h, w) the feature every update stage works on,
            "kernels": (N, P + S, D) thing kernels then one kernel per stuff class,
            "masks": (N, P + S, h, w) their mask logits (stage 0's input).
        """
        n = loc.shape[0]
        thing_masks = self.init_kernels(loc)
        seg_logits = self.conv_seg(sem)
        x_feats = sem + loc
        hard = (thing_masks.sigmoid() > self.hard_mask_thr).to(x_feats.dtype)
        # K-Net sums (does not average) the features under each binary mask.
        thing_kernels = self.init_kernels.weight.flatten(1)[None] + torch.einsum(
            "bnhw,bchw->bnc", hard, x_feats)
        stuff_weight = self.conv_seg.weight.flatten(1)[self.num_thing_classes:]
        kernels = torch.cat([thing_kernels, stuff_weight[None].expand(n, -1, -1)], dim=1)
        masks = torch.cat([thing_masks, seg_logits[:, self.num_thing_classes:]], dim=1)
        return {"thing_masks": thing_masks, "seg_logits": seg_logits, "x_feats": x_feats,
                "kernels": kernels, "masks": masks}
