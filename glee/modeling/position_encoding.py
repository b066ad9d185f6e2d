"""Sine position encodings used by the deformable encoder and the DINO decoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _interleave_sin_cos(x: Tensor) -> Tensor:
    """[..., F] angles -> [..., F] with sin on even and cos on odd frequencies, interleaved."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (dim_t // 2) / num_feats)


def sine_position_embedding_2d(
    batch: int, height: int, width: int, num_feats: int = 128, temperature: float = 10000.0,
    device: torch.device | None = None,
) -> Tensor:
    """Normalised 2-D sine encoding of a feature map (Mask2Former ``PositionEmbeddingSine``).

    Returns [B, 2 * num_feats, H, W]: the y block then the x block; coordinates are the 1-based cumulative
    index divided by the side length (+1e-6) times 2*pi.
    """
    eps, scale = 1e-6, 2 * math.pi
    ones = torch.ones(batch, height, width, dtype=torch.float32, device=device)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = _frequencies(num_feats, temperature, ones.device)
    pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)
    pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """DINO's ``gen_sineembed_for_position`` for [..., 4] (cx, cy, w, h) boxes in [0, 1].

    Returns [..., 4 * num_feats] ordered (y, x, w, h) -- the official order, which the weights depend on.
    """
    dim_t = _frequencies(num_feats, temperature, boxes.device)
    scale = 2 * math.pi
    parts = [_interleave_sin_cos((boxes[..., i] * scale)[..., None] / dim_t) for i in range(boxes.shape[-1])]
    if boxes.shape[-1] == 2:
        return torch.cat((parts[1], parts[0]), dim=-1)
    return torch.cat((parts[1], parts[0], parts[2], parts[3]), dim=-1)
