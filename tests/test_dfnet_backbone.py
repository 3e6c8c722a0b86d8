"""DFNet (DF1 / DF2) backbone: official key layout, parameter counts, shapes, block math, builder."""
import ast
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.converters.official_backbones import official_dfnet_key_map
from sfnet_d2.modeling.backbone.dfnet import (
    DFNet,
    DFNetBasicBlock,
    build_dfnet_backbone,
)

KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_keys")
KEY_FILES = {"DF1": "keys_sfnet_df1.txt", "DF2": "keys_sfnet_df2.txt"}

# Backbone parameters (BN running stats and dropped keys excluded):
#   DF1: 8,020,128, summed from keys_sfnet_df1.txt (the whole SFNet-DF1 is 8,422,387);
#   DF2: 17,474,208, the figure the official reference gives for the DF2 backbone alone.
EXPECTED_PARAMS = {"DF1": 8_020_128, "DF2": 17_474_208}

# Expected (channels, stride) of res3/res4/res5: the three features the official head takes.
EXPECTED_SHAPES = {
    "DF1": {"res3": (128, 16), "res4": (256, 32), "res5": (512, 32)},
    "DF2": {"res3": (128, 8), "res4": (256, 16), "res5": (512, 32)},
}


def official_backbone_keys(version):
    """{key without 'backbone.': shape tuple} from an official key list."""
    keys = {}
    with open(os.path.join(KEYS_DIR, KEY_FILES[version])) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, shape = line.split("\t")[:2]
            if key.startswith("backbone."):
                keys[key[len("backbone."):]] = tuple(ast.literal_eval(shape))
    return keys


def is_buffer_key(key):
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.fixture(scope="module", params=["DF1", "DF2"])
def version_and_model(request):
    torch.manual_seed(0)
    return request.param, DFNet(request.param).eval()


def test_official_keys_map_onto_ours_with_same_shapes(version_and_model):
    version, model = version_and_model
    official = official_backbone_keys(version)
    ours = model.state_dict()
    mapping = official_dfnet_key_map(official)
    assert set(mapping) == set(official), sorted(set(official) - set(mapping))[:5]
    hits = {}
    for key, (action, target) in mapping.items():
        if action == "drop":
            assert target, f"{key} dropped without a reason"
            continue
        assert action == "ours", (key, action)
        assert target in ours, f"{key} -> {target} is not one of our keys"
        assert tuple(ours[target].shape) == official[key], (key, target)
        hits[target] = hits.get(target, 0) + 1
    assert set(hits) == set(ours), sorted(set(ours) - set(hits))[:5]
    assert all(n == 1 for n in hits.values()), [k for k, n in hits.items() if n > 1]

    # The mapped official tensors load strictly and land in the right places.
    g = torch.Generator().manual_seed(1)
    fake = {k: (torch.randint(0, 5, s, generator=g) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=g)) for k, s in official.items()}
    converted = {mapping[k][1]: v for k, v in fake.items() if mapping[k][0] == "ours"}
    fresh = DFNet(version)
    fresh.load_state_dict(converted, strict=True)
    assert torch.equal(fresh.stem.conv2.weight, fake["stage1.3.weight"])
    assert torch.equal(fresh.stem.conv1.norm.running_var, fake["stage1.1.running_var"])


def test_parameter_counts(version_and_model):
    version, model = version_and_model
    official = official_backbone_keys(version)
    mapping = official_dfnet_key_map(official)
    from_keys = sum(
        torch.Size(shape).numel() for key, shape in official.items()
        if not is_buffer_key(key) and mapping[key][0] == "ours"
    )
    ours = sum(p.numel() for p in model.parameters())
    assert from_keys == EXPECTED_PARAMS[version]
    assert ours == EXPECTED_PARAMS[version]


def test_output_shapes_and_strides(version_and_model):
    version, model = version_and_model
    specs = model.output_shape()
    assert list(specs) == ["res3", "res4", "res5"]
    assert {k: (s.channels, s.stride) for k, s in specs.items()} == EXPECTED_SHAPES[version]
    assert model.size_divisibility == 32
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 128, 256))
    assert list(outs) == ["res3", "res4", "res5"]
    for name, out in outs.items():
        c, s = EXPECTED_SHAPES[version][name]
        assert tuple(out.shape) == (1, c, 128 // s, 256 // s), name
        assert specs[name].channels == out.shape[1] and specs[name].stride == 128 // out.shape[2]


def test_stride_on_conv1_and_shortcut_rule():
    # Official _make_layer: the stride sits on conv1 (3x3) of block 0, and block 0 gets a 1x1
    # projection iff stride != 1 or the width changes; later blocks never have one.
    model = DFNet("DF1")
    first = model.stage2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert first.shortcut is not None and first.shortcut.stride == (2, 2)  # 64->64, stride only
    assert model.stage5[0].shortcut is not None and model.stage5[0].shortcut.stride == (1, 1)
    assert model.stage3[1].shortcut is None and model.stage3[1].conv1.stride == (1, 1)
    model2 = DFNet("DF2")
    assert model2.stage2_2[0].shortcut.stride == (1, 1)  # 64->128 width change at stride 1
    assert model2.stage4_2[1].shortcut is None
    for m in list(model.modules()) + list(model2.modules()):
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


def test_norm_placement_follows_official():
    # Official: Norm2d (SyncBN in multi-GPU runs) only in the stem and shortcuts; the blocks'
    # bn1/bn2 are plain nn.BatchNorm2d because norm_layer is not forwarded to BasicBlock.
    model = DFNet("DF2", norm="SyncBN")
    assert isinstance(model.stem.conv1.norm, nn.SyncBatchNorm)
    assert isinstance(model.stage3_1[0].shortcut.norm, nn.SyncBatchNorm)
    block_norm = model.stage3_1[0].conv1.norm
    assert type(block_norm) is nn.BatchNorm2d
    assert type(model.stage4_2[1].conv2.norm) is nn.BatchNorm2d
    frozen = DFNet("DF1", norm="FrozenBN")  # no official counterpart: used everywhere
    assert type(frozen.stage3[1].conv1.norm).__name__ == "FrozenBatchNorm2d"


def test_default_init_is_pytorch_default():
    # The official dfnet classes never re-initialise: convs keep kaiming_uniform(a=sqrt(5)),
    # i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN weight 1, bias 0.
    torch.manual_seed(0)
    model = DFNet("DF1")
    w = model.stage4[1].conv1.weight
    bound = 1.0 / (w[0].numel() ** 0.5)
    assert w.abs().max() <= bound + 1e-7
    assert w.abs().max() > 0.99 * bound
    bn = model.stage4[1].conv1.norm
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def _reference_bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        training=False, eps=bn.eps)


@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 16, 2), (8, 8, 2)])
def test_basic_block_matches_reference(cin, cout, stride):
    torch.manual_seed(0)
    block = DFNetBasicBlock(cin, cout, stride).double().eval()
    assert (block.shortcut is not None) == (stride != 1 or cin != cout)
    for m in block.modules():  # non-trivial BN statistics and affine params
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, cin, 12, 10, dtype=torch.float64)
    y = F.conv2d(x, block.conv1.weight, stride=stride, padding=1)
    y = F.relu(_reference_bn(y, block.conv1.norm))
    y = _reference_bn(F.conv2d(y, block.conv2.weight, padding=1), block.conv2.norm)
    if block.shortcut is None:
        identity = x
    else:
        identity = _reference_bn(F.conv2d(x, block.shortcut.weight, stride=stride),
                                 block.shortcut.norm)
    expected = F.relu(y + identity)
    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, cout, 12 // stride, 10 // stride)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_key_map_drops_classifier_and_ignores_unknown():
    keys = ["fc.weight", "fc.bias", "stage2.0.conv1.bias", "avgpool.weight",
            "stage1.2.weight", "stage2_1.1.bn2.num_batches_tracked", "stage1.4.running_mean"]
    mapping = official_dfnet_key_map(keys)
    assert mapping["fc.weight"][0] == "drop" and mapping["fc.bias"][0] == "drop"
    assert mapping["stage2_1.1.bn2.num_batches_tracked"] == (
        "ours", "stage2_1.1.conv2.norm.num_batches_tracked")
    assert mapping["stage1.4.running_mean"] == ("ours", "stem.conv2.norm.running_mean")
    for unknown in ("stage2.0.conv1.bias", "avgpool.weight", "stage1.2.weight"):
        assert unknown not in mapping


def _cfg(**dfnet):
    from detectron2.config import get_cfg

    from sfnet_d2 import add_sfnet_config

    cfg = get_cfg()
    add_sfnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_dfnet_backbone"
    for k, v in dfnet.items():
        setattr(cfg.MODEL.DFNET, k, v)
    return cfg


def test_builder_through_detectron2():
    from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

    assert BACKBONE_REGISTRY.get("build_dfnet_backbone") is build_dfnet_backbone
    df2 = build_backbone(_cfg(NAME="DF2"))
    assert isinstance(df2, DFNet) and df2.version == "DF2"
    assert {k: (s.channels, s.stride) for k, s in df2.output_shape().items()} == \
        EXPECTED_SHAPES["DF2"]

    df1 = build_backbone(_cfg(NAME="DF1", OUT_FEATURES=["res3", "res4"]))
    assert list(df1.output_shape()) == ["res3", "res4"]
    assert df1._stage_names == ["stage2", "stage3", "stage4"]  # stage5 is not run
    with torch.no_grad():
        outs = df1.eval()(torch.randn(1, 3, 64, 64))
    assert sorted(outs) == ["res3", "res4"] and outs["res4"].shape == (1, 256, 2, 2)

    with pytest.raises(ValueError, match=r"MODEL\.DFNET\.NAME"):
        build_backbone(_cfg(NAME="DF3"))
    with pytest.raises(ValueError, match=r"MODEL\.DFNET\.OUT_FEATURES"):
        build_backbone(_cfg(OUT_FEATURES=["res2", "res5"]))
