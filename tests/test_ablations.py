"""The paper's ablation variants (docs/ABLATIONS.md): numerical identities, hand-computed parameter
counts, official parameter counts where an official factory exists, and config errors."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import FPN, build_model

from helpers import make_cfg
from sfnet_d2.modeling import DeepStemResNet
from sfnet_d2.modeling.alignment.build import merge_coarse_into_fine
from sfnet_d2.modeling.alignment.deform_align import DeformableAlignModule
from sfnet_d2.modeling.alignment.feature_upsample import DeconvUpsample, NearestUpsample
from sfnet_d2.modeling.alignment.flow_alignment import FlowAlignModule, GatedDualFlowAlignModule, flow_warp
from sfnet_d2.modeling.heads.neck import SFNetDecoder, SFNetLiteDecoder

CONFIGS = "configs/cityscapes/semantic/"
ABL = CONFIGS + "ablations/"


def _params(module):
    return sum(p.numel() for p in module.parameters())


def _fam_params(d, k=3):
    # down_low + down_high (D -> D/2, 1x1, no bias) + flow conv (D -> 2, k x k, no bias)
    return 2 * d * (d // 2) + d * 2 * k * k


# A small 4-level pyramid (strides 4..32) for decoder-level tests.
SHAPES = {f"res{i}": ShapeSpec(channels=c, stride=2 ** i) for i, c in zip((2, 3, 4, 5), (6, 10, 12, 16))}
FEATS = ["res2", "res3", "res4", "res5"]


def _features(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(2, s.channels, size // s.stride, size // s.stride, generator=g,
                           dtype=torch.float64) for k, s in SHAPES.items()}


def _decoder(cls=SFNetDecoder, in_features=FEATS, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(SHAPES, in_features=in_features, conv_dim=8, norm="", **kwargs).double().eval()


# ------------------------------------------------------------------ alignment choice and levels
def test_bilinear_step_is_align_corners_true_interpolation_plus_lateral():
    low, high = torch.randn(1, 3, 10, 14).double(), torch.randn(1, 3, 5, 7).double()
    merged, flow = merge_coarse_into_fine("bilinear", None, low, high)
    ref = low + F.interpolate(high, size=(10, 14), mode="bilinear", align_corners=True)
    assert flow is None and torch.allclose(merged, ref, atol=1e-12)


def test_align_levels_empty_equals_the_bilinear_decoder():
    feats = _features()
    a = _decoder(align="bilinear")
    b = _decoder(align="fam", align_levels=[])
    assert b.align_kinds == ["bilinear"] * 3 and _params(a) == _params(b)
    b.load_state_dict(a.state_dict())  # same modules, same keys
    assert torch.equal(a.forward_features(feats)["fused"], b.forward_features(feats)["fused"])


def test_fam_with_zero_flow_equals_the_bilinear_decoder():
    # Zero flow: the warp is bilinear align_corners=True upsampling, so FAM == the FPN baseline.
    feats = _features(1)
    fam = _decoder(align="fam")
    for m in fam.align_modules:
        torch.nn.init.zeros_(m.flow_make.weight)
    base = _decoder(align="bilinear")
    missing = base.load_state_dict(fam.state_dict(), strict=False)
    assert all(k.startswith("align_modules.") for k in missing.unexpected_keys)
    out_fam = fam.forward_features(feats, return_flows=True)
    out_base = base.forward_features(feats, return_flows=True)
    assert torch.allclose(out_fam["fused"], out_base["fused"], atol=1e-10)
    assert len(out_fam["flows"]) == 3 and out_base["flows"] == []


@pytest.mark.parametrize("levels,fam_steps", [(["res5"], [2]), (["res3"], [0]), (["res4", "res5"], [1, 2]),
                                              (["all"], [0, 1, 2]), ([], [])])
def test_align_levels_name_the_coarse_level_and_remove_exactly_those_fams(levels, fam_steps):
    dec = _decoder(align_levels=levels)
    # step i merges in_features[i+1] (coarse) into in_features[i]: "res5" = PPM output onto res4
    assert [i for i, m in enumerate(dec.align_modules) if isinstance(m, FlowAlignModule)] == fam_steps
    base = _decoder(align="bilinear")
    assert _params(dec) - _params(base) == len(fam_steps) * _fam_params(8)
    out = dec.forward_features(_features(), return_flows=True)
    assert [f.shape[-1] for f in out["flows"]] == [64 // SHAPES[FEATS[i]].stride for i in reversed(fam_steps)]


def test_align_levels_configs_remove_fam_parameters_exactly():
    full = _params(build_model(make_cfg(ABL + "fam_ppm_R18.yaml")))
    assert full == 12_869_715  # the official SFNet R18
    fam = _fam_params(128)
    assert fam == 18_688  # AlignedModule(128, 64), lxtGH/SFSegNets@ba475ba network/nn/operators.py
    for name, n_fam in [("fpn_ppm_R18", 0), ("fam_F3_R18", 1), ("fam_F5_R18", 1), ("fam_F4F5_R18", 2)]:
        assert _params(build_model(make_cfg(ABL + name + ".yaml"))) == full - (3 - n_fam) * fam, name


def test_bad_align_settings_name_the_key():
    with pytest.raises(ValueError, match="MODEL.SFNET.ALIGN_LEVELS.*res2"):
        _decoder(align_levels=["res2"])  # res2 is never the coarse level of a step
    with pytest.raises(ValueError, match="MODEL.SFNET.ALIGN='flow'"):
        _decoder(align="flow")
    with pytest.raises(ValueError, match="MODEL.SFNET.ALIGN_LEVELS.*res4"):
        _decoder(SFNetLiteDecoder, ["res2", "res4", "res5"], align_levels=["res4"])


def test_lite_decoder_alignment_variants():
    feats = _features(2)
    lite_feats = ["res2", "res4", "res5"]
    bil = _decoder(SFNetLiteDecoder, lite_feats, align="bilinear")
    none = _decoder(SFNetLiteDecoder, lite_feats, align_levels=[])
    assert bil.align_module is None and none.align_kind == "bilinear"
    none.load_state_dict(bil.state_dict())
    assert torch.equal(bil.forward_features(feats)["fused"], none.forward_features(feats)["fused"])
    # bilinear: cat[fine + up(ppm), up(mid)], by hand
    fine = bil.lateral_convs[0](feats["res2"])
    up = F.interpolate(bil.ppm(feats["res5"]), size=fine.shape[-2:], mode="bilinear", align_corners=True)
    assert torch.allclose(bil.forward_features(feats)["fused"][:, :8], fine + up, atol=1e-12)
    fam = _decoder(SFNetLiteDecoder, lite_feats, align="fam")
    assert _params(fam) - _params(bil) == _fam_params(8)
    assert fam.forward_features(feats, return_flows=True)["flows"][0].shape == (2, 2, 16, 16)


# ------------------------------------------------------------------ context module (Table 8c)
def test_aspp_context_parameters_and_shape():
    c, d = 512, 128
    model = build_model(make_cfg(ABL + "fam_aspp_R18.yaml")).eval()
    neck = model.sem_seg_head.neck
    assert not hasattr(neck, "ppm") and neck.context_module is neck.aspp
    # 1x1 branch (conv + BN) + 3 atrous 3x3 branches (conv + BN) + pooled 1x1 (conv + bias, no
    # norm) + projection 5D -> D (conv + BN), none of the normed convs has a bias
    expected = (c * d + 2 * d) + 3 * (9 * c * d + 2 * d) + (c * d + d) + (5 * d * d + 2 * d)
    assert expected == 1_983_872 and _params(neck.aspp) == expected
    assert [conv.dilation for conv in neck.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert _params(model) == 12_869_715 - 394_496 + expected  # PPM (official 394,496) replaced
    x = torch.randn(2, c, 4, 6)
    assert neck.aspp(x).shape == (2, d, 4, 6)


def test_no_context_is_a_lateral_conv_and_fpn_configs_count():
    model = build_model(make_cfg(ABL + "fpn_R18.yaml")).eval()
    neck = model.sem_seg_head.neck
    assert neck.context_module is neck.top_lateral and not hasattr(neck, "ppm")
    top = 512 * 128 + 128 + 2 * 128  # 1x1 conv with bias + BN
    assert _params(neck.top_lateral) == top
    assert _params(model) == 12_869_715 - 394_496 - 3 * 18_688 + top
    with torch.no_grad():
        x = torch.randn(1, 512, 3, 4)
        ref = F.relu(neck.top_lateral.norm(F.conv2d(x, neck.top_lateral.weight, neck.top_lateral.bias)))
        assert torch.allclose(neck.top_lateral(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="MODEL.SFNET.CONTEXT='psp'"):
        _decoder(context="psp")


# ------------------------------------------------------------------ upsampling inside FAM (Table 9a)
def test_nearest_upsampler_repeats_pixels():
    x = torch.randn(1, 2, 3, 4)
    ref = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    assert torch.equal(NearestUpsample()(x, (6, 8)), ref)


@pytest.mark.parametrize("s", [2, 4, 8])
def test_deconv_starts_as_bilinear_upsampling_inside_the_border(s):
    m = DeconvUpsample(3, s).double()
    x = torch.randn(1, 3, 5, 6).double()
    out = m(x, (5 * s, 6 * s))
    ref = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    b = s // 2  # the transposed conv sees zeros beyond the border, interpolate replicates
    assert torch.allclose(out[..., b:-b, b:-b], ref[..., b:-b, b:-b], atol=1e-12)
    assert m.deconv.weight.shape == (3, 3, 2 * s, 2 * s)
    with pytest.raises(ValueError, match="FAM_UPSAMPLE='deconv'.*multiple"):
        m(x, (5 * s + 1, 6 * s))


def test_deconv_rejects_odd_ratios_and_is_identity_at_ratio_one():
    with pytest.raises(ValueError, match="ratio of 1 or an even number"):
        DeconvUpsample(4, 3)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(DeconvUpsample(4, 1)(x, (5, 5)), x)


def test_fam_flow_sees_the_chosen_upsampling_and_the_warp_is_unchanged():
    torch.manual_seed(0)
    fam = FlowAlignModule(8, upsample="nearest").double()
    low, high = torch.randn(1, 8, 8, 10).double(), torch.randn(1, 8, 4, 5).double()
    out, flow = fam(low, high, return_flow=True)
    h = fam.down_high(high).repeat_interleave(2, -1).repeat_interleave(2, -2)
    ref_flow = fam.flow_make(torch.cat([h, fam.down_low(low)], 1))
    assert torch.allclose(flow, ref_flow, atol=1e-12)
    # same weights, bilinear upsampling: a different flow, the same warp of the original `high`
    bil = FlowAlignModule(8).double()
    bil.load_state_dict(fam.state_dict())
    assert torch.allclose(out, flow_warp(high, flow, (8, 10)), atol=1e-12)
    assert not torch.allclose(bil(low, high, return_flow=True)[1], flow)


def test_fam_upsample_and_kernel_size_parameter_counts():
    base = 12_869_715
    d, r = 128, 64
    # deconv: one ConvTranspose2d(D/2, D/2, 4, stride 2) per FAM, no bias
    assert _params(build_model(make_cfg(ABL + "fam_deconv_R18.yaml"))) == base + 3 * r * r * 4 * 4
    assert _params(build_model(make_cfg(ABL + "fam_nearest_R18.yaml"))) == base
    for k in (1, 5, 7):  # flow conv D -> 2 with k x k kernel
        model = build_model(make_cfg(ABL + f"fam_k{k}_R18.yaml"))
        assert _params(model) == base + 3 * 2 * d * (k * k - 9), k
    with pytest.raises(ValueError, match="FAM_UPSAMPLE='cubic'"):
        _decoder(fam_upsample="cubic")


# ------------------------------------------------------------------ deformable alignment (Tables 9d, 16)
def test_deform_align_with_zero_offsets_is_a_plain_conv_of_the_upsampled_coarse_map():
    torch.manual_seed(0)
    m = DeformableAlignModule(5).double()
    low, high = torch.randn(2, 5, 8, 12).double(), torch.randn(2, 5, 4, 6).double()
    up = F.interpolate(high, size=(8, 12), mode="bilinear", align_corners=True)
    ref = F.conv2d(up, m.deform_conv.weight, padding=1)
    out, offsets = m(low, high, return_offsets=True)
    assert torch.equal(offsets, torch.zeros_like(offsets))  # zero-initialised offset conv
    assert torch.allclose(out, ref, atol=1e-10)
    merged, flow = merge_coarse_into_fine("deform", m, low, high)
    assert flow is None and torch.allclose(merged, low + ref, atol=1e-10)


def test_deform_align_offsets_shift_the_sampling_by_whole_pixels():
    torch.manual_seed(0)
    m = DeformableAlignModule(3).double()
    with torch.no_grad():
        m.offset_conv.bias.view(9, 2)[:, 1] = 1.0  # every tap: dx = +1, dy = 0
    low, high = torch.randn(1, 3, 6, 8).double(), torch.randn(1, 3, 3, 4).double()
    up = F.interpolate(high, size=(6, 8), mode="bilinear", align_corners=True)
    # tap (ky, kx) of output (y, x) reads up[y + ky - 1, x + kx] (kx = 0..2): a plain conv over
    # `up` padded with 2 zero columns on the right only (and one zero row above and below)
    ref = F.conv2d(F.pad(up, (0, 2, 1, 1)), m.deform_conv.weight)
    assert torch.allclose(m(low, high), ref, atol=1e-10)
    assert not torch.allclose(m(low, high), F.conv2d(up, m.deform_conv.weight, padding=1))
    # and the offsets really come from cat[up, low]: the conv sees 2C input channels
    assert m.offset_conv.in_channels == 6 and m.offset_conv.out_channels == 18


def test_deform_configs_parameter_counts():
    base = 12_813_651  # fpn_ppm_R18: official SFNet R18 minus its 3 FAMs
    d = 128
    dcn = (2 * d * 18 * 9 + 18) + d * d * 9  # offset conv (2D -> 18, 3x3, bias) + deform conv
    assert _params(build_model(make_cfg(ABL + "dcn_F5_R18.yaml"))) == base + dcn
    assert _params(build_model(make_cfg(ABL + "dcn_R18.yaml"))) == base + 3 * dcn
    gdfam = 21_028  # official AlignedModulev2PoolingAtten(128, 64)
    assert _params(build_model(make_cfg(ABL + "gdfam_F5_R18.yaml"))) == base + gdfam


# ------------------------------------------------------------------ GD-FAM options (Table 10b)
def _gdfam_pair(**kwargs):
    torch.manual_seed(0)
    ref = GatedDualFlowAlignModule(8).double()
    var = GatedDualFlowAlignModule(8, **kwargs).double()
    return ref, var


def test_gdfam_without_gate_is_the_mean_and_equals_a_zero_gate():
    ref, var = _gdfam_pair(gate="none")
    assert var.gate is None
    var.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("gate")})
    torch.nn.init.zeros_(ref.gate.weight)  # sigmoid(0) = 1/2
    low, high = torch.randn(2, 8, 8, 10).double(), torch.randn(2, 8, 4, 5).double()
    out, flow = var(low, high, return_flow=True)
    by_hand = 0.5 * (flow_warp(high, flow[:, :2], (8, 10)) + flow_warp(low, flow[:, 2:], (8, 10)))
    assert torch.allclose(out, by_hand, atol=1e-12)
    assert torch.allclose(out, ref(low, high), atol=1e-12)


def test_gdfam_single_flow_mixes_the_unwarped_fine_feature():
    _, var = _gdfam_pair(dual_flow=False)
    assert var.flow_make.out_channels == 2
    low, high = torch.randn(1, 8, 8, 8).double(), torch.randn(1, 8, 4, 4).double()
    out, flow = var(low, high, return_flow=True)
    h = F.interpolate(var.down_high(high), size=(8, 8), mode="bilinear", align_corners=True)
    gate = torch.sigmoid(var.gate(torch.cat([h.mean(1, keepdim=True), low.mean(1, keepdim=True),
                                             h.amax(1, keepdim=True), low.amax(1, keepdim=True)], 1)))
    assert torch.allclose(out, flow_warp(high, flow, (8, 8)) * gate + low * (1 - gate), atol=1e-12)


def test_gdfam_conv_gate_reads_the_reduced_features():
    _, var = _gdfam_pair(gate="conv")
    torch.nn.init.zeros_(var.flow_make.weight)
    low, high = torch.randn(1, 8, 6, 6).double(), torch.randn(1, 8, 3, 3).double()
    h = F.interpolate(var.down_high(high), size=(6, 6), mode="bilinear", align_corners=True)
    l_red = var.down_low(low)
    up = F.interpolate(high, size=(6, 6), mode="bilinear", align_corners=True)
    for c, src in ((0, h[:, 0:1]), (5, l_red[:, 1:2])):  # channels: 4 of h, then 4 of down_low(low)
        with torch.no_grad():
            var.gate.weight.zero_()
            var.gate.weight[0, c, 1, 1] = 1.0
        gate = torch.sigmoid(src)
        assert torch.allclose(var(low, high), up * gate + low * (1 - gate), atol=1e-12), c


@pytest.mark.parametrize("config,official,unused", [
    # official AlignedSTDC{1,2}_SFV2 ('spatial' gate) minus the STDC classifier tail and the dsn
    ("sfnet_lite_STDC1.yaml", 9_710_278, 3_125_248 + 150_291),
    ("sfnet_lite_STDC2.yaml", 13_740_742, 3_125_248 + 150_291),
])
def test_conv_gate_equals_the_official_spatial_gate_factories(config, official, unused):
    model = build_model(make_cfg(CONFIGS + config, ["MODEL.SFNET.GDFAM_GATE", "conv"]))
    assert _params(model) == official - unused


def test_plain_fpn_stdc_equals_the_official_plain_fpn_factories():
    # official STDC1 / STDC2 factories (plain FPN head) of network/sfnet_stdcnet.py: parameter
    # counts measured by running lxtGH/SFSegNets@ba475ba
    assert _params(build_model(make_cfg(ABL + "fpn_ppm_STDC1.yaml"))) == 9_101_875 - 3_125_248
    assert _params(build_model(make_cfg(ABL + "fpn_ppm_STDC2.yaml"))) == 13_132_339 - 3_125_248


def test_lite_variant_configs_parameter_counts():
    base = 12_079_863  # SFNet-Lite R18 (official, used parameters)
    assert _params(build_model(make_cfg(ABL + "lite_no_gate_R18.yaml"))) == base - 4 * 9
    assert _params(build_model(make_cfg(ABL + "lite_single_flow_R18.yaml"))) == base - 128 * 2 * 9
    assert _params(build_model(make_cfg(ABL + "lite_conv_gate_R18.yaml"))) == base - 4 * 9 + 128 * 9
    with pytest.raises(ValueError, match="MODEL.SFNET.GDFAM_GATE='spatial'"):
        GatedDualFlowAlignModule(8, gate="spatial")


# ------------------------------------------------------------------ FCN and Semantic-FPN baselines
def test_fcn_head_is_a_classifier_on_res5():
    model = build_model(make_cfg(ABL + "fcn_R18.yaml")).eval()
    head = model.sem_seg_head
    assert head.neck.in_features == ["res5"] and head.common_stride == 32 and head.dsn_heads is None
    backbone = _params(model.backbone)
    assert backbone == 11_324_992
    assert _params(model) == backbone + (9 * 512 * 128 + 2 * 128) + (128 * 19 + 19)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        feats = model.backbone(x)
        logits, _ = head(feats)
        ref = head.predictor(head.fuse_conv(feats["res5"]))
        ref = F.interpolate(ref, size=(64, 96), mode="bilinear", align_corners=True)
    assert logits.shape == (1, 19, 64, 96) and torch.allclose(logits, ref, atol=1e-6)
    with pytest.raises(ValueError, match="FCNNeck takes exactly one"):
        build_model(make_cfg(ABL + "fcn_R18.yaml", ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res4", "res5"]]))


def test_semantic_fpn_wraps_our_backbone_in_detectron2_fpn():
    model = build_model(make_cfg("configs/ade20k/semantic/semantic_fpn_R50.yaml")).eval()
    assert isinstance(model.backbone, FPN) and isinstance(model.backbone.bottom_up, DeepStemResNet)
    assert _params(model.backbone.bottom_up) == _params(DeepStemResNet(depth=50))
    # FPN: 1x1 laterals (with bias) + 3x3 outputs 256 -> 256 (with bias), 4 levels, no norm
    fpn = (256 + 512 + 1024 + 2048) * 256 + 4 * 256 + 4 * (9 * 256 * 256 + 256)
    assert _params(model.backbone) - _params(model.backbone.bottom_up) == fpn
    # SemSegFPNHead: p2, p3 one conv each, p4 two, p5 three (3x3, no bias, GN), predictor 1x1
    first, later = 9 * 256 * 128 + 2 * 128, 9 * 128 * 128 + 2 * 128
    assert _params(model.sem_seg_head) == 4 * first + 3 * later + (128 * 150 + 150)
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (150, 64, 96)
    with pytest.raises(ValueError, match="MODEL.SFNET.FPN_BOTTOM_UP='nope'"):
        build_model(make_cfg("configs/ade20k/semantic/semantic_fpn_R50.yaml",
                             ["MODEL.SFNET.FPN_BOTTOM_UP", "nope"]))


def test_gradients_reach_every_new_module():
    torch.manual_seed(0)
    dec = SFNetDecoder(SHAPES, in_features=FEATS, conv_dim=8, norm="", align="deform",
                       align_levels=["res4", "res5"], context="aspp").train()
    gd = GatedDualFlowAlignModule(8, upsample="deconv", scale_factor=2, gate="conv", dual_flow=False)
    feats = {k: v.float() for k, v in _features().items()}
    loss = dec.forward_features(feats)["fused"].square().mean()
    loss = loss + gd(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)).square().mean()
    loss.backward()
    grads = {
        "offset conv": dec.align_modules[2].offset_conv.weight.grad,  # zero-initialised, still learns
        "deform conv": dec.align_modules[2].deform_conv.weight.grad,
        "aspp atrous branch": dec.aspp.convs[3].weight.grad,
        "aspp pooling branch": dec.aspp.convs[4][1].weight.grad,
        "deconv upsampling": gd.upsample_high.deconv.weight.grad,
        "conv gate": gd.gate.weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    assert isinstance(dec.align_modules[0], torch.nn.Identity)  # the res3 step stays bilinear
