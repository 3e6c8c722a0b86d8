"""
Necks and heads: the SFNet and SFNet-Lite decoders (``neck``), the semantic heads registered in
SEM_SEG_HEADS_REGISTRY (``sem_seg_head``, ``fcn``, ``segformer_head``), PPM / ASPP context
(``ppm``, ``context``), the Semantic-FPN backbone of Table 18 (``semantic_fpn``) and the losses.
"""
from sfnet_d2.modeling.heads.losses import ohem_cross_entropy, ohem_keep_mask
from sfnet_d2.modeling.heads.neck import (SFNET_NECK_REGISTRY, SFNetDecoder, SFNetLiteDecoder,
                                          build_sfnet_neck)
from sfnet_d2.modeling.heads.ppm import PyramidPoolingModule
from sfnet_d2.modeling.heads.sem_seg_head import SFNetHead, SFNetLiteHead
from sfnet_d2.modeling.heads.fcn import FCNHead, FCNNeck
from sfnet_d2.modeling.heads.semantic_fpn import build_sfnet_fpn_backbone
from sfnet_d2.modeling.heads.segformer_head import SegFormerHead
