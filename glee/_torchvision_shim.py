"""Make a CUDA-only torchvision importable on a CPU-only torch.

The only torchvision wheel for torch 2.13 is a CUDA build: its ``_C.so`` cannot load on CPU torch,
and ``torchvision/_meta_registrations.py`` then fails on an unguarded ``register_fake("torchvision::nms")``.
That breaks ``import timm``, ``import open_clip`` and every ``transformers`` model import.  GLEE's own
code never uses torchvision; this shim only keeps the ecosystem importable next to it.

``install()`` tries to load torchvision's compiled ops; if that fails it defines the ``nms``/``qnms``
schemas with a pure-torch CPU kernel so that torchvision imports and ``ops.nms`` works.  It is a no-op
when torchvision is absent or its ops load (a matching CUDA torch).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

_installed = False
_installing = False
_library: Any = None  # the torch.library.Library that owns the schemas (kept alive)


def _nms_cpu(dets: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy non-maximum suppression; returns kept indices sorted by decreasing score."""
    import torch

    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(-1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for rank, i in enumerate(order.tolist()):
        if suppressed[rank]:
            continue
        keep.append(i)
        rest = order[rank + 1 :]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rank + 1 :] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def install() -> None:
    """Install the shim once; safe to call many times and before or after torchvision is present."""
    global _installed, _installing
    if _installed or _installing or "torchvision" in sys.modules:
        _installed = True
        return
    _installing = True
    try:
        _install()
    finally:
        _installing = False
        _installed = True


def _install() -> None:
    global _library
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    try:  # already defined in this process (by the compiled ops or by another copy of this shim)
        _ = torch.ops.torchvision.nms
        return
    except (AttributeError, RuntimeError):
        pass
    pkg_dir = list(spec.submodule_search_locations)[0]
    lib_path = next((os.path.join(pkg_dir, f) for f in os.listdir(pkg_dir) if f.startswith("_C.")), None)
    if lib_path is not None:
        try:
            torch.ops.load_library(lib_path)
            return  # the compiled ops work with this torch build
        except (OSError, RuntimeError):
            pass
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", _nms_cpu, "CPU")
    import torchvision.extension as tv_extension  # noqa: PLC0415  (must follow the schema definitions)

    tv_extension._has_ops = lambda: True


class _ShimFinder(importlib.abc.MetaPathFinder):
    """Installs the shim the first time anything looks up ``torchvision``, then steps aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torchvision" and not _installed and not _installing:
            install()
        return None


def register_import_hook() -> None:
    """Called from a ``.pth`` file (``scripts/setup.sh`` writes it) so every interpreter is covered."""
    if not any(isinstance(f, _ShimFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _ShimFinder())
