"""Every YAML under configs/ loads with train_net.py's build_config and builds its model on CPU;
semantic configs name registered datasets of the agreed names, with matching class counts and
ignore values; docs/RESULTS.md and the configs' header comments agree on the paper's numbers."""
import functools
import glob
import importlib.util
import os
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "sfnet_train_net_for_configs", os.path.join(ROOT, "projects", "SFNet", "train_net.py"))
train_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_net)

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"),
                                                              recursive=True))
# Base-*.yaml files are partial recipes that other files complete; they load but are not models.
MODEL_CONFIGS = [c for c in CONFIGS if not os.path.basename(c).startswith("Base-")]

# The semantic dataset names agreed for the project (helper notes; docs/DATASETS.md).
SEMANTIC_DATASETS = {
    *(f"cityscapes_fine_sem_seg_{s}" for s in ("train", "val", "test")),
    "cityscapes_coarse_sem_seg_train_extra",
    *(f"mapillary_vistas_19_sem_seg_{s}" for s in ("train", "val")),
    *(f"idd_19_sem_seg_{s}" for s in ("train", "val")),
    *(f"bdd100k_sem_seg_{s}" for s in ("train", "val")),
    *(f"camvid_sem_seg_{s}" for s in ("train", "val", "test")),
    *(f"ade20k_sem_seg_{s}" for s in ("train", "val")),
    "uds_sem_seg_train", "uds_sem_seg_val",
    *(f"sfnet_demo_cityscapes_fine_sem_seg_{s}" for s in ("train", "val")),
}
# A forward pass only for models of at most this many parameters (the rest are only built).
FORWARD_MAX_PARAMS = 25_000_000


@functools.lru_cache(maxsize=None)
def _cfg(path):
    return train_net.build_config(os.path.join(ROOT, path), ["MODEL.DEVICE", "cpu"])


# Many configs train the same model on other data or with another recipe (e.g. the BDD, IDD,
# Mapillary and UDS files reuse the Cityscapes models): each distinct MODEL node is built once.
_BUILT_MODELS = {}


def test_configs_were_found():
    assert len(MODEL_CONFIGS) >= 80 and "configs/cityscapes/semantic/sfnet_R18.yaml" in MODEL_CONFIGS


@pytest.mark.parametrize("path", [c for c in CONFIGS if c not in MODEL_CONFIGS])
def test_base_config_loads(path):
    _cfg(path)


@pytest.mark.parametrize("path", MODEL_CONFIGS)
def test_config_builds_its_model(path):
    cfg = _cfg(path)
    key = cfg.MODEL.dump()
    if key in _BUILT_MODELS:
        return  # the same model (every MODEL key equal) was built and run for _BUILT_MODELS[key]
    _BUILT_MODELS[key] = path
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0
    if cfg.MODEL.META_ARCHITECTURE not in ("SemanticSegmentor", "SFNetSemanticSegmentor"):
        return  # panoptic models: built only (their own tests run them)
    if n_params > FORWARD_MAX_PARAMS:
        return  # R50/R101 models: built only, to keep the suite fast
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 64, 64)


def _semantic_configs():
    out = []
    for path in MODEL_CONFIGS:
        cfg = _cfg(path)
        if cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "SFNetSemanticSegmentor"):
            out.append((path, cfg))
    return out


def test_semantic_configs_use_registered_datasets_with_matching_classes():
    registered = set(DatasetCatalog.list())
    problems = []
    for path, cfg in _semantic_configs():
        for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            if name not in SEMANTIC_DATASETS:
                problems.append(f"{path}: {name} is not one of the agreed dataset names")
                continue
            if name not in registered:
                problems.append(f"{path}: {name} is not registered by importing sfnet_d2")
                continue
            meta = MetadataCatalog.get(name)
            n_classes = len(meta.stuff_classes)
            if n_classes != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
                problems.append(f"{path}: NUM_CLASSES {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} but "
                                f"{name} has {n_classes} classes")
            if meta.ignore_label != cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE:
                problems.append(f"{path}: IGNORE_VALUE {cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but "
                                f"{name} ignores {meta.ignore_label}")
        boost = cfg.DATALOADER.SFNET.COARSE_BOOST_DATASET
        if boost and boost not in SEMANTIC_DATASETS:
            problems.append(f"{path}: coarse-boost dataset {boost} is not an agreed name")
    assert not problems, "\n".join(problems)


def test_output_dirs_are_unique():
    seen = {}
    for path in MODEL_CONFIGS:
        out = _cfg(path).OUTPUT_DIR
        assert out not in seen, f"{path} and {seen[out]} both write to {out}"
        seen[out] = path


# ------------------------------------------------------------------ docs/RESULTS.md <-> configs
_ROW = re.compile(r"^\|(?P<row>[^|]*)\|\s*`(?P<path>configs/[^`]+\.yaml)`\s*\|\s*(?P<miou>[0-9.]+)\s*\|")


def _results_text():
    with open(os.path.join(ROOT, "docs", "RESULTS.md")) as f:
        return f.read()


def _results_rows():
    with open(os.path.join(ROOT, "docs", "RESULTS.md")) as f:
        return [m.groupdict() for m in map(_ROW.match, f) if m]


def _header(path):
    lines = []
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line)
    return "".join(lines)


def test_results_table_rows_point_to_configs_whose_header_states_the_expected_miou():
    rows = _results_rows()
    assert len(rows) >= 60
    problems = []
    for row in rows:
        if row["path"] not in CONFIGS:
            problems.append(f"RESULTS.md row {row['row'].strip()!r}: {row['path']} does not exist")
        elif not re.search(rf"(?<![0-9.]){re.escape(row['miou'])}(?![0-9])", _header(row["path"])):
            problems.append(f"RESULTS.md row {row['row'].strip()!r}: {row['miou']} is not in the "
                            f"header comment of {row['path']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["configs/cityscapes/semantic/ablations", "configs/cityscapes/semantic/test_server",
                                    "configs/mapillary", "configs/idd", "configs/bdd", "configs/uds",
                                    "configs/camvid", "configs/ade20k"])
def test_every_table_config_is_in_the_results_table_and_says_its_paper_row(folder):
    listed = {row["path"] for row in _results_rows()}
    for path in MODEL_CONFIGS:
        if path.startswith(folder + "/"):
            header = _header(path)
            assert "Table" in header and ("expected" in header or "No paper row" in header), path
            # configs without a paper row are named in the text of RESULTS.md instead of a table row
            assert path in listed or ("No paper row" in header and path in _results_text()), path
