"""Class-name weight transfer (COCO -> Cityscapes): exactly the rows of same-name classes are copied."""
import pytest
import torch
from detectron2.modeling import build_model

from helpers import tiny_knet_cfg
from sfnet_d2.modeling.meta_arch.knet import KNetClassLayout
from sfnet_d2.converters.knet_class_transfer import (CLASS_DEPENDENT_PATTERN, match_classes_by_name,
                                                    transfer_knet_weights)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny tensors

SOURCE = "sfnet_demo_coco_panoptic_train"       # person, car | road, tree, sky, pavement, ...
TARGET = "cityscapes_fine_panoptic_train"         # stuff first: road, sidewalk, ... | person, ...


@pytest.fixture(scope="module")
def states():
    torch.manual_seed(0)
    source = build_model(tiny_knet_cfg(SOURCE)).state_dict()
    source = {k: v + 1.0 if v.is_floating_point() else v for k, v in source.items()}  # "trained"
    target = build_model(tiny_knet_cfg(TARGET)).state_dict()
    return source, target


def test_names_matched_with_kind():
    src, tgt = KNetClassLayout.from_metadata(SOURCE), KNetClassLayout.from_metadata(TARGET)
    pairs = match_classes_by_name(src, tgt)
    # Cityscapes internal order: 8 things (person first, car 3rd) then 11 stuff (road first)
    assert pairs == [(0, 0, "person"), (2, 1, "car"), (8, 2, "road")]


def test_copy_matching_copies_exactly_the_matching_rows(states):
    source, target = states
    src, tgt = KNetClassLayout.from_metadata(SOURCE), KNetClassLayout.from_metadata(TARGET)
    out, report = transfer_knet_weights(source, target, src, tgt, "copy_matching")
    assert report["copied_classes"] == [("person", "person"), ("car", "car"), ("road", "road")]
    assert len(report["reinitialized_classes"]) == 16
    class_dependent = [k for k in target if CLASS_DEPENDENT_PATTERN.match(k)]
    assert sorted(class_dependent) == sorted(report["class_dependent"]) == [
        "kernel_head.conv_seg.bias", "kernel_head.conv_seg.weight",
        "stages.0.fc_cls.bias", "stages.0.fc_cls.weight",
        "stages.1.fc_cls.bias", "stages.1.fc_cls.weight"]
    copied = {0: 0, 2: 1, 8: 2}
    for name in class_dependent:
        assert out[name].shape[0] == 19
        for row in range(19):
            expected = source[name][copied[row]] if row in copied else target[name][row]
            assert torch.equal(out[name][row], expected), (name, row)
    for name in target:
        if name not in class_dependent:
            assert torch.equal(out[name], source[name]), name


def test_reinit_keeps_every_class_row_fresh(states):
    source, target = states
    src, tgt = KNetClassLayout.from_metadata(SOURCE), KNetClassLayout.from_metadata(TARGET)
    out, report = transfer_knet_weights(source, target, src, tgt, "reinit")
    assert report["copied_classes"] == [] and len(report["reinitialized_classes"]) == 19
    assert torch.equal(out["kernel_head.conv_seg.weight"], target["kernel_head.conv_seg.weight"])
    assert torch.equal(out["stages.1.fc_cls.bias"], target["stages.1.fc_cls.bias"])
    assert torch.equal(out["kernel_head.init_kernels.weight"],
                       source["kernel_head.init_kernels.weight"])
    with pytest.raises(ValueError, match="TRANSFER_CLASS_WEIGHTS"):
        transfer_knet_weights(source, target, src, tgt, "copy")


def test_other_architecture_is_refused(states):
    source, target = states
    src, tgt = KNetClassLayout.from_metadata(SOURCE), KNetClassLayout.from_metadata(TARGET)
    broken = {k: v for k, v in source.items() if not k.startswith("stages.1.")}
    with pytest.raises(ValueError, match="missing.*stages.1"):
        transfer_knet_weights(broken, target, src, tgt)
    wrong = dict(source, **{"kernel_head.init_kernels.weight": torch.zeros(7, 32, 1, 1)})
    with pytest.raises(ValueError, match="init_kernels.weight: source shape"):
        transfer_knet_weights(wrong, target, src, tgt)
