#!/usr/bin/env python
"""
SFNet / SFNet-Lite / K-Net training and evaluation with detectron2 (sfnet_d2.engine).

    python projects/SFNet/train_net.py --config-file configs/cityscapes/semantic/sfnet_R18.yaml
    python projects/SFNet/train_net.py --config-file ... --eval-only MODEL.WEIGHTS model.pth
    python projects/SFNet/train_net.py --config-file ... --resume          # continue a killed run
    python projects/SFNet/train_net.py --config-file ... --num-gpus 8      # DDP (CPU: N processes over gloo)

Every detectron2 flag works (--num-machines, --machine-rank, --dist-url, KEY VALUE overrides).
"""
import sys

from detectron2.engine import default_argument_parser

from sfnet_d2.engine import launch_train_or_evaluate
from sfnet_d2.engine.command_line import run_command


def main(argv=None):
    return launch_train_or_evaluate(default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command(main))
