"""Multi-object tracking metrics: HOTA / CLEAR (MOTA) / Identity (IDF1), and TETA.

HOTA, MOTA and IDF1 are computed by TrackEval's metric classes (PyPI ``trackeval``, a packaged
copy of JonathonLuiten/TrackEval); this module only reads MOTChallenge files and applies the
MOTChallenge preprocessing that TrackEval's ``MotChallenge2DBox`` dataset performs:

* ground-truth rows with flag (column 7) 0 are not evaluated;
* with a class column (column 8, MOT17/20 ground truth), only class 1 (pedestrian) is evaluated;
  a prediction matched (Hungarian, IoU >= 0.5) to a distractor ground truth (classes 2, 7, 8, 12,
  and 6 for MOT20) is removed. Rows whose class is absent or <= 0 count as pedestrians, so a
  ground truth written in the prediction format (class -1) also works;
* similarity is box IoU.

TETA (Li et al., "Tracking Every Thing in the Wild", ECCV 2022) is not on PyPI, so it is
implemented here following the reference ``teta`` package (SysCV/tet, siyuanliii/TETA) on TAO-format
box data: class-agnostic local clusters around each ground-truth box, a global track assignment at
IoU 0.5, localisation and association scores at thresholds alpha in {0, 0.05, ..., 0.95}, and
classification scores for alpha >= 0.5. ``TETA = (LocA + AssocA + ClsA) / 3``, class-averaged over
classes with ground truth, averaged over alpha.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from eval.io import as_box, as_id, as_list, as_number, fail, load_json, load_mot_source, require

EPS = np.finfo(float).eps
MOT_DISTRACTOR_CLASSES = (2, 7, 8, 12)  # person_on_vehicle, static_person, distractor, reflection
MOT20_DISTRACTOR_CLASSES = (2, 6, 7, 8, 12)  # + non_mot_vehicle


def box_iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of ``[x, y, w, h]`` boxes ``gt [N, 4]`` and ``pred [M, 4]``.

    Same degenerate-box handling as TrackEval's ``_calculate_box_ious``: a box with zero area, or a
    pair with zero union, has IoU 0.
    """
    a = np.asarray(gt, float).reshape(-1, 4)
    b = np.asarray(pred, float).reshape(-1, 4)
    a_x1, a_y1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    b_x1, b_y1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(a_x1[:, None], b_x1[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a_y1[:, None], b_y1[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    union = area_a[:, None] + area_b[None] - inter
    inter[area_a <= EPS, :] = 0
    inter[:, area_b <= EPS] = 0
    valid = union > EPS
    return np.where(valid, inter / np.where(valid, union, 1), 0.0)


def _relabel(ids_per_t: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Map ids to ``0..n-1`` (TrackEval expects contiguous ids); returns ``(ids, n)``."""
    uniq = np.unique(np.concatenate(ids_per_t)) if ids_per_t else np.zeros(0)
    lut = {v: k for k, v in enumerate(uniq.tolist())}
    return [np.array([lut[v] for v in ids.tolist()], dtype=int) for ids in ids_per_t], len(uniq)


def mot_sequence_data(gt_rows: np.ndarray, pred_rows: np.ndarray, num_frames: int | None = None,
                      preprocess: bool = True, distractors: tuple[int, ...] = MOT_DISTRACTOR_CLASSES,
                      name: str = "<predictions>", seq: str = "", gt_name: str = "<ground truth>") -> dict:
    """Build TrackEval's per-sequence ``data`` dict from MOTChallenge rows ``[N, 10]``.

    Returns the fields TrackEval's HOTA / CLEAR / Identity ``eval_sequence`` read.
    """
    n_t = int(max(gt_rows[:, 0].max(initial=0), pred_rows[:, 0].max(initial=0)))
    if num_frames is not None:
        if pred_rows.size and pred_rows[:, 0].max() > num_frames:
            raise fail(name, f"sequence '{seq}' has a prediction in frame {int(pred_rows[:, 0].max())} "
                             f"beyond its length {num_frames}")
        n_t = num_frames
    gt_ids_t, tr_ids_t, sims = [], [], []
    for t in range(1, n_t + 1):
        g = gt_rows[gt_rows[:, 0] == t]
        p = pred_rows[pred_rows[:, 0] == t]
        for rows, who in ((g, gt_name), (p, name)):
            ids = rows[:, 1]
            if len(np.unique(ids)) != len(ids):
                raise fail(who, f"sequence '{seq}' frame {t} has the same id twice")
        sim = box_iou_matrix(g[:, 2:6], p[:, 2:6])
        classes = g[:, 7]
        keep_p = np.ones(len(p), bool)
        if preprocess and len(g) and len(p):
            # Remove predictions matched to distractors (TrackEval MotChallenge2DBox, step 2).
            scores = np.where(sim < 0.5 - EPS, 0.0, sim)
            rows, cols = linear_sum_assignment(-scores)
            matched = scores[rows, cols] > EPS
            rows, cols = rows[matched], cols[matched]
            keep_p[cols[np.isin(classes[rows], distractors)]] = False
        keep_g = g[:, 6] != 0
        if preprocess:
            keep_g &= (classes <= 0) | (classes == 1)
        gt_ids_t.append(g[keep_g, 1].astype(int))
        tr_ids_t.append(p[keep_p, 1].astype(int))
        sims.append(sim[keep_g][:, keep_p])
    gt_ids_t, n_gt = _relabel(gt_ids_t)
    tr_ids_t, n_tr = _relabel(tr_ids_t)
    return {"num_timesteps": n_t, "num_gt_ids": n_gt, "num_tracker_ids": n_tr,
            "num_gt_dets": int(sum(len(x) for x in gt_ids_t)),
            "num_tracker_dets": int(sum(len(x) for x in tr_ids_t)),
            "gt_ids": gt_ids_t, "tracker_ids": tr_ids_t, "similarity_scores": sims, "seq": seq}


def evaluate_mot(gt: Any, preds: Any, preprocess: bool = True, benchmark: str = "MOT17",
                 seq_lengths: dict[str, int] | None = None, progress: bool = False) -> dict[str, float | int]:
    """HOTA, MOTA, IDF1 (and their components) over MOTChallenge sequences, via TrackEval.

    Args:
        gt: MOT txt file, directory (``<seq>.txt`` or ``<seq>/gt/gt.txt``), or ``{seq: rows}``.
        preds: same forms; a sequence missing from ``preds`` is scored as an empty tracker output.
        seq_lengths: optional ``{seq: number of frames}`` (seqinfo.ini); default: last frame seen.
    Returns:
        Sequence-combined ``HOTA, DetA, AssA, LocA, DetRe, DetPr, AssRe, AssPr`` (averaged over
        TrackEval's alpha thresholds), ``MOTA, MOTP, IDF1, IDR, IDP, IDSW, FP, FN, TP, MT, ML,
        Frag``, ``num_sequences``.
    """
    from trackeval.metrics import CLEAR, HOTA, Identity  # heavy import; only needed here

    gt_seqs, gt_name = load_mot_source(gt, "<ground truth>")
    pred_seqs, pred_name = load_mot_source(preds, "<predictions>")
    if len(gt_seqs) == len(pred_seqs) == 1 and all(Path(s).is_file() for s in (gt_name, pred_name)):
        # Two single files are one sequence whatever their names (e.g. gt.txt vs MOT17-02.txt).
        pred_seqs = {next(iter(gt_seqs)): next(iter(pred_seqs.values()))}
    for seq in pred_seqs:
        if seq not in gt_seqs:
            raise fail(pred_name, f"sequence '{seq}' is not in {gt_name}")
    distractors = MOT20_DISTRACTOR_CLASSES if benchmark.upper() == "MOT20" else MOT_DISTRACTOR_CLASSES
    metrics = {"HOTA": HOTA(), "CLEAR": CLEAR({"PRINT_CONFIG": False}),
               "Identity": Identity({"PRINT_CONFIG": False})}
    per_seq: dict[str, dict[str, dict]] = {k: {} for k in metrics}
    for seq, g in tqdm(gt_seqs.items(), desc="mot sequences", disable=not progress):
        p = pred_seqs.get(seq, np.zeros((0, 10)))
        data = mot_sequence_data(g, p, (seq_lengths or {}).get(seq), preprocess, distractors, pred_name, seq,
                                 gt_name)
        for key, metric in metrics.items():
            per_seq[key][seq] = metric.eval_sequence(data)
    hota = metrics["HOTA"].combine_sequences(per_seq["HOTA"])
    clear = metrics["CLEAR"].combine_sequences(per_seq["CLEAR"])
    ident = metrics["Identity"].combine_sequences(per_seq["Identity"])
    out: dict[str, float | int] = {k: float(np.mean(hota[k])) for k in
                                   ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr")}
    out.update(MOTA=float(clear["MOTA"]), MOTP=float(clear["MOTP"]), IDF1=float(ident["IDF1"]),
               IDR=float(ident["IDR"]), IDP=float(ident["IDP"]), IDSW=int(clear["IDSW"]),
               FP=int(clear["CLR_FP"]), FN=int(clear["CLR_FN"]), TP=int(clear["CLR_TP"]),
               MT=int(clear["MT"]), ML=int(clear["ML"]), Frag=int(clear["Frag"]),
               num_sequences=len(gt_seqs))
    return out


# ----------------------------------------------------------------------------------------------
# TETA

TETA_ALPHAS = np.arange(0.0, 0.99, 0.05)  # 20 thresholds; the reference code includes alpha = 0
CLS_FIRST = 10  # index of alpha = 0.5; classification is scored from here on
CLUSTER_IOU = 0.5  # a prediction belongs to a ground-truth box's local cluster at IoU >= 0.5


class _Frames:
    """One video's boxes per annotated frame (TAO timestep)."""

    def __init__(self, n: int):
        self.ids = [np.zeros(0, int) for _ in range(n)]
        self.cls = [np.zeros(0, int) for _ in range(n)]
        self.box = [np.zeros((0, 4)) for _ in range(n)]


def _load_tao(gt: Any, preds: Any, max_dets: int | None) -> tuple[dict, dict, dict, dict[int, str], str]:
    """Validate TAO files; returns per-video GT frames, prediction frames, sims, classes, name."""
    gt_obj, gt_name = load_json(gt, "<ground truth>")
    if not isinstance(gt_obj, dict):
        raise fail(gt_name, "ground truth must be a TAO JSON object with 'videos', 'images', "
                            "'annotations', 'categories'")
    for key in ("videos", "images", "annotations", "categories"):
        as_list(require(gt_obj, key, gt_name, "ground truth"), gt_name, f"'{key}'")
    cats = {}
    merge: dict[int, int] = {}
    for i, c in enumerate(gt_obj["categories"]):
        cid = as_id(require(c, "id", gt_name, f"category {i}"), gt_name, f"category {i}", "id")
        cats[cid] = str(c.get("name", cid))
        for m in c.get("merged", []) or []:  # TAO merges some synonym categories
            where = f"category {i} merged entry"
            merge[as_id(require(m, "id", gt_name, where), gt_name, where, "id")] = cid
    videos = {as_id(require(v, "id", gt_name, f"video {i}"), gt_name, f"video {i}", "id")
              for i, v in enumerate(gt_obj["videos"])}
    img_info: dict[int, tuple[int, float]] = {}
    for i, im in enumerate(gt_obj["images"]):
        where = f"image {i}"
        img_id = as_id(require(im, "id", gt_name, where), gt_name, where, "id")
        vid = as_id(require(im, "video_id", gt_name, where), gt_name, where, "video_id")
        if vid not in videos:
            raise fail(gt_name, f"{where} refers to video_id {vid}, which is not in 'videos'")
        img_info[img_id] = (vid, as_number(require(im, "frame_index", gt_name, where), gt_name, where,
                                           "frame_index"))

    def records(recs: list, name: str, kind: str, is_gt: bool) -> list[tuple]:
        out = []
        for i, r in enumerate(recs):
            where = f"{kind} {i}"
            img_id = as_id(require(r, "image_id", name, where), name, where, "image_id")
            if img_id not in img_info:
                raise fail(name, f"{where} refers to image_id {img_id}, which is not in the ground truth")
            cat = as_id(require(r, "category_id", name, where), name, where, "category_id")
            cat = merge.get(cat, cat)
            if is_gt and cat not in cats:
                raise fail(name, f"{where} refers to category_id {cat}, which is not in 'categories'")
            tid = as_id(require(r, "track_id", name, where), name, where, "track_id")
            box = as_box(require(r, "bbox", name, where), name, where)
            score = 1.0 if is_gt else as_number(require(r, "score", name, where), name, where, "score")
            out.append((img_id, tid, cat, box, score))
        return out

    gt_recs = records(gt_obj["annotations"], gt_name, "annotation", True)
    pred_obj, pred_name = load_json(preds, "<predictions>")
    pred_recs = records(as_list(pred_obj, pred_name, "predictions"), pred_name, "prediction", False)
    if max_dets:
        by_img: dict[int, list] = defaultdict(list)
        for r in pred_recs:
            by_img[r[0]].append(r)
        pred_recs = [r for rs in by_img.values() for r in sorted(rs, key=lambda x: -x[4])[:max_dets]]

    # Timesteps are the frames that carry ground truth, in frame order (TETA's TAO reader); other
    # frames, and predictions on them, are not evaluated.
    annotated: dict[int, set[int]] = defaultdict(set)
    for img_id, *_ in gt_recs:
        annotated[img_info[img_id][0]].add(img_id)
    step = {vid: {img: t for t, img in enumerate(sorted(imgs, key=lambda x: img_info[x][1]))}
            for vid, imgs in annotated.items()}

    def to_frames(recs: list[tuple], name: str) -> dict[int, _Frames]:
        grouped: dict[tuple[int, int], list] = defaultdict(list)
        for img_id, tid, cat, box, _ in recs:
            vid = img_info[img_id][0]
            if img_id in step.get(vid, {}):
                grouped[vid, step[vid][img_id]].append((tid, cat, box))
        out = {vid: _Frames(len(s)) for vid, s in step.items()}
        for (vid, t), rows in grouped.items():
            ids = np.array([r[0] for r in rows], int)
            if len(np.unique(ids)) != len(ids):
                raise fail(name, f"video {vid} annotated frame {t} has the same track_id twice")
            out[vid].ids[t], out[vid].cls[t] = ids, np.array([r[1] for r in rows], int)
            out[vid].box[t] = np.array([r[2] for r in rows], float).reshape(-1, 4)
        return out

    gt_frames, pred_frames = to_frames(gt_recs, gt_name), to_frames(pred_recs, pred_name)
    sims = {vid: [box_iou_matrix(gt_frames[vid].box[t], pred_frames[vid].box[t])
                  for t in range(len(gt_frames[vid].ids))] for vid in gt_frames}
    eval_classes = sorted({cat for _, _, cat, _, _ in gt_recs})
    return gt_frames, pred_frames, sims, {c: cats[c] for c in eval_classes}, pred_name


def _clusters(g: _Frames, p: _Frames, sims: list[np.ndarray], cls: int | None,
              assignment: list[dict[int, int]] | None) -> dict:
    """TETA's per-class view of a video (``get_preprocessed_seq_data_thr``).

    ``cls=None`` is the class-agnostic view used for the global assignment. Predictions are kept if
    their track overlaps (IoU >= 0.5) a ground-truth box of the class in some frame; in a frame, a
    prediction is a localisation candidate if it overlaps such a box there, unless the global
    assignment gave it to a ground truth of another class.
    """
    n_t = len(g.ids)
    gt_mask = [np.ones(len(g.ids[t]), bool) if cls is None else g.cls[t] == cls for t in range(n_t)]
    overlap = []
    for t in range(n_t):
        hits = p.ids[t][(sims[t][gt_mask[t]] >= CLUSTER_IOU).any(axis=0)] if len(p.ids[t]) else p.ids[t]
        if assignment is not None:
            other = set(assignment[t]) - set(g.ids[t][gt_mask[t]].tolist())
            hits = np.setdiff1d(hits, [assignment[t][o] for o in other])
        overlap.append(np.unique(hits))
    kept_tracks = np.unique(np.concatenate(overlap)) if overlap else np.zeros(0, int)
    gt_ids, tk_ids, tk_cls, sim_t = [], [], [], []
    for t in range(n_t):
        keep = np.isin(p.ids[t], kept_tracks)
        gt_ids.append(g.ids[t][gt_mask[t]])
        tk_ids.append(p.ids[t][keep])
        tk_cls.append(p.cls[t][keep])
        sim_t.append(sims[t][gt_mask[t]][:, keep])
    gt_uniq = np.unique(np.concatenate(gt_ids)) if gt_ids else np.zeros(0, int)
    tk_uniq = np.unique(np.concatenate(tk_ids)) if tk_ids else np.zeros(0, int)
    return {"gt_ids": [np.searchsorted(gt_uniq, x) for x in gt_ids],
            "tk_ids": [np.searchsorted(tk_uniq, x) for x in tk_ids],
            "overlap": [np.searchsorted(tk_uniq, x) for x in overlap],
            "gt_orig": gt_uniq, "tk_orig": tk_uniq, "tk_cls": tk_cls, "sim": sim_t,
            "num_gt_dets": int(sum(len(x) for x in gt_ids)),
            "num_overlap_dets": int(sum(len(x) for x in overlap))}


def _alignment(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global (video-level) Jaccard alignment score between GT and predicted tracks, as in HOTA."""
    n_g, n_k = len(d["gt_orig"]), len(d["tk_orig"])
    matches = np.zeros((n_g, n_k))
    g_count, k_count = np.zeros((n_g, 1)), np.zeros((1, n_k))
    for g_ids, k_ids, sim in zip(d["gt_ids"], d["tk_ids"], d["sim"]):
        denom = sim.sum(0, keepdims=True) + sim.sum(1, keepdims=True) - sim
        sim_iou = np.where(denom > EPS, sim / np.where(denom > EPS, denom, 1), 0.0)
        matches[g_ids[:, None], k_ids[None, :]] += sim_iou
        g_count[g_ids] += 1
        k_count[0, k_ids] += 1
    return matches / (g_count + k_count - matches), g_count, k_count


def _match(d: dict, t: int, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching in frame ``t`` maximising alignment * IoU; returns rows, cols, their IoU."""
    sim = d["sim"][t]
    rows, cols = linear_sum_assignment(-(score[d["gt_ids"][t][:, None], d["tk_ids"][t][None, :]] * sim))
    return rows, cols, sim[rows, cols]


def _global_assignment(d: dict) -> list[dict[int, int]]:
    """Per frame ``{gt track id: predicted track id}`` of class-agnostic matches at IoU >= 0.5."""
    out: list[dict[int, int]] = [{} for _ in d["gt_ids"]]
    if d["num_overlap_dets"] == 0 or d["num_gt_dets"] == 0:
        return out
    score, _, _ = _alignment(d)
    for t in range(len(d["gt_ids"])):
        rows, cols, iou = _match(d, t, score)
        ok = iou >= 0.5 - EPS
        out[t] = dict(zip(d["gt_orig"][d["gt_ids"][t][rows[ok]]].tolist(),
                          d["tk_orig"][d["tk_ids"][t][cols[ok]]].tolist()))
    return out


def _empty_counts() -> dict[str, np.ndarray]:
    n, m = len(TETA_ALPHAS), len(TETA_ALPHAS) - CLS_FIRST
    return {"Loc_TP": np.zeros(n), "Loc_FN": np.zeros(n), "Loc_FP": np.zeros(n), "AssocA": np.zeros(n),
            "AssocRe": np.zeros(n), "AssocPr": np.zeros(n), "Cls_TP": np.zeros(m), "Cls_FN": np.zeros(m),
            "Cls_FP": np.zeros(m)}


def _teta_class_video(d: dict, cls: int, cls_fp: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Counts for one class in one video (``eval_sequence_single_thr``); adds wrong-class matches
    to ``cls_fp`` of the *predicted* class."""
    res = _empty_counts()
    if d["num_overlap_dets"] == 0:
        res["Loc_FN"][:] = d["num_gt_dets"]
        return res
    if d["num_gt_dets"] == 0:
        return res
    score, g_count, k_count = _alignment(d)
    match_counts = np.zeros((len(TETA_ALPHAS), *score.shape))
    for t, (g_ids, k_ids) in enumerate(zip(d["gt_ids"], d["tk_ids"])):
        if len(g_ids) == 0:
            continue
        rows, cols, iou = _match(d, t, score)
        # Localisation false positives: predictions of this class's cluster left unmatched.
        candidates = set(d["tk_orig"][d["overlap"][t]].tolist())
        for a, alpha in enumerate(TETA_ALPHAS):
            ok = iou >= alpha - EPS
            r, c = rows[ok], cols[ok]
            n_match = len(r)
            if a >= CLS_FIRST:
                pred_cls = d["tk_cls"][t][c]
                correct = int(np.sum(pred_cls == cls))
                for wrong in pred_cls[pred_cls != cls]:
                    if int(wrong) in cls_fp:
                        cls_fp[int(wrong)][a - CLS_FIRST] += 1
                res["Cls_TP"][a - CLS_FIRST] += correct
                res["Cls_FN"][a - CLS_FIRST] += n_match - correct
            res["Loc_TP"][a] += n_match
            res["Loc_FN"][a] += len(g_ids) - n_match
            res["Loc_FP"][a] += len(candidates - set(d["tk_orig"][k_ids[c]].tolist()))
            if n_match:
                match_counts[a][g_ids[r], k_ids[c]] += 1
    for a in range(len(TETA_ALPHAS)):
        mc = match_counts[a]
        tp = max(1.0, res["Loc_TP"][a])
        res["AssocA"][a] = np.sum(mc * mc / np.maximum(1, g_count + k_count - mc)) / tp
        res["AssocRe"][a] = np.sum(mc * mc / np.maximum(1, g_count)) / tp
        res["AssocPr"][a] = np.sum(mc * mc / np.maximum(1, k_count)) / tp
    return res


def _teta_final(res: dict[str, np.ndarray]) -> dict[str, Any]:
    """TETA's ``_compute_final_fields``: LocA and AssocA per alpha, ClsA averaged over alpha >= 0.5."""
    out = dict(res)
    tp, fn, fp = res["Loc_TP"], res["Loc_FN"], res["Loc_FP"]
    out["LocRe"], out["LocPr"] = tp / np.maximum(1, tp + fn), tp / np.maximum(1, tp + fp)
    out["LocA"] = tp / np.maximum(1, tp + fn + fp)
    ctp, cfn, cfp = res["Cls_TP"], res["Cls_FN"], res["Cls_FP"]
    out["ClsRe"] = float(np.mean(ctp / np.maximum(1, ctp + cfn)))
    out["ClsPr"] = float(np.mean(ctp / np.maximum(1, ctp + cfp)))
    out["ClsA"] = float(np.mean(ctp / np.maximum(1, ctp + cfn + cfp)))
    out["TETA"] = (out["LocA"] + out["AssocA"] + out["ClsA"]) / 3
    return out


TETA_KEYS = ("TETA", "LocA", "AssocA", "ClsA", "LocRe", "LocPr", "AssocRe", "AssocPr", "ClsRe", "ClsPr")


def evaluate_teta(gt: Any, preds: Any, max_dets: int | None = None,
                  progress: bool = False) -> dict[str, float | int | None]:
    """TETA on TAO-format box tracks.

    Args:
        gt: TAO JSON (``videos``, ``images`` with ``video_id``/``frame_index``, ``annotations``
            with ``track_id``/``bbox``/``category_id``, ``categories``).
        preds: list of ``{image_id, category_id, track_id, bbox, score}``.
        max_dets: keep at most this many predictions per image (highest score); ``None``: all.
    Returns:
        ``TETA, LocA, AssocA, ClsA`` and their recall/precision parts, class-averaged over
        classes with ground truth and averaged over alpha; ``num_classes``.
    """
    gt_frames, pred_frames, sims, classes, _ = _load_tao(gt, preds, max_dets)
    per_class: dict[int, list[dict[str, np.ndarray]]] = {c: [] for c in classes}
    for vid in tqdm(sorted(gt_frames), desc="teta videos", disable=not progress):
        g, p, s = gt_frames[vid], pred_frames[vid], sims[vid]
        assignment = _global_assignment(_clusters(g, p, s, None, None))
        cls_fp = {c: np.zeros(len(TETA_ALPHAS) - CLS_FIRST) for c in classes}
        video_res = {c: _teta_class_video(_clusters(g, p, s, c, assignment), c, cls_fp) for c in classes}
        for c in classes:
            video_res[c]["Cls_FP"] = video_res[c]["Cls_FP"] + cls_fp[c]
            per_class[c].append(video_res[c])

    class_res = []
    for c in classes:
        seqs = per_class[c]
        comb = {k: sum(r[k] for r in seqs)
                for k in ("Loc_TP", "Loc_FN", "Loc_FP", "Cls_TP", "Cls_FN", "Cls_FP")}
        for k in ("AssocA", "AssocRe", "AssocPr"):  # detection-weighted over videos
            comb[k] = sum(r[k] * r["Loc_TP"] for r in seqs) / np.maximum(1.0, comb["Loc_TP"])
        final = _teta_final(comb)
        # Class averaging skips classes with nothing to score (TETA's ignore_empty=True).
        if (final["Loc_TP"] + final["Loc_FN"] + final["Loc_FP"] > EPS).any():
            class_res.append(final)
    out: dict[str, float | int | None] = {
        k: (float(np.mean([np.mean(r[k]) for r in class_res])) if class_res else None) for k in TETA_KEYS}
    out["num_classes"] = len(class_res)
    return out
