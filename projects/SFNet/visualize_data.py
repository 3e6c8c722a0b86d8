#!/usr/bin/env python
"""
Save what the training stream of a config gives the model: the augmented crops with their labels
(semantic configs) or panoptic segments (K-Net configs) drawn on them.

    python projects/SFNet/visualize_data.py --config-file CFG --output DIR [--num-images N] \\
        [--source dataloader|annotation] [KEY VALUE ...]

--source dataloader (default): the batches of sfnet_d2.data.build_train_loader(cfg), after
scaling, padding, cropping, flipping and the photometric changes, as
DIR/iter{iteration}_{index}_{image}.png; annotation: the training records as they are on disk, as
DIR/{index}_{image}.png. Ignored pixels (255) are not drawn. Trailing KEY VALUE pairs are config
overrides, as for train_net.py. sfnet_d2/visualization/training_data.py; GETTING_STARTED.md.
"""
import argparse
import sys

from detectron2.utils.logger import setup_logger

from sfnet_d2.engine import build_config
from sfnet_d2.engine.command_line import run_command
from sfnet_d2.visualization.training_data import SOURCES, visualize_training_data


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--num-images", type=int, default=20, help="pictures to save")
    parser.add_argument("--source", choices=SOURCES, default="dataloader",
                        help="the training stream (default) or the dataset records on disk")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    cfg = build_config(args.config_file, args.opts)
    return visualize_training_data(cfg, args.output, args.num_images, args.source)


if __name__ == "__main__":
    sys.exit(run_command(main))
