"""K-Net panoptic segmentation on the SFNet backbone and neck (docs/PANOPTIC.md)."""
from .class_layout import KNetClassLayout
from .criterion import KNetCriterion, prepare_targets
from .inference import kernel_scores_and_labels, panoptic_merge, semantic_from_kernels
from .kernel_head import InitialKernelHead, KernelFeatureBranches
from .kernel_update import KernelUpdateStage, KernelUpdator
from .losses import dice_loss, mask_bce_loss, rank_loss, sigmoid_focal_loss
from .matcher import MaskHungarianMatcher, dice_cost, focal_cost, mask_cost
from .meta_arch import SFNetKNet, knet_metadata_dataset
from .position_encoding import SinePositionalEncoding

__all__ = [
    "SFNetKNet", "knet_metadata_dataset", "KNetClassLayout", "KNetCriterion", "prepare_targets",
    "KernelFeatureBranches", "InitialKernelHead", "KernelUpdateStage", "KernelUpdator",
    "MaskHungarianMatcher", "dice_cost", "mask_cost", "focal_cost",
    "sigmoid_focal_loss", "mask_bce_loss", "dice_loss", "rank_loss",
    "kernel_scores_and_labels", "panoptic_merge", "semantic_from_kernels",
    "SinePositionalEncoding",
]
