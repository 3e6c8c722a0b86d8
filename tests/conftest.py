"""Shared fixtures: a small demo dataset in the Cityscapes layout and config builders."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "SFNet"))

import sfnet_d2  # noqa: E402,F401
from detectron2.config import get_cfg  # noqa: E402
from sfnet_d2 import add_sfnet_config  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): for tiny tensors one thread is faster, and far faster on a busy
    machine, where the threads of a pool wait for each other (measured: 3.6 s instead of 32 s for
    the K-Net loss test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cfg(config_file=None, opts=()):
    cfg = get_cfg()
    add_sfnet_config(cfg)
    if config_file:
        cfg.merge_from_file(os.path.join(ROOT, config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A tiny demo dataset (8 train, 4 val images of 128x256), generated once per test session."""
    from sfnet_d2.data import generate_demo_cityscapes

    root = str(tmp_path_factory.mktemp("datasets") / "sfnet_demo_cityscapes")
    generate_demo_cityscapes(root, num_train=8, num_val=4, height=128, width=256, seed=1)
    return root


@pytest.fixture(scope="session")
def demo_datasets(demo_root):
    """Register the tiny demo data under test-only dataset names; returns (train, val) names."""
    from sfnet_d2.data.datasets import register_cityscapes_semantic

    names = []
    for split in ("train", "val"):
        name = f"test_demo_{split}"
        register_cityscapes_semantic(name, os.path.join(demo_root, "leftImg8bit", split),
                                     os.path.join(demo_root, "gtFine", split))
        names.append(name)
    return tuple(names)
