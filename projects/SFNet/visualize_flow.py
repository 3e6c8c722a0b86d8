#!/usr/bin/env python
"""
Semantic-flow pictures (the paper's Figures 3 and 6) for any image: every FAM / GD-FAM's flow in
the optical-flow colour coding and as arrows, and the coarse feature before (bilinear
upsampling) and after (warping) alignment.

    python projects/SFNet/visualize_flow.py --config-file configs/demo/sfnet_lite_R18_demo.yaml \\
        --input street.png|images/ --output output/flow_pictures \\
        --opts MODEL.WEIGHTS output/demo/sfnet_lite_R18/model_final.pth

Writes, per image, <name>_stage{i}_s{stride}_{flow,arrows,features}.png (stage 1 = coarsest),
<name>_overview.png (image | flows | arrows of the finest stage | prediction) and color_wheel.png
(the legend). MODEL.WEIGHTS is required ("random": an untrained model, on purpose). See
docs/DEMO.md.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List

import torch
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from sfnet_d2.deployment.verification import list_images
from sfnet_d2.engine import Predictor
from sfnet_d2.engine.command_line import run_command
from sfnet_d2.visualization.demo import (build_demo_config, check_output_folder,
                                         save_flow_pictures_of_image)

logger = logging.getLogger("sfnet_d2.visualize_flow")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--feature-mode", default="mean", choices=["mean", "pca"],
                        help="features as channel mean + jet (paper Fig. 3) or PCA to RGB")
    parser.add_argument("--arrow-step", type=int, default=16, help="pixels between arrows")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE")
    return parser


def main(argv=None) -> List[Dict[str, str]]:
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    files = list_images(args.input)
    check_output_folder(args.output)
    cfg = build_demo_config(args.config_file, args.opts, args.device)
    # the plain model: the flows are read from its FAM / GD-FAM modules with forward hooks
    predictor = Predictor(cfg, optimize=False, purpose="the flow pictures")
    results = []
    with torch.no_grad():
        for f in tqdm(files, desc="flow pictures", unit="img"):
            results.append(save_flow_pictures_of_image(predictor, f, args.output,
                                                       args.feature_mode, args.arrow_step))
    logger.info(f"Wrote {sum(len(r) for r in results)} pictures to {os.path.abspath(args.output)}")
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
