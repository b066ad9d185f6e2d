"""Image preprocessing: normalise, resize, pad, batch.  The defaults equal the official demo (``app.py``).

Demo path, per image: uint8 RGB -> float CHW -> ``(x - mean) / std`` -> ``torchvision.transforms.Resize(800)``
on the normalised tensor (shorter side 800, longer side ``floor(800 * long / short)``, bilinear,
``align_corners=False``, antialias) -> zero padding at the bottom and right to a multiple of 32.  A batch of
images of different sizes is padded to the largest resized size (rounded up to the divisibility), as the
official evaluation's ``ImageList`` does; each image keeps its own resized size for postprocessing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glee.config import GleeConfig

Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]


@dataclass
class PreprocessConfig:
    """Every preprocessing step, settable.  ``None`` for mean/std/divisibility means "from the model config".

    Attributes:
        short_side: resize so the shorter side has this length (demo: 800).  ``None``: see ``long_side``.
        long_side: resize so the longer side has this length instead (e.g. 1536 for Pro's LSJ-style input).
            With both ``None`` the image keeps its size.
        max_size: cap on the longer side after a ``short_side`` resize (official evaluation: 1333; the demo
            has none).
        rounding: ``floor`` (torchvision ``Resize``, the demo) or ``round`` (detectron2
            ``ResizeShortestEdge``, the evaluation) for the computed side.
        interpolation / antialias: the resize kernel (demo: bilinear with antialias).
        size_divisibility: pad to a multiple of this (model config: 32).
        pad_value: value of the padding, in normalised units (demo: 0).
        max_input_side: safety cap on the network input's longer side; an image whose resized size exceeds
            it is resized to fit, with a warning (extreme aspect ratios would otherwise explode memory).
    """

    short_side: int | None = 800
    long_side: int | None = None
    max_size: int | None = None
    rounding: Literal["floor", "round"] = "floor"
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    size_divisibility: int | None = None
    pad_value: float = 0.0
    max_input_side: int | None = 4096

    def __post_init__(self) -> None:
        if self.short_side is not None and self.long_side is not None:
            raise ValueError("set short_side or long_side, not both")
        for name in ("short_side", "long_side", "max_size", "max_input_side", "size_divisibility"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.rounding not in ("floor", "round"):
            raise ValueError(f"rounding must be 'floor' or 'round', got {self.rounding!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")


@dataclass
class PreparedBatch:
    """A batch ready for ``GleeModel.forward``.

    Attributes:
        images: [B, 3, Hp, Wp] normalised, resized, padded.
        original_sizes: (H, W) of each input image.
        resized_sizes: (h, w) of each image inside the padded canvas (top-left aligned).
    """

    images: Tensor
    original_sizes: list[tuple[int, int]]
    resized_sizes: list[tuple[int, int]]
    config: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _round(value: float, rounding: str) -> int:
    return int(value) if rounding == "floor" else int(value + 0.5)


def resized_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(h, w) after the configured resize (torchvision / detectron2 arithmetic)."""
    if height < 1 or width < 1:
        raise ValueError(f"image has zero size ({height}x{width})")
    short, long = min(height, width), max(height, width)
    if cfg.short_side is not None:
        if cfg.rounding == "floor":  # torchvision: the short side is exact, the long side floored
            new_short, new_long = cfg.short_side, int(cfg.short_side * long / short)
            if cfg.max_size is not None and new_long > cfg.max_size:
                new_short, new_long = int(cfg.max_size * new_short / new_long), cfg.max_size
        else:  # detectron2 ResizeShortestEdge: scale both, cap, then round half up
            scale = cfg.short_side / short
            new_short, new_long = short * scale, long * scale
            if cfg.max_size is not None and new_long > cfg.max_size:
                scale = cfg.max_size / new_long
                new_short, new_long = new_short * scale, new_long * scale
            new_short, new_long = int(new_short + 0.5), int(new_long + 0.5)
    elif cfg.long_side is not None:
        new_long, new_short = cfg.long_side, _round(cfg.long_side * short / long, cfg.rounding)
    else:
        new_short, new_long = short, long
    new_short, new_long = max(1, new_short), max(1, new_long)
    if cfg.max_input_side is not None and new_long > cfg.max_input_side:
        capped_short = max(1, _round(cfg.max_input_side * new_short / new_long, cfg.rounding))
        warnings.warn(
            f"image of {width}x{height} would be resized to a {new_long}-pixel side, above max_input_side="
            f"{cfg.max_input_side}; resizing its longer side to {cfg.max_input_side} instead (set "
            "PreprocessConfig.max_input_side to change this)",
            UserWarning,
            stacklevel=3,
        )
        new_short, new_long = capped_short, cfg.max_input_side
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _interpolate(x: Tensor, size: tuple[int, int], cfg: PreprocessConfig) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if cfg.interpolation in ("nearest", "area"):
        return F.interpolate(x, size=size, mode=cfg.interpolation)
    return F.interpolate(x, size=size, mode=cfg.interpolation, align_corners=False, antialias=cfg.antialias)


def normalisation(cfg: PreprocessConfig, model_cfg: GleeConfig) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(cfg.pixel_mean if cfg.pixel_mean is not None else model_cfg.pixel_mean, dtype=torch.float32)
    std = torch.tensor(cfg.pixel_std if cfg.pixel_std is not None else model_cfg.pixel_std, dtype=torch.float32)
    if mean.shape != (3,) or std.shape != (3,) or (std <= 0).any():
        raise ValueError(f"pixel_mean and pixel_std must be 3 values (std > 0), got {mean.tolist()}, {std.tolist()}")
    return mean.view(3, 1, 1), std.view(3, 1, 1)


def preprocess_image(image: np.ndarray, cfg: PreprocessConfig, model_cfg: GleeConfig,
                     device: torch.device | str = "cpu") -> Tensor:
    """uint8 RGB [H, W, 3] -> normalised, resized float32 [1, 3, h, w] (not padded)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError("preprocess_image expects a uint8 RGB array [H, W, 3]; read files with glee.io.read_image")
    mean, std = normalisation(cfg, model_cfg)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device=device, dtype=torch.float32)
    # the demo normalises first and resizes the normalised tensor; the order matters at float precision
    x = ((x - mean.to(x.device)) / std.to(x.device))[None]
    return _interpolate(x, resized_size(image.shape[0], image.shape[1], cfg), cfg)


def padded_canvas(sizes: Sequence[tuple[int, int]], divisibility: int) -> tuple[int, int]:
    """Smallest (Hp, Wp) holding every size, rounded up to ``divisibility``."""
    height = max(s[0] for s in sizes)
    width = max(s[1] for s in sizes)
    return math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility


def prepare_batch(images: Sequence[np.ndarray], cfg: PreprocessConfig, model_cfg: GleeConfig,
                  device: torch.device | str = "cpu") -> PreparedBatch:
    """Preprocess and pad a batch of uint8 RGB images (sizes may differ)."""
    if len(images) == 0:
        raise ValueError("no images to preprocess")
    tensors = [preprocess_image(img, cfg, model_cfg, device) for img in images]
    resized = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
    div = cfg.size_divisibility or model_cfg.size_divisibility
    ph, pw = padded_canvas(resized, div)
    batch = torch.full((len(images), 3, ph, pw), float(cfg.pad_value), dtype=torch.float32, device=device)
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[-2], : t.shape[-1]] = t[0]
    return PreparedBatch(
        images=batch,
        original_sizes=[(int(img.shape[0]), int(img.shape[1])) for img in images],
        resized_sizes=resized,
        config=cfg,
    )


def resize_prompt_mask(mask: Tensor | np.ndarray, resized: tuple[int, int], padded: tuple[int, int],
                       cfg: PreprocessConfig) -> Tensor:
    """Original-resolution prompt mask [H, W] -> [Hp, Wp] bool in network coordinates.

    As the demo: the 0/1 mask is resized with the image's kernel and thresholded at > 0 (any coverage
    counts), then zero-padded.
    """
    m = torch.tensor(mask) if isinstance(mask, np.ndarray) else torch.as_tensor(mask)
    if m.dim() != 2:
        raise ValueError(f"prompt mask must be [H, W], got {tuple(m.shape)}")
    x = _interpolate(m.to(torch.float32)[None, None], resized, cfg)[0, 0] > 0
    out = torch.zeros(padded, dtype=torch.bool, device=x.device)
    out[: resized[0], : resized[1]] = x
    return out
