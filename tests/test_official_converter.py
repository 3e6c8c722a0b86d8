"""The official-checkpoint converter, on files made here in every official layout."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import ROOT, make_cfg
from sfnet_d2.converters import (
    OFFICIAL_ARCHS,
    ConversionError,
    convert_official_state_dict,
    invert_mapping,
    read_official_checkpoint,
    resolve_arch,
)

KEYS_DIR = os.path.join(ROOT, "tests", "data", "official_keys")
# Key/shape lists of the official models' state_dicts (measured by running
# lxtGH/SFSegNets@ba475ba), stored in tests/data/official_keys/.
KEY_FILES = {
    "DeepR18_SF_deeply": "keys_sfnet_r18_v1.txt",
    "DeepR18_SFV2_deeply_dsn_FA_Atten": "keys_sfnet_lite_r18_v2.txt",
    "AlignedSTDC1": "keys_sfnet_stdc1_v1.txt",
    "AlignedSTDC2": "keys_sfnet_stdc2_v1.txt",
    "AlignedSTDC1_SFV2_spatial_atten": "keys_sfnet_lite_stdc1_v2.txt",
    "AlignedSTDC2_SFV2_spatial_atten": "keys_sfnet_lite_stdc2_v2.txt",
    "AlignedDFnetv1": "keys_sfnet_df1.txt",
    "AlignedDFnetv2": "keys_sfnet_df2.txt",
}
CONVERT = os.path.join(ROOT, "projects", "SFNet", "convert_official.py")


def fake_official_state_dict(factory, seed=0):
    """Random tensors with the official keys and shapes; aliases share their original's values;
    BatchNorm statistics are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in open(os.path.join(KEYS_DIR, KEY_FILES[factory])):
        if line.startswith("#"):
            continue
        key, shape, _ = line.rstrip("\n").split("\t")[:3]
        alias = re.search(r"# alias of (\S+)", line)
        shape = tuple(int(x) for x in re.findall(r"\d+", shape))
        if alias:
            state[key] = state[alias.group(1)]
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def our_shapes(factory, deep_supervision=False):
    arch = resolve_arch(factory)
    model = build_model(make_cfg(arch.config, ["MODEL.SFNET.DEEP_SUPERVISION", deep_supervision]))
    return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("factory", sorted(KEY_FILES))
def test_every_official_key_is_consumed_and_the_round_trip_is_exact(factory):
    official = fake_official_state_dict(factory)
    model, shapes = our_shapes(factory)
    result = convert_official_state_dict(official, resolve_arch(factory), shapes)
    # every one of our keys is filled, with the right shape (else ConversionError)
    assert set(result.state_dict) == set(shapes)
    incompatible = model.load_state_dict(result.state_dict, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    # every official key is mapped, dropped with a reason, or a verified alias: nothing ignored
    consumed = ({o for o, _ in result.mapped} | {d for d, _, _ in result.dropped}
                | {a for a, _ in result.aliases})
    assert consumed == set(official)
    # ours -> official is exact for every mapped key
    back = {official_key: result.state_dict[ours] for ours, official_key in
            invert_mapping(result).items()}
    assert all(torch.equal(back[k], official[k]) for k in back)
    assert len(back) == len(result.mapped)


def test_dropped_weights_are_the_documented_unused_ones():
    official = fake_official_state_dict("DeepR18_SFV2_deeply_dsn_FA_Atten")
    _, shapes = our_shapes("DeepR18_SFV2_deeply_dsn_FA_Atten")
    result = convert_official_state_dict(official, resolve_arch("DeepR18_SFV2_deeply_dsn_FA_Atten"),
                                         shapes)
    dropped_params = sum(n for k, _, n in result.dropped
                         if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert dropped_params == 216_211  # official: dsn 150,291 + fpn_in.2 65,920, never used
    assert {k.split(".")[1] for k, _, _ in result.dropped} == {"dsn", "fpn_in"}


def test_deep_supervision_heads_are_kept_when_asked():
    official = fake_official_state_dict("DeepR18_SFV2_deeply_dsn_FA_Atten")
    _, shapes = our_shapes("DeepR18_SFV2_deeply_dsn_FA_Atten", deep_supervision=True)
    result = convert_official_state_dict(official, resolve_arch("DeepR18_SFV2_deeply_dsn_FA_Atten"),
                                         shapes, deep_supervision=True)
    assert torch.equal(result.state_dict["sem_seg_head.dsn_heads.0.2.weight"], official["head.dsn.4.weight"])


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "ddp"])
def test_layouts_of_released_files(layout, tmp_path):
    official = fake_official_state_dict("DeepR18_SF_deeply")
    if layout == "ddp":
        payload = {"state_dict": {"module." + k: v for k, v in official.items()}, "epoch": 3}
    elif layout == "bare":
        payload = official
    else:
        payload = {layout: official}
    path = tmp_path / "official.pth"
    torch.save(payload, path)
    read = read_official_checkpoint(str(path))
    assert set(read) == set(official) and all(torch.equal(read[k], official[k]) for k in official)


@pytest.mark.slow
def test_cli_writes_a_checkpoint_detectron2_loads_and_evaluates_identically(tmp_path):
    official = fake_official_state_dict("DeepR18_SF_deeply")
    src, dst = tmp_path / "sfnet_r18.pth", tmp_path / "converted.pth"
    torch.save({"state_dict": official}, src)
    proc = subprocess.run([sys.executable, CONVERT, "--arch", "network.sfnet_resnet.DeepR18_SF_deeply",
                           str(src), str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mapped 224 tensors (12,869,715 parameters)" in proc.stdout
    model = build_model(make_cfg(OFFICIAL_ARCHS["DeepR18_SF_deeply"].config)).eval()
    loaded = DetectionCheckpointer(model)._load_file(str(dst))
    incompatible = model.load_state_dict(loaded["model"], strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert torch.equal(model.backbone.stem.conv1.weight, official["layer0.0.0.weight"])
    assert torch.equal(model.sem_seg_head.neck.align_modules[2].flow_make.weight,
                       official["head.fpn_out_align.2.flow_make.weight"])
    # refuses to overwrite what exists
    proc = subprocess.run([sys.executable, CONVERT, "--arch", "DeepR18_SF_deeply", str(src), str(dst)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr


@pytest.mark.slow
def test_wrong_arch_lists_the_problems_and_writes_nothing(tmp_path):
    src, dst = tmp_path / "lite.pth", tmp_path / "out.pth"
    torch.save(fake_official_state_dict("DeepR18_SFV2_deeply_dsn_FA_Atten"), src)
    proc = subprocess.run([sys.executable, CONVERT, "--arch", "DeepR18_SF_deeply", str(src), str(dst)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "missing keys of our model" in proc.stderr and "sem_seg_head.neck.output_convs.0.weight" in proc.stderr
    assert "unexpected official keys" in proc.stderr and "head.flow_align_module.flow_gate.0.weight" in proc.stderr
    assert "nothing was written" in proc.stderr and not dst.exists()


def test_shape_mismatch_is_listed():
    official = fake_official_state_dict("DeepR18_SF_deeply")
    official["head.conv_last.0.0.weight"] = torch.zeros(128, 256, 3, 3)
    _, shapes = our_shapes("DeepR18_SF_deeply")
    with pytest.raises(ConversionError, match=r"shape mismatches:\n.*head.conv_last.0.0.weight"):
        convert_official_state_dict(official, resolve_arch("DeepR18_SF_deeply"), shapes)


def test_damaged_and_unsafe_files_are_refused(tmp_path):
    damaged = tmp_path / "damaged.pth"
    torch.save(fake_official_state_dict("DeepR18_SF_deeply"), damaged)
    damaged.write_bytes(damaged.read_bytes()[:5000])
    with pytest.raises(ConversionError, match="damaged"):
        read_official_checkpoint(str(damaged))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse_namespace()}, unsafe)
    with pytest.raises(ConversionError, match="arbitrary code"):
        read_official_checkpoint(str(unsafe))


def argparse_namespace():
    import argparse

    return argparse.Namespace(arch="x")  # official files that pickled their args look like this


def test_unknown_arch_lists_the_supported_ones():
    with pytest.raises(ConversionError, match="AlignedDFnetv2"):
        resolve_arch("network.sfnet_resnet.DeepR34")
    assert resolve_arch("network.sfnet_stdcnet.AlignedSTDC2").config.endswith("sfnet_STDC2.yaml")


def test_backbone_only_imagenet_file(tmp_path):
    # ImageNet deep-stem ResNet-18 layout: conv1.{0,1,3,4,6}, bn1, layer1..4, fc
    official = fake_official_state_dict("DeepR18_SF_deeply")
    imagenet = {}
    for k, v in official.items():
        if k.startswith("layer0.0."):
            imagenet["conv1." + k[len("layer0.0."):]] = v
        elif k.startswith("layer0.1."):
            imagenet["bn1." + k[len("layer0.1."):]] = v
        elif k.startswith("layer"):
            imagenet[k] = v
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    model, shapes = our_shapes("DeepR18_SF_deeply")
    result = convert_official_state_dict(imagenet, resolve_arch("DeepR18_SF_deeply"), shapes,
                                         backbone_only=True)
    assert set(result.state_dict) == {k for k in shapes if k.startswith("backbone.")}
    assert [d[0] for d in result.dropped] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("factory,version", [("DeepR18_SF_deeply", "v1"),
                                             ("DeepR18_SFV2_deeply_dsn_FA_Atten", "v2")])
def test_converted_model_computes_the_official_forward(factory, version):
    """The contract on a second, functional implementation of the official network: same RGB
    uint8 image, non-trivial BatchNorm statistics, logits equal within 1e-4."""
    from official_reference import official_forward

    official = fake_official_state_dict(factory, seed=3)
    model, shapes = our_shapes(factory)
    model.load_state_dict(convert_official_state_dict(official, resolve_arch(factory), shapes).state_dict)
    model.eval()
    image = torch.randint(0, 256, (1, 3, 96, 160), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model([{"image": image[0]}])[0]["sem_seg"]
        ref = official_forward(image, official, version)[0]
    assert ours.shape == ref.shape == (19, 96, 160)
    assert ref.abs().max() > 0.1  # a non-degenerate network
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.slow
def test_eval_only_with_a_converted_checkpoint(demo_root, tmp_path):
    """train_net.py --eval-only MODEL.WEIGHTS converted.pth: loads with no missing/unexpected
    keys and evaluates (on the demo data, with the SFNet-Lite R18 demo config)."""
    src, dst = tmp_path / "lite.pth", tmp_path / "lite_d2.pth"
    torch.save({"model": fake_official_state_dict("DeepR18_SFV2_deeply_dsn_FA_Atten")}, src)
    proc = subprocess.run([sys.executable, CONVERT, "--arch", "DeepR18_SFV2_deeply_dsn_FA_Atten",
                           str(src), str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dropped 16 tensors (216,211 parameters)" in proc.stdout  # dsn + fpn_in.2, unused
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(demo_root))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "projects", "SFNet", "train_net.py"), "--eval-only",
         "--config-file", os.path.join(ROOT, "configs", "demo", "sfnet_lite_R18_demo.yaml"),
         "MODEL.WEIGHTS", str(dst), "OUTPUT_DIR", str(tmp_path / "eval")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "copypaste: IoU,iIoU" in log
    assert "not found in the checkpoint" not in log and "not used by the model" not in log


@pytest.mark.parametrize("factory,classifier", [
    ("AlignedSTDC1", ["fc.weight", "linear.weight", "conv_last.conv.weight"]),
    ("AlignedDFnetv2", ["fc.weight", "fc.bias"]),
])
def test_backbone_only_stdc_and_dfnet_imagenet_files(factory, classifier):
    official = fake_official_state_dict(factory)
    imagenet = {k[len("backbone."):]: v for k, v in official.items() if k.startswith("backbone.")}
    for k in classifier:
        imagenet.setdefault(k, torch.zeros(3))
    _, shapes = our_shapes(factory)
    result = convert_official_state_dict(imagenet, resolve_arch(factory), shapes, backbone_only=True)
    assert set(result.state_dict) == {k for k in shapes if k.startswith("backbone.")}
    assert set(classifier) <= {d[0] for d in result.dropped}
