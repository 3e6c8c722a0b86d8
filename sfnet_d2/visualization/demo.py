"""
A trained model on the user's own pictures, drawn: what ``projects/SFNet/demo.py`` and
``visualize_flow.py`` run (the model itself is ``sfnet_d2.engine.Predictor``: safe weights, the
optimised inference path, the config's test-time resize). In the spirit of detectron2's
``demo/predictor.py`` ``VisualizationDemo``:

* ``classify_input``: an image, a folder of images or a video; a bad path fails before any model
  is built, naming it;
* ``check_output_folder``: ``--output`` must be a folder (created if missing), not a file;
* ``VisualizationDemo``: input | prediction overlay pictures for images and videos. A folder goes
  on past an image that cannot be read (unreadable, truncated, not an image): the file is named in
  a warning, the others are processed, and ``SkippedInputsError`` lists every skipped file at the
  end, so that the command exits with a non-zero status;
* ``save_flow_pictures_of_image``: the semantic-flow pictures of one image (paper Figures 3, 6);
* ``save_ground_truth_pictures``: image | prediction | ground truth of dataset records, for the
  demo training job.
"""
import logging
import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from PIL import Image
from tqdm import tqdm

from sfnet_d2.deployment.verification import IMAGE_EXTENSIONS
from sfnet_d2.visualization.overlays import (concat_side_by_side, draw_prediction,
                                             draw_semantic_side_by_side)

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "SkippedInputsError", "VisualizationDemo",
           "build_demo_config", "check_output_folder", "classify_input", "read_rgb_image",
           "image_as_the_model_sees_it", "save_flow_pictures_of_image",
           "save_ground_truth_pictures"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

logger = logging.getLogger("sfnet_d2.demo")


class SkippedInputsError(RuntimeError):
    """Some inputs could not be read; the others were processed. ``skipped``: (path, reason)
    pairs; ``written``: the pictures that were written."""

    def __init__(self, skipped: Sequence[Tuple[str, str]], written: Sequence[str]):
        self.skipped = list(skipped)
        self.written = list(written)
        listing = "\n".join(f"  {path}: {reason}" for path, reason in self.skipped)
        super().__init__(f"{len(self.skipped)} input file(s) could not be read and were skipped "
                         f"({len(self.written)} picture(s) written):\n{listing}")


def build_demo_config(config_file: str, opts: Sequence[str] = (), device: str = "cpu"):
    """The frozen config of ``config_file`` + ``opts`` on ``device`` (``MODEL.DEVICE``)."""
    from sfnet_d2.engine import build_config

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use "
                         "--device cpu")
    return build_config(config_file, list(opts) + ["MODEL.DEVICE", device])


def classify_input(path: str) -> Tuple[str, List[str]]:
    """("images", files) for an image or a folder of images (sorted; other files are ignored),
    ("video", [path]) for a video."""
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


def check_output_folder(path: str, flag: str = "--output") -> str:
    """``path`` as an output folder: created if missing; an existing file there is an error
    (writing DIR/<name>.png under a file would fail only after the model ran)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{flag} {path} is an existing file, not a folder: pass a folder "
                                 "(it is created if missing)")
    os.makedirs(path, exist_ok=True)
    return path


def read_rgb_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; an unreadable, truncated or non-image file raises OSError naming it."""
    try:
        return utils.read_image(path, format="RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unreadable, truncated, not an image
        raise OSError(f"Cannot read image file {path}: {e}") from e


def image_as_the_model_sees_it(predictor, image: np.ndarray) -> np.ndarray:
    """``image`` resized by the predictor's test-time resize (``INPUT.MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST``; none for the SFNet configs, which predict at full resolution)."""
    if predictor.resize is None:
        return image
    return predictor.resize.get_transform(image).apply_image(image)


class VisualizationDemo:
    """Pictures of ``predictor``'s predictions: input | overlay (``overlays.draw_prediction``:
    semantic or panoptic by the model's outputs), 4 white pixels apart."""

    def __init__(self, predictor, alpha: float = 0.6):
        self.predictor = predictor
        self.alpha = alpha

    def run_on_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, 2W + 4, 3) uint8 picture at the image's size."""
        output = self.predictor(rgb, input_format="RGB")
        overlay = draw_prediction(rgb, output, self.predictor.metadata, self.alpha)
        return concat_side_by_side([rgb, overlay])

    def process_images(self, files: Sequence[str], out_dir: str) -> List[str]:
        """Write ``out_dir/<name>.png`` per image; returns their paths. Images that cannot be read
        are skipped with a warning, then listed by ``SkippedInputsError``."""
        written, skipped = [], []
        for path in tqdm(files, desc="demo", unit="img"):
            try:
                rgb = read_rgb_image(path)
            except OSError as e:
                logger.warning(f"Skipping {path}: {e.__cause__ or e}")
                skipped.append((path, str(e.__cause__ or e)))
                continue
            out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
            Image.fromarray(self.run_on_image(rgb)).save(out)
            written.append(out)
        if skipped:
            raise SkippedInputsError(skipped, written)
        return written

    def process_video(self, video: str, out_dir: str, max_frames: int = 0) -> str:
        """Read ``video`` with ``cv2.VideoCapture`` and write ``out_dir/<name>.mp4`` (mp4v, the
        input's frame rate) of side-by-side frames; ``max_frames`` > 0 stops after that many."""
        import cv2

        capture = cv2.VideoCapture(video)
        if not capture.isOpened():
            raise OSError(f"--input {video}: OpenCV cannot open this video (damaged file or codec "
                          "missing from this OpenCV build)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        if max_frames > 0:
            total = min(total, max_frames) if total else max_frames
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(video))[0] + ".mp4")
        writer = None
        try:
            for frame in tqdm(_frames(capture, max_frames), total=total, desc="demo",
                              unit="frame"):
                rgb = np.ascontiguousarray(frame[:, :, ::-1])  # OpenCV decodes to BGR
                picture = self.run_on_image(rgb)
                if writer is None:
                    h, w = picture.shape[:2]
                    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise OSError(f"OpenCV cannot write {path} with the mp4v codec")
                writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if writer is None:
            raise OSError(f"--input {video}: no frame could be read")
        return path


def _frames(capture, max_frames: int) -> Iterable[np.ndarray]:
    count = 0
    while max_frames <= 0 or count < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield frame


def save_flow_pictures_of_image(predictor, path: str, out_dir: str, feature_mode: str = "mean",
                                arrow_step: int = 16) -> Dict[str, str]:
    """The semantic-flow pictures of the image at ``path`` (``flow.save_flow_pictures``), at the
    size the model sees it. ``predictor`` must be built with ``optimize=False``: the flows are read
    from the plain model's FAM / GD-FAM modules with forward hooks, which the optimised copy does
    not run."""
    from sfnet_d2.deployment.network_part import padding_divisibility
    from sfnet_d2.visualization.flow import record_alignments, save_flow_pictures

    model = predictor.model
    rgb = image_as_the_model_sees_it(predictor, read_rgb_image(path))
    image = rgb if predictor.input_format == "RGB" else rgb[:, :, ::-1]
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    inputs = {"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]}
    outputs, records = record_alignments(model, [inputs])
    # the network input is padded to the model's size divisibility: the flows live on that grid
    divisibility = max(padding_divisibility(model), 1)
    padded = tuple(-(-s // divisibility) * divisibility for s in rgb.shape[:2])
    segmentation = draw_prediction(rgb, outputs[0], predictor.metadata)
    prefix = os.path.splitext(os.path.basename(path))[0]
    return save_flow_pictures(rgb, records, out_dir, prefix, padded, feature_mode, arrow_step,
                              segmentation)


def save_ground_truth_pictures(model, records: Sequence[dict], metadata, input_format: str,
                               out_dir: str) -> List[str]:
    """image | prediction | ground truth (``sem_seg_file_name``) of each semantic dataset record,
    predicted by the eval-mode ``model`` at full resolution; written as
    ``out_dir/<image>_image_prediction_groundtruth.png``."""
    os.makedirs(out_dir, exist_ok=True)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for rec in tqdm(records, desc="pictures", unit="img"):
            image = utils.read_image(rec["file_name"], format=input_format)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            with torch.no_grad():
                output = model([{"image": tensor, "height": image.shape[0],
                                 "width": image.shape[1]}])[0]
            prediction = output["sem_seg"].argmax(dim=0).cpu().numpy()
            ground_truth = np.asarray(Image.open(rec["sem_seg_file_name"]))
            rgb = utils.convert_image_to_rgb(image, input_format)
            picture = draw_semantic_side_by_side(rgb, prediction, metadata, ground_truth)
            stem = os.path.splitext(os.path.basename(rec["file_name"]))[0]
            stem = stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem
            path = os.path.join(out_dir, f"{stem}_image_prediction_groundtruth.png")
            Image.fromarray(picture).save(path)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
