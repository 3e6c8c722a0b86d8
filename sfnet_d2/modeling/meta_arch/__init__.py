"""Meta-architectures: K-Net panoptic on the SFNet backbone and neck (``knet``)."""
from sfnet_d2.modeling.meta_arch import knet  # noqa: F401  (registers SFNetKNet)
