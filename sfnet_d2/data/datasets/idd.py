"""
IDD (India Driving Dataset, segmentation part) mapped to the 19 Cityscapes classes:
``idd_19_sem_seg_{train,val}``.

IDD ships polygons (``gtFine/SPLIT/SEQ/*_gtFine_polygons.json``). ``projects/SFNet/prepare_idd.py``
draws them once into ``*_gtFine_labelcsTrainIds.png``: each polygon, in file order, filled with
its label's Cityscapes trainId from ``label_mappings/idd_to_cityscapes19.csv`` (IDD's own
``csTrainId`` column, the table the official SFNet code uses), on an ignored (255) background.
This is what IDD's toolkit writes with ``createLabels.py --id-type csTrainId`` (same file name), and
equals the official code's remapping of ``*_gtFine_labelids.png``, which ``prepare_idd.py
--from-label-ids`` also accepts.
"""
import json
import os
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from sfnet_d2.data.datasets.common import (
    cityscapes19_metadata,
    list_files,
    pair_images_with_labels,
    records_from_pairs,
    register_sem_seg_splits,
    require_dir,
)
from sfnet_d2.data.datasets.label_mapping import load_label_mapping, read_label_png

__all__ = [
    "IDD_ROOT_NAME",
    "IDD_MAPPING",
    "convert_idd_label_ids",
    "convert_idd_polygons",
    "find_idd_19_files",
    "load_idd_19",
    "rasterize_idd_label_ids",
    "register_idd_19",
]

IDD_ROOT_NAME = "IDD_Segmentation"
IDD_MAPPING = "idd_to_cityscapes19.csv"
PREPARED_SUFFIX = "_gtFine_labelcsTrainIds.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
LABEL_IDS_SUFFIX = "_gtFine_labelids.png"
IMAGE_SUFFIXES = ("_leftImg8bit.png", "_leftImg8bit.jpg")
SPLITS = ("train", "val")

LAYOUT = """\
  IDD_Segmentation/leftImg8bit/{train,val}/SEQ/*_leftImg8bit.png
  IDD_Segmentation/gtFine/{train,val}/SEQ/*_gtFine_polygons.json
  IDD_Segmentation/gtFine/{train,val}/SEQ/*_gtFine_labelcsTrainIds.png   (written by prepare_idd.py)"""
PREPARE = ("Prepare the 19-class labels once with: python projects/SFNet/prepare_idd.py "
           "[--root $DETECTRON2_DATASETS/IDD_Segmentation]")


def _image_stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"{path} is not an IDD image (*_leftImg8bit.png)")


def rasterize_idd_label_ids(json_file: str) -> np.ndarray:
    """IDD label ids (0..39) drawn from a polygon file, as IDD's toolkit draws them: background
    'unlabeled', polygons in file order (later ones on top), deleted objects skipped, a
    'xxxgroup' label read as 'xxx' when 'xxxgroup' itself is not a label."""
    mapping = load_label_mapping(IDD_MAPPING)
    with open(json_file) as f:
        annotation = json.load(f)
    try:
        size = (int(annotation["imgWidth"]), int(annotation["imgHeight"]))
        objects = annotation["objects"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_file}: not an IDD polygon file (needs imgWidth, imgHeight, "
                         f"objects): {e!r}") from None
    ids = {name: mapping.id_of(name) for name in mapping.source_names}
    canvas = Image.new("L", size, ids["unlabeled"])
    draw = ImageDraw.Draw(canvas)
    for k, obj in enumerate(objects):
        if obj.get("deleted"):
            continue
        label = obj.get("label")
        if label not in ids and isinstance(label, str) and label.endswith("group"):
            label = label[: -len("group")]
        if label not in ids:
            raise ValueError(f"{json_file}, object {k}: label {obj.get('label')!r} is not an IDD "
                             f"label of {mapping.path}")
        points = [tuple(float(c) for c in p) for p in obj.get("polygon", [])]
        if not points:
            continue  # an empty polygon covers no pixel
        try:
            draw.polygon(points, fill=ids[label])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{json_file}, object {k} ({label}): cannot draw polygon: {e}") from None
    return np.asarray(canvas)


def convert_idd_polygons(json_file: str) -> np.ndarray:
    return load_label_mapping(IDD_MAPPING).remap(rasterize_idd_label_ids(json_file), where=json_file)


def convert_idd_label_ids(png_file: str) -> np.ndarray:
    return load_label_mapping(IDD_MAPPING).remap(read_label_png(png_file), where=png_file)


def idd_dirs(datasets_root: str, split: str, check: bool = True) -> Tuple[str, str]:
    if split not in SPLITS:
        raise ValueError(f"IDD split must be one of {SPLITS}, got {split!r}")
    root = os.path.join(datasets_root, IDD_ROOT_NAME)
    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    if check:
        require_dir(image_dir, "IDD", LAYOUT)
        require_dir(gt_dir, "IDD", LAYOUT)
    return image_dir, gt_dir


def find_idd_19_files(datasets_root: str, split: str) -> List[Tuple[str, str]]:
    image_dir, gt_dir = idd_dirs(datasets_root, split)

    def label_for(img: str) -> str:
        seq = os.path.basename(os.path.dirname(img))
        return os.path.join(gt_dir, seq, _image_stem(img) + PREPARED_SUFFIX)

    return pair_images_with_labels(list_files(image_dir, IMAGE_SUFFIXES, depth=1), label_for,
                                   dataset="IDD", image_dir=image_dir, layout=LAYOUT, hint=PREPARE)


def count_idd_images(datasets_root: str, split: str) -> int:
    image_dir, _ = idd_dirs(datasets_root, split, check=False)
    require_dir(image_dir, "IDD", LAYOUT)
    return len(list_files(image_dir, IMAGE_SUFFIXES, depth=1))


def load_idd_19(datasets_root: str, split: str):
    return records_from_pairs(find_idd_19_files(datasets_root, split))


def register_idd_19(datasets_root: str):
    register_sem_seg_splits(
        "idd_19_sem_seg_{split}", SPLITS, load_idd_19, datasets_root,
        dict(dataset_root=os.path.join(datasets_root, IDD_ROOT_NAME),
             label_mapping=IDD_MAPPING, **cityscapes19_metadata("sem_seg")),
    )
