#!/usr/bin/env python
"""
Run an SFNet model on an image, a folder of images or a video, and save side-by-side pictures
(input | prediction overlay drawn with detectron2's Visualizer).

    python projects/SFNet/demo.py --config-file configs/demo/sfnet_lite_R18_demo.yaml \\
        --input street.png|images/|drive.mp4 --output output/demo_pictures \\
        --opts MODEL.WEIGHTS output/demo/sfnet_lite_R18/model_final.pth

Images are written as DIR/<name>.png, videos as DIR/<name>.mp4 (same frame rate). Semantic
models get a semantic overlay; models whose outputs hold ``panoptic_seg`` (the panoptic configs)
get a panoptic overlay. Runs on CPU unless --device says otherwise. See docs/DEMO.md.
"""
import argparse
import logging
import os
import sys
import time
from typing import Iterator, List, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_net import build_config  # noqa: E402

from sfnet_d2.visualization.overlays import concat_side_by_side, draw_prediction  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

logger = logging.getLogger("sfnet_d2.demo")


# --- model --------------------------------------------------------------------------------

def setup_model(config_file: str, opts=(), device: str = "cpu", optimize: bool = True):
    """The config (``MODEL.DEVICE`` = ``device``), the eval-mode model with ``MODEL.WEIGHTS``
    loaded, and the model to run inference with: with ``optimize``, the optimised copy of
    ``sfnet_d2.deployment`` when ``MODEL.SFNET.INFERENCE.OPTIMIZE`` is on, else the model."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    opts = list(opts)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    cfg = build_config(config_file, opts + ["MODEL.DEVICE", device])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model is randomly initialised "
                       "(pass --opts MODEL.WEIGHTS path/to/model_final.pth)")
    return cfg, model, (_inference_model(cfg, model) if optimize else model)


def _inference_model(cfg, model):
    inference = getattr(cfg.MODEL.SFNET, "INFERENCE", None)
    if inference is None or not inference.OPTIMIZE:
        return model
    from sfnet_d2.deployment import build_inference_model

    logger.info("Using the optimised inference path (MODEL.SFNET.INFERENCE.*; set "
                "MODEL.SFNET.INFERENCE.OPTIMIZE False for the plain model)")
    return build_inference_model(cfg, model)


def resize_for_test(image: np.ndarray, min_size: int = 0, max_size: int = 0) -> np.ndarray:
    """The config's test-time resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, detectron2's
    ResizeShortestEdge, as DefaultPredictor does); 0 = the image as it is (the SFNet configs: the
    paper evaluates at full resolution)."""
    if min_size <= 0:
        return image
    from detectron2.data import transforms as T

    return T.ResizeShortestEdge([min_size, min_size], max_size).get_transform(image).apply_image(image)


def to_model_input(image: np.ndarray, height: int = 0, width: int = 0) -> dict:
    """(H, W, 3) uint8 image in the config's INPUT.FORMAT -> a detectron2 model input dict; the
    outputs come at ``height`` x ``width`` (default: the image's size)."""
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return {"image": tensor, "height": height or image.shape[0], "width": width or image.shape[1]}


def to_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    return utils.convert_image_to_rgb(image, input_format)


# --- drawing (sfnet_d2/visualization/overlays.py) -----------------------------------------------------

def run_on_image(model, image: np.ndarray, input_format: str, metadata, alpha=0.6,
                 min_size: int = 0, max_size: int = 0) -> np.ndarray:
    """Predict on one image (resized for the model as the config says, outputs at the original
    size) and return input | overlay."""
    inputs = to_model_input(resize_for_test(image, min_size, max_size), *image.shape[:2])
    with torch.no_grad():
        output = model([inputs])[0]
    rgb = to_rgb(image, input_format)
    return concat_side_by_side([rgb, draw_prediction(rgb, output, metadata, alpha)])


# --- inputs -------------------------------------------------------------------------------

def classify_input(path: str) -> Tuple[str, List[str]]:
    """("images", files) for an image or a folder of images, ("video", [path]) for a video."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(
                f"--input folder {path} holds no image with an extension in {IMAGE_EXTENSIONS}")
        return "images", files
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "images", [path]
    if ext in VIDEO_EXTENSIONS:
        return "video", [path]
    raise ValueError(f"--input {path}: unsupported extension {ext!r}; expected an image "
                     f"{IMAGE_EXTENSIONS}, a video {VIDEO_EXTENSIONS} or a folder of images")


def _video_frames(capture, input_format: str) -> Iterator[np.ndarray]:
    import cv2

    while True:
        ok, frame = capture.read()
        if not ok:
            return
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        yield rgb if input_format == "RGB" else utils.convert_PIL_to_numpy(Image.fromarray(rgb), input_format)


def process_images(model, files: List[str], out_dir: str, input_format: str, metadata,
                   alpha: float = 0.6, test_size: Tuple[int, int] = (0, 0)) -> List[str]:
    paths = []
    for f in tqdm(files, desc="demo", unit="img"):
        picture = run_on_image(model, utils.read_image(f, format=input_format), input_format,
                               metadata, alpha, *test_size)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(f))[0] + ".png")
        Image.fromarray(picture).save(path)
        paths.append(path)
    return paths


def process_video(model, video: str, out_dir: str, input_format: str, metadata,
                  alpha: float = 0.6, max_frames: int = 0, test_size: Tuple[int, int] = (0, 0)) -> str:
    """Read ``video`` with cv2.VideoCapture, write the side-by-side frames as an mp4 (mp4v)."""
    import cv2

    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise RuntimeError(f"--input {video}: OpenCV cannot open this video (damaged file or codec "
                           "missing from this OpenCV build)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames > 0:
        total = min(total, max_frames) if total else max_frames
    path = os.path.join(out_dir, os.path.splitext(os.path.basename(video))[0] + ".mp4")
    writer = None
    try:
        for i, frame in enumerate(tqdm(_video_frames(capture, input_format), total=total,
                                       desc="demo", unit="frame")):
            if max_frames > 0 and i >= max_frames:
                break
            picture = run_on_image(model, frame, input_format, metadata, alpha, *test_size)
            if writer is None:
                h, w = picture.shape[:2]
                writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec")
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise RuntimeError(f"--input {video}: no frame could be read")
    return path


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


def main(argv=None) -> List[str]:
    args = get_parser().parse_args(argv)
    setup_logger(name="sfnet_d2")
    kind, files = classify_input(args.input)  # fail on a bad input before building the model
    cfg, _, model = setup_model(args.config_file, args.opts, args.device)
    dataset = (list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN))[0]
    metadata = MetadataCatalog.get(dataset)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    if kind == "video":
        outputs = [process_video(model, files[0], args.output, cfg.INPUT.FORMAT, metadata,
                                 args.alpha, args.max_frames, test_size)]
    else:
        outputs = process_images(model, files, args.output, cfg.INPUT.FORMAT, metadata,
                                 args.alpha, test_size)
    logger.info(f"Wrote {len(outputs)} file(s) to {os.path.abspath(args.output)} "
                f"in {time.perf_counter() - start:.1f} s")
    return outputs


if __name__ == "__main__":
    main()
