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
(the legend). See docs/DEMO.md.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import (  # noqa: E402
    resize_for_test,
    setup_model,
    to_model_input,
    to_rgb,
)

from sfnet_d2.deployment.verification import list_images  # noqa: E402
from sfnet_d2.visualization.flow import record_alignments, save_flow_pictures  # noqa: E402
from sfnet_d2.visualization.overlays import draw_prediction  # noqa: E402

logger = logging.getLogger("sfnet_d2.visualize_flow")


def visualize_image(cfg, model, path: str, out_dir: str, metadata, feature_mode: str = "mean",
                    arrow_step: int = 16) -> Dict[str, str]:
    # at the size the model sees (the config's test-time resize; none for the SFNet configs)
    image = resize_for_test(utils.read_image(path, format=cfg.INPUT.FORMAT),
                            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    outputs, records = record_alignments(model, [to_model_input(image)])
    rgb = to_rgb(image, cfg.INPUT.FORMAT)
    # the model's padding rule (SFNetKNet keeps it on the model, SemanticSegmentor on the backbone)
    divisibility = getattr(model, "size_divisibility", None)
    if divisibility is None:
        divisibility = getattr(model.backbone, "size_divisibility", 0)
    divisibility = max(int(divisibility or 0), 1)
    padded = tuple(-(-s // divisibility) * divisibility for s in image.shape[:2])
    segmentation = draw_prediction(rgb, outputs[0], metadata)
    prefix = os.path.splitext(os.path.basename(path))[0]
    return save_flow_pictures(rgb, records, out_dir, prefix, padded, feature_mode, arrow_step,
                              segmentation)


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
    # The plain model: the flows are read from its FAM / GD-FAM modules with forward hooks,
    # which the optimised (BN-folded, traced) inference copy does not run.
    cfg, model, _ = setup_model(args.config_file, list(args.opts), args.device, optimize=False)
    metadata = MetadataCatalog.get((list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN))[0])
    results = []
    for f in tqdm(files, desc="flow pictures", unit="img"):
        results.append(visualize_image(cfg, model, f, args.output, metadata, args.feature_mode,
                                       args.arrow_step))
    logger.info(f"Wrote {sum(len(r) for r in results)} pictures to {os.path.abspath(args.output)}")
    return results


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
