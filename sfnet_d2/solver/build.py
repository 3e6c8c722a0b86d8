"""
``build_optimizer(cfg, model)``: the one optimizer builder of every sfnet-d2 model, semantic or
panoptic, configured by ``SOLVER.OPTIMIZER.*`` and detectron2's ``SOLVER.*`` keys.

Per-parameter rules, the same for every model (detectron2 v0.6 ``get_default_optimizer_params``,
applied in this order):

1. learning rate ``SOLVER.BASE_LR``, weight decay ``SOLVER.WEIGHT_DECAY``;
2. parameters of normalisation layers (detectron2's list of layer types, below): weight decay
   ``SOLVER.WEIGHT_DECAY_NORM``;
3. biases (norm biases included): learning rate x ``SOLVER.BIAS_LR_FACTOR``, weight decay
   ``SOLVER.WEIGHT_DECAY_BIAS`` when it is not None;
4. learning rate x ``SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER`` for parameters under ``backbone.``,
   x ``SOLVER.OPTIMIZER.HEAD_MULTIPLIER`` for every other one (the decode head of a semantic
   model; K-Net's neck, kernel head and update stages).

Groups are formed as detectron2 forms them (one group per distinct set of overrides, first seen in
``model.modules()`` order; the weight decay is written into a group only where rule 2 or 3 set it,
the others take the optimizer's default ``SOLVER.WEIGHT_DECAY``), so with "SGD" and both
multipliers 1 the optimizer equals detectron2's ``build_optimizer``.

Recipes: SFNet = SGD (detectron2's). SegFormer's ADE20k recipe (NVlabs/SegFormer
``local_configs/segformer/B0/segformer.b0.512x512.ade.160k.py``) = AdamW, head lr x10
(``paramwise_cfg`` 'head' lr_mult 10), no decay on norms ('norm' decay_mult 0). K-Net's
(ZwwWayne/K-Net@5e50ee5 ``configs/det/knet/knet_s3_r50_fpn_ms-3x_coco-panoptic.py``) = AdamW,
backbone lr x0.25 (``custom_keys={'backbone': dict(lr_mult=0.25)}``), weight decay on every
parameter (mmcv's default: the configs set ``WEIGHT_DECAY_NORM = WEIGHT_DECAY``), and
``grad_clip=dict(max_norm=1, norm_type=2)``: the gradient norm of the whole model, which is
``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` here ("value" / "norm" are detectron2's
per-parameter clipping).
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["build_optimizer", "get_optimizer_params", "OPTIMIZERS", "CLIP_TYPES"]

# detectron2 v0.6's list (solver/build.py); its NaiveSyncBatchNorm subclasses BatchNorm2d, and
# FrozenBatchNorm2d has no parameters.
NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
OPTIMIZERS = ("SGD", "ADAMW")
# "value" / "norm": detectron2's per-parameter clipping; "full_model": the norm of all gradients
CLIP_TYPES = ("value", "norm", "full_model")
_BACKBONE_PREFIX = "backbone."


def _checked_optimizer_name(cfg) -> str:
    node = cfg.SOLVER.OPTIMIZER
    name = node.NAME.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER.NAME={node.NAME!r} is not one of {list(OPTIMIZERS)}")
    for key in ("BACKBONE_MULTIPLIER", "HEAD_MULTIPLIER"):
        if not node[key] > 0:
            raise ValueError(f"SOLVER.OPTIMIZER.{key}={node[key]} must be > 0")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r} is not one of "
                         f"{list(CLIP_TYPES)}")
    return name


def _unwrapped(model: nn.Module) -> nn.Module:
    # parameter names are matched against "backbone."; DDP would prefix them with "module."
    return model.module if isinstance(model, DistributedDataParallel) else model


def get_optimizer_params(cfg, model: nn.Module) -> List[Dict]:
    """The parameter groups of ``model`` by the rules of the module docstring: dicts with
    "params", "lr" and, where a norm/bias rule set it, "weight_decay"."""
    _checked_optimizer_name(cfg)
    s = cfg.SOLVER
    model = _unwrapped(model)
    backbone_mult = s.OPTIMIZER.BACKBONE_MULTIPLIER
    if backbone_mult != 1.0 and not hasattr(model, "backbone"):
        raise ValueError(f"SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER={backbone_mult} needs a model "
                         f"with a `backbone`; {type(model).__name__} has none")
    # key: (lr, weight decay or None = the optimizer's default), in first-seen order
    groups: Dict[Tuple[float, Optional[float]], List[nn.Parameter]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = s.BASE_LR, None
            if isinstance(module, NORM_TYPES):
                wd = s.WEIGHT_DECAY_NORM
            if name == "bias":  # after the norm rule: a norm's bias follows the bias rule
                lr *= s.BIAS_LR_FACTOR
                if s.WEIGHT_DECAY_BIAS is not None:
                    wd = s.WEIGHT_DECAY_BIAS
            full_name = f"{module_name}.{name}" if module_name else name
            if full_name.startswith(_BACKBONE_PREFIX):
                lr *= backbone_mult
            else:
                lr *= s.OPTIMIZER.HEAD_MULTIPLIER
            groups.setdefault((lr, wd), []).append(p)
    out = []
    for (lr, wd), params in groups.items():
        group = {"params": params, "lr": lr}
        if wd is not None:
            group["weight_decay"] = wd
        out.append(group)
    return out


def _with_full_model_clipping(optimizer_class, max_norm: float, norm_type: float):
    """``optimizer_class`` whose ``step`` first scales all gradients together so that their
    global ``norm_type``-norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``). The
    norm is summed over ``clip_params`` in the order given (model order, as mmcv's
    ``OptimizerHook`` clips ``model.parameters()``): the order of a float sum changes its last
    bits, and the order of the parameter groups is not the model's."""

    class FullModelGradientClipping(optimizer_class):
        def __init__(self, params, *, clip_params, **kwargs):
            super().__init__(params, **kwargs)
            self.clip_params = list(clip_params)

        def step(self, closure=None):
            torch.nn.utils.clip_grad_norm_(self.clip_params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = optimizer_class.__name__ + "WithFullModelGradientClip"
    FullModelGradientClipping.__qualname__ = FullModelGradientClipping.__name__
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (``SOLVER.MOMENTUM``, ``SOLVER.NESTEROV``) or AdamW (torch's defaults: betas
    (0.9, 0.999), eps 1e-8, as SegFormer and K-Net) over :func:`get_optimizer_params`, with the
    gradient clipping of ``SOLVER.CLIP_GRADIENTS``."""
    name = _checked_optimizer_name(cfg)
    s = cfg.SOLVER
    if name == "SGD":
        optimizer_class = torch.optim.SGD
        kwargs = {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        optimizer_class, kwargs = torch.optim.AdamW, {}
    params = get_optimizer_params(cfg, model)
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_class = _with_full_model_clipping(optimizer_class, clip.CLIP_VALUE,
                                                    clip.NORM_TYPE)
        in_optimizer = {id(p) for g in params for p in g["params"]}
        clip_params = [p for p in _unwrapped(model).parameters() if id(p) in in_optimizer]
        return optimizer_class(params, clip_params=clip_params, lr=s.BASE_LR,
                               weight_decay=s.WEIGHT_DECAY, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer_class)(
        params, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **kwargs)
