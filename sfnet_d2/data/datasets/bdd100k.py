"""
BDD100K semantic segmentation (the 10K images): ``bdd100k_sem_seg_{train,val}``.

Its masks are already Cityscapes trainIds (0..18, 255 ignored), so nothing is converted. Two
download layouts are read, chosen per split by which label folder exists:

* current (``bdd100k_images_10k.zip`` + ``bdd100k_sem_seg_labels_trainval.zip``):
  ``bdd100k/images/10k/SPLIT/NAME.jpg`` with ``bdd100k/labels/sem_seg/masks/SPLIT/NAME.png``;
* older (``bdd100k_seg.zip``, the layout of the official SFNet code):
  ``bdd100k/seg/images/SPLIT/NAME.jpg`` with ``bdd100k/seg/labels/SPLIT/NAME_train_id.png``.
"""
import os
from typing import Callable, List, Tuple

from sfnet_d2.data.datasets.common import (
    DatasetLayoutError,
    cityscapes19_metadata,
    list_files,
    pair_images_with_labels,
    records_from_pairs,
    register_sem_seg_splits,
    require_dir,
)

__all__ = ["BDD_ROOT_NAME", "bdd100k_layout", "find_bdd100k_files", "load_bdd100k", "register_bdd100k"]

BDD_ROOT_NAME = "bdd100k"
SPLITS = ("train", "val")

LAYOUT = """\
  either (current downloads: bdd100k_images_10k.zip + bdd100k_sem_seg_labels_trainval.zip)
    bdd100k/images/10k/{train,val}/*.jpg
    bdd100k/labels/sem_seg/masks/{train,val}/*.png
  or (older bdd100k_seg.zip)
    bdd100k/seg/images/{train,val}/*.jpg
    bdd100k/seg/labels/{train,val}/*_train_id.png"""
MISMATCH_HINT = (
    "If labels are missing: the 10K image zip released before June 2021 does not match the segmentation masks "
    "(github.com/bdd100k/bdd100k issue #103); download the current bdd100k_images_10k.zip."
)


def bdd100k_layout(datasets_root: str, split: str) -> Tuple[str, str, Callable[[str], str]]:
    """(image_dir, label_dir, image -> label file) of the layout found on disk for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"BDD100K split must be one of {SPLITS}, got {split!r}")
    root = os.path.join(datasets_root, BDD_ROOT_NAME)
    current = (os.path.join(root, "images", "10k", split),
               os.path.join(root, "labels", "sem_seg", "masks", split), ".png")
    older = (os.path.join(root, "seg", "images", split),
             os.path.join(root, "seg", "labels", split), "_train_id.png")
    for image_dir, label_dir, suffix in (current, older):
        if os.path.isdir(label_dir):
            def label_for(img, label_dir=label_dir, suffix=suffix):
                return os.path.join(label_dir, os.path.splitext(os.path.basename(img))[0] + suffix)
            return image_dir, label_dir, label_for
    raise DatasetLayoutError(
        f"BDD100K: no label folder for split {split!r}: neither {current[1]} nor {older[1]} exists."
        f"\nExpected layout:\n{LAYOUT}")


def find_bdd100k_files(datasets_root: str, split: str) -> List[Tuple[str, str]]:
    image_dir, _, label_for = bdd100k_layout(datasets_root, split)
    require_dir(image_dir, "BDD100K", LAYOUT)
    return pair_images_with_labels(list_files(image_dir, [".jpg"]), label_for, dataset="BDD100K",
                                   image_dir=image_dir, layout=LAYOUT, hint=MISMATCH_HINT)


def count_bdd100k_images(datasets_root: str, split: str) -> int:
    image_dir, _, _ = bdd100k_layout(datasets_root, split)
    return len(list_files(require_dir(image_dir, "BDD100K", LAYOUT), [".jpg"]))


def load_bdd100k(datasets_root: str, split: str):
    return records_from_pairs(find_bdd100k_files(datasets_root, split))


def register_bdd100k(datasets_root: str):
    register_sem_seg_splits(
        "bdd100k_sem_seg_{split}", SPLITS, load_bdd100k, datasets_root,
        dict(dataset_root=os.path.join(datasets_root, BDD_ROOT_NAME),
             **cityscapes19_metadata("sem_seg")),
    )
