"""
UDS, the paper's unified driving segmentation set (Sec. 3.4, Table 2): Cityscapes fine + Mapillary
Vistas + IDD + BDD100K, all in the 19 Cityscapes trainIds.

* ``uds_sem_seg_train``: the union of the four train sets; ``uds_sem_seg_val``: of the four vals.
  Evaluator type ``sem_seg`` (one confusion matrix over the union). Each part's own val
  (``cityscapes_fine_sem_seg_val``, ``mapillary_vistas_19_sem_seg_val``, ``idd_19_sem_seg_val``,
  ``bdd100k_sem_seg_val``) stays available for per-dataset validation.
* :func:`check_uds` counts each part's images against Table 2 (``projects/SFNet/check_uds.py``).

Table 2 gives IDD 3,000 validation images, but IDD's release and the paper's own Sec. 4.1 have
981 (and Table 2's 6,500 UDS total assumes 3,000); a count of 981 is reported as matching the
release, not as an error.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from sfnet_d2.data.datasets.bdd100k import count_bdd100k_images, find_bdd100k_files, load_bdd100k
from sfnet_d2.data.datasets.cityscapes import _LAYOUT as CITYSCAPES_LAYOUT
from sfnet_d2.data.datasets.cityscapes import CITYSCAPES_ROOT_NAME, find_cityscapes_files, load_cityscapes_semantic_checked
from sfnet_d2.data.datasets.common import cityscapes19_metadata, list_files, register_sem_seg, require_dir
from sfnet_d2.data.datasets.idd import count_idd_images, find_idd_19_files, load_idd_19
from sfnet_d2.data.datasets.mapillary_vistas import (
    count_mapillary_vistas_images,
    find_mapillary_vistas_19_files,
    load_mapillary_vistas_19,
)

__all__ = ["PAPER_TABLE2", "UDS_PARTS", "UdsCount", "check_uds", "load_uds", "register_uds"]

SPLITS = ("train", "val")


def _cityscapes_dirs(datasets_root: str, split: str) -> Tuple[str, str]:
    root = os.path.join(datasets_root, CITYSCAPES_ROOT_NAME)
    return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)


def _count_cityscapes(datasets_root: str, split: str) -> int:
    image_dir, _ = _cityscapes_dirs(datasets_root, split)
    return len(list_files(require_dir(image_dir, "Cityscapes", CITYSCAPES_LAYOUT),
                          ["_leftImg8bit.png"], depth=1))


@dataclass(frozen=True)
class UdsPart:
    name: str           # as in the paper's Table 2
    dataset_prefix: str  # our registered names: PREFIX_{train,val}
    load: Callable[[str, str], List[Dict]]       # (datasets_root, split) -> records
    find: Callable[[str, str], List[Tuple[str, str]]]  # -> checked (image, label) pairs
    count_images: Callable[[str, str], int]      # -> images on disk (labels not checked)


UDS_PARTS = (
    UdsPart("Cityscapes", "cityscapes_fine_sem_seg",
            lambda r, s: load_cityscapes_semantic_checked(*_cityscapes_dirs(r, s)),
            lambda r, s: find_cityscapes_files(*_cityscapes_dirs(r, s)), _count_cityscapes),
    UdsPart("IDD", "idd_19_sem_seg", load_idd_19, find_idd_19_files, count_idd_images),
    UdsPart("Mapillary", "mapillary_vistas_19_sem_seg", load_mapillary_vistas_19,
            find_mapillary_vistas_19_files, count_mapillary_vistas_images),
    UdsPart("BDD", "bdd100k_sem_seg", load_bdd100k, find_bdd100k_files, count_bdd100k_images),
)

# The paper's Table 2: (train images, validation images).
PAPER_TABLE2 = {
    "Cityscapes": (2975, 500),
    "IDD": (6993, 3000),
    "Mapillary": (18000, 2000),
    "BDD": (7000, 1000),
    "UDS": (34968, 6500),
}
# Counts that differ from Table 2 but are explained: (name, split) -> (count, explanation).
KNOWN_DIFFERENCES = {
    ("IDD", "val"): (981, "IDD's release and the paper's Sec. 4.1 have 981; Table 2 says 3,000"),
    ("UDS", "val"): (4481, "with IDD's 981 val images; Table 2's 6,500 counts 3,000 for IDD"),
}


def load_uds(datasets_root: str, split: str) -> List[Dict]:
    """The union of the four parts' records; a missing part is an error naming it."""
    if split not in SPLITS:
        raise ValueError(f"UDS split must be one of {SPLITS}, got {split!r}")
    records = []
    for part in UDS_PARTS:
        records.extend(part.load(datasets_root, split))
    return records


def register_uds(datasets_root: str):
    for split in SPLITS:
        register_sem_seg(f"uds_sem_seg_{split}", lambda s=split: load_uds(datasets_root, s),
                         dict(parts=[f"{p.dataset_prefix}_{split}" for p in UDS_PARTS],
                              **cityscapes19_metadata("sem_seg")))


@dataclass
class UdsCount:
    name: str
    split: str
    images: Optional[int]  # None when the image folder is missing
    expected: int
    status: str            # "ok", "ok*" (explained difference), "MISMATCH", "MISSING", "LABELS"
    detail: str = ""       # the explanation or the loader's error message

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "ok*")


def _judge(name: str, split: str, images: int) -> Tuple[str, str]:
    expected = PAPER_TABLE2[name][SPLITS.index(split)]
    if images == expected:
        return "ok", ""
    known = KNOWN_DIFFERENCES.get((name, split))
    if known and images == known[0]:
        return "ok*", known[1]
    detail = f"{images} images, Table 2 has {expected}"
    if known:
        detail += f"; expected {known[0]}: {known[1]}"
    return "MISMATCH", detail


def check_uds(datasets_root: str) -> List[UdsCount]:
    """Per part and split: images on disk, their labels' presence, and Table 2's count; then the
    union per split. A part whose images are missing is MISSING, one whose labels are missing or
    not prepared is LABELS (with the loader's message, which names the command to run)."""
    rows = []
    for part in UDS_PARTS:
        for split in SPLITS:
            expected = PAPER_TABLE2[part.name][SPLITS.index(split)]
            try:
                images = part.count_images(datasets_root, split)
            except FileNotFoundError as e:
                rows.append(UdsCount(part.name, split, None, expected, "MISSING", str(e)))
                continue
            try:
                part.find(datasets_root, split)
            except FileNotFoundError as e:
                rows.append(UdsCount(part.name, split, images, expected, "LABELS", str(e)))
                continue
            rows.append(UdsCount(part.name, split, images, expected, *_judge(part.name, split, images)))
    for split in SPLITS:
        expected = PAPER_TABLE2["UDS"][SPLITS.index(split)]
        parts = [r for r in rows if r.split == split]
        if all(r.status not in ("MISSING", "LABELS") for r in parts):
            total = sum(r.images for r in parts)
            rows.append(UdsCount("UDS", split, total, expected, *_judge("UDS", split, total)))
        else:
            rows.append(UdsCount("UDS", split, None, expected, "MISSING",
                                 "incomplete: " + ", ".join(r.name for r in parts
                                                           if r.status in ("MISSING", "LABELS"))))
    return rows


def format_uds_report(datasets_root: str, rows: List[UdsCount]) -> str:
    lines = [f"UDS root: {os.path.abspath(datasets_root)}",
             f"{'dataset':<11} {'split':<6} {'images':>7} {'Table 2':>8}  status"]
    for r in rows:
        images = "-" if r.images is None else str(r.images)
        note = r.detail.splitlines()[0] if r.detail else ""
        lines.append(f"{r.name:<11} {r.split:<6} {images:>7} {r.expected:>8}  {r.status}"
                     + (f"  ({note})" if note else ""))
    shown = set()  # the full message (layout, command) once per dataset
    for r in rows:
        if r.status in ("MISSING", "LABELS") and r.name != "UDS" and r.name not in shown:
            shown.add(r.name)
            lines += ["", f"{r.name} {r.split}: {r.detail}"]
    bad = [r for r in rows if not r.ok]
    lines += ["", "All parts present and matching Table 2." if not bad else
              f"{len(bad)} row(s) need attention: "
              + ", ".join(f"{r.name} {r.split} {r.status}" for r in bad)]
    return "\n".join(lines)
