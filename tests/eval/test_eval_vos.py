"""Video object segmentation J&F (DAVIS 2017 definitions)."""

import numpy as np
import pytest
from PIL import Image

from eval.vos import db_eval_iou, db_statistics, evaluate_vos, f_measure, seg2bmap


def _square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0: r0 + size, c0: c0 + size] = True
    return m


def test_region_similarity_j():
    g = np.stack([_square((10, 10), 0, 0, 4), np.zeros((10, 10), bool), _square((10, 10), 0, 0, 2)])
    p = np.stack([_square((10, 10), 0, 0, 2), np.zeros((10, 10), bool), np.zeros((10, 10), bool)])
    np.testing.assert_allclose(db_eval_iou(g, p), [4 / 16, 1.0, 0.0])  # both empty -> 1


def test_boundary_map_of_a_square_has_4s_pixels():
    # DAVIS marks a pixel that differs from its E, S or SE neighbour: for an s x s square that is
    # the last row and column inside plus the row above and column left outside: 4 s pixels.
    for s in (1, 3, 10):
        assert seg2bmap(_square((30, 30), 5, 5, s)).sum() == 4 * s


def test_boundary_f_measure_hand_values():
    shape = (100, 100)  # bound = ceil(0.008 * 141.4) = 2 pixels
    g = _square(shape, 10, 10, 20)
    assert f_measure(g, g) == 1.0
    assert f_measure(_square(shape, 10, 11, 20), g) == 1.0  # a 1-pixel shift is within the bound
    assert f_measure(_square(shape, 10, 50, 20), g) == 0.0  # far away
    assert f_measure(np.zeros(shape, bool), np.zeros(shape, bool)) == 1.0
    assert f_measure(np.zeros(shape, bool), g) == 0.0 and f_measure(g, np.zeros(shape, bool)) == 0.0
    # An extra distant 10x10 blob: precision 80 / (80 + 40), recall 1 -> F = 0.8.
    assert f_measure(g | _square(shape, 60, 60, 10), g) == pytest.approx(0.8)


def test_statistics_mean_recall_decay():
    # For T = 4, DAVIS's bin edges are frames [0, 1, 2, 2, 3]: first bin = frames 0-1, last = 2-3.
    assert db_statistics(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx((0.5, 0.5, 1.0))
    assert db_statistics(np.array([0.4, 0.6, 0.6, 0.6])) == pytest.approx((0.55, 0.75, 0.5 - 0.6))


def test_video_j_and_f_hand_computed():
    shape = (40, 40)
    obj = _square(shape, 5, 5, 10)
    gt = np.stack([obj * 1] * 4).astype(np.uint8)
    pred = gt.copy()
    pred[2] = 0  # scored frames are 1 and 2 (first and last dropped): frame 2 is missed
    r = evaluate_vos({"v": gt}, {"v": pred})
    assert r["J-Mean"] == pytest.approx(0.5) and r["F-Mean"] == pytest.approx(0.5)
    assert r["J&F"] == pytest.approx(0.5)
    assert r["J-Recall"] == pytest.approx(0.5) and r["J-Decay"] == pytest.approx(1.0)
    assert r["num_objects"] == 1 and r["num_videos"] == 1
    r = evaluate_vos({"v": gt}, {"v": pred}, skip_first_last=False)
    assert r["J-Mean"] == pytest.approx(0.75)


def test_objects_come_from_first_frame_and_void_is_background():
    shape = (30, 30)
    gt = np.zeros((3, *shape), np.uint8)
    gt[:, 0:5, 0:5] = 1
    gt[:, 10:15, 10:15] = 2
    gt[:, 20:25, 20:25] = 255  # void
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[1][pred[1] == 2] = 0  # object 2 missed in the only scored frame
    r = evaluate_vos({"v": gt}, {"v": pred})
    assert r["num_objects"] == 2
    assert r["J-Mean"] == pytest.approx(0.5) and r["F-Mean"] == pytest.approx(0.5)


def test_empty_predictions_and_empty_ground_truth():
    gt = np.stack([_square((20, 20), 2, 2, 5)] * 3).astype(np.uint8)
    r = evaluate_vos({"v": gt}, {"v": np.zeros_like(gt)})
    assert r["J&F"] == 0.0
    r = evaluate_vos({"v": np.zeros_like(gt)}, {"v": np.zeros_like(gt)})
    assert r["J&F"] is None and r["num_objects"] == 0


def _write_davis(root, video, frames, names):
    (root / video).mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for name, labels in zip(names, frames):
        im = Image.fromarray(labels.astype(np.uint8), mode="P")
        im.putpalette(palette)
        im.save(root / video / f"{name}.png")


def test_davis_png_layout_and_frame_alignment(tmp_path):
    shape = (24, 24)
    gt = np.stack([_square(shape, 2, 2, 6) * 1, _square(shape, 3, 3, 6) * 1, _square(shape, 4, 4, 6) * 1])
    names = ["00000", "00005", "00010"]
    _write_davis(tmp_path / "gt", "bear", gt, names)
    # Predictions only for the scored frame; the other files are not needed.
    _write_davis(tmp_path / "pred", "bear", gt[1:2], names[1:2])
    r = evaluate_vos(tmp_path / "gt", tmp_path / "pred")
    assert r["J&F"] == pytest.approx(1.0)
    (tmp_path / "pred" / "bear" / "00005.png").rename(tmp_path / "pred" / "bear" / "00006.png")
    with pytest.raises(ValueError, match="pred: video 'bear' has no mask for frame '00005'"):
        evaluate_vos(tmp_path / "gt", tmp_path / "pred")


def test_malformed_inputs(tmp_path):
    gt = np.stack([_square((10, 10), 0, 0, 3)] * 3).astype(np.uint8)
    with pytest.raises(ValueError, match="has no prediction for video 'v'"):
        evaluate_vos({"v": gt}, {})
    with pytest.raises(ValueError, match="video 'v' has object id 2 but the first ground-truth frame has "
                                         "only 1"):
        evaluate_vos({"v": gt}, {"v": gt * 2})
    with pytest.raises(ValueError, match=r"video 'v' masks are \(5, 10\) but the ground truth is \(10, 10\)"):
        evaluate_vos({"v": gt}, {"v": gt[:, :5]})
    np.savez(tmp_path / "gt.npz", v=gt[0])
    with pytest.raises(ValueError, match=r"gt\.npz: video 'v' must be a \[T, H, W\] label array"):
        evaluate_vos(str(tmp_path / "gt.npz"), {})


def test_boundary_map_equals_trackeval_copy_of_davis():
    trackeval = pytest.importorskip("trackeval")
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((23, 31)) > 0.6
        np.testing.assert_array_equal(seg2bmap(m), trackeval.metrics.JAndF._seg2bmap(m).astype(bool))


def test_dilation_equals_davis_cv2_dilate():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for _ in range(5):
        g = rng.random((60, 80)) > 0.97
        p = rng.random((60, 80)) > 0.97
        # DAVIS: cv2.dilate with skimage's disk(bound_pix); here bound_pix = ceil(0.008 * 100) = 1.
        r = np.arange(-1, 2)
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= 1).astype(np.uint8)
        fg_b, gt_b = seg2bmap(p), seg2bmap(g)
        fg_dil = cv2.dilate(fg_b.astype(np.uint8), disk)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk)
        prec = (fg_b * gt_dil).sum() / fg_b.sum()
        rec = (gt_b * fg_dil).sum() / gt_b.sum()
        expected = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
        assert f_measure(p, g) == pytest.approx(expected)


def test_arrays_are_matched_to_png_frames_by_position(tmp_path):
    shape = (16, 16)
    gt = np.stack([_square(shape, 2, 2, 5) * 1, _square(shape, 3, 3, 5) * 1, _square(shape, 4, 4, 5) * 1])
    _write_davis(tmp_path / "gt", "cat", gt, ["00000", "00005", "00010"])
    assert evaluate_vos(tmp_path / "gt", {"cat": gt.astype(np.uint8)})["J&F"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="video 'cat' has 2 frames but the ground truth has 3"):
        evaluate_vos(tmp_path / "gt", {"cat": gt[:2].astype(np.uint8)})
