"""
Schedules expressed in epochs: how many iterations an epoch is, as the official training loop
counts them (lxtGH/SFSegNets@ba475ba datasets/__init__.py and datasets/sampler.py,
docs/TRAINING.md).

The official loader is a ``DistributedSampler(pad=True)`` per GPU (each of W processes gets
ceil(N / W) of the N images) and a ``DataLoader(batch_size=b, drop_last=True)`` per process, so
an epoch is ``floor(ceil(N / W) / b)`` iterations, b = IMS_PER_BATCH / W. Cityscapes fine train,
8 GPUs x 2 images: floor(372 / 2) = 186 iterations; 300 epochs = 55,800 iterations.
"""
import logging
import math
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

__all__ = ["iterations_per_epoch", "training_set_size", "resolve_iters_per_epoch",
           "resolve_epoch_schedule"]

EPOCH_SCHEDULERS = ("WarmupPolyEpochLR",)


def iterations_per_epoch(num_images: int, ims_per_batch: int, world_size: int = 1) -> int:
    """floor(ceil(num_images / world_size) / (ims_per_batch / world_size))."""
    if world_size <= 0 or ims_per_batch <= 0 or num_images <= 0:
        raise ValueError(f"iterations_per_epoch needs positive values, got num_images="
                         f"{num_images}, SOLVER.IMS_PER_BATCH={ims_per_batch}, world size "
                         f"{world_size}")
    if ims_per_batch % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={ims_per_batch} is not divisible by the "
                         f"{world_size} training processes (SOLVER.SFNET.EPOCH_WORLD_SIZE or "
                         "--num-gpus x --num-machines)")
    per_process = ims_per_batch // world_size
    iters = math.ceil(num_images / world_size) // per_process
    if iters == 0:
        raise ValueError(f"An epoch of {num_images} images has no full batch of "
                         f"{per_process} per process (SOLVER.IMS_PER_BATCH={ims_per_batch})")
    return iters


def training_set_size(cfg) -> int:
    """Number of records of ``DATASETS.TRAIN`` (coarse-boost images are not counted: the
    official epoch is the fine training set)."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: cannot count the images of an epoch")
    return sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)


def resolve_iters_per_epoch(cfg, world_size: Optional[int] = None) -> int:
    """``SOLVER.SFNET.ITERS_PER_EPOCH`` if set, else computed from the training set."""
    if cfg.SOLVER.SFNET.ITERS_PER_EPOCH > 0:
        return int(cfg.SOLVER.SFNET.ITERS_PER_EPOCH)
    if world_size is None:
        world_size = cfg.SOLVER.SFNET.EPOCH_WORLD_SIZE or comm.get_world_size()
    return iterations_per_epoch(training_set_size(cfg), cfg.SOLVER.IMS_PER_BATCH, world_size)


def resolve_epoch_schedule(cfg, world_size: Optional[int] = None) -> Tuple[object, Optional[str]]:
    """
    For a config that counts in epochs (``SOLVER.SFNET.MAX_EPOCHS > 0`` or the per-epoch LR
    schedule), return a frozen copy with ``SOLVER.SFNET.ITERS_PER_EPOCH`` filled in and, when
    ``MAX_EPOCHS > 0``, ``SOLVER.MAX_ITER = MAX_EPOCHS x ITERS_PER_EPOCH``, plus a sentence for
    the log. Other configs are returned unchanged with None.
    """
    epochs = cfg.SOLVER.SFNET.MAX_EPOCHS
    if epochs < 0:
        raise ValueError(f"SOLVER.SFNET.MAX_EPOCHS must be >= 0, got {epochs}")
    if epochs == 0 and cfg.SOLVER.LR_SCHEDULER_NAME not in EPOCH_SCHEDULERS:
        return cfg, None
    if world_size is None:
        world_size = cfg.SOLVER.SFNET.EPOCH_WORLD_SIZE or comm.get_world_size()
    if cfg.SOLVER.SFNET.ITERS_PER_EPOCH > 0:
        ipe, how = int(cfg.SOLVER.SFNET.ITERS_PER_EPOCH), "SOLVER.SFNET.ITERS_PER_EPOCH"
    else:
        num_images = training_set_size(cfg)
        ipe = iterations_per_epoch(num_images, cfg.SOLVER.IMS_PER_BATCH, world_size)
        how = (f"{num_images} images, {world_size} process(es) x "
               f"{cfg.SOLVER.IMS_PER_BATCH // world_size} images")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.SFNET.ITERS_PER_EPOCH = ipe
    if epochs > 0:
        cfg.SOLVER.MAX_ITER = epochs * ipe
        note = f"Schedule: {epochs} epochs x {ipe} iterations ({how}) = {cfg.SOLVER.MAX_ITER} iterations"
    else:
        note = (f"Schedule: {cfg.SOLVER.MAX_ITER} iterations, {ipe} per epoch ({how}) = "
                f"{math.ceil(cfg.SOLVER.MAX_ITER / ipe)} epochs")
    cfg.freeze()
    logging.getLogger(__name__).info(note)
    return cfg, note
