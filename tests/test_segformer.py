"""SegFormer's all-MLP decoder (SegFormerHead) against a hand-written forward and a hand-computed
loss, its published size, the SegFormer optimizer/schedule options of the Table 19 configs, and the
optimised inference path on a MiT model."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.solver.build import get_default_optimizer_params

from helpers import make_cfg
from sfnet_d2.deployment import build_inference_model
from sfnet_d2.modeling.heads.segformer_head import SegFormerHead
from sfnet_d2.solver import build_lr_scheduler, build_optimizer

B0_SHAPES = {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2 ** i)
             for i, c in enumerate((32, 64, 160, 256))}
SEGFORMER_B0 = "configs/ade20k/semantic/segformer_B0.yaml"


def _head(num_classes=5, embed_dim=16, seed=0):
    torch.manual_seed(seed)
    head = SegFormerHead(B0_SHAPES, in_features=["res5", "res2", "res4", "res3"],
                         num_classes=num_classes, embed_dim=embed_dim, norm="BN", dropout=0.1)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
        head.fuse.norm.running_mean.normal_()
        head.fuse.norm.running_var.uniform_(0.5, 2.0)
    return head.eval()


def test_head_equals_a_hand_written_all_mlp_decoder():
    head = _head()
    feats = {k: torch.randn(2, s.channels, 32 // s.stride * 2, 48 // s.stride * 2)
             for k, s in B0_SHAPES.items()}
    with torch.no_grad():
        got, _ = head(feats)
        size = feats["res2"].shape[-2:]
        embedded = []
        for i, level in enumerate(("res2", "res3", "res4", "res5")):  # fine to coarse
            lin = head.linear_c[i]
            x = torch.einsum("nchw,ec->nehw", feats[level], lin.weight) + lin.bias[:, None, None]
            embedded.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        x = torch.cat(embedded[::-1], dim=1)  # [c4, c3, c2, c1] as the official head
        x = torch.einsum("nchw,ec->nehw", x, head.fuse.weight[:, :, 0, 0])
        bn = head.fuse.norm
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
        logits = torch.einsum("nchw,kc->nkhw", x, head.predictor.weight[:, :, 0, 0]) \
            + head.predictor.bias[:, None, None]
        expected = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
    assert got.shape == (2, 5, 64, 96)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_loss_is_cross_entropy_over_the_labelled_pixels():
    head = _head(num_classes=3).train()
    # class-constant logits (0, 0.5, 2) everywhere: every labelled pixel's loss is
    # logsumexp(0, 0.5, 2) - logit[label], whatever the upsampling
    logits = torch.tensor([0.0, 0.5, 2.0])[None, :, None, None].expand(1, 3, 4, 4).contiguous()
    head.layers = lambda features: logits
    target = torch.full((1, 16, 16), 255, dtype=torch.long)
    target[0, :2, :] = 0   # 32 pixels of class 0
    target[0, 2, :8] = 2   # 8 pixels of class 2, the rest ignored
    _, losses = head({}, target)
    lse = math.log(1 + math.exp(0.5) + math.exp(2.0))
    expected = (32 * lse + 8 * (lse - 2.0)) / 40
    assert losses["loss_sem_seg"].item() == pytest.approx(expected, rel=1e-6)


def test_decoder_size_is_segformers():
    # embedding 256, 150 classes: (32+64+160+256)*256 + 4*256 linear layers, 1024*256 fuse conv,
    # 2*256 norm, 256*150 + 150 classifier = 433,302 (B0) and 564,374 for B1's widths
    head = SegFormerHead(B0_SHAPES, in_features=list(B0_SHAPES), num_classes=150)
    assert sum(p.numel() for p in head.parameters()) == 433_302
    b1 = {k: ShapeSpec(channels=2 * s.channels, stride=s.stride) for k, s in B0_SHAPES.items()}
    head = SegFormerHead(b1, in_features=list(b1), num_classes=150)
    assert sum(p.numel() for p in head.parameters()) == 564_374


def test_head_names_missing_levels():
    with pytest.raises(ValueError, match=r"IN_FEATURES=\['res2', 'p6'\].*\['p6'\]"):
        SegFormerHead(B0_SHAPES, in_features=["res2", "p6"], num_classes=3)


# ---------------------------------------------------------------------------------- optimizer
def _groups_by_param(optimizer):
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_segformer_recipe_adamw_head_lr_x10_no_decay_on_norms():
    cfg = make_cfg(SEGFORMER_B0)
    assert (cfg.SOLVER.OPTIMIZER.NAME, cfg.SOLVER.OPTIMIZER.HEAD_MULTIPLIER) == ("ADAMW", 10.0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    got = _groups_by_param(optimizer)
    lr = 6e-5
    assert got[id(model.backbone.res2.blocks[0].attn.q.weight)] == (lr, 0.01)
    assert got[id(model.backbone.res2.blocks[0].attn.q.bias)] == (lr, 0.01)
    assert got[id(model.backbone.res3.blocks[1].norm1.weight)] == (lr, 0.0)
    assert got[id(model.backbone.res5.norm.bias)] == (lr, 0.0)
    assert got[id(model.sem_seg_head.linear_c[0].weight)] == pytest.approx((10 * lr, 0.01))
    assert got[id(model.sem_seg_head.predictor.bias)] == pytest.approx((10 * lr, 0.01))
    # SegFormer's 'norm' rule matches parameter names, which leaves its decoder's BatchNorm
    # ("linear_fuse.bn") decayed; ours goes by layer type (docs/TRANSFORMERS.md)
    assert got[id(model.sem_seg_head.fuse.norm.weight)] == pytest.approx((10 * lr, 0.0))
    assert len(got) == sum(1 for _ in model.parameters())


def test_sgd_without_multiplier_is_detectron2s_default():
    cfg = make_cfg("configs/cityscapes/semantic/sfnet_lite_R18.yaml")
    assert cfg.SOLVER.OPTIMIZER.NAME == "SGD"
    model = build_model(cfg)
    ours = _groups_by_param(build_optimizer(cfg, model))
    theirs = {}
    for g in get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                          weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                          weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM):
        for p in g["params"]:
            theirs[id(p)] = (g["lr"], g["weight_decay"])
    assert ours == theirs
    cfg.SOLVER.OPTIMIZER.NAME = "LAMB"
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER.NAME='LAMB'"):
        build_optimizer(cfg, model)


def test_segformer_schedule_is_mmcv_poly_with_linear_warmup():
    cfg = make_cfg(SEGFORMER_B0)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 6e-5}, {"params": [], "lr": 6e-4}])
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = {}
    for it in range(1502):
        seen[it] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()

    def mmcv(base, it):  # mmcv PolyLrUpdaterHook(power 1, min_lr 0) + linear warm-up (ratio 1e-6)
        regular = base * (1 - it / 160000) ** 1.0
        if it < 1500:
            return regular * (1 - (1 - it / 1500) * (1 - 1e-6))
        return regular

    for it in (0, 1, 750, 1499, 1500, 1501):
        assert seen[it] == pytest.approx([mmcv(6e-5, it), mmcv(6e-4, it)], rel=1e-9)


# ---------------------------------------------------------------------------------- inference
def test_optimised_inference_path_keeps_the_logits():
    cfg = make_cfg(SEGFORMER_B0, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.sem_seg_head.fuse.norm.running_mean.normal_()
        model.sem_seg_head.fuse.norm.running_var.uniform_(0.5, 2.0)
    fast = build_inference_model(cfg, model)  # BN folded, channels-last, traced
    image = [{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}]
    with torch.no_grad():
        torch.testing.assert_close(fast(image)[0]["sem_seg"], model(image)[0]["sem_seg"],
                                   atol=1e-4, rtol=1e-4)
