"""
What ``projects/SFNet/train_net.py`` needs for the K-Net meta-architecture ("SFNetKNet"): data
loaders with the panoptic mapper, the evaluators, and K-Net's optimizer
(ZwwWayne/K-Net@5e50ee5 configs/det/common/mstrain_3x_coco_panoptic.py and
configs/det/_base_/schedules/schedule_1x.py):

* AdamW (SOLVER.KNET.OPTIMIZER), SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY, the learning rate of every
  parameter under ``backbone.`` multiplied by SOLVER.KNET.BACKBONE_MULTIPLIER (mmcv
  ``custom_keys={'backbone': lr_mult 0.25}``: the SFNet neck is not under "backbone" and keeps the
  base rate); norm parameters use SOLVER.WEIGHT_DECAY_NORM, biases SOLVER.WEIGHT_DECAY_BIAS;
* gradient clipping of the whole model's norm (mmcv ``grad_clip=dict(max_norm=1, norm_type=2)``)
  with SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"; "value" / "norm" are detectron2's per-parameter
  clipping.
* evaluators: detectron2's ``COCOPanopticEvaluator`` (PQ, SQ, RQ; all, things, stuff) for datasets
  whose evaluator_type is coco_panoptic_seg or cityscapes_panoptic_seg, plus ``SemSegEvaluator``
  (mIoU) when MODEL.KNET.TEST.SEMANTIC_ON and the dataset records carry ``sem_seg_file_name``
  (Cityscapes panoptic does: its labelTrainIds).
"""
import itertools
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import build_detection_train_loader
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.solver.build import maybe_add_gradient_clipping

from sfnet_d2.data.dataset_mappers.panoptic_mapper import KNetPanopticDatasetMapper

__all__ = ["is_knet", "build_knet_optimizer", "build_knet_train_loader", "build_knet_test_loader",
           "build_knet_evaluator"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm,
               torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)


def is_knet(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SFNetKNet"


def _param_groups(cfg, model):
    s = cfg.SOLVER
    groups, seen = {}, set()
    for module_name, module in model.named_modules():
        # also detectron2's NaiveSyncBatchNorm and any other *Norm* layer
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            lr = s.BASE_LR
            if full.startswith("backbone."):
                lr *= s.KNET.BACKBONE_MULTIPLIER
            if is_norm:
                wd = s.WEIGHT_DECAY_NORM
            elif name == "bias":
                wd = s.WEIGHT_DECAY_BIAS if s.WEIGHT_DECAY_BIAS is not None else s.WEIGHT_DECAY
                lr *= s.BIAS_LR_FACTOR
            else:
                wd = s.WEIGHT_DECAY
            groups.setdefault((lr, wd), []).append(p)
    # one group per (lr, weight decay): few groups keep the optimizer's multi-tensor path
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _with_full_model_clipping(optimizer_class, max_norm: float, norm_type: float):
    class FullModelClippingOptimizer(optimizer_class):
        def step(self, closure=None):
            params = itertools.chain(*(g["params"] for g in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelClippingOptimizer.__name__ = optimizer_class.__name__ + "WithFullModelGradientClip"
    return FullModelClippingOptimizer


def build_knet_optimizer(cfg, model) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    name = s.KNET.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_class, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_class, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        raise ValueError(f"SOLVER.KNET.OPTIMIZER={s.KNET.OPTIMIZER!r} is not 'ADAMW' or 'SGD'")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = _with_full_model_clipping(optimizer_class, clip.CLIP_VALUE,
                                                    clip.NORM_TYPE)
        return optimizer_class(_param_groups(cfg, model), lr=s.BASE_LR, **kwargs)
    optimizer = optimizer_class(_param_groups(cfg, model), lr=s.BASE_LR, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer)


def build_knet_train_loader(cfg):
    return build_detection_train_loader(cfg, mapper=KNetPanopticDatasetMapper(cfg, True))


def build_knet_test_loader(cfg, dataset_name):
    return build_detection_test_loader(cfg, dataset_name,
                                       mapper=KNetPanopticDatasetMapper(cfg, False))


class PanopticSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` on a panoptic dataset: its category-id map covers things AND stuff
    (detectron2's only maps stuff, and fails on thing labels when writing its predictions)."""

    def __init__(self, dataset_name, **kwargs):
        super().__init__(dataset_name, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        merged = dict(meta.thing_dataset_id_to_contiguous_id)
        merged.update(meta.stuff_dataset_id_to_contiguous_id)
        self._contiguous_id_to_dataset_id = {v: k for k, v in merged.items()}


def build_knet_evaluator(cfg, dataset_name, output_folder=None):
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in ("coco_panoptic_seg", "cityscapes_panoptic_seg"):
        raise ValueError(
            f"Dataset {dataset_name} (DATASETS.TEST) has evaluator_type {evaluator_type!r}; the "
            "K-Net model is evaluated on panoptic datasets (coco_panoptic_seg or "
            "cityscapes_panoptic_seg)"
        )
    evaluators = [COCOPanopticEvaluator(dataset_name, output_folder)]
    if cfg.MODEL.KNET.TEST.SEMANTIC_ON:
        first = DatasetCatalog.get(dataset_name)[0]
        if "sem_seg_file_name" in first:
            evaluators.append(PanopticSemSegEvaluator(dataset_name, distributed=True,
                                                      output_dir=output_folder))
        else:
            logger.info(f"{dataset_name} has no semantic labels (sem_seg_file_name): no mIoU")
    return DatasetEvaluators(evaluators)
