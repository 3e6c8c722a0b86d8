"""
Inference speed of a config's model (semantic or panoptic), in several inference modes timed in
one run: :func:`run_benchmark`. Command: projects/SFNet/benchmark.py; documentation:
docs/BENCHMARK.md.

Protocol (the paper's by default): 1024x2048 input, batch 1, eval mode, ``torch.inference_mode``,
warm-up runs, then N timed runs with the modes interleaved round robin (so that load from other
processes hits every mode alike). Two phases per mode:

* ``network``: the network part alone (sfnet_d2/deployment/network_part.py) on a normalised,
  padded image tensor -> raw outputs (what the official timing measures);
* ``end_to_end``: a uint8 (3, H, W) image as the data loader gives it -> normalisation, padding,
  network, post-processing -> label map on the CPU (semantic: argmax of the logits; panoptic: the
  segment map after the panoptic merge). ``end_to_end - network`` is the pre- and
  post-processing.

Modes: ``eager`` (the plain detectron2 model, in its own process when another mode keeps memory),
``eager-kept-memory`` (the same with the optimised path's allocator setting,
DEPLOY.KEEP_MEMORY), ``optimized`` (DEPLOY.*, fp32),
``optimized-eager`` (the same without TorchScript), ``bf16`` (optimised, bfloat16; CPUs with
native bf16 and GPUs), ``fp16`` (optimised, float16; CUDA only). Unavailable modes are skipped
with the reason. A 4096^3 GEMM run as a 1x1 convolution is timed in the same rounds; it gives the
machine's fp32 convolution throughput and each model's FLOP bound (2 * fvcore GMACs /
throughput).
"""
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sfnet_d2.benchmark.flops import count_network_flops, count_parameters
from sfnet_d2.benchmark.isolated_runs import IsolatedTasks
from sfnet_d2.benchmark.process_peak import measure_process_peaks
from sfnet_d2.benchmark.report import machine_info
from sfnet_d2.benchmark.timing import (
    CLEAN_OTHER_CORES,
    GEMM,
    PeakMemory,
    bf16_support,
    conv_gemm_task,
    end_to_end,
    flop_bound_seconds,
    peak_memory_of,
    round_robin,
    summarize,
)
from sfnet_d2.deployment import (
    NETWORK_PARTS,
    OptimizedInferenceModel,
    inference_options,
    network_part_of,
    normalize_and_pad,
    optimize_model,
    padding_divisibility,
)
from sfnet_d2.deployment.memory import keep_memory_supported, kept_memory
from sfnet_d2.engine import build_model_with_weights

__all__ = ["BenchmarkSettings", "run_benchmark", "ALL_MODES", "DEFAULT_MODES", "PHASES", "GEMM",
           "build_modes", "network_of", "network_input", "compare_with_eager"]

logger = logging.getLogger(__name__)

BESIDE_SEPARATOR = ":"  # task names of the --beside config: "<config name>:<mode>/<phase>"
ALL_MODES = ("eager", "eager-kept-memory", "optimized-eager", "optimized", "bf16", "fp16")
DEFAULT_MODES = ("eager", "eager-kept-memory", "optimized", "bf16", "fp16")
PHASES = ("network", "end_to_end")


@dataclass
class BenchmarkSettings:
    """What to time and how (the options of projects/SFNet/benchmark.py)."""

    input_size: Tuple[int, int] = (1024, 2048)
    modes: Sequence[str] = DEFAULT_MODES  # "eager" is required: every ratio is relative to it
    phases: Sequence[str] = PHASES
    runs: int = 10  # timed runs per mode and phase
    warmup: int = 2  # untimed runs first (the traced modes trace here)
    threads: int = 0  # torch.set_num_threads; 0 = PyTorch's default
    device: str = ""  # "cpu" or "cuda"; "" = MODEL.DEVICE
    gemm_size: int = 4096  # N of the N^3 GEMM throughput reference (a square); 0 = none
    flops: bool = True  # count the network part's FLOPs with fvcore
    accuracy_dataset: str = "sfnet_demo_cityscapes_fine_sem_seg_val"
    accuracy_images: int = 4  # images compared against eager (0 = no comparison)
    # images run after ``warmup`` by the whole-process peak measurement (process_peak.py: a
    # fresh process per mode; CPU, Linux); 0 = not measured
    process_peak_runs: int = 5
    # another config timed in the same rounds (e.g. the semantic model beside a panoptic one
    # with the same backbone), random weights, in ``beside_modes``; "" = none
    beside_config: str = ""
    beside_modes: Sequence[str] = ("optimized",)

    def check(self):
        unknown = [m for m in self.modes if m not in ALL_MODES]
        if unknown:
            raise ValueError(f"--modes: unknown mode(s) {unknown}; choose from {list(ALL_MODES)}")
        if "eager" not in self.modes:
            raise ValueError("--modes must include 'eager': every ratio is relative to it")
        bad_phases = [p for p in self.phases if p not in PHASES]
        if bad_phases:
            raise ValueError(f"--phases: unknown {bad_phases}; choose from {list(PHASES)}")
        if self.runs < 1:
            raise ValueError(f"--runs {self.runs}: time at least 1 run (for FLOPs and "
                             "parameters alone use projects/SFNet/analyze_model.py)")
        if self.beside_config and not os.path.isfile(self.beside_config):
            raise ValueError(f"--beside {self.beside_config}: no such config file")
        if self.process_peak_runs < 0:
            raise ValueError(f"--process-peak-runs {self.process_peak_runs}: expected 0 (off) "
                             "or more")
        if min(self.input_size) < 1:
            raise ValueError(f"--input-size {list(self.input_size)}: sizes must be positive")


class Mode:
    """One way of running the model: ``model`` has the detectron2 forward(batched_inputs);
    ``network`` maps normalised padded images to raw outputs (None if the model has no network
    part)."""

    def __init__(self, name: str, model: torch.nn.Module, network, description: str,
                 keep_memory: bool = False):
        self.name, self.model, self.network, self.description = name, model, network, description
        # Run inside kept_memory() (the plain model with the optimised path's allocator setting:
        # shows how much of the speed-up is memory management alone).
        self.keep_memory = keep_memory

    def run(self, fn, *args):
        with kept_memory(self.keep_memory):
            return fn(*args)


def network_of(model: torch.nn.Module):
    """The network part (normalised padded images -> raw outputs) that a mode times: the traced
    network of an optimised model (semantic or K-Net), else ``network_part_of`` (None if there
    is none)."""
    if isinstance(model, OptimizedInferenceModel):
        return model.network_forward
    if any(cls.__name__ in NETWORK_PARTS for cls in type(model).__mro__):
        return network_part_of(model)
    return None


def network_input(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The normalised, padded batch that ``model``'s network sees for one (3, H, W) image."""
    images, _ = normalize_and_pad([image.to(model.pixel_mean.device)], model.pixel_mean,
                                  model.pixel_std, padding_divisibility(model))
    return images


def _unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    if name == "fp16" and device.type != "cuda":
        return ("fp16 is timed on CUDA only: CPU convolutions have no fast float16 path "
                "(use bf16 on CPUs)")
    if name == "bf16":
        return bf16_support(device)
    if name == "eager-kept-memory" and (device.type != "cpu" or not keep_memory_supported()):
        return ("kept memory is a glibc CPU allocator setting (sfnet_d2/deployment/memory.py); "
                "not available here")
    return None


def build_modes(cfg, model: torch.nn.Module, names,
                device: torch.device) -> Tuple[List[Mode], Dict[str, str]]:
    """The requested modes that can run here, and the reasons for the others."""
    modes, skipped = [], {}
    for name in names:
        reason = _unavailable_reason(name, device)
        if reason:
            skipped[name] = reason
            continue
        if name in ("eager", "eager-kept-memory"):
            kept = name == "eager-kept-memory"
            description = ("plain model, eager, large blocks from a kept heap" if kept
                           else "plain model, eager")
            modes.append(Mode(name, model, network_of(model), description, kept))
            continue
        overrides = {"precision": "fp32"}
        if name == "optimized-eager":
            overrides["torchscript"] = "none"
        elif name in ("bf16", "fp16"):
            overrides["precision"] = name
        options = inference_options(cfg, **overrides)
        optimized = optimize_model(model, **options)
        if isinstance(optimized, OptimizedInferenceModel):  # semantic or K-Net
            description = (f"BN folded, channels_last={options['channels_last']}, "
                           f"torchscript={options['torchscript']}, {options['precision']}")
        elif name in ("bf16", "fp16"):
            skipped[name] = (f"reduced precision is implemented for SemanticSegmentor and "
                             f"SFNetKNet models only, not {type(model).__name__}")
            continue
        elif name == "optimized-eager":
            skipped[name] = f"same as 'optimized' for {type(model).__name__}"
            continue
        else:
            description = "BN folded, dropout removed (module rewrites only), fp32"
        modes.append(Mode(name, optimized, network_of(optimized), description))
    return modes, skipped


def _isolate_eager(cfg, modes: List[Mode], tasks: Dict, device, net_input, image):
    """
    When another mode changes the process's allocator (kept memory, CPU + glibc), run the
    ``eager`` tasks in a fresh worker process (isolated_runs.py), replacing them in ``tasks`` in
    place (same order, so the round robin still interleaves them). Returns the workers' handle to
    close, or None when eager runs in this process.
    """
    keeps = {m.name for m in modes if m.keep_memory}
    if cfg.DEPLOY.KEEP_MEMORY:
        keeps |= {m.name for m in modes if isinstance(m.model, OptimizedInferenceModel)}
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
    logger.info(f"Timing the plain eager model in a separate process: {sorted(keeps)} change "
                "this process's allocator (DEPLOY.KEEP_MEMORY), which would "
                "otherwise speed up eager runs after them")
    isolated = IsolatedTasks(work, torch.get_num_threads())
    for name in work:
        tasks[name] = isolated.task(name)
    return isolated


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
    if "panoptic_seg" in out:  # a panoptic model (also with its sem_seg output): segment ids
        return out["panoptic_seg"][0].cpu()
    return out["sem_seg"].float().cpu()


def _raw_output_deviation(mode: Mode, eager: Mode, image: torch.Tensor) -> Optional[float]:
    """max |output - eager output| over the raw outputs of the two network parts (K-Net: class
    and mask logits) for ``image``; None when a mode has no network part."""
    if mode.network is None or eager.network is None:
        return None
    images = network_input(eager.model, image)
    got, ref = mode.network(images), eager.network(images)
    return max(float((g.float() - r.float()).abs().max()) for g, r in zip(got, ref))


def compare_with_eager(modes: List[Mode], images) -> Dict[str, Dict[str, float]]:
    """Per mode: max |logit - eager logit| and the fraction of pixels whose argmax changes. For a
    panoptic model: the largest deviation of its network's class and mask logits and the
    fraction of pixels whose panoptic segment id changes."""
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
                    dev = _raw_output_deviation(mode, eager, image)
                    max_dev = None if dev is None or max_dev is None else max(max_dev, dev)
                    changed += int((got != ref).sum())
                    total += ref.numel()
            out[mode.name] = {"max_abs_logit_deviation": max_dev,
                              "argmax_changed_fraction": changed / total, "pixels": total}
    return out


def _time_tasks(cfg, settings: BenchmarkSettings, modes: List[Mode], model, device,
                beside: Sequence[Mode] = ()):
    """Round robin over every (mode, phase) task, the ``beside`` config's modes and the GEMM
    reference: per task its summary and peak memory; the GEMM's multiply-adds; whether eager ran
    in a worker process."""
    height, width = settings.input_size
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    net_input = network_input(model, image)
    tasks = {}
    for mode in list(modes) + list(beside):
        # the beside model pads by its own rule
        inputs = net_input if mode in modes else network_input(mode.model, image)
        if "network" in settings.phases and mode.network is not None:
            tasks[f"{mode.name}/network"] = (lambda m=mode, x=inputs: m.run(m.network, x))
        if "end_to_end" in settings.phases:
            tasks[f"{mode.name}/end_to_end"] = (lambda m=mode: m.run(end_to_end, m.model, image))
    isolated = _isolate_eager(cfg, modes, tasks, device, net_input, image)
    gemm_macs = None
    if settings.gemm_size:
        tasks[GEMM], gemm_macs = conv_gemm_task(device, settings.gemm_size)
    logger.info(f"Timing {len(tasks)} tasks at {height}x{width}, batch 1, {device}, "
                f"{torch.get_num_threads()} threads: {settings.warmup} warm-up + "
                f"{settings.runs} runs each, round robin")
    try:
        with torch.inference_mode():
            records = round_robin(tasks, settings.runs, settings.warmup, device, logger.info)
            results = {name: summarize(recs) for name, recs in records.items()}
            for name, task in tasks.items():
                results[name]["peak_memory_mib"] = peak_memory_of(task, device) / 2**20
    finally:
        if isolated is not None:
            isolated.close()
    return results, gemm_macs, isolated is not None


def _add_ratios(results: Dict, gmacs: Optional[float], gemm_macs: Optional[int]):
    """Throughput of the GEMM reference; per task its ratio to eager and to the FLOP bound."""
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
        if BESIDE_SEPARATOR in mode:  # the other config: not a ratio to this model's figures
            res["speedup_vs_eager"] = None
            continue
        base = results.get(f"eager/{phase}")
        res["speedup_vs_eager"] = base["median_s"] / res["median_s"] if base else None
        if gmacs is not None and throughput is not None:
            bound = flop_bound_seconds(gmacs, throughput)
            res["flop_bound_s"] = bound
            res["measured_over_bound"] = res["median_s"] / bound
            res["cpu_measured_over_bound"] = (
                res["median_cpu_s"] / flop_bound_seconds(gmacs, throughput_cpu))
    return throughput, throughput_cpu


def _beside_modes(cfg, settings: BenchmarkSettings, device) -> Tuple[List[Mode], str]:
    """The modes of ``settings.beside_config`` (random weights: the speed is the same), named
    ``<config name>:<mode>``, and that config's name."""
    from sfnet_d2.engine import build_config

    if not settings.beside_config:
        return [], ""
    label = os.path.splitext(os.path.basename(settings.beside_config))[0]
    beside_cfg = build_config(settings.beside_config,
                              ["MODEL.WEIGHTS", "random", "MODEL.DEVICE", str(device)])
    beside_model = build_model_with_weights(beside_cfg, purpose="the --beside config",
                                            required=False)
    modes, skipped = build_modes(beside_cfg, beside_model, settings.beside_modes, device)
    for name, reason in skipped.items():
        logger.warning(f"Skipping mode {name} of {label}: {reason}")
    for mode in modes:
        mode.name = f"{label}{BESIDE_SEPARATOR}{mode.name}"
    return modes, label


def _beside_ratios(results: Dict, label: str) -> Dict[str, Dict[str, float]]:
    """This config's median over the beside config's, per mode and phase both have."""
    ratios = {}
    prefix = label + BESIDE_SEPARATOR
    for name, res in results.items():
        if not name.startswith(prefix):
            continue
        mine = results.get(name[len(prefix):])
        if mine:
            ratios[name[len(prefix):]] = {"wall": mine["median_s"] / res["median_s"],
                                          "cpu": mine["median_cpu_s"] / res["median_cpu_s"]}
    return ratios


def _process_peaks(cfg, settings: BenchmarkSettings, modes: List[Mode], device):
    """Whole-process peak memory of each mode (process_peak.py), after the timed rounds."""
    if settings.process_peak_runs == 0:
        return {}, "not measured (--process-peak-runs 0)"
    if device.type != "cpu":
        return {}, ("CPU only; on CUDA the per-run peak is torch.cuda.max_memory_allocated")
    peaks, why = measure_process_peaks(cfg, [m.name for m in modes], settings.input_size,
                                       warmup=settings.warmup, runs=settings.process_peak_runs,
                                       threads=settings.threads)
    return peaks, why or (f"fresh process per mode: import, build, {settings.warmup} warm-up + "
                          f"{settings.process_peak_runs} end-to-end images; VmHWM")


def run_benchmark(cfg, settings: BenchmarkSettings = None, *, config_file: str = "",
                  opts: Sequence[str] = ()) -> Dict[str, object]:
    """
    Time ``cfg``'s model as ``settings`` says (see the module docstring) and return the report
    (a JSON-serialisable dict; ``report.format_report`` prints it). ``MODEL.WEIGHTS`` is read with
    the project's one safe loader (``sfnet_d2.engine.build_model_with_weights``): a file that
    would run code is refused, another architecture's checkpoint raises
    ``CheckpointMismatchError``; empty = random weights (logged; the speed is the same, the
    bf16/fp16 deviations are then those of an untrained model). ``config_file`` and ``opts`` are
    recorded in the report.
    """
    settings = settings or BenchmarkSettings()
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device or cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if str(device) != cfg.MODEL.DEVICE:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = str(device)
        cfg.freeze()
    height, width = settings.input_size
    model = build_model_with_weights(cfg, purpose="the benchmark", required=False)
    modes, skipped = build_modes(cfg, model, settings.modes, device)
    for name, reason in skipped.items():
        logger.warning(f"Skipping mode {name}: {reason}")

    beside, beside_label = _beside_modes(cfg, settings, device)
    results, gemm_macs, eager_isolated = _time_tasks(cfg, settings, modes, model, device, beside)
    gmacs = None
    if settings.flops and network_of(model) is not None:
        gmacs = count_network_flops(model, height, width).total() / 1e9
    throughput, throughput_cpu = _add_ratios(results, gmacs, gemm_macs)

    accuracy, accuracy_note = {}, None
    if len(modes) > 1:
        images, accuracy_note = load_accuracy_images(settings.accuracy_dataset,
                                                     settings.accuracy_images)
        if images:
            accuracy = compare_with_eager(modes, images)
            accuracy_note = (f"{len(images)} images of {settings.accuracy_dataset} at their own "
                             f"size, weights: {cfg.MODEL.WEIGHTS or 'random'}")
        else:
            logger.warning(f"Accuracy comparison skipped: {accuracy_note}")
    process_peaks, process_peak_note = _process_peaks(cfg, settings, modes, device)
    return {
        "config": config_file,
        "opts": list(opts),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "parameters": count_parameters(model),
        "input_size": [height, width],
        "batch": 1,
        "warmup": settings.warmup,
        "runs": settings.runs,
        "settings": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in asdict(settings).items()},
        "machine": machine_info(device),
        "memory_method": PeakMemory(device).method,
        "clean_run_threshold_other_cores": CLEAN_OTHER_CORES,
        "modes": {m.name: m.description for m in modes},
        "skipped_modes": skipped,
        # True: the eager tasks ran in a fresh worker process (_isolate_eager)
        "eager_in_separate_process": eager_isolated,
        "fvcore_gmacs": gmacs,
        "gemm_size": settings.gemm_size or None,
        "conv_throughput_gflops_per_s": throughput,
        "conv_throughput_gflops_per_cpu_s": throughput_cpu,
        "results": results,
        "accuracy_vs_eager": accuracy,
        "accuracy_note": accuracy_note,
        # --beside: the other config, and this config's median / its median per mode and phase
        "beside_config": settings.beside_config or None,
        "vs_beside": _beside_ratios(results, beside_label) if beside_label else {},
        # whole-process peak resident set per mode, each in a fresh process (process_peak.py)
        "process_peak": process_peaks,
        "process_peak_note": process_peak_note,
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
