"""Pictures of predictions with detectron2's Visualizer: overlays and side-by-side panels."""
from typing import Dict, Optional, Sequence

import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_semantic_side_by_side", "draw_prediction", "concat_side_by_side"]


def concat_side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W_i, 3) uint8 panels of one height, left to right, with ``gap`` white columns between."""
    heights = {p.shape[0] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"concat_side_by_side: panels of different heights {sorted(heights)}")
    spacer = np.full((heights.pop(), gap, 3), 255, np.uint8)
    out = []
    for p in panels:
        out += [p.astype(np.uint8), spacer]
    return np.concatenate(out[:-1], axis=1)


def draw_prediction(image_rgb: np.ndarray, output: Dict, metadata, alpha: float = 0.6) -> np.ndarray:
    """
    One model output drawn over the RGB image: the panoptic overlay when the output holds
    ``panoptic_seg`` (detectron2's ``(segments map, segments_info)``), else the semantic overlay
    of the argmax of ``sem_seg`` (K, H, W). Returns an (H, W, 3) uint8 array.
    """
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in output:
        panoptic, segments = output["panoptic_seg"]
        return vis.draw_panoptic_seg(panoptic.cpu(), segments, alpha=alpha).get_image()
    if "sem_seg" in output:
        classes = output["sem_seg"].argmax(dim=0).cpu().numpy()
        return vis.draw_sem_seg(classes, alpha=alpha).get_image()
    raise ValueError(f"Model output has neither 'panoptic_seg' nor 'sem_seg': {sorted(output)}")


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
    return concat_side_by_side(panels)
