"""
Models, registered in detectron2's registries when imported: backbones (``backbone``), alignment
modules (``alignment``), necks and heads (``heads``), meta-architectures (``meta_arch``) and the
evaluation protocols, named as detectron2 names test-time augmentation
(``test_time_augmentation``).
"""
from sfnet_d2.modeling.backbone import DeepStemResNet, build_deep_stem_resnet_backbone
from sfnet_d2.modeling.alignment import FlowAlignModule, GatedDualFlowAlignModule, flow_warp
from sfnet_d2.modeling.heads import (SFNET_NECK_REGISTRY, FCNHead, FCNNeck, PyramidPoolingModule,
                                     SegFormerHead, SFNetDecoder, SFNetHead, SFNetLiteDecoder,
                                     SFNetLiteHead, build_sfnet_fpn_backbone, build_sfnet_neck,
                                     ohem_cross_entropy, ohem_keep_mask)
from sfnet_d2.modeling.test_time_augmentation import (SemanticSegmentorWithTTA,
                                                      wrap_with_inference_protocol)
from sfnet_d2.modeling import meta_arch  # noqa: F401  (registers the meta-architectures)
