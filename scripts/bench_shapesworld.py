"""Accuracy of a GLEE model on held-out ShapesWorld images (written by scripts/make_shapesworld.py).

Usage: python scripts/bench_shapesworld.py WEIGHTS --data datasets/shapesworld [--limit 200]

Reports, for the ``val`` split (seen colour-shape compositions) and the ``heldout`` split (compositions never
seen in training): box AP / AP50 and mask AP from the category list, and referring-expression P@0.5 and oIoU
(top-1 box and mask per expression).  Prints a table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import glee  # noqa: F401  (torchvision shim)
from eval.runner import RunSettings, load_predictor, load_task_inputs, run_inputs, score_run
from glee.benchmark import machine_summary
from glee.inference.predictor import ImagePredictor


def detection_metrics(predictor: ImagePredictor, data: Path, split: str, limit: int | None) -> dict:
    """Box AP / AP50 and mask AP from the split's category list (``glee eval --task coco``)."""
    settings = RunSettings(limit=limit, progress=False)
    inputs = load_task_inputs("coco", data / "annotations" / f"instances_{split}.json", data / split / "images", limit)
    res = score_run(run_inputs(predictor, inputs, settings))
    return {"box_AP": res["coco-bbox"]["AP"], "box_AP50": res["coco-bbox"]["AP50"], "mask_AP": res["coco-segm"]["AP"]}


def referring_metrics(predictor: ImagePredictor, data: Path, split: str, limit: int | None) -> dict:
    """REC P@0.5 and RES oIoU, top-1 per expression (``glee eval --task refcoco``)."""
    settings = RunSettings(limit=limit, progress=False)
    inputs = load_task_inputs("refcoco", data / "annotations" / f"refs_{split}.json", data / split / "images", limit)
    res = score_run(run_inputs(predictor, inputs, settings))["refcoco"]
    return {"P@0.5": res["P@0.5"], "oIoU": res["oIoU"], "expressions": res["num_samples"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="a save_pretrained folder (or anything glee predict accepts)")
    parser.add_argument("--data", type=Path, required=True, help="ShapesWorld root (annotations/, val/, heldout/)")
    parser.add_argument("--limit", type=int, default=200, help="images per split (0: all)")
    parser.add_argument("--splits", nargs="+", default=["val", "heldout"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.weights)  # input size: the model config's min/max_size_test
    rows = []
    for split in args.splits:
        start = time.perf_counter()
        row = {"split": split, **detection_metrics(predictor, args.data, split, args.limit or None)}
        row.update(referring_metrics(predictor, args.data, split, args.limit or None))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    pre = predictor.config.preprocess
    print(f"machine: {machine_summary()}")
    print(f"weights: {args.weights}; {args.limit or 'all'} images per split; input short side {pre.short_side}")
    print(f"{'split':<10} {'box AP':>7} {'AP50':>7} {'mask AP':>8} {'ref P@0.5':>10} {'ref oIoU':>9} {'s':>6}")
    for r in rows:
        print(f"{r['split']:<10} {r['box_AP']:>7.3f} {r['box_AP50']:>7.3f} {r['mask_AP']:>8.3f} {r['P@0.5']:>10.3f} "
              f"{r['oIoU']:>9.3f} {r['seconds']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
