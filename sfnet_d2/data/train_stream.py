"""
The training data stream: reproducible, resumable, and able to skip bad samples.

detectron2's train loader restarts its sampler from the beginning after ``--resume`` and draws
augmentations from whatever state each worker's RNG is in, so a resumed run sees other data than
the run it continues. Here every sample is a pure function of ``(stream seed, global position)``:

* a *global* index stream (``index_stream(seed)``, e.g. a shuffled ``TrainingSampler`` order or the
  class-uniform sampler, unsharded) gives the record of position ``g``;
* process ``r`` of ``W`` takes the positions ``g = p * W + r`` (local position ``p``), so W
  processes with B images each see exactly the samples one process with W*B sees;
* the augmentation RNGs (numpy, random, torch) are re-seeded from ``(seed, g)`` before each sample,
  so the same position gets the same crop/flip/jitter in any process, worker or resumed run;
* data-loader worker ``w`` builds whole batches ``j`` with ``j % num_workers == w``; torch's
  loader returns them in order, so step ``j`` always gets local positions ``[jB, (j+1)B)``.

Resuming at iteration ``i`` is then ``set_state(seed, start=i * B)``: ``SkipCollectingLoader`` is
registered with the checkpointer as "data_stream" and saves ``{"seed", "position"}``, so even
``SEED -1`` runs resume on the same stream. The stream serves both tasks: the mapper (semantic or
panoptic) only has to draw its randomness from numpy / random / torch's global RNGs, and to raise
on a bad sample.

Bad samples (unreadable/truncated image or label, wrong size, values outside the class set):
by default training stops with an error naming the file. With
``DATALOADER.SFNET.SKIP_BAD_SAMPLES`` the sample is replaced by the next record that maps
cleanly (deterministically) and the batch element carries ``sfnet_skipped`` = [(file, reason)];
``SkipCollectingLoader`` gathers them in the training process for the end-of-training report.
"""
import itertools
import logging
import random
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["TrainingStream", "SkipCollectingLoader", "BadSampleError", "shuffled_index_stream"]

logger = logging.getLogger(__name__)

# a sample whose replacements all fail this many times in a row means the dataset is broken
MAX_CONSECUTIVE_BAD = 20


class BadSampleError(RuntimeError):
    pass


def shuffled_index_stream(size: int, seed: int) -> Iterable[int]:
    """Infinite concatenation of random permutations of ``range(size)`` (one per epoch)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    while True:
        yield from torch.randperm(size, generator=g).tolist()


def _sample_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(position)]).generate_state(1)[0])


def _seed_all(value: int):
    np.random.seed(value)
    random.seed(value)
    torch.manual_seed(value)


class TrainingStream(IterableDataset):
    """See the module docstring. Yields lists (batches) of mapped dataset dicts."""

    def __init__(self, dataset, mapper: Callable, index_stream: Callable[[int], Iterable[int]],
                 batch_size: int, seed: int, *, rank: Optional[int] = None,
                 world_size: Optional[int] = None, skip_bad_samples: bool = False,
                 num_records: Optional[int] = None):
        """
        Args:
            dataset: map-style records (``dataset[i]`` is a dataset dict).
            mapper: dataset dict -> model input dict.
            index_stream: ``seed -> infinite iterable`` of dataset indices (global, unsharded).
            batch_size: images per batch in this process.
            seed: stream seed.
            skip_bad_samples: replace bad samples instead of stopping (see module docstring).
            num_records: replacements are drawn from ``dataset[0:num_records]`` (the real images;
                default all of ``dataset``).
        """
        self.dataset = dataset
        self.mapper = mapper
        self.index_stream = index_stream
        self.batch_size = int(batch_size)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.skip_bad_samples = skip_bad_samples
        self.num_records = len(dataset) if num_records is None else num_records
        self.seed = int(seed)
        self.start = 0

    def set_state(self, seed: int, start: int):
        """Continue the stream of ``seed`` at local position ``start`` (takes effect at the next
        ``iter()``)."""
        self.seed, self.start = int(seed), int(start)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        W, r, B = self.world_size, self.rank, self.batch_size
        # global positions of this process from local position `start` on: g = p * W + r
        globals_ = itertools.islice(self.index_stream(self.seed), self.start * W + r, None, W)
        batch_index = itertools.count()
        while True:
            j = next(batch_index)
            chunk = list(itertools.islice(globals_, B))
            if j % num_workers != worker:
                continue
            first = self.start + j * B
            yield [self._map(index, (first + k) * W + r) for k, index in enumerate(chunk)]

    def _map(self, index: int, position: int):
        # Seeding must not leak out: with NUM_WORKERS 0 this runs in the training process, whose
        # RNG drives dropout (seeded per step by StepSeedHook).
        saved = (np.random.get_state(), random.getstate(), torch.get_rng_state())
        try:
            return self._map_seeded(index, position)
        finally:
            np.random.set_state(saved[0])
            random.setstate(saved[1])
            torch.set_rng_state(saved[2])

    def _map_seeded(self, index: int, position: int):
        _seed_all(_sample_seed(self.seed, position))
        try:
            return self.mapper(self.dataset[index])
        except Exception as e:  # noqa: BLE001  (any failure of one sample is a data fault)
            first_error = self._describe(index, e)
            if not self.skip_bad_samples:
                raise BadSampleError(
                    f"Bad training sample {first_error}. Fix or remove the file, or set "
                    "DATALOADER.SFNET.SKIP_BAD_SAMPLES True to skip bad samples and get a report "
                    "at the end of training"
                ) from e
        skipped = [first_error]
        for step in range(1, MAX_CONSECUTIVE_BAD + 1):
            candidate = (index + step) % self.num_records
            _seed_all(_sample_seed(self.seed, position))
            try:
                out = self.mapper(self.dataset[candidate])
            except Exception as e:  # noqa: BLE001
                skipped.append(self._describe(candidate, e))
                continue
            out["sfnet_skipped"] = skipped
            return out
        raise BadSampleError(
            f"{MAX_CONSECUTIVE_BAD + 1} consecutive training samples failed, the last: "
            f"{skipped[-1]}. The dataset looks broken; check it before training"
        )

    def _describe(self, index: int, error: Exception) -> Tuple[str, str]:
        try:
            name = self.dataset[index].get("file_name", f"record {index}")
        except Exception:  # noqa: BLE001
            name = f"record {index}"
        return (name, f"{type(error).__name__}: {error}")


class SkipCollectingLoader:
    """Wraps the torch DataLoader over a ``TrainingStream``; records the skipped samples that
    arrive with the batches (in the training process) and strips the marker.

    It is also the stream's checkpointable (``state_dict`` / ``load_state_dict``, registered with
    the trainer's checkpointer as "data_stream"): a checkpoint holds the stream seed and the local
    position after the batches handed out, and loading it continues the stream there."""

    def __init__(self, loader, stream: TrainingStream):
        self.loader = loader
        self.stream = stream
        self.skipped: List[Tuple[str, str]] = []
        self._consumed = 0  # batches handed out since the stream (re)started at stream.start

    def __iter__(self):
        return self._collect()

    def _collect(self):
        # torch's iterator is created at the first next(): after a resumed checkpoint has set the
        # stream state (the trainer creates its iterator before loading). Creating it draws a base
        # seed from the global RNG, which drives dropout and is seeded per step (StepSeedHook):
        # fork_rng keeps that draw from moving it, so a resumed step sees the same RNG state.
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.loader)
        for batch in batches:
            for item in batch:
                for name, reason in item.pop("sfnet_skipped", ()):
                    self.skipped.append((name, reason))
                    logger.warning(f"Skipped a bad training sample: {name} ({reason})")
            self._consumed += 1
            yield batch

    def state_dict(self):
        return {"seed": self.stream.seed,
                "position": self.stream.start + self._consumed * self.stream.batch_size}

    def load_state_dict(self, state):
        """Continue at the checkpoint's position; takes effect at the next ``iter()``."""
        missing = {"seed", "position"} - set(state)
        if missing:
            raise KeyError(f"The checkpoint's data_stream state {state} lacks {sorted(missing)}: "
                           "it was not written by SkipCollectingLoader.state_dict")
        self.stream.set_state(state["seed"], state["position"])
        self._consumed = 0

    def load_legacy_state(self, state, start_iter: int):
        """Checkpoints of sfnet-d2 before the stream was its own checkpointable kept only the
        seed, in the trainer's state (``trainer.data_stream.seed``); the position was then
        always ``start_iter x`` the per-process batch. Loads that, with a warning."""
        logger.warning(
            f"The checkpoint keeps the data stream in its old place (trainer.data_stream = "
            f"{state}); continuing the stream at iteration {start_iter}. Checkpoints written from "
            "now on keep it under 'data_stream'")
        self.load_state_dict({"seed": state["seed"],
                              "position": int(start_iter) * self.stream.batch_size})

    def __len__(self):  # an infinite stream
        raise TypeError("the training stream is infinite")


def build_training_stream_loader(dataset, mapper, index_stream, total_batch_size: int,
                                 num_workers: int, seed: Optional[int] = None,
                                 skip_bad_samples: bool = False,
                                 num_records: Optional[int] = None) -> SkipCollectingLoader:
    """A ``SkipCollectingLoader`` over a ``TrainingStream`` (seed None: shared random seed)."""
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of "
                         f"the number of processes ({world})")
    seed = comm.shared_random_seed() if seed is None else seed
    stream = TrainingStream(dataset, mapper, index_stream, total_batch_size // world, seed,
                            skip_bad_samples=skip_bad_samples, num_records=num_records)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=num_workers,
        persistent_workers=False, pin_memory=False,
    )
    return SkipCollectingLoader(loader, stream)
