"""
``add_sfnet_config(cfg)``: every config key sfnet-d2 adds to detectron2's, one helper per node.

=====================  ===================================================================
node                   what it configures
=====================  ===================================================================
``MODEL.SFNET``        SFNet / SFNet-Lite architecture and loss (``model_defaults.py``)
``MODEL.STDC/DFNET/    the backbones beside detectron2's (``model_defaults.py``)
MIT``
``MODEL.KNET``         K-Net panoptic segmentation (``model_defaults.py``)
``MODEL.ROBUSTNET``    RobustNet instance normalisation / whitening (``model_defaults.py``)
``INPUT``              the dataset mapper and the training augmentation of each task
``DATALOADER.SFNET``   class-uniform sampling, coarse boosting, bad-sample policy
``SOLVER.SFNET``       schedules counted in epochs
``SOLVER.OPTIMIZER``   the optimizer of every model (``sfnet_d2/solver/build.py``)
``SOLVER.CPU``         the CPU training step's speed-ups; also ``SOLVER.AMP.PRECISION``
``TEST.SFNET``         evaluation protocol (whole / sliding window, scales, flip) and evaluator
``DEPLOY``             runtime settings of the optimised inference path (not architecture)
=====================  ===================================================================

Every key has a comment above it: what it is, the values it takes, and where its default comes
from (official SFNet code lxtGH/SFSegNets@ba475ba, the paper, or the official code of the method).
Keys renamed since earlier versions are listed in ``renamed_keys.py``; ``build_config`` names the
new key when a YAML file or the command line uses an old one.
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from sfnet_d2.config.model_defaults import add_model_config

__all__ = ["add_sfnet_config"]


def add_sfnet_config(cfg):
    """
    Add the sfnet-d2 keys to a detectron2 config (idempotent). Also adds DeepLab's keys, whose
    ``WarmupPolyLR`` schedule (``SOLVER.POLY_LR_POWER``, ``SOLVER.POLY_LR_CONSTANT_ENDING``) is the
    poly schedule SFNet trains with.
    """
    if hasattr(cfg.MODEL, "SFNET"):
        return cfg
    add_deeplab_config(cfg)
    add_model_config(cfg)
    _add_input(cfg)
    _add_dataloader(cfg)
    _add_solver(cfg)
    _add_test(cfg)
    _add_deploy(cfg)
    return cfg


def _add_input(cfg):
    """``INPUT``: which dataset mapper reads the training/test records and the augmentation of
    each task. Semantic defaults: the official Cityscapes scripts (lxtGH/SFSegNets@ba475ba
    scripts/cityscacpes/train_cityscapes_*.sh with transforms/); K-Net defaults: the paper's COCO
    recipe (section 4.5)."""
    # Dataset mapper class by name in sfnet_d2.data.DATASET_MAPPER_REGISTRY (as Mask2Former):
    # "SFNetSemanticDatasetMapper" (semantic models) or "KNetPanopticDatasetMapper" (K-Net).
    cfg.INPUT.DATASET_MAPPER_NAME = "SFNetSemanticDatasetMapper"
    # Semantic training augmentation (sfnet_d2.data.SFNetSemanticDatasetMapper).
    cfg.INPUT.SFNET = CN()
    # Random rescale factor range applied to the whole image before cropping
    # (official scripts 0.5-2.0; the paper's text says 0.75-2.0).
    cfg.INPUT.SFNET.SCALE_RANGE = [0.5, 2.0]
    # Square-or-(h, w) training crop; images smaller than it are padded (image with 0, label with
    # the ignore value) as the official RandomSizeAndCrop does.
    cfg.INPUT.SFNET.CROP_SIZE = [1024, 1024]
    # Padding of images smaller than the crop: "centered" = official RandomCrop(nopad=False)
    # ((crop - side) // 2 + 1 on both sides); "bottom_right" = only the missing rows/columns.
    cfg.INPUT.SFNET.PAD_MODE = "centered"
    # Horizontal flip probability in training (official 0.5).
    cfg.INPUT.SFNET.FLIP_PROB = 0.5
    # Check every label map against its image size and the class set (errors name the file).
    cfg.INPUT.SFNET.VALIDATE_LABELS = True
    # Official ColorJitter(0.25, 0.25, 0.25, 0.25) on the crop, image only, in random order.
    cfg.INPUT.SFNET.COLOR_JITTER = CN()
    # True = apply the colour jitter (official on).
    cfg.INPUT.SFNET.COLOR_JITTER.ENABLED = True
    # Brightness factor from U[1 - v, 1 + v] (official 0.25).
    cfg.INPUT.SFNET.COLOR_JITTER.BRIGHTNESS = 0.25
    # Contrast factor from U[1 - v, 1 + v] (official 0.25).
    cfg.INPUT.SFNET.COLOR_JITTER.CONTRAST = 0.25
    # Saturation factor from U[1 - v, 1 + v] (official 0.25).
    cfg.INPUT.SFNET.COLOR_JITTER.SATURATION = 0.25
    # Hue shift from U[-v, v], in turns (official 0.25).
    cfg.INPUT.SFNET.COLOR_JITTER.HUE = 0.25
    # Official RandomGaussianBlur on the crop.
    cfg.INPUT.SFNET.GAUSSIAN_BLUR = CN()
    # True = blur (official on).
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.ENABLED = True
    # Sigma drawn from U[low, high] pixels (official [0.15, 1.3]).
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.SIGMA_RANGE = [0.15, 1.3]
    # Probability of blurring a crop (official 1: every crop).
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.PROB = 1.0

    # K-Net training augmentation (sfnet_d2.data.KNetPanopticDatasetMapper, docs/PANOPTIC.md).
    cfg.INPUT.KNET = CN()
    # "ms_crop": the paper's COCO recipe (short side from INPUT.MIN_SIZE_TRAIN, long side <=
    # INPUT.MAX_SIZE_TRAIN; with probability CROP_PROB first a resize to CROP_PRE_RESIZE and a
    # random crop of CROP_SIZE_RANGE); "ms": official K-Net ms-3x (short side in the
    # MIN_SIZE_TRAIN range); "scale_crop": the paper's Cityscapes recipe (scale SCALE_RANGE, crop
    # CROP_SIZE); "none". All flip with FLIP_PROB.
    cfg.INPUT.KNET.AUGMENTATION = "ms_crop"
    # "ms_crop": probability of the resize + crop step (paper 0.5, as DETR's recipe).
    cfg.INPUT.KNET.CROP_PROB = 0.5
    # "ms_crop": short sides the image is first resized to (DETR's [400, 500, 600]).
    cfg.INPUT.KNET.CROP_PRE_RESIZE = [400, 500, 600]
    # "ms_crop": side range [min, max] of the random crop (DETR's [384, 600]).
    cfg.INPUT.KNET.CROP_SIZE_RANGE = [384, 600]
    # "scale_crop": random rescale factor range (paper's Cityscapes recipe 0.5-2.0).
    cfg.INPUT.KNET.SCALE_RANGE = [0.5, 2.0]
    # "scale_crop": (h, w) of the random crop (Cityscapes: the whole 1024x2048 image).
    cfg.INPUT.KNET.CROP_SIZE = [1024, 2048]
    # Horizontal flip probability in training (official 0.5).
    cfg.INPUT.KNET.FLIP_PROB = 0.5


def _add_dataloader(cfg):
    """``DATALOADER.SFNET``: class-uniform sampling with coarse boosting
    (sfnet_d2/data/uniform_sampling.py) and what a bad training sample does. Defaults: the official
    Cityscapes scripts (lxtGH/SFSegNets@ba475ba datasets/uniform.py, train_cityscapes_*.sh)."""
    # The training-sampling node (docs/TRAINING.md).
    cfg.DATALOADER.SFNET = CN()
    # Fraction of training samples that are centroid crops (official --class_uniform_pct 0.5;
    # 0 = plain random images, detectron2's TrainingSampler).
    cfg.DATALOADER.SFNET.CLASS_UNIFORM_PCT = 0.5
    # "epoch" = official build_epoch: every epoch of N samples holds int(N * PCT / num_classes)
    # centroid crops of each class and N - that * num_classes random images, shuffled;
    # "random" = each sample independently a centroid crop with probability PCT (class uniform
    # among classes that have centroids), else a random image.
    cfg.DATALOADER.SFNET.CLASS_UNIFORM_MODE = "epoch"
    # Side of the square tiles (official --class_uniform_tile 1024): one centroid per class per
    # full tile of each label map; an image smaller than a tile gives none (as official).
    cfg.DATALOADER.SFNET.CLASS_UNIFORM_TILE = 1024
    # Folder of the centroid caches (JSON, validated against the label files' paths, sizes and
    # mtimes); "" = OUTPUT_DIR/centroid_cache. Point it at a shared folder to compute once.
    cfg.DATALOADER.SFNET.CENTROID_CACHE_DIR = ""
    # Coarse boosting: centroids of COARSE_BOOST_CLASSES from this dataset's labels are added to
    # the fine ones (official coarse-boost scripts: cityscapes_coarse_sem_seg_train_extra).
    # "" = off; set together with COARSE_BOOST_CLASSES.
    cfg.DATALOADER.SFNET.COARSE_BOOST_DATASET = ""
    # Coarse boosting: the train ids boosted (official [14, 15, 16, 3, 12, 17, 4]); [] = off.
    cfg.DATALOADER.SFNET.COARSE_BOOST_CLASSES = []
    # A training sample that cannot be used (unreadable or truncated image/label, label of the
    # wrong size, values outside the class set) stops training with an error naming the file.
    # True: replace it by the next good record instead, log it, and list every skipped file at
    # the end of training (OUTPUT_DIR/skipped_samples*.json). See sfnet_d2/data/train_stream.py.
    cfg.DATALOADER.SFNET.SKIP_BAD_SAMPLES = False


def _add_solver(cfg):
    """``SOLVER.SFNET`` (schedules counted in epochs, sfnet_d2/solver/epochs.py) and
    ``SOLVER.OPTIMIZER`` (the optimizer of every model, sfnet_d2/solver/build.py). detectron2's
    own keys keep their meaning: SOLVER.BASE_LR, MOMENTUM, NESTEROV, WEIGHT_DECAY,
    WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS, CLIP_GRADIENTS.* (CLIP_TYPE also
    "full_model": the gradient norm of the whole model, K-Net's grad_clip)."""
    # Schedules in epochs. One epoch = floor(ceil(N / W) / (IMS_PER_BATCH / W)) iterations for N
    # training images over W processes: the official DistributedSampler padding and drop_last
    # (2975 images, 8 GPUs x 2 -> 186). SOLVER.LR_SCHEDULER_NAME "WarmupPolyEpochLR" steps the
    # poly LR per epoch as the official LambdaLR (epoch e uses lr * (1 - (e + 1) / E) **
    # POLY_LR_POWER); "WarmupPolyLR" steps it per iteration.
    cfg.SOLVER.SFNET = CN()
    # > 0: SOLVER.MAX_ITER = MAX_EPOCHS * iterations per epoch (official --max_epoch 300 / 1000);
    # 0 = SOLVER.MAX_ITER as given.
    cfg.SOLVER.SFNET.MAX_EPOCHS = 0
    # Iterations per epoch; 0 = computed as above from DATASETS.TRAIN (train_net.py records it).
    cfg.SOLVER.SFNET.ITERS_PER_EPOCH = 0
    # W in the formula above; 0 = the number of training processes of the run (official: 8).
    cfg.SOLVER.SFNET.EPOCH_WORLD_SIZE = 0

    # The optimizer of every model. Per-parameter rules are detectron2's (norm layers
    # WEIGHT_DECAY_NORM, biases BIAS_LR_FACTOR / WEIGHT_DECAY_BIAS), the multipliers below on top;
    # with "SGD" and both multipliers 1 it is detectron2's build_optimizer.
    cfg.SOLVER.OPTIMIZER = CN()
    # "SGD" (SOLVER.MOMENTUM / NESTEROV; the SFNet recipe) or "ADAMW" (torch defaults betas
    # (0.9, 0.999), eps 1e-8; the SegFormer and K-Net recipes).
    cfg.SOLVER.OPTIMIZER.NAME = "SGD"
    # Learning-rate multiplier of the parameters under "backbone." (K-Net: 0.25, its
    # custom_keys={'backbone': dict(lr_mult=0.25)}); 1 = the base rate.
    cfg.SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER = 1.0
    # Learning-rate multiplier of every other parameter: the decode head of a semantic model,
    # K-Net's neck, kernel head and stages (SegFormer: 10, its paramwise 'head' lr_mult).
    cfg.SOLVER.OPTIMIZER.HEAD_MULTIPLIER = 1.0

    # Mixed precision with SOLVER.AMP.ENABLED True (sfnet_d2/engine/train_step.py,
    # docs/TRAINING.md): the autocast dtype. "auto" = float16 on CUDA (detectron2's AMPTrainer,
    # with a GradScaler) and bfloat16 on CPU (CPUs with native bf16 only; an error elsewhere);
    # "float16" or "bfloat16" force one (bfloat16 needs no GradScaler; float16 on CPU is refused).
    # detectron2 v0.6 has no such key; its later releases add one (default "float16").
    cfg.SOLVER.AMP.PRECISION = "auto"
    # Speed of the training step on CPU (sfnet_d2/engine/train_step.py, docs/BENCHMARK.md,
    # "Training step"). Both change how, not what, is computed: same loss to float rounding.
    cfg.SOLVER.CPU = CN()
    # glibc, process-wide, during each training step: serve large blocks from a heap that keeps
    # its memory between steps instead of fresh zero-filled pages (DEPLOY.KEEP_MEMORY's
    # sfnet_d2/deployment/memory.py); the process keeps its peak step memory until it exits.
    cfg.SOLVER.CPU.KEEP_MEMORY = True
    # Train in channels-last (NHWC) memory layout, oneDNN's native layout: the model's weights
    # (and so its activations and gradients) are converted once when the trainer is built.
    cfg.SOLVER.CPU.CHANNELS_LAST = True


def _add_test(cfg):
    """``TEST.SFNET``: the inference protocol of evaluations (Trainer.test: --eval-only and
    in-training evals; sfnet_d2/modeling/test_time_augmentation.py, docs/EVALUATION.md) and the
    evaluator. Defaults = the paper's protocol: whole image, single scale, no flip (=
    SemanticSegmentor's own inference). Official eval.py defaults: MODE "slide", SCALES
    [0.5, 1.0, 2.0], FLIP True, crop 832, overlap 1/3. (detectron2's TEST.AUG.* is not used: its
    MIN_SIZES are absolute sizes, ENABLED is an error.)"""
    # The evaluation protocol node.
    cfg.TEST.SFNET = CN()
    # "auto" = CityscapesSemSegEvaluator (cityscapesscripts' official IoU/iIoU) for datasets
    # whose metadata says evaluator_type "cityscapes_sem_seg", else SemSegEvaluator (mIoU, fwIoU,
    # per-class IoU/accuracy); "sem_seg" or "cityscapes" force one; "submission" writes
    # Cityscapes test-server PNGs (label ids) to OUTPUT_DIR/submission/DATASET/ instead
    # (sfnet_d2/evaluation/cityscapes_submission.py). Panoptic datasets always get PQ.
    cfg.TEST.SFNET.EVALUATOR = "auto"
    # "whole": one pass over the image; "slide": sliding windows, overlapping logits averaged.
    cfg.TEST.SFNET.MODE = "whole"
    # Resize factors of the image; the logits of every scale are resized back and averaged.
    cfg.TEST.SFNET.SCALES = [1.0]
    # Also run every scale on the mirrored image (mirrored back, averaged).
    cfg.TEST.SFNET.FLIP = False
    # Side of the square sliding window (official --crop_size 832).
    cfg.TEST.SFNET.SLIDE_CROP_SIZE = 832
    # Fraction of a window shared with the next: stride = ceil(crop * (1 - overlap)) (official
    # 1/3).
    cfg.TEST.SFNET.SLIDE_OVERLAP = 1.0 / 3
    # At a scale s > 1 the window side is int(crop * s), as in the official eval.py; False =
    # fixed.
    cfg.TEST.SFNET.SLIDE_CROP_GROWS_WITH_SCALE = True
    # Windows per forward pass (speed only; results do not depend on it).
    cfg.TEST.SFNET.SLIDE_BATCH_SIZE = 1


def _add_deploy(cfg):
    """``DEPLOY``: how the optimised inference path runs a trained model (sfnet_d2/deployment/,
    docs/BENCHMARK.md), used by --eval-only, the benchmark, the demo and export; training always
    uses the plain model. Runtime settings, not architecture: the same weights run under any of
    them. Not in the official code (it times the eager model); the logits equal the plain
    model's within 1e-4 in fp32."""
    # The deployment node.
    cfg.DEPLOY = CN()
    # Master switch: fold BatchNorm into the convs, drop deep-supervision heads and dropout, and
    # apply the options below. False = run the model exactly as built.
    cfg.DEPLOY.OPTIMIZE = True
    # Channels-last (NHWC) memory layout for the network, oneDNN's native layout on CPU.
    cfg.DEPLOY.CHANNELS_LAST = True
    # "none" (eager), "freeze" (torch.jit.trace + torch.jit.freeze once per input size) or
    # "optimize" (freeze + torch.jit.optimize_for_inference).
    cfg.DEPLOY.TORCHSCRIPT = "freeze"
    # Input sizes traced at most; later new sizes run the (folded) network eagerly.
    cfg.DEPLOY.MAX_COMPILED_SIZES = 4
    # "fp32", "bf16" (CPUs with bf16 support, GPUs) or "fp16" (GPUs): dtype of weights and
    # activations; the logits are returned in fp32 either way.
    cfg.DEPLOY.PRECISION = "fp32"
    # CPU, glibc, process-wide: while the optimised model runs, serve large blocks from a heap
    # that keeps its memory between calls instead of fresh zero-filled pages
    # (sfnet_d2/deployment/memory.py); the process then holds the peak working set of its
    # largest call until it exits.
    cfg.DEPLOY.KEEP_MEMORY = True
    # Lower the peak activation memory of semantic SFNet models without changing the result
    # (sfnet_d2/deployment/activation_memory.py): the deep stem runs in horizontal bands and the
    # fuse convolution reads the decoder's parts one at a time instead of their concatenation.
    cfg.DEPLOY.LOW_MEMORY = True
