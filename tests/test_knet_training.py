"""K-Net end to end on tiny synthetic panoptic data: training lowers the loss, PQ of a perfect
prediction is 100, the COCO -> Cityscapes pipeline (transfer, skip, resume), --eval-only, bad data."""
import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from helpers import ROOT, make_cfg
from sfnet_d2.data import KNetPanopticDatasetMapper, ensure_demo_panoptic
from sfnet_d2.data.datasets.panoptic import (register_cityscapes_panoptic,
                                             register_coco_panoptic_by_paths)
from sfnet_d2.evaluation import build_evaluator
from sfnet_d2.solver import build_optimizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny tensors

DEMO_COCO = "configs/demo/knet_sfnet_STDC1_demo_coco.yaml"
# a tiny model and tiny images: every test here runs in seconds on a CPU
TINY = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.KNET.NUM_PROPOSALS", "6",
        "MODEL.KNET.FEAT_CHANNELS", "32", "MODEL.KNET.FFN_CHANNELS", "64",
        "MODEL.KNET.NUM_STAGES", "2", "MODEL.KNET.STAGE_LOSS_WEIGHTS", "[1.0, 1.0]",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "INPUT.KNET.CROP_PRE_RESIZE", "[64]", "INPUT.KNET.CROP_SIZE_RANGE", "[48, 64]",
        "INPUT.KNET.SCALE_RANGE", "[0.75, 1.0]", "INPUT.KNET.CROP_SIZE", "[64, 128]",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """$DETECTRON2_DATASETS with both demo formats: 4 train + 2 val scenes of 64x128."""
    root = tmp_path_factory.mktemp("knet_datasets")
    ensure_demo_panoptic(str(root / "sfnet_demo_coco_panoptic"), str(root / "sfnet_demo_cityscapes"),
                         num_train=4, num_val=2, height=64, width=128)
    coco = root / "sfnet_demo_coco_panoptic"
    for split in ("train", "val"):
        register_coco_panoptic_by_paths(
            f"test_knet_coco_{split}", str(coco / f"{split}2017"), str(coco / f"panoptic_{split}2017"),
            str(coco / "annotations" / f"panoptic_{split}2017.json"))
        register_cityscapes_panoptic(f"test_knet_cs_{split}", str(root / "sfnet_demo_cityscapes"),
                                     split)
    return root


def _cfg(train="test_knet_coco_train", test="test_knet_coco_val", extra=()):
    return make_cfg(DEMO_COCO, TINY + ["DATASETS.TRAIN", (train,), "DATASETS.TEST", (test,),
                                       "MODEL.STDC.NORM", "BN", *extra])


@pytest.mark.slow
def test_a_few_iterations_lower_the_loss(data_root):
    torch.manual_seed(0)
    cfg = _cfg(extra=["INPUT.KNET.AUGMENTATION", "none", "INPUT.KNET.FLIP_PROB", "0.0"])
    model = build_model(cfg).train()
    mapper = KNetPanopticDatasetMapper(cfg, True)
    batch = [mapper(r) for r in DatasetCatalog.get("test_knet_coco_train")[:2]]
    assert all(len(b["instances"]) > 0 for b in batch)
    optimizer = build_optimizer(cfg, model)
    losses = []
    for _ in range(12):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def _perfect_outputs(record, meta):
    """detectron2 panoptic outputs equal to the ground truth of ``record``."""
    rgb = np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    pan = torch.zeros(ids.shape, dtype=torch.int32)
    things = set(meta.thing_dataset_id_to_contiguous_id.values())
    info, sem = [], torch.zeros((len(meta.stuff_classes),) + ids.shape)
    for i, seg in enumerate(record["segments_info"], start=1):
        mask = torch.from_numpy(ids == seg["id"])
        pan[mask] = i
        sem[seg["category_id"]][mask] = 1.0
        info.append({"id": i, "category_id": seg["category_id"],
                     "isthing": seg["category_id"] in things})
    return {"panoptic_seg": (pan, info), "sem_seg": sem}


@pytest.mark.parametrize("dataset", ["test_knet_coco_val", "test_knet_cs_val"])
def test_perfect_prediction_scores_pq_100(data_root, tmp_path, dataset):
    cfg = _cfg(test=dataset, extra=["MODEL.KNET.TEST.SEMANTIC_ON", "True",
                                    "OUTPUT_DIR", str(tmp_path)])
    evaluator = build_evaluator(cfg, dataset)
    evaluator.reset()
    meta = MetadataCatalog.get(dataset)
    for record in DatasetCatalog.get(dataset):
        evaluator.process([record], [_perfect_outputs(record, meta)])
    results = evaluator.evaluate()
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ_th"] == pytest.approx(100.0)
    if dataset == "test_knet_cs_val":  # Cityscapes records carry labelTrainIds: mIoU too
        assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    else:
        assert "sem_seg" not in results


def test_bad_panoptic_data_names_the_image(data_root, tmp_path):
    coco = data_root / "sfnet_demo_coco_panoptic"
    with open(coco / "annotations" / "panoptic_train2017.json") as f:
        data = json.load(f)
    first = data["annotations"][0]
    image = str(coco / "train2017" / data["images"][0]["file_name"])
    # a segment id in the PNG that the JSON does not list
    dropped = json.loads(json.dumps(data))
    dropped["annotations"][0]["segments_info"] = first["segments_info"][1:]
    path = tmp_path / "dropped.json"
    path.write_text(json.dumps(dropped))
    register_coco_panoptic_by_paths("test_knet_bad_png", str(coco / "train2017"),
                                    str(coco / "panoptic_train2017"), str(path))
    mapper = KNetPanopticDatasetMapper(_cfg(train="test_knet_bad_png"), True)
    with pytest.raises(ValueError, match=re.escape(image) + ".*segment id.*" +
                       str(first["segments_info"][0]["id"])):
        mapper(DatasetCatalog.get("test_knet_bad_png")[0])
    # a segment whose category the JSON does not define
    unknown = json.loads(json.dumps(data))
    unknown["annotations"][0]["segments_info"][0]["category_id"] = 4242
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(unknown))
    register_coco_panoptic_by_paths("test_knet_bad_cat", str(coco / "train2017"),
                                    str(coco / "panoptic_train2017"), str(path))
    with pytest.raises(ValueError, match=re.escape(image) + ".*category_id 4242"):
        DatasetCatalog.get("test_knet_bad_cat")


def _pipeline(data_root, out, *extra):
    """The pipeline of ``train_panoptic_pipeline.py --demo`` (sfnet_d2/engine/pipeline.py), its
    parent process in this one (the stages run as their own processes, as always); returns what it
    logged (OUTPUT_DIR/pipeline_log.txt of stage 2, appended per run) and each stage's train_net
    log."""
    from detectron2.utils.logger import setup_logger

    from sfnet_d2.engine.pipeline import run_panoptic_pipeline

    coco = data_root / "sfnet_demo_coco_panoptic"
    # stage 1 trains on a by-paths registration of the COCO-format data (a user's dataset)
    registration = ("user_coco_train", str(coco / "train2017"), str(coco / "panoptic_train2017"),
                    str(coco / "annotations" / "panoptic_train2017.json"))
    setup_logger(name="sfnet_d2.pipeline")  # as the command sets it up: INFO lines are logged
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(data_root))
        mp.setenv("OMP_NUM_THREADS", "1")
        results = run_panoptic_pipeline(
            os.path.join(ROOT, DEMO_COCO),
            os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_cityscapes.yaml"),
            opts=[*TINY, *extra], registrations=[registration],
            stage1_opts=["OUTPUT_DIR", str(out / "s1"), "SOLVER.MAX_ITER", "3",
                         "DATASETS.TRAIN", "('user_coco_train',)"],
            stage2_opts=["OUTPUT_DIR", str(out / "s2"), "SOLVER.MAX_ITER", "3",
                         "SOLVER.CHECKPOINT_PERIOD", "1"])
    logs = {name: (out / name / "log.txt").read_text() for name in ("s1", "s2")}
    return results, (out / "s2" / "pipeline_log.txt").read_text(), logs


@pytest.fixture(scope="module")
def pipeline_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    return (out,) + _pipeline(data_root, out)


@pytest.mark.slow
def test_pipeline_runs_both_stages_and_transfers_by_class_name(pipeline_run):
    out, (results1, results2), log, _ = pipeline_run
    assert "Copied the rows of 3 classes: person <- person, car <- car, road <- road" in log
    assert "Re-initialised the rows of 16 classes" in log
    init = torch.load(out / "s2" / "init_from_stage1.pth", weights_only=True)
    assert init["transfer"]["copied_classes"] == [["person", "person"], ["car", "car"],
                                                  ["road", "road"]]
    final1 = torch.load(out / "s1" / "model_final.pth", weights_only=True)["model"]
    for name in ("backbone.stem.conv1.weight", "kernel_head.init_kernels.weight",
                 "stages.1.kernel_update.fc_layer.weight"):
        assert torch.equal(init["model"][name], final1[name]), name
    row = 0  # person: internal row 0 in both class sets
    assert torch.equal(init["model"]["stages.1.fc_cls.weight"][row],
                       final1["stages.1.fc_cls.weight"][row])
    for stage, results in (("s1", results1), ("s2", results2)):
        done = json.loads((out / stage / "pipeline_stage_done.json").read_text())
        assert done["results"]["panoptic_seg"] == pytest.approx(results["panoptic_seg"])
        assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
    assert 0.0 <= results2["sem_seg"]["mIoU"] <= 100.0
    assert re.search(r"Stage 1 \(sfnet_demo_coco_panoptic_val\): PQ [\d.]+", log)
    assert re.search(r"Stage 2 \(sfnet_demo_cityscapes_fine_panoptic_val\): PQ [\d.]+.*mIoU", log)


@pytest.mark.slow
def test_pipeline_skips_finished_and_resumes_unfinished_stages(pipeline_run, data_root):
    out = pipeline_run[0]
    (out / "s2" / "pipeline_stage_done.json").unlink()
    (out / "s2" / "last_checkpoint").write_text("model_0000000.pth")  # as if killed after iter 0
    _, log, logs = _pipeline(data_root, out)
    assert "Stage 1 finished earlier" in log and "resuming from its last checkpoint" in log
    assert log.count("Initialising from") == 1  # stage 2 keeps its own checkpoints
    assert logs["s1"].count("Starting training from iteration 0") == 1  # not run again
    assert "Starting training from iteration 1" in logs["s2"]
    assert (out / "s2" / "pipeline_stage_done.json").is_file()


@pytest.mark.slow
def test_eval_only_reproduces_the_stage_result(pipeline_run, data_root, tmp_path):
    from detectron2.engine import default_argument_parser

    from sfnet_d2.engine import train_or_evaluate

    out = pipeline_run[0]
    done = json.loads((out / "s2" / "pipeline_stage_done.json").read_text())
    register_cityscapes_panoptic("sfnet_demo_cityscapes_fine_panoptic_val",
                                 str(data_root / "sfnet_demo_cityscapes"), "val")
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(ROOT, "configs/demo/knet_sfnet_STDC1_demo_cityscapes.yaml"),
         "--eval-only", "MODEL.WEIGHTS", str(out / "s2" / "model_final.pth"),
         "OUTPUT_DIR", str(tmp_path), *TINY])
    results = train_or_evaluate(args)
    assert results["panoptic_seg"]["PQ"] == pytest.approx(done["results"]["panoptic_seg"]["PQ"])
    assert results["sem_seg"]["mIoU"] == pytest.approx(done["results"]["sem_seg"]["mIoU"])
