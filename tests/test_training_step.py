"""One SGD training step of the SFNet-Lite-R18 config (random init, a small batch, forward, OHEM
+ deep supervision losses, backward, update) with the OHEM before the count-first threshold
(``reference_ohem_cross_entropy`` in helpers.py) and with today's: same losses, gradients and
updated weights. Both mining paths run: at random init every p is near 1/19, below 0.7 (the count
decides); with OHEM_THRESH 0.02 the min_kept-th smallest p sets the threshold (kthvalue)."""
import copy
import os

import pytest
import torch
from detectron2.modeling import build_model
from helpers import ROOT, count_kthvalue_calls, reference_ohem_cross_entropy

import sfnet_d2.modeling.heads.sem_seg_head as sem_seg_head
from sfnet_d2.engine import build_config

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, "configs/cityscapes/semantic/sfnet_lite_R18.yaml")
# The config's 100000 scaled to a 2x128x256 batch (a quarter of the 4x256x512 we time).
MIN_KEPT = 25000


def _batch(n=2, h=128, w=256, seed=0):
    # n*h*w*0.9 = 59000 valid pixels, above MIN_KEPT: mining is on.
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        label = torch.randint(0, 19, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.1] = 255
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "sem_seg": label})
    return batch


def _step(model, batch):
    """Losses, gradients and weights after one SGD step (the recipe's momentum/decay)."""
    torch.manual_seed(0)  # the DSN head's Dropout2d
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, grads, copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("thresh,deep_supervision,selects", [(0.7, False, False),
                                                              (0.02, True, True)])
def test_training_step_matches_reference_ohem(monkeypatch, thresh, deep_supervision, selects):
    cfg = build_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.SFNET.OHEM_THRESH", thresh,
                                "MODEL.SFNET.OHEM_MIN_KEPT", MIN_KEPT,
                                "MODEL.SFNET.DEEP_SUPERVISION", deep_supervision])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    reference_model = copy.deepcopy(model)
    batch = _batch()

    calls = count_kthvalue_calls(monkeypatch)
    losses, grads, weights = _step(model, batch)
    num_heads = 2 if deep_supervision else 1
    assert len(calls) == (num_heads if selects else 0)
    assert len(losses) == num_heads

    monkeypatch.setattr(sem_seg_head, "ohem_cross_entropy", reference_ohem_cross_entropy)
    ref_losses, ref_grads, ref_weights = _step(reference_model, batch)

    assert losses.keys() == ref_losses.keys()
    for k in losses:
        assert torch.equal(losses[k], ref_losses[k]), (k, float(losses[k]), float(ref_losses[k]))
    assert grads.keys() == ref_grads.keys() and len(grads) > 50
    for n in grads:
        scale = ref_grads[n].abs().max().clamp(min=1e-12)
        assert float((grads[n] - ref_grads[n]).abs().max() / scale) <= 1e-6, n
    for n in weights:
        assert torch.allclose(weights[n], ref_weights[n], rtol=1e-6, atol=1e-9), n
