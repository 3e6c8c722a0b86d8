"""
Cityscapes, fine and coarse, and the built-in synthetic demo data in the Cityscapes layout.

* ``cityscapes_fine_sem_seg_{train,val,test}``: detectron2's own names, re-registered with our
  loader, which gives the records of detectron2's ``load_cityscapes_semantic`` (``file_name``,
  ``sem_seg_file_name``, ``height``, ``width``) but derives every path from the file name alone,
  so that any folder name works, and checks every label file: a missing one is named with the
  command that makes it. Evaluator type ``cityscapes_sem_seg`` (cityscapesscripts).
* ``cityscapes_coarse_sem_seg_train_extra``: the 19,998 coarsely labelled ``train_extra`` images
  (``leftImg8bit/train_extra`` + ``gtCoarse/train_extra/*_gtCoarse_labelTrainIds.png``), which the
  paper uses for coarse boosting (Sec. 3.5, 4.1). Evaluator type ``sem_seg``: cityscapesscripts'
  evaluation reads gtFine files, which coarse images do not have.
* ``sfnet_demo_cityscapes_fine_sem_seg_{train,val}``: the synthetic demo data
  (:mod:`sfnet_d2.data.demo_data`) under ``ROOT/sfnet_demo_cityscapes``.

The ``labelTrainIds`` PNGs are made by cityscapesscripts' ``createTrainIdLabelImgs.py`` (fine and
coarse alike), as for any detectron2 project (:func:`create_train_ids_command`).
"""
import json
import os
import shlex
from typing import List, Tuple

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
    "create_train_ids_command",
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
    "python -m cityscapesscripts.preparation.createTrainIdLabelImgs"
)
_IMAGE_SUFFIX = "_leftImg8bit.png"


def create_train_ids_command(cityscapes_root: str) -> str:
    """The shell command that writes every ``*_labelTrainIds.png`` (gtFine and gtCoarse) of the
    Cityscapes tree at ``cityscapes_root`` from its ``*_polygons.json``."""
    root = shlex.quote(os.path.abspath(cityscapes_root))
    return (f"CITYSCAPES_DATASET={root} "
            "python -m cityscapesscripts.preparation.createTrainIdLabelImgs")


def _missing_labels_hint(gt_dir: str, hint: str) -> str:
    # gt_dir is ROOT/{gtFine,gtCoarse}/SPLIT: cityscapesscripts wants ROOT
    root = os.path.dirname(os.path.dirname(os.path.normpath(os.path.abspath(gt_dir))))
    text = ("The *_labelTrainIds.png files are drawn from the *_polygons.json files by "
            f"cityscapesscripts; make them once with:\n  {create_train_ids_command(root)}")
    return f"{text}\n{hint.strip()}" if hint.strip() else text


def _gt_file(gt_dir: str, image_file: str, annotation: str, kind: str) -> str:
    """ROOT/{annotation}/SPLIT/CITY/STEM_{annotation}_{kind} of the image
    ROOT/leftImg8bit/SPLIT/CITY/STEM_leftImg8bit.png. Built from the city and file name only:
    detectron2 v0.6 edits the whole path (its panoptic loader cuts it at the first dot of any
    folder name, its semantic one rewrites "labelIds" anywhere in it)."""
    city = os.path.basename(os.path.dirname(image_file))
    stem = os.path.basename(image_file)[: -len(_IMAGE_SUFFIX)]
    return os.path.join(gt_dir, city, f"{stem}_{annotation}_{kind}")


def _read_image_size(polygons_file: str):
    try:
        with open(polygons_file) as f:
            annotation = json.load(f)
        return int(annotation["imgHeight"]), int(annotation["imgWidth"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"Cannot read the image size (imgHeight, imgWidth) from {polygons_file}: {e!r}. "
            "The file is damaged: unpack it again (gtFine_trainvaltest.zip)"
        ) from None


def load_cityscapes_semantic_checked(image_dir: str, gt_dir: str, hint: str = ""):
    """Records of one Cityscapes split with its fine trainId labels: ``file_name``,
    ``sem_seg_file_name`` and, where the image's ``*_gtFine_polygons.json`` exists, the
    ``height`` and ``width`` it gives (the fields of detectron2's ``load_cityscapes_semantic``).
    Every image must have its ``*_gtFine_labelTrainIds.png``; a missing one is an error naming it
    and the command that makes it."""
    records = []
    for image_file, label_file in find_cityscapes_files(image_dir, gt_dir, "gtFine", hint):
        record = {"file_name": image_file, "sem_seg_file_name": label_file}
        polygons = _gt_file(gt_dir, image_file, "gtFine", "polygons.json")
        if os.path.isfile(polygons):
            record["height"], record["width"] = _read_image_size(polygons)
        records.append(record)
    return records


def find_cityscapes_files(image_dir: str, gt_dir: str, annotation: str = "gtFine",
                          hint: str = "") -> List[Tuple[str, str]]:
    """(image, ``*_{annotation}_labelTrainIds.png``) pairs of one Cityscapes split, checked: a
    missing label file is named with the cityscapesscripts command that makes it."""
    hint = hint.strip()
    require_dir(image_dir, "Cityscapes", _LAYOUT, hint or _PREPARE)
    require_dir(gt_dir, "Cityscapes", _LAYOUT, hint or _PREPARE)
    images = list_files(image_dir, [_IMAGE_SUFFIX], depth=1)
    if not images:
        raise DatasetLayoutError(f"Cityscapes: no images found under {image_dir}.\n"
                                 f"Expected layout:\n{_LAYOUT}\n{hint or _PREPARE}")
    return pair_images_with_labels(
        images, lambda img: _gt_file(gt_dir, img, annotation, "labelTrainIds.png"),
        dataset="Cityscapes", image_dir=image_dir, layout=_LAYOUT,
        hint=_missing_labels_hint(gt_dir, hint))


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
