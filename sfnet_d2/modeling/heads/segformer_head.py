"""
SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021), the baseline head of the paper's Table 19,
as the official code builds it (NVlabs/SegFormer ``mmseg/models/decode_heads/segformer_head.py``
with mmseg's ``BaseDecodeHead``):

1. every input level (strides 4/8/16/32) goes through its own linear layer to ``E`` channels
   (``E`` = ``MODEL.SEM_SEG_HEAD.CONVS_DIM``, official ``embed_dim`` 256 for B0/B1, 768 for B2+);
2. the coarser levels are upsampled to the finest level (bilinear, align_corners=False);
3. they are concatenated coarsest first (official order ``[c4, c3, c2, c1]``) and fused by a 1x1
   conv without bias + norm (official SyncBN) + ReLU to ``E`` channels;
4. Dropout2d (``MODEL.MIT.DECODER_DROPOUT``, official 0.1) and a 1x1 conv to the classes.

Loss: cross-entropy over the non-ignored pixels of the label, the logits upsampled to the label's
size (bilinear, align_corners=False, as mmseg's ``BaseDecodeHead.losses``). In inference the logits
(stride 4) are upsampled to the padded input size the same way; ``SemanticSegmentor`` then crops
and resizes them.

Not built: mmseg's ``conv_seg`` classifier, which ``BaseDecodeHead`` creates but ``SegFormerHead``
never calls (the converter drops it with that reason).
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

__all__ = ["SegFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SegFormerHead(nn.Module):
    """
    All-MLP decoder. Modules: ``linear_c`` (one ``nn.Linear`` per input level, fine to coarse),
    ``fuse`` (1x1 conv + norm + ReLU), ``dropout``, ``predictor`` (1x1 conv to the classes).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        num_classes: int,
        embed_dim: int = 256,
        norm: str = "SyncBN",
        dropout: float = 0.1,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
    ):
        """
        NOTE: this interface is experimental.

        Args:
            input_shape: backbone output shapes.
            in_features: the backbone levels to decode (SegFormer: all four, res2..res5).
            num_classes: number of classes.
            embed_dim: width of the per-level linear embeddings and of the fused map.
            norm: normalisation after the fusing conv (official SyncBN).
            dropout: Dropout2d probability before the classifier.
            ignore_value: label ignored by the loss.
            loss_weight: weight of the cross-entropy.
        """
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing or not in_features:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)}: the backbone does not output "
                f"{missing}; it outputs {sorted(input_shape)} (SegFormer decodes res2..res5)")
        levels = sorted(in_features, key=lambda f: input_shape[f].stride)
        self.in_features = levels
        self.common_stride = input_shape[levels[0]].stride
        self.linear_c = nn.ModuleList(
            nn.Linear(input_shape[f].channels, embed_dim) for f in levels)
        self.fuse = Conv2d(len(levels) * embed_dim, embed_dim, 1, bias=False,
                           norm=get_norm(norm, embed_dim), activation=F.relu)
        self.dropout = nn.Dropout2d(dropout)
        self.predictor = nn.Conv2d(embed_dim, num_classes, 1)
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self._init_weights()

    def _init_weights(self):
        # As the official head: mmcv's ConvModule initialises its conv kaiming normal (fan_out,
        # relu) and its norm to 1 / 0; the linear layers and the classifier (a plain nn.Conv2d,
        # not mmseg's conv_seg) keep torch's default init.
        nn.init.kaiming_normal_(self.fuse.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": input_shape,
            "in_features": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "embed_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "dropout": cfg.MODEL.MIT.DECODER_DROPOUT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the finest input level (stride ``common_stride``)."""
        size = features[self.in_features[0]].shape[-2:]
        embedded = []
        for name, linear in zip(self.in_features, self.linear_c):
            x = features[name]
            # the linear layer acts on the channels of every position: NCHW -> NHWC -> NCHW
            x = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            embedded.append(x)
        fused = self.fuse(torch.cat(embedded[::-1], dim=1))  # coarsest first, as official
        return self.predictor(self.dropout(fused))

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("SegFormerHead needs `sem_seg` targets in training mode")
            return None, self.losses(logits, targets)
        size = [s * self.common_stride for s in logits.shape[-2:]]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False), {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
