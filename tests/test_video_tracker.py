"""Streaming tracker and offline clip mode end to end with the tiny random model (shapes, consistency, memory)."""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from glee.inference.preprocess import PreprocessConfig
from glee.video import VideoTracker, track_offline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier

PRE = PreprocessConfig(short_side=48)




def _frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_stream_tracks_have_consistent_shapes(tiny_model):
    frames = _frames(5)
    tracker = VideoTracker(tiny_model, ["person", "car"], preprocess=PRE, score_threshold=0.0)
    results = list(tracker.track(f for f in frames))  # a generator source
    assert [r.index for r in results] == list(range(5))
    q = tiny_model.cfg.num_queries
    for r, frame in zip(results, frames):
        d = r.detections
        assert r.image is frame and d.image_size == (40, 56)
        assert 1 <= len(d) <= q and d.masks is not None and d.masks.shape == (len(d), 40, 56)
        assert set(d.track_ids.tolist()) <= set(range(1, q + 1))
        assert d.track_ids.tolist() == sorted(d.track_ids.tolist())
        assert (d.boxes[:, 0::2] >= 0).all() and (d.boxes[:, 0::2] <= 56).all() and (d.boxes[:, 1::2] <= 40).all()
        assert set(d.class_names) <= {"person", "car"}
        assert len(d.meta["video_scores"]) == len(d)
        assert d.query_embeddings is not None and d.query_embeddings.shape == (len(d), tiny_model.cfg.hidden_dim)
    # threshold 0 keeps every slot: each frame reports all Q tracks, each id once
    assert all(r.track_ids == list(range(1, q + 1)) for r in results)


def test_batching_and_frame_by_frame_give_the_same_tracks(tiny_model):
    frames = _frames(7, seed=1)
    runs = []
    for batch_size in (1, 3):
        tracker = VideoTracker(tiny_model, ["person", "car"], preprocess=PRE, score_threshold=0.0,
                               batch_size=batch_size)
        runs.append(list(tracker.track(frames)))
    tracker = VideoTracker(tiny_model, ["person", "car"], preprocess=PRE, score_threshold=0.0)
    runs.append([tracker.update(f) for f in frames])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.track_ids == b.track_ids
            torch.testing.assert_close(a.detections.boxes, b.detections.boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(a.detections.scores, b.detections.scores, atol=1e-4, rtol=0)
            assert (a.detections.masks != b.detections.masks).float().mean() < 0.01


def test_referring_expression_stream(tiny_model):
    tracker = VideoTracker(tiny_model, expression="the dog on the left", preprocess=PRE, score_threshold=0.0,
                           batch_size=2, with_masks=False)
    results = list(tracker.track(_frames(3)))
    assert all(r.detections.class_names == ["the dog on the left"] * len(r) for r in results)
    assert all(r.detections.masks is None for r in results)


def test_offline_mode_matches_the_stream_association(tiny_model):
    frames = _frames(7, seed=2)
    names = ["person", "car", "dog"]
    result = track_offline(tiny_model, frames, names, preprocess=PRE, window=3, top_k=4)
    assert len(result) == 4 and result.num_frames == 7 and result.image_size == (40, 56)
    scores = [inst.score for inst in result.instances]
    assert scores == sorted(scores, reverse=True)
    # the same association run online: the video-level scores after the last frame are the offline ones
    tracker = VideoTracker(tiny_model, names, preprocess=PRE, score_threshold=0.0)
    for _ in tracker.track(frames):
        pass
    video_scores = (tracker._logit_sum / tracker.frames_seen).sigmoid()
    top = video_scores.flatten().topk(4)
    assert scores == pytest.approx(top.values.tolist(), abs=1e-4)
    assert [(i.slot, i.class_id) for i in result.instances] == [(int(f) // 3, int(f) % 3) for f in top.indices]
    for inst in result.instances:
        assert inst.boxes.shape == (7, 4) and inst.frame_scores.shape == (7,)
        assert len(inst.segmentations) == 7 and inst.segmentations[0]["size"] == [40, 56]
        assert inst.class_name == names[inst.class_id]
    records = result.to_ytvis(video_id=5, category_ids=[10, 20, 30])
    assert len(records) == 4 and all(r["video_id"] == 5 and r["category_id"] in (10, 20, 30) for r in records)
    assert all(len(r["segmentations"]) == len(r["bboxes"]) == 7 for r in records)
    per_frame = list(result.frames(images=frames, min_area=0))
    assert len(per_frame) == 7 and all(len(f) == 4 for f in per_frame)
    assert per_frame[3].image is frames[3]


def test_offline_spool_precision_and_size_checks(tiny_model):
    frames = _frames(4, seed=3)
    half = track_offline(tiny_model, frames, ["a"], preprocess=PRE, top_k=2, spool_dtype=np.float16)
    full = track_offline(tiny_model, frames, ["a"], preprocess=PRE, top_k=2, spool_dtype=np.float32)
    from pycocotools import mask as mask_utils

    for a, b in zip(half.instances, full.instances):
        assert a.slot == b.slot
        ious = mask_utils.iou(a.segmentations, b.segmentations, [0] * len(b.segmentations)).diagonal()
        areas = mask_utils.area(b.segmentations)
        assert all(iou > 0.98 for iou, area in zip(ious, areas) if area > 0)
    with pytest.raises(ValueError, match="one size"):
        track_offline(tiny_model, _frames(2) + _frames(2, h=48), ["a"], preprocess=PRE, window=2)


def test_stream_accepts_a_size_change(tiny_model):
    frames = _frames(2) + _frames(2, h=32, w=32)
    tracker = VideoTracker(tiny_model, ["a"], preprocess=PRE, score_threshold=0.5, batch_size=4)
    sizes = [r.detections.image_size for r in tracker.track(frames)]
    assert sizes == [(40, 56)] * 2 + [(32, 32)] * 2


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns about deprecated names
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_is_flat_over_200_frames(tiny_model):
    """Over 200 frames: tracker state constant after 3 frames, no tensor accumulates, Python-held memory does
    not grow, and frames are read lazily (at most one batch ahead of the results)."""
    produced = 0

    def moving_square(n: int = 200):
        nonlocal produced
        for t in range(n):
            img = np.zeros((32, 32, 3), np.uint8)
            img[4 + t % 20 : 12 + t % 20, 6:14] = 255
            produced += 1
            yield img

    tracker = VideoTracker(tiny_model, ["square"], preprocess=PreprocessConfig(short_side=32), score_threshold=0.0,
                           batch_size=8)
    for _ in tracker.track(moving_square(96)):  # warm-up: lazy caches and Python's free lists fill up first
        pass
    produced = 0
    state, traced, tensors = [], {}, {}
    _live_tensors()  # its first scan has side effects of its own (lazy attributes): keep them out of the count
    tracemalloc.start()
    try:
        for r in tracker.track(moving_square()):
            assert produced <= r.index + 8  # at most the rest of the current batch is read ahead
            state.append(tracker.state_nbytes())
            if r.index in (55, 127, 199):  # the last frame of a batch: no batch output is pending
                del r
                traced[len(state) - 1] = tracemalloc.get_traced_memory()[0]
                tensors[len(state) - 1] = _live_tensors()
    finally:
        tracemalloc.stop()
    assert len(state) == 200
    assert len(set(state[3:])) == 1, "tracker state must not grow with the video"
    q, c = tiny_model.cfg.num_queries, tiny_model.cfg.hidden_dim
    assert state[-1] == 3 * q * c * 4 + q * 1 * 4 + q  # 3 embeddings, logit sum [Q, 1], active flags
    assert tensors[199] == tensors[55], "tensors accumulate from frame to frame"
    # Python's free lists still fill early on (30-70 KB over frames 55-127, less later); a leak grows linearly:
    # a 32x32 mask or a Q x C embedding kept per frame adds >= 72 KB over frames 127-199
    late = traced[199] - traced[127]
    assert late < 32 * 1024, f"Python memory grew by {late} bytes over frames 127-199"
    assert traced[199] - traced[55] < 96 * 1024, f"Python memory grew by {traced[199] - traced[55]} bytes"
