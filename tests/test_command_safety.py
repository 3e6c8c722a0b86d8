"""Every command that reads MODEL.WEIGHTS, run as the user runs it (a fresh process on the
command line), refuses what it must: a pickle that would run code (.pkl and .pth), a checkpoint of
another architecture, an empty MODEL.WEIGHTS where the result depends on the weights. Each run
must exit non-zero with the project's message, and the payload must not have run (the file it
would create does not exist). benchmark.py has its own test (tests/test_benchmark.py)."""
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from sfnet_d2.data import ensure_demo_panoptic
from sfnet_d2.engine import build_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = os.path.join(ROOT, "projects", "SFNet")
CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")
OTHER_ARCH_CONFIG = os.path.join(ROOT, "configs", "cityscapes", "semantic", "sfnet_R18.yaml")
# a K-Net small enough to build in a second (the pipeline stops at its weights, before training)
KNET_TINY = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.KNET.NUM_PROPOSALS", "6",
             "MODEL.KNET.FEAT_CHANNELS", "32", "MODEL.KNET.FFN_CHANNELS", "64",
             "MODEL.KNET.NUM_STAGES", "2", "MODEL.KNET.STAGE_LOSS_WEIGHTS", "[1.0, 1.0]",
             "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2"]


class _CreatesAFile:
    """Unpickling this object calls open(path, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The demo data in both formats (tiny), an input image, and the weight files: a pickle
    payload as .pkl and as .pth (each creating its own marker file if it ever ran), SFNet-R18
    weights (another architecture than the SFNet-Lite demo config) and a truncated .pth."""
    root = tmp_path_factory.mktemp("command_safety")
    data = root / "datasets"
    ensure_demo_panoptic(str(data / "sfnet_demo_coco_panoptic"), str(data / "sfnet_demo_cityscapes"),
                         num_train=4, num_val=2, height=64, width=128)
    image = sorted((data / "sfnet_demo_cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    f = {"datasets": data, "image": image,
         "pkl": root / "evil.pkl", "pkl_marker": root / "PAYLOAD_RAN_pkl",
         "pth": root / "evil.pth", "pth_marker": root / "PAYLOAD_RAN_pth",
         "other": root / "sfnet_R18.pth", "truncated": root / "truncated.pth"}
    with open(f["pkl"], "wb") as out:
        pickle.dump({"model": _CreatesAFile(str(f["pkl_marker"]))}, out)
    torch.save({"model": _CreatesAFile(str(f["pth_marker"]))}, f["pth"])
    r18 = build_model(build_config(OTHER_ARCH_CONFIG, ["MODEL.DEVICE", "cpu"]))
    torch.save({"model": r18.state_dict()}, f["other"])
    data_bytes = f["other"].read_bytes()
    f["truncated"].write_bytes(data_bytes[: len(data_bytes) // 2])
    return f


def test_the_payloads_are_live(files, tmp_path):
    """The stand-in really runs when unpickled without protection (so its absence below means
    it was refused, not that it was harmless)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_CreatesAFile(str(marker))))
    assert marker.is_file()
    marker.unlink()
    torch.save(_CreatesAFile(str(marker)), tmp_path / "x.pth")
    torch.load(tmp_path / "x.pth", weights_only=False)
    assert marker.is_file()


def _argv(command, weights, files, out):
    if command == "train_net":
        return ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights,
                "OUTPUT_DIR", str(out)]
    if command == "demo":
        return ["--config-file", CONFIG, "--input", str(files["image"]), "--output", str(out),
                "--opts", "MODEL.WEIGHTS", weights]
    if command == "export_model":
        return ["--config-file", CONFIG, "--format", "torchscript", "--height", "64", "--width",
                "128", "--output", str(out), "MODEL.WEIGHTS", weights]
    if command == "visualize_flow":
        return ["--config-file", CONFIG, "--input", str(files["image"]), "--output", str(out),
                "--opts", "MODEL.WEIGHTS", weights]
    if command == "train_panoptic_pipeline":  # stage 1 starts from the user's MODEL.WEIGHTS
        return ["--demo", "--stage1-opts", "OUTPUT_DIR", str(out / "s1"), "MODEL.WEIGHTS", weights,
                "--stage2-opts", "OUTPUT_DIR", str(out / "s2"), "--", *KNET_TINY]
    raise AssertionError(command)


def _run(command, weights, files, out):
    env = dict(os.environ, DETECTRON2_DATASETS=str(files["datasets"]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(COMMANDS, f"{command}.py"),
                           *_argv(command, weights, files, out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    return proc, proc.stdout + proc.stderr


# (case, weights file, the message)
CASES = {
    "pickle_pkl": ("pkl", r"Cannot read .*evil\.pkl.*refusing to load"),
    "pickle_pth": ("pth", r"Refusing to load .*evil\.pth: it needs arbitrary code"),
    "other_architecture": ("other", r"The checkpoint does not match the model"),
    "empty": (None, r"MODEL\.WEIGHTS is empty: .* needs trained weights"),
}
# training may start from no weights: the pipeline has no "empty" case
RUNS = [(cmd, case) for cmd in ("train_net", "demo", "export_model", "visualize_flow",
                                "train_panoptic_pipeline") for case in CASES
        if not (cmd == "train_panoptic_pipeline" and case == "empty")]


@pytest.mark.slow
@pytest.mark.parametrize("command,case", RUNS)
def test_command_refuses_the_weights(command, case, files, tmp_path):
    key, message = CASES[case]
    weights = str(files[key]) if key else ""
    out = tmp_path / "out"
    proc, output = _run(command, weights, files, out)
    assert proc.returncode != 0, output[-4000:]
    assert re.search(message, output), output[-4000:]
    for marker in ("pkl_marker", "pth_marker"):
        assert not files[marker].exists(), f"the {marker[:3]} payload ran"
    if command != "train_net":  # the commands written here show one message, no traceback
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        assert re.search(rf"{command}\.py: error: ", proc.stderr), proc.stderr[-4000:]
    # nothing was produced from a model the command refused to build
    produced = [p for p in out.rglob("*") if p.suffix in (".png", ".ts", ".onnx", ".mp4")] \
        if out.exists() else []
    assert not produced


@pytest.mark.slow
def test_demo_names_a_truncated_checkpoint(files, tmp_path):
    proc, output = _run("demo", str(files["truncated"]), files, tmp_path / "out")
    assert proc.returncode == 1
    assert re.search(r"demo\.py: error: Checkpoint .*truncated\.pth is damaged or truncated",
                     proc.stderr), proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
