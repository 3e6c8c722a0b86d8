#!/usr/bin/env python
"""
Write ADE20k's annotations_detectron2 (once, before training), as detectron2's
datasets/prepare_ade20k_sem_seg.py does (that script is not in the detectron2 pip package).

    python projects/SFNet/prepare_ade20k.py [--root DIR] [--splits train val] [--overwrite] [--num-workers N]

Reads ROOT/annotations/{training,validation}/*.png (0 = other, 1..150) and writes
ROOT/annotations_detectron2/{training,validation}/*.png (classes 0..149, other -> 255), read by
detectron2's ade20k_sem_seg_{train,val}. ROOT defaults to $DETECTRON2_DATASETS/ADEChallengeData2016.
Existing outputs are kept unless --overwrite. See docs/DATASETS.md.
"""
from sfnet_d2.data.prepare import prepare_main

if __name__ == "__main__":
    prepare_main("ade20k", __doc__)
