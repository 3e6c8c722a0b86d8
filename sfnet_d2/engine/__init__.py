"""Training-engine pieces: safe checkpointing and guards (see docs/ROBUSTNESS.md)."""
from .checkpoint import CheckpointMismatchError, SFNetCheckpointer, atomic_write_bytes
from .guards import NonFiniteLossError, install_nonfinite_loss_guard
from .hooks import SkippedSamplesReport, StepSeedHook

__all__ = [
    "SFNetCheckpointer",
    "CheckpointMismatchError",
    "atomic_write_bytes",
    "install_nonfinite_loss_guard",
    "NonFiniteLossError",
    "StepSeedHook",
    "SkippedSamplesReport",
]
