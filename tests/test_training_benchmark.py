"""The fp32 training step of ``Trainer`` on CPU (channels-last, kept memory:
sfnet_d2/engine/train_step.py) against detectron2's plain SimpleTrainer step from the same
weights on the same batch: same losses to float rounding, same gradients within tolerance, same
updated weights; and the training benchmark (sfnet_d2/benchmark/training.py) on a tiny run: its
report's structure, loss agreement and printed figures. No speed is asserted."""
import copy
import json

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import make_cfg, semantic_training_batch, tiny_knet_cfg

from sfnet_d2.engine.train_step import (SFNetTrainStep, build_train_step,
                                        prepare_model_for_training, train_step_options)

CONFIG = "configs/cityscapes/semantic/sfnet_lite_R18.yaml"


def _run(step_object):
    with EventStorage(0) as storage:
        torch.manual_seed(0)  # the DSN heads' dropout
        step_object.run_step()
    model = step_object.model
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return storage.latest(), grads, weights


def _compare_steps(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    plain_model = copy.deepcopy(model)
    options = train_step_options(cfg)
    assert options.channels_last and options.keep_memory and options.amp_dtype is None
    prepare_model_for_training(model, options)

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    ours = build_train_step(options, model, [batch], sgd(model))
    assert type(ours) is SFNetTrainStep
    plain = SimpleTrainer(plain_model, [batch], sgd(plain_model))
    metrics, grads, weights = _run(ours)
    ref_metrics, ref_grads, ref_weights = _run(plain)

    assert metrics.keys() == ref_metrics.keys()
    for k in metrics:
        if k.startswith("loss") or k == "total_loss":
            # float rounding only (measured up to 1.3e-5 relative: K-Net's rank loss)
            assert metrics[k][0] == pytest.approx(ref_metrics[k][0], rel=1e-4, abs=1e-6), k
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    # Tolerance per tensor relative to its largest entry, floored by the model's largest
    # gradient: some gradients are zero in exact arithmetic (a conv bias before a BatchNorm) and
    # are 1e-9 rounding noise in both layouts. Measured: 1.1e-3 to 7.5e-3 depending on the
    # machine's load and oneDNN's kernel choice (the fuse convolution; the PPM's 1x1-pooled
    # branch, a BatchNorm over 2 values, amplifies rounding), 2e-4 for the stem (sums over every
    # pixel in another order); an error in the step would be of order 1.
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    tol = {n: 3e-2 * max(float(ref_grads[n].abs().max()), 1e-3 * scale) for n in grads}
    for n in grads:
        assert float((grads[n] - ref_grads[n]).abs().max()) <= tol[n], n
    for n in weights:
        # the first SGD step moves a weight by lr (0.01) times its gradient (plus decay)
        assert torch.allclose(weights[n], ref_weights[n], rtol=1e-6,
                              atol=0.01 * tol.get(n, 0.0) + 1e-8), n
    conv = [p for p in model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)


@pytest.mark.parametrize("min_kept,deep_supervision", [(0, False), (5000, True)])
def test_optimized_fp32_step_equals_the_plain_step_semantic(min_kept, deep_supervision):
    # min_kept 5000 < 2*64*128*0.9 valid pixels: OHEM mines; DSN: a second loss term
    cfg = make_cfg(CONFIG, ["MODEL.SFNET.OHEM_MIN_KEPT", min_kept,
                            "MODEL.SFNET.DEEP_SUPERVISION", deep_supervision])
    _compare_steps(cfg, semantic_training_batch())


def test_optimized_fp32_step_equals_the_plain_step_knet():
    from detectron2.structures import BitMasks, Instances

    cfg = tiny_knet_cfg()
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        inst = Instances((64, 96))
        masks = torch.zeros(3, 64, 96, dtype=torch.bool)
        masks[0, :32], masks[1, 32:, :48], masks[2, 32:, 48:] = True, True, True
        inst.gt_masks = BitMasks(masks)
        inst.gt_classes = torch.tensor([0, 11, 13])
        batch.append({"image": torch.randint(0, 256, (3, 64, 96), generator=g,
                                             dtype=torch.uint8),
                      "instances": inst, "sem_seg": torch.zeros(64, 96, dtype=torch.long)})
    _compare_steps(cfg, batch)


@pytest.mark.slow
def test_training_benchmark_tiny_run(demo_datasets, tmp_path):
    from sfnet_d2.benchmark.report import write_report
    from sfnet_d2.benchmark.training import (TrainBenchmarkSettings, format_training_report,
                                             run_training_benchmark)
    from sfnet_d2.engine.train_step import _cpu_bf16_problem

    cfg = make_cfg("configs/demo/sfnet_lite_R18_demo.yaml")
    settings = TrainBenchmarkSettings(batch_size=2, crop=(64, 64), dataset=demo_datasets[0],
                                      runs=2, warmup=0, threads=1)
    report = run_training_benchmark(cfg, settings, config_file="demo.yaml")
    has_amp = _cpu_bf16_problem() is None
    names = ["eager", "optimized"] + (["amp"] if has_amp else [])
    assert list(report["results"]) == names
    for name in names:
        r = report["results"][name]
        assert r["runs"] == 2 and len(r["losses"]) == 2 and r["median_s"] > 0
        assert r["median_cpu_s"] > 0
    assert report["settings"]["batch_size"] == 2 and report["settings"]["image_size"] == [64, 64]
    # same weights and batch in every round (learning rate 0): the steps repeat themselves
    eager = report["results"]["eager"]["losses"]
    assert eager[0] == pytest.approx(eager[1], rel=1e-6)
    assert report["loss_agreement"]["fp32_max_rel_diff"] < 1e-5
    if has_amp:
        assert 0 < report["loss_agreement"]["amp_max_rel_diff"] < 2e-2
    else:
        assert report["amp_unavailable"]
    data = report["data_loader"]
    assert data["batches"] == 2 and 0 <= data["share_of_step"] < 1
    text = format_training_report(report)
    for name in names:
        r = report["results"][name]
        assert f"{r['median_s']:.3f}" in text and f"{r['median_cpu_s']:.3f}" in text
    assert f"{report['loss_agreement']['fp32_max_rel_diff']:.2e}" in text
    assert f"{100 * data['share_of_step']:.1f}%" in text
    path = write_report(report, str(tmp_path / "train.json"))
    assert json.load(open(path))["results"]["eager"]["losses"] == eager
