"""Checkpoint safety: atomic writes (also under SIGKILL) with the umask's permissions,
weights_only reads, strict loading, --resume errors that say how to recover, and the official
converter's advice."""
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from helpers import ROOT, make_cfg
from sfnet_d2.engine import (
    CheckpointMismatchError,
    LastCheckpointError,
    NonFiniteLossError,
    SFNetCheckpointer,
    install_nonfinite_loss_guard,
)


class _Backbone(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)


class _Head(nn.Module):
    def __init__(self, width=4, classes=3):
        super().__init__()
        self.fuse = nn.Conv2d(width, width, 1)
        self.predictor = nn.Conv2d(width, classes, 1)


class _Model(nn.Module):
    def __init__(self, width=4, classes=3):
        super().__init__()
        self.backbone = _Backbone(width)
        self.sem_seg_head = _Head(width, classes)


def _saved(tmp_path, model, name="model_0000009"):
    SFNetCheckpointer(model, str(tmp_path)).save(name)
    return os.path.join(tmp_path, name + ".pth")


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    model = _Model()
    first = _saved(tmp_path, model)
    before = open(first, "rb").read()

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        model.backbone.conv.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        SFNetCheckpointer(model, str(tmp_path)).save("model_0000009")  # same name: overwrite
    assert open(first, "rb").read() == before
    assert open(tmp_path / "last_checkpoint").read() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


@pytest.mark.slow
def test_sigkill_during_repeated_saves_leaves_a_loadable_last_checkpoint(tmp_path):
    # A child process saves ~40 MB checkpoints in a loop; SIGKILL it at a random point of a write.
    script = textwrap.dedent(f"""
        import torch, itertools
        from torch import nn
        from sfnet_d2.engine import SFNetCheckpointer
        m = nn.Linear(2500, 4000)
        ck = SFNetCheckpointer(m, {str(tmp_path)!r})
        for i in itertools.count():
            with torch.no_grad():
                m.bias.fill_(i)
            ck.save(f"model_{{i % 3}}")
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # wait for a few complete saves
            assert proc.stdout.readline(), "the saving process died early"
        time.sleep(0.05 + np.random.rand() * 0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    model = nn.Linear(2500, 4000)
    ck = SFNetCheckpointer(model, str(tmp_path))
    assert ck.has_checkpoint()
    last = ck.get_checkpoint_file()
    ck.load(last)  # raises if the file were truncated
    value = model.bias[0].item()
    assert torch.all(model.bias == value) and value >= 2


def test_unsafe_pickle_is_refused_and_named(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Backbone()}, path)  # needs code
    with pytest.raises(RuntimeError, match=r"Refusing to load .*evil\.pth"):
        SFNetCheckpointer(_Model()).load(str(path))


def test_truncated_file_is_named(tmp_path):
    path = _saved(tmp_path, _Model())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"model_0000009\.pth is damaged or truncated"):
        SFNetCheckpointer(_Model()).load(path)


def test_pkl_only_builds_arrays(tmp_path):
    good = tmp_path / "w.pkl"
    state = {k: v.numpy() for k, v in _Model().state_dict().items()}
    with open(good, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    model = _Model()
    SFNetCheckpointer(model).load(str(good))
    np.testing.assert_array_equal(model.backbone.conv.weight.detach().numpy(),
                                  state["backbone.conv.weight"])
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": state, "x": _Backbone()}, f)
    with pytest.raises(RuntimeError, match="bad.pkl"):
        SFNetCheckpointer(_Model()).load(str(bad))


def test_other_architecture_lists_every_mismatch(tmp_path):
    path = _saved(tmp_path, _Model(width=8))
    with pytest.raises(CheckpointMismatchError) as err:
        SFNetCheckpointer(_Model(width=4)).load(path)
    msg = str(err.value)
    assert "shape mismatches" in msg and "backbone.conv.weight" in msg
    assert "(8, 3, 3, 3)" in msg and "(4, 3, 3, 3)" in msg
    # unexpected keys are listed too
    sd = _Model().state_dict()
    sd["backbone.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in the checkpoint \(1\)"):
        SFNetCheckpointer(_Model()).load(str(tmp_path / "extra.pth"))


def test_backbone_only_file_loads_and_head_keeps_init(tmp_path):
    src = _Model()
    sd = {k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    torch.save(sd, tmp_path / "imagenet.pth")  # a bare state_dict, as --backbone-only writes
    dst = _Model()
    head_before = dst.sem_seg_head.fuse.weight.clone()
    SFNetCheckpointer(dst).load(str(tmp_path / "imagenet.pth"))
    assert torch.equal(dst.backbone.conv.weight, src.backbone.conv.weight)
    assert torch.equal(dst.sem_seg_head.fuse.weight, head_before)
    # but a file that covers the head partly is another architecture
    sd["sem_seg_head.fuse.weight"] = src.sem_seg_head.fuse.weight
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="sem_seg_head.fuse.bias"):
        SFNetCheckpointer(_Model()).load(str(tmp_path / "partial.pth"))


def test_class_specific_mismatch_warns_and_reinitialises(tmp_path, caplog):
    src = _Model(classes=19)
    path = _saved(tmp_path, src)
    dst = _Model(classes=11)
    pred_before = dst.sem_seg_head.predictor.weight.clone()
    with caplog.at_level("WARNING"):
        SFNetCheckpointer(dst).load(path)
    assert "sem_seg_head.predictor.weight" in caplog.text and "another class set" in caplog.text
    assert torch.equal(dst.sem_seg_head.predictor.weight, pred_before)
    assert torch.equal(dst.sem_seg_head.fuse.weight, src.sem_seg_head.fuse.weight)


class _LossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        bad = float("nan") if self.calls == 3 else 1.0
        return {"loss_sem_seg": (self.w * x).sum(), "loss_sem_seg_dsn0": self.w.sum() * bad}


def test_nonfinite_loss_stops_before_the_step_naming_iteration_and_term(tmp_path):
    from detectron2.engine import SimpleTrainer, hooks

    model = install_nonfinite_loss_guard(_LossModel())
    install_nonfinite_loss_guard(model)  # idempotent: one hook only
    assert len(model._forward_hooks) == 1
    data = iter(lambda: torch.ones(1), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, data, opt)
    ck = SFNetCheckpointer(model, str(tmp_path))
    trainer.register_hooks([hooks.PeriodicCheckpointer(ck, period=1)])
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss_sem_seg_dsn0=nan"):
        trainer.train(0, 10)
    # two good steps happened, the third was stopped before optimizer.step
    assert model.w.item() == pytest.approx(1 - 2 * 0.2)
    assert open(tmp_path / "last_checkpoint").read() == "model_0000001.pth"
    restored = _LossModel()
    SFNetCheckpointer(restored).load(str(tmp_path / "model_0000001.pth"))
    assert restored.w.item() == pytest.approx(model.w.item())


# ---------------------------------------------------------------- file permissions
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        SFNetCheckpointer(_Model(), str(tmp_path)).save("model_0000001")
        torch.save({}, tmp_path / "plain.pth")  # what torch.save to a path gives
    finally:
        os.umask(old)
    for name in ("model_0000001.pth", "last_checkpoint", "plain.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "plain.pth"]


# ---------------------------------------------------------------- --resume, bad last_checkpoint
def _run_history(folder):
    """Checkpoints of iterations 1 and 3 and model_final (iteration 4) with the optimizer state,
    as a training run leaves them; returns the backbone weight each file holds."""
    model = _Model()
    ck = SFNetCheckpointer(model, str(folder), optimizer=torch.optim.SGD(model.parameters(), 0.1))
    weights = {}
    for name, iteration in (("model_0000001", 1), ("model_0000003", 3), ("model_final", 4)):
        with torch.no_grad():
            model.backbone.conv.weight.fill_(iteration)
        ck.save(name, iteration=iteration)
        weights[name + ".pth"] = model.backbone.conv.weight.detach().clone()
    return weights


def _resume(folder):
    model = _Model()
    ck = SFNetCheckpointer(model, str(folder), optimizer=torch.optim.SGD(model.parameters(), 0.1))
    return model, ck.resume_or_load("no_such_weights.pth", resume=True)


def _follow_advice(message):
    """Run the ``echo NAME > .../last_checkpoint`` line of the message in a shell."""
    found = re.search(r"^\s*(echo \S+ > \S+last_checkpoint\S*)$", message, re.M)
    assert found, message
    subprocess.run(found.group(1), shell=True, check=True)


def test_resume_with_last_checkpoint_naming_a_deleted_file(tmp_path):
    weights = _run_history(tmp_path)
    os.remove(tmp_path / "model_final.pth")
    with pytest.raises(LastCheckpointError) as err:
        _resume(tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    tag = str(tmp_path / "last_checkpoint")
    assert f"{tag} names 'model_final.pth'" in msg and str(tmp_path / "model_final.pth") in msg
    assert "(newest first): model_0000003.pth, model_0000001.pth." in msg
    assert f"echo model_0000003.pth > {tag}" in msg and "--resume" in msg
    assert f"MODEL.WEIGHTS {tmp_path / 'model_0000003.pth'}" in msg
    _follow_advice(msg)
    model, extra = _resume(tmp_path)
    assert extra["iteration"] == 3
    assert torch.equal(model.backbone.conv.weight, weights["model_0000003.pth"])


def test_resume_with_an_empty_last_checkpoint(tmp_path):
    weights = _run_history(tmp_path)
    (tmp_path / "last_checkpoint").write_text("\n")
    with pytest.raises(LastCheckpointError) as err:
        _resume(tmp_path)
    msg = str(err.value)
    assert f"{tmp_path / 'last_checkpoint'} is empty" in msg
    assert "(newest first): model_final.pth, model_0000003.pth, model_0000001.pth." in msg
    _follow_advice(msg)
    model, extra = _resume(tmp_path)
    assert extra["iteration"] == 4
    assert torch.equal(model.backbone.conv.weight, weights["model_final.pth"])


def test_resume_with_no_checkpoint_left_says_so(tmp_path):
    _run_history(tmp_path)
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        os.remove(tmp_path / name)
    with pytest.raises(LastCheckpointError, match=r"(?s)names 'model_final\.pth'.*There is no "
                       r"checkpoint file \(\*\.pth\) in .*Run without --resume"):
        _resume(tmp_path)
    # without --resume, MODEL.WEIGHTS is loaded as before (only the model, no optimizer state)
    src = _saved(tmp_path, _Model(), "weights")
    model = _Model()
    ck = SFNetCheckpointer(model, str(tmp_path / "elsewhere"))
    assert ck.resume_or_load(src, resume=False) == {}


# ---------------------------------------------------------------- convert_official.py's advice
def _official_r18_state():
    """Zero tensors with the keys and shapes of an official SFNet-R18 file (19 classes)."""
    state = {}
    with open(os.path.join(ROOT, "tests", "data", "official_keys", "keys_sfnet_r18_v1.txt")) as f:
        for line in f:
            if not line.startswith("#"):
                key, shape = line.split("\t")[:2]
                state[key] = torch.zeros([int(x) for x in re.findall(r"\d+", shape)])
    return state


def _convert_official(*args):
    """projects/SFNet/convert_official.py ARGS in a fresh process (the completed process)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "projects", "SFNet",
                                                        "convert_official.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_converter_mismatch_hint_names_only_what_exists(tmp_path):
    from sfnet_d2.converters.official_converter import CONVERSION_HINT

    # an ImageNet backbone file (ResNet layout) given without --backbone-only: a mismatch
    imagenet = {}
    for key, value in _official_r18_state().items():
        if key.startswith("layer0.0."):
            imagenet["conv1." + key[len("layer0.0."):]] = value
        elif key.startswith("layer0.1."):
            imagenet["bn1." + key[len("layer0.1."):]] = value
        elif key.startswith("layer"):
            imagenet[key] = value
    imagenet["fc.weight"] = torch.zeros(1000, 512)
    src, dst = tmp_path / "imagenet.pth", tmp_path / "R18.pth"
    torch.save(imagenet, src)
    proc = _convert_official("--arch", "DeepR18_SF_deeply", src, dst)
    assert proc.returncode == 1 and CONVERSION_HINT in proc.stderr, proc.stderr[-2000:]
    assert not dst.exists()
    # every option the hint names is one convert_official.py accepts (its --help lists it) ...
    flags = set(re.findall(r"--[a-z][a-z-]+", CONVERSION_HINT))
    assert flags == {"--arch", "--backbone-only", "--deep-supervision"}
    usage = _convert_official("--help").stdout
    known = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*(?![\w-])", usage))
    assert flags <= known, usage
    # ... every config key it names exists ...
    cfg = make_cfg()
    for key in re.findall(r"MODEL\.[A-Z_.]*[A-Z]", CONVERSION_HINT):
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    # ... and following it works: --backbone-only converts the ImageNet file
    proc = _convert_official("--arch", "DeepR18_SF_deeply", "--backbone-only", src, dst)
    assert proc.returncode == 0 and dst.exists(), proc.stderr[-2000:]
    # the class count needs no option: an 11-class file converts into an 11-class model
    state = _official_r18_state()
    state["head.conv_last.1.weight"] = torch.zeros(11, 128, 1, 1)
    state["head.conv_last.1.bias"] = torch.zeros(11)
    torch.save(state, tmp_path / "camvid.pth")
    proc = _convert_official("--arch", "DeepR18_SF_deeply", tmp_path / "camvid.pth",
                             tmp_path / "camvid_d2.pth")
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = torch.load(tmp_path / "camvid_d2.pth", weights_only=True)["model"]
    assert converted["sem_seg_head.predictor.weight"].shape[0] == 11
