"""K-Net losses against hand-computed values (mmdet 2.x formulas: mmdet/models/losses/focal_loss.py,
cross_entropy_loss.py, dice_loss.py, as ZwwWayne/K-Net@5e50ee5 configures them)."""
import math

import pytest
import torch

from sfnet_d2.modeling.meta_arch.knet import dice_loss, mask_bce_loss, rank_loss, sigmoid_focal_loss
from sfnet_d2.modeling.meta_arch.knet.criterion import _rank_targets
from sfnet_d2.modeling.meta_arch.knet.losses import IGNORE_INDEX


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    # label 0: element (0, 0) positive, (0, 1) negative
    p0, p1 = 0.5, _sig(2.0)
    pos = -math.log(p0) * (1 - p0) ** 2 * 0.25
    neg = -math.log(1 - p1) * p1 ** 2 * 0.75
    got = sigmoid_focal_loss(logits, torch.tensor([0]), avg_factor=1.0)
    assert got.item() == pytest.approx(pos + neg, rel=1e-5)
    # background label (= number of classes): both elements negative
    neg0 = -math.log(1 - p0) * p0 ** 2 * 0.75
    got = sigmoid_focal_loss(logits, torch.tensor([2]), avg_factor=4.0)
    assert got.item() == pytest.approx((neg0 + neg) / 4, rel=1e-5)
    # elementwise weights: only the first element counts
    got = sigmoid_focal_loss(logits, torch.tensor([0]), torch.tensor([[1.0, 0.0]]), 1.0)
    assert got.item() == pytest.approx(pos, rel=1e-5)
    # no avg_factor: mean over the elements
    assert sigmoid_focal_loss(logits, torch.tensor([0])).item() == pytest.approx((pos + neg) / 2,
                                                                                  rel=1e-5)


def test_focal_loss_dense_layout():
    # (N, C, H, W) logits with (N, H, W) labels = the same loss on the flattened pixels
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 4, 5), torch.randint(0, 4, (2, 4, 5))
    flat = sigmoid_focal_loss(logits.permute(0, 2, 3, 1).reshape(-1, 3), labels.reshape(-1),
                              avg_factor=7.0)
    assert sigmoid_focal_loss(logits, labels, avg_factor=7.0).item() == pytest.approx(flat.item())


def test_dice_loss_hand_computed():
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 1 - 2 * 1.0 / ((4 * 0.25 + 1e-3) + (2 + 1e-3))
    assert dice_loss(logits, target).item() == pytest.approx(1 - 2 / 3.002, rel=1e-6)
    # mean over masks; a perfect confident mask is close to 0
    two = torch.stack([torch.full((2, 2), 20.0), torch.zeros(2, 2)])
    targets = torch.stack([torch.ones(2, 2), target[0]])
    expected = ((1 - 2 * 4 / (4 + 1e-3 + 4 + 1e-3)) + (1 - 2 / 3.002)) / 2
    assert dice_loss(two, targets).item() == pytest.approx(expected, rel=1e-4)
    assert dice_loss(torch.zeros(0, 2, 2), torch.zeros(0, 2, 2)).item() == 0


def test_mask_bce_is_the_pixel_mean():
    logits, target = torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[1.0, 0.25]]])
    expected = (math.log(2) - (0.25 * math.log(_sig(2)) + 0.75 * math.log(1 - _sig(2)))) / 2
    assert mask_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_rank_loss_averages_over_all_pixels_including_ignored():
    # 2 kernels, a 1x2 image; pixel 0 belongs to kernel 1, pixel 1 is ignored
    logits = torch.tensor([[[[1.0, 5.0]], [[3.0, -2.0]]]])
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    ce = -math.log(math.exp(3.0) / (math.exp(1.0) + math.exp(3.0)))
    assert rank_loss(logits, target).item() == pytest.approx(ce / 2, rel=1e-6)


def test_rank_targets_last_positive_kernel_wins():
    t = torch.zeros(1, 3, 1, 3)
    t[0, 0, 0, :2] = 1.0   # kernel 0: pixels 0, 1
    t[0, 1, 0, 1:] = 0.3   # kernel 1 (soft): pixels 1, 2 -> overwrites pixel 1
    t[0, 2, 0, :] = 1.0    # kernel 2 is not positive: ignored
    positive = torch.tensor([[True, True, False]])
    assert _rank_targets(t, positive).tolist() == [[[0, 1, 1]]]
    assert _rank_targets(t, torch.zeros(1, 3, dtype=torch.bool)).tolist() == [[[IGNORE_INDEX] * 3]]
