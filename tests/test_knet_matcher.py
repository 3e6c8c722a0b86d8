"""K-Net matching: the three costs on hand-computed cases, Hungarian optimum vs brute force."""
import itertools
import math

import pytest
import torch

from sfnet_d2.modeling.meta_arch.knet import MaskHungarianMatcher, dice_cost, focal_cost, mask_cost


def test_costs_on_a_hand_computed_case():
    # prediction: logits 0 -> p = (0.5, 0.5); ground truth t = (1, 0)
    logits = torch.zeros(1, 1, 2)
    gt = torch.tensor([[[1.0, 0.0]]])
    # dice: -2 * (p.t) / ((sum p^2 + 1e-3) + (sum t^2 + 1e-3)) = -2 * 0.5 / (0.501 + 1.001)
    assert dice_cost(logits, gt).item() == pytest.approx(-1.0 / 1.502, rel=1e-6)
    # soft pixel accuracy: -(p.t + (1-p).(1-t)) / HW = -(0.5 + 0.5) / 2
    assert mask_cost(logits, gt).item() == pytest.approx(-0.5, rel=1e-6)
    # focal cost at s = 0.5: -log(.5) * .25 * .25 - (-log(.5) * .75 * .25)
    expected = math.log(2) * 0.25 * 0.25 - math.log(2) * 0.75 * 0.25
    cls = torch.tensor([[0.0, 3.0]])
    assert focal_cost(cls, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    # a confident right class costs less than a wrong one
    assert focal_cost(cls, torch.tensor([1])).item() < expected


def test_weights_combine_the_costs():
    torch.manual_seed(0)
    logits, gt = torch.randn(4, 3, 3), (torch.rand(2, 3, 3) > 0.5).float()
    cls, labels = torch.randn(4, 5), torch.tensor([1, 3])
    m = MaskHungarianMatcher(cls_cost=2.0, dice_cost=4.0, mask_cost=1.0)
    expected = (4 * dice_cost(logits, gt) + mask_cost(logits, gt)
                + 2 * focal_cost(cls, labels))
    assert torch.allclose(m.cost_matrix(logits, gt, cls, labels), expected)
    # without class logits (kernel head, stage 0) there is no class term
    assert torch.allclose(m.cost_matrix(logits, gt), 4 * dice_cost(logits, gt) + mask_cost(logits, gt))


@pytest.mark.parametrize("seed,n,m", [(0, 5, 3), (1, 4, 4), (2, 6, 2), (3, 3, 1)])
def test_hungarian_matches_brute_force(seed, n, m):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, 4, generator=g) * 3
    gt = (torch.rand(m, 4, 4, generator=g) > 0.5).float()
    cls, labels = torch.randn(n, 3, generator=g), torch.randint(0, 3, (m,), generator=g)
    matcher = MaskHungarianMatcher()
    cost = matcher.cost_matrix(logits, gt, cls, labels)
    rows, cols = matcher(logits, gt, cls, labels)
    assert len(rows) == len(cols) == min(n, m)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    best = min(sum(cost[p, j] for j, p in enumerate(perm))
               for perm in itertools.permutations(range(n), m))
    assert cost[rows, cols].sum().item() == pytest.approx(float(best), abs=1e-5)


def test_empty_ground_truth_matches_nothing():
    rows, cols = MaskHungarianMatcher()(torch.randn(3, 2, 2), torch.zeros(0, 2, 2))
    assert rows.numel() == 0 and cols.numel() == 0


def test_class_cost_decides_between_identical_masks():
    logits = torch.full((2, 2, 2), 5.0)  # two identical predicted masks
    gt = torch.ones(1, 2, 2)
    cls = torch.tensor([[-5.0, 5.0], [5.0, -5.0]])  # kernel 1 says class 0
    rows, cols = MaskHungarianMatcher()(logits, gt, cls, torch.tensor([0]))
    assert rows.tolist() == [1] and cols.tolist() == [0]
