"""``build_optimizer(cfg, model)``: the optimizer of every model (placeholder dispatch; one
builder for both tasks is being written)."""
from detectron2.solver import build_optimizer as d2_build_optimizer

from sfnet_d2.solver.optimizer import build_sfnet_optimizer, uses_sfnet_optimizer

__all__ = ["build_optimizer"]


def build_optimizer(cfg, model):
    from sfnet_d2.modeling.meta_arch.knet import training as knet_training

    if knet_training.is_knet(cfg):
        return knet_training.build_knet_optimizer(cfg, model)
    if uses_sfnet_optimizer(cfg):
        return build_sfnet_optimizer(cfg, model)
    return d2_build_optimizer(cfg, model)
