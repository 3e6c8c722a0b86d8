"""UDS: the union of Cityscapes + Mapillary Vistas + IDD + BDD100K (counts and records), and
check_uds's report against the paper's Table 2 on a synthetic root."""
import os
import shutil
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from helpers import ROOT, make_bdd, make_cityscapes, make_idd, make_mapillary
from sfnet_d2.data.datasets import PAPER_TABLE2, check_uds as run_check
from sfnet_d2.data.datasets import uds
from sfnet_d2.data.datasets.uds import format_uds_report
from sfnet_d2.data.prepare import prepare_dataset

# (train, val) images per part in the synthetic root
SIZES = {"Cityscapes": (3, 1), "IDD": (2, 1), "Mapillary": (2, 2), "BDD": (1, 2)}


def make_uds(root):
    make_cityscapes(root, "train", (("aachen", 2), ("bochum", 1)))
    make_cityscapes(root, "val", (("frankfurt", 1),))
    make_idd(root, "train", (("0", 1), ("1", 1)))
    make_idd(root, "val", (("5", 1),))
    make_mapillary(root, "train", 2)
    make_mapillary(root, "val", 2)
    make_bdd(root, "train", 1)
    make_bdd(root, "val", 2)
    prepare_dataset("idd", os.path.join(root, "IDD_Segmentation"))
    prepare_dataset("mapillary", os.path.join(root, "mapillary_vistas"))


def test_paper_table2_is_consistent():
    parts = [PAPER_TABLE2[p] for p in ("Cityscapes", "IDD", "Mapillary", "BDD")]
    assert tuple(map(sum, zip(*parts))) == PAPER_TABLE2["UDS"] == (34968, 6500)
    # the real datasets' counts: all as in Table 2 except IDD val (981, explained)
    assert uds._judge("IDD", "val", 981)[0] == "ok*"
    assert uds._judge("UDS", "val", 500 + 981 + 2000 + 1000)[0] == "ok*"
    assert uds._judge("UDS", "train", 34968) == ("ok", "")
    assert uds._judge("BDD", "train", 6996)[0] == "MISMATCH"


def test_uds_is_the_union_of_the_four_parts(registered_root):  # noqa: F811
    make_uds(registered_root)
    for split, i in (("train", 0), ("val", 1)):
        records = DatasetCatalog.get(f"uds_sem_seg_{split}")
        assert len(records) == sum(n[i] for n in SIZES.values())
        parts = [DatasetCatalog.get(p) for p in MetadataCatalog.get(f"uds_sem_seg_{split}").parts]
        assert [r["file_name"] for r in records] == [r["file_name"] for p in parts for r in p]
        assert [len(p) for p in parts] == [n[i] for n in SIZES.values()]
        assert all(os.path.isfile(r["sem_seg_file_name"]) for r in records)
    meta = MetadataCatalog.get("uds_sem_seg_val")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"


def _check_uds_report(root):
    """(report, exit status) of projects/SFNet/check_uds.py, computed in this process so that the
    test's scaled-down Table 2 applies."""
    rows = run_check(root)
    return format_uds_report(root, rows), 0 if all(r.ok for r in rows) else 1


def test_check_uds_report(tmp_path, monkeypatch):
    root = str(tmp_path)
    make_uds(root)
    # Table 2 scaled down to the synthetic root; IDD val differs in an explained way, BDD train not
    monkeypatch.setattr(uds, "PAPER_TABLE2", {**{k: v for k, v in SIZES.items()}, "IDD": (2, 4),
                                              "BDD": (5, 2), "UDS": (8, 9)})
    monkeypatch.setattr(uds, "KNOWN_DIFFERENCES", {("IDD", "val"): (1, "explained"),
                                                   ("UDS", "val"): (6, "explained too")})
    out, status = _check_uds_report(root)
    assert status == 1
    rows = {tuple(line.split()[:2]): line.split()[2:5] for line in out.splitlines()[2:12]}
    assert rows[("Cityscapes", "train")] == ["3", "3", "ok"]
    assert rows[("IDD", "val")] == ["1", "4", "ok*"]
    assert rows[("BDD", "train")] == ["1", "5", "MISMATCH"]
    assert rows[("UDS", "train")] == ["8", "8", "ok"]
    assert rows[("UDS", "val")] == ["6", "9", "ok*"]
    assert "1 row(s) need attention: BDD train MISMATCH" in out

    # unprepared Mapillary labels and a missing BDD: named, with the layout and the command
    shutil.rmtree(os.path.join(root, "mapillary_vistas", "validation", "labels_cityscapes19"))
    shutil.rmtree(os.path.join(root, "bdd100k"))
    out, status = _check_uds_report(root)
    assert status == 1
    rows = {tuple(line.split()[:2]): line.split()[2:5] for line in out.splitlines()[2:12]}
    assert rows[("Mapillary", "val")] == ["2", "2", "LABELS"]
    assert rows[("Mapillary", "train")] == ["2", "2", "ok"]
    assert rows[("BDD", "val")] == ["-", "2", "MISSING"]
    assert rows[("UDS", "val")] == ["-", "9", "MISSING"]
    assert "prepare_mapillary.py" in out and "bdd100k/images/10k/{train,val}/*.jpg" in out


def test_check_uds_on_an_empty_root_lists_every_part_missing(tmp_path):
    rows = run_check(str(tmp_path))
    assert [(r.name, r.split, r.status) for r in rows] == [
        (p, s, "MISSING") for p in ("Cityscapes", "IDD", "Mapillary", "BDD") for s in ("train", "val")
    ] + [("UDS", "train", "MISSING"), ("UDS", "val", "MISSING")]


@pytest.mark.slow
def test_check_uds_command_exits_1_and_names_every_missing_part(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "projects", "SFNet", "check_uds.py"),
                           "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert f"UDS root: {tmp_path}" in proc.stdout
    for part in ("Cityscapes", "IDD", "Mapillary", "BDD", "UDS"):
        for split in ("train", "val"):
            assert any(line.split()[:3] == [part, split, "-"] and "MISSING" in line
                       for line in proc.stdout.splitlines()), (part, split, proc.stdout)
