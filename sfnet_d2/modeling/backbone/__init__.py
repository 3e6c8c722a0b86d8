from sfnet_d2.modeling.backbone.deep_stem_resnet import DeepStemResNet, build_deep_stem_resnet_backbone
from sfnet_d2.modeling.backbone.dfnet import DFNet, build_dfnet_backbone
from sfnet_d2.modeling.backbone.stdc import STDCNet, build_stdc_backbone
from sfnet_d2.modeling.backbone.mit import MixVisionTransformer, build_mit_backbone  # SegFormer MiT (docs/TRANSFORMERS.md)

__all__ = [
    "DeepStemResNet", "build_deep_stem_resnet_backbone",
    "DFNet", "build_dfnet_backbone",
    "STDCNet", "build_stdc_backbone",
    "MixVisionTransformer", "build_mit_backbone",
]
