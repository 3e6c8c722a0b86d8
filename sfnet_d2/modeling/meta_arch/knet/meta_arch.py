"""
``SFNetKNet``: K-Net panoptic segmentation on an SFNet backbone and neck (paper section 4.5: "we
replace the backbone part of K-Net with our proposed SFNet backbone and aligned decoder").

    image -> backbone (MODEL.BACKBONE) -> SFNet neck (MODEL.SFNET.NECK, fused stride-4 map)
          -> KernelFeatureBranches (stride 8, FEAT_CHANNELS) -> InitialKernelHead
          -> NUM_STAGES x KernelUpdateStage -> panoptic merge

Classes come from the metadata of MODEL.KNET.METADATA_DATASET (default: the first training
dataset) through :class:`KNetClassLayout`, so that COCO (things first) and Cityscapes (stuff first)
need no special case. Training inputs: detectron2 ``instances`` with ``gt_classes`` (contiguous ids)
and ``gt_masks`` for every non-crowd segment (things and stuff), as made by
``sfnet_d2.data.KNetPanopticDatasetMapper``. Inference returns detectron2's standard
``{"panoptic_seg": (int32 (H, W) with 0 = VOID, segments_info)}`` at the input's
``height`` x ``width``, plus ``"sem_seg"`` (C, H, W) with MODEL.KNET.TEST.SEMANTIC_ON.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from sfnet_d2.modeling.heads.neck import build_sfnet_neck
from sfnet_d2.modeling.meta_arch.knet.class_layout import KNetClassLayout
from sfnet_d2.modeling.meta_arch.knet.criterion import KNetCriterion, prepare_targets
from sfnet_d2.modeling.meta_arch.knet.inference import (KernelMasks, kernel_scores_and_labels,
                                                     merge_kernels)
from sfnet_d2.modeling.meta_arch.knet.kernel_head import InitialKernelHead, KernelFeatureBranches
from sfnet_d2.modeling.meta_arch.knet.kernel_update import KernelUpdateStage
from sfnet_d2.modeling.meta_arch.knet.matcher import MaskHungarianMatcher

__all__ = ["SFNetKNet", "knet_metadata_dataset"]


def knet_metadata_dataset(cfg) -> str:
    """The dataset whose metadata defines the model's classes."""
    name = cfg.MODEL.KNET.METADATA_DATASET or (cfg.DATASETS.TRAIN or cfg.DATASETS.TEST or [""])[0]
    if not name:
        raise ValueError(
            "SFNetKNet needs class metadata: set MODEL.KNET.METADATA_DATASET, DATASETS.TRAIN or "
            "DATASETS.TEST to a panoptic dataset"
        )
    if name not in MetadataCatalog.list():
        raise ValueError(
            f"MODEL.KNET.METADATA_DATASET / DATASETS: dataset {name!r} is not registered "
            "(see docs/PANOPTIC.md for registering a COCO-panoptic-format dataset by paths)"
        )
    return name


@META_ARCH_REGISTRY.register()
class SFNetKNet(nn.Module):
    @configurable
    def __init__(self, *, backbone, neck, feature_branches: KernelFeatureBranches,
                 kernel_head: InitialKernelHead, stages: List[KernelUpdateStage],
                 criterion: KNetCriterion, layout: KNetClassLayout, num_proposals: int,
                 feat_downsample_stride: int, pixel_mean, pixel_std, size_divisibility: int = 32,
                 instance_score_thr: float = 0.3, overlap_thr: float = 0.6,
                 mask_thr: float = 0.5, semantic_on: bool = False):
        """
        NOTE: this interface is experimental.

        Args:
            backbone, neck: detectron2 backbone and SFNet neck (``forward_features()["fused"]``).
            feature_branches, kernel_head, stages: the K-Net head.
            criterion: losses (training only).
            layout: class order (thing/stuff) from dataset metadata.
            num_proposals: thing kernels.
            feat_downsample_stride: kernel features' stride relative to the neck output; masks are
                upsampled by it (to stride 4) for losses and inference.
            pixel_mean, pixel_std: input normalisation.
            size_divisibility: inputs are zero-padded (after normalisation) to a multiple of it.
            instance_score_thr, overlap_thr, mask_thr: panoptic merge thresholds.
            semantic_on: also output per-class semantic scores.
        """
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.feature_branches = feature_branches
        self.kernel_head = kernel_head
        self.stages = nn.ModuleList(stages)
        self.criterion = criterion
        self.layout = layout
        self.num_proposals = num_proposals
        self.feat_downsample_stride = feat_downsample_stride
        self.size_divisibility = size_divisibility
        self.instance_score_thr = instance_score_thr
        self.overlap_thr = overlap_thr
        self.mask_thr = mask_thr
        self.semantic_on = semantic_on
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        k = cfg.MODEL.KNET
        layout = KNetClassLayout.from_metadata(knet_metadata_dataset(cfg))
        backbone = build_backbone(cfg)
        neck = build_sfnet_neck(cfg, backbone.output_shape())
        neck_out = neck.output_shape()
        if neck_out.stride != 4:
            raise ValueError(
                f"SFNetKNet expects the neck's fused map at stride 4 (K-Net's mask-loss stride); "
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)} gives "
                f"stride {neck_out.stride}"
            )
        if len(k.STAGE_LOSS_WEIGHTS) != k.NUM_STAGES:
            raise ValueError(
                f"MODEL.KNET.STAGE_LOSS_WEIGHTS has {len(k.STAGE_LOSS_WEIGHTS)} entries for "
                f"MODEL.KNET.NUM_STAGES={k.NUM_STAGES}"
            )
        ch = k.FEAT_CHANNELS
        stages = [
            KernelUpdateStage(ch, layout.num_classes, k.NUM_HEADS, k.FFN_CHANNELS, k.DROPOUT,
                              k.HARD_MASK_THR)
            for _ in range(k.NUM_STAGES)
        ]
        criterion = KNetCriterion(
            MaskHungarianMatcher(k.CLS_COST, k.DICE_COST, k.MASK_COST), k.NUM_PROPOSALS,
            layout.num_thing_classes, layout.num_stuff_classes, cls_weight=k.CLS_WEIGHT,
            mask_weight=k.MASK_WEIGHT, dice_weight=k.DICE_WEIGHT, rank_weight=k.RANK_WEIGHT,
            seg_weight=k.SEG_WEIGHT, stage_weights=k.STAGE_LOSS_WEIGHTS,
            focal_alpha=k.FOCAL_ALPHA, focal_gamma=k.FOCAL_GAMMA,
        )
        return {
            "backbone": backbone,
            "neck": neck,
            "feature_branches": KernelFeatureBranches(neck_out.channels, ch,
                                                      k.FEAT_DOWNSAMPLE_STRIDE, k.NORM,
                                                      k.POSITIONAL_ENCODING),
            "kernel_head": InitialKernelHead(ch, k.NUM_PROPOSALS, layout.num_thing_classes,
                                             layout.num_stuff_classes, k.HARD_MASK_THR),
            "stages": stages,
            "criterion": criterion,
            "layout": layout,
            "num_proposals": k.NUM_PROPOSALS,
            "feat_downsample_stride": k.FEAT_DOWNSAMPLE_STRIDE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": max(32, getattr(backbone, "size_divisibility", 0) or 0),
            "instance_score_thr": k.TEST.INSTANCE_SCORE_THR,
            "overlap_thr": k.TEST.OVERLAP_THR,
            "mask_thr": k.TEST.MASK_THR,
            "semantic_on": k.TEST.SEMANTIC_ON,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def _upsample(self, masks: torch.Tensor) -> torch.Tensor:
        # stride-8 masks -> stride 4 (K-Net's scaled_mask_preds), bilinear, align_corners=False
        if self.feat_downsample_stride == 1:
            return masks
        return F.interpolate(masks, scale_factor=self.feat_downsample_stride, mode="bilinear",
                             align_corners=False)

    def forward_head(self, images: torch.Tensor):
        """Normalised, padded (N, 3, H, W) images -> kernel-head outputs and per-stage
        (cls_logits (N, K, C), mask_logits (N, K, H/8, W/8)) in the internal class order."""
        fused = self.neck.forward_features(self.backbone(images))["fused"]
        loc, sem = self.feature_branches(fused)
        init = self.kernel_head(loc, sem)
        kernels, masks = init["kernels"], init["masks"]
        stage_outputs = []
        for stage in self.stages:
            cls_logits, masks, kernels = stage(init["x_feats"], kernels, masks)
            stage_outputs.append((cls_logits, masks))
        return init, stage_outputs

    def forward(self, batched_inputs: List[Dict]):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        init, stage_outputs = self.forward_head(images.tensor)
        if self.training:
            return self.losses(batched_inputs, images, init, stage_outputs)
        return self.inference(batched_inputs, images, stage_outputs[-1])

    def losses(self, batched_inputs, images, init, stage_outputs) -> Dict[str, torch.Tensor]:
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                "SFNetKNet training needs 'instances' (gt_classes, gt_masks) in every input: use "
                "sfnet_d2.data.KNetPanopticDatasetMapper"
            )
        thing_masks = self._upsample(init["thing_masks"])
        targets = prepare_targets([x["instances"].to(self.device) for x in batched_inputs],
                                  self.layout, images.tensor.shape[-2:], thing_masks.shape[-2:])
        losses = self.criterion.kernel_head_losses(thing_masks, self._upsample(init["seg_logits"]),
                                                   targets)
        scaled = [(cls_logits, self._upsample(masks)) for cls_logits, masks in stage_outputs]
        losses.update(self.criterion.stage_losses(scaled, self._upsample(init["masks"]), targets))
        return losses

    def inference(self, batched_inputs, images, last_stage):
        cls_logits, mask_logits = last_stage
        mask_logits = self._upsample(mask_logits)
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            out_h, out_w = x.get("height", h), x.get("width", w)
            # K-Net: sigmoid, then bilinear to the padded input, crop, bilinear to the original
            # size; the merge resizes only the masks and tiles whose values it needs
            masks = KernelMasks(mask_logits[i:i + 1].sigmoid()[0], images.tensor.shape[-2:],
                                (h, w), (out_h, out_w))
            results.append(self.panoptic_from_kernels(cls_logits[i], masks))
        return results

    def panoptic_from_kernels(self, cls_logits: torch.Tensor, mask_probs) -> Dict:
        """One image's (K, C) class logits and mask probabilities -> detectron2's outputs.
        ``mask_probs``: (K, H, W) at the output size, or a :class:`KernelMasks`."""
        scores, labels = kernel_scores_and_labels(cls_logits, self.num_proposals,
                                                  self.layout.num_thing_classes)
        masks = mask_probs if isinstance(mask_probs, KernelMasks) else KernelMasks(mask_probs)
        pan, segments, sem = merge_kernels(
            scores, labels, masks, self.layout.num_thing_classes, self.instance_score_thr,
            self.overlap_thr, self.mask_thr,
            num_classes=self.layout.num_classes if self.semantic_on else None)
        contiguous = self.layout.internal_to_contiguous
        segments_info = [{"id": s["id"], "category_id": contiguous[s["label"]],
                          "isthing": s["isthing"], "score": s["score"]} for s in segments]
        out = {"panoptic_seg": (pan, segments_info)}
        if sem is not None:
            # internal -> contiguous channel order
            order = torch.as_tensor(self.layout.contiguous_to_internal, device=sem.device)
            out["sem_seg"] = sem[order]
        return out
