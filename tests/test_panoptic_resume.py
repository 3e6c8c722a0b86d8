"""K-Net (panoptic) training on the resumable training stream: samples are a function of (seed,
position) only, bad samples are named or skipped, batches of differently sized crops train, and
a run killed with SIGKILL and resumed ends with the uninterrupted run's weights, bit for bit."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image

from helpers import ROOT, make_cfg
from sfnet_d2.data import KNetPanopticDatasetMapper, build_train_loader, generate_demo_coco_panoptic
from sfnet_d2.data.datasets.panoptic import register_coco_panoptic_by_paths
from sfnet_d2.data.train_stream import (BadSampleError, SkipCollectingLoader, TrainingStream,
                                        shuffled_index_stream)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny tensors

TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_COCO = "configs/demo/knet_sfnet_STDC1_demo_coco.yaml"
# a tiny K-Net on 64x128 images; the demo's ms_crop augmentation (flip, random crop with
# probability 0.5, resize) gives crops of different sizes within a batch
TINY = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.KNET.NUM_PROPOSALS", "6",
        "MODEL.KNET.FEAT_CHANNELS", "32", "MODEL.KNET.FFN_CHANNELS", "64",
        "MODEL.KNET.NUM_STAGES", "2", "MODEL.KNET.STAGE_LOSS_WEIGHTS", "[1.0, 1.0]",
        "INPUT.MIN_SIZE_TRAIN", "(48, 64)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.KNET.CROP_PRE_RESIZE", "[64]", "INPUT.KNET.CROP_SIZE_RANGE", "[40, 64]",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(5,)",
        "DATASETS.TEST", "()"]
B = 2  # SOLVER.IMS_PER_BATCH above


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """$DETECTRON2_DATASETS holding the demo COCO panoptic data: 4 train scenes of 64x128."""
    root = tmp_path_factory.mktemp("panoptic_datasets")
    coco = root / "sfnet_demo_coco_panoptic"
    generate_demo_coco_panoptic(str(coco), num_train=4, num_val=1, height=64, width=128)
    _register("test_pan_stream_train", coco)
    return root


def _register(name, coco, json_file=None):
    register_coco_panoptic_by_paths(
        name, str(coco / "train2017"), str(coco / "panoptic_train2017"),
        str(json_file or coco / "annotations" / "panoptic_train2017.json"))


def _cfg(train="test_pan_stream_train", extra=()):
    return make_cfg(DEMO_COCO, TINY + ["DATASETS.TRAIN", (train,), "MODEL.STDC.NORM", "BN",
                                       *extra])


def _stream(cfg, seed=5, skip=False):
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    n = len(records)
    return TrainingStream(records, KNetPanopticDatasetMapper(cfg, True),
                          lambda s: shuffled_index_stream(n, s), B, seed, rank=0, world_size=1,
                          skip_bad_samples=skip)


def _same_sample(a, b):
    return (a["file_name"] == b["file_name"] and torch.equal(a["image"], b["image"])
            and torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
            and torch.equal(a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor))


def test_panoptic_samples_depend_only_on_seed_and_position(coco_root):
    cfg = _cfg()
    it = iter(_stream(cfg))
    batches = [next(it) for _ in range(6)]
    # the same stream resumed at batch 3, with the global RNGs somewhere else entirely
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    resumed = _stream(cfg)
    resumed.set_state(5, 3 * B)
    it = iter(resumed)
    for expected in batches[3:]:
        got = next(it)
        assert all(_same_sample(a, b) for a, b in zip(expected, got))
    # control: the augmentation is random (not the same crop everywhere) ...
    sizes = {tuple(x["image"].shape[-2:]) for b in batches for x in b}
    assert len(sizes) > 1, sizes
    # ... and another seed gives other samples
    other = next(iter(_stream(cfg, seed=6)))
    assert not all(_same_sample(a, b) for a, b in zip(batches[0], other))


def test_batches_of_differently_sized_crops_train(coco_root):
    cfg = _cfg()
    it = iter(_stream(cfg))
    batch = next(b for b in (next(it) for _ in range(20))
                 if b[0]["image"].shape != b[1]["image"].shape)  # no aspect-ratio grouping
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.fixture()
def broken_coco(coco_root, tmp_path):
    """A copy of the demo data with a truncated image and a panoptic PNG of the wrong size."""
    coco = tmp_path / "sfnet_demo_coco_panoptic"
    shutil.copytree(coco_root / "sfnet_demo_coco_panoptic", coco)
    images = sorted((coco / "train2017").iterdir())
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 3])
    pngs = sorted((coco / "panoptic_train2017").iterdir())
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(pngs[2])
    _register("test_pan_broken_train", coco)
    return str(images[1]), str(images[2]), str(pngs[2])


def test_bad_panoptic_sample_stops_naming_the_file(broken_coco):
    bad_image, _, bad_png = broken_coco
    it = iter(_stream(_cfg(train="test_pan_broken_train")))
    with pytest.raises(BadSampleError) as err:
        for _ in range(2):  # one epoch of 4 records reaches both bad samples
            next(it)
    message = str(err.value)
    assert (f"Cannot read image file {bad_image}" in message or bad_png in message), message
    assert "SKIP_BAD_SAMPLES" in message


def test_bad_panoptic_samples_are_skipped_and_reported(broken_coco):
    bad_image, image_of_bad_png, bad_png = broken_coco
    stream = _stream(_cfg(train="test_pan_broken_train"), skip=True)
    loader = SkipCollectingLoader(torch.utils.data.DataLoader(stream, batch_size=None), stream)
    it = iter(loader)
    batches = [next(it) for _ in range(4)]  # two epochs
    used = {x["file_name"] for b in batches for x in b}
    assert bad_image not in used and image_of_bad_png not in used
    assert all("sfnet_skipped" not in x and len(x["instances"]) > 0 for b in batches for x in b)
    assert {name for name, _ in loader.skipped} == {bad_image, image_of_bad_png}
    reasons = " ".join(reason for _, reason in loader.skipped)
    assert f"Cannot read image file {bad_image}" in reasons and bad_png in reasons


def test_class_uniform_sampling_is_refused_for_panoptic(coco_root):
    assert make_cfg(DEMO_COCO).DATALOADER.SFNET.CLASS_UNIFORM_PCT == 0.0  # K-Net configs
    cfg = _cfg(extra=["DATALOADER.SFNET.CLASS_UNIFORM_PCT", "0.5"])
    with pytest.raises(ValueError, match=r"DATALOADER\.SFNET\.CLASS_UNIFORM_PCT=0\.5 .*"
                                         r"semantic segmentation only.*KNetPanopticDatasetMapper"):
        build_train_loader(cfg)


# ---- kill and resume (train_net.py subprocesses) ------------------------------------------------

# 2 loader workers, fixed seed; 6 iterations leave time to kill the run between checkpoints
RUN_OPTS = TINY + ["DATALOADER.NUM_WORKERS", "2", "SEED", "3", "SOLVER.MAX_ITER", "6"]


def _cmd(out_dir, *extra, resume=False):
    return ([sys.executable, TRAIN_NET, "--config-file", os.path.join(ROOT, DEMO_COCO)]
            + (["--resume"] if resume else []) + RUN_OPTS + ["OUTPUT_DIR", str(out_dir), *extra])


def _env(root):
    return dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")


def _start(root, out_dir, *extra):
    # the log goes to a file: a pipe nobody reads while the runs go on would fill and block them
    with open(f"{out_dir}.log", "w") as log:
        return subprocess.Popen(_cmd(out_dir, *extra), env=_env(root), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc, out_dir):
    proc.wait(timeout=600)
    log = open(f"{out_dir}.log").read()
    assert proc.returncode == 0, log[-4000:]
    return log


def _final(out_dir):
    return torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=True)


def _equal(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_killed_panoptic_run_resumes_to_the_same_weights(coco_root, tmp_path):
    # the uninterrupted run, the control with another seed and the run to kill, side by side
    reference = _start(coco_root, tmp_path / "reference", "SOLVER.CHECKPOINT_PERIOD", "100")
    other = _start(coco_root, tmp_path / "other_seed", "SEED", "4",
                   "SOLVER.CHECKPOINT_PERIOD", "100")
    killed_dir = tmp_path / "killed"
    killed = _start(coco_root, killed_dir, "SOLVER.CHECKPOINT_PERIOD", "1")
    try:
        deadline = time.time() + 300
        while not (killed_dir / "model_0000002.pth").exists():
            assert killed.poll() is None and time.time() < deadline, "training ended early"
            time.sleep(0.02)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the trainer and its data-loader workers
        killed.wait()
    _finish(reference, tmp_path / "reference")
    _finish(other, tmp_path / "other_seed")
    assert not (killed_dir / "model_final.pth").exists(), "killed too late to test anything"
    last = (killed_dir / "last_checkpoint").read_text()
    resumed = subprocess.run(_cmd(killed_dir, "SOLVER.CHECKPOINT_PERIOD", "1", resume=True),
                             env=_env(coco_root), cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert f"Starting training from iteration {int(last[6:13]) + 1}" in log

    want, got = _final(tmp_path / "reference"), _final(killed_dir)
    assert want["iteration"] == got["iteration"] == 5
    # the stream seed is drawn from SEED (detectron2's shared_random_seed); 6 batches of B
    assert want["data_stream"] == got["data_stream"] and got["data_stream"]["position"] == 6 * B
    assert _same_weights(want["model"], got["model"])
    # the AdamW moments too, so the equality is not only of the last step's outcome
    moments = want["trainer"]["optimizer"]["state"]
    assert moments and moments.keys() == got["trainer"]["optimizer"]["state"].keys()
    assert all(_equal(moments[i][k], v)
               for i, s in got["trainer"]["optimizer"]["state"].items() for k, v in s.items())
    # control: another seed gives other weights, so the equality above means something
    assert not _same_weights(want["model"], _final(tmp_path / "other_seed")["model"])
