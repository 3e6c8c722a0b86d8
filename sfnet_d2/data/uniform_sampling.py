"""
Class-uniform sampling with coarse boosting, the official recipe's rare-class balancing
(``--class_uniform_pct 0.5 --class_uniform_tile 1024``, the official ``datasets/uniform.py`` taken
from NVIDIA's semantic-segmentation; lxtGH/SFSegNets@ba475ba datasets/uniform.py,
datasets/cityscapes.py and scripts/cityscacpes/train_cityscapes_*.sh; docs/TRAINING.md), feeding
the training stream of ``train_stream.py``:

* ``label_centroids``: every label map is cut into full ``tile x tile`` tiles; for each class in a
  tile, the (integer) centre of mass of its pixels is a *centroid*.
* ``load_or_build_centroids``: the centroids of a whole dataset, computed once (progress bar) and
  cached as JSON. The cache records every label file's path, size and mtime; a cache that does
  not match the dataset (or the tile size / class count) is rebuilt with a log message.
* ``ClassUniformDataset``: the training records followed by one virtual record per centroid
  (the image's record plus ``sfnet_centroid`` = (x, y)), so that the sampler can pick either.
  ``SFNetSemanticDatasetMapper`` crops around ``sfnet_centroid``.
* ``ClassUniformTrainingSampler``: the infinite, seeded, rank-sharded index stream (like
  detectron2's ``TrainingSampler``) mixing random images and centroid crops, either per epoch
  exactly as the official ``build_epoch`` or independently per sample.
* ``build_sfnet_train_loader``: all of the above from the config (``DATALOADER.SFNET.*``).
"""
import hashlib
import itertools
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import Sampler
from tqdm import tqdm

from sfnet_d2.data.train_stream import build_training_stream_loader, shuffled_index_stream

__all__ = [
    "label_centroids",
    "compute_dataset_centroids",
    "load_or_build_centroids",
    "ClassUniformDataset",
    "ClassUniformTrainingSampler",
    "build_sfnet_train_loader",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "sfnet_d2.class_centroids"
CACHE_VERSION = 1
SAMPLING_MODES = ("epoch", "random")


# ---- centroids ---------------------------------------------------------------------------------

def label_centroids(label: np.ndarray, num_classes: int,
                    tile: int) -> Dict[int, List[Tuple[int, int]]]:
    """
    Centroids (x, y) per class of one (H, W) label map: for each full ``tile x tile`` tile (the
    image is covered by floor(H / tile) x floor(W / tile) tiles from the top-left corner, as
    officially) and each class id in [0, num_classes) present in it, the centre of mass of its
    pixels, truncated to integers, in image coordinates. Other values (ignore) are skipped.
    """
    if tile <= 0:
        raise ValueError(f"DATALOADER.SFNET.CLASS_UNIFORM_TILE must be > 0, got {tile}")
    out: Dict[int, List[Tuple[int, int]]] = {}
    h, w = label.shape
    ys_in_tile, xs_in_tile = np.divmod(np.arange(tile * tile), tile)
    for y0 in range(0, (h // tile) * tile, tile):
        for x0 in range(0, (w // tile) * tile, tile):
            flat = label[y0:y0 + tile, x0:x0 + tile].ravel().astype(np.int64)
            valid = (flat >= 0) & (flat < num_classes)
            classes = flat[valid]
            counts = np.bincount(classes, minlength=num_classes)
            sum_y = np.bincount(classes, weights=ys_in_tile[valid], minlength=num_classes)
            sum_x = np.bincount(classes, weights=xs_in_tile[valid], minlength=num_classes)
            for c in np.flatnonzero(counts):
                out.setdefault(int(c), []).append(
                    (int(sum_x[c] / counts[c]) + x0, int(sum_y[c] / counts[c]) + y0)
                )
    return out


def _label_file(record: dict, dataset_name: str) -> str:
    path = record.get("sem_seg_file_name")
    if not path:
        raise ValueError(
            f"A record of dataset {dataset_name} ({record.get('file_name')}) has no "
            "'sem_seg_file_name': class-uniform sampling needs a label map per image"
        )
    return path


def _read_label(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            label = np.asarray(im)
    except (OSError, ValueError) as e:
        raise OSError(f"Cannot read label file {path} for class centroids: {e}") from e
    if label.ndim != 2:
        raise ValueError(f"Label file {path} has shape {label.shape}: expected an (H, W) map of "
                         "train ids")
    return label


def compute_dataset_centroids(label_files: Sequence[str], num_classes: int, tile: int,
                              num_threads: int = 4, desc: str = "class centroids"):
    """
    Centroids of every label file, as ``{class: int64 array (K, 3) of [image_index, x, y]}``
    (image_index = position in ``label_files``), with a progress bar. Also returns how many
    images are smaller than one tile (they give no centroid).
    """
    def one(path):
        label = _read_label(path)
        return label_centroids(label, num_classes, tile), min(label.shape) < tile

    rows: Dict[int, list] = {c: [] for c in range(num_classes)}
    too_small = 0
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = pool.map(one, label_files)
        for index, (per_class, small) in enumerate(
            tqdm(results, total=len(label_files), desc=desc, unit="img", mininterval=2.0)
        ):
            too_small += int(small)
            for c, points in per_class.items():
                rows[c].extend((index, x, y) for x, y in points)
    centroids = {c: np.asarray(r, dtype=np.int64).reshape(-1, 3) for c, r in rows.items()}
    return centroids, too_small


# ---- cache -------------------------------------------------------------------------------------

def _file_signatures(label_files: Sequence[str]) -> List[list]:
    sigs = []
    for path in label_files:
        try:
            st = os.stat(path)
        except OSError as e:
            raise FileNotFoundError(f"Label file {path} of the training set is missing: {e}") from e
        sigs.append([path, st.st_size, st.st_mtime_ns])
    return sigs


def _cache_path(cache_dir: str, dataset_name: str, tile: int, num_classes: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset_name)
    return os.path.join(cache_dir, f"{safe}_tile{tile}_classes{num_classes}.json")


def _why_stale(cache: dict, files: List[list], tile: int, num_classes: int) -> Optional[str]:
    """None if the cache matches the dataset and parameters, else the first difference."""
    if cache.get("format") != CACHE_FORMAT or cache.get("version") != CACHE_VERSION:
        return f"format {cache.get('format')} v{cache.get('version')} is not {CACHE_FORMAT} " \
               f"v{CACHE_VERSION}"
    if cache.get("tile_size") != tile or cache.get("num_classes") != num_classes:
        return f"made with tile {cache.get('tile_size')} / {cache.get('num_classes')} classes, " \
               f"wanted tile {tile} / {num_classes} classes"
    cached = cache.get("files", [])
    if len(cached) != len(files):
        return f"made for {len(cached)} label files, the dataset now has {len(files)}"
    for old, new in zip(cached, files):
        if list(old) != new:
            return f"label file changed: cached {old} (path, size, mtime_ns), now {new}"
    return None


def load_or_build_centroids(dataset_name: str, label_files: Sequence[str], num_classes: int,
                            tile: int, cache_dir: str, num_threads: int = 4):
    """
    The centroids of a dataset (see ``compute_dataset_centroids``), from the cache in
    ``cache_dir`` when it matches the label files (paths, sizes, mtimes), tile and class count;
    otherwise computed and (re)written, with a log line saying why.
    """
    label_files = list(label_files)
    files = _file_signatures(label_files)
    path = _cache_path(cache_dir, dataset_name, tile, num_classes)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cache = json.load(f)
            reason = _why_stale(cache, files, tile, num_classes)
        except (OSError, ValueError) as e:
            reason = f"unreadable ({e})"
        if reason is None:
            logger.info(f"Class centroids of {dataset_name}: loaded from {path}")
            return {int(c): np.asarray(v, dtype=np.int64).reshape(-1, 3)
                    for c, v in cache["centroids"].items()}
        logger.warning(f"Centroid cache {path} does not match dataset {dataset_name}: {reason}. "
                       "Rebuilding it.")
    else:
        logger.info(f"Class centroids of {dataset_name}: no cache at {path}, computing them")
    start = time.perf_counter()
    centroids, too_small = compute_dataset_centroids(
        label_files, num_classes, tile, num_threads, desc=f"centroids of {dataset_name}")
    logger.info(f"Class centroids of {dataset_name}: {sum(len(v) for v in centroids.values())} "
                f"from {len(label_files)} label maps in {time.perf_counter() - start:.1f} s")
    if too_small:
        logger.warning(
            f"{too_small} of {len(label_files)} label maps of {dataset_name} are smaller than "
            f"DATALOADER.SFNET.CLASS_UNIFORM_TILE={tile} on a side and give no centroid there "
            "(official behaviour); lower the tile size to use them"
        )
    os.makedirs(cache_dir, exist_ok=True)
    payload = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "dataset": dataset_name,
        "tile_size": tile, "num_classes": num_classes,
        "files_sha1": hashlib.sha1(json.dumps(files).encode()).hexdigest(),
        "files": files,
        "centroids": {str(c): v.tolist() for c, v in centroids.items()},
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)  # atomic: concurrent readers see the old or the new file, never half
    logger.info(f"Class centroids of {dataset_name}: cached in {path}")
    return centroids


def _load_or_build_once_per_machine(*args, **kwargs):
    # The first process of each machine builds (or validates) the cache, the others then read
    # it; with a cache folder that machines do not share, each machine builds its own.
    if comm.get_local_rank() == 0:
        result = load_or_build_centroids(*args, **kwargs)
    comm.synchronize()
    if comm.get_local_rank() != 0:
        result = load_or_build_centroids(*args, **kwargs)
    return result


# ---- dataset and sampler -----------------------------------------------------------------------

class ClassUniformDataset(torch.utils.data.Dataset):
    """
    Indices ``[0, len(records))`` are the records themselves; index ``len(records) + k`` is
    the record of centroid ``k`` with ``sfnet_centroid`` = (x, y) and ``sfnet_centroid_class``.
    Records are held serialized (detectron2's ``DatasetFromList``), centroids as one int array,
    so data-loader workers share them without copies.
    """

    def __init__(self, records: List[dict], centroids: np.ndarray):
        """
        Args:
            records: dataset dicts (the sampled images first, then any images that only provide
                centroids, e.g. coarse-boost images).
            centroids: int array (M, 4) of [record_index, x, y, class].
        """
        centroids = np.asarray(centroids, dtype=np.int64).reshape(-1, 4)
        if len(centroids) and (centroids[:, 0].min() < 0 or centroids[:, 0].max() >= len(records)):
            raise ValueError(
                "ClassUniformDataset: a centroid refers to a record that does not exist")
        self._records = DatasetFromList(records, copy=False, serialize=True)
        self._num_records = len(records)
        self._centroids = centroids

    @property
    def num_records(self) -> int:
        return self._num_records

    def class_indices(self, num_classes: int) -> List[np.ndarray]:
        """Dataset indices of each class's centroid records."""
        return [self._num_records + np.flatnonzero(self._centroids[:, 3] == c)
                for c in range(num_classes)]

    def __len__(self):
        return self._num_records + len(self._centroids)

    def __getitem__(self, index):
        if index < self._num_records:
            return self._records[index]
        record_index, x, y, c = self._centroids[index - self._num_records].tolist()
        record = self._records[record_index]  # a fresh copy (unpickled)
        record["sfnet_centroid"] = (x, y)
        record["sfnet_centroid_class"] = c
        return record


class ClassUniformTrainingSampler(Sampler):
    """
    Infinite stream of indices of a ``ClassUniformDataset``, seeded and split over processes like
    detectron2's ``TrainingSampler`` (process r takes items r, r + W, r + 2W, ...).

    ``mode="epoch"`` (official ``build_epoch``): each epoch of ``num_images`` = N samples holds
    ``n = int(N * pct / num_classes)`` centroid records of every class that has centroids (a
    random permutation of the class's centroids, repeated when it has fewer than n) and
    ``N - n * num_classes`` distinct random images; the epoch is shuffled. Classes without
    centroids make the epoch shorter, as officially.

    ``mode="random"``: every sample is independently, with probability ``pct``, a centroid record
    of a class drawn uniformly among the classes that have centroids (then a uniform centroid of
    it), else a uniformly drawn image.
    """

    def __init__(self, num_images: int, class_indices: Sequence[np.ndarray], pct: float,
                 mode: str = "epoch", seed: Optional[int] = None, rank: Optional[int] = None,
                 world_size: Optional[int] = None):
        if num_images <= 0:
            raise ValueError(
                f"ClassUniformTrainingSampler needs images, got num_images={num_images}")
        if not 0 <= pct <= 1:
            raise ValueError(f"DATALOADER.SFNET.CLASS_UNIFORM_PCT must be in [0, 1], got {pct}")
        if mode not in SAMPLING_MODES:
            raise ValueError(f"DATALOADER.SFNET.CLASS_UNIFORM_MODE={mode!r} is not one of "
                             f"{SAMPLING_MODES}")
        self._num_images = int(num_images)
        self._class_indices = [np.asarray(ix, dtype=np.int64) for ix in class_indices]
        self._present = [c for c, ix in enumerate(self._class_indices) if len(ix)]
        if pct > 0 and not self._present:
            raise ValueError("Class-uniform sampling: no class has a centroid")
        self._pct = float(pct)
        self._mode = mode
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    def epoch_composition(self) -> Tuple[int, int]:
        """(random images, centroid records per present class) of one "epoch"-mode epoch."""
        per_class = int(self._num_images * self._pct / len(self._class_indices))
        return self._num_images - per_class * len(self._class_indices), per_class

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self):
        rng = np.random.default_rng(self._seed)
        while True:
            batch = self._one_epoch(rng) if self._mode == "epoch" else self._independent(rng)
            yield from batch.tolist()

    def _one_epoch(self, rng) -> np.ndarray:
        num_random, per_class = self.epoch_composition()
        parts = [rng.permutation(self._num_images)[:num_random]]
        for c in self._present:
            ix = self._class_indices[c]
            order = rng.permutation(len(ix))
            parts.append(ix[order[np.arange(per_class) % len(ix)]])
        epoch = np.concatenate(parts)
        return epoch[rng.permutation(len(epoch))]

    def _independent(self, rng) -> np.ndarray:
        n = self._num_images
        out = rng.integers(0, n, size=n)
        uniform = np.flatnonzero(rng.random(n) < self._pct)
        classes = rng.integers(0, len(self._present), size=len(uniform))
        for k, c in zip(uniform, classes):
            ix = self._class_indices[self._present[c]]
            out[k] = ix[rng.integers(0, len(ix))]
        return out


# ---- loader ------------------------------------------------------------------------------------

def _dataset_records(name: str) -> List[dict]:
    records = DatasetCatalog.get(name)
    if not records:
        raise ValueError(f"Dataset {name} has no records; check that it is on disk")
    return records


def _centroid_rows(centroids: Dict[int, np.ndarray], classes: Sequence[int], offset: int,
                   keep_images: Optional[np.ndarray] = None) -> np.ndarray:
    rows = []
    for c in classes:
        arr = centroids.get(c, np.zeros((0, 3), dtype=np.int64))
        if len(arr):
            image_index = arr[:, 0] if keep_images is None else keep_images[arr[:, 0]]
            rows.append(np.stack([image_index + offset, arr[:, 1], arr[:, 2],
                                  np.full(len(arr), c)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 4), dtype=np.int64)


def build_class_uniform_dataset(cfg):
    """The ``ClassUniformDataset`` of ``DATASETS.TRAIN`` (+ coarse boosting) and the number of
    sampled images, with the centroid caches loaded or built."""
    opts = cfg.DATALOADER.SFNET
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    tile = opts.CLASS_UNIFORM_TILE
    cache_dir = opts.CENTROID_CACHE_DIR or os.path.join(cfg.OUTPUT_DIR, "centroid_cache")
    threads = max(1, cfg.DATALOADER.NUM_WORKERS)
    boost_classes = [int(c) for c in opts.COARSE_BOOST_CLASSES]
    if bool(opts.COARSE_BOOST_DATASET) != bool(boost_classes):
        raise ValueError(
            "Coarse boosting needs both DATALOADER.SFNET.COARSE_BOOST_DATASET "
            f"({opts.COARSE_BOOST_DATASET!r}) and DATALOADER.SFNET.COARSE_BOOST_CLASSES "
            f"({boost_classes}); set both or neither"
        )
    bad = [c for c in boost_classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"DATALOADER.SFNET.COARSE_BOOST_CLASSES {bad} are not class ids "
                         f"0..{num_classes - 1}")

    records, rows = [], []
    for name in cfg.DATASETS.TRAIN:
        recs = _dataset_records(name)
        cents = _load_or_build_once_per_machine(
            name, [_label_file(r, name) for r in recs], num_classes, tile, cache_dir, threads)
        rows.append(_centroid_rows(cents, range(num_classes), offset=len(records)))
        records.extend(recs)
    num_images = len(records)
    fine_counts = np.bincount(np.concatenate(rows)[:, 3], minlength=num_classes)

    if boost_classes:
        name = opts.COARSE_BOOST_DATASET
        recs = _dataset_records(name)
        cents = _load_or_build_once_per_machine(
            name, [_label_file(r, name) for r in recs], num_classes, tile, cache_dir, threads)
        # keep only the coarse images that give a centroid of a boosted class
        used = np.unique(np.concatenate(
            [cents[c][:, 0] for c in boost_classes if c in cents] + [np.zeros(0, np.int64)]))
        new_index = np.full(len(recs), -1, dtype=np.int64)
        new_index[used] = np.arange(len(used))
        rows.append(_centroid_rows(cents, boost_classes, offset=len(records),
                                   keep_images=new_index))
        records.extend(recs[i] for i in used.tolist())
        logger.info(f"Coarse boosting: {len(used)} images of {name} add centroids of classes "
                    f"{boost_classes}")

    centroids = np.concatenate(rows)
    counts = np.bincount(centroids[:, 3], minlength=num_classes)
    header = "class: fine + coarse" if boost_classes else "class: count"
    logger.info(f"Class centroids ({header}): " + ", ".join(
        f"{c}: {fine_counts[c]}" + (f"+{counts[c] - fine_counts[c]}" if boost_classes else "")
        for c in range(num_classes)))
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if len(missing) == num_classes:
        raise ValueError(
            f"Class-uniform sampling found no centroid in {list(cfg.DATASETS.TRAIN)}: every label "
            f"map is smaller than DATALOADER.SFNET.CLASS_UNIFORM_TILE={tile} or has no class "
            "pixels. Lower the tile size (e.g. to the crop size) or set "
            "DATALOADER.SFNET.CLASS_UNIFORM_PCT 0"
        )
    if missing:
        logger.warning(f"Classes {missing} have no centroid and are never a class-uniform sample")
    return ClassUniformDataset(records, centroids), num_images


def build_sfnet_train_loader(cfg, mapper, seed: Optional[int] = None):
    """
    The training loader over ``DATASETS.TRAIN`` with ``mapper``: a resumable, reproducible
    ``TrainingStream`` (``train_stream.py``) whose index stream is a shuffled order of the images
    or, with ``DATALOADER.SFNET.CLASS_UNIFORM_PCT > 0``, the ``ClassUniformTrainingSampler`` over a
    ``ClassUniformDataset`` (seed: None = shared random seed, from cfg.SEED). Class-uniform
    sampling needs a mapper that crops around centroids (``crops_around_centroids``): semantic.
    Returns a ``SkipCollectingLoader`` (``.stream.set_state`` resumes it).
    """
    opts = cfg.DATALOADER.SFNET
    skip = opts.SKIP_BAD_SAMPLES
    if opts.CLASS_UNIFORM_PCT > 0 and not getattr(mapper, "crops_around_centroids", False):
        # the centroids come from semantic label maps and only a centroid-aware crop uses them
        raise ValueError(
            f"DATALOADER.SFNET.CLASS_UNIFORM_PCT={opts.CLASS_UNIFORM_PCT} asks for class-uniform "
            "sampling, which is for semantic segmentation only: it crops around class centroids, "
            f"and the dataset mapper {type(mapper).__name__} (INPUT.DATASET_MAPPER_NAME="
            f"{cfg.INPUT.DATASET_MAPPER_NAME!r}) does not. Set DATALOADER.SFNET.CLASS_UNIFORM_PCT "
            "0.0 (the K-Net configs do)")
    if opts.CLASS_UNIFORM_PCT <= 0:
        records = get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN), filter_empty=False)
        dataset = DatasetFromList(records, copy=False, serialize=True)
        n = len(dataset)
        return build_training_stream_loader(
            dataset, mapper, lambda s: shuffled_index_stream(n, s), cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_WORKERS, seed=seed, skip_bad_samples=skip)
    dataset, num_images = build_class_uniform_dataset(cfg)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_indices = dataset.class_indices(num_classes)

    def index_stream(stream_seed):
        # the global (unsharded) stream: TrainingStream shards it over processes itself
        return iter(ClassUniformTrainingSampler(
            num_images, class_indices, opts.CLASS_UNIFORM_PCT, mode=opts.CLASS_UNIFORM_MODE,
            seed=stream_seed, rank=0, world_size=1))

    sampler = ClassUniformTrainingSampler(num_images, class_indices, opts.CLASS_UNIFORM_PCT,
                                          mode=opts.CLASS_UNIFORM_MODE, seed=0, rank=0,
                                          world_size=1)  # validates the settings now
    if opts.CLASS_UNIFORM_MODE == "epoch":
        num_random, per_class = sampler.epoch_composition()
        logger.info(f"Class-uniform sampling (PCT {opts.CLASS_UNIFORM_PCT}, tile "
                    f"{opts.CLASS_UNIFORM_TILE}): each epoch = {num_random} random images + "
                    f"{per_class} centroid crops per class")
        if per_class == 0:
            logger.warning(
                f"int({num_images} images x PCT {opts.CLASS_UNIFORM_PCT} / {num_classes} classes) "
                "= 0: an epoch holds no centroid crop (official arithmetic). Use "
                "DATALOADER.SFNET.CLASS_UNIFORM_MODE random for so small a training set"
            )
    else:
        logger.info(f"Class-uniform sampling: each sample is a centroid crop with probability "
                    f"{opts.CLASS_UNIFORM_PCT}")
    return build_training_stream_loader(
        dataset, mapper, index_stream, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS,
        seed=seed, skip_bad_samples=skip, num_records=dataset.num_records)
