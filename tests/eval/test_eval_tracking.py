"""MOT (HOTA / MOTA / IDF1 via TrackEval) and TETA on hand-computed cases."""

import contextlib
import io
import math

import numpy as np
import pytest

from eval.tracking import box_iou_matrix, evaluate_mot, evaluate_teta

try:
    import trackeval
except ImportError:  # HOTA/MOTA/IDF1 need TrackEval; TETA does not
    trackeval = None
needs_trackeval = pytest.mark.skipif(trackeval is None, reason="trackeval not installed")


def _rows(*rows):
    return np.array(rows, float)


def _track(track_id, frames, box=(10, 10, 20, 20), extra=(1, 1, 1)):
    return [[f, track_id, *box, *extra] for f in frames]


# ---------------------------------------------------------------------------------------------- MOT


@needs_trackeval
def test_box_iou_matrix_matches_trackeval():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (7, 4))
    b = rng.uniform(0, 50, (5, 4))
    a[0, 2] = 0.0  # degenerate box
    from trackeval.datasets._base_dataset import _BaseDataset

    np.testing.assert_allclose(box_iou_matrix(a, b), _BaseDataset._calculate_box_ious(a, b), atol=1e-12)


@needs_trackeval
def test_perfect_tracking():
    gt = {"seq": _rows(*_track(1, range(1, 5)))}
    r = evaluate_mot(gt, {"seq": gt["seq"][:, :6]})
    assert r["HOTA"] == pytest.approx(1.0) and r["MOTA"] == pytest.approx(1.0)
    assert r["IDF1"] == pytest.approx(1.0) and r["IDSW"] == 0


@needs_trackeval
def test_one_id_switch_hand_computed():
    gt = {"seq": _rows(*_track(1, range(1, 5)))}
    pred = {"seq": _rows(*_track(7, [1, 2]), *_track(8, [3, 4]))}
    r = evaluate_mot(gt, pred)
    assert r["MOTA"] == pytest.approx((4 - 0 - 1) / 4)  # one identity switch
    assert r["IDF1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # IDTP 2, IDFP 2, IDFN 2
    # DetA = 1; each TP's association score is 2 / (2 + 2 + 0) = 0.5, so HOTA = sqrt(0.5).
    assert r["DetA"] == pytest.approx(1.0) and r["AssA"] == pytest.approx(0.5)
    assert r["HOTA"] == pytest.approx(math.sqrt(0.5))


@needs_trackeval
def test_empty_predictions_and_empty_ground_truth():
    gt = {"seq": _rows(*_track(1, range(1, 4)))}
    r = evaluate_mot(gt, {})
    assert r["HOTA"] == 0.0 and r["MOTA"] == 0.0 and r["IDF1"] == 0.0 and r["FN"] == 3
    r = evaluate_mot({"seq": np.zeros((0, 9))}, {"seq": _rows(*_track(5, [1, 2]))[:, :6]})
    assert r["HOTA"] == 0.0 and r["FP"] == 2 and r["TP"] == 0


@needs_trackeval
def test_motchallenge_preprocessing_flags_and_distractors():
    # Frame 1: a pedestrian (kept), a static person (class 7, distractor) and a flag-0 pedestrian.
    gt = {"seq": _rows([1, 1, 0, 0, 10, 10, 1, 1, 1], [1, 2, 50, 50, 10, 10, 1, 7, 1],
                       [1, 3, 100, 100, 10, 10, 0, 1, 1])}
    pred = {"seq": _rows([1, 11, 0, 0, 10, 10], [1, 12, 50, 50, 10, 10], [1, 13, 100, 100, 10, 10])}
    r = evaluate_mot(gt, pred)
    # The distractor's prediction is removed; the flag-0 box is not ground truth, so its prediction
    # is a false positive (TrackEval only removes predictions on distractor classes).
    assert (r["TP"], r["FP"], r["FN"]) == (1, 1, 0)
    r = evaluate_mot(gt, pred, preprocess=False)
    assert (r["TP"], r["FP"], r["FN"]) == (2, 1, 0)  # the class-7 box now counts as ground truth


def _write_trackeval_layout(root, seqs, length):
    for seq, (g, p) in seqs.items():
        (root / "gt" / seq / "gt").mkdir(parents=True)
        np.savetxt(root / "gt" / seq / "gt" / "gt.txt", g, fmt="%g", delimiter=",")
        (root / "gt" / seq / "seqinfo.ini").write_text(f"[Sequence]\nname={seq}\nseqLength={length}\n")
        (root / "trk" / "mine" / "data").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "trk" / "mine" / "data" / f"{seq}.txt", p, fmt="%g", delimiter=",")


def _random_sequence(seed, length=25):
    rng = np.random.default_rng(seed)
    gt, pred, next_id = [], [], 100
    for obj in range(1, 7):
        start, end = sorted(rng.integers(1, length + 1, size=2))
        x, y, w, h = *rng.uniform(0, 300, 2), *rng.uniform(20, 60, 2)
        cls, flag = rng.choice([1, 1, 1, 7, 3]), int(rng.random() > 0.15)
        tid = next_id = next_id + 1
        for f in range(start, end + 1):
            gt.append([f, obj, x + 2 * f, y + f, w, h, flag, cls, 1])
            if rng.random() < 0.85:
                if rng.random() < 0.08:
                    tid = next_id = next_id + 1
                px, py = x + 2 * f + rng.normal(0, 3), y + f + rng.normal(0, 3)
                pred.append([f, tid, px, py, w, h, 1, -1, -1, -1])
    for f in rng.integers(1, length + 1, size=6):
        next_id += 1
        pred.append([f, next_id, *rng.uniform(0, 300, 2), 30, 50, 0.2, -1, -1, -1])
    return np.array(sorted(gt), float), np.array(sorted(pred), float)


@needs_trackeval
def test_matches_trackeval_motchallenge_pipeline(tmp_path):
    """Our file reading + preprocessing equals TrackEval's own MotChallenge2DBox dataset class."""
    seqs = {f"SEQ-{i}": _random_sequence(i) for i in range(3)}
    _write_trackeval_layout(tmp_path, seqs, 25)
    cfg = {"GT_FOLDER": str(tmp_path / "gt"), "TRACKERS_FOLDER": str(tmp_path / "trk"),
           "OUTPUT_FOLDER": str(tmp_path / "out"), "TRACKERS_TO_EVAL": ["mine"], "BENCHMARK": "MOT17",
           "SKIP_SPLIT_FOL": True, "SEQ_INFO": {s: None for s in seqs}, "PRINT_CONFIG": False}
    ev_cfg = {"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False, "OUTPUT_SUMMARY": False,
              "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "TIME_PROGRESS": False}
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    with contextlib.redirect_stdout(io.StringIO()):
        res, _ = trackeval.Evaluator(ev_cfg).evaluate([trackeval.datasets.MotChallenge2DBox(cfg)], metrics)
    ref = res["MotChallenge2DBox"]["mine"]["COMBINED_SEQ"]["pedestrian"]
    mine = evaluate_mot(tmp_path / "gt", tmp_path / "trk" / "mine" / "data",
                        seq_lengths={s: 25 for s in seqs})
    assert mine["MOTA"] == pytest.approx(float(ref["CLEAR"]["MOTA"]), abs=1e-9)
    assert mine["IDF1"] == pytest.approx(float(ref["Identity"]["IDF1"]), abs=1e-9)
    assert mine["HOTA"] == pytest.approx(float(np.mean(ref["HOTA"]["HOTA"])), abs=1e-9)
    assert 0.05 < mine["HOTA"] < 0.95  # a non-trivial case


@needs_trackeval
def test_malformed_mot_files(tmp_path):
    bad = tmp_path / "seq.txt"
    bad.write_text("1,1,0,0,10,10\n2,1,0,0,10\n")
    with pytest.raises(ValueError, match=r"seq\.txt: line 2 has 5 columns"):
        evaluate_mot(str(bad), str(bad))
    bad.write_text("0,1,0,0,10,10\n")
    with pytest.raises(ValueError, match=r"seq\.txt: line 1 field 'frame' must be an integer >= 1"):
        evaluate_mot(str(bad), str(bad))
    gt = {"seq": _rows(*_track(1, [1]))}
    with pytest.raises(ValueError, match="<predictions>: sequence 'seq' frame 1 has the same id twice"):
        evaluate_mot(gt, {"seq": _rows([1, 4, 0, 0, 5, 5], [1, 4, 9, 9, 5, 5])})
    with pytest.raises(ValueError, match="sequence 'other' is not in"):
        evaluate_mot(gt, {"other": _rows([1, 4, 0, 0, 5, 5])})


# --------------------------------------------------------------------------------------------- TETA


def _tao(gt_tracks, n_frames=2, categories=(1, 2)):
    """gt_tracks: list of (track_id, category, box per frame or None)."""
    images = [{"id": t + 1, "video_id": 1, "frame_index": t} for t in range(n_frames)]
    anns = []
    for track_id, cat, boxes in gt_tracks:
        for t, box in enumerate(boxes):
            if box is not None:
                anns.append({"id": len(anns) + 1, "image_id": t + 1, "video_id": 1, "track_id": track_id,
                             "category_id": cat, "bbox": list(box)})
    return {"videos": [{"id": 1}], "images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def _preds(track_id, cat, boxes, score=0.9):
    return [{"image_id": t + 1, "track_id": track_id, "category_id": cat, "bbox": list(b), "score": score}
            for t, b in enumerate(boxes) if b is not None]


BOX = (0, 0, 10, 10)


def test_teta_perfect_and_wrong_class():
    gt = _tao([(1, 1, [BOX, BOX])])
    r = evaluate_teta(gt, _preds(5, 1, [BOX, BOX]))
    assert (r["TETA"], r["LocA"], r["AssocA"], r["ClsA"]) == pytest.approx((1, 1, 1, 1))
    r = evaluate_teta(gt, _preds(5, 2, [BOX, BOX]))  # right place, wrong class
    assert (r["LocA"], r["AssocA"], r["ClsA"]) == pytest.approx((1, 1, 0))
    assert r["TETA"] == pytest.approx(2 / 3)


def test_teta_partial_overlap_counts_thresholds():
    # IoU 0.675 matches at alpha = 0, 0.05, ..., 0.65: 14 of the 20 thresholds; at the other 6 the
    # GT is a miss and the (in-cluster) prediction a false positive. ClsA uses alpha >= 0.5: 4 of 10.
    pred_box = (0, 0, 10, 6.75)
    r = evaluate_teta(_tao([(1, 1, [BOX, BOX])]), _preds(5, 1, [pred_box, pred_box]))
    assert r["LocA"] == pytest.approx(14 / 20)
    assert r["AssocA"] == pytest.approx(14 / 20)
    assert r["ClsA"] == pytest.approx(4 / 10)
    assert r["TETA"] == pytest.approx((0.7 + 0.7 + 0.4) / 3)


def test_teta_identity_switch_and_in_cluster_false_positive():
    gt = _tao([(1, 1, [BOX] * 4)], n_frames=4)
    # Two predicted tracks share the GT track: every TP has association score 2 / (4 + 2 - 2).
    r = evaluate_teta(gt, _preds(5, 1, [BOX, BOX, None, None]) + _preds(6, 1, [None, None, BOX, BOX]))
    assert (r["LocA"], r["AssocA"], r["ClsA"]) == pytest.approx((1, 0.5, 1))
    # A second, worse box on the same object is a localisation FP in every frame: LocA = 4 / 8.
    dup = (0, 0, 10, 8)
    r = evaluate_teta(gt, _preds(5, 1, [BOX] * 4) + _preds(6, 1, [dup] * 4, score=0.5))
    assert r["LocA"] == pytest.approx(0.5) and r["AssocA"] == pytest.approx(1.0)


def test_teta_ignores_predictions_outside_clusters():
    gt = _tao([(1, 1, [BOX, BOX])])
    far = (500, 500, 10, 10)
    r = evaluate_teta(gt, _preds(5, 1, [BOX, BOX]) + _preds(9, 2, [far, far]))
    assert r["TETA"] == pytest.approx(1.0)


def test_teta_cross_class_false_positive_goes_to_predicted_class():
    other = (100, 100, 10, 10)
    gt = _tao([(1, 1, [BOX, BOX]), (2, 2, [other, other])])
    preds = _preds(5, 2, [BOX, BOX]) + _preds(6, 2, [other, other])  # class-1 object called class 2
    r = evaluate_teta(gt, preds)
    # Class 1: ClsA 0 (2 wrong). Class 2: 2 TP and 2 FP (from class 1's object) -> ClsA 0.5.
    assert r["ClsA"] == pytest.approx((0 + 0.5) / 2)
    assert r["TETA"] == pytest.approx(((1 + 1 + 0) / 3 + (1 + 1 + 0.5) / 3) / 2)
    assert r["num_classes"] == 2


def test_teta_empty_predictions_and_empty_ground_truth():
    r = evaluate_teta(_tao([(1, 1, [BOX, BOX])]), [])
    assert r["TETA"] == 0.0 and r["LocA"] == 0.0
    r = evaluate_teta(_tao([]), _preds(5, 1, [BOX, BOX]))
    assert r["TETA"] is None and r["num_classes"] == 0


def test_teta_malformed_files():
    gt = _tao([(1, 1, [BOX, BOX])])
    pred = _preds(5, 1, [BOX, BOX])
    del pred[1]["track_id"]
    with pytest.raises(ValueError, match="<predictions>: prediction 1 has no 'track_id' field"):
        evaluate_teta(gt, pred)
    with pytest.raises(ValueError, match="prediction 0 refers to image_id 42"):
        evaluate_teta(gt, [{**_preds(5, 1, [BOX])[0], "image_id": 42}])
    del gt["images"][0]["frame_index"]
    with pytest.raises(ValueError, match="<ground truth>: image 0 has no 'frame_index' field"):
        evaluate_teta(gt, [])
