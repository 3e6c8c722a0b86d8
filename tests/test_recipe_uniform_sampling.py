"""Class-uniform sampling (docs/TRAINING.md): centroids, their disk cache, the sampler's class
frequencies, sharding and determinism, coarse boosting, and the detectron2 train loader."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from scipy import ndimage

from helpers import make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper, build_sfnet_train_loader
from sfnet_d2.data import uniform_sampling as us
from sfnet_d2.data.uniform_sampling import (
    ClassUniformDataset,
    ClassUniformTrainingSampler,
    label_centroids,
    load_or_build_centroids,
)


# ---- centroids ---------------------------------------------------------------------------------

def test_label_centroids_match_scipy_center_of_mass_per_full_tile():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, size=(70, 100)).astype(np.uint8)
    label[label == 5] = 255  # ignore: never a class
    got = label_centroids(label, num_classes=5, tile=32)
    expected = {}
    for y0 in (0, 32):  # 70 // 32 = 2 full tile rows, 100 // 32 = 3 full tile columns
        for x0 in (0, 32, 64):
            patch = label[y0:y0 + 32, x0:x0 + 32]
            for c in range(5):
                if (patch == c).any():
                    cy, cx = ndimage.center_of_mass(patch == c)
                    expected.setdefault(c, []).append((int(cx) + x0, int(cy) + y0))
    assert got == expected and sum(map(len, got.values())) == 6 * 5
    # hand-computed: one block in ignore; its tile's centroid = mean column 8..19, mean row 40..59
    block = np.full((64, 80), 255, np.uint8)
    block[40:60, 8:20] = 2
    assert label_centroids(block, 5, tile=32) == {2: [(13, 49)]}
    assert label_centroids(label, 5, tile=128) == {}  # smaller than a tile: none (official)


def _write_labels(folder, labels):
    os.makedirs(folder, exist_ok=True)
    files = []
    for i, lab in enumerate(labels):
        path = os.path.join(str(folder), f"l{i}.png")
        Image.fromarray(lab).save(path)
        files.append(path)
    return files


def _count_builds(monkeypatch):
    calls = []
    real = us.compute_dataset_centroids

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(us, "compute_dataset_centroids", counting)
    return calls


def test_cache_is_written_once_reused_and_rebuilt_when_the_dataset_changes(
        tmp_path, monkeypatch, caplog):
    labels = [np.full((32, 32), i % 3, np.uint8) for i in range(4)]
    files = _write_labels(tmp_path / "labels", labels)
    cache_dir = str(tmp_path / "cache")
    calls = _count_builds(monkeypatch)
    caplog.set_level(logging.INFO, logger="sfnet_d2")

    first = load_or_build_centroids("toy", files, 3, 16, cache_dir)
    (cache_file,) = os.listdir(cache_dir)
    assert len(calls) == 1 and cache_file == "toy_tile16_classes3.json"
    assert sorted(first) == [0, 1, 2] and first[1].tolist() == [[1, 7, 7], [1, 23, 7],
                                                               [1, 7, 23], [1, 23, 23]]
    with open(os.path.join(cache_dir, cache_file)) as f:
        cached = json.load(f)
    assert [row[0] for row in cached["files"]] == files and cached["tile_size"] == 16

    again = load_or_build_centroids("toy", files, 3, 16, cache_dir)
    assert len(calls) == 1 and all((again[c] == first[c]).all() for c in first)

    # a label file changes (content and mtime): stale, rebuilt with a warning naming the file
    Image.fromarray(np.full((32, 32), 2, np.uint8)).save(files[1])
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    caplog.clear()
    rebuilt = load_or_build_centroids("toy", files, 3, 16, cache_dir)
    assert len(calls) == 2 and 1 not in {int(i) for i in rebuilt[1][:, 0]}
    assert any("does not match" in r.message and files[1] in r.message for r in caplog.records)

    # more images: stale; other tile size: a separate cache file
    files += _write_labels(tmp_path / "more", [np.zeros((32, 32), np.uint8)])
    load_or_build_centroids("toy", files, 3, 16, cache_dir)
    load_or_build_centroids("toy", files, 3, 16, cache_dir)
    load_or_build_centroids("toy", files, 3, 32, cache_dir)
    assert len(calls) == 4 and len(os.listdir(cache_dir)) == 2

    # a damaged cache is rebuilt, not trusted
    with open(os.path.join(cache_dir, cache_file), "w") as f:
        f.write("{not json")
    load_or_build_centroids("toy", files, 3, 16, cache_dir)
    assert len(calls) == 5


# ---- sampler -----------------------------------------------------------------------------------

def _skewed_dataset(num_images=50, num_classes=4):
    """Classes 0-2 have a centroid in every image; class 3 (rare) only in image 17."""
    rows = [(i, 5, 5, c) for i in range(num_images) for c in range(num_classes - 1)]
    rows.append((17, 9, 9, num_classes - 1))
    records = [{"file_name": f"img{i}.png"} for i in range(num_images)]
    return ClassUniformDataset(records, np.array(rows))


@pytest.mark.parametrize("mode", ["epoch", "random"])
def test_rare_class_gets_pct_over_num_classes_of_the_samples(mode):
    num_classes, pct = 4, 0.5
    ds = _skewed_dataset(num_classes=num_classes)
    sampler = ClassUniformTrainingSampler(50, ds.class_indices(num_classes), pct, mode=mode,
                                          seed=3, rank=0, world_size=1)
    stream = iter(sampler)
    draws = np.array([next(stream) for _ in range(50 * 200)])
    rare = ds.class_indices(num_classes)[3]
    rare_share = np.isin(draws, rare).mean()
    # plain sampling would give the rare image 1/50 = 2 %; here 0.5 / 4 = 12.5 %
    if mode == "epoch":
        # official arithmetic, exact: int(50 * 0.5 / 4) = 6 centroid crops per class per epoch
        assert rare_share == pytest.approx(6 / 50)
        first_epoch = draws[:50]
        images = first_epoch[first_epoch < 50]
        assert len(images) == 50 - 6 * 4 and len(set(images.tolist())) == len(images)
    else:
        assert rare_share == pytest.approx(pct / num_classes, abs=0.015)
        assert (draws < 50).mean() == pytest.approx(1 - pct, abs=0.02)
    for c in range(3):
        assert np.isin(draws, ds.class_indices(num_classes)[c]).mean() == pytest.approx(
            pct / num_classes, abs=0.02)
    # every sampled record of the rare class is image 17 with its centroid
    rec = ds[int(rare[0])]
    assert rec["file_name"] == "img17.png" and rec["sfnet_centroid"] == (9, 9)
    assert rec["sfnet_centroid_class"] == 3 and "sfnet_centroid" not in ds[17]


def test_epoch_without_centroids_for_a_class_is_shorter_as_officially():
    ds = _skewed_dataset()
    indices = ds.class_indices(5)  # a 5th class without any centroid
    sampler = ClassUniformTrainingSampler(50, indices, 0.5, seed=0, rank=0, world_size=1)
    num_random, per_class = sampler.epoch_composition()
    assert (num_random, per_class) == (50 - 5 * 5, 5)
    epoch = sampler._one_epoch(np.random.default_rng(0))
    assert len(epoch) == num_random + 4 * per_class


def test_sampler_is_seeded_and_sharded_over_processes():
    ds = _skewed_dataset()
    idx = ds.class_indices(4)

    def take(n, **kw):
        s = iter(ClassUniformTrainingSampler(50, idx, 0.5, **kw))
        return [next(s) for _ in range(n)]

    whole = take(200, seed=7, rank=0, world_size=1)
    assert whole == take(200, seed=7, rank=0, world_size=1)
    assert whole != take(200, seed=8, rank=0, world_size=1)
    assert take(100, seed=7, rank=0, world_size=2) == whole[0::2]
    assert take(100, seed=7, rank=1, world_size=2) == whole[1::2]
    with pytest.raises(ValueError, match="CLASS_UNIFORM_MODE"):
        ClassUniformTrainingSampler(50, idx, 0.5, mode="sometimes", seed=0)
    with pytest.raises(ValueError, match="no class has a centroid"):
        ClassUniformTrainingSampler(50, [np.zeros(0, np.int64)] * 4, 0.5, seed=0)


# ---- loader ------------------------------------------------------------------------------------

def _loader_cfg(demo_datasets, tmp_path, *opts):
    return make_cfg("configs/Base-SFNet.yaml", [
        "DATASETS.TRAIN", (demo_datasets[0],), "DATASETS.TEST", (demo_datasets[1],),
        "INPUT.SFNET.CROP_SIZE", [64, 64], "DATALOADER.SFNET.CLASS_UNIFORM_TILE", 64,
        "DATALOADER.SFNET.CLASS_UNIFORM_MODE", "random", "SOLVER.IMS_PER_BATCH", 4,
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path), *opts])


def _batches(cfg, n, seed=0):
    torch.manual_seed(0)  # base seed of the data-loader workers (augmentation draws)
    np.random.seed(0)
    it = iter(build_sfnet_train_loader(cfg, SFNetSemanticDatasetMapper(cfg, True), seed=seed))
    return [next(it) for _ in range(n)]


def test_train_loader_yields_centroid_crops_deterministically_with_workers(
        demo_datasets, tmp_path):
    cfg = _loader_cfg(demo_datasets, tmp_path, "DATALOADER.NUM_WORKERS", 2)
    first, second = _batches(cfg, 3), _batches(cfg, 3)
    assert os.listdir(tmp_path / "centroid_cache") == [f"{demo_datasets[0]}_tile64_classes19.json"]
    samples = [d for b in first for d in b]
    assert len(samples) == 12 and all(d["image"].shape == (3, 64, 64) for d in samples)
    for a, b in zip(samples, [d for b in second for d in b]):
        assert a["file_name"] == b["file_name"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["sem_seg"], b["sem_seg"])
    uniform = [d for d in samples if "sfnet_centroid_class" in d]
    assert 2 <= len(uniform) <= 10
    # a centroid crop shows its class (the demo's class regions are compact enough)
    assert sum(bool((d["sem_seg"] == d["sfnet_centroid_class"]).any()) for d in uniform) \
        >= len(uniform) - 1


def test_coarse_boost_adds_centroids_of_the_chosen_classes_only(demo_datasets, tmp_path):
    # a "coarse" dataset: 3 labels, class 11 in one of them, class 0 in all
    labels = [np.zeros((64, 64), np.uint8) for _ in range(3)]
    labels[2][10:20, 10:20] = 11
    files = _write_labels(tmp_path / "coarse", labels)
    image = str(tmp_path / "coarse" / "img.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    name = "test_recipe_coarse_boost"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [
            {"file_name": image, "sem_seg_file_name": f, "height": 64, "width": 64} for f in files])
        MetadataCatalog.get(name).set(ignore_label=255)
    cfg = _loader_cfg(demo_datasets, tmp_path, "DATALOADER.SFNET.COARSE_BOOST_DATASET", name,
                      "DATALOADER.SFNET.COARSE_BOOST_CLASSES", [11, 17])
    plain = _loader_cfg(demo_datasets, tmp_path)
    boosted, num_images = us.build_class_uniform_dataset(cfg)
    fine, fine_images = us.build_class_uniform_dataset(plain)
    assert num_images == fine_images == 8  # coarse images are never drawn as random images
    assert boosted.num_records == 9  # + the one coarse image with a class-11 centroid
    extra = len(boosted.class_indices(19)[11]) - len(fine.class_indices(19)[11])
    assert extra == 1 and len(boosted.class_indices(19)[0]) == len(fine.class_indices(19)[0])
    rec = boosted[int(boosted.class_indices(19)[11][-1])]
    assert rec["sem_seg_file_name"] == files[2] and rec["sfnet_centroid"] == (14, 14)
    bad = _loader_cfg(demo_datasets, tmp_path, "DATALOADER.SFNET.COARSE_BOOST_CLASSES", [11])
    with pytest.raises(ValueError, match="COARSE_BOOST_DATASET"):
        us.build_class_uniform_dataset(bad)


def test_tiles_larger_than_every_image_is_an_error_naming_the_key(demo_datasets, tmp_path):
    cfg = _loader_cfg(demo_datasets, tmp_path, "DATALOADER.SFNET.CLASS_UNIFORM_TILE", 1024)
    with pytest.raises(ValueError, match="CLASS_UNIFORM_TILE=1024"):
        build_sfnet_train_loader(cfg, SFNetSemanticDatasetMapper(cfg, True), seed=0)
