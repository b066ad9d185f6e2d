"""Benchmark metrics for GLEE: COCO/LVIS AP, RefCOCO, YouTube-VIS AP, MOT (HOTA/MOTA/IDF1), TETA,
VOS J&F and ReasonSeg gIoU/cIoU.

``evaluate_predictions(metric, gt, pred)`` scores predictions (paths or in-memory objects);
``glee eval --metric ... --gt ... --pred ...`` does the same from the shell, and
``glee eval --task coco|lvis|refcoco|ytvis --weights ... --gt ... --images ...`` runs a GLEE model over a
dataset first (``eval.runner``).

The metric modules do not import ``glee`` (only ``eval.runner`` does; nothing here imports ``train``,
``llm_bridge`` or ``scripts``): they read files and Python objects, so they score any model's output.
"""

from typing import Any

__all__ = ["METRICS", "evaluate_predictions"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m eval.cli` does not import eval.cli twice (runpy warns about that).
    if name in __all__:
        from eval import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
