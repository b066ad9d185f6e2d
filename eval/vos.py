"""Semi-supervised video object segmentation: J&F with the DAVIS 2017 definitions.

Follows ``davis2017-evaluation`` (not on PyPI):

* objects are the labels ``1..max(label)`` of the *first* ground-truth frame; label 255 (void) is
  treated as background, as the semi-supervised evaluation passes no void mask;
* the first and last frames are not scored (``skip_first_last``: the first is given to the method,
  DAVIS also drops the last);
* J (region similarity) per frame = |P & G| / |P | G|, and 1 when both are empty;
* F (boundary F-measure) per frame: one-pixel boundaries of P and G (DAVIS ``seg2bmap``) are matched
  within a disk of radius ``ceil(0.008 * image diagonal)`` pixels (``bound_th = 0.008``); precision
  and recall of the boundary pixels give F = 2PR / (P + R); an empty boundary on both sides gives 1,
  on one side gives precision or recall 0 accordingly;
* per object: Mean = mean over frames, Recall = share of frames with value > 0.5, Decay = mean of
  the first quarter of frames minus mean of the last quarter;
* reported values are means over all objects of all videos; ``J&F = (J-Mean + F-Mean) / 2``.

The dilation uses ``scipy.ndimage.binary_dilation`` with the same disk footprint that DAVIS passes to
``cv2.dilate``; for binary images and a symmetric footprint the two are identical.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from eval.io import fail, load_video_masks

BOUND_TH = 0.008
VOID_LABEL = 255


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity J per frame for boolean ``gt``/``pred`` ``[T, H, W]``; returns ``[T]``."""
    inter = np.logical_and(gt, pred).sum(axis=(-2, -1))
    union = np.logical_or(gt, pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS one-pixel boundary map of a binary mask ``[H, W]``: a pixel is on the boundary when it
    differs from its east, south or south-east neighbour (``_seg2bmap`` with the native size)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk``: the footprint ``x^2 + y^2 <= radius^2``."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame, boolean ``pred``/``gt`` ``[H, W]`` (DAVIS ``f_measure``)."""
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape))
    fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 or n_gt == 0:
        precision = 1.0 if n_fg == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        footprint = disk(int(bound_pix))
        fg_dil = ndimage.binary_dilation(fg_b, structure=footprint)
        gt_dil = ndimage.binary_dilation(gt_b, structure=footprint)
        precision = float((fg_b & gt_dil).sum()) / n_fg
        recall = float((gt_b & fg_dil).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """DAVIS per-object (Mean, Recall, Decay) of per-frame values ``[T]`` (T >= 1)."""
    values = np.asarray(values, float)
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    # Four temporal bins with DAVIS's rounding; bins overlap by one frame at their edges.
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[ids[i]: ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def evaluate_video(gt_labels: np.ndarray, pred_labels: np.ndarray, skip_first_last: bool = True,
                   bound_th: float = BOUND_TH, name: str = "<predictions>",
                   video: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F for one video.

    Args:
        gt_labels, pred_labels: integer label maps ``[T, H, W]`` (0 background, k object k).
    Returns:
        ``(J, F)``, each ``[num_objects, T']`` with ``T' = T - 2`` when ``skip_first_last``.
    """
    gt_labels = np.where(gt_labels == VOID_LABEL, 0, gt_labels)
    num_objects = int(gt_labels[0].max()) if gt_labels.shape[0] else 0
    if skip_first_last:
        gt_labels, pred_labels = gt_labels[1:-1], pred_labels[1:-1]
    num_pred = int(pred_labels.max()) if pred_labels.size else 0
    if num_pred > num_objects:
        raise fail(name, f"video '{video}' has object id {num_pred} but the first ground-truth frame has "
                         f"only {num_objects} objects")
    j = np.zeros((num_objects, gt_labels.shape[0]))
    f = np.zeros_like(j)
    for k in range(1, num_objects + 1):
        g, p = gt_labels == k, pred_labels == k
        j[k - 1] = db_eval_iou(g, p)
        f[k - 1] = [f_measure(p[t], g[t], bound_th) for t in range(g.shape[0])]
    return j, f


def evaluate_vos(gt: Any, preds: Any, skip_first_last: bool = True, bound_th: float = BOUND_TH,
                 progress: bool = False) -> dict[str, float | int | None]:
    """DAVIS-style J&F over a set of videos.

    Args:
        gt, preds: ``{video: [T, H, W] labels}``, a ``.npz`` of such arrays, or a DAVIS-layout
            directory ``<video>/<frame>.png`` of indexed PNGs. Every ground-truth frame that is
            scored must have a prediction of the same size; videos missing from ``preds`` are an
            error (a crashed run must not look like a finished one).
    Returns:
        ``J&F, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay, num_videos, num_objects``
        (``None`` when there are no objects).
    """
    gt_videos, gt_name = load_video_masks(gt, "<ground truth>")
    pred_videos, pred_name = load_video_masks(preds, "<predictions>")
    for video in pred_videos:
        if video not in gt_videos:
            raise fail(pred_name, f"video '{video}' is not in {gt_name}")
    stats: dict[str, list[float]] = {k: [] for k in ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall",
                                                     "F-Decay")}
    for video, (frames, g) in tqdm(gt_videos.items(), desc="vos videos", disable=not progress):
        if video not in pred_videos:
            raise fail(pred_name, f"has no prediction for video '{video}' of {gt_name}")
        p_frames, p = pred_videos[video]
        if p.shape[1:] != g.shape[1:]:
            raise fail(pred_name, f"video '{video}' masks are {p.shape[1:]} but the ground truth is "
                                  f"{g.shape[1:]}")
        if frames is None or p_frames is None:
            # Arrays carry no frame names: frame t of the prediction is frame t of the ground truth.
            if p.shape[0] != g.shape[0]:
                raise fail(pred_name, f"video '{video}' has {p.shape[0]} frames but the ground truth has "
                                      f"{g.shape[0]}")
            p_aligned = p
        else:
            # DAVIS reads a result mask per scored ground-truth frame id; other frames may be absent.
            index = {fr: t for t, fr in enumerate(p_frames)}
            scored = frames[1:-1] if skip_first_last else frames
            missing = [fr for fr in scored if fr not in index]
            if missing:
                raise fail(pred_name, f"video '{video}' has no mask for frame '{missing[0]}'")
            p_aligned = np.zeros_like(g)
            for t, fr in enumerate(frames):
                if fr in index:
                    p_aligned[t] = p[index[fr]]
        j, f = evaluate_video(g, p_aligned, skip_first_last, bound_th, pred_name, video)
        for k in range(j.shape[0]):
            if j.shape[1] == 0:
                continue  # a video of <= 2 frames has nothing to score once first/last are dropped
            for key, values in (("J", j[k]), ("F", f[k])):
                mean, recall, decay = db_statistics(values)
                stats[f"{key}-Mean"].append(mean)
                stats[f"{key}-Recall"].append(recall)
                stats[f"{key}-Decay"].append(decay)
    out: dict[str, float | int | None] = {k: (float(np.mean(v)) if v else None) for k, v in stats.items()}
    out["J&F"] = (out["J-Mean"] + out["F-Mean"]) / 2 if stats["J-Mean"] else None
    out["num_videos"] = len(gt_videos)
    out["num_objects"] = len(stats["J-Mean"])
    return {"J&F": out.pop("J&F"), **out}
