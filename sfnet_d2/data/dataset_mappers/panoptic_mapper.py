"""
Dataset mapper for K-Net panoptic training (``SFNetKNet``): reads the image and its COCO-format
panoptic PNG, checks them, applies the augmentations to both (the PNG as an RGB segmentation map,
nearest interpolation) and returns ``image`` and ``instances`` with ``gt_classes`` (contiguous ids)
and ``gt_masks`` (BitMasks) for every non-crowd segment, things and stuff alike; the model splits
them by its class layout (as ZwwWayne/K-Net@5e50ee5 knet/det/knet.py ``forward_train`` and
knet/det/utils.py ``sem2ins_masks`` split thing and stuff masks). Crowd segments and VOID pixels
give no mask: they are background for every loss, as in K-Net.

Augmentations (``INPUT.KNET.AUGMENTATION``):

* ``ms_crop`` (paper section 4.5, COCO): flip; with probability CROP_PROB a resize of the short
  side to one of CROP_PRE_RESIZE and a random crop with sides in CROP_SIZE_RANGE; then a resize of
  the short side to one of INPUT.MIN_SIZE_TRAIN with the long side at most INPUT.MAX_SIZE_TRAIN
  (detectron2's DETR recipe, which the paper describes);
* ``ms`` (official K-Net ms-3x): short side uniformly in INPUT.MIN_SIZE_TRAIN (sampling
  INPUT.MIN_SIZE_TRAIN_SAMPLING), long side <= INPUT.MAX_SIZE_TRAIN, flip;
* ``scale_crop`` (paper section 4.5, Cityscapes): rescale by a factor in SCALE_RANGE, random crop
  of CROP_SIZE (the whole image where smaller), flip;
* ``none``: flip only.

Inference: short side INPUT.MIN_SIZE_TEST (long side <= INPUT.MAX_SIZE_TEST); 0 = original size.

Training runs on the resumable training stream (``sfnet_d2/data/train_stream.py``) like the
semantic models: every augmentation above draws only from numpy's global RNG, which the stream
re-seeds from (seed, position) before each sample, so a sample is the same in any worker and after
``--resume``. A bad sample (unreadable image or PNG, sizes that differ, segment ids or categories
the JSON does not explain) raises an error naming the file; the stream stops on it or, with
DATALOADER.SFNET.SKIP_BAD_SAMPLES, replaces and reports it. The crops of a batch differ in size:
the model pads them (``ImageList.from_tensors``), so no aspect-ratio grouping is needed.
"""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from PIL import Image

from sfnet_d2.data.dataset_mappers.semantic_mapper import read_image_checked
from sfnet_d2.data.transforms import RandomScale
from sfnet_d2.data.build import DATASET_MAPPER_REGISTRY

__all__ = ["KNetPanopticDatasetMapper", "build_knet_augmentations", "read_panoptic_png"]

AUGMENTATIONS = ("ms_crop", "ms", "scale_crop", "none")


def _pair(values, key):
    values = list(values)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"{key} must be [size] or [a, b] with positive values, got {values}")
    return tuple(values)


def build_knet_augmentations(cfg, is_train: bool):
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST <= 0:
            return []
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    k = cfg.INPUT.KNET
    flip = [T.RandomFlip(prob=k.FLIP_PROB, horizontal=True)] if k.FLIP_PROB > 0 else []
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                  cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    if k.AUGMENTATION == "ms_crop":
        crop = T.AugmentationList([
            T.ResizeShortestEdge(list(k.CROP_PRE_RESIZE), sample_style="choice"),
            T.RandomCrop("absolute_range", _pair(k.CROP_SIZE_RANGE, "INPUT.KNET.CROP_SIZE_RANGE")),
        ])
        return flip + [T.RandomApply(crop, prob=k.CROP_PROB), resize]
    if k.AUGMENTATION == "ms":
        return [resize] + flip
    if k.AUGMENTATION == "scale_crop":
        lo, hi = _pair(k.SCALE_RANGE, "INPUT.KNET.SCALE_RANGE")
        if lo > hi:
            raise ValueError(f"INPUT.KNET.SCALE_RANGE must be [min, max], got {[lo, hi]}")
        crop = _pair(k.CROP_SIZE, "INPUT.KNET.CROP_SIZE")
        return [RandomScale(lo, hi, Image.BILINEAR), T.RandomCrop("absolute", crop)] + flip
    if k.AUGMENTATION == "none":
        return flip
    raise ValueError(f"INPUT.KNET.AUGMENTATION={k.AUGMENTATION!r} is not one of {AUGMENTATIONS}")


def read_panoptic_png(png_file: str, image_file: str, image_hw) -> np.ndarray:
    """The panoptic PNG as (H, W, 3) uint8, checked against its image's size."""
    try:
        with Image.open(png_file) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise OSError(f"Cannot read the panoptic PNG {png_file} of image {image_file}: {e}") from e
    if rgb.shape[:2] != tuple(image_hw):
        raise ValueError(
            f"Panoptic PNG {png_file} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but its image "
            f"{image_file} is {image_hw[1]}x{image_hw[0]}"
        )
    return rgb


def _rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@DATASET_MAPPER_REGISTRY.register()
class KNetPanopticDatasetMapper:
    @configurable
    def __init__(self, is_train: bool = True, *, augmentations, image_format: str,
                 num_classes: int, validate: bool = True):
        """
        NOTE: this interface is experimental.

        Args:
            is_train: training (augment, return ``instances``) or inference (image only).
            augmentations: detectron2 augmentations applied to the image and the panoptic PNG.
            image_format: e.g. "RGB".
            num_classes: number of contiguous classes; other category ids are errors.
            validate: check that every segment id in the PNG is in the record's segments_info
                (INPUT.SFNET.VALIDATE_LABELS).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.validate = validate
        logging.getLogger(__name__).info(
            f"[KNetPanopticDatasetMapper] {'train' if is_train else 'test'} augmentations: "
            f"{augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        from sfnet_d2.modeling.meta_arch.knet import knet_metadata_dataset

        meta = MetadataCatalog.get(knet_metadata_dataset(cfg))
        num_classes = (len(meta.get("thing_dataset_id_to_contiguous_id", {}))
                       + len(meta.get("stuff_dataset_id_to_contiguous_id", {})))
        return {
            "is_train": is_train,
            "augmentations": build_knet_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes,
            "validate": cfg.INPUT.SFNET.VALIDATE_LABELS,
        }

    def _check_segments(self, ids: np.ndarray, record) -> None:
        listed = {s["id"] for s in record["segments_info"]}
        present = set(np.unique(ids).tolist()) - {0}
        unlisted = sorted(present - listed)
        if unlisted:
            raise ValueError(
                f"Image {record['file_name']}: its panoptic PNG {record['pan_seg_file_name']} has "
                f"segment id(s) {unlisted[:10]} that its segments_info in the JSON does not list "
                "(segment id = R + 256 G + 256^2 B; 0 is VOID)"
            )
        for s in record["segments_info"]:
            if not 0 <= s["category_id"] < self.num_classes:
                raise ValueError(
                    f"Image {record['file_name']}: segment {s['id']} has contiguous category id "
                    f"{s['category_id']}, outside 0..{self.num_classes - 1} of the model's classes"
                )

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        pan_rgb = None
        if self.is_train:
            if "pan_seg_file_name" not in dataset_dict:
                raise ValueError(
                    f"Dataset record for {dataset_dict['file_name']} has no 'pan_seg_file_name': "
                    "K-Net training needs a panoptic dataset (COCO panoptic format)"
                )
            pan_rgb = read_panoptic_png(dataset_dict["pan_seg_file_name"],
                                        dataset_dict["file_name"], image.shape[:2])
            if self.validate:
                self._check_segments(_rgb2id(pan_rgb), dataset_dict)
        aug_input = T.AugInput(image, sem_seg=pan_rgb)
        self.augmentations(aug_input)
        image = aug_input.image
        # ascontiguousarray: flips return negative-stride views that torch cannot wrap
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict
        ids = _rgb2id(aug_input.sem_seg)
        classes, masks = [], []
        for seg in dataset_dict["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            mask = ids == seg["id"]
            if mask.any():
                classes.append(seg["category_id"])
                masks.append(mask)
        instances = Instances(image.shape[:2])
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        if masks:
            instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(np.stack(masks))))
        else:
            instances.gt_masks = BitMasks(torch.zeros((0,) + image.shape[:2], dtype=torch.bool))
        dataset_dict["instances"] = instances
        return dataset_dict
