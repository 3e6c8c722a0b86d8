"""The demo data in the Cityscapes layout, its loading through detectron2, the mapper and bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from helpers import make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper
from sfnet_d2.data.datasets import load_cityscapes_semantic_checked, register_cityscapes_semantic

NAME_TO_TRAIN_ID = {"road": 0, "sidewalk": 1, "building": 2, "pole": 5, "vegetation": 8,
                    "terrain": 9, "sky": 10, "person": 11, "car": 13}


def test_layout_and_files(demo_root):
    split_dir = os.path.join(demo_root, "gtFine", "train")
    stems = sorted(f[: -len("_gtFine_polygons.json")] for city in os.listdir(split_dir)
                   for f in os.listdir(os.path.join(split_dir, city)) if f.endswith("polygons.json"))
    assert len(stems) == 8
    city = stems[0].split("_")[0]
    base = os.path.join(split_dir, city, stems[0])
    for suffix, mode in (("labelIds", "L"), ("labelTrainIds", "L"), ("instanceIds", "I;16")):
        with Image.open(f"{base}_gtFine_{suffix}.png") as im:
            assert im.mode == mode and im.size == (256, 128)
    with Image.open(os.path.join(demo_root, "leftImg8bit", "train", city,
                                 f"{stems[0]}_leftImg8bit.png")) as im:
        assert im.mode == "RGB" and im.size == (256, 128)


def test_labels_follow_the_polygons_and_trainid_mapping(demo_root):
    gt_dir = os.path.join(demo_root, "gtFine", "val")
    city = os.listdir(gt_dir)[0]
    js = sorted(f for f in os.listdir(os.path.join(gt_dir, city)) if f.endswith(".json"))[0]
    base = os.path.join(gt_dir, city, js[: -len("_polygons.json")])
    with open(base + "_polygons.json") as f:
        objects = json.load(f)["objects"]
    label_ids = np.asarray(Image.open(base + "_labelIds.png"))
    train_ids = np.asarray(Image.open(base + "_labelTrainIds.png"))
    inst = np.asarray(Image.open(base + "_instanceIds.png")).astype(np.int64)
    # labelIds -> trainIds is cityscapesscripts' mapping (7 road -> 0, 26 car -> 13, 0 -> 255)
    for lid, tid in ((7, 0), (8, 1), (11, 2), (17, 5), (21, 8), (22, 9), (23, 10), (24, 11), (26, 13), (0, 255)):
        assert np.all(train_ids[label_ids == lid] == tid)
    # the last-drawn (front-most) object's centre pixel has its class
    last = objects[-1]
    cx, cy = np.array(last["polygon"]).mean(0).astype(int)
    if 0 <= cx < 256 and 0 <= cy < 128:
        assert train_ids[cy, cx] == NAME_TO_TRAIN_ID[last["label"]]
    # the scene's background classes are always present
    for name in ("road", "sky", "building", "sidewalk"):
        assert (train_ids == NAME_TO_TRAIN_ID[name]).any(), name
    # thing instances are encoded as id * 1000 + k
    cars = np.unique(inst[label_ids == 26])
    assert np.all(cars // 1000 == 26)
    assert set(np.unique(train_ids)) <= set(NAME_TO_TRAIN_ID.values()) | {255}


def test_registered_dataset_loads_through_detectron2(demo_datasets):
    train, val = demo_datasets
    records = DatasetCatalog.get(train)
    assert len(records) == 8 and records[0]["sem_seg_file_name"].endswith("_labelTrainIds.png")
    meta = MetadataCatalog.get(val)
    assert meta.evaluator_type == "cityscapes_sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes[13] == "car" and len(meta.stuff_classes) == 19


def test_train_mapper_outputs_crop_and_valid_labels(demo_datasets):
    cfg = make_cfg("configs/demo/sfnet_lite_R18_demo.yaml",
                   ["INPUT.SFNET.CROP_SIZE", [96, 160], "DATASETS.TRAIN", (demo_datasets[0],)])
    mapper = SFNetSemanticDatasetMapper(cfg, True)
    out = mapper(DatasetCatalog.get(demo_datasets[0])[0])
    assert out["image"].shape == (3, 96, 160) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].shape == (96, 160) and out["sem_seg"].dtype == torch.int64
    values = set(out["sem_seg"].unique().tolist())
    assert values <= set(NAME_TO_TRAIN_ID.values()) | {255}


def test_padding_uses_zero_image_and_ignore_label(demo_datasets):
    cfg = make_cfg("configs/demo/sfnet_lite_R18_demo.yaml",
                   ["INPUT.SFNET.CROP_SIZE", [200, 300], "INPUT.SFNET.SCALE_RANGE", [1.0, 1.0],
                    "INPUT.SFNET.FLIP_PROB", 0.0])
    out = SFNetSemanticDatasetMapper(cfg, True)(DatasetCatalog.get(demo_datasets[0])[0])
    # a 128x256 image in a 200x300 crop: 72 rows and 44 columns of padding
    assert (out["sem_seg"][128:, :] == 255).all() and (out["sem_seg"][:, 256:] == 255).all()
    assert (out["image"][:, 128:, :] == 0).all()


# ---- bad input ----------------------------------------------------------------------------

def test_missing_dataset_root_names_the_folder(tmp_path):
    missing = tmp_path / "nowhere" / "leftImg8bit" / "train"
    register_cityscapes_semantic("test_missing_root", str(missing), str(tmp_path / "gt"))
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("test_missing_root")
    assert str(missing) in str(e.value) and "leftImg8bit/SPLIT/CITY" in str(e.value)


def _copy_split(demo_root, tmp_path):
    root = tmp_path / "bad"
    for sub in ("leftImg8bit", "gtFine"):
        shutil.copytree(os.path.join(demo_root, sub, "val"), root / sub / "val")
    records = load_cityscapes_semantic_checked(str(root / "leftImg8bit" / "val"),
                                               str(root / "gtFine" / "val"))
    return records


def test_missing_label_file_is_reported(demo_root, tmp_path):
    records = _copy_split(demo_root, tmp_path)
    os.remove(records[1]["sem_seg_file_name"])
    root = tmp_path / "bad"
    with pytest.raises(FileNotFoundError, match="label file"):
        load_cityscapes_semantic_checked(str(root / "leftImg8bit" / "val"), str(root / "gtFine" / "val"))


def test_label_of_wrong_size_names_the_file(demo_root, tmp_path):
    rec = _copy_split(demo_root, tmp_path)[0]
    Image.open(rec["sem_seg_file_name"]).resize((128, 64), Image.NEAREST).save(rec["sem_seg_file_name"])
    mapper = SFNetSemanticDatasetMapper(make_cfg("configs/demo/sfnet_lite_R18_demo.yaml"), True)
    with pytest.raises(ValueError) as e:
        mapper(rec)
    assert rec["sem_seg_file_name"] in str(e.value) and "128x64" in str(e.value)
    assert "256x128" in str(e.value)


def test_label_value_outside_the_class_set_names_the_file(demo_root, tmp_path):
    rec = _copy_split(demo_root, tmp_path)[0]
    label = np.array(Image.open(rec["sem_seg_file_name"]))
    label[0, 0] = 33  # a Cityscapes labelId, not a trainId
    Image.fromarray(label).save(rec["sem_seg_file_name"])
    for is_train in (True, False):  # evaluation data is checked as well
        mapper = SFNetSemanticDatasetMapper(make_cfg("configs/demo/sfnet_lite_R18_demo.yaml"),
                                            is_train)
        with pytest.raises(ValueError) as e:
            mapper(rec)
        assert rec["sem_seg_file_name"] in str(e.value) and "[33]" in str(e.value)
        assert "255" in str(e.value)


def test_unreadable_label_names_the_file(demo_root, tmp_path):
    rec = _copy_split(demo_root, tmp_path)[0]
    with open(rec["sem_seg_file_name"], "wb") as f:
        f.write(b"not a png")
    mapper = SFNetSemanticDatasetMapper(make_cfg("configs/demo/sfnet_lite_R18_demo.yaml"), True)
    with pytest.raises(OSError, match=rec["sem_seg_file_name"]):
        mapper(rec)
