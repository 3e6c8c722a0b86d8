#!/usr/bin/env python
"""
FLOPs and parameters of a config's network (fvcore; one multiply-add counts as one FLOP, as the
paper counts, and as fvcore counts the official models when running lxtGH/SFSegNets@ba475ba), at
the paper's 1024x2048 by
default, in inference mode (no deep-supervision heads), with a per-module breakdown that names the
official code's modules beside ours (layer0..4, ppm, fpn_in, fpn_out, FAMs, conv_last).

    python projects/SFNet/analyze_model.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/analyze_model.py --config-file ... --input-size 512 1024 --max-depth 3
"""
import argparse
import logging
import os
import sys

from detectron2.modeling import build_model
from fvcore.nn import flop_count_table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402

from sfnet_d2.benchmark.flops import count_network_flops, flop_breakdown  # noqa: E402


def analyze(cfg, height: int, width: int):
    """(fvcore analysis, total count, number of parameters) of ``cfg``'s network."""
    model = build_model(cfg).eval()
    flops = count_network_flops(model, height, width)
    params = sum(p.numel() for p in model.parameters())
    return flops, flops.total(), params


def format_breakdown(flops) -> str:
    lines = [f"{'module':<48} {'official':<24} {'GFLOPs':>9}"]
    for row in flop_breakdown(flops):
        name = "  " * row.depth + row.name
        lines.append(f"{name:<48} {row.official:<24} {row.gmacs:>9.2f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--max-depth", type=int, default=2, help="depth of fvcore's module table")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    cfg = build_config(args.config_file, args.opts)
    flops, total, params = analyze(cfg, *args.input_size)
    print(flop_count_table(flops, max_depth=args.max_depth))
    h, w = args.input_size
    print(f"\nPer-module breakdown at {h}x{w} (GFLOPs = 1e9 multiply-adds):")
    print(format_breakdown(flops))
    print(f"\n{args.config_file}: {total / 1e9:.2f} GFLOPs at {h}x{w}, {params:,} parameters")


if __name__ == "__main__":
    main()
