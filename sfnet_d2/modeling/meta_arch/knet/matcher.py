"""
K-Net's ``MaskHungarianAssigner`` (ZwwWayne/K-Net@5e50ee5 knet/det/mask_hungarian_assigner.py;
``FocalLossCost`` from mmdet/core/bbox/match_costs/match_cost.py): one-to-one assignment
of thing kernels to ground-truth thing masks minimising

    cls_cost  * FocalLossCost(cls logits, gt labels)    (only when class logits are given)
  + dice_cost * DiceCost(mask logits, gt masks)
  + mask_cost * MaskCost(mask logits, gt masks)

solved by ``scipy.optimize.linear_sum_assignment``. With p = sigmoid(mask logits) (N, HW) and
t = soft gt masks (M, HW):

* DiceCost = ``-2 (p t^T) / ((sum p^2 + 1e-3)[:, None] + (sum t^2 + 1e-3)[None])`` (K-Net's own;
  the constant "1 -" is left out);
* MaskCost = ``-(p t^T + (1-p)(1-t)^T) / HW`` (a soft pixel accuracy, not BCE);
* FocalLossCost (mmdet) on s = sigmoid(cls logits):
  ``[-log(s + 1e-12) * 0.25 * (1-s)^2 - (-log(1-s + 1e-12) * 0.75 * s^2)][:, gt_labels]``.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["dice_cost", "mask_cost", "focal_cost", "MaskHungarianMatcher"]


def dice_cost(mask_logits: torch.Tensor, gt_masks: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    p = mask_logits.sigmoid().flatten(1)
    t = gt_masks.flatten(1).to(p.dtype)
    num = 2 * p @ t.T
    return -num / ((p * p).sum(1)[:, None] + eps + (t * t).sum(1)[None] + eps)


def mask_cost(mask_logits: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    p = mask_logits.sigmoid().flatten(1)
    t = gt_masks.flatten(1).to(p.dtype)
    return -(p @ t.T + (1 - p) @ (1 - t).T) / p.shape[1]


def focal_cost(cls_logits: torch.Tensor, gt_labels: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    s = cls_logits.sigmoid()
    neg = -(1 - s + eps).log() * (1 - alpha) * s.pow(gamma)
    pos = -(s + eps).log() * alpha * (1 - s).pow(gamma)
    return (pos - neg)[:, gt_labels.long()]


class MaskHungarianMatcher:
    def __init__(self, cls_cost: float = 2.0, dice_cost: float = 4.0, mask_cost: float = 1.0):
        self.cls_weight = cls_cost
        self.dice_weight = dice_cost
        self.mask_weight = mask_cost

    def cost_matrix(self, mask_logits: torch.Tensor, gt_masks: torch.Tensor,
                    cls_logits: Optional[torch.Tensor] = None,
                    gt_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, M) total cost of assigning prediction i to ground truth j."""
        mask_logits, gt_masks = mask_logits.float(), gt_masks.float()
        cost = self.dice_weight * dice_cost(mask_logits, gt_masks)
        cost = cost + self.mask_weight * mask_cost(mask_logits, gt_masks)
        if cls_logits is not None and self.cls_weight != 0:
            cost = cost + self.cls_weight * focal_cost(cls_logits.float(), gt_labels)
        return cost

    @torch.no_grad()
    def __call__(self, mask_logits: torch.Tensor, gt_masks: torch.Tensor,
                 cls_logits: Optional[torch.Tensor] = None,
                 gt_labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            mask_logits: (N, H, W) predicted mask logits of the N thing kernels.
            gt_masks: (M, H, W) ground-truth masks (soft, same resolution).
            cls_logits: (N, num_thing_classes) class logits, or None (no class cost: the
                kernel head and update stage 0).
            gt_labels: (M,) thing labels, indexing ``cls_logits``' columns.
        Returns:
            (pred_indices, gt_indices), int64 tensors of length min(N, M) on the input's device.
        """
        device = mask_logits.device
        if gt_masks.shape[0] == 0 or mask_logits.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return empty, empty
        cost = self.cost_matrix(mask_logits, gt_masks, cls_logits, gt_labels).cpu().numpy()
        if not np.isfinite(cost).all():
            raise FloatingPointError("K-Net matching cost is not finite (diverged mask logits?)")
        rows, cols = linear_sum_assignment(cost)
        return (torch.as_tensor(rows, dtype=torch.int64, device=device),
                torch.as_tensor(cols, dtype=torch.int64, device=device))
