"""Accuracy of a GLEE model on held-out ShapesWorld images (written by scripts/make_shapesworld.py).

Usage: python scripts/bench_shapesworld.py WEIGHTS --data datasets/shapesworld [--limit 200]

Reports, for the ``val`` split (seen colour-shape compositions) and the ``heldout`` split (compositions never
seen in training): box AP / AP50 and mask AP from the category list, and referring-expression P@0.5 and oIoU
(top-1 box and mask per expression).  Prints a table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import glee  # noqa: F401  (torchvision shim)
from eval import evaluate_predictions
from glee.benchmark import machine_summary
from glee.inference.postprocess import PostprocessConfig
from glee.inference.predictor import ImagePredictor, PredictorConfig
from glee.inference.preprocess import PreprocessConfig


def _subset(coco: dict, limit: int | None) -> dict:
    if not limit:
        return coco
    images = coco["images"][:limit]
    keep = {im["id"] for im in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}


def detection_metrics(predictor: ImagePredictor, data: Path, split: str, limit: int | None) -> dict:
    gt = _subset(json.loads((data / "annotations" / f"instances_{split}.json").read_text()), limit)
    names = [c["name"] for c in gt["categories"]]
    ids = [c["id"] for c in gt["categories"]]
    folder = data / split / "images"
    results = []
    for im in gt["images"]:
        image = np.asarray(Image.open(folder / im["file_name"]).convert("RGB"))
        dets = predictor.detect(image, names, top_k=100, threshold=0.0, score_mode="eval", multi_label=True)
        results += dets.to_coco(im["id"], category_ids=ids)
    box = evaluate_predictions("coco-bbox", gt, results)
    segm = evaluate_predictions("coco-segm", gt, results)
    return {"box_AP": box["AP"], "box_AP50": box["AP50"], "mask_AP": segm["AP"]}


def referring_metrics(predictor: ImagePredictor, data: Path, split: str, limit: int | None) -> dict:
    refs = _subset(json.loads((data / "annotations" / f"refs_{split}.json").read_text()), limit)
    by_image = {a["image_id"]: a for a in refs["annotations"]}
    folder = data / split / "images"
    samples, preds = [], []
    for im in refs["images"]:
        ann = by_image[im["id"]]
        image = np.asarray(Image.open(folder / im["file_name"]).convert("RGB"))
        for k, expr in enumerate(im["expressions"]):
            sid = f"{im['id']}:{k}"
            samples.append({"id": sid, "bbox": ann["bbox"], "segmentation": ann["segmentation"],
                            "height": im["height"], "width": im["width"]})
            rec = predictor.ground(image, expr).to_coco(sid)
            preds += [{"id": sid, "bbox": r["bbox"], "segmentation": r["segmentation"], "score": r["score"]}
                      for r in rec]
    res = evaluate_predictions("refcoco", samples, preds)
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
    probe = ImagePredictor.from_pretrained(args.weights)
    cfg = probe.model.cfg
    pre = PreprocessConfig(short_side=cfg.min_size_test, max_size=cfg.max_size_test)
    config = PredictorConfig(preprocess=pre, expressions=PostprocessConfig(top_k=1, threshold=None))
    predictor = ImagePredictor(probe.model, config)
    rows = []
    for split in args.splits:
        start = time.perf_counter()
        row = {"split": split, **detection_metrics(predictor, args.data, split, args.limit)}
        row.update(referring_metrics(predictor, args.data, split, args.limit))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    print(f"machine: {machine_summary()}")
    print(f"weights: {args.weights}; {args.limit or 'all'} images per split; input short side {cfg.min_size_test}")
    print(f"{'split':<10} {'box AP':>7} {'AP50':>7} {'mask AP':>8} {'ref P@0.5':>10} {'ref oIoU':>9} {'s':>6}")
    for r in rows:
        print(f"{r['split']:<10} {r['box_AP']:>7.3f} {r['box_AP50']:>7.3f} {r['mask_AP']:>8.3f} {r['P@0.5']:>10.3f} "
              f"{r['oIoU']:>9.3f} {r['seconds']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
