"""Benchmark machinery (sfnet_d2/benchmark/timing.py, projects/SFNet/benchmark.py) and the
per-module FLOP breakdown against the official figures (official-sfnet.md section 3)."""
import json
import os
import multiprocessing as mp
import time

import numpy as np
import pytest
import torch

from helpers import make_cfg
from sfnet_d2.deployment.memory import keep_memory_supported
from sfnet_d2.benchmark.timing import (
    OtherProcessLoad,
    RunRecord,
    conv_gemm_task,
    flop_bound_seconds,
    peak_memory_of,
    percentile,
    round_robin,
    summarize,
)

CONFIGS = "configs/cityscapes/semantic/"


def test_summary_statistics_hand_computed():
    records = [RunRecord(float(t), 2.0 * t, other) for t, other in
               zip(range(1, 11), [0.0, 0.1, 0.5, 0.0, 1.0, 0.0, 0.0, 0.9, 0.2, 0.05])]
    s = summarize(records)
    assert s["median_s"] == pytest.approx(5.5)
    assert s["p90_s"] == pytest.approx(9.1)  # 9 + 0.1 * (10 - 9), linear interpolation
    assert s["fps"] == pytest.approx(1 / 5.5) and s["median_cpu_s"] == pytest.approx(11.0)
    assert s["clean_runs"] == 6 and s["clean_median_s"] == pytest.approx(5.0)  # runs 1,2,4,6,7,10
    assert percentile([3.0], 90) == 3.0


def test_round_robin_interleaves_after_warmup():
    calls = []
    tasks = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    records = round_robin(tasks, runs=3, warmup=2, device="cpu")
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(records[k]) for k in "ab"] == [3, 3]
    assert all(r.seconds >= 0 for r in records["a"])


def test_flop_bound_matches_the_reference_table():
    # official-sfnet.md section 3: R18 244.01 GFLOPs at 353.5 GFLOP/s -> 1.381 s; Lite 178.85 -> 1.012 s
    assert flop_bound_seconds(244.01, 353.5) == pytest.approx(1.381, abs=5e-4)
    assert flop_bound_seconds(178.85, 353.5) == pytest.approx(1.012, abs=5e-4)


def test_conv_gemm_task_is_a_matrix_product():
    task, macs = conv_gemm_task("cpu", size=64)
    assert macs == 64 ** 3
    out = task()
    assert out.shape == (1, 64, 8, 8)
    gen = torch.Generator().manual_seed(0)  # the task's own inputs, rebuilt
    x = torch.randn(1, 64, 8, 8, generator=gen)
    w = torch.randn(64, 64, 1, 1, generator=gen) / 8.0
    expected = (w[:, :, 0, 0] @ x.reshape(64, 64)).reshape(1, 64, 8, 8)
    assert torch.allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="square number"):
        conv_gemm_task("cpu", size=1000)


def test_peak_memory_sees_an_allocation():
    def task():
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        return float(a[-1])

    peak = peak_memory_of(task, "cpu")
    assert 60 * 2**20 <= peak < 200 * 2**20


def _spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def test_other_process_load_sees_a_busy_child():
    load = OtherProcessLoad()
    child = mp.get_context("fork").Process(target=_spin, args=(1.0,))
    load.start()
    child.start()
    child.join()
    assert load.stop() >= 0.3  # the child kept (a share of) one core busy


# ------------------------------------------------------------------------------ FLOP breakdown
def _breakdown(config, height, width):
    from detectron2.modeling import build_model
    from sfnet_d2.benchmark.flops import count_network_flops, flop_breakdown

    model = build_model(make_cfg(CONFIGS + config))
    scale = (1024 * 2048) / (height * width)  # convolution FLOPs scale with the pixel count
    return {r.official or r.name: r.gmacs * scale for r in
            flop_breakdown(count_network_flops(model, height, width))}


def test_flop_breakdown_r18_equals_official():
    # official-sfnet.md section 3, GFLOPs at 1024x2048; measured here at 256x512, scaled by 16.
    rows = _breakdown("sfnet_R18.yaml", 256, 512)
    official = {"layer0": 59.16, "layer1": 25.32, "layer2": 17.22, "layer3": 17.20,
                "layer4": 17.19, "conv_last": 77.66, "fpn_out": 25.41,
                "fpn_out_align (FAMs)": 2.29, "fpn_in": 1.92}
    for name, gflops in official.items():
        assert rows[name] == pytest.approx(gflops, abs=0.006), name
    # PPM convs on pooled bins do not scale with the image: within 0.06 of 0.28, and the total
    assert rows["ppm"] == pytest.approx(0.28, abs=0.06)
    assert rows["total"] == pytest.approx(244.01, abs=0.06)


def test_flop_breakdown_lite_r18_equals_official():
    rows = _breakdown("sfnet_lite_R18.yaml", 256, 512)
    assert rows["conv_last"] == pytest.approx(39.01, abs=0.006)
    assert rows["fpn_out_align (GD-FAM)"] == pytest.approx(1.87, abs=0.006)
    assert rows["fpn_in"] == pytest.approx(1.38, abs=0.006)
    assert rows["total"] == pytest.approx(178.85, abs=0.06)


# ------------------------------------------------------------------------------ the command
def test_benchmark_command_small(tmp_path, demo_datasets):
    import benchmark

    out = tmp_path / "bench.json"
    report = benchmark.main([
        "--config-file", CONFIGS + "sfnet_lite_R18.yaml", "--input-size", "64", "128",
        "--runs", "1", "--warmup", "1", "--threads", "2",
        "--modes", "eager", "eager-kept-memory", "optimized", "fp16",
        "--gemm-size", "1024", "--accuracy-dataset", demo_datasets[1], "--accuracy-images", "1",
        "--output", str(out), "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
    ])
    assert json.loads(out.read_text())["results"].keys() == report["results"].keys()
    results = report["results"]
    kept = {"eager-kept-memory/network", "eager-kept-memory/end_to_end"}
    if not keep_memory_supported():  # not glibc: skipped with its reason
        assert "eager-kept-memory" in report["skipped_modes"]
        kept = set()
    assert set(results) == {"eager/network", "eager/end_to_end", "optimized/network",
                            "optimized/end_to_end", "conv_gemm"} | kept
    # with kept memory in the process, the plain eager model runs in its own process
    assert report["eager_in_separate_process"] == keep_memory_supported()
    assert "fp16" in report["skipped_modes"]  # CPU: skipped with its reason
    # the ratios are what they claim to be
    opt, eager = results["optimized/network"], results["eager/network"]
    assert opt["speedup_vs_eager"] == pytest.approx(eager["median_s"] / opt["median_s"])
    throughput = 2 * 1024 ** 3 / results["conv_gemm"]["median_s"] / 1e9
    assert report["conv_throughput_gflops_per_s"] == pytest.approx(throughput)
    bound = 2 * report["fvcore_gmacs"] / throughput
    assert opt["flop_bound_s"] == pytest.approx(bound)
    assert opt["measured_over_bound"] == pytest.approx(opt["median_s"] / bound)
    bound_cpu = 2 * report["fvcore_gmacs"] / (2 * 1024 ** 3 / results["conv_gemm"]["median_cpu_s"] / 1e9)
    assert opt["cpu_measured_over_bound"] == pytest.approx(opt["median_cpu_s"] / bound_cpu)
    # 64x128 is 1/256 of 1024x2048 (PPM bins aside): official 178.85 GFLOPs
    assert report["fvcore_gmacs"] * 256 == pytest.approx(178.85, rel=0.01)
    acc = report["accuracy_vs_eager"]["optimized"]
    assert acc["pixels"] == 128 * 256  # one demo image of 128x256
    assert acc["max_abs_logit_deviation"] < 1e-4 and acc["argmax_changed_fraction"] < 1e-3


def test_isolated_tasks_run_in_a_worker_and_report_its_cpu_time_and_memory():
    from sfnet_d2.benchmark.isolated_runs import ExternalRun, IsolatedTasks

    work = {
        "busy": (sum, (range(4_000_000),)),  # pure CPU work in the worker
        "alloc": (torch.ones, (64 * 2 ** 20 // 4,)),  # a 64 MiB tensor, filled
        "broken": (int, ("not a number",)),
    }
    with IsolatedTasks(work, threads=1) as isolated:
        busy = isolated.task("busy")
        records = round_robin({"busy": busy}, runs=2, warmup=1, device="cpu")
        for rec in records["busy"]:
            # the CPU time is the worker's (the caller only waits), close to the wall time
            assert 0.5 * rec.seconds < rec.cpu_seconds <= rec.seconds * 1.05 + 0.01
        assert isinstance(busy(), ExternalRun)
        assert peak_memory_of(isolated.task("alloc"), "cpu") >= 60 * 2 ** 20
        with pytest.raises(RuntimeError, match="ValueError"):
            isolated.task("broken")()
        with pytest.raises(KeyError):
            isolated.task("missing")
        assert isolated.pid != os.getpid()
