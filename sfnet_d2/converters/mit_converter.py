"""
Conversion of released SegFormer / MiT weights into sfnet-d2's ``MixVisionTransformer`` backbone
(and, for complete SegFormer segmentation models, its ``SegFormerHead``).

Two layouts are read, both from a file the user downloaded:

* **official** (NVlabs/SegFormer): the ImageNet files ``mit_b0.pth`` .. ``mit_b5.pth``
  (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``block1.0.attn.kv.weight``,
  ``block1.0.attn.sr.weight``, ``block1.0.attn.norm.weight``, ``block1.0.mlp.dwconv.dwconv.weight``,
  ``norm1.weight``, ... and the ImageNet classifier ``head.*``), and the mmseg segmentation
  checkpoints (the same keys under ``backbone.``, the decoder under ``decode_head.``);
* **huggingface** (``transformers``' SegFormer):
  ``segformer.encoder.patch_embeddings.0.proj.weight``,
  ``segformer.encoder.block.0.0.attention.self.query.weight``, separate ``key`` and ``value``
  (concatenated here into our ``kv``, keys first as in the official layer),
  ``attention.output.dense``, ``mlp.dense1``, ``segformer.encoder.layer_norm.0``, the ImageNet
  ``classifier.*``, or a ``decode_head.*`` of a segmentation model. Keys without the
  ``segformer.`` prefix (a bare ``SegformerModel``) are accepted too.

Files are read with ``torch.load(weights_only=True)`` (``.pth``, ``.bin``; the shared reader of
:mod:`official_converter`) or, for ``.safetensors``, with the optional ``safetensors`` package.
Every source key is mapped (same shape required), or dropped with a stated reason (the ImageNet
classifier; mmseg's never-called ``conv_seg``; the decoder when only the backbone is asked for).
Any unknown key, missing key of our model or shape mismatch stops the conversion with the full list.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from sfnet_d2.converters.official_converter import ConversionError, ConversionResult, read_official_checkpoint

__all__ = ["ConversionError", "MIT_LAYOUT_OFFICIAL", "MIT_LAYOUT_HF", "read_mit_checkpoint",
           "detect_mit_layout", "mit_key_map", "infer_mit_variant", "mit_target_shapes",
           "convert_mit_state_dict"]

MIT_LAYOUT_OFFICIAL = "official"
MIT_LAYOUT_HF = "huggingface"

_IMAGENET_HEAD = "ImageNet classifier (not part of the segmentation model)"
_CONV_SEG = "mmseg BaseDecodeHead.conv_seg, built but never called by SegFormerHead"
_HEAD_SKIPPED = "decode head not converted (backbone only)"
_PARAM = r"(weight|bias)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# Sub-keys of one transformer block, source -> ours ("kv:0"/"kv:1" = key/value halves of attn.kv).
_OFFICIAL_BLOCK = {
    "norm1": "norm1", "norm2": "norm2", "attn.q": "attn.q", "attn.kv": "attn.kv",
    "attn.proj": "attn.proj", "attn.sr": "attn.sr", "attn.norm": "attn.sr_norm",
    "mlp.fc1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv", "mlp.fc2": "mlp.fc2",
}
_HF_BLOCK = {
    "layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
    "attention.self.key": "kv:0", "attention.self.value": "kv:1",
    "attention.output.dense": "attn.proj", "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.sr_norm", "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv", "mlp.dense2": "mlp.fc2",
}

_OFFICIAL_RULES = [
    (re.compile(rf"^(?:backbone\.)?patch_embed([1-4])\.(proj|norm)\.{_PARAM}$"),
     lambda m: f"backbone.res{int(m[1]) + 1}.patch_embed.{m[2]}.{m[3]}"),
    (re.compile(rf"^(?:backbone\.)?block([1-4])\.(\d+)\.(.+)\.{_PARAM}$"),
     lambda m: _block_key(m[1], 1, m[2], _OFFICIAL_BLOCK.get(m[3]), m[4])),
    (re.compile(rf"^(?:backbone\.)?norm([1-4])\.{_PARAM}$"),
     lambda m: f"backbone.res{int(m[1]) + 1}.norm.{m[2]}"),
    (re.compile(rf"^head\.{_PARAM}$"), lambda m: ("drop", _IMAGENET_HEAD)),
    (re.compile(rf"^decode_head\.linear_c([1-4])\.proj\.{_PARAM}$"),
     lambda m: ("head", f"sem_seg_head.linear_c.{int(m[1]) - 1}.{m[2]}")),
    (re.compile(r"^decode_head\.linear_fuse\.conv\.weight$"),
     lambda m: ("head", "sem_seg_head.fuse.weight")),
    (re.compile(rf"^decode_head\.linear_fuse\.bn\.{_BN}$"),
     lambda m: ("head", f"sem_seg_head.fuse.norm.{m[1]}")),
    (re.compile(rf"^decode_head\.linear_pred\.{_PARAM}$"),
     lambda m: ("head", f"sem_seg_head.predictor.{m[1]}")),
    (re.compile(rf"^decode_head\.conv_seg\.{_PARAM}$"), lambda m: ("drop", _CONV_SEG)),
]
_HF_ENCODER = r"^(?:segformer\.)?encoder\."
_HF_RULES = [
    (re.compile(rf"{_HF_ENCODER}patch_embeddings\.([0-3])\.(proj|layer_norm)\.{_PARAM}$"),
     lambda m: f"backbone.res{int(m[1]) + 2}.patch_embed."
               f"{'proj' if m[2] == 'proj' else 'norm'}.{m[3]}"),
    (re.compile(rf"{_HF_ENCODER}block\.([0-3])\.(\d+)\.(.+)\.{_PARAM}$"),
     lambda m: _block_key(m[1], 0, m[2], _HF_BLOCK.get(m[3]), m[4])),
    (re.compile(rf"{_HF_ENCODER}layer_norm\.([0-3])\.{_PARAM}$"),
     lambda m: f"backbone.res{int(m[1]) + 2}.norm.{m[2]}"),
    (re.compile(rf"^classifier\.{_PARAM}$"), lambda m: ("drop", _IMAGENET_HEAD)),
    (re.compile(rf"^decode_head\.linear_c\.([0-3])\.proj\.{_PARAM}$"),
     lambda m: ("head", f"sem_seg_head.linear_c.{m[1]}.{m[2]}")),
    (re.compile(r"^decode_head\.linear_fuse\.weight$"),
     lambda m: ("head", "sem_seg_head.fuse.weight")),
    (re.compile(rf"^decode_head\.batch_norm\.{_BN}$"),
     lambda m: ("head", f"sem_seg_head.fuse.norm.{m[1]}")),
    (re.compile(rf"^decode_head\.classifier\.{_PARAM}$"),
     lambda m: ("head", f"sem_seg_head.predictor.{m[1]}")),
]


def _block_key(stage: str, first_index: int, block: str, part: Optional[str], param: str):
    """Our key of a block parameter; ``first_index`` is the source's number of the first stage
    (official block1..4: 1; transformers block.0..3: 0)."""
    if part is None:
        return None
    prefix = f"backbone.res{int(stage) - first_index + 2}.blocks.{block}."
    if part.startswith("kv:"):
        return ("kv", (prefix + f"attn.kv.{param}", int(part[3:])))
    return prefix + f"{part}.{param}"


def read_mit_checkpoint(path: str) -> "OrderedDict[str, torch.Tensor]":
    """A flat state_dict from ``.pth``/``.bin`` (``torch.load(weights_only=True)``, wrappers and
    ``module.`` prefixes removed) or ``.safetensors`` (needs the ``safetensors`` package)."""
    if not path.endswith(".safetensors"):
        return read_official_checkpoint(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} does not exist")
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ConversionError(
            f"{path} is a .safetensors file, which needs the optional `safetensors` package: "
            "pip install safetensors (or download the model's pytorch_model.bin instead)") from e
    try:
        return OrderedDict(load_file(path, device="cpu"))
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise ConversionError(f"{path} is damaged or not a safetensors file: {e}") from e


def detect_mit_layout(keys) -> str:
    """"official" or "huggingface" from the key names; ConversionError if neither."""
    keys = list(keys)
    if any(re.match(rf"{_HF_ENCODER}(patch_embeddings|block|layer_norm)\.", k) for k in keys):
        return MIT_LAYOUT_HF
    if any(re.match(r"^(backbone\.)?(patch_embed|block)[1-4]\.", k) for k in keys):
        return MIT_LAYOUT_OFFICIAL
    shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
    raise ConversionError(
        "not a MiT / SegFormer checkpoint: expected official keys (patch_embed1.proj.weight, "
        "block1.0.attn.q.weight, ...) or transformers keys (segformer.encoder.patch_embeddings.0."
        f"proj.weight, ...); the file's keys are: {shown}")


def mit_key_map(keys, layout: str) -> Dict[str, Tuple[str, object]]:
    """
    ``{source key: decision}`` for every recognised key: ``("backbone", our_key)``,
    ``("head", our_key)``, ``("kv", (our_kv_key, 0 for key / 1 for value))`` or
    ``("drop", reason)``. Unrecognised keys are left out.
    """
    rules = _HF_RULES if layout == MIT_LAYOUT_HF else _OFFICIAL_RULES
    result = {}
    for key in keys:
        for pattern, target in rules:
            m = pattern.match(key)
            if m is None:
                continue
            decision = target(m)
            if isinstance(decision, str):
                decision = ("backbone", decision)
            if decision is not None:
                result[key] = decision
            break
    return result


def infer_mit_variant(source: Dict[str, torch.Tensor], layout: str) -> str:
    """B0..B5 from the stage widths (patch-embedding convs) and the number of blocks per stage."""
    from sfnet_d2.modeling.backbone.mit import MIT_LAYOUTS

    widths, depths = [0] * 4, [0] * 4
    for key, (kind, target) in mit_key_map(source, layout).items():
        if kind == "kv":
            target = target[0]
        m = re.match(r"^backbone\.res([2-5])\.(patch_embed\.proj\.weight|blocks\.(\d+)\.)", target)
        if m is None:
            continue
        stage = int(m[1]) - 2
        if m[3] is None:
            widths[stage] = source[key].shape[0]
        else:
            depths[stage] = max(depths[stage], int(m[3]) + 1)
    for name, layout_ in MIT_LAYOUTS.items():
        if tuple(widths) == layout_.embed_dims and tuple(depths) == layout_.depths:
            return name
    known = "; ".join(f"{n}: widths {list(l.embed_dims)} depths {list(l.depths)}"
                      for n, l in MIT_LAYOUTS.items())
    raise ConversionError(
        f"the file's encoder has stage widths {widths} and blocks per stage {depths}, which is "
        f"no MiT variant ({known})")


def mit_target_shapes(variant: str, num_classes: Optional[int] = None,
                      embed_dim: Optional[int] = None) -> Dict[str, Tuple[int, ...]]:
    """State-dict shapes of our MiT ``backbone.*`` and, with ``num_classes``, of a
    ``SegFormerHead`` (``sem_seg_head.*``, embedding ``embed_dim``) on it. Built on the meta
    device."""
    from sfnet_d2.modeling.backbone.mit import MixVisionTransformer
    from sfnet_d2.modeling.heads.segformer_head import SegFormerHead

    with torch.device("meta"):
        backbone = MixVisionTransformer(variant)
        shapes = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
        if num_classes is not None:
            head = SegFormerHead(backbone.output_shape(), in_features=list(backbone.output_shape()),
                                 num_classes=num_classes, embed_dim=embed_dim, norm="BN")
            shapes.update({f"sem_seg_head.{k}": tuple(v.shape)
                           for k, v in head.state_dict().items()})
    return shapes


def convert_mit_state_dict(
    source: Dict[str, torch.Tensor],
    target_shapes: Dict[str, Tuple[int, ...]],
    layout: Optional[str] = None,
    backbone_only: bool = False,
) -> ConversionResult:
    """
    Map ``source`` (either layout; detected unless given) onto our keys, whose shapes are
    ``target_shapes``; every target key must be produced. ``backbone_only`` drops a decode head
    found in the file (its keys need not be in ``target_shapes``). Raises
    :class:`ConversionError` listing every problem.
    """
    layout = layout or detect_mit_layout(source)
    mapping = mit_key_map(source, layout)
    result = ConversionResult(OrderedDict())
    unexpected, mismatched, kv_parts = [], {}, {}

    def place(ours: str, tensor: torch.Tensor, what: str) -> bool:
        expected = target_shapes.get(ours)
        if expected is None:
            unexpected.append(f"{what} -> {ours} (no such key in our model)")
        elif tuple(tensor.shape) != tuple(expected):
            mismatched[ours] = (f"{what} -> {ours}: file {tuple(tensor.shape)}, "
                                f"ours {tuple(expected)}")
        else:
            result.state_dict[ours] = tensor.clone()
            return True
        return False

    for key, tensor in source.items():
        decision = mapping.get(key)
        if decision is None:
            unexpected.append(key)
            continue
        kind, value = decision
        if kind == "drop" or (kind == "head" and backbone_only):
            reason = value if kind == "drop" else _HEAD_SKIPPED
            result.dropped.append((key, reason, tensor.numel()))
        elif kind == "kv":
            ours, half = value
            kv_parts.setdefault(ours, [None, None])[half] = key
        elif place(value, tensor, key):
            result.mapped.append((key, value))
    for ours, (key_k, key_v) in kv_parts.items():
        if key_k is None or key_v is None:
            present = key_k or key_v
            lacking = "value" if key_v is None else "key"
            unexpected.append(f"{present} (its attention.self.{lacking} partner is missing)")
            continue
        what = f"{key_k} + {key_v}"
        # our kv rows are [keys; values]: the official layer's reshape(..., 2, heads, d) order
        if place(ours, torch.cat([source[key_k], source[key_v]], dim=0), what):
            result.mapped.append((what, ours))
    done = set(result.state_dict)
    missing = [k for k in target_shapes if k not in done and k not in mismatched
               and not (backbone_only and not k.startswith("backbone."))]
    if unexpected or missing or mismatched:
        lines = [f"The {layout} checkpoint does not match our model:"]
        for title, items in (("missing keys of our model", missing),
                             ("unexpected keys in the file", unexpected),
                             ("shape mismatches", list(mismatched.values()))):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {x}" for x in items]
        lines.append("Check --variant (B0..B5) and that the file is a MiT / SegFormer checkpoint; "
                     "nothing was written.")
        raise ConversionError("\n".join(lines))
    return result
