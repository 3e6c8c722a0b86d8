"""
``Trainer``: detectron2's ``DefaultTrainer`` for every sfnet-d2 model, semantic or panoptic, with
no branch on the task. Each piece comes from the room that owns it and is chosen by the config:

* data: ``sfnet_d2.data.build_train_loader`` / ``build_test_loader`` (mapper by
  ``INPUT.DATASET_MAPPER_NAME``; both tasks train on the resumable, seeded training stream);
* evaluators: ``sfnet_d2.evaluation.build_evaluator`` (by the dataset's ``evaluator_type``);
* optimizer and schedule: ``sfnet_d2.solver``;
* checkpoints: ``SFNetCheckpointer`` (atomic writes, safe reads, no silent partial loads), with the
  training stream registered as the checkpointable "data_stream", so ``--resume`` continues the
  exact sample sequence;
* guards and hooks: the non-finite loss stop, per-step seeding, the skipped-samples report and,
  for RobustNet ISW, the whitening-mask statistics;
* the training step: ``sfnet_d2.engine.train_step`` (fp32 CPU speed-ups ``SOLVER.CPU.*``, mixed
  precision ``SOLVER.AMP.*``: detectron2's AMPTrainer on CUDA, bfloat16 autocast on CPU).
"""
import logging
import warnings
import weakref

from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from sfnet_d2.data import build_test_loader, build_train_loader
from sfnet_d2.engine.checkpoint import SFNetCheckpointer
from sfnet_d2.engine.guards import install_nonfinite_loss_guard
from sfnet_d2.engine.hooks import SkippedSamplesReport, StepSeedHook
from sfnet_d2.engine.train_step import (build_train_step, prepare_model_for_training,
                                        train_step_options)
from sfnet_d2.evaluation import build_evaluator
from sfnet_d2.modeling.test_time_augmentation import wrap_with_inference_protocol
from sfnet_d2.solver import build_lr_scheduler, build_optimizer

__all__ = ["Trainer"]

logger = logging.getLogger("sfnet_d2")


class Trainer(DefaultTrainer):
    """See the module docstring."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ of detectron2 v0.6, step by step, except for the step object
        # (self._trainer), which it hard-codes as AMPTrainer / SimpleTrainer: ours comes from
        # train_step.build_train_step, and the model gets its training layout before the
        # optimizer and DDP see its parameters. The checkpointer is made in build_hooks.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        options = train_step_options(cfg)  # SOLVER.AMP.* errors before any data is read
        model = prepare_model_for_training(self.build_model(cfg), options)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_train_step(options, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        from sfnet_d2.modeling.backbone.robustnet import check_robustnet_applied

        model = super().build_model(cfg)
        check_robustnet_applied(cfg, model)  # MODEL.ROBUSTNET on a backbone without the option
        # A NaN/inf loss term stops training before the optimizer step, naming the term.
        return install_nonfinite_loss_guard(model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # --eval-only and the in-training evaluations: whole image / sliding window, multi-scale
        # + flip as TEST.SFNET.* says (the model itself for the default protocol).
        return super().test(cfg, wrap_with_inference_protocol(cfg, model), evaluators)

    def build_hooks(self):
        # Replaced here because DefaultTrainer.__init__ hands self.checkpointer to the
        # PeriodicCheckpointer hook inside build_hooks().
        self.checkpointer = SFNetCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        loader = self._trainer.data_loader
        if hasattr(loader, "state_dict") and hasattr(loader, "stream"):  # the training stream
            self.checkpointer.add_checkpointable("data_stream", loader)
            hooks.insert(0, StepSeedHook(lambda: loader.stream.seed))
            hooks.append(SkippedSamplesReport(loader, self.cfg.OUTPUT_DIR))
        if self.cfg.MODEL.ROBUSTNET.MODE == "isw":  # RobustNet ISW mask statistics
            from sfnet_d2.engine.isw_hook import ISWMaskHook

            hooks.append(ISWMaskHook(self.cfg))
        return hooks

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0:
            self._apply_config_schedule()

    def _apply_config_schedule(self):
        """A resumed run continues the checkpoint's optimizer and schedule state; where the
        config now says another SOLVER.BASE_LR (or lr multipliers) or schedule (MAX_ITER,
        warm-up, poly power, ...), the config's values are applied from the resumed iteration
        on, and logged. This is the route the non-finite loss stop advises."""
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        fresh = build_lr_scheduler(self.cfg, build_optimizer(self.cfg, model))
        resumed = self.scheduler
        changes = []
        new_base = list(fresh.base_lrs)
        if len(new_base) != len(resumed.base_lrs):
            raise RuntimeError(
                f"The checkpoint's optimizer has {len(resumed.base_lrs)} parameter groups but the "
                f"config builds {len(new_base)}: the optimizer settings (SOLVER.*) changed in a "
                "way that cannot be resumed. Start a new run with MODEL.WEIGHTS set to the "
                "checkpoint instead of --resume")
        if any(abs(a - b) > 1e-12 * max(abs(a), abs(b)) for a, b in zip(resumed.base_lrs,
                                                                          new_base)):
            changes.append(f"base learning rate {resumed.base_lrs[0]:g} -> {new_base[0]:g}")
            resumed.base_lrs = new_base
            for group, lr in zip(self.optimizer.param_groups, new_base):
                group["initial_lr"] = lr
        for key, value in fresh.state_dict().items():
            if key.startswith("_") or key in ("base_lrs", "last_epoch", "verbose"):
                continue
            if getattr(resumed, key, None) != value:
                changes.append(f"{key} {getattr(resumed, key, None)} -> {value}")
                setattr(resumed, key, value)
        if not changes:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # get_lr outside step(): wanted here
            for group, lr in zip(self.optimizer.param_groups, resumed.get_lr()):
                group["lr"] = lr
        logger.warning(
            f"Resumed at iteration {self.start_iter} with a changed schedule from the config: "
            + "; ".join(changes) + f" (learning rate now {self.optimizer.param_groups[0]['lr']:g})")

    def state_dict(self):
        # detectron2 v0.6's DefaultTrainer checkpoints no optimizer state, so --resume would
        # restart SGD momentum from zero; later detectron2 releases save it as we do here.
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        if "data_stream" in state_dict:  # a checkpoint from before the "data_stream" checkpointable
            self._trainer.data_loader.load_legacy_state(state_dict["data_stream"], self.iter + 1)
