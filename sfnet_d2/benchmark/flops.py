"""
FLOPs of a semantic model's network with fvcore, counted as the paper counts them and as fvcore
counts the official models (measured by running lxtGH/SFSegNets@ba475ba): one multiply-add =
one FLOP ("GMACs";
the FLOP bound of the benchmark multiplies by 2), at a given input size, in inference mode (no
deep-supervision heads), on the network alone (backbone + head, including the head's final
upsampling of the logits to the input size).

:func:`flop_breakdown` groups the count per module, with the official code's module names beside
ours (official ``layer0..layer4`` = our ``backbone.stem, res2..res5``; ``fpn_in`` = the lateral
convs; ``fpn_out`` = the output convs; ``fpn_out_align`` = the FAMs; ``conv_last`` = our
``fuse_conv`` + ``predictor``).
"""
import logging
from typing import List, NamedTuple, Optional

import torch
from detectron2.modeling import SemanticSegmentor
from fvcore.nn import FlopCountAnalysis

from sfnet_d2.deployment.optimized_model import SemanticNetwork

__all__ = ["count_network_flops", "flop_breakdown", "FlopRow", "OFFICIAL_MODULE_NAMES"]

# Our module -> the official SFSegNets module it corresponds to (official-sfnet.md sections 2-3).
OFFICIAL_MODULE_NAMES = {
    "backbone.stem": "layer0",
    "backbone.res2": "layer1",
    "backbone.res3": "layer2",
    "backbone.res4": "layer3",
    "backbone.res5": "layer4",
    "sem_seg_head.neck.ppm": "ppm",
    "sem_seg_head.neck.lateral_convs": "fpn_in",
    "sem_seg_head.neck.output_convs": "fpn_out",
    "sem_seg_head.neck.align_modules": "fpn_out_align (FAMs)",
    "sem_seg_head.neck.align_module": "fpn_out_align (GD-FAM)",
    "sem_seg_head.fuse_conv+predictor": "conv_last",
}


class FlopRow(NamedTuple):
    name: str  # our module path ("a+b" for a group), or "<parent> (own ops)" for the remainder
    official: str  # the official module's name, "" where there is none
    gmacs: float  # fvcore count / 1e9 (multiply-add = 1)
    depth: int  # indentation level for printing


class _HeadNetwork(torch.nn.Module):
    """The network part of a meta-architecture with ``forward_head(images)`` (the K-Net panoptic
    model): normalised images -> its outputs, flattened to a tuple of tensors for the tracer."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return tuple(t for t in _flatten(self.model.forward_head(images)) if torch.is_tensor(t))


def _flatten(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _flatten(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _flatten(v)
    else:
        yield x


def count_network_flops(model: torch.nn.Module, height: int, width: int) -> FlopCountAnalysis:
    """fvcore's analysis of the network part of ``model`` on a (1, 3, height, width) input, in eval
    mode: ``SemanticNetwork(model.backbone, model.sem_seg_head)`` for a SemanticSegmentor,
    ``model.forward_head`` for models that have one (K-Net panoptic; module names then start with
    ``model.``)."""
    if isinstance(model, SemanticSegmentor):
        net = SemanticNetwork(model.backbone, model.sem_seg_head)
    elif callable(getattr(model, "forward_head", None)):
        net = _HeadNetwork(model)
    else:
        raise TypeError(
            f"count_network_flops needs a detectron2 SemanticSegmentor (backbone + sem_seg_head) or "
            f"a model with forward_head(images), got {type(model).__name__}; count its network "
            "with fvcore.nn.FlopCountAnalysis"
        )
    was_training = model.training
    model.eval()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            analysis = FlopCountAnalysis(net, torch.zeros(1, 3, height, width, device=device))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.total()  # run the trace now, in eval mode
    finally:
        model.train(was_training)
    return analysis


def _children(by_module, parent: str) -> List[str]:
    prefix = parent + "." if parent else ""
    depth = parent.count(".") + 1 if parent else 0
    return [
        name for name in by_module
        if name.startswith(prefix) and name != parent and name.count(".") == depth
    ]


def flop_breakdown(analysis: FlopCountAnalysis,
                   expand: Optional[List[str]] = None) -> List[FlopRow]:
    """
    Rows: total, then for each module of ``expand`` (default: ``backbone``, ``sem_seg_head`` and
    ``sem_seg_head.neck``) its direct children with their counts and, where the parent runs ops of
    its own outside any child (e.g. the fusion's upsampling), a "(own ops)" remainder.
    ``sem_seg_head.fuse_conv`` and ``predictor`` are reported together as the official
    ``conv_last``.
    """
    by_module = analysis.by_module()
    expand = expand or ["backbone", "sem_seg_head", "sem_seg_head.neck"]
    rows = [FlopRow("total", "", by_module[""] / 1e9, 0)]

    def visit(parent: str, depth: int):
        rows.append(FlopRow(parent, OFFICIAL_MODULE_NAMES.get(parent, ""),
                            by_module[parent] / 1e9, depth))
        children = _children(by_module, parent)
        if parent == "sem_seg_head" and {f"{parent}.fuse_conv", f"{parent}.predictor"} <= set(children):
            children = [c for c in children if c not in (f"{parent}.fuse_conv", f"{parent}.predictor")]
            children.append(f"{parent}.fuse_conv+predictor")
        covered = 0
        for child in children:
            if child.endswith("fuse_conv+predictor"):
                count = by_module[f"{parent}.fuse_conv"] + by_module[f"{parent}.predictor"]
            else:
                count = by_module[child]
            covered += count
            if child in expand:
                visit(child, depth + 1)
            elif count:
                rows.append(FlopRow(child, OFFICIAL_MODULE_NAMES.get(child, ""), count / 1e9,
                                    depth + 1))
        remainder = by_module[parent] - covered
        if remainder:
            rows.append(FlopRow(f"{parent} (own ops)", "", remainder / 1e9, depth + 1))

    for name in expand:
        # top-level entries only; nested ones are visited from their parent
        if name in by_module and not any(name.startswith(p + ".") for p in expand if p != name):
            visit(name, 1)
    return rows
