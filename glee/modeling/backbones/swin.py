"""Swin Transformer backbone of GLEE-Plus (Mask2Former-style ``D2SwinTransformer``).

Layout (Swin-L numbers): a 4x4 patch embedding (192 ch) followed by four stages of shifted-window transformer
blocks; stages 0..2 end with a 2x2 patch merging that halves the resolution and doubles the width.  Each stage
output gets its own LayerNorm (``norm0..norm3``) and is returned NCHW as ``res2..res5`` (strides 4..32,
channels 192/384/768/1536).

Tokens are kept channels-last ``[B, H, W, C]`` between blocks.  Any input size works: the image is padded
(bottom/right, zeros) to a multiple of the patch size, every block pads its map to a multiple of the window
size, and patch merging pads odd maps, so ``res{i}`` has spatial size ``ceil(input / stride)``.

State-dict keys equal the official ones (below ``backbone.``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import SwinConfig

# Mask value for token pairs from different regions of a shifted window (official: -100, not -inf).
SHIFT_MASK_VALUE = -100.0


class DropPath(nn.Module):
    """Stochastic depth per sample (active only in training; the kept samples are rescaled by 1/keep)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# ---------------------------------------------------------------------------------------------- helpers
def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split a map into non-overlapping windows.

    x: [B, H, W, C] with H, W multiples of ``window_size``  ->  [B * nW, window_size**2, C]
    (windows in row-major order over the map, tokens row-major inside each window).
    """
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: [B * nW, window_size**2, C] -> [B, height, width, C]."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, height // ws, width // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the ``(2*ws-1)**2`` relative-position table for every (query, key) token pair.

    Returns int64 [ws*ws, ws*ws]; entry (i, j) = (dy + ws - 1) * (2*ws - 1) + (dx + ws - 1) with
    (dy, dx) = coord(i) - coord(j) and coords row-major inside the window.
    """
    ws = window_size
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2, N, N], shifted to start at 0
    return rel[0] * (2 * ws - 1) + rel[1]


def shifted_window_mask(
    height: int, width: int, window_size: int, shift: int, device: torch.device
) -> Tensor:
    """Additive attention mask for shifted windows on a padded ``height x width`` map (multiples of ws).

    After the cyclic shift by ``-shift``, tokens that were not neighbours in the original map end up in the
    same window.  Each axis is split into three regions [0, n-ws), [n-ws, n-shift), [n-shift, n); two tokens
    may attend to each other only if they share both region labels.

    Returns float [nW, ws*ws, ws*ws] with 0 (same region) or -100 (different regions).
    """

    def labels(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift).long()

    region = labels(height)[:, None] * 3 + labels(width)[None, :]  # [H, W]
    region_windows = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # [nW, N]
    diff = region_windows[:, None, :] != region_windows[:, :, None]  # [nW, N, N]
    return torch.zeros(diff.shape, device=device).masked_fill(diff, SHIFT_MASK_VALUE)


# ---------------------------------------------------------------------------------------------- modules
class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative-position bias per head."""

    relative_position_index: Tensor

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """[heads, N, N] bias added to the attention logits (N = window_size**2)."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] additive (windows of one image, shared over the batch)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B * nW, heads, N, d]
        bias = self.relative_position_bias().to(q.dtype)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            nw = mask.shape[0]
            attn_mask = bias[None] + mask[:, None].to(q.dtype)  # [nW, heads, N, N]
            # an image axis in front lets the per-window mask broadcast over the batch
            q, k, v = (t.reshape(bw // nw, nw, *t.shape[1:]) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention + MLP, both residual.  [B, H, W, C] -> same."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, shift_mask: Tensor | None) -> Tensor:
        """x: [B, H, W, C]; shift_mask: [nW, N, N] for the padded map (used only if this block shifts)."""
        _, h, w, _ = x.shape
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x)
        # zero-pad after norm1; padded tokens are real keys in unshifted windows (no mask, as official)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), shift_mask if s > 0 else None)
        y = window_reverse(y, ws, hp, wp)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        y = y[:, :h, :w]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LN(4C) -> Linear(4C, 2C, no bias).

    [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C] (odd maps are zero-padded first).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # concat order (0,0), (1,0), (0,1), (1,1) as (row, col) offsets: the reduction weights depend on it
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain / shifted (by window_size // 2) windows, then optional merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        # no shrinking of the window/shift on small maps (unlike classification Swin): always shift
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                qkv_bias,
                drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, H, W, C] -> (stage output [B, H, W, C], input of the next stage)."""
        _, h, w, _ = x.shape
        ws = self.window_size
        mask = None
        if len(self.blocks) > 1:
            hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
            mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Pad to a multiple of the patch size, patch conv, optional LN.  [B, 3, H, W] -> [B, h, w, C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class SwinBackbone(nn.Module):
    """Swin Transformer returning ``res2..res5`` (NCHW, strides 4/8/16/32, widths C, 2C, 4C, 8C)."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        if len(cfg.depths) != len(cfg.num_heads):
            raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} differ in length")
        num_stages = len(cfg.depths)
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim, cfg.patch_norm)
        self.absolute_pos_embed: nn.Parameter | None = None
        if cfg.ape:
            grid = cfg.pretrain_img_size // cfg.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, grid, grid))
        # stochastic depth rises linearly over all blocks of all stages
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(cfg.depths[:i])
            self.layers.append(
                SwinStage(
                    dim=cfg.embed_dim * 2**i,
                    depth=cfg.depths[i],
                    num_heads=cfg.num_heads[i],
                    window_size=cfg.window_size,
                    mlp_ratio=cfg.mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    drop_path=dpr[start : start + cfg.depths[i]],
                    downsample=i < num_stages - 1,
                )
            )
        self.num_features = [cfg.embed_dim * 2**i for i in range(num_stages)]
        for i, width in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(width))

        self.out_features = [f"res{i + 2}" for i in range(num_stages)]
        self.out_channels = dict(zip(self.out_features, self.num_features))
        self.out_strides = {name: cfg.patch_size * 2**i for i, name in enumerate(self.out_features)}
        self.size_divisibility = 32
        self._init_weights()

    def _init_weights(self) -> None:
        """Official random init (trunc-normal 0.02 linears and bias tables); checkpoints overwrite it."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        if self.absolute_pos_embed is not None:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images: [B, 3, H, W] (any H, W) -> {res_i: [B, C_i, ceil(H / s_i), ceil(W / s_i)]}."""
        if images.dim() != 4:
            raise ValueError(f"SwinBackbone expects [B, 3, H, W], got shape {tuple(images.shape)}")
        x = self.patch_embed(images)  # [B, h, w, C]
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        outs: dict[str, Tensor] = {}
        for i, (name, stage) in enumerate(zip(self.out_features, self.layers)):
            y, x = stage(x)
            norm: nn.LayerNorm = getattr(self, f"norm{i}")
            outs[name] = norm(y).permute(0, 3, 1, 2).contiguous()
        return outs
