"""
Online hard example mining (OHEM) cross-entropy, as the official SFNet code's
``OhemCrossEntropy2dTensor`` (lxtGH/SFSegNets@ba475ba loss.py):

over all valid pixels of the batch (label != ignore), with p = softmax probability of the ground
truth class, keep the pixels with ``p <= max(thresh, p_(min_kept))`` where ``p_(min_kept)`` is the
``min_kept``-th smallest p; if ``min_kept`` exceeds the number of valid pixels every valid pixel
is kept. The loss is the mean cross-entropy over the kept pixels.

Cost (this runs on every full-resolution logit map of a training step, once per DSN head too):
the official code sorts all p to read ``p_(min_kept)``. Only its value matters, and only when it
is above ``thresh``: that is the case exactly when fewer than ``min_kept`` valid pixels have
``p <= thresh``, so a count decides first (always enough early in training, when every p is small)
and ``torch.kthvalue`` - a selection, the same value as the sorted array's ``min_kept``-th entry,
ties included - is computed only otherwise.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["ohem_keep_mask", "ohem_cross_entropy"]


@torch.no_grad()
def _ohem_keep(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, thresh: float, min_kept: int
) -> Tuple[torch.Tensor, int, int]:
    """(keep mask, number of kept pixels, number of valid pixels)."""
    valid = targets != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or min_kept <= 0 or min_kept > num_valid:
        return valid, num_valid, num_valid
    # float32 probabilities, as the official softmax of fp32 logits, whatever the logits' dtype.
    prob = F.softmax(logits.float(), dim=1)
    gt = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    gt_prob = prob.gather(1, gt).squeeze(1)
    del prob
    # The threshold max(thresh, p_(min_kept)) compared in float32: ``thresh`` rounded to float32
    # as torch.clamp(p_(min_kept), min=thresh) rounds it.
    thresh32 = torch.tensor(thresh, dtype=gt_prob.dtype)
    keep = valid & (gt_prob <= thresh32)
    num_kept = int(keep.sum())
    if num_kept >= min_kept:
        # At least min_kept valid p are <= thresh, so p_(min_kept) <= thresh: the threshold is
        # thresh itself (NaN p fail both comparisons; kthvalue orders NaN last).
        return keep, num_kept, num_valid
    # p_(min_kept) > thresh. Ignored pixels get p = 1, above or equal to every valid p, so that
    # the min_kept-th smallest of all pixels (min_kept <= num_valid) is that of the valid ones.
    gt_prob = torch.where(valid, gt_prob, torch.ones_like(gt_prob))
    kth = torch.kthvalue(gt_prob.flatten(), min_kept).values
    keep = valid & (gt_prob <= torch.clamp(kth, min=thresh))
    return keep, int(keep.sum()), num_valid


def ohem_keep_mask(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, thresh: float, min_kept: int
) -> torch.Tensor:
    """Boolean mask (N, H, W) of the pixels OHEM trains on. ``min_kept <= 0`` disables mining."""
    return _ohem_keep(logits, targets, ignore_index, thresh, min_kept)[0]


def ohem_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = 255,
    thresh: float = 0.7,
    min_kept: int = 100000,
) -> torch.Tensor:
    """Mean cross-entropy over the OHEM-kept pixels; logits (N, C, H, W), targets (N, H, W)."""
    keep, num_kept, num_valid = _ohem_keep(logits, targets, ignore_index, thresh, min_kept)
    if num_kept == 0:
        # All pixels ignored: a zero loss that still depends on the logits keeps DDP happy.
        return logits.sum() * 0.0
    if num_kept < num_valid:
        targets = torch.where(keep, targets, torch.full_like(targets, ignore_index))
    # else every valid pixel is kept: the targets are already the mined targets.
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="mean")
