"""K-Net panoptic segmentation on the SFNet backbone and neck (docs/PANOPTIC.md)."""
from sfnet_d2.modeling.meta_arch.knet.class_layout import KNetClassLayout
from sfnet_d2.modeling.meta_arch.knet.criterion import KNetCriterion, prepare_targets
from sfnet_d2.modeling.meta_arch.knet.inference import (KernelMasks, kernel_scores_and_labels,
                                                     merge_kernels, panoptic_merge,
                                                     semantic_from_kernels)
from sfnet_d2.modeling.meta_arch.knet.kernel_head import InitialKernelHead, KernelFeatureBranches
from sfnet_d2.modeling.meta_arch.knet.kernel_update import KernelUpdateStage, KernelUpdator
from sfnet_d2.modeling.meta_arch.knet.losses import dice_loss, mask_bce_loss, rank_loss, sigmoid_focal_loss
from sfnet_d2.modeling.meta_arch.knet.matcher import MaskHungarianMatcher, dice_cost, focal_cost, mask_cost
from sfnet_d2.modeling.meta_arch.knet.meta_arch import SFNetKNet, knet_metadata_dataset
from sfnet_d2.modeling.meta_arch.knet.position_encoding import SinePositionalEncoding

__all__ = [
    "SFNetKNet", "knet_metadata_dataset", "KNetClassLayout", "KNetCriterion", "prepare_targets",
    "KernelFeatureBranches", "InitialKernelHead", "KernelUpdateStage", "KernelUpdator",
    "MaskHungarianMatcher", "dice_cost", "mask_cost", "focal_cost",
    "sigmoid_focal_loss", "mask_bce_loss", "dice_loss", "rank_loss",
    "kernel_scores_and_labels", "panoptic_merge", "semantic_from_kernels", "KernelMasks",
    "merge_kernels",
    "SinePositionalEncoding",
]
