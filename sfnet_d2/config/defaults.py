"""``add_sfnet_config(cfg)``: every config key sfnet-d2 adds to detectron2's, with its meaning."""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_sfnet_config"]


def add_sfnet_config(cfg):
    """
    Add the SFNet keys to a detectron2 config (idempotent). Also adds DeepLab's keys, whose
    ``WarmupPolyLR`` schedule (``SOLVER.POLY_LR_POWER``, ``SOLVER.POLY_LR_CONSTANT_ENDING``) is the
    poly schedule SFNet trains with.
    """
    if hasattr(cfg.MODEL, "SFNET"):
        return cfg
    add_deeplab_config(cfg)

    cfg.MODEL.SFNET = CN()
    # Decoder ("neck") by name from SFNET_NECK_REGISTRY; empty = the head's own
    # (SFNetHead -> "SFNetDecoder", SFNetLiteHead -> "SFNetLiteDecoder").
    cfg.MODEL.SFNET.NECK = ""
    # Dilation of every block's 3x3 conv2 in res2..res5 of the deep-stem ResNet; strides are kept
    # (official 'variant D': layer3 dilation 2, layer4 dilation 4, output stride still 32).
    cfg.MODEL.SFNET.RESNET_DILATIONS = [1, 1, 2, 4]
    # Pooling sizes of the Pyramid Pooling Module on the coarsest level.
    cfg.MODEL.SFNET.PPM_BINS = [1, 2, 3, 6]
    # Kernel size of the flow-predicting conv in FAM / GD-FAM (paper Table 9b; official 3).
    cfg.MODEL.SFNET.FLOW_KERNEL_SIZE = 3
    # align_corners of the flow warp's grid_sample. True = official code at HEAD; the first
    # (ECCV 2020) release used the torch default False: set False for checkpoints trained with it.
    cfg.MODEL.SFNET.WARP_ALIGN_CORNERS = True
    # OHEM cross-entropy: keep pixels whose ground-truth probability is <= max(OHEM_THRESH, the
    # OHEM_MIN_KEPT-th smallest one), over each process's batch. Official defaults 0.7 / 100000
    # (the SFNet-R18 script uses 10000). OHEM_MIN_KEPT <= 0 turns mining off (plain CE).
    cfg.MODEL.SFNET.OHEM_THRESH = 0.7
    cfg.MODEL.SFNET.OHEM_MIN_KEPT = 100000
    # Deep-supervision heads on the decoder's intermediate maps, run in training only.
    cfg.MODEL.SFNET.DEEP_SUPERVISION = False
    # Weight of each deep-supervision loss term (official aux_weight).
    cfg.MODEL.SFNET.DSN_LOSS_WEIGHT = 1.0
    # Optimised inference path (sfnet_d2/deployment/, docs/BENCHMARK.md), used by --eval-only, the
    # benchmark, the demo and export; training always uses the plain model. Not in the official
    # code (it times the eager model); the logits equal the plain model's within 1e-4 in fp32.
    cfg.MODEL.SFNET.INFERENCE = CN()
    # Master switch: fold BatchNorm into the convs, drop deep-supervision heads and dropout, and
    # apply the options below. False = run the model exactly as built.
    cfg.MODEL.SFNET.INFERENCE.OPTIMIZE = True
    # Channels-last (NHWC) memory layout for the network, oneDNN's native layout on CPU.
    cfg.MODEL.SFNET.INFERENCE.CHANNELS_LAST = True
    # "none" (eager), "freeze" (torch.jit.trace + torch.jit.freeze once per input size) or
    # "optimize" (freeze + torch.jit.optimize_for_inference).
    cfg.MODEL.SFNET.INFERENCE.TORCHSCRIPT = "freeze"
    # Input sizes traced at most; later new sizes run the (folded) network eagerly.
    cfg.MODEL.SFNET.INFERENCE.MAX_COMPILED_SIZES = 4
    # "fp32", "bf16" (CPUs with bf16 support, GPUs) or "fp16" (GPUs): dtype of weights and
    # activations; the logits are returned in fp32 either way.
    cfg.MODEL.SFNET.INFERENCE.PRECISION = "fp32"
    # CPU, glibc: while the optimised model runs, serve large blocks from a heap that keeps its
    # memory between calls instead of fresh zero-filled pages (sfnet_d2/deployment/memory.py);
    # the process then holds the peak working set of its largest call until it exits.
    cfg.MODEL.SFNET.INFERENCE.KEEP_MEMORY = True
    _add_ablation_config(cfg)

    # STDC backbones (STDCNet813 = "STDC1", STDCNet1446 = "STDC2"), registered as
    # "build_stdc_backbone"; outputs res2..res5 = feat4/8/16/32 (64/256/512/1024 channels).
    cfg.MODEL.STDC = CN()
    cfg.MODEL.STDC.NAME = "STDC1"
    cfg.MODEL.STDC.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.STDC.NORM = "BN"
    # DFNet backbones ("DF1" / "DF2"), registered as "build_dfnet_backbone"; outputs res3, res4,
    # res5 = the three features the official SFNet head takes, fine to coarse (DF1 strides
    # 16/32/32, DF2 strides 8/16/32).
    cfg.MODEL.DFNET = CN()
    cfg.MODEL.DFNET.NAME = "DF1"
    cfg.MODEL.DFNET.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.DFNET.NORM = "BN"

    # Semantic training data (sfnet_d2.data.SFNetSemanticDatasetMapper).
    # Dataset mapper class by name in sfnet_d2.data.DATASET_MAPPER_REGISTRY (as Mask2Former):
    # "SFNetSemanticDatasetMapper" (semantic models) or "KNetPanopticDatasetMapper" (K-Net).
    cfg.INPUT.DATASET_MAPPER_NAME = "SFNetSemanticDatasetMapper"
    cfg.INPUT.SFNET = CN()
    # Random rescale factor range applied to the whole image before cropping
    # (official scripts 0.5-2.0; the paper's text says 0.75-2.0).
    cfg.INPUT.SFNET.SCALE_RANGE = [0.5, 2.0]
    # Square-or-(h, w) training crop; images smaller than it are padded (image with 0, label with
    # the ignore value) as the official RandomSizeAndCrop does.
    cfg.INPUT.SFNET.CROP_SIZE = [1024, 1024]
    # Horizontal flip probability in training.
    cfg.INPUT.SFNET.FLIP_PROB = 0.5
    # Check every label map against its image size and the class set (errors name the file).
    cfg.INPUT.SFNET.VALIDATE_LABELS = True
    # Evaluator: "auto" = CityscapesSemSegEvaluator (cityscapesscripts' official IoU/iIoU) for
    # datasets whose metadata says evaluator_type "cityscapes_sem_seg", else SemSegEvaluator
    # (mIoU, fwIoU, per-class IoU/accuracy); "sem_seg" or "cityscapes" force one; "submission"
    # writes Cityscapes test-server PNGs (label ids) to OUTPUT_DIR/submission/DATASET/ instead
    # (sfnet_d2/evaluation/cityscapes_submission.py).
    cfg.TEST.SFNET_EVALUATOR = "auto"

    # Inference protocol of evaluations (Trainer.test: --eval-only and in-training evals),
    # sfnet_d2/modeling/test_time_augmentation.py, docs/EVALUATION.md. Defaults = the paper's protocol: whole
    # image, single scale, no flip (= SemanticSegmentor's own inference). Official eval.py
    # defaults: MODE "slide", SCALES [0.5, 1.0, 2.0], FLIP True, crop 832, overlap 1/3.
    # (detectron2's TEST.AUG.* is not used: its MIN_SIZES are absolute sizes, ENABLED is an error.)
    cfg.TEST.SFNET = CN()
    # "whole": one pass over the image; "slide": sliding windows, overlapping logits averaged.
    cfg.TEST.SFNET.MODE = "whole"
    # Resize factors of the image; the logits of every scale are resized back and averaged.
    cfg.TEST.SFNET.SCALES = [1.0]
    # Also run every scale on the mirrored image (mirrored back, averaged).
    cfg.TEST.SFNET.FLIP = False
    # Side of the square sliding window (official --crop_size 832).
    cfg.TEST.SFNET.SLIDE_CROP_SIZE = 832
    # Fraction of a window shared with the next: stride = ceil(crop * (1 - overlap)) (official 1/3).
    cfg.TEST.SFNET.SLIDE_OVERLAP = 1.0 / 3
    # At a scale s > 1 the window side is int(crop * s), as in the official eval.py; False = fixed.
    cfg.TEST.SFNET.SLIDE_CROP_GROWS_WITH_SCALE = True
    # Windows per forward pass (speed only; results do not depend on it).
    cfg.TEST.SFNET.SLIDE_BATCH_SIZE = 1

    _add_training_recipe_config(cfg)
    _add_optimizer_config(cfg)
    _add_knet_config(cfg)
    _add_robustnet_config(cfg)
    _add_mit_config(cfg)
    return cfg


def _add_training_recipe_config(cfg):
    """The official/paper training recipe beyond the model: photometric augmentation, class-
    uniform sampling with coarse boosting, epoch-based schedules (docs/TRAINING.md). Defaults are
    the official Cityscapes scripts (lxtGH/SFSegNets@ba475ba
    scripts/cityscacpes/train_cityscapes_*.sh, with train.py and loss.py)."""
    # Padding of images smaller than the crop: "centered" = official RandomCrop(nopad=False)
    # ((crop - side) // 2 + 1 on both sides); "bottom_right" = only the missing rows/columns.
    cfg.INPUT.SFNET.PAD_MODE = "centered"
    # Official ColorJitter(0.25, 0.25, 0.25, 0.25) on the crop: factors from U[1 - v, 1 + v] for
    # brightness/contrast/saturation, a hue shift from U[-v, v] (turns), random order. Image only.
    cfg.INPUT.SFNET.COLOR_JITTER = CN()
    cfg.INPUT.SFNET.COLOR_JITTER.ENABLED = True
    cfg.INPUT.SFNET.COLOR_JITTER.BRIGHTNESS = 0.25
    cfg.INPUT.SFNET.COLOR_JITTER.CONTRAST = 0.25
    cfg.INPUT.SFNET.COLOR_JITTER.SATURATION = 0.25
    cfg.INPUT.SFNET.COLOR_JITTER.HUE = 0.25
    # Official RandomGaussianBlur: sigma from U[0.15, 1.3] pixels, applied to every crop (PROB 1).
    cfg.INPUT.SFNET.GAUSSIAN_BLUR = CN()
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.ENABLED = True
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.SIGMA_RANGE = [0.15, 1.3]
    cfg.INPUT.SFNET.GAUSSIAN_BLUR.PROB = 1.0

    # Class-uniform sampling (sfnet_d2/data/uniform_sampling.py).
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
    # the fine ones (official coarse-boost scripts: cityscapes_coarse_sem_seg_train_extra and
    # trainIds [14, 15, 16, 3, 12, 17, 4]). "" / [] = off; both must be set together.
    cfg.DATALOADER.SFNET.COARSE_BOOST_DATASET = ""
    cfg.DATALOADER.SFNET.COARSE_BOOST_CLASSES = []
    # A training sample that cannot be used (unreadable or truncated image/label, label of the
    # wrong size, values outside the class set) stops training with an error naming the file.
    # True: replace it by the next good record instead, log it, and list every skipped file at
    # the end of training (OUTPUT_DIR/skipped_samples*.json). See sfnet_d2/data/train_stream.py.
    cfg.DATALOADER.SFNET.SKIP_BAD_SAMPLES = False

    # Schedules in epochs (sfnet_d2/solver/). One epoch = floor(ceil(N / W) / (IMS_PER_BATCH / W))
    # iterations for N training images over W processes: the official DistributedSampler padding
    # and drop_last (2975 images, 8 GPUs x 2 -> 186). SOLVER.LR_SCHEDULER_NAME
    # "WarmupPolyEpochLR" steps the poly LR per epoch as the official LambdaLR (epoch e uses
    # lr * (1 - (e + 1) / E) ** POLY_LR_POWER); "WarmupPolyLR" steps it per iteration.
    cfg.SOLVER.SFNET = CN()
    # > 0: SOLVER.MAX_ITER = MAX_EPOCHS * iterations per epoch (official --max_epoch 300 / 1000).
    cfg.SOLVER.SFNET.MAX_EPOCHS = 0
    # Iterations per epoch; 0 = computed as above from DATASETS.TRAIN (train_net.py records it).
    cfg.SOLVER.SFNET.ITERS_PER_EPOCH = 0
    # W in the formula above; 0 = the number of training processes of the run (official: 8).
    cfg.SOLVER.SFNET.EPOCH_WORLD_SIZE = 0


def _add_knet_config(cfg):
    """K-Net panoptic keys (meta-architecture "SFNetKNet", sfnet_d2/modeling/meta_arch/knet/, docs/PANOPTIC.md).
    Defaults are the official K-Net COCO panoptic config (ZwwWayne/K-Net@5e50ee5
    configs/det/knet/knet_s3_r50_fpn_ms-3x_coco-panoptic.py and the _base_ files it includes)."""
    cfg.MODEL.KNET = CN()
    # Dataset whose metadata defines the classes (thing/stuff split, names); "" = the first of
    # DATASETS.TRAIN, else of DATASETS.TEST.
    cfg.MODEL.KNET.METADATA_DATASET = ""
    cfg.MODEL.KNET.NUM_PROPOSALS = 100      # thing ("proposal") kernels; + one kernel per stuff class
    cfg.MODEL.KNET.NUM_STAGES = 3           # kernel-update stages (no weight sharing)
    cfg.MODEL.KNET.FEAT_CHANNELS = 256      # kernel / kernel-feature width
    # Stride of the kernel features relative to the neck's stride-4 map (official 2 -> stride 8;
    # masks are upsampled back by it for losses and inference).
    cfg.MODEL.KNET.FEAT_DOWNSAMPLE_STRIDE = 2
    cfg.MODEL.KNET.POSITIONAL_ENCODING = True  # add a sine positional encoding to the kernel features
    cfg.MODEL.KNET.NORM = "GN"              # norm of the kernel-feature convs (official GN, 32 groups)
    cfg.MODEL.KNET.NUM_HEADS = 8            # self-attention heads across kernels
    cfg.MODEL.KNET.FFN_CHANNELS = 2048      # hidden width of each stage's FFN
    cfg.MODEL.KNET.DROPOUT = 0.0            # attention / FFN dropout (official 0)
    cfg.MODEL.KNET.HARD_MASK_THR = 0.5      # sigmoid threshold of the masks the group feature sums over
    # Loss weights (official: focal cls 2, BCE mask 1, dice 4, rank 0.1, kernel-head semantic 1)
    cfg.MODEL.KNET.CLS_WEIGHT = 2.0
    cfg.MODEL.KNET.MASK_WEIGHT = 1.0
    cfg.MODEL.KNET.DICE_WEIGHT = 4.0
    cfg.MODEL.KNET.RANK_WEIGHT = 0.1
    cfg.MODEL.KNET.SEG_WEIGHT = 1.0
    cfg.MODEL.KNET.FOCAL_ALPHA = 0.25
    cfg.MODEL.KNET.FOCAL_GAMMA = 2.0
    cfg.MODEL.KNET.STAGE_LOSS_WEIGHTS = [1.0, 1.0, 1.0]  # one per stage
    # Hungarian matching costs (official: focal cls 2, dice 4, soft pixel accuracy 1)
    cfg.MODEL.KNET.CLS_COST = 2.0
    cfg.MODEL.KNET.DICE_COST = 4.0
    cfg.MODEL.KNET.MASK_COST = 1.0
    cfg.MODEL.KNET.TEST = CN()
    cfg.MODEL.KNET.TEST.INSTANCE_SCORE_THR = 0.3  # thing kernels scoring below it are dropped
    # A kernel is kept when (its argmax area) / (area of its mask >= MASK_THR) >= OVERLAP_THR.
    cfg.MODEL.KNET.TEST.OVERLAP_THR = 0.6
    cfg.MODEL.KNET.TEST.MASK_THR = 0.5
    cfg.MODEL.KNET.TEST.SEMANTIC_ON = False  # also return "sem_seg" (per class: max of score * mask)
    # Fine-tuning from a checkpoint of another class set (COCO -> Cityscapes pipeline): class-
    # dependent weights (classifiers, stuff kernels) are "copy_matching" = copied for classes of
    # the same name in both datasets, others re-initialised; or "reinit" = all re-initialised.
    cfg.MODEL.KNET.TRANSFER_CLASS_WEIGHTS = "copy_matching"

    cfg.INPUT.KNET = CN()
    # "ms_crop": the paper's COCO recipe (short side from INPUT.MIN_SIZE_TRAIN, long side <=
    # INPUT.MAX_SIZE_TRAIN; with probability CROP_PROB first a resize to CROP_PRE_RESIZE and a
    # random crop of CROP_SIZE_RANGE); "ms": official K-Net ms-3x (short side in the
    # MIN_SIZE_TRAIN range); "scale_crop": the paper's Cityscapes recipe (scale SCALE_RANGE, crop
    # CROP_SIZE); "none". All flip with FLIP_PROB.
    cfg.INPUT.KNET.AUGMENTATION = "ms_crop"
    cfg.INPUT.KNET.CROP_PROB = 0.5
    cfg.INPUT.KNET.CROP_PRE_RESIZE = [400, 500, 600]
    cfg.INPUT.KNET.CROP_SIZE_RANGE = [384, 600]
    cfg.INPUT.KNET.SCALE_RANGE = [0.5, 2.0]
    cfg.INPUT.KNET.CROP_SIZE = [1024, 2048]
    cfg.INPUT.KNET.FLIP_PROB = 0.5


def _add_robustnet_config(cfg):
    """RobustNet's instance normalisation / instance (selective) whitening as options of the
    deep-stem ResNet and STDC backbones (paper Table 17; sfnet_d2/modeling/backbone/robustnet.py,
    docs/ROBUSTNET.md). Defaults: the official RobustNet Cityscapes ISW scripts (shachoi/RobustNet
    scripts/train_r50os16_cty_isw.sh); MODE "none" keeps every backbone bit-identical."""
    cfg.MODEL.ROBUSTNET = CN()
    # "none"; "is" / "in": instance normalisation without / with affine, no loss (official
    # --wt_layer codes 3 / 4); "iw": + whitening loss on all off-diagonal covariances (code 1);
    # "isw": + loss on the style-sensitive covariances only (code 2, RobustNet's method).
    cfg.MODEL.ROBUSTNET.MODE = "none"
    # Where: "stem" (the stem's last norm is replaced), "res2".."res5" (IN on the output of the
    # stage's last block). Official --wt_layer 0 0 2 2 2 0 0 = stem, layer1, layer2.
    cfg.MODEL.ROBUSTNET.LAYERS = ["stem", "res2", "res3"]
    # Weight of the whitening loss, the mean over LAYERS (official --wt_reg_weight 0.6).
    cfg.MODEL.ROBUSTNET.LOSS_WEIGHT = 0.6
    # ISW: 1-D k-means groups of the covariance variances; all but the lowest are masked
    # (official --clusters: 2 in the Cityscapes scripts, 3 for GTAV, 20 for MobileNetV2).
    cfg.MODEL.ROBUSTNET.CLUSTERS = 2
    # ISW: rounds of covariance statistics; the mask is the intersection of theirs (--trials 10).
    cfg.MODEL.ROBUSTNET.TRIALS = 10
    # ISW: the mask is computed when epoch COVSTAT_EPOCH (0-based) ends; the whitening loss applies
    # from then on (official --cov_stat_epoch 5: 6 epochs without it). Epoch length as in
    # SOLVER.SFNET (sfnet_d2/solver/epochs.py).
    cfg.MODEL.ROBUSTNET.COVSTAT_EPOCH = 5
    # ISW: images per round and dataset, drawn at random, full size (official: 500, batch 1).
    cfg.MODEL.ROBUSTNET.COVSTAT_IMAGES = 500
    # ISW: datasets of the statistics; [] = DATASETS.TRAIN (official --covstat_val_dataset =
    # the training set).
    cfg.MODEL.ROBUSTNET.COVSTAT_DATASETS = []
    # ISW: photometric change of the second view: colour jitter (brightness, contrast, saturation,
    # hue) always applied, then a Gaussian blur with sigma in BLUR_SIGMA_RANGE ([] = no blur).
    # Official ColorJitter(0.8, 0.8, 0.8, 0.3) + RandomGaussianBlur (sigma 0.15-1.3).
    cfg.MODEL.ROBUSTNET.COVSTAT_COLOR_JITTER = [0.8, 0.8, 0.8, 0.3]
    cfg.MODEL.ROBUSTNET.COVSTAT_BLUR_SIGMA_RANGE = [0.15, 1.3]


def _add_ablation_config(cfg):
    """The paper's ablation variants (docs/ABLATIONS.md). Every default builds the official model
    unchanged (same modules, same state_dict keys)."""
    # Alignment of each top-down decoder step (sfnet_d2/modeling/alignment/build.py): "fam", "gdfam",
    # "deform" (deformable conv on the upsampled coarse map, offsets from the concatenation;
    # Tables 9d/16) or "bilinear" (plain FPN: low + bilinear up(high); the "FPN + PPM" baseline).
    # "" = the decoder's own: "fam" for SFNetDecoder, "gdfam" for SFNetLiteDecoder.
    cfg.MODEL.SFNET.ALIGN = ""
    # Steps that use ALIGN, named by the coarse level they upsample (the paper's F3/F4/F5 of
    # Table 8b are res3/res4/res5: "res5" = the PPM output aligned onto res4); the other steps use
    # "bilinear". ["all"] = every step; [] = none (the bilinear baseline).
    cfg.MODEL.SFNET.ALIGN_LEVELS = ["all"]
    # Context module on the coarsest level (sfnet_d2/modeling/heads/context.py; Tables 8a/8c): "ppm"
    # (official), "aspp" (DeepLabv3 ASPP, detectron2's layer) or "none" (a lateral conv only).
    cfg.MODEL.SFNET.CONTEXT = "ppm"
    # The three atrous rates of CONTEXT "aspp" (DeepLabv3 at output stride 16, and the official
    # SFSegNets ASPP default).
    cfg.MODEL.SFNET.ASPP_DILATIONS = [6, 12, 18]
    # How FAM / GD-FAM upsample the reduced coarse feature before the flow conv (Table 9a):
    # "bilinear" (official, align_corners=True), "nearest" or "deconv" (learned transposed conv,
    # bilinear-initialised). The warp itself is always grid_sample.
    cfg.MODEL.SFNET.FAM_UPSAMPLE = "bilinear"
    # GD-FAM gate (Table 10b): "atten" (official: 3x3 conv of the channel mean/max maps),
    # "conv" (official AlignedModulev2: 3x3 conv of the reduced features) or "none" (fixed 1/2:
    # the mean of the two warped features).
    cfg.MODEL.SFNET.GDFAM_GATE = "atten"
    # GD-FAM second flow (Table 10b "DF"): False = one flow warps the coarse feature, the fine
    # feature enters the gate's mix unwarped.
    cfg.MODEL.SFNET.GDFAM_DUAL_FLOW = True
    # Bottom-up backbone of the "build_sfnet_fpn_backbone" builder (detectron2's FPN over one of
    # our backbones, for the Semantic-FPN baseline of Table 18; MODEL.FPN.* configure the FPN).
    cfg.MODEL.SFNET.FPN_BOTTOM_UP = "build_deep_stem_resnet_backbone"


def _add_mit_config(cfg):
    """SegFormer's Mix Transformer backbones, its all-MLP decoder and the optimizer options their
    recipe needs (paper Table 19; docs/TRANSFORMERS.md). Defaults are the official SegFormer ones
    (NVlabs/SegFormer mix_transformer.py, segformer.b0.512x512.ade.160k.py); the optimizer
    defaults keep detectron2's SGD unchanged for every other config."""
    # MiT encoder, registered as "build_mit_backbone"; outputs res2..res5 at strides 4/8/16/32.
    cfg.MODEL.MIT = CN()
    # "B0" (widths 32/64/160/256) or "B1" (64/128/320/512), both depths 2/2/2/2; "B2".."B5" too.
    cfg.MODEL.MIT.NAME = "B0"
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth, growing linearly from 0 to this over all blocks (official 0.1).
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    # Dropout2d before the classifier of the SegFormer all-MLP decoder ("SegFormerHead", whose
    # embedding width is MODEL.SEM_SEG_HEAD.CONVS_DIM: 256 for B0/B1); official dropout_ratio 0.1.
    cfg.MODEL.MIT.DECODER_DROPOUT = 0.1


def _add_optimizer_config(cfg):
    """The optimizer of every model (sfnet_d2/solver/build.py). Defaults = detectron2's SGD."""
    cfg.SOLVER.OPTIMIZER = CN()
    # "SGD" (SOLVER.MOMENTUM / NESTEROV; SFNet) or "ADAMW" (torch defaults betas (0.9, 0.999),
    # eps 1e-8; SegFormer and K-Net).
    cfg.SOLVER.OPTIMIZER.NAME = "SGD"
    # Learning-rate multiplier of the parameters under "backbone." (K-Net: 0.25).
    cfg.SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER = 1.0
    # Learning-rate multiplier of every other parameter (SegFormer: 10 on its decode head).
    cfg.SOLVER.OPTIMIZER.HEAD_MULTIPLIER = 1.0
