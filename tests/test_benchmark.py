"""Benchmark machinery (sfnet_d2/benchmark/: timing, run, report, flops), the benchmark command
(projects/SFNet/benchmark.py, and its safe weight loading) and the per-module FLOP breakdown
against the figures measured by running lxtGH/SFSegNets@ba475ba with fvcore (docs/BENCHMARK.md)."""
import json
import os
import multiprocessing as mp
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import ROOT, make_cfg
from sfnet_d2.benchmark.report import format_report, write_report
from sfnet_d2.benchmark.run import BenchmarkSettings, run_benchmark
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
    # R18 244.01 GFLOPs at 353.5 GFLOP/s -> 1.381 s; Lite 178.85 -> 1.012 s (2 FLOPs per MAC)
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


@pytest.mark.slow
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
    # GFLOPs at 1024x2048 of the official code (docs/BENCHMARK.md); measured here at 256x512,
    # scaled by 16.
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


def _parameters(cfg):
    from detectron2.modeling import build_model

    return sum(p.numel() for p in build_model(cfg).parameters())


def test_fused_attention_flops_hand_computed():
    """K-Net's kernel interaction (self-attention over the kernels) runs nn.MultiheadAttention's
    fused inference op, which fvcore has no handle for: ours counts the q/k/v and output
    projections + Q K^T + A V, one multiply-add each."""
    from sfnet_d2.benchmark.flops import flop_count_analysis

    n, c = 5, 8

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(c, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    module, x = SelfAttention().eval(), torch.randn(1, n, c)
    with torch.no_grad():
        fused = flop_count_analysis(module, (x,))
        assert set(fused.by_operator()) == {"_native_multi_head_attention"}
        # q, k, v and output projections 4 n c^2 = 1280; Q K^T and A V 2 n^2 c = 400
        assert fused.total() == 1280 + 400
        # the projections as fvcore counts them when the composite ops run (its linear handle)
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            composite = flop_count_analysis(module, (x,))
            assert composite.by_operator()["linear"] == 1280
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


KNET_DEMO = "configs/demo/knet_sfnet_STDC1_demo_coco.yaml"


def test_knet_flops_expand_the_model_and_count_its_attention():
    from sfnet_d2.benchmark.flops import analyze, flop_breakdown

    cfg = make_cfg(KNET_DEMO)
    cost = analyze(cfg, 64, 128)
    # the K-Net part holds the whole model: the breakdown expands it, and its parts add up
    rows = {r.name: r.gmacs for r in flop_breakdown(cost.flops)}
    parts = ["model.backbone", "model.neck", "model.feature_branches", "model.kernel_head",
             "model.stages"]
    assert set(parts) <= set(rows)
    # the neck's fusion runs in forward_features, a plain method: outside every module scope
    outside = rows["(outside the modules above)"]
    assert 0 < outside < 0.01 * rows["total"]
    assert sum(rows[p] for p in parts) + outside == pytest.approx(rows["total"], rel=1e-9)
    from detectron2.modeling import build_model

    model = build_model(cfg)
    # each stage: one self-attention over the kernels (proposals + stuff) of FEAT_CHANNELS
    k, c = model.num_proposals + model.layout.num_stuff_classes, cfg.MODEL.KNET.FEAT_CHANNELS
    attention = cost.flops.by_operator()["_native_multi_head_attention"]
    assert attention == len(model.stages) * (4 * k * c * c + 2 * k * k * c)
    assert cost.parameters == sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ the benchmark
@pytest.mark.slow
def test_run_benchmark_small(tmp_path, demo_datasets):
    settings = BenchmarkSettings(
        input_size=(64, 128), runs=1, warmup=1, threads=2,
        modes=("eager", "eager-kept-memory", "optimized", "fp16"), gemm_size=1024,
        accuracy_dataset=demo_datasets[1], accuracy_images=1, process_peak_runs=1)
    cfg = make_cfg(CONFIGS + "sfnet_lite_R18.yaml")
    report = run_benchmark(cfg, settings, config_file="lite")
    out = tmp_path / "bench.json"
    write_report(report, str(out))
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
    throughput_cpu = 2 * 1024 ** 3 / results["conv_gemm"]["median_cpu_s"] / 1e9
    bound_cpu = 2 * report["fvcore_gmacs"] / throughput_cpu
    assert opt["cpu_measured_over_bound"] == pytest.approx(opt["median_cpu_s"] / bound_cpu)
    # 64x128 is 1/256 of 1024x2048 (PPM bins aside): official 178.85 GFLOPs
    assert report["fvcore_gmacs"] * 256 == pytest.approx(178.85, rel=0.01)
    assert report["parameters"] == _parameters(cfg)
    acc = report["accuracy_vs_eager"]["optimized"]
    assert acc["pixels"] == 128 * 256  # one demo image of 128x256
    assert acc["max_abs_logit_deviation"] < 1e-4 and acc["argmax_changed_fraction"] < 1e-3
    # the printed split: end to end = network + pre/post-processing
    e2e, net = results["optimized/end_to_end"], results["optimized/network"]
    assert (f"optimized: end to end {e2e['median_s']:.3f} s = network {net['median_s']:.3f} + "
            f"pre/post-processing {e2e['median_s'] - net['median_s']:.3f}") in format_report(report)
    # whole-process peak memory: one fresh process per mode that ran (fp16 was skipped)
    peaks = report["process_peak"]
    assert set(peaks) == {"eager", "optimized"} | {m.split("/")[0] for m in kept}
    for figures in peaks.values():
        assert figures["runs"] == 1 and figures["warmup"] == 1
        # the peak includes everything the process held after building its model, which
        # includes the imported libraries (torch alone maps well over 100 MiB)
        assert figures["peak_rss_gib"] >= figures["rss_after_build_gib"] > 0.1
        assert figures["rss_after_build_gib"] >= figures["rss_after_import_gib"] * 0.99
        assert figures["median_s"] > 0 and figures["median_cpu_s"] > 0
    assert f"peak {peaks['optimized']['peak_rss_gib']:.3f} GiB" in format_report(report)


@pytest.mark.slow
def test_run_benchmark_panoptic_model(demo_datasets):
    """A panoptic config is just another config: network part, end to end, FLOPs, parameters."""
    from sfnet_d2.benchmark.flops import analyze

    settings = BenchmarkSettings(input_size=(64, 128), runs=1, warmup=0, threads=1,
                                 modes=("eager", "optimized"), gemm_size=0,
                                 accuracy_dataset=demo_datasets[1], accuracy_images=1,
                                 process_peak_runs=0)
    report = run_benchmark(make_cfg(KNET_DEMO), settings)
    assert report["meta_architecture"] == "SFNetKNet"
    assert set(report["results"]) == {f"{m}/{p}" for m in ("eager", "optimized")
                                      for p in ("network", "end_to_end")}
    cost = analyze(make_cfg(KNET_DEMO), 64, 128)
    assert report["fvcore_gmacs"] == pytest.approx(cost.total / 1e9, rel=1e-12)
    assert report["parameters"] == cost.parameters
    # the optimised K-Net (optimized_panoptic.py): class and mask logits within 1e-4 of eager's,
    # the same panoptic segments
    assert report["accuracy_vs_eager"]["optimized"]["max_abs_logit_deviation"] < 1e-4
    assert report["accuracy_vs_eager"]["optimized"]["argmax_changed_fraction"] < 1e-3


def _run_command(*args, timeout=600):
    """A command as a user runs it: its own process, in the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


BENCH_ARGS = ["projects/SFNet/benchmark.py", "--config-file", CONFIGS + "sfnet_lite_R18.yaml",
              "--input-size", "64", "128", "--runs", "1", "--warmup", "0", "--modes", "eager",
              "--no-gemm", "--no-flops", "--accuracy-images", "0", "--threads", "1",
              "--process-peak-runs", "0"]
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]


@pytest.mark.slow
def test_benchmark_command_writes_its_report(tmp_path):
    out = tmp_path / "bench.json"
    done = _run_command(*BENCH_ARGS, "--output", str(out), *BN, "MODEL.WEIGHTS", "")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"eager/network", "eager/end_to_end"}
    assert report["opts"][-2:] == ["MODEL.WEIGHTS", ""] and report["runs"] == 1
    assert "eager: end to end" in done.stdout
    assert "randomly initialised" in done.stdout + done.stderr  # empty MODEL.WEIGHTS: logged


class _CreatesFile:
    """Unpickling it creates ``path``: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_benchmark_refuses_weights_that_run_code(tmp_path, suffix):
    payload = {"model": {"conv.weight": _CreatesFile(str(tmp_path / "proof"))}}
    pickle.loads(pickle.dumps(payload))  # the payload works when unpickled naively...
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "created_by_the_checkpoint"
    payload = {"model": {"conv.weight": _CreatesFile(str(marker))}}
    weights = tmp_path / f"evil{suffix}"
    if suffix == ".pkl":
        with open(weights, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, str(weights))
    done = _run_command(*BENCH_ARGS, *BN, "MODEL.WEIGHTS", str(weights))
    assert done.returncode != 0
    assert "refusing to load" in done.stderr.lower(), done.stderr[-3000:]
    assert str(weights) in done.stderr
    assert not marker.exists()  # ... and the benchmark never unpickled it so


@pytest.mark.slow
def test_benchmark_refuses_another_architectures_checkpoint(tmp_path):
    from detectron2.modeling import build_model

    weights = tmp_path / "sfnet_R18.pth"
    torch.save({"model": build_model(make_cfg(CONFIGS + "sfnet_R18.yaml")).state_dict()},
               str(weights))
    done = _run_command(*BENCH_ARGS, *BN, "MODEL.WEIGHTS", str(weights))  # a Lite-R18 config
    assert done.returncode != 0
    assert "does not match the model" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
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


def test_process_peak_settings_and_status_parsing(tmp_path, monkeypatch):
    from sfnet_d2.benchmark import process_peak

    with pytest.raises(ValueError, match="--process-peak-runs -1"):
        BenchmarkSettings(process_peak_runs=-1).check()
    with pytest.raises(ValueError, match="--beside configs/nope.yaml: no such config file"):
        BenchmarkSettings(beside_config="configs/nope.yaml").check()
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t 2097152 kB\nVmRSS:\t  524288 kB\nThreads:\t3\n")
    monkeypatch.setattr(process_peak, "_STATUS_FILE", str(status))
    assert process_peak.process_status_gib() == {"VmHWM": 2.0, "VmRSS": 0.5}
    # no /proc: the measurement is skipped with the reason, not failed
    monkeypatch.setattr(process_peak, "_STATUS_FILE", str(tmp_path / "missing"))
    peaks, why = process_peak.measure_process_peaks(None, ["eager"], (8, 8), warmup=0, runs=1,
                                                    threads=1)
    assert peaks == {} and "not available" in why


@pytest.mark.slow
def test_beside_config_is_timed_in_the_same_rounds():
    settings = BenchmarkSettings(input_size=(64, 128), runs=1, warmup=0, threads=1,
                                 modes=("eager", "optimized"), gemm_size=0, flops=False,
                                 accuracy_images=0, process_peak_runs=0,
                                 beside_config=CONFIGS + "sfnet_lite_R18.yaml")
    report = run_benchmark(make_cfg(CONFIGS + "sfnet_R18.yaml"), settings)
    results = report["results"]
    assert {"sfnet_lite_R18:optimized/network", "sfnet_lite_R18:optimized/end_to_end"} <= set(results)
    assert results["sfnet_lite_R18:optimized/network"]["speedup_vs_eager"] is None
    ratio = report["vs_beside"]["optimized/end_to_end"]
    mine, other = results["optimized/end_to_end"], results["sfnet_lite_R18:optimized/end_to_end"]
    assert ratio["wall"] == pytest.approx(mine["median_s"] / other["median_s"])
    assert ratio["cpu"] == pytest.approx(mine["median_cpu_s"] / other["median_cpu_s"])
    assert f"{ratio['wall']:.2f}x wall" in format_report(report)
