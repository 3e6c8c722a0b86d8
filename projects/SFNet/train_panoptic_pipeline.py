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

Each stage trains in its own process with sfnet_d2.engine's setup and Trainer in the stage config's
OUTPUT_DIR (sfnet_d2/engine/pipeline.py). A finished stage (OUTPUT_DIR/pipeline_stage_done.json,
written after its final evaluation) is skipped when the command is run again; an unfinished one
resumes from its last checkpoint. Trailing KEY VALUE pairs apply to both stages; --stage1-opts /
--stage2-opts to one.
"""
import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

from sfnet_d2.engine.command_line import run_command
from sfnet_d2.engine.pipeline import make_demo_panoptic_data, run_panoptic_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_STAGE1 = os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_coco.yaml")
DEMO_STAGE2 = os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_cityscapes.yaml")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--stage1-config", help="COCO (pre-training) config")
    parser.add_argument("--stage2-config", help="Cityscapes (fine-tuning) config")
    parser.add_argument("--demo", action="store_true",
                        help="the demo configs on the synthetic data (created if missing)")
    parser.add_argument("--make-demo-data", action="store_true",
                        help="only create the synthetic panoptic demo data (both formats)")
    parser.add_argument("--stage1-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--stage2-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--register", nargs=4, action="append", default=[],
                        metavar=("NAME", "IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
                        help="register a COCO-panoptic-format dataset by paths (repeatable)")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for both stages")
    return parser


def main(argv=None):
    """Run the pipeline (``argv``: the command-line arguments); returns both stages' results."""
    parser = get_parser()
    args = parser.parse_args(argv)
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    setup_logger(name="sfnet_d2.pipeline")
    setup_logger(name="sfnet_d2")
    if args.make_demo_data:
        return make_demo_panoptic_data()
    if args.demo:
        args.stage1_config = args.stage1_config or DEMO_STAGE1
        args.stage2_config = args.stage2_config or DEMO_STAGE2
    if not (args.stage1_config and args.stage2_config):
        parser.error("give --stage1-config and --stage2-config, or --demo")
    return run_panoptic_pipeline(
        args.stage1_config, args.stage2_config, opts=opts, stage1_opts=args.stage1_opts,
        stage2_opts=args.stage2_opts, registrations=[tuple(r) for r in args.register],
        num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url)


if __name__ == "__main__":
    sys.exit(run_command(main))
