#!/usr/bin/env python
"""
FLOPs and parameters of a config's network (fvcore; one multiply-add counts as one FLOP, as the
paper and ../shared/reference/official-sfnet.md section 3 count), at the paper's 1024x2048 by
default, in inference mode (no deep-supervision heads).

    python projects/SFNet/analyze_model.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/analyze_model.py --config-file ... --input-size 512 1024 --max-depth 3
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis, flop_count_table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402


class _Network(torch.nn.Module):
    """Backbone + head on a normalised tensor: the network alone, without pre/post-processing."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.head = model.backbone, model.sem_seg_head

    def forward(self, x):
        return self.head(self.backbone(x))[0]


def analyze(cfg, height: int, width: int):
    model = build_model(cfg).eval()
    net = _Network(model)
    with torch.no_grad():
        flops = FlopCountAnalysis(net, torch.zeros(1, 3, height, width))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total()
    params = sum(p.numel() for p in model.parameters())
    return flops, total, params


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--max-depth", type=int, default=2, help="depth of the per-module table")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    cfg = build_config(args.config_file, args.opts)
    flops, total, params = analyze(cfg, *args.input_size)
    print(flop_count_table(flops, max_depth=args.max_depth))
    h, w = args.input_size
    print(f"{args.config_file}: {total / 1e9:.2f} GFLOPs at {h}x{w}, {params:,} parameters")


if __name__ == "__main__":
    main()
