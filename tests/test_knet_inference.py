"""K-Net panoptic inference on hand-built kernels: scores, thresholds, overlap, VOID, no stuff limit."""
import torch

from sfnet_d2.modeling.meta_arch.knet import kernel_scores_and_labels, panoptic_merge, semantic_from_kernels

BIG = 20.0  # logit of a confident yes


def test_scores_and_labels_things_take_their_best_thing_class_stuff_its_own_class():
    # 2 thing kernels + 2 stuff kernels; classes: 2 things (0, 1) then 2 stuff (2, 3)
    logits = torch.full((4, 4), -BIG)
    logits[0, 1] = 1.0       # thing kernel 0 -> class 1
    logits[0, 3] = BIG       # ... a high STUFF logit must not count for a thing kernel
    logits[1, 0] = 0.0       # thing kernel 1 -> class 0, score 0.5
    logits[2, 3] = BIG       # stuff kernel 0 is tied to class 2: its class-3 logit is ignored
    logits[2, 2] = -1.0
    logits[3, 3] = 2.0
    scores, labels = kernel_scores_and_labels(logits, num_proposals=2, num_thing_classes=2)
    assert labels.tolist() == [1, 0, 2, 3]
    expected = torch.sigmoid(torch.tensor([1.0, 0.0, -1.0, 2.0]))
    assert torch.allclose(scores, expected)


def _masks(h, w, regions):
    m = torch.zeros(len(regions), h, w)
    for i, (ys, xs, value) in enumerate(regions):
        m[i, ys, xs] = value
    return m


def test_merge_thresholds_overlap_and_void():
    h, w = 4, 8  # every pixel is covered by some mask
    masks = _masks(h, w, [
        (slice(0, 4), slice(0, 4), 0.9),   # 0: thing, score .9, columns 0-3
        (slice(0, 2), slice(4, 8), 0.9),   # 1: thing, score .2 < 0.3: dropped -> VOID
        (slice(0, 4), slice(1, 5), 0.9),   # 2: thing, score .8, owns only column 4: 4/16 < 0.6
        (slice(2, 4), slice(4, 8), 0.9),   # 3: stuff, score .1 (no threshold for stuff): kept
        (slice(0, 1), slice(7, 8), 1.0),   # 4: stuff, 1 pixel: kept (no stuff area limit)
    ])
    scores = torch.tensor([0.9, 0.2, 0.8, 0.1, 0.25])
    labels = torch.tensor([0, 1, 0, 2, 3])  # things 0, 1; stuff 2, 3
    pan, segments = panoptic_merge(scores, labels, masks, num_thing_classes=2,
                                   instance_score_thr=0.3, overlap_thr=0.6, mask_thr=0.5)
    # segment ids follow decreasing score among the kept kernels: 0 -> 1, 4 -> 2, 3 -> 3
    assert [(s["kernel"], s["id"], s["label"], s["isthing"]) for s in segments] == [
        (0, 1, 0, True), (4, 2, 3, False), (3, 3, 2, False)]
    expected = torch.zeros(h, w, dtype=torch.int32)
    expected[:, :4] = 1      # kernel 0
    expected[0, 7] = 2       # kernel 4: .25 * 1.0 beats kernel 1's .2 * .9
    expected[2:, 5:] = 3     # kernel 3, except column 4, which kernel 2 owns
    # VOID: column 4 (kernel 2 dropped by the overlap test) and the rest of kernel 1's pixels
    assert torch.equal(pan, expected)


def test_merge_keeps_a_thing_exactly_at_the_overlap_threshold():
    masks = _masks(1, 10, [(slice(0, 1), slice(0, 10), 0.9), (slice(0, 1), slice(0, 4), 0.95)])
    scores, labels = torch.tensor([0.5, 0.99]), torch.tensor([0, 0])
    # kernel 0 keeps 6 of its 10 pixels: 0.6 >= 0.6 -> kept
    pan, segments = panoptic_merge(scores, labels, masks, 1, 0.3, 0.6, 0.5)
    assert [s["kernel"] for s in segments] == [1, 0]
    assert pan.tolist() == [[1] * 4 + [2] * 6]
    # a stricter threshold drops it and leaves its pixels VOID
    pan, segments = panoptic_merge(scores, labels, masks, 1, 0.3, 0.61, 0.5)
    assert pan.tolist() == [[1] * 4 + [0] * 6]


def test_kernel_without_own_mask_is_dropped():
    # kernel 0 wins the argmax on a pixel where its mask is only 0.4 (< mask_thr): no own area
    masks = torch.tensor([[[0.4, 0.0]], [[0.1, 0.9]]])
    pan, segments = panoptic_merge(torch.tensor([0.9, 0.9]), torch.tensor([1, 1]), masks, 1)
    assert [s["kernel"] for s in segments] == [1] and pan.tolist() == [[0, 1]]


def test_semantic_scores_are_the_per_class_max():
    masks = torch.tensor([[[0.5, 1.0]], [[1.0, 0.2]], [[0.3, 0.3]]])
    scores, labels = torch.tensor([0.8, 0.5, 0.9]), torch.tensor([0, 0, 2])
    sem = semantic_from_kernels(scores, labels, masks, num_classes=3)
    assert torch.allclose(sem, torch.tensor([[[0.5, 0.8]], [[0.0, 0.0]], [[0.27, 0.27]]]))
