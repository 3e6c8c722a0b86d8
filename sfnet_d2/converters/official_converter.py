"""
Conversion of the official SFSegNets checkpoints (lxtGH/SFSegNets) into sfnet-d2 models.

The official models are built by factories such as ``network.sfnet_resnet.DeepR18_SF_deeply``;
:data:`OFFICIAL_ARCHS` ties each factory to our config. Official files come in several layouts
(bare state_dict, ``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` prefixes from
DistributedDataParallel, STDC's duplicated alias entries); all are read with
``torch.load(weights_only=True)``, so a file that needs arbitrary code to unpickle is refused.

Every official key (key maps: official_backbones.py, official_heads.py) is either mapped to one
of our keys (same shape required), dropped with a stated reason (weights the official model
builds but never uses in its forward, or the ImageNet classifier of a backbone file), or an alias
verified equal to its canonical entry. Anything else - an unexpected key, a missing key of our
model, a shape mismatch - stops the conversion with the full list, and nothing is written.
"""
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from sfnet_d2.converters.official_backbones import official_backbone_key_map
from sfnet_d2.converters.official_heads import official_head_key_map

__all__ = ["OFFICIAL_ARCHS", "OfficialArch", "ConversionError", "ConversionResult",
           "CONVERSION_HINT", "resolve_arch", "read_official_checkpoint",
           "convert_official_state_dict", "official_backbone_key_map"]


@dataclass(frozen=True)
class OfficialArch:
    factory: str          # official factory function name
    module: str           # official module (network.<module>.<factory>)
    config: str           # our config, relative to the repository root
    backbone: str         # "resnet" | "stdc" | "dfnet"
    head: str             # "v1" (SFNet) | "v2" (SFNet-Lite)


_SEM = "configs/cityscapes/semantic/"
OFFICIAL_ARCHS: Dict[str, OfficialArch] = {
    a.factory: a
    for a in [
        OfficialArch("DeepR18_SF_deeply", "sfnet_resnet", _SEM + "sfnet_R18.yaml", "resnet", "v1"),
        OfficialArch("DeepR18_SFV2_deeply_dsn_FA_Atten", "sfnet_resnet",
                     _SEM + "sfnet_lite_R18.yaml", "resnet", "v2"),
        OfficialArch("DeepR50_SF_deeply", "sfnet_resnet", _SEM + "sfnet_R50.yaml", "resnet", "v1"),
        OfficialArch("DeepR101_SF_deeply", "sfnet_resnet", _SEM + "sfnet_R101.yaml", "resnet",
                     "v1"),
        OfficialArch("AlignedSTDC1", "sfnet_stdcnet", _SEM + "sfnet_STDC1.yaml", "stdc", "v1"),
        OfficialArch("AlignedSTDC2", "sfnet_stdcnet", _SEM + "sfnet_STDC2.yaml", "stdc", "v1"),
        OfficialArch("AlignedSTDC1_SFV2_spatial_atten", "sfnet_stdcnet",
                     _SEM + "sfnet_lite_STDC1.yaml", "stdc", "v2"),
        OfficialArch("AlignedSTDC2_SFV2_spatial_atten", "sfnet_stdcnet",
                     _SEM + "sfnet_lite_STDC2.yaml", "stdc", "v2"),
        OfficialArch("AlignedDFnetv1", "sfnet_dfnet", _SEM + "sfnet_DF1.yaml", "dfnet", "v1"),
        OfficialArch("AlignedDFnetv2", "sfnet_dfnet", _SEM + "sfnet_DF2.yaml", "dfnet", "v1"),
    ]
}


class ConversionError(ValueError):
    pass


# The advice closing a mismatch report. It names only what convert_official.py accepts (checked
# by tests/test_robustness_checkpoint.py); the class count needs no option: it is read from the
# file.
CONVERSION_HINT = (
    "Check --arch (the official factory the file was trained with); for an ImageNet backbone "
    "file, add --backbone-only. convert_official.py sets MODEL.SEM_SEG_HEAD.NUM_CLASSES from the "
    "file's classifier and MODEL.SFNET.DEEP_SUPERVISION from --deep-supervision; a model built "
    "by hand for convert_official_state_dict needs the same; nothing was written."
)


@dataclass
class ConversionResult:
    state_dict: "OrderedDict[str, torch.Tensor]"
    mapped: List[Tuple[str, str]] = field(default_factory=list)          # (official, ours)
    dropped: List[Tuple[str, str, int]] = field(default_factory=list)    # (official, reason, numel)
    aliases: List[Tuple[str, str]] = field(default_factory=list)         # (alias, canonical)


def resolve_arch(name: str) -> OfficialArch:
    """Accept ``FACTORY`` or ``network.<module>.FACTORY``."""
    parts = name.split(".")
    factory = parts[-1]
    arch = OFFICIAL_ARCHS.get(factory)
    if arch is None or (len(parts) > 1 and ".".join(parts[:-1]) != f"network.{arch.module}"):
        valid = ", ".join(f"{a.factory} (network.{a.module}.{a.factory})"
                          for a in OFFICIAL_ARCHS.values())
        raise ConversionError(
            f"--arch {name!r} is not a supported official factory; use one of: {valid}")
    return arch


def read_official_checkpoint(path: str) -> "OrderedDict[str, torch.Tensor]":
    """Read an official file safely and return a flat state_dict (layout wrappers removed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path} cannot be read with torch.load(weights_only=True): it needs arbitrary code "
            f"to unpickle, which we refuse to run. If you trust the file, re-save its tensors with "
            f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'clean.pth') and "
            f"convert that. (Reason: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ConversionError(f"{path} is damaged or not a PyTorch checkpoint: {e}") from e
    # unwrap {"state_dict": ...} / {"model": ...} layouts (possibly nested)
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in ("state_dict", "model", "net") if isinstance(obj.get(k), dict)]
        if not inner:
            raise ConversionError(
                f"{path} holds no state_dict: top-level keys {sorted(obj)[:10]}; expected tensors, "
                "or a 'state_dict' / 'model' entry"
            )
        obj = obj[inner[0]]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    state = OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue  # e.g. an epoch counter stored beside the weights
        k = k[len("module."):] if k.startswith("module.") else k
        state[k] = v
    if not state:
        raise ConversionError(f"{path} contains no tensors")
    return state


def _split(official: Dict[str, torch.Tensor], arch: OfficialArch):
    """Split official keys into (backbone keys relative to the backbone, head keys, others)."""
    backbone, head, other = {}, {}, []
    for k in official:
        if k.startswith("head."):
            head[k[len("head."):]] = k
        elif k.startswith("backbone."):
            backbone[k[len("backbone."):]] = k
        elif arch.backbone == "resnet" or not any(
                x.startswith(("backbone.", "head.")) for x in official):
            # the official ResNet models keep their backbone at the top level (layer0..4), and
            # ImageNet backbone files have no prefix at all
            backbone[k] = k
        else:
            other.append(k)
    return backbone, head, other


def convert_official_state_dict(
    official: Dict[str, torch.Tensor],
    arch: OfficialArch,
    target_shapes: Dict[str, Tuple[int, ...]],
    deep_supervision: bool = False,
    backbone_only: bool = False,
) -> ConversionResult:
    """
    Map ``official`` onto our model, whose state_dict shapes are ``target_shapes``
    (``{key: shape}``). With ``backbone_only`` only our ``backbone.*`` keys are required.
    Raises :class:`ConversionError` listing every problem; returns the converted state_dict.
    """
    backbone, head, unexpected = _split(official, arch)
    result = ConversionResult(OrderedDict())
    plans = [("backbone.", backbone, official_backbone_key_map(arch.backbone, list(backbone)))]
    if head:
        plans.append(("sem_seg_head.", head,
                      official_head_key_map(list(head), arch.head, deep_supervision)))
    mismatched, alias_errors = [], []
    for our_prefix, keys, mapping in plans:
        for rel, full in keys.items():
            decision = mapping.get(rel)
            if decision is None:
                unexpected.append(full)
                continue
            kind, value = decision
            tensor = official[full]
            if kind == "drop":
                result.dropped.append((full, value, tensor.numel()))
            elif kind == "alias":
                canonical = keys.get(value) if value in keys else None
                if canonical is None or not torch.equal(official[canonical], tensor):
                    alias_errors.append(f"{full} (alias of {value}: missing or different values)")
                else:
                    result.aliases.append((full, canonical))
            else:
                ours = our_prefix + value
                if backbone_only and not ours.startswith("backbone."):
                    continue
                expected = target_shapes.get(ours)
                if expected is None:
                    unexpected.append(f"{full} -> {ours} (no such key in our model)")
                elif tuple(tensor.shape) != tuple(expected):
                    mismatched.append((ours, f"{full} -> {ours}: official {tuple(tensor.shape)}, "
                                             f"ours {tuple(expected)}"))
                else:
                    result.state_dict[ours] = tensor.clone()
                    result.mapped.append((full, ours))
    required = [k for k in target_shapes if not backbone_only or k.startswith("backbone.")]
    mismatched_ours = {ours for ours, _ in mismatched}
    missing = [k for k in required if k not in result.state_dict and k not in mismatched_ours]
    if unexpected or missing or mismatched or alias_errors:
        lines = [f"The checkpoint does not match {arch.factory} ({arch.config}):"]
        for title, items in (("missing keys of our model", missing),
                             ("unexpected official keys", unexpected),
                             ("shape mismatches", [m for _, m in mismatched]),
                             ("bad alias entries", alias_errors)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {x}" for x in items]
        lines.append(CONVERSION_HINT)
        raise ConversionError("\n".join(lines))
    return result


def invert_mapping(result: ConversionResult) -> Dict[str, str]:
    """ours -> official key, for writing our weights back in the official layout."""
    return {ours: official for official, ours in result.mapped}
