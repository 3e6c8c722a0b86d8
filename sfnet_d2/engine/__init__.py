"""Training-engine pieces: safe checkpointing and guards (see docs/ROBUSTNESS.md)."""
from sfnet_d2.engine.checkpoint import CheckpointMismatchError, SFNetCheckpointer, atomic_write_bytes
from sfnet_d2.engine.guards import NonFiniteLossError, install_nonfinite_loss_guard
from sfnet_d2.engine.hooks import SkippedSamplesReport, StepSeedHook

__all__ = [
    "SFNetCheckpointer",
    "CheckpointMismatchError",
    "atomic_write_bytes",
    "install_nonfinite_loss_guard",
    "NonFiniteLossError",
    "StepSeedHook",
    "SkippedSamplesReport",
]
