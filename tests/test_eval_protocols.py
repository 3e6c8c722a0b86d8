"""
Inference protocols (sfnet_d2/modeling/test_time_augmentation.py): sliding-window placement and averaging on
hand-computed cases, flip and multi-scale on a model that is neither flip- nor scale-invariant,
exact agreement with whole-image inference on a model whose logits depend on the pixel value
only, and train_net's --eval-only / Trainer.test honouring TEST.SFNET.*.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, SemanticSegmentor
from PIL import Image
from torch import nn

from helpers import ROOT, make_cfg
from sfnet_d2.modeling.test_time_augmentation import (
    SemanticSegmentorWithTTA,
    wrap_with_inference_protocol,
    resize_image,
    sliding_window_spans,
    sliding_windows,
)

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


class _ImageAsFeature(Backbone):
    """Passes the normalised, padded image on as the only feature; pads to multiples of 32."""

    def forward(self, x):
        return {"img": x}

    def output_shape(self):
        return {"img": ShapeSpec(channels=3, stride=1)}

    @property
    def size_divisibility(self):
        return 32


class _PointwiseHead(nn.Module):
    """Logits = 1x1 conv of the normalised pixel: they depend on the pixel value only."""
    ignore_value = 255

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(num_classes, 3, 1, 1, generator=torch.Generator()
                                               .manual_seed(0)))

    def forward(self, features, targets=None):
        return self.conv(features["img"]), {}


class _LocalCoordinateHead(nn.Module):
    """Logits = (x, y) of each pixel inside the model's input: not translation, flip or scale
    invariant, so windows, flips and scales all change it in hand-computable ways."""
    ignore_value = 255

    def forward(self, features, targets=None):
        n, _, h, w = features["img"].shape
        xs = torch.arange(w, dtype=torch.float32).expand(n, 1, h, w)
        ys = torch.arange(h, dtype=torch.float32)[:, None].expand(n, 1, h, w)
        return torch.cat([xs, ys], dim=1), {}


class _Recorder(nn.Module):
    """Records the (h, w) of every image the wrapper passes to the model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, inputs):
        self.sizes.extend(tuple(x["image"].shape[-2:]) for x in inputs)
        return self.model(inputs)


def _segmentor(head):
    return SemanticSegmentor(backbone=_ImageAsFeature(), sem_seg_head=head, pixel_mean=MEAN,
                             pixel_std=STD).eval()


def _infer(model, image, **kwargs):
    wrapper = SemanticSegmentorWithTTA(model, **kwargs).eval()
    with torch.no_grad():
        return wrapper([{"image": image}])[0]["sem_seg"]


def test_window_placement_matches_the_official_cityscapes_layout():
    # eval.py defaults on a 1024x2048 image: stride ceil(832 * 2/3) = 555; along x,
    # ceil((2048-832)/555)+1 = 4 windows at 0, 555, 1110 and 2048-832 = 1216; along y 2 windows
    # at 0 and 1024-832 = 192.
    assert sliding_window_spans(2048, 832, 555) == [(0, 832), (555, 1387), (1110, 1942),
                                                    (1216, 2048)]
    windows = sliding_windows(1024, 2048, 832, 1 / 3)
    assert windows == [(y0, y1, x0, x1) for x0, x1 in sliding_window_spans(2048, 832, 555)
                       for y0, y1 in [(0, 832), (192, 1024)]]
    # a side shorter than the tile: one window of its own length, no padding to the tile
    assert sliding_windows(500, 700, 832, 1 / 3) == [(0, 500, 0, 700)]
    # the official count ceil((100-832)/555)+1 would be 0 windows here; we keep one
    assert sliding_window_spans(100, 832, 555) == [(0, 100)]


def test_sliding_window_coverage_and_averaging_by_hand():
    # 5x7 image, tile 4, overlap 0.5 -> stride 2; x windows [0,4) [2,6) [3,7), y windows [0,4) [1,5)
    windows = sliding_windows(5, 7, 4, 0.5)
    assert sorted({(x0, x1) for _, _, x0, x1 in windows}) == [(0, 4), (2, 6), (3, 7)]
    assert sorted({(y0, y1) for y0, y1, _, _ in windows}) == [(0, 4), (1, 5)]
    count = torch.zeros(5, 7)
    for y0, y1, x0, x1 in windows:
        count[y0:y1, x0:x1] += 1
    expected_count = torch.outer(torch.tensor([1., 2, 2, 2, 1]), torch.tensor([1., 1, 2, 3, 2, 2, 1]))
    assert torch.equal(count, expected_count)

    # The model outputs each pixel's coordinate inside its window; the average at x=3 is
    # (3 + 1 + 0) / 3 from the windows starting at 0, 2 and 3, and so on.
    model = _Recorder(_segmentor(_LocalCoordinateHead()))
    image = torch.zeros(3, 5, 7, dtype=torch.uint8)
    out = _infer(model, image, mode="slide", slide_crop_size=4, slide_overlap=0.5,
                 slide_batch_size=4)
    x_mean = torch.tensor([0, 1, (2 + 0) / 2, (3 + 1 + 0) / 3, (2 + 1) / 2, (3 + 2) / 2, 3])
    y_mean = torch.tensor([0, (1 + 0) / 2, (2 + 1) / 2, (3 + 2) / 2, 3])
    assert torch.allclose(out[0], x_mean.expand(5, 7), atol=1e-6)
    assert torch.allclose(out[1], y_mean[:, None].expand(5, 7), atol=1e-6)
    assert model.sizes == [(4, 4)] * 6


def test_flip_averages_the_two_hand_computed_outputs():
    model = _segmentor(_LocalCoordinateHead())
    image = torch.zeros(3, 6, 9, dtype=torch.uint8)
    xs = torch.arange(9.0).expand(6, 9)
    plain = _infer(model, image)
    assert torch.equal(plain[0], xs)
    # mirrored input: local x is 8 - x after mirroring the output back
    out = _infer(model, image, flip=True)
    assert torch.allclose(out[0], (xs + (8 - xs)) / 2)
    assert torch.allclose(out[1], torch.arange(6.0)[:, None].expand(6, 9))
    slide = _infer(model, image, mode="slide", flip=True, slide_crop_size=4, slide_overlap=0.5)
    assert not torch.allclose(slide[0], out[0])  # windows change the local coordinates


def test_multi_scale_resizes_every_pass_back_to_the_image_size():
    model = _Recorder(_segmentor(_LocalCoordinateHead()))
    image = torch.zeros(3, 6, 10, dtype=torch.uint8)
    scales = [0.5, 0.75, 1.0, 2.0]
    out = _infer(model, image, scales=scales)
    # (int(6 s), int(10 s)): 0.75 truncates 4.5 -> 4 and 7.5 -> 7
    sizes = [(3, 5), (4, 7), (6, 10), (12, 20)]
    assert model.sizes == sizes
    # the logit x' in [0, w_s - 1] resized back with align_corners=True is x * (w_s - 1) / 9
    xs, ys = torch.arange(10.0), torch.arange(6.0)
    x_mean = sum(xs * (w - 1) / 9 for _, w in sizes) / len(sizes)
    y_mean = sum(ys * (h - 1) / 5 for h, _ in sizes) / len(sizes)
    assert out.shape == (2, 6, 10)
    assert torch.allclose(out[0], x_mean.expand(6, 10), atol=1e-5)
    assert torch.allclose(out[1], y_mean[:, None].expand(6, 10), atol=1e-5)
    # "height"/"width" of the input dict (the dataset's size) are honoured, as SemanticSegmentor
    wrapper = SemanticSegmentorWithTTA(model, scales=scales).eval()
    with torch.no_grad():
        resized = wrapper([{"image": image, "height": 12, "width": 20}])[0]["sem_seg"]
    assert resized.shape == (2, 12, 20)


def test_sliding_tile_grows_with_scales_above_one():
    image = torch.zeros(3, 16, 24, dtype=torch.uint8)
    model = _Recorder(_segmentor(_LocalCoordinateHead()))
    _infer(model, image, mode="slide", scales=[0.5, 2.0], slide_crop_size=8, slide_overlap=0.5)
    # 0.5: 8x12 image, tile 8, stride 4 -> 1 x 2 windows; 2.0: 32x48, tile 16, stride 8 -> 3 x 5
    assert model.sizes == [(8, 8)] * 2 + [(16, 16)] * 15
    model.sizes.clear()
    _infer(model, image, mode="slide", scales=[2.0], slide_crop_size=8, slide_overlap=0.5,
           slide_crop_grows_with_scale=False)
    # fixed tile 8, stride 4 on 32x48: ceil(24/4)+1 = 7 by ceil(40/4)+1 = 11 windows
    assert model.sizes == [(8, 8)] * 77


def test_every_protocol_equals_whole_image_on_a_pointwise_model():
    torch.manual_seed(0)
    head = _PointwiseHead()
    model = _segmentor(head)
    # 37x50 is not a multiple of 32: the model pads and crops back (its own preprocessing)
    image = torch.randint(0, 256, (3, 37, 50), dtype=torch.uint8)
    whole = _infer(model, image)
    normalised = (image.float() - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None,
                                                                                         None]
    by_hand = torch.einsum("kc,chw->khw", head.conv.weight[:, :, 0, 0], normalised) + \
        head.conv.bias[:, None, None]
    assert torch.allclose(whole, by_hand, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model([{"image": image}])[0]["sem_seg"], whole)
    for kwargs in [dict(flip=True), dict(mode="slide", slide_crop_size=16),
                   dict(mode="slide", slide_crop_size=20, slide_overlap=0.5, flip=True,
                        slide_batch_size=3),
                   dict(mode="slide", slide_crop_size=64)]:
        out = _infer(model, image, **kwargs)
        assert torch.allclose(out, whole, atol=1e-5), kwargs
        assert torch.equal(out.argmax(0), whole.argmax(0)), kwargs
    # resizing changes a non-constant image; a constant image stays constant at every scale
    constant = torch.full((3, 37, 50), 0, dtype=torch.uint8)
    constant[0], constant[1], constant[2] = 200, 90, 30
    whole = _infer(model, constant)
    for mode in ("whole", "slide"):
        out = _infer(model, constant, mode=mode, scales=[0.5, 0.75, 1.0, 2.0], flip=True,
                     slide_crop_size=24)
        assert torch.allclose(out, whole, atol=1e-5), mode
        assert torch.equal(out.argmax(0), whole.argmax(0))


def test_image_resize_matches_pillow_bilinear():
    rng = np.random.default_rng(0)
    array = (rng.random((40, 61, 3)) * 255).astype(np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    for scale in (0.5, 0.75, 2.0):
        h, w = int(40 * scale), int(61 * scale)
        ours = resize_image(tensor, (h, w))
        assert ours.dtype == torch.uint8 and ours.shape == (3, h, w)
        pil = np.asarray(Image.fromarray(array).resize((w, h), Image.BILINEAR))
        diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil.astype(int))
        assert diff.max() <= 1, scale  # Pillow's fixed-point rounding
        # a plain (non-antialiased) bilinear shrink would differ far more at 0.5
    assert resize_image(tensor, (40, 61)) is tensor


def test_config_selects_and_validates_the_protocol():
    model = _segmentor(_PointwiseHead())
    cfg = make_cfg()
    assert wrap_with_inference_protocol(cfg, model) is model  # default = SemanticSegmentor's own
    cfg.TEST.SFNET.MODE = "slide"
    wrapper = wrap_with_inference_protocol(cfg, model)
    assert isinstance(wrapper, SemanticSegmentorWithTTA) and wrapper.slide_crop_size == 832
    assert wrapper.slide_overlap == pytest.approx(1 / 3) and wrapper.scales == (1.0,)
    assert math.ceil(832 * (1 - wrapper.slide_overlap)) == 555
    cfg.TEST.SFNET.MODE = "sliding"
    with pytest.raises(ValueError, match="TEST.SFNET.MODE='sliding'"):
        wrap_with_inference_protocol(cfg, model)
    cfg.TEST.SFNET.MODE = "whole"
    cfg.TEST.SFNET.SLIDE_OVERLAP = 1.0
    with pytest.raises(ValueError, match="TEST.SFNET.SLIDE_OVERLAP"):
        SemanticSegmentorWithTTA(cfg, model)
    cfg.TEST.SFNET.SLIDE_OVERLAP = 0.5
    cfg.TEST.AUG.ENABLED = True
    with pytest.raises(ValueError, match="TEST.SFNET.SCALES"):
        wrap_with_inference_protocol(cfg, model)
    with pytest.raises(RuntimeError, match="inference only"):
        SemanticSegmentorWithTTA(model).train()([{"image": torch.zeros(3, 4, 4)}])


DEMO_CONFIG = "configs/demo/sfnet_lite_R18_demo.yaml"
TTA_OPTS = ["TEST.SFNET.MODE", "slide", "TEST.SFNET.SLIDE_CROP_SIZE", "96",
            "TEST.SFNET.SCALES", "[0.5, 1.0]", "TEST.SFNET.FLIP", "True",
            "TEST.SFNET.SLIDE_BATCH_SIZE", "4", "TEST.SFNET.EVALUATOR", "sem_seg"]


@pytest.mark.slow
def test_eval_only_and_trainer_test_use_the_configured_protocol(demo_root, demo_datasets,
                                                                tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from sfnet_d2.engine import Trainer

    # a randomly initialised demo model (its predictions vary over the image), saved once
    torch.manual_seed(0)
    cfg = make_cfg(DEMO_CONFIG, ["DATASETS.TEST", (demo_datasets[1],), "OUTPUT_DIR",
                                 str(tmp_path), "DATALOADER.NUM_WORKERS", 0] + TTA_OPTS)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random_init")

    # in process: Trainer.test (also what the in-training evaluation hook calls)
    tta = Trainer.test(cfg, model)["sem_seg"]
    cfg.defrost()
    cfg.TEST.SFNET.MODE, cfg.TEST.SFNET.SCALES, cfg.TEST.SFNET.FLIP = "whole", [1.0], False
    whole = Trainer.test(cfg, model)["sem_seg"]
    # (compared key by key: the dicts hold NaN for classes absent from the data)
    assert abs(tta["pACC"] - whole["pACC"]) > 0.1 and abs(tta["mIoU"] - whole["mIoU"]) > 0.1

    # train_net.py --eval-only on the same weights and data (the demo val split files)
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "projects", "SFNet", "train_net.py"),
           "--config-file", os.path.join(ROOT, DEMO_CONFIG), "--eval-only",
           "MODEL.WEIGHTS", str(tmp_path / "random_init.pth"), "OUTPUT_DIR", str(tmp_path / "ev"),
           "DATALOADER.NUM_WORKERS", "0", *TTA_OPTS]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Inference protocol: sliding window 96x96" in log
    rows = [line.split("copypaste: ")[1] for line in log.splitlines() if "copypaste: " in line]
    eval_only = dict(zip(rows[-2].split(","), map(float, rows[-1].split(","))))
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert eval_only[key] == pytest.approx(tta[key], abs=1e-3), key  # 4 decimals printed
