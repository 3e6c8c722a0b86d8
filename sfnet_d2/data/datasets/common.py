"""
Helpers shared by the dataset modules: layout checks whose errors name the missing folder, the
expected layout and the command that fixes it; pairing images with label files; registration;
the 19-class Cityscapes metadata every driving dataset here is mapped into.
"""
import copy
import os
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

__all__ = [
    "DatasetLayoutError",
    "cityscapes19_metadata",
    "datasets_root",
    "list_files",
    "pair_images_with_labels",
    "register_sem_seg",
    "register_sem_seg_splits",
    "require_dir",
]

IGNORE_LABEL = 255


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder or file is missing; the message names it, the expected layout and the fix.

    A subclass of FileNotFoundError so that callers may catch either.
    """


def datasets_root() -> str:
    """The root all datasets are registered under: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _message(dataset: str, problem: str, layout: str, hint: str) -> str:
    msg = f"{dataset}: {problem}\nExpected layout:\n{layout.rstrip()}"
    if hint:
        msg += f"\n{hint.strip()}"
    return msg


def require_dir(path: str, dataset: str, layout: str, hint: str = "") -> str:
    if not os.path.isdir(path):
        raise DatasetLayoutError(_message(dataset, f"folder {path} does not exist.", layout, hint))
    return path


def list_files(folder: str, suffixes: Sequence[str], depth: int = 0) -> List[str]:
    """Sorted paths of the files directly in ``folder`` (depth 0) or in its sub-folders (depth 1,
    e.g. Cityscapes' city folders) whose names end with one of ``suffixes``."""
    suffixes = tuple(suffixes)
    folders = [folder]
    if depth == 1:
        folders = sorted(os.path.join(folder, d) for d in os.listdir(folder)
                         if os.path.isdir(os.path.join(folder, d)))
    elif depth != 0:
        raise ValueError(f"depth must be 0 or 1, got {depth}")
    files = []
    for d in folders:
        files.extend(os.path.join(d, f) for f in os.listdir(d) if f.endswith(suffixes))
    return sorted(files)


def pair_images_with_labels(
    images: Iterable[str],
    label_for_image: Callable[[str], str],
    *,
    dataset: str,
    image_dir: str,
    layout: str,
    hint: str = "",
) -> List[Tuple[str, str]]:
    """(image, label) pairs; every image must have its label file, and there must be images.

    Nothing is skipped silently: a missing label is an error naming how many are missing and one
    example, since a half-prepared dataset would otherwise train on a subset without notice.
    """
    images = list(images)
    if not images:
        raise DatasetLayoutError(_message(dataset, f"no images found under {image_dir}.", layout, hint))
    pairs = [(img, label_for_image(img)) for img in images]
    missing = [(img, lab) for img, lab in pairs if not os.path.isfile(lab)]
    if missing:
        img, lab = missing[0]
        raise DatasetLayoutError(_message(
            dataset,
            f"{len(missing)} of {len(pairs)} images under {image_dir} have no label file, "
            f"e.g. {lab} (for image {img}) does not exist.",
            layout, hint,
        ))
    return pairs


def records_from_pairs(pairs: Iterable[Tuple[str, str]]) -> List[Dict]:
    """detectron2 semantic-segmentation dicts (the same fields as detectron2's ``load_sem_seg``)."""
    return [{"file_name": img, "sem_seg_file_name": lab} for img, lab in pairs]


def cityscapes19_metadata(evaluator_type: str = "sem_seg") -> Dict:
    """Metadata of the 19 Cityscapes training classes (trainIds 0..18, 255 ignored)."""
    stuff = sorted((c for c in CITYSCAPES_CATEGORIES if c["trainId"] != 255),
                   key=lambda c: c["trainId"])
    assert [c["trainId"] for c in stuff] == list(range(19))
    return {
        "stuff_classes": [c["name"] for c in stuff],
        "stuff_colors": [tuple(c["color"]) for c in stuff],
        "evaluator_type": evaluator_type,
        "ignore_label": IGNORE_LABEL,
    }


def register_sem_seg(name: str, loader: Callable[[], List[Dict]], metadata: Dict):
    """Register ``name`` (replacing an earlier registration, e.g. detectron2's own or one under
    another root) with a lazy loader: nothing on disk is touched until the dataset is loaded."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_sem_seg_splits(
    name_template: str,
    splits: Iterable[str],
    load_split: Callable[[str, str], List[Dict]],
    datasets_root: str,
    metadata: Dict,
):
    """Register ``name_template.format(split=split)`` for every split, loaded lazily by
    ``load_split(datasets_root, split)``. Each split gets its own copy of ``metadata``, so that
    changing one split's metadata in place leaves the others alone."""
    for split in splits:
        register_sem_seg(
            name_template.format(split=split),
            lambda s=split: load_split(datasets_root, s),
            copy.deepcopy(metadata),
        )
