"""Benchmark metrics for GLEE: COCO/LVIS AP, RefCOCO, YouTube-VIS AP, MOT (HOTA/MOTA/IDF1), TETA,
VOS J&F and ReasonSeg gIoU/cIoU.

``evaluate_predictions(metric, gt, pred)`` scores predictions (paths or in-memory objects);
``python -m eval.cli --metric ... --gt ... --pred ...`` does the same from the shell.

This package does not import ``glee`` (or ``train``, ``llm_bridge``, ``scripts``); it only reads
files and Python objects, so it can score any model's output.
"""

from typing import Any

__all__ = ["METRICS", "evaluate_predictions"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m eval.cli` does not import eval.cli twice (runpy warns about that).
    if name in __all__:
        from eval import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
