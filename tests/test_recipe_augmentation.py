"""The training augmentations (docs/TRAINING.md): alignment of image, label and centroid through
scale/pad/crop/flip, centroid-aware crops, and the image-only colour jitter and Gaussian blur."""
import math

import numpy as np
import pytest
from detectron2.data import transforms as T
from PIL import Image

from helpers import make_cfg
from sfnet_d2.data import SFNetSemanticDatasetMapper
from sfnet_d2.data.transforms import (
    CentroidAugInput,
    ColorJitterTransform,
    GaussianBlurTransform,
    PadToSize,
    build_sfnet_train_augmentations,
)

NUM_CLASSES = 19
IGNORE = 255


def _palette():
    rng = np.random.default_rng(0)
    while True:  # colours at least 40 apart in some channel, none of them black (the padding)
        pal = rng.integers(40, 256, size=(NUM_CLASSES, 3))
        d = np.abs(pal[:, None, :] - pal[None, :, :]).max(-1) + np.eye(NUM_CLASSES, dtype=int) * 999
        if d.min() >= 40:
            return pal.astype(np.uint8)


PALETTE = _palette()


def _blocks(h=96, w=128, block=24):
    """A label of constant blocks and the image that is its colour coding: label = f(image)."""
    y, x = np.mgrid[0:h, 0:w]
    label = (((y // block) * 7 + (x // block) * 3) % NUM_CLASSES).astype(np.uint8)
    return PALETTE[label], label


def _interior(label, r=3):
    """Pixels whose (2r+1)^2 neighbourhood has one label value, not the ignore value."""
    h, w = label.shape
    pad = np.pad(label.astype(np.int32), r, mode="constant", constant_values=-1)
    same = np.ones_like(label, dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            same &= pad[r + dy:r + dy + h, r + dx:r + dx + w] == label
    return same & (label != IGNORE)


@pytest.mark.parametrize("pad_mode", ["centered", "bottom_right"])
def test_scale_pad_crop_flip_keep_image_label_and_centroid_aligned(pad_mode):
    image, label = _blocks()
    augs = T.AugmentationList(build_sfnet_train_augmentations(
        (0.5, 2.0), (64, 64), 0.5, IGNORE, pad_mode=pad_mode))
    checked = padded = flipped = 0
    for seed in range(40):
        np.random.seed(seed)
        # a centroid in the middle of a block: after augmentation it must still be on that class
        cx, cy = 12 + 24 * (seed % 5), 12 + 24 * (seed % 4)
        inp = CentroidAugInput(image.copy(), sem_seg=label.copy(), centroid=(cx + 0.5, cy + 0.5))
        tfms = augs(inp)
        out_img, out_lab = inp.image, inp.sem_seg
        assert out_img.shape == (64, 64, 3) and out_lab.shape == (64, 64)
        inner = _interior(out_lab)
        assert inner.mean() > 0.05, seed
        err = np.abs(out_img[inner].astype(int) - PALETTE[out_lab[inner]].astype(int)).max()
        assert err <= 3, (seed, err)  # the colour at every interior pixel codes its label
        pad = out_lab == IGNORE
        assert (out_img[pad] == 0).all()
        padded += int(pad.any())
        flipped += any(isinstance(t, T.HFlipTransform) for t in tfms.transforms)
        x, y = (int(math.floor(v)) for v in inp.centroid)
        assert 0 <= x < 64 and 0 <= y < 64, (seed, inp.centroid)  # crop contains the centroid
        assert out_lab[y, x] == label[cy, cx], seed
        checked += int(inner.sum())
    assert padded >= 5 and 5 <= flipped <= 35 and checked > 10000


def test_centered_padding_matches_the_official_rule():
    img = np.full((10, 30, 3), 7, np.uint8)
    tfm = PadToSize((16, 40), seg_pad_value=IGNORE, mode="centered").get_transform(img)
    # official RandomCrop(nopad=False): (16 - 10) // 2 + 1 = 4 rows, (40 - 30) // 2 + 1 = 6 columns
    assert (tfm.x0, tfm.y0, tfm.x1, tfm.y1) == (6, 4, 6, 4)
    out = tfm.apply_image(img)
    assert out.shape == (18, 42, 3) and out[4:14, 6:36].min() == 7 and out.sum() == img.sum()
    assert (tfm.apply_segmentation(np.zeros((10, 30), np.uint8)) == IGNORE).sum() == 18 * 42 - 300
    with pytest.raises(ValueError, match="PAD_MODE"):
        PadToSize((16, 40), mode="middle")


def _write_pair(tmp_path, image, label):
    img_file, lab_file = str(tmp_path / "img.png"), str(tmp_path / "lab.png")
    Image.fromarray(image).save(img_file)
    Image.fromarray(label).save(lab_file)
    h, w = label.shape
    return {"file_name": img_file, "sem_seg_file_name": lab_file, "height": h, "width": w}


def test_mapper_crops_around_the_centroid(tmp_path):
    # one rare-class blob of 6x6 pixels in a 160x320 image; 48x48 crops at scales 0.5-2
    label = np.zeros((160, 320), np.uint8)
    label[120:126, 290:296] = 12
    record = _write_pair(tmp_path, PALETTE[label], label)
    cfg = make_cfg("configs/Base-SFNet.yaml", [
        "INPUT.SFNET.CROP_SIZE", [48, 48], "DATASETS.TRAIN", (), "DATASETS.TEST", ()])
    mapper = SFNetSemanticDatasetMapper(cfg, True)
    with_centroid = dict(record, sfnet_centroid=(292, 122), sfnet_centroid_class=12)
    hits = plain_hits = 0
    for seed in range(30):
        np.random.seed(seed)
        out = mapper(with_centroid)
        assert "sfnet_centroid" not in out and out["sem_seg"].shape == (48, 48)
        hits += int((out["sem_seg"] == 12).any())
        np.random.seed(seed)
        plain_hits += int((mapper(record)["sem_seg"] == 12).any())
    assert hits == 30 and plain_hits <= 10, (hits, plain_hits)


def test_colour_jitter_and_blur_change_the_image_only(tmp_path):
    image, label = _blocks(160, 200, 20)
    record = _write_pair(tmp_path, image, label)
    outs = {}
    for photometric in (True, False):
        cfg = make_cfg("configs/Base-SFNet.yaml", [
            "INPUT.SFNET.CROP_SIZE", [64, 96], "DATASETS.TRAIN", (), "DATASETS.TEST", (),
            "INPUT.SFNET.COLOR_JITTER.ENABLED", photometric,
            "INPUT.SFNET.GAUSSIAN_BLUR.ENABLED", photometric])
        mapper = SFNetSemanticDatasetMapper(cfg, True)
        outs[photometric] = []
        for seed in range(8):
            np.random.seed(seed)  # same geometric draws: they come before the photometric ones
            outs[photometric].append(mapper(record))
    for on, off in zip(outs[True], outs[False]):
        assert (on["sem_seg"] == off["sem_seg"]).all()
        assert on["image"].dtype == off["image"].dtype == __import__("torch").uint8
        assert on["image"].shape == off["image"].shape
        assert (on["image"].int() - off["image"].int()).abs().float().mean() > 1.0


def test_colour_jitter_hand_computed_values():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0] = 100
    img[1] = (50, 150, 200)
    bright = ColorJitterTransform(brightness=1.2).apply_image(img)
    assert np.abs(bright.astype(int) - np.clip(np.round(img * 1.2), 0, 255)).max() <= 1
    # saturation 0: every channel becomes the ITU-R 601 luma (PIL "L")
    grey = ColorJitterTransform(saturation=0.0).apply_image(img)
    c = img.astype(float)
    luma = (c[..., 0] * 299 + c[..., 1] * 587 + c[..., 2] * 114) / 1000
    assert np.abs(grey.astype(float) - luma[..., None]).max() <= 1
    # contrast 0.5 around the mean luma: 100 -> mean + 0.5 (100 - mean)
    two = np.array([[[50, 50, 50], [150, 150, 150]]], np.uint8)
    con = ColorJitterTransform(contrast=0.5).apply_image(two)
    assert np.abs(con[0, :, 0].astype(int) - [75, 125]).max() <= 1
    # hue shifted by half a turn: red -> cyan; no shift: unchanged
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert np.abs(ColorJitterTransform(hue=0.5).apply_image(red).astype(int) - [0, 255, 255]).max() <= 8
    assert (ColorJitterTransform(hue=0.0).apply_image(red) == red).all()
    # BGR input: the same operation on the reversed channels
    bgr = ColorJitterTransform(hue=0.5, image_format="BGR").apply_image(red[..., ::-1].copy())
    assert np.abs(bgr[..., ::-1].astype(int) - [0, 255, 255]).max() <= 8
    # image only
    seg = np.arange(4, dtype=np.uint8).reshape(2, 2)
    assert (ColorJitterTransform(brightness=0.5).apply_segmentation(seg) == seg).all()


def test_gaussian_blur_hand_computed_impulse_response():
    sigma = 1.0
    img = np.zeros((21, 21, 3), np.uint8)
    img[10, 10] = 255
    out = GaussianBlurTransform(sigma).apply_image(img)
    radius = int(4 * sigma + 0.5)  # scipy's truncate=4: taps -4..4
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w = taps / taps.sum()
    expected = np.rint(255 * np.outer(w, w))
    assert (out[10 - radius:11 + radius, 10 - radius:11 + radius, 1] == expected).all()
    assert out.dtype == np.uint8 and (out[..., 0] == out[..., 2]).all()  # channels separate
    flat = np.full((9, 9, 3), 200, np.uint8)
    assert (GaussianBlurTransform(1.3).apply_image(flat) == 200).all()
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    blurred = GaussianBlurTransform(1.3).apply_image(noisy)
    assert blurred.dtype == np.uint8 and blurred.std() < noisy.std() / 2
    assert blurred.min() >= noisy.min() and blurred.max() <= noisy.max()
