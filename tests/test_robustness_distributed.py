"""Distributed training on CPU (gloo): a worker that dies makes the whole job fail promptly."""
import os
import signal
import subprocess
import sys
import time

import psutil

from conftest import ROOT

TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")


def test_a_killed_worker_fails_the_job_promptly(demo_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")
    log_path = tmp_path / "log.txt"
    cmd = [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, "--num-gpus", "2",
           "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.IMS_PER_BATCH", "4",
           "INPUT.SFNET.CROP_SIZE", "[64, 64]", "DATALOADER.NUM_WORKERS", "0",
           "SOLVER.MAX_ITER", "100000", "TEST.EVAL_PERIOD", "0"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "Starting training from iteration" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)
        time.sleep(3)  # inside the training loop, where ranks meet in gradient all-reduces
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "python" in p.name().lower() and p.cmdline() and "resource_tracker"
                   not in " ".join(p.cmdline())]
        assert len(workers) >= 2, [p.cmdline() for p in workers]
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=120)
        took = time.time() - killed_at
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
    text = log_path.read_text()
    assert proc.returncode != 0
    assert "terminated with signal SIGKILL" in text, text[-3000:]
    assert took < 60, f"the job took {took:.0f} s to fail after a worker died"
