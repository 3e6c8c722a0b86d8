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
``--atol`` (1e-4) of PyTorch's. See docs/EXPORT.md (also for TensorRT).
"""
import argparse
import os
import sys
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402

from sfnet_d2.deployment import (  # noqa: E402
    DEFAULT_ONNX_OPSET,
    MIN_ONNX_OPSET,
    ExportVerificationError,
    build_network_part,
    default_metadata,
    demo_verification_images,
    export_onnx,
    export_torchscript,
    list_images,
    load_exported,
    load_images_for_export,
    verify_export,
    write_export_info,
)

FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.strip().splitlines()[1:]))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=sorted(FILE_NAMES))
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


def main(argv=None):
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="sfnet_d2")
    setup_logger(name="detectron2")
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file} does not exist")
    opts = [o for o in list(args.trailing_opts) + list(args.opts) if o != "--"]
    path = os.path.join(args.output, FILE_NAMES[args.format])
    if os.path.exists(path) and not args.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")

    cfg = build_config(args.config_file, opts)
    if cfg.MODEL.DEVICE != "cpu":
        # Export and verification run on CPU: the graph is the same, and onnxruntime's CPU
        # provider is what the check uses.
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")

    inference = getattr(cfg.MODEL.SFNET, "INFERENCE", None)
    part = build_network_part(model, args.height, args.width,
                              fold_batchnorm=bool(inference is not None and inference.OPTIMIZE))
    logger.info(f"Exporting {cfg.MODEL.META_ARCHITECTURE} ({args.config_file}) to {args.format}, "
                f"input {list(part.input_shape)} (padded to {part.padded_height}x{part.padded_width} "
                f"inside), outputs {list(part.output_names)}")
    start = time.perf_counter()
    if args.format == "torchscript":
        export_torchscript(part, path)
        opset = None
    else:
        export_onnx(part, path, opset=args.opset, exporter=args.onnx_exporter)
        opset = args.opset
    info = default_metadata(cfg, part, args.format, opset)
    info_path = write_export_info(os.path.join(args.output, "model.json"), info)
    logger.info(f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) and {info_path} "
                f"in {time.perf_counter() - start:.1f} s")

    if args.verify or args.verify_images:
        if args.verify_images:
            images = load_images_for_export(list_images(args.verify_images)[: args.num_verify_images],
                                            args.height, args.width, cfg.INPUT.FORMAT)
        else:
            images = demo_verification_images(args.height, args.width, cfg.INPUT.FORMAT,
                                              args.num_verify_images)
        exported = load_exported(path, part.output_names)
        try:
            report = verify_export(exported, part, images, model=model, atol=args.atol)
        except ExportVerificationError as e:
            logger.error(str(e))
            return 1
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
        changed = (f"; predicted class changed at {report['argmax_changed']:.2e} of the pixels"
                   if "argmax_changed" in report else "")
        logger.info(f"Verified on {report['num_images']} images: max |exported - PyTorch| = "
                    f"{diffs} (<= {args.atol}){changed}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
