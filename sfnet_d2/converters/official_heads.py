"""
Key maps from the official SFNet heads to ours (for the checkpoint converter).

Official ``UperNetAlignHead`` (v1) / ``UperNetAlignHeadV2`` (v2) -> our ``SFNetHead`` /
``SFNetLiteHead`` (keys relative to ``head.`` and ``sem_seg_head.``):

    ppm.stages.i.1 (conv) / .2 (BN)   -> neck.ppm.stages.i.1 / .1.norm
    ppm.bottleneck.0 / .1             -> neck.ppm.bottleneck / .norm
    fpn_in.i.0 / .1                   -> neck.lateral_convs.i / .norm   (v2: fpn_in.2 is unused)
    fpn_out.i.0.0 / .0.1              -> neck.output_convs.i / .norm                      (v1)
    fpn_out_align.i.{down_h,down_l,flow_make} -> neck.align_modules.i.{down_high,down_low,flow_make}
    flow_align_module.{down_h,down_l,flow_make,flow_gate.0} -> neck.align_module.{..., gate} (v2)
    conv_last.0.0 / .0.1 / .1         -> fuse_conv / fuse_conv.norm / predictor
    dsn[.i].0 / .1 / .4               -> dsn_heads.i.0 / .0.norm / .2   (only when our model
                                         builds deep supervision; otherwise dropped: training only)
"""
import re
from typing import Dict, Iterable, Optional, Tuple

__all__ = ["official_head_key_map"]

# (official key pattern, our key template), relative to head. / sem_seg_head.
_COMMON_RULES = [
    (r"ppm\.stages\.(\d+)\.1\.(.+)", r"neck.ppm.stages.\1.1.\2"),
    (r"ppm\.stages\.(\d+)\.2\.(.+)", r"neck.ppm.stages.\1.1.norm.\2"),
    (r"ppm\.bottleneck\.0\.(.+)", r"neck.ppm.bottleneck.\1"),
    (r"ppm\.bottleneck\.1\.(.+)", r"neck.ppm.bottleneck.norm.\1"),
    (r"fpn_in\.(\d+)\.0\.(.+)", r"neck.lateral_convs.\1.\2"),
    (r"fpn_in\.(\d+)\.1\.(.+)", r"neck.lateral_convs.\1.norm.\2"),
    (r"conv_last\.0\.0\.(.+)", r"fuse_conv.\1"),
    (r"conv_last\.0\.1\.(.+)", r"fuse_conv.norm.\1"),
    (r"conv_last\.1\.(.+)", r"predictor.\1"),
]
_V1_RULES = [
    (r"fpn_out\.(\d+)\.0\.0\.(.+)", r"neck.output_convs.\1.\2"),
    (r"fpn_out\.(\d+)\.0\.1\.(.+)", r"neck.output_convs.\1.norm.\2"),
    (r"fpn_out_align\.(\d+)\.down_h\.(.+)", r"neck.align_modules.\1.down_high.\2"),
    (r"fpn_out_align\.(\d+)\.down_l\.(.+)", r"neck.align_modules.\1.down_low.\2"),
    (r"fpn_out_align\.(\d+)\.flow_make\.(.+)", r"neck.align_modules.\1.flow_make.\2"),
]
_V1_DSN_RULES = [
    (r"dsn\.(\d+)\.0\.(.+)", r"dsn_heads.\1.0.\2"),
    (r"dsn\.(\d+)\.1\.(.+)", r"dsn_heads.\1.0.norm.\2"),
    (r"dsn\.(\d+)\.4\.(.+)", r"dsn_heads.\1.2.\2"),
]
_V2_RULES = [
    (r"flow_align_module\.down_h\.(.+)", r"neck.align_module.down_high.\1"),
    (r"flow_align_module\.down_l\.(.+)", r"neck.align_module.down_low.\1"),
    (r"flow_align_module\.flow_make\.(.+)", r"neck.align_module.flow_make.\1"),
    (r"flow_align_module\.flow_gate\.0\.(.+)", r"neck.align_module.gate.\1"),
]
_V2_DSN_RULES = [
    (r"dsn\.0\.(.+)", r"dsn_heads.0.0.\1"),
    (r"dsn\.1\.(.+)", r"dsn_heads.0.0.norm.\1"),
    (r"dsn\.4\.(.+)", r"dsn_heads.0.2.\1"),
]
_DSN_DROPPED = ("deep-supervision head, training only (the official SFNet-Lite never calls it); "
                "set MODEL.SFNET.DEEP_SUPERVISION True to keep it")


def official_head_key_map(
    official_keys: Iterable[str], version: str, deep_supervision: bool
) -> Dict[str, Tuple[str, Optional[str]]]:
    """
    ``official_keys`` are relative to the official ``head.``; returns ``{key: ("ours", key
    relative to our sem_seg_head) | ("drop", reason)}``; unrecognised keys are left out.
    ``version`` is "v1" (SFNet) or "v2" (SFNet-Lite).
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"head version must be 'v1' or 'v2', got {version!r}")
    rules = _COMMON_RULES + (_V1_RULES if version == "v1" else _V2_RULES)
    dsn_rules = _V1_DSN_RULES if version == "v1" else _V2_DSN_RULES
    if deep_supervision:
        rules = rules + dsn_rules
    out = {}
    for key in official_keys:
        if version == "v2" and key.startswith("fpn_in.2."):
            out[key] = ("drop", "the official SFNet-Lite builds fpn_in.2 but never uses it")
            continue
        if not deep_supervision and any(re.fullmatch(p, key) for p, _ in dsn_rules):
            out[key] = ("drop", _DSN_DROPPED)
            continue
        for pattern, template in rules:
            if re.fullmatch(pattern, key):
                out[key] = ("ours", re.sub(pattern, template, key))
                break
    return out
