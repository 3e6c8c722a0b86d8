"""
Online hard example mining (OHEM) cross-entropy, as the official SFNet code's
``OhemCrossEntropy2dTensor`` (lxtGH/SFSegNets@ba475ba loss.py):

over all valid pixels of the batch (label != ignore), with p = softmax probability of the ground
truth class, keep the pixels with ``p <= max(thresh, p_(min_kept))`` where ``p_(min_kept)`` is the
``min_kept``-th smallest p; if ``min_kept`` exceeds the number of valid pixels every valid pixel
is kept. The loss is the mean cross-entropy over the kept pixels.
"""
import torch
import torch.nn.functional as F

__all__ = ["ohem_keep_mask", "ohem_cross_entropy"]


@torch.no_grad()
def ohem_keep_mask(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, thresh: float, min_kept: int
) -> torch.Tensor:
    """Boolean mask (N, H, W) of the pixels OHEM trains on. ``min_kept <= 0`` disables mining."""
    valid = targets != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or min_kept <= 0 or min_kept > num_valid:
        return valid
    prob = F.softmax(logits.float(), dim=1)
    gt = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    gt_prob = prob.gather(1, gt).squeeze(1)
    gt_prob = torch.where(valid, gt_prob, torch.ones_like(gt_prob))  # ignored pixels sort last
    kth = torch.kthvalue(gt_prob.flatten(), min_kept).values
    threshold = torch.clamp(kth, min=thresh)
    return valid & (gt_prob <= threshold)


def ohem_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = 255,
    thresh: float = 0.7,
    min_kept: int = 100000,
) -> torch.Tensor:
    """Mean cross-entropy over the OHEM-kept pixels; logits (N, C, H, W), targets (N, H, W)."""
    keep = ohem_keep_mask(logits, targets, ignore_index, thresh, min_kept)
    mined = torch.where(keep, targets, torch.full_like(targets, ignore_index))
    if not keep.any():
        # All pixels ignored: a zero loss that still depends on the logits keeps DDP happy.
        return logits.sum() * 0.0
    return F.cross_entropy(logits, mined, ignore_index=ignore_index, reduction="mean")
