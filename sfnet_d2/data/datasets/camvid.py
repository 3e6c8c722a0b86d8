"""
CamVid, the SegNet version (360x480, 367/101/233 images, 11 classes): ``camvid_sem_seg_{train,val,test}``.

Its annotations store the 11 classes as 0..10 and void as 11. ``projects/SFNet/prepare_camvid.py``
writes them once with void as 255 (``label_mappings/camvid11_void_to_ignore.csv``) into
``SPLITannot_ignore255/``, so that CamVid uses the ignore value 255 of every other dataset here.
The official code instead trains with ignore_label 11 on the original files; both ignore exactly the
void pixels.
"""
import os
from typing import List, Tuple

import numpy as np

from sfnet_d2.data.datasets.common import (
    IGNORE_LABEL,
    list_files,
    pair_images_with_labels,
    records_from_pairs,
    register_sem_seg_splits,
    require_dir,
)
from sfnet_d2.data.datasets.label_mapping import load_label_mapping, read_label_png

__all__ = ["CAMVID_ROOT_NAME", "CAMVID_MAPPING", "camvid_metadata", "convert_camvid_label",
           "find_camvid_files", "load_camvid", "register_camvid"]

CAMVID_ROOT_NAME = "CamVid"
CAMVID_MAPPING = "camvid11_void_to_ignore.csv"
SPLITS = ("train", "val", "test")
PREPARED_SUFFIX = "annot_ignore255"
# The SegNet / official SFNet palette (datasets/camvid.py), in class order.
CAMVID_COLORS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
                 (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                 (0, 128, 192)]

LAYOUT = """\
  CamVid/{train,val,test}/*.png
  CamVid/{train,val,test}annot/*.png              (classes 0..10, void 11)
  CamVid/{train,val,test}annot_ignore255/*.png    (void 255; written by prepare_camvid.py)"""
PREPARE = ("Prepare the labels once with: python projects/SFNet/prepare_camvid.py "
           "[--root $DETECTRON2_DATASETS/CamVid]")


def camvid_metadata():
    mapping = load_label_mapping(CAMVID_MAPPING)
    classes = [r["target_name"] for r in mapping.rows if int(r["target_train_id"]) != IGNORE_LABEL]
    assert len(classes) == len(CAMVID_COLORS) == 11
    return {"stuff_classes": classes, "stuff_colors": list(CAMVID_COLORS),
            "evaluator_type": "sem_seg", "ignore_label": IGNORE_LABEL}


def convert_camvid_label(src: str) -> np.ndarray:
    return load_label_mapping(CAMVID_MAPPING).remap(read_label_png(src), where=src)


def camvid_dirs(datasets_root: str, split: str) -> Tuple[str, str, str]:
    """(images, original annotations, prepared annotations) folders of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"CamVid split must be one of {SPLITS}, got {split!r}")
    root = os.path.join(datasets_root, CAMVID_ROOT_NAME)
    return (os.path.join(root, split), os.path.join(root, split + "annot"),
            os.path.join(root, split + PREPARED_SUFFIX))


def find_camvid_files(datasets_root: str, split: str) -> List[Tuple[str, str]]:
    image_dir, _, label_dir = camvid_dirs(datasets_root, split)
    require_dir(image_dir, "CamVid", LAYOUT)
    require_dir(label_dir, "CamVid", LAYOUT, PREPARE)
    return pair_images_with_labels(
        list_files(image_dir, [".png"]), lambda img: os.path.join(label_dir, os.path.basename(img)),
        dataset="CamVid", image_dir=image_dir, layout=LAYOUT, hint=PREPARE)


def load_camvid(datasets_root: str, split: str):
    return records_from_pairs(find_camvid_files(datasets_root, split))


def register_camvid(datasets_root: str):
    register_sem_seg_splits(
        "camvid_sem_seg_{split}", SPLITS, load_camvid, datasets_root,
        dict(dataset_root=os.path.join(datasets_root, CAMVID_ROOT_NAME),
             label_mapping=CAMVID_MAPPING, **camvid_metadata()),
    )
