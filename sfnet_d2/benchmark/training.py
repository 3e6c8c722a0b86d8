"""
Training-step benchmark (``projects/SFNet/benchmark.py --train``, docs/BENCHMARK.md "Training
step"): one SGD iteration - forward, loss, backward, optimizer step - of any config (semantic or
K-Net panoptic), on CPU or CUDA, timed for

* ``eager``: the plain step, our model as detectron2 builds it (NCHW, fp32) run by detectron2's
  ``SimpleTrainer``, in a fresh spawned process with the default allocator: the stand-in for the
  official step (same architecture and loss), as isolated_runs.py runs the inference reference;
* ``optimized``: ``Trainer``'s fp32 step (sfnet_d2/engine/train_step.py: ``SOLVER.CPU.*``);
* ``amp``: the mixed-precision step (``SOLVER.AMP.ENABLED True``: bfloat16 autocast on a CPU
  with native bf16, detectron2's float16 AMPTrainer on CUDA), where the device has one;

in interleaved rounds (timing.round_robin), median wall and CPU time. Every step is "one SGD step
from the initial weights": each variant starts from the same weights, runs on the same real batch
from ``build_train_loader`` (the config's mapper and augmentation, on the demo data by default)
with the same seed per step (dropout), and its optimizer runs with learning rate 0, so the update
costs what it costs but the weights stay those of the first step. Every timed step is then the
same computation (the same OHEM path, ...), and the fp32 losses of ``eager`` and ``optimized``
must agree to float rounding in every round: the report prints their largest relative
difference. (With a real learning rate two fp32 runs drift apart within a few steps from random
init, rounding amplified: the plain step on 1 and on 2 threads differed by 7% at step 4 of the
demo model at batch 2 x 64x128.) The data loader's share is its time to hand over a
batch between steps (``data_time`` as the trainer logs it, workers running meanwhile) against
the step time.
"""
import copy
import itertools
import multiprocessing
import resource
import time
import traceback
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import psutil
import torch

from sfnet_d2.benchmark.isolated_runs import ExternalRun, stop_worker
from sfnet_d2.benchmark.report import machine_info
from sfnet_d2.benchmark.timing import round_robin, summarize

__all__ = ["TrainBenchmarkSettings", "run_training_benchmark", "format_training_report"]

# The demo data of each task (projects/SFNet/make_demo_data.py).
DEMO_TRAIN = {"semantic": "sfnet_demo_cityscapes_fine_sem_seg_train",
              "panoptic": "sfnet_demo_cityscapes_fine_panoptic_train"}


class TrainBenchmarkSettings(NamedTuple):
    """What to time (the ``--train`` options of projects/SFNet/benchmark.py)."""

    batch_size: int = 0  # images per step; 0 = SOLVER.IMS_PER_BATCH
    crop: Optional[Sequence[int]] = None  # (h, w) training crop; None = the config's
    dataset: str = ""  # training dataset; "" = the task's demo data (no class-uniform sampling)
    runs: int = 3  # timed rounds
    warmup: int = 1  # untimed steps of each variant first
    threads: int = 0  # torch.set_num_threads in both processes; 0 = PyTorch's default
    device: str = ""  # "cpu" or "cuda"; "" = MODEL.DEVICE
    amp: bool = True  # also time the mixed-precision step where the device has one
    data_batches: int = 0  # batches timed for the loader's share; 0 = one per timed round


def _task(cfg) -> str:
    return "panoptic" if "Panoptic" in cfg.INPUT.DATASET_MAPPER_NAME else "semantic"


def benchmark_config(cfg, settings: TrainBenchmarkSettings):
    """``cfg`` with the settings' device, dataset, batch size and crop (unfrozen copy)."""
    cfg = cfg.clone()
    cfg.defrost()
    if settings.device:
        cfg.MODEL.DEVICE = settings.device
    cfg.DATASETS.TRAIN = (settings.dataset or DEMO_TRAIN[_task(cfg)],)
    if not settings.dataset:
        # the demo's 256x512 images hold no class-uniform tile (as configs/demo/ sets it)
        cfg.DATALOADER.SFNET.CLASS_UNIFORM_PCT = 0.0
    if settings.batch_size:
        cfg.SOLVER.IMS_PER_BATCH = settings.batch_size
    if settings.crop:
        # semantic mapper: INPUT.SFNET.CROP_SIZE; K-Net: INPUT.KNET.CROP_SIZE ("scale_crop")
        node = cfg.INPUT.KNET if _task(cfg) == "panoptic" else cfg.INPUT.SFNET
        node.CROP_SIZE = [int(s) for s in settings.crop]
    cfg.SOLVER.AMP.ENABLED = False
    return cfg


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Steps:
    """A step object (``SimpleTrainer`` or subclass) that runs on one fixed batch; each call is
    one iteration from a fixed seed sequence and records the total loss."""

    def __init__(self, step, device):
        from detectron2.utils.events import EventStorage

        self.step, self.device = step, torch.device(device)
        self.storage = EventStorage(0)
        self.losses: List[float] = []

    def __call__(self):
        with self.storage:
            torch.manual_seed(0)  # the DSN heads' dropout: the same masks in every step
            self.step.run_step()
            _sync(self.device)
            self.storage.iter += 1
        self.losses.append(float(self.storage.latest()["total_loss"][0]))


def _frozen_weights(optimizer):
    """Learning rate 0 in every group: the step's update runs (same cost) and changes nothing
    (SGD and AdamW, whose decoupled decay is also scaled by the learning rate)."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    return optimizer


def _plain_step(cfg, state_dict, batch):
    """detectron2's build_model + SimpleTrainer on ``batch`` (the reference step)."""
    import sfnet_d2  # noqa: F401  (registers the models in a fresh interpreter)
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model

    from sfnet_d2.solver import build_optimizer

    model = build_model(cfg)
    model.load_state_dict(state_dict)
    optimizer = _frozen_weights(build_optimizer(cfg, model))
    return _Steps(SimpleTrainer(model, itertools.repeat(batch), optimizer), cfg.MODEL.DEVICE)


def _plain_worker(conn, cfg, state_dict, batch, threads: int):
    if threads:
        torch.set_num_threads(threads)
    try:
        steps = _plain_step(cfg, state_dict, batch)
        conn.send(("ok", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        request = conn.recv()
        if request is None:
            return
        try:
            if request == "run":
                c0 = time.process_time()
                steps()
                conn.send(("ok", time.process_time() - c0))
            else:  # "report": losses and peak resident memory
                conn.send(("ok", {"losses": steps.losses, "max_rss_mib": _max_rss_mib()}))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _PlainProcess:
    """The plain step in a fresh spawned process (its allocator untouched by kept_memory)."""

    def __init__(self, cfg, state_dict, batch, threads: int):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_plain_worker,
                                        args=(child, cfg, state_dict, batch, threads),
                                        daemon=True)
        self._process.start()
        child.close()
        self._request(None)

    def _request(self, message):
        try:
            if message is not None:
                self._conn.send(message)
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as e:
            raise RuntimeError(f"The training benchmark's plain-step process (pid "
                               f"{self._process.pid}) died (exit code {self._process.exitcode})"
                               ) from e
        if status != "ok":
            raise RuntimeError(f"The plain training step failed in its process:\n{value}")
        return value

    def __call__(self) -> ExternalRun:
        return ExternalRun(self._request("run"))

    def report(self) -> Dict:
        return self._request("report")

    def close(self):
        stop_worker(self._process, self._conn)


def _our_step(cfg, state_dict, batch, amp: bool):
    """``Trainer``'s model and step object (train_step.py) on ``batch``."""
    from sfnet_d2.engine.train_step import (build_train_step, prepare_model_for_training,
                                            train_step_options)
    from sfnet_d2.engine.trainer import Trainer
    from sfnet_d2.solver import build_optimizer

    if amp:
        cfg = cfg.clone()
        cfg.SOLVER.AMP.ENABLED = True
    options = train_step_options(cfg)
    model = Trainer.build_model(cfg)
    model.load_state_dict(state_dict)
    prepare_model_for_training(model, options)
    optimizer = _frozen_weights(build_optimizer(cfg, model))
    step = build_train_step(options, model, itertools.repeat(batch), optimizer)
    return _Steps(step, cfg.MODEL.DEVICE), options.describe()


def _loader_share(cfg, batches: int, step_seconds: float) -> Dict[str, float]:
    """Time to get a batch from the training loader: the first one (workers starting) and then
    one per ``step_seconds`` of simulated step (the workers prefetch meanwhile, as in training),
    with the loader workers' CPU time per batch."""
    from sfnet_d2.data import build_train_loader

    me = psutil.Process()

    def workers_cpu():
        total = 0.0
        for child in me.children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:  # a worker that just exited
                pass
        return total

    loader = build_train_loader(cfg)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    children0 = workers_cpu()
    waits = []
    for _ in range(batches):
        time.sleep(step_seconds)  # the step, which the workers overlap with
        t0 = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t0)
    children = workers_cpu()
    del it, loader
    wait = float(np.median(waits))
    return {"first_batch_s": first, "median_wait_s": wait, "batches": batches,
            "workers": cfg.DATALOADER.NUM_WORKERS,
            "worker_cpu_s_per_batch": max(0.0, children - children0) / max(batches, 1),
            "share_of_step": wait / (wait + step_seconds) if step_seconds > 0 else None}


def run_training_benchmark(cfg, settings: TrainBenchmarkSettings = TrainBenchmarkSettings(),
                           config_file: str = "", progress=None) -> Dict:
    """Times the steps and returns the report (JSON-serialisable dict); see the module
    docstring."""
    from sfnet_d2.data import build_train_loader
    from sfnet_d2.engine.train_step import train_step_options

    if settings.runs < 1:
        raise ValueError(f"--runs {settings.runs}: time at least one round")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = benchmark_config(cfg, settings)
    device = torch.device(cfg.MODEL.DEVICE)
    say = progress or (lambda message: None)

    say(f"reading a batch of {cfg.SOLVER.IMS_PER_BATCH} from {cfg.DATASETS.TRAIN[0]}")
    batch = next(iter(build_train_loader(cfg)))
    from sfnet_d2.engine.trainer import Trainer

    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    state_dict = copy.deepcopy(Trainer.build_model(cfg).state_dict())

    variants = {}
    descriptions = {"eager": "detectron2 build_model + SimpleTrainer, NCHW fp32, fresh process"}
    plain = _PlainProcess(cfg, state_dict, batch, settings.threads)
    try:
        variants["optimized"], descriptions["optimized"] = _our_step(cfg, state_dict, batch,
                                                                    amp=False)
        amp_problem = None
        if settings.amp:
            amp_cfg = cfg.clone()
            amp_cfg.SOLVER.AMP.ENABLED = True
            try:
                train_step_options(amp_cfg)
            except ValueError as e:
                amp_problem = str(e)
            if amp_problem is None:
                variants["amp"], descriptions["amp"] = _our_step(cfg, state_dict, batch, amp=True)
        tasks = {"eager": plain, **variants}
        records = round_robin(tasks, settings.runs, settings.warmup, device, progress=say)
        plain_report = plain.report()
    finally:
        plain.close()

    results = {name: summarize(recs) for name, recs in records.items()}
    losses = {"eager": plain_report["losses"],
              **{name: steps.losses for name, steps in variants.items()}}
    eager = results["eager"]
    for name, summary in results.items():
        summary["losses"] = losses[name]
        summary["speedup_wall"] = eager["median_s"] / summary["median_s"]
        summary["speedup_cpu"] = eager["median_cpu_s"] / summary["median_cpu_s"]
    results["eager"]["max_rss_mib"] = plain_report["max_rss_mib"]

    def relative(a, b):
        return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))

    agreement = {"fp32_max_rel_diff": relative(losses["optimized"], losses["eager"]),
                 "fp32_max_abs_diff": max(abs(x - y) for x, y in zip(losses["optimized"],
                                                                     losses["eager"]))}
    if "amp" in losses:
        agreement["amp_max_rel_diff"] = relative(losses["amp"], losses["eager"])

    say("timing the data loader")
    data = _loader_share(cfg, settings.data_batches or settings.runs,
                         results["optimized"]["median_s"])
    return {
        "config_file": config_file,
        "machine": machine_info(device),
        "settings": {**settings._asdict(), "dataset": cfg.DATASETS.TRAIN[0],
                     "batch_size": cfg.SOLVER.IMS_PER_BATCH,
                     "image_size": list(batch[0]["image"].shape[-2:]),
                     "threads": torch.get_num_threads()},
        "variants": descriptions,
        "amp_unavailable": amp_problem,
        "results": results,
        "loss_agreement": agreement,
        "data_loader": data,
        "max_rss_mib": _max_rss_mib(),
    }


def format_training_report(report: Dict) -> str:
    """The printed table of :func:`run_training_benchmark`'s report."""
    s, m = report["settings"], report["machine"]
    lines = [f"Training step: {report['config_file']} on {m['device']} ({m['cpu']}), "
             f"{s['threads']} threads, batch {s['batch_size']} x {s['image_size'][0]}x"
             f"{s['image_size'][1]} from {s['dataset']}, {s['runs']} interleaved rounds",
             f"{'step':<10} {'median s':>9} {'CPU s':>8} {'x wall':>7} {'x CPU':>7} "
             f"{'other cores':>11}  what"]
    for name, r in report["results"].items():
        other = [x for x in r["other_cores"] if x is not None]
        lines.append(f"{name:<10} {r['median_s']:>9.3f} {r['median_cpu_s']:>8.3f} "
                     f"{r['speedup_wall']:>7.2f} {r['speedup_cpu']:>7.2f} "
                     f"{np.median(other) if other else float('nan'):>11.2f}  "
                     f"{report['variants'][name]}")
    if report["amp_unavailable"]:
        lines.append(f"amp: not timed ({report['amp_unavailable']})")
    a = report["loss_agreement"]
    eager = report["results"]["eager"]
    lines.append(f"fp32 loss optimized vs eager (same weights and batch): largest difference "
                 f"{a['fp32_max_rel_diff']:.2e} relative, {a['fp32_max_abs_diff']:.2e} absolute "
                 f"over {len(eager['losses'])} steps (eager loss {eager['losses'][0]:.6f})")
    if "amp_max_rel_diff" in a:
        lines.append(f"amp loss vs eager fp32: largest relative difference "
                     f"{a['amp_max_rel_diff']:.2e}")
    d = report["data_loader"]
    share = d["share_of_step"]
    lines.append(f"data loader ({d['workers']} workers): first batch {d['first_batch_s']:.3f} s, "
                 f"then {d['median_wait_s'] * 1000:.1f} ms wait per batch = "
                 f"{100 * share if share is not None else float('nan'):.1f}% of an optimized "
                 f"step; workers' CPU {d['worker_cpu_s_per_batch']:.3f} s per batch")
    return "\n".join(lines)
