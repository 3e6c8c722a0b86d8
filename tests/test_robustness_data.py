"""Data faults: bad files are named; with SKIP_BAD_SAMPLES training goes on and reports them."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper
from sfnet_d2.data.datasets import load_cityscapes_semantic_checked
from sfnet_d2.data.train_stream import (BadSampleError, SkipCollectingLoader, TrainingStream,
                                        shuffled_index_stream)

TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")


@pytest.fixture()
def broken_demo(demo_root, tmp_path):
    """A copy of the demo data with a truncated image and a label of the wrong size."""
    root = tmp_path / "datasets" / "sfnet_demo_cityscapes"
    shutil.copytree(demo_root, root)
    images = sorted(glob.glob(str(root / "leftImg8bit" / "train" / "*" / "*.png")))
    data = open(images[1], "rb").read()
    with open(images[1], "wb") as f:
        f.write(data[: len(data) // 3])
    labels = sorted(glob.glob(str(root / "gtFine" / "train" / "*" / "*_labelTrainIds.png")))
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(labels[4])
    records = load_cityscapes_semantic_checked(str(root / "leftImg8bit" / "train"),
                                               str(root / "gtFine" / "train"))
    return root, records, images[1], labels[4]


def _mapper():
    cfg = make_cfg(DEMO_CONFIG, ["INPUT.SFNET.CROP_SIZE", [32, 32]])
    return SFNetSemanticDatasetMapper(cfg, True)


def test_truncated_image_is_named(broken_demo):
    _, records, bad_image, _ = broken_demo
    record = next(r for r in records if r["file_name"] == bad_image)
    with pytest.raises(OSError, match=f"Cannot read image file {bad_image}"):
        _mapper()(record)
    cfg = make_cfg(DEMO_CONFIG)
    with pytest.raises(OSError, match=f"Cannot read image file {bad_image}"):
        SFNetSemanticDatasetMapper(cfg, False)(record)  # evaluation reads it too


def _stream(records, skip):
    n = len(records)
    return TrainingStream(records, _mapper(), lambda s: shuffled_index_stream(n, s), 2, seed=0,
                          rank=0, world_size=1, skip_bad_samples=skip)


def test_strict_stream_stops_naming_the_file(broken_demo):
    _, records, bad_image, bad_label = broken_demo
    it = iter(_stream(records, skip=False))
    with pytest.raises(BadSampleError) as err:
        for _ in range(len(records)):  # one epoch reaches both bad samples
            next(it)
    assert bad_image in str(err.value) or bad_label in str(err.value)
    assert "SKIP_BAD_SAMPLES" in str(err.value)


def test_skipping_stream_replaces_and_reports_every_bad_sample(broken_demo):
    _, records, bad_image, bad_label = broken_demo
    stream = _stream(records, skip=True)
    loader = SkipCollectingLoader(torch.utils.data.DataLoader(stream, batch_size=None), stream)
    it = iter(loader)
    batches = [next(it) for _ in range(len(records))]  # two epochs of batch 2
    images = [x["file_name"] for b in batches for x in b]
    assert bad_image not in images
    assert all("sfnet_skipped" not in x and x["image"].shape[-2:] == (32, 32)
               for b in batches for x in b)
    skipped = {name for name, _ in loader.skipped}
    bad_label_image = next(r["file_name"] for r in records if r["sem_seg_file_name"] == bad_label)
    assert skipped == {bad_image, bad_label_image} and bad_label_image not in images
    # each bad record comes up once per epoch, and again when it is the replacement of the other
    assert len(loader.skipped) >= 4
    reasons = " ".join(reason for _, reason in loader.skipped)
    assert "Cannot read image file" in reasons and "must match its image size" in reasons


def _train(root, out, *opts):
    env = dict(os.environ, DETECTRON2_DATASETS=str(root.parent), OMP_NUM_THREADS="1")
    cmd = [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, "OUTPUT_DIR", str(out),
           "SOLVER.IMS_PER_BATCH", "4", "INPUT.SFNET.CROP_SIZE", "[64, 64]", "SOLVER.MAX_ITER",
           "4", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()", *opts]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_net_strict_and_skipping(broken_demo, tmp_path):
    root, _, bad_image, _ = broken_demo
    proc = _train(root, tmp_path / "strict")
    assert proc.returncode != 0
    assert "train_net.py: error: Bad training sample" in proc.stderr
    assert "sfnet_demo_cityscapes" in proc.stderr
    proc = _train(root, tmp_path / "skip", "DATALOADER.SFNET.SKIP_BAD_SAMPLES", "True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Skipped a bad training sample" in log
    report = json.loads((tmp_path / "skip" / "skipped_samples.json").read_text())
    assert report and all({"file", "reason"} <= set(r) for r in report)
    assert "bad training sample(s)" in log and os.path.isfile(tmp_path / "skip" / "model_final.pth")
