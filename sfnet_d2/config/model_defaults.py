"""
The ``MODEL.*`` keys sfnet-d2 adds, one helper per node: ``MODEL.SFNET`` (the SFNet / SFNet-Lite
architecture and loss), the backbones ``MODEL.STDC`` / ``MODEL.DFNET`` / ``MODEL.MIT``,
``MODEL.KNET`` (panoptic) and ``MODEL.ROBUSTNET``. Runtime settings of the optimised inference path
are not architecture and live in ``DEPLOY.*`` (``sfnet_d2/config/defaults.py``).

Every key has a comment above it: what it is, the values it takes, and where its default comes
from (SFNet official code: lxtGH/SFSegNets@ba475ba; paper: SFNet IJCV, "SFNet: Faster and
Accurate Semantic Segmentation via Semantic Flow"; K-Net: ZwwWayne/K-Net@5e50ee5; SegFormer:
NVlabs/SegFormer; RobustNet: shachoi/RobustNet).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_model_config"]


def add_model_config(cfg):
    """Add every ``MODEL.*`` node of sfnet-d2 to ``cfg``."""
    _add_model_sfnet(cfg)
    _add_backbones(cfg)
    _add_knet(cfg)
    _add_robustnet(cfg)


def _add_model_sfnet(cfg):
    """``MODEL.SFNET``: the SFNet decoder (FAM / GD-FAM alignment, PPM context), the deep-stem
    ResNet's dilations and the training loss. Every default builds the official model (same
    modules, same state_dict keys); the other values are the paper's ablation variants
    (docs/ABLATIONS.md)."""
    # The SFNet architecture node (sfnet_d2/modeling/heads/, sfnet_d2/modeling/alignment/).
    cfg.MODEL.SFNET = CN()
    # Decoder ("neck") by name from SFNET_NECK_REGISTRY; "" = the head's own
    # (SFNetHead -> "SFNetDecoder", SFNetLiteHead -> "SFNetLiteDecoder").
    cfg.MODEL.SFNET.NECK = ""
    # Dilation of every block's 3x3 conv2 in res2..res5 of the deep-stem ResNet; strides are kept
    # (official 'variant D': layer3 dilation 2, layer4 dilation 4, output stride still 32).
    cfg.MODEL.SFNET.RESNET_DILATIONS = [1, 1, 2, 4]
    # Pooling sizes of the Pyramid Pooling Module on the coarsest level (official [1, 2, 3, 6]).
    cfg.MODEL.SFNET.PPM_BINS = [1, 2, 3, 6]
    # Kernel size of the flow-predicting conv in FAM / GD-FAM: 1, 3, 5 or 7 (paper Table 9b;
    # official 3).
    cfg.MODEL.SFNET.FLOW_KERNEL_SIZE = 3
    # align_corners of the flow warp's grid_sample. True = official code at HEAD; the first
    # (ECCV 2020) release used the torch default False: set False for checkpoints trained with it.
    cfg.MODEL.SFNET.WARP_ALIGN_CORNERS = True
    # Alignment of each top-down decoder step (sfnet_d2/modeling/alignment/build.py): "fam",
    # "gdfam", "deform" (deformable conv on the upsampled coarse map, offsets from the
    # concatenation; Tables 9d/16) or "bilinear" (plain FPN: low + bilinear up(high); the
    # "FPN + PPM" baseline). "" = the decoder's own: "fam" for SFNetDecoder, "gdfam" for
    # SFNetLiteDecoder.
    cfg.MODEL.SFNET.ALIGN = ""
    # Steps that use ALIGN, named by the coarse level they upsample (the paper's F3/F4/F5 of
    # Table 8b are res3/res4/res5: "res5" = the PPM output aligned onto res4); the other steps use
    # "bilinear". ["all"] = every step; [] = none (the bilinear baseline).
    cfg.MODEL.SFNET.ALIGN_LEVELS = ["all"]
    # Context module on the coarsest level (sfnet_d2/modeling/heads/context.py; Tables 8a/8c):
    # "ppm" (official), "aspp" (DeepLabv3 ASPP, detectron2's layer) or "none" (a lateral conv).
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
    # GD-FAM second flow (Table 10b "DF"): True (official) warps both features; False = one flow
    # warps the coarse feature, the fine feature enters the gate's mix unwarped.
    cfg.MODEL.SFNET.GDFAM_DUAL_FLOW = True
    # Bottom-up backbone of the "build_sfnet_fpn_backbone" builder (detectron2's FPN over one of
    # our backbones, for the Semantic-FPN baseline of Table 18; MODEL.FPN.* configure the FPN).
    cfg.MODEL.SFNET.FPN_BOTTOM_UP = "build_deep_stem_resnet_backbone"
    # OHEM cross-entropy: keep pixels whose ground-truth probability is <= max(OHEM_THRESH, the
    # OHEM_MIN_KEPT-th smallest one), over each process's batch. Official 0.7.
    cfg.MODEL.SFNET.OHEM_THRESH = 0.7
    # Minimum number of pixels OHEM keeps (official 100000; the SFNet-R18 script uses 10000);
    # <= 0 turns mining off (plain cross-entropy).
    cfg.MODEL.SFNET.OHEM_MIN_KEPT = 100000
    # Deep-supervision heads on the decoder's intermediate maps (the official "_dsn" models),
    # run in training only.
    cfg.MODEL.SFNET.DEEP_SUPERVISION = False
    # Weight of each deep-supervision loss term (official aux_weight 1.0).
    cfg.MODEL.SFNET.DSN_LOSS_WEIGHT = 1.0


def _add_backbones(cfg):
    """Backbones beside detectron2's: STDC and DFNet (the paper's real-time backbones) and
    SegFormer's Mix Transformer (paper Table 19). The deep-stem ResNet reads detectron2's
    ``MODEL.RESNETS.*`` and ``MODEL.SFNET.RESNET_DILATIONS``."""
    # STDC backbones, registered as "build_stdc_backbone" (sfnet_d2/modeling/backbone/stdc.py).
    cfg.MODEL.STDC = CN()
    # "STDC1" (STDCNet813) or "STDC2" (STDCNet1446), as the official STDC-Seg code names them.
    cfg.MODEL.STDC.NAME = "STDC1"
    # Levels returned, a subset of res2..res5 = feat4/8/16/32 (64/256/512/1024 channels).
    cfg.MODEL.STDC.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Norm layer, a detectron2 get_norm name: "BN", "SyncBN", "naiveSyncBN", "FrozenBN", "GN".
    cfg.MODEL.STDC.NORM = "BN"
    # DFNet backbones, registered as "build_dfnet_backbone" (sfnet_d2/modeling/backbone/dfnet.py).
    cfg.MODEL.DFNET = CN()
    # "DF1" (strides of res3/res4/res5: 16/32/32) or "DF2" (8/16/32).
    cfg.MODEL.DFNET.NAME = "DF1"
    # Levels returned: res3, res4, res5, the three features the official SFNet head takes.
    cfg.MODEL.DFNET.OUT_FEATURES = ["res3", "res4", "res5"]
    # Norm layer, a detectron2 get_norm name (as MODEL.STDC.NORM).
    cfg.MODEL.DFNET.NORM = "BN"
    # SegFormer's MiT encoder, registered as "build_mit_backbone" (sfnet_d2/modeling/backbone/
    # mit.py; defaults: NVlabs/SegFormer mix_transformer.py, segformer.b0.512x512.ade.160k.py).
    cfg.MODEL.MIT = CN()
    # "B0" (widths 32/64/160/256) or "B1" (64/128/320/512), both depths 2/2/2/2; "B2".."B5" too.
    cfg.MODEL.MIT.NAME = "B0"
    # Levels returned, a subset of res2..res5 (strides 4/8/16/32).
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stochastic depth, growing linearly from 0 to this over all blocks (official 0.1).
    cfg.MODEL.MIT.DROP_PATH_RATE = 0.1
    # Dropout2d before the classifier of the SegFormer all-MLP decoder ("SegFormerHead", whose
    # embedding width is MODEL.SEM_SEG_HEAD.CONVS_DIM: 256 for B0/B1); official dropout_ratio 0.1.
    cfg.MODEL.MIT.DECODER_DROPOUT = 0.1


def _add_knet(cfg):
    """``MODEL.KNET``: K-Net panoptic segmentation (meta-architecture "SFNetKNet",
    sfnet_d2/modeling/meta_arch/knet/, docs/PANOPTIC.md). Defaults are the official K-Net COCO
    panoptic config (ZwwWayne/K-Net@5e50ee5 configs/det/knet/knet_s3_r50_fpn_ms-3x_coco-panoptic.py
    and the _base_ files it includes)."""
    # The K-Net node.
    cfg.MODEL.KNET = CN()
    # Dataset whose metadata defines the classes (thing/stuff split, names); "" = the first of
    # DATASETS.TRAIN, else of DATASETS.TEST.
    cfg.MODEL.KNET.METADATA_DATASET = ""
    # Thing ("proposal") kernels; one kernel per stuff class is added (official 100).
    cfg.MODEL.KNET.NUM_PROPOSALS = 100
    # Kernel-update stages, no weight sharing (official 3).
    cfg.MODEL.KNET.NUM_STAGES = 3
    # Width of the kernels and the kernel features (official 256).
    cfg.MODEL.KNET.FEAT_CHANNELS = 256
    # Stride of the kernel features relative to the neck's stride-4 map, 1 or 2 (official 2 ->
    # stride 8; masks are upsampled back by it for losses and inference).
    cfg.MODEL.KNET.FEAT_DOWNSAMPLE_STRIDE = 2
    # Add a sine positional encoding to the kernel features (official True).
    cfg.MODEL.KNET.POSITIONAL_ENCODING = True
    # Norm of the kernel-feature convs, a detectron2 get_norm name (official "GN", 32 groups).
    cfg.MODEL.KNET.NORM = "GN"
    # Self-attention heads across kernels (official 8).
    cfg.MODEL.KNET.NUM_HEADS = 8
    # Hidden width of each stage's FFN (official 2048).
    cfg.MODEL.KNET.FFN_CHANNELS = 2048
    # Attention / FFN dropout (official 0).
    cfg.MODEL.KNET.DROPOUT = 0.0
    # Sigmoid threshold of the masks the group feature sums over (official 0.5).
    cfg.MODEL.KNET.HARD_MASK_THR = 0.5
    # Loss weight of the focal classification loss (official 2).
    cfg.MODEL.KNET.CLS_WEIGHT = 2.0
    # Loss weight of the mask BCE (official 1).
    cfg.MODEL.KNET.MASK_WEIGHT = 1.0
    # Loss weight of the mask dice loss (official 4).
    cfg.MODEL.KNET.DICE_WEIGHT = 4.0
    # Loss weight of the rank loss of the initial kernel head (official 0.1).
    cfg.MODEL.KNET.RANK_WEIGHT = 0.1
    # Loss weight of the kernel head's semantic (stuff) loss (official 1).
    cfg.MODEL.KNET.SEG_WEIGHT = 1.0
    # Focal loss alpha of the classification loss (official 0.25).
    cfg.MODEL.KNET.FOCAL_ALPHA = 0.25
    # Focal loss gamma of the classification loss (official 2).
    cfg.MODEL.KNET.FOCAL_GAMMA = 2.0
    # Loss weight of each stage, one per stage (NUM_STAGES entries; official all 1).
    cfg.MODEL.KNET.STAGE_LOSS_WEIGHTS = [1.0, 1.0, 1.0]
    # Hungarian matching cost of the focal classification (official 2).
    cfg.MODEL.KNET.CLS_COST = 2.0
    # Hungarian matching cost of the dice distance (official 4).
    cfg.MODEL.KNET.DICE_COST = 4.0
    # Hungarian matching cost of the soft pixel accuracy (official 1).
    cfg.MODEL.KNET.MASK_COST = 1.0
    # Panoptic inference (official test_cfg).
    cfg.MODEL.KNET.TEST = CN()
    # Thing kernels scoring below it are dropped (official 0.3).
    cfg.MODEL.KNET.TEST.INSTANCE_SCORE_THR = 0.3
    # A kernel is kept when (its argmax area) / (area of its mask >= MASK_THR) >= OVERLAP_THR
    # (official 0.6).
    cfg.MODEL.KNET.TEST.OVERLAP_THR = 0.6
    # Sigmoid threshold of the masks in the merge above (official 0.5).
    cfg.MODEL.KNET.TEST.MASK_THR = 0.5
    # Also return "sem_seg" (per class: max of score * mask) for mIoU; True in the Cityscapes
    # configs.
    cfg.MODEL.KNET.TEST.SEMANTIC_ON = False
    # Fine-tuning from a checkpoint of another class set (COCO -> Cityscapes pipeline): class-
    # dependent weights (classifiers, stuff kernels) are "copy_matching" = copied for classes of
    # the same name in both datasets, others re-initialised; or "reinit" = all re-initialised.
    cfg.MODEL.KNET.TRANSFER_CLASS_WEIGHTS = "copy_matching"


def _add_robustnet(cfg):
    """``MODEL.ROBUSTNET``: RobustNet's instance normalisation / instance (selective) whitening as
    options of the deep-stem ResNet and STDC backbones (paper Table 17;
    sfnet_d2/modeling/backbone/robustnet.py, docs/ROBUSTNET.md). Defaults: the official RobustNet
    Cityscapes ISW scripts (shachoi/RobustNet scripts/train_r50os16_cty_isw.sh); MODE "none" keeps
    every backbone bit-identical."""
    # The RobustNet node.
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
    # ISW: the mask is computed when epoch COVSTAT_EPOCH (0-based) ends; the whitening loss
    # applies from then on (official --cov_stat_epoch 5: 6 epochs without it). Epoch length as
    # in SOLVER.SFNET (sfnet_d2/solver/epochs.py).
    cfg.MODEL.ROBUSTNET.COVSTAT_EPOCH = 5
    # ISW: images per round and dataset, drawn at random, full size (official: 500, batch 1).
    cfg.MODEL.ROBUSTNET.COVSTAT_IMAGES = 500
    # ISW: datasets of the statistics; [] = DATASETS.TRAIN (official --covstat_val_dataset =
    # the training set).
    cfg.MODEL.ROBUSTNET.COVSTAT_DATASETS = []
    # ISW: colour jitter (brightness, contrast, saturation, hue) of the second view, always
    # applied (official ColorJitter(0.8, 0.8, 0.8, 0.3)).
    cfg.MODEL.ROBUSTNET.COVSTAT_COLOR_JITTER = [0.8, 0.8, 0.8, 0.3]
    # ISW: then a Gaussian blur of the second view with sigma in this range; [] = no blur
    # (official RandomGaussianBlur, sigma 0.15-1.3).
    cfg.MODEL.ROBUSTNET.COVSTAT_BLUR_SIGMA_RANGE = [0.15, 1.3]
