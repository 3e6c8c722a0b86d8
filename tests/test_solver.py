"""The one optimizer builder (sfnet_d2/solver/build.py): per-parameter learning rates and weight
decays against hand-computed values, the same rules for a semantic model and K-Net, detectron2's
``build_optimizer`` reproduced for SGD without multipliers, K-Net's former groups reproduced for
its configs, and full-model gradient clipping against ``torch.nn.utils.clip_grad_norm_``."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer as d2_build_optimizer
from torch import nn

from helpers import make_cfg
from sfnet_d2.config import add_sfnet_config
from sfnet_d2.solver import build_optimizer
from sfnet_d2.solver.build import NORM_TYPES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: small tensors

SEMANTIC = "configs/cityscapes/semantic/sfnet_lite_R18.yaml"
KNET_DEMO = "configs/demo/knet_sfnet_STDC1_demo_coco.yaml"
KNET_SMALL = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.KNET.NUM_PROPOSALS", "6",
              "MODEL.KNET.FEAT_CHANNELS", "32", "MODEL.KNET.FFN_CHANNELS", "64",
              "MODEL.KNET.NUM_STAGES", "2", "MODEL.KNET.STAGE_LOSS_WEIGHTS", "[1.0, 1.0]"]
# Every rule gives another value, so a parameter that follows the wrong rule is noticed.
BASE_LR, WD, WD_NORM, BIAS_FACTOR, WD_BIAS, BACKBONE_X, HEAD_X = (
    0.01, 1e-4, 0.0, 2.0, 3e-5, 0.25, 4.0)
RULES = ["SOLVER.BASE_LR", str(BASE_LR), "SOLVER.WEIGHT_DECAY", str(WD),
         "SOLVER.WEIGHT_DECAY_NORM", str(WD_NORM), "SOLVER.BIAS_LR_FACTOR", str(BIAS_FACTOR),
         "SOLVER.WEIGHT_DECAY_BIAS", str(WD_BIAS), "SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER",
         str(BACKBONE_X), "SOLVER.OPTIMIZER.HEAD_MULTIPLIER", str(HEAD_X),
         "MODEL.BACKBONE.FREEZE_AT", "0"]


def _hyperparams(optimizer):
    """{id(param): (lr, weight decay)} as the optimizer applies them."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
            for p in g["params"]}


def _first(model, in_backbone, kind, attr):
    """The first trainable parameter ``attr`` of a module of type ``kind`` inside (or outside)
    the backbone, with its name."""
    for name, module in model.named_modules():
        if name.startswith("backbone.") != in_backbone or not isinstance(module, kind):
            continue
        p = getattr(module, attr, None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            return f"{name}.{attr}", p
    raise AssertionError(f"no {kind} with a trainable {attr} (backbone: {in_backbone})")


# (in backbone, layer type, parameter) -> hand-computed (lr, weight decay)
EXPECTED = {
    (True, nn.Conv2d, "weight"): (BASE_LR * BACKBONE_X, WD),
    (True, NORM_TYPES, "weight"): (BASE_LR * BACKBONE_X, WD_NORM),
    (True, NORM_TYPES, "bias"): (BASE_LR * BIAS_FACTOR * BACKBONE_X, WD_BIAS),
    (False, nn.Conv2d, "weight"): (BASE_LR * HEAD_X, WD),
    (False, nn.Conv2d, "bias"): (BASE_LR * BIAS_FACTOR * HEAD_X, WD_BIAS),
    (False, NORM_TYPES, "weight"): (BASE_LR * HEAD_X, WD_NORM),
    (False, NORM_TYPES, "bias"): (BASE_LR * BIAS_FACTOR * HEAD_X, WD_BIAS),
}


def _semantic_model():
    cfg = make_cfg(SEMANTIC, RULES)
    return cfg, build_model(cfg)


def _knet_model():
    cfg = make_cfg(KNET_DEMO, KNET_SMALL + RULES)
    return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def both_tasks():
    torch.manual_seed(0)
    return {"semantic": _semantic_model(), "knet": _knet_model()}


@pytest.mark.parametrize("task", ["semantic", "knet"])
@pytest.mark.parametrize("optimizer_name", ["SGD", "ADAMW"])
def test_hand_computed_lr_and_weight_decay(both_tasks, task, optimizer_name):
    cfg, model = both_tasks[task]
    cfg = cfg.clone()
    cfg.SOLVER.OPTIMIZER.NAME = optimizer_name
    optimizer = build_optimizer(cfg, model)
    classes = {"SGD": torch.optim.SGD, "ADAMW": torch.optim.AdamW}
    assert isinstance(optimizer, classes[optimizer_name])
    got = _hyperparams(optimizer)
    assert len(got) == sum(1 for p in model.parameters() if p.requires_grad)
    for (in_backbone, kind, attr), (lr, wd) in EXPECTED.items():
        name, p = _first(model, in_backbone, kind, attr)
        assert got[id(p)] == pytest.approx((lr, wd), rel=1e-12), name
    if optimizer_name == "SGD":
        assert optimizer.defaults["momentum"] == cfg.SOLVER.MOMENTUM
    else:
        assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8


def test_one_rule_for_both_tasks(both_tasks):
    """Every parameter of both models gets exactly what its (backbone?, norm?, bias?) class says,
    and the classes present in both models get bitwise the same values."""
    seen = {}
    for task, (cfg, model) in both_tasks.items():
        got = _hyperparams(build_optimizer(cfg, model))
        for module_name, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                key = (module_name.startswith("backbone."), isinstance(module, NORM_TYPES),
                       name == "bias")
                seen.setdefault(key, {})[task] = got[id(p)]
                assert got[id(p)] == seen[key][task], (task, module_name, name)
    shared = [values for values in seen.values() if len(values) == 2]
    assert len(shared) >= 5  # both models have conv/norm weights and biases inside/outside
    for values in shared:
        assert values["semantic"] == values["knet"]


def _named_groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [({k: v for k, v in g.items() if k not in ("params", "initial_lr")},
             [names[id(p)] for p in g["params"]]) for g in optimizer.param_groups]


@pytest.mark.parametrize("config,opts", [
    ("configs/cityscapes/semantic/sfnet_lite_R18.yaml", []),
    ("configs/cityscapes/semantic/sfnet_R18.yaml", ["SOLVER.BIAS_LR_FACTOR", "2.0",
                                                    "SOLVER.WEIGHT_DECAY_BIAS", "0.0"]),
    ("configs/ade20k/semantic/sfnet_lite_R50.yaml", ["SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                                                     "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                                                     "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01"]),
])
def test_sgd_without_multipliers_is_detectron2s_build_optimizer(config, opts):
    cfg = make_cfg(config, opts)
    assert cfg.SOLVER.OPTIMIZER.NAME == "SGD"
    torch.manual_seed(0)
    model = build_model(cfg)
    theirs_model = copy.deepcopy(model)
    ours, theirs = build_optimizer(cfg, model), d2_build_optimizer(cfg, theirs_model)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.defaults == theirs.defaults
    assert _named_groups(ours, model) == _named_groups(theirs, theirs_model)
    # one step from the same gradients gives bitwise the same weights
    for (_, p), (_, q) in zip(model.named_parameters(), theirs_model.named_parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    ours.step()
    theirs.step()
    for (name, p), (_, q) in zip(model.named_parameters(), theirs_model.named_parameters()):
        assert torch.equal(p, q), name


def _former_knet_rule(cfg, model):
    """K-Net's groups before the one builder (sfnet_d2/modeling/meta_arch/knet/training.py,
    removed): lr x BACKBONE_MULTIPLIER under "backbone."; norm layers (also any type whose name
    contains "norm") WEIGHT_DECAY_NORM with no bias rule; other biases WEIGHT_DECAY_BIAS (None =
    WEIGHT_DECAY) and lr x BIAS_LR_FACTOR."""
    s, out = cfg.SOLVER, {}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full_name = f"{module_name}.{name}"
            lr = s.BASE_LR * (s.OPTIMIZER.BACKBONE_MULTIPLIER
                              if full_name.startswith("backbone.") else 1.0)
            if is_norm:
                wd = s.WEIGHT_DECAY_NORM
            elif name == "bias":
                wd = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
                lr *= s.BIAS_LR_FACTOR
            else:
                wd = s.WEIGHT_DECAY
            out[id(p)] = (lr, wd)
    return out


@pytest.mark.parametrize("config", ["configs/coco/panoptic/knet_sfnet_R18.yaml",
                                    "configs/cityscapes/panoptic/knet_sfnet_STDC1.yaml",
                                    KNET_DEMO])
def test_knet_configs_keep_their_former_groups_and_official_recipe(config):
    cfg = make_cfg(config, KNET_SMALL + ["MODEL.STDC.NORM", "BN"])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    got = _hyperparams(optimizer)
    assert got == _former_knet_rule(cfg, model)
    # the official recipe: AdamW lr 1e-4 (demo: 1e-3, backbone x1), weight decay 0.05 on every
    # parameter, backbone lr x0.25, whole-model gradient clipping at norm 1
    demo = config == KNET_DEMO
    base, backbone_x = (1e-3, 1.0) if demo else (1e-4, 0.25)
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = base * (backbone_x if name.startswith("backbone.") else 1.0)
            assert got[id(p)] == (lr, 0.05), name
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(optimizer).__name__ == "AdamWWithFullModelGradientClip"
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert optimizer.clip_params == [p for p in model.parameters() if p.requires_grad]
    # ... in the order the former optimizer summed the norm (its groups, by value, chained), so
    # the clipped gradients are bitwise the former ones
    former, former_groups = _former_knet_rule(cfg, model), {}
    for p in model.parameters():
        if p.requires_grad:
            former_groups.setdefault(former[id(p)], []).append(id(p))
    assert [id(p) for p in optimizer.clip_params] == sum(former_groups.values(), [])


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def _clip_cfg(clip_type, name="ADAMW"):
    cfg = get_cfg()
    add_sfnet_config(cfg)
    cfg.SOLVER.OPTIMIZER.NAME = name
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


@pytest.mark.parametrize("name", ["ADAMW", "SGD"])
def test_full_model_clipping_clips_the_global_norm(name):
    torch.manual_seed(0)
    model = _Tiny()
    grads = [torch.randn_like(p) * 10 for p in model.parameters()]
    reference = copy.deepcopy(model)
    for p, q, g in zip(model.parameters(), reference.parameters(), grads):
        p.grad, q.grad = g.clone(), g.clone()
    optimizer = build_optimizer(_clip_cfg("full_model", name), model)
    optimizer.step()
    # torch's global clipping of a copy, then the unclipped optimizer on it
    total = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5, 2.0)
    assert total > 5.0  # the gradients were far above the limit
    plain = _clip_cfg("full_model", name)
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
    build_optimizer(plain, reference).step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad)
        assert torch.equal(p, q)
    clipped_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm()
                                                         for p in model.parameters()]))
    assert clipped_norm == pytest.approx(0.5, rel=1e-5)
    # detectron2's "norm" clips each parameter on its own: the global norm stays above 0.5
    per_param = _Tiny()
    for p, g in zip(per_param.parameters(), grads):
        p.grad = g.clone()
    build_optimizer(_clip_cfg("norm", name), per_param).step()
    norms = torch.stack([p.grad.norm() for p in per_param.parameters()])
    assert torch.all(norms <= 0.5 + 1e-6) and torch.linalg.vector_norm(norms) > 0.6


@pytest.mark.parametrize("key,value,message", [
    ("SOLVER.OPTIMIZER.NAME", "LAMB", r"SOLVER.OPTIMIZER.NAME='LAMB' is not one of"),
    ("SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER", 0.0, r"SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER=0.0 must"),
    ("SOLVER.OPTIMIZER.HEAD_MULTIPLIER", -1.0, r"SOLVER.OPTIMIZER.HEAD_MULTIPLIER=-1.0 must"),
    ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "global", r"CLIP_TYPE='global' is not one of"),
])
def test_bad_settings_name_the_key(key, value, message):
    cfg = _clip_cfg("norm")
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_optimizer(cfg, _Tiny())


def test_backbone_multiplier_needs_a_backbone():
    cfg = _clip_cfg("norm")
    cfg.SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER = 0.5
    with pytest.raises(ValueError, match=r"BACKBONE_MULTIPLIER=0.5 needs a model with a "
                                         r"`backbone`; Linear has none"):
        build_optimizer(cfg, nn.Linear(2, 2))
