"""The optimised inference path (sfnet_d2/deployment): BatchNorm folding, pooling rewrite, the
warp's cached base grid, and the optimised model's logits against the plain eager model's."""
import logging

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch import nn

from helpers import make_cfg, randomize_norms
from sfnet_d2.deployment.static_pooling import StaticAdaptiveAvgPool2d
from sfnet_d2.deployment import (
    OptimizedSemanticSegmentor,
    build_inference_model,
    fold_batchnorm,
    optimize_model,
    resize_logits,
    strip_training_only_modules,
)
from sfnet_d2.modeling.alignment import flow_alignment
from sfnet_d2.modeling.alignment.flow_alignment import _base_grid, flow_warp

CONFIGS = "configs/cityscapes/semantic/"


# ------------------------------------------------------------------------------ module rewrites
def test_fold_batchnorm_detectron2_conv_sequential_frozen_and_grouped():
    torch.manual_seed(0)
    model = nn.Sequential(
        Conv2d(3, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=F.relu),
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=True),  # grouped conv + BN in a Sequential
        nn.BatchNorm2d(8),
        Conv2d(8, 6, 1, bias=True, norm=FrozenBatchNorm2d(6)),
    )
    randomize_norms(model).eval()
    x = torch.randn(2, 3, 9, 11)
    expected = model(x)
    assert fold_batchnorm(model) == 3
    assert model[0].norm is None and isinstance(model[2], nn.Identity) and model[3].norm is None
    assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_hand_computed_case():
    conv = Conv2d(1, 1, 1, bias=False, norm=nn.BatchNorm2d(1))
    conv.weight.data.fill_(2.0)
    conv.norm.running_mean.fill_(1.0)
    conv.norm.running_var.fill_(4.0 - conv.norm.eps)  # sqrt(var + eps) = 2
    conv.norm.weight.data.fill_(3.0)
    conv.norm.bias.data.fill_(0.5)
    conv.eval()
    fold_batchnorm(conv)
    # (2x - 1) / 2 * 3 + 0.5 = 3x - 1
    assert conv.weight.item() == pytest.approx(3.0) and conv.bias.item() == pytest.approx(-1.0)


def test_fold_batchnorm_refuses_training_mode_and_names_the_layer():
    model = nn.Sequential(Conv2d(3, 4, 3, norm=nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"0\.norm .*training mode.*model\.eval\(\)"):
        fold_batchnorm(model)


def test_strip_training_only_modules():
    model = build_model(make_cfg(CONFIGS + "sfnet_R18.yaml", ["MODEL.SFNET.DEEP_SUPERVISION", True]))
    removed = strip_training_only_modules(model)
    assert model.sem_seg_head.dsn_heads is None
    assert "sem_seg_head.dsn_heads" in removed and "sem_seg_head.neck.ppm.dropout" in removed
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@pytest.mark.parametrize("size", [(13, 21), (32, 64), (5, 7)])
def test_adaptive_avg_pool_as_matmul_equals_adaptive_pooling(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for bins in (1, 2, 3, 6):
        got = StaticAdaptiveAvgPool2d(bins)(x)
        assert torch.allclose(got, F.adaptive_avg_pool2d(x, bins), atol=1e-12)


# ------------------------------------------------------------------------------ warp grid cache
def test_cached_base_grid_is_identical_and_respects_dtype():
    flow_alignment._GRID_CACHE.clear()
    feature = torch.randn(1, 3, 8, 10)
    flow = torch.randn(1, 2, 16, 20)
    first = flow_warp(feature, flow, (16, 20))
    assert (16, 20, flow.device, torch.float32) in flow_alignment._GRID_CACHE
    grid, norm = flow_alignment._GRID_CACHE[(16, 20, flow.device, torch.float32)]
    assert torch.equal(grid, _base_grid(16, 20, flow))
    # the uncached formula of the official code
    fresh = F.grid_sample(feature, _base_grid(16, 20, flow) + flow.permute(0, 2, 3, 1)
                          / torch.tensor([20.0, 16.0]), align_corners=True)
    assert torch.equal(first, fresh)
    assert torch.equal(flow_warp(feature, flow, (16, 20)), first)  # second call: from the cache
    flow_warp(feature.double(), flow.double(), (16, 20))
    assert flow_alignment._GRID_CACHE[(16, 20, flow.device, torch.float64)][0].dtype == torch.float64


def test_grid_cached_in_inference_mode_works_with_autograd():
    flow_alignment._GRID_CACHE.clear()
    feature = torch.randn(1, 2, 4, 4)
    with torch.inference_mode():
        flow_warp(feature, torch.zeros(1, 2, 8, 8), (8, 8))
    flow = torch.zeros(1, 2, 8, 8, requires_grad=True)
    flow_warp(feature, flow, (8, 8)).sum().backward()
    assert flow.grad is not None and flow.grad.shape == flow.shape


def test_grid_cache_is_bounded():
    flow_alignment._GRID_CACHE.clear()
    feature = torch.randn(1, 1, 4, 4)
    for size in range(2, 2 + flow_alignment._GRID_CACHE_SIZE + 5):
        flow_warp(feature, torch.zeros(1, 2, size, size), (size, size))
    assert len(flow_alignment._GRID_CACHE) == flow_alignment._GRID_CACHE_SIZE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_warp_samples_in_float32(dtype):
    # channels-last bf16 grid_sample on CPU returns NaNs (torch 2.14) and a bf16/fp16 grid
    # misplaces samples: the warp must equal the float32 warp of the same (rounded) inputs.
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 16, 24, 40, generator=gen).to(dtype)
    feature = feature.contiguous(memory_format=torch.channels_last)
    flow = (torch.randn(1, 2, 48, 80, generator=gen) * 3).to(dtype)
    got = flow_warp(feature, flow, (48, 80))
    expected = flow_warp(feature.float(), flow.float(), (48, 80)).to(dtype)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_tracing_does_not_use_the_cache():
    # A traced / exported warp must compute its grid from ops (linspace), not a cached constant.
    flow_alignment._GRID_CACHE.clear()
    feature, flow = torch.randn(1, 3, 6, 7), torch.randn(1, 2, 12, 14)
    traced = torch.jit.trace(lambda f, fl: flow_warp(f, fl, (12, 14)), (feature, flow),
                             check_trace=False)
    assert "aten::linspace" in str(traced.graph)
    assert not flow_alignment._GRID_CACHE
    assert torch.equal(traced(feature, flow), flow_warp(feature, flow, (12, 14)))


# ------------------------------------------------------------------------------ optimised model
def _eager_and_optimized(config, opts=(), **kwargs):
    torch.manual_seed(0)
    model = randomize_norms(build_model(make_cfg(CONFIGS + config, opts))).eval()
    return model, optimize_model(model, **kwargs)


def _logits(model, image, **extra):
    with torch.no_grad():
        return model([dict(image=image, **extra)])[0]["sem_seg"]


@pytest.mark.slow
@pytest.mark.parametrize("config,kwargs", [
    ("sfnet_R18.yaml", {}),  # the defaults: channels-last, trace + freeze, fp32
    ("sfnet_lite_R18.yaml", {}),
    ("sfnet_lite_STDC1.yaml", {}),
    ("sfnet_DF1.yaml", {"torchscript": "none", "channels_last": False}),  # folding alone
    ("sfnet_lite_R18.yaml", {"torchscript": "optimize"}),
])
def test_optimized_logits_equal_eager(config, kwargs):
    model, optimized = _eager_and_optimized(config, **kwargs)
    assert isinstance(optimized, OptimizedSemanticSegmentor)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8, generator=gen)  # padded to 64x96
    expected = _logits(model, image)
    got = _logits(optimized, image)
    assert got.shape == expected.shape == (19, 45, 70)
    assert (got - expected).abs().max().item() < 1e-4
    # resized output (sem_seg_postprocess's interpolation path)
    expected = _logits(model, image, height=90, width=35)
    assert (_logits(optimized, image, height=90, width=35) - expected).abs().max().item() < 1e-4


def test_deep_supervision_heads_are_dropped_and_original_untouched():
    model, optimized = _eager_and_optimized("sfnet_R18.yaml", ["MODEL.SFNET.DEEP_SUPERVISION", True],
                                            torchscript="none")
    assert not any("dsn" in k for k in optimized.state_dict())
    assert model.sem_seg_head.dsn_heads is not None  # the given model is not modified
    assert model.backbone.stem.conv1.norm is not None
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    assert (_logits(optimized, image) - _logits(model, image)).abs().max().item() < 1e-4


def test_resize_logits_equals_sem_seg_postprocess():
    logits = torch.randn(19, 64, 96)
    # same size: the resize is skipped, and it is an exact identity in detectron2 as well
    assert torch.equal(resize_logits(logits, (60, 90), 60, 90),
                       sem_seg_postprocess(logits, (60, 90), 60, 90))
    assert torch.equal(resize_logits(logits, (60, 90), 120, 45),
                       sem_seg_postprocess(logits, (60, 90), 120, 45))


def test_sizes_beyond_the_compiled_limit_run_eagerly(caplog):
    model, optimized = _eager_and_optimized("sfnet_lite_R18.yaml", max_compiled_sizes=1)
    small, other = (torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
                    torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8))
    _logits(optimized, small)
    with caplog.at_level(logging.WARNING, logger="sfnet_d2.deployment.optimized_model"):
        got = _logits(optimized, other)
    assert len(optimized._compiled) == 1 and "run eagerly" in caplog.text
    assert (got - _logits(model, other)).abs().max().item() < 1e-4


def test_build_inference_model_follows_the_config_switch():
    cfg = make_cfg(CONFIGS + "sfnet_lite_R18.yaml", ["DEPLOY.TORCHSCRIPT", "none"])
    model = build_model(cfg).eval()
    optimized = build_inference_model(cfg, model)
    assert isinstance(optimized, OptimizedSemanticSegmentor) and optimized.torchscript == "none"
    with pytest.raises(RuntimeError, match="inference-only"):
        optimized.train()
    cfg.DEPLOY.OPTIMIZE = False
    assert build_inference_model(cfg, model) is model
    cfg.DEPLOY.OPTIMIZE = True
    cfg.DEPLOY.TORCHSCRIPT = "jit"
    with pytest.raises(ValueError, match="DEPLOY.TORCHSCRIPT='jit'"):
        build_inference_model(cfg, model)
