"""Solver: the optimizer of every model (``build``), the poly learning-rate schedules
(``lr_scheduler``) and the official epoch arithmetic (``epochs``)."""
from sfnet_d2.solver.build import build_optimizer, get_optimizer_params
from sfnet_d2.solver.epochs import (iterations_per_epoch, resolve_epoch_schedule,
                                    resolve_iters_per_epoch, training_set_size)
from sfnet_d2.solver.lr_scheduler import WarmupPolyEpochLR, build_lr_scheduler
