"""projects/SFNet/visualize_data.py (sfnet_d2/visualization/training_data.py): the pictures are the
training stream's crops with the labels of the same crops drawn on them, for both tasks."""
import os

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from helpers import ROOT, run_command
from PIL import Image
from scipy import ndimage

from sfnet_d2.data import ensure_demo_panoptic, register_coco_panoptic_by_paths
from sfnet_d2.engine import build_config
from sfnet_d2.visualization.training_data import (iter_training_pictures, panoptic_from_instances,
                                                  visualize_training_data)

SEMANTIC_CONFIG = os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml")
KNET_CONFIG = os.path.join(ROOT, "configs", "demo", "knet_sfnet_STDC1_demo_coco.yaml")
SMALL = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SEED", "3"]
# whole scenes at 192 x 384 (flipped or not): large enough for the class names to cover a
# small part of each picture
KNET_SIZE = ["INPUT.KNET.AUGMENTATION", "ms", "INPUT.MIN_SIZE_TRAIN", "(192,)",
             "INPUT.MAX_SIZE_TRAIN", "384"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(data_root, *args):
    """``projects/SFNet/visualize_data.py *args`` with $DETECTRON2_DATASETS = ``data_root`` (where
    the command finds the demo datasets: ``sfnet_demo_*``), which must succeed."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    proc = run_command("visualize_data", *args, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.fixture(scope="module")
def coco_panoptic(tmp_path_factory):
    """The demo COCO-panoptic data (4 train scenes of 96x192) registered as a test dataset, from
    the same files as the command's ``sfnet_demo_coco_panoptic_train``; returns (the
    $DETECTRON2_DATASETS root for the command, the test dataset's name)."""
    root = tmp_path_factory.mktemp("visualize_data")
    coco = root / "sfnet_demo_coco_panoptic"
    ensure_demo_panoptic(str(coco), str(root / "sfnet_demo_cityscapes"), num_train=4, num_val=1,
                         height=96, width=192)
    register_coco_panoptic_by_paths("test_visualize_data_coco_train", str(coco / "train2017"),
                                    str(coco / "panoptic_train2017"),
                                    str(coco / "annotations" / "panoptic_train2017.json"))
    return root, "test_visualize_data_coco_train"


def _interior(mask, pixels=2):
    """``mask`` without its outer ``pixels``: Visualizer draws outlines on region borders."""
    return ndimage.binary_erosion(mask, iterations=pixels)


def _shows(picture, image, color, tol=2.0):
    """Where ``picture`` is ``image`` blended half and half with ``color`` (the drawing's alpha)."""
    expected = 0.5 * image + 0.5 * np.asarray(color, np.float64)
    return np.abs(picture - expected).max(axis=-1) <= tol


def _run_and_replay(tmp_path, config, data_root, command_opts, opts, num):
    """The command's pictures (its demo datasets under ``data_root``, ``command_opts``), and the
    same stream replayed in this process (the test datasets of the same files, ``opts``): (path,
    picture, sample image as RGB float, sample) per picture. The replay must draw the same
    pictures (the stream is seeded by SEED), so its samples are the ones the command drew."""
    _run(data_root, "--config-file", config, "--output", tmp_path / "cmd", "--num-images", num,
         *command_opts)
    names = sorted(os.listdir(tmp_path / "cmd"))  # iter{iteration}_{index}_{image}: in order
    assert len(names) == num
    paths = [str(tmp_path / "cmd" / name) for name in names]
    cfg = build_config(config, opts)
    replay = list(iter_training_pictures(cfg, str(tmp_path / "replay"), num))
    assert [os.path.basename(p) for p, _ in replay] == names
    out = []
    for path, (replayed, sample) in zip(paths, replay):
        picture = np.asarray(Image.open(path))
        np.testing.assert_array_equal(picture, np.asarray(Image.open(replayed)))
        image = sample["image"].permute(1, 2, 0).numpy().astype(np.float64)  # INPUT.FORMAT RGB
        out.append((path, picture.astype(np.float64), image, sample))
    return cfg, out


@pytest.mark.slow
def test_semantic_crops_with_their_labels(demo_root, demo_datasets, tmp_path):
    train, _ = demo_datasets
    opts = ["DATASETS.TRAIN", f"('{train}',)", *SMALL]
    command_opts = ["DATASETS.TRAIN", "('sfnet_demo_cityscapes_fine_sem_seg_train',)", *SMALL]
    cfg, pictures = _run_and_replay(tmp_path, SEMANTIC_CONFIG, os.path.dirname(demo_root),
                                    command_opts, opts, 3)
    # two batches of two: iteration and index in the names
    assert [os.path.basename(p)[:12] for p, *_ in pictures] == [
        "iter000000_0", "iter000000_0", "iter000001_0"]
    colors = MetadataCatalog.get(train).stuff_colors
    own, other, unchanged = [], [], []
    for path, picture, image, sample in pictures:
        assert picture.shape == (*cfg.INPUT.SFNET.CROP_SIZE, 3)  # the crop, 192 x 192
        labels = sample["sem_seg"].numpy()
        assert labels.shape == picture.shape[:2]
        ignored = _interior(labels == 255)
        assert ignored.sum() > 100  # the padding of the scaled-down scenes
        unchanged.append((np.abs(picture - image).max(axis=-1) <= 1)[ignored].mean())
        for c in np.unique(labels[labels != 255]):
            region = _interior(labels == c)
            own.append(_shows(picture, image, colors[c])[region])
            shows_other = np.zeros_like(region)
            for d in range(len(colors)):
                if d != c and tuple(colors[d]) != tuple(colors[c]):
                    shows_other |= _shows(picture, image, colors[d])
            other.append(shows_other[region])
    own, other = np.concatenate(own), np.concatenate(other)
    # every labelled pixel not under a class name shows its own class's colour; none another's
    assert own.mean() > 0.6, own.mean()  # 0.76 measured
    assert other.mean() < 0.002, other.mean()
    # ignored pixels are not drawn (but for class names that run over their border)
    assert min(unchanged) > 0.95, unchanged


@pytest.mark.slow
def test_panoptic_crops_with_their_segments(coco_panoptic, tmp_path):
    data_root, name = coco_panoptic
    opts = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)", *SMALL, *KNET_SIZE]
    demo = "sfnet_demo_coco_panoptic_train"
    command_opts = ["DATASETS.TRAIN", f"('{demo}',)", "DATASETS.TEST", f"('{demo}',)", *SMALL,
                    *KNET_SIZE]
    _, pictures = _run_and_replay(tmp_path, KNET_CONFIG, data_root, command_opts, opts, 3)
    metadata = MetadataCatalog.get(name)
    stuff_colors = {tuple(c) for c in metadata.stuff_colors}
    own, other, drawn, unchanged = [], [], [], []
    for path, picture, image, sample in pictures:
        assert picture.shape[:2] == tuple(sample["image"].shape[-2:])  # the augmented image
        ids, segments = panoptic_from_instances(sample["instances"], metadata)
        assert len(segments) == len(sample["instances"]) > 0
        ids = ids.numpy()
        unchanged.append((np.abs(picture - image).max(axis=-1) <= 1)[_interior(ids == 0)])
        for seg in segments:
            region = _interior(ids == seg["id"])
            if seg["isthing"]:  # instance colours are jittered: drawn, in some colour
                drawn.append((np.abs(picture - image).max(axis=-1) > 2)[region])
                continue
            color = tuple(metadata.stuff_colors[seg["category_id"]])
            own.append(_shows(picture, image, color)[region])
            shows_other = np.zeros_like(region)
            for c in stuff_colors - {color}:
                shows_other |= _shows(picture, image, c)
            other.append(shows_other[region])
    own, other, drawn = np.concatenate(own), np.concatenate(other), np.concatenate(drawn)
    unchanged = np.concatenate(unchanged)
    assert own.size > 1000 and drawn.size > 100 and unchanged.size > 100
    # stuff segments show their class's colour (but under class names), never another's
    assert own.mean() > 0.7, own.mean()  # 0.83 measured
    assert other.mean() < 0.002, other.mean()
    assert drawn.mean() > 0.9, drawn.mean()
    # VOID pixels are not drawn; the demo's void regions are thin poles beside the stuff regions,
    # onto which class names run over (0.76 measured)
    assert unchanged.mean() > 0.7, unchanged.mean()


@pytest.mark.slow
def test_annotation_source_and_errors(demo_root, demo_datasets, tmp_path):
    train, _ = demo_datasets
    _run(os.path.dirname(demo_root), "--config-file", SEMANTIC_CONFIG, "--output", tmp_path / "a",
         "--num-images", "2", "--source", "annotation", "DATASETS.TRAIN",
         "('sfnet_demo_cityscapes_fine_sem_seg_train',)", *SMALL)
    names = sorted(os.listdir(tmp_path / "a"))
    assert [name[:7] for name in names] == ["000000_", "000001_"]
    for name in names:  # the image as it is on disk: 128 x 256
        assert np.asarray(Image.open(tmp_path / "a" / name)).shape == (128, 256, 3)
    # what visualize_data.py runs, on the test dataset of the same files
    cfg = build_config(SEMANTIC_CONFIG, ["DATASETS.TRAIN", f"('{train}',)", *SMALL])
    afile = tmp_path / "file.png"
    afile.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file.png"):
        visualize_training_data(cfg, str(afile))
    with pytest.raises(ValueError, match="--num-images 0"):
        visualize_training_data(cfg, str(tmp_path / "b"), 0)


def test_panoptic_targets_become_one_segment_map():
    from detectron2.structures import BitMasks, Instances

    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 2:, :3] = True
    masks[2, 2:, 3:] = True
    instances = Instances((4, 5), gt_classes=torch.tensor([7, 0, 7]), gt_masks=BitMasks(masks))

    class Meta(dict):
        get = dict.get

    ids, segments = panoptic_from_instances(instances, Meta(
        thing_dataset_id_to_contiguous_id={1: 0}))
    np.testing.assert_array_equal(ids.numpy(), [[1] * 5, [1] * 5, [2, 2, 2, 3, 3],
                                                [2, 2, 2, 3, 3]])
    assert segments == [{"id": 1, "category_id": 7, "isthing": False},
                        {"id": 2, "category_id": 0, "isthing": True},
                        {"id": 3, "category_id": 7, "isthing": False}]
