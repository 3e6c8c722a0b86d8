"""
Key maps from the official SFSegNets backbones to ours (for the checkpoint converter,
official_converter.py; the heads' maps are in official_heads.py). One function per backbone
family, all with the same contract: official keys relative to the backbone (no ``backbone.``
prefix) -> ``{key: ("ours", our key relative to our backbone) | ("drop", reason) | ("alias",
canonical official key)}``; keys a map does not recognise are left out, and the converter reports
them.

* ``official_resnet_key_map``: deep-stem ResNet (lxtGH/SFSegNets@ba475ba network/resnet_d.py)
  -> ``DeepStemResNet`` (sfnet_d2/modeling/backbone/deep_stem_resnet.py);
* ``official_stdc_key_map``: STDC1/STDC2 (network/stdcnet.py) -> ``STDCNet`` (stdc.py);
* ``official_dfnet_key_map``: DF1/DF2 (network/dfnet.py) -> ``DFNet`` (dfnet.py).
"""
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from sfnet_d2.modeling.backbone.dfnet import DFNET_SPECS
from sfnet_d2.modeling.backbone.stdc import STDC_LAYOUTS

__all__ = ["official_backbone_key_map", "official_resnet_key_map", "official_stdc_key_map",
           "official_dfnet_key_map"]


# ---------------------------------------------------------------------- deep-stem ResNet
_RESNET_STEM = {  # official index in layer0.0 (or conv1 in ImageNet files) -> our stem key
    "0": "conv1.weight", "3": "conv2.weight", "6": "conv3.weight",
    "1": "conv1.norm", "4": "conv2.norm",
}
_RESNET_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(.+)$")


def official_resnet_key_map(official_keys) -> Dict[str, Tuple[str, Optional[str]]]:
    """
    Map official deep-stem ResNet keys to ours, for the checkpoint converter. Accepts both
    layouts the official files use: the SFNet models' ``layer0.0.{0,1,3,4,6}``/``layer0.1``
    stem, and the ImageNet-pretrained files' ``conv1.{0,1,3,4,6}``/``bn1`` stem (whose ``fc``
    classifier is dropped). Returns ``{key: ("ours", our_key) | ("drop", reason)}``; keys it does
    not recognise are left out.
    """
    out = {}
    for key in official_keys:
        m = re.match(r"^(?:layer0\.0|conv1)\.(\d)\.(.+)$", key)
        if m and m.group(1) in _RESNET_STEM:
            target = _RESNET_STEM[m.group(1)]
            if target.endswith(".weight"):
                if m.group(2) == "weight":
                    out[key] = ("ours", f"stem.{target}")
            else:
                out[key] = ("ours", f"stem.{target}.{m.group(2)}")
            continue
        m = re.match(r"^(?:layer0\.1|bn1)\.(.+)$", key)
        if m:
            out[key] = ("ours", f"stem.conv3.norm.{m.group(1)}")
            continue
        m = _RESNET_BLOCK_KEY.match(key)
        if m:
            stage, block, part, rest = m.groups()
            if part.startswith("conv"):
                if rest == "weight":
                    out[key] = ("ours", f"res{int(stage) + 1}.{block}.{part}.weight")
                continue
            if part.startswith("bn"):
                target = f"conv{part[2]}.norm.{rest}"
            elif part == "downsample.0":
                if rest != "weight":
                    continue
                target = "shortcut.weight"
            else:
                target = f"shortcut.norm.{rest}"
            out[key] = ("ours", f"res{int(stage) + 1}.{block}.{target}")
            continue
        if key.startswith("fc."):
            out[key] = ("drop", "ImageNet classifier, not part of the segmentation backbone")
    return out


# ---------------------------------------------------------------------- STDC
# Official: features.0 / features.1 are the stem ConvX ({conv.weight, bn.*}); features.N (N >= 2)
# are the blocks in order ({conv_list.k.conv.weight, conv_list.k.bn.*, avd_layer.0.weight,
# avd_layer.1.*}). x2/x4/x8/x16/x32 are nn.Sequential wrappers around slices of ``features``;
# slicing keeps the original child names, so ``x16.0.4.conv_list.0.conv.weight`` is
# ``features.4.conv_list.0.conv.weight`` again.
# Ours: stem.conv{1,2}.{weight, norm.*}; res{3,4,5}.{j}.convs.{k}.{weight, norm.*} and
# res{3,4,5}.0.avd.{weight, norm.*}.

_STDC_STAGES = ("res3", "res4", "res5")  # our CatBottleneck stages (STDCNet)
_STDC_TAIL = {"conv_last": "ImageNet classifier 1x1 ConvX (conv_last) is not built",
         "fc": "ImageNet classifier fc is not built",
         "bn": "ImageNet classifier BatchNorm1d (bn) is not built",
         "linear": "ImageNet classifier linear layer is not built"}
_STDC_ALIAS_GROUPS = ("x2", "x4", "x8", "x16", "x32")  # stem conv1, stem conv2, res3, res4, res5
_STDC_NORM_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_STDC_FEATURE_RE = re.compile(r"^features\.(\d+)\.(.+)$")
_STDC_ALIAS_RE = re.compile(r"^(x2|x4|x8|x16|x32)\.0\.(\d+)\.(.+)$")
_STDC_STEM_PART_RE = re.compile(rf"^(?:conv\.weight|bn\.{_STDC_NORM_PARAM})$")
_STDC_BLOCK_PART_RE = re.compile(
    rf"^(?:conv_list\.([0-3])\.(?:conv\.weight|bn\.{_STDC_NORM_PARAM})"
    rf"|avd_layer\.(?:0\.weight|1\.{_STDC_NORM_PARAM}))$"
)


def _stdc_feature_owner(layout: Sequence[int]) -> List[Tuple[str, int]]:
    """features index -> (our stage, block index); indices 0 and 1 are the stem convs."""
    owners = [("stem", 1), ("stem", 2)]
    for stage, n_blocks in zip(_STDC_STAGES, layout):
        owners += [(stage, j) for j in range(n_blocks)]
    return owners


def _stdc_infer_layout(indices: Iterable[int], name: Optional[str]) -> Sequence[int]:
    if name is not None:
        if name not in STDC_LAYOUTS:
            raise ValueError(f"STDC name {name!r} unknown; use one of {sorted(STDC_LAYOUTS)}")
        return STDC_LAYOUTS[name]
    top = max(indices, default=-1)
    for layout in STDC_LAYOUTS.values():
        if top == 1 + sum(layout):
            return layout
    if top <= 3:
        # features.0..3 mean the same in STDC1 and STDC2 (stem + first two res3 blocks).
        return STDC_LAYOUTS["STDC1"]
    raise ValueError(
        f"cannot tell STDC1 from STDC2: the highest official features index is {top} (STDC1 "
        f"ends at {1 + sum(STDC_LAYOUTS['STDC1'])}, STDC2 at {1 + sum(STDC_LAYOUTS['STDC2'])}); "
        "pass name='STDC1' or 'STDC2'"
    )


def _stdc_our_key(index: int, part: str, owners) -> Optional[str]:
    if index >= len(owners):
        return None
    stage, pos = owners[index]
    if stage == "stem":
        if not _STDC_STEM_PART_RE.match(part):
            return None
        return f"stem.conv{pos}." + ("weight" if part == "conv.weight" else "norm." + part[3:])
    m = _STDC_BLOCK_PART_RE.match(part)
    if m is None:
        return None
    prefix = f"{stage}.{pos}."
    if m.group(1) is not None:  # a conv_list branch
        leaf = "weight" if part.endswith("conv.weight") else "norm." + part.split(".bn.", 1)[1]
        return prefix + f"convs.{m.group(1)}.{leaf}"
    if pos != 0:  # only the stride-2 first block of a stage has an avd conv
        return None
    return prefix + ("avd.weight" if part == "avd_layer.0.weight" else "avd.norm." + part[12:])


def official_stdc_key_map(
    official_keys: Iterable[str], name: Optional[str] = None
) -> Dict[str, Tuple[str, Optional[str]]]:
    """
    Classify official STDC backbone state-dict keys (without a leading ``backbone.``).

    Returns ``{official_key: (action, target)}`` for every key recognised:
    ``("ours", our_key)`` (our :class:`STDCNet` state-dict key), ``("drop", reason)`` for the
    classifier tail we do not build, or ``("alias", "features.N...")`` for the ``x2..x32``
    duplicates. Unrecognised keys are left out. STDC1 vs STDC2 is read from the highest
    ``features``/alias index unless ``name`` ("STDC1"/"STDC2") is given; it only matters from
    ``features.4`` on.
    """
    keys = list(official_keys)
    indices = [int(m.group(1)) for m in map(_STDC_FEATURE_RE.match, keys) if m is not None]
    indices += [int(m.group(2)) for m in map(_STDC_ALIAS_RE.match, keys) if m is not None]
    owners = _stdc_feature_owner(_stdc_infer_layout(indices, name))
    # Which features indices each alias group wraps, e.g. x8 -> the res3 blocks.
    stage_group = {"res3": "x8", "res4": "x16", "res5": "x32"}
    group_of = {index: (_STDC_ALIAS_GROUPS[pos - 1] if stage == "stem" else stage_group[stage])
                for index, (stage, pos) in enumerate(owners)}
    result: Dict[str, Tuple[str, Optional[str]]] = {}
    for key in keys:
        top = key.split(".", 1)[0]
        if top in _STDC_TAIL:
            result[key] = ("drop", _STDC_TAIL[top])
            continue
        m = _STDC_FEATURE_RE.match(key)
        if m is not None:
            ours = _stdc_our_key(int(m.group(1)), m.group(2), owners)
            if ours is not None:
                result[key] = ("ours", ours)
            continue
        m = _STDC_ALIAS_RE.match(key)
        if m is not None:
            group, index, part = m.group(1), int(m.group(2)), m.group(3)
            if group_of.get(index) == group and _stdc_our_key(index, part, owners) is not None:
                result[key] = ("alias", f"features.{index}.{part}")
    return result


# ---------------------------------------------------------------------- DFNet
_DFNET_STAGE_NAMES = "|".join(sorted({s[0] for spec in DFNET_SPECS.values() for s in spec[0]},
                               key=len, reverse=True))
_DFNET_BLOCK_KEY = re.compile(
    rf"^({_DFNET_STAGE_NAMES})\.(\d+)\.(conv1|conv2|bn1|bn2|downsample\.0|downsample\.1)\.(.+)$"
)
_DFNET_STEM_KEY = re.compile(r"^stage1\.([0134])\.(.+)$")
# official stage1 Sequential index -> our stem conv
_DFNET_STEM_INDEX = {"0": "conv1", "1": "conv1", "3": "conv2", "4": "conv2"}
_DFNET_BLOCK_PART = {"conv1": "conv1", "bn1": "conv1.norm", "conv2": "conv2", "bn2": "conv2.norm",
               "downsample.0": "shortcut", "downsample.1": "shortcut.norm"}


def official_dfnet_key_map(official_keys) -> Dict[str, Tuple[str, Optional[str]]]:
    """
    Map official DFNet backbone keys (without ``backbone.``; SFNet checkpoints and the
    ImageNet-pretrained df1/df2 files use the same names) to ours, for the checkpoint converter.

    ``stage1.{0,3}`` -> ``stem.conv{1,2}``, ``stage1.{1,4}`` -> ``stem.conv{1,2}.norm``;
    inside a block ``bnK`` -> ``convK.norm`` and ``downsample.{0,1}`` -> ``shortcut[.norm]``;
    stage names are unchanged. The ImageNet ``fc`` classifier is dropped. Returns
    ``{key: ("ours", our_key) | ("drop", reason)}``; keys it does not recognise are left out
    (e.g. conv biases, which no official DFNet conv has).
    """
    out: Dict[str, Tuple[str, Optional[str]]] = {}
    for key in official_keys:
        m = _DFNET_STEM_KEY.match(key)
        if m:
            index, rest = m.groups()
            is_conv = index in ("0", "3")
            if is_conv and rest == "weight":
                out[key] = ("ours", f"stem.{_DFNET_STEM_INDEX[index]}.weight")
            elif not is_conv:
                out[key] = ("ours", f"stem.{_DFNET_STEM_INDEX[index]}.norm.{rest}")
            continue
        m = _DFNET_BLOCK_KEY.match(key)
        if m:
            stage, block, part, rest = m.groups()
            if part in ("conv1", "conv2", "downsample.0") and rest != "weight":
                continue  # every official conv is bias-free; anything else is unknown
            out[key] = ("ours", f"{stage}.{block}.{_DFNET_BLOCK_PART[part]}.{rest}")
            continue
        if re.match(r"^fc\.(weight|bias)$", key):
            out[key] = ("drop", "ImageNet classifier, not used by the SFNet backbone")
    return out


_FAMILIES = {"resnet": official_resnet_key_map, "stdc": official_stdc_key_map,
             "dfnet": official_dfnet_key_map}


def official_backbone_key_map(family: str, keys) -> Dict[str, Tuple[str, Optional[str]]]:
    """The key map of backbone ``family`` ("resnet", "stdc" or "dfnet"; ``OfficialArch.backbone``
    in official_converter.py) applied to ``keys``."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown official backbone family {family!r}; one of {sorted(_FAMILIES)}")
    return _FAMILIES[family](keys)
