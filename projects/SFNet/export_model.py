#!/usr/bin/env python
"""
Export an SFNet model to TorchScript (trace) or ONNX at a fixed input size, and check it.

    python projects/SFNet/export_model.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml \\
        --format onnx --height 1024 --width 2048 --output export/sfnet_R18 --verify \\
        MODEL.WEIGHTS sfnet_R18_d2.pth

Writes ``DIR/model.onnx`` (or ``DIR/model.ts``) and ``DIR/model.json`` (input/output contract,
classes, opset). Input: ``image``, float32 (1, 3, H, W), raw 0..255 pixel values in the config's
INPUT.FORMAT order (RGB); the normalisation is inside the graph. Output: ``sem_seg``, float32
(1, K, H, W) logits at full resolution, as the model's ``sem_seg``. ``--verify`` runs the file
(ONNX with onnxruntime on CPU) on the demo images and fails unless every logit is within
``--atol`` (1e-4) of PyTorch's. MODEL.WEIGHTS is required ("random": an untrained model, on
purpose); a checkpoint of another architecture is refused. See docs/EXPORT.md (also for TensorRT).
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.utils.logger import setup_logger

from sfnet_d2.deployment import DEFAULT_ONNX_OPSET, MIN_ONNX_OPSET, ExportVerificationError
from sfnet_d2.deployment.export_job import (EXPORT_FILE_NAMES, export_file_path, export_model,
                                            verify_exported_model)
from sfnet_d2.engine import build_config
from sfnet_d2.engine.command_line import run_command

logger = logging.getLogger("sfnet_d2")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FILE_NAMES))
    parser.add_argument("--height", type=int, required=True, help="static input height")
    parser.add_argument("--width", type=int, required=True, help="static input width")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET,
                        help=f"ONNX opset (>= {MIN_ONNX_OPSET}: GridSample; default %(default)s)")
    parser.add_argument("--onnx-exporter", default="torchscript", choices=["torchscript", "dynamo"],
                        help="torch's ONNX exporter (dynamo needs onnxscript and opset >= 18)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the exported file with PyTorch on the demo images")
    parser.add_argument("--verify-images", metavar="PATH",
                        help="image or folder to verify on instead of the demo images")
    parser.add_argument("--num-verify-images", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest allowed absolute logit difference (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides (also accepted without --opts, at the end)")
    parser.add_argument("trailing_opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS w.pth")
    return parser


def main(argv=None) -> int:
    """0 when exported (and verified, if asked), 1 when the verification failed."""
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    setup_logger(name="detectron2")
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file} does not exist")
    opts = [o for o in list(args.trailing_opts) + list(args.opts) if o != "--"]
    export_file_path(args.output, args.format, args.overwrite)  # before the model is built
    cfg = build_config(args.config_file, opts)
    with torch.no_grad():
        export = export_model(cfg, args.format, args.height, args.width, args.output,
                              opset=args.opset, onnx_exporter=args.onnx_exporter,
                              overwrite=args.overwrite, source=args.config_file)
        if args.verify or args.verify_images:
            try:
                verify_exported_model(export, args.verify_images, args.num_verify_images,
                                      args.atol)
            except ExportVerificationError as e:
                logger.error(str(e))
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
