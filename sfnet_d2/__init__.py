"""
sfnet-d2: SFNet and SFNet-Lite (semantic flow) as a detectron2 extension.
Importing this package registers the backbones, necks, heads and datasets.
"""
from sfnet_d2 import data  # noqa: F401  (registers the demo datasets)
from sfnet_d2 import modeling  # noqa: F401  (registers backbones and heads)
from sfnet_d2.config.defaults import add_sfnet_config

__version__ = "0.1.0"
__all__ = ["add_sfnet_config"]
