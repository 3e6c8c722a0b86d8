"""
The loss functions of K-Net, as mmdet 2.x computes them (configured in ZwwWayne/K-Net@5e50ee5
configs/det/_base_/models/knet_s3_r50_fpn_panoptic.py; mmdet/models/losses/focal_loss.py,
cross_entropy_loss.py, dice_loss.py and utils.py). Each returns an unweighted scalar; the
criterion multiplies by the loss weights.

* ``sigmoid_focal_loss``: mmdet ``FocalLoss(use_sigmoid=True)`` with integer labels
  (``num_classes`` = background = an all-zero one-hot row), an optional elementwise weight, summed
  and divided by ``avg_factor``.
* ``mask_bce_loss``: ``CrossEntropyLoss(use_sigmoid=True)``: per-pixel BCE with logits, mean.
* ``dice_loss``: mmdet ``DiceLoss``: ``1 - 2 sum(p t) / ((sum p^2 + eps) + (sum t^2 + eps))`` per
  mask, eps 1e-3, mean over masks (squared denominators, unlike Mask2Former's dice).
* ``rank_loss``: softmax cross-entropy across the kernels at every pixel, ignore index 255, mean
  over ALL pixels (ignored ones count as zeros: mmdet < 2.22 ``CrossEntropyLoss`` with
  ``ignore_index`` has no ``avg_non_ignore`` and divides by the element count).
"""
import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "mask_bce_loss", "dice_loss", "rank_loss", "IGNORE_INDEX"]

IGNORE_INDEX = 255


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor = None,
                       avg_factor: float = None, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """
    Args:
        logits: (M, C) class logits (or (M, C, ...) with labels (M, ...)).
        labels: (M,) integer labels in [0, C]; C = background (no positive class).
        weight: optional elementwise weight of the same shape as ``logits``.
        avg_factor: divisor of the sum (default: the number of elements, i.e. the mean).
    """
    num_classes = logits.shape[1]
    if logits.dim() > 2:  # (M, C, ...) -> (M*..., C)
        logits = logits.movedim(1, -1).reshape(-1, num_classes)
        labels = labels.reshape(-1)
        if weight is not None:
            weight = weight.movedim(1, -1).reshape(-1, num_classes)
    targets = F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma) * (alpha * targets + (1 - alpha) * (1 - targets))
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / avg_factor


def mask_bce_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M, H, W) logits vs (M, H, W) soft targets in [0, 1]: mean per-pixel BCE."""
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(mask_logits, targets.to(mask_logits.dtype))


def dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """(M, H, W) logits vs (M, H, W) soft targets: mean over masks of mmdet's dice loss."""
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0
    p = mask_logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    a = (p * t).sum(1)
    b = (p * p).sum(1) + eps
    c = (t * t).sum(1) + eps
    return (1 - 2 * a / (b + c)).mean()


def rank_loss(mask_logits: torch.Tensor, rank_targets: torch.Tensor) -> torch.Tensor:
    """
    (N, K, H, W) mask logits vs (N, H, W) kernel index per pixel (IGNORE_INDEX where no positive
    kernel's target covers the pixel): cross-entropy over the K kernels, mean over all N*H*W pixels.
    """
    loss = F.cross_entropy(mask_logits, rank_targets.long(), ignore_index=IGNORE_INDEX,
                           reduction="none")
    return loss.mean()
