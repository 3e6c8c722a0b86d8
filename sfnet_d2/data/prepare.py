"""
One-off label preparation behind ``projects/SFNet/prepare_{mapillary,idd,camvid,ade20k}.py``
(their shared options: ``add_prepare_arguments``; ``prepare_from_args`` runs them):
each original label file is converted once into the trainId PNG the loader reads (the table
below), with a progress bar; existing outputs are kept unless ``--overwrite``, so an interrupted
run resumes where it stopped.

==========  ===============================================  ==========================================
dataset     reads                                            writes
==========  ===============================================  ==========================================
mapillary   {training,validation}/labels/*.png (v1.2)        {training,validation}/labels_cityscapes19/
idd         gtFine/SPLIT/SEQ/*_gtFine_polygons.json          gtFine/SPLIT/SEQ/*_gtFine_labelcsTrainIds.png
camvid      SPLITannot/*.png                                 SPLITannot_ignore255/*.png
ade20k      annotations/{training,validation}/*.png          annotations_detectron2/{training,validation}/
==========  ===============================================  ==========================================
"""
import argparse
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfnet_d2.data.datasets import ade20k, camvid, idd, mapillary_vistas
from sfnet_d2.data.datasets.common import DatasetLayoutError, datasets_root, list_files, require_dir
from sfnet_d2.data.datasets.label_mapping import convert_label_files, default_num_workers

__all__ = ["PREPARERS", "add_prepare_arguments", "prepare_dataset", "prepare_from_args"]

logger = logging.getLogger(__name__)
Job = Tuple[str, str]


def _mapillary_jobs(root: str, split: str, **_) -> Tuple[List[Job], Callable[[str], np.ndarray]]:
    config = mapillary_vistas.mapillary_config_file(root)
    if config:
        mapillary_vistas.check_mapillary_config(config)
    else:
        logger.warning(f"No config.json / config_v1.2.json in {root}: cannot check that the labels "
                       "are Mapillary Vistas v1.2 (label values are still checked to be 0..65)")
    src_dir = mapillary_vistas.mapillary_raw_label_dir(root, split)
    # next to images/, whichever zip the labels came from (v1.2: labels/, v2.0: v1.2/labels/)
    dst_dir = os.path.join(mapillary_vistas.split_dir(root, split), mapillary_vistas.PREPARED_DIR)
    jobs = [(f, os.path.join(dst_dir, os.path.basename(f))) for f in list_files(src_dir, [".png"])]
    return jobs, mapillary_vistas.convert_mapillary_label


def _idd_jobs(root: str, split: str, from_label_ids: bool = False, **_):
    if split not in idd.SPLITS:
        raise ValueError(f"IDD split must be one of {idd.SPLITS}, got {split!r}")
    gt_dir = require_dir(os.path.join(root, "gtFine", split), "IDD", idd.LAYOUT)
    suffix = idd.LABEL_IDS_SUFFIX if from_label_ids else idd.POLYGONS_SUFFIX
    sources = list_files(gt_dir, [suffix], depth=1)
    jobs = [(f, f[: -len(suffix)] + idd.PREPARED_SUFFIX) for f in sources]
    convert = idd.convert_idd_label_ids if from_label_ids else idd.convert_idd_polygons
    return jobs, convert


def _camvid_jobs(root: str, split: str, **_):
    if split not in camvid.SPLITS:
        raise ValueError(f"CamVid split must be one of {camvid.SPLITS}, got {split!r}")
    src_dir = require_dir(os.path.join(root, split + "annot"), "CamVid", camvid.LAYOUT)
    dst_dir = os.path.join(root, split + camvid.PREPARED_SUFFIX)
    jobs = [(f, os.path.join(dst_dir, os.path.basename(f))) for f in list_files(src_dir, [".png"])]
    return jobs, camvid.convert_camvid_label


def _ade20k_jobs(root: str, split: str, **_):
    if split not in ade20k.SPLIT_DIRS:
        raise ValueError(f"ADE20k split must be one of {sorted(ade20k.SPLIT_DIRS)}, got {split!r}")
    sub = ade20k.SPLIT_DIRS[split]
    src_dir = require_dir(os.path.join(root, "annotations", sub), "ADE20k", ade20k.LAYOUT)
    dst_dir = os.path.join(root, "annotations_detectron2", sub)
    jobs = [(f, os.path.join(dst_dir, os.path.basename(f))) for f in list_files(src_dir, [".png"])]
    return jobs, ade20k.convert_ade20k_label


# dataset -> (folder under $DETECTRON2_DATASETS, splits, job builder)
PREPARERS: Dict[str, Tuple[str, Sequence[str], Callable]] = {
    "mapillary": (mapillary_vistas.MAPILLARY_ROOT_NAME, ("train", "val"), _mapillary_jobs),
    "idd": (idd.IDD_ROOT_NAME, idd.SPLITS, _idd_jobs),
    "camvid": (camvid.CAMVID_ROOT_NAME, camvid.SPLITS, _camvid_jobs),
    "ade20k": (ade20k.ADE20K_ROOT_NAME, ("train", "val"), _ade20k_jobs),
}


def prepare_dataset(dataset: str, root: str, splits: Optional[Sequence[str]] = None, *,
                    overwrite: bool = False, num_workers: Optional[int] = 1,
                    **options) -> Dict[str, Dict[str, int]]:
    """Convert the labels of ``splits`` of the dataset at ``root``; returns, per split, the numbers
    of files written and kept."""
    _, all_splits, build_jobs = PREPARERS[dataset]
    summary = {}
    for split in splits or all_splits:
        jobs, convert = build_jobs(root, split, **options)
        if not jobs:
            raise DatasetLayoutError(f"{dataset}: no label files to convert for split {split!r} "
                                     f"under {root}; check the layout in docs/DATASETS.md")
        summary[split] = convert_label_files(jobs, convert, overwrite=overwrite,
                                             num_workers=default_num_workers(num_workers),
                                             desc=f"{dataset} {split}")
    return summary


def add_prepare_arguments(parser: argparse.ArgumentParser, dataset: str) -> argparse.ArgumentParser:
    """Add the options shared by the ``prepare_*.py`` commands to ``parser`` (as detectron2's
    ``default_argument_parser`` does for training): ``--root`` (default
    ``$DETECTRON2_DATASETS/<the dataset's folder>``), ``--splits``, ``--overwrite``,
    ``--num-workers``. ``prepare_from_args`` runs what they ask for."""
    folder, splits, _ = PREPARERS[dataset]
    parser.add_argument("--root", default=os.path.join(datasets_root(), folder),
                        help="the dataset folder (default: %(default)s, from $DETECTRON2_DATASETS)")
    parser.add_argument("--splits", nargs="+", choices=list(splits), default=list(splits))
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite outputs that already exist (default: keep them)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="processes (default: min(8, CPUs))")
    return parser


def prepare_from_args(dataset: str, args: argparse.Namespace) -> Dict[str, Dict[str, int]]:
    """``prepare_dataset`` with the options of ``add_prepare_arguments`` (any other attribute of
    ``args``, e.g. IDD's ``from_label_ids``, is passed on as a dataset option); prints one line
    per split and returns the summary."""
    options = {k: v for k, v in vars(args).items()
               if k not in ("root", "splits", "overwrite", "num_workers")}
    summary = prepare_dataset(dataset, args.root, args.splits, overwrite=args.overwrite,
                              num_workers=args.num_workers, **options)
    for split, counts in summary.items():
        print(f"{dataset} {split}: {counts['written']} label file(s) written, "
              f"{counts['kept']} existing kept" + ("" if not counts["kept"] else
                                                   " (--overwrite rewrites them)"))
    return summary
