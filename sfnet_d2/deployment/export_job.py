"""
What ``projects/SFNet/export_model.py`` runs (docs/EXPORT.md): the model of a config with its
``MODEL.WEIGHTS`` (the project's one safe loader: required, "random" for an untrained model on
purpose, another architecture's file refused), its network part at a fixed input size
(``build_network_part``), exported to TorchScript or ONNX with ``model.json`` beside it, and,
on request, checked against PyTorch on images.
"""
import logging
import os
import time
from typing import Dict, Optional

from sfnet_d2.deployment.exporter import (DEFAULT_ONNX_OPSET, default_metadata, export_onnx,
                                          export_torchscript, load_exported, write_export_info)
from sfnet_d2.deployment.network_part import build_network_part
from sfnet_d2.deployment.verification import (demo_verification_images, list_images,
                                              load_images_for_export, verify_export)

__all__ = ["EXPORT_FILE_NAMES", "export_file_path", "export_model", "verify_exported_model"]

EXPORT_FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}

logger = logging.getLogger("sfnet_d2")


def export_file_path(output_dir: str, fmt: str, overwrite: bool = False) -> str:
    """``output_dir/model.{ts,onnx}``; an existing file is only replaced with ``overwrite``."""
    if fmt not in EXPORT_FILE_NAMES:
        raise ValueError(f"Export format {fmt!r}: expected one of {sorted(EXPORT_FILE_NAMES)}")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output {output_dir} is an existing file, not a folder: pass "
                                 "a folder (it is created if missing)")
    path = os.path.join(output_dir, EXPORT_FILE_NAMES[fmt])
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    return path


def export_model(cfg, fmt: str, height: int, width: int, output_dir: str, *,
                 opset: int = DEFAULT_ONNX_OPSET, onnx_exporter: str = "torchscript",
                 overwrite: bool = False, source: str = "") -> Dict:
    """
    Export the model of ``cfg`` (with ``MODEL.WEIGHTS``) at ``height`` x ``width``.

    Returns ``{"path", "info_path", "part", "model"}``: the exported file, its ``model.json``,
    the exported network part and the eval-mode model (the PyTorch reference). The export runs on
    CPU whatever ``MODEL.DEVICE`` says: the graph is the same, and onnxruntime's CPU provider is
    what the verification uses. ``source`` (e.g. the config file) only appears in the log.
    """
    from sfnet_d2.engine.predictor import build_model_with_weights

    path = export_file_path(output_dir, fmt, overwrite)
    if cfg.MODEL.DEVICE != "cpu":
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
    model = build_model_with_weights(cfg, purpose="the export")
    inference = getattr(cfg, "DEPLOY", None)
    part = build_network_part(model, height, width,
                              fold_batchnorm=bool(inference is not None and inference.OPTIMIZE))
    logger.info(f"Exporting {cfg.MODEL.META_ARCHITECTURE} ({source or 'config'}) to {fmt}, input "
                f"{list(part.input_shape)} (padded to {part.padded_height}x{part.padded_width} "
                f"inside), outputs {list(part.output_names)}")
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    if fmt == "torchscript":
        export_torchscript(part, path)
        used_opset = None
    else:
        export_onnx(part, path, opset=opset, exporter=onnx_exporter)
        used_opset = opset
    info = default_metadata(cfg, part, fmt, used_opset)
    info_path = write_export_info(os.path.join(output_dir, "model.json"), info)
    logger.info(f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) and {info_path} "
                f"in {time.perf_counter() - start:.1f} s")
    return {"path": path, "info_path": info_path, "part": part, "model": model,
            "input_format": cfg.INPUT.FORMAT}


def verify_exported_model(export: Dict, images_path: Optional[str] = None, num_images: int = 2,
                          atol: float = 1e-4) -> Dict:
    """Run ``export`` (what ``export_model`` returned) and PyTorch on ``num_images`` images of
    ``images_path`` (an image or a folder; default: the demo data's validation images) resized to
    the export size; raises ``ExportVerificationError`` when a logit differs by more than
    ``atol``. Returns ``verify_export``'s report."""
    part = export["part"]
    if images_path:
        images = load_images_for_export(list_images(images_path)[:num_images], part.height,
                                        part.width, export["input_format"])
    else:
        images = demo_verification_images(part.height, part.width, export["input_format"],
                                          num_images)
    exported = load_exported(export["path"], part.output_names)
    report = verify_export(exported, part, images, model=export["model"], atol=atol)
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
    changed = (f"; predicted class changed at {report['argmax_changed']:.2e} of the pixels"
               if "argmax_changed" in report else "")
    logger.info(f"Verified on {report['num_images']} images: max |exported - PyTorch| = "
                f"{diffs} (<= {atol}){changed}")
    return report
