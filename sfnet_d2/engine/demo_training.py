"""
The main job on the built-in demo data, what ``projects/SFNet/run_demo.py`` runs: write the
synthetic Cityscapes-layout dataset if it is absent, train the config's model with ``Trainer``
(resuming from ``OUTPUT_DIR``'s checkpoints: a finished run only re-evaluates), evaluate on the
held-out split and save image | prediction | ground truth pictures.
"""
import logging
import os
import time
from typing import Dict, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from sfnet_d2.data.demo_data import (default_demo_root, demo_data_is_complete,
                                     generate_demo_cityscapes)

__all__ = ["run_demo_training", "format_demo_summary"]

logger = logging.getLogger("sfnet_d2")


def run_demo_training(config_file: str, opts: Sequence[str] = (), num_pictures: int = 4) -> Dict:
    """
    Returns ``{"results", "dataset", "miou", "metrics", "pictures", "minutes"}``: the evaluation
    results, the test dataset, its class-mean IoU, the other scalar metrics, the picture files and
    the wall time.
    """
    from detectron2.engine import default_argument_parser

    from sfnet_d2.engine.defaults import setup
    from sfnet_d2.engine.trainer import Trainer
    from sfnet_d2.visualization.demo import save_ground_truth_pictures

    start = time.time()
    root = default_demo_root()
    if not demo_data_is_complete(root):
        print(f"Generating the demo dataset in {root} ...")
        generate_demo_cityscapes(root)
    args = default_argument_parser().parse_args(
        ["--config-file", config_file, "--resume", *opts])
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    results = trainer.train()
    if not results:  # e.g. TEST.EVAL_PERIOD hooks disabled: evaluate explicitly
        results = Trainer.test(cfg, trainer.model)

    dataset = cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)[:num_pictures]
    pictures = save_ground_truth_pictures(trainer.model, records, MetadataCatalog.get(dataset),
                                          cfg.INPUT.FORMAT,
                                          os.path.join(cfg.OUTPUT_DIR, "pictures"))
    sem = results.get("sem_seg", results)
    # CityscapesSemSegEvaluator calls the class-mean IoU "IoU"; SemSegEvaluator "mIoU".
    miou = sem.get("mIoU", sem.get("IoU"))
    metrics = {k: float(v) for k, v in sem.items() if "-" not in k}
    return {"results": results, "dataset": dataset, "miou": miou, "metrics": metrics,
            "pictures": pictures, "minutes": (time.time() - start) / 60}


def format_demo_summary(summary: Dict, title: str = "SFNet-Lite R18 demo") -> str:
    """The lines printed at the end of the demo."""
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    lines = ["=" * 70,
             f"{title} finished in {summary['minutes']:.1f} min",
             f"mIoU on {summary['dataset']}: {summary['miou']:.2f}  ({metrics})"]
    if summary["pictures"]:
        folder = os.path.abspath(os.path.dirname(summary["pictures"][0]))
        lines.append(f"Side-by-side pictures (image | prediction | ground truth) in {folder}:")
        lines += [f"  {os.path.basename(p)}" for p in summary["pictures"]]
    lines.append("=" * 70)
    return "\n".join(lines)
