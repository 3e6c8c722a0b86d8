"""
Training hooks for reproducible, resumable runs (used by ``projects/SFNet/train_net.py``).

* ``StepSeedHook``: re-seeds torch's RNG before every iteration from (stream seed, iteration,
  rank), so randomness inside the model (dropout of the deep-supervision heads) is the same in a
  resumed run as in the uninterrupted one.
* ``SkippedSamplesReport``: at the end of training (also when it fails), lists every training
  sample that ``DATALOADER.SFNET.SKIP_BAD_SAMPLES`` skipped, in the log and in
  ``OUTPUT_DIR/skipped_samples[_rankR].json``.
"""
import json
import logging
import os

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StepSeedHook", "SkippedSamplesReport"]

logger = logging.getLogger(__name__)


class StepSeedHook(HookBase):
    def __init__(self, stream_seed_fn):
        self._seed_fn = stream_seed_fn

    def before_step(self):
        seq = np.random.SeedSequence([int(self._seed_fn()) & 0xFFFFFFFF, int(self.trainer.iter),
                                      comm.get_rank(), 0x5EED])
        torch.manual_seed(int(seq.generate_state(1)[0]))


class SkippedSamplesReport(HookBase):
    def __init__(self, loader, output_dir: str):
        self._loader = loader
        self._output_dir = output_dir

    def after_train(self):
        skipped = list(self._loader.skipped)
        if not skipped:
            return
        rank = comm.get_rank()
        name = "skipped_samples.json" if comm.get_world_size() == 1 else \
            f"skipped_samples_rank{rank}.json"
        path = os.path.join(self._output_dir, name)
        os.makedirs(self._output_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump([{"file": f_, "reason": r} for f_, r in skipped], f, indent=1)
        unique = sorted({f_ for f_, _ in skipped})
        logger.warning(
            f"Skipped {len(skipped)} bad training sample(s) ({len(unique)} distinct file(s)) "
            f"in process {rank}; listed in {path}:\n  " + "\n  ".join(unique[:50])
            + ("" if len(unique) <= 50 else f"\n  ... and {len(unique) - 50} more")
        )
