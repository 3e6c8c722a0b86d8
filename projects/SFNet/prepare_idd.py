#!/usr/bin/env python
"""
Write IDD labels as the 19 Cityscapes trainIds (once, before training).

    python projects/SFNet/prepare_idd.py [--root DIR] [--splits train val] [--overwrite] [--num-workers N] [--from-label-ids]

Draws ROOT/gtFine/SPLIT/SEQ/*_gtFine_polygons.json (as IDD ships them) into
ROOT/gtFine/SPLIT/SEQ/*_gtFine_labelcsTrainIds.png, read by idd_19_sem_seg_{train,val}: each
polygon in file order, filled with its label's Cityscapes trainId from
sfnet_d2/data/label_mappings/idd_to_cityscapes19.csv (IDD toolkit's csTrainId column), on an
ignored (255) background: the file IDD's toolkit writes with `createLabels.py --id-type csTrainId`.
With --from-label-ids it remaps *_gtFine_labelids.png made by IDD's toolkit (`--id-type id`)
instead, as the official SFNet code does. ROOT defaults to $DETECTRON2_DATASETS/IDD_Segmentation.
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
    add_prepare_arguments(parser, "idd")
    parser.add_argument("--from-label-ids", action="store_true",
                        help="remap *_gtFine_labelids.png (IDD toolkit, --id-type id) instead of "
                             "drawing the polygon files")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return prepare_from_args("idd", args)


if __name__ == "__main__":
    sys.exit(run_command(main))
