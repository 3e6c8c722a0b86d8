"""
Optimizer of the semantic models when the config asks for more than detectron2's default SGD:
``SOLVER.SFNET.OPTIMIZER`` ("SGD" or "ADAMW") and ``SOLVER.SFNET.HEAD_LR_MULTIPLIER`` (learning-
rate multiplier of the parameters under ``sem_seg_head``). SegFormer's ADE20k recipe, which the
MiT configs of the paper's Table 19 follow, is AdamW (lr 6e-5, weight decay 0.01, none on the
normalisation layers) with the decode head at 10x the learning rate (NVlabs/SegFormer
``segformer.b0.512x512.ade.160k.py``: ``paramwise_cfg`` custom keys ``'head': lr_mult=10``,
``'norm': decay_mult=0``).

Per-parameter rules are detectron2's (``get_default_optimizer_params``): weight decay
``SOLVER.WEIGHT_DECAY``, ``SOLVER.WEIGHT_DECAY_NORM`` for parameters of normalisation layers,
``SOLVER.BIAS_LR_FACTOR`` / ``SOLVER.WEIGHT_DECAY_BIAS`` for biases; the head multiplier applies on
top. With "SGD" and multiplier 1 the groups are exactly detectron2's ``build_optimizer``'s, and
``train_net.py`` keeps using detectron2's builder then (:func:`uses_sfnet_optimizer`).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["uses_sfnet_optimizer", "sfnet_param_groups", "build_sfnet_optimizer"]

# detectron2 v0.6's list (solver/build.py); NaiveSyncBatchNorm subclasses BatchNorm2d.
_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
_OPTIMIZERS = ("SGD", "ADAMW")


def _checked_name(cfg) -> str:
    name = cfg.SOLVER.SFNET.OPTIMIZER.upper()
    if name not in _OPTIMIZERS:
        raise ValueError(f"SOLVER.SFNET.OPTIMIZER={cfg.SOLVER.SFNET.OPTIMIZER!r} is not one of "
                         f"{list(_OPTIMIZERS)}")
    if cfg.SOLVER.SFNET.HEAD_LR_MULTIPLIER <= 0:
        raise ValueError(f"SOLVER.SFNET.HEAD_LR_MULTIPLIER={cfg.SOLVER.SFNET.HEAD_LR_MULTIPLIER} "
                         "must be > 0")
    return name


def uses_sfnet_optimizer(cfg) -> bool:
    """True when the config needs :func:`build_sfnet_optimizer` (AdamW or a head multiplier)."""
    return _checked_name(cfg) != "SGD" or cfg.SOLVER.SFNET.HEAD_LR_MULTIPLIER != 1.0


def sfnet_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """Parameter groups, one per distinct (lr, weight decay), in first-seen order."""
    s = cfg.SOLVER
    multiplier = s.SFNET.HEAD_LR_MULTIPLIER
    head = getattr(model, "sem_seg_head", None)
    if multiplier != 1.0 and head is None:
        raise ValueError(
            f"SOLVER.SFNET.HEAD_LR_MULTIPLIER={multiplier} needs a model with a `sem_seg_head` "
            f"(detectron2's SemanticSegmentor); {type(model).__name__} has none")
    head_params = set() if head is None else {id(p) for p in head.parameters()}
    groups: Dict[Tuple[float, float], List[torch.nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = s.BASE_LR, s.WEIGHT_DECAY
            if isinstance(module, _NORM_TYPES):
                wd = s.WEIGHT_DECAY_NORM
            if name == "bias":  # detectron2's bias overrides come after the norm rule
                lr *= s.BIAS_LR_FACTOR
                if s.WEIGHT_DECAY_BIAS is not None:
                    wd = s.WEIGHT_DECAY_BIAS
            if id(p) in head_params:
                lr *= multiplier
            groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_sfnet_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (``SOLVER.MOMENTUM``, ``SOLVER.NESTEROV``) or AdamW (torch's defaults, betas
    (0.9, 0.999) and eps 1e-8 = SegFormer's), with detectron2's gradient clipping if enabled."""
    name = _checked_name(cfg)
    if name == "SGD":
        optimizer_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        optimizer_class, kwargs = torch.optim.AdamW, {}
    return maybe_add_gradient_clipping(cfg, optimizer_class)(
        sfnet_param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)
