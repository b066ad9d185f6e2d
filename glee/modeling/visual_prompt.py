"""Visual prompts: the template branch (crop -> backbone -> ``sot_fuser``) and decoder point tokens.

A prompt is a boolean mask per image in padded input coordinates (a box, a point rectangle, a scribble or
an object mask).  Two pathways use it:

* template: a square crop around the mask, resized to 256x256, goes through the same backbone; three
  levels are fused into 32x32 (ResNet/Swin) or 16x16 (EVA02) tokens for early fusion;
* point tokens: prompt pixels sampled on each encoder level (after a per-level 256x256 projection)
  become extra tokens in decoder self-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """CondInst's aligned upsampling: replicate-pad, bilinear (align_corners) to f*h+1, shift, crop."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]


class FeatureFuser(nn.Module):
    """``sot_fuser``: 3x3 conv per level, coarser levels upsampled to the finest and summed."""

    def __init__(self, in_channels: list[int], channels: int = 256) -> None:
        super().__init__()
        self.refine = nn.ModuleList(nn.Conv2d(c, channels, 3, padding=1) for c in in_channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Three maps, finest first -> [N, channels, h0, w0]."""
        x = self.refine[0](features[0])
        for conv, feat in zip(self.refine[1:], features[1:]):
            y = conv(feat)
            factor = x.shape[-2] // y.shape[-2]
            if factor * y.shape[-2] != x.shape[-2] or factor * y.shape[-1] != x.shape[-1]:
                raise ValueError(f"template levels {tuple(x.shape[-2:])} and {tuple(y.shape[-2:])} are not aligned")
            x = x + aligned_bilinear(y, factor)
        return x


def mask_bounding_box(mask: Tensor) -> tuple[int, int, int, int]:
    """Inclusive pixel bounds (x_min, y_min, x_max, y_max) of a non-empty [H, W] mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def template_crops(images: Tensor, masks: Tensor, prompt_type: str, size: int = 256) -> Tensor:
    """Square crops around each prompt, resized to ``size`` x ``size``.

    Args:
        images: [B, 3, H, W] normalised images.  masks: [B, H, W] bool prompt masks.
        prompt_type: ``point`` and ``scribble`` add the mask (value 1.0) to the normalised image first.
    Returns:
        [B, 3, size, size].
    """
    crops = []
    for image, mask in zip(images, masks):
        image = image[None]
        if prompt_type in ("point", "scribble"):
            image = image + mask[None, None].to(image.dtype)
        x_min, y_min, x_max, y_max = mask_bounding_box(mask)
        x, y, w, h = x_min, y_min, x_max - x_min, y_max - y_min
        side = math.ceil(math.sqrt(w * h) * 2)
        # Python's round (half to even) and a left/top-only clamp, as in the official code
        x1 = max(0, round(x + 0.5 * w - side * 0.5))
        y1 = max(0, round(y + 0.5 * h - side * 0.5))
        crop = image[:, :, y1 : y1 + side, x1 : x1 + side]
        if crop.shape[-1] == 0 or crop.shape[-2] == 0:  # e.g. a one-pixel-wide prompt: side 0
            crop = image
        crops.append(F.interpolate(crop, (size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops, 0)


def sample_points(points: Tensor, max_len: int, generator: torch.Generator | None) -> Tensor:
    """Keep at most ``max_len`` of [N, 2] points, chosen by ``torch.randperm`` (official ``rand_sample``)."""
    if points.shape[0] <= max_len:
        return points
    return points[torch.randperm(points.shape[0], generator=generator)[:max_len]]


def prompt_points(masks: Tensor) -> list[Tensor]:
    """Row-major (y / H, x / W) of every prompt pixel, per image: list of [N_b, 2]."""
    size = torch.tensor(masks.shape[-2:], device=masks.device)
    return [torch.nonzero(m) / size for m in masks]


def point_tokens(
    level_map: Tensor, projection: Tensor, points: list[Tensor], indicator: Tensor
) -> tuple[Tensor, Tensor]:
    """Sample projected level features at prompt points.

    Args:
        level_map: [B, C, h, w] encoder level.  projection: [C, C] (``mask_sptial_embed[i]``, right-multiplied).
        points: per image [P_b, 2] (y, x) in 0..1.  indicator: [C] added to every positive point.
    Returns:
        tokens [P, B, C] and padding mask [B, P] (True = padding).
    """
    projected = (level_map.permute(2, 3, 0, 1) @ projection).permute(2, 3, 0, 1)  # [B, C, h, w]
    padded = nn.utils.rnn.pad_sequence(points, batch_first=True, padding_value=-1)  # [B, P, 2]
    padding = padded.sum(-1) < 0
    padded = padded.masked_fill(padding[..., None], 0)
    # (x, y) grid with align_corners=True on coordinates index/size: official point_sample convention
    grid = (2 * padded.flip(-1).to(projected.dtype) - 1)[:, :, None]
    tokens = F.grid_sample(projected, grid, align_corners=True).squeeze(3).permute(2, 0, 1)  # [P, B, C]
    tokens = tokens + (~padding).T[..., None].to(tokens.dtype) * indicator
    return tokens, padding
