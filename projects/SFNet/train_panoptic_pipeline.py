#!/usr/bin/env python
"""
The paper's panoptic recipe in one command (section 4.5): stage 1 trains K-Net on COCO panoptic,
stage 2 fine-tunes it on Cityscapes panoptic, initialised from stage 1's final checkpoint with the
class-dependent weights transferred by class name (MODEL.KNET.TRANSFER_CLASS_WEIGHTS of the stage-2
config; sfnet_d2/converters/knet_class_transfer.py). docs/PANOPTIC.md.

    python projects/SFNet/train_panoptic_pipeline.py \\
        --stage1-config configs/coco/panoptic/knet_sfnet_R50.yaml \\
        --stage2-config configs/cityscapes/panoptic/knet_sfnet_R50.yaml --num-gpus 8
    python projects/SFNet/train_panoptic_pipeline.py --demo     # synthetic data, CPU, minutes
    python projects/SFNet/train_panoptic_pipeline.py --make-demo-data   # only write the demo data
    # users' own COCO-panoptic-format datasets, registered by paths in every process:
    python projects/SFNet/train_panoptic_pipeline.py --stage1-config ... --stage2-config ... \\
        --register my_train IMAGE_DIR PANOPTIC_PNG_DIR PANOPTIC_JSON \\
        --register my_val IMAGE_DIR PANOPTIC_PNG_DIR PANOPTIC_JSON \\
        --stage2-opts DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)"

Each stage trains in its own process with train_net.py's Trainer in the stage config's OUTPUT_DIR.
A finished stage (OUTPUT_DIR/pipeline_stage_done.json, written after its final evaluation) is
skipped when the command is run again; an unfinished one resumes from its last checkpoint. Trailing
KEY VALUE pairs apply to both stages; --stage1-opts / --stage2-opts to one.
"""
import argparse
import json
import logging
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_net  # noqa: E402  (also registers everything sfnet_d2 provides)
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from sfnet_d2.data import ensure_demo_panoptic, register_coco_panoptic_by_paths  # noqa: E402
from sfnet_d2.data.datasets.panoptic import DEMO_COCO_PANOPTIC_ROOT_NAME  # noqa: E402
from sfnet_d2.engine import atomic_write_bytes  # noqa: E402
from sfnet_d2.converters.knet_class_transfer import transfer_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_STAGE1 = os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_coco.yaml")
DEMO_STAGE2 = os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_cityscapes.yaml")
DONE_FILE = "pipeline_stage_done.json"
INIT_FILE = "init_from_stage1.pth"
LOG_FILE = "pipeline_log.txt"  # in the stage-2 OUTPUT_DIR: what the pipeline itself logged
logger = logging.getLogger("sfnet_d2.pipeline")


def register_datasets(registrations):
    for name, image_root, panoptic_root, panoptic_json in registrations or []:
        register_coco_panoptic_by_paths(name, image_root, panoptic_root, panoptic_json)


def _train_stage(registrations, config_file, opts, done_file):
    """One stage in one (possibly spawned) process: train_net's setup and Trainer, resumed."""
    register_datasets(registrations)
    args = default_argument_parser().parse_args(["--config-file", config_file, "--resume", *opts])
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=True)  # last checkpoint of this stage, else MODEL.WEIGHTS
    trainer.train()
    # the final evaluation of detectron2's EvalHook (set on every rank: None except on the main
    # one); evaluate here only if it did not run, on all ranks alike (evaluation synchronises them)
    if hasattr(trainer, "_last_eval_results"):
        results = trainer._last_eval_results
    else:
        results = train_net.Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        payload = json.dumps({"config": config_file, "results": results}, indent=2, default=float)
        atomic_write_bytes(done_file, lambda f: f.write(payload.encode()))


def _stage_worker(args):
    """Entry point of the per-stage child process."""
    register_datasets(args.register)
    launch(_train_stage, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url,
           args=(args.register, args.run_stage, args.opts, args.done_file))


def _run_stage(index, config_file, opts, cfg, args):
    out = cfg.OUTPUT_DIR
    done_file = os.path.join(out, DONE_FILE)
    if os.path.isfile(done_file):
        with open(done_file) as f:
            results = json.load(f)["results"]
        logger.info(f"Stage {index} finished earlier ({done_file}): skipped")
        return results
    state = "resuming from its last checkpoint" if os.path.isfile(
        os.path.join(out, "last_checkpoint")) else "starting"
    logger.info(f"Stage {index}: {config_file} -> {out} ({state})")
    cmd = [sys.executable, os.path.abspath(__file__), "--run-stage", config_file,
           "--done-file", done_file, "--num-gpus", str(args.num_gpus),
           "--num-machines", str(args.num_machines), "--machine-rank", str(args.machine_rank),
           "--dist-url", args.dist_url]
    for reg in args.register or []:
        cmd += ["--register", *reg]
    proc = subprocess.run(cmd + ["--", *opts])
    if proc.returncode != 0 or not os.path.isfile(done_file):
        raise SystemExit(f"Stage {index} ({config_file}) failed (exit code {proc.returncode}); "
                         "run the same command again to resume it")
    with open(done_file) as f:
        return json.load(f)["results"]


def _uses_demo_data(*cfgs):
    return any(name.startswith("sfnet_demo_") for cfg in cfgs
               for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


def _make_demo_data():
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    ensure_demo_panoptic(os.path.join(root, DEMO_COCO_PANOPTIC_ROOT_NAME),
                         os.path.join(root, "sfnet_demo_cityscapes"))


def _summary(results):
    pan = (results or {}).get("panoptic_seg", {})
    line = ", ".join(f"{k} {pan[k]:.1f}" for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st") if k in pan)
    if "sem_seg" in (results or {}):
        line += f", mIoU {results['sem_seg']['mIoU']:.1f}"
    return line or "no results"


def _log_to_file(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s",
                                               datefmt="%m/%d %H:%M:%S"))
        logger.addHandler(handler)


def main(argv=None):
    """Run the pipeline (``argv``: the command-line arguments); returns both stages' results."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-config", help="COCO (pre-training) config")
    parser.add_argument("--stage2-config", help="Cityscapes (fine-tuning) config")
    parser.add_argument("--demo", action="store_true",
                        help="the demo configs on the synthetic data (created if missing)")
    parser.add_argument("--make-demo-data", action="store_true",
                        help="only create the synthetic panoptic demo data (both formats)")
    parser.add_argument("--stage1-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--stage2-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--register", nargs=4, action="append",
                        metavar=("NAME", "IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
                        help="register a COCO-panoptic-format dataset by paths (repeatable)")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)  # internal: child process
    parser.add_argument("--done-file", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for both stages")
    args = parser.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if args.run_stage:
        return _stage_worker(args)

    setup_logger(name="sfnet_d2.pipeline")
    setup_logger(name="sfnet_d2")
    if args.make_demo_data:
        return _make_demo_data()
    if args.demo:
        args.stage1_config = args.stage1_config or DEMO_STAGE1
        args.stage2_config = args.stage2_config or DEMO_STAGE2
    if not (args.stage1_config and args.stage2_config):
        parser.error("give --stage1-config and --stage2-config, or --demo")
    register_datasets(args.register)
    opts1, opts2 = args.opts + args.stage1_opts, args.opts + args.stage2_opts
    cfg1 = train_net.build_config(args.stage1_config, opts1)
    cfg2 = train_net.build_config(args.stage2_config, opts2)
    if os.path.abspath(cfg1.OUTPUT_DIR) == os.path.abspath(cfg2.OUTPUT_DIR):
        parser.error(f"both stages write to OUTPUT_DIR {cfg1.OUTPUT_DIR}: give them different ones")
    _log_to_file(os.path.join(cfg2.OUTPUT_DIR, LOG_FILE))
    logger.info(f"Pipeline: {args.stage1_config} -> {args.stage2_config}")
    if _uses_demo_data(cfg1, cfg2):
        _make_demo_data()

    results1 = _run_stage(1, args.stage1_config, opts1, cfg1, args)
    init_file = os.path.join(cfg2.OUTPUT_DIR, INIT_FILE)
    stage2_started = os.path.isfile(os.path.join(cfg2.OUTPUT_DIR, "last_checkpoint"))
    if not stage2_started and not os.path.isfile(os.path.join(cfg2.OUTPUT_DIR, DONE_FILE)):
        final = os.path.join(cfg1.OUTPUT_DIR, "model_final.pth")
        if not os.path.isfile(final):
            raise SystemExit(f"Stage 1 finished but {final} does not exist")
        transfer_checkpoint(cfg1, cfg2, final, init_file, log=logger)
    results2 = _run_stage(2, args.stage2_config, opts2 + ["MODEL.WEIGHTS", init_file], cfg2, args)
    logger.info(f"Stage 1 ({', '.join(cfg1.DATASETS.TEST)}): {_summary(results1)}")
    logger.info(f"Stage 2 ({', '.join(cfg2.DATASETS.TEST)}): {_summary(results2)}")
    return results1, results2


if __name__ == "__main__":
    main()
