#!/usr/bin/env python
"""
Inference speed of a config's model (semantic or panoptic) in several inference modes timed in
one run: latency, FPS, CPU time, peak memory, the network / pre- and post-processing split, the
FLOP bound, parameters (docs/BENCHMARK.md; the protocol is sfnet_d2/benchmark/run.py's).

    python projects/SFNet/benchmark.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/benchmark.py --config-file ... --input-size 512 1024 --runs 10 --threads 2
    python projects/SFNet/benchmark.py --config-file ... --modes eager optimized --output out.json
    python projects/SFNet/benchmark.py --config-file ... --device cuda MODEL.WEIGHTS model.pth
    # a K-Net panoptic model, single-thread CPU time, as docs/PANOPTIC.md measures it
    python projects/SFNet/benchmark.py \\
        --config-file configs/cityscapes/panoptic/knet_sfnet_R18.yaml \\
        --modes eager --threads 1 --warmup 1 --runs 2 --no-gemm \\
        MODEL.WEIGHTS "" MODEL.KNET.TEST.SEMANTIC_ON False

    # K-Net SF-R18 beside the semantic SFNet-R18 in the same rounds
    python projects/SFNet/benchmark.py --config-file configs/cityscapes/panoptic/knet_sfnet_R18.yaml \\
        --beside configs/cityscapes/semantic/sfnet_R18.yaml --modes eager optimized MODEL.WEIGHTS ""

    # the training step (forward + loss + backward + update) beside the plain eager step
    python projects/SFNet/benchmark.py --train --config-file configs/demo/sfnet_lite_R18_demo.yaml \\
        --batch-size 4 --crop 256 512 --runs 3 --warmup 1 --threads 2

MODEL.WEIGHTS is read with the project's safe loader (no code runs from the file; another
architecture's checkpoint is refused); empty = random weights, which time the same.
"""
import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

from sfnet_d2.benchmark.report import format_report, write_report
from sfnet_d2.benchmark.run import (ALL_MODES, DEFAULT_MODES, PHASES, BenchmarkSettings,
                                    run_benchmark)
from sfnet_d2.engine import build_config
from sfnet_d2.engine.command_line import run_command


def get_parser():
    defaults = BenchmarkSettings()
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input-size", type=int, nargs=2, default=list(defaults.input_size),
                        metavar=("H", "W"))
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES),
                        help=f"any of {list(ALL_MODES)}; 'eager' is required (the reference)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--runs", type=int, default=defaults.runs,
                        help="timed runs per mode and phase")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed runs first (tracing)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch.set_num_threads (0 = PyTorch's default)")
    parser.add_argument("--device", default=defaults.device,
                        help="cpu or cuda (default: MODEL.DEVICE)")
    parser.add_argument("--output", default="", help="JSON file (default: print only)")
    parser.add_argument("--no-gemm", action="store_true", help="skip the throughput reference")
    parser.add_argument("--gemm-size", type=int, default=defaults.gemm_size,
                        help="N of the N^3 GEMM run as a 1x1 conv (a square number)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore count")
    parser.add_argument("--accuracy-dataset", default=defaults.accuracy_dataset)
    parser.add_argument("--accuracy-images", type=int, default=defaults.accuracy_images,
                        help="images compared against eager (0 = no comparison)")
    parser.add_argument("--beside", default="", metavar="FILE",
                        help="another config timed in the same rounds (random weights), e.g. "
                        "the semantic model beside a panoptic one; its ratios are printed")
    parser.add_argument("--beside-modes", nargs="+", default=list(defaults.beside_modes))
    parser.add_argument("--process-peak-runs", type=int, default=defaults.process_peak_runs,
                        help="whole-process peak RSS: a fresh process per mode builds the model "
                        "and runs --warmup + N images (0 = not measured)")
    train = parser.add_argument_group("--train: the training step (benchmark/training.py)")
    train.add_argument("--train", action="store_true", help="time training steps instead; uses "
                       "--runs/--warmup/--threads/--device/--output (suggested --runs 3)")
    train.add_argument("--batch-size", type=int, default=0, help="0 = SOLVER.IMS_PER_BATCH")
    train.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="training crop (default: the config's)")
    train.add_argument("--train-dataset", default="", help="default: the task's demo data")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    settings = BenchmarkSettings(
        input_size=tuple(args.input_size), modes=tuple(args.modes), phases=tuple(args.phases),
        runs=args.runs, warmup=args.warmup, threads=args.threads, device=args.device,
        gemm_size=0 if args.no_gemm else args.gemm_size, flops=not args.no_flops,
        accuracy_dataset=args.accuracy_dataset, accuracy_images=args.accuracy_images,
        process_peak_runs=args.process_peak_runs, beside_config=args.beside,
        beside_modes=tuple(args.beside_modes))
    cfg = build_config(args.config_file, args.opts)
    if args.train:
        return _train_main(args, cfg)
    report = run_benchmark(cfg, settings, config_file=args.config_file, opts=args.opts)
    print(format_report(report))
    if args.output:
        print(f"Wrote {write_report(report, args.output)}")
    return report


def _train_main(args, cfg):
    from sfnet_d2.benchmark.training import (TrainBenchmarkSettings, format_training_report,
                                             run_training_benchmark)

    settings = TrainBenchmarkSettings(
        batch_size=args.batch_size, crop=args.crop, dataset=args.train_dataset, runs=args.runs,
        warmup=args.warmup, threads=args.threads, device=args.device)
    report = run_training_benchmark(cfg, settings, config_file=args.config_file,
                                    progress=logging.getLogger("sfnet_d2").info)
    print(format_training_report(report))
    if args.output:
        print(f"Wrote {write_report(report, args.output)}")
    return report


if __name__ == "__main__":
    sys.exit(run_command(main))
