"""
Checks of a merged config that catch mistakes before any data is read or any weight is loaded.

yacs already rejects unknown keys ("Non-existent config key: ...") and values of the wrong type
("Type mismatch ... for config key: ..."), naming the key. ``check_config`` adds what yacs cannot
know: that the model the config describes can be built (backbone levels and head inputs fit
together) and that the head's class count and ignore value agree with the datasets' metadata.
"""
import logging

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

__all__ = ["check_config", "ConfigConsistencyError"]

logger = logging.getLogger(__name__)


class ConfigConsistencyError(ValueError):
    pass


def _check_semantic_classes(cfg):
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            if name not in MetadataCatalog.list():
                continue  # an unregistered name fails later with detectron2's own message
            meta = MetadataCatalog.get(name)
            classes = meta.get("stuff_classes", None)
            if classes is not None and len(classes) != num_classes:
                raise ConfigConsistencyError(
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but dataset {name} "
                    f"(DATASETS.{key}) has {len(classes)} classes; set "
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}"
                )
            label = meta.get("ignore_label", None)
            if label is not None and label != ignore:
                raise ConfigConsistencyError(
                    f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ignore} but dataset {name} ignores label "
                    f"{label}; set MODEL.SEM_SEG_HEAD.IGNORE_VALUE {label}"
                )


def check_config(cfg, build: bool = True):
    """Raise ``ConfigConsistencyError`` (naming the key) if ``cfg`` cannot work.

    ``build=True`` also constructs the model once on the ``meta`` device (no memory, no weights),
    so that a backbone/head combination that does not fit is reported here, before data loading.
    """
    if cfg.MODEL.META_ARCHITECTURE not in ("SemanticSegmentor", "SFNetSemanticSegmentor"):
        return  # other meta-architectures (K-Net) check their own settings when built
    _check_semantic_classes(cfg)
    if not build:
        return
    meta_cfg = cfg.clone()
    meta_cfg.defrost()
    meta_cfg.MODEL.DEVICE = "meta"
    meta_cfg.MODEL.WEIGHTS = ""
    try:
        with torch.device("meta"):
            build_model(meta_cfg)
    except (ValueError, KeyError, AssertionError, RuntimeError) as e:
        raise ConfigConsistencyError(
            f"The model of this config cannot be built: {e} "
            f"(MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME}, "
            f"MODEL.SEM_SEG_HEAD.NAME={cfg.MODEL.SEM_SEG_HEAD.NAME}, "
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES={list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)})"
        ) from e
