"""
The stage loop shared by the backbones whose stages are child modules named after their output
level (DeepStemResNet, STDCNet, MixVisionTransformer): run them in order and keep the outputs of
the requested levels.
"""
from typing import Dict, Iterable, Optional

import torch
from torch import nn

__all__ = ["run_stages"]


def run_stages(
    backbone: nn.Module,
    x: torch.Tensor,
    stage_names: Iterable[str],
    out_features: Iterable[str],
    outputs: Optional[Dict[str, torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """
    Feed ``x`` through the children of ``backbone`` named ``stage_names``, one after the other.

    Returns ``outputs`` (a new dict when None) with the output of every stage whose name is in
    ``out_features`` added under that name. Callers pass only the stages up to the last requested
    level, so nothing past it is computed.
    """
    outputs = {} if outputs is None else outputs
    for name in stage_names:
        x = getattr(backbone, name)(x)
        if name in out_features:
            outputs[name] = x
    return outputs
