#!/usr/bin/env python
"""
Write CamVid (SegNet version) labels with void as 255 (once, before training).

    python projects/SFNet/prepare_camvid.py [--root DIR] [--splits train val test] [--overwrite] [--num-workers N]

Reads ROOT/{train,val,test}annot/*.png (classes 0..10, void 11), maps them with
sfnet_d2/data/label_mappings/camvid11_void_to_ignore.csv (11 -> 255, the rest unchanged) and writes
ROOT/{train,val,test}annot_ignore255/*.png, read by camvid_sem_seg_{train,val,test}.
ROOT defaults to $DETECTRON2_DATASETS/CamVid. Existing outputs are kept unless --overwrite.
See docs/DATASETS.md.
"""
import argparse
import logging
import sys

from sfnet_d2.data.prepare import add_prepare_arguments, prepare_from_args
from sfnet_d2.engine.command_line import run_command


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, "camvid")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return prepare_from_args("camvid", args)


if __name__ == "__main__":
    sys.exit(run_command(main))
