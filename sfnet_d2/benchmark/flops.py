"""
FLOPs of a model's network part with fvcore, counted as the paper counts them and as fvcore
counts the official models (measured by running lxtGH/SFSegNets@ba475ba): one multiply-add =
one FLOP ("GMACs"; the FLOP bound of the benchmark multiplies by 2), at a given input size, in
inference mode (no deep-supervision heads), on the network part alone
(sfnet_d2/deployment/network_part.py: normalised, padded image in, raw outputs out). For a
semantic model that is backbone + head, including the head's final upsampling of the logits to
the input size; for the K-Net panoptic model, ``forward_head`` up to the last stage's class
logits and kernel masks (the mask upsampling and the panoptic merge are post-processing).

:func:`flop_breakdown` groups the count per module, with the official code's module names beside
ours (official ``layer0..layer4`` = our ``backbone.stem, res2..res5``; ``fpn_in`` = the lateral
convs; ``fpn_out`` = the output convs; ``fpn_out_align`` = the FAMs; ``conv_last`` = our
``fuse_conv`` + ``predictor``).
"""
import logging
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from fvcore.nn import FlopCountAnalysis, flop_count_table
from fvcore.nn.jit_handles import get_shape

from sfnet_d2.deployment.network_part import (
    network_part_of,
    normalize_and_pad,
    padding_divisibility,
)
from sfnet_d2.engine import build_model_with_weights

__all__ = ["count_network_flops", "flop_count_analysis", "flop_breakdown", "FlopRow",
           "OFFICIAL_MODULE_NAMES",
           "count_parameters", "ModelCost", "analyze", "format_breakdown", "format_cost",
           "format_costs"]

# Our module -> the official SFSegNets module it corresponds to (lxtGH/SFSegNets@ba475ba,
# network/sfnet_resnet.py and network/nn/operators.py).
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


def _fused_attention_flops(inputs, outputs):
    """nn.MultiheadAttention's fused inference op (K-Net's kernel interaction; fvcore has no
    handle for it): the q/k/v and output projections plus Q K^T and A V, one multiply-add each.
    Inputs: query (B, N, C), key (B, M, C), ..."""
    batch, n, c = get_shape(inputs[0])
    m = get_shape(inputs[1])[1]
    return batch * (n * c * c + 2 * m * c * c + n * m * c * 2 + n * c * c)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_count_analysis(module: torch.nn.Module, inputs) -> FlopCountAnalysis:
    """fvcore's ``FlopCountAnalysis`` as this project counts: with a handle for the fused
    attention op, and no warnings about ops that fvcore counts no FLOPs for (elementwise ones,
    by its convention)."""
    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::_native_multi_head_attention", _fused_attention_flops)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def count_network_flops(model: torch.nn.Module, height: int, width: int) -> FlopCountAnalysis:
    """fvcore's analysis of the network part of ``model`` (``network_part_of``: module names as in
    the model for a SemanticSegmentor, starting with ``model.`` for K-Net) on one (height,
    width) image padded by the model's rule, in eval mode (:func:`flop_count_analysis`)."""
    part = network_part_of(model)
    was_training = model.training
    model.eval()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            images, _ = normalize_and_pad(torch.zeros(1, 3, height, width, device=device),
                                          model.pixel_mean, model.pixel_std,
                                          padding_divisibility(model))
            analysis = flop_count_analysis(part, images)
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
    ``sem_seg_head.neck`` of a semantic model; ``model`` of the K-Net one, whose part holds the
    whole model) its direct children with their counts and, where the parent runs ops of its own
    outside any child (e.g. the fusion's upsampling), a "(own ops)" remainder.
    ``sem_seg_head.fuse_conv`` and ``predictor`` are reported together as the official
    ``conv_last``.
    """
    by_module = analysis.by_module()
    if not expand:
        expand = (["backbone", "sem_seg_head", "sem_seg_head.neck"] if "backbone" in by_module
                  else ["model"])
    rows = [FlopRow("total", "", by_module[""] / 1e9, 0)]

    def visit(parent: str, depth: int):
        rows.append(FlopRow(parent, OFFICIAL_MODULE_NAMES.get(parent, ""),
                            by_module[parent] / 1e9, depth))
        children = _children(by_module, parent)
        last = (f"{parent}.fuse_conv", f"{parent}.predictor")
        if parent == "sem_seg_head" and set(last) <= set(children):
            children = [c for c in children if c not in last]
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

    covered = 0
    for name in expand:
        # top-level entries only; nested ones are visited from their parent
        if name in by_module and not any(name.startswith(p + ".") for p in expand if p != name):
            visit(name, 1)
            covered += by_module[name]
    if by_module[""] - covered and covered:
        # ops run outside every module call (K-Net: forward_head and the neck's
        # forward_features are plain methods, so their own ops are not in a module's scope)
        rows.append(FlopRow("(outside the modules above)", "", (by_module[""] - covered) / 1e9,
                            1))
    return rows


class ModelCost(NamedTuple):
    flops: FlopCountAnalysis  # fvcore's analysis of the network part
    total: float  # multiply-adds of the network part
    parameters: int  # of the whole model (inference and training-only modules)


def analyze(cfg, height: int, width: int) -> ModelCost:
    """FLOPs and parameters of ``cfg``'s model at (height, width). ``MODEL.WEIGHTS`` (not needed
    for the count) is read with the one safe loader when given, which also checks that the file
    fits the architecture."""
    model = build_model_with_weights(cfg, purpose="the FLOP count", required=False)
    flops = count_network_flops(model, height, width)
    return ModelCost(flops, flops.total(), count_parameters(model))


def format_breakdown(flops: FlopCountAnalysis) -> str:
    """:func:`flop_breakdown` as an indented table."""
    lines = [f"{'module':<48} {'official':<24} {'GFLOPs':>9}"]
    for row in flop_breakdown(flops):
        name = "  " * row.depth + row.name
        lines.append(f"{name:<48} {row.official:<24} {row.gmacs:>9.2f}")
    return "\n".join(lines)


def format_cost(name: str, cost: ModelCost, height: int, width: int, max_depth: int = 2) -> str:
    """fvcore's module table (to ``max_depth``), :func:`format_breakdown` and the totals."""
    return "\n".join([
        flop_count_table(cost.flops, max_depth=max_depth),
        f"\nPer-module breakdown at {height}x{width} (GFLOPs = 1e9 multiply-adds):",
        format_breakdown(cost.flops),
        f"\n{name}: {cost.total / 1e9:.2f} GFLOPs at {height}x{width}, {cost.parameters:,} "
        "parameters\n",
    ])


def format_costs(costs: Sequence[Tuple[str, ModelCost]], height: int, width: int) -> str:
    """A markdown table of several configs' parameters and GFLOPs (docs/PANOPTIC.md's columns)."""
    lines = [f"| config | params | GFLOPs at {height}x{width} |", "|---|---|---|"]
    for name, cost in costs:
        lines.append(f"| `{name}` | {cost.parameters:,} | {cost.total / 1e9:.2f} |")
    return "\n".join(lines)
