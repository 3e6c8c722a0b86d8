"""OHEM cross-entropy on hand-built cases."""
import math

import torch
import torch.nn.functional as F

from sfnet_d2.modeling.heads.losses import ohem_cross_entropy, ohem_keep_mask


def _logits_for_probs(p_gt):
    """2-class logits whose softmax gives class 0 the probability p for each pixel."""
    p = torch.tensor(p_gt, dtype=torch.float64)
    return torch.stack([torch.log(p), torch.log(1 - p)], dim=0).view(1, 2, 1, -1)


def test_keeps_pixels_below_threshold_when_min_kept_is_small():
    logits = _logits_for_probs([0.1, 0.5, 0.69, 0.71, 0.9, 0.99])
    targets = torch.zeros(1, 1, 6, dtype=torch.long)
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=2)
    assert keep.view(-1).tolist() == [True, True, True, False, False, False]


def test_min_kept_raises_the_threshold():
    logits = _logits_for_probs([0.1, 0.5, 0.69, 0.71, 0.9, 0.99])
    targets = torch.zeros(1, 1, 6, dtype=torch.long)
    # the 5th smallest p is 0.9 > 0.7, so the threshold becomes 0.9
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=5)
    assert keep.view(-1).tolist() == [True, True, True, True, True, False]


def test_ignored_pixels_never_kept_and_min_kept_above_valid_keeps_all_valid():
    logits = _logits_for_probs([0.1, 0.95, 0.99, 0.2])
    targets = torch.tensor([0, 255, 0, 0]).view(1, 1, 4)
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=2)
    assert keep.view(-1).tolist() == [True, False, False, True]
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=10)  # > 3 valid pixels
    assert keep.view(-1).tolist() == [True, False, True, True]


def test_loss_is_mean_cross_entropy_over_kept_pixels():
    probs = [0.1, 0.5, 0.9, 0.99]
    logits = _logits_for_probs(probs)
    targets = torch.zeros(1, 1, 4, dtype=torch.long)
    loss = ohem_cross_entropy(logits, targets, 255, thresh=0.7, min_kept=1)
    assert math.isclose(float(loss), -(math.log(0.1) + math.log(0.5)) / 2, rel_tol=1e-9)
    # min_kept <= 0 disables mining: plain mean CE over valid pixels
    plain = ohem_cross_entropy(logits, targets, 255, thresh=0.7, min_kept=0)
    assert math.isclose(float(plain), float(F.cross_entropy(logits, targets)), rel_tol=1e-9)


def test_all_ignored_gives_zero_loss_with_gradient_path():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    targets = torch.full((1, 2, 2), 255)
    loss = ohem_cross_entropy(logits, targets)
    loss.backward()
    assert float(loss) == 0.0 and logits.grad is not None
