"""
Panoptic ground truth for the built-in synthetic street scenes (sfnet_d2/data/demo_data.py), in the
two formats K-Net is trained on:

* COCO panoptic (the "COCO" stage of the demo pipeline), under ``ROOT`` =
  ``$DETECTRON2_DATASETS/sfnet_demo_coco_panoptic``::

      ROOT/{train,val}2017/{image_id:012d}.jpg
      ROOT/panoptic_{train,val}2017/{image_id:012d}.png      (segment id = R + 256 G + 256^2 B)
      ROOT/annotations/panoptic_{train,val}2017.json          (images, annotations, categories)

  with COCO's own category ids and names, things first (person, car), then stuff (road,
  tree-merged, sky-other-merged, pavement-merged, grass-merged, building-other-merged). COCO has
  no pole category: poles are left unlabelled (VOID, id 0), like COCO's unannotated pixels. Every
  thing object is one segment; all pixels of a stuff class form one segment, as in COCO.

* Cityscapes panoptic (the "Cityscapes" stage), added to the synthetic Cityscapes tree by
  cityscapesscripts' own ``createPanopticImgs`` from its ``*_gtFine_instanceIds.png``:
  ``gtFine/cityscapes_panoptic_{train,val}.json`` and ``gtFine/cityscapes_panoptic_{train,val}/``,
  exactly what users run for real Cityscapes.

Scenes are drawn by demo_data's renderer; the panoptic map is rasterised from the same polygons with
the same PIL polygon fill, back to front, so the labels match the pixels exactly.
"""
import io
import json
import logging
import os
from contextlib import redirect_stdout

import numpy as np
from PIL import Image, ImageDraw

from sfnet_d2.data.demo_data import _render_scene, demo_data_is_complete, generate_demo_cityscapes

__all__ = ["DEMO_COCO_PANOPTIC_CATEGORIES", "generate_demo_coco_panoptic",
           "add_cityscapes_panoptic_to_demo", "demo_coco_panoptic_is_complete",
           "demo_cityscapes_panoptic_is_complete", "ensure_demo_panoptic"]

logger = logging.getLogger(__name__)

# (Cityscapes demo label -> COCO panoptic category) for the COCO-format demo data.
_CITYSCAPES_TO_COCO = {"person": 1, "car": 3, "road": 149, "vegetation": 184, "sky": 187,
                       "sidewalk": 191, "terrain": 193, "building": 197}


def _demo_categories():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    by_id = {c["id"]: c for c in COCO_CATEGORIES}
    ids = sorted(_CITYSCAPES_TO_COCO.values(), key=lambda i: (not by_id[i]["isthing"], i))
    return [{"id": i, "name": by_id[i]["name"], "isthing": by_id[i]["isthing"],
             "color": list(by_id[i]["color"]), "supercategory": "demo"} for i in ids]


DEMO_COCO_PANOPTIC_CATEGORIES = _demo_categories()
_COCO_MARK = ".sfnet_demo_coco_panoptic_complete"
_CITYSCAPES_PANOPTIC_MARK = ".sfnet_demo_cityscapes_panoptic_complete"


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _panoptic_from_objects(objects, h, w):
    """(H, W) segment-id map (0 = VOID) and COCO segments_info from back-to-front objects."""
    isthing = {c["id"]: c["isthing"] for c in DEMO_COCO_PANOPTIC_CATEGORIES}
    ids = np.zeros((h, w), np.int64)
    instance_count = {}
    for obj in objects:
        cat = _CITYSCAPES_TO_COCO.get(obj["label"])
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).polygon([tuple(p) for p in obj["polygon"]], fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        if cat is None:  # no COCO category (pole): unlabelled
            ids[mask] = 0
            continue
        if isthing[cat]:
            instance_count[cat] = instance_count.get(cat, 0) + 1
            ids[mask] = cat * 1000 + instance_count[cat]
        else:
            ids[mask] = cat * 1000  # one segment per stuff class
    segments = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        mask = ids == seg_id
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append({"id": int(seg_id), "category_id": int(seg_id // 1000),
                         "area": int(mask.sum()), "iscrowd": 0,
                         "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return ids, segments


def demo_coco_panoptic_is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, _COCO_MARK))


def generate_demo_coco_panoptic(root: str, num_train: int = 48, num_val: int = 12,
                                height: int = 256, width: int = 512, seed: int = 100) -> str:
    """Write the COCO-panoptic-format demo data under ``root`` (layout in the module docstring)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    mark = os.path.join(root, _COCO_MARK)
    if os.path.exists(mark):
        os.remove(mark)
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = os.path.join(root, f"{split}2017")
        pan_dir = os.path.join(root, f"panoptic_{split}2017")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(pan_dir, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"demo COCO panoptic {split}", unit="img"):
            image_id = (1 if split == "train" else 500000) + i
            stem = f"{image_id:012d}"
            image, objects = _render_scene(rng, height, width)
            Image.fromarray(image).save(os.path.join(image_dir, stem + ".jpg"), quality=95)
            ids, segments = _panoptic_from_objects(objects, height, width)
            Image.fromarray(_id2rgb(ids)).save(os.path.join(pan_dir, stem + ".png"))
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": height,
                           "width": width})
            annotations.append({"image_id": image_id, "file_name": stem + ".png",
                                "segments_info": segments})
        with open(os.path.join(root, "annotations", f"panoptic_{split}2017.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations,
                       "categories": DEMO_COCO_PANOPTIC_CATEGORIES}, f)
    with open(mark, "w") as f:
        json.dump({"num_train": num_train, "num_val": num_val, "height": height, "width": width,
                   "seed": seed}, f)
    logger.info(f"Demo COCO panoptic dataset written to {root}")
    return root


def _semantic_mark_content(cityscapes_root: str) -> str:
    with open(os.path.join(cityscapes_root, ".sfnet_demo_complete")) as f:
        return f.read()


def demo_cityscapes_panoptic_is_complete(cityscapes_root: str) -> bool:
    """True when the panoptic files exist and were made from the current synthetic tree."""
    mark = os.path.join(cityscapes_root, _CITYSCAPES_PANOPTIC_MARK)
    if not (demo_data_is_complete(cityscapes_root) and os.path.isfile(mark)):
        return False
    with open(mark) as f:
        return f.read() == _semantic_mark_content(cityscapes_root)


def add_cityscapes_panoptic_to_demo(cityscapes_root: str) -> str:
    """Run cityscapesscripts' createPanopticImgs on the synthetic Cityscapes tree (train, val)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    if not demo_data_is_complete(cityscapes_root):
        raise FileNotFoundError(
            f"{cityscapes_root} holds no complete synthetic Cityscapes tree: run "
            "python projects/SFNet/make_demo_data.py first"
        )
    gt = os.path.join(cityscapes_root, "gtFine")
    with redirect_stdout(io.StringIO()):  # it prints per-file progress
        convert2panoptic(cityscapesPath=gt, outputFolder=gt, setNames=["train", "val"])
    with open(os.path.join(cityscapes_root, _CITYSCAPES_PANOPTIC_MARK), "w") as f:
        f.write(_semantic_mark_content(cityscapes_root))
    logger.info(f"Cityscapes panoptic ground truth written under {gt}")
    return cityscapes_root


def ensure_demo_panoptic(coco_root: str, cityscapes_root: str, **sizes) -> None:
    """Create whatever part of the panoptic demo data is missing (both formats).

    ``sizes`` (num_train, num_val, height, width) apply to data created now."""
    if not demo_coco_panoptic_is_complete(coco_root):
        generate_demo_coco_panoptic(coco_root, **sizes)
    if not demo_data_is_complete(cityscapes_root):
        generate_demo_cityscapes(cityscapes_root, **sizes)
    if not demo_cityscapes_panoptic_is_complete(cityscapes_root):
        add_cityscapes_panoptic_to_demo(cityscapes_root)
