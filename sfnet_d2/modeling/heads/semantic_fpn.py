"""
The Semantic-FPN baseline of the paper's ADE20k comparison (Table 18: Semantic-FPN vs SFNet vs
SFNet-Lite on ResNet-50 and DF2): detectron2's own ``FPN`` built over one of our backbones, with
detectron2's own ``SemSegFPNHead`` on top (``MODEL.SEM_SEG_HEAD.NAME: "SemSegFPNHead"``).

``build_sfnet_fpn_backbone`` (``BACKBONE_REGISTRY``) builds the bottom-up backbone named by
``MODEL.SFNET.FPN_BOTTOM_UP`` (default: the deep-stem ResNet, with the same
``MODEL.RESNETS.*`` / ``MODEL.SFNET.RESNET_DILATIONS`` as the SFNet models it is compared with) and
wraps it in ``detectron2.modeling.FPN`` with ``MODEL.FPN.IN_FEATURES / OUT_CHANNELS / NORM /
FUSE_TYPE`` and no extra top block: outputs ``p2..p5`` for res2..res5 (named by log2 of the
stride). The paper re-implemented Semantic-FPN "in the same codebase" and gives no more detail;
we use detectron2's implementation of Kirillov et al. unchanged.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN

__all__ = ["build_sfnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_sfnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN (no top block) over the backbone ``MODEL.SFNET.FPN_BOTTOM_UP``."""
    name = cfg.MODEL.SFNET.FPN_BOTTOM_UP
    if name == "build_sfnet_fpn_backbone":
        raise ValueError("MODEL.SFNET.FPN_BOTTOM_UP cannot be build_sfnet_fpn_backbone itself")
    if name not in BACKBONE_REGISTRY:
        raise ValueError(
            f"MODEL.SFNET.FPN_BOTTOM_UP={name!r} is not in BACKBONE_REGISTRY; e.g. "
            "'build_deep_stem_resnet_backbone', 'build_stdc_backbone', 'build_dfnet_backbone'"
        )
    bottom_up = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)}: {name} does not output "
            f"{missing}; it outputs {sorted(bottom_up.output_shape())}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=None,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
