#!/usr/bin/env python
"""
Parameters, GFLOPs and CPU latency of K-Net panoptic configs, each beside the semantic SFNet model
on the same backbone (docs/PANOPTIC.md).

    python projects/SFNet/benchmark_panoptic.py          # the 4 Cityscapes panoptic configs
    python projects/SFNet/benchmark_panoptic.py --threads 1 --cpu-time     # as in docs/PANOPTIC.md
    python projects/SFNet/benchmark_panoptic.py --panoptic configs/coco/panoptic/knet_sfnet_R18.yaml \\
        --semantic configs/cityscapes/semantic/sfnet_R18.yaml --input-size 1024 2048 --runs 3

FLOPs: fvcore, one multiply-add = one FLOP (as analyze_model.py and the paper count), of the
network (normalised padded image -> last stage's class logits and masks); the post-processing has no
multiply-adds of note and is not counted. Latency: wall time of ``model([{"image", "height",
"width"}])`` in eval mode, i.e. normalisation, padding, network AND post-processing (mask upsampling,
panoptic merge; K-Net's semantic output off unless --semantic-output) for K-Net, logits upsampled
to the input for the semantic model; median of --runs after one warm-up run, on random uint8
images; the network alone is timed the same way, and the rest is reported as post-processing.
"""
import argparse
import logging
import os
import statistics
import sys
import time

import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402

PAIRS = [(f"configs/cityscapes/panoptic/knet_sfnet_{m}.yaml",
          f"configs/cityscapes/semantic/sfnet_{m}.yaml") for m in ("R18", "R50", "STDC1", "STDC2")]


class _KNetNetwork(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        _, stages = self.model.forward_head(x)
        return stages[-1]


class _SemanticNetwork(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.backbone, self.head = model.backbone, model.sem_seg_head

    def forward(self, x):
        return self.head(self.backbone(x))[0]


def _attention_flops(inputs, outputs):
    """nn.MultiheadAttention's fused inference op (fvcore has no handle for it): the q/k/v and
    output projections plus Q K^T and A V, one multiply-add each."""
    batch, n, c = get_shape(inputs[0])
    m = get_shape(inputs[1])[1]
    return batch * (n * c * c + 2 * m * c * c + n * m * c * 2 + n * c * c)


def gflops(model, height, width):
    net = _KNetNetwork(model) if hasattr(model, "forward_head") else _SemanticNetwork(model)
    with torch.no_grad():
        flops = FlopCountAnalysis(net, torch.zeros(1, 3, height, width))
        flops.set_op_handle("aten::_native_multi_head_attention", _attention_flops)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total()
        # elementwise ops (add, mul, sigmoid, ...) count no FLOPs in fvcore's convention
        skipped = sorted(op for op in flops.unsupported_ops() if "attention" in op)
    return total / 1e9, skipped


def _median_time(fn, runs, clock):
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = clock()
            fn()
            if i:  # the first run warms up
                times.append(clock() - start)
    return statistics.median(times)


def latency(model, height, width, runs, clock=time.perf_counter):
    """(whole model incl. post-processing, network alone) in seconds of ``clock``."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    total = _median_time(lambda: model([{"image": image, "height": height, "width": width}]), runs,
                         clock)
    net = _KNetNetwork(model) if hasattr(model, "forward_head") else _SemanticNetwork(model)
    x = torch.randn(1, 3, height, width)
    return total, _median_time(lambda: net(x), runs, clock)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--panoptic", nargs="+",
                        help="K-Net configs (default: the 4 Cityscapes ones)")
    parser.add_argument("--semantic", nargs="+", help="semantic config of each, same backbone")
    parser.add_argument("--input-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per model (0: no latency)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of wall time: with "
                             "--threads 1 it is the single-core latency even on a busy machine")
    parser.add_argument("--semantic-output", action="store_true",
                        help="keep MODEL.KNET.TEST.SEMANTIC_ON of the configs (default: off, the "
                             "paper times the panoptic output only)")
    args = parser.parse_args()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    panoptic = args.panoptic or [p for p, _ in PAIRS]
    semantic = args.semantic or ([s for _, s in PAIRS] if not args.panoptic else [])
    if semantic and len(semantic) != len(panoptic):
        parser.error("give one --semantic config per --panoptic config")
    h, w = args.input_size
    clock_name = "CPU" if args.cpu_time else "wall"
    print(f"input {h}x{w}, {args.threads} CPU thread(s), {clock_name} time, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| config | params | GFLOPs | CPU latency (s), network + post-processing | "
          "semantic config | params | GFLOPs | CPU latency (s), network + post-processing |")
    print("|---|---|---|---|---|---|---|---|")
    for i, pan_file in enumerate(panoptic):
        row = []
        for f in [pan_file] + ([semantic[i]] if semantic else []):
            opts = [] if args.semantic_output or f not in panoptic else [
                "MODEL.KNET.TEST.SEMANTIC_ON", "False"]
            model = build_model(build_config(f, opts)).eval()
            params = sum(p.numel() for p in model.parameters())
            total, skipped = gflops(model, h, w)
            lat = "-"
            if args.runs:
                clock = time.process_time if args.cpu_time else time.perf_counter
                total_s, net_s = latency(model, h, w, args.runs, clock)
                lat = f"{total_s:.2f} = {net_s:.2f} + {total_s - net_s:.2f}"
            row += [f"`{f}`", f"{params:,}", f"{total:.2f}", lat]
            if skipped:
                print(f"  ({f}: fvcore counted no FLOPs for {', '.join(skipped)})", flush=True)
            del model
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
