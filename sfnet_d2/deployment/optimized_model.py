"""
The optimised inference model (config switch ``DEPLOY.OPTIMIZE``, on by default for
evaluation, the benchmark, the demo and export; training always uses the plain model).

``build_inference_model(cfg, model)`` returns a new module (the given model is left untouched)
with the same ``forward(batched_inputs) -> [{"sem_seg": logits}]`` contract as detectron2's
``SemanticSegmentor``, so evaluators and test-time wrappers use it unchanged. For a
``SemanticSegmentor`` it is an :class:`OptimizedSemanticSegmentor`:

* deep-supervision heads and dropout removed, BatchNorm folded into the convolutions
  (``optimize.py``);
* optionally the channels-last memory layout (oneDNN's native layout on CPU), with the FAM /
  GD-FAM warps as weighted gathers of channels-last rows (modeling/gather_warp.py);
* optionally the network part (``SemanticNetworkPart`` of network_part.py: backbone + head,
  normalised padded image -> full-resolution logits) traced with
  ``torch.jit.trace`` once per input size and frozen with ``torch.jit.freeze`` (constants folded,
  conv + ReLU / conv + add fused by oneDNN), optionally with ``torch.jit.optimize_for_inference``;
* optionally run in bfloat16 / float16 (weights and activations cast, logits returned in float32);
* on CPU, large activations taken from a heap that keeps its memory between calls instead of
  fresh, zero-filled pages each call (``KEEP_MEMORY``, memory.py);
* the post-processing resize of ``sem_seg_postprocess`` skipped when the output size equals the
  input size (it is an exact identity there, but a full-resolution copy of the logits).

Pre-processing is network_part.py's ``normalize_and_pad`` with the model's padding rule (the
values of ``SemanticSegmentor``'s own), so in float32 the logits equal the plain model's up to
float rounding (summation order inside fused kernels; tested within 1e-4).
K-Net (``SFNetKNet``) gets the same path with its own post-processing: optimized_panoptic.py.
For any other meta-architecture only the module rewrites are applied and its own forward is kept.
"""
import copy
import logging
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import SemanticSegmentor
from torch import nn

from sfnet_d2.deployment.activation_memory import reduce_activation_memory
from sfnet_d2.deployment.memory import kept_memory, kept_memory_paused
from sfnet_d2.deployment.network_part import (
    NetworkPart,
    SemanticNetworkPart,
    normalize_and_pad,
    padding_divisibility,
)
from sfnet_d2.deployment.static_pooling import replace_adaptive_avg_pooling
from sfnet_d2.modeling.meta_arch.knet import SFNetKNet
from sfnet_d2.modeling.meta_arch.semantic import SFNetSemanticSegmentor
from sfnet_d2.deployment.optimize import (
    fold_batchnorm,
    strip_training_only_modules,
    unfoldable_norms,
    use_gather_warp,
)

__all__ = [
    "OptimizedInferenceModel",
    "OptimizedSemanticSegmentor",
    "optimize_model",
    "inference_options",
    "build_inference_model",
    "PRECISIONS",
    "TORCHSCRIPT_LEVELS",
]

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# "none": eager; "freeze": torch.jit.trace + torch.jit.freeze; "optimize": additionally
# torch.jit.optimize_for_inference (oneDNN layout propagation on CPU).
TORCHSCRIPT_LEVELS = ("none", "freeze", "optimize")


class OptimizedInferenceModel(nn.Module):
    """
    What every optimised inference model shares (the semantic one below, K-Net's in
    optimized_panoptic.py): the ``DEPLOY.*`` options checked, the network part cast to the
    precision and layout, traced and frozen once per input shape (:meth:`_run_network`),
    inference-only. Subclasses define ``forward(batched_inputs)``.
    """

    def __init__(
        self,
        *,
        network: NetworkPart,
        pixel_mean: torch.Tensor,
        pixel_std: torch.Tensor,
        size_divisibility: int,
        channels_last: bool = True,
        torchscript: str = "freeze",
        precision: str = "fp32",
        max_compiled_sizes: int = 4,
        keep_memory: bool = True,
    ):
        super().__init__()
        if torchscript not in TORCHSCRIPT_LEVELS:
            raise ValueError(
                f"DEPLOY.TORCHSCRIPT={torchscript!r}: expected one of "
                f"{list(TORCHSCRIPT_LEVELS)}"
            )
        if precision not in PRECISIONS:
            raise ValueError(
                f"DEPLOY.PRECISION={precision!r}: expected one of {list(PRECISIONS)}"
            )
        self.network = network.eval()
        self.register_buffer("pixel_mean", pixel_mean.detach().clone(), False)
        self.register_buffer("pixel_std", pixel_std.detach().clone(), False)
        self.size_divisibility = size_divisibility
        self.channels_last = channels_last
        self.torchscript = torchscript
        self.precision = precision
        self.max_compiled_sizes = max_compiled_sizes
        self.keep_memory = keep_memory
        self.network.to(dtype=PRECISIONS[precision])
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        # Traced networks by (input shape, device); a plain attribute, not a submodule, so that
        # state_dict() is the eager network's. Sizes beyond max_compiled_sizes run eagerly.
        self._compiled: Dict[Tuple, torch.jit.ScriptModule] = {}
        self._warned_eager_fallback = False
        super().train(False)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is inference-only (BatchNorm is folded, deep "
                "supervision removed); train the model returned by detectron2's build_model"
            )
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half() etc. invalidate the traced networks, which hold their own constants.
        self._compiled = {}
        return super()._apply(fn, *args, **kwargs)

    def _compile(self, images: torch.Tensor):
        with warnings.catch_warnings():
            # Tracer warnings about Python values (sizes) becoming constants are expected: each
            # traced network is only used for the exact input shape it was traced with.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(self.network, images, check_trace=False)
            traced = torch.jit.freeze(traced)
            if self.torchscript == "optimize":
                traced = torch.jit.optimize_for_inference(traced)
        return traced

    def _run_network(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The network part's raw outputs (in the network's precision) for normalised, padded
        float32 images: traced for this shape while fewer than max_compiled_sizes are, else
        eager."""
        images = images.to(PRECISIONS[self.precision])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self.network
        if self.torchscript != "none":
            key = (tuple(images.shape), images.device, images.dtype)
            net = self._compiled.get(key)
            if net is None and len(self._compiled) < self.max_compiled_sizes:
                logger.info(f"Tracing and freezing the network for input {tuple(images.shape)}")
                # Traced on freshly mapped memory: the tracer's run holds more than a normal
                # call, and on the kept heap that would stay fragmented for good.
                with kept_memory_paused():
                    net = self._compiled[key] = self._compile(images)
            elif net is None:
                if not self._warned_eager_fallback:
                    logger.warning(
                        f"{len(self._compiled)} input sizes are already traced "
                        f"(DEPLOY.MAX_COMPILED_SIZES={self.max_compiled_sizes}); "
                        f"size {tuple(images.shape)} and later new sizes run eagerly"
                    )
                    self._warned_eager_fallback = True
                net = self.network
        return net(images)


class OptimizedSemanticSegmentor(OptimizedInferenceModel):
    """
    ``SemanticSegmentor`` for inference only: same inputs and outputs, faster network.
    Build it with :func:`optimize_model` / :func:`build_inference_model`.
    """

    def network_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The network on normalised, padded float32 images (N, 3, H, W): float32 logits."""
        with kept_memory(self.keep_memory and images.device.type == "cpu"):
            return self._run_network(images)[0].float()

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        if self.training:
            raise RuntimeError("OptimizedSemanticSegmentor is inference-only")
        with torch.no_grad(), kept_memory(self.keep_memory and self.device.type == "cpu"):
            images, image_sizes = normalize_and_pad(
                [x["image"].to(self.device) for x in batched_inputs], self.pixel_mean,
                self.pixel_std, self.size_divisibility)
            logits = self.network_forward(images)
            results = []
            for result, inputs, image_size in zip(logits, batched_inputs, image_sizes):
                height = inputs.get("height", image_size[0])
                width = inputs.get("width", image_size[1])
                results.append({"sem_seg": resize_logits(result, image_size, height, width)})
            return results


def resize_logits(result: torch.Tensor, image_size, height: int, width: int) -> torch.Tensor:
    """detectron2's ``sem_seg_postprocess`` (crop the padding, bilinear resize with
    align_corners=False), without the resize when the sizes already agree, where it is an exact
    identity (every output pixel maps onto one input pixel with weight 1)."""
    result = result[:, : image_size[0], : image_size[1]]
    if (int(height), int(width)) == (int(image_size[0]), int(image_size[1])):
        return result
    return F.interpolate(result[None], size=(height, width), mode="bilinear",
                         align_corners=False)[0]


def _rewrite_modules(model: nn.Module, what: str) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    removed = strip_training_only_modules(model)
    folded = fold_batchnorm(model)
    left = unfoldable_norms(model)
    logger.info(
        f"Optimised inference for {what}: folded {folded} BatchNorm layers into convolutions; "
        f"removed {len(removed)} training-only modules {removed if removed else ''}"
    )
    if left:
        logger.warning(f"Norm layers that could not be folded (kept as they are): {left}")
    return model


def optimize_model(
    model: nn.Module,
    *,
    channels_last: bool = True,
    torchscript: str = "freeze",
    precision: str = "fp32",
    max_compiled_sizes: int = 4,
    keep_memory: bool = True,
    low_memory: bool = True,
) -> nn.Module:
    """
    The optimised inference copy of ``model`` (``model`` itself is not modified). A detectron2
    ``SemanticSegmentor`` becomes an :class:`OptimizedSemanticSegmentor`, an ``SFNetKNet`` an
    ``OptimizedPanopticKNet`` (optimized_panoptic.py); any other module gets only the module
    rewrites (deep supervision and dropout removed, BatchNorm folded) and keeps
    its own forward.
    """
    if isinstance(model, SFNetKNet):  # optimized_panoptic.py (it imports this module)
        from sfnet_d2.deployment.optimized_panoptic import optimize_knet

        rewritten = _rewrite_modules(model, "SFNetKNet")
        if low_memory:  # the banded stem (K-Net has no fuse convolution to split)
            replaced = reduce_activation_memory(rewritten)
            logger.info(f"DEPLOY.LOW_MEMORY: banded / part-wise rewrites of {replaced}")
        return optimize_knet(model, rewritten,
                             channels_last=channels_last, torchscript=torchscript,
                             precision=precision, max_compiled_sizes=max_compiled_sizes,
                             keep_memory=keep_memory)
    # SFNetSemanticSegmentor only adds training losses: its inference is SemanticSegmentor's.
    if type(model) not in (SemanticSegmentor, SFNetSemanticSegmentor):
        return _rewrite_modules(model, type(model).__name__)
    model = _rewrite_modules(model, "SemanticSegmentor")
    network = SemanticNetworkPart(model)
    if low_memory:
        replaced = reduce_activation_memory(network)
        logger.info(f"DEPLOY.LOW_MEMORY: banded / part-wise rewrites of {replaced}")
    if channels_last:
        # The gather warp reads channels-last rows and writes channels-last output; with NCHW
        # features it would add layout copies instead of removing them.
        use_gather_warp(network)
    if torchscript == "optimize":
        replace_adaptive_avg_pooling(network)
    return OptimizedSemanticSegmentor(
        network=network,
        pixel_mean=model.pixel_mean,
        pixel_std=model.pixel_std,
        size_divisibility=padding_divisibility(model),
        channels_last=channels_last,
        torchscript=torchscript,
        precision=precision,
        max_compiled_sizes=max_compiled_sizes,
        keep_memory=keep_memory,
    ).to(model.pixel_mean.device)


def inference_options(cfg, **overrides) -> Dict[str, object]:
    """The keyword arguments of :func:`optimize_model` that ``DEPLOY.*`` asks for,
    with ``overrides`` (e.g. ``precision="bf16"``, ``torchscript="none"``) replacing some."""
    settings = cfg.DEPLOY
    options = dict(channels_last=settings.CHANNELS_LAST, torchscript=settings.TORCHSCRIPT,
                   precision=settings.PRECISION, max_compiled_sizes=settings.MAX_COMPILED_SIZES,
                   keep_memory=settings.KEEP_MEMORY, low_memory=settings.LOW_MEMORY)
    unknown = set(overrides) - set(options)
    if unknown:
        raise TypeError(f"inference_options: unknown options {sorted(unknown)}; known: "
                        f"{sorted(options)}")
    options.update(overrides)
    return options


def build_inference_model(cfg, model: nn.Module, precision: Optional[str] = None) -> nn.Module:
    """
    The model to run inference with under ``cfg``: ``model`` itself when
    ``DEPLOY.OPTIMIZE`` is False, else its optimised copy configured by
    ``DEPLOY.*``. ``precision`` overrides ``DEPLOY.PRECISION``.
    """
    if not cfg.DEPLOY.OPTIMIZE:
        return model
    overrides = {"precision": precision} if precision else {}
    return optimize_model(model, **inference_options(cfg, **overrides))
