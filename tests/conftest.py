"""Shared fixtures: a small demo dataset in the Cityscapes layout, a root with every dataset name
registered under a temporary folder, one torch thread. Plain helpers are in helpers.py."""
import os

import pytest
import torch

import sfnet_d2  # noqa: F401  (registers the datasets and the models)

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


@pytest.fixture
def registered_root(tmp_path):
    """Every dataset name registered under tmp_path; the normal root is restored afterwards."""
    from sfnet_d2.data.datasets import datasets_root, register_all_datasets

    register_all_datasets(str(tmp_path))
    yield str(tmp_path)
    register_all_datasets(datasets_root())
