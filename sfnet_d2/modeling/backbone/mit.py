"""
Mix Transformer (MiT) encoders of SegFormer (Xie et al., NeurIPS 2021) as detectron2 backbones,
built as the official code builds them (NVlabs/SegFormer ``mmseg/models/backbones/
mix_transformer.py``; docs/TRANSFORMERS.md). Used by the paper's Table 19 (SegFormer B0/B1 vs
SFNet-Lite on B0/B1, ADE20k).

Four stages; stage s (our ``res{s+1}``, strides 4/8/16/32) is

* an overlapping patch embedding: a conv (7x7 stride 4 padding 3 for the first stage, 3x3 stride
  2 padding 1 after), flattened to tokens, then LayerNorm (eps 1e-5, torch's default, as the
  official ``OverlapPatchEmbed``);
* ``depth`` transformer blocks, pre-norm (LayerNorm eps 1e-6):
  ``x = x + drop_path(attn(norm1(x)))``, ``x = x + drop_path(mlp(norm2(x)))``;

  - efficient self-attention: queries from every token; keys and values from the tokens reduced by
    a ``sr x sr`` stride-``sr`` conv + LayerNorm (eps 1e-5) when the spatial-reduction ratio
    ``sr > 1`` (8/4/2/1 for the four stages), from all tokens when ``sr == 1`` (then it is standard
    multi-head attention). One linear layer ``kv`` makes keys and values (rows ``[:C]`` keys,
    ``[C:]`` values, the official layout); all linear layers have biases; scale head_dim ** -0.5;
  - Mix-FFN: ``fc1`` (C -> 4C), a 3x3 depthwise conv (with bias) on the token grid, GELU, ``fc2``;
* a LayerNorm (eps 1e-6) on the stage output, which is reshaped to (N, C, H, W).

Stochastic depth (drop path) grows linearly from 0 to ``drop_path_rate`` over all blocks of the
network (official ``torch.linspace(0, drop_path_rate, sum(depths))``; 0.1 for every released MiT).
Dropout is 0 everywhere, as in the released models.

Not built: the ImageNet classifier (``head``) of the released ImageNet files, which the official
segmentation model never uses either; ``sfnet_d2.converters.mit_converter`` drops it.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from sfnet_d2.modeling.backbone.stages import run_stages

__all__ = ["MiTLayout", "MIT_LAYOUTS", "DropPath", "OverlapPatchEmbed", "EfficientSelfAttention",
           "MixFFN", "MiTBlock", "MiTStage", "MixVisionTransformer", "build_mit_backbone"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_STRIDES = (4, 8, 16, 32)
# Patch embedding of each stage: (kernel, stride); padding = kernel // 2.
_PATCH_EMBED = ((7, 4), (3, 2), (3, 2), (3, 2))
_BLOCK_NORM_EPS = 1e-6  # official norm_layer=partial(nn.LayerNorm, eps=1e-6) of mit_b0..b5
_TORCH_NORM_EPS = 1e-5  # the patch-embedding and spatial-reduction norms use nn.LayerNorm(dim)


@dataclass(frozen=True)
class MiTLayout:
    """One MiT variant (official ``mit_b0`` .. ``mit_b5`` classes)."""
    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


# MODEL.MIT.NAME -> layout. B0/B1 are the paper's Table 19 backbones; B2-B5 are here because they
# differ only in these numbers (their parameter counts are checked against SegFormer's paper too).
MIT_LAYOUTS: Dict[str, MiTLayout] = {
    "B0": MiTLayout((32, 64, 160, 256), (2, 2, 2, 2)),
    "B1": MiTLayout((64, 128, 320, 512), (2, 2, 2, 2)),
    "B2": MiTLayout((64, 128, 320, 512), (3, 4, 6, 3)),
    "B3": MiTLayout((64, 128, 320, 512), (3, 4, 18, 3)),
    "B4": MiTLayout((64, 128, 320, 512), (3, 8, 27, 3)),
    "B5": MiTLayout((64, 128, 320, 512), (3, 6, 40, 3)),
}


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H*W, C) -> (N, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the residual branch of a whole sample with probability
    ``p`` and scale the kept ones by ``1 / (1 - p)``; identity in eval mode."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class OverlapPatchEmbed(nn.Module):
    """Conv with overlapping windows (kernel > stride), flattened to tokens, LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride=stride,
                              padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=_TORCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr_ratio``-times coarser grid."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MiT attention width {dim} is not divisible by {num_heads} heads")
        if sr_ratio < 1:
            raise ValueError(f"spatial-reduction ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=_TORCH_NORM_EPS)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        n, length, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).reshape(n, length, heads, head_dim).transpose(1, 2)
        context = x
        if self.sr_ratio > 1:
            reduced = self.sr(_tokens_to_map(x, height, width))
            context = self.sr_norm(reduced.flatten(2).transpose(1, 2))
        k, v = self.kv(context).reshape(n, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head_dim)) v, the official scale (qk_scale=None)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class MixFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv on the token grid -> GELU -> fc2 (official ``Mlp`` + ``DWConv``).
    The depthwise conv is what gives MiT positional information without positional encodings."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(_tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention and Mix-FFN, each residual."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MiTStage(nn.Module):
    """Patch embedding, transformer blocks, LayerNorm; returns an (N, C, H, W) map."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int, depth: int,
                 num_heads: int, sr_ratio: int, mlp_ratio: int, drop_paths: Sequence[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, kernel_size, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[i]) for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, height, width)
        return _tokens_to_map(self.norm(x), height, width).contiguous()


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> List[float]:
    """Official stochastic-depth rule: linspace(0, rate, total blocks), in block order.
    Computed in Python (not torch.linspace(...).item()) so that models build on the meta device."""
    total = sum(depths)
    if total == 1:
        return [0.0]
    return [drop_path_rate * i / (total - 1) for i in range(total)]


class MixVisionTransformer(Backbone):
    """
    MiT-B0..B5 returning any of ``res2`` .. ``res5`` (strides 4/8/16/32, the four stage widths of
    :data:`MIT_LAYOUTS`). Stages are the modules ``res2`` .. ``res5`` (:class:`MiTStage`).
    """

    def __init__(
        self,
        name: str = "B0",
        out_features: Sequence[str] = _STAGE_NAMES,
        drop_path_rate: float = 0.1,
        freeze_at: int = 0,
        in_channels: int = 3,
    ):
        super().__init__()
        if name not in MIT_LAYOUTS:
            raise ValueError(f"MODEL.MIT.NAME={name!r} is not a MiT variant; use one of "
                             f"{sorted(MIT_LAYOUTS)}")
        unknown = [f for f in out_features if f not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"MODEL.MIT.OUT_FEATURES={list(out_features)}: unknown {unknown}; "
                             f"choose from {list(_STAGE_NAMES)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"MODEL.MIT.DROP_PATH_RATE={drop_path_rate} must be in [0, 1)")
        layout = MIT_LAYOUTS[name]
        self.name = name
        self.layout = layout
        rates = drop_path_rates(layout.depths, drop_path_rate)
        channels, first = in_channels, 0
        for i, stage in enumerate(_STAGE_NAMES):
            kernel, stride = _PATCH_EMBED[i]
            depth = layout.depths[i]
            self.add_module(stage, MiTStage(
                channels, layout.embed_dims[i], kernel, stride, depth, layout.num_heads[i],
                layout.sr_ratios[i], layout.mlp_ratio, rates[first:first + depth]))
            channels, first = layout.embed_dims[i], first + depth
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(_STAGE_NAMES, layout.embed_dims))
        self._out_feature_strides = dict(zip(_STAGE_NAMES, _STRIDES))
        # Stages after the last requested output are built (checkpoints keep their keys), not run.
        last = max(_STAGE_NAMES.index(f) for f in out_features)
        self._run_stages = list(_STAGE_NAMES[: last + 1])
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self):
        # Official from-scratch init (MixVisionTransformer._init_weights): linear weights truncated
        # normal std 0.02, convs normal with std sqrt(2 / fan_out) (fan_out = k*k*out/groups),
        # biases 0, LayerNorm 1/0. Training normally starts from the ImageNet weights instead.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int = 0):
        """``freeze_at = 1`` freezes the first patch embedding (the "stem"); ``k >= 2`` freezes
        the whole stages res2..res{k}. LayerNorm has no running statistics, so freezing is only
        ``requires_grad = False``."""
        frozen = []
        if freeze_at == 1:
            frozen = [self.res2.patch_embed]
        elif freeze_at >= 2:
            frozen = [getattr(self, f"res{k}") for k in range(2, min(freeze_at, 5) + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad = False
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(
                f"MixVisionTransformer takes (N, C, H, W) inputs, got {tuple(x.shape)}")
        return run_stages(self, x, self._run_stages, self._out_features)

    # output_shape(): detectron2's Backbone default, from _out_feature_channels/_strides.

    @property
    def size_divisibility(self) -> int:
        # Any size runs (the patch embeddings round up), but with a multiple of 32 every level is
        # exactly half the previous one, which the SFNet decoders' warps and SegFormer's aligned
        # test-time resize (size_divisor=32) assume.
        return 32


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: ShapeSpec) -> MixVisionTransformer:
    """Config: ``MODEL.MIT.NAME`` ("B0".."B5"), ``MODEL.MIT.OUT_FEATURES``,
    ``MODEL.MIT.DROP_PATH_RATE``, ``MODEL.BACKBONE.FREEZE_AT``."""
    return MixVisionTransformer(
        name=cfg.MODEL.MIT.NAME,
        out_features=cfg.MODEL.MIT.OUT_FEATURES,
        drop_path_rate=cfg.MODEL.MIT.DROP_PATH_RATE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_channels=input_shape.channels,
    )
