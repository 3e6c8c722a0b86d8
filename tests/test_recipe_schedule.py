"""Schedules (docs/TRAINING.md): the official per-epoch poly LR, epochs -> iterations arithmetic,
its resolution in train_net.py, and AMP left on without CUDA."""
import math
import os

import pytest
import torch

from helpers import ROOT, make_cfg
from sfnet_d2.solver import (
    WarmupPolyEpochLR,
    build_lr_scheduler,
    iterations_per_epoch,
    resolve_epoch_schedule,
)


def _lrs(cfg, n):
    """The learning rate of iterations 0..n-1, stepped as detectron2's LRScheduler hook does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, sched


def _cfg(*opts):
    return make_cfg(None, ["SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 0,
                           "SOLVER.SFNET.ITERS_PER_EPOCH", 3, *opts])


def test_per_epoch_poly_hand_computed():
    # 4 epochs of 3 iterations; the official LambdaLR is stepped before each epoch, so epoch e
    # runs at 0.01 * (1 - (e + 1) / 4): 0.0075, 0.005, 0.0025, 0
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR", "SOLVER.MAX_ITER", 12,
               "SOLVER.POLY_LR_POWER", 1.0)
    lrs, sched = _lrs(cfg, 12)
    assert isinstance(sched, WarmupPolyEpochLR)
    assert lrs == pytest.approx([0.0075] * 3 + [0.005] * 3 + [0.0025] * 3 + [0.0] * 3, abs=1e-12)
    # power 0.9: epoch 1 at 0.01 * 0.5 ** 0.9 = 0.01 * exp(0.9 * ln 0.5) = 0.00535887
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR", "SOLVER.MAX_ITER", 12,
               "SOLVER.POLY_LR_POWER", 0.9)
    assert _lrs(cfg, 4)[0][3] == pytest.approx(0.00535887, abs=1e-8)
    # linear warm-up over 2 iterations from 0.1: factors 0.1 and 0.55 on top of epoch 0's 0.0075
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR", "SOLVER.MAX_ITER", 12,
               "SOLVER.POLY_LR_POWER", 1.0, "SOLVER.WARMUP_ITERS", 2, "SOLVER.WARMUP_FACTOR", 0.1)
    assert _lrs(cfg, 3)[0] == pytest.approx([0.00075, 0.004125, 0.0075], abs=1e-12)
    # a max_iter that is not a whole number of epochs: E = ceil(10 / 3) = 4 as above
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR", "SOLVER.MAX_ITER", 10,
               "SOLVER.POLY_LR_POWER", 1.0)
    assert _lrs(cfg, 10)[0][-1] == 0.0


def test_per_iteration_poly_is_detectron2s_warmup_poly_lr():
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", 12,
               "SOLVER.POLY_LR_POWER", 1.0)
    lrs, _ = _lrs(cfg, 12)
    assert lrs == pytest.approx([0.01 * (1 - i / 12) for i in range(12)], abs=1e-12)


def test_scheduler_state_resumes_at_the_same_value():
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR", "SOLVER.MAX_ITER", 12,
               "SOLVER.POLY_LR_POWER", 1.0)
    _, sched = _lrs(cfg, 7)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    resumed = build_lr_scheduler(cfg, opt)
    resumed.load_state_dict(sched.state_dict())
    resumed.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 3 / 4))  # iteration 8: epoch 2


def test_epochs_to_iterations_official_arithmetic():
    # Cityscapes fine train, 8 GPUs x 2: ceil(2975 / 8) = 372 per GPU, drop_last batches of 2
    assert iterations_per_epoch(2975, 16, 8) == 186
    assert 300 * iterations_per_epoch(2975, 16, 8) == 55800
    assert 1000 * iterations_per_epoch(2975, 16, 8) == 186000
    assert iterations_per_epoch(2975, 16, 1) == 185  # one process: floor(2975 / 16)
    assert iterations_per_epoch(2975, 8, 4) == 372  # ceil(2975 / 4) = 744 -> 372 batches of 2
    assert iterations_per_epoch(18000, 32, 8) == 562  # Mapillary, bs_mult 4: 2250 // 4
    with pytest.raises(ValueError, match="not divisible"):
        iterations_per_epoch(2975, 16, 3)
    with pytest.raises(ValueError, match="no full batch"):
        iterations_per_epoch(10, 16, 1)


def test_resolve_epoch_schedule_from_the_training_set(demo_datasets):
    base = ["DATASETS.TRAIN", (demo_datasets[0],), "SOLVER.IMS_PER_BATCH", 2]
    cfg = make_cfg(None, base + ["SOLVER.SFNET.MAX_EPOCHS", 5])
    cfg.freeze()
    resolved, note = resolve_epoch_schedule(cfg, world_size=1)
    # 8 images, batches of 2: 4 iterations per epoch
    assert resolved.SOLVER.SFNET.ITERS_PER_EPOCH == 4 and resolved.SOLVER.MAX_ITER == 20
    assert "5 epochs x 4 iterations" in note and cfg.SOLVER.MAX_ITER != 20  # input untouched
    # 3 processes of 1 image: ceil(8 / 3) = 3 per process
    cfg = make_cfg(None, base + ["SOLVER.SFNET.MAX_EPOCHS", 2, "SOLVER.IMS_PER_BATCH", 3,
                                 "SOLVER.SFNET.EPOCH_WORLD_SIZE", 3])
    assert resolve_epoch_schedule(cfg)[0].SOLVER.MAX_ITER == 6
    # iterations given, per-epoch LR: only ITERS_PER_EPOCH is filled in
    cfg = make_cfg(None, base + ["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyEpochLR",
                                 "SOLVER.MAX_ITER", 30])
    resolved, note = resolve_epoch_schedule(cfg, world_size=1)
    assert resolved.SOLVER.MAX_ITER == 30 and resolved.SOLVER.SFNET.ITERS_PER_EPOCH == 4
    assert "= 8 epochs" in note
    # nothing counted in epochs: unchanged
    cfg = make_cfg(None, base)
    assert resolve_epoch_schedule(cfg) == (cfg, None)
    # an unresolved epoch config cannot silently train for MAX_ITER
    cfg = make_cfg(None, base + ["SOLVER.SFNET.MAX_EPOCHS", 5, "SOLVER.MAX_ITER", 7])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(ValueError, match="resolve_epoch_schedule"):
        build_lr_scheduler(cfg, opt)


def test_train_net_setup_records_the_resolved_schedule(demo_datasets, tmp_path):
    from detectron2.engine import default_argument_parser
    from sfnet_d2.engine import setup

    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(ROOT, "configs/demo/sfnet_lite_R18_demo.yaml"),
        "DATASETS.TRAIN", f"('{demo_datasets[0]}',)", "DATASETS.TEST", f"('{demo_datasets[1]}',)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.SFNET.MAX_EPOCHS", "3", "OUTPUT_DIR", str(tmp_path)])
    cfg = setup(args)
    assert cfg.SOLVER.MAX_ITER == 12 and cfg.SOLVER.SFNET.ITERS_PER_EPOCH == 4
    assert "MAX_ITER: 12" in (tmp_path / "config.yaml").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_amp_stays_on_without_cuda():
    # SOLVER.AMP on CPU = bfloat16 autocast (tests/test_mixed_precision.py), no longer turned off
    from sfnet_d2.engine import build_config

    cfg = build_config(os.path.join(ROOT, "configs/demo/sfnet_lite_R18_demo.yaml"),
                       ["SOLVER.AMP.ENABLED", "True"])
    assert cfg.SOLVER.AMP.ENABLED is True


def test_poly_factor_formula_matches_official_lambda():
    # official: LambdaLR(lambda e: (1 - e / E) ** p), stepped once before epoch e -> index e + 1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyEpochLR(opt, max_iters=300 * 186, iters_per_epoch=186, power=0.9)
    for epoch in (0, 1, 150, 298, 299):
        assert sched.poly_factor(epoch * 186 + 17) == pytest.approx(
            math.pow(1 - (epoch + 1) / 300, 0.9))
