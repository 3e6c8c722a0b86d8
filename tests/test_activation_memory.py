"""DEPLOY.LOW_MEMORY (sfnet_d2/deployment/activation_memory.py): the banded stem and the
part-wise fuse convolution give the values of the modules they replace, and really bound the
largest map they create."""
import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import make_cfg, randomize_norms
from sfnet_d2.deployment import optimize_model
from sfnet_d2.deployment.activation_memory import (
    BandedConvChain,
    PartwiseFusionHead,
    reduce_activation_memory,
)
from sfnet_d2.deployment.network_part import SemanticNetworkPart
from sfnet_d2.deployment.optimize import fold_batchnorm, strip_training_only_modules
from sfnet_d2.modeling.backbone.deep_stem_resnet import DeepStem

CONFIGS = "configs/cityscapes/semantic/"


def _folded_stem(seed=0):
    torch.manual_seed(seed)
    stem = randomize_norms(DeepStem(norm="BN"), seed).eval()
    fold_batchnorm(stem)
    return stem


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op creates (bytes)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and func is not torch.ops.aten.cat.default:
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


# ------------------------------------------------------------------------- banded stem
def test_band_plan_hand_computed():
    # 3 convs (3x3, strides 2, 1, 1, padding 1) and a 3x3/2 max-pool: a 32-row input gives
    # 16, 16, 16 rows, then 8. Band [0, 4) of the pool output reads pool-input rows -1..7
    # (row -1 is padding), i.e. conv3 rows [0, 8) with 1 padding row above; conv3 reads conv2
    # rows [-1, 9) -> [0, 9) + 1 above; conv2 reads conv1 rows [-1, 10) -> [0, 10) + 1 above;
    # conv1 (stride 2) reads input rows [-1, 20) -> [0, 20) + 1 above.
    chain = BandedConvChain(_folded_stem())
    plan = chain.band_plan(32, 2)
    assert plan[0] == [((0, 20), (1, 0)), ((0, 10), (1, 0)), ((0, 9), (1, 0)), ((0, 8), (1, 0))]
    # band [4, 8): the pool reads conv3 rows [7, 16); conv3 reads conv2 rows [6, 17) -> [6, 16)
    # + 1 below; conv2 reads conv1 rows [5, 17) -> [5, 16) + 1 below; conv1 reads input rows
    # [9, 32).
    assert plan[1] == [((9, 32), (0, 0)), ((5, 16), (0, 1)), ((6, 16), (0, 1)), ((7, 16), (0, 0))]


@pytest.mark.parametrize("shape,band_bytes", [
    ((1, 3, 64, 96), 2 ** 14),  # many bands
    ((2, 3, 45, 70), 2 ** 16),  # batch of 2, odd sizes
    ((1, 3, 33, 17), 2 ** 12),  # bands down to single output rows
    ((1, 3, 64, 96), 2 ** 40),  # one band: the whole image at once
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_banded_stem_equals_whole_image_stem(shape, band_bytes, channels_last):
    stem = _folded_stem()
    banded = BandedConvChain(copy.deepcopy(stem), band_bytes)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        stem, banded = (m.to(memory_format=torch.channels_last) for m in (stem, banded))
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = stem(x), banded(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5
    if band_bytes < 2 ** 20:
        assert banded.num_bands(x) > 1


def test_banded_stem_bounds_its_largest_map():
    stem = _folded_stem()
    x = torch.randn(1, 3, 128, 256)
    whole, banded = _LargestOutput(), _LargestOutput()
    with torch.no_grad():
        with whole:
            stem(x)
        with banded:
            BandedConvChain(stem, band_bytes=2 ** 20)(x)
    # the whole-image stem creates the 128-channel map at 1/2 resolution: 128*64*128*4 bytes
    assert whole.largest == 128 * 64 * 128 * 4
    # banded: each map at most the budget plus the halo rows of one band (3 rows at 1/2 res)
    assert banded.largest <= 2 ** 20 + 3 * 128 * 128 * 4
    assert banded.largest < whole.largest / 3


def test_banded_stem_refuses_unfolded_norms():
    with pytest.raises(ValueError, match="stem.conv1 still has a norm"):
        BandedConvChain(DeepStem(norm="BN").eval())


# ------------------------------------------------------------------------- part-wise fusion
@pytest.mark.parametrize("config", ["sfnet_R18.yaml", "sfnet_lite_R18.yaml",
                                    "sfnet_lite_STDC1.yaml"])
def test_partwise_fusion_head_equals_the_head(config):
    torch.manual_seed(0)
    model = randomize_norms(build_model(make_cfg(CONFIGS + config))).eval()
    strip_training_only_modules(model)
    fold_batchnorm(model)
    head = model.sem_seg_head
    partwise = PartwiseFusionHead(head)
    assert len(partwise.part_weights) == head.fuse_conv.in_channels // head.neck.conv_dim
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = model.backbone(x)
        expected, _ = head(features)
        got, _ = partwise(features)
        # the parts really are what the fused map concatenates
        parts = head.neck.fusion_parts(features)[0]
        fused = head.neck.forward_features(features)["fused"]
        size = parts[0].shape[-2:]
        rebuilt = torch.cat([parts[0]] + [F.interpolate(p, size=size, mode="bilinear",
                                                        align_corners=True) for p in parts[1:]], 1)
    assert torch.equal(rebuilt, fused)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


def test_partwise_fusion_refuses_a_wrong_number_of_parts():
    model = build_model(make_cfg(CONFIGS + "sfnet_lite_R18.yaml")).eval()
    fold_batchnorm(model)
    partwise = PartwiseFusionHead(model.sem_seg_head)
    with pytest.raises(ValueError, match="gave 3 parts"):
        partwise.fused_conv([torch.zeros(1, 128, 8, 8)] * 3)


# ------------------------------------------------------------------------- in the optimised model
@pytest.mark.parametrize("config,replaced", [
    ("sfnet_R18.yaml", ["backbone.stem", "sem_seg_head"]),
    ("sfnet_lite_STDC1.yaml", ["sem_seg_head"]),  # the STDC stem is not a DeepStem
])
def test_reduce_activation_memory_replaces_what_it_recognises(config, replaced):
    model = build_model(make_cfg(CONFIGS + config)).eval()
    fold_batchnorm(model)
    assert reduce_activation_memory(SemanticNetworkPart(model)) == replaced


def test_robustnet_stem_with_instance_norm_is_not_banded():
    model = build_model(make_cfg("configs/cityscapes/semantic/robustnet/isw_sfnet_R18.yaml"))
    model.eval()
    fold_batchnorm(model)
    assert model.backbone.stem.conv3.norm is not None  # the instance norm stays
    network = SemanticNetworkPart(model)
    assert "backbone.stem" not in reduce_activation_memory(network)
    assert isinstance(network.backbone.stem, DeepStem)


@pytest.mark.parametrize("low_memory", [True, False])
def test_optimized_model_low_memory_switch(low_memory):
    torch.manual_seed(0)
    model = randomize_norms(build_model(make_cfg(CONFIGS + "sfnet_R18.yaml"))).eval()
    optimized = optimize_model(model, torchscript="freeze", low_memory=low_memory)
    network = optimized.network
    assert isinstance(network.backbone.stem, BandedConvChain) == low_memory
    assert isinstance(network.sem_seg_head, PartwiseFusionHead) == low_memory
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model([{"image": image}])[0]["sem_seg"]
        got = optimized([{"image": image}])[0]["sem_seg"]
    assert (got - expected).abs().max().item() < 1e-4


def test_knet_gets_the_banded_stem_and_the_same_panoptic_result():
    torch.manual_seed(0)
    cfg = make_cfg("configs/coco/panoptic/knet_sfnet_R18.yaml", [
        "MODEL.KNET.NUM_PROPOSALS", 6, "MODEL.KNET.FEAT_CHANNELS", 32, "MODEL.KNET.NUM_HEADS", 4,
        "MODEL.KNET.FFN_CHANNELS", 64, "MODEL.KNET.NUM_STAGES", 2,
        "MODEL.KNET.STAGE_LOSS_WEIGHTS", [1.0, 1.0], "DATASETS.TEST", ()])
    model = randomize_norms(build_model(cfg)).eval()
    low = optimize_model(model, torchscript="none", low_memory=True)
    plain = optimize_model(model, torchscript="none", low_memory=False)
    assert isinstance(low.network.model.backbone.stem, BandedConvChain)
    assert isinstance(plain.network.model.backbone.stem, DeepStem)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(4))
    images = image[None].float()
    with torch.no_grad():
        got = low.network(images)
        expected = plain.network(images)
    for g, e in zip(got, expected):
        assert (g - e).abs().max().item() < 1e-4
