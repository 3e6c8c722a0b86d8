"""
Label mappings as data, and the one-off conversion of label PNGs with them.

A mapping is a CSV file in ``sfnet_d2/data/label_mappings/``: ``#`` lines at the top say where the
mapping comes from; the header has at least ``source_id,source_name,target_train_id``; each row maps
one source label to one target trainId or to 255 (ignored). Extra columns (e.g. ``target_name``)
are kept for reading and for the tests.

Remapping is done once, by the ``projects/SFNet/prepare_*.py`` commands, which write trainId PNGs
next to the original labels (see docs/DATASETS.md). The loaders then read the prepared PNGs like
any trainId label, so the dataset mapper, the evaluators and the class-uniform sampler all see
the same 19-class labels; remapping on the fly would have to be repeated in each of them.
"""
import csv
import functools
import logging
import os
from dataclasses import dataclass
from multiprocessing import Pool
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = [
    "LABEL_MAPPINGS_DIR",
    "LabelMapping",
    "convert_label_files",
    "load_label_mapping",
    "read_label_png",
    "write_label_png",
]

logger = logging.getLogger(__name__)

LABEL_MAPPINGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "label_mappings")
IGNORE = 255


@dataclass(frozen=True)
class LabelMapping:
    """Source label id -> target trainId (or 255), read from a mapping CSV."""

    path: str
    rows: Tuple[Dict[str, str], ...]  # every CSV row, all columns, as read

    @property
    def source_ids(self) -> List[int]:
        return [int(r["source_id"]) for r in self.rows]

    @property
    def source_names(self) -> List[str]:
        return [r["source_name"] for r in self.rows]

    @property
    def targets(self) -> List[int]:
        return [int(r["target_train_id"]) for r in self.rows]

    def as_dict(self) -> Dict[int, int]:
        return dict(zip(self.source_ids, self.targets))

    def id_of(self, name: str) -> int:
        for r in self.rows:
            if r["source_name"] == name:
                return int(r["source_id"])
        raise KeyError(f"No source label named {name!r} in {self.path}")

    def target_of(self, name: str) -> int:
        return self.as_dict()[self.id_of(name)]

    @functools.cached_property
    def lookup_table(self) -> np.ndarray:
        """(256,) int16 table: source value -> target, -1 for values that are not source labels."""
        lut = np.full(256, -1, dtype=np.int16)
        for s, t in zip(self.source_ids, self.targets):
            lut[s] = t
        return lut

    def remap(self, label: np.ndarray, where: str = "label") -> np.ndarray:
        """Map a source label array to a uint8 target array; values outside the source labels are
        an error naming ``where`` (e.g. the file), never silently ignored."""
        if label.ndim != 2:
            raise ValueError(f"{where}: expected a single-channel label map, got shape {label.shape}")
        if label.dtype != np.uint8:
            out_of_range = np.unique(label[(label < 0) | (label > 255)])
            if out_of_range.size:
                self._raise_unknown(out_of_range, where)
            label = label.astype(np.int64)
        out = self.lookup_table[label]  # uint8 indices directly: the fast path for real labels
        bad = out < 0
        if bad.any():
            self._raise_unknown(np.unique(label[bad]), where)
        return out.astype(np.uint8)

    def _raise_unknown(self, values: np.ndarray, where: str):
        raise ValueError(
            f"{where} contains values {values.tolist()[:10]} that are not source labels of "
            f"{self.path} (ids {min(self.source_ids)}..{max(self.source_ids)}): is it the right "
            "kind of label file?"
        )

@functools.lru_cache(maxsize=None)
def load_label_mapping(name_or_path: str) -> LabelMapping:
    """Read and validate a mapping CSV (a file name in ``label_mappings/`` or a path); cached."""
    # a bare file name is one of ours, whatever the working directory holds
    path = name_or_path if os.sep in name_or_path else os.path.join(LABEL_MAPPINGS_DIR, name_or_path)
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = tuple(csv.DictReader(lines))
    required = {"source_id", "source_name", "target_train_id"}
    if not rows or not required <= set(rows[0]):
        raise ValueError(f"{path}: expected a header with columns {sorted(required)} and rows")
    seen = set()
    for i, r in enumerate(rows):
        try:
            s, t = int(r["source_id"]), int(r["target_train_id"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, data row {i + 1}: source_id and target_train_id must be "
                             f"integers, got {r}") from None
        if s in seen:
            raise ValueError(f"{path}: source_id {s} appears twice (a label must map to one target)")
        seen.add(s)
        if not (0 <= s <= 255 and (0 <= t < IGNORE or t == IGNORE)):
            raise ValueError(f"{path}, data row {i + 1}: ids must be in 0..255, got {s} -> {t}")
    return LabelMapping(path=path, rows=rows)


def read_label_png(path: str) -> np.ndarray:
    """A label PNG as stored (palette indices for 'P' images, not colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"mode {im.mode}: expected a single-channel label PNG ('L' or 'P')")
            return np.asarray(im)
    except (OSError, ValueError) as e:
        raise type(e)(f"Cannot read label file {path}: {e}") from e


def write_label_png(path: str, label: np.ndarray):
    """Write a uint8 label PNG atomically: a killed run never leaves a truncated file behind that
    a later run would keep as 'already prepared'."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}.png"
    Image.fromarray(label.astype(np.uint8), mode="L").save(tmp)
    os.replace(tmp, path)


def _convert_one(job: Tuple[str, str], convert: Callable[[str], np.ndarray]) -> str:
    src, dst = job
    write_label_png(dst, convert(src))
    return dst


def convert_label_files(
    jobs: Sequence[Tuple[str, str]],
    convert: Callable[[str], np.ndarray],
    *,
    overwrite: bool = False,
    num_workers: int = 1,
    desc: str = "labels",
) -> Dict[str, int]:
    """Write ``convert(src)`` to ``dst`` for every ``(src, dst)`` job, with a progress bar.

    Existing outputs are kept unless ``overwrite`` (so an interrupted run resumes where it
    stopped); ``convert`` must be a picklable top-level callable when ``num_workers > 1``.
    Returns the numbers of files written and kept.
    """
    todo = [j for j in jobs if overwrite or not os.path.exists(j[1])]
    kept = len(jobs) - len(todo)
    if kept:
        logger.info(f"{desc}: keeping {kept} existing output file(s); pass --overwrite to rewrite them")
    worker = functools.partial(_convert_one, convert=convert)
    bar = tqdm(total=len(todo), desc=desc, unit="file", dynamic_ncols=True)
    try:
        if num_workers > 1 and len(todo) > 1:
            with Pool(num_workers) as pool:
                for _ in pool.imap_unordered(worker, todo, chunksize=4):
                    bar.update(1)
        else:
            for job in todo:
                worker(job)
                bar.update(1)
    finally:
        bar.close()
    return {"written": len(todo), "kept": kept}


def default_num_workers(requested: Optional[int] = None) -> int:
    if requested is not None:
        return max(1, requested)
    return max(1, min(8, os.cpu_count() or 1))
