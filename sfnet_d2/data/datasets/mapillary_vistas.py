"""
Mapillary Vistas v1.2 mapped to the 19 Cityscapes classes: ``mapillary_vistas_19_sem_seg_{train,val}``.

The 66 v1.2 labels are grouped into Cityscapes trainIds as in RobustNet, which the paper follows
(Sec. 3.4), by ``label_mappings/mapillary_vistas_v1.2_to_cityscapes19.csv``; the other labels are
ignored. ``projects/SFNet/prepare_mapillary.py`` writes the 19-class PNGs once into
``labels_cityscapes19/``, which the loader reads.
"""
import json
import os
from typing import List, Optional, Tuple

import numpy as np

from sfnet_d2.data.datasets.common import (
    DatasetLayoutError,
    cityscapes19_metadata,
    list_files,
    pair_images_with_labels,
    records_from_pairs,
    register_sem_seg_splits,
    require_dir,
)
from sfnet_d2.data.datasets.label_mapping import load_label_mapping, read_label_png

__all__ = [
    "MAPILLARY_ROOT_NAME",
    "MAPILLARY_MAPPING",
    "find_mapillary_vistas_19_files",
    "load_mapillary_vistas_19",
    "mapillary_raw_label_dir",
    "register_mapillary_vistas_19",
]

MAPILLARY_ROOT_NAME = "mapillary_vistas"
MAPILLARY_MAPPING = "mapillary_vistas_v1.2_to_cityscapes19.csv"
PREPARED_DIR = "labels_cityscapes19"
SPLIT_DIRS = {"train": "training", "val": "validation"}

LAYOUT = """\
  mapillary_vistas/{training,validation}/images/*.jpg
  mapillary_vistas/{training,validation}/labels/*.png          (v1.2 zip; the v2.0 zip has them in v1.2/labels/)
  mapillary_vistas/{training,validation}/labels_cityscapes19/*.png   (written by prepare_mapillary.py)
  mapillary_vistas/config.json                                 (v2.0 zip: config_v1.2.json)"""
PREPARE = ("Prepare the 19-class labels once with: python projects/SFNet/prepare_mapillary.py "
           "[--root $DETECTRON2_DATASETS/mapillary_vistas]")


def split_dir(root: str, split: str) -> str:
    if split not in SPLIT_DIRS:
        raise ValueError(f"Mapillary Vistas split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    return os.path.join(root, SPLIT_DIRS[split])


def mapillary_raw_label_dir(root: str, split: str) -> str:
    """The v1.2 label folder of a split: ``labels/`` (v1.2 zip) or ``v1.2/labels/`` (v2.0 zip)."""
    base = split_dir(root, split)
    for candidate in (os.path.join(base, "labels"), os.path.join(base, "v1.2", "labels")):
        if os.path.isdir(candidate):
            return candidate
    raise DatasetLayoutError(
        f"Mapillary Vistas: neither {os.path.join(base, 'labels')} nor "
        f"{os.path.join(base, 'v1.2', 'labels')} exists (the v1.2 labels are needed to prepare "
        f"the 19-class labels).\nExpected layout:\n{LAYOUT}")


def mapillary_config_file(root: str) -> Optional[str]:
    for name in ("config.json", "config_v1.2.json"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def check_mapillary_config(config_file: str, mapping=None):
    """The v1.2 config's label list must be the mapping's, in the same order (ids are positions)."""
    mapping = mapping or load_label_mapping(MAPILLARY_MAPPING)
    with open(config_file) as f:
        labels = json.load(f)["labels"]
    names = [(lab.get("readable"), lab.get("name")) for lab in labels]
    expected = [(r["source_name"], r["source_key"]) for r in mapping.rows]
    if names != expected:
        diff = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise ValueError(
            f"{config_file} lists {len(names)} labels, which differ from the 66 Mapillary Vistas v1.2 "
            f"labels of {mapping.path} from position {diff} on "
            f"(config: {names[diff] if diff < len(names) else None}, mapping: "
            f"{expected[diff] if diff < len(expected) else None}); the mapping needs the v1.2 labels "
            "(the v2.0 zip has them in v1.2/ with config_v1.2.json)")


def convert_mapillary_label(src: str) -> np.ndarray:
    """A v1.2 label PNG (palette index = label id 0..65) as 19-class trainIds."""
    return load_label_mapping(MAPILLARY_MAPPING).remap(read_label_png(src), where=src)


def find_mapillary_vistas_19_files(datasets_root: str, split: str) -> List[Tuple[str, str]]:
    root = os.path.join(datasets_root, MAPILLARY_ROOT_NAME)
    image_dir = require_dir(os.path.join(split_dir(root, split), "images"),
                            "Mapillary Vistas", LAYOUT)
    label_dir = require_dir(os.path.join(split_dir(root, split), PREPARED_DIR),
                            "Mapillary Vistas", LAYOUT, PREPARE)

    def label_for(img: str) -> str:
        return os.path.join(label_dir, os.path.splitext(os.path.basename(img))[0] + ".png")

    return pair_images_with_labels(list_files(image_dir, [".jpg"]), label_for,
                                   dataset="Mapillary Vistas", image_dir=image_dir,
                                   layout=LAYOUT, hint=PREPARE)


def count_mapillary_vistas_images(datasets_root: str, split: str) -> int:
    root = os.path.join(datasets_root, MAPILLARY_ROOT_NAME)
    image_dir = require_dir(os.path.join(split_dir(root, split), "images"), "Mapillary Vistas", LAYOUT)
    return len(list_files(image_dir, [".jpg"]))


def load_mapillary_vistas_19(datasets_root: str, split: str):
    return records_from_pairs(find_mapillary_vistas_19_files(datasets_root, split))


def register_mapillary_vistas_19(datasets_root: str):
    register_sem_seg_splits(
        "mapillary_vistas_19_sem_seg_{split}", SPLIT_DIRS, load_mapillary_vistas_19, datasets_root,
        dict(dataset_root=os.path.join(datasets_root, MAPILLARY_ROOT_NAME),
             label_mapping=MAPILLARY_MAPPING, **cityscapes19_metadata("sem_seg")),
    )
