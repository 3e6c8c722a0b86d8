"""
Export of SFNet models to TorchScript (trace) and ONNX at a static input size, with a check
against PyTorch. Command: ``projects/SFNet/export_model.py``; user documentation: docs/EXPORT.md.
"""
from .exporter import (
    DEFAULT_ONNX_OPSET,
    MIN_ONNX_OPSET,
    ExportedModel,
    compare_outputs,
    default_metadata,
    export_onnx,
    export_torchscript,
    load_exported,
    write_export_info,
)
from .network_part import (
    NETWORK_PARTS,
    PanopticKNetNetworkPart,
    SemanticNetworkPart,
    build_network_part,
    register_network_part,
)
from ..modeling.static_pooling import StaticAdaptiveAvgPool2d, adaptive_pool_matrix, replace_adaptive_avg_pooling
from .verification import (
    ExportVerificationError,
    demo_verification_images,
    list_images,
    load_images_for_export,
    verify_export,
)
