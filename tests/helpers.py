"""Plain helpers shared by the test modules (``from helpers import ...``: tests/ has a conftest.py
and no __init__.py, so pytest's default "prepend" import mode puts tests/ first on the import
path). Fixtures live in conftest.py.

* paths and configs: ``ROOT``, ``run_command`` (a command of projects/SFNet in a subprocess),
  ``make_cfg`` (a CPU config with plain BN), ``load_config`` (a
  YAML file through the library's ``build_config``, cached);
* config headers and the model zoo table: ``config_header``, ``model_zoo_rows``,
  ``model_zoo_text``;
* ``semantic_training_batch``: random training records for a semantic step;
* ``randomize_norms``: non-trivial BatchNorm statistics and affine parameters (folding tests);
* ``tiny_knet_cfg``: a K-Net small enough to run a forward and backward in a test;
* ``reference_ohem_keep_mask`` / ``reference_ohem_cross_entropy``: the OHEM before the
  count-first threshold, the reference the library's must match bit for bit;
  ``count_kthvalue_calls``;
* synthetic dataset trees in each dataset's real layout (``make_cityscapes`` ... ``make_ade20k``)
  and the image/label writers they use.
"""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from PIL import Image
from torch import nn

from sfnet_d2 import add_sfnet_config
from sfnet_d2.data.datasets.label_mapping import load_label_mapping
from sfnet_d2.engine import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(name, *args, env=None, timeout=600):
    """Run ``projects/SFNet/<name>.py *args`` in a subprocess from the repository root (the
    commands are scripts, tested by running them); returns the CompletedProcess, output as text.
    An expected error exits with status 1 after one "<name>.py: error: ..." line on stderr."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "projects", "SFNet", name + ".py"),
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- configs
def make_cfg(config_file=None, opts=()):
    """An unfrozen config (``config_file`` relative to the repository root) on CPU with plain BN
    (SyncBN needs a process group), then ``opts``."""
    cfg = get_cfg()
    add_sfnet_config(cfg)
    if config_file:
        cfg.merge_from_file(os.path.join(ROOT, config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.merge_from_list(list(opts))
    return cfg


@functools.lru_cache(maxsize=None)
def load_config(path):
    """The frozen config of ``path`` (relative to the root) as the commands build it, on CPU."""
    return build_config(os.path.join(ROOT, path), ["MODEL.DEVICE", "cpu"])


def config_header(path):
    """The comment lines at the top of a YAML file (where each config states its paper row)."""
    lines = []
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line)
    return "".join(lines)


# A table row of MODEL_ZOO.md: | row | `configs/....yaml` | mIoU | ...
_MODEL_ZOO_ROW = re.compile(
    r"^\|(?P<row>[^|]*)\|\s*`(?P<path>configs/[^`]+\.yaml)`\s*\|\s*(?P<miou>[0-9.]+)\s*\|")


def model_zoo_text():
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        return f.read()


def model_zoo_rows():
    """Each table row of MODEL_ZOO.md that names a config, as {"row", "path", "miou"} (strings)."""
    return [m.groupdict() for m in map(_MODEL_ZOO_ROW.match, model_zoo_text().splitlines()) if m]


def tiny_knet_cfg(dataset="cityscapes_fine_panoptic_train", **overrides):
    """K-Net on STDC1 with 6 proposals, 32 channels and 2 stages: its shapes are the real ones,
    its cost a test's. ``overrides`` are KEY=VALUE config overrides."""
    opts = ["MODEL.STDC.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
            "MODEL.KNET.NUM_PROPOSALS", 6, "MODEL.KNET.FEAT_CHANNELS", 32,
            "MODEL.KNET.NUM_HEADS", 4, "MODEL.KNET.FFN_CHANNELS", 64,
            "MODEL.KNET.NUM_STAGES", 2, "MODEL.KNET.STAGE_LOSS_WEIGHTS", [1.0, 1.0],
            "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", ()]
    for k, v in overrides.items():
        opts += [k, v]
    return make_cfg("configs/coco/panoptic/knet_sfnet_STDC1.yaml", opts)


# ---------------------------------------------------------------- models
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model


def semantic_training_batch(n=2, h=64, w=128, seed=0):
    """``n`` random (image, ``sem_seg``) training records of (h, w), 10 % of the labels ignored
    (255), as a semantic dataset mapper gives them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, 19, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.1] = 255
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "sem_seg": label})
    return out


# ---------------------------------------------------------------- OHEM reference
# The implementation before the count-first threshold (sfnet_d2/modeling/heads/losses.py at commit
# 83c13e3): always a kthvalue over all pixels, ignored ones at p = 1. Kept here as the reference
# the faster one must match bit for bit (test_ohem.py, test_training_step.py).
@torch.no_grad()
def reference_ohem_keep_mask(logits, targets, ignore_index, thresh, min_kept):
    valid = targets != ignore_index
    num_valid = int(valid.sum())
    if num_valid == 0 or min_kept <= 0 or min_kept > num_valid:
        return valid
    prob = F.softmax(logits.float(), dim=1)
    gt = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    gt_prob = prob.gather(1, gt).squeeze(1)
    gt_prob = torch.where(valid, gt_prob, torch.ones_like(gt_prob))
    kth = torch.kthvalue(gt_prob.flatten(), min_kept).values
    return valid & (gt_prob <= torch.clamp(kth, min=thresh))


def reference_ohem_cross_entropy(logits, targets, ignore_index=255, thresh=0.7,
                                 min_kept=100000):
    keep = reference_ohem_keep_mask(logits, targets, ignore_index, thresh, min_kept)
    mined = torch.where(keep, targets, torch.full_like(targets, ignore_index))
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, mined, ignore_index=ignore_index, reduction="mean")


def count_kthvalue_calls(monkeypatch):
    """A list that grows by one at each torch.kthvalue call (for the rest of the test)."""
    calls = []
    real = torch.kthvalue

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "kthvalue", counting)
    return calls


# ---------------------------------------------------------------- synthetic dataset trees
H, W = 6, 8  # every synthetic image and label


def write_rgb(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_label(path, array, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if palette:  # Mapillary stores labels as palette PNGs: the pixel value is the index
        im = im.convert("P")
        im.putpalette([(7 * i) % 256 for i in range(768)])
    im.save(path)


def make_cityscapes(root, split, cities=(("aachen", 2),), annotation="gtFine"):
    base = os.path.join(root, "cityscapes")
    for city, n in cities:
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            write_rgb(os.path.join(base, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"),
                      seed=k)
            gt = os.path.join(base, annotation, split, city, f"{stem}_{annotation}_")
            os.makedirs(os.path.dirname(gt), exist_ok=True)
            with open(gt + "polygons.json", "w") as f:
                json.dump({"imgHeight": H, "imgWidth": W, "objects": []}, f)
            write_label(gt + "labelIds.png", np.full((H, W), 7))
            write_label(gt + "instanceIds.png", np.full((H, W), 7))
            write_label(gt + "labelTrainIds.png", np.zeros((H, W)))


MAPILLARY_PATTERN = np.array([[13, 55, 27, 8], [65, 24, 52, 50]], dtype=np.uint8)  # 2x4, tiled
MAPILLARY_EXPECTED = np.array([[0, 13, 10, 255], [255, 0, 18, 7]], dtype=np.uint8)


def make_mapillary(root, split, n, v2_zip=False, config=True):
    base = os.path.join(root, "mapillary_vistas")
    split_dir = os.path.join(base, {"train": "training", "val": "validation"}[split])
    labels = os.path.join(split_dir, "v1.2", "labels") if v2_zip else os.path.join(split_dir,
                                                                                    "labels")
    for k in range(n):
        name = f"img{split}{k:03d}"
        write_rgb(os.path.join(split_dir, "images", name + ".jpg"), seed=k)
        write_label(os.path.join(labels, name + ".png"), np.tile(MAPILLARY_PATTERN, (3, 2)),
                    palette=True)
    if config:
        m = load_label_mapping("mapillary_vistas_v1.2_to_cityscapes19.csv")
        cfg = {"labels": [{"readable": r["source_name"], "name": r["source_key"],
                           "color": [0, 0, 0]} for r in m.rows]}
        with open(os.path.join(base, "config_v1.2.json" if v2_zip else "config.json"), "w") as f:
            json.dump(cfg, f)
    return split_dir


def idd_polygons():
    """Objects drawn in order (later on top) on an 8x6 canvas; returns (objects, expected
    trainIds)."""
    objects = [
        {"label": "road", "polygon": [[0, 3], [7, 3], [7, 5], [0, 5]], "deleted": 0},
        {"label": "sky", "polygon": [[0, 0], [7, 0], [7, 1], [0, 1]], "deleted": 0},
        {"label": "persongroup", "polygon": [[0, 3], [1, 3], [1, 5], [0, 5]], "deleted": 0},
        {"label": "autorickshaw", "polygon": [[6, 3], [7, 3], [7, 5], [6, 5]], "deleted": 0},
        {"label": "non-drivable fallback", "polygon": [[3, 2], [4, 2], [4, 2], [3, 2]],
         "deleted": 0},
        {"label": "sky", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]], "deleted": 1},  # skipped
    ]
    e = np.full((H, W), 255, np.uint8)  # 'unlabeled' background
    e[3:6, :] = 0          # road
    e[0:2, :] = 10         # sky
    e[3:6, 0:2] = 11       # person (a group label)
    e[3:6, 6:8] = 255      # autorickshaw: no Cityscapes class
    e[2, 3:5] = 9          # terrain
    return objects, e


def make_idd(root, split, seqs=(("0", 2),)):
    base = os.path.join(root, "IDD_Segmentation")
    objects, _ = idd_polygons()
    for seq, n in seqs:
        for k in range(n):
            stem = f"{k:06d}"
            write_rgb(os.path.join(base, "leftImg8bit", split, seq, f"{stem}_leftImg8bit.png"),
                      seed=k)
            gt = os.path.join(base, "gtFine", split, seq, f"{stem}_gtFine_polygons.json")
            os.makedirs(os.path.dirname(gt), exist_ok=True)
            with open(gt, "w") as f:
                json.dump({"imgHeight": H, "imgWidth": W, "objects": objects}, f)
    return base


def make_bdd(root, split, n, layout="current"):
    base = os.path.join(root, "bdd100k")
    for k in range(n):
        name = f"{split}{k:04d}-abc"
        if layout == "current":
            write_rgb(os.path.join(base, "images", "10k", split, name + ".jpg"), seed=k)
            write_label(os.path.join(base, "labels", "sem_seg", "masks", split, name + ".png"),
                        np.full((H, W), k % 19))
        else:
            write_rgb(os.path.join(base, "seg", "images", split, name + ".jpg"), seed=k)
            write_label(os.path.join(base, "seg", "labels", split, name + "_train_id.png"),
                        np.full((H, W), k % 19))
    return base


def make_camvid(root, split, n):
    base = os.path.join(root, "CamVid")
    for k in range(n):
        name = f"0001TP_{k:06d}.png"
        write_rgb(os.path.join(base, split, name), seed=k)
        write_label(os.path.join(base, split + "annot", name),
                    np.arange(H * W).reshape(H, W) % 12)
    return base


def make_ade20k(root, split, n):
    base = os.path.join(root, "ADEChallengeData2016")
    sub = {"train": "training", "val": "validation"}[split]
    for k in range(n):
        name = f"ADE_{sub}_{k:08d}"
        write_rgb(os.path.join(base, "images", sub, name + ".jpg"), seed=k)
        write_label(os.path.join(base, "annotations", sub, name + ".png"),
                    np.arange(H * W).reshape(H, W) * 3 % 151)
    return base
