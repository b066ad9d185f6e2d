"""The sample type shared by every dataset, image reading, and the seeded random-access base class.

LISA's datasets ignore the index and draw with the global RNG; here each item draws from
``np.random.default_rng([seed, epoch, index])``, so a sample is reproducible and DataLoader workers do not
repeat each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llm_bridge.data.conversation import Message

IGNORE_VALUE = 255


@dataclass
class SegSample:
    """One image and its conversations; masks are in [SEG] order across the assistant turns."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    conversations: list[list[Message]]
    masks: np.ndarray  # [n, H, W] uint8: 1 target, 0 background, 255 ignore
    source: str = ""
    image_path: str = ""
    meta: dict = field(default_factory=dict)
    # [n] set id per mask: masks with one id (>= 0) are an unordered set (the objects one answer names, one [SEG]
    # each; the query_pointer head matches them to its [SEG]s); -1 or None: the masks follow the [SEG] order
    mask_sets: np.ndarray | None = None

    def __post_init__(self) -> None:
        h, w = self.image.shape[:2]
        if self.masks.ndim != 3 or tuple(self.masks.shape[1:]) != (h, w):
            raise ValueError(f"{self.source or 'sample'} {self.image_path}: masks {self.masks.shape} do not match "
                             f"the image size {(h, w)}")
        if self.mask_sets is not None and self.mask_sets.shape != (self.masks.shape[0],):
            raise ValueError(f"{self.source or 'sample'} {self.image_path}: mask_sets {self.mask_sets.shape} for "
                             f"{self.masks.shape[0]} masks")


def empty_masks(image: np.ndarray) -> np.ndarray:
    return np.zeros((0, *image.shape[:2]), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] (EXIF orientation ignored, as OpenCV in LISA)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class RandomSampleDataset(torch.utils.data.Dataset):
    """``len`` is the number of samples per epoch; item ``i`` is a seeded random draw (LISA's scheme)."""

    kind = "base"

    def __init__(self, samples_per_epoch: int = 1000, seed: int = 0) -> None:
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> SegSample:
        return self.sample(self.rng(index))

    def sample(self, rng: np.random.Generator) -> SegSample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return ""


def choose(rng: np.random.Generator, items: list, k: int) -> list:
    """Up to ``k`` distinct items in random order (all of them when there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]
