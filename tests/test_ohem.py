"""OHEM cross-entropy on hand-built cases."""
import math

import torch
import torch.nn.functional as F

from helpers import count_kthvalue_calls, reference_ohem_cross_entropy, reference_ohem_keep_mask
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


# ------------------------------------------------ against the previous implementation
# reference_ohem_keep_mask / reference_ohem_cross_entropy (helpers.py): the implementation before
# the count-first threshold, which the faster one must match bit for bit.
@torch.no_grad()
def _official_sort_keep_mask(logits, targets, ignore_index, thresh, min_kept):
    """The official rule read literally (argsort of all p, ignored p = 1, the value at position
    min(n, min_kept) - 1 replaces thresh when larger), on one flat vector of pixels."""
    n, c = logits.shape[:2]
    flat_t = targets.reshape(-1)
    valid = flat_t != ignore_index
    if min_kept > int(valid.sum()) or int(valid.sum()) == 0 or min_kept <= 0:
        return valid.view_as(targets)
    prob = F.softmax(logits.float(), dim=1).transpose(0, 1).reshape(c, -1)
    prob = prob.masked_fill(~valid, 1)
    p = prob[flat_t * valid, torch.arange(flat_t.numel())]
    order = p.argsort()
    at = p[order[min(p.numel(), min_kept) - 1]]
    threshold = at if at > thresh else torch.tensor(thresh, dtype=p.dtype)
    return (valid & (p <= threshold)).view_as(targets)


def _tied_logits(seed, n=2, c=5, h=16, w=24, levels=3, dtype=torch.float32):
    """Logits on a coarse grid: many pixels share the exact same probabilities (ties)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, c, h, w), generator=g).to(dtype) * 1.5


def _targets(seed, shape, num_classes, ignore_frac, ignore_index=255):
    g = torch.Generator().manual_seed(seed + 100)
    t = torch.randint(0, num_classes, shape, generator=g)
    t[torch.rand(shape, generator=g) < ignore_frac] = ignore_index
    return t


# (thresh, min_kept): the count path (enough p <= thresh), the selection path (p_(min_kept) >
# thresh), min_kept = 1, = the valid count, > the valid count, 0 and negative (plain CE).
_CASES = [(0.7, 50), (0.7, 600), (0.05, 300), (0.2, 1), (0.3, -1), (0.7, 0),
          (0.9, 10 ** 6), (0.0, 400), (1.0, 700)]


def _assert_same_as_reference(logits, targets, thresh, min_kept, ignore_index=255):
    keep = ohem_keep_mask(logits, targets, ignore_index, thresh, min_kept)
    assert torch.equal(keep, reference_ohem_keep_mask(logits, targets, ignore_index, thresh,
                                                  min_kept))
    assert torch.equal(keep, _official_sort_keep_mask(logits, targets, ignore_index, thresh,
                                                      min_kept))
    x_new = logits.clone().requires_grad_()
    x_ref = logits.clone().requires_grad_()
    new = ohem_cross_entropy(x_new, targets, ignore_index, thresh, min_kept)
    ref = reference_ohem_cross_entropy(x_ref, targets, ignore_index, thresh, min_kept)
    new.backward()
    ref.backward()
    assert torch.equal(new, ref), (float(new), float(ref))
    assert torch.equal(x_new.grad, x_ref.grad)


def test_same_mask_loss_and_gradient_as_reference_on_ties():
    for seed in range(4):
        logits = _tied_logits(seed)
        targets = _targets(seed, (2, 16, 24), 5, ignore_frac=0.2)
        num_valid = int((targets != 255).sum())
        for thresh, min_kept in _CASES + [(0.7, num_valid), (0.1, num_valid),
                                          (0.1, num_valid - 1), (0.1, num_valid + 1)]:
            _assert_same_as_reference(logits, targets, thresh, min_kept)


def test_same_as_reference_on_random_logits_and_other_ignore_label():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 19, 20, 30, generator=g) * 3
    targets = _targets(7, (3, 20, 30), 19, ignore_frac=0.3, ignore_index=-1)
    for thresh, min_kept in _CASES:
        _assert_same_as_reference(logits, targets, thresh, min_kept, ignore_index=-1)
    # float64 logits: the mask still uses float32 probabilities, the loss the float64 logits
    _assert_same_as_reference(logits.double(), targets, 0.7, 900, ignore_index=-1)
    _assert_same_as_reference(logits.double(), targets, 0.05, 900, ignore_index=-1)


def test_same_as_reference_all_ignored_and_nan():
    logits = _tied_logits(1)
    all_ignored = torch.full((2, 16, 24), 255)
    for thresh, min_kept in _CASES:
        _assert_same_as_reference(logits, all_ignored, thresh, min_kept)
    targets = _targets(1, (2, 16, 24), 5, ignore_frac=0.2)
    with_nan = logits.clone()
    with_nan[0, :, 3, 4:9] = float("nan")  # NaN p: never <= a threshold, sorted last
    for thresh, min_kept in [(0.7, 50), (0.05, 300), (0.0, 500)]:
        keep = ohem_keep_mask(with_nan, targets, 255, thresh, min_kept)
        assert torch.equal(keep, reference_ohem_keep_mask(with_nan, targets, 255, thresh, min_kept))


def test_threshold_compared_in_float32_at_its_neighbours():
    # p exactly float32(0.7) and its two float32 neighbours; 0.7 itself is not a float32.
    p32 = torch.tensor(0.7, dtype=torch.float32)
    below = torch.nextafter(p32, torch.tensor(0.0))
    above = torch.nextafter(p32, torch.tensor(1.0))
    probs = torch.stack([below, p32, above, torch.tensor(0.1), torch.tensor(0.95)]).double()
    logits = torch.stack([torch.log(probs), torch.log1p(-probs)], dim=0).view(1, 2, 1, -1)
    targets = torch.zeros(1, 1, 5, dtype=torch.long)
    gt_prob = F.softmax(logits.float(), dim=1)[0, 0, 0]
    for min_kept in (1, 2, 3, 4, 5):
        keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=min_kept)
        assert torch.equal(keep, reference_ohem_keep_mask(logits, targets, 255, 0.7, min_kept))
        kth = gt_prob.sort().values[min_kept - 1]
        expected = gt_prob <= torch.maximum(kth, p32)
        assert keep.view(-1).tolist() == expected.tolist()
    # A threshold that float32 rounds *up* onto a pixel's p: that pixel is kept (a comparison in
    # float64 would drop it).
    q = gt_prob[3]
    thresh = (float(q) + float(torch.nextafter(q, torch.tensor(0.0)))) / 2 + 1e-12
    assert thresh < float(q) and float(torch.tensor(thresh, dtype=torch.float32)) == float(q)
    for min_kept in (1, 2):
        keep = ohem_keep_mask(logits, targets, 255, thresh=thresh, min_kept=min_kept)
        assert torch.equal(keep, reference_ohem_keep_mask(logits, targets, 255, thresh, min_kept))
        assert bool(keep[0, 0, 3])


def test_selection_only_when_the_count_is_not_enough(monkeypatch):
    calls = count_kthvalue_calls(monkeypatch)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 19, 32, 32, generator=g) * 0.1  # every p near 1/19, far below 0.7
    targets = _targets(3, (2, 32, 32), 19, ignore_frac=0.1)
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.7, min_kept=1000)
    assert calls == [] and torch.equal(keep, targets != 255)
    keep = ohem_keep_mask(logits, targets, 255, thresh=0.01, min_kept=1000)
    assert calls == [1] and int(keep.sum()) >= 1000
    assert torch.equal(keep, reference_ohem_keep_mask(logits, targets, 255, 0.01, 1000))
