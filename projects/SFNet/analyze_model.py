#!/usr/bin/env python
"""
FLOPs and parameters of a config's network part, semantic or panoptic (fvcore; one multiply-add
counts as one FLOP, as the paper counts, and as fvcore counts the official models when running
lxtGH/SFSegNets@ba475ba), at the paper's 1024x2048 by default, in inference mode (no
deep-supervision heads), with a per-module breakdown that names the official code's modules
beside ours (layer0..4, ppm, fpn_in, fpn_out, FAMs, conv_last). Several configs: also a table of
their parameters and GFLOPs (docs/BENCHMARK.md, docs/PANOPTIC.md).

    python projects/SFNet/analyze_model.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/analyze_model.py --config-file ... --input-size 512 1024 --max-depth 3
    python projects/SFNet/analyze_model.py \\
        --config-file configs/cityscapes/panoptic/knet_sfnet_R18.yaml \\
        --config-file configs/cityscapes/semantic/sfnet_R18.yaml MODEL.WEIGHTS ""
"""
import argparse
import logging
import sys

from sfnet_d2.benchmark.flops import analyze, format_cost, format_costs
from sfnet_d2.engine import build_config
from sfnet_d2.engine.command_line import run_command


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, action="append", metavar="FILE",
                        help="a config; repeat the option for several")
    parser.add_argument("--input-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--max-depth", type=int, default=2, help="depth of fvcore's module table")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides KEY VALUE, for every config")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    h, w = args.input_size
    costs = []
    for config_file in args.config_file:
        cost = analyze(build_config(config_file, args.opts), h, w)
        costs.append((config_file, cost))
        print(format_cost(config_file, cost, h, w, args.max_depth))
    if len(costs) > 1:
        print(format_costs(costs, h, w))
    return costs


if __name__ == "__main__":
    sys.exit(run_command(main))
