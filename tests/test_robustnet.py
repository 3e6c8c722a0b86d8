"""RobustNet instance normalisation / (selective) whitening: covariance and loss on hand-built
features, optimal 1-D k-means, sensitive-element selection, backbone options (default unchanged),
the loss reaching the model's losses, checkpoints, the ISW statistics pass and its training hook,
and the Table 17 configs."""
import itertools
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from helpers import ROOT, make_cfg
from sfnet_d2.engine import SFNetCheckpointer
from sfnet_d2.data.dataset_mappers.photometric_pair_mapper import PhotometricPairMapper
from sfnet_d2.engine.isw_hook import compute_isw_masks
from sfnet_d2.modeling.backbone import DeepStemResNet, STDCNet
from sfnet_d2.modeling.backbone.robustnet import (
    WHITENING_LOSS_KEY, InstanceWhitening, covariance_pair_variance, instance_covariance,
    kmeans_1d, record_whitened_features, robustnet_whitening_loss, select_sensitive_covariances,
    strict_upper_mask, whitening_loss, whitening_modules)

LITE_R18 = "configs/cityscapes/semantic/sfnet_lite_R18.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    # These tests run many small ops, for which one thread is much faster on the shared 2-core
    # machine than two (measured: 0.1 s vs 2.4 s for the 100-step whitening test).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ covariance and loss

def _orthogonal_patterns(h=8, w=8):
    """Three zero-mean, unit-variance (biased) patterns, pairwise orthogonal over the pixels."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    a = ((-1.0) ** (yy + xx)).float()        # checkerboard
    b = ((-1.0) ** (yy // 2)).float()        # horizontal stripes, 2 rows
    c = ((-1.0) ** (xx // 4)).float()        # vertical halves of 4 columns
    return a, b, c


def test_instance_norm_standardises_every_instance_and_channel():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7) * torch.tensor([0.1, 1, 10]).view(3, 1, 1, 1) + 4.0
    y = InstanceWhitening(5, "isw")(x)
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(y.var(dim=(2, 3), unbiased=False), torch.ones(3, 5), atol=2e-3)
    # so the covariance diagonal is HW / (HW - 1) (+ eps): identity up to the unbiased factor
    diag = torch.diagonal(instance_covariance(y), dim1=1, dim2=2)
    assert torch.allclose(diag, torch.full((3, 5), 42 / 41), atol=2e-3)


def test_covariance_and_iw_loss_of_hand_built_features():
    a, b, _ = _orthogonal_patterns()
    f = torch.stack([a, a, b]).unsqueeze(0)  # channels 0 and 1 identical, 2 orthogonal to both
    hw, eps = 64, 1e-5
    cov = instance_covariance(f)[0]
    expected = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]) * hw / (hw - 1) + eps * torch.eye(3)
    assert torch.allclose(cov, expected, atol=1e-6)
    # IW: the three off-diagonal elements, only (0, 1) non-zero: mean |.| = (64/63) / 3
    assert float(whitening_loss(f, strict_upper_mask(3))) == pytest.approx(hw / (hw - 1) / 3, rel=1e-6)
    # ISW: only the masked elements count, divided by how many there are
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = True
    assert float(whitening_loss(f, mask)) == pytest.approx(0.0, abs=1e-7)
    mask[0, 1] = True
    assert float(whitening_loss(f, mask)) == pytest.approx(hw / (hw - 1) / 2, rel=1e-6)
    # a batch averages its instances; an empty mask gives 0
    g = torch.stack([a, b, -b]).unsqueeze(0)  # (1, 2) anti-correlated
    batch = torch.cat([f, g])
    assert float(whitening_loss(batch, strict_upper_mask(3))) == pytest.approx(hw / (hw - 1) / 3, rel=1e-6)
    assert float(whitening_loss(batch, torch.zeros(3, 3, dtype=torch.bool))) == 0.0


def test_iw_loss_gradient_whitens_correlated_features():
    # A learnable 1x1 mixing before IN, trained on the IW loss alone, makes the covariance of the IN
    # output identity-like (off-diagonals -> 0, diagonal ~1).
    torch.manual_seed(0)
    base = torch.randn(1, 4, 12, 12)
    mixing = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.4, 0, 0], [0.5, 0.5, 0.7, 0], [0, 0, 0.8, 0.6]])
    x = torch.einsum("oc,bchw->bohw", mixing, base)
    conv = torch.nn.Conv2d(4, 4, 1, bias=False)
    torch.nn.init.eye_(conv.weight[:, :, 0, 0])
    norm = InstanceWhitening(4, "iw")
    off = ~torch.eye(4, dtype=torch.bool)
    before = instance_covariance(norm(conv(x))).detach()[:, off].abs().max()
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.StepLR(opt, 25, 0.5)  # L1: shrinking steps to settle
    for _ in range(100):
        loss = whitening_loss(norm(conv(x)), strict_upper_mask(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    cov = instance_covariance(norm(conv(x))).detach()
    assert before > 0.9 and cov[:, off].abs().max() < 0.03
    assert torch.allclose(torch.diagonal(cov, dim1=1, dim2=2), torch.full((1, 4), 144 / 143), atol=2e-3)


# ------------------------------------------------------------------ k-means and selection

def _brute_force_kmeans_cost(x, k):
    u = np.unique(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(u)), k - 1):
        bounds = [0, *cuts, len(u)]
        cost = 0.0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            seg = x[(x >= u[lo]) & (x <= u[hi - 1])]
            cost += ((seg - seg.mean()) ** 2).sum()
        best = min(best, cost)
    return best


def test_kmeans_1d_is_optimal_and_labels_by_value():
    rng = np.random.RandomState(0)
    for trial in range(60):
        n, k = rng.randint(3, 10), rng.randint(2, 5)
        x = np.round(rng.rand(n) ** 3, 2) if trial % 2 else rng.rand(n) * 1e-4
        if k >= len(np.unique(x)):
            continue
        labels = kmeans_1d(x, k)
        cost = sum(((x[labels == c] - x[labels == c].mean()) ** 2).sum() for c in np.unique(labels))
        assert cost == pytest.approx(_brute_force_kmeans_cost(x, k), rel=1e-9, abs=1e-15)
        order = np.argsort(x, kind="stable")
        assert np.all(np.diff(labels[order]) >= 0)  # cluster ids grow with the value
    assert list(kmeans_1d([5.0, 1.0, 1.0, 9.0], 5)) == [1, 0, 0, 2]  # k >= distinct values


def test_selection_masks_exactly_the_high_variance_elements():
    rng = np.random.RandomState(1)
    c = 7
    var = torch.zeros(c, c, dtype=torch.float64)
    upper = strict_upper_mask(c)
    var[upper] = torch.from_numpy(rng.uniform(0, 0.01, int(upper.sum())))
    high = [(0, 3), (2, 5), (4, 6)]
    mid = [(1, 2), (0, 6)]
    for i, j in high:
        var[i, j] = 1.0 + 0.1 * i
    for i, j in mid:
        var[i, j] = 0.4
    expect_high = torch.zeros(c, c, dtype=torch.bool)
    for i, j in high:
        expect_high[i, j] = True
    expect_mid = expect_high.clone()
    for i, j in mid:
        expect_mid[i, j] = True
    # 3 groups (low, mid, high): mid + high are sensitive; 2 groups put mid with the low ones
    assert torch.equal(select_sensitive_covariances(var, 3), expect_mid)
    assert torch.equal(select_sensitive_covariances(var, 2), expect_high)
    var[1, 2] = var[0, 6] = 0.8  # now closer to the high group: selected with 2 groups too
    assert torch.equal(select_sensitive_covariances(var, 2), expect_mid)
    with pytest.raises(ValueError, match="CLUSTERS"):
        select_sensitive_covariances(var, 1)


def test_pair_statistics_select_the_style_sensitive_channel_pairs():
    # 5 channels; an "augmentation" flips the sign of channel 1's correlation with channel 0 and
    # turns the correlation of channels 3 and 4 from 1 to a random value in [-1, 0]; every other
    # covariance is the same in both views up to noise.
    torch.manual_seed(0)
    a, b, c = _orthogonal_patterns()
    sums = torch.zeros(5, 5, dtype=torch.float64)
    norm = InstanceWhitening(5, "isw")
    for _ in range(6):
        noise = 0.05 * torch.randn(5, 8, 8)
        mix = torch.rand(())
        original = torch.stack([a, a, b, c, c]) + noise
        augmented = torch.stack([a, -a, b, c, (1 - mix) * b - mix * c]) + noise
        cov = instance_covariance(norm(torch.stack([augmented, original])))
        sums += covariance_pair_variance(cov[1:2], cov[0:1])[0].double()
    variance = sums / 6
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0, 1] = expected[3, 4] = True
    assert torch.equal(select_sensitive_covariances(variance, 2), expected)
    # the pair variance is the unbiased variance of the two values (official torch.var over [aug, orig])
    ca, co = torch.randn(1, 5, 5), torch.randn(1, 5, 5)
    ref = torch.var(torch.stack([ca, co]), dim=0) * strict_upper_mask(5)
    assert torch.allclose(covariance_pair_variance(co, ca), ref, atol=1e-6)


# ------------------------------------------------------------------ backbones

def _copy_matching(dst, src):
    """Copy every parameter/buffer of src whose name and shape exist in dst."""
    sd = {k: v for k, v in src.state_dict().items() if k in dst.state_dict()
          and dst.state_dict()[k].shape == v.shape}
    dst.load_state_dict(sd, strict=False)


@pytest.mark.parametrize("cls,kwargs", [(DeepStemResNet, {"depth": 18}), (STDCNet, {"name": "STDC2"})])
def test_option_off_is_the_unchanged_backbone(cls, kwargs):
    torch.manual_seed(0)
    default = cls(**kwargs).eval()
    torch.manual_seed(0)
    off = cls(**kwargs, robustnet_mode="none", robustnet_layers=("stem", "res2", "res3")).eval()
    assert not whitening_modules(off)
    assert list(off.state_dict()) == list(default.state_dict())
    assert all(torch.equal(off.state_dict()[k], v) for k, v in default.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    out_default, out_off = default(x), off(x)
    assert all(torch.equal(out_default[k], out_off[k]) for k in out_default)


@pytest.mark.parametrize("cls,kwargs,positions,param_delta", [
    (DeepStemResNet, {"depth": 18},
     {"stem.conv3.norm": (128, 2), "res2.1.instance_norm": (64, 4), "res3.1.instance_norm": (128, 8)},
     -2 * 128),  # the BatchNorm of the stem's third conv is replaced
    (STDCNet, {"name": "STDC2"},
     {"stem.conv1.norm": (32, 2), "stem.conv2.norm": (64, 4), "res3.4": (256, 8)},
     -2 * (32 + 64)),
])
def test_isw_positions_features_and_loss(cls, kwargs, positions, param_delta):
    torch.manual_seed(0)
    default = cls(**kwargs)
    model = cls(**kwargs, robustnet_mode="isw", robustnet_layers=("stem", "res2", "res3"),
                robustnet_loss_weight=0.6)
    assert sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in default.parameters()) == param_delta
    modules = dict(model.named_modules())
    for name, (channels, _) in positions.items():
        assert isinstance(modules[name], InstanceWhitening) and modules[name].channels == channels
    x = torch.randn(2, 3, 64, 96)
    with record_whitened_features(model) as recorded:
        model.train()(x)
    names = {id(m): n for n, m in modules.items()}
    assert [names[id(m)] for m, _ in recorded] == list(positions)
    for (_, f), (channels, stride) in zip(recorded, positions.values()):
        assert f.shape == (2, channels, 64 // stride, 96 // stride)
        assert torch.allclose(f.mean(dim=(2, 3)), torch.zeros(2, channels), atol=1e-4)
    # the features carry no loss; before the ISW mask exists the loss is 0; with every
    # off-diagonal element selected it is the IW loss of the same weights
    out = model(x)
    assert set(out) == {"res2", "res3", "res4", "res5"}
    assert set(model.pop_auxiliary_losses()) == {WHITENING_LOSS_KEY}
    assert model.pop_auxiliary_losses() == {}  # taken once
    model(x)
    assert float(model.pop_auxiliary_losses()[WHITENING_LOSS_KEY]) == 0.0
    for m in whitening_modules(model):
        m.set_sensitive_mask(torch.ones(m.channels, m.channels, dtype=torch.bool))
    iw = cls(**kwargs, robustnet_mode="iw", robustnet_layers=("stem", "res2", "res3"),
             robustnet_loss_weight=0.6).train()
    _copy_matching(iw, model)
    torch.manual_seed(1)
    model(x)
    loss_isw = model.pop_auxiliary_losses()[WHITENING_LOSS_KEY]
    torch.manual_seed(1)
    with record_whitened_features(iw) as recorded_iw:
        iw(x)
    loss_iw = iw.pop_auxiliary_losses()[WHITENING_LOSS_KEY]
    assert float(loss_isw) > 0 and float(loss_isw) == pytest.approx(float(loss_iw), rel=1e-5)
    assert float(loss_iw) == pytest.approx(0.6 * float(robustnet_whitening_loss(recorded_iw)), rel=1e-6)
    # the loss alone trains the stem; in eval mode there is no loss entry
    loss_isw.backward()
    assert model.stem.conv1.weight.grad.abs().sum() > 0
    assert WHITENING_LOSS_KEY not in model.eval()(x) and model.pop_auxiliary_losses() == {}


def _reference_whitening_loss(recorded, weight):
    """A second implementation of the loss from the recorded IN outputs: covariances as explicit
    sums over pixels in float64, masked elements listed by index (strict upper triangle from
    triu_indices for IW, the module's mask for ISW)."""
    per_layer = []
    for module, f in recorded:
        b, c, h, w = f.shape
        x = f.detach().double().reshape(b, c, h * w)
        cov = torch.einsum("bip,bjp->bij", x, x) / (h * w - 1) + 1e-5 * torch.eye(c).double()
        if module.mode == "iw":
            rows, cols = torch.triu_indices(c, c, offset=1)
        else:
            rows, cols = module.sensitive_mask.nonzero(as_tuple=True)
        per_layer.append(cov[:, rows, cols].abs().mean(dim=1).mean())
    return weight * float(torch.stack(per_layer).mean())


def _batch(n=2, size=64):
    return [{"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8),
             "sem_seg": torch.randint(0, 19, (size, size))} for _ in range(n)]


@pytest.mark.parametrize("mode", ["iw", "isw"])
def test_whitening_loss_reaches_the_segmentor_losses(mode):
    from sfnet_d2.modeling.meta_arch import SFNetSemanticSegmentor

    cfg = make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", mode, "MODEL.SFNET.OHEM_MIN_KEPT", "1000",
                              "MODEL.ROBUSTNET.LOSS_WEIGHT", "0.7"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert type(model) is SFNetSemanticSegmentor
    if mode == "isw":
        generator = torch.Generator().manual_seed(0)
        for m in whitening_modules(model):
            m.set_sensitive_mask(torch.rand(m.channels, m.channels, generator=generator) > 0.6)
    head_inputs = []
    model.sem_seg_head.register_forward_pre_hook(lambda _m, args: head_inputs.append(set(args[0])))
    batch = _batch()
    with record_whitened_features(model.backbone) as recorded:
        losses = model(batch)
    assert list(losses) == ["loss_sem_seg", WHITENING_LOSS_KEY]  # names and order as before
    assert float(losses[WHITENING_LOSS_KEY]) > 0
    assert len(recorded) == 3
    assert float(losses[WHITENING_LOSS_KEY]) == pytest.approx(
        _reference_whitening_loss(recorded, 0.7), rel=1e-5)
    assert head_inputs == [{"res2", "res3", "res4", "res5"}]  # the head sees features only
    assert model.backbone.pop_auxiliary_losses() == {}  # handed over, not kept
    # the loss trains the backbone through the model's losses, and nothing else changes
    sum(losses.values()).backward()
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model([{"image": batch[0]["image"]}])[0]["sem_seg"].shape == (19, 64, 64)


@pytest.mark.parametrize("config,opts", [
    (LITE_R18, []),                                                   # option off
    (LITE_R18, ["MODEL.ROBUSTNET.MODE", "is"]),                       # no-loss mode
    ("configs/cityscapes/semantic/sfnet_DF1.yaml", ["MODEL.DFNET.NORM", "BN"]),  # no option
])
def test_a_backbone_without_whitening_loss_adds_no_key(config, opts):
    cfg = make_cfg(config, ["MODEL.SFNET.OHEM_MIN_KEPT", "1000", *opts])
    model = build_model(cfg).train()
    assert list(model(_batch())) == ["loss_sem_seg"]


def test_whitening_loss_with_another_head_and_the_plain_segmentor():
    # The loss no longer depends on the head: the FCN baseline head carries it too.
    cfg = make_cfg("configs/cityscapes/semantic/ablations/fcn_R18.yaml",
                   ["MODEL.ROBUSTNET.MODE", "iw", "MODEL.SFNET.OHEM_MIN_KEPT", "1000"])
    model = build_model(cfg).train()
    with record_whitened_features(model.backbone) as recorded:
        losses = model(_batch())
    assert set(losses) == {"loss_sem_seg", WHITENING_LOSS_KEY}
    assert float(losses[WHITENING_LOSS_KEY]) == pytest.approx(
        _reference_whitening_loss(recorded, 0.6), rel=1e-5)
    # detectron2's plain SemanticSegmentor would drop it: refused for the loss modes only
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE=SemanticSegmentor"):
        build_model(make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "iw",
                                        "MODEL.META_ARCHITECTURE", "SemanticSegmentor"]))
    build_model(make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "in",
                                    "MODEL.META_ARCHITECTURE", "SemanticSegmentor"]))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.ROBUSTNET.MODE"):
        build_model(make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "wt"]))
    with pytest.raises(ValueError, match="MODEL.ROBUSTNET.LAYERS"):
        build_model(make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "isw",
                                        "MODEL.ROBUSTNET.LAYERS", ["stem", "res9"]]))
    # a loss mode inside detectron2's FPN wrapper would lose the loss: refused
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME=build_sfnet_fpn_backbone"):
        build_model(make_cfg("configs/ade20k/semantic/semantic_fpn_R50.yaml",
                             ["MODEL.ROBUSTNET.MODE", "iw"]))
    # a loss-free mode is fine there
    build_model(make_cfg("configs/ade20k/semantic/semantic_fpn_R50.yaml",
                         ["MODEL.ROBUSTNET.MODE", "in", "MODEL.RESNETS.DEPTH", 18,
                          "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]]))
    # a backbone without the option: the Trainer's build_model refuses instead of ignoring it
    from sfnet_d2.engine import Trainer

    cfg = make_cfg("configs/cityscapes/semantic/sfnet_DF1.yaml", ["MODEL.ROBUSTNET.MODE", "is"])
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME=build_dfnet_backbone has no such"):
        Trainer.build_model(cfg)


def test_checkpoints_imagenet_weights_load_and_masks_round_trip(tmp_path):
    torch.manual_seed(0)
    plain = build_model(make_cfg(LITE_R18))
    path = str(tmp_path / "backbone.pth")
    torch.save({"model": {k: v for k, v in plain.state_dict().items() if k.startswith("backbone.")}},
               path)
    cfg = make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "isw"])
    isw = build_model(cfg)
    SFNetCheckpointer(isw).load(path)  # the stem's replaced BatchNorm entries are dropped, no error
    for k, v in isw.backbone.state_dict().items():
        if "sensitive_mask" not in k and "mask_ready" not in k:
            assert torch.equal(v, plain.backbone.state_dict()[k]), k
    assert not any(bool(m.mask_ready) for m in whitening_modules(isw))
    for i, m in enumerate(whitening_modules(isw)):
        m.set_sensitive_mask(torch.rand(m.channels, m.channels) > 0.3 + 0.1 * i)
    full = str(tmp_path / "isw.pth")
    torch.save({"model": isw.state_dict()}, full)
    again = build_model(cfg)
    SFNetCheckpointer(again).load(full)
    for a, b in zip(whitening_modules(isw), whitening_modules(again)):
        assert bool(b.mask_ready) and torch.equal(a.sensitive_mask, b.sensitive_mask)
        assert not torch.tril(b.sensitive_mask).any()


# ------------------------------------------------------------------ ISW statistics and hook

def test_photometric_pair_mapper(demo_datasets):
    cfg = make_cfg(LITE_R18)
    mapper = PhotometricPairMapper(cfg)
    record = DatasetCatalog.get(demo_datasets[0])[0]
    original, augmented = mapper(record, seed=3)
    assert original.dtype == torch.uint8 and original.shape == (3, 128, 256)
    assert augmented.shape == original.shape and not torch.equal(augmented, original)
    again = mapper(record, seed=3)
    assert torch.equal(again[0], original) and torch.equal(again[1], augmented)
    assert not torch.equal(mapper(record, seed=4)[1], augmented)


def test_compute_isw_masks_on_demo_data(demo_datasets):
    cfg = make_cfg(LITE_R18, ["MODEL.ROBUSTNET.MODE", "isw"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    records = DatasetCatalog.get(demo_datasets[0])
    mapper = PhotometricPairMapper(cfg)
    counts1 = compute_isw_masks(model, [("demo", records)], mapper, trials=1, images_per_trial=2,
                                clusters=2, seed=5)
    first = [m.sensitive_mask.clone() for m in whitening_modules(model)]
    assert model.training and model.backbone.training  # mode restored
    counts2 = compute_isw_masks(model, [("demo", records)], mapper, trials=2, images_per_trial=2,
                                clusters=2, seed=5)
    for m, c1, c2, f in zip(whitening_modules(model), counts1, counts2, first):
        assert bool(m.mask_ready) and not torch.tril(m.sensitive_mask).any()
        assert 0 < c2 <= c1 < m.channels * (m.channels - 1) // 2
        assert not (m.sensitive_mask & ~f).any()  # the second round only removes elements


@pytest.mark.slow
def test_trainer_runs_the_isw_statistics_once_and_starts_the_loss(demo_datasets, tmp_path):
    from sfnet_d2.engine import Trainer, build_config

    cfg = build_config(os.path.join(ROOT, "configs/demo/sfnet_lite_R18_demo.yaml"), [
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", f"('{demo_datasets[0]}',)",
        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.SFNET.CROP_SIZE", "[96, 96]", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.SFNET.OHEM_MIN_KEPT", "2000", "SOLVER.CHECKPOINT_PERIOD", "100",
        "SOLVER.SFNET.ITERS_PER_EPOCH", "1", "MODEL.ROBUSTNET.MODE", "isw",
        "MODEL.ROBUSTNET.COVSTAT_EPOCH", "0", "MODEL.ROBUSTNET.TRIALS", "2",
        "MODEL.ROBUSTNET.COVSTAT_IMAGES", "2"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history(WHITENING_LOSS_KEY).values()
    losses = {it: v for v, it in history}
    assert losses[0] == 0.0 and losses[1] > 0 and losses[2] > 0
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    ready = [v for k, v in ckpt["model"].items() if k.endswith("mask_ready")]
    assert len(ready) == 3 and all(bool(v) for v in ready)


# ------------------------------------------------------------------ Table 17 configs

CONFIG_DIR = "configs/cityscapes/semantic/robustnet"
CONFIGS = sorted(os.path.join(CONFIG_DIR, f) for f in os.listdir(os.path.join(ROOT, CONFIG_DIR)))
# (row, BDD, IDD) of the paper's Table 17
TABLE17 = {"isw_fpn_ppm_R18.yaml": (43.2, 46.2), "isw_sfnet_R18.yaml": (45.2, 48.1),
           "isw_sfnet_lite_R18.yaml": (46.0, 48.5), "isw_fpn_ppm_STDC2.yaml": (39.2, 41.4),
           "isw_sfnet_lite_STDC2.yaml": (41.8, 44.5)}


def test_table17_configs_test_on_three_datasets_and_match_results_md():
    from helpers import config_header, load_config, model_zoo_rows

    assert sorted(os.path.basename(c) for c in CONFIGS) == sorted(TABLE17)
    rows = {}
    for row in model_zoo_rows():
        rows.setdefault(row["path"], set()).add(float(row["miou"]))
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.MODEL.ROBUSTNET.MODE == "isw"
        assert list(cfg.MODEL.ROBUSTNET.LAYERS) == ["stem", "res2", "res3"]
        assert tuple(cfg.DATASETS.TEST) == ("cityscapes_fine_sem_seg_val", "bdd100k_sem_seg_val",
                                            "idd_19_sem_seg_val")
        for name in cfg.DATASETS.TEST:
            assert len(MetadataCatalog.get(name).stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        bdd, idd = TABLE17[os.path.basename(path)]
        header = config_header(path)
        assert "Table 17" in header and re.search(rf"{bdd} mIoU on BDD100K val and {idd} mIoU on IDD", header)
        assert rows.get(path) == {bdd, idd}, path
    isw_aligns = {os.path.basename(p): load_config(p).MODEL.SFNET.ALIGN for p in CONFIGS}
    assert isw_aligns["isw_fpn_ppm_R18.yaml"] == isw_aligns["isw_fpn_ppm_STDC2.yaml"] == "bilinear"


def test_optimised_inference_of_an_isw_model_equals_the_eager_model():
    from sfnet_d2.deployment import optimize_model

    torch.manual_seed(0)
    model = build_model(make_cfg(f"{CONFIG_DIR}/isw_sfnet_lite_R18.yaml")).eval()
    for m in whitening_modules(model):
        m.set_sensitive_mask(torch.ones(m.channels, m.channels, dtype=torch.bool))
    batch = [{"image": torch.randint(0, 255, (3, 96, 160), dtype=torch.uint8)}]
    with torch.no_grad():
        eager = model(batch)[0]["sem_seg"]
        optimised = optimize_model(model)(batch)[0]["sem_seg"]  # BN folded, IN kept, traced
    assert torch.allclose(optimised, eager, atol=1e-4)
