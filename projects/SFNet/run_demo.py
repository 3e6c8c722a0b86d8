#!/usr/bin/env python
"""
The main job on the built-in demo data: generate the synthetic Cityscapes-layout dataset if it is
absent, train SFNet-Lite R18 on CPU with detectron2's DefaultTrainer (ETA logging, checkpoints),
evaluate on the held-out split, and save side-by-side pictures (image | prediction | ground truth).

    python projects/SFNet/run_demo.py [--config-file CFG] [--num-pictures N] [KEY VALUE ...]

Running it again resumes from the checkpoints in OUTPUT_DIR (a finished run only re-evaluates);
delete OUTPUT_DIR (output/demo/...) to train again from scratch. sfnet_d2/engine/demo_training.py.
"""
import argparse
import os
import sys

from sfnet_d2.engine.command_line import run_command
from sfnet_d2.engine.demo_training import format_demo_summary, run_demo_training

DEFAULT_CONFIG = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "demo",
    "sfnet_lite_R18_demo.yaml"))


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--num-pictures", type=int, default=4)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    summary = run_demo_training(args.config_file, args.opts, args.num_pictures)
    print(format_demo_summary(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
