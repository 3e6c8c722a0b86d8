"""Mixed precision of the training step (sfnet_d2/engine/train_step.py): the CPU bfloat16 step
runs and its loss is close to fp32's on the same weights and batch; the SOLVER.AMP errors name
the key; the step object chosen for CUDA (detectron2's AMPTrainer for float16) is checked by its
class, since no GPU is needed to build it; Trainer runs the bf16 step on the demo data."""
import copy
import warnings

import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import make_cfg, semantic_training_batch

import sfnet_d2.engine.train_step as train_step
from sfnet_d2.engine.train_step import (SFNetTrainStep, build_train_step,
                                        prepare_model_for_training, train_step_options)

CONFIG = "configs/cityscapes/semantic/sfnet_lite_R18.yaml"
needs_bf16 = pytest.mark.skipif(train_step._cpu_bf16_problem() is not None,
                                reason="this CPU has no native bfloat16")


def _options(*opts, device="cpu"):
    cfg = make_cfg(CONFIG, ["MODEL.SFNET.OHEM_MIN_KEPT", 5000, *opts])
    cfg.MODEL.DEVICE = device
    return cfg, train_step_options(cfg)


def _one_step(cfg, options, model, batch):
    prepare_model_for_training(model, options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = build_train_step(options, model, [batch], optimizer)
    with EventStorage(0) as storage:
        torch.manual_seed(0)
        step.run_step()
    return step, storage.latest()["total_loss"][0]


@needs_bf16
def test_cpu_bf16_step_runs_and_its_loss_is_close_to_fp32():
    torch.manual_seed(0)
    model = build_model(make_cfg(CONFIG, ["MODEL.SFNET.OHEM_MIN_KEPT", 5000])).train()
    before = copy.deepcopy(model.state_dict())
    batch = semantic_training_batch()
    cfg, fp32 = _options()
    _, loss32 = _one_step(cfg, fp32, copy.deepcopy(model), batch)
    cfg, bf16 = _options("SOLVER.AMP.ENABLED", True)
    assert bf16.amp_dtype == torch.bfloat16 and bf16.channels_last and bf16.keep_memory
    step, loss16 = _one_step(cfg, bf16, model, batch)
    assert type(step) is SFNetTrainStep and step.autocast_dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: ~0.4% per rounding, far less on the mean loss at random init
    assert loss16 == pytest.approx(loss32, rel=2e-2) and loss16 != loss32
    # the update happened, in the parameters' own dtype (autocast casts copies only)
    weight = model.sem_seg_head.predictor.weight
    assert weight.dtype == torch.float32
    assert not torch.equal(weight, before["sem_seg_head.predictor.weight"])


def test_loss_terms_are_summed_in_float32():
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, data):
            return {"loss_a": (self.w * 1.5).bfloat16(), "loss_b": self.w * 2}

    model = Half()
    step = SFNetTrainStep(model, [None], torch.optim.SGD(model.parameters(), lr=0.1))
    loss_dict, total = step.forward_losses(None)
    assert all(v.dtype == torch.float32 for v in loss_dict.values())
    assert total.dtype == torch.float32 and float(total) == 3.5


def test_amp_precision_errors_name_the_key(monkeypatch):
    with pytest.raises(ValueError, match=r"SOLVER\.AMP\.PRECISION 'float16' is not supported on "
                                         r"CPU"):
        _options("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16")
    with pytest.raises(ValueError, match=r"SOLVER\.AMP\.PRECISION='fp8' is not one of"):
        _options("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "fp8")
    # a CPU without native bf16: refused, naming the key and the reason
    monkeypatch.setattr(train_step, "_cpu_bf16_problem", lambda: "this CPU has no native bf16")
    with pytest.raises(ValueError, match=r"SOLVER\.AMP\.ENABLED True on CPU trains in bfloat16 "
                                         r"autocast, but this CPU has no native bf16"):
        _options("SOLVER.AMP.ENABLED", True)
    # AMP off: no check at all, fp32
    assert _options()[1].amp_dtype is None


def test_amp_is_left_on_by_build_config_without_cuda():
    from helpers import ROOT

    from sfnet_d2.engine import build_config

    cfg = build_config(f"{ROOT}/configs/demo/sfnet_lite_R18_demo.yaml",
                       ["SOLVER.AMP.ENABLED", "True"])
    assert cfg.SOLVER.AMP.ENABLED is True and cfg.SOLVER.AMP.PRECISION == "auto"


@pytest.mark.parametrize("precision,bf16_gpu,cls,dtype", [
    ("auto", False, AMPTrainer, torch.float16),
    ("float16", True, AMPTrainer, torch.float16),
    ("bfloat16", True, SFNetTrainStep, torch.bfloat16),
])
def test_cuda_amp_step_is_chosen_by_precision(monkeypatch, precision, bf16_gpu, cls, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    cfg, options = _options("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", precision,
                            device="cuda")
    # the CPU speed-ups are CPU-only
    assert options.amp_dtype == dtype and not options.keep_memory and not options.channels_last
    model = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():  # GradScaler warns that CUDA is missing here
        warnings.simplefilter("ignore")
        step = build_train_step(options, model, [None], torch.optim.SGD(model.parameters(), 0.1))
    assert type(step) is cls
    if cls is SFNetTrainStep:
        assert step.device_type == "cuda" and step.autocast_dtype == torch.bfloat16


def test_cuda_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match=r"SOLVER\.AMP\.PRECISION 'bfloat16': this GPU"):
        _options("SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16", device="cuda")


def test_cuda_fp32_and_cpu_switches():
    _, cuda = _options(device="cuda")
    assert cuda.amp_dtype is None and not cuda.keep_memory and not cuda.channels_last
    _, cpu = _options("SOLVER.CPU.KEEP_MEMORY", False, "SOLVER.CPU.CHANNELS_LAST", False)
    assert not cpu.keep_memory and not cpu.channels_last
    model = torch.nn.Conv2d(3, 4, 3)
    prepare_model_for_training(model, _options()[1])
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@needs_bf16
def test_trainer_runs_the_bf16_step_on_the_demo_data(demo_datasets, tmp_path):
    from sfnet_d2.engine.trainer import Trainer

    cfg = make_cfg("configs/demo/sfnet_lite_R18_demo.yaml", [
        "DATASETS.TRAIN", (demo_datasets[0],), "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 2,
        "INPUT.SFNET.CROP_SIZE", [64, 64], "SOLVER.MAX_ITER", 2, "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.AMP.ENABLED", True, "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is SFNetTrainStep
    assert trainer._trainer.autocast_dtype == torch.bfloat16
    trainer.train()
    assert trainer.iter == 2 and torch.isfinite(torch.tensor(
        trainer.storage.history("total_loss").latest()))
    conv_weights = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last)
                                for p in conv_weights)
