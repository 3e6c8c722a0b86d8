#!/usr/bin/env python
"""
Write the built-in synthetic street-scene dataset (Cityscapes layout) used by the demo and tests.

    python projects/SFNet/make_demo_data.py [--root DIR] [--num-train N] [--num-val N]

The default root is $DETECTRON2_DATASETS/sfnet_demo_cityscapes (``datasets/`` when unset), where
the registered datasets ``sfnet_demo_cityscapes_fine_sem_seg_{train,val}`` look for it.
"""
import argparse
import sys

from sfnet_d2.data import generate_demo_cityscapes
from sfnet_d2.data.demo_data import default_demo_root
from sfnet_d2.engine.command_line import run_command


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--root", default=default_demo_root(),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=48)
    parser.add_argument("--num-val", type=int, default=12)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    root = generate_demo_cityscapes(args.root, args.num_train, args.num_val, args.height,
                                    args.width, args.seed)
    print(f"Demo data written to {root}")
    return root


if __name__ == "__main__":
    sys.exit(run_command(main))
