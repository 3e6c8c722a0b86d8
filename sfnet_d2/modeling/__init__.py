from .backbone import DeepStemResNet, build_deep_stem_resnet_backbone
from .flow_alignment import FlowAlignModule, GatedDualFlowAlignModule, flow_warp
from .losses import ohem_cross_entropy, ohem_keep_mask
from .neck import SFNET_NECK_REGISTRY, SFNetDecoder, SFNetLiteDecoder, build_sfnet_neck
from .ppm import PyramidPoolingModule
from .sem_seg_head import SFNetHead, SFNetLiteHead
# Ablation variants (docs/ABLATIONS.md): FCN baseline head, Semantic-FPN backbone builder.
from .fcn import FCNHead, FCNNeck
from .semantic_fpn import build_sfnet_fpn_backbone
# SegFormer's all-MLP decoder, the baseline head on the MiT backbones (docs/TRANSFORMERS.md).
from .segformer_head import SegFormerHead
from .test_time import SemanticSegmentorWithTTA, wrap_with_inference_protocol
from . import knet  # noqa: F401  (registers the SFNetKNet panoptic meta-architecture)
