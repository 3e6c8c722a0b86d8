"""Every YAML under configs/ loads with the commands' ``build_config``: a Base-*.yaml sets exactly
the values it writes and completes at least one model config; each distinct model builds on CPU
with the meta-architecture, head and parameter count its files state and runs a tiny forward with
the output its task and class count ask for; semantic configs name registered datasets of the
agreed names, with matching class counts and ignore values; MODEL_ZOO.md and the configs'
header comments agree on the paper's numbers."""
import ast
import glob
import os
import re

import pytest
import torch
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from helpers import ROOT, config_header, load_config, model_zoo_rows, model_zoo_text
from sfnet_d2.modeling.meta_arch.knet.meta_arch import knet_metadata_dataset

# one torch thread: ~70 tiny forwards, far faster than two threads on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**",
                                                                            "*.yaml"),
                                                              recursive=True))
# Base-*.yaml files are partial recipes that other files complete; they load but are not models.
BASE_CONFIGS = [c for c in CONFIGS if os.path.basename(c).startswith("Base-")]
MODEL_CONFIGS = [c for c in CONFIGS if c not in BASE_CONFIGS]

# The semantic dataset names agreed for the project (docs/DATASETS.md).
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


def _yaml(path):
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f) or {}


def _base_chain(path):
    """The files ``path`` inherits from through ``_BASE_``, nearest first."""
    chain = []
    while "_BASE_" in _yaml(path):
        path = os.path.normpath(os.path.join(os.path.dirname(path), _yaml(path)["_BASE_"]))
        chain.append(path)
    return chain


# ------------------------------------------------------------------ Base-*.yaml
def _flatten(node, prefix=""):
    """{"MODEL.SEM_SEG_HEAD.NAME": value, ...} of a YAML mapping, without ``_BASE_``."""
    out = {}
    for key, value in node.items():
        if key == "_BASE_":
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _as_config_value(value):
    """A YAML value as yacs stores it: strings that are Python literals evaluated ("1e-4" is a
    string to PyYAML, 0.0001 to yacs), tuples and lists alike."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, (list, tuple)):
        return [_as_config_value(v) for v in value]
    return value


def _cpu_fallback(key, value):
    """What ``build_config`` turns ``value`` into on a machine without CUDA (its docstring): SyncBN
    becomes naiveSyncBN, AMP is turned off; ``load_config`` sets MODEL.DEVICE to cpu."""
    if torch.cuda.is_available():
        return value
    if key.endswith(".NORM") and value == "SyncBN":
        return "naiveSyncBN"
    if key == "SOLVER.AMP.ENABLED":
        return False
    if key == "MODEL.DEVICE":
        return "cpu"
    return value


def test_configs_were_found():
    assert len(MODEL_CONFIGS) >= 80
    assert "configs/cityscapes/semantic/sfnet_R18.yaml" in MODEL_CONFIGS
    assert len(BASE_CONFIGS) >= 5 and "configs/Base-SFNet.yaml" in BASE_CONFIGS


@pytest.mark.parametrize("path", BASE_CONFIGS)
def test_base_config_loads_with_the_values_it_sets(path):
    written = _flatten(_yaml(path))
    assert len(written) >= 5, f"{path} sets only {sorted(written)}"
    cfg = load_config(path)
    for key, value in written.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert _as_config_value(node) == _as_config_value(_cpu_fallback(key, value)), key
    # a partial recipe exists to be completed by model configs
    assert any(path in _base_chain(c) for c in MODEL_CONFIGS), f"no config has {path} as _BASE_"


# ------------------------------------------------------------------ one case per distinct model
def _model_key(path):
    """What decides the built model: the MODEL node except MODEL.WEIGHTS (the same architecture
    with other initial weights), and for K-Net the dataset whose metadata gives its classes."""
    cfg = load_config(path).clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    classes = knet_metadata_dataset(cfg) if cfg.MODEL.META_ARCHITECTURE == "SFNetKNet" else ""
    return cfg.MODEL.dump() + classes


def _distinct_models():
    """Groups of configs that build the same model (e.g. the BDD, IDD, Mapillary and UDS files
    reuse the Cityscapes models), each once. A config that fails to load is a group of its own,
    so that its case reports the error."""
    groups = {}
    for path in MODEL_CONFIGS:
        try:
            key = _model_key(path)
        except Exception:  # noqa: BLE001  (reported by the case, which loads it again)
            key = path
        groups.setdefault(key, []).append(path)
    return list(groups.values())


DISTINCT_MODELS = _distinct_models()

# "N params" / "N parameters" / "params N" / "Params: N" in a config header or its MODEL_ZOO.md
# row, less "M unused" (the official STDC classifier tail that no forward uses).
_COUNT = r"(\d{1,3}(?:,\d{3})+)"
_STATED = re.compile(rf"[Pp]arams:?\s+{_COUNT}|{_COUNT}\s+(?:params|parameters)\b")
_UNUSED = re.compile(rf"{_COUNT}\s+unused")


def stated_parameter_count(path):
    """The parameter count that ``path``'s header comment or its MODEL_ZOO.md row states for
    its model, or None."""
    text = config_header(path) + "".join(
        line for line in model_zoo_text().splitlines(keepends=True) if f"`{path}`" in line)
    stated = {int((a or b).replace(",", "")) for a, b in _STATED.findall(text)}
    assert len(stated) <= 1, f"{path} states several parameter counts: {stated}"
    if not stated:
        return None
    return stated.pop() - sum(int(n.replace(",", "")) for n in _UNUSED.findall(text))


def test_stated_parameter_counts_are_read():
    assert stated_parameter_count("configs/cityscapes/semantic/sfnet_STDC1.yaml") == \
        9_117_619 - 3_125_248  # "Params: 9,117,619 official incl. 3,125,248 unused ..."
    assert stated_parameter_count("configs/ade20k/semantic/segformer_B0.yaml") == 3_752_694
    assert stated_parameter_count("configs/cityscapes/semantic/test_server/sfnet_DF1.yaml") == \
        8_498_969  # its MODEL_ZOO.md row
    assert stated_parameter_count("configs/cityscapes/semantic/sfnet_R50.yaml") is None
    assert sum(stated_parameter_count(c) is not None for c in MODEL_CONFIGS) >= 14


def _case(paths):
    """One parameter of test_config_builds_its_model; models on a ResNet-50/101 (30-50 M
    parameters, about 1-2 s each to build) are slow, the quick loop builds the rest."""
    try:
        cfg = load_config(paths[0])
        large = ("resnet" in cfg.MODEL.BACKBONE.NAME and cfg.MODEL.RESNETS.DEPTH >= 50)
    except Exception:  # noqa: BLE001  (reported by the case)
        large = False
    return pytest.param(paths, id=paths[0] + (f"+{len(paths) - 1}" if len(paths) > 1 else ""),
                        marks=[pytest.mark.slow] if large else [])


@pytest.mark.parametrize("paths", [_case(p) for p in DISTINCT_MODELS])
def test_config_builds_its_model(paths):
    cfg = load_config(paths[0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # the registered classes the config names (the registry names are the class names)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    n_params = sum(p.numel() for p in model.parameters())
    for path in paths:
        stated = stated_parameter_count(path)
        assert stated in (None, n_params), f"{path} states {stated:,} parameters, built " \
                                           f"{n_params:,}"

    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}])
    if cfg.MODEL.META_ARCHITECTURE == "SFNetKNet":
        panoptic, segments = out["panoptic_seg"]
        assert panoptic.shape == (64, 96)
        classes = MetadataCatalog.get(knet_metadata_dataset(cfg)).stuff_classes
        assert all(0 <= s["category_id"] < len(classes) for s in segments)
        if cfg.MODEL.KNET.TEST.SEMANTIC_ON:
            assert out["sem_seg"].shape == (len(classes), 64, 96)
    else:
        assert type(model.sem_seg_head).__name__ == cfg.MODEL.SEM_SEG_HEAD.NAME
        assert set(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) <= set(model.backbone.output_shape())
        assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 64, 96)
        assert torch.isfinite(out["sem_seg"]).all()


def test_distinct_models_cover_every_config_once():
    grouped = [p for group in DISTINCT_MODELS for p in group]
    assert sorted(grouped) == MODEL_CONFIGS
    # configs that share a model state the same parameter count, if any
    for group in DISTINCT_MODELS:
        assert len({stated_parameter_count(p) for p in group} - {None}) <= 1, group


# ------------------------------------------------------------------ datasets, output folders
def _semantic_configs():
    out = []
    for path in MODEL_CONFIGS:
        cfg = load_config(path)
        if cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "SFNetSemanticSegmentor"):
            out.append((path, cfg))
    return out


def test_semantic_configs_use_registered_datasets_with_matching_classes():
    registered = set(DatasetCatalog.list())
    problems = []
    semantic = _semantic_configs()
    assert len(semantic) >= 70
    for path, cfg in semantic:
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
        out = load_config(path).OUTPUT_DIR
        assert out not in seen, f"{path} and {seen[out]} both write to {out}"
        seen[out] = path


# ------------------------------------------------------------------ MODEL_ZOO.md <-> configs
def test_model_zoo_rows_point_to_configs_whose_header_states_the_expected_miou():
    rows = model_zoo_rows()
    assert len(rows) >= 60
    problems = []
    for row in rows:
        if row["path"] not in CONFIGS:
            problems.append(f"MODEL_ZOO.md row {row['row'].strip()!r}: {row['path']} does not "
                            "exist")
        elif not re.search(rf"(?<![0-9.]){re.escape(row['miou'])}(?![0-9])",
                           config_header(row["path"])):
            problems.append(f"MODEL_ZOO.md row {row['row'].strip()!r}: {row['miou']} is not in the "
                            f"header comment of {row['path']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["configs/cityscapes/semantic/ablations",
                                    "configs/cityscapes/semantic/test_server",
                                    "configs/mapillary", "configs/idd", "configs/bdd",
                                    "configs/uds", "configs/camvid", "configs/ade20k"])
def test_every_table_config_is_in_the_model_zoo_and_says_its_paper_row(folder):
    listed = {row["path"] for row in model_zoo_rows()}
    in_folder = [p for p in MODEL_CONFIGS if p.startswith(folder + "/")]
    assert in_folder, f"no config under {folder}"
    for path in in_folder:
        header = config_header(path)
        assert "Table" in header and ("expected" in header or "No paper row" in header), path
        # configs without a paper row are named in the text of MODEL_ZOO.md instead of a table row
        assert path in listed or ("No paper row" in header and path in model_zoo_text()), path
