"""Config faults are reported before any data is read, naming the key."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT
from sfnet_d2.config.checks import ConfigConsistencyError, check_config
from sfnet_d2.engine import build_config

LITE = "configs/cityscapes/semantic/sfnet_lite_R18.yaml"


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="command line: .*MODEL.SFNET.FLOW_KERNEL"):
        build_config(os.path.join(ROOT, LITE), ["MODEL.SFNET.FLOW_KERNEL", "5"])


def test_wrong_type_is_named():
    with pytest.raises(ValueError, match="MODEL.SFNET.FLOW_KERNEL_SIZE"):
        build_config(os.path.join(ROOT, LITE), ["MODEL.SFNET.FLOW_KERNEL_SIZE", "'three'"])


def test_head_that_does_not_fit_the_backbone_is_named():
    cfg = build_config(os.path.join(ROOT, LITE),
                       ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']"])
    with pytest.raises(ConfigConsistencyError, match="IN_FEATURES"):
        check_config(cfg)
    cfg = build_config(os.path.join(ROOT, "configs/cityscapes/semantic/sfnet_DF1.yaml"),
                       ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']"])
    with pytest.raises(ConfigConsistencyError, match="res2"):
        check_config(cfg)


def test_class_count_and_ignore_value_against_the_dataset(demo_datasets):
    train, val = demo_datasets
    cfg = build_config(os.path.join(ROOT, LITE), ["DATASETS.TRAIN", f"('{train}',)",
                                                  "DATASETS.TEST", f"('{val}',)"])
    check_config(cfg)  # 19 classes, ignore 255: consistent
    cfg = build_config(os.path.join(ROOT, LITE), ["DATASETS.TRAIN", f"('{train}',)",
                                                  "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "11"])
    with pytest.raises(ConfigConsistencyError,
                       match=rf"NUM_CLASSES=11 but dataset {train} \(DATASETS.TRAIN\) has 19"):
        check_config(cfg)
    cfg = build_config(os.path.join(ROOT, LITE), ["DATASETS.TEST", f"('{val}',)",
                                                  "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0"])
    with pytest.raises(ConfigConsistencyError, match="IGNORE_VALUE=0"):
        check_config(cfg)


@pytest.mark.slow
def test_train_net_reports_the_config_fault_before_reading_data(tmp_path):
    # the dataset root does not exist: had data been read first, the error would be about it
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "projects/SFNet/train_net.py"), "--config-file",
         os.path.join(ROOT, LITE), "OUTPUT_DIR", str(tmp_path / "out"),
         "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res3', 'res5']"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    # one message, no traceback (sfnet_d2.engine.command_line): the config check names the key
    assert "train_net.py: error: " in proc.stderr and "IN_FEATURES" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "does not exist" not in proc.stderr


def test_unknown_key_in_a_yaml_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.join(ROOT, LITE)}"\nMODEL:\n  SFNET:\n    PPM_BIN: [1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.yaml.*MODEL\.SFNET\.PPM_BIN"):
        build_config(str(bad))
