"""Meta-architectures: the semantic ``SFNetSemanticSegmentor`` (``semantic``) and K-Net panoptic
on the SFNet backbone and neck (``knet``)."""
from sfnet_d2.modeling.meta_arch.semantic import SFNetSemanticSegmentor, backbone_auxiliary_losses
from sfnet_d2.modeling.meta_arch import knet  # noqa: F401  (registers SFNetKNet)

__all__ = ["SFNetSemanticSegmentor", "backbone_auxiliary_losses"]
