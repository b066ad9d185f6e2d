"""``glee eval``: score an existing predictions file, or run a GLEE model over a dataset and score it.

    python -m eval.cli --metric coco-bbox --gt instances_val2017.json --pred results.json --out m.json
    glee eval --task coco --weights glee/assets/nano --gt instances_val.json --images val/images --out runs/coco

``evaluate_predictions(metric, gt, pred, **options)`` is the programmatic entry point for scoring: ``gt`` and
``pred`` are paths or already-loaded objects in the formats each metric module documents.  Running a model
(``--task``) lives in :mod:`eval.runner`, imported only in that mode (scoring never imports torch or glee).
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


TASKS = ("coco", "lvis", "refcoco", "ytvis")  # eval.runner.TASKS; repeated so that --help needs no eval.runner



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glee eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a predictions file (--metric), or run a GLEE model over a dataset and score it (--task).",
        epilog="examples:\n"
               "  glee eval --metric coco-bbox --gt instances_val2017.json --pred results.json --out m.json\n"
               "  glee eval --task coco --weights glee/assets/nano --gt datasets/shapesworld/annotations/"
               "instances_val.json \\\n      --images datasets/shapesworld/val/images --out runs/sw_val")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--metric", choices=METRICS, help="score --pred against --gt with this metric")
    mode.add_argument("--task", choices=TASKS,
                      help="run --weights over the dataset (--gt + --images) and score it: coco, lvis (COCO/LVIS "
                           "JSON), refcoco (RefCOCO-style refs JSON), ytvis (YouTube-VIS JSON + frame folder)")
    p.add_argument("--gt", help="ground-truth file or directory")
    p.add_argument("--pred", help="scoring: predictions file or directory")
    p.add_argument("--out", help="scoring: write {metric, gt, pred, results} as JSON here; running: output folder "
                                 "for the predictions and metrics.json (default: glee_eval_<task>)")
    p.add_argument("--backend", choices=("auto", "pycocotools", "faster-coco-eval"), default="auto",
                   help="COCO/LVIS engine (default: faster-coco-eval when installed)")
    p.add_argument("--max-dets", type=int, help="LVIS: detections per image (300); TETA: per image cap")
    p.add_argument("--no-preprocess", action="store_true",
                   help="MOT: skip MOTChallenge distractor/class preprocessing")
    p.add_argument("--bootstrap", type=int, metavar="N",
                   help="reasonseg: also 95%% bootstrap intervals of gIoU and cIoU from N resamples (e.g. 2000)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    run = p.add_argument_group("running a model (--task)")
    run.add_argument("--weights", help="what `glee predict --weights` takes: a save_pretrained folder (e.g. "
                                       "glee/assets/nano), an official checkpoint file, or a parity-fixture folder")
    run.add_argument("--preset", help="variant of an official checkpoint file (default: from its keys)")
    run.add_argument("--images", help="folder the ground truth's file_name / file_names are relative to")
    run.add_argument("--limit", type=int, default=0, help="first N images / refs entries / videos (0: all)")
    run.add_argument("--short-side", type=int, help="input shorter side (default: the model's min_size_test)")
    run.add_argument("--max-size", type=int, help="cap on the input longer side (default: the model's max_size_test)")
    run.add_argument("--top-k", type=int, help="instances kept per image (coco 100, lvis 300) or per video (ytvis 30)")
    run.add_argument("--score-threshold", type=float, default=0.0,
                     help="coco/lvis: keep instances with score > this (default 0)")
    run.add_argument("--batch-size", type=int, default=1, help="images per forward (coco, lvis, refcoco)")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"progress": not args.quiet}
    if args.metric.startswith(("coco", "lvis")):
        opts["backend"] = args.backend
    if args.max_dets is not None and args.metric.startswith(("lvis", "teta")):
        opts["max_dets"] = args.max_dets
    if args.metric == "mot":
        opts["preprocess"] = not args.no_preprocess
    if args.bootstrap:
        if args.metric != "reasonseg":
            raise ValueError("--bootstrap applies to --metric reasonseg")
        opts["bootstrap"] = args.bootstrap
    return opts


def _check_mode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Each mode's required options, and no options of the other mode."""
    if args.metric:
        needed, foreign = ("gt", "pred"), ("weights", "preset", "images", "short_side", "max_size", "top_k",
                                            "threads")
    else:
        needed, foreign = ("weights", "gt", "images"), ("pred", "bootstrap")
    missing = [f"--{n.replace('_', '-')}" for n in needed if getattr(args, n) is None]
    if missing:
        mode = f"--metric {args.metric}" if args.metric else f"--task {args.task}"
        parser.error(f"{mode} needs {' '.join(missing)}")
    extra = [f"--{n.replace('_', '-')}" for n in foreign if getattr(args, n) is not None]
    if extra:
        where = "running a model (--task)" if args.metric else "scoring a file (--metric)"
        parser.error(f"{' '.join(extra)} only applies to {where}")


def _score(args: argparse.Namespace) -> int:
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


def _run(args: argparse.Namespace) -> int:
    try:
        # bad numbers are input errors too: report them like the rest, before anything is loaded
        if args.limit < 0 or (args.top_k is not None and args.top_k < 1) or args.batch_size < 1:
            raise ValueError("--limit must be >= 0, --top-k and --batch-size >= 1")
        from eval import runner

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        settings = runner.RunSettings(short_side=args.short_side, max_size=args.max_size, top_k=args.top_k,
                                      score_threshold=args.score_threshold, batch_size=args.batch_size,
                                      limit=args.limit or None, progress=not args.quiet)
        out = args.out or f"glee_eval_{args.task}"
        record = runner.evaluate_task(args.task, args.weights, args.gt, args.images, out, settings,
                                      preset=args.preset, device=args.device, backend=args.backend,
                                      max_dets=args.max_dets)
    except (OSError, ValueError) as e:  # missing / malformed files, unreadable images, bad weights
        print(f"error: {e}", file=sys.stderr)
        return 1
    flat = {f"{metric}/{key}": value for metric, res in record["results"].items() for key, value in res.items()}
    t = record["timing"]
    print(format_table(flat))
    print(f"machine: {record['machine']}")
    print(f"weights: {record['weights']}; input short side {record['settings']['short_side']}, "
          f"max size {record['settings']['max_size']}")
    print(f"timing: {t['items']} {t['unit']} in {t['run_s']:.1f} s ({t['per_s']:.2f} {t['unit']}/s); "
          f"model load {t['load_s']:.1f} s, scoring {t['score_s']:.1f} s")
    print(f"wrote {Path(out) / 'metrics.json'} and {record['files']['pred']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (0 ok, 1 bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_mode(args, parser)
    return _score(args) if args.metric else _run(args)


if __name__ == "__main__":
    sys.exit(main())
