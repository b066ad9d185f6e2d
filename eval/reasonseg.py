"""ReasonSeg gIoU and cIoU, exactly as LISA's ``validate()`` computes them.

LISA (dvlab-research/LISA, ``train_ds.py``) uses per mask the binary (K=2) intersection/union
histograms of ``utils.intersectionAndUnionGPU`` with ``ignore_index=255``; for the foreground class:

  * ``I = #(pred == 1 & gt == 1)`` and ``U = #(pred == 1 & gt != 255) + #(gt == 1) - I``
    (pixels labelled 255 in the ground truth are excluded from both);
  * per-sample IoU ``= I / (U + 1e-5)``, plus 1.0 when ``U == 0`` (empty target and empty
    prediction: LISA's ``acc_iou[union_i == 0] += 1.0``);
  * ``gIoU`` = mean of the per-sample IoUs;
  * ``cIoU`` = ``sum(I) / (sum(U) + 1e-10)`` over the split.

The epsilons are LISA's: 1e-5 in the per-sample IoU, 1e-10 in cIoU.  ``bootstrap=N`` adds 95% percentile-bootstrap
intervals (samples resampled with replacement): on 100 samples they are wide (the bundled bridge's held-out
gIoU is 0.525 [0.45, 0.60]), so compare models on the same samples and read small differences with them in mind.
Predictions are binarised as ``pred > 0`` (LISA thresholds logits at 0 before this step, so pass binary masks or
logits > 0).
A ground-truth sample with no prediction is scored as an empty prediction, not skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from eval.io import fail, load_mask_dict

IGNORE_LABEL = 255
SAMPLE_EPS = 1e-5  # LISA: acc_iou += intersection_i / (union_i + 1e-5)
TOTAL_EPS = 1e-10  # LISA: iou_class = intersection_meter.sum / (union_meter.sum + 1e-10)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union of binary ``pred [H, W]`` and ``gt [H, W]`` (0/1/255)."""
    valid = gt != IGNORE_LABEL
    p = (pred > 0) & valid
    g = gt == 1
    inter = int(np.count_nonzero(p & g))
    return inter, int(np.count_nonzero(p)) + int(np.count_nonzero(g)) - inter


def _sample_ious(inters: np.ndarray, unions: np.ndarray) -> np.ndarray:
    """LISA's per-sample IoU: I / (U + 1e-5), plus 1 where U == 0."""
    return inters / (unions + SAMPLE_EPS) + (unions == 0)


def _ciou(inter_sum: np.ndarray | float, union_sum: np.ndarray | float) -> np.ndarray | float:
    """LISA's cIoU from summed intersections and unions (elementwise for arrays of sums)."""
    return inter_sum / (union_sum + TOTAL_EPS)


def giou_ciou(inters: np.ndarray, unions: np.ndarray) -> tuple[float | None, float | None]:
    """LISA's gIoU and cIoU from per-sample foreground intersections and unions ``[N]``."""
    inters, unions = np.asarray(inters, float), np.asarray(unions, float)
    if inters.size == 0:
        return None, None
    return float(_sample_ious(inters, unions).mean()), float(_ciou(inters.sum(), unions.sum()))


def bootstrap_intervals(inters: np.ndarray, unions: np.ndarray, resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> dict[str, tuple[float, float] | None]:
    """Percentile-bootstrap intervals of gIoU and cIoU: the spread of the metric over other draws of as many
    samples (resampled with replacement from ``inters``/``unions`` [N]); deterministic for a ``seed``."""
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap needs resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    inters, unions = np.asarray(inters, float), np.asarray(unions, float)
    if inters.size == 0:
        return {"gIoU": None, "cIoU": None}
    per_sample = _sample_ious(inters, unions)
    rng = np.random.default_rng(seed)
    giou, ciou = [], []
    for start in range(0, resamples, 256):  # bounded memory for large splits
        index = rng.integers(0, inters.size, (min(256, resamples - start), inters.size))
        giou.append(per_sample[index].mean(1))
        ciou.append(_ciou(inters[index].sum(1), unions[index].sum(1)))
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {name: tuple(float(v) for v in np.percentile(np.concatenate(values), tails))
            for name, values in (("gIoU", giou), ("cIoU", ciou))}


def evaluate_reasonseg(gt: Any, preds: Any, progress: bool = False,
                       bootstrap: int = 0) -> dict[str, float | int | None]:
    """Score reasoning-segmentation masks.

    Args:
        gt: ``{sample_id: [H, W] uint8}`` with 0 background, 1 target, 255 ignore; or a ``.npz``,
            ``.json`` (RLE) or PNG directory holding that (see ``eval.io.load_mask_dict``).
        preds: ``{sample_id: [H, W]}`` binary masks (any dtype; ``> 0`` is foreground), same forms.
        bootstrap: resamples for 95% intervals (0: none; see :func:`bootstrap_intervals`).
    Returns:
        ``gIoU``, ``cIoU`` (``None`` for an empty set), ``num_samples``, ``num_missing``; with ``bootstrap``
        also ``gIoU_ci95_low``, ``gIoU_ci95_high``, ``cIoU_ci95_low``, ``cIoU_ci95_high``.
    """
    gt_masks, gt_name = load_mask_dict(gt, "<ground truth>")
    pred_masks, pred_name = load_mask_dict(preds, "<predictions>")
    for key in pred_masks:
        if key not in gt_masks:
            raise fail(pred_name, f"mask '{key}' has no ground truth in {gt_name}")
    inters, unions = np.zeros(len(gt_masks)), np.zeros(len(gt_masks))
    missing = 0
    for n, (key, g) in enumerate(tqdm(gt_masks.items(), desc="reasonseg", disable=not progress)):
        if g.ndim != 2:
            raise fail(gt_name, f"mask '{key}' must be 2-D [H, W], got shape {g.shape}")
        labels = np.unique(g)
        if not np.isin(labels, (0, 1, IGNORE_LABEL)).all():
            raise fail(gt_name, f"mask '{key}' has values {labels.tolist()}; expected 0, 1 and 255 (ignore)")
        p = pred_masks.get(key)
        if p is None:
            missing += 1
            p = np.zeros_like(g)
        elif p.shape != g.shape:
            # A silent resize would score at the model's resolution; make the caller resize.
            raise fail(pred_name, f"mask '{key}' has shape {p.shape} but the ground truth is {g.shape}")
        inters[n], unions[n] = intersection_union(p, g)
    giou, ciou = giou_ciou(inters, unions)
    results: dict[str, float | int | None] = {"gIoU": giou, "cIoU": ciou, "num_samples": len(gt_masks),
                                              "num_missing": missing}
    if bootstrap:
        for name, interval in bootstrap_intervals(inters, unions, bootstrap).items():
            results[f"{name}_ci95_low"], results[f"{name}_ci95_high"] = interval or (None, None)
    return results
