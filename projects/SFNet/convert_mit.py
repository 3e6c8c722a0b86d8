#!/usr/bin/env python
"""
Convert released MiT / SegFormer weights into a detectron2 checkpoint for sfnet-d2.

    # ImageNet MiT for training (MODEL.WEIGHTS of configs/ade20k/semantic/segformer_B0.yaml etc.):
    python projects/SFNet/convert_mit.py mit_b0.pth mit_b0_d2.pth                 # NVlabs/SegFormer file
    python projects/SFNet/convert_mit.py nvidia-mit-b0/pytorch_model.bin mit_b0_d2.pth   # transformers
    python projects/SFNet/convert_mit.py nvidia-mit-b0/model.safetensors mit_b0_d2.pth   # needs safetensors
    # A complete SegFormer segmentation model (encoder + all-MLP decoder), e.g. to evaluate it:
    python projects/SFNet/convert_mit.py segformer.b0.512x512.ade.160k.pth segformer_b0_ade_d2.pth

The layout (official or transformers) and the variant (B0..B5) are read from the file; --variant
checks the latter. The file is read with torch.load(weights_only=True); a mismatch lists the
missing keys, unexpected keys and shape mismatches and writes nothing. DST is never overwritten
unless --overwrite is given.
"""
import argparse
import os
import sys
from collections import defaultdict

import torch

from sfnet_d2.converters.mit_converter import (
    ConversionError,
    convert_mit_state_dict,
    detect_mit_layout,
    infer_mit_variant,
    mit_key_map,
    mit_target_shapes,
    read_mit_checkpoint,
)
from sfnet_d2.engine.command_line import run_command
from sfnet_d2.modeling.backbone.mit import MIT_LAYOUTS, MixVisionTransformer
from sfnet_d2.modeling.heads.segformer_head import SegFormerHead

# Our configs per variant, for the message after converting.
_CONFIGS = {"B0": ("segformer_B0.yaml", "sfnet_lite_MiT_B0.yaml"),
            "B1": ("segformer_B1.yaml", "sfnet_lite_MiT_B1.yaml")}


def _head_size(source, layout):
    """(num_classes, embed_dim) of the file's decode head, or None when it has none."""
    for key, (kind, ours) in mit_key_map(source, layout).items():
        if kind == "head" and ours == "sem_seg_head.predictor.weight":
            return source[key].shape[0], source[key].shape[1]
    return None


def _check_loads(state, variant, head_size):
    """Our modules load the result with no missing or unexpected keys."""
    backbone = MixVisionTransformer(variant)
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items()
                              if k.startswith("backbone.")}, strict=True)
    if head_size is not None:
        head = SegFormerHead(backbone.output_shape(), in_features=list(backbone.output_shape()),
                             num_classes=head_size[0], embed_dim=head_size[1], norm="BN")
        head.load_state_dict({k[len("sem_seg_head."):]: v for k, v in state.items()
                              if k.startswith("sem_seg_head.")}, strict=True)


def convert(src, dst, variant=None, backbone_only=False, overwrite=False):
    if os.path.exists(dst) and not overwrite:
        raise ConversionError(f"{dst} exists; pass --overwrite to replace it")
    source = read_mit_checkpoint(src)
    layout = detect_mit_layout(source)
    found = infer_mit_variant(source, layout)
    if variant is not None and variant != found:
        raise ConversionError(f"--variant {variant} but {src} holds a MiT-{found} encoder "
                              f"(stage widths {list(MIT_LAYOUTS[found].embed_dims)}, blocks "
                              f"{list(MIT_LAYOUTS[found].depths)}); nothing was written")
    head_size = None if backbone_only else _head_size(source, layout)
    shapes = mit_target_shapes(found, *(head_size or (None, None)))
    result = convert_mit_state_dict(source, shapes, layout, backbone_only=backbone_only)
    _check_loads(result.state_dict, found, head_size)

    params = sum(v.numel() for k, v in result.state_dict.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    what = "encoder + SegFormer decoder" if head_size else "encoder"
    print(f"{src}: {layout} layout, MiT-{found} {what}")
    print(f"  mapped {len(result.mapped)} source tensors to {len(result.state_dict)} of ours "
          f"({params:,} parameters)")
    by_reason = defaultdict(lambda: [0, 0])
    for _, reason, numel in result.dropped:
        by_reason[reason][0] += 1
        by_reason[reason][1] += numel
    for reason, (count, numel) in by_reason.items():
        print(f"  dropped {count} tensors ({numel:,} values): {reason}")
    payload = {"model": result.state_dict, "matching_heuristics": False,
               "__author__": f"sfnet-d2 convert_mit ({layout} MiT-{found})"}
    tmp = dst + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(payload, tmp)
    os.replace(tmp, dst)  # atomic: a killed run never leaves a half-written DST
    print(f"  wrote {dst}")
    for config in _CONFIGS.get(found, ()):
        if head_size and not config.startswith("segformer"):
            continue
        mode = "--eval-only " if head_size else ""
        classes = (f" MODEL.SEM_SEG_HEAD.NUM_CLASSES {head_size[0]}"
                   if head_size and head_size[0] != 150 else "")
        print(f"  use: python projects/SFNet/train_net.py {mode}--config-file "
              f"configs/ade20k/semantic/{config} MODEL.WEIGHTS {dst}{classes}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", help="mit_b*.pth, a SegFormer .pth, or a transformers .bin or "
                                     ".safetensors file")
    parser.add_argument("dst", help="output detectron2 checkpoint (.pth)")
    parser.add_argument("--variant", choices=sorted(MIT_LAYOUTS),
                        help="expected MiT variant (checked against the file)")
    parser.add_argument("--backbone-only", action="store_true",
                        help="convert only the encoder of a segmentation checkpoint")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, args.variant, args.backbone_only, args.overwrite)
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert_mit: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
