"""CLIP text tower (the HF ``CLIPTextModel`` layout, ``text_model.*`` keys) and GLEE's text pooling.

Written here rather than taken from transformers because transformers 5 renamed the CLIP keys (no more
``text_model.`` prefix), and official GLEE checkpoints use the 4.x names; the maths is the same: pre-LN
transformer, quick-GELU MLP, causal + padding attention mask, final LayerNorm, ``last_hidden_state`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import TextConfig


class ClipAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [N, L, D]; allowed [N, 1, L, L] bool (True = may attend)."""
        n, length, dim = x.shape
        head_dim = dim // self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(n, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class ClipMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        if act not in ("quick_gelu", "gelu"):
            raise ValueError(f"unsupported CLIP activation {act!r}")
        self.act = act
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class ClipEncoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = ClipAttention(cfg.hidden_size, cfg.num_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = ClipMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), allowed)
        return x + self.mlp(self.layer_norm2(x))


class ClipEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class ClipEncoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(cfg) for _ in range(cfg.num_layers))


class ClipTextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embeddings = ClipEmbeddings(cfg)
        self.encoder = ClipEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class ClipTextModel(nn.Module):
    """``last_hidden_state`` of CLIP's text transformer.  Keys: ``text_model.*``."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_model = ClipTextTransformer(cfg)
        nn.init.normal_(self.text_model.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_model.embeddings.position_embedding.weight, std=0.01)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [N, L] -> hidden states [N, L, D].

        Every position attends causally to the valid tokens at or before it; padded positions therefore
        see all valid tokens but no padding (HF CLIP semantics, which grounding's padded tokens rely on).
        """
        if input_ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed the text encoder's {self.cfg.max_length} positions")
        tm = self.text_model
        x = tm.embeddings(input_ids)
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
        for layer in tm.encoder.layers:
            x = layer(x, allowed)
        return tm.final_layer_norm(x)


def text_config_from_hf_json(path: str | Path, arch: str = "clip_teacher") -> TextConfig:
    """Read a transformers ``CLIPTextConfig`` / ``CLIPConfig`` JSON (e.g. ``clip_vit_base_patch32/config.json``)."""
    raw = json.loads(Path(path).read_text())
    raw = raw.get("text_config", raw)
    return TextConfig(
        arch=arch,  # type: ignore[arg-type]
        vocab_size=raw.get("vocab_size", 49408),
        hidden_size=raw.get("hidden_size", 512),
        intermediate_size=raw.get("intermediate_size", 2048),
        num_layers=raw.get("num_hidden_layers", 12),
        num_heads=raw.get("num_attention_heads", 8),
        max_length=raw.get("max_position_embeddings", 77),
        hidden_act=raw.get("hidden_act", "quick_gelu"),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-5),
    )


@dataclass
class TextFeatures:
    """Projected text features for one prompt set."""

    tokens: Tensor  # [N, L, C] per-token features times ``lang_projection``
    attention_mask: Tensor  # [N, L] 1 on BOS..EOS
    pooled: Tensor  # [N, C] mean over valid tokens (class / grounding embedding)


def masked_mean(features: Tensor, mask: Tensor) -> Tensor:
    """Mean of [N, L, C] over the positions where mask [N, L] is 1 (official ``agg_lang_feat``)."""
    mask = mask.to(features.dtype)
    return (features * mask.unsqueeze(-1)).sum(1) / mask.sum(-1, keepdim=True)
