"""Checkpoint safety: atomic writes (also under SIGKILL), weights_only reads, strict loading."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from sfnet_d2.engine import (
    CheckpointMismatchError,
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
