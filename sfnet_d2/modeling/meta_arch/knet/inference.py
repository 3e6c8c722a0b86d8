"""
K-Net panoptic inference (official ``KernelIterHead.get_panoptic`` / ``merge_stuff_thing``;
ZwwWayne/K-Net@5e50ee5 knet/det/kernel_iter_head.py), on the last stage's outputs of one image:

* class scores ``s = sigmoid(cls_logits)``; each thing kernel takes its best THING class, each stuff
  kernel the score of its OWN stuff class (stuff kernel j <-> internal class T + j);
* every pixel goes to ``argmax_k score_k * mask_k`` over all kernels;
* kernels are visited by decreasing score: a thing kernel scoring below ``instance_score_thr`` is
  dropped (stuff has no score threshold); a kernel is kept when its argmax region is non-empty, its
  own mask (``mask >= mask_thr``) is non-empty and region / own mask >= ``overlap_thr``;
* pixels of dropped kernels stay VOID; regions are the argmax regions (not intersected with the
  kernel's own mask); each stuff class yields at most one segment; there is no stuff area limit
  (the official config's ``stuff_max_area``, ``stuff_score_thr`` and ``iou_thr`` are never read).

Because the argmax regions are disjoint and fixed before the loop, the official sequential loop
is computed with one pass of pixel counts, exactly.

**Full resolution only where it matters** (:func:`merge_kernels`, CPU). The masks are stride-4
probabilities that the model resizes bilinearly to the output; resizing all K (100 + stuff) masks
to 1024x2048 and merging them took 3-3.5 s. The output is cut into 64x64 tiles instead:

* bounds: a bilinear resize is a weighted mean with non-negative weights, and float rounding is
  monotone, so on a tile every resized probability lies within [min, max] of the source values in
  the tile's source window; ``_EPS``/``_TINY`` cover the few roundings (each at most 2^-24);
* a kernel whose upper bound ``score * max`` is below another kernel's lower bound on a tile is
  beaten on every pixel of it: it is not the argmax there (nor its class's max). The others keep
  their order, so argmax ties still go to the first kernel;
* only the remaining kernels are resized, exactly: ``F.interpolate`` of the tile's source crop
  (one source pixel of margin) gives the same numbers as the full resize, because for a
  power-of-two factor the source coordinates of the crop are those of the full image shifted by
  an integer (exact in float) and PyTorch's generic CPU kernel computes every output pixel from
  its own inputs and weights alone; ``_crop_resize`` keeps the call in that kernel (see there);
  other resizes (to an output size) are computed for the remaining kernels on the whole image;
* own-mask areas, needed only for kernels that pass the score test and can own pixels: tiles
  entirely above or below ``mask_thr`` are counted from the bounds, the others exactly;
* the tiles' small ops run single-threaded, the tiles spread over Python threads (see
  :func:`_one_thread`).

The result is identical to the dense merge (tests/test_knet_fast_merge.py keeps it as reference),
which still runs on other devices (CUDA) and for inputs the tiles do not support (see
:meth:`KernelMasks.tiled_merge_supported`).
"""
import concurrent.futures
import contextlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

__all__ = ["kernel_scores_and_labels", "KernelMasks", "merge_kernels", "panoptic_merge",
           "semantic_from_kernels"]

_TILE = 64              # output pixels per tile side
_EPS = 2.0 ** -16       # relative slack of the bounds (>= 16 roundings of 2^-24)
_TINY = 1e-30           # absolute slack (roundings in the sub-normal range)
_MIN_CHANNELS = 4       # PyTorch resizes 3 channels on one thread with another kernel
_MIN_OUTPUT_SPAN = 129  # ... and outputs with height + width <= 128 too


def kernel_scores_and_labels(cls_logits: torch.Tensor, num_proposals: int,
                             num_thing_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, C) class logits -> per-kernel (score, internal label), K = proposals + stuff classes."""
    probs = cls_logits.sigmoid()
    thing_scores, thing_labels = probs[:num_proposals, :num_thing_classes].max(dim=1)
    num_stuff = probs.shape[0] - num_proposals
    stuff_scores = probs[num_proposals:, num_thing_classes:].diagonal()
    if stuff_scores.numel() != num_stuff:
        raise ValueError(
            f"{num_stuff} stuff kernels but {probs.shape[1] - num_thing_classes} stuff classes"
        )
    stuff_labels = torch.arange(num_stuff, device=probs.device) + num_thing_classes
    return torch.cat([thing_scores, stuff_scores]), torch.cat([thing_labels, stuff_labels])


def _source_span(n_in: int, n_out: int, lo: int, hi: int) -> Tuple[int, int]:
    """Input indices [a, b) that a bilinear resize (align_corners=False) from n_in to n_out reads
    for outputs lo..hi-1, with one index of margin for the rounding of source coordinates."""
    scale = n_in / n_out
    first = math.floor(max(scale * (lo + 0.5) - 0.5, 0.0))
    last = math.floor(max(scale * (hi - 0.5) - 0.5, 0.0)) + 1  # its second tap
    return max(first - 1, 0), min(last + 2, n_in)


def _tiles(n: int) -> List[Tuple[int, int]]:
    return [(a, min(a + _TILE, n)) for a in range(0, n, _TILE)]


class KernelMasks:
    """
    The K kernels' mask probabilities at the output size, held where they were computed:

    * ``KernelMasks(probs)``: (K, H, W) probabilities at the output size;
    * ``KernelMasks(probs, padded_size, image_size, output_size)``: (K, h, w) probabilities at
      stride 4 and the model's resize (K-Net's): bilinear to the padded input, crop of the
      padding, bilinear to the output size when it differs from the image size.

    :meth:`dense` resizes them all (the plain path); :class:`merge_kernels` reads tiles of them.
    """

    def __init__(self, probs: torch.Tensor, padded_size: Optional[Sequence[int]] = None,
                 image_size: Optional[Sequence[int]] = None,
                 output_size: Optional[Sequence[int]] = None):
        self.probs = probs
        k, h0, w0 = probs.shape
        self.padded_size = None if padded_size is None else tuple(int(s) for s in padded_size)
        if self.padded_size is None:
            self.image_size = self.output_size = (h0, w0)
        else:
            self.image_size = tuple(int(s) for s in (image_size or self.padded_size))
            self.output_size = tuple(int(s) for s in (output_size or self.image_size))
        out_h, out_w = self.output_size
        self.row_tiles, self.col_tiles = _tiles(out_h), _tiles(out_w)
        self.factor = self._power_of_two_factor()
        self._cache: Dict[int, torch.Tensor] = {}
        # source window of each tile row / column (the bounds are taken over it)
        if self.padded_size is None:
            self.row_windows, self.col_windows = self.row_tiles, self.col_tiles
        else:
            self.row_windows = [self._window(0, lo, hi) for lo, hi in self.row_tiles]
            self.col_windows = [self._window(1, lo, hi) for lo, hi in self.col_tiles]

    def _window(self, axis: int, lo: int, hi: int) -> Tuple[int, int]:
        if self.output_size != self.image_size:  # output <- cropped image
            lo, hi = _source_span(self.image_size[axis], self.output_size[axis], lo, hi)
        return _source_span(self.probs.shape[axis + 1], self.padded_size[axis], lo, hi)

    def _power_of_two_factor(self) -> int:
        """R when the output is the crop of an exact R-times upsampling (R a power of two), the
        case whose tiles can be resized alone; 0 otherwise."""
        if self.padded_size is None or self.output_size != self.image_size:
            return 0
        (hp, wp), (h0, w0) = self.padded_size, self.probs.shape[1:]
        r = hp // h0
        if r < 2 or r & (r - 1) or (hp, wp) != (r * h0, r * w0) or hp + wp < _MIN_OUTPUT_SPAN:
            return 0
        return r

    def dense(self, channels: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(n, H, W) probabilities at the output size of ``channels`` (all when None): the
        model's resize, call for call."""
        probs = self.probs if channels is None else self.probs[torch.as_tensor(channels)]
        if self.padded_size is None:
            return probs
        out = F.interpolate(probs[None], size=self.padded_size, mode="bilinear",
                            align_corners=False)[0]
        (h, w), (out_h, out_w) = self.image_size, self.output_size
        if (out_h, out_w) == (h, w):
            return out[:, :h, :w]  # the resize would be the identity: skip its cost
        return sem_seg_postprocess(out, (h, w), out_h, out_w)

    def tiled_merge_supported(self) -> bool:
        """Whether :func:`merge_kernels` may read tiles (else it resizes all masks)."""
        p = self.probs
        if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64):
            return False
        if p.shape[0] < _MIN_CHANNELS or p.numel() == 0 or 0 in self.output_size:
            return False
        if self.padded_size is not None:
            # per-channel resizes equal the all-channel one only in PyTorch's generic kernel
            out_h, out_w = self.output_size
            if (not p.is_contiguous() or sum(self.padded_size) < _MIN_OUTPUT_SPAN
                    or out_h + out_w < _MIN_OUTPUT_SPAN):
                return False
        # the bounds assume finite, non-negative probabilities
        lo, hi = torch.aminmax(p)
        return bool(lo >= 0) and bool(torch.isfinite(hi))

    def tile(self, channels: np.ndarray, ty: int, tx: int) -> torch.Tensor:
        """(n, th, tw) exact probabilities of ``channels`` (sorted kernel indices) on a tile."""
        (y0, y1), (x0, x1) = self.row_tiles[ty], self.col_tiles[tx]
        index = torch.from_numpy(channels)
        if self.padded_size is None:
            return self.probs[:, y0:y1, x0:x1][index]
        if self.factor:
            return self._crop_resize(channels, y0, y1, x0, x1)
        missing = [int(c) for c in channels if int(c) not in self._cache]
        if missing:
            padded = _pad_channels(np.asarray(missing), self.probs.shape[0])
            for c, plane in zip(padded.tolist(), self.dense(padded.tolist())):
                self._cache[c] = plane
        return torch.stack([self._cache[int(c)][y0:y1, x0:x1] for c in channels])

    def _crop_resize(self, channels: np.ndarray, y0: int, y1: int, x0: int, x1: int):
        r, (h0, w0) = self.factor, self.probs.shape[1:]
        # source rows/columns read by the tile, plus one of margin: the clamping at the crop's
        # edges then only changes outputs outside the tile (the margin's own outputs)
        a, b = max(y0 // r - 1, 0), min(-(-y1 // r) + 1, h0)
        c, d = max(x0 // r - 1, 0), min(-(-x1 // r) + 1, w0)
        # PyTorch's CPU bilinear resize takes a vectorised kernel (other roundings) for outputs
        # with height + width <= 128 and for 3 channels on one thread (pytorch/pytorch@bb7240c
        # aten/src/ATen/native/cpu/UpSampleKernel.cpp, upsample_bilinear2d_kernel_impl_float):
        # grow the crop and add channels so that the crop takes the generic one, as the full
        # resize does
        while r * (b - a + d - c) < _MIN_OUTPUT_SPAN:
            a, b, c, d = max(a - 1, 0), min(b + 1, h0), max(c - 1, 0), min(d + 1, w0)
        chans = _pad_channels(channels, self.probs.shape[0])
        crop = self.probs[:, a:b, c:d][torch.from_numpy(chans)]
        out = F.interpolate(crop[None], size=(r * (b - a), r * (d - c)), mode="bilinear",
                            align_corners=False)[0]
        return out[:len(channels), y0 - r * a:y1 - r * a, x0 - r * c:x1 - r * c]

    def tile_bounds(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(K, T) min and max of the source probabilities over each tile's window (tiles in
        row-major order)."""
        rows = [torch.aminmax(self.probs[:, a:b], dim=1) for a, b in self.row_windows]
        rmin = torch.stack([r.min for r in rows], 1)
        rmax = torch.stack([r.max for r in rows], 1)
        tmin = torch.stack([rmin[:, :, a:b].amin(2) for a, b in self.col_windows], 2)
        tmax = torch.stack([rmax[:, :, a:b].amax(2) for a, b in self.col_windows], 2)
        return tmin.flatten(1), tmax.flatten(1)


def _pad_channels(channels: np.ndarray, num_kernels: int) -> np.ndarray:
    """``channels`` followed by other kernels up to ``_MIN_CHANNELS`` (their outputs unused)."""
    if len(channels) >= _MIN_CHANNELS:
        return channels
    extra = np.setdiff1d(np.arange(num_kernels), channels)[:_MIN_CHANNELS - len(channels)]
    return np.concatenate([channels, extra])


def merge_kernels(scores: torch.Tensor, labels: torch.Tensor, masks: KernelMasks,
                  num_thing_classes: int, instance_score_thr: float = 0.3,
                  overlap_thr: float = 0.6, mask_thr: float = 0.5,
                  num_classes: Optional[int] = None
                  ) -> Tuple[torch.Tensor, List[Dict], Optional[torch.Tensor]]:
    """
    Args:
        scores, labels: (K,) kernel scores and internal labels.
        masks: the kernels' mask probabilities (:class:`KernelMasks`).
        num_classes: also return the (C, H, W) semantic scores (:func:`semantic_from_kernels`).
    Returns:
        ``panoptic_merge``'s map and segments at the output size, and the semantic scores or None.
    """
    # the tiled merge's outputs take the scores' dtype, the dense merge the promoted one
    tiled = (scores.dtype == masks.probs.dtype and scores.device == masks.probs.device
             and masks.tiled_merge_supported())
    if not tiled:
        probs = masks.dense()
        pan, segments = _dense_panoptic_merge(scores, labels, probs, num_thing_classes,
                                              instance_score_thr, overlap_thr, mask_thr)
        sem = None if num_classes is None else semantic_from_kernels(scores, labels, probs,
                                                                     num_classes)
        return pan, segments, sem
    # outputs of post-processing: no autograd graph, which the tile threads would write into
    with torch.no_grad():
        return _TiledMerge(scores, labels, masks, num_thing_classes, instance_score_thr,
                           mask_thr, num_classes).run(overlap_thr)


@contextlib.contextmanager
def _one_thread():
    """The tile loops run many small ops: with a thread pool each one is a parallel region whose
    threads wait for each other, which on a busy machine costs far more than the work (measured
    at 1024x2048 on 2 cores with a load of 5: 13.6 CPU-s with 2 threads, 0.67 with 1). The
    threads go to tiles instead (:func:`_for_each`)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _for_each(fn, items, workers: int):
    """``fn`` on every item, on ``workers`` Python threads (tiles are independent; torch ops
    release the GIL). Errors are raised here."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    # autograd modes are per thread: run the workers in the caller's
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            fn(item)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, items))


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(dim=0)`` (the first maximum on ties, as both kernels below document) with
    faster kernels: argmax over dim 0 of a small tile costs ~0.4 ms even for 2 channels."""
    if values.shape[0] <= 16:
        return values.max(dim=0).indices
    return values.flatten(1).t().contiguous().argmax(dim=1).view(values.shape[1:])


class _TiledMerge:
    """The merge of :func:`merge_kernels` on tiles (see the module docstring)."""

    def __init__(self, scores, labels, masks: KernelMasks, num_thing_classes: int,
                 instance_score_thr: float, mask_thr: float, num_classes: Optional[int]):
        self.scores, self.labels, self.masks, self.mask_thr = scores, labels, masks, mask_thr
        self.num_thing_classes, self.num_classes = num_thing_classes, num_classes
        k = scores.shape[0]
        self.scores_list, self.labels_list = scores.tolist(), labels.tolist()
        # kernels the score test keeps: the only ones whose own-mask areas are ever needed
        self.eligible = np.array([not (lab < num_thing_classes and s < instance_score_thr)
                                  for s, lab in zip(self.scores_list, self.labels_list)], bool)
        pmin, pmax = masks.tile_bounds()
        s = scores.to(pmin.dtype)[:, None]
        low = s * pmin * (1 - _EPS) - _TINY   # <= score * prob on every pixel of the tile
        high = s * pmax * (1 + _EPS) + _TINY  # >= score * prob
        self.argmax_cand = (high >= low.amax(0)).numpy()  # (K, T)
        if num_classes is not None:
            class_low = low.new_full((num_classes, low.shape[1]), -math.inf)
            class_low.scatter_reduce_(0, labels[:, None].expand_as(low), low, "amax")
            self.sem_cand = (high >= class_low[labels]).numpy()
        # tiles whose every probability is >= / < mask_thr (same comparison as the counts)
        self.all_in = (pmin * (1 - _EPS) - _TINY >= mask_thr).numpy()
        self.all_out = ~(pmax * (1 + _EPS) + _TINY >= mask_thr).numpy()
        # own masks to count: those of eligible kernels that can own pixels, on the tiles where
        # the bounds do not give the count
        self.count_cand = ((self.eligible & self.argmax_cand.any(1))[:, None]
                           & ~self.all_in & ~self.all_out)
        rows, cols = masks.row_tiles, masks.col_tiles
        self.tiles = [(ty, tx) for ty in range(len(rows)) for tx in range(len(cols))]
        self.tile_area = np.array([(rows[ty][1] - rows[ty][0]) * (cols[tx][1] - cols[tx][0])
                                   for ty, tx in self.tiles], dtype=np.int64)
        self.own_count = np.zeros((k, len(self.tiles)), dtype=np.int64)  # exact counts ...
        self.own_known = np.zeros((k, len(self.tiles)), dtype=bool)      # ... where known

    def _slices(self, t: int):
        ty, tx = self.tiles[t]
        (y0, y1), (x0, x1) = self.masks.row_tiles[ty], self.masks.col_tiles[tx]
        return slice(y0, y1), slice(x0, x1)

    def _exact(self, t: int, channels: np.ndarray) -> torch.Tensor:
        """Exact probabilities on tile t; counts the own masks of eligible kernels on the way."""
        probs = self.masks.tile(channels, *self.tiles[t])
        counted = self.eligible[channels]
        if counted.any():
            sub = probs if counted.all() else probs[torch.from_numpy(np.flatnonzero(counted))]
            self.own_count[channels[counted], t] = (sub >= self.mask_thr).sum((1, 2)).numpy()
            self.own_known[channels[counted], t] = True
        return probs

    def owners_and_semantic(self, workers: int):
        """The argmax owner of every pixel and the semantic scores (or None)."""
        out_h, out_w = self.masks.output_size
        self.owner = torch.empty((out_h, out_w), dtype=torch.int64)
        self.sem = None
        if self.num_classes is not None:
            # every tile writes all its channels
            self.sem = self.scores.new_empty((self.num_classes, out_h, out_w))
        _for_each(self._tile_owner_and_semantic, range(len(self.tiles)), workers)
        return self.owner, self.sem

    def _tile_owner_and_semantic(self, t: int):
        owner, sem = self.owner, self.sem
        ys, xs = self._slices(t)
        cand = np.flatnonzero(self.argmax_cand[:, t])
        channels = cand if len(cand) > 1 else cand[:0]
        channels = np.union1d(channels, np.flatnonzero(self.count_cand[:, t]))
        if sem is not None:
            sem_cand = np.flatnonzero(self.sem_cand[:, t])
            channels = np.union1d(channels, sem_cand)
        if len(channels) == 0:
            owner[ys, xs] = int(cand[0])
            return
        index = torch.from_numpy(channels)
        # score * prob as the dense merge (a contiguous copy of the exact tile)
        weighted = self._exact(t, channels) * self.scores[index][:, None, None]
        if len(cand) == 1:
            owner[ys, xs] = int(cand[0])
        else:  # candidates keep their order: ties go to the first kernel, as over all K
            values = weighted
            if len(cand) < len(channels):
                values = weighted[torch.from_numpy(np.searchsorted(channels, cand))]
            owner[ys, xs] = torch.from_numpy(cand)[_first_argmax(values)]
        if sem is not None:
            values = weighted
            if len(sem_cand) < len(channels):
                values = weighted[torch.from_numpy(np.searchsorted(channels, sem_cand))]
            classes = self.labels[torch.from_numpy(sem_cand)][:, None, None]
            # the class max over its candidates (0 stays for classes without kernels), in a
            # contiguous buffer: scatter_reduce_ into a strided view is ~30x slower
            tile_sem = values.new_zeros((self.num_classes,) + values.shape[1:])
            tile_sem.scatter_reduce_(0, classes.expand_as(values), values, "amax",
                                     include_self=False)
            sem[:, ys, xs] = tile_sem

    def own_areas(self) -> np.ndarray:
        """Own-mask areas, exact for every eligible kernel that can own pixels: counted on the
        tiles where the bounds do not give them, whole tiles where every value >= mask_thr."""
        counted = np.where(self.own_known, self.own_count, 0).sum(1)
        return counted + ((~self.own_known & self.all_in) * self.tile_area).sum(1)

    def run(self, overlap_thr: float):
        workers = torch.get_num_threads()
        with _one_thread():
            owner, sem = self.owners_and_semantic(workers)
        k = self.scores.shape[0]
        region_area = torch.bincount(owner.flatten(), minlength=k).tolist()
        own_area = self.own_areas().tolist()
        lut = torch.zeros(k, dtype=torch.int32)
        segments = []
        for idx in torch.argsort(self.scores, descending=True).tolist():
            area, own = region_area[idx], own_area[idx]
            if not self.eligible[idx] or area == 0 or own == 0 or area / own < overlap_thr:
                continue
            label = self.labels_list[idx]
            segment_id = len(segments) + 1
            lut[idx] = segment_id
            segments.append({"id": segment_id, "label": label,
                             "isthing": label < self.num_thing_classes,
                             "score": self.scores_list[idx], "kernel": idx})
        return lut[owner], segments, sem


def panoptic_merge(scores: torch.Tensor, labels: torch.Tensor, mask_probs: torch.Tensor,
                   num_thing_classes: int, instance_score_thr: float = 0.3,
                   overlap_thr: float = 0.6, mask_thr: float = 0.5
                   ) -> Tuple[torch.Tensor, List[Dict]]:
    """
    Args:
        scores, labels: (K,) kernel scores and internal labels.
        mask_probs: (K, H, W) mask probabilities (sigmoid) at the output resolution.
    Returns:
        panoptic map (H, W) int32 with 0 = VOID and segment ids 1..n (in decreasing score order),
        and one dict per segment: {"id", "label" (internal), "isthing", "score", "kernel"}.
    """
    pan, segments, _ = merge_kernels(scores, labels, KernelMasks(mask_probs), num_thing_classes,
                                     instance_score_thr, overlap_thr, mask_thr)
    return pan, segments


def _dense_panoptic_merge(scores, labels, mask_probs, num_thing_classes, instance_score_thr,
                          overlap_thr, mask_thr):
    """:func:`panoptic_merge` on all pixels of all masks (other devices, unsupported inputs)."""
    k, h, w = mask_probs.shape
    if k == 0:
        return torch.zeros((h, w), dtype=torch.int32, device=mask_probs.device), []
    owner = (scores[:, None, None] * mask_probs).argmax(dim=0)  # (H, W) kernel index
    region_area = torch.bincount(owner.flatten(), minlength=k).cpu()
    own_area = (mask_probs >= mask_thr).flatten(1).sum(1).cpu()
    order = torch.argsort(scores, descending=True).cpu().tolist()
    scores_cpu, labels_cpu = scores.detach().cpu(), labels.cpu()
    lut = torch.zeros(k, dtype=torch.int32)
    segments = []
    for idx in order:
        label = int(labels_cpu[idx])
        isthing = label < num_thing_classes
        score = float(scores_cpu[idx])
        if isthing and score < instance_score_thr:
            continue
        area, own = int(region_area[idx]), int(own_area[idx])
        if area == 0 or own == 0 or area / own < overlap_thr:
            continue
        segment_id = len(segments) + 1
        lut[idx] = segment_id
        segments.append({"id": segment_id, "label": label, "isthing": isthing, "score": score,
                         "kernel": idx})
    return lut.to(owner.device)[owner], segments


def semantic_from_kernels(scores: torch.Tensor, labels: torch.Tensor, mask_probs: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
    """(C, H, W) semantic scores: per class, the max of score * mask over its kernels (0 if
    none)."""
    weighted = scores[:, None, None] * mask_probs
    sem = weighted.new_zeros((num_classes,) + tuple(mask_probs.shape[1:]))
    for label in torch.unique(labels).tolist():
        sem[label] = weighted[labels == label].amax(dim=0)
    return sem
