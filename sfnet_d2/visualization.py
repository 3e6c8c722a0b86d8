"""Pictures of semantic predictions: image | prediction | ground truth, with detectron2's Visualizer."""
from typing import Optional

import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_semantic_side_by_side"]


def _draw(image_rgb: np.ndarray, sem_seg: np.ndarray, metadata) -> np.ndarray:
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    return vis.draw_sem_seg(sem_seg, alpha=0.6).get_image()


def draw_semantic_side_by_side(
    image_rgb: np.ndarray, prediction: np.ndarray, metadata, ground_truth: Optional[np.ndarray] = None
) -> np.ndarray:
    """
    Concatenate the input image, the predicted classes and (when given) the ground truth,
    left to right, as one RGB uint8 array. ``prediction``/``ground_truth`` are (H, W) class ids;
    pixels equal to ``metadata.ignore_label`` are left undrawn.
    """
    panels = [image_rgb, _draw(image_rgb, prediction, metadata)]
    if ground_truth is not None:
        panels.append(_draw(image_rgb, ground_truth, metadata))
    gap = np.full((image_rgb.shape[0], 4, 3), 255, np.uint8)
    out = []
    for p in panels:
        out += [p.astype(np.uint8), gap]
    return np.concatenate(out[:-1], axis=1)
