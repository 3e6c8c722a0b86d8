"""K-Net model pieces: class layout from metadata, positional encoding, initial kernels, update
stage shapes and hard-mask grouping, the meta-architecture's losses and outputs."""
import math

import pytest
import torch
from detectron2.structures import BitMasks, Instances

from helpers import tiny_knet_cfg
from sfnet_d2.modeling.meta_arch.knet import (InitialKernelHead, KernelUpdateStage, KNetClassLayout,
                                    SinePositionalEncoding)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny tensors


def test_layout_cityscapes_stuff_first_and_coco_things_first():
    cs = KNetClassLayout.from_metadata("cityscapes_fine_panoptic_train")
    assert (cs.num_thing_classes, cs.num_stuff_classes) == (8, 11)
    assert cs.internal_to_contiguous == list(range(11, 19)) + list(range(11))
    assert cs.internal_class_names()[:2] == ["person", "rider"]
    assert cs.to_internal(torch.tensor([0, 11, 18])).tolist() == [8, 0, 7]
    assert cs.to_contiguous(torch.tensor([8, 0, 7])).tolist() == [0, 11, 18]
    coco = KNetClassLayout.from_metadata("coco_2017_train_panoptic")
    assert (coco.num_thing_classes, coco.num_stuff_classes) == (80, 53)
    assert coco.internal_to_contiguous == list(range(133))
    with pytest.raises(ValueError, match="0..C-1"):
        KNetClassLayout([0, 1], [1, 2])


def test_sine_positional_encoding_values():
    pe = SinePositionalEncoding(num_feats=4)(torch.zeros(1, 8, 2, 3))
    assert pe.shape == (1, 8, 2, 3)
    y = 2 / (2 + 1e-6) * 2 * math.pi          # row 2 of 2
    x = 1 / (3 + 1e-6) * 2 * math.pi          # column 1 of 3
    # channels: y (sin f0, cos f1, sin f2, cos f3), then x; dim_t = 10000 ** (2 * (i // 2) / 4)
    assert pe[0, 0, 1, 0].item() == pytest.approx(math.sin(y), abs=1e-5)
    assert pe[0, 1, 1, 0].item() == pytest.approx(math.cos(y), abs=1e-5)
    assert pe[0, 2, 1, 0].item() == pytest.approx(math.sin(y / 100), abs=1e-5)
    assert pe[0, 5, 1, 0].item() == pytest.approx(math.cos(x), abs=1e-5)


def test_initial_kernels_sum_features_under_hard_masks_and_stuff_kernels_are_classifier_rows():
    torch.manual_seed(0)
    head = InitialKernelHead(channels=8, num_proposals=3, num_thing_classes=2,
                             num_stuff_classes=4)
    loc, sem = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    out = head(loc, sem)
    assert out["kernels"].shape == (2, 7, 8) and out["masks"].shape == (2, 7, 5, 6)
    x = sem + loc
    hard = head.init_kernels(loc).sigmoid() > 0.5
    for b in range(2):
        for k in range(3):
            expected = head.init_kernels.weight[k, :, 0, 0] + x[b][:, hard[b, k]].sum(dim=1)
            assert torch.allclose(out["kernels"][b, k], expected, atol=1e-5)
    assert torch.equal(out["kernels"][0, 3:], head.conv_seg.weight[2:, :, 0, 0])
    assert torch.equal(out["masks"][:, 3:], out["seg_logits"][:, 2:])


def test_update_stage_shapes_and_hard_mask_grouping():
    torch.manual_seed(0)
    stage = KernelUpdateStage(channels=16, num_classes=5, num_heads=4, ffn_channels=32).eval()
    x, kernels = torch.randn(2, 16, 6, 8), torch.randn(2, 7, 16)
    masks = torch.randn(2, 7, 6, 8)
    cls, new_masks, new_kernels = stage(x, kernels, masks)
    assert cls.shape == (2, 7, 5) and new_masks.shape == (2, 7, 6, 8)
    assert new_kernels.shape == (2, 7, 16)
    # only the sign of the previous mask logits matters (sigmoid > 0.5 masks)
    cls2, masks2, _ = stage(x, kernels, masks * 7.0)
    assert torch.allclose(cls, cls2, atol=1e-5) and torch.allclose(new_masks, masks2, atol=1e-5)
    # coarser previous masks are resized to the feature first
    cls3, _, _ = stage(x, kernels, masks[..., ::2, ::2])
    assert cls3.shape == cls.shape
    # K-Net init: classifier bias -log(99), xavier on the matrices
    assert torch.allclose(stage.fc_cls.bias, torch.full((5,), -math.log(99)))


def _input(h=64, w=96):
    inst = Instances((h, w))
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True            # stuff: road (trainId 0)
    masks[1, h // 2:, : w // 2] = True   # thing: car (trainId 13)
    masks[2, h // 2:, w // 2:] = True    # thing: car
    inst.gt_classes = torch.tensor([0, 13, 13])
    inst.gt_masks = BitMasks(masks)
    return {"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": inst,
            "height": h, "width": w}


def test_meta_architecture_losses_and_outputs():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_knet_cfg(**{"MODEL.KNET.TEST.SEMANTIC_ON": True}))
    model.train()
    losses = model([_input(), _input(60, 90)])
    expected = {f"loss_rpn_{k}" for k in ("mask", "dice", "rank", "seg")} | {
        f"s{s}_loss_{k}" for s in range(2) for k in ("cls", "mask", "dice", "rank")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.kernel_head.conv_seg.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([dict(_input(60, 90), height=120, width=180)])[0]
    pan, info = out["panoptic_seg"]
    assert pan.shape == (120, 180) and pan.dtype == torch.int32
    assert out["sem_seg"].shape == (19, 120, 180)
    ids = set(pan.unique().tolist()) - {0}
    assert ids == {s["id"] for s in info}
    for s in info:  # contiguous Cityscapes ids: things 11..18
        assert s["isthing"] == (s["category_id"] >= 11)
