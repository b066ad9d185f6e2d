"""Score an existing predictions file against ground truth.

    python -m eval.cli --metric coco-bbox --gt instances_val2017.json --pred results.json --out m.json

``evaluate_predictions(metric, gt, pred, **options)`` is the programmatic entry point: ``gt`` and
``pred`` are paths or already-loaded objects in the formats each metric module documents.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

METRICS = ("coco-bbox", "coco-segm", "lvis-bbox", "lvis-segm", "refcoco", "ytvis", "mot", "teta", "vos",
           "reasonseg")


def _dispatch(metric: str) -> Callable[..., dict]:
    # Imported lazily so that e.g. `--metric reasonseg` does not pay for TrackEval / pycocotools.
    if metric in ("coco-bbox", "coco-segm"):
        from eval.coco import evaluate_coco

        return lambda gt, pred, **kw: evaluate_coco(gt, pred, iou_type=metric.split("-")[1], **kw)
    if metric in ("lvis-bbox", "lvis-segm"):
        from eval.coco import evaluate_lvis

        return lambda gt, pred, **kw: evaluate_lvis(gt, pred, iou_type=metric.split("-")[1], **kw)
    if metric == "refcoco":
        from eval.refcoco import evaluate_refcoco

        return evaluate_refcoco
    if metric == "ytvis":
        from eval.video import evaluate_ytvis

        return evaluate_ytvis
    if metric == "mot":
        from eval.tracking import evaluate_mot

        return evaluate_mot
    if metric == "teta":
        from eval.tracking import evaluate_teta

        return evaluate_teta
    if metric == "vos":
        from eval.vos import evaluate_vos

        return evaluate_vos
    if metric == "reasonseg":
        from eval.reasonseg import evaluate_reasonseg

        return evaluate_reasonseg
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def evaluate_predictions(metric: str, gt: Any, pred: Any, **options: Any) -> dict[str, float | int | None]:
    """Score ``pred`` against ``gt`` with one of ``METRICS``.

    Args:
        metric: e.g. ``"coco-bbox"``, ``"lvis-segm"``, ``"reasonseg"``.
        gt, pred: file paths or in-memory objects (see the metric's module).
        **options: forwarded to the metric function (e.g. ``backend="pycocotools"`` for COCO/LVIS,
            ``progress=True`` for the video metrics).
    Returns:
        ``{name: value}``; rates are in [0, 1], counts are ints, ``None`` means undefined.
    Raises:
        ValueError: unknown metric, or malformed input (message names the file, record and field).
    """
    return _dispatch(metric)(gt, pred, **options)


def format_table(results: dict[str, Any]) -> str:
    """Two-column text table of a results dict."""
    width = max([len("metric"), *(len(k) for k in results)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 8}"]
    for key, value in results.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:.4f}"
        else:
            text = str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--metric", required=True, choices=METRICS)
    p.add_argument("--gt", required=True, help="ground-truth file or directory")
    p.add_argument("--pred", required=True, help="predictions file or directory")
    p.add_argument("--out", help="write {metric, gt, pred, results} as JSON here")
    p.add_argument("--backend", choices=("auto", "pycocotools", "faster-coco-eval"), default="auto",
                   help="COCO/LVIS engine (default: faster-coco-eval when installed)")
    p.add_argument("--max-dets", type=int, help="LVIS: detections per image (300); TETA: per image cap")
    p.add_argument("--no-preprocess", action="store_true",
                   help="MOT: skip MOTChallenge distractor/class preprocessing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"progress": not args.quiet}
    if args.metric.startswith(("coco", "lvis")):
        opts["backend"] = args.backend
    if args.max_dets is not None and args.metric.startswith(("lvis", "teta")):
        opts["max_dets"] = args.max_dets
    if args.metric == "mot":
        opts["preprocess"] = not args.no_preprocess
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    try:
        results = evaluate_predictions(args.metric, args.gt, args.pred, **_options(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    record: dict[str, Any] = {"metric": args.metric, "gt": args.gt, "pred": args.pred, "results": results}
    if args.metric.startswith(("coco", "lvis")):
        from eval.coco import resolve_backend

        record["backend"] = resolve_backend(args.backend)
    print(format_table(results))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
