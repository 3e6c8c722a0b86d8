#!/usr/bin/env python
"""
Convert an official SFSegNets checkpoint into a detectron2 checkpoint for sfnet-d2.

    python projects/SFNet/convert_official.py --arch DeepR18_SF_deeply SRC.pth DST.pth
    python projects/SFNet/convert_official.py --arch network.sfnet_stdcnet.AlignedSTDC2 SRC.pth DST.pth
    python projects/SFNet/convert_official.py --arch DeepR18_SF_deeply --backbone-only \
        resnet18-deep-inplane128.pth R18_imagenet.pth        # ImageNet weights for MODEL.WEIGHTS

Then: python projects/SFNet/train_net.py --eval-only --config-file <the arch's config> MODEL.WEIGHTS DST.pth
The file is read with torch.load(weights_only=True); a mismatch (wrong --arch, damaged file) lists
the missing keys, unexpected keys and shape mismatches and writes nothing. DST is never overwritten
unless --overwrite is given.
"""
import argparse
import os
import sys
from collections import defaultdict

import torch
from detectron2.modeling import build_model

from sfnet_d2.converters import (
    ConversionError,
    convert_official_state_dict,
    read_official_checkpoint,
    resolve_arch,
)
from sfnet_d2.engine import build_config
from sfnet_d2.engine.command_line import run_command

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def _num_classes(official):
    for key in ("head.conv_last.1.weight", "conv_last.1.weight"):
        if key in official:
            return official[key].shape[0]
    return None


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def convert(arch_name, src, dst, backbone_only=False, deep_supervision=False, overwrite=False,
            opts=()):
    arch = resolve_arch(arch_name)
    if os.path.exists(dst) and not overwrite:
        raise ConversionError(f"{dst} exists; pass --overwrite to replace it")
    official = read_official_checkpoint(src)
    opts = list(opts) + ["MODEL.SFNET.DEEP_SUPERVISION", deep_supervision, "MODEL.DEVICE", "cpu"]
    num_classes = _num_classes(official)
    if num_classes is not None and not backbone_only:
        opts += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes]
    cfg = build_config(os.path.join(REPO, arch.config), opts)
    model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    result = convert_official_state_dict(official, arch, shapes, deep_supervision, backbone_only)

    mapped_params = sum(official[o].numel() for o, _ in result.mapped if not _is_buffer(o))
    print(f"{arch.factory} -> {arch.config}" + (" (backbone only)" if backbone_only else ""))
    print(f"  mapped {len(result.mapped)} tensors ({mapped_params:,} parameters)")
    if result.aliases:
        print(f"  skipped {len(result.aliases)} alias entries (verified equal to their originals)")
    by_reason = defaultdict(lambda: [0, 0, []])  # reason -> [tensors, parameters, modules]
    for key, reason, numel in result.dropped:
        g = by_reason[reason]
        g[0] += 1
        g[1] += 0 if _is_buffer(key) else numel
        module = key.rsplit(".", 1)[0]
        if module not in g[2]:
            g[2].append(module)
    if result.dropped:
        total = sum(g[1] for g in by_reason.values())
        print(f"  dropped {len(result.dropped)} tensors ({total:,} parameters):")
    for reason, (count, numel, modules) in by_reason.items():
        shown = ", ".join(modules[:4]) + (f", ... ({len(modules)} modules)" if len(modules) > 4 else "")
        print(f"    {shown}: {count} tensors, {numel:,} parameters - {reason}")

    # Check that detectron2 loads it with no missing or unexpected keys before writing.
    incompatible = model.load_state_dict(result.state_dict, strict=False)
    if not backbone_only and (incompatible.missing_keys or incompatible.unexpected_keys):
        raise ConversionError(f"internal error: {incompatible}")
    payload = {"model": result.state_dict, "__author__": f"sfnet-d2 convert_official {arch.factory}",
               "matching_heuristics": False}
    tmp = dst + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(payload, tmp)
    os.replace(tmp, dst)  # atomic: a killed run never leaves a half-written DST
    print(f"  wrote {dst}")
    if not backbone_only:
        print(f"  evaluate: python projects/SFNet/train_net.py --eval-only --config-file "
              f"{arch.config} MODEL.WEIGHTS {dst}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--arch", required=True, help="official factory, e.g. DeepR18_SF_deeply")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--backbone-only", action="store_true",
                        help="convert an ImageNet-pretrained backbone file for MODEL.WEIGHTS")
    parser.add_argument("--deep-supervision", action="store_true",
                        help="keep the official deep-supervision heads (build them in our model)")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        convert(args.arch, args.src, args.dst, args.backbone_only, args.deep_supervision,
                args.overwrite)
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert_official: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
