"""
What the training stream of a config gives the model, drawn: ``projects/SFNet/visualize_data.py``
(detectron2's ``tools/visualize_data.py``, for sfnet-d2's loaders). Use it to check a new dataset
or a change of augmentation before a long run.

* ``source="dataloader"``: the batches of ``sfnet_d2.data.build_train_loader(cfg)``, the stream
  training reads (the mapper of ``INPUT.DATASET_MAPPER_NAME``, class-uniform sampling, seeded by
  ``cfg.SEED`` when it is >= 0): every augmented crop (after scaling, padding, cropping, flipping
  and the photometric changes) with its semantic labels (``sem_seg``; ignored pixels, 255, are
  not drawn) or, for K-Net, its panoptic segments (``instances``: one mask and class per
  segment, things and stuff). Pictures ``iter{iteration:06d}_{index:02d}_{image}.png``.
* ``source="annotation"``: the records of ``DATASETS.TRAIN`` as they are on disk, without any
  augmentation: the label PNG, or the panoptic PNG and its segments. Pictures
  ``{index:06d}_{image}.png``.

Drawn with detectron2's ``Visualizer`` (``draw_sem_seg`` / ``draw_panoptic_seg``, opacity 0.5,
every region however small) with the metadata of the first training dataset; each picture has
the size of the image it shows.
"""
import itertools
import logging
import os
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

__all__ = ["SOURCES", "draw_training_sample", "draw_dataset_record", "panoptic_from_instances",
           "iter_training_pictures", "visualize_training_data"]

SOURCES = ("dataloader", "annotation")
ALPHA = 0.5

logger = logging.getLogger("sfnet_d2")


def _thing_ids(metadata) -> set:
    """The contiguous ids of the thing classes (Visualizer draws things and stuff differently)."""
    return set(metadata.get("thing_dataset_id_to_contiguous_id", {}).values())


def panoptic_from_instances(instances, metadata) -> Tuple[torch.Tensor, List[Dict]]:
    """The (H, W) segment-id map (0 = no segment) and segments info of a K-Net training target
    (``gt_masks``, ``gt_classes``: contiguous ids), as ``Visualizer.draw_panoptic_seg`` takes
    them. The masks come from one panoptic PNG, so they do not overlap."""
    masks = instances.gt_masks.tensor
    ids = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    things = _thing_ids(metadata)
    segments = []
    for i, (mask, category) in enumerate(zip(masks, instances.gt_classes.tolist()), start=1):
        ids[mask] = i
        segments.append({"id": i, "category_id": int(category), "isthing": category in things})
    return ids, segments


def draw_training_sample(sample: Dict, metadata, input_format: str) -> np.ndarray:
    """One mapped training sample (``image`` (3, H, W) in ``input_format``, and ``sem_seg`` (H, W)
    or ``instances``) drawn as an (H, W, 3) uint8 RGB picture."""
    image = utils.convert_image_to_rgb(sample["image"].permute(1, 2, 0).numpy(), input_format)
    visualizer = Visualizer(image, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    if "sem_seg" in sample:
        labels = sample["sem_seg"].numpy()
        return visualizer.draw_sem_seg(labels, area_threshold=0, alpha=ALPHA).get_image()
    if "instances" in sample:
        ids, segments = panoptic_from_instances(sample["instances"], metadata)
        return visualizer.draw_panoptic_seg(ids, segments, area_threshold=0,
                                            alpha=ALPHA).get_image()
    raise ValueError(f"Training sample of {sample.get('file_name', '?')} has neither 'sem_seg' "
                     f"nor 'instances' (keys {sorted(sample)}): nothing to draw")


def draw_dataset_record(record: Dict, metadata) -> np.ndarray:
    """A dataset record as it is on disk: the panoptic PNG and its ``segments_info`` when it has
    one (K-Net datasets), else its ``sem_seg_file_name`` labels."""
    image = utils.read_image(record["file_name"], format="RGB")
    visualizer = Visualizer(image, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    if "pan_seg_file_name" in record:
        from panopticapi.utils import rgb2id

        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        # Cityscapes records do not say which segments are things; the metadata does
        things = _thing_ids(metadata)
        segments = [dict(s, isthing=s.get("isthing", s["category_id"] in things))
                    for s in record["segments_info"]]
        return visualizer.draw_panoptic_seg(torch.as_tensor(ids.astype(np.int64)), segments,
                                            area_threshold=0, alpha=ALPHA).get_image()
    if "sem_seg_file_name" in record:
        labels = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.uint8)
        return visualizer.draw_sem_seg(labels, area_threshold=0, alpha=ALPHA).get_image()
    raise ValueError(f"Dataset record of {record['file_name']} has neither 'pan_seg_file_name' "
                     "nor 'sem_seg_file_name': nothing to draw")


def _stem(record: Dict) -> str:
    return os.path.splitext(os.path.basename(record.get("file_name", "image")))[0]


def _training_samples(cfg) -> Iterator[Tuple[str, Dict]]:
    from detectron2.utils.env import seed_all_rng

    from sfnet_d2.data import build_train_loader

    if cfg.SEED >= 0:  # the stream's seed comes from the global RNG, as when training starts
        seed_all_rng(cfg.SEED)
    for iteration, batch in enumerate(build_train_loader(cfg)):
        for index, sample in enumerate(batch):
            yield f"iter{iteration:06d}_{index:02d}_{_stem(sample)}", sample


def _dataset_records(cfg) -> Iterator[Tuple[str, Dict]]:
    records = itertools.chain.from_iterable(DatasetCatalog.get(n) for n in cfg.DATASETS.TRAIN)
    for index, record in enumerate(records):
        yield f"{index:06d}_{_stem(record)}", record


def iter_training_pictures(cfg, output_dir: str, num_images: int = 20,
                           source: str = "dataloader") -> Iterator[Tuple[str, Dict]]:
    """Draw and save ``num_images`` pictures (see the module docstring) into ``output_dir``;
    yields (path, the sample or record drawn) after each one."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {SOURCES}")
    if num_images <= 0:
        raise ValueError(f"--num-images {num_images}: expected a positive number")
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: there is no training data to show")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output {output_dir} is an existing file, not a folder: pass "
                                 "a folder (it is created if missing)")
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    items = _training_samples(cfg) if source == "dataloader" else _dataset_records(cfg)
    for name, item in itertools.islice(items, num_images):
        if source == "dataloader":
            picture = draw_training_sample(item, metadata, cfg.INPUT.FORMAT)
        else:
            picture = draw_dataset_record(item, metadata)
        path = os.path.join(output_dir, f"{name}.png")
        Image.fromarray(picture).save(path)
        yield path, item


def visualize_training_data(cfg, output_dir: str, num_images: int = 20,
                            source: str = "dataloader", progress: bool = True) -> List[str]:
    """``iter_training_pictures`` with a progress bar; returns the paths written."""
    from tqdm import tqdm

    pictures = iter_training_pictures(cfg, output_dir, num_images, source)
    paths = [path for path, _ in tqdm(pictures, total=num_images, desc="training data",
                                      unit="img", disable=not progress)]
    logger.info(f"Wrote {len(paths)} picture(s) of the {source} to {os.path.abspath(output_dir)}")
    return paths
