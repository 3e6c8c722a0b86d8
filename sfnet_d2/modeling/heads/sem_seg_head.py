"""
Semantic segmentation heads of SFNet and SFNet-Lite for detectron2's ``SemanticSegmentor``:
an SFNet neck, then the official ``conv_last`` classifier (3x3 conv + norm + ReLU, then a 1x1 conv
to the classes), optional deep-supervision (DSN) heads used only in training, and the OHEM
cross-entropy loss.

Output contract (``SemanticSegmentor``): in inference the head returns per-class logits upsampled
to the (padded) input size with bilinear, align_corners=True interpolation, exactly as the
official model's ``Upsample(logits, input_size)``; ``SemanticSegmentor`` then crops the padding
and resizes to the requested output size.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from sfnet_d2.modeling.heads.losses import ohem_cross_entropy
from sfnet_d2.modeling.heads.neck import build_sfnet_neck

__all__ = ["SFNetHead", "SFNetLiteHead"]


def _dsn_head(conv_dim: int, num_classes: int, norm: str) -> nn.Sequential:
    # Official dsn: 3x3 conv (with bias) + norm + ReLU + Dropout2d(0.1) + 1x1 classifier.
    return nn.Sequential(
        Conv2d(conv_dim, conv_dim, 3, padding=1, bias=True, norm=get_norm(norm, conv_dim),
               activation=F.relu),
        nn.Dropout2d(0.1),
        nn.Conv2d(conv_dim, num_classes, 1),
    )


class _SFNetSemSegHeadBase(nn.Module):
    """Shared by the two heads; the subclasses only choose the neck."""

    NECK_NAME = ""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        neck: nn.Module,
        num_classes: int,
        norm: str = "BN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        deep_supervision: bool = False,
        dsn_loss_weight: float = 1.0,
    ):
        """
        NOTE: this interface is experimental.

        Args:
            input_shape: backbone output shapes (only used to validate the neck).
            neck: an SFNet decoder (``SFNetDecoder`` / ``SFNetLiteDecoder``).
            num_classes: number of classes K.
            norm: normalisation in the classifier and DSN heads.
            ignore_value: label ignored by the loss.
            loss_weight: weight of the main OHEM cross-entropy.
            ohem_thresh, ohem_min_kept: OHEM settings (``min_kept <= 0`` disables mining).
            deep_supervision: build DSN heads on the neck's intermediate maps (training only).
            dsn_loss_weight: weight of every DSN loss term (official ``aux_weight`` 1.0).
        """
        super().__init__()
        self.neck = neck
        conv_dim = neck.conv_dim
        self.common_stride = neck.output_shape().stride
        self.fuse_conv = Conv2d(neck.output_shape().channels, conv_dim, 3, padding=1, bias=False,
                                norm=get_norm(norm, conv_dim), activation=F.relu)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        self.dsn_heads: Optional[nn.ModuleList] = None
        if deep_supervision:
            self.dsn_heads = nn.ModuleList(
                _dsn_head(conv_dim, num_classes, norm) for _ in range(neck.num_dsn_inputs)
            )
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.dsn_loss_weight = dsn_loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": input_shape,
            "neck": build_sfnet_neck(cfg, input_shape, default=cls.NECK_NAME),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "ohem_thresh": cfg.MODEL.SFNET.OHEM_THRESH,
            "ohem_min_kept": cfg.MODEL.SFNET.OHEM_MIN_KEPT,
            "deep_supervision": cfg.MODEL.SFNET.DEEP_SUPERVISION,
            "dsn_loss_weight": cfg.MODEL.SFNET.DSN_LOSS_WEIGHT,
        }

    def layers(self, features: Dict[str, torch.Tensor]):
        """Low-resolution logits (stride ``common_stride``) and the neck's outputs."""
        neck_out = self.neck.forward_features(features)
        return self.predictor(self.fuse_conv(neck_out["fused"])), neck_out

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits, neck_out = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("SFNet heads need `sem_seg` targets in training mode")
            dsn_logits = []
            if self.dsn_heads is not None:
                dsn_logits = [head(x) for head, x in zip(self.dsn_heads, neck_out["dsn"])]
            return None, self.losses(logits, dsn_logits, targets)
        size = [s * self.common_stride for s in logits.shape[-2:]]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True), {}

    def losses(self, logits: torch.Tensor, dsn_logits: List[torch.Tensor], targets: torch.Tensor):
        size = targets.shape[-2:]

        def ohem(x):
            # Official CriterionSFNet: upsample to the label size (align_corners=True), then OHEM.
            # Upsampled from NCHW (a no-op for an NCHW model): a channels-last model's full-size
            # logits would otherwise be copied to NCHW by each softmax / cross-entropy.
            x = F.interpolate(x.contiguous(), size=size, mode="bilinear", align_corners=True)
            return ohem_cross_entropy(x, targets, self.ignore_value, self.ohem_thresh,
                                      self.ohem_min_kept)

        losses = {"loss_sem_seg": ohem(logits) * self.loss_weight}
        for i, x in enumerate(dsn_logits):
            losses[f"loss_sem_seg_dsn{i}"] = ohem(x) * self.dsn_loss_weight
        return losses


@SEM_SEG_HEADS_REGISTRY.register()
class SFNetHead(_SFNetSemSegHeadBase):
    """SFNet (v1) head: FAM at every level, fusion of all levels (official ``UperNetAlignHead``).
    With deep supervision, one DSN head per FAM on ``f`` before its output conv (the official
    first-release ``fpn_dsn``), ordered coarse to fine."""

    NECK_NAME = "SFNetDecoder"


@SEM_SEG_HEADS_REGISTRY.register()
class SFNetLiteHead(_SFNetSemSegHeadBase):
    """SFNet-Lite (v2) head: one GD-FAM between the finest level and the PPM, plus the middle
    level (official ``UperNetAlignHeadV2``). Deep supervision (off by default, like the official
    forward, which builds a ``dsn`` head but never calls it) puts one DSN head on the GD-FAM
    output - our choice, documented in docs/FIDELITY.md."""

    NECK_NAME = "SFNetLiteDecoder"
