"""Helper script of test_robustness_distributed.py (not a test module): evaluates an "oracle"
panoptic model - the ground truth with every segment whose id is divisible by 3 removed, so that
PQ is neither 0 nor 100 - on the demo COCO-panoptic val split with detectron2's
COCOPanopticEvaluator, in N processes (gloo), and writes rank 0's results as JSON.

    python tests/dist_panoptic_oracle.py N OUT.json      (DETECTRON2_DATASETS = the demo root)
"""
import json
import sys
import tempfile

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.engine import launch
from detectron2.evaluation import COCOPanopticEvaluator, inference_on_dataset
from detectron2.utils import comm
from PIL import Image

import sfnet_d2  # noqa: F401  (registers sfnet_demo_coco_panoptic_*)

DATASET = "sfnet_demo_coco_panoptic_val"


class Oracle(torch.nn.Module):
    def forward(self, inputs):
        outputs = []
        for x in inputs:
            rgb = np.asarray(Image.open(x["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
            seg = np.zeros_like(ids)
            info = []
            for s in x["segments_info"]:
                if s["id"] % 3 == 0:
                    continue
                seg[ids == s["id"]] = s["id"]
                info.append({"id": int(s["id"]), "category_id": int(s["category_id"]),
                             "isthing": bool(s["isthing"])})
            outputs.append({"panoptic_seg": (torch.as_tensor(seg), info)})
        return outputs


def main(out_json):
    records = DatasetCatalog.get(DATASET)
    loader = build_detection_test_loader(records, mapper=lambda d: d)
    with tempfile.TemporaryDirectory() as tmp:
        results = inference_on_dataset(Oracle(), loader, COCOPanopticEvaluator(DATASET, tmp))
    if comm.is_main_process():
        with open(out_json, "w") as f:
            json.dump({k: dict(v) for k, v in results.items()}, f)


if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    launch(main, n, dist_url="auto", args=(out,))
