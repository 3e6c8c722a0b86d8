#!/usr/bin/env python
"""
Run an SFNet model on an image, a folder of images or a video, and save side-by-side pictures
(input | prediction overlay drawn with detectron2's Visualizer).

    python projects/SFNet/demo.py --config-file configs/demo/sfnet_lite_R18_demo.yaml \\
        --input street.png|images/|drive.mp4 --output output/demo_pictures \\
        --opts MODEL.WEIGHTS output/demo/sfnet_lite_R18/model_final.pth

Images are written as DIR/<name>.png, videos as DIR/<name>.mp4 (same frame rate). Semantic
models get a semantic overlay; models whose outputs hold ``panoptic_seg`` (the panoptic configs)
get a panoptic overlay. MODEL.WEIGHTS is required ("random": an untrained model, on purpose).
An image of a folder that cannot be read is skipped and named; the command then exits with
status 1 after the others. Runs on CPU unless --device says otherwise. See docs/DEMO.md.
"""
import argparse
import logging
import os
import sys
import time

from detectron2.utils.logger import setup_logger

from sfnet_d2.engine import Predictor
from sfnet_d2.engine.command_line import run_command
from sfnet_d2.visualization.demo import (VisualizationDemo, build_demo_config, check_output_folder,
                                         classify_input)

logger = logging.getLogger("sfnet_d2.demo")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--alpha", type=float, default=0.6, help="overlay opacity")
    parser.add_argument("--max-frames", type=int, default=0, help="videos: stop after N frames")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return parser


def main(argv=None):
    """Returns the paths written; raises ``SkippedInputsError`` (after writing the others) when
    images of a folder could not be read."""
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    # a bad input or output path fails before the model is built
    kind, files = classify_input(args.input)
    check_output_folder(args.output)
    cfg = build_demo_config(args.config_file, args.opts, args.device)
    demo = VisualizationDemo(Predictor(cfg, purpose="the demo"), alpha=args.alpha)
    start = time.perf_counter()
    if kind == "video":
        outputs = [demo.process_video(files[0], args.output, args.max_frames)]
    else:
        outputs = demo.process_images(files, args.output)
    logger.info(f"Wrote {len(outputs)} file(s) to {os.path.abspath(args.output)} "
                f"in {time.perf_counter() - start:.1f} s")
    return outputs


if __name__ == "__main__":
    sys.exit(run_command(main))
