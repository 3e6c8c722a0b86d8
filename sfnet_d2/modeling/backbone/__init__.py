from .deep_stem_resnet import DeepStemResNet, build_deep_stem_resnet_backbone
from .dfnet import DFNet, build_dfnet_backbone
from .stdc import STDCNet, build_stdc_backbone
from .mit import MixVisionTransformer, build_mit_backbone  # SegFormer MiT (docs/TRANSFORMERS.md)

__all__ = [
    "DeepStemResNet", "build_deep_stem_resnet_backbone",
    "DFNet", "build_dfnet_backbone",
    "STDCNet", "build_stdc_backbone",
    "MixVisionTransformer", "build_mit_backbone",
]
