"""
The library front door of every command (``projects/SFNet/*.py`` only parse arguments and call
these): the config (``build_config``, ``setup``), training and evaluation (``Trainer``,
``train_or_evaluate``, ``launch_train_or_evaluate``), inference (``Predictor``), and the safe
checkpointing and guards underneath (docs/ROBUSTNESS.md).
"""
from sfnet_d2.engine.checkpoint import (RANDOM_WEIGHTS, CheckpointMismatchError,
                                        LastCheckpointError, MissingWeightsError,
                                        SFNetCheckpointer, atomic_write_bytes,
                                        load_model_weights)
from sfnet_d2.engine.guards import NonFiniteLossError, install_nonfinite_loss_guard
from sfnet_d2.engine.hooks import SkippedSamplesReport, StepSeedHook
from sfnet_d2.engine.defaults import (build_config, evaluate, launch_train_or_evaluate, setup,
                                      train_or_evaluate)
from sfnet_d2.engine.trainer import Trainer
from sfnet_d2.engine.predictor import Predictor, build_model_with_weights

__all__ = [
    "build_config", "setup", "evaluate", "train_or_evaluate", "launch_train_or_evaluate",
    "Trainer", "Predictor", "build_model_with_weights",
    "SFNetCheckpointer", "CheckpointMismatchError", "MissingWeightsError", "LastCheckpointError",
    "RANDOM_WEIGHTS",
    "atomic_write_bytes", "load_model_weights",
    "install_nonfinite_loss_guard", "NonFiniteLossError", "StepSeedHook", "SkippedSamplesReport",
]
