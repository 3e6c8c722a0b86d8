"""The config keys sfnet-d2 adds to detectron2's (``add_sfnet_config``) and the checks that run
on a config before any data is read (``check_config``)."""
from sfnet_d2.config.defaults import add_sfnet_config
from sfnet_d2.config.checks import check_config

__all__ = ["add_sfnet_config", "check_config"]
