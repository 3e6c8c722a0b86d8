"""The label mappings (CSV data in sfnet_d2/data/label_mappings/): completeness, value ranges,
source-class counts, spot checks by name, and the loader's validation of bad files."""
import os

import numpy as np
import pytest

from sfnet_d2.data.datasets import cityscapes19_metadata, load_label_mapping
from sfnet_d2.data.datasets.label_mapping import LABEL_MAPPINGS_DIR

CS19 = cityscapes19_metadata()["stuff_classes"]
MAPPINGS = ["mapillary_vistas_v1.2_to_cityscapes19.csv", "idd_to_cityscapes19.csv",
            "camvid11_void_to_ignore.csv"]


def test_every_mapping_file_is_tested_here():
    assert sorted(f for f in os.listdir(LABEL_MAPPINGS_DIR) if f.endswith(".csv")) == sorted(MAPPINGS)


@pytest.mark.parametrize("name", MAPPINGS)
def test_each_source_label_maps_to_one_target_or_ignore(name):
    m = load_label_mapping(name)
    ids = m.source_ids
    assert ids == list(range(len(ids)))  # contiguous 0..N-1, one row each
    assert len(set(m.source_names)) == len(ids)  # names unambiguous
    num_targets = 11 if name.startswith("camvid") else 19
    assert all(0 <= t < num_targets or t == 255 for t in m.targets)
    # the readable target name agrees with the trainId
    for row in m.rows:
        t = int(row["target_train_id"])
        if t == 255:
            assert row["target_name"] == "ignore", row
        elif num_targets == 19:
            assert row["target_name"] == CS19[t], row
    # every value outside the source ids is rejected by the lookup table
    assert (m.lookup_table[len(ids):] == -1).all()
    assert (m.lookup_table[: len(ids)] >= 0).all()


def test_mapillary_v12_mapping_is_robustnets():
    m = load_label_mapping("mapillary_vistas_v1.2_to_cityscapes19.csv")
    assert len(m.source_ids) == 66  # v1.2: 65 classes + "Unlabeled"
    expected = {  # by name, one per Cityscapes class, plus grouped and ignored ones
        "Road": "road", "Lane Marking - General": "road", "Manhole": "road", "Curb": "sidewalk",
        "Sidewalk": "sidewalk", "Building": "building", "Wall": "wall", "Fence": "fence",
        "Pole": "pole", "Utility Pole": "pole", "Traffic Light": "traffic light",
        "Traffic Sign (Front)": "traffic sign", "Vegetation": "vegetation", "Terrain": "terrain",
        "Sky": "sky", "Person": "person", "Bicyclist": "rider", "Motorcyclist": "rider",
        "Other Rider": "rider", "Car": "car", "Truck": "truck", "Bus": "bus", "On Rails": "train",
        "Motorcycle": "motorcycle", "Bicycle": "bicycle",
    }
    for name, cls in expected.items():
        assert m.target_of(name) == CS19.index(cls), name
    for name in ("Traffic Sign (Back)", "Crosswalk - Plain", "Lane Marking - Crosswalk", "Caravan",
                 "Trailer", "Ego Vehicle", "Unlabeled", "Bird", "Guard Rail", "Bridge"):
        assert m.target_of(name) == 255, name
    # exactly the 25 labels of RobustNet's gen_id_to_ignore() are kept, by their v1.2 ids
    assert {i: t for i, t in m.as_dict().items() if t != 255} == {
        13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
        29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18}
    # every Cityscapes class is reachable
    assert set(m.targets) - {255} == set(range(19))


def test_idd_mapping_counts_and_spot_checks():
    m = load_label_mapping("idd_to_cityscapes19.csv")
    assert len(m.source_ids) == 40  # IDD label ids 0..39
    level3 = {int(r["level3_id"]) for r in m.rows}
    assert level3 - {255} == set(range(26))  # IDD's 26 level-3 classes
    for name, cls in {"road": "road", "sidewalk": "sidewalk", "non-drivable fallback": "terrain",
                      "person": "person", "rider": "rider", "car": "car", "train": "train",
                      "traffic sign": "traffic sign", "sky": "sky", "building": "building"}.items():
        assert m.target_of(name) == CS19.index(cls), name
    for name in ("parking", "drivable fallback", "autorickshaw", "curb", "polegroup", "unlabeled",
                 "animal", "vehicle fallback", "billboard", "license plate"):
        assert m.target_of(name) == 255, name
    assert set(m.targets) - {255} == set(range(19))
    # level3 ids are not a function to trainIds (why the mapping starts from `id`)
    by_level3 = {}
    for r in m.rows:
        by_level3.setdefault(int(r["level3_id"]), set()).add(int(r["target_train_id"]))
    assert by_level3[12] == {16, 255} and by_level3[4] == {11, 255}


def test_camvid_mapping_keeps_classes_and_ignores_void():
    m = load_label_mapping("camvid11_void_to_ignore.csv")
    assert m.as_dict() == {**{i: i for i in range(11)}, 11: 255}
    assert m.source_names[3] == "Road" and m.source_names[8] == "Car"


def test_remap_values_and_unknown_values_are_errors():
    m = load_label_mapping("mapillary_vistas_v1.2_to_cityscapes19.csv")
    src = np.array([[13, 55, 27], [8, 65, 24]], dtype=np.uint8)
    np.testing.assert_array_equal(m.remap(src), [[0, 13, 10], [255, 255, 0]])
    with pytest.raises(ValueError, match=r"some_file\.png.*\[70\]"):
        m.remap(np.array([[1, 70]], dtype=np.uint8), where="some_file.png")
    np.testing.assert_array_equal(m.remap(src.astype(np.int32)), m.remap(src))  # e.g. 'I' PNGs
    with pytest.raises(ValueError, match=r"\[300\]"):
        m.remap(np.array([[1, 300]], dtype=np.int32))


@pytest.mark.parametrize("body, match", [
    ("source_id,source_name,target_train_id\n0,a,1\n0,b,2\n", "appears twice"),
    ("source_id,source_name,target_train_id\n0,a,300\n", "0..255"),
    ("source_id,source_name,target_train_id\n0,a,x\n", "integers"),
    ("id,name\n0,a\n", "header"),
])
def test_bad_mapping_files_are_rejected(tmp_path, body, match):
    path = tmp_path / "bad.csv"
    path.write_text("# a comment line\n" + body)
    with pytest.raises(ValueError, match=match):
        load_label_mapping(str(path))
