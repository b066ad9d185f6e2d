"""EVA02 ViT + simple feature pyramid: the backbone of GLEE-Pro (official ``D2_EVA02``).

``net`` is a plain ViT on 16x16 patches (EVA02-L: dim 1024, 24 blocks, 16 heads) with
  * an absolute position embedding from 224-pixel pretraining ([1, 1 + 14*14, C], cls slot unused),
    bicubically resized to the token grid on every forward;
  * 2-D rotary position embeddings (RoPE) on q and k: a 16x16 table (``rope_win``) for window blocks and a
    (image_size/16)^2 table (``rope_glb``) for global blocks; every block's ``attn.rope`` *is* one of them;
  * window attention (16x16 windows, zero padding) in ``window_block_indexes``, global attention elsewhere;
  * a SwiGLU MLP with a LayerNorm on the hidden units (``ffn_ln``).
The stride-16 map then feeds a ViTDet ``SimpleFeaturePyramid`` (scales 2, 1, 0.5 -> ``simfp_3/4/5``) and a
stride-2 max-pool of p5 gives p6.  Outputs ``p3..p6`` (256 ch, strides 8/16/32/64), NCHW.

Input sizes: the patch conv floors (no padding, as official), so the token grid is floor(H/16) x floor(W/16);
GLEE feeds multiples of 32 (1536x1536 at test time).  State-dict keys equal the official ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import Eva02Config
from glee.modeling.backbones.swin import DropPath

LN_EPS = 1e-6
ROPE_PRETRAIN_GRID = 16  # the RoPE positions are expressed in units of a 16x16 pretraining grid
ROPE_THETA = 10000.0
PYRAMID_SCALES = (2.0, 1.0, 0.5)  # ViTDet uses (4, 2, 1, 0.5); GLEE drops the stride-4 level


# ---------------------------------------------------------------------------------------------- helpers
def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad (bottom/right) to multiples of ``window_size`` and split into windows.

    x: [B, H, W, C] -> (windows [B * nW, ws, ws, C], padded size (Hp, Wp)).
    """
    b, h, w, c = x.shape
    ws = window_size
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: [B * nW, ws, ws, C] -> [B, H, W, C] (padding removed)."""
    (hp, wp), (h, w) = padded_hw, hw
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    return x[:, :h, :w]


def rotate_half(x: Tensor) -> Tensor:
    """Rotate interleaved pairs by 90 degrees: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def resize_abs_pos_embed(pos_embed: Tensor, hw: tuple[int, int]) -> Tensor:
    """[1, 1 + S*S, C] pretraining embedding (cls slot first) -> [1, h, w, C] for the current token grid.

    Bicubic, align_corners=False, no antialias; skipped when the grid already matches.
    """
    grid = pos_embed[:, 1:]  # the cls slot has no spatial position and is dropped
    size = math.isqrt(grid.shape[1])
    if size * size != grid.shape[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} spatial tokens, not a square grid")
    grid = grid.reshape(1, size, size, -1)
    if (size, size) == tuple(hw):
        return grid
    grid = F.interpolate(grid.permute(0, 3, 1, 2), size=hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- modules
class LayerNorm2d(nn.Module):
    """detectron2's channel-first LayerNorm: normalises [B, C, H, W] over C at every pixel."""

    def __init__(self, channels: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNorm(nn.Conv2d):
    """Conv2d followed by a channel-first LN, stored as ``<conv>.norm`` (detectron2 ``Conv2d(norm=...)``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        # bias-free because a norm follows (detectron2: bias = norm == "")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class RotaryEmbedding2d(nn.Module):
    """2-D RoPE table for a ``grid x grid`` token map (official ``VisionRotaryEmbeddingFast``).

    Buffers ``freqs_cos`` / ``freqs_sin``: [grid*grid, 2 * axis_dim], rows y-major.  Per row, the first
    ``axis_dim`` channels rotate by the y position and the last ``axis_dim`` by the x position; channel pair
    (2i, 2i+1) of an axis rotates with frequency theta^(-2i/axis_dim) at position t = index * 16 / grid.
    """

    freqs_cos: Tensor
    freqs_sin: Tensor

    def __init__(self, axis_dim: int, grid: int, pretrain_grid: int = ROPE_PRETRAIN_GRID) -> None:
        super().__init__()
        if axis_dim % 2:
            raise ValueError(f"RoPE axis dim {axis_dim} must be even (head_dim must be a multiple of 4)")
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, axis_dim, 2).float() / axis_dim)  # [axis_dim/2]
        pos = torch.arange(grid) / grid * pretrain_grid  # [grid]; same op order as official (bit-exact)
        angles = torch.outer(pos, inv_freq).repeat_interleave(2, dim=-1)  # [grid, axis_dim]: f0 f0 f1 f1 ..
        ang_y = angles[:, None, :].expand(grid, grid, axis_dim)
        ang_x = angles[None, :, :].expand(grid, grid, axis_dim)
        table = torch.cat([ang_y, ang_x], dim=-1).reshape(grid * grid, 2 * axis_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, t: Tensor) -> Tensor:
        """t: [B, heads, N, head_dim] with tokens y-major -> rotated, same shape."""
        n = t.shape[-2]
        cos, sin = self.freqs_cos, self.freqs_sin
        if n != cos.shape[0]:
            if n > cos.shape[0]:
                raise ValueError(
                    f"{n} tokens exceed the {cos.shape[0]}-row RoPE table; the official code fails here too "
                    "(raise Eva02Config.image_size)"
                )
            # official quirk: a grid smaller than the table takes its first N rows (no re-interpolation),
            # e.g. the 16x16 visual-prompt template on the 96x96 table of a 1536 model
            cos, sin = cos[:n], sin[:n]
        return t * cos + rotate_half(t) * sin


class SwiGLU(nn.Module):
    """w3(LN(silu(w1 x) * w2 x)); the LN on the hidden units (``ffn_ln``) is EVA02's sub-LN."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.ffn_ln = nn.LayerNorm(hidden, eps=LN_EPS)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


class Eva02Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v weights, biases on q and v only, RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, rope: RotaryEmbedding2d) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))  # k has no bias (softmax is invariant to it)
        self.rope = rope  # shared with the backbone's rope_win / rope_glb, hence the aliased state-dict keys
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, C] (a window or the whole map; all tokens attend to all) -> [B, H, W, C]."""
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = self.k_proj(x)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        q, k, v = (t.view(b, h * w, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, h, N, d]
        q = self.rope(q).type_as(v)
        k = self.rope(k).type_as(v)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, no mask
        out = out.transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).view(b, h, w, c)


class Eva02Block(nn.Module):
    """Pre-norm block; window attention if ``window_size > 0``, else global.  [B, H, W, C] -> same."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        window_size: int,
        rope: RotaryEmbedding2d,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Eva02Attention(dim, num_heads, rope)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            # padding after norm1 with zeros; padded tokens are unmasked keys (as official / ViTDet)
            y, padded_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, padded_hw, hw)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv.  [B, 3, H, W] -> [B, floor(H/p), floor(W/p), C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Eva02ViT(nn.Module):
    """The plain ViT trunk (``backbone.net``).  [B, 3, H, W] -> [B, C, H/16, W/16]."""

    def __init__(self, cfg: Eva02Config) -> None:
        super().__init__()
        dim, heads = cfg.embed_dim, cfg.num_heads
        if dim % heads or (dim // heads) % 4:
            raise ValueError(f"embed_dim {dim} / num_heads {heads} must give a head dim divisible by 4")
        grid = cfg.pretrain_img_size // cfg.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))  # + cls slot from pretraining
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, dim)
        half_head_dim = dim // heads // 2
        self.rope_win = RotaryEmbedding2d(half_head_dim, cfg.window_size)
        self.rope_glb = RotaryEmbedding2d(half_head_dim, cfg.image_size // cfg.patch_size)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        windowed = set(cfg.window_block_indexes)
        self.blocks = nn.ModuleList(
            Eva02Block(
                dim,
                heads,
                int(dim * cfg.mlp_ratio),  # 1024 * 8/3 -> 2730 (truncation)
                cfg.window_size if i in windowed else 0,
                self.rope_win if i in windowed else self.rope_glb,
                dpr[i],
            )
            for i in range(cfg.depth)
        )

    def forward(self, images: Tensor) -> Tensor:
        """images: [B, 3, H, W] -> [B, C, floor(H/16), floor(W/16)]."""
        x = self.patch_embed(images)  # [B, h, w, C]
        x = x + resize_abs_pos_embed(self.pos_embed, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = blk(x)
        return x.permute(0, 3, 1, 2)


def _pyramid_stage(scale: float, dim: int, out_channels: int) -> nn.Sequential:
    """One ``simfp_*`` branch: resample the stride-16 map by ``scale``, then 1x1 conv+LN, 3x3 conv+LN."""
    if scale == 2.0:
        layers: list[nn.Module] = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)]
        in_ch = dim // 2
    elif scale == 1.0:
        layers, in_ch = [], dim
    elif scale == 0.5:
        layers, in_ch = [nn.MaxPool2d(kernel_size=2, stride=2)], dim
    else:
        raise ValueError(f"unsupported pyramid scale {scale}")
    layers += [ConvNorm(in_ch, out_channels, 1), ConvNorm(out_channels, out_channels, 3)]
    return nn.Sequential(*layers)


class Eva02Backbone(nn.Module):
    """EVA02 ViT + simple feature pyramid returning ``p3..p6`` (NCHW, ``cfg.out_channels`` each)."""

    def __init__(self, cfg: Eva02Config) -> None:
        super().__init__()
        names = []
        # registration order (simfp_* before net) matches the official state-dict order
        for scale in PYRAMID_SCALES:
            level = int(math.log2(cfg.patch_size / scale))
            self.add_module(f"simfp_{level}", _pyramid_stage(scale, cfg.embed_dim, cfg.out_channels))
            names.append(f"p{level}")
        self.net = Eva02ViT(cfg)
        self._stage_names = [f"simfp_{name[1:]}" for name in names]
        self.out_features = names + [f"p{int(names[-1][1:]) + 1}"]  # + p6 from the max-pool top block
        self.out_channels = {name: cfg.out_channels for name in self.out_features}
        self.out_strides = {name: 2 ** int(name[1:]) for name in self.out_features}
        self.size_divisibility = 32
        self.square_pad = cfg.image_size  # official padding constraint: square inputs of image_size
        self._init_weights()

    def _init_weights(self) -> None:
        """Official random init of the ViT (trunc-normal 0.02); pretrained weights overwrite it."""
        nn.init.trunc_normal_(self.net.pos_embed, std=0.02)
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images: [B, 3, H, W] -> {name: [B, out_channels, ...]} with, for h, w = floor(H/16), floor(W/16):
        p3 (2h, 2w), p4 (h, w), p5 (h // 2, w // 2), p6 (ceil(p5 / 2)).  Multiples of 32 give H/stride.
        """
        if images.dim() != 4:
            raise ValueError(f"Eva02Backbone expects [B, 3, H, W], got shape {tuple(images.shape)}")
        feat = self.net(images)  # [B, C, h, w]
        outs = [getattr(self, name)(feat) for name in self._stage_names]
        # p6: detectron2 LastLevelMaxPool (kernel 1, stride 2) = subsampling, size ceil(p5 / 2)
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return dict(zip(self.out_features, outs))
