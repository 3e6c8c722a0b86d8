"""The optimised K-Net inference path (sfnet_d2/deployment/optimized_panoptic.py) against the
plain ``SFNetKNet``: class and mask logits within 1e-4, the same panoptic segments and semantic
scores in fp32; bf16 runs with a bounded deviation; inference-only; per-shape traces; the
Predictor and --eval-only use it for K-Net configs."""
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from helpers import randomize_norms, tiny_knet_cfg
from sfnet_d2.benchmark.timing import bf16_support
from sfnet_d2.modeling.meta_arch.knet import KernelMasks, kernel_scores_and_labels
from sfnet_d2.deployment import (
    OptimizedPanopticKNet,
    PanopticKNetNetworkPart,
    build_inference_model,
    network_part_of,
    normalize_and_pad,
    optimize_model,
)


# thresholds low enough that the random tiny model yields several thing and stuff segments
RELAXED = {"MODEL.KNET.TEST.SEMANTIC_ON": True, "MODEL.KNET.TEST.INSTANCE_SCORE_THR": 0.0,
           "MODEL.KNET.TEST.OVERLAP_THR": 0.2}


def _model(**overrides):
    torch.manual_seed(0)
    cfg = tiny_knet_cfg(**{**RELAXED, **overrides})
    return cfg, randomize_norms(build_model(cfg)).eval()


def _image(h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)


# two images of different sizes in one batch (padded to 96x160), one output resized
INPUTS = [{"image": _image(90, 150, 1)},
          {"image": _image(70, 160, 2), "height": 105, "width": 240}]


def _raw_outputs(model, images):
    """(cls_logits, mask_logits) of the network part, and those of an optimised model."""
    x, _ = normalize_and_pad(images, model.pixel_mean, model.pixel_std, model.size_divisibility)
    with torch.no_grad():
        if isinstance(model, OptimizedPanopticKNet):
            return model.network_forward(x)
        return network_part_of(model)(x)


def _near_ties(model, inputs, tolerance=1e-5):
    """Per input, the (H, W) pixels where the plain model's two best kernels (score x mask
    probability, the merge's argmax) are within ``tolerance``: there float rounding of the
    logits alone may change the owner."""
    images = [x["image"] for x in inputs]
    x, sizes = normalize_and_pad(images, model.pixel_mean, model.pixel_std,
                                 model.size_divisibility)
    with torch.no_grad():
        cls_logits, mask_logits = network_part_of(model)(x)
        probs = model._upsample(mask_logits).sigmoid()
    ties = []
    for i, (inp, size) in enumerate(zip(inputs, sizes)):
        scores, _ = kernel_scores_and_labels(cls_logits[i], model.num_proposals,
                                             model.layout.num_thing_classes)
        out = (inp.get("height", size[0]), inp.get("width", size[1]))
        dense = KernelMasks(probs[i], x.shape[-2:], size, out).dense()
        top = (scores[:, None, None] * dense).topk(2, dim=0).values
        ties.append(top[0] - top[1] < tolerance)
    return ties


def _assert_same_panoptic(got, expected, ties=None):
    """Identical segments and panoptic maps; with ``ties``, pixels may differ only there."""
    pan, segments = got["panoptic_seg"]
    ref_pan, ref_segments = expected["panoptic_seg"]
    assert pan.dtype == ref_pan.dtype and pan.shape == ref_pan.shape
    differ = pan != ref_pan
    if ties is None:
        assert not differ.any()
    else:
        assert not (differ & ~ties).any() and differ.float().mean() < 1e-3
    assert [{k: v for k, v in s.items() if k != "score"} for s in segments] == \
        [{k: v for k, v in s.items() if k != "score"} for s in ref_segments]
    # scores are sigmoids of class logits that agree within 1e-4
    assert np.allclose([s["score"] for s in segments], [s["score"] for s in ref_segments],
                       rtol=0, atol=1e-5)


def _check_same_panoptic(optimized, model, inputs):
    """Both models on ``inputs``: the same panoptic output (up to near-ties)."""
    with torch.no_grad():
        got, expected = optimized(inputs), model(inputs)
    for out, ref, ties in zip(got, expected, _near_ties(model, inputs)):
        assert out.keys() == ref.keys()
        _assert_same_panoptic(out, ref, ties)
    return expected


@pytest.mark.parametrize("options", [
    {},  # the defaults: channels-last + gather warp, trace + freeze, fp32, kept memory
    {"torchscript": "none"},
    {"torchscript": "none", "channels_last": False, "keep_memory": False},  # rewrites alone
    {"torchscript": "optimize"},
])
def test_fp32_optimized_knet_equals_the_plain_model(options):
    _, model = _model()
    optimized = optimize_model(model, **options)
    assert isinstance(optimized, OptimizedPanopticKNet)
    assert isinstance(optimized.network, PanopticKNetNetworkPart)
    images = [x["image"] for x in INPUTS]
    (cls_logits, masks), (ref_cls, ref_masks) = (_raw_outputs(optimized, images),
                                                 _raw_outputs(model, images))
    assert cls_logits.dtype == masks.dtype == torch.float32
    assert cls_logits.shape == ref_cls.shape and masks.shape == ref_masks.shape
    assert (cls_logits - ref_cls).abs().max().item() < 1e-4
    assert (cls_logits.sigmoid() - ref_cls.sigmoid()).abs().max().item() < 1e-4  # scores
    assert (masks.sigmoid() - ref_masks.sigmoid()).abs().max().item() < 1e-4  # what is merged
    # mask logits reach ~20 here (dot products of kernels with features), where oneDNN's
    # channels-last convolutions round at ~1e-4 absolute: within 2e-5 of their range
    assert (masks - ref_masks).abs().max().item() < 2e-5 * ref_masks.abs().max().item()
    with torch.no_grad():
        expected, got = model(INPUTS), optimized(INPUTS)
    assert len(got) == 2
    ties = _near_ties(model, INPUTS)
    for out, ref, size, tie in zip(got, expected, [(90, 150), (105, 240)], ties):
        assert out.keys() == ref.keys() == {"panoptic_seg", "sem_seg"}
        assert tuple(out["panoptic_seg"][0].shape) == size
        _assert_same_panoptic(out, ref, tie)
        assert (out["sem_seg"] - ref["sem_seg"]).abs().max().item() < 1e-4
    segments = expected[0]["panoptic_seg"][1] + expected[1]["panoptic_seg"][1]
    # the comparison covers things and stuff
    assert {s["isthing"] for s in segments} == {True, False} and len(segments) >= 4
    if options.get("torchscript", "freeze") != "none":
        assert len(optimized._compiled) == 1  # one padded shape (96x160), traced once


def test_default_thresholds_and_panoptic_only_output(monkeypatch):
    from sfnet_d2.modeling.meta_arch.knet import inference

    _, model = _model(**{"MODEL.KNET.TEST.SEMANTIC_ON": False,
                         "MODEL.KNET.TEST.INSTANCE_SCORE_THR": 0.3,
                         "MODEL.KNET.TEST.OVERLAP_THR": 0.6})
    optimized = optimize_model(model)
    inputs = [{"image": _image(128, 192, 3)}]  # no padding: the tiled merge's exact crops
    with torch.no_grad():
        expected = model(inputs)

    # the channels-last network's masks reach the merge contiguous: the tiled merge runs, not
    # the dense fallback (same result, several times slower)
    def dense(*args):
        raise AssertionError("the optimised K-Net fell back to the dense merge")

    monkeypatch.setattr(inference, "_dense_panoptic_merge", dense)
    with torch.no_grad():
        got = optimized(inputs)
    assert expected[0].keys() == {"panoptic_seg"} and len(expected[0]["panoptic_seg"][1]) >= 1
    _assert_same_panoptic(got[0], expected[0], _near_ties(model, inputs)[0])


def test_bf16_runs_and_its_deviation_is_bounded():
    reason = bf16_support("cpu")
    if reason:
        pytest.skip(reason)
    _, model = _model()
    optimized = optimize_model(model, precision="bf16")
    assert optimized.network.model.stages[0].fc_cls.weight.dtype == torch.bfloat16
    images = [x["image"] for x in INPUTS]
    ref_cls, ref_masks = _raw_outputs(model, images)
    cls_logits, mask_logits = _raw_outputs(optimized, images)
    assert cls_logits.dtype == mask_logits.dtype == torch.float32  # cast back
    # bf16 keeps 8 bits of mantissa, and a hard-mask pixel (sigmoid > 0.5) that flips moves a
    # kernel's group feature: a few pixels deviate by more, the mean by ~1 % of the range
    mask_dev = (mask_logits - ref_masks).abs()
    cls_dev = (cls_logits - ref_cls).abs()
    scale = ref_masks.abs().max().item()
    print(f"bf16: max |d mask logit| {mask_dev.max():.3g}, mean {mask_dev.mean():.3g} (range "
          f"{scale:.3g}); max |d class logit| {cls_dev.max():.3g}, mean {cls_dev.mean():.3g}")
    assert 0 < mask_dev.max() < 0.3 * scale and mask_dev.mean() < 0.02 * scale
    assert 0 < cls_dev.max() < 0.3 * ref_cls.abs().max() and cls_dev.mean() < 0.1
    with torch.no_grad():
        got, expected = optimized(INPUTS), model(INPUTS)
    for out, ref in zip(got, expected):
        pan, ref_pan = out["panoptic_seg"][0], ref["panoptic_seg"][0]
        assert pan.shape == ref_pan.shape and out["sem_seg"].dtype == torch.float32
        # reported, not bounded: the random model's ~100 proposals score alike (K-Net's 0.01
        # prior), so their score x mask products are near-ties almost everywhere
        changed = (pan != ref_pan).float().mean().item()
        print(f"bf16: panoptic id changed on {100 * changed:.2f}% of pixels")
        ids = {s["id"] for s in out["panoptic_seg"][1]}
        assert set(pan.unique().tolist()) <= ids | {0}  # a consistent panoptic output
        assert (out["sem_seg"] - ref["sem_seg"]).abs().max().item() < 0.05


def test_inference_only_original_untouched_and_no_criterion():
    _, model = _model()
    optimized = optimize_model(model, torchscript="none")
    with pytest.raises(RuntimeError, match="OptimizedPanopticKNet is inference-only"):
        optimized.train()
    assert not optimized.training
    # the given model keeps its BatchNorms and its criterion; the copy has neither
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in optimized.modules())
    assert model.criterion is not None and optimized.network.model.criterion is None
    conv = optimized.network.model.feature_branches.input_conv.weight  # 3x3, 64 -> 32 channels
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_traces_per_shape_limit_and_invalidation(caplog):
    _, model = _model()
    optimized = optimize_model(model, max_compiled_sizes=1)
    small, other = [{"image": _image(64, 96, 4)}], [{"image": _image(64, 128, 5)}]
    with torch.no_grad():
        optimized(small)
        assert len(optimized._compiled) == 1
        with caplog.at_level("WARNING", logger="sfnet_d2.deployment.optimized_model"):
            _check_same_panoptic(optimized, model, other)
        assert len(optimized._compiled) == 1 and "run eagerly" in caplog.text
        optimized.to("cpu")  # moving (or casting) drops the traces, which hold their constants
        assert not optimized._compiled
        _check_same_panoptic(optimized, model, small)
        assert len(optimized._compiled) == 1


def test_predictor_and_eval_only_use_the_optimized_knet(monkeypatch):
    from sfnet_d2.engine import Predictor, defaults
    from sfnet_d2.engine.trainer import Trainer

    cfg = tiny_knet_cfg(**{**RELAXED, "MODEL.WEIGHTS": "random", "DEPLOY.TORCHSCRIPT": "none",
                           "INPUT.MIN_SIZE_TEST": 0})  # the image as it is
    predictor = Predictor(cfg)
    assert isinstance(predictor.inference_model, OptimizedPanopticKNet)
    bgr = _image(80, 140, 6).permute(1, 2, 0).numpy().copy()
    out = predictor(bgr)
    inputs = [{"image": torch.as_tensor(bgr[:, :, ::-1].transpose(2, 0, 1).copy()),
               "height": 80, "width": 140}]  # RGB, as the config's INPUT.FORMAT
    with torch.no_grad():
        plain = predictor.model(inputs)[0]
    _assert_same_panoptic(out, plain, _near_ties(predictor.model, inputs)[0])

    seen = {}
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model: seen.update(m=model) or {}))
    defaults.evaluate(cfg)
    assert isinstance(seen["m"], OptimizedPanopticKNet)
    cfg.defrost()
    cfg.DEPLOY.OPTIMIZE = False
    assert not isinstance(build_inference_model(cfg, predictor.model), OptimizedPanopticKNet)
