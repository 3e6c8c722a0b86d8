"""
Cityscapes, fine and coarse, and the built-in synthetic demo data in the Cityscapes layout.

* ``cityscapes_fine_sem_seg_{train,val,test}``: detectron2's own registration, re-registered with
  detectron2's ``load_cityscapes_semantic`` wrapped in a layout check (a missing folder names
  itself and the expected layout). Evaluator type ``cityscapes_sem_seg`` (cityscapesscripts).
* ``cityscapes_coarse_sem_seg_train_extra``: the 19,998 coarsely labelled ``train_extra`` images
  (``leftImg8bit/train_extra`` + ``gtCoarse/train_extra/*_gtCoarse_labelTrainIds.png``), which the
  paper uses for coarse boosting (Sec. 3.5, 4.1). Evaluator type ``sem_seg``: cityscapesscripts'
  evaluation reads gtFine files, which coarse images do not have.
* ``sfnet_demo_cityscapes_fine_sem_seg_{train,val}``: the synthetic demo data
  (:mod:`sfnet_d2.data.demo_data`) under ``ROOT/sfnet_demo_cityscapes``.

The ``labelTrainIds`` PNGs are made by cityscapesscripts' ``createTrainIdLabelImgs.py`` (fine and
coarse alike), as for any detectron2 project.
"""
import os
from typing import List, Tuple

from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

from sfnet_d2.data.datasets.common import (
    DatasetLayoutError,
    cityscapes19_metadata,
    list_files,
    pair_images_with_labels,
    records_from_pairs,
    register_sem_seg,
    require_dir,
)

__all__ = [
    "DEMO_ROOT_NAME",
    "CITYSCAPES_ROOT_NAME",
    "find_cityscapes_files",
    "load_cityscapes_coarse",
    "load_cityscapes_semantic_checked",
    "register_cityscapes_semantic",
    "register_cityscapes",
]

DEMO_ROOT_NAME = "sfnet_demo_cityscapes"
CITYSCAPES_ROOT_NAME = "cityscapes"

_LAYOUT = """\
  cityscapes/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png                     (SPLIT: train, val, test)
  cityscapes/gtFine/SPLIT/CITY/*_gtFine_{polygons.json,labelIds.png,instanceIds.png,labelTrainIds.png}
  cityscapes/leftImg8bit/train_extra/CITY/*_leftImg8bit.png               (coarse boosting only)
  cityscapes/gtCoarse/train_extra/CITY/*_gtCoarse_labelTrainIds.png       (coarse boosting only)
  (labelTrainIds come from cityscapesscripts' preparation/createTrainIdLabelImgs.py)"""
_PREPARE = (
    "Unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (and, for coarse boosting, "
    "leftImg8bit_trainextra.zip and gtCoarse.zip) into $DETECTRON2_DATASETS/cityscapes, then run "
    "once: CITYSCAPES_DATASET=$DETECTRON2_DATASETS/cityscapes "
    "csCreateTrainIdLabelImgs (installed with cityscapesscripts)"
)


def load_cityscapes_semantic_checked(image_dir: str, gt_dir: str, hint: str = ""):
    """detectron2's ``load_cityscapes_semantic`` after checking the folders and label files."""
    hint = hint.strip() or _PREPARE
    for folder in (image_dir, gt_dir):
        require_dir(folder, "Cityscapes", _LAYOUT, hint)
    records = load_cityscapes_semantic(image_dir, gt_dir) if os.listdir(image_dir) else []
    if not records:
        raise DatasetLayoutError(
            f"Cityscapes: no images found under {image_dir}.\nExpected layout:\n{_LAYOUT}\n{hint}")
    missing = [r["sem_seg_file_name"] for r in records if not os.path.isfile(r["sem_seg_file_name"])]
    if missing:
        raise DatasetLayoutError(
            f"Cityscapes: {len(missing)} label file(s) are missing, e.g. {missing[0]}.\n"
            f"Expected layout:\n{_LAYOUT}\n{hint}"
        )
    return records


def find_cityscapes_files(image_dir: str, gt_dir: str, annotation: str = "gtFine",
                          hint: str = "") -> List[Tuple[str, str]]:
    """(image, ``*_{annotation}_labelTrainIds.png``) pairs of one Cityscapes split, checked."""
    hint = hint.strip() or _PREPARE
    require_dir(image_dir, "Cityscapes", _LAYOUT, hint)
    require_dir(gt_dir, "Cityscapes", _LAYOUT, hint)
    suffix = "_leftImg8bit.png"

    def label_for(img: str) -> str:
        city = os.path.basename(os.path.dirname(img))
        stem = os.path.basename(img)[: -len(suffix)]
        return os.path.join(gt_dir, city, f"{stem}_{annotation}_labelTrainIds.png")

    return pair_images_with_labels(list_files(image_dir, [suffix], depth=1), label_for,
                                   dataset="Cityscapes", image_dir=image_dir, layout=_LAYOUT,
                                   hint=hint)


def load_cityscapes_coarse(datasets_root: str, split: str = "train_extra"):
    """Records of ``cityscapes/leftImg8bit/SPLIT`` with their ``gtCoarse`` trainId labels."""
    root = os.path.join(datasets_root, CITYSCAPES_ROOT_NAME)
    return records_from_pairs(find_cityscapes_files(
        os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtCoarse", split), "gtCoarse"))


def register_cityscapes_semantic(name: str, image_dir: str, gt_dir: str, hint: str = ""):
    """Register a Cityscapes-layout split (fine labels) under ``name``, evaluated by cityscapesscripts."""
    register_sem_seg(
        name,
        lambda: load_cityscapes_semantic_checked(image_dir, gt_dir, hint),
        dict(image_dir=image_dir, gt_dir=gt_dir, **cityscapes19_metadata("cityscapes_sem_seg")),
    )


def register_cityscapes(datasets_root: str):
    demo_root = os.path.join(datasets_root, DEMO_ROOT_NAME)
    hint = "Create the demo data with: python projects/SFNet/make_demo_data.py"
    for split in ("train", "val"):
        register_cityscapes_semantic(
            f"sfnet_demo_cityscapes_fine_sem_seg_{split}",
            os.path.join(demo_root, "leftImg8bit", split),
            os.path.join(demo_root, "gtFine", split),
            hint,
        )
    root = os.path.join(datasets_root, CITYSCAPES_ROOT_NAME)
    for split in ("train", "val", "test"):
        register_cityscapes_semantic(
            f"cityscapes_fine_sem_seg_{split}",
            os.path.join(root, "leftImg8bit", split),
            os.path.join(root, "gtFine", split),
        )
    register_sem_seg(
        "cityscapes_coarse_sem_seg_train_extra",
        lambda: load_cityscapes_coarse(datasets_root, "train_extra"),
        dict(image_dir=os.path.join(root, "leftImg8bit", "train_extra"),
             gt_dir=os.path.join(root, "gtCoarse", "train_extra"),
             **cityscapes19_metadata("sem_seg")),
    )
