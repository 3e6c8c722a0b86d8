"""
The poly learning rate stepped per epoch, as the official training loop does
(lxtGH/SFSegNets@ba475ba optimizer.py and train.py): ``LambdaLR(lambda e: (1 - e / E) ** p)``
stepped once at the *start* of every epoch, so epoch e (0-based) trains with
``lr * (1 - (e + 1) / E) ** p`` and the last epoch with 0. detectron2's ``WarmupPolyLR``
(DeepLab project) is the per-iteration form ``lr * (1 - iter / max_iter) ** p``, the paper's
text. Both take detectron2's warm-up keys (``SOLVER.WARMUP_*``).
"""
import math
from typing import List, Optional

import torch
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.solver.lr_scheduler import _get_warmup_factor_at_iter

from sfnet_d2.solver.epochs import resolve_iters_per_epoch

__all__ = ["WarmupPolyEpochLR", "build_lr_scheduler"]


class WarmupPolyEpochLR(torch.optim.lr_scheduler._LRScheduler):
    """
    Stepped every iteration by detectron2's ``LRScheduler`` hook (``last_epoch`` counts
    iterations, as in all detectron2 schedulers); the poly factor only changes at epoch
    boundaries: iteration i is in epoch ``e = i // iters_per_epoch`` and gets
    ``base_lr * warmup(i) * (1 - min(e + 1, E) / E) ** power`` with E = ``num_epochs``
    (default ceil(max_iters / iters_per_epoch)).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, iters_per_epoch: int,
                 num_epochs: Optional[int] = None, warmup_factor: float = 0.001,
                 warmup_iters: int = 0, warmup_method: str = "linear", power: float = 1.0,
                 constant_ending: float = 0.0, last_epoch: int = -1):
        if iters_per_epoch <= 0 or max_iters <= 0:
            raise ValueError(f"WarmupPolyEpochLR needs max_iters > 0 and iters_per_epoch > 0, got "
                             f"{max_iters} and {iters_per_epoch}")
        self.max_iters = max_iters
        self.iters_per_epoch = iters_per_epoch
        self.num_epochs = num_epochs or math.ceil(max_iters / iters_per_epoch)
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def poly_factor(self, iteration: int) -> float:
        epoch = iteration // self.iters_per_epoch
        return math.pow(1.0 - min(epoch + 1, self.num_epochs) / self.num_epochs, self.power)

    def get_lr(self) -> List[float]:
        warmup = _get_warmup_factor_at_iter(self.warmup_method, self.last_epoch,
                                            self.warmup_iters, self.warmup_factor)
        poly = self.poly_factor(self.last_epoch)
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return [base_lr * self.constant_ending for base_lr in self.base_lrs]
        return [base_lr * warmup * poly for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        return self.get_lr()


def build_lr_scheduler(cfg, optimizer):
    """``SOLVER.LR_SCHEDULER_NAME``: "WarmupPolyEpochLR" (above), else detectron2/DeepLab's
    builders ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR")."""
    epochs = cfg.SOLVER.SFNET.MAX_EPOCHS
    if epochs > 0 or cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyEpochLR":
        ipe = resolve_iters_per_epoch(cfg)
        if epochs > 0 and cfg.SOLVER.MAX_ITER != epochs * ipe:
            raise ValueError(
                f"SOLVER.SFNET.MAX_EPOCHS={epochs} x {ipe} iterations per epoch is not "
                f"SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER}: resolve the config with "
                "sfnet_d2.solver.resolve_epoch_schedule(cfg) first (train_net.py does)"
            )
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyEpochLR":
        return build_deeplab_lr_scheduler(cfg, optimizer)
    return WarmupPolyEpochLR(
        optimizer,
        cfg.SOLVER.MAX_ITER,
        iters_per_epoch=ipe,
        num_epochs=cfg.SOLVER.SFNET.MAX_EPOCHS or None,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
        power=cfg.SOLVER.POLY_LR_POWER,
        constant_ending=cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
    )
