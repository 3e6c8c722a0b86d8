"""
Dataset mapper for SFNet semantic segmentation: reads the image and its label map, checks the
label (same size as the image, values in the class set or the ignore value: errors name the
file), applies the training augmentations and returns detectron2's ``image`` / ``sem_seg``.
A record from class-uniform sampling (``uniform_sampling.py``) carries ``sfnet_centroid``
((x, y) in the image): its training crop is placed around that point.
"""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from sfnet_d2.data.transforms import CentroidAugInput, build_sfnet_train_augmentations
from sfnet_d2.data.build import DATASET_MAPPER_REGISTRY

__all__ = ["SFNetSemanticDatasetMapper", "read_and_check_label"]


def read_image_checked(file_name: str, image_format: str) -> np.ndarray:
    """detectron2's ``read_image``, with an error that names the file when PIL cannot read it
    (unreadable, truncated, not an image): the training stream reports or skips it by name."""
    try:
        return utils.read_image(file_name, format=image_format)
    except (OSError, ValueError, SyntaxError) as e:
        raise OSError(f"Cannot read image file {file_name}: {e}") from e


def read_and_check_label(label_file: str, image_file: str, image_hw, num_classes: int,
                         ignore_label: int, validate: bool = True) -> np.ndarray:
    """Read a label PNG as an (H, W) array (its stored integer dtype) and validate it."""
    try:
        with Image.open(label_file) as im:
            label = np.asarray(im)
    except (OSError, ValueError) as e:
        raise OSError(f"Cannot read label file {label_file}: {e}") from e
    if label.ndim != 2:
        raise ValueError(
            f"Label file {label_file} has shape {label.shape}: expected a single-channel "
            "(H, W) map of train ids (e.g. *_labelTrainIds.png, not *_color.png)"
        )
    if validate:
        if label.shape != tuple(image_hw):
            raise ValueError(
                f"Label file {label_file} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
                f"{image_file} is {image_hw[1]}x{image_hw[0]}: a label must match its image size"
            )
        values = np.unique(label)
        bad = values[(values >= num_classes) & (values != ignore_label) | (values < 0)]
        if bad.size:
            raise ValueError(
                f"Label file {label_file} contains values {bad.tolist()[:10]} that are neither a "
                f"class id (0..{num_classes - 1}) nor the ignore value {ignore_label} "
                "(for Cityscapes, use *_labelTrainIds.png, not *_labelIds.png)"
            )
    return label


@DATASET_MAPPER_REGISTRY.register()
class SFNetSemanticDatasetMapper:
    # places the training crop around a record's ``sfnet_centroid``: class-uniform sampling
    # (DATALOADER.SFNET.CLASS_UNIFORM_PCT > 0) needs a mapper that says so
    crops_around_centroids = True

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations, image_format: str,
                 ignore_label: int, num_classes: int, validate_labels: bool = True):
        """
        NOTE: this interface is experimental.

        Args:
            is_train: training (augment, return ``sem_seg``) or inference (image only; the label,
                when the record has one, is still checked so bad data fails loudly).
            augmentations: detectron2 augmentations applied to image and label together.
            image_format: e.g. "RGB".
            ignore_label: label value excluded from loss and metrics (255).
            num_classes: number of classes; other label values are errors.
            validate_labels: check label size and values (INPUT.SFNET.VALIDATE_LABELS).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.num_classes = num_classes
        self.validate_labels = validate_labels
        logging.getLogger(__name__).info(
            f"[SFNetSemanticDatasetMapper] {'train' if is_train else 'test'} augmentations: "
            f"{augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        augs = []
        if is_train:
            jitter, blur = cfg.INPUT.SFNET.COLOR_JITTER, cfg.INPUT.SFNET.GAUSSIAN_BLUR
            augs = build_sfnet_train_augmentations(
                cfg.INPUT.SFNET.SCALE_RANGE, cfg.INPUT.SFNET.CROP_SIZE, cfg.INPUT.SFNET.FLIP_PROB,
                ignore,
                pad_mode=cfg.INPUT.SFNET.PAD_MODE,
                color_jitter=(jitter.BRIGHTNESS, jitter.CONTRAST, jitter.SATURATION, jitter.HUE)
                if jitter.ENABLED else None,
                blur_sigma_range=blur.SIGMA_RANGE if blur.ENABLED else None,
                blur_prob=blur.PROB,
                image_format=cfg.INPUT.FORMAT,
            )
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        if names:
            meta_ignore = MetadataCatalog.get(names[0]).get("ignore_label", ignore)
            if meta_ignore != ignore:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ignore} differs from the ignore_label "
                    f"{meta_ignore} of dataset {names[0]}; set them equal"
                )
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "validate_labels": cfg.INPUT.SFNET.VALIDATE_LABELS,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        label = None
        if label_file is not None:
            label = read_and_check_label(label_file, dataset_dict["file_name"], image.shape[:2],
                                         self.num_classes, self.ignore_label, self.validate_labels)
        elif self.is_train:
            raise ValueError(
                f"Dataset record for {dataset_dict['file_name']} has no 'sem_seg_file_name': "
                "semantic training needs a label map per image"
            )
        if not self.is_train:
            label = None  # evaluators read the ground truth themselves
        # class-uniform samples: the crop must contain this (x, y) pixel of the image; its
        # centre (+0.5) is what the geometric transforms move (exact under flips and resizes)
        centroid = dataset_dict.pop("sfnet_centroid", None) if self.is_train else None
        if centroid is not None:
            centroid = (centroid[0] + 0.5, centroid[1] + 0.5)
        aug_input = CentroidAugInput(image, sem_seg=label, centroid=centroid)
        self.augmentations(aug_input)
        image = aug_input.image
        # ascontiguousarray: flips return negative-stride views that torch cannot wrap
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return dataset_dict
