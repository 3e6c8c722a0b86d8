"""Cityscapes test-server submission: label-id PNGs equal the model's argmax, mapped exactly."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image

from helpers import ROOT, make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper
from sfnet_d2.evaluation import CityscapesSubmissionWriter, train_id_to_label_id_table

DEMO = "configs/demo/sfnet_lite_R18_demo.yaml"


def test_train_id_table_matches_cityscapes_definition():
    table = train_id_to_label_id_table()
    # the 19 evaluated classes, from the Cityscapes label definition (labels.py)
    expected = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert table[:19].tolist() == expected
    assert (table[19:] == 255).all()


def test_writer_files_equal_the_model_prediction(demo_datasets, tmp_path):
    _, val = demo_datasets
    torch.manual_seed(0)
    cfg = make_cfg(DEMO, ["DATASETS.TEST", (val,)])
    model = build_model(cfg).eval()
    out_dir = str(tmp_path / "submission")
    loader = build_detection_test_loader(cfg, val, mapper=SFNetSemanticDatasetMapper(cfg, False))
    result = inference_on_dataset(model, loader, CityscapesSubmissionWriter(val, out_dir))
    records = DatasetCatalog.get(val)
    assert result["submission"]["images_written"] == len(records)
    record = records[0]
    name = os.path.basename(record["file_name"]).replace("_leftImg8bit.png", "_labelIds.png")
    written = np.asarray(Image.open(os.path.join(out_dir, name)))
    with torch.no_grad():
        logits = model([SFNetSemanticDatasetMapper(cfg, False)(record)])[0]["sem_seg"]
    expected = train_id_to_label_id_table()[logits.argmax(0).numpy()]
    assert written.shape == (record["height"], record["width"])
    np.testing.assert_array_equal(written, expected)
    with pytest.raises(FileExistsError, match="already holds submission PNGs"):
        CityscapesSubmissionWriter(val, out_dir).reset()


@pytest.mark.slow
def test_train_net_writes_a_submission(demo_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "projects/SFNet/train_net.py"), "--eval-only",
         "--config-file", os.path.join(ROOT, DEMO), "OUTPUT_DIR", str(tmp_path),
         "TEST.SFNET.EVALUATOR", "submission", "MODEL.WEIGHTS", "random"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "submission" / "sfnet_demo_cityscapes_fine_sem_seg_val"
    files = sorted(os.listdir(folder))
    assert len(files) == 4 and all(f.endswith("_labelIds.png") for f in files)
