"""Backbone, PPM, necks and heads: shapes, strides and parameter counts against the official code."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

from helpers import make_cfg
from sfnet_d2.modeling import DeepStemResNet, PyramidPoolingModule

CONFIGS = "configs/cityscapes/semantic/"


def _params(module):
    return sum(p.numel() for p in module.parameters())


# Official counts: measured by running lxtGH/SFSegNets@ba475ba (nn.Module.parameters()).
@pytest.mark.parametrize(
    "config,opts,expected",
    [
        ("sfnet_R18.yaml", [], 12_869_715),
        ("sfnet_lite_R18.yaml", [], 12_079_863),  # the official 12,296,074 minus 216,211 unused
        ("sfnet_R50.yaml", [], 31_325_139),
        ("sfnet_R101.yaml", [], 50_317_267),
        ("sfnet_R18.yaml", ["MODEL.SFNET.DEEP_SUPERVISION", True], 13_320_588),  # first release dsn
        # STDC: official counts minus the 3,125,248-parameter classifier tail never used in forward
        ("sfnet_STDC1.yaml", [], 9_117_619 - 3_125_248),
        ("sfnet_STDC2.yaml", [], 13_148_083 - 3_125_248),
        ("sfnet_lite_STDC1.yaml", [], 6_433_623),
        ("sfnet_lite_STDC2.yaml", [], 10_464_087),
        ("sfnet_DF1.yaml", [], 8_422_387),
        ("sfnet_DF2.yaml", [], 17_876_467),
    ],
)
def test_parameter_counts_equal_official(config, opts, expected):
    model = build_model(make_cfg(CONFIGS + config, opts))
    assert _params(model) == expected


def test_r18_backbone_and_head_split_equals_official():
    model = build_model(make_cfg(CONFIGS + "sfnet_R18.yaml"))
    assert _params(model.backbone) == 11_324_992
    assert _params(model.backbone.stem) == 112_832  # official layer0
    assert [_params(getattr(model.backbone, f"res{i}")) for i in (2, 3, 4, 5)] == [
        193_152, 525_568, 2_099_712, 8_393_728]
    head = model.sem_seg_head
    assert _params(head.neck.ppm) == 394_496
    assert _params(head.neck.lateral_convs) == 58_496
    assert _params(head.neck.output_convs) == 443_136
    assert _params(head.neck.align_modules) == 56_064
    assert _params(head.fuse_conv) + _params(head.predictor) == 592_531  # official conv_last


@pytest.mark.parametrize("depth,channels", [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
def test_backbone_outputs_and_output_shape(depth, channels):
    net = DeepStemResNet(depth=depth).eval()
    shapes = net.output_shape()
    assert [shapes[f"res{i}"].channels for i in (2, 3, 4, 5)] == channels
    assert [shapes[f"res{i}"].stride for i in (2, 3, 4, 5)] == [4, 8, 16, 32]
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 128, 192))
    for name, spec in shapes.items():
        assert outs[name].shape == (1, spec.channels, 128 // spec.stride, 192 // spec.stride)


def test_variant_d_dilates_conv2_of_res4_res5_and_keeps_strides():
    net = DeepStemResNet(depth=50)
    for stage, dilation in (("res2", 1), ("res3", 1), ("res4", 2), ("res5", 4)):
        for block in getattr(net, stage):
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)
    assert net.res4[0].conv2.stride == (2, 2) and net.res5[0].shortcut.stride == (2, 2)
    stem = net.stem
    assert [stem.conv1.out_channels, stem.conv2.out_channels, stem.conv3.out_channels] == [64, 64, 128]
    assert net.res2[0].shortcut.in_channels == 128  # the deep stem's 128 channels


def test_backbone_registry_and_freeze():
    cfg = make_cfg(CONFIGS + "sfnet_R18.yaml", ["MODEL.BACKBONE.FREEZE_AT", 2])
    backbone = build_backbone(cfg)
    assert isinstance(backbone, DeepStemResNet)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.res2.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())


def test_bad_backbone_config_names_the_key():
    with pytest.raises(ValueError, match="MODEL.RESNETS.DEPTH=34"):
        DeepStemResNet(depth=34)
    with pytest.raises(ValueError, match="MODEL.RESNETS.OUT_FEATURES"):
        DeepStemResNet(out_features=["res6"])


def test_ppm_shapes_and_concat_order():
    ppm = PyramidPoolingModule(32, 8, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(2, 32, 12, 20)
    assert ppm(x).shape == (2, 8, 12, 20)
    # the bottleneck sees [4 pooled priors (4 x 8 ch), input (32 ch)]: input last
    assert ppm.bottleneck.in_channels == 4 * 8 + 32
    with torch.no_grad():
        ppm.bottleneck.weight.zero_()
        ppm.bottleneck.weight[:, 32:] = 1.0  # reads only the last 32 channels
        y1 = ppm(x)
        for stage in ppm.stages:
            stage[1].weight.normal_()
        y2 = ppm(x)
    assert torch.allclose(y1, y2)  # priors changed, output did not: the input is last


@pytest.mark.parametrize(
    "config,fused_channels", [("sfnet_R18.yaml", 4 * 128), ("sfnet_lite_R18.yaml", 2 * 128)]
)
def test_neck_and_head_shapes(config, fused_channels):
    model = build_model(make_cfg(CONFIGS + config)).eval()
    feats = model.backbone(torch.randn(1, 3, 128, 256))
    neck = model.sem_seg_head.neck
    out = neck.forward_features(feats, return_flows=True)
    assert neck.output_shape() == ShapeSpec(channels=fused_channels, stride=4)
    assert out["fused"].shape == (1, fused_channels, 32, 64)
    assert all(f.shape[1] in (2, 4) for f in out["flows"])
    logits, _ = model.sem_seg_head(feats)
    assert logits.shape == (1, 19, 128, 256)  # upsampled to the input size
    results = model([{"image": torch.zeros(3, 100, 150, dtype=torch.uint8), "height": 50,
                      "width": 75}])
    assert results[0]["sem_seg"].shape == (19, 50, 75)  # padding cropped, resized to request


def test_sfnet_flows_coarse_to_fine_and_lite_has_one_gdfam():
    r18 = build_model(make_cfg(CONFIGS + "sfnet_R18.yaml")).eval()
    feats = r18.backbone(torch.randn(1, 3, 128, 128))
    flows = r18.sem_seg_head.neck.forward_features(feats, return_flows=True)["flows"]
    assert [f.shape[-1] for f in flows] == [8, 16, 32]  # 1/16, 1/8, 1/4
    lite = build_model(make_cfg(CONFIGS + "sfnet_lite_R18.yaml")).eval()
    assert lite.sem_seg_head.neck.in_features == ["res2", "res4", "res5"]
    flows = lite.sem_seg_head.neck.forward_features(lite.backbone(torch.randn(1, 3, 128, 128)),
                                                    return_flows=True)["flows"]
    assert len(flows) == 1 and flows[0].shape == (1, 4, 32, 32)


def test_deep_supervision_only_in_training():
    model = build_model(make_cfg(CONFIGS + "sfnet_R18.yaml", ["MODEL.SFNET.DEEP_SUPERVISION", True]))
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 19, (64, 64))} for _ in range(2)]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_dsn0", "loss_sem_seg_dsn1",
                           "loss_sem_seg_dsn2"}
    model.eval()
    calls = []
    for head in model.sem_seg_head.dsn_heads:
        head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model([{"image": batch[0]["image"]}])
    assert calls == []


def test_lite_head_rejects_wrong_number_of_levels():
    with pytest.raises(ValueError, match="exactly 3 levels"):
        build_model(make_cfg(CONFIGS + "sfnet_lite_R18.yaml",
                             ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]]))


@pytest.mark.slow
@pytest.mark.parametrize("config,official_gflops", [
    ("sfnet_R18.yaml", 61.01), ("sfnet_lite_R18.yaml", 44.71), ("sfnet_STDC1.yaml", 15.00),
    ("sfnet_STDC2.yaml", 21.61), ("sfnet_lite_STDC1.yaml", 18.70), ("sfnet_lite_STDC2.yaml", 25.31),
    ("sfnet_DF1.yaml", 8.25), ("sfnet_DF2.yaml", 20.09),
])
def test_fvcore_flops_equal_official_at_512x1024(config, official_gflops):
    # Measured by running lxtGH/SFSegNets@ba475ba (fvcore, multiply-add = 1 FLOP).
    # what projects/SFNet/analyze_model.py reports
    from sfnet_d2.benchmark.flops import count_network_flops

    total = count_network_flops(build_model(make_cfg(CONFIGS + config)).eval(), 512, 1024).total()
    assert total / 1e9 == pytest.approx(official_gflops, abs=0.01)
