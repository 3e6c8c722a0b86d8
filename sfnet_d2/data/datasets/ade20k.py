"""
ADE20k (SceneParsing, 150 classes): detectron2's own ``ade20k_sem_seg_{train,val}``, re-registered
with the same loader (``load_sem_seg``) and metadata behind a layout check.

detectron2 reads ``ADEChallengeData2016/annotations_detectron2``: the released annotations with
every value shifted down by one, so that "other" (0) becomes 255 (ignored) and the classes are
0..149. detectron2 makes them with ``datasets/prepare_ade20k_sem_seg.py`` of its repository (not
in the pip package); ``projects/SFNet/prepare_ade20k.py`` writes the same files.
"""
import os

import numpy as np
from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from sfnet_d2.data.datasets.common import DatasetLayoutError, IGNORE_LABEL, list_files, register_sem_seg, require_dir
from sfnet_d2.data.datasets.label_mapping import read_label_png

__all__ = ["ADE20K_ROOT_NAME", "convert_ade20k_label", "load_ade20k_checked", "register_ade20k"]

ADE20K_ROOT_NAME = "ADEChallengeData2016"
SPLIT_DIRS = {"train": "training", "val": "validation"}
NUM_CLASSES = 150

LAYOUT = """\
  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png              (0 = other, 1..150)
  ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png   (255, 0..149; prepare_ade20k.py)"""
PREPARE = ("Prepare annotations_detectron2 once with: python projects/SFNet/prepare_ade20k.py "
           "[--root $DETECTRON2_DATASETS/ADEChallengeData2016] (or detectron2's "
           "datasets/prepare_ade20k_sem_seg.py)")


def convert_ade20k_label(src: str) -> np.ndarray:
    """Released annotation (0 other, 1..150) -> detectron2's (0..149, 255 ignored)."""
    label = read_label_png(src).astype(np.int64)
    bad = np.unique(label[(label < 0) | (label > NUM_CLASSES)])
    if bad.size:
        raise ValueError(f"{src} contains values {bad.tolist()[:10]} outside 0..{NUM_CLASSES}: "
                         "expected an ADE20k SceneParsing annotation")
    return np.where(label == 0, IGNORE_LABEL, label - 1).astype(np.uint8)


def ade20k_dirs(datasets_root: str, split: str):
    if split not in SPLIT_DIRS:
        raise ValueError(f"ADE20k split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    root = os.path.join(datasets_root, ADE20K_ROOT_NAME)
    return (os.path.join(root, "images", SPLIT_DIRS[split]),
            os.path.join(root, "annotations", SPLIT_DIRS[split]),
            os.path.join(root, "annotations_detectron2", SPLIT_DIRS[split]))


def load_ade20k_checked(image_dir: str, gt_dir: str):
    """detectron2's ``load_sem_seg`` after checking that every image has its annotation
    (``load_sem_seg`` itself would only warn and keep the intersection)."""
    require_dir(image_dir, "ADE20k", LAYOUT)
    require_dir(gt_dir, "ADE20k", LAYOUT, PREPARE)
    images = list_files(image_dir, [".jpg"])
    stems = {os.path.splitext(os.path.basename(f))[0] for f in list_files(gt_dir, [".png"])}
    missing = [f for f in images if os.path.splitext(os.path.basename(f))[0] not in stems]
    if not images or missing:
        problem = (f"no images found under {image_dir}." if not images else
                   f"{len(missing)} of {len(images)} images have no annotation in {gt_dir}, "
                   f"e.g. {missing[0]}.")
        raise DatasetLayoutError(f"ADE20k: {problem}\nExpected layout:\n{LAYOUT}\n{PREPARE}")
    return load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext="jpg")


def register_ade20k(datasets_root: str):
    for split in SPLIT_DIRS:
        image_dir, _, gt_dir = ade20k_dirs(datasets_root, split)
        register_sem_seg(
            f"ade20k_sem_seg_{split}",
            lambda x=image_dir, y=gt_dir: load_ade20k_checked(x, y),
            # detectron2's metadata for these names (data/datasets/builtin.py)
            dict(stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:], image_root=image_dir,
                 sem_seg_root=gt_dir, evaluator_type="sem_seg", ignore_label=IGNORE_LABEL),
        )
