#!/usr/bin/env python
"""
SFNet / SFNet-Lite training and evaluation with detectron2.

    python projects/SFNet/train_net.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/train_net.py --config-file ... --eval-only MODEL.WEIGHTS model.pth
    python projects/SFNet/train_net.py --config-file ... --resume          # continue a killed run
    python projects/SFNet/train_net.py --config-file ... --num-gpus 8      # DDP (CPU: N processes over gloo)

Every detectron2 flag works (--num-machines, --machine-rank, --dist-url, KEY VALUE overrides).
"""
import logging
import os
import sys
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import sfnet_d2  # noqa: F401  (registers the SFNet backbones, heads and datasets)
from sfnet_d2 import add_sfnet_config
from sfnet_d2.data import SFNetSemanticDatasetMapper, build_sfnet_train_loader
from sfnet_d2.config.checks import check_config
from sfnet_d2.data.train_stream import SkipCollectingLoader
from sfnet_d2.engine import (SFNetCheckpointer, SkippedSamplesReport, StepSeedHook,
                             install_nonfinite_loss_guard)
from sfnet_d2.engine.robustnet_mask import ISWMaskHook
from sfnet_d2.evaluation import CityscapesSubmissionWriter
from sfnet_d2.deployment import build_inference_model
from sfnet_d2.modeling.meta_arch.knet import training as knet_training
from sfnet_d2.modeling.backbone.robustnet import check_robustnet_applied
from sfnet_d2.modeling.test_time_augmentation import wrap_with_inference_protocol
from sfnet_d2.solver import build_lr_scheduler, resolve_epoch_schedule
from sfnet_d2.solver.optimizer import build_sfnet_optimizer, uses_sfnet_optimizer


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with SFNet's data mapper, evaluators and poly LR."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if knet_training.is_knet(cfg):  # panoptic K-Net: PQ (+ mIoU), docs/PANOPTIC.md
            return knet_training.build_knet_evaluator(cfg, dataset_name, output_folder)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
        choice = cfg.TEST.SFNET_EVALUATOR
        if choice == "submission":  # Cityscapes test-server PNGs (label ids), no metric
            return CityscapesSubmissionWriter(
                dataset_name, os.path.join(cfg.OUTPUT_DIR, "submission", dataset_name))
        if choice == "cityscapes" or (choice == "auto" and evaluator_type == "cityscapes_sem_seg"):
            # cityscapesscripts' official metric (class IoU and iIoU); single machine only.
            return CityscapesSemSegEvaluator(dataset_name)
        if choice in ("sem_seg", "auto"):
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        raise ValueError(
            f"TEST.SFNET_EVALUATOR={choice!r} is not one of 'auto', 'sem_seg', 'cityscapes', "
            "'submission'"
        )

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        check_robustnet_applied(cfg, model)  # MODEL.ROBUSTNET on a backbone without the option
        # A NaN/inf loss term stops training before the optimizer step, naming the term.
        return install_nonfinite_loss_guard(model)

    def build_hooks(self):
        # Atomic checkpoint writes, weights_only reads, no silent partial loads (sfnet_d2.engine).
        # Replaced here because DefaultTrainer.__init__ hands self.checkpointer to the
        # PeriodicCheckpointer hook inside build_hooks().
        self.checkpointer = SFNetCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks = super().build_hooks()
        loader = self._trainer.data_loader
        if isinstance(loader, SkipCollectingLoader):  # the resumable SFNet training stream
            hooks.insert(0, StepSeedHook(lambda: loader.stream.seed))
            hooks.append(SkippedSamplesReport(loader, self.cfg.OUTPUT_DIR))
        if self.cfg.MODEL.ROBUSTNET.MODE == "isw":  # RobustNet ISW mask statistics, docs/ROBUSTNET.md
            hooks.append(ISWMaskHook(self.cfg))
        return hooks

    def resume_or_load(self, resume=True):
        self._checkpoint_stream_seed = None
        super().resume_or_load(resume=resume)
        loader = self._trainer.data_loader
        if not isinstance(loader, SkipCollectingLoader) or self.start_iter == 0:
            return
        # Continue the data stream where the checkpoint left it: same seed, the samples after
        # the last finished iteration (sfnet_d2/data/train_stream.py).
        seed = self._checkpoint_stream_seed
        if seed is None:
            seed = loader.stream.seed
            logging.getLogger("sfnet_d2").warning(
                "The checkpoint has no data-stream state (older sfnet-d2): the resumed run sees "
                "another sample order than an uninterrupted one would")
        loader.stream.set_state(seed, self.start_iter * loader.stream.batch_size)
        self._trainer._data_loader_iter = iter(loader)  # detectron2 0.6 SimpleTrainer attribute

    @classmethod
    def build_train_loader(cls, cfg):
        if knet_training.is_knet(cfg):
            return knet_training.build_knet_train_loader(cfg)
        # class-uniform sampling and coarse boosting (DATALOADER.SFNET.*, docs/TRAINING.md)
        return build_sfnet_train_loader(cfg, mapper=SFNetSemanticDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if knet_training.is_knet(cfg):
            return knet_training.build_knet_test_loader(cfg, dataset_name)
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=SFNetSemanticDatasetMapper(cfg, False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Used by --eval-only and the in-training evaluations: whole image / sliding window,
        # multi-scale + flip as TEST.SFNET.* says (the model itself for the default protocol).
        return super().test(cfg, wrap_with_inference_protocol(cfg, model), evaluators)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # WarmupPolyLR: lr = base * (1 - iter / max_iter) ** SOLVER.POLY_LR_POWER, per iteration;
        # WarmupPolyEpochLR: the official per-epoch poly (sfnet_d2/solver, docs/TRAINING.md).
        return build_lr_scheduler(cfg, optimizer)

    def state_dict(self):
        # detectron2 v0.6's DefaultTrainer checkpoints no optimizer state, so --resume would
        # restart SGD momentum from zero; later detectron2 releases save it as we do here.
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        loader = self._trainer.data_loader
        if isinstance(loader, SkipCollectingLoader):
            ret["data_stream"] = {"seed": loader.stream.seed}
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        self._checkpoint_stream_seed = state_dict.get("data_stream", {}).get("seed")

    @classmethod
    def build_optimizer(cls, cfg, model):
        if knet_training.is_knet(cfg):  # AdamW, backbone lr x0.25, full-model gradient clipping
            return knet_training.build_knet_optimizer(cfg, model)
        if uses_sfnet_optimizer(cfg):  # SOLVER.SFNET.OPTIMIZER / HEAD_LR_MULTIPLIER (SegFormer's AdamW)
            return build_sfnet_optimizer(cfg, model)
        return super().build_optimizer(cfg, model)

    # build_optimizer: detectron2's default (SGD with SOLVER.MOMENTUM/NESTEROV/WEIGHT_DECAY and
    # WEIGHT_DECAY_NORM per parameter) already reproduces the official optimiser, see Base-SFNet.yaml.


def build_config(config_file: str, opts=()):
    """The frozen config of a YAML file plus KEY VALUE overrides, with every SFNet key."""
    cfg = get_cfg()
    add_sfnet_config(cfg)
    # yacs names the key of an unknown key or a wrong type, but as a bare KeyError/assert;
    # say also where it came from (the YAML file or the command line).
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError, ValueError) as e:
        raise ValueError(f"Invalid config file {config_file}: {e}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ValueError(f"Invalid KEY VALUE override on the command line: {e}") from e
    if not torch.cuda.is_available():
        # Let every config run on a CPU-only machine without extra overrides: nn.SyncBatchNorm
        # needs CUDA, detectron2's naiveSyncBN syncs over any process group (gloo included) and
        # is plain BN in a single process.
        if cfg.MODEL.DEVICE.startswith("cuda"):
            cfg.MODEL.DEVICE = "cpu"
        nodes = [cfg.MODEL.RESNETS, cfg.MODEL.STDC, cfg.MODEL.DFNET, cfg.MODEL.SEM_SEG_HEAD]
        if any(node.NORM == "SyncBN" for node in nodes):
            for node in nodes:
                node.NORM = "naiveSyncBN" if node.NORM == "SyncBN" else node.NORM
            logging.getLogger("sfnet_d2").warning(
                "No CUDA: using naiveSyncBN instead of SyncBN (same statistics over processes)"
            )
        if cfg.SOLVER.AMP.ENABLED:  # detectron2's AMPTrainer needs CUDA
            cfg.SOLVER.AMP.ENABLED = False
            logging.getLogger("sfnet_d2").warning("No CUDA: SOLVER.AMP.ENABLED turned off (fp32)")
    cfg.freeze()
    return cfg


def setup(args):
    cfg = build_config(args.config_file, args.opts)
    check_config(cfg)  # model/dataset consistency, before any data is read (names the key)
    schedule = None
    if not args.eval_only:  # SOLVER.SFNET.MAX_EPOCHS -> SOLVER.MAX_ITER, before config.yaml is saved
        cfg, schedule = resolve_epoch_schedule(cfg)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sfnet_d2")
    if schedule:
        logging.getLogger("sfnet_d2").info(schedule)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SFNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        # MODEL.SFNET.INFERENCE.*: BatchNorm folded, TorchScript, ... (docs/BENCHMARK.md)
        model = build_inference_model(cfg, model)
        res = Trainer.test(cfg, model)  # TEST.SFNET.* inference protocol, see Trainer.test
        if not comm.is_main_process():
            return res
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main_and_close(args):
    """``main``, then (in a multi-process job) wait for every process and close the process
    group. Without it a process that finishes first (e.g. rank 1, while rank 0 still computes
    the metrics) exits with gloo's threads alive and can abort ("terminate called without an
    active exception"), failing the job. After an error nothing waits: the others are stopped by
    ``launch``."""
    result = main(args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def invoke_main():
    args = default_argument_parser().parse_args()
    logging.getLogger("sfnet_d2").info(f"Command line arguments: {args}")
    launch(main_and_close, args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
