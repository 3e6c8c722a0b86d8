"""The gather form of the flow warp (sfnet_d2/modeling/alignment/gather_warp.py) against F.grid_sample, a
hand-computed case, and the FAM / GD-FAM modules with and without it (every ablation variant)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import make_cfg
from sfnet_d2.deployment import optimize_model, use_gather_warp
from sfnet_d2.modeling.alignment.flow_alignment import FlowAlignModule, GatedDualFlowAlignModule
from sfnet_d2.modeling.alignment.gather_warp import bilinear_taps, gather_taps


def _gather_sample(feature, grid, align_corners):
    index, weight = bilinear_taps(grid, feature.shape[-2], feature.shape[-1], align_corners)
    return gather_taps(feature, index, weight, grid.shape[1:3])


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape,out_size,channels_last", [
    ((2, 5, 7, 9), (11, 6), True),     # batch 2, upsampling + downsampling, odd sizes
    ((1, 64, 16, 32), (64, 128), True),  # the coarse -> fine warp of a GD-FAM
    ((3, 1, 4, 4), (4, 4), False),      # one channel, NCHW input
])
def test_gather_equals_grid_sample(align_corners, shape, out_size, channels_last):
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(*shape, generator=gen)
    if channels_last:
        feature = feature.contiguous(memory_format=torch.channels_last)
    # well beyond [-1, 1], so that taps fall outside the input on every side (zero padding)
    grid = torch.rand(shape[0], *out_size, 2, generator=gen) * 2.6 - 1.3
    expected = F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=align_corners)
    got = _gather_sample(feature, grid, align_corners)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_hand_computed_taps():
    feature = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # align_corners=True: -1 / +1 are the pixel centres of the first / last column
    grid = torch.tensor([
        [0.0, 0.0],    # centre: mean of the four values
        [-1.0, -1.0],  # top-left pixel exactly
        [1.0, 0.0],    # right column, half-way down: (2 + 4) / 2
        [2.0, 0.0],    # x = 1.5 px: half a pixel beyond column 1 -> 0.5 * (2 + 4) / 2
        [3.0, 0.0],    # x = 2 px: a whole pixel beyond the last column -> 0
        [1.5, -1.0],   # x = 1.25 px: a quarter pixel beyond column 1 -> 0.75 * 2
    ]).view(1, 1, 6, 2)
    got = _gather_sample(feature, grid, True).flatten().tolist()
    assert got == pytest.approx([2.5, 1.0, 3.0, 1.5, 0.0, 1.5])
    index, weight = bilinear_taps(grid, 2, 2, True)
    assert index.shape == (6, 4) and weight.shape == (6, 4)
    assert ((index >= 0) & (index < 4)).all()  # out-of-range taps keep a valid, clamped row
    assert weight[4].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_non_finite_coordinates_sample_zero():
    feature = torch.randn(1, 3, 4, 5)
    grid = torch.tensor([float("nan"), 0.0, float("inf"), 0.0, 0.0, -float("inf")]).view(1, 1, 3, 2)
    got = _gather_sample(feature, grid, True)
    assert torch.equal(got, torch.zeros_like(got))


def _channels_last(*tensors):
    return [t.contiguous(memory_format=torch.channels_last) for t in tensors]


@pytest.mark.parametrize("gate,dual_flow", [("atten", True), ("conv", True), ("none", True),
                                            ("atten", False), ("none", False)])
def test_gdfam_gather_equals_grid_sample_module(gate, dual_flow):
    torch.manual_seed(0)
    module = GatedDualFlowAlignModule(16, gate=gate, dual_flow=dual_flow).eval()
    with torch.no_grad():  # a flow of a few pixels, not the near-zero flow of the default init
        module.flow_make.weight.mul_(20)
    low, high = _channels_last(torch.randn(2, 16, 24, 40), torch.randn(2, 16, 6, 10))
    with torch.no_grad():
        expected, flow = module(low, high, return_flow=True)
        assert flow.abs().max() > 1.0
        module.gather_warp = True
        got, flow_gather = module(low, high, return_flow=True)
    assert torch.equal(flow, flow_gather)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_fam_gather_equals_grid_sample_module_and_reduced_precision_keeps_grid_sample():
    torch.manual_seed(0)
    module = FlowAlignModule(8).eval()
    with torch.no_grad():
        module.flow_make.weight.mul_(20)
    low, high = _channels_last(torch.randn(1, 8, 20, 30), torch.randn(1, 8, 10, 15))
    with torch.no_grad():
        expected = module(low, high)
        module_bf16 = copy.deepcopy(module).to(torch.bfloat16)
        expected_bf16 = module_bf16(low.bfloat16(), high.bfloat16())
        module.gather_warp = module_bf16.gather_warp = True
        # bf16 does not take the gather path (flow_warp samples in float32 there): bit-identical
        assert torch.equal(module_bf16(low.bfloat16(), high.bfloat16()), expected_bf16)
        got = module(low, high)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_optimized_model_switches_on_gather_warp_only_with_channels_last():
    cfg = make_cfg("configs/cityscapes/semantic/sfnet_R18.yaml")
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    fams = [m for m in model.modules() if isinstance(m, FlowAlignModule)]
    assert len(fams) == 3
    with_cl = optimize_model(model, torchscript="none", channels_last=True)
    without = optimize_model(model, torchscript="none", channels_last=False)
    assert all(m.gather_warp for m in with_cl.modules() if isinstance(m, FlowAlignModule))
    assert not any(m.gather_warp for m in without.modules() if isinstance(m, FlowAlignModule))
    assert not any(m.gather_warp for m in fams)  # the original model is untouched
    assert use_gather_warp(model, enabled=False) == 3
