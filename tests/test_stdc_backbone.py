"""STDC1/STDC2 backbones: structure against the official key lists, block numerics, builder."""
import ast
import os
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from sfnet_d2 import add_sfnet_config
from sfnet_d2.converters.official_backbones import official_stdc_key_map
from sfnet_d2.modeling.backbone.stdc import CatBottleneck, STDCNet, build_stdc_backbone

KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_keys")
# Both SFNet (v1) and SFNet-Lite (v2) files: the backbone part is the same network.
KEY_FILES = {
    "keys_sfnet_stdc1_v1.txt": "STDC1", "keys_sfnet_lite_stdc1_v2.txt": "STDC1",
    "keys_sfnet_stdc2_v1.txt": "STDC2", "keys_sfnet_lite_stdc2_v2.txt": "STDC2",
}
TAIL = ("conv_last.", "fc.", "bn.", "linear.")
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# Backbone parameters = the official non-alias, non-tail backbone.* parameters (from the key
# files): STDC1 5,318,304 and STDC2 9,348,768. Adding the 3,125,248-parameter classifier tail
# gives the official backbone module's 8,443,552 / 12,474,016.
EXPECTED_PARAMS = {"STDC1": 5_318_304, "STDC2": 9_348_768}
TAIL_PARAMS = 3_125_248


@lru_cache(maxsize=None)
def _model(name):
    return STDCNet(name).eval()


def _read_backbone_keys(filename):
    """(canonical {key: (shape, numel)}, {alias_key: aliased_key}), without 'backbone.'."""
    canonical, aliases = {}, {}
    with open(os.path.join(KEYS_DIR, filename)) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#") or not line.startswith("backbone."):
                continue
            fields, _, comment = line.partition("  # alias of ")
            key, shape, numel = fields.split("\t")
            key = key[len("backbone."):]
            if comment:
                aliases[key] = comment.strip()[len("backbone."):]
            else:
                canonical[key] = (tuple(ast.literal_eval(shape)), int(numel))
    return canonical, aliases


@pytest.mark.parametrize("filename,name", sorted(KEY_FILES.items()))
def test_official_keys_map_onto_our_state_dict(filename, name):
    canonical, aliases = _read_backbone_keys(filename)
    assert canonical and aliases  # the file parsed
    ours = {k: tuple(v.shape) for k, v in _model(name).state_dict().items()}
    mapping = official_stdc_key_map(list(canonical) + list(aliases))
    assert set(mapping) == set(canonical) | set(aliases)  # every official key recognised

    hits = []
    for key, (shape, _) in canonical.items():
        action, target = mapping[key]
        if key.startswith(TAIL):
            assert action == "drop", key
            continue
        assert action == "ours", key
        assert target in ours, (key, target)
        assert ours[target] == shape, (key, target, ours[target], shape)
        hits.append(target)
    assert sorted(hits) == sorted(ours)  # each of our keys hit exactly once
    assert len(hits) == len(set(hits))

    for key, canonical_key in aliases.items():
        assert mapping[key] == ("alias", canonical_key)
    assert not any(k.startswith(TAIL) for k in aliases)


def test_key_map_examples_and_unknown_keys():
    m = official_stdc_key_map([
        "features.0.bn.num_batches_tracked", "features.2.avd_layer.1.bias",
        "features.3.avd_layer.0.weight", "features.13.conv_list.3.conv.weight",
        "x16.0.6.conv_list.0.bn.weight", "x8.0.6.conv_list.0.bn.weight",
        "bn.running_var", "head.fpn_in.0.weight", "features.1.conv.bias"])
    assert m == {
        "features.0.bn.num_batches_tracked": ("ours", "stem.conv1.norm.num_batches_tracked"),
        "features.2.avd_layer.1.bias": ("ours", "res3.0.avd.norm.bias"),
        "features.13.conv_list.3.conv.weight": ("ours", "res5.2.convs.3.weight"),  # STDC2
        "x16.0.6.conv_list.0.bn.weight": ("alias", "features.6.conv_list.0.bn.weight"),
        "bn.running_var": ("drop", m["bn.running_var"][1]),
    }  # avd in a stride-1 block, x8 holding a res4 block, a head key, a conv bias: unrecognised
    # With an explicit name: features.4 opens res4 in STDC1 but is the third res3 block in STDC2.
    assert official_stdc_key_map(["features.4.avd_layer.0.weight"], name="STDC1") == {
        "features.4.avd_layer.0.weight": ("ours", "res4.0.avd.weight")}
    assert official_stdc_key_map(["features.4.conv_list.0.conv.weight"], name="STDC2") == {
        "features.4.conv_list.0.conv.weight": ("ours", "res3.2.convs.0.weight")}
    with pytest.raises(ValueError, match="STDC1 from STDC2"):
        official_stdc_key_map(["features.9.conv_list.0.conv.weight"])


@pytest.mark.parametrize("name", ["STDC1", "STDC2"])
def test_parameter_count_equals_official_backbone(name):
    filename = {"STDC1": "keys_sfnet_stdc1_v1.txt", "STDC2": "keys_sfnet_stdc2_v1.txt"}[name]
    canonical, _ = _read_backbone_keys(filename)
    official = sum(n for k, (_, n) in canonical.items()
                   if not k.startswith(TAIL) and not k.endswith(BUFFERS))
    tail = sum(n for k, (_, n) in canonical.items()
               if k.startswith(TAIL) and not k.endswith(BUFFERS))
    ours = sum(p.numel() for p in _model(name).parameters())
    assert ours == official == EXPECTED_PARAMS[name]
    assert tail == TAIL_PARAMS


@pytest.mark.parametrize("name", ["STDC1", "STDC2"])
def test_output_shapes_and_strides(name):
    model = _model(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 256))
    expected = {"res2": (64, 4), "res3": (256, 8), "res4": (512, 16), "res5": (1024, 32)}
    assert set(out) == set(expected)
    for key, (channels, stride) in expected.items():
        assert tuple(out[key].shape) == (1, channels, 128 // stride, 256 // stride)
        assert model.output_shape()[key] == ShapeSpec(channels=channels, stride=stride)
    assert model.size_divisibility == 32
    assert len(model.res3) + len(model.res4) + len(model.res5) == {"STDC1": 6, "STDC2": 12}[name]


def test_out_features_subset_and_errors():
    model = STDCNet("STDC1", out_features=["res3"]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res3"] and tuple(out["res3"].shape) == (1, 256, 8, 8)
    assert list(model.output_shape()) == ["res3"]
    with pytest.raises(ValueError, match="MODEL.STDC.OUT_FEATURES"):
        STDCNet("STDC1", out_features=["res6"])
    with pytest.raises(ValueError, match="MODEL.STDC.NAME"):
        STDCNet("STDC3")


def test_official_init():
    model = _model("STDC2")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(convs)
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)
    # kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)); this 1x1 512->512 conv
    # has 262,144 samples, so the measured std is within ~0.3% of it.
    w = model.res5[0].convs[0].weight
    assert abs(w.std().item() / (2.0 / (w.shape[0] * w[0, 0].numel())) ** 0.5 - 1) < 0.02


def _reference_block(block, x):
    """CatBottleneck recomputed with plain functional calls from the block's own weights."""
    def conv_x(layer, t, stride=1, groups=1, relu=True):
        k = layer.weight.shape[-1]
        t = F.conv2d(t, layer.weight, None, stride, k // 2, 1, groups)
        n = layer.norm
        t = F.batch_norm(t, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        return F.relu(t) if relu else t

    c = block.convs
    a = conv_x(c[0], x)
    if block.stride == 2:
        b_in = conv_x(block.avd, a, stride=2, groups=a.shape[1], relu=False)
        a = F.avg_pool2d(a, 3, 2, 1)
    else:
        b_in = a
    b = conv_x(c[1], b_in)
    d = conv_x(c[2], b)
    e = conv_x(c[3], d)
    return torch.cat([a, b, d, e], dim=1)


@pytest.mark.parametrize("stride,in_channels", [(2, 16), (1, 32)])
def test_cat_bottleneck_matches_functional_reference(stride, in_channels):
    torch.manual_seed(0)
    block = CatBottleneck(in_channels, 32, stride=stride).double().eval()
    assert (block.avd is not None) == (stride == 2)
    # Non-trivial norm statistics, so a swapped or skipped norm would show.
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, in_channels, 9, 14, dtype=torch.float64)  # odd size: padding/pool edges
    with torch.no_grad():
        out = block(x)
        ref = _reference_block(block, x)
    assert out.shape == (2, 32, 5 if stride == 2 else 9, 7 if stride == 2 else 14)
    assert [c.weight.shape[0] for c in block.convs] == [16, 8, 4, 4]  # O/2, O/4, O/8, O/8
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out - ref).abs().max()


def _cfg(**stdc):
    cfg = get_cfg()
    add_sfnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_stdc_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    for key, value in stdc.items():
        setattr(cfg.MODEL.STDC, key, value)
    return cfg


def test_builder_through_detectron2_registry():
    assert build_stdc_backbone.__name__ == "build_stdc_backbone"
    backbone = build_backbone(_cfg(NAME="STDC2", OUT_FEATURES=["res2", "res4", "res5"]))
    assert isinstance(backbone, STDCNet) and backbone.name == "STDC2"
    assert len(backbone.res4) == 5
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "res2": (64, 4), "res4": (512, 16), "res5": (1024, 32)}
    assert all(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="MODEL.STDC.NAME"):
        build_backbone(_cfg(NAME="STDC3"))
    with pytest.raises(ValueError, match="MODEL.STDC.OUT_FEATURES"):
        build_backbone(_cfg(OUT_FEATURES=["res1"]))


def test_freeze_at_freezes_the_stem_and_requested_stages():
    model = STDCNet("STDC1", freeze_at=3)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.res3.parameters())
    assert all(p.requires_grad for p in model.res4.parameters())
