"""
The evaluators of a dataset, chosen by its metadata's ``evaluator_type`` for both tasks (the
trainer never asks which model it trains):

=============================  ==============================================================
evaluator_type                 evaluators
=============================  ==============================================================
``cityscapes_sem_seg``         ``CityscapesSemSegEvaluator`` (cityscapesscripts' class IoU and
                               iIoU; single machine)
``sem_seg`` (or none)          ``SemSegEvaluator`` (mIoU, fwIoU, per-class IoU and accuracy)
``coco_panoptic_seg``,         ``COCOPanopticEvaluator`` (PQ, SQ, RQ for all, things, stuff), plus
``cityscapes_panoptic_seg``    ``PanopticSemSegEvaluator`` (mIoU) when MODEL.KNET.TEST.SEMANTIC_ON
                               and the records carry semantic labels
=============================  ==============================================================

``TEST.SFNET.EVALUATOR`` overrides the choice for semantic datasets: "sem_seg" or "cityscapes"
force one, "submission" writes Cityscapes test-server PNGs instead of computing a metric.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (CityscapesSemSegEvaluator, COCOPanopticEvaluator,
                                   DatasetEvaluators, SemSegEvaluator)

from sfnet_d2.evaluation.cityscapes_submission import CityscapesSubmissionWriter

__all__ = ["build_evaluator", "PanopticSemSegEvaluator", "PANOPTIC_EVALUATOR_TYPES"]

logger = logging.getLogger(__name__)

PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")
_CHOICES = ("auto", "sem_seg", "cityscapes", "submission")


class PanopticSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` on a panoptic dataset: its category-id map covers things AND stuff
    (detectron2's only maps stuff, and fails on thing labels when writing its predictions)."""

    def __init__(self, dataset_name, **kwargs):
        super().__init__(dataset_name, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        merged = dict(meta.thing_dataset_id_to_contiguous_id)
        merged.update(meta.stuff_dataset_id_to_contiguous_id)
        self._contiguous_id_to_dataset_id = {v: k for k, v in merged.items()}


def _panoptic_evaluators(cfg, dataset_name, output_folder):
    evaluators = [COCOPanopticEvaluator(dataset_name, output_folder)]
    if cfg.MODEL.KNET.TEST.SEMANTIC_ON:
        first = DatasetCatalog.get(dataset_name)[0]
        if "sem_seg_file_name" in first:
            evaluators.append(PanopticSemSegEvaluator(dataset_name, distributed=True,
                                                      output_dir=output_folder))
        else:
            logger.info(f"{dataset_name} has no semantic labels (sem_seg_file_name): no mIoU")
    return DatasetEvaluators(evaluators)


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """The evaluator(s) of ``dataset_name`` (see the module docstring)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
    choice = cfg.TEST.SFNET.EVALUATOR
    if choice not in _CHOICES:
        raise ValueError(f"TEST.SFNET.EVALUATOR={choice!r} is not one of {list(_CHOICES)}")
    if evaluator_type in PANOPTIC_EVALUATOR_TYPES:
        return _panoptic_evaluators(cfg, dataset_name, output_folder)
    if choice == "submission":  # Cityscapes test-server PNGs (label ids), no metric
        return CityscapesSubmissionWriter(
            dataset_name, os.path.join(cfg.OUTPUT_DIR, "submission", dataset_name))
    if choice == "cityscapes" or (choice == "auto" and evaluator_type == "cityscapes_sem_seg"):
        return CityscapesSemSegEvaluator(dataset_name)
    return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
