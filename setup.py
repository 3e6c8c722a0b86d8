#!/usr/bin/env python
"""sfnet-d2: SFNet / SFNet-Lite semantic segmentation as a detectron2 extension.

torch, torchvision and detectron2 are not listed: detectron2 is not on PyPI under its own name;
dev/install.sh installs all three (see INSTALL.md).
"""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith("pytest")
]

setup(
    name="sfnet-d2",
    version="0.1.0",
    description="SFNet and SFNet-Lite (semantic flow segmentation) for detectron2",
    packages=find_packages(include=["sfnet_d2", "sfnet_d2.*"]),
    # label mapping tables (CSV data read by sfnet_d2.data.datasets), for non-editable installs
    package_data={"sfnet_d2": ["data/label_mappings/*.csv"]},
    python_requires=">=3.9",
    install_requires=requirements,
)
