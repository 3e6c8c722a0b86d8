"""
Inference rewrites that lower the peak activation memory of the optimised path
(``DEPLOY.LOW_MEMORY``), without changing what is computed (float rounding aside: the sums of a
convolution are split differently).

At 1024x2048 an SFNet's working memory is dominated by a few full-width maps (docs/BENCHMARK.md,
"Memory"):

* the deep stem's 64- and 128-channel maps at 1/2 resolution (128 + 256 MiB for the ResNet
  backbones), only to be max-pooled to 1/4 right after;
* the decoder's fused map, the concatenation of every pyramid level upsampled to 1/4
  (SFNet-R18: 512 channels, 256 MiB) plus the upsampled levels it is made of (another 192 MiB),
  all alive at once before the 3x3 fuse convolution reads them.

Two rewrites remove those peaks:

* :class:`BandedConvChain` runs the stem (conv, ReLU, conv, ReLU, conv, ReLU, 3x3 max-pool) in
  horizontal bands of output rows: each band reads the rows of its input that it needs (the
  receptive field's halo included) and pads only where the image itself ends (zeros for the
  convolutions, -inf for the max-pool, as their own padding does), so every output row has the
  value the whole-image chain gives it. The 1/2-resolution maps then exist one band at a time.
* :class:`PartwiseFusionHead` computes the fuse convolution of the concatenation as the sum of
  the convolutions of its parts, ``conv(cat(x_1..x_n), W) = sum_i conv(x_i, W_i)`` with ``W_i``
  the input-channel slice of ``W`` that reads ``x_i``: each coarse part is upsampled, convolved
  and added to the running sum, then freed. The concatenation is never built.

Both apply to modules whose BatchNorms are already folded (optimize.py); anything they do not
recognise is left as it is and named in the log.
"""
import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_d2.modeling.backbone.deep_stem_resnet import DeepStem
from sfnet_d2.modeling.heads.neck import _SFNetNeck, upsample_fusion_part

__all__ = ["BandedConvChain", "PartwiseFusionHead", "reduce_activation_memory",
           "DEFAULT_BAND_BYTES"]

logger = logging.getLogger(__name__)

# The largest intermediate map one band may hold. 64 MiB = a quarter of SFNet-R18's 1/2-resolution
# 128-channel map at 1024x2048: 4 bands, whose halo rows add about 1% to the stem's work.
DEFAULT_BAND_BYTES = 64 * 2 ** 20


class _SpatialOp:
    """One windowed op of a chain, with its geometry along the rows (H) and how to run it on a
    band whose rows are already padded (so only the columns keep the op's own padding)."""

    def __init__(self, kind: str, kernel: int, stride: int, padding: int, dilation: int,
                 conv: nn.Module = None, relu: bool = False):
        self.kind, self.kernel, self.stride = kind, kernel, stride
        self.padding, self.dilation, self.conv, self.relu = padding, dilation, conv, relu
        # the value the op's own padding stands for: zeros for a convolution, -inf for max
        self.fill = 0.0 if kind == "conv" else float("-inf")

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) // self.stride + 1

    def out_width(self, size: int) -> int:
        if self.kind == "max":
            return (size + 2 - 2 - 1) // 2 + 1
        c = self.conv
        k, s, p, d = c.kernel_size[1], c.stride[1], c.padding[1], c.dilation[1]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    def input_rows(self, rows: Tuple[int, int], size: int):
        """The input rows that output rows [a, b) read, clipped to [0, size), and how many rows
        of padding go above and below them."""
        a, b = rows
        start = a * self.stride - self.padding
        stop = (b - 1) * self.stride - self.padding + self.dilation * (self.kernel - 1) + 1
        return (max(start, 0), min(stop, size)), (max(0, -start), max(0, stop - size))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            c = self.conv
            x = F.conv2d(x, c.weight, c.bias, stride=(self.stride, c.stride[1]),
                         padding=(0, c.padding[1]), dilation=c.dilation, groups=c.groups)
            return F.relu_(x) if self.relu else x
        return F.max_pool2d(x, kernel_size=(self.kernel, 3), stride=(self.stride, 2),
                            padding=(0, 1))


class BandedConvChain(nn.Module):
    """
    The deep stem (``DeepStem`` with its BatchNorms folded) run in horizontal bands: same output,
    at most about ``band_bytes`` of any intermediate map alive per band. Inputs too small to
    need more than one band run the whole chain at once.
    """

    def __init__(self, stem: DeepStem, band_bytes: int = DEFAULT_BAND_BYTES):
        super().__init__()
        convs = (stem.conv1, stem.conv2, stem.conv3)
        for name, conv in zip(("conv1", "conv2", "conv3"), convs):
            if getattr(conv, "norm", None) is not None or getattr(conv, "activation", None):
                raise ValueError(f"BandedConvChain: stem.{name} still has a norm or activation; "
                                 "fold the BatchNorms first (fold_batchnorm)")
            if conv.kernel_size[0] != conv.kernel_size[1] or conv.padding_mode != "zeros":
                raise ValueError(f"BandedConvChain: stem.{name} is not a square zero-padded "
                                 "convolution")
        self.conv1, self.conv2, self.conv3 = convs
        self.band_bytes = int(band_bytes)
        self.out_channels = stem.out_channels
        self._ops = [
            _SpatialOp("conv", c.kernel_size[0], c.stride[0], c.padding[0], c.dilation[0],
                       conv=c, relu=True)
            for c in convs
        ] + [_SpatialOp("max", 3, 2, 1, 1)]

    def _channels(self) -> List[int]:
        return [self.conv1.out_channels, self.conv2.out_channels, self.conv3.out_channels,
                self.conv3.out_channels]

    def num_bands(self, x: torch.Tensor) -> int:
        """As many bands as it takes to keep every band's largest map under ``band_bytes``."""
        n, _, h, w = (int(s) for s in x.shape)
        largest = 0
        for op, channels in zip(self._ops, self._channels()):
            h, w = op.out_size(h), op.out_width(w)
            largest = max(largest, n * channels * h * w * x.element_size())
        return max(1, min(h, math.ceil(largest / self.band_bytes)))

    def band_plan(self, height: int, bands: int) -> List[List[Tuple[Tuple[int, int],
                                                                      Tuple[int, int]]]]:
        """Per band, per op (first to last): the rows of that op's input it reads and the
        padding rows above and below them."""
        sizes = [height]
        for op in self._ops:
            sizes.append(op.out_size(sizes[-1]))
        out_rows = sizes[-1]
        edges = [round(i * out_rows / bands) for i in range(bands + 1)]
        plan = []
        for a, b in zip(edges[:-1], edges[1:]):
            rows, steps = (a, b), []
            for op, size in zip(reversed(self._ops), reversed(sizes[:-1])):
                rows, pads = op.input_rows(rows, size)
                steps.append((rows, pads))
            plan.append(steps[::-1])
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = self.num_bands(x)
        if bands == 1:
            for op in self._ops:
                x = op(F.pad(x, (0, 0, op.padding, op.padding), value=op.fill))
            return x
        outputs = []
        for steps in self.band_plan(int(x.shape[2]), bands):
            (a, b), _ = steps[0]
            y = x[:, :, a:b]
            for op, (_, (top, bottom)) in zip(self._ops, steps):
                if top or bottom:
                    y = F.pad(y, (0, 0, top, bottom), value=op.fill)
                y = op(y)
            outputs.append(y)
        return torch.cat(outputs, dim=2)


class PartwiseFusionHead(nn.Module):
    """
    An SFNet semantic head (``fuse_conv`` on the neck's fused map, then ``predictor``) for
    inference, with the fuse convolution applied to the fused map's parts one at a time (see the
    module docstring). ``forward(features) -> (logits at the input resolution, {})`` as the
    head's own eval forward.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        conv = head.fuse_conv
        self.neck = head.neck
        self.predictor = head.predictor
        self.common_stride = head.common_stride
        self.norm = getattr(conv, "norm", None)  # a norm that could not be folded, if any
        self.activation = getattr(conv, "activation", None)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if conv.groups != 1:
            raise ValueError("PartwiseFusionHead: a grouped fuse convolution cannot be split")
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach(), False)
        # The input-channel slices of the weight, one per part (every part has the neck's
        # conv_dim channels); contiguous copies, so that each convolution reads a dense weight.
        step = self.neck.conv_dim
        total = conv.weight.shape[1]
        if total % step:
            raise ValueError(f"PartwiseFusionHead: the fuse convolution reads {total} channels, "
                             f"not a multiple of the neck's {step}")
        self.part_weights = nn.ParameterList(
            nn.Parameter(conv.weight.detach()[:, i:i + step].clone(), requires_grad=False)
            for i in range(0, total, step)
        )

    def fused_conv(self, parts: List[torch.Tensor]) -> torch.Tensor:
        if len(parts) != len(self.part_weights):
            raise ValueError(f"PartwiseFusionHead: the neck gave {len(parts)} parts, the fuse "
                             f"convolution expects {len(self.part_weights)}")
        size = parts[0].shape[-2:]
        out = None
        for i, weight in enumerate(self.part_weights):
            part = parts[i] if i == 0 else upsample_fusion_part(parts[i], size)
            parts[i] = None  # the running sum is all that is kept of the parts already read
            y = F.conv2d(part, weight, self.bias if i == 0 else None, self.stride, self.padding,
                         self.dilation)
            out = y if out is None else out.add_(y)
        if self.norm is not None:
            out = self.norm(out)
        return self.activation(out) if self.activation is not None else out

    def forward(self, features: Dict[str, torch.Tensor]):
        parts = list(self.neck.fusion_parts(features)[0])
        logits = self.predictor(self.fused_conv(parts))
        size = [s * self.common_stride for s in logits.shape[-2:]]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True), {}


def _splittable_head(head: nn.Module) -> bool:
    neck = getattr(head, "neck", None)
    return (isinstance(neck, _SFNetNeck) and hasattr(head, "fuse_conv")
            and hasattr(head, "predictor") and hasattr(neck, "conv_dim")
            and type(neck).fusion_parts is not _SFNetNeck.fusion_parts)


def reduce_activation_memory(network: nn.Module,
                             band_bytes: int = DEFAULT_BAND_BYTES) -> Sequence[str]:
    """
    Apply the rewrites above, in place, to a network part (``SemanticNetworkPart``: ``backbone``
    and ``sem_seg_head``) whose BatchNorms are folded. Returns the names of the modules it
    replaced; what it does not recognise (other stems and heads, a stem norm that could not be
    folded, e.g. RobustNet's instance norm) is left unchanged.
    """
    replaced = []
    stem = getattr(getattr(network, "backbone", None), "stem", None)
    if isinstance(stem, DeepStem):
        if all(getattr(c, "norm", None) is None for c in (stem.conv1, stem.conv2, stem.conv3)):
            network.backbone.stem = BandedConvChain(stem, band_bytes)
            replaced.append("backbone.stem")
        else:
            logger.info("DEPLOY.LOW_MEMORY: the stem keeps a norm (not folded); not banded")
    head = getattr(network, "sem_seg_head", None)
    if head is not None and _splittable_head(head):
        network.sem_seg_head = PartwiseFusionHead(head)
        replaced.append("sem_seg_head")
    return replaced
