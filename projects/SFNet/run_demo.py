#!/usr/bin/env python
"""
The main job on the built-in demo data: generate the synthetic Cityscapes-layout dataset if it is
absent, train SFNet-Lite R18 on CPU with detectron2's DefaultTrainer (ETA logging, checkpoints),
evaluate on the held-out split, and save side-by-side pictures (image | prediction | ground truth).

    python projects/SFNet/run_demo.py [--config-file CFG] [--num-pictures N] [KEY VALUE ...]

Running it again resumes from the checkpoints in OUTPUT_DIR (a finished run only re-evaluates);
delete OUTPUT_DIR (output/demo/...) to train again from scratch.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import default_argument_parser
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_data import default_root  # noqa: E402
from train_net import Trainer, setup  # noqa: E402

from sfnet_d2.data import demo_data_is_complete, generate_demo_cityscapes  # noqa: E402
from sfnet_d2.visualization.overlays import draw_semantic_side_by_side  # noqa: E402

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "demo",
    "sfnet_lite_R18_demo.yaml",
)


def save_pictures(cfg, model, dataset_name, out_dir, num):
    os.makedirs(out_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num]
    model.eval()
    paths = []
    for rec in tqdm(records, desc="pictures", unit="img"):
        image = utils.read_image(rec["file_name"], format=cfg.INPUT.FORMAT)
        with torch.no_grad():
            out = model([{"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                          "height": image.shape[0], "width": image.shape[1]}])[0]
        pred = out["sem_seg"].argmax(dim=0).numpy()
        gt = np.asarray(Image.open(rec["sem_seg_file_name"]))
        picture = draw_semantic_side_by_side(image, pred, meta, gt)
        path = os.path.join(out_dir, os.path.basename(rec["file_name"]).replace(
            "_leftImg8bit.png", "_image_prediction_groundtruth.png"))
        Image.fromarray(picture).save(path)
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=os.path.normpath(DEFAULT_CONFIG))
    parser.add_argument("--num-pictures", type=int, default=4)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    start = time.time()

    root = default_root()
    if not demo_data_is_complete(root):
        print(f"Generating the demo dataset in {root} ...")
        generate_demo_cityscapes(root)

    d2_args = default_argument_parser().parse_args(
        ["--config-file", args.config_file, "--resume"] + args.opts
    )
    cfg = setup(d2_args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    results = trainer.train()
    if not results:  # e.g. TEST.EVAL_PERIOD hooks disabled: evaluate explicitly
        results = Trainer.test(cfg, trainer.model)

    dataset = cfg.DATASETS.TEST[0]
    pictures = save_pictures(cfg, trainer.model, dataset, os.path.join(cfg.OUTPUT_DIR, "pictures"),
                             args.num_pictures)
    sem = results.get("sem_seg", results)
    # CityscapesSemSegEvaluator calls the class-mean IoU "IoU"; SemSegEvaluator "mIoU".
    miou = sem.get("mIoU", sem.get("IoU"))
    metrics = ", ".join(f"{k} {float(v):.2f}" for k, v in sem.items() if "-" not in k)
    print("=" * 70)
    print(f"SFNet-Lite R18 demo finished in {(time.time() - start) / 60:.1f} min")
    print(f"mIoU on {dataset}: {miou:.2f}  ({metrics})")
    print(f"Side-by-side pictures (image | prediction | ground truth) in "
          f"{os.path.abspath(os.path.dirname(pictures[0]))}:")
    for p in pictures:
        print(f"  {os.path.basename(p)}")
    print("=" * 70)


if __name__ == "__main__":
    main()
