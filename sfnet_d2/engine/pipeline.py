"""
The paper's panoptic recipe as one job (section 4.5; docs/PANOPTIC.md), what
``projects/SFNet/train_panoptic_pipeline.py`` runs: stage 1 trains K-Net on COCO panoptic, stage 2
fine-tunes it on Cityscapes panoptic from stage 1's final checkpoint with the class-dependent
weights transferred by class name (``MODEL.KNET.TRANSFER_CLASS_WEIGHTS`` of the stage-2 config,
``sfnet_d2/converters/knet_class_transfer.py``).

* Each stage trains in a fresh process (``multiprocessing`` spawn: nothing of stage 1 stays in
  memory, and ``--num-gpus`` > 1 launches its workers from there) with ``sfnet_d2.engine.setup``
  and ``Trainer``, resumed from the stage's ``last_checkpoint`` when there is one, else from its
  ``MODEL.WEIGHTS`` through the safe ``SFNetCheckpointer``.
* A finished stage (``OUTPUT_DIR/pipeline_stage_done.json``, written after its final evaluation)
  is skipped when the job runs again; an unfinished one resumes.
* Datasets registered by paths (``registrations``: name, image root, panoptic PNG root, JSON) are
  registered in every process the job starts.
"""
import json
import logging
import multiprocessing
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

from detectron2.utils import comm

from sfnet_d2.data import ensure_demo_panoptic, register_coco_panoptic_by_paths
from sfnet_d2.data.datasets import DEMO_ROOT_NAME, datasets_root
from sfnet_d2.data.datasets.panoptic import DEMO_COCO_PANOPTIC_ROOT_NAME
from sfnet_d2.engine.checkpoint import atomic_write_bytes
from sfnet_d2.engine.command_line import is_expected_error
from sfnet_d2.engine.defaults import build_config

__all__ = ["PipelineStageError", "make_demo_panoptic_data", "register_datasets",
           "run_panoptic_pipeline", "DONE_FILE", "INIT_FILE", "LOG_FILE"]

DONE_FILE = "pipeline_stage_done.json"
INIT_FILE = "init_from_stage1.pth"
LOG_FILE = "pipeline_log.txt"  # in the stage-2 OUTPUT_DIR: what the pipeline itself logged

logger = logging.getLogger("sfnet_d2.pipeline")

Registration = Tuple[str, str, str, str]  # name, image root, panoptic PNG root, panoptic JSON


class PipelineStageError(RuntimeError):
    """A stage failed or left no result; running the same job again resumes it."""


def register_datasets(registrations: Sequence[Registration] = ()) -> None:
    for name, image_root, panoptic_root, panoptic_json in registrations or ():
        register_coco_panoptic_by_paths(name, image_root, panoptic_root, panoptic_json)


def make_demo_panoptic_data(root: Optional[str] = None) -> None:
    """The synthetic panoptic demo data in both formats under ``root`` (default
    ``$DETECTRON2_DATASETS``), created where missing."""
    root = root or datasets_root()
    ensure_demo_panoptic(os.path.join(root, DEMO_COCO_PANOPTIC_ROOT_NAME),
                         os.path.join(root, DEMO_ROOT_NAME))


# --------------------------------------------------------------------------- one stage
def _train_stage(registrations, config_file: str, opts: Sequence[str], done_file: str) -> None:
    """One stage in one (possibly launched) process: setup, Trainer, resumed; then its results
    in ``done_file``."""
    from detectron2.engine import default_argument_parser

    from sfnet_d2.engine.defaults import setup
    from sfnet_d2.engine.trainer import Trainer

    register_datasets(registrations)
    args = default_argument_parser().parse_args(["--config-file", config_file, "--resume",
                                                 *opts])
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)  # last checkpoint of this stage, else MODEL.WEIGHTS
    trainer.train()
    # the final evaluation of detectron2's EvalHook (set on every rank: None except on the main
    # one); evaluate here only if it did not run, on all ranks alike (evaluation synchronises them)
    if hasattr(trainer, "_last_eval_results"):
        results = trainer._last_eval_results
    else:
        results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        payload = json.dumps({"config": config_file, "results": results}, indent=2, default=float)
        atomic_write_bytes(done_file, lambda f: f.write(payload.encode()))


def _stage_process(index: int, registrations, config_file, opts, done_file,
                   launch_args: Dict) -> None:
    """The stage's own process: ``_train_stage`` through detectron2's ``launch``. An expected
    error (e.g. a refused MODEL.WEIGHTS) is printed as one message, exit status 1."""
    from detectron2.engine import launch

    register_datasets(registrations)
    try:
        launch(_train_stage, args=(registrations, config_file, opts, done_file), **launch_args)
    except Exception as e:  # noqa: BLE001 (unexpected errors keep their traceback)
        if not is_expected_error(e):
            raise
        print(f"Stage {index} ({config_file}): error: {e}", file=sys.stderr)
        sys.exit(1)


def _run_stage(index: int, config_file: str, opts: Sequence[str], output_dir: str,
               registrations, launch_args: Dict):
    done_file = os.path.join(output_dir, DONE_FILE)
    if os.path.isfile(done_file):
        logger.info(f"Stage {index} finished earlier ({done_file}): skipped")
        return _read_results(done_file)
    state = ("resuming from its last checkpoint"
             if os.path.isfile(os.path.join(output_dir, "last_checkpoint")) else "starting")
    logger.info(f"Stage {index}: {config_file} -> {output_dir} ({state})")
    process = multiprocessing.get_context("spawn").Process(
        target=_stage_process,
        args=(index, list(registrations), config_file, list(opts), done_file, launch_args),
        name=f"panoptic-pipeline-stage{index}")
    process.start()
    process.join()
    if process.exitcode != 0 or not os.path.isfile(done_file):
        raise PipelineStageError(
            f"Stage {index} ({config_file}) failed (exit code {process.exitcode}): see its "
            "messages above. Run the same command again once fixed: a stage that has "
            "checkpoints resumes from its last one")
    return _read_results(done_file)


def _read_results(done_file: str):
    with open(done_file) as f:
        return json.load(f)["results"]


# --------------------------------------------------------------------------- the job
def _uses_demo_data(*cfgs) -> bool:
    return any(name.startswith("sfnet_demo_") for cfg in cfgs
               for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


def _summary(results) -> str:
    pan = (results or {}).get("panoptic_seg", {})
    line = ", ".join(f"{k} {pan[k]:.1f}" for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st") if k in pan)
    if "sem_seg" in (results or {}):
        line += f", mIoU {results['sem_seg']['mIoU']:.1f}"
    return line or "no results"


def _log_to_file(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s",
                                               datefmt="%m/%d %H:%M:%S"))
        logger.addHandler(handler)


def run_panoptic_pipeline(stage1_config: str, stage2_config: str, *, opts: Sequence[str] = (),
                          stage1_opts: Sequence[str] = (), stage2_opts: Sequence[str] = (),
                          registrations: Sequence[Registration] = (), num_gpus: int = 1,
                          num_machines: int = 1, machine_rank: int = 0,
                          dist_url: str = "auto"):
    """
    Run (or continue) both stages; returns their results (stage 1, stage 2).

    Args:
        opts: KEY VALUE overrides of both stages; ``stage1_opts`` / ``stage2_opts`` of one.
        registrations: COCO-panoptic-format datasets to register by paths in every process.
        num_gpus, num_machines, machine_rank, dist_url: detectron2's ``launch`` per stage.
    """
    for flag, config in (("--stage1-config", stage1_config), ("--stage2-config", stage2_config)):
        if not os.path.isfile(config):
            raise FileNotFoundError(f"{flag} {config} does not exist")
    register_datasets(registrations)
    opts1, opts2 = list(opts) + list(stage1_opts), list(opts) + list(stage2_opts)
    cfg1, cfg2 = build_config(stage1_config, opts1), build_config(stage2_config, opts2)
    if os.path.abspath(cfg1.OUTPUT_DIR) == os.path.abspath(cfg2.OUTPUT_DIR):
        raise ValueError(f"Both stages write to OUTPUT_DIR {cfg1.OUTPUT_DIR}: give them different "
                         "ones (--stage1-opts OUTPUT_DIR ... --stage2-opts OUTPUT_DIR ...)")
    _log_to_file(os.path.join(cfg2.OUTPUT_DIR, LOG_FILE))
    logger.info(f"Pipeline: {stage1_config} -> {stage2_config}")
    if _uses_demo_data(cfg1, cfg2):
        make_demo_panoptic_data()
    launch_args = dict(num_gpus_per_machine=num_gpus, num_machines=num_machines,
                       machine_rank=machine_rank, dist_url=dist_url)

    results1 = _run_stage(1, stage1_config, opts1, cfg1.OUTPUT_DIR, registrations, launch_args)
    init_file = os.path.join(cfg2.OUTPUT_DIR, INIT_FILE)
    stage2_started = os.path.isfile(os.path.join(cfg2.OUTPUT_DIR, "last_checkpoint"))
    if not stage2_started and not os.path.isfile(os.path.join(cfg2.OUTPUT_DIR, DONE_FILE)):
        from sfnet_d2.converters.knet_class_transfer import transfer_checkpoint

        final = os.path.join(cfg1.OUTPUT_DIR, "model_final.pth")
        if not os.path.isfile(final):
            raise PipelineStageError(f"Stage 1 finished but {final} does not exist")
        transfer_checkpoint(cfg1, cfg2, final, init_file, log=logger)
    results2 = _run_stage(2, stage2_config, opts2 + ["MODEL.WEIGHTS", init_file],
                          cfg2.OUTPUT_DIR, registrations, launch_args)
    logger.info(f"Stage 1 ({', '.join(cfg1.DATASETS.TEST)}): {_summary(results1)}")
    logger.info(f"Stage 2 ({', '.join(cfg2.DATASETS.TEST)}): {_summary(results2)}")
    return results1, results2
