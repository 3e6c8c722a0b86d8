"""
The training step of ``Trainer`` (one iteration: batch, forward, loss, backward, optimizer step),
chosen by the config (docs/TRAINING.md, "Training step and mixed precision"):

* fp32 on CPU: :class:`SFNetTrainStep`, detectron2's ``SimpleTrainer`` step with two speed-ups
  that change how, not what, is computed (same loss to float rounding, tests/
  test_training_benchmark.py and tests/test_mixed_precision.py check it):

  - ``SOLVER.CPU.KEEP_MEMORY``: the step runs inside ``kept_memory()``
    (sfnet_d2/deployment/memory.py). A 4x256x512 SFNet-Lite step allocates activations and
    gradients of 32+ MiB that glibc maps afresh every step and the kernel zero-fills (about
    250,000 page faults per step);
  - ``SOLVER.CPU.CHANNELS_LAST``: the model is trained in channels-last layout, oneDNN's native
    one (no reorders to and from its blocked formats around each convolution).

* mixed precision (``SOLVER.AMP.ENABLED``, ``SOLVER.AMP.PRECISION``): on CUDA with float16,
  detectron2's own ``AMPTrainer`` (autocast + GradScaler); with bfloat16 (CPU with native bf16,
  or CUDA) :class:`SFNetTrainStep` with ``torch.autocast`` around the forward pass and the loss.
  bfloat16 has float32's exponent range, so no loss scaling is needed; the loss terms are
  summed and back-propagated in float32.

The measured speed of each variant is in docs/BENCHMARK.md ("Training step");
``projects/SFNet/benchmark.py --train`` times them beside the plain eager step.
"""
import logging
import time
from typing import NamedTuple, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch import nn

from sfnet_d2.deployment.memory import kept_memory

__all__ = ["TrainStepOptions", "train_step_options", "prepare_model_for_training",
           "build_train_step", "SFNetTrainStep", "AMP_PRECISIONS"]

logger = logging.getLogger("sfnet_d2")

AMP_PRECISIONS = ("auto", "float16", "bfloat16")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class TrainStepOptions(NamedTuple):
    """What the config asks of the training step (:func:`train_step_options`)."""

    device_type: str  # "cpu" or "cuda"
    amp_dtype: Optional[torch.dtype]  # None = fp32
    keep_memory: bool
    channels_last: bool

    @property
    def uses_detectron2_amp(self) -> bool:
        """CUDA float16: detectron2's AMPTrainer (GradScaler) runs the step."""
        return self.device_type == "cuda" and self.amp_dtype == torch.float16

    def describe(self) -> str:
        precision = "fp32" if self.amp_dtype is None else f"AMP {str(self.amp_dtype)[6:]}"
        extras = [name for name, on in (("kept memory", self.keep_memory),
                                        ("channels-last", self.channels_last)) if on]
        return f"{self.device_type} {precision}" + (f" ({', '.join(extras)})" if extras else "")


def _cpu_bf16_problem() -> Optional[str]:
    # one definition of "native bf16 on this CPU" for inference and training
    from sfnet_d2.benchmark.timing import bf16_support

    return bf16_support(torch.device("cpu"))


def _amp_dtype(cfg, device_type: str) -> Optional[torch.dtype]:
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION={precision!r} is not one of {AMP_PRECISIONS}")
    if device_type == "cuda":
        if precision == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError("SOLVER.AMP.PRECISION 'bfloat16': this GPU has no bfloat16 support; "
                             "use 'float16' (or 'auto')")
        return _DTYPES.get(precision, torch.float16)
    if device_type != "cpu":
        raise ValueError(f"SOLVER.AMP.ENABLED True is supported on cpu and cuda, not on "
                         f"MODEL.DEVICE={cfg.MODEL.DEVICE!r}")
    if precision == "float16":
        raise ValueError("SOLVER.AMP.PRECISION 'float16' is not supported on CPU (oneDNN trains "
                         "in bfloat16 there): set SOLVER.AMP.PRECISION 'bfloat16' or 'auto', or "
                         "SOLVER.AMP.ENABLED False for fp32")
    problem = _cpu_bf16_problem()
    if problem:
        raise ValueError(f"SOLVER.AMP.ENABLED True on CPU trains in bfloat16 autocast, but "
                         f"{problem}. Set SOLVER.AMP.ENABLED False (fp32) or train on a GPU")
    return torch.bfloat16


def train_step_options(cfg) -> TrainStepOptions:
    """The training step ``cfg`` asks for; raises ``ValueError`` naming the key for a mixed
    precision the device cannot run. Cheap: call it before any data is read."""
    device_type = torch.device(cfg.MODEL.DEVICE).type
    on_cpu = device_type == "cpu"
    return TrainStepOptions(device_type=device_type, amp_dtype=_amp_dtype(cfg, device_type),
                            keep_memory=on_cpu and cfg.SOLVER.CPU.KEEP_MEMORY,
                            channels_last=on_cpu and cfg.SOLVER.CPU.CHANNELS_LAST)


def prepare_model_for_training(model: nn.Module, options: TrainStepOptions) -> nn.Module:
    """Converts ``model`` in place to the layout ``options`` trains in (before the optimizer and
    DDP see its parameters; the Parameter objects stay the same). Returns it."""
    if options.channels_last:
        # 4-d weights become NHWC; a convolution with an NHWC weight returns NHWC, so the
        # activations and gradients follow without converting the input images.
        model.to(memory_format=torch.channels_last)
    return model


class SFNetTrainStep(SimpleTrainer):
    """
    ``SimpleTrainer``'s step (same order: batch, forward, losses summed, ``zero_grad``,
    ``backward``, metrics, ``step``) run inside ``kept_memory(keep_memory)`` and, with
    ``autocast_dtype``, with the forward pass under ``torch.autocast(device_type, dtype)``.
    """

    def __init__(self, model, data_loader, optimizer, *, device_type: str = "cpu",
                 keep_memory: bool = False, autocast_dtype: Optional[torch.dtype] = None):
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.keep_memory = keep_memory
        self.autocast_dtype = autocast_dtype

    def run_step(self):
        assert self.model.training, "[SFNetTrainStep] model was changed to eval mode!"
        with kept_memory(self.keep_memory):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time = time.perf_counter() - start
            loss_dict, losses = self.forward_losses(data)
            self.optimizer.zero_grad()
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()

    def forward_losses(self, data):
        """(loss dict, their float32 sum) of one batch, under autocast when mixed precision is
        on (the loss terms are returned in float32: the heads' cross-entropies run in float32
        under autocast, and anything else is cast here)."""
        with torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        return loss_dict, sum(loss_dict.values())


def build_train_step(options: TrainStepOptions, model, data_loader, optimizer) -> SimpleTrainer:
    """The step object (``DefaultTrainer._trainer``) of ``options``: detectron2's
    ``AMPTrainer`` for CUDA float16, else :class:`SFNetTrainStep`."""
    if options.uses_detectron2_amp:
        step = AMPTrainer(model, data_loader, optimizer)
    else:
        step = SFNetTrainStep(model, data_loader, optimizer, device_type=options.device_type,
                              keep_memory=options.keep_memory, autocast_dtype=options.amp_dtype)
    logger.info(f"Training step: {type(step).__name__}, {options.describe()}")
    return step
