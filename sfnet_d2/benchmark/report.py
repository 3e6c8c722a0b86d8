"""
The benchmark's report (sfnet_d2/benchmark/run.py): the machine it ran on, the printed table, and
the JSON file (docs/BENCHMARK.md explains every column).
"""
import json
import os
import platform
from typing import Dict

import numpy as np
import psutil
import torch

from sfnet_d2.benchmark.timing import CLEAN_OTHER_CORES, GEMM

__all__ = ["machine_info", "format_report", "write_report"]


def machine_info(device: torch.device) -> Dict[str, object]:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _split_lines(results: Dict) -> list:
    """Per mode with both phases: end to end = network + the rest (pre- and post-processing; for
    K-Net the mask upsampling and the panoptic merge), in wall and in CPU time."""
    lines = []
    modes = dict.fromkeys(name.split("/")[0] for name in results if name != GEMM)
    for mode in modes:
        net, e2e = results.get(f"{mode}/network"), results.get(f"{mode}/end_to_end")
        if net is None or e2e is None:
            continue
        lines.append(
            f"{mode}: end to end {e2e['median_s']:.3f} s = network {net['median_s']:.3f} + "
            f"pre/post-processing {e2e['median_s'] - net['median_s']:.3f} (CPU time "
            f"{e2e['median_cpu_s']:.3f} = {net['median_cpu_s']:.3f} + "
            f"{e2e['median_cpu_s'] - net['median_cpu_s']:.3f})")
    return lines


def format_report(report: Dict[str, object]) -> str:
    h, w = report["input_size"]
    m = report["machine"]
    gemm = (f"{report['gemm_size']}^3 GEMM as 1x1 conv" if report["gemm_size"]
            else "no GEMM reference")
    lines = [
        f"{report['config']} ({report['meta_architecture']}, {report['parameters']:,} parameters) "
        f"at {h}x{w}, batch 1, {m['device']} ({m['cpu']}, {m['torch_threads']} threads), "
        f"torch {m['torch']}",
        f"fvcore: {_fmt(report['fvcore_gmacs'], '.2f')} GMACs; conv throughput ({gemm}): "
        f"{_fmt(report['conv_throughput_gflops_per_s'], '.1f')} GFLOP/s",
        f"{'mode':<16} {'phase':<11} {'median s':>9} {'p90 s':>8} {'FPS':>7} {'peak MiB':>9} "
        f"{'vs eager':>8} {'bound s':>8} {'/bound':>7} {'clean':>9} {'others':>7} {'CPU s':>7} "
        f"{'CPU/bnd':>7}",
    ]
    for name, res in report["results"].items():
        if name == GEMM:
            continue
        mode, phase = name.split("/")
        other = [c for c in res["other_cores"] if c is not None]
        clean = (f"{res['clean_median_s']:.3f}({res['clean_runs']})"
                 if res["clean_median_s"] is not None else f"-({res['clean_runs']})")
        lines.append(
            f"{mode:<16} {phase:<11} {res['median_s']:>9.3f} {res['p90_s']:>8.3f} "
            f"{res['fps']:>7.2f} {_fmt(res['peak_memory_mib'], '9.0f'):>9} "
            f"{_fmt(res.get('speedup_vs_eager'), '.2f'):>8} "
            f"{_fmt(res.get('flop_bound_s'), '.3f'):>8} "
            f"{_fmt(res.get('measured_over_bound'), '.2f'):>7} {clean:>9} "
            f"{(np.mean(other) if other else float('nan')):>7.2f} {res['median_cpu_s']:>7.3f} "
            f"{_fmt(res.get('cpu_measured_over_bound'), '.2f'):>7}"
        )
    if GEMM in report["results"]:
        g = report["results"][GEMM]
        lines.append(f"{'conv GEMM':<28} {g['median_s']:>9.3f} {g['p90_s']:>8.3f}   CPU "
                     f"{g['median_cpu_s']:.3f} s = {g['gflops_per_cpu_s']:.1f} GFLOP per CPU-s")
    lines.append(
        "vs eager = eager median / mode median (same phase); /bound = median / FLOP bound; "
        f"clean = median over runs with other processes < {CLEAN_OTHER_CORES} cores (count); "
        "others = mean cores used by other processes during the runs; CPU s = median CPU time "
        "of this process per run (all threads); CPU/bnd = the same ratio as /bound in CPU time "
        "(model CPU s over its FLOPs at the GEMM's GFLOP per CPU-s)")
    lines += _split_lines(report["results"])
    # a panoptic model's comparison is of its segment ids (run.compare_with_eager)
    changed = ("panoptic id changed" if report["meta_architecture"] == "SFNetKNet"
               else "argmax changed")
    for name, acc in report["accuracy_vs_eager"].items():
        lines.append(f"accuracy {name}: max |logit - eager| = "
                     f"{_fmt(acc['max_abs_logit_deviation'], '.2e')}, "
                     f"{changed} on {100 * acc['argmax_changed_fraction']:.4f}% of "
                     f"{acc['pixels']} pixels")
    if report["accuracy_note"]:
        lines.append(f"accuracy data: {report['accuracy_note']}")
    for key, ratio in (report.get("vs_beside") or {}).items():
        lines.append(f"{key} vs {report['beside_config']} (same rounds): {ratio['wall']:.2f}x "
                     f"wall, {ratio['cpu']:.2f}x CPU time")
    lines += _process_peak_lines(report)
    return "\n".join(lines)


def _process_peak_lines(report: Dict[str, object]) -> list:
    peaks = report.get("process_peak") or {}
    lines = [f"whole-process peak RSS ({report.get('process_peak_note')})"]
    for mode, p in peaks.items():
        if "skipped" in p:
            lines.append(f"  {mode:<16} skipped: {p['skipped']}")
            continue
        lines.append(
            f"  {mode:<16} peak {p['peak_rss_gib']:.3f} GiB (after import "
            f"{p['rss_after_import_gib']:.3f}, after build {p['rss_after_build_gib']:.3f}); "
            f"end to end median {p['median_s']:.3f} s, CPU {p['median_cpu_s']:.3f} s")
    return lines


def write_report(report: Dict[str, object], path: str) -> str:
    """The report as JSON at ``path``, written to a temporary file and renamed (never half a
    file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)
    return path
