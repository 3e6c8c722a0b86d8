"""Interrupted training resumes exactly: same data stream, same weights as an uninterrupted run
(the panoptic counterpart is test_panoptic_resume.py)."""
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

from helpers import ROOT
from sfnet_d2.data.train_stream import SkipCollectingLoader, TrainingStream, shuffled_index_stream

TRAIN_NET = os.path.join(ROOT, "projects", "SFNet", "train_net.py")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")
# the full augmentation recipe and class-uniform sampling, 2 loader workers, fixed seed
OPTS = ["SOLVER.IMS_PER_BATCH", "2", "INPUT.SFNET.CROP_SIZE", "[64, 64]",
        "INPUT.SFNET.COLOR_JITTER.ENABLED", "True", "INPUT.SFNET.GAUSSIAN_BLUR.ENABLED", "True",
        "DATALOADER.SFNET.CLASS_UNIFORM_PCT", "0.5", "DATALOADER.SFNET.CLASS_UNIFORM_MODE",
        "random", "DATALOADER.SFNET.CLASS_UNIFORM_TILE", "64", "DATALOADER.NUM_WORKERS", "2",
        "MODEL.SFNET.OHEM_MIN_KEPT", "2000", "DATASETS.TEST", "()", "SEED", "3",
        "SOLVER.MAX_ITER", "6"]


def _env(demo_root):
    return dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")


def _run(demo_root, out_dir, resume=False, extra=()):
    cmd = [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG]
    cmd += ["--resume"] if resume else []
    cmd += OPTS + ["OUTPUT_DIR", str(out_dir), *extra]
    proc = subprocess.run(cmd, env=_env(demo_root), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_final_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa["iteration"] == wb["iteration"] == 5
    # the stream's checkpointable: same seed, and 6 iterations of 2 images handed out
    assert wa["data_stream"] == wb["data_stream"] and wb["data_stream"]["position"] == 12
    diff = {k: (wa["model"][k].float() - wb["model"][k].float()).abs().max().item()
            for k in wa["model"]}
    assert max(diff.values()) == 0.0, sorted(diff.items(), key=lambda kv: -kv[1])[:5]


@pytest.fixture(scope="module")
def reference_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(demo_root, out, extra=["SOLVER.CHECKPOINT_PERIOD", "2"])  # saves iterations 1, 3, 5
    return out


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_weights(reference_run, demo_root, tmp_path):
    shutil.copy(reference_run / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    log = _run(demo_root, tmp_path, resume=True, extra=["SOLVER.CHECKPOINT_PERIOD", "2"])
    assert "Starting training from iteration 2" in log
    _assert_same_final_weights(reference_run / "model_final.pth", tmp_path / "model_final.pth")
    # control: a different seed gives other weights, so the equality above means something
    other = tmp_path / "other_seed"
    _run(demo_root, other, extra=["SEED", "4", "SOLVER.CHECKPOINT_PERIOD", "100"])
    with pytest.raises(AssertionError):
        _assert_same_final_weights(reference_run / "model_final.pth", other / "model_final.pth")


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_complete_checkpoint(reference_run, demo_root,
                                                                  tmp_path):
    cmd = [sys.executable, TRAIN_NET, "--config-file", DEMO_CONFIG, *OPTS,
           "OUTPUT_DIR", str(tmp_path), "SOLVER.CHECKPOINT_PERIOD", "1"]
    proc = subprocess.Popen(cmd, env=_env(demo_root), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "model_0000002.pth").exists():
            assert proc.poll() is None and time.time() < deadline, "training ended early"
            time.sleep(0.05)
        time.sleep(0.3)  # somewhere in iteration 3 or its checkpoint write
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-loader workers
        proc.wait()
    assert not (tmp_path / "model_final.pth").exists(), "killed too late to test anything"
    last = (tmp_path / "last_checkpoint").read_text()
    _weights(tmp_path / last)  # the file it names is complete
    log = _run(demo_root, tmp_path, resume=True, extra=["SOLVER.CHECKPOINT_PERIOD", "1"])
    assert f"Starting training from iteration {int(last[6:13]) + 1}" in log
    _assert_same_final_weights(reference_run / "model_final.pth", tmp_path / "model_final.pth")


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_format_resumes_the_same_stream(reference_run, demo_root,
                                                                      tmp_path):
    # before the stream was its own checkpointable, the trainer state held only its seed
    ckpt = _weights(reference_run / "model_0000003.pth")
    ckpt["trainer"]["data_stream"] = {"seed": ckpt.pop("data_stream")["seed"]}
    torch.save(ckpt, tmp_path / "model_0000003.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    log = _run(demo_root, tmp_path, resume=True, extra=["SOLVER.CHECKPOINT_PERIOD", "100"])
    assert "keeps the data stream in its old place" in log
    _assert_same_final_weights(reference_run / "model_final.pth", tmp_path / "model_final.pth")


# ---- the stream's checkpointable state ---------------------------------------------------------

def _random_mapper(record):
    # draws from every RNG the stream seeds: a sample at the wrong position would differ
    return {"i": record["i"], "np": float(np.random.rand()), "py": random.random(),
            "torch": float(torch.rand(()))}


def _loader(seed, num_workers, batch_size=3):
    records = [{"i": i} for i in range(7)]
    stream = TrainingStream(records, _random_mapper, lambda s: shuffled_index_stream(7, s),
                            batch_size, seed, rank=0, world_size=1)
    return SkipCollectingLoader(
        torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers), stream)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_continues_the_stream_exactly(num_workers):
    B, start, k = 3, 5, 4
    first = _loader(seed=11, num_workers=num_workers)
    first.load_state_dict({"seed": 11, "position": start})
    batches = iter(first)
    for _ in range(k):
        next(batches)
    state = first.state_dict()
    assert state == {"seed": 11, "position": start + k * B}
    expected = [next(batches) for _ in range(3)]
    assert first.state_dict()["position"] == start + (k + 3) * B

    second = _loader(seed=0, num_workers=num_workers)  # built with another seed: the state wins
    second.load_state_dict(state)
    batches = iter(second)
    assert [next(batches) for _ in range(3)] == expected
    assert second.state_dict() == {"seed": 11, "position": start + (k + 3) * B}
    # control: one position later is other data, so the equality above means something
    shifted = _loader(seed=11, num_workers=num_workers)
    shifted.load_state_dict({"seed": 11, "position": state["position"] + 1})
    assert next(iter(shifted)) != expected[0]


def test_loader_state_without_position_is_refused():
    with pytest.raises(KeyError, match=r"lacks \['position'\]"):
        _loader(seed=1, num_workers=0).load_state_dict({"seed": 1})
