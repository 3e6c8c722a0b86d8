"""
What every command starts from, as detectron2's ``engine/defaults.py`` is for detectron2's tools:

* ``build_config(config_file, opts)``: the frozen config with every SFNet key, errors naming the
  file or the override, and the CPU fallbacks (SyncBN -> naiveSyncBN, device cpu) that let
  every config run on a machine without CUDA (SOLVER.AMP on CPU: bfloat16, train_step.py);
* ``setup(args)``: ``build_config`` + the config checks + detectron2's ``default_setup``
  (output folder, logs, config.yaml, seeds) for ``train_net.py``-style arguments;
* ``train_or_evaluate(args)`` / ``launch_train_or_evaluate(args)``: what
  ``projects/SFNet/train_net.py`` runs, in one process or through detectron2's ``launch``.
"""
import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from sfnet_d2.config import add_sfnet_config, check_config, check_renamed_keys
from sfnet_d2.solver import resolve_epoch_schedule

__all__ = ["build_config", "setup", "train_or_evaluate", "launch_train_or_evaluate"]

logger = logging.getLogger("sfnet_d2")


def build_config(config_file: str, opts=()):
    """The frozen config of a YAML file plus KEY VALUE overrides, with every SFNet key."""
    cfg = get_cfg()
    add_sfnet_config(cfg)
    # an old key name (sfnet_d2/config/renamed_keys.py) gets an error that names the new key
    check_renamed_keys(config_file, opts)
    # yacs names the key of an unknown key or a wrong type, but as a bare KeyError/assert;
    # say also where it came from (the YAML file or the command line).
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError, ValueError) as e:
        raise ValueError(f"Invalid config file {config_file}: {e}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ValueError(f"Invalid KEY VALUE override on the command line: {e}") from e
    if not torch.cuda.is_available():
        # Let every config run on a CPU-only machine without extra overrides: nn.SyncBatchNorm
        # needs CUDA, detectron2's naiveSyncBN syncs over any process group (gloo included) and
        # is plain BN in a single process.
        if cfg.MODEL.DEVICE.startswith("cuda"):
            cfg.MODEL.DEVICE = "cpu"
        nodes = [cfg.MODEL.RESNETS, cfg.MODEL.STDC, cfg.MODEL.DFNET, cfg.MODEL.SEM_SEG_HEAD]
        if any(node.NORM == "SyncBN" for node in nodes):
            for node in nodes:
                node.NORM = "naiveSyncBN" if node.NORM == "SyncBN" else node.NORM
            logger.warning("No CUDA: using naiveSyncBN instead of SyncBN (same statistics over "
                           "processes)")
        # SOLVER.AMP.ENABLED stays as set: on CPU it means bfloat16 autocast where the CPU has
        # native bf16, and a training run is refused with an error naming the key elsewhere
        # (sfnet_d2/engine/train_step.py; evaluation ignores the key).
    cfg.freeze()
    return cfg


def setup(args):
    """The config of ``train_net.py``-style ``args`` (detectron2's ``default_argument_parser``),
    checked before any data is read, with the output folder, logs and seeds set up."""
    cfg = build_config(args.config_file, args.opts)
    check_config(cfg)  # model/dataset consistency, before any data is read (names the key)
    schedule = None
    if not args.eval_only:  # SOLVER.SFNET.MAX_EPOCHS -> SOLVER.MAX_ITER, before config.yaml is saved
        cfg, schedule = resolve_epoch_schedule(cfg)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sfnet_d2")
    if schedule:
        logger.info(schedule)
    return cfg


def evaluate(cfg, resume: bool = False):
    """``--eval-only``: the weights (``last_checkpoint`` with ``resume``, else ``MODEL.WEIGHTS``,
    which must be set: "random" evaluates an untrained model on purpose), the optimised inference
    path, the ``TEST.SFNET`` protocol and the dataset's evaluators."""
    from sfnet_d2.deployment import build_inference_model
    from sfnet_d2.engine.checkpoint import SFNetCheckpointer, load_model_weights
    from sfnet_d2.engine.trainer import Trainer

    model = Trainer.build_model(cfg)
    checkpointer = SFNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if resume and checkpointer.has_checkpoint():
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
    else:
        load_model_weights(model, cfg.MODEL.WEIGHTS, purpose="--eval-only")
    # DEPLOY.*: BatchNorm folded, TorchScript, ... (docs/BENCHMARK.md)
    model = build_inference_model(cfg, model)
    results = Trainer.test(cfg, model)  # TEST.SFNET.* inference protocol, see Trainer.test
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def train_or_evaluate(args):
    """``train_net.py`` in one process: ``--eval-only`` evaluates, otherwise trains (resuming
    from ``last_checkpoint`` with ``--resume``). Returns the evaluation results."""
    from sfnet_d2.engine.trainer import Trainer

    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _train_or_evaluate_and_close(args):
    """``train_or_evaluate``, then (in a multi-process job) wait for every process and close the
    process group. Without it a process that finishes first (e.g. rank 1, while rank 0 still
    computes the metrics) exits with gloo's threads alive and can abort ("terminate called
    without an active exception"), failing the job. After an error nothing waits: the others are
    stopped by ``launch``."""
    result = train_or_evaluate(args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def launch_train_or_evaluate(args):
    """``train_or_evaluate`` on ``args.num_gpus`` processes per machine (CPU: gloo processes) and
    ``args.num_machines`` machines, through detectron2's ``launch``."""
    logger.info(f"Command line arguments: {args}")
    return launch(_train_or_evaluate_and_close, args.num_gpus, num_machines=args.num_machines,
                  machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
