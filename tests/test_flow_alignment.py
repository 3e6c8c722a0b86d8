"""Numerical tests of the flow warp, FAM and GD-FAM against hand-derived identities."""
import pytest
import torch
import torch.nn.functional as F

from sfnet_d2.modeling.alignment.flow_alignment import FlowAlignModule, GatedDualFlowAlignModule, flow_warp


def _shift_flow_value(pixels: float, width: int) -> float:
    # Official units: value v moves by v / W_out grid units = v * (W_in - 1) / (2 * W_out) pixels.
    return pixels * 2 * width / (width - 1)


def test_zero_flow_equals_bilinear_upsampling_align_corners_true():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    out = flow_warp(x, torch.zeros(2, 2, 14, 18, dtype=torch.float64), (14, 18))
    ref = F.interpolate(x, size=(14, 18), mode="bilinear", align_corners=True)
    assert torch.allclose(out, ref, atol=1e-10)


def test_zero_flow_with_align_corners_false_is_not_the_identity_upsampling():
    # The ECCV-release setting samples the same grid with align_corners=False: a different map.
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    zero = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    assert torch.allclose(flow_warp(x, zero, (8, 8), align_corners=True), x, atol=1e-10)
    assert not torch.allclose(flow_warp(x, zero, (8, 8), align_corners=False), x, atol=1e-3)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_constant_flow_shifts_by_exactly_k_pixels(k):
    torch.manual_seed(0)
    h, w = 6, 11
    x = torch.randn(1, 4, h, w, dtype=torch.float64)
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 0] = _shift_flow_value(k, w)  # x displacement of k pixels
    out = flow_warp(x, flow, (h, w))
    # out[..., j] samples x[..., j + k]; beyond the border it samples zero padding
    assert torch.allclose(out[..., : w - k], x[..., k:], atol=1e-9)
    assert torch.allclose(out[..., w - k:], torch.zeros_like(out[..., w - k:]), atol=1e-9)
    # and in y (channel 1)
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 1] = _shift_flow_value(k, h)
    out = flow_warp(x, flow, (h, w))
    assert torch.allclose(out[..., : h - k, :], x[..., k:, :], atol=1e-9)


def test_flow_warp_rejects_wrong_flow_shape():
    with pytest.raises(ValueError, match="flow must have shape"):
        flow_warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 3, 3), (4, 4))


def test_fam_warps_the_original_coarse_feature():
    torch.manual_seed(0)
    fam = FlowAlignModule(8).double()
    torch.nn.init.zeros_(fam.flow_make.weight)  # zero flow
    low, high = torch.randn(2, 8, 12, 16).double(), torch.randn(2, 8, 6, 8).double()
    out = fam(low, high)
    # all 8 channels of `high`, upsampled: not the reduced (4-channel) feature
    ref = F.interpolate(high, size=(12, 16), mode="bilinear", align_corners=True)
    assert out.shape == (2, 8, 12, 16)
    assert torch.allclose(out, ref, atol=1e-10)


def test_fam_flow_input_order_is_coarse_then_fine():
    torch.manual_seed(0)
    fam = FlowAlignModule(4).double()
    low, high = torch.randn(1, 4, 8, 8).double(), torch.randn(1, 4, 4, 4).double()
    # Only the first half of flow_make's input channels (the coarse branch) contributes
    with torch.no_grad():
        fam.flow_make.weight[:, 2:] = 0
    _, flow = fam(low, high, return_flow=True)
    _, flow_other_low = fam(torch.randn_like(low), high, return_flow=True)
    assert torch.allclose(flow, flow_other_low)


def test_gradients_reach_the_flow_convolutions():
    torch.manual_seed(0)
    for module in (FlowAlignModule(8), GatedDualFlowAlignModule(8)):
        low = torch.randn(2, 8, 8, 8)
        high = torch.randn(2, 8, 4, 4)
        module(low, high).square().sum().backward()
        grad = module.flow_make.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert module.gate.weight.grad.abs().sum() > 0


def test_gdfam_with_zero_flows_and_zero_gate_averages_both_branches():
    torch.manual_seed(0)
    m = GatedDualFlowAlignModule(8).double()
    torch.nn.init.zeros_(m.flow_make.weight)
    torch.nn.init.zeros_(m.gate.weight)  # sigmoid(0) = 0.5
    low, high = torch.randn(1, 8, 8, 10).double(), torch.randn(1, 8, 4, 5).double()
    up = F.interpolate(high, size=(8, 10), mode="bilinear", align_corners=True)
    assert torch.allclose(m(low, high), 0.5 * up + 0.5 * low, atol=1e-10)


def test_gdfam_gate_inputs_are_mean_h_mean_low_max_h_max_low():
    torch.manual_seed(0)
    m = GatedDualFlowAlignModule(8).double()
    torch.nn.init.zeros_(m.flow_make.weight)
    low, high = torch.randn(1, 8, 6, 6).double(), torch.randn(1, 8, 3, 3).double()
    h_red = F.interpolate(m.down_high(high), size=(6, 6), mode="bilinear", align_corners=True)
    expected_inputs = [h_red.mean(1, keepdim=True), low.mean(1, keepdim=True),
                       h_red.amax(1, keepdim=True), low.amax(1, keepdim=True)]
    up = F.interpolate(high, size=(6, 6), mode="bilinear", align_corners=True)
    for c in range(4):  # a gate that reads only input channel c, through the kernel centre
        with torch.no_grad():
            m.gate.weight.zero_()
            m.gate.weight[0, c, 1, 1] = 1.0
        gate = torch.sigmoid(expected_inputs[c])
        assert torch.allclose(m(low, high), up * gate + low * (1 - gate), atol=1e-10), c
