"""
Panoptic dataset registration (``register_panoptic_datasets``, run for $DETECTRON2_DATASETS
when ``sfnet_d2`` is imported, by ``sfnet_d2.data.datasets.register_all_datasets``) and the
by-paths registration of users' own COCO-panoptic-format datasets (docs/PANOPTIC.md).

* ``register_coco_panoptic_by_paths(name, image_root, panoptic_root, panoptic_json)``: any dataset
  in the COCO panoptic format. Contiguous class ids follow the order of the JSON's "categories"
  (detectron2's convention for COCO); each image is found through the JSON's "images" list (any
  extension). Loading checks that every segment's category is one of the JSON's categories and that
  every image and PNG exists; errors name the image.
* ``sfnet_demo_coco_panoptic_{train,val}``: the synthetic demo data in COCO panoptic format
  (sfnet_d2/data/demo_panoptic.py) under ``$DETECTRON2_DATASETS/sfnet_demo_coco_panoptic``.
* ``cityscapes_fine_panoptic_{train,val}`` (detectron2's names, under
  ``$DETECTRON2_DATASETS/cityscapes``) and ``sfnet_demo_cityscapes_fine_panoptic_{train,val}`` (the
  synthetic Cityscapes tree, with the ground truth of cityscapesscripts' createPanopticImgs):
  loaded by :func:`load_cityscapes_panoptic_checked`, which gives the records and metadata of
  detectron2's ``load_cityscapes_panoptic`` / ``register_all_cityscapes_panoptic`` but derives
  every path from the file name alone (detectron2 v0.6 cuts the image path at the first dot of
  any folder name, so a root like ``/data/v1.2`` failed) and names any missing file with the
  cityscapesscripts command that makes it. It replaces detectron2's own loader for those names,
  whichever detectron2 build is installed.

detectron2's own ``coco_2017_{train,val}_panoptic`` are used as detectron2 registers them.
"""
import json
import os
import shlex
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from sfnet_d2.data.datasets.cityscapes import create_train_ids_command
from sfnet_d2.data.datasets.common import DatasetLayoutError
from sfnet_d2.data.demo_panoptic import DEMO_COCO_PANOPTIC_CATEGORIES

__all__ = ["coco_panoptic_metadata", "load_coco_panoptic_checked",
           "register_coco_panoptic_by_paths", "cityscapes_panoptic_metadata",
           "load_cityscapes_panoptic_checked", "register_cityscapes_panoptic",
           "register_demo_panoptic", "register_panoptic_datasets",
           "DEMO_COCO_PANOPTIC_ROOT_NAME"]

DEMO_COCO_PANOPTIC_ROOT_NAME = "sfnet_demo_coco_panoptic"
_DEMO_CITYSCAPES_ROOT_NAME = "sfnet_demo_cityscapes"
_DEMO_HINT = ("Create the demo data with: python projects/SFNet/train_panoptic_pipeline.py "
              "--make-demo-data")
_COCO_LAYOUT = (
    "expected IMAGE_ROOT/<images listed in the JSON>, PANOPTIC_ROOT/<annotation file_name>.png "
    "(segment id = R + 256 G + 256^2 B) and PANOPTIC_JSON with 'images', 'annotations' "
    "(segments_info: id, category_id, iscrowd) and 'categories' (id, name, isthing)"
)


def coco_panoptic_metadata(categories: List[Dict]) -> Dict:
    """detectron2's "standard" panoptic metadata for a list of COCO panoptic categories."""
    if not categories:
        raise ValueError("A panoptic dataset needs at least one category")
    names = [c["name"] for c in categories]
    colors = [tuple(c.get("color", (128, 128, 128))) for c in categories]
    thing, stuff = {}, {}
    for i, c in enumerate(categories):
        (thing if c.get("isthing", 0) else stuff)[c["id"]] = i
    return {"thing_classes": names, "thing_colors": colors, "stuff_classes": names,
            "stuff_colors": colors, "thing_dataset_id_to_contiguous_id": thing,
            "stuff_dataset_id_to_contiguous_id": stuff}


def load_coco_panoptic_checked(json_file: str, image_root: str, panoptic_root: str, meta: Dict,
                               dataset_name: str = "", hint: str = "") -> List[Dict]:
    """Records in detectron2's panoptic format (``file_name``, ``image_id``,
    ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and ``isthing``)."""
    where = f"{dataset_name}: " if dataset_name else ""
    for path, kind in ((image_root, "image folder"), (panoptic_root, "panoptic PNG folder")):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{where}{kind} {path} does not exist; {_COCO_LAYOUT}. {hint}")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{where}panoptic JSON {json_file} does not exist; "
                                f"{_COCO_LAYOUT}. {hint}")
    with open(json_file) as f:
        data = json.load(f)
    images = {img["id"]: img for img in data.get("images", [])}
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        if image_id in images:
            image_file = os.path.join(image_root, images[image_id]["file_name"])
        else:  # detectron2's COCO convention: same stem, .jpg
            image_file = os.path.join(image_root, os.path.splitext(ann["file_name"])[0] + ".jpg")
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat in thing_map:
                contiguous, isthing = thing_map[cat], True
            elif cat in stuff_map:
                contiguous, isthing = stuff_map[cat], False
            else:
                raise ValueError(
                    f"{where}image {image_file}: segment {seg['id']} has category_id {cat}, which "
                    f"is not one of the categories of {json_file} "
                    f"({sorted(list(thing_map) + list(stuff_map))})"
                )
            segments.append(dict(seg, category_id=contiguous, isthing=isthing))
        record = {"file_name": image_file, "image_id": image_id,
                  "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                  "segments_info": segments}
        info = images.get(image_id, {})
        if "height" in info and "width" in info:  # the mapper checks the image against them
            record.update(height=info["height"], width=info["width"])
        records.append(record)
    if not records:
        raise FileNotFoundError(f"{where}{json_file} lists no annotations; {_COCO_LAYOUT}. {hint}")
    for key, kind in (("file_name", "image"), ("pan_seg_file_name", "panoptic PNG")):
        missing = [r[key] for r in records if not os.path.isfile(r[key])]
        if missing:
            raise FileNotFoundError(
                f"{where}{len(missing)} {kind} file(s) listed in {json_file} are missing, e.g. "
                f"{missing[0]}; {_COCO_LAYOUT}. {hint}"
            )
    return records


def register_coco_panoptic_by_paths(name: str, image_root: str, panoptic_root: str,
                                    panoptic_json: str, categories: Optional[List[Dict]] = None,
                                    hint: str = "") -> None:
    """
    Register a COCO-panoptic-format dataset under ``name`` (replacing an earlier registration).
    ``categories`` defaults to the JSON's "categories" (the JSON is read now, for the metadata).
    """
    if categories is None:
        if not os.path.isfile(panoptic_json):
            raise FileNotFoundError(
                f"{name}: panoptic JSON {panoptic_json} does not exist (its 'categories' define "
                f"the classes); {_COCO_LAYOUT}. {hint}"
            )
        with open(panoptic_json) as f:
            categories = json.load(f)["categories"]
    meta = coco_panoptic_metadata(categories)
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    # detectron2's registration sets the metadata its COCOPanopticEvaluator reads ...
    register_coco_panoptic(name, meta, image_root, panoptic_root, panoptic_json)
    # ... and the checked loader replaces its loader (errors name the image; any image extension)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_panoptic_checked(
        panoptic_json, image_root, panoptic_root, meta, name, hint))


def cityscapes_panoptic_metadata() -> Dict:
    """detectron2's Cityscapes panoptic metadata (``register_all_cityscapes_panoptic``):
    contiguous ids = trainIds, stuff 0-10 and things 11-18."""
    names = [c["name"] for c in CITYSCAPES_CATEGORIES]
    colors = [c["color"] for c in CITYSCAPES_CATEGORIES]
    return {
        "thing_classes": names, "thing_colors": colors, "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES
                                              if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES
                                              if not c["isthing"]},
    }


_CITYSCAPES_PANOPTIC_LAYOUT = (
    "expected ROOT/leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png, "
    "ROOT/gtFine/cityscapes_panoptic_SPLIT.json, ROOT/gtFine/cityscapes_panoptic_SPLIT/*.png and, "
    "for mIoU, ROOT/gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelTrainIds.png"
)
_IMAGE_SUFFIX = "_leftImg8bit.png"


def _create_panoptic_command(cityscapes_root: str, split: str) -> str:
    return (f"CITYSCAPES_DATASET={shlex.quote(os.path.abspath(cityscapes_root))} "
            f"python -m cityscapesscripts.preparation.createPanopticImgs --set-names {split}")


def load_cityscapes_panoptic_checked(root: str, split: str, meta: Dict, dataset_name: str = "",
                                     hint: str = "") -> List[Dict]:
    """
    Records of the Cityscapes panoptic ``split`` of the Cityscapes tree at ``root``, with the
    fields of detectron2's ``load_cityscapes_panoptic``: ``file_name``, ``image_id``
    (CITY_SEQ_FRAME), ``sem_seg_file_name`` (the image's ``*_gtFine_labelTrainIds.png``),
    ``pan_seg_file_name`` and ``segments_info`` with contiguous ``category_id`` (``meta``'s maps).

    Every image, panoptic PNG and ``labelTrainIds`` PNG must exist; errors name the file and the
    cityscapesscripts command that makes it.
    """
    where = f"{dataset_name}: " if dataset_name else ""
    tail = f"; {_CITYSCAPES_PANOPTIC_LAYOUT}." + (f"\n{hint}" if hint else "")
    image_dir = os.path.join(root, "leftImg8bit", split)
    pan_dir = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}")
    pan_json = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")
    sem_dir = os.path.join(root, "gtFine", split)
    if not os.path.isdir(image_dir):
        raise DatasetLayoutError(f"{where}image folder {image_dir} does not exist{tail}")
    for path in (pan_json, pan_dir):
        if not os.path.exists(path):
            raise DatasetLayoutError(
                f"{where}{path} does not exist{tail}\nMake the panoptic ground truth once "
                f"with:\n  {_create_panoptic_command(root, split)}"
            )
    with open(pan_json) as f:
        annotations = json.load(f)["annotations"]
    # image_id -> image file, from the file names (CITY_SEQ_FRAME_leftImg8bit.png)
    images = {}
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if os.path.isdir(city_dir):
            images.update({name[: -len(_IMAGE_SUFFIX)]: os.path.join(city_dir, name)
                           for name in os.listdir(city_dir) if name.endswith(_IMAGE_SUFFIX)})
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for ann in annotations:
        image_file = images.get(ann["image_id"])
        if image_file is None:
            raise DatasetLayoutError(
                f"{where}{pan_json} annotates image {ann['image_id']!r}, but there is no "
                f"{ann['image_id']}{_IMAGE_SUFFIX} under {image_dir}{tail}"
            )
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in thing_map and cat not in stuff_map:
                raise ValueError(
                    f"{where}image {image_file}: segment {seg['id']} of {pan_json} has "
                    f"category_id {cat}, which is not a Cityscapes panoptic category "
                    f"({sorted(list(thing_map) + list(stuff_map))}); make the JSON with "
                    "createPanopticImgs without --use-train-id"
                )
            segments.append(dict(seg, category_id=thing_map.get(cat, stuff_map.get(cat))))
        stem = os.path.basename(image_file)[: -len(_IMAGE_SUFFIX)]
        records.append({
            "file_name": image_file,
            "image_id": ann["image_id"],
            # from the city and file name only: any folder name works
            "sem_seg_file_name": os.path.join(sem_dir, os.path.basename(
                os.path.dirname(image_file)), f"{stem}_gtFine_labelTrainIds.png"),
            "pan_seg_file_name": os.path.join(pan_dir, ann["file_name"]),
            "segments_info": segments,
        })
    if not records:
        raise DatasetLayoutError(f"{where}{pan_json} lists no annotations{tail}")
    for key, kind, command in (
            ("pan_seg_file_name", "panoptic PNG", _create_panoptic_command(root, split)),
            ("sem_seg_file_name", "labelTrainIds PNG", create_train_ids_command(root))):
        missing = [r[key] for r in records if not os.path.isfile(r[key])]
        if missing:
            raise DatasetLayoutError(
                f"{where}{len(missing)} of {len(records)} {kind} file(s) are missing, e.g. "
                f"{missing[0]}{tail}\nMake them once with:\n  {command}"
            )
    return records


def register_cityscapes_panoptic(name: str, root: str, split: str, hint: str = "") -> None:
    """Register the Cityscapes panoptic ``split`` of the Cityscapes tree at ``root`` (replacing an
    earlier registration of ``name``, e.g. detectron2's own)."""
    meta = cityscapes_panoptic_metadata()
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    DatasetCatalog.register(name, lambda: load_cityscapes_panoptic_checked(
        root, split, meta, name, hint))
    # the metadata of detectron2's register_all_cityscapes_panoptic
    MetadataCatalog.get(name).set(
        panoptic_root=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
        image_root=os.path.join(root, "leftImg8bit", split),
        panoptic_json=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
        gt_dir=os.path.join(root, "gtFine", split), evaluator_type="cityscapes_panoptic_seg",
        ignore_label=255, label_divisor=1000, **meta)


def register_demo_panoptic(root: str) -> None:
    """Register the demo panoptic datasets under ``root`` (= $DETECTRON2_DATASETS)."""
    coco_root = os.path.join(root, DEMO_COCO_PANOPTIC_ROOT_NAME)
    for split in ("train", "val"):
        register_coco_panoptic_by_paths(
            f"sfnet_demo_coco_panoptic_{split}", os.path.join(coco_root, f"{split}2017"),
            os.path.join(coco_root, f"panoptic_{split}2017"),
            os.path.join(coco_root, "annotations", f"panoptic_{split}2017.json"),
            categories=DEMO_COCO_PANOPTIC_CATEGORIES, hint=_DEMO_HINT)
        register_cityscapes_panoptic(f"sfnet_demo_cityscapes_fine_panoptic_{split}",
                                     os.path.join(root, _DEMO_CITYSCAPES_ROOT_NAME), split,
                                     _DEMO_HINT)


def register_panoptic_datasets(root: str) -> None:
    """Register every panoptic name of this module under ``root`` (= $DETECTRON2_DATASETS):
    the demo sets and ``cityscapes_fine_panoptic_{train,val}``."""
    register_demo_panoptic(root)
    for split in ("train", "val"):
        register_cityscapes_panoptic(f"cityscapes_fine_panoptic_{split}",
                                     os.path.join(root, "cityscapes"), split)
