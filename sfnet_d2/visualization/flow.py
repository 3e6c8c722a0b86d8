"""
Pictures of the semantic flow, as in the paper's Figures 3 and 6 (IJCV 2023, Sec. 4.2
"Visualization of Semantic Flow"): every FAM / GD-FAM's flow field in the standard optical-flow
colour coding and as arrows, and the coarse feature before alignment (bilinearly upsampled)
beside the same feature after alignment (warped by the flow).

* Colour coding: the Middlebury colour wheel of Baker et al., "A Database and Evaluation
  Methodology for Optical Flow" (IJCV 2011), the code the paper cites ("flowvis"): hue =
  direction, saturation = magnitude relative to the largest one shown; zero flow is white.
  Directions are in image coordinates (x right, y down): +x red, +y yellow, -x cyan-blue,
  -y violet. The wheel is built here from its six published segments (red-yellow 15,
  yellow-green 6, green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6 steps). Unlike the
  reference code, which spreads the angle over ``ncols - 1`` steps (so that +x maps to red or to
  the last magenta-red step depending on the sign of a zero y), the angle here is spread over
  ``ncols`` steps with wrap-around: the wheel is exactly periodic and +x is always pure red.
* Flow units: the model's flow is in the official SFNet units (flow_alignment.py: the sampling
  point moves by ``u / W_out`` grid units). :func:`flow_in_image_pixels` turns it into the
  displacement in input-image pixels, which is what the arrows show; an arrow at ``p`` points to
  ``p + d``, the image position the aligned feature at ``p`` is sampled from (the warp is a
  backward warp).
* Features: Figure 3 shows the channel mean with a "hot" colour map ("jet" here); ``"pca"``
  projects the channels on their three main components instead (one basis for both maps).
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sfnet_d2.visualization.overlays import concat_side_by_side

__all__ = [
    "color_wheel",
    "flow_to_color",
    "color_wheel_image",
    "flow_in_image_pixels",
    "draw_flow_arrows",
    "features_to_images",
    "AlignmentRecord",
    "record_alignments",
    "save_flow_pictures",
]

# Baker et al. 2011, segments of the colour wheel in steps: RY, YG, GC, CB, BM, MR
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> np.ndarray:
    """The (55, 3) Middlebury colour wheel in 0..255 float, starting at red, counter-clockwise
    from +x in image coordinates (towards +y): red -> yellow -> green -> cyan -> blue -> magenta."""
    ry, yg, gc, cb, bm, mr = _WHEEL_SEGMENTS
    rows = []
    for i in range(ry):  # red (255, 0, 0) -> yellow: green rises
        rows.append((255, np.floor(255 * i / ry), 0))
    for i in range(yg):  # yellow -> green: red falls
        rows.append((255 - np.floor(255 * i / yg), 255, 0))
    for i in range(gc):  # green -> cyan: blue rises
        rows.append((0, 255, np.floor(255 * i / gc)))
    for i in range(cb):  # cyan -> blue: green falls
        rows.append((0, 255 - np.floor(255 * i / cb), 255))
    for i in range(bm):  # blue -> magenta: red rises
        rows.append((np.floor(255 * i / bm), 0, 255))
    for i in range(mr):  # magenta -> red: blue falls
        rows.append((255, 0, 255 - np.floor(255 * i / mr)))
    return np.asarray(rows, dtype=np.float64)


def flow_to_color(flow, max_magnitude: Optional[float] = None) -> np.ndarray:
    """
    Colour-code a flow field (2, H, W) (channel 0 = x, 1 = y; numpy or torch) as an (H, W, 3)
    uint8 RGB image. Saturation = magnitude / ``max_magnitude`` (default: the largest magnitude
    in the field); magnitudes above ``max_magnitude`` keep full saturation and are darkened to
    75%, as in the Middlebury code. Zero flow is white.
    """
    flow = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow_to_color expects a (2, H, W) flow, got shape {flow.shape}")
    u, v = flow[0].astype(np.float64), flow[1].astype(np.float64)
    magnitude = np.hypot(u, v)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max())
    if not np.isfinite(magnitude).all():
        raise ValueError("flow_to_color: the flow holds NaN or infinite values")
    radius = magnitude / max(max_magnitude, 1e-12)

    wheel = color_wheel()
    ncols = len(wheel)
    # atan2(-v, -u) / pi is in [-1, 1] and equals +-1 for +x; over ncols steps with wrap-around
    # both ends land on step 0 (red).
    angle = np.arctan2(-v, -u) / np.pi
    position = (angle + 1.0) / 2.0 * ncols
    k0 = np.floor(position).astype(np.int64) % ncols
    k1 = (k0 + 1) % ncols
    frac = (position - np.floor(position))[..., None]
    color = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    inside = (radius <= 1.0)[..., None]
    color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), color * 0.75)
    return np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)


def color_wheel_image(size: int = 151) -> np.ndarray:
    """A (size, size, 3) legend: the colour of every flow direction and magnitude (centre = zero,
    rim = the largest magnitude), white outside the disc."""
    c = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = np.stack([(xs - c) / c, (ys - c) / c])
    img = flow_to_color(flow, max_magnitude=1.0)
    img[np.hypot(xs - c, ys - c) > c] = 255
    return img


def flow_in_image_pixels(flow: torch.Tensor, coarse_size: Tuple[int, int],
                         image_size: Tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """
    Convert a flow (N, 2, h, w) in the official units (flow_alignment.py: a value ``u`` moves the
    sampling point by ``u / w`` normalised grid units) into the displacement in pixels of an
    image of ``image_size`` (the padded network input) that the coarse feature of
    ``coarse_size`` covers. With align_corners=True the grid's [-1, 1] spans the centres of the
    first and last coarse pixels, otherwise the whole coarse map.
    """
    (h, w), (hc, wc), (hi, wi) = flow.shape[-2:], coarse_size, image_size
    span_x = (wc - 1 if align_corners else wc) * (wi / wc)  # image pixels covered by [-1, 1]
    span_y = (hc - 1 if align_corners else hc) * (hi / hc)
    scale = flow.new_tensor([span_x / (2.0 * w), span_y / (2.0 * h)]).view(1, 2, 1, 1)
    return flow * scale


def _resize_flow(flow: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    # bilinear interpolation of the field to the image size, as the paper's Figure 6 does
    return F.interpolate(flow, size=size, mode="bilinear", align_corners=False)


def draw_flow_arrows(image: np.ndarray, flow_px: np.ndarray, step: int = 16,
                     color: str = "yellow") -> np.ndarray:
    """
    Arrows (matplotlib quiver) of a flow in image pixels (2, H, W), drawn every ``step`` pixels
    over the dimmed (H, W, 3) image; returns an (H, W, 3) uint8 picture of the image's size.
    Arrows are scaled so that the longest spans ``step`` pixels (the lengths are relative;
    the largest displacement in pixels is written in the corner).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = image.shape[:2]
    if flow_px.shape != (2, height, width):
        raise ValueError(f"draw_flow_arrows: flow shape {flow_px.shape} != (2, {height}, {width})")
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow((image.astype(np.float32) * 0.6).astype(np.uint8), interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.axis("off")
    ys = np.arange(step // 2, height, step)
    xs = np.arange(step // 2, width, step)
    gx, gy = np.meshgrid(xs, ys)
    u, v = flow_px[0][gy, gx], flow_px[1][gy, gx]
    longest = float(np.hypot(u, v).max()) if u.size else 0.0
    if longest > 0:
        factor = step / longest
        # angles/scale_units "xy" = data coordinates, so +y points down the (inverted) image axis
        ax.quiver(gx, gy, u * factor, v * factor, angles="xy", scale_units="xy", scale=1,
                  color=color, width=max(1.5 / width, 0.002), headwidth=4, headlength=4)
    ax.text(4, 4, f"max {longest:.1f} px", color="white", fontsize=max(6, min(12, height // 24)),
            va="top", ha="left")
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3]
    if picture.shape[:2] != (height, width):  # rounding of the figure size in inches
        picture = np.asarray(Image.fromarray(picture).resize((width, height), Image.BILINEAR))
    return np.ascontiguousarray(picture)


def _jet(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["jet"](values)[..., :3] * 255).round().astype(np.uint8)


def features_to_images(features: Sequence[torch.Tensor], size: Tuple[int, int],
                       mode: str = "mean", crop: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """
    Render (C, h, w) feature maps of the same width C as uint8 RGB pictures, sharing one colour
    scale so that they can be compared: ``"mean"`` = channel mean with the jet colour map (the
    paper's Figure 3), scaled between the 1st and 99th percentile of all maps; ``"pca"`` = the
    first three principal components of the channels (computed over all maps together) as RGB.
    Maps are resized bilinearly to ``size`` and then cropped to the top-left ``crop`` (e.g. the
    image inside the padded network input).
    """
    if mode not in ("mean", "pca"):
        raise ValueError(f"feature mode {mode!r}: expected 'mean' or 'pca'")
    crop = crop or size
    maps = [F.interpolate(f[None].float(), size=size, mode="bilinear", align_corners=False)
            [0, :, : crop[0], : crop[1]] for f in features]
    size = crop
    if mode == "mean":
        means = [m.mean(dim=0).numpy() for m in maps]
        lo, hi = np.percentile(np.concatenate([m.ravel() for m in means]), [1, 99])
        return [_jet(np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1)) for m in means]
    flat = torch.cat([m.flatten(1).t() for m in maps])  # (pixels, C)
    centre = flat.mean(dim=0, keepdim=True)
    _, _, basis = torch.linalg.svd(flat - centre, full_matrices=False)
    k = min(3, basis.shape[0])
    projected = [((m.flatten(1).t() - centre) @ basis[:k].t()).numpy() for m in maps]
    allp = np.concatenate(projected)
    lo, hi = np.percentile(allp, 1, axis=0), np.percentile(allp, 99, axis=0)
    out = []
    for p in projected:
        rgb = np.zeros((p.shape[0], 3))
        rgb[:, :k] = np.clip((p - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
        out.append((rgb.reshape(size[0], size[1], 3) * 255).round().astype(np.uint8))
    return out


class AlignmentRecord(dict):
    """One alignment module's call: ``name``, ``kind`` ("FAM"/"GD-FAM"), ``fine`` and ``coarse``
    inputs (1, C, h, w), ``flow`` (1, 2 or 4, h, w) and ``align_corners``."""


def record_alignments(model: nn.Module, batched_inputs: List[Dict]) -> Tuple[list, List[AlignmentRecord]]:
    """
    Run the (plain, eval-mode) model on ``batched_inputs`` and record the inputs and flow of
    every FAM / GD-FAM in call order (coarse to fine, the order of the neck's ``"flows"``).
    Returns the model's outputs and the records.
    """
    from sfnet_d2.modeling.alignment.flow_alignment import FlowAlignModule, GatedDualFlowAlignModule

    records: List[AlignmentRecord] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, args, kwargs, output):
        low, high = (list(args) + [kwargs.get("low"), kwargs.get("high")])[:2]
        if not isinstance(output, tuple):
            raise RuntimeError(
                f"{names[module]} was called without return_flow=True; the flow visualisation "
                "needs the necks' forward_features, which always asks for the flow"
            )
        records.append(AlignmentRecord(
            name=names[module],
            kind="GD-FAM" if isinstance(module, GatedDualFlowAlignModule) else "FAM",
            fine=low.detach(), coarse=high.detach(), flow=output[1].detach(),
            align_corners=bool(module.align_corners),
        ))

    modules = [m for m in model.modules() if isinstance(m, (FlowAlignModule, GatedDualFlowAlignModule))]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no FAM / GD-FAM: there is no semantic flow to show")
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            outputs = model(batched_inputs)
    finally:
        for h in handles:
            h.remove()
    return outputs, records


def _save(picture: np.ndarray, path: str) -> str:
    Image.fromarray(picture).save(path)
    return path


def save_flow_pictures(image: np.ndarray, records: Sequence[AlignmentRecord], out_dir: str,
                       prefix: str, padded_size: Tuple[int, int], feature_mode: str = "mean",
                       arrow_step: int = 16, segmentation: Optional[np.ndarray] = None) -> Dict[str, str]:
    """
    Write the pictures of one image (RGB (H, W, 3) uint8) to ``out_dir``; returns {kind: path}.
    For each stage ``i`` (1 = coarsest) at stride ``s``:

    * ``{prefix}_stage{i}_s{s}_flow.png``    the flow colour-coded at image size (H, W);
      GD-FAM also ``..._flow_fine.png`` for its second flow (the fine feature's);
    * ``{prefix}_stage{i}_s{s}_arrows.png``  the flow as arrows over the image (H, W);
    * ``{prefix}_stage{i}_s{s}_features.png`` coarse feature bilinearly upsampled | warped by
      the flow (H, 2W + 4); GD-FAM adds a second row: fine feature | warped by its flow;

    and ``{prefix}_overview.png`` (Figure 6: image | flows, coarse to fine | arrows of the finest
    stage | ``segmentation`` if given) and ``color_wheel.png`` (the legend).
    ``padded_size`` is the network input size (the image padded to the size divisibility).
    """
    from sfnet_d2.modeling.alignment.flow_alignment import flow_warp

    os.makedirs(out_dir, exist_ok=True)
    height, width = image.shape[:2]
    paths = {"color_wheel": _save(color_wheel_image(), os.path.join(out_dir, "color_wheel.png"))}
    flow_pictures, finest_arrows = [], None
    for i, rec in enumerate(records, start=1):
        fine_size = tuple(rec["fine"].shape[-2:])
        stride = int(round(padded_size[0] / fine_size[0]))
        stem = os.path.join(out_dir, f"{prefix}_stage{i}_s{stride}")
        flows = [("", rec["flow"][:, 0:2], rec["coarse"])]
        if rec["flow"].shape[1] == 4:
            flows.append(("_fine", rec["flow"][:, 2:4], rec["fine"]))
        for suffix, flow, source in flows:
            px = flow_in_image_pixels(flow, tuple(source.shape[-2:]), padded_size, rec["align_corners"])
            px = _resize_flow(px, padded_size)[0, :, :height, :width]
            color = flow_to_color(px)
            paths[f"stage{i}_flow{suffix}"] = _save(color, f"{stem}_flow{suffix}.png")
            arrows = draw_flow_arrows(image, px.numpy(), step=arrow_step)
            paths[f"stage{i}_arrows{suffix}"] = _save(arrows, f"{stem}_arrows{suffix}.png")
            if not suffix:
                flow_pictures.append(color)
                finest_arrows = arrows
        rows = []
        for suffix, flow, source in flows:
            up = F.interpolate(source, size=fine_size, mode="bilinear", align_corners=True)
            warped = flow_warp(source, flow, fine_size, rec["align_corners"])
            before, after = features_to_images([up[0], warped[0]], padded_size, feature_mode,
                                               crop=(height, width))
            rows.append(concat_side_by_side([before, after]))
        picture = rows[0] if len(rows) == 1 else np.concatenate(
            [rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
        paths[f"stage{i}_features"] = _save(picture, f"{stem}_features.png")
    overview = [image] + flow_pictures + ([finest_arrows] if finest_arrows is not None else [])
    if segmentation is not None:
        overview.append(segmentation)
    paths["overview"] = _save(concat_side_by_side(overview), os.path.join(out_dir, f"{prefix}_overview.png"))
    return paths
