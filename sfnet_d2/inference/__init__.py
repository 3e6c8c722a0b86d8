"""Optimised inference and benchmarking (docs/BENCHMARK.md)."""
from .model import (
    PRECISIONS,
    TORCHSCRIPT_LEVELS,
    OptimizedSemanticSegmentor,
    SemanticNetwork,
    build_inference_model,
    optimize_model,
    resize_logits,
)
from .optimize import (
    fold_batchnorm,
    strip_training_only_modules,
    unfoldable_norms,
    use_gather_warp,
)
