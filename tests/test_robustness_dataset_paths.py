"""Every dataset family the project registers loads from a dataset root whose path contains dots
(``.../tmp.x1/data.v1.2``), with the right file names; a missing ``labelTrainIds`` PNG (semantic
and panoptic Cityscapes) is an error naming the file and the cityscapesscripts command, and running
that command makes loading work."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sfnet_d2.data import generate_demo_cityscapes, generate_demo_coco_panoptic
from sfnet_d2.data.datasets import (DatasetLayoutError, datasets_root, register_all_datasets,
                                    register_cityscapes_semantic)
from sfnet_d2.data.datasets.label_mapping import load_label_mapping
from sfnet_d2.data.prepare import prepare_dataset
from sfnet_d2.data.demo_panoptic import add_cityscapes_panoptic_to_demo

H, W = 6, 8  # the hand-made images and labels
CS_SUFFIX = "_leftImg8bit.png"


def _rgb(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _gray(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if palette:  # Mapillary's labels are palette PNGs
        im = im.convert("P")
        im.putpalette([(5 * i) % 256 for i in range(768)])
    im.save(path)


def _names(records, key="file_name"):
    return [r[key] for r in records]


def _cityscapes_pairs(cs_root, split, annotation="gtFine"):
    """Expected (image, label) pairs of a Cityscapes split, from a directory walk."""
    images = sorted(glob.glob(os.path.join(cs_root, "leftImg8bit", split, "*", "*" + CS_SUFFIX)))
    assert images, f"no test images under {cs_root}"
    return [(img, os.path.join(cs_root, annotation, split, os.path.basename(os.path.dirname(img)),
                               os.path.basename(img)[: -len(CS_SUFFIX)]
                               + f"_{annotation}_labelTrainIds.png")) for img in images]


# ---------------------------------------------------------------- one tree with every dataset
def _add_coarse(cs_root):
    img = os.path.join(cs_root, "leftImg8bit", "train_extra", "bad-honnef",
                       "bad-honnef_000000_000019" + CS_SUFFIX)
    _rgb(img)
    _gray(os.path.join(cs_root, "gtCoarse", "train_extra", "bad-honnef",
                       "bad-honnef_000000_000019_gtCoarse_labelTrainIds.png"), np.full((H, W), 2))


def _add_mapillary(root):
    base = os.path.join(root, "mapillary_vistas")
    mapping = load_label_mapping("mapillary_vistas_v1.2_to_cityscapes19.csv")
    with open(_mkdir_file(os.path.join(base, "config.json")), "w") as f:
        json.dump({"labels": [{"readable": r["source_name"], "name": r["source_key"],
                               "color": [0, 0, 0]} for r in mapping.rows]}, f)
    for sub in ("training", "validation"):
        for k in range(2):
            name = f"img.{sub}.{k}"  # dots in the file names too
            _rgb(os.path.join(base, sub, "images", name + ".jpg"), seed=k)
            _gray(os.path.join(base, sub, "labels", name + ".png"), np.full((H, W), 55),
                  palette=True)
    prepare_dataset("mapillary", base)


def _mkdir_file(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _add_idd(root):
    base = os.path.join(root, "IDD_Segmentation")
    objects = [{"label": "road", "polygon": [[0, 3], [7, 3], [7, 5], [0, 5]], "deleted": 0}]
    for split in ("train", "val"):
        stem = "000123"
        _rgb(os.path.join(base, "leftImg8bit", split, "0", stem + CS_SUFFIX))
        with open(_mkdir_file(os.path.join(base, "gtFine", split, "0",
                                           stem + "_gtFine_polygons.json")), "w") as f:
            json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)
    prepare_dataset("idd", base)


def _add_bdd(root):
    base = os.path.join(root, "bdd100k")
    for split in ("train", "val"):
        name = f"{split}.0001-abc"
        _rgb(os.path.join(base, "images", "10k", split, name + ".jpg"))
        _gray(os.path.join(base, "labels", "sem_seg", "masks", split, name + ".png"),
              np.full((H, W), 1))


def _add_camvid(root):
    base = os.path.join(root, "CamVid")
    for split in ("train", "val", "test"):
        name = "0001TP_000001.png"
        _rgb(os.path.join(base, split, name))
        _gray(os.path.join(base, split + "annot", name), np.arange(H * W).reshape(H, W) % 12)
    prepare_dataset("camvid", base)


def _add_ade20k(root):
    base = os.path.join(root, "ADEChallengeData2016")
    for sub in ("training", "validation"):
        name = f"ADE_{sub}_00000001"
        _rgb(os.path.join(base, "images", sub, name + ".jpg"))
        _gray(os.path.join(base, "annotations", sub, name + ".png"),
              np.arange(H * W).reshape(H, W) % 151)
    prepare_dataset("ade20k", base)


@pytest.fixture(scope="module")
def dotted_root(tmp_path_factory):
    """$DETECTRON2_DATASETS at .../tmp.x1/data.v1.2 holding every dataset family, prepared with
    the project's own commands; all names registered there, restored afterwards."""
    root = str(tmp_path_factory.mktemp("paths") / "tmp.x1" / "data.v1.2")
    demo = os.path.join(root, "sfnet_demo_cityscapes")
    generate_demo_cityscapes(demo, num_train=2, num_val=1, height=32, width=64, seed=3)
    add_cityscapes_panoptic_to_demo(demo)
    # the same tree under the real Cityscapes name (cityscapes_fine_*, coarse, UDS)
    shutil.copytree(demo, os.path.join(root, "cityscapes"))
    _add_coarse(os.path.join(root, "cityscapes"))
    generate_demo_coco_panoptic(os.path.join(root, "sfnet_demo_coco_panoptic"), num_train=2,
                                num_val=1, height=32, width=64, seed=4)
    _add_mapillary(root)
    _add_idd(root)
    _add_bdd(root)
    _add_camvid(root)
    _add_ade20k(root)
    register_all_datasets(root)
    yield root
    register_all_datasets(datasets_root())


@pytest.mark.parametrize("name, tree", [
    ("cityscapes_fine_sem_seg_train", "cityscapes"),
    ("cityscapes_fine_sem_seg_val", "cityscapes"),
    ("sfnet_demo_cityscapes_fine_sem_seg_train", "sfnet_demo_cityscapes"),
    ("sfnet_demo_cityscapes_fine_sem_seg_val", "sfnet_demo_cityscapes"),
])
def test_cityscapes_semantic_under_a_dotted_root(dotted_root, name, tree):
    split = name.rsplit("_", 1)[1]
    cs_root = os.path.join(dotted_root, tree)
    records = DatasetCatalog.get(name)
    expected = _cityscapes_pairs(cs_root, split)
    assert [(r["file_name"], r["sem_seg_file_name"]) for r in records] == expected
    assert all((r["height"], r["width"]) == (32, 64) for r in records)  # from the polygons.json
    assert all(os.path.isfile(r["sem_seg_file_name"]) for r in records)


def test_cityscapes_coarse_under_a_dotted_root(dotted_root):
    records = DatasetCatalog.get("cityscapes_coarse_sem_seg_train_extra")
    expected = _cityscapes_pairs(os.path.join(dotted_root, "cityscapes"), "train_extra",
                                 "gtCoarse")
    assert [(r["file_name"], r["sem_seg_file_name"]) for r in records] == expected


@pytest.mark.parametrize("name, tree", [
    ("cityscapes_fine_panoptic_train", "cityscapes"),
    ("cityscapes_fine_panoptic_val", "cityscapes"),
    ("sfnet_demo_cityscapes_fine_panoptic_train", "sfnet_demo_cityscapes"),
    ("sfnet_demo_cityscapes_fine_panoptic_val", "sfnet_demo_cityscapes"),
])
def test_cityscapes_panoptic_under_a_dotted_root(dotted_root, name, tree):
    split = name.rsplit("_", 1)[1]
    cs_root = os.path.join(dotted_root, tree)
    records = DatasetCatalog.get(name)
    expected = _cityscapes_pairs(cs_root, split)
    assert sorted((r["file_name"], r["sem_seg_file_name"]) for r in records) == expected
    for r in records:
        stem = os.path.basename(r["file_name"])[: -len(CS_SUFFIX)]
        assert r["image_id"] == stem
        assert r["pan_seg_file_name"] == os.path.join(
            cs_root, "gtFine", f"cityscapes_panoptic_{split}", stem + "_gtFine_panoptic.png")
        assert os.path.isfile(r["pan_seg_file_name"])
        assert r["segments_info"] and all(0 <= s["category_id"] <= 18 for s in r["segments_info"])
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "cityscapes_panoptic_seg" and meta.label_divisor == 1000
    assert meta.gt_dir == os.path.join(cs_root, "gtFine", split)
    assert meta.panoptic_json == os.path.join(cs_root, "gtFine",
                                              f"cityscapes_panoptic_{split}.json")


@pytest.mark.parametrize("split, first", [("train", 1), ("val", 500000)])
def test_demo_coco_panoptic_under_a_dotted_root(dotted_root, split, first):
    base = os.path.join(dotted_root, "sfnet_demo_coco_panoptic")
    records = DatasetCatalog.get(f"sfnet_demo_coco_panoptic_{split}")
    ids = [first + k for k in range(len(records))]
    assert _names(records) == [os.path.join(base, f"{split}2017", f"{i:012d}.jpg") for i in ids]
    assert _names(records, "pan_seg_file_name") == [
        os.path.join(base, f"panoptic_{split}2017", f"{i:012d}.png") for i in ids]


def test_mapillary_idd_bdd_under_a_dotted_root(dotted_root):
    for sub, split in (("training", "train"), ("validation", "val")):
        base = os.path.join(dotted_root, "mapillary_vistas", sub)
        records = DatasetCatalog.get(f"mapillary_vistas_19_sem_seg_{split}")
        names = [f"img.{sub}.{k}" for k in range(2)]
        assert _names(records) == [os.path.join(base, "images", n + ".jpg") for n in names]
        assert _names(records, "sem_seg_file_name") == [
            os.path.join(base, "labels_cityscapes19", n + ".png") for n in names]
        assert (np.asarray(Image.open(records[0]["sem_seg_file_name"])) == 13).all()  # car (55)

        base = os.path.join(dotted_root, "IDD_Segmentation")
        records = DatasetCatalog.get(f"idd_19_sem_seg_{split}")
        assert _names(records) == [os.path.join(base, "leftImg8bit", split, "0",
                                                "000123" + CS_SUFFIX)]
        assert _names(records, "sem_seg_file_name") == [os.path.join(
            base, "gtFine", split, "0", "000123_gtFine_labelcsTrainIds.png")]

        base = os.path.join(dotted_root, "bdd100k")
        records = DatasetCatalog.get(f"bdd100k_sem_seg_{split}")
        assert _names(records) == [os.path.join(base, "images", "10k", split,
                                                f"{split}.0001-abc.jpg")]
        assert _names(records, "sem_seg_file_name") == [os.path.join(
            base, "labels", "sem_seg", "masks", split, f"{split}.0001-abc.png")]


def test_uds_under_a_dotted_root(dotted_root):
    for split in ("train", "val"):
        records = DatasetCatalog.get(f"uds_sem_seg_{split}")
        parts = ("cityscapes_fine_sem_seg", "idd_19_sem_seg", "mapillary_vistas_19_sem_seg",
                 "bdd100k_sem_seg")
        expected = [r["sem_seg_file_name"] for p in parts
                    for r in DatasetCatalog.get(f"{p}_{split}")]
        assert _names(records, "sem_seg_file_name") == expected
        assert len(expected) == {"train": 2 + 1 + 2 + 1, "val": 1 + 1 + 2 + 1}[split]


def test_camvid_and_ade20k_under_a_dotted_root(dotted_root):
    base = os.path.join(dotted_root, "CamVid")
    for split in ("train", "val", "test"):
        records = DatasetCatalog.get(f"camvid_sem_seg_{split}")
        assert _names(records) == [os.path.join(base, split, "0001TP_000001.png")]
        assert _names(records, "sem_seg_file_name") == [
            os.path.join(base, split + "annot_ignore255", "0001TP_000001.png")]
    base = os.path.join(dotted_root, "ADEChallengeData2016")
    for sub, split in (("training", "train"), ("validation", "val")):
        records = DatasetCatalog.get(f"ade20k_sem_seg_{split}")
        name = f"ADE_{sub}_00000001"
        assert _names(records) == [os.path.join(base, "images", sub, name + ".jpg")]
        assert _names(records, "sem_seg_file_name") == [
            os.path.join(base, "annotations_detectron2", sub, name + ".png")]


# ---------------------------------------------------------------- missing labelTrainIds
def _run_advice(message):
    """Run the cityscapesscripts command the error message gives, as a user would in a shell
    (``python`` being this interpreter); returns the command."""
    found = re.search(r"^\s*(CITYSCAPES_DATASET=\S+ python -m "
                      r"cityscapesscripts\.preparation\.createTrainIdLabelImgs)$", message, re.M)
    assert found, message
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    subprocess.run(found.group(1), shell=True, check=True, env=env, capture_output=True)
    return found.group(1)


@pytest.fixture
def cityscapes_copy(dotted_root, tmp_path):
    """A copy of the dotted root's Cityscapes tree (also under a dotted path), registered."""
    root = tmp_path / "copy.d1"
    shutil.copytree(os.path.join(dotted_root, "cityscapes"), root / "cityscapes")
    register_all_datasets(str(root))
    yield str(root / "cityscapes")
    register_all_datasets(dotted_root)


@pytest.mark.slow
def test_missing_train_ids_name_the_file_and_the_command(cityscapes_copy):
    val = _cityscapes_pairs(cityscapes_copy, "val")
    label = val[0][1]
    before = np.asarray(Image.open(label))
    os.remove(label)
    for name in ("cityscapes_fine_sem_seg_val", "cityscapes_fine_panoptic_val"):
        with pytest.raises(DatasetLayoutError) as e:
            DatasetCatalog.get(name)
        msg = str(e.value)
        assert label in msg, msg
        assert (f"CITYSCAPES_DATASET={cityscapes_copy} python -m "
                "cityscapesscripts.preparation.createTrainIdLabelImgs") in msg
    # following the advice makes both load, with the label the demo generator had written
    _run_advice(msg)
    np.testing.assert_array_equal(np.asarray(Image.open(label)), before)
    assert [r["sem_seg_file_name"] for r in DatasetCatalog.get("cityscapes_fine_sem_seg_val")] \
        == [lab for _, lab in val]
    assert len(DatasetCatalog.get("cityscapes_fine_panoptic_val")) == len(val)


@pytest.mark.slow
def test_train_ids_made_by_the_advised_command_from_polygons(tmp_path):
    """A Cityscapes tree as downloaded (no labelTrainIds at all): the error's command, run in a
    shell, writes them and the split loads."""
    cs_root = tmp_path / "v2.0" / "cityscapes"
    stem = "aachen_000000_000019"
    _rgb(str(cs_root / "leftImg8bit" / "val" / "aachen" / (stem + CS_SUFFIX)))
    polygons = cs_root / "gtFine" / "val" / "aachen" / (stem + "_gtFine_polygons.json")
    polygons.parent.mkdir(parents=True)
    polygons.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": [
        {"label": "road", "polygon": [[0, 3], [7, 3], [7, 5], [0, 5]]}]}))
    name = "test_paths_fine_val"
    register_cityscapes_semantic(name, str(cs_root / "leftImg8bit" / "val"),
                                 str(cs_root / "gtFine" / "val"))
    label = str(cs_root / "gtFine" / "val" / "aachen" / (stem + "_gtFine_labelTrainIds.png"))
    with pytest.raises(FileNotFoundError, match=re.escape(label)) as e:
        DatasetCatalog.get(name)
    _run_advice(str(e.value))
    records = DatasetCatalog.get(name)
    assert [r["sem_seg_file_name"] for r in records] == [label]
    assert (records[0]["height"], records[0]["width"]) == (H, W)
    trainids = np.asarray(Image.open(label))
    assert (trainids[3:] == 0).all() and (trainids[:3] == 255).all()  # road, unlabelled
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
