"""MiT (SegFormer's Mix Transformer) backbone: stage shapes, parameter counts against the published
SegFormer figures and a hand count, efficient self-attention against two independent
implementations, stochastic depth, config building."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from torch import nn

from helpers import make_cfg
from sfnet_d2.modeling.backbone.mit import (MIT_LAYOUTS, DropPath, EfficientSelfAttention,
                                            MixVisionTransformer, drop_path_rates)
from sfnet_d2.modeling.heads.segformer_head import SegFormerHead


def _num_params(module):
    return sum(p.numel() for p in module.parameters())


def _meta_model(name):
    with torch.device("meta"):  # parameter counts of B2..B5 without allocating them
        return MixVisionTransformer(name)


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["B0", "B1"])
def test_stage_outputs_have_published_widths_and_strides(name):
    widths = {"B0": (32, 64, 160, 256), "B1": (64, 128, 320, 512)}[name]
    model = MixVisionTransformer(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    for level, width, stride in zip(("res2", "res3", "res4", "res5"), widths, (4, 8, 16, 32)):
        assert out[level].shape == (2, width, 64 // stride, 96 // stride), level
        spec = model.output_shape()[level]
        assert (spec.channels, spec.stride) == (width, stride)
    assert model.size_divisibility == 32


def test_sizes_not_divisible_by_32_round_up_like_the_official_padded_convs():
    # 7x7 s4 p3 then 3x3 s2 p1: each level has ceil(previous / stride) positions.
    model = MixVisionTransformer("B0").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 45))
    assert [tuple(out[k].shape[-2:]) for k in ("res2", "res3", "res4", "res5")] == \
        [(18, 12), (9, 6), (5, 3), (3, 2)]


def test_requested_levels_only_and_later_stages_not_run():
    model = MixVisionTransformer("B0", out_features=["res3"]).eval()
    calls = []
    model.res5.register_forward_hook(lambda *a: calls.append("res5"))
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res3"] and calls == []
    assert "res5.norm.weight" in model.state_dict()  # still built, so checkpoints keep their keys


# ---------------------------------------------------------------------------------- parameters
def _hand_block_params(c, sr, mlp_ratio=4):
    """One MiT block, layer by layer (official Block: LayerNorms, q, kv, proj, sr conv + norm,
    fc1, 3x3 depthwise conv, fc2; every layer with a bias)."""
    hidden = mlp_ratio * c
    norms = 2 * (2 * c)
    attention = (c * c + c) + (c * 2 * c + 2 * c) + (c * c + c)
    reduction = (c * c * sr * sr + c) + 2 * c if sr > 1 else 0
    ffn = (c * hidden + hidden) + (hidden * 9 + hidden) + (hidden * c + c)
    return norms + attention + reduction + ffn


def _hand_encoder_params(layout):
    total, c_in = 0, 3
    for i, (c, depth, sr) in enumerate(zip(layout.embed_dims, layout.depths, layout.sr_ratios)):
        k = 7 if i == 0 else 3
        total += c_in * c * k * k + c + 2 * c  # patch-embedding conv + its LayerNorm
        total += depth * _hand_block_params(c, sr) + 2 * c  # blocks + stage LayerNorm
        c_in = c
    return total


def test_one_block_parameter_count_by_hand():
    # MiT-B0 stage-1 block: C = 32, sr = 8, Mix-FFN hidden width 4C = 128; (in * out) + bias.
    block = MixVisionTransformer("B0").res2.blocks[0]
    expected = {
        "norm1": 2 * 32, "attn.q": 32 * 32 + 32, "attn.kv": 32 * 64 + 64,
        "attn.proj": 32 * 32 + 32, "attn.sr": 32 * 32 * 8 * 8 + 32, "attn.sr_norm": 2 * 32,
        "norm2": 2 * 32, "mlp.fc1": 32 * 128 + 128, "mlp.dwconv": 128 * 3 * 3 + 128,
        "mlp.fc2": 128 * 32 + 32,
    }
    layers = dict(block.named_modules())
    assert {name: _num_params(layers[name]) for name in expected} == expected
    assert _num_params(block) == sum(expected.values()) == 79616 == _hand_block_params(32, 8)


@pytest.mark.parametrize("name", sorted(MIT_LAYOUTS))
def test_encoder_parameters_equal_the_hand_count(name):
    assert _num_params(_meta_model(name)) == _hand_encoder_params(MIT_LAYOUTS[name])


# Published sizes: SegFormer paper (Xie et al., NeurIPS 2021, arXiv:2105.15203), Table 2 (ADE20k),
# "Params" of SegFormer-B0..B5 = MiT encoder + all-MLP decoder with 150 classes (decoder width 256
# for B0/B1, 768 for B2-B5), in millions; B0 3.8, B4 64.1 and B5 84.7 are also the figures listed
# by paperswithcode for the paper. The encoder alone is checked by the hand count above: MiT-B0
# 3,319,392 and MiT-B1 13,151,424 (3.58 M / 13.66 M with the 1000-class ImageNet classifier of the
# released files). The "3.7 M / 14.0 M" of the transformers SegFormer docs' variant table match
# neither count, so they are not tested (docs/TRANSFORMERS.md).
SEGFORMER_TOTAL_M = {"B0": 3.8, "B1": 13.7, "B2": 27.5, "B3": 47.3, "B4": 64.1, "B5": 84.7}


@pytest.mark.parametrize("name", sorted(SEGFORMER_TOTAL_M))
def test_segformer_parameters_match_segformer_table_2(name):
    embed = 256 if name in ("B0", "B1") else 768
    with torch.device("meta"):
        backbone = MixVisionTransformer(name)
        head = SegFormerHead(backbone.output_shape(), in_features=["res2", "res3", "res4", "res5"],
                             num_classes=150, embed_dim=embed, norm="BN")
    total = _num_params(backbone) + _num_params(head)
    assert round(total / 1e6, 1) == SEGFORMER_TOTAL_M[name]
    if name == "B0":
        assert total == 3_319_392 + 433_302


# ---------------------------------------------------------------------------------- attention
def test_attention_with_sr_ratio_1_is_standard_multi_head_attention():
    torch.manual_seed(0)
    dim, heads = 40, 5
    ours = EfficientSelfAttention(dim, heads, sr_ratio=1)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # q, k, v stacked in that order: our kv is [keys; values]
        mha.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 12, dim)
    with torch.no_grad():
        expected, _ = mha(x, x, x, need_weights=False)
        got = ours(x, 3, 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_spatially_reduced_attention_equals_a_hand_written_one():
    torch.manual_seed(1)
    dim, heads, sr, h, w = 24, 3, 2, 6, 4
    att = EfficientSelfAttention(dim, heads, sr_ratio=sr)
    for p in att.parameters():
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, h * w, dim)
    with torch.no_grad():
        got = att(x, h, w)
        # keys/values from the (h/sr) x (w/sr) grid: strided conv, LayerNorm (eps 1e-5)
        grid = x.transpose(1, 2).reshape(2, dim, h, w)
        reduced = F.conv2d(grid, att.sr.weight, att.sr.bias, stride=sr).flatten(2).transpose(1, 2)
        reduced = F.layer_norm(reduced, (dim,), att.sr_norm.weight, att.sr_norm.bias, eps=1e-5)
        kv = reduced @ att.kv.weight.T + att.kv.bias
        q = x @ att.q.weight.T + att.q.bias
        d = dim // heads
        out = torch.empty_like(q)
        for b in range(2):
            for head in range(heads):
                cols = slice(head * d, (head + 1) * d)
                qh, kh, vh = q[b, :, cols], kv[b, :, :dim][:, cols], kv[b, :, dim:][:, cols]
                weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
                assert weights.shape == (h * w, (h // sr) * (w // sr))
                out[b, :, cols] = weights @ vh
        expected = out @ att.proj.weight.T + att.proj.bias
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- drop path
def test_drop_path_rates_are_the_official_linspace():
    model = MixVisionTransformer("B0", drop_path_rate=0.1)
    got = [blk.drop_path.p for s in ("res2", "res3", "res4", "res5")
           for blk in getattr(model, s).blocks]
    torch.testing.assert_close(torch.tensor(got), torch.linspace(0, 0.1, 8))
    assert drop_path_rates([2, 2, 2, 2], 0.0) == [0.0] * 8


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    y = layer.train()(x)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 4 / 3).all(1))  # all or nothing
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(layer.eval()(x), x)


# ---------------------------------------------------------------------------------- config
def test_config_builds_the_variant_and_reports_bad_keys():
    cfg = make_cfg(opts=["MODEL.BACKBONE.NAME", "build_mit_backbone", "MODEL.MIT.NAME", "B1",
                         "MODEL.MIT.OUT_FEATURES", ["res2", "res5"], "MODEL.BACKBONE.FREEZE_AT", 2])
    backbone = build_backbone(cfg)
    assert isinstance(backbone, MixVisionTransformer)
    assert {k: v.channels for k, v in backbone.output_shape().items()} == {"res2": 64, "res5": 512}
    assert not any(p.requires_grad for p in backbone.res2.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())
    cfg.MODEL.MIT.NAME = "B9"
    with pytest.raises(ValueError, match=r"MODEL.MIT.NAME='B9'.*B0"):
        build_backbone(cfg)
    cfg.MODEL.MIT.NAME, cfg.MODEL.MIT.OUT_FEATURES = "B0", ["res6"]
    with pytest.raises(ValueError, match=r"MODEL.MIT.OUT_FEATURES.*res6"):
        build_backbone(cfg)
