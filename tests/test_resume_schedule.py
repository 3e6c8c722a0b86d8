"""The recovery advice of the non-finite loss stop works when followed, and --eval-only needs
weights (issue: every command's advice is tested by following it)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "INPUT.SFNET.CROP_SIZE", "[64, 64]",
         "DATALOADER.NUM_WORKERS", "0", "MODEL.SFNET.OHEM_MIN_KEPT", "2000", "DATASETS.TEST",
         "()", "SEED", "3", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3"]
# Iterations 0-2 run at BASE_LR x 1e-40 (constant warm-up), iteration 3 at BASE_LR = 1e30: its
# update breaks the weights and iteration 4's loss is not finite. model_0000002.pth (after
# iteration 2) is the last checkpoint, with sane weights.
EXPLODING = ["SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_METHOD", "constant",
             "SOLVER.WARMUP_FACTOR", "1e-40", "SOLVER.WARMUP_ITERS", "3"]

pytestmark = pytest.mark.slow


def _run(demo_root, args):
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _learning_rates(out_dir):
    rates = {}
    with open(os.path.join(out_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            if "lr" in record:
                rates[record["iteration"]] = record["lr"]
    return rates


@pytest.mark.slow
def test_following_the_non_finite_loss_advice_resumes_with_the_new_learning_rate(demo_root,
                                                                                 tmp_path):
    out = str(tmp_path)
    code, log = _run(demo_root, SMALL + EXPLODING + ["OUTPUT_DIR", out])
    assert code != 0
    assert "Non-finite loss at iteration 4" in log, log[-3000:]
    assert "--resume SOLVER.BASE_LR" in log  # the advice names the route that works
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"

    # The advised command: the same one with --resume and a lower SOLVER.BASE_LR.
    new_lr = 0.001
    code, log = _run(demo_root, ["--resume"] + SMALL + EXPLODING[2:] +
                     ["SOLVER.BASE_LR", str(new_lr), "OUTPUT_DIR", out])
    assert code == 0, log[-4000:]
    assert "Starting training from iteration 3" in log
    assert "changed schedule" in log and "1e+30 -> 0.001" in log, log[-4000:]
    assert (tmp_path / "model_final.pth").exists()
    # The last resumed iteration ran at the config's poly rate of the NEW base learning rate
    # (detectron2 writes metrics.json at the last iteration; WarmupPolyLR after warm-up:
    # base * (1 - it / MAX_ITER) ** SOLVER.POLY_LR_POWER).
    from sfnet_d2.engine import build_config

    power = build_config(DEMO_CONFIG).SOLVER.POLY_LR_POWER
    rates = _learning_rates(out)
    assert rates[5] == pytest.approx(new_lr * (1 - 5 / 6) ** power, rel=1e-6), rates


@pytest.mark.slow
def test_eval_only_without_weights_names_model_weights(demo_root, tmp_path):
    code, log = _run(demo_root, ["--eval-only", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)])
    assert code != 0
    assert "MODEL.WEIGHTS is empty" in log and "MODEL.WEIGHTS random" in log, log[-3000:]


@pytest.mark.slow
def test_eval_only_with_random_weights_on_purpose_is_allowed_and_logged(demo_root, tmp_path):
    code, log = _run(demo_root, ["--eval-only", "MODEL.WEIGHTS", "random", "OUTPUT_DIR",
                                 str(tmp_path)])
    assert code == 0, log[-4000:]
    assert "randomly initialised model, as asked" in log
    assert "IoU" in log  # the evaluation ran and reported its metric
