"""
Built-in demo data: a small synthetic street-scene dataset written in the exact Cityscapes on-disk
layout, so that the demo and the tests go through the same code as real Cityscapes:

    ROOT/leftImg8bit/{train,val}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    ROOT/gtFine/{train,val}/{city}/..._gtFine_polygons.json     (written here)
    ROOT/gtFine/{train,val}/{city}/..._gtFine_labelIds.png      (cityscapesscripts json2labelImg)
    ROOT/gtFine/{train,val}/{city}/..._gtFine_instanceIds.png   (cityscapesscripts createInstanceImage)
    ROOT/gtFine/{train,val}/{city}/..._gtFine_labelTrainIds.png (cityscapesscripts
                                                                 createTrainIdLabelImgs, as users do)

Each scene has sky, buildings (with windows), trees, grass, a perspective road with lane marks,
sidewalks, poles, cars and people (9 of the 19 Cityscapes classes), drawn back to front with textures and occlusion. The image is
painted from the same polygons the labels are rasterised from (PIL's polygon fill, like
cityscapesscripts), so labels and pixels agree exactly.
"""
import io
import json
import logging
import os
from contextlib import contextmanager, redirect_stdout
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["generate_demo_cityscapes", "demo_data_is_complete", "default_demo_root",
           "DEMO_LABELS"]

logger = logging.getLogger(__name__)

# Cityscapes label names used by the demo (all are among the 19 training classes).
DEMO_LABELS = ["road", "sidewalk", "building", "pole", "vegetation", "terrain", "sky", "person",
               "car"]
_COMPLETE_MARK = ".sfnet_demo_complete"
_CITIES = {"train": ["demotown", "synthburg"], "val": ["valcity"]}


def _noise(rng, h, w, scale):
    """Smooth value noise in [0, 1] at roughly ``scale`` pixels per feature."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    coarse = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(rng, h, w, base, jitter=25, grain=12, scale=8):
    base = np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)
    tex = base[None, None, :] + (_noise(rng, h, w, scale)[..., None] - 0.5) * 2 * grain
    tex += rng.normal(0, grain / 3, (h, w, 1))
    return tex


def _ellipse(cx, cy, rx, ry, n=16) -> List[Tuple[int, int]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(int(round(cx + rx * np.cos(a))), int(round(cy + ry * np.sin(a)))) for a in t]


def _rect(x0, y0, x1, y1):
    return [(int(x0), int(y0)), (int(x1), int(y0)), (int(x1), int(y1)), (int(x0), int(y1))]


class _Scene:
    """Accumulates (label, polygon) objects and paints them back to front."""

    def __init__(self, rng, h, w):
        self.rng, self.h, self.w = rng, h, w
        self.image = np.zeros((h, w, 3), np.float32)
        self.objects = []

    def add(self, label, polygon, texture):
        mask_img = Image.new("L", (self.w, self.h), 0)
        ImageDraw.Draw(mask_img).polygon(polygon, fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        if not mask.any():  # entirely outside the image: a real annotation would not list it
            return mask
        self.image[mask] = texture[mask]
        self.objects.append({"label": label, "polygon": [list(p) for p in polygon]})
        return mask


def _render_scene(rng, h, w):
    s = _Scene(rng, h, w)
    horizon = int(h * rng.uniform(0.38, 0.48))
    # sky: vertical gradient
    sky = _texture(rng, h, w, (135, 180, 225), jitter=20, grain=4, scale=32)
    sky += np.linspace(-25, 25, h, dtype=np.float32)[:, None, None]
    s.add("sky", _rect(0, 0, w - 1, horizon + 2), sky)
    # buildings along the skyline, each with a window grid
    x = -int(rng.integers(0, w // 10))
    while x < w:
        bw = int(rng.integers(w // 10, w // 4))
        top = int(rng.integers(h // 12, horizon - h // 10))
        tex = _texture(rng, h, w, rng.choice([(150, 120, 100), (120, 120, 125), (170, 160, 140),
                                              (110, 90, 80)]), jitter=20, grain=8)
        win = max(4, w // 64)
        ys, xs = np.mgrid[0:h, 0:w]
        windows = ((ys - top) % (2 * win) < win) & ((xs - x) % (2 * win) < win)
        tex[windows] = tex[windows] * 0.45 + np.array([40, 50, 70]) * 0.55
        s.add("building", _rect(x, top, x + bw, horizon + 2), tex)
        x += bw
    # trees: crowns in front of the buildings
    for _ in range(int(rng.integers(1, 4))):
        cx, r = int(rng.integers(0, w)), int(rng.integers(h // 12, h // 6))
        cy = horizon - r // 2
        s.add("vegetation", _ellipse(cx, cy, r, int(r * 0.9), 20),
              _texture(rng, h, w, (70, 120, 40), jitter=20, grain=30, scale=3))
    # grass verges between the buildings and the street
    s.add("terrain", _rect(0, horizon, w - 1, h - 1),
          _texture(rng, h, w, (120, 160, 80), jitter=20, grain=18, scale=2))
    # road: perspective trapezoid with lane marks
    vx = w // 2 + int(rng.integers(-w // 10, w // 10))
    half_far, half_near = w // 14, int(w * rng.uniform(0.42, 0.6))
    road_poly = [(vx - half_far, horizon), (vx + half_far, horizon), (vx + half_near, h - 1),
                 (vx - half_near, h - 1)]
    road = _texture(rng, h, w, (85, 85, 90), jitter=15, grain=10, scale=4)
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.clip((ys - horizon) / max(1, h - horizon), 0, 1)
    lane = (np.abs(xs - vx) < 1 + 3 * depth) & ((ys // max(3, h // 24)) % 2 == 0)
    road[lane] = (230, 230, 220)
    s.add("road", road_poly, road)
    # sidewalks on both sides
    for side in (-1, 1):
        far, near = vx + side * half_far, vx + side * half_near
        outer_far, outer_near = far + side * w // 20, near + side * int(w * 0.35)
        poly = [(far, horizon), (outer_far, horizon), (outer_near, h - 1), (near, h - 1)]
        s.add("sidewalk", poly, _texture(rng, h, w, (190, 160, 170), jitter=20, grain=14, scale=3))

    def ground_x(y, t):  # x at image row y along the ground, t in [-1, 1] across the road
        d = (y - horizon) / max(1, h - horizon)
        return vx + t * (half_far + (half_near - half_far) * d)

    # poles on the sidewalks
    for _ in range(int(rng.integers(1, 4))):
        y_base = int(rng.integers(horizon + (h - horizon) // 4, h))
        x_base = int(ground_x(y_base, rng.choice([-1.25, 1.25])))
        d = (y_base - horizon) / (h - horizon)
        pw, ph = max(2, int(2 + 5 * d)), int((h // 6) + d * h * 0.5)
        s.add("pole", _rect(x_base - pw // 2, y_base - ph, x_base + pw // 2, y_base),
              _texture(rng, h, w, (100, 100, 100), jitter=20, grain=6))
    # cars and people, far to near so nearer objects occlude farther ones
    things = []
    for _ in range(int(rng.integers(2, 6))):
        things.append(("car", int(rng.integers(horizon + 6, h + h // 8)), rng.uniform(-0.8, 0.8)))
    for _ in range(int(rng.integers(1, 5))):
        things.append(("person", int(rng.integers(horizon + 6, h)), rng.choice([-1, 1]) *
                       rng.uniform(1.05, 1.6)))
    for label, y_base, t in sorted(things, key=lambda th: th[1]):
        d = (y_base - horizon) / (h - horizon)
        xc = ground_x(y_base, t)
        if label == "car":
            cw, ch = (w // 16) * (0.5 + 2.5 * d), (h // 14) * (0.5 + 2.5 * d)
            body = [(xc - cw, y_base), (xc - cw, y_base - ch * 0.55), (xc - cw * 0.6, y_base - ch * 0.6),
                    (xc - cw * 0.45, y_base - ch), (xc + cw * 0.45, y_base - ch),
                    (xc + cw * 0.6, y_base - ch * 0.6), (xc + cw, y_base - ch * 0.55), (xc + cw, y_base)]
            paint = rng.integers(20, 235, 3)
            tex = _texture(rng, h, w, paint, jitter=0, grain=6)
            glass = (ys > y_base - ch * 0.95) & (ys < y_base - ch * 0.62)
            tex[glass] = tex[glass] * 0.3 + np.array([30, 40, 60]) * 0.7
            wheels = ys > y_base - ch * 0.18
            tex[wheels] = (25, 25, 25)
            s.add("car", [(int(px), int(py)) for px, py in body], tex)
        else:
            pw, ph = (w // 90) * (1 + 3 * d) + 1, (h // 10) * (1 + 3 * d)
            shirt = rng.integers(30, 230, 3)
            tex = _texture(rng, h, w, shirt, jitter=0, grain=10)
            head = ys < y_base - ph * 0.82
            tex[head] = (205, 170, 140)
            legs = ys > y_base - ph * 0.45
            tex[legs] = tex[legs] * 0.4 + np.array([40, 40, 70]) * 0.6
            poly = [(xc - pw * 0.45, y_base - ph), (xc + pw * 0.45, y_base - ph), (xc + pw, y_base - ph * 0.8),
                    (xc + pw * 0.7, y_base), (xc - pw * 0.7, y_base), (xc - pw, y_base - ph * 0.8)]
            s.add("person", [(int(px), int(py)) for px, py in poly], tex)
    image = np.clip(s.image + rng.normal(0, 3, s.image.shape), 0, 255).astype(np.uint8)
    return image, s.objects


@contextmanager
def _env(key, value):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def default_demo_root() -> str:
    """Where the registered ``sfnet_demo_cityscapes_fine_sem_seg_*`` datasets read the demo data:
    ``$DETECTRON2_DATASETS/sfnet_demo_cityscapes`` (``datasets/`` when unset)."""
    from sfnet_d2.data.datasets.cityscapes import DEMO_ROOT_NAME
    from sfnet_d2.data.datasets.common import datasets_root

    return os.path.join(datasets_root(), DEMO_ROOT_NAME)


def demo_data_is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, _COMPLETE_MARK))


def generate_demo_cityscapes(root: str, num_train: int = 48, num_val: int = 12,
                             height: int = 256, width: int = 512, seed: int = 0) -> str:
    """
    Write the demo dataset under ``root`` (Cityscapes layout, see the module docstring) and return
    ``root``. A finished dataset is marked with ``root/.sfnet_demo_complete``; an unfinished one
    (interrupted run) is written again from scratch.
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation import createTrainIdLabelImgs
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    mark = os.path.join(root, _COMPLETE_MARK)
    if os.path.exists(mark):
        os.remove(mark)
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    for split, i in tqdm(jobs, desc="demo data", unit="img"):
        cities = _CITIES[split]
        city = cities[i % len(cities)]
        stem = f"{city}_{i // len(cities):06d}_000019"
        img_dir = os.path.join(root, "leftImg8bit", split, city)
        gt_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        image, objects = _render_scene(rng, height, width)
        Image.fromarray(image).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
        json_path = os.path.join(gt_dir, f"{stem}_gtFine_polygons.json")
        with open(json_path, "w") as f:
            json.dump({"imgHeight": height, "imgWidth": width, "objects": objects}, f)
        json2labelImg(json_path, os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"), "ids")
        # json2instanceImg cannot save mode "I" as PNG with Pillow >= 10; save the same image
        # as a 16-bit PNG, the format of the real dataset.
        ann = Annotation()
        ann.fromJsonFile(json_path)
        inst = np.asarray(createInstanceImage(ann, "ids"), dtype=np.uint16)
        Image.fromarray(inst).save(os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"))
    # The users' own preparation step for Cityscapes: *_labelTrainIds.png from the polygons.
    # (its per-file progress goes to stdout; our own progress bar above covers it)
    with _env("CITYSCAPES_DATASET", os.path.abspath(root)), redirect_stdout(io.StringIO()):
        createTrainIdLabelImgs.main()
    with open(mark, "w") as f:
        json.dump({"num_train": num_train, "num_val": num_val, "height": height,
                   "width": width, "seed": seed}, f)
    logger.info(f"Demo dataset written to {root}")
    return root
