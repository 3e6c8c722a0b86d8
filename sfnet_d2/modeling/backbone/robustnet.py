"""
RobustNet's instance normalisation and instance (selective) whitening as options of our backbones
(Choi et al., "RobustNet: Improving Domain Generalization in Urban-Scene Segmentation via Instance
Selective Whitening", CVPR 2021; official code ``shachoi/RobustNet``, files cited below). The SFNet
paper uses it for its domain-generalisation experiment (Table 17, Sec. 4.6). docs/ROBUSTNET.md is
the user documentation; this module is the model side, ``sfnet_d2/engine/isw_hook.py`` the
training-time covariance statistics of ISW.

``MODEL.ROBUSTNET.MODE`` (official ``--wt_layer`` code in brackets):

* ``"none"``: the backbone as before, bit-identical;
* ``"is"`` [3]: instance standardisation (IN without affine) at the ``LAYERS`` positions, no loss;
* ``"in"`` [4]: IN with a learned affine (IBN-Net, RobustNet's "IN" baseline), no loss;
* ``"iw"`` [1]: IN without affine + the instance-whitening loss on every off-diagonal covariance;
* ``"isw"`` [2]: IN without affine + the loss on the style-sensitive covariances only.

Positions (``LAYERS``; official default ``--wt_layer 0 0 2 2 2 0 0`` = stem, res2, res3):

* deep-stem ResNet: ``stem`` = the norm of the stem's third conv is replaced (official
  ``ResNet3X3.bn3``); ``resN`` = IN on the output of the stage's last block, after the residual
  addition and before its ReLU (official ``Resnet.py`` blocks with ``iw > 0``);
* STDC (our choice, RobustNet has no STDC): ``stem`` / ``res2`` = the norms of the two stem convs
  (stride 2 and 4) are replaced; ``res3..res5`` = IN on the output of the stage's last block
  (concatenated branches, already ReLU'd; no activation follows, as RobustNet does for MobileNetV2
  block outputs).

The loss (official ``network/instance_whitening.py``, ``cov_settings.py``, ``deepv3.py``): for each
IN output ``f`` (B, C, H, W) the per-instance covariance ``S = f f^T / (HW - 1) + 1e-5 I`` (``f`` is
already zero-mean per channel), and per instance ``sum |S * M| / sum(M)`` with ``M`` the strict
upper triangle (IW) or the selected sensitive elements (ISW); mean over the batch, mean over the
layers, times ``LOSS_WEIGHT`` (official ``--wt_reg_weight`` 0.6). The backbone keeps it, in
training only, as ``"loss_whitening"`` among its auxiliary losses (:class:`WhiteningLossMixin`),
which ``SFNetSemanticSegmentor`` adds to the model's losses
(sfnet_d2/modeling/meta_arch/semantic.py); the feature dict carries features only.

ISW's mask (official ``CovMatrix_ISW.set_mask_matrix``): the variance, over an (original,
photometrically augmented) image pair, of each strict-upper covariance element, averaged over the
images, is clustered into ``CLUSTERS`` groups by optimal 1-D k-means over all C*C entries (the
zeros of the diagonal and lower triangle included, as the official ``kmeans1d`` call); everything
outside the lowest-variance group is "sensitive". Each of ``TRIALS`` rounds gives a mask; the
final mask is their intersection. Until the mask exists the ISW loss is zero (the official loop
applies no whitening loss in the first ``cov_stat_epoch + 1`` epochs).
"""
import contextlib
import logging
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ROBUSTNET_MODES", "LOSS_MODES", "WHITENING_LOSS_KEY", "InstanceWhitening",
    "instance_covariance", "strict_upper_mask", "whitening_loss", "covariance_pair_variance",
    "kmeans_1d", "select_sensitive_covariances", "whitening_modules", "record_whitened_features",
    "robustnet_whitening_loss", "forward_with_whitening_loss", "WhiteningLossMixin",
    "robustnet_backbone_options", "check_robustnet_applied",
]

logger = logging.getLogger(__name__)

ROBUSTNET_MODES = ("none", "is", "in", "iw", "isw")
LOSS_MODES = ("iw", "isw")
WHITENING_LOSS_KEY = "loss_whitening"
_BUILDERS_WITH_OPTIONS = ("build_deep_stem_resnet_backbone", "build_stdc_backbone")
_BN_ONLY_KEYS = ("running_mean", "running_var", "num_batches_tracked")


class InstanceWhitening(nn.Module):
    """
    Instance normalisation at a RobustNet position (``F.instance_norm``, eps 1e-5, no running
    statistics: the same in training and inference, as the official ``nn.InstanceNorm2d``).
    Mode ``"in"`` has a per-channel affine; ``"isw"`` holds its selected covariance elements in
    the buffers ``sensitive_mask`` (C, C bool, strict upper triangle) and ``mask_ready``, which
    checkpoints keep.

    Loading: a checkpoint made without this option (e.g. ImageNet backbone weights) has the
    BatchNorm this module replaced, or nothing here. BatchNorm running statistics (and, without an
    affine, its weight/bias) are dropped with a log line; missing ISW buffers keep "no mask yet"
    and a missing affine keeps (1, 0). Other keys load or mismatch as usual.
    """

    def __init__(self, channels: int, mode: str, eps: float = 1e-5):
        super().__init__()
        if mode not in ROBUSTNET_MODES or mode == "none":
            raise ValueError(
                f"InstanceWhitening mode must be one of {ROBUSTNET_MODES[1:]}, got {mode!r}")
        self.channels = channels
        self.mode = mode
        self.eps = eps
        if mode == "in":
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if mode == "isw":
            self.register_buffer("sensitive_mask",
                                 torch.zeros(channels, channels, dtype=torch.bool))
            self.register_buffer("mask_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, mode={self.mode}, eps={self.eps}"

    def set_sensitive_mask(self, mask: torch.Tensor) -> None:
        if self.mode != "isw":
            raise RuntimeError(f"set_sensitive_mask on an InstanceWhitening of mode {self.mode!r}")
        if tuple(mask.shape) != (self.channels, self.channels):
            raise ValueError(
                f"sensitive mask of shape {tuple(mask.shape)} for {self.channels} channels")
        upper = strict_upper_mask(self.channels, mask.device)
        self.sensitive_mask.copy_(mask.to(torch.bool) & upper)
        self.mask_ready.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        drop = [prefix + n for n in _BN_ONLY_KEYS if prefix + n in own]
        if self.weight is None:
            drop += [prefix + n for n in ("weight", "bias") if prefix + n in own]
        for key in drop:
            del own[key]
        if drop:
            logger.warning(f"RobustNet ({self.mode}) at {prefix[:-1]}: the checkpoint's BatchNorm "
                           f"entries {[k[len(prefix):] for k in drop]} are not used (this norm is "
                           "instance normalisation)")
        n_missing = len(missing_keys)
        super()._load_from_state_dict(own, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        tolerated = [k for k in missing_keys[n_missing:] if k[len(prefix):] in
                     ("sensitive_mask", "mask_ready", "weight", "bias")]
        for key in tolerated:
            missing_keys.remove(key)
        if tolerated:
            logger.info(f"RobustNet ({self.mode}) at {prefix[:-1]}: not in the checkpoint, kept at "
                        f"their initial values: {[k[len(prefix):] for k in tolerated]}")


# ----------------------------------------------------------------------------- covariance, loss

def strict_upper_mask(channels: int, device=None) -> torch.Tensor:
    """(C, C) bool, True above the diagonal (official ``reversal_i``)."""
    return torch.ones(channels, channels, dtype=torch.bool, device=device).triu(diagonal=1)


def instance_covariance(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-instance (B, C, C) ``f f^T / (HW - 1) + eps I`` of (B, C, H, W) features, in float32
    (official ``get_covariance_matrix``; no mean is subtracted: the features are IN outputs)."""
    b, c, h, w = features.shape
    x = features.reshape(b, c, h * w).float()
    cov = torch.bmm(x, x.transpose(1, 2)) / max(h * w - 1, 1)
    return cov + eps * torch.eye(c, device=x.device, dtype=x.dtype)


def whitening_loss(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Official ``instance_whitening_loss`` with margin 0: per instance, the sum of ``|S|`` over
    the masked elements divided by their number; mean over the batch. An empty mask gives 0."""
    cov = instance_covariance(features)
    weights = mask.to(cov.dtype)
    per_instance = (cov * weights).abs().sum(dim=(1, 2)) / weights.sum().clamp(min=1.0)
    return per_instance.mean()


def covariance_pair_variance(cov_original: torch.Tensor,
                             cov_augmented: torch.Tensor) -> torch.Tensor:
    """Per image, the unbiased variance over the (original, augmented) pair of every strict-upper
    covariance element, ``(a - b)^2 / 2``; other elements 0. (B, C, C). The official code takes
    ``torch.var`` over its covariance batch [augmented, original] of one image."""
    upper = strict_upper_mask(cov_original.shape[-1], cov_original.device)
    diff = (cov_augmented - cov_original) * upper
    return diff * diff / 2.0


def kmeans_1d(values, k: int) -> np.ndarray:
    """
    Optimal k-means of 1-D values (minimum within-cluster sum of squares), the result of the
    ``kmeans1d`` package RobustNet uses: cluster labels numbered by value, 0 = lowest. Optimal
    1-D clusters are intervals of the sorted values; dynamic programming over the sorted distinct
    values (weighted by multiplicity) with the divide-and-conquer optimisation, which holds because
    the interval cost satisfies the quadrangle inequality.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if k < 1:
        raise ValueError(f"kmeans_1d needs k >= 1, got {k}")
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    n = uniq.size
    if k >= n:
        return inverse.astype(np.int64)
    span = uniq[-1] - uniq[0]
    u = (uniq - uniq[0]) / span  # the partition does not depend on shift and scale
    w = counts.astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cs = np.concatenate([[0.0], np.cumsum(w * u)])
    cq = np.concatenate([[0.0], np.cumsum(w * u * u)])

    def cost(i, j):  # within-cluster SSE of distinct values i..j-1 (arrays broadcast)
        s = cs[j] - cs[i]
        return np.maximum(cq[j] - cq[i] - s * s / (cw[j] - cw[i]), 0.0)

    if k == 2:  # one split: every position at once
        cut = 1 + int(np.argmin(cost(0, np.arange(1, n)) + cost(np.arange(1, n), n)))
        return (np.arange(n) >= cut).astype(np.int64)[inverse]
    best = np.full(n + 1, np.inf)
    best[1:] = cost(0, np.arange(1, n + 1))
    splits = []
    for m in range(2, k + 1):
        prev, best = best, np.full(n + 1, np.inf)
        split = np.zeros(n + 1, dtype=np.int64)
        stack = [(m, n, m - 1, n - 1)]  # fill best[j] for j in [lo, hi], split in [olo, ohi]
        while stack:
            lo, hi, olo, ohi = stack.pop()
            if lo > hi:
                continue
            j = (lo + hi) // 2
            cand = np.arange(olo, min(ohi, j - 1) + 1)
            total = prev[cand] + cost(cand, j)
            t = int(np.argmin(total))
            best[j], split[j] = total[t], cand[t]
            stack.append((lo, j - 1, olo, cand[t]))
            stack.append((j + 1, hi, cand[t], ohi))
        splits.append(split)
    labels = np.empty(n, dtype=np.int64)
    end = n
    for m in range(k, 1, -1):
        start = int(splits[m - 2][end])
        labels[start:end] = m - 1
        end = start
    labels[:end] = 0
    return labels[inverse]


def select_sensitive_covariances(variance: torch.Tensor, clusters: int) -> torch.Tensor:
    """(C, C) bool: the elements of ``variance`` outside the lowest of ``clusters`` optimal 1-D
    k-means groups over all C*C entries (official: ``kmeans1d.cluster`` then the top
    ``n - count(label 0)`` variances), restricted to the strict upper triangle."""
    if clusters < 2:
        raise ValueError(f"MODEL.ROBUSTNET.CLUSTERS must be >= 2, got {clusters}")
    labels = kmeans_1d(variance.detach().double().cpu().numpy().ravel(), clusters)
    mask = torch.from_numpy(labels != 0).reshape(variance.shape).to(variance.device)
    return mask & strict_upper_mask(variance.shape[-1], variance.device)


# ----------------------------------------------------------------------------- backbone helpers

def whitening_modules(module: nn.Module) -> List[InstanceWhitening]:
    return [m for m in module.modules() if isinstance(m, InstanceWhitening)]


@contextlib.contextmanager
def record_whitened_features(
        module: nn.Module) -> Iterator[List[Tuple[InstanceWhitening, torch.Tensor]]]:
    """While active, every forward of an ``InstanceWhitening`` inside ``module`` appends
    ``(that module, its output)`` to the yielded list (forward hooks, removed on exit)."""
    recorded: List[Tuple[InstanceWhitening, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, _inp, out: recorded.append((mod, out)))
               for m in whitening_modules(module)]
    try:
        yield recorded
    finally:
        for h in handles:
            h.remove()


def robustnet_whitening_loss(
        recorded: Sequence[Tuple[InstanceWhitening, torch.Tensor]]) -> torch.Tensor:
    """Mean over the recorded IW/ISW layers of :func:`whitening_loss` (official ``wt_loss /
    len(w_arr)``)."""
    losses = []
    for module, features in recorded:
        if module.mode == "iw":
            upper = strict_upper_mask(module.channels, features.device)
            losses.append(whitening_loss(features, upper))
        elif module.mode == "isw":
            losses.append(whitening_loss(features, module.sensitive_mask))
    if not losses:
        raise RuntimeError("RobustNet whitening loss: no IW/ISW layer ran in this forward pass")
    return torch.stack(losses).mean()


def forward_with_whitening_loss(backbone: nn.Module, forward_fn, x: torch.Tensor, mode: str,
                                loss_weight: float) -> Tuple[Dict[str, torch.Tensor],
                                                             Dict[str, torch.Tensor]]:
    """``(forward_fn(x), losses)``: the backbone's feature dict and, in training with mode
    ``iw``/``isw``, ``{WHITENING_LOSS_KEY: loss_weight x the whitening loss}`` (0 while an ISW mask
    is not computed yet); otherwise no loss."""
    if not (backbone.training and mode in LOSS_MODES):
        return forward_fn(x), {}
    if mode == "isw" and not all(bool(m.mask_ready) for m in whitening_modules(backbone)):
        return forward_fn(x), {WHITENING_LOSS_KEY: x.new_zeros(())}
    with record_whitened_features(backbone) as recorded:
        outputs = forward_fn(x)
    return outputs, {WHITENING_LOSS_KEY: loss_weight * robustnet_whitening_loss(recorded)}


class WhiteningLossMixin:
    """
    The auxiliary-loss side of a backbone with the RobustNet option (``DeepStemResNet``,
    ``STDCNet``): its ``forward`` returns ``self.forward_with_whitening(x)``, which runs
    ``self._forward_stages`` (features only) and keeps the pass's losses (see
    :func:`forward_with_whitening_loss`) until the meta-architecture takes them with
    :meth:`pop_auxiliary_losses`. The class needs ``robustnet_mode`` and ``robustnet_loss_weight``.
    """

    def forward_with_whitening(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features, self._auxiliary_losses = forward_with_whitening_loss(
            self, self._forward_stages, x, self.robustnet_mode, self.robustnet_loss_weight)
        return features

    def pop_auxiliary_losses(self) -> Dict[str, torch.Tensor]:
        """The loss terms of the last forward pass (``WHITENING_LOSS_KEY`` in training with
        IW/ISW; empty for every other mode, in eval, and when already taken). Taken once: a module
        that kept a loss would keep its autograd graph alive, and could not be deep-copied (the
        optimised inference path and export copy the model)."""
        losses = getattr(self, "_auxiliary_losses", {})
        self._auxiliary_losses = {}
        return losses


def _collects_backbone_losses(meta_architecture: str) -> bool:
    """Whether the meta-architecture adds its backbone's auxiliary losses to its own: its class
    says so with ``collects_backbone_auxiliary_losses = True`` (SFNetSemanticSegmentor)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    try:
        cls = META_ARCH_REGISTRY.get(meta_architecture)
    except KeyError:  # not registered: build_model reports that itself
        return False
    return bool(getattr(cls, "collects_backbone_auxiliary_losses", False))


def robustnet_backbone_options(cfg, positions: Sequence[str]) -> Tuple[str, Tuple[str, ...], float]:
    """(mode, layers, loss_weight) of ``MODEL.ROBUSTNET``, checked against the backbone's
    ``positions`` and against the parts that must carry the loss to the optimiser."""
    node = cfg.MODEL.ROBUSTNET
    mode = node.MODE
    if mode not in ROBUSTNET_MODES:
        raise ValueError(f"MODEL.ROBUSTNET.MODE={mode!r} is not one of {ROBUSTNET_MODES}")
    if mode == "none":
        return mode, (), float(node.LOSS_WEIGHT)
    layers = tuple(node.LAYERS)
    bad = [p for p in layers if p not in positions]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ValueError(f"MODEL.ROBUSTNET.LAYERS={list(layers)}: give distinct positions among "
                         f"{list(positions)} (unknown: {bad})")
    if mode in LOSS_MODES:
        problems = []
        if not _collects_backbone_losses(cfg.MODEL.META_ARCHITECTURE):
            problems.append(f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE} (does not add "
                            "the backbone's losses to its own)")
        if cfg.MODEL.BACKBONE.NAME not in _BUILDERS_WITH_OPTIONS:
            problems.append(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} (wraps the backbone)")
        if problems:
            raise ValueError(
                f"MODEL.ROBUSTNET.MODE={mode!r} needs the whitening loss taken from the backbone "
                f"(one of {_BUILDERS_WITH_OPTIONS}) by a meta-architecture that adds it to the "
                f"losses (MODEL.META_ARCHITECTURE 'SFNetSemanticSegmentor'); this config has "
                f"{', '.join(problems)}. Use MODE 'is' or 'in' (no loss) with it, or those parts")
    return mode, layers, float(node.LOSS_WEIGHT)


def check_robustnet_applied(cfg, model: nn.Module) -> None:
    """Raise if ``MODEL.ROBUSTNET.MODE`` asks for whitening but the built model has no
    ``InstanceWhitening`` (a backbone without the option, e.g. DFNet or MiT)."""
    mode = cfg.MODEL.ROBUSTNET.MODE
    if mode != "none" and not whitening_modules(model):
        raise ValueError(
            f"MODEL.ROBUSTNET.MODE={mode!r} but the model has no RobustNet layer: "
            f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} has no such option (only "
            f"{_BUILDERS_WITH_OPTIONS} have); set MODEL.ROBUSTNET.MODE 'none'")
