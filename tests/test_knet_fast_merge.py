"""The tiled K-Net merge (sfnet_d2/modeling/meta_arch/knet/inference.py) against the dense merge it
replaced, kept here verbatim as the reference: resize every mask to the output, argmax over all
kernels, count areas, visit kernels by score. Panoptic maps, segments (ids, labels, isthing,
scores, kernels) and semantic scores must be IDENTICAL (torch.equal, ==), on random, structured,
quantised (ties), empty, all-stuff, all-thing, padded, resized inputs and the tiny model.
``python tests/test_knet_fast_merge.py`` times both at 1024x2048 (docs/BENCHMARK.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from helpers import tiny_knet_cfg
from sfnet_d2.modeling.meta_arch.knet import (KernelMasks, kernel_scores_and_labels,
                                              merge_kernels, panoptic_merge)


# --- the reference: the dense merge as it was before the tiled one --------------------------

def reference_panoptic_merge(scores, labels, mask_probs, num_thing_classes,
                             instance_score_thr=0.3, overlap_thr=0.6, mask_thr=0.5):
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


def reference_semantic(scores, labels, mask_probs, num_classes):
    weighted = scores[:, None, None] * mask_probs
    sem = weighted.new_zeros((num_classes,) + tuple(mask_probs.shape[1:]))
    for label in torch.unique(labels).tolist():
        sem[label] = weighted[labels == label].amax(dim=0)
    return sem


def reference_resize(low_probs, padded_size, image_size, output_size):
    """SFNetKNet.inference's resize: (K, h, w) stride-4 probabilities -> the output size."""
    (h, w), (out_h, out_w) = image_size, output_size
    probs = F.interpolate(low_probs[None], size=padded_size, mode="bilinear",
                          align_corners=False)[0]
    if (out_h, out_w) == (h, w):
        return probs[:, :h, :w]
    return sem_seg_postprocess(probs, (h, w), out_h, out_w)


# --- inputs -----------------------------------------------------------------------------------

def structured_probs(k, h, w, gen, sharpness=6.0):
    """Blob-like masks as a network makes them: smooth noise at 1/8, upsampled, sharpened."""
    coarse = torch.randn(1, k, max(h // 8, 2), max(w // 8, 2), generator=gen) * sharpness
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].sigmoid()


def scene_probs(num_proposals, num_stuff, h, w, gen):
    """A trained model's look: stuff kernels tile the image in blocks, each thing kernel covers
    an ellipse, logits +-6 with noise, smoothed by a bilinear upsampling."""
    ch, cw = max(h // 4, 2), max(w // 4, 2)
    blocks = torch.randint(0, max(num_stuff, 1), (1, 1, max(ch // 3, 1), max(cw // 3, 1)),
                           generator=gen)
    region = F.interpolate(blocks.float(), size=(ch, cw), mode="nearest")[0, 0].long()
    stuff = (F.one_hot(region, max(num_stuff, 1)).permute(2, 0, 1).float() - 0.5) * 12
    ys, xs = torch.arange(ch)[:, None].float(), torch.arange(cw)[None].float()
    things = []
    for _ in range(num_proposals):
        cy, cx = (torch.rand(2, generator=gen) * torch.tensor([ch, cw])).tolist()
        ry, rx = (1 + torch.rand(2, generator=gen) * torch.tensor([ch, cw]) / 5).tolist()
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
        things.append((inside.float() - 0.5) * 12)
    logits = torch.cat(([torch.stack(things)] if things else []) + [stuff[:num_stuff]])
    logits = logits + torch.randn(logits.shape, generator=gen)
    return F.interpolate(logits[None], size=(h, w), mode="bilinear",
                         align_corners=False)[0].sigmoid()


def quantised(probs):
    """Values in {0, .25, .5, .75, 1}: exact ties between kernels and values at MASK_THR."""
    return (probs * 4).round() / 4


def knet_scores(num_proposals, num_stuff, gen, high_things=8):
    """Mostly low thing scores, a few high ones, stuff 0.4-0.9 (a trained model's look)."""
    things = torch.rand(num_proposals, generator=gen) * 0.25
    things[torch.randperm(num_proposals, generator=gen)[:high_things]] += 0.75
    return torch.cat([things, 0.4 + 0.5 * torch.rand(num_stuff, generator=gen)])


def assert_identical(got, expected):
    pan, segments = got[:2]
    ref_pan, ref_segments = expected[:2]
    assert pan.dtype == ref_pan.dtype and pan.shape == ref_pan.shape
    assert int((pan != ref_pan).sum()) == 0
    assert segments == ref_segments  # ids, labels, isthing, exact float scores, kernels


def check_low_res(low, scores, labels, num_things, padded, image, output, num_classes=None,
                  **thresholds):
    masks = KernelMasks(low, padded, image, output)
    pan, segments, sem = merge_kernels(scores, labels, masks, num_things,
                                       num_classes=num_classes, **thresholds)
    probs = reference_resize(low, padded, image, output)
    assert_identical((pan, segments), reference_panoptic_merge(scores, labels, probs, num_things,
                                                               **thresholds))
    if num_classes is not None:
        assert torch.equal(sem, reference_semantic(scores, labels, probs, num_classes))
    return segments


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """PyTorch picks its resize kernel by thread count too: check both."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


# --- tiles are resized exactly as the whole image ----------------------------------------------

@pytest.mark.parametrize("hs,ws", [(40, 72), (17, 90), (33, 35), (80, 8)])
def test_tile_resize_equals_the_full_resize(threads, hs, ws):
    gen = torch.Generator().manual_seed(hs * ws)
    low = structured_probs(9, hs, ws, gen)
    padded = (4 * hs, 4 * ws)
    masks = KernelMasks(low, padded, padded, padded)
    assert masks.factor == 4 and masks.tiled_merge_supported()
    full = reference_resize(low, padded, padded, padded)
    for ty, (y0, y1) in enumerate(masks.row_tiles):
        for tx, (x0, x1) in enumerate(masks.col_tiles):
            for channels in ([3], [0, 5, 8], [1, 2, 4, 6, 7], list(range(9))):
                tile = masks.tile(np.asarray(channels), ty, tx)
                assert torch.equal(tile, full[channels, y0:y1, x0:x1]), (ty, tx, channels)


def test_bilinear_kernel_choice_matters_so_crops_avoid_the_other_kernel():
    # what _crop_resize guards against: PyTorch's vectorised bilinear kernel (outputs with
    # height + width <= 128) rounds differently from the generic one the full resize uses
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(1, 4, 64, 128, generator=gen)
    full = F.interpolate(low, size=(256, 512), mode="bilinear", align_corners=False)
    small = F.interpolate(low[:, :, 10:22, 0:18], size=(48, 72), mode="bilinear",
                          align_corners=False)
    assert not torch.equal(small[:, :, 4:44, :68], full[:, :, 44:84, :68])


# --- the merge ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["iid", "smooth", "scene", "quantised_scene"])
def test_random_overlapping_masks_padded_non_square(threads, kind):
    gen = torch.Generator().manual_seed(7)
    num_things, num_stuff, proposals = 8, 11, 30
    k, hs, ws = proposals + num_stuff, 44, 70   # padded 176x280 -> image 170x259
    if kind == "iid":
        low = torch.rand(k, hs, ws, generator=gen)
    elif kind == "smooth":
        low = structured_probs(k, hs, ws, gen)
    else:
        low = scene_probs(proposals, num_stuff, hs, ws, gen)
        low = quantised(low) if kind == "quantised_scene" else low
    scores = knet_scores(proposals, num_stuff, gen)
    labels = torch.cat([torch.randint(0, num_things, (proposals,), generator=gen),
                        torch.arange(num_stuff) + num_things])
    segments = check_low_res(low, scores, labels, num_things, (176, 280), (170, 259),
                             (170, 259), num_classes=num_things + num_stuff)
    if "scene" in kind:  # (noise leaves no kernel a region that covers its mask: all VOID)
        assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)


@pytest.mark.parametrize("overlap_thr,mask_thr", [(0.6, 0.5), (0.0, 0.5), (0.3, 0.25),
                                                  (1.0, 0.75)])
def test_thresholds(overlap_thr, mask_thr):
    gen = torch.Generator().manual_seed(3)
    k, hs, ws = 25, 36, 50
    low = scene_probs(20, 5, hs, ws, gen)
    scores = knet_scores(20, 5, gen)
    labels = torch.cat([torch.randint(0, 3, (20,), generator=gen), torch.arange(5) + 3])
    check_low_res(low, scores, labels, 3, (144, 200), (144, 200), (144, 200), num_classes=8,
                  overlap_thr=overlap_thr, mask_thr=mask_thr, instance_score_thr=0.3)


def test_overlap_threshold_equal_to_a_kernels_ratio():
    # thresholds at exactly some kernel's region / own-mask ratio (kept: >=) and just above it
    # (dropped): the own-area bounds cannot decide these, the exact counts must
    gen = torch.Generator().manual_seed(12)
    k, padded = 26, (152, 216)
    low = scene_probs(20, 6, 38, 54, gen)
    scores = knet_scores(20, 6, gen)
    labels = torch.cat([torch.randint(0, 3, (20,), generator=gen), torch.arange(6) + 3])
    probs = reference_resize(low, padded, padded, padded)
    region = torch.bincount((scores[:, None, None] * probs).argmax(0).flatten(), minlength=k)
    own = (probs >= 0.5).flatten(1).sum(1)
    ratios = sorted({int(a) / int(o) for a, o in zip(region, own) if a > 0 and o > 0})
    assert len(ratios) >= 6
    for ratio in ratios[1:-1:max(len(ratios) // 4, 1)]:
        kept = check_low_res(low, scores, labels, 3, padded, padded, padded, overlap_thr=ratio)
        above = check_low_res(low, scores, labels, 3, padded, padded, padded,
                              overlap_thr=float(np.nextafter(ratio, 1.0)))
        assert len(above) < len(kept)


def test_own_area_counted_under_another_kernels_region():
    # thing A: a disk, of which stuff B (right part, higher score * prob) takes the right side;
    # stuff C (left background) loses to A. Under B, in no argmax test, A's disk edge and a
    # plateau just above MASK_THR count in A's own area, a plateau just below does not:
    # thresholds at A's exact region / own ratio (kept) and just above it (dropped) need all
    hs, ws, padded = 48, 128, (192, 512)
    ys, xs = torch.meshgrid(torch.arange(hs).float(), torch.arange(ws).float(), indexing="ij")
    disk = ((ys - 24) ** 2 + (xs - 32) ** 2).sqrt()
    low = torch.stack([
        torch.where(xs >= 96, 0.51, torch.where(xs >= 60, 0.49, torch.sigmoid(18.0 - disk))),
        torch.where(xs >= 36, 0.95, 0.02),                        # B (stuff, label 1)
        torch.where(xs < 36, 0.6, 0.02),                          # C (stuff, label 2)
        torch.full((hs, ws), 0.01),                               # D (thing, low everywhere)
    ])
    scores, labels = torch.tensor([0.4, 0.95, 0.5, 0.9]), torch.tensor([0, 1, 2, 0])
    probs = reference_resize(low, padded, padded, padded)
    region = int(((scores[:, None, None] * probs).argmax(0) == 0).sum())
    own = int((probs[0] >= 0.5).sum())
    assert 0.1 < region / own < 0.9  # A keeps only part of its own mask
    for thr, kept in [(region / own, True), (float(np.nextafter(region / own, 1.0)), False)]:
        # (semantic scores make A's values, hence its own counts, known on more tiles)
        for num_classes in (None, 3):
            segments = check_low_res(low, scores, labels, 1, padded, padded, padded,
                                     overlap_thr=thr, num_classes=num_classes)
            assert (0 in [s["kernel"] for s in segments]) == kept


def test_empty_result_nothing_above_the_score_threshold():
    gen = torch.Generator().manual_seed(4)
    low = structured_probs(12, 40, 40, gen)
    scores = torch.rand(12, generator=gen) * 0.29   # all things, all below 0.3
    labels = torch.randint(0, 4, (12,), generator=gen)
    segments = check_low_res(low, scores, labels, 4, (160, 160), (150, 160), (150, 160),
                             num_classes=4)
    assert segments == []


def test_empty_result_every_kernel_fails_the_overlap_test():
    gen = torch.Generator().manual_seed(5)
    low = torch.rand(16, 40, 40, generator=gen)    # independent noise: tiny argmax regions
    scores, labels = 0.5 + 0.5 * torch.rand(16, generator=gen), torch.arange(16)
    assert check_low_res(low, scores, labels, 8, (160, 160), (160, 160), (160, 160)) == []


@pytest.mark.parametrize("num_things", [0, 6])  # all stuff / all things
def test_all_stuff_and_all_things(num_things):
    gen = torch.Generator().manual_seed(6)
    k = 6 if num_things == 0 else 20
    low = scene_probs(k if num_things else 0, 0 if num_things else k, 40, 48, gen)
    scores = 0.2 + 0.8 * torch.rand(k, generator=gen)
    labels = (torch.arange(k) if num_things == 0
              else torch.randint(0, num_things, (k,), generator=gen))
    segments = check_low_res(low, scores, labels, num_things, (160, 192), (160, 192),
                             (160, 192), num_classes=max(num_things, k))
    assert segments and all(s["isthing"] == (num_things > 0) for s in segments)


@pytest.mark.parametrize("copies", [2, 5])  # up to 12 / 30 candidates: both argmax kernels
def test_ties_in_scores_and_values(copies):
    # groups of kernels with the same score and the same mask: every pixel an exact tie
    gen = torch.Generator().manual_seed(8)
    base = quantised(scene_probs(4, 2, 40, 40, gen))
    low = base.repeat_interleave(copies, dim=0)
    scores = torch.tensor([0.9, 0.5, 0.7, 0.4, 0.9, 0.6]).repeat_interleave(copies)
    labels = torch.tensor([0, 1, 0, 2, 3, 1]).repeat_interleave(copies)
    segments = check_low_res(low, scores, labels, 2, (160, 160), (160, 160), (160, 160),
                             num_classes=4, overlap_thr=0.0)
    assert {s["kernel"] % copies for s in segments} == {0}  # the first of a group owns ties


def test_resized_output_size():
    # an input resized by the test-time augmentation: crop, then bilinear to the original size
    gen = torch.Generator().manual_seed(9)
    k = 20
    low = scene_probs(14, 6, 32, 48, gen)
    scores = knet_scores(14, 6, gen)
    labels = torch.cat([torch.randint(0, 3, (14,), generator=gen), torch.arange(6) + 3])
    for output in [(250, 370), (100, 150), (128, 190)]:
        masks = KernelMasks(low, (128, 192), (120, 190), output)
        assert masks.factor == 0 and masks.tiled_merge_supported()
        check_low_res(low, scores, labels, 3, (128, 192), (120, 190), output, num_classes=9)


def test_probabilities_given_at_the_output_size():
    gen = torch.Generator().manual_seed(10)
    probs = scene_probs(24, 6, 150, 210, gen)
    scores = knet_scores(24, 6, gen)
    labels = torch.cat([torch.randint(0, 5, (24,), generator=gen), torch.arange(6) + 5])
    assert_identical(panoptic_merge(scores, labels, probs, 5),
                     reference_panoptic_merge(scores, labels, probs, 5))


def test_inputs_that_require_grad(threads):
    # a model called without no_grad: the tile threads must not write into an autograd graph
    gen = torch.Generator().manual_seed(13)
    low = scene_probs(20, 6, 40, 56, gen).requires_grad_()
    scores = knet_scores(20, 6, gen).requires_grad_()
    labels = torch.cat([torch.randint(0, 3, (20,), generator=gen), torch.arange(6) + 3])
    with torch.no_grad():
        probs = reference_resize(low, (160, 224), (160, 224), (160, 224))
        expected = reference_panoptic_merge(scores, labels, probs, 3)
        expected_sem = reference_semantic(scores, labels, probs, 9)
    pan, segments, sem = merge_kernels(scores, labels, KernelMasks(low, (160, 224)), 3,
                                       num_classes=9)
    assert_identical((pan, segments), expected)
    assert torch.equal(sem, expected_sem) and not sem.requires_grad  # (computed without graph)


@pytest.mark.parametrize("case", ["three_kernels", "small_output", "float16", "negative"])
def test_unsupported_inputs_take_the_dense_merge(case):
    gen = torch.Generator().manual_seed(11)
    k, padded = (3 if case == "three_kernels" else 8), (160, 160)
    low = structured_probs(k, 40, 40, gen)
    if case == "small_output":
        low, padded = low[:, :12, :16], (48, 64)
    elif case == "negative":
        low = low - 0.1
    scores, labels = 0.5 + 0.5 * torch.rand(k, generator=gen), torch.arange(k) % 4
    if case == "float16":
        low, scores = low.half(), scores.half()
    assert not KernelMasks(low, padded, padded, padded).tiled_merge_supported()
    check_low_res(low, scores, labels, 2, padded, padded, padded, num_classes=4)


# --- the model ----------------------------------------------------------------------------------

def reference_inference(model, batched_inputs, images, last_stage):
    """SFNetKNet.inference + panoptic_from_kernels as they were, on the same head outputs."""
    cls_logits, mask_logits = last_stage
    mask_logits = model._upsample(mask_logits)
    results = []
    for i, x in enumerate(batched_inputs):
        h, w = images.image_sizes[i]
        out_h, out_w = x.get("height", h), x.get("width", w)
        probs = F.interpolate(mask_logits[i:i + 1].sigmoid(), size=images.tensor.shape[-2:],
                              mode="bilinear", align_corners=False)[0]
        if (out_h, out_w) == (h, w):
            probs = probs[:, :h, :w]
        else:
            probs = sem_seg_postprocess(probs, (h, w), out_h, out_w)
        scores, labels = kernel_scores_and_labels(cls_logits[i], model.num_proposals,
                                                  model.layout.num_thing_classes)
        pan, segments = reference_panoptic_merge(
            scores, labels, probs, model.layout.num_thing_classes, model.instance_score_thr,
            model.overlap_thr, model.mask_thr)
        contiguous = model.layout.internal_to_contiguous
        info = [{"id": s["id"], "category_id": contiguous[s["label"]], "isthing": s["isthing"],
                 "score": s["score"]} for s in segments]
        sem = reference_semantic(scores, labels, probs, model.layout.num_classes)
        results.append({"panoptic_seg": (pan, info),
                        "sem_seg": sem[torch.as_tensor(model.layout.contiguous_to_internal)]})
    return results


def test_tiny_model_outputs_are_identical(threads):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_knet_cfg(**{"MODEL.KNET.TEST.SEMANTIC_ON": True})).eval()
    # untrained scores sit near sigmoid(-log 99) = 0.01: let some things pass the threshold
    model.instance_score_thr = 0.0
    gen = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 255, (3, 200, 290), generator=gen, dtype=torch.uint8)},
              {"image": torch.randint(0, 255, (3, 150, 260), generator=gen, dtype=torch.uint8),
               "height": 300, "width": 520}]
    with torch.no_grad():
        images = ImageList.from_tensors(
            [(x["image"] - model.pixel_mean) / model.pixel_std for x in inputs],
            model.size_divisibility)
        _, stage_outputs = model.forward_head(images.tensor)
        got = model.inference(inputs, images, stage_outputs[-1])
        expected = reference_inference(model, inputs, images, stage_outputs[-1])
    for g, e in zip(got, expected):
        assert_identical(g["panoptic_seg"], e["panoptic_seg"])
        assert torch.equal(g["sem_seg"], e["sem_seg"])
    assert any(len(g["panoptic_seg"][1]) for g in got)


# --- timing: python tests/test_knet_fast_merge.py [--rounds 5] [--threads 2] -----------------

def _benchmark_inputs(kind, num_proposals=100, num_stuff=11, num_things=8, size=(1024, 2048)):
    """Stride-8 mask logits and class logits of a Cityscapes K-Net (100 + 11 kernels): 'scene'
    (scene_probs as logits, 15 confident things, K-Net's 0.01 prior elsewhere), 'iid' noise, or
    'model': K-Net SF-R18 (configs/cityscapes/panoptic/knet_sfnet_R18.yaml, random weights as
    docs/BENCHMARK.md times it) on a random image."""
    gen = torch.Generator().manual_seed(0)
    k, c, (h, w) = num_proposals + num_stuff, num_things + num_stuff, size
    if kind == "model":
        from detectron2.modeling import build_model

        from helpers import make_cfg

        torch.manual_seed(0)
        cfg = make_cfg("configs/cityscapes/panoptic/knet_sfnet_R18.yaml", ["MODEL.WEIGHTS", ""])
        model = build_model(cfg).eval()
        image = torch.randint(0, 255, (1, 3, h, w), generator=gen).float()
        _, stages = model.forward_head((image - model.pixel_mean) / model.pixel_std)
        return stages[-1][1], stages[-1][0][0]
    if kind == "iid":
        return (torch.randn(1, k, h // 8, w // 8, generator=gen) * 4,
                torch.randn(k, c, generator=gen) * 2)
    probs = scene_probs(num_proposals, num_stuff, h // 8, w // 8, gen)
    cls = torch.full((k, c), -4.6)
    confident = torch.randperm(num_proposals, generator=gen)[:15]
    cls[confident, torch.randint(0, num_things, (15,), generator=gen)] = 2.0
    cls[torch.arange(num_proposals, k), torch.arange(num_things, c)] = 0.5 + torch.randn(
        num_stuff, generator=gen).abs()
    return torch.logit(probs.clamp(1e-6, 1 - 1e-6))[None], cls


def _postprocess(logits8, cls, impl, semantic, num_proposals=100, num_things=8):
    """SFNetKNet.inference from the last stage's outputs: x2 upsampling, sigmoid, scores (all
    implementations), then the old dense or the new tiled resize + merge."""
    size = tuple(s * 8 for s in logits8.shape[-2:])
    logits = F.interpolate(logits8, scale_factor=2, mode="bilinear", align_corners=False)
    scores, labels = kernel_scores_and_labels(cls, num_proposals, num_things)
    low = logits[0:1].sigmoid()[0]
    classes = cls.shape[1] if semantic else None
    if impl == "new":
        return merge_kernels(scores, labels, KernelMasks(low, size, size, size), num_things,
                             num_classes=classes)
    if impl == "old":
        probs = reference_resize(low, size, size, size)
        pan, segments = reference_panoptic_merge(scores, labels, probs, num_things)
        return pan, segments, classes and reference_semantic(scores, labels, probs, classes)
    return None  # "shared": the part both run


def _benchmark(rounds, threads, kinds):
    import statistics
    import time

    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, median of {rounds} rounds (+1 warm-up)")
    with torch.inference_mode():
        for kind in kinds:
            logits8, cls = _benchmark_inputs(kind)
            for semantic in (False, True):
                times = {"old": [], "new": [], "shared": []}
                for r in range(rounds + 1):
                    out = {}
                    for impl in times:  # interleaved: machine load hits all alike
                        cpu, wall = time.process_time(), time.perf_counter()
                        out[impl] = _postprocess(logits8, cls, impl, semantic)
                        if r:
                            times[impl].append((time.process_time() - cpu,
                                                time.perf_counter() - wall))
                    differing = int((out["old"][0] != out["new"][0]).sum())
                    assert out["old"][1] == out["new"][1]
                    assert not semantic or torch.equal(out["old"][2], out["new"][2])
                med = {i: [statistics.median(t[j] for t in v) for j in (0, 1)]
                       for i, v in times.items()}
                print(f"{kind:5s} sem_seg={'on ' if semantic else 'off'} "
                      f"segments={len(out['new'][1]):2d} differing pixels={differing} | " +
                      " | ".join(f"{i} cpu {c:.3f} s wall {w:.3f} s" for i, (c, w) in med.items())
                      + f" | old/new cpu {med['old'][0] / med['new'][0]:.1f}x"
                      + f" wall {med['old'][1] / med['new'][1]:.1f}x", flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Old (dense) vs new (tiled) K-Net "
                                     "post-processing at 1024x2048, 100 + 11 kernels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", nargs="+", default=["scene", "iid", "model"])
    args = parser.parse_args()
    _benchmark(args.rounds, args.threads, args.inputs)
