"""MiT / SegFormer weight conversion (sfnet_d2/converters/mit_converter.py, convert_mit.py): files
in the official NVlabs/SegFormer layout and in the transformers layout, written here from a random
model by a key mapping of the test's own, are converted, loaded and compared, output against
output; the official-layout encoder is also run by an independent functional implementation of the
official forward. Mismatched and foreign files are refused with the offending keys listed."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import ROOT, make_cfg
from sfnet_d2.converters.mit_converter import (ConversionError, convert_mit_state_dict,
                                               detect_mit_layout, infer_mit_variant,
                                               mit_target_shapes, read_mit_checkpoint)
from sfnet_d2.modeling.backbone.mit import MIT_LAYOUTS

CONVERT_MIT = os.path.join(ROOT, "projects", "SFNet", "convert_mit.py")

NUM_CLASSES = 7


def _random_segformer(name="B0", seed=0):
    """SegFormer (MiT + all-MLP decoder) with every parameter and BN statistic random, in eval mode."""
    torch.manual_seed(seed)
    cfg = make_cfg("configs/ade20k/semantic/segformer_B0.yaml",
                   ["MODEL.MIT.NAME", name, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES])
    model = build_model(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            for key, p in module.named_parameters(recurse=False):
                is_norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))
                scale = 0.3 if is_norm else 0.1
                p.copy_(torch.randn_like(p) * scale + (1.0 if is_norm and key == "weight" else 0.0))
        bn = model.sem_seg_head.fuse.norm
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return cfg, model


# ---- the test's own key mapping, from our modules to each released layout ----------------------
def _official_keys(model, with_head):
    """ours -> official NVlabs/SegFormer names, walking our modules stage by stage."""
    sd = model.state_dict()
    out, prefix = {}, "backbone." if with_head else ""
    for s in range(1, 5):
        stage = f"backbone.res{s + 1}."
        for p in ("weight", "bias"):
            out[f"{prefix}patch_embed{s}.proj.{p}"] = sd[stage + f"patch_embed.proj.{p}"]
            out[f"{prefix}patch_embed{s}.norm.{p}"] = sd[stage + f"patch_embed.norm.{p}"]
            out[f"{prefix}norm{s}.{p}"] = sd[stage + f"norm.{p}"]
        for j in range(len(getattr(model.backbone, f"res{s + 1}").blocks)):
            for ours, theirs in [("norm1", "norm1"), ("norm2", "norm2"), ("attn.q", "attn.q"),
                                 ("attn.kv", "attn.kv"), ("attn.proj", "attn.proj"),
                                 ("attn.sr", "attn.sr"), ("attn.sr_norm", "attn.norm"),
                                 ("mlp.fc1", "mlp.fc1"), ("mlp.dwconv", "mlp.dwconv.dwconv"),
                                 ("mlp.fc2", "mlp.fc2")]:
                for p in ("weight", "bias"):
                    key = stage + f"blocks.{j}.{ours}.{p}"
                    if key in sd:  # the last stage (sr ratio 1) has no sr conv
                        out[f"{prefix}block{s}.{j}.{theirs}.{p}"] = sd[key]
    if with_head:
        for i in range(4):
            for p in ("weight", "bias"):
                out[f"decode_head.linear_c{i + 1}.proj.{p}"] = sd[f"sem_seg_head.linear_c.{i}.{p}"]
        out["decode_head.linear_fuse.conv.weight"] = sd["sem_seg_head.fuse.weight"]
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"decode_head.linear_fuse.bn.{p}"] = sd[f"sem_seg_head.fuse.norm.{p}"]
        for p in ("weight", "bias"):
            out[f"decode_head.linear_pred.{p}"] = sd[f"sem_seg_head.predictor.{p}"]
        out["decode_head.conv_seg.weight"] = torch.randn(NUM_CLASSES, 128, 1, 1)  # never called
        out["decode_head.conv_seg.bias"] = torch.randn(NUM_CLASSES)
    else:
        width = sd["backbone.res5.norm.weight"].shape[0]
        out["head.weight"] = torch.randn(1000, width)  # the ImageNet classifier of mit_b*.pth
        out["head.bias"] = torch.randn(1000)
    return out


def _hf_keys(official, with_head):
    """official -> transformers names (key/value split from kv), by string rewriting."""
    out = {}
    for key, value in official.items():
        k = key[len("backbone."):] if key.startswith("backbone.") else key
        if k.startswith("patch_embed"):
            s, rest = int(k[len("patch_embed")]), k.split(".", 1)[1]
            rest = rest.replace("norm.", "layer_norm.")
            out[f"segformer.encoder.patch_embeddings.{s - 1}.{rest}"] = value
        elif k.startswith("block"):
            s, j, rest = k[len("block")], k.split(".")[1], k.split(".", 2)[2]
            base = f"segformer.encoder.block.{int(s) - 1}.{j}."
            if rest.startswith("attn.kv."):
                half = value.shape[0] // 2
                out[base + "attention.self.key." + rest[8:]] = value[:half]
                out[base + "attention.self.value." + rest[8:]] = value[half:]
                continue
            for theirs, hf in [("norm1.", "layer_norm_1."), ("norm2.", "layer_norm_2."),
                               ("attn.q.", "attention.self.query."), ("attn.sr.", "attention.self.sr."),
                               ("attn.norm.", "attention.self.layer_norm."),
                               ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "mlp.dense1."),
                               ("mlp.fc2.", "mlp.dense2."), ("mlp.dwconv.", "mlp.dwconv.")]:
                if rest.startswith(theirs):
                    out[base + hf + rest[len(theirs):]] = value
                    break
            else:
                raise AssertionError(key)
        elif k.startswith("norm"):
            out[f"segformer.encoder.layer_norm.{int(k[4]) - 1}.{k.split('.')[1]}"] = value
        elif k.startswith("head."):
            out["classifier." + k[5:]] = value
        elif k.startswith("decode_head.linear_c"):
            out[f"decode_head.linear_c.{int(k[20]) - 1}.proj.{k.split('.')[-1]}"] = value
        elif k == "decode_head.linear_fuse.conv.weight":
            out["decode_head.linear_fuse.weight"] = value
        elif k.startswith("decode_head.linear_fuse.bn."):
            out["decode_head.batch_norm." + k.split(".")[-1]] = value
        elif k.startswith("decode_head.linear_pred."):
            out["decode_head.classifier." + k.split(".")[-1]] = value
        elif not k.startswith("decode_head.conv_seg"):  # transformers has no conv_seg
            raise AssertionError(key)
    return out


def _official_mit_forward(sd, x, name):
    """The official MixVisionTransformer.forward_features, written with functional ops on the
    official keys (eps: 1e-5 patch-embedding and sr norms, 1e-6 block and stage norms)."""
    layout = MIT_LAYOUTS[name]
    outs = []
    for s in range(1, 5):
        kernel, stride = (7, 4) if s == 1 else (3, 2)
        x = F.conv2d(x, sd[f"patch_embed{s}.proj.weight"], sd[f"patch_embed{s}.proj.bias"],
                     stride=stride, padding=kernel // 2)
        n, c, h, w = x.shape
        t = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sd[f"patch_embed{s}.norm.weight"],
                         sd[f"patch_embed{s}.norm.bias"], eps=1e-5)
        heads, sr, d = layout.num_heads[s - 1], layout.sr_ratios[s - 1], c // layout.num_heads[s - 1]
        for j in range(layout.depths[s - 1]):
            p = lambda name: sd[f"block{s}.{j}.{name}"]  # noqa: E731
            y = F.layer_norm(t, (c,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
            q = F.linear(y, p("attn.q.weight"), p("attn.q.bias")).reshape(n, -1, heads, d)
            r = y
            if sr > 1:
                r = F.conv2d(y.transpose(1, 2).reshape(n, c, h, w), p("attn.sr.weight"),
                             p("attn.sr.bias"), stride=sr).flatten(2).transpose(1, 2)
                r = F.layer_norm(r, (c,), p("attn.norm.weight"), p("attn.norm.bias"), eps=1e-5)
            kv = F.linear(r, p("attn.kv.weight"), p("attn.kv.bias")).reshape(n, -1, 2, heads, d)
            att = torch.einsum("nqhd,nkhd->nhqk", q, kv[:, :, 0]) * d ** -0.5
            o = torch.einsum("nhqk,nkhd->nqhd", att.softmax(-1), kv[:, :, 1]).reshape(n, -1, c)
            t = t + F.linear(o, p("attn.proj.weight"), p("attn.proj.bias"))
            y = F.layer_norm(t, (c,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
            y = F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))
            y = F.conv2d(y.transpose(1, 2).reshape(n, -1, h, w), p("mlp.dwconv.dwconv.weight"),
                         p("mlp.dwconv.dwconv.bias"), padding=1, groups=y.shape[-1])
            y = F.gelu(y.flatten(2).transpose(1, 2))
            t = t + F.linear(y, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        t = F.layer_norm(t, (c,), sd[f"norm{s}.weight"], sd[f"norm{s}.bias"], eps=1e-6)
        x = t.transpose(1, 2).reshape(n, c, h, w)
        outs.append(x)
    return outs


def _convert_mit(*args):
    """projects/SFNet/convert_mit.py ARGS in a fresh process (the completed process)."""
    return subprocess.run([sys.executable, CONVERT_MIT, *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _convert(tmp_path, state, name="src.pth", *args):
    """``state`` saved as ``name`` and converted by convert_mit.py ``args``: the output file."""
    src, dst = str(tmp_path / name), str(tmp_path / "converted.pth")
    torch.save(state, src)
    proc = _convert_mit(src, dst, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dst


def _loaded_model(cfg, path):
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(path)
    return model


# ---------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def b0():
    return _random_segformer("B0")


@pytest.mark.slow
def test_official_imagenet_file_gives_the_official_forward(tmp_path, b0):
    cfg, model = b0
    official = _official_keys(model, with_head=False)
    assert detect_mit_layout(official) == "official" and infer_mit_variant(official, "official") == "B0"
    dst = _convert(tmp_path, official)  # mit_b0.pth is a bare state_dict
    loaded = _loaded_model(cfg.clone(), dst)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = loaded.backbone(x)
        reference = _official_mit_forward(official, x, "B0")
        original = model.backbone(x)
    for level, ref in zip(("res2", "res3", "res4", "res5"), reference):
        torch.testing.assert_close(ours[level], ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(ours[level], original[level])
    # only the backbone was in the file: the head keeps its own (random) init
    assert not torch.equal(loaded.sem_seg_head.predictor.weight, model.sem_seg_head.predictor.weight)


@pytest.mark.slow
def test_transformers_file_concatenates_key_and_value(tmp_path, b0):
    cfg, model = b0
    hf = _hf_keys(_official_keys(model, with_head=False), with_head=False)
    assert detect_mit_layout(hf) == "huggingface"
    assert not any(".kv." in k for k in hf)
    dst = _convert(tmp_path, hf, "pytorch_model.bin", "--variant", "B0")
    loaded = _loaded_model(cfg.clone(), dst)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    # a bare SegformerModel (no "segformer." prefix) is the same layout
    bare = {k[len("segformer."):] if k.startswith("segformer.") else k: v for k, v in hf.items()}
    result = convert_mit_state_dict(bare, mit_target_shapes("B0"))
    assert [r for r in result.dropped if r[0] == "classifier.weight"]
    assert set(result.state_dict) == set(mit_target_shapes("B0"))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["official", "huggingface"])
def test_complete_segformer_models_give_the_same_logits(tmp_path, b0, layout):
    cfg, model = b0
    state = _official_keys(model, with_head=True)
    if layout == "huggingface":
        state = _hf_keys(state, with_head=True)
    else:
        state = {"state_dict": state, "meta": {"iter": 160000}}  # mmseg checkpoint wrapper
    dst = _convert(tmp_path, state)
    loaded = _loaded_model(cfg.clone(), dst)
    image = {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}
    with torch.no_grad():
        torch.testing.assert_close(loaded([image])[0]["sem_seg"], model([image])[0]["sem_seg"],
                                   atol=1e-5, rtol=1e-5)
    saved = torch.load(dst, weights_only=True)
    assert saved["matching_heuristics"] is False and layout in saved["__author__"]
    # --backbone-only on the same file drops the decoder, with the reason
    src = str(tmp_path / "src.pth")
    proc = _convert_mit(src, tmp_path / "bb.pth", "--backbone-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    backbone = torch.load(tmp_path / "bb.pth", weights_only=True)["model"]
    assert set(backbone) == {k for k in saved["model"] if k.startswith("backbone.")}
    assert re.search(r"dropped \d+ tensors .*: decode head not converted \(backbone only\)",
                     proc.stdout), proc.stdout


def test_mismatched_files_are_refused_with_the_keys_listed(tmp_path, b0):
    _, model = b0
    official = _official_keys(model, with_head=False)
    broken = dict(official)
    del broken["block2.1.attn.kv.bias"]
    broken["block1.0.attn.q.weight"] = torch.zeros(32, 31)
    broken["block1.0.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(ConversionError) as err:
        convert_mit_state_dict(broken, mit_target_shapes("B0"))
    text = str(err.value)
    assert "1 missing keys of our model" in text and "backbone.res3.blocks.1.attn.kv.bias" in text
    assert "1 unexpected keys in the file" in text and "block1.0.attn.rel_pos" in text
    assert "1 shape mismatches" in text and "file (32, 31), ours (32, 32)" in text
    # a transformers file without a value half
    hf = _hf_keys(official, with_head=False)
    del hf["segformer.encoder.block.0.0.attention.self.value.weight"]
    with pytest.raises(ConversionError, match=r"block\.0\.0\.attention\.self\.key\.weight \(its "
                                              r"attention\.self\.value partner is missing\)"):
        convert_mit_state_dict(hf, mit_target_shapes("B0"))
    # B0 weights into a B1 model: every width differs
    with pytest.raises(ConversionError, match=r"shape mismatches"):
        convert_mit_state_dict(official, mit_target_shapes("B1"))


@pytest.mark.slow
def test_the_command_refuses_a_wrong_variant_a_damaged_file_and_an_existing_output(tmp_path, b0):
    _, model = b0
    # --variant is checked against the file, and nothing is written
    dst = tmp_path / "out.pth"
    torch.save(_official_keys(model, with_head=False), tmp_path / "mit_b0.pth")
    proc = _convert_mit(tmp_path / "mit_b0.pth", dst, "--variant", "B1")
    assert proc.returncode == 1 and "--variant B1 but" in proc.stderr, proc.stderr[-2000:]
    assert not dst.exists()
    # a truncated download
    torch.save({"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7)}, tmp_path / "bad.pth")
    data = (tmp_path / "bad.pth").read_bytes()
    (tmp_path / "bad.pth").write_bytes(data[: len(data) // 2])
    proc = _convert_mit(tmp_path / "bad.pth", tmp_path / "o.pth")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "damaged or not a PyTorch checkpoint" in proc.stderr
    # an existing output is kept unless --overwrite
    (tmp_path / "o.pth").write_bytes(b"keep")
    torch.save({"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7)}, tmp_path / "x.pth")
    proc = _convert_mit(tmp_path / "x.pth", tmp_path / "o.pth")
    assert proc.returncode == 1 and "pass --overwrite" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "o.pth").read_bytes() == b"keep"


def test_foreign_files_are_refused():
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}
    with pytest.raises(ConversionError, match=r"not a MiT / SegFormer checkpoint.*conv1\.weight"):
        detect_mit_layout(resnet)


def test_variant_is_read_from_the_file():
    with torch.device("meta"):
        for name in ("B1", "B3"):
            shapes = mit_target_shapes(name)
            fake = {k[len("backbone."):]: torch.empty(s) for k, s in shapes.items()}
            # our names are not a released layout; rename stage by stage like the official files
            official = {}
            for k, v in fake.items():
                stage, rest = int(k[3]) - 1, k.split(".", 1)[1]
                if rest.startswith("patch_embed."):
                    official[f"patch_embed{stage}.{rest.split('.', 1)[1]}"] = v
                elif rest.startswith("blocks."):
                    j, part = rest.split(".")[1], rest.split(".", 2)[2]
                    part = part.replace("sr_norm", "norm").replace("mlp.dwconv", "mlp.dwconv.dwconv")
                    official[f"block{stage}.{j}.{part}"] = v
                else:
                    official[f"norm{stage}.{rest.split('.', 1)[1]}"] = v
            assert infer_mit_variant(official, "official") == name


def test_safetensors_files(tmp_path, b0, monkeypatch):
    _, model = b0
    hf = {k: v.contiguous() for k, v in
          _hf_keys(_official_keys(model, with_head=False), with_head=False).items()}
    path = str(tmp_path / "model.safetensors")
    if importlib.util.find_spec("safetensors") is not None:
        from safetensors.torch import save_file

        save_file(hf, path)
        state = read_mit_checkpoint(path)
        assert set(state) == set(hf) and all(torch.equal(state[k], hf[k]) for k in hf)
    else:
        open(path, "wb").close()
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if the package were missing
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ConversionError, match=r"pip install safetensors"):
        read_mit_checkpoint(path)
