"""Each dataset's loader and preparation command on a tiny synthetic tree in its real layout,
created in tmp_path: records, remapped label values, overwrite protection and the errors for
missing folders. The make_* builders are reused by test_datasets_uds.py."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sfnet_d2.data.datasets import (
    DatasetLayoutError,
    datasets_root,
    load_bdd100k,
    load_camvid,
    load_cityscapes_coarse,
    load_idd_19,
    load_mapillary_vistas_19,
    register_all_datasets,
)
from sfnet_d2.data.datasets.idd import rasterize_idd_label_ids
from sfnet_d2.data.datasets.label_mapping import load_label_mapping
from sfnet_d2.data.prepare import prepare_dataset, prepare_main

H, W = 6, 8  # every synthetic image and label


def _rgb(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _label(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if palette:  # Mapillary stores labels as palette PNGs: the pixel value is the index
        im = im.convert("P")
        im.putpalette([(7 * i) % 256 for i in range(768)])
    im.save(path)


# ---------------------------------------------------------------- synthetic trees (real layouts)
def make_cityscapes(root, split, cities=(("aachen", 2),), annotation="gtFine"):
    base = os.path.join(root, "cityscapes")
    for city, n in cities:
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            _rgb(os.path.join(base, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"), seed=k)
            gt = os.path.join(base, annotation, split, city, f"{stem}_{annotation}_")
            os.makedirs(os.path.dirname(gt), exist_ok=True)
            with open(gt + "polygons.json", "w") as f:
                json.dump({"imgHeight": H, "imgWidth": W, "objects": []}, f)
            _label(gt + "labelIds.png", np.full((H, W), 7))
            _label(gt + "instanceIds.png", np.full((H, W), 7))
            _label(gt + "labelTrainIds.png", np.zeros((H, W)))


MAPILLARY_PATTERN = np.array([[13, 55, 27, 8], [65, 24, 52, 50]], dtype=np.uint8)  # 2x4, tiled
MAPILLARY_EXPECTED = np.array([[0, 13, 10, 255], [255, 0, 18, 7]], dtype=np.uint8)


def make_mapillary(root, split, n, v2_zip=False, config=True):
    base = os.path.join(root, "mapillary_vistas")
    split_dir = os.path.join(base, {"train": "training", "val": "validation"}[split])
    labels = os.path.join(split_dir, "v1.2", "labels") if v2_zip else os.path.join(split_dir, "labels")
    for k in range(n):
        name = f"img{split}{k:03d}"
        _rgb(os.path.join(split_dir, "images", name + ".jpg"), seed=k)
        _label(os.path.join(labels, name + ".png"), np.tile(MAPILLARY_PATTERN, (3, 2)), palette=True)
    if config:
        m = load_label_mapping("mapillary_vistas_v1.2_to_cityscapes19.csv")
        cfg = {"labels": [{"readable": r["source_name"], "name": r["source_key"], "color": [0, 0, 0]}
                          for r in m.rows]}
        with open(os.path.join(base, "config_v1.2.json" if v2_zip else "config.json"), "w") as f:
            json.dump(cfg, f)
    return split_dir


def idd_polygons():
    """Objects drawn in order (later on top) on an 8x6 canvas; returns (objects, expected trainIds)."""
    objects = [
        {"label": "road", "polygon": [[0, 3], [7, 3], [7, 5], [0, 5]], "deleted": 0},
        {"label": "sky", "polygon": [[0, 0], [7, 0], [7, 1], [0, 1]], "deleted": 0},
        {"label": "persongroup", "polygon": [[0, 3], [1, 3], [1, 5], [0, 5]], "deleted": 0},
        {"label": "autorickshaw", "polygon": [[6, 3], [7, 3], [7, 5], [6, 5]], "deleted": 0},
        {"label": "non-drivable fallback", "polygon": [[3, 2], [4, 2], [4, 2], [3, 2]], "deleted": 0},
        {"label": "sky", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]], "deleted": 1},  # skipped
    ]
    e = np.full((H, W), 255, np.uint8)  # 'unlabeled' background
    e[3:6, :] = 0          # road
    e[0:2, :] = 10         # sky
    e[3:6, 0:2] = 11       # person (a group label)
    e[3:6, 6:8] = 255      # autorickshaw: no Cityscapes class
    e[2, 3:5] = 9          # terrain
    return objects, e


def make_idd(root, split, seqs=(("0", 2),)):
    base = os.path.join(root, "IDD_Segmentation")
    objects, _ = idd_polygons()
    for seq, n in seqs:
        for k in range(n):
            stem = f"{k:06d}"
            _rgb(os.path.join(base, "leftImg8bit", split, seq, f"{stem}_leftImg8bit.png"), seed=k)
            gt = os.path.join(base, "gtFine", split, seq, f"{stem}_gtFine_polygons.json")
            os.makedirs(os.path.dirname(gt), exist_ok=True)
            with open(gt, "w") as f:
                json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)
    return base


def make_bdd(root, split, n, layout="current"):
    base = os.path.join(root, "bdd100k")
    for k in range(n):
        name = f"{split}{k:04d}-abc"
        if layout == "current":
            _rgb(os.path.join(base, "images", "10k", split, name + ".jpg"), seed=k)
            _label(os.path.join(base, "labels", "sem_seg", "masks", split, name + ".png"),
                   np.full((H, W), k % 19))
        else:
            _rgb(os.path.join(base, "seg", "images", split, name + ".jpg"), seed=k)
            _label(os.path.join(base, "seg", "labels", split, name + "_train_id.png"),
                   np.full((H, W), k % 19))
    return base


def make_camvid(root, split, n):
    base = os.path.join(root, "CamVid")
    for k in range(n):
        name = f"0001TP_{k:06d}.png"
        _rgb(os.path.join(base, split, name), seed=k)
        _label(os.path.join(base, split + "annot", name), np.arange(H * W).reshape(H, W) % 12)
    return base


def make_ade20k(root, split, n):
    base = os.path.join(root, "ADEChallengeData2016")
    sub = {"train": "training", "val": "validation"}[split]
    for k in range(n):
        name = f"ADE_{sub}_{k:08d}"
        _rgb(os.path.join(base, "images", sub, name + ".jpg"), seed=k)
        _label(os.path.join(base, "annotations", sub, name + ".png"),
               np.arange(H * W).reshape(H, W) * 3 % 151)
    return base


@pytest.fixture
def registered_root(tmp_path):
    """Every dataset name registered under tmp_path; the normal root is restored afterwards."""
    register_all_datasets(str(tmp_path))
    yield str(tmp_path)
    register_all_datasets(datasets_root())


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
    _label(out, np.full((H, W), 3))  # stands for an earlier, different output
    args = ["--root", root, "--splits", "val", "--num-workers", "1"]
    assert prepare_main("mapillary", "test", args) == {"val": {"written": 0, "kept": 2}}
    assert "2 existing kept" in capsys.readouterr().out
    assert (_read(out) == 3).all()
    assert prepare_main("mapillary", "test", args + ["--overwrite"]) == {"val": {"written": 2, "kept": 0}}
    np.testing.assert_array_equal(_read(out), np.tile(MAPILLARY_EXPECTED, (3, 2)))


def test_mapillary_wrong_labels_are_refused(tmp_path):
    split_dir = make_mapillary(str(tmp_path), "val", 1)
    root = os.path.join(str(tmp_path), "mapillary_vistas")
    bad = os.path.join(split_dir, "labels", "imgval000.png")
    _label(bad, np.full((H, W), 100))  # a v2.0 label id
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
        _label(os.path.join(base, "gtFine", "val", "0", f"{k:06d}_gtFine_labelids.png"), ids)
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
    _rgb(os.path.join(base, "images", "10k", "val", "extra.jpg"))
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
    _label(os.path.join(base, "trainannot", "0001TP_000000.png"), np.full((H, W), 12))
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
