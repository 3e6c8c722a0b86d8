"""
``SFNetSemanticSegmentor``: the semantic meta-architecture of every SFNet / SFNet-Lite config
(``MODEL.META_ARCHITECTURE`` in configs/Base-SFNet.yaml). It is detectron2's
``SemanticSegmentor`` - built from the config by the same ``@configurable`` ``__init__`` and
``from_config``, with the same modules, state-dict keys and inference - plus one training step:
the backbone's **auxiliary losses** are added to the head's losses.

Contract with the backbone: a backbone that computes loss terms of its own during its forward
(RobustNet's instance-whitening loss, ``sfnet_d2/modeling/backbone/robustnet.py``) has a method
``pop_auxiliary_losses() -> Dict[str, Tensor]`` giving the terms of its last forward pass, each
named ``loss_*`` as detectron2's trainers expect. Its feature dict carries features only, so the
heads never see a loss. A backbone without that method (DFNet, MiT, detectron2's own) has none.

``collects_backbone_auxiliary_losses`` tells the config check in robustnet.py that this
meta-architecture carries such losses to the optimiser; one that does not (detectron2's plain
``SemanticSegmentor``, ``SFNetKNet``) is refused for the RobustNet loss modes when the model is
built, instead of silently training without the loss.
"""
from typing import Dict

import torch
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from torch import nn

__all__ = ["SFNetSemanticSegmentor", "backbone_auxiliary_losses"]


def backbone_auxiliary_losses(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """The loss terms ``backbone`` computed in its last forward pass; empty for a backbone that
    computes none (no ``pop_auxiliary_losses`` method)."""
    pop = getattr(backbone, "pop_auxiliary_losses", None)
    if pop is None:
        return {}
    losses = dict(pop())
    bad = [k for k in losses if not k.startswith("loss_")]
    if bad:
        raise ValueError(f"{type(backbone).__name__}.pop_auxiliary_losses() returned {bad}: "
                         "loss names must start with 'loss_' (detectron2 sums those)")
    return losses


@META_ARCH_REGISTRY.register()
class SFNetSemanticSegmentor(SemanticSegmentor):
    """detectron2's ``SemanticSegmentor`` whose training losses also hold the backbone's
    auxiliary losses (see the module docstring). Inference is ``SemanticSegmentor``'s, unchanged.
    """

    collects_backbone_auxiliary_losses = True

    def forward(self, batched_inputs):
        outputs = super().forward(batched_inputs)  # runs the backbone once, then the head
        if not self.training:
            return outputs
        auxiliary = backbone_auxiliary_losses(self.backbone)
        clash = sorted(set(auxiliary) & set(outputs))
        if clash:
            raise ValueError(f"Loss names {clash} come from both MODEL.BACKBONE.NAME "
                             f"({type(self.backbone).__name__}) and MODEL.SEM_SEG_HEAD.NAME "
                             f"({type(self.sem_seg_head).__name__}); one would hide the other")
        outputs.update(auxiliary)
        return outputs
