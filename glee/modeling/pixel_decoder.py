"""Pixel decoder (``MaskDINOEncoder``): deformable encoder with early fusion, then one FPN level.

Module tree (state-dict keys under ``pixel_decoder.``)::

    input_proj.{0..3}        1x1 conv + GN per encoder input level, then a 3x3/s2 conv + GN (ResNet/Swin only)
    transformer.level_embed  [levels, C]
    transformer.encoder.vl_layers.0.b_attn.*   early fusion (before encoder layer 0)
    transformer.encoder.layers.{i}.*          post-norm deformable encoder layers
    adapter_1, layer_1       FPN lateral (1x1) and output (3x3) convs with GN
    mask_features            1x1 conv producing the per-pixel embedding
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import GleeConfig
from glee.modeling.early_fusion import VLFuse
from glee.modeling.layers import ConvNorm, fused_linear
from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention
from glee.modeling.position_encoding import sine_position_embedding_2d
from glee.modeling.threads import run_chunks


def _autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype a linear layer returns for ``x`` here: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def post_attention_block(
    x: Tensor, attn: Tensor, n1w: Tensor, n1b: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, n2w: Tensor,
    n2b: Tensor, eps1: float, eps2: float,
) -> Tensor:
    """The encoder layer after its attention: ``y = LN1(x + attn)``, ``LN2(y + W2 relu(W1 y + b1) + b2)``.

    Weights are arguments so that one ``torch.compile`` graph serves every layer.
    """
    y = F.layer_norm(x + attn, (x.shape[-1],), n1w, n1b, eps1)
    return F.layer_norm(y + F.linear(F.relu(F.linear(y, w1, b1)), w2, b2), (x.shape[-1],), n2w, n2b, eps2)


_COMPILED: dict[str, object] = {}


def _compiled_post_attention() -> object | None:
    """``post_attention_block`` through ``torch.compile`` (dynamic shapes), built once; None after a failure."""
    if _COMPILED.get("failed"):
        return None
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(post_attention_block, dynamic=True)
    return _COMPILED["fn"]


def add_upsampled_2x_(out: Tensor, tokens: Tensor, rows: int = 4) -> Tensor:
    """``out += F.interpolate(map, scale 2, bilinear, align_corners=False)`` in place, for a channels-last ``out``.

    Args:
        out: [B, C, 2H, 2W] channels-last (any float dtype, e.g. the bf16 mode's FPN lateral).
        tokens: [B, H * W, C] token-major map (the encoder output; its rows may be a slice of a longer sequence).
        rows: source rows per ``run_chunks`` block.
    Returns:
        ``out``.
    An exact 2x bilinear upsample weighs each pair of neighbours 3:1 (clamped at the borders), so it is two
    ``lerp(a, b, 0.25)`` passes (along W, then along H) computed in ``tokens``' dtype and added to ``out`` with one
    rounding.  Done in blocks of source rows that stay in cache; PyTorch's bilinear kernel is single-threaded on
    CPU and, for bf16, reads a rounded copy of the map (about 4x slower at 800 px, plus a layout-mismatched add).
    """
    b, c, h2, w2 = out.shape
    h, w = h2 // 2, w2 // 2
    if (h2 != 2 * h or w2 != 2 * w or tokens.shape != (b, h * w, c)
            or not out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"add_upsampled_2x_ needs a channels-last [B, C, 2H, 2W] output and [B, H*W, C] tokens, "
                         f"got {tuple(out.shape)} and {tuple(tokens.shape)}")
    x = tokens.view(b, h, w, c)
    o = out.permute(0, 2, 3, 1).view(b, h, 2, w2 * c)  # output row 2r + k of source row r at [:, r, k]

    def block(r0: int, r1: int) -> None:
        a0, a1 = max(0, r0 - 1), min(h, r1 + 1)  # source rows the block blends
        xs = x[:, a0:a1]
        tw = xs.new_empty(b, a1 - a0, w, 2, c)  # along W: columns 2j (with j - 1) and 2j + 1 (with j + 1)
        torch.lerp(xs[:, :, 1:], xs[:, :, :-1], 0.25, out=tw[:, :, 1:, 0])
        tw[:, :, 0, 0] = xs[:, :, 0]
        torch.lerp(xs[:, :, :-1], xs[:, :, 1:], 0.25, out=tw[:, :, :-1, 1])
        tw[:, :, -1, 1] = xs[:, :, -1]
        tw = tw.view(b, a1 - a0, w2 * c)
        lo = max(r0, 1)  # along H: output rows 2r blend source row r - 1, rows 2r + 1 blend row r + 1
        o[:, lo:r1, 0] += torch.lerp(tw[:, lo - a0 : r1 - a0], tw[:, lo - 1 - a0 : r1 - 1 - a0], 0.25)
        if r0 == 0:
            o[:, 0, 0] += tw[:, 0]
        hi = min(r1, h - 1)
        o[:, r0:hi, 1] += torch.lerp(tw[:, r0 - a0 : hi - a0], tw[:, r0 + 1 - a0 : hi + 1 - a0], 0.25)
        if r1 == h:
            o[:, h - 1, 1] += tw[:, h - 1 - a0]

    run_chunks(block, h, rows, out.device)
    return out


class DeformableEncoderLayer(nn.Module):
    """Post-norm: ``norm1(x + MSDeformAttn(x + pos))`` then ``norm2(x + FFN(x))``."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    fast_inference = False  # set by GleeModel.set_inference_mode; used only in eval mode
    use_compiled = False  # set by GleeModel.compile_fast: run the FFN block through torch.compile
    chunk = 1024  # tokens per chunk in the fast path (18 chunks at 800 px: cache-sized, balanced over workers)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]],
        value: Tensor | None = None, next_value: Tensor | None = None, next_value_proj: nn.Linear | None = None,
    ) -> Tensor:
        """src, pos: [N, S, C]; reference_points: [1 or N, S, levels, 2] -> [N, S, C].

        Fast path only: ``value`` is this layer's projected values [N, S, C] when the previous layer computed them
        already; with ``next_value`` ([N, S, C], filled here) and ``next_value_proj`` (the next layer's
        ``self_attn.value_proj``) each output chunk is projected for the next layer while it is in cache.
        """
        if self.fast_inference and not self.training:
            return self._forward_chunked(src, pos, reference_points, spatial_shapes, value, next_value,
                                         next_value_proj)
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))

    def _forward_chunked(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]],
        value: Tensor | None = None, next_value: Tensor | None = None, next_value_proj: nn.Linear | None = None,
    ) -> Tensor:
        """The same layer, token chunk by token chunk once the values are projected.

        Every op after the value projection is row-wise in the tokens, so chunks give the same result while
        the FFN's [chunk, 2048] hidden state and the sampling temporaries stay in cache.
        """
        n, s, c = src.shape
        attn = self.self_attn
        chunk = self.chunk if src.device.type == "cpu" else s  # GPUs prefer one large launch
        # every chunk samples from every position, so all values are projected first (in chunks as well), unless
        # the previous layer did it
        if value is None:
            value = torch.empty((n, s, c), dtype=_autocast_dtype(src), device=src.device)

            def project(i: int, j: int) -> None:
                value[:, i:j] = fused_linear(src[:, i:j], attn.value_proj.weight, attn.value_proj.bias)

            run_chunks(project, s, chunk, src.device)
        out = torch.empty_like(src)

        def layer_chunk(i: int, j: int) -> None:
            x = src[:, i:j]
            sampled = attn.attend(x + pos[:, i:j], reference_points[:, i:j], value.view(n, s, attn.n_heads, -1),
                                  spatial_shapes)
            out[:, i:j] = self._post_attention(x, sampled)
            if next_value is not None:  # the next layer's values of these rows, while they are in cache
                next_value[:, i:j] = fused_linear(out[:, i:j], next_value_proj.weight, next_value_proj.bias)

        run_chunks(layer_chunk, s, chunk, src.device)
        return out

    def _post_attention(self, x: Tensor, attn: Tensor) -> Tensor:
        """``norm2(y + FFN(y))`` with ``y = norm1(x + attn)``: eager, or the shared compiled block if enabled."""
        args = (x, attn, self.norm1.weight, self.norm1.bias, self.linear1.weight, self.linear1.bias,
                self.linear2.weight, self.linear2.bias, self.norm2.weight, self.norm2.bias, self.norm1.eps,
                self.norm2.eps)
        if self.use_compiled:
            compiled = _compiled_post_attention()
            if compiled is not None:
                try:
                    return compiled(*args)
                except Exception as err:  # noqa: BLE001 - any compiler/runtime failure: eager from now on
                    warnings.warn(f"torch.compile of the encoder block failed ({type(err).__name__}: {err}); "
                                  "running eagerly", stacklevel=2)
                    _COMPILED["failed"] = True
        y = self.norm1(x + attn)
        hidden = fused_linear(y, self.linear1.weight, self.linear1.bias, relu=True)
        return self.norm2(y + fused_linear(hidden, self.linear2.weight, self.linear2.bias))


class DeformableEncoder(nn.Module):
    def __init__(self, cfg: GleeConfig) -> None:
        super().__init__()
        d = cfg.conv_dim
        levels = cfg.total_num_feature_levels
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d, cfg.enc_dim_feedforward, levels, cfg.enc_n_heads, cfg.enc_n_points, cfg.dropout)
            for _ in range(cfg.enc_layers)
        )
        # Official: a list of ``enc_layers`` entries, only the first is a VLFuse, the rest are Identity.
        self.vl_layers = nn.ModuleList([VLFuse(d, cfg.fusion_embed_dim)]) if cfg.early_fusion else nn.ModuleList()

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised: [1, S, levels, 2] (x, y)."""
        refs = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            refs.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
        ref = torch.cat(refs, 0)[None]
        return ref[:, :, None].expand(-1, -1, len(spatial_shapes), -1)


class EncoderWithLevels(nn.Module):
    """Holds ``level_embed`` and the encoder, matching the official ``transformer.*`` key path."""

    def __init__(self, cfg: GleeConfig) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(cfg.total_num_feature_levels, cfg.conv_dim))
        nn.init.normal_(self.level_embed)
        self.encoder = DeformableEncoder(cfg)


@dataclass
class PixelDecoderOutput:
    mask_features: Tensor  # [B, mask_dim, H / s, W / s], s = 4 (ResNet/Swin) or 8 (EVA02)
    multi_scale_features: list[Tensor]  # 4 maps [B, C, h_l, w_l], strides 8, 16, 32, 64


class PixelDecoder(nn.Module):
    def __init__(self, cfg: GleeConfig, in_channels: dict[str, int], in_strides: dict[str, int]) -> None:
        super().__init__()
        d = cfg.conv_dim
        self.cfg = cfg
        # encoder inputs, high to low resolution (e.g. res3, res4, res5)
        self.encoder_features = sorted(cfg.deformable_in_features, key=lambda f: in_strides[f])
        self.num_extra_levels = cfg.total_num_feature_levels - len(self.encoder_features)
        self.is_vit = cfg.backbone == "eva02"
        if not self.is_vit:
            projs = [
                nn.Sequential(nn.Conv2d(in_channels[f], d, kernel_size=1), nn.GroupNorm(32, d))
                for f in self.encoder_features
            ]
            # extra lower-resolution levels from the lowest-resolution (largest-channel) input
            channels = max(in_channels[f] for f in self.encoder_features)
            for _ in range(self.num_extra_levels):
                projs.append(nn.Sequential(nn.Conv2d(channels, d, 3, stride=2, padding=1), nn.GroupNorm(32, d)))
                channels = d
            for proj in projs:
                nn.init.xavier_uniform_(proj[0].weight, gain=1)
                nn.init.zeros_(proj[0].bias)
            self.input_proj = nn.ModuleList(projs)
        elif self.num_extra_levels:
            raise ValueError("the ViT path expects all encoder levels from the backbone")
        self.transformer = EncoderWithLevels(cfg)
        self.fpn_feature = min(cfg.in_features, key=lambda f: in_strides[f])
        self.adapter_1 = ConvNorm(in_channels[self.fpn_feature], d, 1, norm=nn.GroupNorm(32, d))
        self.layer_1 = ConvNorm(d, d, 3, padding=1, norm=nn.GroupNorm(32, d), relu=True)
        self.mask_features = nn.Conv2d(d, cfg.mask_dim, 1)
        for conv in (self.adapter_1, self.layer_1, self.mask_features):  # detectron2 c2_xavier_fill
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    fast_inference = False  # set by GleeModel.set_inference_mode; used only in eval mode

    def _positions(self, shapes: list[tuple[int, int]], batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Position embeddings (sine + level embedding) [B or 1, S, C] and reference points [1, S, L, 2].

        They depend only on the level shapes and ``level_embed``, so the fast path (no-grad eval) computes
        them once per image size and keeps them (batch dimension 1, broadcast by the encoder layers).
        """
        level_embed = self.transformer.level_embed
        cache = self.fast_inference and not self.training and not torch.is_grad_enabled()
        key = (tuple(shapes), str(device), level_embed.data_ptr(), level_embed._version, level_embed.dtype)
        hit = self.__dict__.get("_positions_cache")
        if cache and hit is not None and hit[0] == key:
            return hit[1], hit[2]
        pos = torch.cat(
            [
                sine_position_embedding_2d(1 if cache else batch, h, w, self.cfg.conv_dim // 2, device=device)
                .flatten(2).transpose(1, 2) + level_embed[i].view(1, 1, -1)
                for i, (h, w) in enumerate(shapes)
            ],
            1,
        )
        ref = DeformableEncoder.reference_points(shapes, device)
        if cache:
            self.__dict__["_positions_cache"] = (key, pos, ref)
        return pos, ref

    def encoder_inputs(self, features: dict[str, Tensor]) -> list[Tensor]:
        """Projected encoder levels, strides high to low resolution (8, 16, 32, 64)."""
        fast = self.fast_inference and not self.training

        def inp(t: Tensor) -> Tensor:  # the official float() cast; the fast path leaves dtypes to autocast
            return t if fast else t.float()

        if self.is_vit:
            return [inp(features[f]) for f in self.encoder_features]
        srcs = [proj(inp(features[f])) for proj, f in zip(self.input_proj, self.encoder_features)]
        x = inp(features[self.encoder_features[-1]])
        for proj in self.input_proj[len(self.encoder_features):]:
            x = proj(x)
            srcs.append(x)
        return srcs

    def forward(self, features: dict[str, Tensor], prompt_tokens: Tensor | None = None) -> PixelDecoderOutput:
        """
        Args:
            features: backbone maps by name.
            prompt_tokens: [B, Nl, C] early-fusion tokens (text and/or visual template), or None.
        """
        srcs = self.encoder_inputs(features)
        batch = srcs[0].shape[0]
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1).float()  # float32 residual stream
        pos, ref = self._positions(shapes, batch, src.device)
        encoder = self.transformer.encoder
        if prompt_tokens is not None and len(encoder.vl_layers):
            src, _ = encoder.vl_layers[0](src, prompt_tokens)
        fast = self.fast_inference and not self.training
        value = None
        for index, layer in enumerate(encoder.layers):
            following = encoder.layers[index + 1] if index + 1 < len(encoder.layers) else None
            if fast and following is not None and following.fast_inference and src.device.type == "cpu":
                # fast CPU path: each layer also projects the next layer's values, chunk by chunk
                next_value = torch.empty(src.shape, dtype=_autocast_dtype(src), device=src.device)
                src = layer(src, pos, ref, shapes, value, next_value, following.self_attn.value_proj)
                value = next_value
            else:
                src = layer(src, pos, ref, shapes, value)
                value = None
        sizes = [h * w for h, w in shapes]
        maps = [
            z.transpose(1, 2).reshape(batch, -1, h, w) for z, (h, w) in zip(src.split(sizes, dim=1), shapes)
        ]
        fpn_in = features[self.fpn_feature]
        lateral = self.adapter_1(fpn_in if fast else fpn_in.float())
        if (fast and lateral.dtype != src.dtype and lateral.device.type == "cpu" and not torch.is_grad_enabled()
                and lateral.shape[-2:] == (2 * shapes[0][0], 2 * shapes[0][1])
                and lateral.is_contiguous(memory_format=torch.channels_last)):
            # bf16 mode on CPU: the float32 stride-8 tokens upsampled and added into the bf16 lateral in place
            y = add_upsampled_2x_(lateral, src[:, : sizes[0]])
        else:
            # fast path: upsample a standard-layout copy (the token-major view counts as channels-last, and
            # PyTorch's channels-last bilinear kernel is about 3x slower here)
            top = maps[0].to(lateral.dtype).contiguous() if fast else maps[0]
            y = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = self.layer_1(y)
        return PixelDecoderOutput(mask_features=self.mask_features(y), multi_scale_features=maps)
