"""One model evaluated on several datasets in one ``train_net.py --eval-only`` run (Table 17: trained
on Cityscapes, tested on Cityscapes, BDD and IDD): detectron2's ``Trainer.test`` builds one
evaluator per name of ``DATASETS.TEST``; each dataset gets its own result block, logged with its
name, with the evaluator its metadata asks for, under the configured test-time protocol.

The demo val split is registered under extra test-only names: once for the Cityscapes evaluator,
twice identically for ``SemSegEvaluator``, and once with one label file altered. The numbers are
checked against an independent computation from the saved predictions and the label files."""
import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from helpers import ROOT
from sfnet_d2.data.datasets import register_cityscapes_semantic
from sfnet_d2.data.datasets.common import cityscapes19_metadata, register_sem_seg

# every test reads the results of one --eval-only run of the whole command path (eval_run)
pytestmark = pytest.mark.slow

DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")
NAMES = ("xds_cityscapes", "xds_plain", "xds_plain_copy", "xds_altered")


@pytest.fixture(scope="module")
def cross_datasets(demo_root, tmp_path_factory):
    val_images = os.path.join(demo_root, "leftImg8bit", "val")
    val_labels = os.path.join(demo_root, "gtFine", "val")
    register_cityscapes_semantic(NAMES[0], val_images, val_labels)
    records = DatasetCatalog.get(NAMES[0])
    for name in NAMES[1:3]:
        register_sem_seg(name, lambda: [dict(r) for r in records], cityscapes19_metadata("sem_seg"))
    # the altered copy: the top half of the first image's labels becomes "ignore"
    altered_dir = tmp_path_factory.mktemp("altered_labels")
    label = np.array(Image.open(records[0]["sem_seg_file_name"]))
    label[: label.shape[0] // 2] = 255
    altered_file = str(altered_dir / os.path.basename(records[0]["sem_seg_file_name"]))
    Image.fromarray(label).save(altered_file)
    altered = [dict(r) for r in records]
    altered[0]["sem_seg_file_name"] = altered_file
    register_sem_seg(NAMES[3], lambda: [dict(r) for r in altered], cityscapes19_metadata("sem_seg"))
    return {name: DatasetCatalog.get(name) for name in NAMES}


@pytest.fixture(scope="module")
def eval_run(cross_datasets, tmp_path_factory):
    from sfnet_d2.engine import build_config, train_or_evaluate

    out = tmp_path_factory.mktemp("cross_eval")
    cfg = build_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(3)
    model = build_model(cfg)
    with torch.no_grad():  # a random model that predicts classes the demo scenes contain
        model.sem_seg_head.predictor.weight.normal_(0.0, 1.0)  # so the prediction varies
        model.sem_seg_head.predictor.bias.fill_(-1e4)
        model.sem_seg_head.predictor.bias[[0, 2, 8, 10, 13]] = 0.0  # road building veg. sky car
    weights = str(out / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)
    args = default_argument_parser().parse_args([
        "--config-file", DEMO_CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out),
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", repr(NAMES),
        "TEST.SFNET.FLIP", "True"])  # a test-time protocol (multi-pass wrapper) around the model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small images: one thread is faster on the shared machine
    try:
        results = train_or_evaluate(args)
    finally:
        torch.set_num_threads(threads)
    with open(out / "log.txt") as f:
        log = f.read()
    return out, results, log


def _predictions(path):
    """file_name -> (H, W) class map, decoded from SemSegEvaluator's sem_seg_predictions.json."""
    with open(path) as f:
        entries = json.load(f)
    maps = {}
    for e in entries:
        mask = mask_util.decode(e["segmentation"]).astype(bool)
        pred = maps.setdefault(e["file_name"], np.full(mask.shape, -1, dtype=np.int64))
        pred[mask] = e["category_id"]
    assert all((p >= 0).all() for p in maps.values())
    return maps


def _confusion(predictions, records, num_classes=19, ignore=255):
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: prediction, cols: truth
    for r in records:
        gt = np.array(Image.open(r["sem_seg_file_name"])).astype(np.int64)
        pred = predictions[r["file_name"]]
        valid = gt != ignore
        conf += np.bincount(pred[valid] * num_classes + gt[valid],
                            minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return conf


def _d2_miou(conf):
    """detectron2 0.6 SemSegEvaluator's mIoU: IoU of classes present in the ground truth, divided
    by the number of classes present in the ground truth or the prediction."""
    tp = np.diag(conf).astype(np.float64)
    pos_pred, pos_gt = conf.sum(1), conf.sum(0)
    present = pos_gt > 0
    iou = tp[present] / (pos_gt + pos_pred - tp)[present]
    return 100 * iou.sum() / ((pos_gt + pos_pred) > 0).sum()


def _cityscapes_iou(conf):
    """cityscapesscripts' class IoU: tp / (tp + fp + fn) over pixels with a valid label, averaged
    over the classes where it is defined."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(1) + conf.sum(0) - tp
    return 100 * np.mean(tp[denom > 0] / denom[denom > 0])


def test_one_result_block_per_dataset_in_order_and_logged_by_name(eval_run):
    _, results, log = eval_run
    assert isinstance(results, OrderedDict) and tuple(results) == NAMES
    assert {"IoU", "iIoU", "IoU_sup", "iIoU_sup"} <= set(results["xds_cityscapes"]["sem_seg"])
    for name in NAMES[1:]:
        assert {"mIoU", "fwIoU", "mACC", "pACC"} <= set(results[name]["sem_seg"])
    positions = [log.find(f"Evaluation results for {name} in csv format") for name in NAMES]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)


def _same(a, b):
    return a.keys() == b.keys() and all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


def test_identical_copies_agree_and_the_altered_copy_differs(eval_run):
    _, results, _ = eval_run
    plain = results["xds_plain"]["sem_seg"]
    assert plain["mIoU"] > 0 and _same(plain, results["xds_plain_copy"]["sem_seg"])
    assert results["xds_altered"]["sem_seg"]["mIoU"] != pytest.approx(plain["mIoU"], abs=1e-3)
    assert results["xds_altered"]["sem_seg"]["pACC"] != pytest.approx(plain["pACC"], abs=1e-3)


def test_numbers_equal_an_independent_computation(eval_run, cross_datasets):
    out, results, _ = eval_run
    preds = {name: _predictions(out / "inference" / name / "sem_seg_predictions.json")
             for name in NAMES[1:]}
    # the model and protocol are the same for every dataset: the same predictions each time
    for name in NAMES[2:]:
        assert preds[name].keys() == preds["xds_plain"].keys()
        assert all(np.array_equal(preds[name][k], v) for k, v in preds["xds_plain"].items())
    for name in NAMES[1:]:
        conf = _confusion(preds[name], cross_datasets[name])
        assert results[name]["sem_seg"]["mIoU"] == pytest.approx(_d2_miou(conf), abs=1e-6)
        assert results[name]["sem_seg"]["pACC"] == pytest.approx(
            100 * np.trace(conf) / conf.sum(), abs=1e-6)
    # the Cityscapes evaluator (cityscapesscripts on the label-id PNGs) on the same predictions
    conf = _confusion(preds["xds_plain"], cross_datasets["xds_cityscapes"])
    assert results["xds_cityscapes"]["sem_seg"]["IoU"] == pytest.approx(_cityscapes_iou(conf), abs=1e-4)



