"""The network part (sfnet_d2/deployment/network_part.py: padding rule, pre-processing, one part
per meta-architecture) and TorchScript / ONNX export: exported logits equal the PyTorch model's,
the graph is static."""
import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, make_cfg, run_command
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from torch import nn

from sfnet_d2.deployment import (
    ExportVerificationError,
    PanopticKNetNetworkPart,
    SemanticNetworkPart,
    StaticAdaptiveAvgPool2d,
    adaptive_pool_matrix,
    build_network_part,
    network_part_of,
    normalize_and_pad,
    optimize_model,
    padding_divisibility,
    export_onnx,
    export_torchscript,
    list_images,
    load_exported,
    load_images_for_export,
    verify_export,
)
from sfnet_d2.deployment.export_job import export_file_path
from sfnet_d2.modeling.alignment.flow_alignment import flow_warp

HEIGHT, WIDTH = 64, 128
CONFIGS = {
    "sfnet_R18": "configs/cityscapes/semantic/sfnet_R18.yaml",
    "sfnet_lite_R18": "configs/cityscapes/semantic/sfnet_lite_R18.yaml",
    "sfnet_DF1": "configs/cityscapes/semantic/sfnet_DF1.yaml",
}
NUM_WARPS = {"sfnet_R18": 3, "sfnet_lite_R18": 2, "sfnet_DF1": 2}  # FAMs x1, GD-FAM x2


def _randomize_norms(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model's BN is almost the
    identity) and a scaled classifier, so that logits are O(1-10) and 1e-4 is a strict bound."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    model.sem_seg_head.predictor.weight.data.mul_(10.0)
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_and_name(request):
    torch.manual_seed(0)
    model = build_model(make_cfg(CONFIGS[request.param])).eval()
    return _randomize_norms(model), request.param


@pytest.fixture(scope="module")
def demo_images(demo_root):
    files = list_images(os.path.join(demo_root, "leftImg8bit", "val", "valcity"))[:2]
    return load_images_for_export(files, HEIGHT, WIDTH, "RGB")


# --- the network part's contract ------------------------------------------------------------

def test_normalize_and_pad_equals_detectron2_image_list():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1)
    std = torch.tensor([60.0, 55.0, 50.0]).view(3, 1, 1)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
              for h, w in [(45, 70), (64, 33), (10, 96)]]
    for divisibility in (0, 1, 32, 5):
        expected = ImageList.from_tensors([(x - mean) / std for x in images], divisibility)
        got, sizes = normalize_and_pad(images, mean, std, divisibility)
        assert torch.equal(got, expected.tensor) and sizes == expected.image_sizes
        # one image, and a batch tensor of one size
        got, sizes = normalize_and_pad(images[:1], mean, std, divisibility)
        assert torch.equal(got, ImageList.from_tensors([(images[0] - mean) / std],
                                                       divisibility).tensor)
        batch = torch.stack([images[0], images[0].flip(0)])
        got, sizes = normalize_and_pad(batch, mean, std, divisibility)
        assert torch.equal(got, ImageList.from_tensors([(x - mean) / std for x in batch],
                                                       divisibility).tensor)
        assert sizes == [(45, 70)] * 2
    # hand-computed: 1x2 image, divisibility 4 -> 4x4, zeros after the normalisation
    got, _ = normalize_and_pad(torch.full((1, 1, 1, 2), 7.0), torch.tensor(3.0).view(1, 1, 1),
                               torch.tensor(2.0).view(1, 1, 1), 4)
    assert got.shape == (1, 1, 4, 4) and got.sum() == 4.0 and got[0, 0, 0, :2].tolist() == [2, 2]
    with pytest.raises(ValueError, match="no image"):
        normalize_and_pad([], mean, std, 32)


KNET_CONFIG = "configs/demo/knet_sfnet_STDC1_demo_coco.yaml"


def test_padding_rule_and_parts_of_each_meta_architecture():
    semantic = build_model(make_cfg(CONFIGS["sfnet_lite_R18"])).eval()
    # SemanticSegmentor pads to its backbone's size_divisibility (detectron2 v0.6)
    assert padding_divisibility(semantic) == semantic.backbone.size_divisibility == 32
    # the optimised copy keeps its model's rule
    assert padding_divisibility(optimize_model(semantic, torchscript="none")) == 32
    part = network_part_of(semantic)
    assert isinstance(part, SemanticNetworkPart) and part.backbone is semantic.backbone
    knet = build_model(make_cfg(KNET_CONFIG)).eval()
    assert padding_divisibility(knet) == knet.size_divisibility == 32
    knet.size_divisibility = 64  # the model's own attribute wins over its backbone's
    assert padding_divisibility(knet) == 64
    assert isinstance(network_part_of(knet), PanopticKNetNetworkPart)
    with pytest.raises(ValueError, match="No network part for MODEL.META_ARCHITECTURE=Linear"):
        network_part_of(nn.Linear(2, 2))


def test_semantic_part_on_preprocessed_images_equals_the_model():
    """The same part (and pre-processing) serves the optimised path, FLOPs and the benchmark."""
    torch.manual_seed(0)
    model = _randomize_norms(build_model(make_cfg(CONFIGS["sfnet_R18"])).eval())
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)  # padded to 64x96
    with torch.no_grad():
        expected = model([{"image": image}])[0]["sem_seg"]
        padded, sizes = normalize_and_pad([image], model.pixel_mean, model.pixel_std,
                                          padding_divisibility(model))
        (logits,) = network_part_of(model)(padded)
    assert padded.shape == (1, 3, 64, 96) and sizes == [(40, 70)]
    assert torch.equal(logits[0, :, :40, :70], expected)
    assert optimize_model(model, torchscript="none").network.backbone is not model.backbone
    assert isinstance(optimize_model(model, torchscript="none").network, SemanticNetworkPart)


# --- static adaptive pooling ---------------------------------------------------------------

def test_adaptive_pool_matrix_hand_computed():
    # PyTorch windows for 5 -> 3: [0, 2), [1, 4), [3, 5) (overlapping)
    expected = np.array([[1 / 2, 1 / 2, 0, 0, 0],
                         [0, 1 / 3, 1 / 3, 1 / 3, 0],
                         [0, 0, 0, 1 / 2, 1 / 2]])
    np.testing.assert_allclose(adaptive_pool_matrix(5, 3), expected)


@pytest.mark.parametrize("size,bins", [((2, 4), 6), ((32, 64), 3), ((7, 5), (2, 3)), ((6, 6), 1)])
def test_static_pool_equals_adaptive_avg_pool(size, bins):
    x = torch.randn(2, 3, *size)
    np.testing.assert_allclose(StaticAdaptiveAvgPool2d(bins)(x).numpy(),
                               F.adaptive_avg_pool2d(x, bins).numpy(), atol=1e-6)


# --- whole models, both formats ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch_on_demo_images(model_and_name, demo_images, fmt, tmp_path):
    model, name = model_and_name
    # as the export command builds it by default (DEPLOY.OPTIMIZE): BN folded
    part = build_network_part(model, HEIGHT, WIDTH, fold_batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
    if fmt == "torchscript":
        path = export_torchscript(part, str(tmp_path / "model.ts"))
    else:
        path = export_onnx(part, str(tmp_path / "model.onnx"), opset=16)
        _check_static_onnx_graph(path, NUM_WARPS[name])
    exported = load_exported(path, part.output_names)
    report = verify_export(exported, part, demo_images, model=model, atol=1e-4, keep_outputs=True)
    assert report["max_abs_diff"]["sem_seg"] <= 1e-4
    # the comparison is meaningful: logits are far from zero and differ between images
    out = [outputs[0] for outputs in report["outputs"]]
    assert out[0].shape == (1, 19, HEIGHT, WIDTH)
    assert np.abs(out[0]).max() > 1.0
    assert np.abs(out[0] - out[1]).max() > 1e-2


def _check_static_onnx_graph(path, num_warps):
    graph = onnx.load(path)
    assert graph.opset_import[0].version == 16
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["GridSample"] == num_warps
    # The official warp builds its grid with torch.linspace from the feature size: in a static
    # export it must be a constant, not a Range/loop computed at run time; no adaptive pooling.
    assert not {"Range", "Loop", "If", "NonZero", "Pad", "AveragePool", "ScatterND"} & set(ops), ops
    inferred = onnx.shape_inference.infer_shapes(graph, data_prop=True).graph
    values = list(inferred.value_info) + list(inferred.output)
    dynamic = [v.name for v in values
               if any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)]
    assert not dynamic, dynamic[:5]
    out_dims = [d.dim_value for d in inferred.output[0].type.tensor_type.shape.dim]
    assert out_dims == [1, 19, HEIGHT, WIDTH]


@pytest.mark.slow
def test_size_not_multiple_of_32_is_padded_like_the_model(demo_images, tmp_path):
    torch.manual_seed(1)
    model = _randomize_norms(build_model(make_cfg(CONFIGS["sfnet_lite_R18"])).eval(), seed=1)
    h, w = 40, 70  # padded to 64x96 inside, cropped back
    part = build_network_part(model, h, w)
    assert (part.padded_height, part.padded_width) == (64, 96)
    images = [np.ascontiguousarray(im[:h, :w]) for im in demo_images]
    exported = load_exported(export_onnx(part, str(tmp_path / "m.onnx")), part.output_names)
    report = verify_export(exported, part, images, model=model, atol=1e-4)
    assert report["max_abs_diff"]["sem_seg"] <= 1e-4


def test_flow_warp_alone_exports_with_nonzero_flow(tmp_path):
    """The warp (linspace grid + GridSample) on its own: ONNX equals eager for a real flow."""

    class Warp(nn.Module):
        def forward(self, feature, flow):
            return flow_warp(feature, flow, (12, 20), align_corners=True)

    feature, flow = torch.randn(1, 4, 6, 10), torch.randn(1, 2, 12, 20) * 3
    path = str(tmp_path / "warp.onnx")
    torch.onnx.export(Warp(), (feature, flow), path, opset_version=16, dynamo=False,
                      input_names=["feature", "flow"])
    import onnxruntime as ort

    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"feature": feature.numpy(), "flow": flow.numpy()})[0]
    np.testing.assert_allclose(got, Warp()(feature, flow).numpy(), atol=1e-5)
    assert "Range" not in {n.op_type for n in onnx.load(path).graph.node}


# --- errors ------------------------------------------------------------------------------

@pytest.mark.slow
def test_errors_name_the_problem(tmp_path, demo_images):
    model = build_model(make_cfg(CONFIGS["sfnet_lite_R18"])).eval()
    part = build_network_part(model, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="GridSample"):
        export_onnx(part, str(tmp_path / "m.onnx"), opset=13)
    ts = load_exported(export_torchscript(part, str(tmp_path / "m.ts")), part.output_names)
    with pytest.raises(Exception, match=r"exported for input shape \[1, 3, 64, 128\]"):
        ts(torch.zeros(1, 3, 32, 64))
    # a verification that must fail: compare against a model with other weights
    other = _randomize_norms(build_model(make_cfg(CONFIGS["sfnet_lite_R18"])).eval(), seed=5)
    with pytest.raises(ExportVerificationError, match="differ from PyTorch"):
        verify_export(ts, build_network_part(other, HEIGHT, WIDTH), demo_images[:1], model=other)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        list_images(str(tmp_path / "nope.png"))


@pytest.mark.slow
def test_export_command(demo_root, tmp_path):
    out = tmp_path / "export"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = run_command(
        "export_model", "--config-file", os.path.join(ROOT, CONFIGS["sfnet_lite_R18"]),
        "--format", "onnx", "--height", "64", "--width", "128", "--output", out,
        "--verify-images", os.path.join(demo_root, "leftImg8bit", "val", "valcity"),
        "--num-verify-images", "1",
        "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.WEIGHTS", "random", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert sorted(os.listdir(out)) == ["model.json", "model.onnx"]
    info = json.loads((out / "model.json").read_text())
    assert info["input"]["shape"] == [1, 3, 64, 128] and info["outputs"] == ["sem_seg"]
    assert info["onnx_opset"] == 17
    # a second export to the same folder is refused before the model is built, naming the flag
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_file_path(str(out), "onnx")  # what export_model.py checks first
    proc = run_command("export_model", "--config-file", CONFIGS["sfnet_lite_R18"], "--format",
                       "onnx", "--height", "64", "--width", "128", "--output", out, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"export_model.py: error: {out / 'model.onnx'} exists; pass --overwrite to replace it")


# --- the panoptic model's network part -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_panoptic_knet_network_part(fmt, tmp_path):
    if not os.path.isfile(os.path.join(os.path.dirname(__file__), "..", KNET_CONFIG)):
        pytest.skip(f"{KNET_CONFIG} (the panoptic demo model) is not in this checkout")
    torch.manual_seed(0)
    model = build_model(make_cfg(KNET_CONFIG)).eval()
    h, w = 60, 100  # padded to 64x128 inside
    part = build_network_part(model, h, w, fold_batchnorm=True)  # compared with the unfolded model
    assert part.output_names == ("cls_logits", "mask_probs")
    path = str(tmp_path / ("m.ts" if fmt == "torchscript" else "m.onnx"))
    (export_torchscript if fmt == "torchscript" else export_onnx)(part, path)
    exported = load_exported(path, part.output_names)
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    report = verify_export(exported, part, [image], model=model, atol=1e-4)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    # the exported outputs + the Python panoptic merge = the model's own panoptic output
    cls_logits, mask_probs = exported(image.transpose(2, 0, 1)[None].astype(np.float32))
    assert mask_probs.shape[-2:] == (h, w) and cls_logits.shape[0] == 1
    with torch.no_grad():
        expected = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy())}])[0]
        got = model.panoptic_from_kernels(torch.from_numpy(cls_logits[0]),
                                          torch.from_numpy(mask_probs[0]))
    pan_expected, segments_expected = expected["panoptic_seg"]
    pan_got, segments_got = got["panoptic_seg"]
    assert (pan_expected == pan_got).float().mean() > 0.999
    assert [s["category_id"] for s in segments_got] == [s["category_id"] for s in segments_expected]
