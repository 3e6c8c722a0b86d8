"""
The optimised inference model of K-Net (``SFNetKNet``, sfnet_d2/modeling/meta_arch/knet/): the
semantic path's optimisations (optimized_model.py) on K-Net's network, the model's own
post-processing after it.

``OptimizedPanopticKNet`` has ``SFNetKNet``'s inference contract, ``forward(batched_inputs) ->
[{"panoptic_seg": (ids, segments_info), "sem_seg"?: (C, H, W)}]``, so the Predictor, the demo and
``--eval-only`` (detectron2's panoptic / semantic evaluators) use it unchanged. What it does:

* the module rewrites: dropout removed, BatchNorm folded into the convolutions (backbone, neck);
  K-Net's GroupNorm / LayerNorm normalise with statistics of their input and stay;
* channels-last weights and input, with the neck's FAM warps as channels-last gathers;
* the network part (``PanopticKNetNetworkPart``: normalised padded image -> last stage's class
  logits and stride-8 mask logits) traced and frozen once per input shape
  (``OptimizedInferenceModel``, shared with the semantic path); the kernel-update stages are many
  small ops (LayerNorms, linears, attention over 100-odd kernels), which the frozen graph runs
  without Python between them;
* optionally bf16 / fp16 weights and activations, the network's outputs cast back to float32
  before the post-processing (so the merge sees float32 probabilities, as in fp32 mode);
* kept working memory (``DEPLOY.KEEP_MEMORY``, memory.py) over the whole call.

Pre-processing is network_part.py's ``normalize_and_pad`` (the values of ``SFNetKNet``'s
``ImageList.from_tensors``); post-processing is ``SFNetKNet.inference`` itself (mask upsampling,
sigmoid, the exact tiled merge of inference.py). In float32 the logits equal the plain model's up
to float rounding and the panoptic output is the same (tests/test_knet_optimized_inference.py).
"""
import logging
from typing import Dict, List, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn

from sfnet_d2.deployment.memory import kept_memory
from sfnet_d2.deployment.network_part import PanopticKNetNetworkPart, normalize_and_pad
from sfnet_d2.deployment.optimize import use_gather_warp
from sfnet_d2.deployment.optimized_model import OptimizedInferenceModel
from sfnet_d2.deployment.static_pooling import replace_adaptive_avg_pooling

__all__ = ["OptimizedPanopticKNet", "optimize_knet"]

logger = logging.getLogger(__name__)


class OptimizedPanopticKNet(OptimizedInferenceModel):
    """
    ``SFNetKNet`` for inference only: same inputs and outputs, faster network. Build it with
    ``optimize_model`` / ``build_inference_model`` (optimized_model.py) on an ``SFNetKNet``.
    ``network`` is the network part of an already rewritten copy of the model (see
    ``optimize_model``); that copy's ``inference`` is the post-processing.
    """

    def __init__(self, *, network: PanopticKNetNetworkPart, **options):
        if not isinstance(network, PanopticKNetNetworkPart):
            raise TypeError(f"OptimizedPanopticKNet: expected a PanopticKNetNetworkPart, got "
                            f"{type(network).__name__}")
        super().__init__(network=network, **options)

    def network_forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The network on normalised, padded float32 images (N, 3, H, W): float32
        ``(cls_logits (N, K, C), mask_logits (N, K, H/8, W/8))`` of the last stage."""
        with kept_memory(self.keep_memory and images.device.type == "cpu"):
            cls_logits, mask_logits = self._run_network(images)
            # contiguous (NCHW) masks: with channels-last ones the merge would take its dense
            # fallback (inference.py, KernelMasks.tiled_merge_supported)
            return cls_logits.float(), mask_logits.float().contiguous()

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            raise RuntimeError("OptimizedPanopticKNet is inference-only")
        model = self.network.model
        with torch.no_grad(), kept_memory(self.keep_memory and self.device.type == "cpu"):
            images, image_sizes = normalize_and_pad(
                [x["image"].to(self.device) for x in batched_inputs], self.pixel_mean,
                self.pixel_std, self.size_divisibility)
            last_stage = self.network_forward(images)
            # the model's own post-processing (upsampling, sigmoid, the exact tiled merge); it
            # reads only the padded size and the image sizes of the ImageList
            return model.inference(batched_inputs, ImageList(images, image_sizes), last_stage)


def optimize_knet(model: nn.Module, rewritten: nn.Module, *, channels_last: bool,
                  torchscript: str, **options) -> OptimizedPanopticKNet:
    """The :class:`OptimizedPanopticKNet` of ``rewritten``, the module-rewritten copy of the
    ``SFNetKNet`` ``model`` (``optimize_model`` makes it)."""
    network = PanopticKNetNetworkPart(rewritten)
    if channels_last:
        # as in the semantic path: the gather warp pays only with channels-last features
        use_gather_warp(network)
    if torchscript == "optimize":
        replace_adaptive_avg_pooling(network)
    # the criterion (training only) does not belong to the inference model
    rewritten.criterion = None
    return OptimizedPanopticKNet(
        network=network, pixel_mean=model.pixel_mean, pixel_std=model.pixel_std,
        size_divisibility=int(model.size_divisibility), channels_last=channels_last,
        torchscript=torchscript, **options,
    ).to(model.pixel_mean.device)
