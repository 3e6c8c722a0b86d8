"""
Whole-process peak memory of each inference mode (``projects/SFNet/benchmark.py``,
``--process-peak-runs``; docs/BENCHMARK.md).

The per-run "peak MiB" of the timed benchmark is the growth of the resident set during one run,
measured in a process that already holds every mode's model. What a user deploying a model
pays is different: the peak resident set of a process that imports the library, builds the
model, warms up and serves images, everything included (the libraries' code and data, the
weights and their optimised copies, the activations, the allocator's kept heap). This module
measures that, the same way for every mode: one fresh process per mode (multiprocessing
"spawn", so nothing of the benchmark's own process is inherited), which

1. imports sfnet_d2 and builds the config's model with its weights (the project's safe loader);
2. builds the mode's model as ``train_net.py --eval-only`` does (the optimised copy replaces the
   plain model, which is released; ``eager`` keeps the plain model);
3. runs ``warmup`` then ``runs`` end-to-end calls on a uint8 image of the benchmark's size
   (normalisation, network, post-processing, the label or segment map), timing each;
4. reports ``VmHWM`` (the kernel's peak resident set of the process) with the resident set after
   the import and after the build, and the median wall and CPU time of the runs.

Processes run one after the other, never beside each other or the timed rounds. Linux only
(``/proc/self/status``); elsewhere the measurement is skipped with the reason.
"""
import logging
import multiprocessing
import os
import statistics
import time
import traceback
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["process_status_gib", "measure_process_peak", "measure_process_peaks"]

logger = logging.getLogger(__name__)

_STATUS_FILE = "/proc/self/status"


def process_status_gib() -> Dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of this process in GiB (empty where /proc is not available)."""
    out = {}
    try:
        with open(_STATUS_FILE) as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) / 2 ** 20  # kB -> GiB
    except OSError:
        pass
    return out


def _worker(conn, cfg_text: str, mode: str, size: Tuple[int, int], warmup: int, runs: int,
            threads: int):
    try:
        conn.send(("ok", _measure_here(cfg_text, mode, size, warmup, runs, threads)))
    except Exception:  # reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _measure_here(cfg_text, mode, size, warmup, runs, threads):
    import torch

    from sfnet_d2.benchmark.run import build_modes
    from sfnet_d2.benchmark.timing import end_to_end
    from detectron2.config import get_cfg

    from sfnet_d2.config import add_sfnet_config
    from sfnet_d2.engine import build_model_with_weights

    if threads:
        torch.set_num_threads(threads)
    after_import = process_status_gib()
    cfg = get_cfg()
    add_sfnet_config(cfg)
    cfg.merge_from_other_cfg(cfg.load_cfg(cfg_text))  # the benchmark's config, as resolved there
    cfg.freeze()
    model = build_model_with_weights(cfg, purpose="the process-peak measurement",
                                     required=False)
    modes, skipped = build_modes(cfg, model, [mode], torch.device(cfg.MODEL.DEVICE))
    if skipped:
        return {"skipped": skipped[mode]}
    runner = modes[0]
    del model, modes  # as --eval-only: only the model that serves the images is kept
    after_build = process_status_gib()
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(warmup + runs):
            w0, c0 = time.perf_counter(), time.process_time()
            runner.run(end_to_end, runner.model, image)
            if i >= warmup:
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
    end = process_status_gib()
    return {
        "peak_rss_gib": end.get("VmHWM"),
        "rss_after_import_gib": after_import.get("VmRSS"),
        "rss_after_build_gib": after_build.get("VmRSS"),
        "rss_at_end_gib": end.get("VmRSS"),
        "median_s": statistics.median(wall),
        "median_cpu_s": statistics.median(cpu),
        "warmup": warmup,
        "runs": runs,
    }


def measure_process_peak(cfg, mode: str, size: Tuple[int, int], *, warmup: int = 2,
                         runs: int = 5, threads: int = 0, timeout: float = 1800) -> Dict:
    """The whole-process figures of one mode (see the module docstring), measured in a fresh
    process. ``cfg``'s ``MODEL.DEVICE`` decides the device."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_worker, daemon=True,
                              args=(child, cfg.dump(), mode, tuple(size), warmup, runs, threads))
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"The process-peak measurement of mode {mode!r} took more than "
                               f"{timeout:.0f} s; lower --process-peak-runs or the input size")
        status, value = parent.recv()
    except EOFError as e:
        process.join(timeout=5)
        raise RuntimeError(
            f"The process-peak worker of mode {mode!r} died (exit code {process.exitcode}); "
            "out of memory? Lower --input-size or skip it with --process-peak-runs 0") from e
    finally:
        parent.close()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    if status != "ok":
        raise RuntimeError(f"The process-peak measurement of mode {mode!r} failed:\n{value}")
    return value


def measure_process_peaks(cfg, modes: Sequence[str], size: Tuple[int, int], *, warmup: int,
                          runs: int, threads: int,
                          progress=logger.info) -> Tuple[Dict[str, Dict], Optional[str]]:
    """:func:`measure_process_peak` for each mode in turn: ``({mode: figures}, None)``, or
    ``({}, why)`` where it cannot be measured."""
    if not os.path.exists(_STATUS_FILE):
        return {}, f"{_STATUS_FILE} is not available (not Linux)"
    out = {}
    for mode in modes:
        progress(f"Whole-process peak memory of mode {mode}: a fresh process builds the model, "
                 f"runs {warmup} + {runs} images at {size[0]}x{size[1]}")
        out[mode] = measure_process_peak(cfg, mode, size, warmup=warmup, runs=runs,
                                         threads=threads)
    return out, None
