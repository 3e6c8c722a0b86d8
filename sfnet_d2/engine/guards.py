"""
Training guards that stop a run with a clear message instead of letting it go on broken.

``install_nonfinite_loss_guard(model)`` checks every loss term the model returns in training,
in every process, *before* the backward pass and the optimizer step: a NaN or infinite term stops
training with ``FloatingPointError`` naming the iteration and the term, so the weights and the
last checkpoint on disk stay those of the last good iteration. (detectron2's own check looks only
at the summed, rank-0 loss after the backward pass, and does not say which term broke.)
"""
import math

import torch
from torch import nn

__all__ = ["install_nonfinite_loss_guard", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    pass


def _current_iteration():
    try:
        from detectron2.utils.events import get_event_storage

        return get_event_storage().iter
    except (AssertionError, ImportError):  # no EventStorage: called outside a trainer
        return None


def _check_losses(module: nn.Module, _inputs, output):
    if not module.training or not isinstance(output, dict):
        return
    bad = {}
    for name, value in output.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            v = float(value.detach())
            if not math.isfinite(v):
                bad[name] = v
    if bad:
        it = _current_iteration()
        where = f"at iteration {it}" if it is not None else "in a training forward pass"
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"Non-finite loss {where}: {terms}. Training stopped before the optimizer step; the "
            "last checkpoint on disk is intact. Lower SOLVER.BASE_LR, add warm-up "
            "(SOLVER.WARMUP_ITERS) or check the labels of this batch, then run the same command "
            "again with --resume and the new value (e.g. --resume SOLVER.BASE_LR 0.001): a "
            "resumed run applies the config's learning rate and schedule from its last "
            "checkpoint on, and logs the change."
        )


def install_nonfinite_loss_guard(model: nn.Module) -> nn.Module:
    """Register the check as a forward hook on ``model`` (idempotent); returns ``model``."""
    if not getattr(model, "_sfnet_loss_guard", False):
        model.register_forward_hook(_check_losses)
        model._sfnet_loss_guard = True
    return model
