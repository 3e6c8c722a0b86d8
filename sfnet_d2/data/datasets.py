"""
Dataset registration (runs when ``sfnet_d2`` is imported).

* ``sfnet_demo_cityscapes_fine_sem_seg_{train,val}``: the built-in synthetic demo data
  (:mod:`sfnet_d2.data.demo_data`), in the Cityscapes layout under
  ``$DETECTRON2_DATASETS/sfnet_demo_cityscapes`` (default ``datasets/``), loaded by detectron2's
  own ``load_cityscapes_semantic`` exactly as real Cityscapes is.
* detectron2's ``cityscapes_fine_sem_seg_{train,val,test}`` are re-registered with the same loader
  wrapped in a layout check, so that a missing folder names itself and the expected layout.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

__all__ = ["load_cityscapes_semantic_checked", "register_cityscapes_semantic", "DEMO_ROOT_NAME"]

DEMO_ROOT_NAME = "sfnet_demo_cityscapes"

_LAYOUT = (
    "expected the Cityscapes layout ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and "
    "ROOT/gtFine/SPLIT/CITY/*_gtFine_{polygons.json,labelIds.png,instanceIds.png,"
    "labelTrainIds.png} (labelTrainIds come from cityscapesscripts' "
    "preparation/createTrainIdLabelImgs.py)"
)


def load_cityscapes_semantic_checked(image_dir: str, gt_dir: str, hint: str = ""):
    """detectron2's ``load_cityscapes_semantic`` after checking the folders and label files."""
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Dataset folder {folder} does not exist: {_LAYOUT}.{hint}")
    records = load_cityscapes_semantic(image_dir, gt_dir) if os.listdir(image_dir) else []
    if not records:
        raise FileNotFoundError(f"No images found under {image_dir}: {_LAYOUT}.{hint}")
    missing = [r["sem_seg_file_name"] for r in records if not os.path.isfile(r["sem_seg_file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} label file(s) are missing, e.g. {missing[0]}: {_LAYOUT}.{hint}"
        )
    return records


def _cityscapes_sem_seg_metadata():
    stuff = sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])  # trainIds 0..18
    return {
        "stuff_classes": [c["name"] for c in stuff],
        "stuff_colors": [tuple(c["color"]) for c in stuff],
        "evaluator_type": "cityscapes_sem_seg",
        "ignore_label": 255,
    }


def register_cityscapes_semantic(name: str, image_dir: str, gt_dir: str, hint: str = ""):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name, lambda: load_cityscapes_semantic_checked(image_dir, gt_dir, hint)
    )
    MetadataCatalog.get(name).set(image_dir=image_dir, gt_dir=gt_dir,
                                  **_cityscapes_sem_seg_metadata())


def _register_all(root: str):
    demo_root = os.path.join(root, DEMO_ROOT_NAME)
    hint = " Create the demo data with: python projects/SFNet/make_demo_data.py"
    for split in ("train", "val"):
        register_cityscapes_semantic(
            f"sfnet_demo_cityscapes_fine_sem_seg_{split}",
            os.path.join(demo_root, "leftImg8bit", split),
            os.path.join(demo_root, "gtFine", split),
            hint,
        )
    for split in ("train", "val", "test"):
        register_cityscapes_semantic(
            f"cityscapes_fine_sem_seg_{split}",
            os.path.join(root, "cityscapes", "leftImg8bit", split),
            os.path.join(root, "cityscapes", "gtFine", split),
        )


_register_all(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
