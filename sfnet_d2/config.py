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
    # (mIoU, fwIoU, per-class IoU/accuracy); "sem_seg" or "cityscapes" force one.
    cfg.TEST.SFNET_EVALUATOR = "auto"
    return cfg
