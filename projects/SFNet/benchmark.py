#!/usr/bin/env python
"""
Inference speed of a config's model, in several inference modes timed in one run (docs/BENCHMARK.md).

Protocol (the paper's by default): 1024x2048 input, batch 1, eval mode, ``torch.inference_mode``,
warm-up runs, then N timed runs with the modes interleaved round robin (so that load from other
processes hits every mode alike). Two phases per mode:

* ``network``: the network alone on a normalised, padded image tensor -> full-resolution logits
  (what the official timing measures);
* ``end_to_end``: a uint8 (3, H, W) image as the data loader gives it -> normalisation, padding,
  network, post-processing (crop / resize of the logits) -> argmax label map on the CPU.

Modes: ``eager`` (the plain detectron2 model, in its own process when another mode keeps memory),
``eager-kept-memory`` (the same with the optimised path's allocator setting,
DEPLOY.KEEP_MEMORY), ``optimized`` (DEPLOY.*, fp32),
``optimized-eager`` (the same without TorchScript), ``bf16`` (optimised, bfloat16; CPUs with
native bf16 and GPUs), ``fp16`` (optimised, float16; CUDA only). Unavailable modes are skipped
with the reason printed. A 4096^3 GEMM run as a 1x1 convolution is timed in the same rounds; it
gives the machine's fp32 convolution throughput and each model's FLOP bound
(2 * fvcore GMACs / throughput).

    python projects/SFNet/benchmark.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/benchmark.py --config-file ... --input-size 512 1024 --runs 10 --threads 2
    python projects/SFNet/benchmark.py --config-file ... --modes eager optimized --output out.json
    python projects/SFNet/benchmark.py --config-file ... --device cuda MODEL.WEIGHTS model.pth
"""
import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import psutil
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import SemanticSegmentor, build_model
from detectron2.structures import ImageList
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402

from sfnet_d2.deployment import (  # noqa: E402
    OptimizedSemanticSegmentor,
    SemanticNetwork,
    optimize_model,
)
from sfnet_d2.benchmark.timing import (  # noqa: E402
    CLEAN_OTHER_CORES,
    PeakMemory,
    peak_memory_of,
    bf16_support,
    conv_gemm_task,
    end_to_end,
    flop_bound_seconds,
    round_robin,
    summarize,
)
from sfnet_d2.benchmark.isolated_runs import IsolatedTasks  # noqa: E402
from sfnet_d2.deployment.memory import kept_memory, keep_memory_supported  # noqa: E402
from sfnet_d2.benchmark.flops import count_network_flops  # noqa: E402

logger = logging.getLogger("sfnet_d2.benchmark")

ALL_MODES = ("eager", "eager-kept-memory", "optimized-eager", "optimized", "bf16", "fp16")
DEFAULT_MODES = ("eager", "eager-kept-memory", "optimized", "bf16", "fp16")
PHASES = ("network", "end_to_end")
GEMM = "conv_gemm"


class Mode:
    """One way of running the model: ``model`` has the SemanticSegmentor forward(batched_inputs);
    ``network`` maps normalised padded images to logits (None if the model has no such part)."""

    def __init__(self, name: str, model: torch.nn.Module, network, description: str,
                 keep_memory: bool = False):
        self.name, self.model, self.network, self.description = name, model, network, description
        # Run inside kept_memory() (the plain model with the optimised path's allocator setting:
        # shows how much of the speed-up is memory management alone).
        self.keep_memory = keep_memory

    def run(self, fn, *args):
        with kept_memory(self.keep_memory):
            return fn(*args)


def mode_unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    if name == "fp16" and device.type != "cuda":
        return ("fp16 is timed on CUDA only: CPU convolutions have no fast float16 path "
                "(use bf16 on CPUs)")
    if name == "bf16":
        return bf16_support(device)
    return None


def build_modes(cfg, model: torch.nn.Module, names, device) -> (List[Mode], Dict[str, str]):
    """The requested modes that can run here, and the reasons for the others."""
    modes, skipped = [], {}
    settings = cfg.DEPLOY
    for name in names:
        if name not in ALL_MODES:
            raise ValueError(f"--modes: unknown mode {name!r}; choose from {list(ALL_MODES)}")
        reason = mode_unavailable_reason(name, device)
        if reason:
            skipped[name] = reason
            continue
        if name == "eager":
            modes.append(Mode(name, model, network_of(model), "plain model, eager"))
            continue
        if name == "eager-kept-memory":
            if device.type != "cpu" or not keep_memory_supported():
                skipped[name] = ("kept memory is a glibc CPU allocator setting "
                                 "(sfnet_d2/deployment/memory.py); not available here")
                continue
            modes.append(Mode(name, model, network_of(model),
                              "plain model, eager, large blocks from a kept heap", True))
            continue
        kwargs = dict(channels_last=settings.CHANNELS_LAST, torchscript=settings.TORCHSCRIPT,
                      precision="fp32", max_compiled_sizes=settings.MAX_COMPILED_SIZES,
                      keep_memory=settings.KEEP_MEMORY)
        if name == "optimized-eager":
            kwargs["torchscript"] = "none"
        elif name in ("bf16", "fp16"):
            kwargs["precision"] = name
        optimized = optimize_model(model, **kwargs)
        if isinstance(optimized, OptimizedSemanticSegmentor):
            description = (f"BN folded, channels_last={kwargs['channels_last']}, "
                           f"torchscript={kwargs['torchscript']}, {kwargs['precision']}")
        elif name in ("bf16", "fp16"):
            skipped[name] = (f"reduced precision is implemented for SemanticSegmentor models only, "
                             f"not {type(model).__name__}")
            continue
        elif name == "optimized-eager":
            skipped[name] = f"same as 'optimized' for {type(model).__name__}"
            continue
        else:
            description = "BN folded, dropout removed (module rewrites only), fp32"
        modes.append(Mode(name, optimized, network_of(optimized), description))
    return modes, skipped


def network_of(model: torch.nn.Module):
    """The network part (normalised padded images -> raw outputs) of a model, or None."""
    if isinstance(model, OptimizedSemanticSegmentor):
        return model.network_forward
    if isinstance(model, SemanticSegmentor):
        return SemanticNetwork(model.backbone, model.sem_seg_head)
    if callable(getattr(model, "forward_head", None)):  # K-Net panoptic
        return model.forward_head
    return None


def isolate_eager(cfg, modes: List[Mode], tasks: Dict, device, net_input, image):
    """
    When another mode changes the process's allocator (kept memory, CPU + glibc), run the
    ``eager`` tasks in a fresh worker process (isolated_runs.py), replacing them in ``tasks`` in
    place (same order, so the round robin still interleaves them). Returns the workers' handle to
    close, or None when eager runs in this process.
    """
    keeps = {m.name for m in modes if m.keep_memory}
    if cfg.DEPLOY.KEEP_MEMORY:
        keeps |= {m.name for m in modes if isinstance(m.model, OptimizedSemanticSegmentor)}
    if device.type != "cpu" or not keep_memory_supported() or not keeps:
        return None
    eager = next(m for m in modes if m.name == "eager")
    work = {}
    if "eager/network" in tasks:
        work["eager/network"] = (eager.network, (net_input,))
    if "eager/end_to_end" in tasks:
        work["eager/end_to_end"] = (end_to_end, (eager.model, image))
    if not work:
        return None
    print(f"Timing the plain eager model in a separate process: {sorted(keeps)} change this "
          "process's allocator (DEPLOY.KEEP_MEMORY), which would otherwise speed up "
          "eager runs after them")
    isolated = IsolatedTasks(work, torch.get_num_threads())
    for name in work:
        tasks[name] = isolated.task(name)
    return isolated


def network_input(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The normalised, padded batch the network sees (the model's own pre-processing)."""
    x = (image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
    divisibility = (model.backbone.size_divisibility if isinstance(model, SemanticSegmentor)
                    else getattr(model, "size_divisibility", 0))
    return ImageList.from_tensors([x], divisibility).tensor


def load_accuracy_images(dataset: str, count: int):
    """Up to ``count`` images of a registered dataset as uint8 (3, H, W) tensors, or (None, why)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    if count <= 0:
        return None, "--accuracy-images 0"
    try:
        records = DatasetCatalog.get(dataset)
    except Exception as e:  # noqa: BLE001 - unregistered or missing files: say why and go on
        return None, f"dataset {dataset!r} is not available ({type(e).__name__}: {e})"
    images = []
    for record in records[:count]:
        array = read_image(record["file_name"], format="RGB")
        images.append(torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1))))
    return images, None


def _prediction(model: torch.nn.Module, image: torch.Tensor):
    out = model([{"image": image}])[0]
    if "sem_seg" in out:
        return out["sem_seg"].float().cpu()
    return out["panoptic_seg"][0].cpu()


def compare_with_eager(modes: List[Mode], images) -> Dict[str, Dict[str, float]]:
    """Per mode: max |logit - eager logit| and the fraction of pixels whose argmax changes (for a
    panoptic model without semantic output: the fraction whose segment id changes)."""
    eager = next(m for m in modes if m.name == "eager")
    out = {}
    with torch.inference_mode():
        references = [_prediction(eager.model, im) for im in images]
        for mode in modes:
            if mode.name == "eager":
                continue
            max_dev, changed, total = 0.0, 0, 0
            for image, ref in zip(images, references):
                got = _prediction(mode.model, image)
                if ref.dim() == 3:  # (K, H, W) logits
                    max_dev = max(max_dev, (got - ref).abs().max().item())
                    changed += int((got.argmax(0) != ref.argmax(0)).sum())
                    total += ref[0].numel()
                else:  # (H, W) panoptic segment ids
                    max_dev = None
                    changed += int((got != ref).sum())
                    total += ref.numel()
            out[mode.name] = {"max_abs_logit_deviation": max_dev,
                              "argmax_changed_fraction": changed / total, "pixels": total}
    return out


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


def run_benchmark(args) -> Dict[str, object]:
    cfg = build_config(args.config_file, args.opts)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine; use --device cpu")
    height, width = args.input_size
    model = build_model(cfg).to(device).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("No MODEL.WEIGHTS: random weights (speed is the same; the bf16/fp16 "
                       "deviations then compare modes of an untrained model)")
    modes, skipped = build_modes(cfg, model, args.modes, device)
    for name, reason in skipped.items():
        print(f"Skipping mode {name}: {reason}")
    if not any(m.name == "eager" for m in modes):
        raise SystemExit("--modes must include 'eager': every ratio is relative to it")

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    net_input = network_input(model, image)

    tasks = {}
    for mode in modes:
        if "network" in args.phases and mode.network is not None:
            tasks[f"{mode.name}/network"] = (lambda m=mode: m.run(m.network, net_input))
        if "end_to_end" in args.phases:
            tasks[f"{mode.name}/end_to_end"] = (lambda m=mode: m.run(end_to_end, m.model, image))
    isolated = isolate_eager(cfg, modes, tasks, device, net_input, image)
    gemm_macs = None
    if not args.no_gemm:
        tasks[GEMM], gemm_macs = conv_gemm_task(device, args.gemm_size)

    def progress(msg):
        logger.info(msg)

    print(f"Timing {len(tasks)} tasks at {height}x{width}, batch 1, {device}, "
          f"{torch.get_num_threads()} threads: {args.warmup} warm-up + {args.runs} runs each, "
          "round robin")
    try:
        with torch.inference_mode():
            records = round_robin(tasks, args.runs, args.warmup, device, progress)
            results = {name: summarize(recs) for name, recs in records.items()}
            for name, task in tasks.items():
                results[name]["peak_memory_mib"] = peak_memory_of(task, device) / 2**20
    finally:
        if isolated is not None:
            isolated.close()

    gmacs = None
    if not args.no_flops and network_of(model) is not None:
        gmacs = count_network_flops(model, height, width).total() / 1e9
    throughput = throughput_cpu = None
    if GEMM in results:
        throughput = 2 * gemm_macs / results[GEMM]["median_s"] / 1e9
        results[GEMM]["gflops_per_s"] = throughput
        # The same in CPU time (GFLOP per CPU-second of this process, all threads): on a shared
        # machine, model and reference lose wall time to other processes differently; CPU time
        # is much less affected.
        throughput_cpu = 2 * gemm_macs / results[GEMM]["median_cpu_s"] / 1e9
        results[GEMM]["gflops_per_cpu_s"] = throughput_cpu

    for name, res in results.items():
        if name == GEMM:
            continue
        mode, phase = name.split("/")
        base = results.get(f"eager/{phase}")
        res["speedup_vs_eager"] = base["median_s"] / res["median_s"] if base else None
        if gmacs is not None and throughput is not None:
            bound = flop_bound_seconds(gmacs, throughput)
            res["flop_bound_s"] = bound
            res["measured_over_bound"] = res["median_s"] / bound
            res["cpu_measured_over_bound"] = (
                res["median_cpu_s"] / flop_bound_seconds(gmacs, throughput_cpu))

    accuracy, accuracy_note = {}, None
    if len(modes) > 1:
        images, accuracy_note = load_accuracy_images(args.accuracy_dataset, args.accuracy_images)
        if images:
            accuracy = compare_with_eager(modes, images)
            accuracy_note = (f"{len(images)} images of {args.accuracy_dataset} at their own size, "
                             f"weights: {cfg.MODEL.WEIGHTS or 'random'}")
        else:
            print(f"Accuracy comparison skipped: {accuracy_note}")
    return {
        "config": args.config_file,
        "opts": args.opts,
        "input_size": [height, width],
        "batch": 1,
        "warmup": args.warmup,
        "runs": args.runs,
        "machine": machine_info(device),
        "memory_method": PeakMemory(device).method,
        "clean_run_threshold_other_cores": CLEAN_OTHER_CORES,
        "modes": {m.name: m.description for m in modes},
        "skipped_modes": skipped,
        # True: the eager tasks ran in a fresh worker process (isolate_eager)
        "eager_in_separate_process": isolated is not None,
        "fvcore_gmacs": gmacs,
        "gemm_size": args.gemm_size,
        "conv_throughput_gflops_per_s": throughput,
        "conv_throughput_gflops_per_cpu_s": throughput_cpu,
        "results": results,
        "accuracy_vs_eager": accuracy,
        "accuracy_note": accuracy_note,
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_report(report: Dict[str, object]) -> str:
    h, w = report["input_size"]
    m = report["machine"]
    lines = [
        f"{report['config']} at {h}x{w}, batch 1, {m['device']} ({m['cpu']}, "
        f"{m['torch_threads']} threads), torch {m['torch']}",
        f"fvcore: {_fmt(report['fvcore_gmacs'], '.2f')} GMACs; conv throughput "
        f"({report['gemm_size']}^3 GEMM as 1x1 conv): "
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
            f"{_fmt(res.get('speedup_vs_eager'), '.2f'):>8} {_fmt(res.get('flop_bound_s'), '.3f'):>8} "
            f"{_fmt(res.get('measured_over_bound'), '.2f'):>7} {clean:>9} "
            f"{(np.mean(other) if other else float('nan')):>7.2f} {res['median_cpu_s']:>7.3f} "
            f"{_fmt(res.get('cpu_measured_over_bound'), '.2f'):>7}"
        )
    if GEMM in report["results"]:
        g = report["results"][GEMM]
        lines.append(f"{'conv GEMM':<28} {g['median_s']:>9.3f} {g['p90_s']:>8.3f}   CPU "
                     f"{g['median_cpu_s']:.3f} s = {g['gflops_per_cpu_s']:.1f} GFLOP per CPU-s")
    lines.append("vs eager = eager median / mode median (same phase); /bound = median / FLOP bound; "
                 f"clean = median over runs with other processes < {CLEAN_OTHER_CORES} cores "
                 "(count); others = mean cores used by other processes during the runs; CPU s = median "
                 "CPU time of this process per run (all threads); CPU/bnd = the same ratio as /bound in "
                 "CPU time (model CPU s over its FLOPs at the GEMM's GFLOP per CPU-s)")
    for name, acc in report["accuracy_vs_eager"].items():
        lines.append(f"accuracy {name}: max |logit - eager| = "
                     f"{_fmt(acc['max_abs_logit_deviation'], '.2e')}, "
                     f"argmax changed on {100 * acc['argmax_changed_fraction']:.4f}% of "
                     f"{acc['pixels']} pixels")
    if report["accuracy_note"]:
        lines.append(f"accuracy data: {report['accuracy_note']}")
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                        help=f"any of {list(ALL_MODES)}; 'eager' is required (the reference)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per mode and phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (tracing)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0 = PyTorch's default)")
    parser.add_argument("--device", default="", help="cpu or cuda (default: MODEL.DEVICE)")
    parser.add_argument("--output", default="", help="JSON file (default: print only)")
    parser.add_argument("--no-gemm", action="store_true", help="skip the throughput reference")
    parser.add_argument("--gemm-size", type=int, default=4096,
                        help="N of the N^3 GEMM run as a 1x1 conv (a square number)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore count")
    parser.add_argument("--accuracy-dataset", default="sfnet_demo_cityscapes_fine_sem_seg_val")
    parser.add_argument("--accuracy-images", type=int, default=4,
                        help="images compared against eager (0 = no comparison)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    report = run_benchmark(args)
    print(format_report(report))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.output)
        print(f"Wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
