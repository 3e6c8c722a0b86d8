"""Training and evaluation end to end: loss goes down, --eval-only, --resume, 2-process DDP on CPU."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from helpers import ROOT, make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper

TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_CONFIG = "configs/demo/sfnet_lite_R18_demo.yaml"


@pytest.mark.slow
def test_a_few_iterations_lower_the_loss(demo_datasets):
    torch.manual_seed(0)
    cfg = make_cfg(DEMO_CONFIG, ["INPUT.SFNET.CROP_SIZE", [96, 96],
                                 "DATASETS.TRAIN", (demo_datasets[0],)])
    model = build_model(cfg)
    mapper = SFNetSemanticDatasetMapper(cfg, True)
    batch = [mapper(r) for r in DatasetCatalog.get(demo_datasets[0])[:4]]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def _run_train_net(demo_root, out_dir, *args, num_gpus=1):
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, TRAIN_NET, "--config-file", os.path.join(ROOT, DEMO_CONFIG),
           "--num-gpus", str(num_gpus), *args]
    # 2 images per process: BatchNorm on the PPM's 1x1 pooled maps needs more than one sample
    opts = ["OUTPUT_DIR", str(out_dir), "SOLVER.IMS_PER_BATCH", str(2 * num_gpus),
            "INPUT.SFNET.CROP_SIZE", "[96, 96]", "SOLVER.CHECKPOINT_PERIOD", "3",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.SFNET.OHEM_MIN_KEPT", "5000",
            "SOLVER.WARMUP_ITERS", "0"]
    proc = subprocess.run(cmd + opts, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _copypaste_results(log):
    rows = re.findall(r"copypaste: (.*)", log)
    assert len(rows) >= 2, "no evaluation results in the log"
    keys, values = rows[-2].split(","), [float(v) for v in rows[-1].split(",")]
    return dict(zip(keys, values))


@pytest.fixture(scope="module")
def trained_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_run")
    log = _run_train_net(demo_root, out, "SOLVER.MAX_ITER", "6")
    return out, log


@pytest.mark.slow
def test_training_writes_checkpoints_and_evaluates(trained_run):
    out, log = trained_run
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "model_0000002.pth")
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "Starting training from iteration 0" in log
    assert re.search(r"eta: .* iter: 5", log), "detectron2's ETA logging is missing"
    results = _copypaste_results(log)
    assert 0.0 <= results["IoU"] <= 100.0


@pytest.mark.slow
def test_checkpoints_are_tensor_only_and_keep_the_scheduler(trained_run):
    out, _ = trained_run
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 5
    # poly schedule state saved (detectron2 v0.6 dropped it for torch>=2 schedulers: fixed up)
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6
    # SGD momentum buffers saved (detectron2 v0.6 saved no optimizer state: our Trainer does)
    momentum = [s["momentum_buffer"] for s in ckpt["trainer"]["optimizer"]["state"].values()]
    assert len(momentum) == sum(1 for _ in ckpt["model"].values() if _.is_floating_point()) - sum(
        1 for k in ckpt["model"] if "running_" in k) and any(m.abs().sum() > 0 for m in momentum)
    assert "sem_seg_head.neck.align_module.flow_make.weight" in ckpt["model"]


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation(trained_run, demo_root, tmp_path):
    out, train_log = trained_run
    log = _run_train_net(demo_root, tmp_path, "--eval-only", "MODEL.WEIGHTS",
                         str(out / "model_final.pth"))
    assert _copypaste_results(log) == pytest.approx(_copypaste_results(train_log), abs=1e-6)
    log = _run_train_net(demo_root, tmp_path, "--eval-only", "MODEL.WEIGHTS",
                         str(out / "model_final.pth"), "TEST.SFNET.EVALUATOR", "sem_seg")
    results = _copypaste_results(log)
    assert {"mIoU", "fwIoU", "mACC", "pACC"} <= set(results) and 0 <= results["mIoU"] <= 100


@pytest.mark.slow
def test_resume_continues_at_the_right_iteration(trained_run, demo_root, tmp_path):
    out, _ = trained_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for f in ("model_0000002.pth", "model_final.pth"):
        (resumed / f).write_bytes((out / f).read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000002.pth")  # as if killed after iter 2
    log = _run_train_net(demo_root, resumed, "--resume", "SOLVER.MAX_ITER", "6")
    assert "Starting training from iteration 3" in log
    ckpt = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 5
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6


@pytest.mark.slow
def test_two_process_cpu_training(demo_root, tmp_path):
    # SyncBN as in the Cityscapes configs: on CPU it becomes naiveSyncBN, synced over gloo
    log = _run_train_net(demo_root, tmp_path, "SOLVER.MAX_ITER", "3", "MODEL.RESNETS.NORM",
                         "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN", num_gpus=2)
    assert "NaiveSyncBatchNorm" in log
    assert "Rank of current process: 0. World size: 2" in log
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert 0.0 <= _copypaste_results(log)["IoU"] <= 100.0
