"""
The FCN baseline of the paper (Table 8a "FCN", stride 32, 71.5 mIoU; Table 10a): the backbone and
a classifier on its last feature only, no decoder.

``FCNNeck`` (``SFNET_NECK_REGISTRY``) passes one backbone level through unchanged, so the FCN is
an SFNet head on a trivial neck: ``FCNHead`` (``SEM_SEG_HEADS_REGISTRY``) = that neck + the same
classifier as the SFNet heads (3x3 conv + norm + ReLU to ``CONVS_DIM``, then a 1x1 conv to the
classes), the same OHEM loss and the same upsampling of the logits (bilinear,
align_corners=True). Only the decoder differs from SFNet, which is what Table 8a ablates.
The paper gives no more detail on its FCN head.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from sfnet_d2.modeling.heads.neck import SFNET_NECK_REGISTRY, _select_inputs
from sfnet_d2.modeling.heads.sem_seg_head import _SFNetSemSegHeadBase

__all__ = ["FCNNeck", "FCNHead"]


@SFNET_NECK_REGISTRY.register()
class FCNNeck(nn.Module):
    """The identity "decoder": ``fused`` is the single backbone level named by
    ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` (e.g. ``["res5"]``, stride 32)."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_features: List[str], conv_dim: int):
        """
        NOTE: this interface is experimental.

        Args:
            input_shape: backbone output shapes.
            in_features: exactly one backbone level.
            conv_dim: width of the classifier's hidden conv (``MODEL.SEM_SEG_HEAD.CONVS_DIM``).
        """
        super().__init__()
        levels = _select_inputs(input_shape, in_features)
        if len(levels) != 1:
            raise ValueError(
                "FCNNeck takes exactly one backbone level, got "
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(in_features)} (the paper's FCN: [\"res5\"])"
            )
        (name, spec), = levels
        self.in_features = [name]
        self.conv_dim = conv_dim
        self.num_dsn_inputs = 0  # nothing intermediate to supervise
        self._out_channels = spec.channels
        self._out_stride = spec.stride

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "in_features": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES,
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
        }

    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._out_channels, stride=self._out_stride)

    def forward_features(self, features: Dict[str, torch.Tensor], return_flows: bool = False):
        out = {"fused": features[self.in_features[0]], "dsn": []}
        if return_flows:
            out["flows"] = []
        return out

    def forward(self, features):
        return self.forward_features(features)["fused"]


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(_SFNetSemSegHeadBase):
    """FCN baseline head: classifier on one backbone level (``FCNNeck``), OHEM loss."""

    NECK_NAME = "FCNNeck"
