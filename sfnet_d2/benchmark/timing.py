"""
Timing machinery of the benchmark (``sfnet_d2/benchmark/run.py``, docs/BENCHMARK.md):

* :func:`round_robin` times several tasks interleaved (task A run 1, task B run 1, ..., task A
  run 2, ...) after a warm-up of each, so that load from other processes hits every task alike;
  CUDA work is synchronised before and after each run;
* every run records how many cores other processes used meanwhile (system busy time minus this
  process's, from psutil);
* :func:`peak_memory_of` measures a task's peak memory in one extra, untimed run (CPU: the
  process's peak resident set size above its size before the run, after returning the allocator's
  free memory to the system, so that the run has to map what it needs; CUDA:
  ``torch.cuda.max_memory_allocated``). Done outside the timed runs because releasing memory before
  a run makes the run pay page faults;
* :func:`summarize` gives median, p90 and FPS, also over the "clean" runs only (other processes
  below ``CLEAN_OTHER_CORES``; docs/BENCHMARK.md, Protocol);
* tasks may run in a worker process (isolated_runs.py: the plain ``eager`` mode, away from the
  optimised path's allocator setting); they report their CPU time, and their peak memory is
  measured in the worker;
* :func:`conv_gemm_task` is the machine's fp32 convolution throughput reference: a 4096^3 GEMM
  run as a 1x1 ``conv2d`` (docs/BENCHMARK.md), from which the FLOP bound of a model is
  ``2 * GMACs / throughput``.
"""
import gc
import os
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from sfnet_d2.benchmark.isolated_runs import ExternalRun
from sfnet_d2.deployment.memory import release_kept_memory

__all__ = [
    "RunRecord",
    "round_robin",
    "summarize",
    "percentile",
    "conv_gemm_task",
    "flop_bound_seconds",
    "PeakMemory",
    "peak_memory_of",
    "OtherProcessLoad",
    "bf16_support",
    "CLEAN_OTHER_CORES",
    "GEMM",
    "end_to_end",
]

# The task name of the GEMM throughput reference in the benchmark's results.
GEMM = "conv_gemm"

# A run counts as "clean" when other processes used less than this many cores during it
# (docs/BENCHMARK.md, Protocol).
CLEAN_OTHER_CORES = 0.15


class RunRecord(NamedTuple):
    seconds: float  # wall-clock time of the run
    cpu_seconds: float  # CPU time of this process (all threads) during the run
    other_cores: Optional[float]  # average cores used by other processes during the run


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    if not len(values):
        raise ValueError("percentile of an empty list")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(records: Sequence[RunRecord]) -> Dict[str, object]:
    """Median, p90, mean, min, FPS (= 1 / median) and contention of some runs."""
    times = [r.seconds for r in records]
    cpu = [r.cpu_seconds for r in records]
    median = percentile(times, 50)
    out = {
        "runs": len(times),
        "seconds": times,
        "median_s": median,
        "p90_s": percentile(times, 90),
        "mean_s": float(np.mean(times)),
        "min_s": float(np.min(times)),
        "fps": 1.0 / median if median > 0 else float("inf"),
        # CPU time is less sensitive than wall time to other processes taking the cores away.
        "cpu_seconds": cpu,
        "median_cpu_s": percentile(cpu, 50),
    }
    other = [r.other_cores for r in records]
    out["other_cores"] = other
    clean = [r.seconds for r in records if r.other_cores is not None
             and r.other_cores < CLEAN_OTHER_CORES]
    out["clean_runs"] = len(clean)
    out["clean_median_s"] = percentile(clean, 50) if clean else None
    return out


def _cpu_busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class OtherProcessLoad:
    """Average number of cores used by *other* processes between ``start()`` and ``stop()``:
    system-wide busy CPU time minus this process's CPU time, over the wall time."""

    def __init__(self):
        self._proc = psutil.Process(os.getpid())

    def start(self):
        self._t0 = time.perf_counter()
        self._busy0 = _cpu_busy_seconds()
        own = self._proc.cpu_times()
        self._own0 = own.user + own.system

    def stop(self, helper_cpu_seconds: float = 0.0) -> Optional[float]:
        """``helper_cpu_seconds``: CPU time that a worker process of ours (isolated_runs.py) spent
        on the run, which is not another process's load."""
        wall = time.perf_counter() - self._t0
        own = self._proc.cpu_times()
        others = ((_cpu_busy_seconds() - self._busy0) - (own.user + own.system - self._own0)
                  - helper_cpu_seconds)
        if wall <= 0:
            return None
        # psutil's system and per-process clocks tick separately: clip rounding below zero.
        return max(0.0, others / wall)


class PeakMemory:
    """
    Peak memory of one run above what was in use before it. CUDA: allocator statistics.
    CPU: the kernel's peak-RSS counter (VmHWM), reset by writing 5 to /proc/self/clear_refs;
    where that is not possible, a thread samples the RSS every millisecond (may miss short peaks).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._use_hwm = self.device.type == "cpu" and self._can_reset_hwm()

    @staticmethod
    def _read_status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def _can_reset_hwm(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._read_status("VmHWM")
            return True
        except (OSError, RuntimeError):
            return False

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "peak RSS (VmHWM, reset per run)" if self._use_hwm else "RSS sampled every 1 ms"

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self._use_hwm:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = self._read_status("VmRSS")
        else:
            proc = psutil.Process(os.getpid())
            self._base = self._peak = proc.memory_info().rss
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss)
                    self._stop.wait(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        if self._use_hwm:
            return self._read_status("VmHWM") - self._base
        self._stop.set()
        self._thread.join()
        return self._peak - self._base


def _release_free_memory():
    gc.collect()
    release_kept_memory()  # glibc: give freed heap pages back to the system


def peak_memory_of(task: Callable[[], object], device) -> int:
    """Peak memory (bytes) of one run of ``task`` above the memory in use before it. A task that
    runs in another process (isolated_runs.py) measures it there (its ``peak_memory()``)."""
    if callable(getattr(task, "peak_memory", None)):
        return task.peak_memory()
    _release_free_memory()
    meter = PeakMemory(device)
    meter.start()
    task()  # the result is dropped after the measurement
    return meter.stop()


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(
    tasks: Dict[str, Callable[[], object]],
    runs: int,
    warmup: int,
    device,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, List[RunRecord]]:
    """
    Run every task ``warmup`` times (untimed, task by task: traced models compile here), then
    ``runs`` rounds in which every task runs once, in the given order. Returns each task's runs.
    """
    device = torch.device(device)
    for name, task in tasks.items():
        for i in range(warmup):
            if progress:
                progress(f"warm-up {name} {i + 1}/{warmup}")
            task()
            _synchronize(device)
    records: Dict[str, List[RunRecord]] = {name: [] for name in tasks}
    load = OtherProcessLoad()
    for r in range(runs):
        for name, task in tasks.items():
            if progress:
                progress(f"round {r + 1}/{runs}: {name}")
            _synchronize(device)
            load.start()
            c0, t0 = time.process_time(), time.perf_counter()
            result = task()
            _synchronize(device)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            if isinstance(result, ExternalRun):  # ran in a worker process: its CPU time
                cpu = result.cpu_seconds
                other = load.stop(helper_cpu_seconds=result.cpu_seconds)
            else:
                other = load.stop()
            records[name].append(RunRecord(seconds, cpu, other))
    return records


def conv_gemm_task(device, size: int = 4096, dtype=torch.float32):
    """
    A (size x size) @ (size x size) matrix product written as a 1x1 convolution (size input and
    output channels on a sqrt(size) x sqrt(size) map, channels-last, oneDNN on CPU). Returns the
    task and its multiply-add count (size ** 3).
    """
    side = int(round(size ** 0.5))
    if side * side != size:
        raise ValueError(f"conv_gemm_task: size={size} must be a square number (e.g. 4096)")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, size, side, side, generator=gen).to(device=device, dtype=dtype)
    w = torch.randn(size, size, 1, 1, generator=gen).to(device=device, dtype=dtype) / size ** 0.5
    x = x.contiguous(memory_format=torch.channels_last)
    w = w.contiguous(memory_format=torch.channels_last)

    def task():
        with torch.inference_mode():
            return F.conv2d(x, w)

    return task, size ** 3


def flop_bound_seconds(gmacs: float, gflops_per_second: float) -> float:
    """The time a network of ``gmacs`` (1e9 multiply-adds) needs at the reference throughput
    (counting 2 FLOPs per multiply-add)."""
    return 2.0 * gmacs / gflops_per_second


def bf16_support(device) -> Optional[str]:
    """None when bfloat16 inference is worth timing on ``device``, else the reason it is not."""
    device = torch.device(device)
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16 support"
    if not torch.backends.mkldnn.is_available():
        return "PyTorch was built without oneDNN (mkldnn), which runs CPU bfloat16 convolutions"
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if is_supported is not None and not is_supported():
        return (f"this CPU has no native bfloat16 instructions (oneDNN reports none; PyTorch "
                f"CPU capability {torch.backends.cpu.get_cpu_capability()}), so bf16 would be "
                "emulated and slower than fp32")
    return None


def end_to_end(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) image -> (H, W) label map on the CPU through the full model: the argmax of
    the semantic logits, or the panoptic segment map of a panoptic model (also when it outputs
    ``sem_seg`` beside it, MODEL.KNET.TEST.SEMANTIC_ON)."""
    height, width = image.shape[-2:]
    out = model([{"image": image, "height": height, "width": width}])[0]
    if "panoptic_seg" in out:
        return out["panoptic_seg"][0].cpu()
    return out["sem_seg"].argmax(dim=0).cpu()
