"""
Deployment: the network part of a model (normalised, padded images in, raw outputs out; the one
padding rule and pre-processing), the optimised inference path (BatchNorm folding, channels-last,
gather warp, TorchScript, bf16, kept working memory; semantic models and K-Net) and export to
TorchScript / ONNX with a check against PyTorch.
User documentation: docs/BENCHMARK.md (optimised path), docs/EXPORT.md (export).
"""
from sfnet_d2.deployment.network_part import (
    NETWORK_PARTS,
    FixedSizeNetworkPart,
    NetworkPart,
    PanopticKNetNetworkPart,
    SemanticNetworkPart,
    build_network_part,
    network_part_of,
    normalize_and_pad,
    padding_divisibility,
    register_network_part,
)
from sfnet_d2.deployment.optimized_model import (
    PRECISIONS,
    TORCHSCRIPT_LEVELS,
    OptimizedInferenceModel,
    OptimizedSemanticSegmentor,
    build_inference_model,
    inference_options,
    optimize_model,
    resize_logits,
)
from sfnet_d2.deployment.optimized_panoptic import OptimizedPanopticKNet, optimize_knet
from sfnet_d2.deployment.optimize import (
    fold_batchnorm,
    strip_training_only_modules,
    unfoldable_norms,
    use_gather_warp,
)
from sfnet_d2.deployment.exporter import (
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
from sfnet_d2.deployment.static_pooling import (
    StaticAdaptiveAvgPool2d,
    adaptive_pool_matrix,
    replace_adaptive_avg_pooling,
)
from sfnet_d2.deployment.verification import (
    ExportVerificationError,
    demo_verification_images,
    list_images,
    load_images_for_export,
    verify_export,
)
