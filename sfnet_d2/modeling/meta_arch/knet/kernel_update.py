"""
One K-Net kernel-update stage (official ``KernelUpdateHead`` + ``KernelUpdator`` with 1x1 kernels;
ZwwWayne/K-Net@5e50ee5 knet/det/kernel_update_head.py and knet/kernel_updator.py):

1. ``x = feat_transform(x_feats)`` (1x1 conv with bias), applied to the ORIGINAL kernel features at
   every stage;
2. group feature ``F_G`` = SUM of ``x`` over each kernel's hard mask (sigmoid of the previous
   stage's mask logits > 0.5);
3. adaptive kernel update ``KernelUpdator(F_G, K)``: gates from ``F_G`` and the kernels, output
   replaces the kernels (no residual);
4. kernel interaction: ``LN(K + MHA(K, K, K))``, ``LN(K + FFN(K))`` (post-norm);
5. heads: class logits ``fc_cls(ReLU(LN(Linear(K))))`` (sigmoid classifier, no background logit)
   and mask kernels ``fc_mask(ReLU(LN(Linear(K))))`` convolved (1x1) with ``x``.

Initialisation as ``KernelUpdateHead.init_weights``: xavier-uniform on every parameter with more
than one dimension (attention projections, linears, feat_transform), LayerNorm defaults,
``fc_cls`` bias ``-log(99)``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KernelUpdator", "KernelUpdateStage"]


class KernelUpdator(nn.Module):
    """The adaptive gated kernel update of K-Net (official ``KernelUpdator``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.dynamic_layer = nn.Linear(channels, 2 * channels)  # from the group feature
        self.input_layer = nn.Linear(channels, 2 * channels)    # from the kernels
        self.input_gate = nn.Linear(channels, channels)
        self.update_gate = nn.Linear(channels, channels)
        self.norm_in = nn.LayerNorm(channels)
        self.norm_out = nn.LayerNorm(channels)
        self.input_norm_in = nn.LayerNorm(channels)
        self.input_norm_out = nn.LayerNorm(channels)
        self.fc_layer = nn.Linear(channels, channels)
        self.fc_norm = nn.LayerNorm(channels)

    def forward(self, group_feats: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """(..., C) group features and (..., C) kernels -> (..., C) updated kernels."""
        c = self.channels
        params = self.dynamic_layer(group_feats)
        param_in, param_out = params[..., :c], params[..., c:]
        inputs = self.input_layer(kernels)
        input_in, input_out = inputs[..., :c], inputs[..., c:]
        gate_feats = input_in * param_in
        input_gate = self.input_norm_in(self.input_gate(gate_feats)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate_feats)).sigmoid()
        out = update_gate * self.norm_out(param_out) + input_gate * self.input_norm_out(input_out)
        return F.relu(self.fc_norm(self.fc_layer(out)))


def _fc_ln_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels),
                         nn.ReLU(inplace=True))


class KernelUpdateStage(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_heads: int = 8,
                 ffn_channels: int = 2048, dropout: float = 0.0, hard_mask_thr: float = 0.5):
        """
        Args:
            channels: kernel and feature width (K-Net 256).
            num_classes: classifier outputs (all classes, sigmoid; K-Net 133 on COCO).
            num_heads: attention heads across kernels.
            ffn_channels: FFN hidden width.
            dropout: attention and FFN dropout (K-Net 0).
            hard_mask_thr: sigmoid threshold of the masks the group feature sums over.
        """
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"MODEL.KNET.FEAT_CHANNELS={channels} must be divisible by "
                f"MODEL.KNET.NUM_HEADS={num_heads}"
            )
        self.hard_mask_thr = hard_mask_thr
        self.feat_transform = nn.Conv2d(channels, channels, 1)
        self.kernel_update = KernelUpdator(channels)
        self.attention = nn.MultiheadAttention(channels, num_heads, dropout=dropout,
                                               batch_first=True)
        self.attention_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(ffn_channels, channels),
                                 nn.Dropout(dropout))
        self.ffn_norm = nn.LayerNorm(channels)
        self.cls_fcs = _fc_ln_relu(channels)
        self.fc_cls = nn.Linear(channels, num_classes)
        self.mask_fcs = _fc_ln_relu(channels)
        self.fc_mask = nn.Linear(channels, channels)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x_feats: torch.Tensor, kernels: torch.Tensor, mask_logits: torch.Tensor):
        """
        Args:
            x_feats: (N, C, h, w) kernel features (the same tensor at every stage).
            kernels: (N, K, C) the previous stage's kernels.
            mask_logits: (N, K, h', w') the previous stage's mask logits.
        Returns:
            cls_logits (N, K, num_classes), mask_logits (N, K, h, w), kernels (N, K, C).
        """
        x = self.feat_transform(x_feats)
        if mask_logits.shape[-2:] != x.shape[-2:]:
            mask_logits = F.interpolate(mask_logits, size=x.shape[-2:], mode="bilinear",
                                        align_corners=False)
        hard = (mask_logits.sigmoid() > self.hard_mask_thr).to(x.dtype)
        group_feats = torch.einsum("bnhw,bchw->bnc", hard, x)
        obj = self.kernel_update(group_feats, kernels)
        obj = self.attention_norm(obj + self.attention(obj, obj, obj, need_weights=False)[0])
        obj = self.ffn_norm(obj + self.ffn(obj))
        cls_logits = self.fc_cls(self.cls_fcs(obj))
        mask_kernels = self.fc_mask(self.mask_fcs(obj))
        new_masks = torch.einsum("bnc,bchw->bnhw", mask_kernels, x)
        return cls_logits, new_masks, obj
