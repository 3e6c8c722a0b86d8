from .deep_stem_resnet import DeepStemResNet, build_deep_stem_resnet_backbone

__all__ = ["DeepStemResNet", "build_deep_stem_resnet_backbone"]
