#!/usr/bin/env python
"""
Write Mapillary Vistas v1.2 labels as the 19 Cityscapes trainIds (once, before training).

    python projects/SFNet/prepare_mapillary.py [--root DIR] [--splits train val] [--overwrite] [--num-workers N]

Reads ROOT/{training,validation}/labels/*.png (v1.2 zip; the v2.0 zip's v1.2/labels/ also works),
maps the 66 labels with sfnet_d2/data/label_mappings/mapillary_vistas_v1.2_to_cityscapes19.csv
(RobustNet's grouping, which the paper follows; the rest -> 255) and writes
ROOT/{training,validation}/labels_cityscapes19/*.png, read by mapillary_vistas_19_sem_seg_{train,val}.
ROOT defaults to $DETECTRON2_DATASETS/mapillary_vistas. If ROOT/config.json (or config_v1.2.json)
exists, its label list is checked against the mapping first. Existing outputs are kept unless
--overwrite. See docs/DATASETS.md.
"""
import argparse
import logging
import sys

from sfnet_d2.data.prepare import add_prepare_arguments, prepare_from_args
from sfnet_d2.engine.command_line import run_command


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(parser, "mapillary")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return prepare_from_args("mapillary", args)


if __name__ == "__main__":
    sys.exit(run_command(main))
