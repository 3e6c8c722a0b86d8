"""
K-Net's training targets and losses (ZwwWayne/K-Net@5e50ee5 knet/det/kernel_head.py ``loss``,
knet/det/kernel_iter_head.py, knet/det/kernel_update_head.py ``loss`` / ``_get_target_single``,
knet/det/knet.py ``forward_train`` and knet/det/utils.py).

Ground truth per image (``prepare_targets``): thing instance masks and one mask per stuff class
present (the union of its segments), zero-padded to the padded batch size and resized bilinearly
(align_corners=False) to the stride-4 loss resolution: soft targets, as K-Net.

Kernel head ("rpn") losses, on its P thing masks upsampled to stride 4, matched to the thing
ground truth by mask and dice costs only:
``loss_rpn_mask`` (BCE, weight 1), ``loss_rpn_dice`` (4), ``loss_rpn_rank`` (0.1, over the P
thing masks) and ``loss_rpn_seg`` (focal on the semantic logits; targets: stuff pixels, then the
matched thing masks on top, everything else background; divided by the number of non-background
pixels).

Stage s losses (prefix ``s{s}_``), with the assignment made on stage s-1's (detached) predictions:
thing kernels matched with mask + dice (+ focal class cost from stage 1 on, thing classes only);
stuff kernel j is tied to stuff class j and positive when that class is present.
``loss_cls`` (focal, weight 2; thing kernels get no loss on stuff logits, a stuff kernel only on
its own class logit; divided by the number of positives averaged over processes),
``loss_mask`` (BCE, 1), ``loss_dice`` (4) on the positive kernels, ``loss_rank`` (0.1) over all
kernels. Each stage's losses are multiplied by its stage weight.
"""
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm

from sfnet_d2.modeling.meta_arch.knet.losses import IGNORE_INDEX, dice_loss, mask_bce_loss, rank_loss, sigmoid_focal_loss
from sfnet_d2.modeling.meta_arch.knet.matcher import MaskHungarianMatcher

__all__ = ["KNetCriterion", "prepare_targets"]


def prepare_targets(instances_per_image, layout, padded_hw,
                    target_hw) -> List[Dict[str, torch.Tensor]]:
    """
    Args:
        instances_per_image: detectron2 ``Instances`` per image with ``gt_classes`` (contiguous ids)
            and ``gt_masks`` (BitMasks at the augmented image size).
        layout: :class:`~.class_layout.KNetClassLayout`.
        padded_hw: (H, W) of the padded batch tensor.
        target_hw: (h, w) of the loss resolution (the stride-4 mask predictions).
    Returns per image: thing_masks (M, h, w), thing_labels (M,), stuff_masks (S', h, w) and
    stuff_labels (S',) (internal labels; stuff sorted by label).
    """
    targets = []
    for inst in instances_per_image:
        masks = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
        labels = layout.to_internal(inst.gt_classes)
        device = labels.device
        is_thing = labels < layout.num_thing_classes
        stuff_labels = torch.unique(labels[~is_thing])  # sorted
        full = [masks[is_thing].float()]
        full += [masks[labels == lab].any(dim=0, keepdim=True).float() for lab in stuff_labels]
        full = torch.cat(full) if full else masks.new_zeros((0,) + masks.shape[1:]).float()
        h, w = full.shape[-2:]
        padded = full.new_zeros((full.shape[0], padded_hw[0], padded_hw[1]))
        padded[:, :h, :w] = full
        if padded.shape[0]:
            soft = F.interpolate(padded[None], size=tuple(target_hw), mode="bilinear",
                                 align_corners=False)[0]
        else:
            soft = padded.new_zeros((0,) + tuple(target_hw))
        num_things = int(is_thing.sum())
        targets.append({
            "thing_masks": soft[:num_things], "thing_labels": labels[is_thing].to(device),
            "stuff_masks": soft[num_things:], "stuff_labels": stuff_labels.to(device),
        })
    return targets


def _rank_targets(mask_targets: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """
    (B, K, h, w) soft targets and (B, K) positive flags -> (B, h, w) index of the LAST positive
    kernel whose target is > 0 at each pixel (K-Net fills kernels in increasing order, later ones
    overwriting), IGNORE_INDEX where none.
    """
    k = mask_targets.shape[1]
    covered = (mask_targets > 0) & positive[:, :, None, None]
    order = torch.arange(1, k + 1, device=mask_targets.device)[None, :, None, None]
    last = (covered * order).amax(dim=1) - 1
    return torch.where(last >= 0, last, torch.full_like(last, IGNORE_INDEX))


def _reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if comm.get_world_size() > 1 and dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / comm.get_world_size()
    return value


class KNetCriterion:
    def __init__(self, matcher: MaskHungarianMatcher, num_proposals: int, num_thing_classes: int,
                 num_stuff_classes: int, *, cls_weight: float = 2.0, mask_weight: float = 1.0,
                 dice_weight: float = 4.0, rank_weight: float = 0.1, seg_weight: float = 1.0,
                 stage_weights=(1.0, 1.0, 1.0), focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0):
        self.matcher = matcher
        self.num_proposals = num_proposals
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_stuff_classes
        self.num_classes = num_thing_classes + num_stuff_classes
        self.cls_weight, self.mask_weight, self.dice_weight = cls_weight, mask_weight, dice_weight
        self.rank_weight, self.seg_weight = rank_weight, seg_weight
        self.stage_weights = list(stage_weights)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def _focal(self, logits, labels, weight=None, avg_factor=None):
        return sigmoid_focal_loss(logits, labels, weight, avg_factor, self.focal_alpha,
                                  self.focal_gamma)

    def kernel_head_losses(self, thing_masks: torch.Tensor, seg_logits: torch.Tensor,
                           targets) -> Dict[str, torch.Tensor]:
        """thing_masks (B, P, h, w) and seg_logits (B, C, h, w), both at the target resolution."""
        b, p, h, w = thing_masks.shape
        positive = torch.zeros((b, p), dtype=torch.bool, device=thing_masks.device)
        mask_targets = thing_masks.new_zeros((b, p, h, w))
        seg_targets = torch.full((b, h, w), self.num_classes, dtype=torch.int64,
                                 device=thing_masks.device)
        for i, t in enumerate(targets):
            rows, cols = self.matcher(thing_masks[i].detach(), t["thing_masks"])
            positive[i, rows] = True
            mask_targets[i, rows] = t["thing_masks"][cols]
            for mask, label in zip(t["stuff_masks"], t["stuff_labels"]):
                seg_targets[i][mask > 0] = label
            order = torch.argsort(rows)  # K-Net writes matched things in kernel order
            for r, c in zip(rows[order], cols[order]):
                seg_targets[i][t["thing_masks"][c] > 0] = t["thing_labels"][c]
        pos_pred, pos_target = thing_masks[positive], mask_targets[positive]
        num_dense_pos = (seg_targets < self.num_classes).sum().clamp(min=1).float()
        return {
            "loss_rpn_mask": self.mask_weight * mask_bce_loss(pos_pred, pos_target),
            "loss_rpn_dice": self.dice_weight * dice_loss(pos_pred, pos_target),
            "loss_rpn_rank": self.rank_weight * rank_loss(thing_masks,
                                                          _rank_targets(mask_targets, positive)),
            "loss_rpn_seg": self.seg_weight * self._focal(seg_logits, seg_targets,
                                                          avg_factor=num_dense_pos),
        }

    def stage_targets(self, prev_masks: torch.Tensor, prev_cls: Optional[torch.Tensor], targets):
        """
        Assignment on the previous predictions (B, K, h, w) / (B, K, C) or None -> labels (B, K),
        label_weights (B, K, C), mask_targets (B, K, h, w), positive (B, K).
        """
        b, k, h, w = prev_masks.shape
        p, t_cls, c = self.num_proposals, self.num_thing_classes, self.num_classes
        device = prev_masks.device
        labels = torch.full((b, k), c, dtype=torch.int64, device=device)
        label_weights = prev_masks.new_zeros((b, k, c))
        label_weights[:, :p, :t_cls] = 1  # thing kernels: no loss on the stuff logits
        stuff_rows = torch.arange(p, k, device=device)
        label_weights[:, stuff_rows, t_cls + torch.arange(k - p, device=device)] = 1
        mask_targets = prev_masks.new_zeros((b, k, h, w))
        for i, t in enumerate(targets):
            cls_i = None if prev_cls is None else prev_cls[i, :p, :t_cls]
            rows, cols = self.matcher(prev_masks[i, :p], t["thing_masks"], cls_i,
                                      t["thing_labels"])
            labels[i, rows] = t["thing_labels"][cols]
            mask_targets[i, rows] = t["thing_masks"][cols]
            if len(t["stuff_labels"]):
                stuff_rows_i = p + t["stuff_labels"] - t_cls
                labels[i, stuff_rows_i] = t["stuff_labels"]
                mask_targets[i, stuff_rows_i] = t["stuff_masks"]
        return labels, label_weights, mask_targets, labels < c

    def stage_losses(self, stage_outputs, init_masks: torch.Tensor, targets
                     ) -> Dict[str, torch.Tensor]:
        """
        Args:
            stage_outputs: per stage (cls_logits (B, K, C), mask_logits (B, K, h, w) at the target
                resolution).
            init_masks: (B, K, h, w) the kernel head's masks at the target resolution (stage 0's
                assignment uses them).
        """
        losses = {}
        prev_masks, prev_cls = init_masks.detach(), None
        for s, (cls_logits, masks) in enumerate(stage_outputs):
            labels, label_weights, mask_targets, positive = self.stage_targets(
                prev_masks, prev_cls, targets)
            num_pos = _reduce_mean(positive.sum().float()).clamp(min=1.0)
            c = cls_logits.shape[-1]
            loss_cls = self._focal(cls_logits.reshape(-1, c), labels.reshape(-1),
                                   label_weights.reshape(-1, c), num_pos)
            pos_pred, pos_target = masks[positive], mask_targets[positive]
            weight = self.stage_weights[s]
            losses[f"s{s}_loss_cls"] = weight * self.cls_weight * loss_cls
            losses[f"s{s}_loss_mask"] = weight * self.mask_weight * mask_bce_loss(pos_pred,
                                                                                  pos_target)
            losses[f"s{s}_loss_dice"] = weight * self.dice_weight * dice_loss(pos_pred, pos_target)
            losses[f"s{s}_loss_rank"] = weight * self.rank_weight * rank_loss(
                masks, _rank_targets(mask_targets, positive))
            prev_masks, prev_cls = masks.detach(), cls_logits.detach()
        return losses
