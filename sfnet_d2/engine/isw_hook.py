"""
The training-time half of RobustNet's instance selective whitening (ISW): the covariance
statistics that decide which covariance elements are style-sensitive (official ``train.py``
``validate_for_cov_stat`` + ``network/cov_settings.py``; model side and loss in
sfnet_d2/modeling/backbone/robustnet.py, user documentation in docs/ROBUSTNET.md).

**Two views of one image.** ISW needs, for each image, the image as it is and a photometrically
changed copy (official ``CityScapesAug``: the full training image, once unchanged and once through
``ColorJitter(0.8, 0.8, 0.8, 0.3)`` + ``RandomGaussianBlur``; no crop, no resize, batch of one).
Training batches do not carry such pairs, so the statistics have their own small pipeline:
``PhotometricPairMapper`` (sfnet_d2/data/dataset_mappers/photometric_pair_mapper.py) reads a
dataset record and returns ``(original, augmented)`` uint8 CHW tensors, seeded here per (round,
image) so that every process and every rerun draws the same views.

**When.** ``ISWMaskHook`` (added by ``Trainer``, sfnet_d2/engine/trainer.py, when
``MODEL.ROBUSTNET.MODE`` is "isw") runs :func:`compute_isw_masks` before the first iteration of
epoch ``COVSTAT_EPOCH + 1`` (official: after epoch ``--cov_stat_epoch`` ends), or at the start of
training if that point is already past and the model has no mask (e.g. resumed from an earlier
checkpoint); a mask loaded from a checkpoint is kept. Until then the backbone's whitening loss is
zero.

**What.** ``TRIALS`` rounds; in each, for each statistics dataset, ``COVSTAT_IMAGES`` images drawn
at random; every pair goes through the backbone in eval mode as the batch [augmented, original]
(BatchNorm uses its running statistics, as the official ``net.eval()``); per ISW layer the pair
variance of each covariance element (``covariance_pair_variance``) is averaged over the images,
clustered, and the round's mask is intersected with the previous ones. With several processes
each takes a share of the images and the sums are all-reduced, so all processes get the same mask.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from sfnet_d2.data.dataset_mappers.photometric_pair_mapper import PhotometricPairMapper
from sfnet_d2.modeling.backbone.robustnet import (covariance_pair_variance, instance_covariance,
                                                  record_whitened_features,
                                                  select_sensitive_covariances, whitening_modules)
from sfnet_d2.solver.epochs import resolve_iters_per_epoch

__all__ = ["compute_isw_masks", "ISWMaskHook"]

logger = logging.getLogger(__name__)


def _view_seed(seed: int, trial: int, dataset: int, index: int) -> int:
    seq = np.random.SeedSequence([seed & 0xFFFFFFFF, trial, dataset, index, 0x15C0])
    return int(seq.generate_state(1)[0])


@torch.no_grad()
def compute_isw_masks(model, datasets: Sequence[Tuple[str, List[dict]]], mapper, *, trials: int,
                      images_per_trial: int, clusters: int, seed: int = 0) -> List[int]:
    """
    Set the ``sensitive_mask`` of every ISW layer of ``model.backbone`` (see the module
    docstring). ``model`` has ``backbone``, ``pixel_mean`` and ``pixel_std`` (detectron2's
    ``SemanticSegmentor``); ``datasets`` are (name, records); ``mapper`` maps (record, seed) to
    (original, augmented). Returns the number of selected elements per ISW layer.
    """
    backbone = model.backbone
    layers = [m for m in whitening_modules(backbone) if m.mode == "isw"]
    if not layers:
        raise ValueError("compute_isw_masks: the backbone has no ISW layer (MODEL.ROBUSTNET.MODE)")
    if trials < 1 or images_per_trial < 1:
        raise ValueError(f"MODEL.ROBUSTNET.TRIALS={trials} and COVSTAT_IMAGES="
                         f"{images_per_trial} must be >= 1")
    position = {id(m): i for i, m in enumerate(layers)}
    device = model.pixel_mean.device
    rank, world = comm.get_rank(), comm.get_world_size()
    masks: List[Optional[torch.Tensor]] = [None] * len(layers)
    was_training = backbone.training
    backbone.eval()
    try:
        for trial in range(trials):
            for d, (name, records) in enumerate(datasets):
                if not records:
                    raise ValueError(f"ISW statistics dataset {name} has no records")
                chosen = np.random.RandomState([seed & 0xFFFFFFFF, trial, d]).permutation(
                    len(records))[:images_per_trial]
                sums = [torch.zeros(m.channels, m.channels, dtype=torch.float64, device=device)
                        for m in layers]
                count = torch.zeros((), dtype=torch.float64, device=device)
                mine = chosen[rank::world]
                for k, index in enumerate(mine):
                    view_seed = _view_seed(seed, trial, d, int(index))
                    original, augmented = mapper(records[index], view_seed)
                    pair = torch.stack([augmented, original]).to(device).float()
                    pair = (pair - model.pixel_mean) / model.pixel_std
                    with record_whitened_features(backbone) as recorded:
                        backbone(pair)
                    for module, features in recorded:
                        if id(module) in position:
                            cov = instance_covariance(features)
                            sums[position[id(module)]] += covariance_pair_variance(
                                cov[1:2], cov[0:1])[0].double()
                    count += 1
                    if (k + 1) % 100 == 0:
                        logger.info(f"ISW statistics, round {trial + 1}/{trials}, {name}: "
                                    f"{k + 1}/{len(mine)} images")
                if world > 1:
                    for t in sums + [count]:
                        torch.distributed.all_reduce(t)
                if count.item() == 0:
                    raise ValueError(f"ISW statistics: no image of {name} was processed")
                for i, total in enumerate(sums):
                    selected = select_sensitive_covariances(total / count, clusters)
                    masks[i] = selected if masks[i] is None else masks[i] & selected
                off_diagonal = [c.channels * (c.channels - 1) // 2 for c in layers]
                logger.info(
                    f"ISW statistics, round {trial + 1}/{trials}, {name} "
                    f"({int(count.item())} image pairs): sensitive covariance elements per layer "
                    f"after intersection "
                    f"{[int(m.sum()) for m in masks]} of {off_diagonal}")
        for module, mask in zip(layers, masks):
            module.set_sensitive_mask(mask)
    finally:
        backbone.train(was_training)
    return [int(m.sensitive_mask.sum()) for m in layers]


class ISWMaskHook(HookBase):
    """Computes the ISW masks at iteration ``(COVSTAT_EPOCH + 1) x iterations per epoch``."""

    def __init__(self, cfg):
        node = cfg.MODEL.ROBUSTNET
        if node.MODE != "isw":
            raise ValueError(f"ISWMaskHook needs MODEL.ROBUSTNET.MODE 'isw', got {node.MODE!r}")
        if (node.CLUSTERS < 2 or node.TRIALS < 1 or node.COVSTAT_IMAGES < 1
                or node.COVSTAT_EPOCH < 0):
            raise ValueError(
                f"MODEL.ROBUSTNET: CLUSTERS={node.CLUSTERS} must be >= 2, TRIALS={node.TRIALS} and "
                f"COVSTAT_IMAGES={node.COVSTAT_IMAGES} >= 1, "
                f"COVSTAT_EPOCH={node.COVSTAT_EPOCH} >= 0")
        blur = list(node.COVSTAT_BLUR_SIGMA_RANGE)
        if blur and len(blur) != 2:
            raise ValueError(f"MODEL.ROBUSTNET.COVSTAT_BLUR_SIGMA_RANGE={blur}: [min, max] or []")
        self.cfg = cfg
        self.dataset_names = list(node.COVSTAT_DATASETS) or list(cfg.DATASETS.TRAIN)
        if not self.dataset_names:
            raise ValueError(
                "ISW statistics need MODEL.ROBUSTNET.COVSTAT_DATASETS or DATASETS.TRAIN")
        self.mapper = PhotometricPairMapper(cfg)
        self.mask_iter: Optional[int] = None
        self._done = False

    def before_train(self):
        epoch = resolve_iters_per_epoch(self.cfg)
        self.mask_iter = (self.cfg.MODEL.ROBUSTNET.COVSTAT_EPOCH + 1) * epoch
        logger.info(f"RobustNet ISW: the whitening loss starts at iteration {self.mask_iter} "
                    f"(epoch {self.cfg.MODEL.ROBUSTNET.COVSTAT_EPOCH + 1} of {epoch} iterations), "
                    "after the covariance statistics")

    def before_step(self):
        if self._done or self.trainer.iter < self.mask_iter:
            return
        model = self.trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        layers = [m for m in whitening_modules(model.backbone) if m.mode == "isw"]
        if all(bool(m.mask_ready) for m in layers):
            logger.info("RobustNet ISW: using the masks of the loaded checkpoint")
        else:
            node = self.cfg.MODEL.ROBUSTNET
            logger.info(f"RobustNet ISW: covariance statistics at iteration {self.trainer.iter} on "
                        f"{self.dataset_names}: {node.TRIALS} rounds of "
                        f"{node.COVSTAT_IMAGES} images")
            counts = compute_isw_masks(
                model, [(n, DatasetCatalog.get(n)) for n in self.dataset_names], self.mapper,
                trials=node.TRIALS, images_per_trial=node.COVSTAT_IMAGES,
                clusters=node.CLUSTERS, seed=max(self.cfg.SEED, 0))
            logger.info(f"RobustNet ISW: masks set, sensitive elements per layer {counts}")
        self._done = True
