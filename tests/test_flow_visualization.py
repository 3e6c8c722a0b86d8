"""Semantic-flow pictures: the optical-flow colour coding on known flows, the flow's pixel units,
the arrows' direction, the alignment records of a real model and the PNG files written."""
import colorsys
import os

import numpy as np
import pytest
import torch
from helpers import make_cfg
from detectron2.modeling import build_model
from PIL import Image

from sfnet_d2.visualization.flow import (
    color_wheel,
    color_wheel_image,
    draw_flow_arrows,
    flow_in_image_pixels,
    flow_to_color,
    record_alignments,
    save_flow_pictures,
)
from sfnet_d2.modeling.alignment.flow_alignment import flow_warp


def _color(u, v, max_magnitude=1.0):
    return tuple(int(c) for c in flow_to_color(np.array([[[u]], [[v]]]), max_magnitude)[0, 0])


def _hue_sat(rgb):
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    return h * 360.0, s


# --- colour coding -----------------------------------------------------------------------

def test_color_wheel_segments():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)  # 15 + 6 + 4 + 11 + 13 + 6 (Baker et al. 2011)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])     # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # yellow
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])    # green
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])  # cyan
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])    # blue
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])  # magenta


def test_unit_flows_in_the_four_directions():
    # Hand-computed from the wheel: position = (atan2(-v, -u) / pi + 1) / 2 * 55, linear
    # interpolation between the two neighbouring wheel entries, full saturation at |f| = max.
    assert _color(1, 0) == (255, 0, 0)      # +x: position 0 (and 55 = 0), pure red, hue 0
    assert _color(0, 1) == (255, 234, 0)    # +y: 13.75 -> 0.25*(255,221,0) + 0.75*(255,238,0)
    assert _color(-1, 0) == (0, 198, 255)   # -x: 27.5 -> 0.5*(0,209,255) + 0.5*(0,186,255)
    assert _color(0, -1) == (103, 0, 255)   # -y: 41.25 -> 0.75*(98,0,255) + 0.25*(117,0,255)
    hues = [_hue_sat(_color(u, v))[0] for u, v in [(1, 0), (0, 1), (-1, 0), (0, -1)]]
    assert hues[0] == 0 and 50 < hues[1] < 60 and 190 < hues[2] < 200 and 260 < hues[3] < 270


def test_wheel_is_periodic_at_plus_x():
    # just above and just below the +x axis (and with a negative zero y) all give red
    for v in (1e-9, -1e-9, -0.0, 0.0):
        assert _color(1, v) == (255, 0, 0)


def test_zero_flow_is_white_and_saturation_grows_with_magnitude():
    assert _color(0, 0) == (255, 255, 255)
    for angle in np.linspace(0, 2 * np.pi, 7)[:-1]:
        sats, hues = [], []
        for r in np.linspace(0.1, 1.0, 10):
            hue, sat = _hue_sat(_color(r * np.cos(angle), r * np.sin(angle)))
            sats.append(sat)
            hues.append(hue)
        assert all(b > a for a, b in zip(sats, sats[1:])), sats
        assert max(hues) - min(hues) < 2.0  # the direction alone sets the hue
    # default normalisation: by the field's largest magnitude
    field = flow_to_color(np.array([[[1.0, 2.0]], [[0.0, 0.0]]]))
    assert tuple(field[0, 1]) == (255, 0, 0)
    assert tuple(field[0, 0]) == (255, 128, 128)  # half the magnitude: half saturated


def test_color_wheel_legend_and_errors():
    legend = color_wheel_image(51)
    assert legend.shape == (51, 51, 3)
    assert tuple(legend[25, 25]) == (255, 255, 255)  # centre = zero flow
    assert tuple(legend[25, 50]) == (255, 0, 0)      # right rim = +x
    assert tuple(legend[0, 0]) == (255, 255, 255)    # outside the disc
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        flow_to_color(np.zeros((3, 4, 4)))


# --- units and arrows ---------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", [True, False])
def test_flow_in_image_pixels_matches_the_warp(align_corners):
    """Second implementation: warp a ramp whose value is the image x (or y) coordinate of each
    coarse pixel; the change of the warped value under a constant flow is the displacement."""
    coarse_h, coarse_w, fine_h, fine_w, image = 6, 10, 12, 20, (48, 80)
    stride = image[0] / coarse_h
    ys, xs = torch.meshgrid(torch.arange(coarse_h) * stride, torch.arange(coarse_w) * stride,
                            indexing="ij")
    ramp = torch.stack([xs, ys])[None].float()
    flow = torch.zeros(1, 2, fine_h, fine_w)
    flow[:, 0], flow[:, 1] = 0.8, -0.5
    moved = flow_warp(ramp, flow, (fine_h, fine_w), align_corners)
    still = flow_warp(ramp, torch.zeros_like(flow), (fine_h, fine_w), align_corners)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # away from zero padding
    measured = (moved - still)[inner]
    predicted = flow_in_image_pixels(flow, (coarse_h, coarse_w), image, align_corners)[inner]
    torch.testing.assert_close(measured, predicted, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("u,v", [(1.0, 0.0), (0.0, 1.0)])
def test_arrows_point_along_the_flow(u, v):
    image = np.zeros((64, 64, 3), np.uint8)
    flow = np.zeros((2, 64, 64), np.float32)
    flow[0], flow[1] = u, v
    picture = draw_flow_arrows(image, flow, step=64)  # one arrow, from (32, 32), 64 px long
    assert picture.shape == (64, 64, 3)
    yellow = (picture[..., 0] > 150) & (picture[..., 1] > 150) & (picture[..., 2] < 100)
    ys, xs = np.nonzero(yellow)
    assert len(xs) > 20
    along, across = (xs - 32, ys - 32) if u else (ys - 32, xs - 32)
    assert (along > 2).sum() > 10 * max((along < -2).sum(), 1)  # +y points down the image
    assert np.abs(across).max() <= 4


# --- a real model: records and files -------------------------------------------------------

def test_records_equal_the_necks_flows_and_pictures_have_the_expected_sizes(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_cfg("configs/cityscapes/semantic/sfnet_R18.yaml")).eval()
    image = (np.random.default_rng(0).random((50, 90, 3)) * 255).astype(np.uint8)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())
    outputs, records = record_alignments(model, [{"image": tensor}])
    assert outputs[0]["sem_seg"].shape == (19, 50, 90)
    assert [r["kind"] for r in records] == ["FAM"] * 3
    assert [tuple(r["flow"].shape[-2:]) for r in records] == [(4, 6), (8, 12), (16, 24)]  # 64x96 input
    with torch.no_grad():
        x = (tensor.float() - model.pixel_mean) / model.pixel_std
        x = torch.nn.functional.pad(x, (0, 6, 0, 14))[None]
        flows = model.sem_seg_head.neck.forward_features(model.backbone(x), return_flows=True)["flows"]
    for rec, flow in zip(records, flows):
        torch.testing.assert_close(rec["flow"], flow)

    seg = np.zeros_like(image)
    paths = save_flow_pictures(image, records, str(tmp_path), "img", (64, 96), "mean", 8, seg)
    size = lambda key: Image.open(paths[key]).size  # noqa: E731  (width, height)
    for i, stride in zip((1, 2, 3), (16, 8, 4)):
        assert os.path.basename(paths[f"stage{i}_flow"]) == f"img_stage{i}_s{stride}_flow.png"
        assert size(f"stage{i}_flow") == (90, 50)
        assert size(f"stage{i}_arrows") == (90, 50)
        assert size(f"stage{i}_features") == (2 * 90 + 4, 50)
    # image | 3 flows | arrows | segmentation
    assert size("overview") == (6 * 90 + 5 * 4, 50)
    assert size("color_wheel") == (151, 151)


def test_gdfam_pictures_show_both_flows(tmp_path):
    torch.manual_seed(0)
    model = build_model(make_cfg("configs/cityscapes/semantic/sfnet_lite_R18.yaml")).eval()
    image = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    _, records = record_alignments(model, [{"image": torch.as_tensor(image.transpose(2, 0, 1).copy())}])
    assert [r["kind"] for r in records] == ["GD-FAM"] and records[0]["flow"].shape[1] == 4
    paths = save_flow_pictures(image, records, str(tmp_path), "lite", (64, 64), "pca")
    assert Image.open(paths["stage1_flow_fine"]).size == (64, 64)
    assert Image.open(paths["stage1_arrows_fine"]).size == (64, 64)
    # coarse row and fine row: before | after
    assert Image.open(paths["stage1_features"]).size == (2 * 64 + 4, 2 * 64 + 4)
    # the colour-coded file is the colour coding of the flow in image pixels
    px = flow_in_image_pixels(records[0]["flow"][:, :2], tuple(records[0]["coarse"].shape[-2:]),
                              (64, 64), records[0]["align_corners"])
    px = torch.nn.functional.interpolate(px, size=(64, 64), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["stage1_flow"])), flow_to_color(px[0]))


def test_model_without_alignment_is_refused():
    with pytest.raises(ValueError, match="no FAM"):
        record_alignments(torch.nn.Conv2d(3, 3, 1), [])
