"""
TorchScript (trace) and ONNX export of a network part (``network_part.py``), loading of the
exported files, and the check that an export reproduces the PyTorch model.

Both formats are *static*: the batch size (1) and the image size are fixed at export. SFNet's
graph depends on the size in three places that become constants in the trace: the warp's base
grid (the official ``torch.linspace`` grid, computed from Python ints, is constant-folded in
ONNX), the interpolation sizes and the PPM's pooling windows
(``sfnet_d2/deployment/static_pooling.py``). The exported file therefore only accepts that size;
export again for another one.

ONNX: opset 16 is the first with ``GridSample`` (the warp), so ``opset < 16`` is refused. The
default exporter is torch's TorchScript-based one (``dynamo=False``): it writes the requested
opset directly and needs no package beyond ``onnx``. It is deprecated since torch 2.9 but present
in the torch we pin; ``exporter="dynamo"`` uses the ``torch.export``-based exporter instead
(needs ``onnxscript``; opset 18 or later).
"""
import contextlib
import json
import logging
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "MIN_ONNX_OPSET",
    "DEFAULT_ONNX_OPSET",
    "export_torchscript",
    "export_onnx",
    "load_exported",
    "ExportedModel",
    "compare_outputs",
    "write_export_info",
    "default_metadata",
]

logger = logging.getLogger(__name__)

MIN_ONNX_OPSET = 16  # GridSample entered the ONNX standard in opset 16
DEFAULT_ONNX_OPSET = 17  # LayerNormalization; widely supported by onnxruntime and TensorRT 8.6+
MIN_DYNAMO_OPSET = 18  # the torch.export-based exporter writes opset 18 natively


def _example_input(part: nn.Module) -> torch.Tensor:
    # The graph does not depend on the pixel values; a mid-grey image keeps every op finite.
    device = next(part.buffers()).device
    return torch.full(part.input_shape, 128.0, dtype=torch.float32, device=device)


@contextlib.contextmanager
def _quiet_tracing():
    """The context of every trace/export: hide the expected tracer warnings (the size-dependent
    constants are the point; the deprecation notices of torch.jit and of the TorchScript-based
    ONNX exporter are documented) and use only exportable attention kernels."""
    # nn.MultiheadAttention (K-Net's kernel interaction) takes a fused fast path in eval mode
    # (aten::_native_multi_head_attention) that has no ONNX symbolic; trace the composite ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=r".*The feature will be removed.*")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _StaticShapeGuard(nn.Module):
    """Scripted around the traced graph so that a wrong input size fails with a clear message
    instead of an obscure shape error deep in the graph (or, worse, a wrong result)."""

    def __init__(self, traced: nn.Module, input_shape: Sequence[int]):
        super().__init__()
        self.net = traced
        self.expected_shape: List[int] = [int(s) for s in input_shape]

    def forward(self, image: torch.Tensor):
        if list(image.shape) != self.expected_shape:
            raise RuntimeError(
                "This SFNet TorchScript file was exported for input shape "
                + str(self.expected_shape) + ", got " + str(list(image.shape))
                + "; resize the image or export again with --height/--width"
            )
        return self.net(image)


def export_torchscript(part: nn.Module, path: str) -> str:
    """Trace ``part`` at its static input shape and save the TorchScript module to ``path``."""
    example = _example_input(part)
    with _quiet_tracing(), torch.no_grad():
        # check_trace re-runs the model; our own verification compares with the model instead
        traced = torch.jit.trace(part, example, check_trace=False)
        guarded = torch.jit.script(_StaticShapeGuard(traced, part.input_shape))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    guarded.save(path)
    return path


def export_onnx(part: nn.Module, path: str, opset: int = DEFAULT_ONNX_OPSET,
                exporter: str = "torchscript") -> str:
    """
    Export ``part`` to ONNX at its static input shape; ``exporter`` is ``"torchscript"`` (torch's
    TorchScript-based exporter, default) or ``"dynamo"`` (torch.export-based, needs onnxscript).
    The input is named ``image``, the outputs ``part.output_names``.
    """
    if opset < MIN_ONNX_OPSET:
        raise ValueError(
            f"ONNX opset {opset} has no GridSample (the flow warp); use --opset {MIN_ONNX_OPSET} "
            "or later"
        )
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter={exporter!r}: expected 'torchscript' or 'dynamo'")
    if exporter == "dynamo":
        if opset < MIN_DYNAMO_OPSET:
            raise ValueError(
                f"The dynamo ONNX exporter writes opset {MIN_DYNAMO_OPSET} or later, got "
                f"--opset {opset}"
            )
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "The dynamo ONNX exporter needs onnxscript: `pip install onnxscript`, "
                "or use the default --onnx-exporter torchscript"
            ) from e
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    example = _example_input(part)
    kwargs = dict(input_names=["image"], output_names=list(part.output_names), opset_version=opset)
    with _quiet_tracing(), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(part, (example,), path, dynamo=False, do_constant_folding=True,
                              **kwargs)
        else:
            program = torch.onnx.export(part, (example,), dynamo=True, verbose=False, **kwargs)
            program.save(path, external_data=False)
    import onnx

    onnx.checker.check_model(path)
    return path


class ExportedModel:
    """
    Runs an exported file like the network part: ``__call__(image)`` takes a (1, 3, H, W)
    float32 tensor or array of raw pixel values and returns a tuple of numpy arrays, one per
    output. ONNX files run with onnxruntime's CPU provider.
    """

    def __init__(self, path: str, output_names: Sequence[str] = ()):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Exported model {path} does not exist")
        self.path = path
        self.format = "onnx" if path.endswith(".onnx") else "torchscript"
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only
            # As many threads as torch uses, and no busy-waiting between ops: onnxruntime's
            # default spinning threads slow everything down on a shared or small CPU.
            options.intra_op_num_threads = torch.get_num_threads()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.output_names = tuple(o.name for o in self._session.get_outputs())
            self.input_shape = tuple(self._session.get_inputs()[0].shape)
        else:
            with _quiet_tracing():
                self._module = torch.jit.load(path, map_location="cpu").eval()
            self.output_names = tuple(output_names)
            self.input_shape = tuple(self._module.expected_shape)

    def __call__(self, image) -> tuple:
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        image = np.ascontiguousarray(image, dtype=np.float32)
        if self.format == "onnx":
            return tuple(self._session.run(None, {"image": image}))
        # Without TorchScript's profiling optimisations, which take seconds on the first calls
        # and do not change the saved graph's results.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            out = self._module(torch.from_numpy(image))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.numpy() for o in out)


def compare_outputs(exported: Sequence[np.ndarray], reference: Sequence[torch.Tensor],
                    names: Sequence[str]) -> Dict[str, float]:
    """Maximum absolute difference per output; shape mismatches raise with the output's name."""
    if len(exported) != len(reference):
        raise ValueError(f"Exported model returns {len(exported)} outputs, PyTorch "
                         f"{len(reference)}")
    diffs = {}
    for name, e, r in zip(names, exported, reference):
        r = r.detach().cpu().numpy()
        if e.shape != r.shape:
            raise ValueError(f"Output {name}: exported shape {e.shape} != PyTorch shape {r.shape}")
        diff = np.abs(e.astype(np.float64) - r.astype(np.float64))
        diffs[name] = float(diff.max()) if e.size else 0.0
    return diffs


def write_export_info(path: str, info: Dict) -> str:
    """Write ``info`` (input/output contract, classes, versions) as JSON next to the export."""
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
    return path


def default_metadata(cfg, part: nn.Module, fmt: str, opset: Optional[int]) -> Dict:
    """What a user of the exported file needs to know, gathered from the config and model."""
    from detectron2.data import MetadataCatalog

    dataset = (list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN) or [""])[0]
    metadata = MetadataCatalog.get(dataset) if dataset else None
    info = {
        "format": fmt,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "input": {
            "name": "image",
            "shape": list(part.input_shape),
            "dtype": "float32",
            "value_range": "raw pixel values 0..255 (not normalised)",
            "channel_order": cfg.INPUT.FORMAT,
            "normalisation_in_graph": {"mean": list(cfg.MODEL.PIXEL_MEAN),
                                       "std": list(cfg.MODEL.PIXEL_STD)},
        },
        "outputs": list(part.output_names),
        "metadata_dataset": dataset,
        "torch_version": torch.__version__,
    }
    for key in ("stuff_classes", "thing_classes"):
        if metadata is not None and metadata.get(key, None):
            info[key] = list(metadata.get(key))
    if opset is not None:
        info["onnx_opset"] = opset
    return info


def load_exported(path: str, output_names: Sequence[str] = ()) -> ExportedModel:
    return ExportedModel(path, output_names)
