"""
K-Net panoptic inference (official ``KernelIterHead.get_panoptic`` / ``merge_stuff_thing``;
ZwwWayne/K-Net@5e50ee5 knet/det/kernel_iter_head.py), on the last stage's outputs of one image:

* class scores ``s = sigmoid(cls_logits)``; each thing kernel takes its best THING class, each stuff
  kernel the score of its OWN stuff class (stuff kernel j <-> internal class T + j);
* every pixel goes to ``argmax_k score_k * mask_k`` over all kernels;
* kernels are visited by decreasing score: a thing kernel scoring below ``instance_score_thr`` is
  dropped (stuff has no score threshold); a kernel is kept when its argmax region is non-empty, its
  own mask (``mask >= mask_thr``) is non-empty and region / own mask >= ``overlap_thr``;
* pixels of dropped kernels stay VOID; regions are the argmax regions (not intersected with the
  kernel's own mask); each stuff class yields at most one segment; there is no stuff area limit
  (the official config's ``stuff_max_area``, ``stuff_score_thr`` and ``iou_thr`` are never read).

Because the argmax regions are disjoint and fixed before the loop, the official sequential loop
is computed here with one pass of pixel counts, exactly.
"""
from typing import Dict, List, Tuple

import torch

__all__ = ["kernel_scores_and_labels", "panoptic_merge", "semantic_from_kernels"]


def kernel_scores_and_labels(cls_logits: torch.Tensor, num_proposals: int,
                             num_thing_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, C) class logits -> per-kernel (score, internal label), K = proposals + stuff classes."""
    probs = cls_logits.sigmoid()
    thing_scores, thing_labels = probs[:num_proposals, :num_thing_classes].max(dim=1)
    num_stuff = probs.shape[0] - num_proposals
    stuff_scores = probs[num_proposals:, num_thing_classes:].diagonal()
    if stuff_scores.numel() != num_stuff:
        raise ValueError(
            f"{num_stuff} stuff kernels but {probs.shape[1] - num_thing_classes} stuff classes"
        )
    stuff_labels = torch.arange(num_stuff, device=probs.device) + num_thing_classes
    return torch.cat([thing_scores, stuff_scores]), torch.cat([thing_labels, stuff_labels])


def panoptic_merge(scores: torch.Tensor, labels: torch.Tensor, mask_probs: torch.Tensor,
                   num_thing_classes: int, instance_score_thr: float = 0.3,
                   overlap_thr: float = 0.6, mask_thr: float = 0.5
                   ) -> Tuple[torch.Tensor, List[Dict]]:
    """
    Args:
        scores, labels: (K,) kernel scores and internal labels.
        mask_probs: (K, H, W) mask probabilities (sigmoid) at the output resolution.
    Returns:
        panoptic map (H, W) int32 with 0 = VOID and segment ids 1..n (in decreasing score order),
        and one dict per segment: {"id", "label" (internal), "isthing", "score", "kernel"}.
    """
    k, h, w = mask_probs.shape
    if k == 0:
        return torch.zeros((h, w), dtype=torch.int32, device=mask_probs.device), []
    owner = (scores[:, None, None] * mask_probs).argmax(dim=0)  # (H, W) kernel index
    region_area = torch.bincount(owner.flatten(), minlength=k).cpu()
    own_area = (mask_probs >= mask_thr).flatten(1).sum(1).cpu()
    order = torch.argsort(scores, descending=True).cpu().tolist()
    scores_cpu, labels_cpu = scores.detach().cpu(), labels.cpu()
    lut = torch.zeros(k, dtype=torch.int32)
    segments = []
    for idx in order:
        label = int(labels_cpu[idx])
        isthing = label < num_thing_classes
        score = float(scores_cpu[idx])
        if isthing and score < instance_score_thr:
            continue
        area, own = int(region_area[idx]), int(own_area[idx])
        if area == 0 or own == 0 or area / own < overlap_thr:
            continue
        segment_id = len(segments) + 1
        lut[idx] = segment_id
        segments.append({"id": segment_id, "label": label, "isthing": isthing, "score": score,
                         "kernel": idx})
    return lut.to(owner.device)[owner], segments


def semantic_from_kernels(scores: torch.Tensor, labels: torch.Tensor, mask_probs: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
    """(C, H, W) semantic scores: per class, the max of score * mask over its kernels (0 if
    none)."""
    weighted = scores[:, None, None] * mask_probs
    sem = weighted.new_zeros((num_classes,) + tuple(mask_probs.shape[1:]))
    for label in torch.unique(labels).tolist():
        sem[label] = weighted[labels == label].amax(dim=0)
    return sem
