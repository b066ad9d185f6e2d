"""Early fusion of visual tokens with prompt tokens (GLIP-style bi-directional attention, ``VLFuse``).

Only the vision side of the output is used downstream; the language side exists for training parity
(its only use in the official code is a zero-weighted loss), so ``forward`` computes it only on request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.modeling.threads import run_chunks


class BiMultiHeadAttention(nn.Module):
    """Attention from visual to prompt tokens and back; keys ``v_proj``, ``l_proj``, ``values_*``, ``out_*``."""

    def __init__(
        self, v_dim: int = 256, l_dim: int = 256, embed_dim: int = 2048, num_heads: int = 8, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for layer in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                      self.out_l_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    fast_inference = False  # set by GleeModel.set_inference_mode; used only in eval mode, vision side only
    chunk = 1024  # visual tokens per chunk in the folded path

    def _vision_delta_folded(self, v: Tensor, lang: Tensor) -> Tensor:
        """``delta_v`` of ``forward`` with the 2048-wide projections folded into the few prompt tokens.

        Per head h, ``logits = scale * (v Wq_h^T + bq_h) K_h^T = v A_h + c_h`` with
        ``A_h = scale * Wq_h^T K_h^T`` [v_dim, Nl] and ``c_h = scale * bq_h K_h^T``; and
        ``out_v_proj(concat_h P_h V_h) = sum_h P_h (V_h Wo_h^T) + bo``.
        With Nl prompt tokens (<= a few hundred) this halves the FLOPs of the reference and never builds the
        [Nv, 2048] query nor the [heads, Nv, Nl] logits at once: visual tokens go through in chunks.
        The +-50000 logit clamp of the reference is kept.
        """
        b, nv, _ = v.shape
        nl, h, hd = lang.shape[1], self.num_heads, self.head_dim
        key = self.l_proj(lang).view(b, nl, h, hd)
        val = self.values_l_proj(lang).view(b, nl, h, hd)
        a = torch.einsum("hdv,blhd->bvhl", self.v_proj.weight.view(h, hd, -1), key).mul(self.scale)
        a = a.reshape(b, -1, h * nl)  # [B, v_dim, h * Nl]
        c = torch.einsum("hd,blhd->bhl", self.v_proj.bias.view(h, hd), key).mul(self.scale).reshape(b, 1, h * nl)
        wo = self.out_v_proj.weight.view(-1, h, hd)  # [v_dim, h, hd]
        bmat = torch.einsum("blhd,ohd->bhlo", val, wo).reshape(b, h * nl, -1)  # [B, h * Nl, v_dim]
        bias = self.out_v_proj.bias
        chunk = self.chunk if v.device.type == "cpu" else nv  # GPUs prefer one large launch
        if torch.is_autocast_enabled(v.device.type):  # cast the folded matrices once, not per chunk
            low = torch.get_autocast_dtype(v.device.type)
            a, c, bmat, bias = a.to(low), c.to(low), bmat.to(low), bias.to(low)
        out = torch.empty((b, nv, bmat.shape[-1]), dtype=bmat.dtype, device=v.device)

        def fuse(i: int, j: int) -> None:
            logits = torch.baddbmm(c, v[:, i:j].to(a.dtype), a)  # [B, q, h * Nl]
            probs = logits.clamp_(min=-50000, max=50000).view(b, -1, h, nl).softmax(-1).view(b, -1, h * nl)
            out[:, i:j] = torch.baddbmm(bias, probs, bmat)

        run_chunks(fuse, nv, chunk, v.device)
        return out

    def _heads(self, x: Tensor) -> Tensor:
        """[B, L, E] -> [B * heads, L, head_dim]."""
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2).reshape(-1, length, self.head_dim)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        """[B * heads, L, head_dim] -> [B, L, E]."""
        length = x.shape[1]
        return x.view(batch, self.num_heads, length, self.head_dim).transpose(1, 2).reshape(batch, length, -1)

    def forward(self, v: Tensor, lang: Tensor, with_language: bool = False) -> tuple[Tensor, Tensor | None]:
        """v: [B, Nv, v_dim], lang: [B, Nl, l_dim] -> (delta_v [B, Nv, v_dim], delta_l [B, Nl, l_dim] or None).

        No prompt mask is applied: the official mask fill writes ``True`` into a bool tensor, which adds a
        uniform +1 to every logit, so padded prompt tokens always take part (the weights depend on it).
        """
        if self.fast_inference and not self.training and not with_language:
            return self._vision_delta_folded(v, lang), None
        batch = v.shape[0]
        query = self._heads(self.v_proj(v) * self.scale)
        key = self._heads(self.l_proj(lang))
        logits = torch.bmm(query, key.transpose(1, 2)).clamp(min=-50000, max=50000)  # [B*h, Nv, Nl]
        probs_v = F.dropout(logits.softmax(-1), self.dropout, self.training)
        out_v = torch.bmm(probs_v, self._heads(self.values_l_proj(lang)))
        delta_v = self.out_v_proj(self._merge(out_v, batch))
        if not with_language:
            return delta_v, None
        logits_t = logits.transpose(1, 2)
        logits_t = (logits_t - logits_t.max(-1, keepdim=True)[0]).clamp(min=-50000, max=50000)
        probs_l = F.dropout(logits_t.softmax(-1), self.dropout, self.training)
        out_l = torch.bmm(probs_l, self._heads(self.values_v_proj(v)))
        return delta_v, self.out_l_proj(self._merge(out_l, batch))


class BiAttentionBlock(nn.Module):
    """Pre-LN bi-attention with layer scale.  Keys ``layer_norm_v``, ``layer_norm_l``, ``attn``, ``gamma_*``."""

    def __init__(self, dim: int = 256, embed_dim: int = 2048, num_heads: int = 8, init_scale: float = 1 / 6) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(dim)
        self.layer_norm_l = nn.LayerNorm(dim)
        self.attn = BiMultiHeadAttention(dim, dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_scale))
        self.gamma_l = nn.Parameter(torch.full((dim,), init_scale))

    def forward(self, v: Tensor, lang: Tensor, with_language: bool = False) -> tuple[Tensor, Tensor | None]:
        """v: [B, Nv, C], lang: [B, Nl, C] -> (fused v [B, Nv, C], fused lang or None)."""
        # The residual base is LN(v), not v: the fused visual memory is layer-normalised (official quirk).
        v = self.layer_norm_v(v)
        lang = self.layer_norm_l(lang)
        delta_v, delta_l = self.attn(v, lang, with_language)
        v = v + self.gamma_v * delta_v
        lang_out = lang + self.gamma_l * delta_l if delta_l is not None else None
        return v, lang_out


class VLFuse(nn.Module):
    """Wrapper that keeps the official key path ``vl_layers.0.b_attn.*``."""

    def __init__(self, dim: int = 256, embed_dim: int = 2048) -> None:
        super().__init__()
        self.b_attn = BiAttentionBlock(dim, embed_dim)

    def forward(self, v: Tensor, lang: Tensor, with_language: bool = False) -> tuple[Tensor, Tensor | None]:
        return self.b_attn(v, lang, with_language)
