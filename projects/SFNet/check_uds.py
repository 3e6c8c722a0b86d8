#!/usr/bin/env python
"""
Check a UDS root (Cityscapes + Mapillary Vistas + IDD + BDD100K) against the paper's Table 2.

    python projects/SFNet/check_uds.py [--root DIR]

For each dataset and split it prints the number of images on disk, Table 2's number and a status:
ok, ok* (a documented difference: IDD val has 981 images, Table 2 says 3,000), MISMATCH,
MISSING (the images are not there) or LABELS (labels missing or not prepared); the message of a
MISSING or LABELS row names the folder, the expected layout and the command to run. ROOT defaults
to $DETECTRON2_DATASETS (or ./datasets). Exits with 1 if any row is not ok. See docs/DATASETS.md.
"""
import argparse
import sys

from sfnet_d2.data.datasets import check_uds, datasets_root
from sfnet_d2.data.datasets.uds import format_uds_report
from sfnet_d2.engine.command_line import run_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--root", default=datasets_root(),
                        help="folder holding cityscapes/, mapillary_vistas/, IDD_Segmentation/, "
                             "bdd100k/ (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = check_uds(args.root)
    print(format_uds_report(args.root, rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
