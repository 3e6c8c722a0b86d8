"""The config front door: a renamed key in a YAML file, in a file of its _BASE_ chain or on the
command line stops build_config with an error naming the file and the new key, and the new key
works; every key add_sfnet_config adds has a comment above it in the source; no shipped config
uses an old key."""
import ast
import glob
import os
import re

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from helpers import ROOT
from sfnet_d2.config import RENAMED_KEYS, add_sfnet_config, check_renamed_keys
from sfnet_d2.config import defaults as defaults_module
from sfnet_d2.config import model_defaults as model_defaults_module
from sfnet_d2.engine import build_config

MODEL_CONFIG = os.path.join(ROOT, "configs", "cityscapes", "semantic", "sfnet_lite_R18.yaml")
# a value other than the default for each new key, to see the new key take effect
NEW_VALUES = {
    "SOLVER.OPTIMIZER.NAME": "ADAMW",
    "SOLVER.OPTIMIZER.HEAD_MULTIPLIER": 10.0,
    "SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER": 0.25,
    "TEST.SFNET.EVALUATOR": "sem_seg",
    "DEPLOY.OPTIMIZE": False,
    "DEPLOY.CHANNELS_LAST": False,
    "DEPLOY.TORCHSCRIPT": "none",
    "DEPLOY.MAX_COMPILED_SIZES": 2,
    "DEPLOY.PRECISION": "bf16",
    "DEPLOY.KEEP_MEMORY": False,
}


def _nested(key, value):
    tree = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _write(path, tree):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return str(path)


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _flat_keys(node, prefix=""):
    keys = set()
    for name, value in node.items():
        keys.add(prefix + name)
        if isinstance(value, dict):
            keys |= _flat_keys(value, prefix + name + ".")
    return keys


def test_the_table_maps_removed_keys_to_existing_ones():
    keys = _flat_keys(add_sfnet_config(get_cfg()))
    assert set(NEW_VALUES) == set(RENAMED_KEYS.values())
    for old, new in RENAMED_KEYS.items():
        assert old not in keys and new in keys, (old, new)


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_old_key_in_the_yaml_names_the_file_and_the_new_key(tmp_path, old):
    new = RENAMED_KEYS[old]
    path = _write(tmp_path / "mine.yaml", {"_BASE_": MODEL_CONFIG, **_nested(old, NEW_VALUES[new])})
    with pytest.raises(ValueError, match=re.escape(
            f"Config key {old} in {path} was renamed to {new}; rename it")):
        build_config(path)
    # the advice followed: the same file with the new key loads and sets the value
    path = _write(tmp_path / "mine.yaml", {"_BASE_": MODEL_CONFIG, **_nested(new, NEW_VALUES[new])})
    assert _get(build_config(path), new) == NEW_VALUES[new]


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_old_key_on_the_command_line_names_the_new_key(old):
    new = RENAMED_KEYS[old]
    value = str(NEW_VALUES[new])
    with pytest.raises(ValueError, match=re.escape(
            f"Config key {old} on the command line was renamed to {new}; rename it")):
        build_config(MODEL_CONFIG, ["MODEL.DEVICE", "cpu", old, value])
    assert _get(build_config(MODEL_CONFIG, [new, value]), new) == NEW_VALUES[new]


def test_old_key_in_a_base_file_is_found_relative_to_the_file_that_names_it(tmp_path):
    # user/mine.yaml -> _BASE_ [../bases/recipe.yaml] (a list, relative) -> the shipped config
    base = _write(tmp_path / "bases" / "recipe.yaml",
                  {"_BASE_": MODEL_CONFIG, "SOLVER": {"KNET": {"BACKBONE_MULTIPLIER": 0.5}}})
    mine = _write(tmp_path / "user" / "mine.yaml",
                  {"_BASE_": ["../bases/recipe.yaml"], "SOLVER": {"BASE_LR": 0.02}})
    named = os.path.join(os.path.dirname(mine), "../bases/recipe.yaml")  # as fvcore joins it
    assert os.path.samefile(named, base)
    with pytest.raises(ValueError, match=re.escape(
            f"Config key SOLVER.KNET.BACKBONE_MULTIPLIER in {named} was renamed to "
            "SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER; rename it")):
        build_config(mine)
    _write(tmp_path / "bases" / "recipe.yaml",
           {"_BASE_": MODEL_CONFIG, "SOLVER": {"OPTIMIZER": {"BACKBONE_MULTIPLIER": 0.5}}})
    cfg = build_config(mine)
    assert cfg.SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER == 0.5 and cfg.SOLVER.BASE_LR == 0.02


def test_keys_under_a_removed_node_name_the_new_node(tmp_path):
    with pytest.raises(ValueError, match=re.escape(
            "Config key MODEL.SFNET.INFERENCE.FOLD_BN on the command line: the node "
            "MODEL.SFNET.INFERENCE was renamed to DEPLOY")):
        check_renamed_keys(None, ["MODEL.SFNET.INFERENCE.FOLD_BN", "True"])
    path = _write(tmp_path / "empty_node.yaml", {"SOLVER": {"KNET": {}}})
    with pytest.raises(ValueError, match=re.escape(
            f"Config key SOLVER.KNET in {path} was renamed to SOLVER.OPTIMIZER; rename it")):
        check_renamed_keys(path)


def test_other_errors_still_come_from_detectron2(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(Exception, match="does not exist"):
        build_config(missing)
    with pytest.raises(ValueError, match=r"command line.*SOLVER.OPTIMIZER.NAMES"):
        build_config(MODEL_CONFIG, ["SOLVER.OPTIMIZER.NAMES", "SGD"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"),
                                                  recursive=True)))
def test_shipped_configs_use_no_old_key(path):
    check_renamed_keys(path)


def _added_keys():
    before = get_cfg()
    add_deeplab_config(before)
    return _flat_keys(add_sfnet_config(get_cfg())) - _flat_keys(before)


def _assignments(module):
    """{key: line number} of every ``cfg.A.B = ...`` statement of a module, and its lines."""
    source_path = module.__file__
    with open(source_path) as f:
        source = f.read()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        parts, target = [], node.targets[0]
        while isinstance(target, ast.Attribute):
            parts.append(target.attr)
            target = target.value
        if isinstance(target, ast.Name) and target.id == "cfg" and parts:
            found[".".join(reversed(parts))] = node.lineno
    return found, source.splitlines()


def test_every_added_key_has_a_comment_line_above_it():
    added = _added_keys()
    seen = set()
    for module in (defaults_module, model_defaults_module):
        assignments, lines = _assignments(module)
        for key, lineno in assignments.items():
            above = lines[lineno - 2].strip()
            assert above.startswith("#"), \
                f"{module.__file__}:{lineno}: cfg.{key} has no comment line above it"
            seen.add(key)
    assert seen == added  # the parsed assignments are exactly the keys add_sfnet_config adds
