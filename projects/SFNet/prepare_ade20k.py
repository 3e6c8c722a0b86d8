#!/usr/bin/env python
"""
Write ADE20k's annotations_detectron2 (once, before training), as detectron2's
datasets/prepare_ade20k_sem_seg.py does (that script is not in the detectron2 pip package).

    python projects/SFNet/prepare_ade20k.py [--root DIR] [--splits train val] [--overwrite] [--num-workers N]

Reads ROOT/annotations/{training,validation}/*.png (0 = other, 1..150) and writes
ROOT/annotations_detectron2/{training,validation}/*.png (classes 0..149, other -> 255), read by
detectron2's ade20k_sem_seg_{train,val}. ROOT defaults to $DETECTRON2_DATASETS/ADEChallengeData2016.
Existing outputs are kept unless --overwrite. See docs/DATASETS.md.
"""
import argparse
import logging
import sys

from sfnet_d2.data.prepare import add_prepare_arguments, prepare_from_args
from sfnet_d2.engine.command_line import run_command


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, "ade20k")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return prepare_from_args("ade20k", args)


if __name__ == "__main__":
    sys.exit(run_command(main))
