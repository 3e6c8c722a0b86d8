"""The config keys sfnet-d2 adds to detectron2's (``add_sfnet_config``), the keys renamed since
earlier versions (``RENAMED_KEYS``, ``check_renamed_keys``) and the checks that run on a config
before any data is read (``check_config``)."""
from sfnet_d2.config.checks import check_config
from sfnet_d2.config.defaults import add_sfnet_config
from sfnet_d2.config.renamed_keys import RENAMED_KEYS, check_renamed_keys

__all__ = ["add_sfnet_config", "check_config", "check_renamed_keys", "RENAMED_KEYS"]
