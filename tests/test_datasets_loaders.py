"""Each dataset's loader and preparation command on a tiny synthetic tree in its real layout,
created in tmp_path: records, remapped label values, overwrite protection and the errors for
missing folders. The make_* builders are in helpers.py (test_datasets_uds.py uses them too)."""
import argparse
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from helpers import (
    MAPILLARY_EXPECTED,
    H,
    W,
    idd_polygons,
    make_ade20k,
    make_bdd,
    make_camvid,
    make_cityscapes,
    make_idd,
    make_mapillary,
    write_label,
    write_rgb,
)
from sfnet_d2.data.datasets import (
    DatasetLayoutError,
    load_bdd100k,
    load_camvid,
    load_cityscapes_coarse,
    load_idd_19,
    load_mapillary_vistas_19,
)
from sfnet_d2.data.datasets.idd import rasterize_idd_label_ids
from sfnet_d2.data.datasets.label_mapping import load_label_mapping
from sfnet_d2.data.prepare import add_prepare_arguments, prepare_dataset, prepare_from_args


def _read(path):
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------- Mapillary Vistas
@pytest.mark.parametrize("v2_zip", [False, True])
def test_mapillary_prepare_and_load(registered_root, v2_zip):
    split_dir = make_mapillary(registered_root, "train", 3, v2_zip=v2_zip)
    make_mapillary(registered_root, "val", 1, v2_zip=v2_zip)
    # the v2.0 case also runs the conversion in 2 worker processes
    summary = prepare_dataset("mapillary", os.path.join(registered_root, "mapillary_vistas"),
                              num_workers=2 if v2_zip else 1)
    assert summary == {"train": {"written": 3, "kept": 0}, "val": {"written": 1, "kept": 0}}
    records = DatasetCatalog.get("mapillary_vistas_19_sem_seg_train")
    assert [os.path.basename(r["file_name"]) for r in records] == [f"imgtrain{k:03d}.jpg" for k in range(3)]
    for r in records:
        assert r["sem_seg_file_name"] == os.path.join(
            split_dir, "labels_cityscapes19", os.path.basename(r["file_name"])[:-4] + ".png")
        label = _read(r["sem_seg_file_name"])
        assert label.shape == (H, W) and label.dtype == np.uint8
        np.testing.assert_array_equal(label, np.tile(MAPILLARY_EXPECTED, (3, 2)))
    meta = MetadataCatalog.get("mapillary_vistas_19_sem_seg_val")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes[13] == "car" and len(meta.stuff_colors) == 19


def test_prepare_keeps_existing_outputs_unless_overwrite(tmp_path, capsys):
    make_mapillary(str(tmp_path), "val", 2)
    root = os.path.join(str(tmp_path), "mapillary_vistas")
    prepare_dataset("mapillary", root, ["val"])
    out = os.path.join(root, "validation", "labels_cityscapes19", "imgval000.png")
    write_label(out, np.full((H, W), 3))  # stands for an earlier, different output
    args = ["--root", root, "--splits", "val", "--num-workers", "1"]

    def prepare_main(argv):  # what projects/SFNet/prepare_mapillary.py runs
        parser = add_prepare_arguments(argparse.ArgumentParser(), "mapillary")
        return prepare_from_args("mapillary", parser.parse_args(argv))

    assert prepare_main(args) == {"val": {"written": 0, "kept": 2}}
    assert "2 existing kept" in capsys.readouterr().out
    assert (_read(out) == 3).all()
    assert prepare_main(args + ["--overwrite"]) == {"val": {"written": 2, "kept": 0}}
    np.testing.assert_array_equal(_read(out), np.tile(MAPILLARY_EXPECTED, (3, 2)))


def test_mapillary_wrong_labels_are_refused(tmp_path):
    split_dir = make_mapillary(str(tmp_path), "val", 1)
    root = os.path.join(str(tmp_path), "mapillary_vistas")
    bad = os.path.join(split_dir, "labels", "imgval000.png")
    write_label(bad, np.full((H, W), 100))  # a v2.0 label id
    with pytest.raises(ValueError, match=r"imgval000\.png.*\[100\]"):
        prepare_dataset("mapillary", root, ["val"])
    with open(os.path.join(root, "config.json")) as f:
        cfg = json.load(f)
    cfg["labels"][13], cfg["labels"][14] = cfg["labels"][14], cfg["labels"][13]
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="position 13"):
        prepare_dataset("mapillary", root, ["val"])


def test_mapillary_unprepared_labels_name_the_folder_and_command(registered_root):
    make_mapillary(registered_root, "val", 1)
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("mapillary_vistas_19_sem_seg_val")
    msg = str(e.value)
    assert os.path.join("validation", "labels_cityscapes19") in msg
    assert "prepare_mapillary.py" in msg and "Expected layout" in msg


# ---------------------------------------------------------------- IDD
def test_idd_polygons_are_drawn_and_mapped(registered_root):
    base = make_idd(registered_root, "train", seqs=(("0", 2), ("17", 1)))
    make_idd(registered_root, "val", seqs=(("3", 1),))
    assert prepare_dataset("idd", base)["train"] == {"written": 3, "kept": 0}
    records = DatasetCatalog.get("idd_19_sem_seg_train")
    assert len(records) == 3
    _, expected = idd_polygons()
    for r in records:
        seq = os.path.basename(os.path.dirname(r["file_name"]))
        stem = os.path.basename(r["file_name"])[: -len("_leftImg8bit.png")]
        assert r["sem_seg_file_name"] == os.path.join(
            base, "gtFine", "train", seq, f"{stem}_gtFine_labelcsTrainIds.png")
        np.testing.assert_array_equal(_read(r["sem_seg_file_name"]), expected)
    assert len(DatasetCatalog.get("idd_19_sem_seg_val")) == 1


def test_idd_from_toolkit_label_ids(tmp_path):
    base = make_idd(str(tmp_path), "val")
    m = load_label_mapping("idd_to_cityscapes19.csv")
    ids = np.array([[m.id_of("road"), m.id_of("car"), m.id_of("parking"), m.id_of("sky")]] * 2)
    for k in range(2):
        write_label(os.path.join(base, "gtFine", "val", "0", f"{k:06d}_gtFine_labelids.png"), ids)
    prepare_dataset("idd", base, ["val"], from_label_ids=True)
    out = _read(os.path.join(base, "gtFine", "val", "0", "000000_gtFine_labelcsTrainIds.png"))
    np.testing.assert_array_equal(out, [[0, 13, 255, 10]] * 2)
    # the polygon path gives the id image IDD's toolkit would write (--id-type id), background 35
    raw = rasterize_idd_label_ids(os.path.join(base, "gtFine", "val", "0", "000000_gtFine_polygons.json"))
    assert raw[5, 3] == m.id_of("road") and raw[2, 0] == m.id_of("unlabeled")


def test_idd_unknown_label_names_file_and_label(tmp_path):
    base = make_idd(str(tmp_path), "val", seqs=(("0", 1),))
    path = os.path.join(base, "gtFine", "val", "0", "000000_gtFine_polygons.json")
    with open(path, "w") as f:
        json.dump({"imgHeight": H, "imgWidth": W,
                   "objects": [{"label": "spaceship", "polygon": [[0, 0], [2, 0], [2, 2]]}]}, f)
    with pytest.raises(ValueError, match=r"000000_gtFine_polygons\.json.*'spaceship'"):
        prepare_dataset("idd", base, ["val"])


def test_idd_missing_labels_counted(registered_root):
    base = make_idd(registered_root, "val", seqs=(("0", 3),))
    prepare_dataset("idd", base, ["val"])
    os.remove(os.path.join(base, "gtFine", "val", "0", "000001_gtFine_labelcsTrainIds.png"))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images .*000001_gtFine_labelcsTrainIds\.png"):
        load_idd_19(registered_root, "val")


# ---------------------------------------------------------------- BDD100K
@pytest.mark.parametrize("layout, suffix", [("current", ".png"), ("older", "_train_id.png")])
def test_bdd100k_layouts(registered_root, layout, suffix):
    make_bdd(registered_root, "train", 3, layout)
    make_bdd(registered_root, "val", 2, layout)
    records = DatasetCatalog.get("bdd100k_sem_seg_train")
    assert len(records) == 3 and len(DatasetCatalog.get("bdd100k_sem_seg_val")) == 2
    r = records[1]
    assert os.path.basename(r["file_name"]) == "train0001-abc.jpg"
    assert os.path.basename(r["sem_seg_file_name"]) == "train0001-abc" + suffix
    assert (_read(r["sem_seg_file_name"]) == 1).all()  # used as stored: already trainIds
    assert MetadataCatalog.get("bdd100k_sem_seg_val").stuff_classes == \
        MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes


def test_bdd100k_image_without_mask_is_an_error(tmp_path):
    base = make_bdd(str(tmp_path), "val", 2)
    write_rgb(os.path.join(base, "images", "10k", "val", "extra.jpg"))
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of 3 images.*extra\.png.*issue #103"):
        load_bdd100k(str(tmp_path), "val")


# ---------------------------------------------------------------- CamVid
def test_camvid_prepare_and_load(registered_root):
    base = make_camvid(registered_root, "train", 2)
    make_camvid(registered_root, "test", 1)
    assert prepare_dataset("camvid", base, ["train", "test"])["train"]["written"] == 2
    records = DatasetCatalog.get("camvid_sem_seg_train")
    assert [os.path.basename(r["file_name"]) for r in records] == ["0001TP_000000.png", "0001TP_000001.png"]
    label = _read(records[0]["sem_seg_file_name"])
    assert os.path.dirname(records[0]["sem_seg_file_name"]) == os.path.join(base, "trainannot_ignore255")
    raw = np.arange(H * W).reshape(H, W) % 12
    np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
    meta = MetadataCatalog.get("camvid_sem_seg_test")
    assert len(meta.stuff_classes) == 11 and meta.stuff_classes[8] == "Car" and meta.ignore_label == 255
    make_camvid(registered_root, "val", 1)  # not prepared
    with pytest.raises(FileNotFoundError, match=r"(?s)valannot_ignore255.*prepare_camvid.py"):
        load_camvid(registered_root, "val")
    write_label(os.path.join(base, "trainannot", "0001TP_000000.png"), np.full((H, W), 12))
    with pytest.raises(ValueError, match=r"\[12\]"):
        prepare_dataset("camvid", base, ["train"], overwrite=True)


# ---------------------------------------------------------------- ADE20k
def test_ade20k_prepare_and_checked_load(registered_root):
    base = make_ade20k(registered_root, "val", 2)
    with pytest.raises(FileNotFoundError, match="prepare_ade20k.py"):
        DatasetCatalog.get("ade20k_sem_seg_val")
    prepare_dataset("ade20k", base, ["val"])
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    assert len(records) == 2
    raw = np.arange(H * W).reshape(H, W) * 3 % 151
    np.testing.assert_array_equal(_read(records[0]["sem_seg_file_name"]),
                                  np.where(raw == 0, 255, raw - 1))
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes) == 150
    os.remove(records[1]["sem_seg_file_name"])
    with pytest.raises(FileNotFoundError, match="1 of 2 images have no annotation"):
        DatasetCatalog.get("ade20k_sem_seg_val")


# ---------------------------------------------------------------- Cityscapes coarse, general errors
def test_cityscapes_coarse_train_extra(registered_root):
    make_cityscapes(registered_root, "train_extra", (("augsburg", 2), ("bad-honnef", 1)), "gtCoarse")
    records = load_cityscapes_coarse(registered_root)
    assert len(records) == 3 and records == DatasetCatalog.get("cityscapes_coarse_sem_seg_train_extra")
    assert records[2]["sem_seg_file_name"].endswith(
        os.path.join("gtCoarse", "train_extra", "bad-honnef", "bad-honnef_000000_000019_gtCoarse_labelTrainIds.png"))
    meta = MetadataCatalog.get("cityscapes_coarse_sem_seg_train_extra")
    assert meta.evaluator_type == "sem_seg" and len(meta.stuff_classes) == 19
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"


@pytest.mark.parametrize("name, folder", [
    ("cityscapes_coarse_sem_seg_train_extra", os.path.join("cityscapes", "leftImg8bit", "train_extra")),
    ("mapillary_vistas_19_sem_seg_train", os.path.join("mapillary_vistas", "training", "images")),
    ("idd_19_sem_seg_val", os.path.join("IDD_Segmentation", "leftImg8bit", "val")),
    ("bdd100k_sem_seg_train", os.path.join("bdd100k", "labels", "sem_seg", "masks", "train")),
    ("camvid_sem_seg_test", os.path.join("CamVid", "test")),
    ("ade20k_sem_seg_train", os.path.join("ADEChallengeData2016", "images", "training")),
    ("uds_sem_seg_val", os.path.join("cityscapes", "leftImg8bit", "val")),
])
def test_missing_dataset_errors_at_load_name_folder_and_layout(registered_root, name, folder):
    # registering under an empty root raised nothing: the error comes when the dataset is loaded
    with pytest.raises(DatasetLayoutError) as e:
        DatasetCatalog.get(name)
    assert isinstance(e.value, FileNotFoundError)
    assert os.path.join(registered_root, folder) in str(e.value) and "Expected layout" in str(e.value)


def test_loaders_do_not_depend_on_the_global_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/nonexistent")
    make_mapillary(str(tmp_path), "val", 1)
    prepare_dataset("mapillary", os.path.join(str(tmp_path), "mapillary_vistas"), ["val"])
    assert len(load_mapillary_vistas_19(str(tmp_path), "val")) == 1
