from sfnet_d2.solver.epochs import (iterations_per_epoch, resolve_epoch_schedule, resolve_iters_per_epoch,
                     training_set_size)
from sfnet_d2.solver.lr_scheduler import WarmupPolyEpochLR, build_lr_scheduler
