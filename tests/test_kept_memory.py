"""DEPLOY.KEEP_MEMORY (sfnet_d2/deployment/memory.py): repeated calls stop paying
page faults for their large activations, results are unchanged, the malloc setting is scoped,
and a user's own malloc configuration is respected.

The allocator experiments run in fresh subprocesses: the setting is process-wide C-library state
and must not leak into (or depend on) the pytest process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import make_cfg
from sfnet_d2.deployment import memory as memory_module
from sfnet_d2.deployment import optimize_model

pytestmark = pytest.mark.skipif(
    not memory_module.keep_memory_supported(), reason="kept memory is a glibc allocator setting"
)

# A small network whose activations (64 x 512 x 512 floats = 64 MiB) are above glibc's largest
# mmap threshold (32 MiB), so that without kept memory every call maps them anew.
_CHILD = r"""
import json, resource, torch
from sfnet_d2.deployment.memory import kept_memory
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 8, 1)).eval()
x = torch.randn(1, 3, 512, 512)
keep = {keep}
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
out = dict(faults=[], sums=[])
with torch.inference_mode():
    for _ in range(5):
        with kept_memory(keep):
            before = faults()
            y = net(x)
            out["faults"].append(faults() - before)
        out["sums"].append(float(y.double().sum()))
        del y
    # Where a block larger than any free heap chunk (256 MiB) comes from: the heap (the program
    # break moves) inside the scope, a fresh mapping outside it (the limit is restored).
    import ctypes
    libc = ctypes.CDLL(None)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = (ctypes.c_long,)
    def heap_growth():
        before = libc.sbrk(0)
        t = torch.empty(64 * 2 ** 20)
        grew = libc.sbrk(0) - before
        del t
        return grew
    out["outside"] = heap_growth()
    with kept_memory(keep):
        out["inside"] = heap_growth()
print(json.dumps(out))
"""


def _run_child(keep: bool, env=None):
    code = _CHILD.format(keep=keep)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_kept_memory_removes_page_faults_of_repeated_calls():
    plain = _run_child(keep=False)
    kept = _run_child(keep=True)
    pages_per_call = 2 * 64 * 512 * 512 * 4 / 4096  # two 64 MiB activations
    # Control: without kept memory every call faults its activations in again.
    assert min(plain["faults"][1:]) > 0.8 * pages_per_call
    # With it, after the first calls have grown the heap, calls fault (almost) nothing.
    assert kept["faults"][-1] < 0.02 * pages_per_call
    # Same results either way (only where the memory comes from changes).
    assert kept["sums"] == plain["sums"]
    # Inside the scope a 256 MiB block is (partly) carved from the heap, which grows; outside it
    # is mapped on its own and the heap does not move (the mmap limit is restored).
    assert kept["inside"] > 0 and kept["outside"] == 0
    assert plain["inside"] == 0


@pytest.mark.slow
def test_user_malloc_settings_are_left_alone():
    env = dict(os.environ, MALLOC_MMAP_MAX_="65536")
    result = _run_child(keep=True, env=env)
    pages_per_call = 2 * 64 * 512 * 512 * 4 / 4096
    assert min(result["faults"][1:]) > 0.8 * pages_per_call  # kept_memory did nothing


def _fake_glibc(monkeypatch):
    """A glibc stand-in for kept_memory: the list of its mallopt(param, value) calls."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory_module, "_glibc", lambda: FakeLibc())
    return calls


def test_scope_is_reentrant_and_restores_the_limit(monkeypatch):
    calls = _fake_glibc(monkeypatch)
    monkeypatch.setattr(memory_module, "_trim_threshold_raised", False)
    with memory_module.kept_memory():
        with memory_module.kept_memory():
            pass
        assert calls[-1] == (memory_module._M_MMAP_MAX, 0)  # inner exit keeps the outer's setting
    assert calls == [
        (memory_module._M_TRIM_THRESHOLD, memory_module._NEVER_TRIM),
        (memory_module._M_MMAP_MAX, 0),
        (memory_module._M_MMAP_MAX, memory_module._GLIBC_DEFAULT_MMAP_MAX),
    ]
    calls.clear()
    with memory_module.kept_memory(enabled=False):
        pass
    assert calls == []


def test_paused_scope_maps_afresh_inside_kept_memory_only(monkeypatch):
    calls = _fake_glibc(monkeypatch)
    monkeypatch.setattr(memory_module, "_trim_threshold_raised", True)
    with memory_module.kept_memory_paused():  # not inside kept memory: nothing to pause
        pass
    assert calls == []
    with memory_module.kept_memory():
        with memory_module.kept_memory_paused():
            assert calls[-1] == (memory_module._M_MMAP_MAX, memory_module._GLIBC_DEFAULT_MMAP_MAX)
        assert calls[-1] == (memory_module._M_MMAP_MAX, 0)  # kept again after the pause
    assert calls == [
        (memory_module._M_MMAP_MAX, 0),
        (memory_module._M_MMAP_MAX, memory_module._GLIBC_DEFAULT_MMAP_MAX),
        (memory_module._M_MMAP_MAX, 0),
        (memory_module._M_MMAP_MAX, memory_module._GLIBC_DEFAULT_MMAP_MAX),
    ]


def test_optimized_model_traces_outside_the_kept_heap(monkeypatch):
    from sfnet_d2.deployment import optimized_model as model_module

    state = {"paused": False, "traced_paused": []}

    class PausedSpy:
        def __enter__(self):
            state["paused"] = True

        def __exit__(self, *exc):
            state["paused"] = False
            return False

    original = model_module.OptimizedInferenceModel._compile

    def compile_spy(self, images):
        state["traced_paused"].append(state["paused"])
        return original(self, images)

    monkeypatch.setattr(model_module, "kept_memory_paused", PausedSpy)
    monkeypatch.setattr(model_module.OptimizedInferenceModel, "_compile", compile_spy)
    from detectron2.modeling import build_model

    model = build_model(make_cfg("configs/cityscapes/semantic/sfnet_lite_R18.yaml")).eval()
    optimized = optimize_model(model, torchscript="freeze")
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        optimized([{"image": image}])
        optimized([{"image": image}])
    assert state["traced_paused"] == [True]  # traced once, with the kept heap paused


def test_optimized_model_uses_kept_memory_per_config(monkeypatch):
    entered = []

    class Spy:
        def __init__(self, enabled=True):
            self.enabled = enabled

        def __enter__(self):
            entered.append(self.enabled)

        def __exit__(self, *exc):
            return False

    from sfnet_d2.deployment import optimized_model as model_module

    monkeypatch.setattr(model_module, "kept_memory", Spy)
    cfg = make_cfg("configs/cityscapes/semantic/sfnet_lite_R18.yaml")
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    for keep in (True, False):
        entered.clear()
        opt = optimize_model(model, torchscript="none", keep_memory=keep)
        with torch.inference_mode():
            opt([{"image": image}])
        assert entered and all(e is keep for e in entered)
