"""
Config keys that were renamed, and the check that turns an old name in a user's YAML file (or any
file of its ``_BASE_`` chain) or in a command-line override into an error naming the new key.
Without it yacs would only say "Non-existent config key", and the user would have to guess.
"""
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode

__all__ = ["RENAMED_KEYS", "RENAMED_NODES", "check_renamed_keys", "renamed_key"]

# old key -> new key
RENAMED_KEYS: Dict[str, str] = {
    # one optimizer builder for every model (sfnet_d2/solver/build.py)
    "SOLVER.SFNET.OPTIMIZER": "SOLVER.OPTIMIZER.NAME",
    "SOLVER.SFNET.HEAD_LR_MULTIPLIER": "SOLVER.OPTIMIZER.HEAD_MULTIPLIER",
    "SOLVER.KNET.OPTIMIZER": "SOLVER.OPTIMIZER.NAME",
    "SOLVER.KNET.BACKBONE_MULTIPLIER": "SOLVER.OPTIMIZER.BACKBONE_MULTIPLIER",
    # the evaluator choice belongs to the evaluation node
    "TEST.SFNET_EVALUATOR": "TEST.SFNET.EVALUATOR",
    # runtime settings of the optimised inference path are not architecture
    "MODEL.SFNET.INFERENCE.OPTIMIZE": "DEPLOY.OPTIMIZE",
    "MODEL.SFNET.INFERENCE.CHANNELS_LAST": "DEPLOY.CHANNELS_LAST",
    "MODEL.SFNET.INFERENCE.TORCHSCRIPT": "DEPLOY.TORCHSCRIPT",
    "MODEL.SFNET.INFERENCE.MAX_COMPILED_SIZES": "DEPLOY.MAX_COMPILED_SIZES",
    "MODEL.SFNET.INFERENCE.PRECISION": "DEPLOY.PRECISION",
    "MODEL.SFNET.INFERENCE.KEEP_MEMORY": "DEPLOY.KEEP_MEMORY",
}
# old node -> new node, for keys under a removed node that RENAMED_KEYS does not list
RENAMED_NODES: Dict[str, str] = {
    "SOLVER.KNET": "SOLVER.OPTIMIZER",
    "MODEL.SFNET.INFERENCE": "DEPLOY",
}
_BASE_KEY = "_BASE_"


def renamed_key(key: str) -> Optional[Tuple[str, str]]:
    """(old, new) if ``key`` or a node above it was renamed, else None."""
    if key in RENAMED_KEYS:
        return key, RENAMED_KEYS[key]
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        node = ".".join(parts[:n])
        if node in RENAMED_NODES:
            return node, RENAMED_NODES[node]
    return None


def _keys(tree: dict, prefix: str = "") -> Iterator[str]:
    """Every key of a loaded YAML mapping, nodes included."""
    for name, value in tree.items():
        if not prefix and name == _BASE_KEY:
            continue
        key = f"{prefix}{name}"
        yield key
        if isinstance(value, dict):
            yield from _keys(value, key + ".")


def _load_yaml(path: str) -> dict:
    # as detectron2's CfgNode.load_yaml_with_base: safe_load, unsafe_load for python tags
    with CfgNode._open_cfg(path) as f:
        try:
            tree = yaml.safe_load(f)
        except yaml.constructor.ConstructorError:
            f.close()
            with CfgNode._open_cfg(path) as g:
                tree = yaml.unsafe_load(g)
    return tree if isinstance(tree, dict) else {}


def _base_paths(path: str, tree: dict) -> List[str]:
    """The files of ``_BASE_`` (a path or a list of paths), resolved as fvcore resolves them:
    "~" expanded, then relative to the directory of the file that names them."""
    bases = tree.get(_BASE_KEY) or []
    out = []
    for base in [bases] if isinstance(bases, str) else bases:
        if base.startswith("~"):
            base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)
        out.append(base)
    return out


def _check_file(path: str, seen: set) -> None:
    if path in seen:
        return
    seen.add(path)
    tree = _load_yaml(path)
    keys = list(_keys(tree))
    # a renamed key itself first: its message names the exact new key, not only the new node
    for key in sorted(keys, key=lambda k: k not in RENAMED_KEYS):
        _raise_if_renamed(key, f"in {path}")
    for base in _base_paths(path, tree):
        _check_file(base, seen)


def _raise_if_renamed(key: str, where: str) -> None:
    found = renamed_key(key)
    if found is None:
        return
    old, new = found
    if old == key:
        raise ValueError(f"Config key {old} {where} was renamed to {new}; rename it")
    raise ValueError(f"Config key {key} {where}: the node {old} was renamed to {new} "
                     f"(see sfnet_d2/config/renamed_keys.py); rename it")


def check_renamed_keys(config_file: Optional[str] = None, opts: Sequence = ()) -> None:
    """Raise ``ValueError`` naming the file (or "the command line"), the old key and the new key
    if ``config_file``, a file of its ``_BASE_`` chain or the KEY VALUE list ``opts`` uses a
    renamed key. Files that cannot be read are left to detectron2's own loading errors."""
    if config_file:
        try:
            _check_file(config_file, set())
        except (OSError, yaml.YAMLError):
            pass  # merge_from_file reports a missing or broken file, naming it
    for key in list(opts)[0::2]:
        if isinstance(key, str):
            _raise_if_renamed(key, "on the command line")
