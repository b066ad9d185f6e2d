"""MinVIS association and the streaming tracker's logic on synthetic clips whose objects move and cross.

A random-weight model cannot detect anything, so these tests feed the tracker an oracle "network": it finds
each coloured object in the synthetic frame (its box and mask) and gives the object's query an embedding
that encodes only its identity (a fixed vector plus fresh noise), at a random query position each frame.
The tracker must recover stable ids from the embeddings alone -- positions are never used.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from glee.inference.preprocess import PreparedBatch, PreprocessConfig
from glee.modeling.glee_model import GleeOutput
from glee.video import MinVISAssociator, VideoTracker, match_embeddings
from glee.video import tracker as tracker_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier

H, W = 64, 96
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]




def _noisy(base: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    return base + scale * torch.randn(base.shape, generator=gen)


def test_match_embeddings_is_the_optimal_assignment():
    gen = torch.Generator().manual_seed(1)
    ref, cur = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    perm = match_embeddings(ref, cur)
    cos = torch.nn.functional.normalize(ref, dim=-1) @ torch.nn.functional.normalize(cur, dim=-1).T
    cost = lambda p: float(sum(1 - cos[i, p[i]] for i in range(5)))  # noqa: E731
    best = min(itertools.permutations(range(5)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), abs=1e-6)
    assert sorted(perm.tolist()) == list(range(5))


def test_permuted_noisy_embeddings_keep_their_slots():
    gen = torch.Generator().manual_seed(0)
    q, c = 30, 64
    identity = torch.randn(q, c, generator=gen)
    assoc = MinVISAssociator(memory=3)
    slot_of_object = None
    for t in range(40):
        order = torch.randperm(q, generator=gen)  # query j shows object order[j]
        # slow drift plus per-frame noise: the 3-frame mean reference must follow the drift
        drift = identity + 0.02 * t * torch.sin(torch.arange(c) * 0.1 + 0.3 * torch.arange(q)[:, None])
        perm = assoc.align(_noisy(drift, 0.35, gen)[order])
        objects_in_slots = order[perm]
        if slot_of_object is None:
            slot_of_object = objects_in_slots
        assert torch.equal(objects_in_slots, slot_of_object), f"ids switched at frame {t}"
    assert assoc.frames_seen == 40


def test_associator_state_is_bounded_and_checks_shapes():
    assoc = MinVISAssociator(memory=3)
    sizes = []
    for _ in range(10):
        assoc.align(torch.randn(7, 16))
        sizes.append(assoc.state_nbytes())
    assert sizes[2:] == [3 * 7 * 16 * 4] * 8
    with pytest.raises(ValueError, match="same model"):
        assoc.align(torch.randn(6, 16))
    with pytest.raises(ValueError, match="memory"):
        MinVISAssociator(memory=0)
    assoc.reset()
    assert assoc.state_nbytes() == 0 and assoc.num_slots is None


def _clip(num_frames: int) -> tuple[list[np.ndarray], list[list[tuple[int, int, int, int]]]]:
    """Three coloured squares in three rows: 0 and 1 move towards each other and pass (their x order swaps),
    2 drifts slowly.  Boxes are xyxy."""
    frames, boxes = [], []
    for t in range(num_frames):
        img = np.full((H, W, 3), 30, np.uint8)
        pos = [(4 + 3 * t, 2), (76 - 3 * t, 44), (30 + t, 24)]
        fb = []
        for (x, y), color in zip(pos, COLORS):
            img[y : y + 16, x : x + 16] = color
            fb.append((x, y, x + 16, y + 16))
        frames.append(img)
        boxes.append(fb)
    return frames, boxes


class OracleNetwork:
    """Stands in for ``forward_frames``: finds the coloured objects; embeddings encode identity only."""

    def __init__(self, num_queries: int = 8, dim: int = 32, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.q = num_queries
        self.identity = torch.randn(len(COLORS), dim, generator=self.gen)
        self.dim = dim
        self.calls = 0

    def __call__(self, model, frames, preprocess, **kwargs):
        self.calls += 1
        b = len(frames)
        logits = torch.full((b, self.q, 2), -6.0)
        boxes = torch.zeros(b, self.q, 4)
        masks = torch.full((b, self.q, H // 4, W // 4), -8.0)
        emb = torch.randn(b, self.q, self.dim, generator=self.gen)  # background queries: random each frame
        for i, img in enumerate(frames):
            order = torch.randperm(self.q, generator=self.gen)[: len(COLORS)]  # query of each object
            for k, color in enumerate(COLORS):
                ys, xs = np.nonzero((img == color).all(-1))
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                q = int(order[k])
                logits[i, q, k % 2] = 5.0
                boxes[i, q] = torch.tensor([(x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H])
                full = torch.zeros(1, 1, H, W)
                full[..., y1:y2, x1:x2] = 1.0
                # mask logits on the 4x coarser grid: positive where a cell is mostly covered
                masks[i, q] = 16 * (torch.nn.functional.avg_pool2d(full, 4)[0, 0] - 0.5)
                emb[i, q] = _noisy(self.identity[k], 0.3, self.gen)
        out = GleeOutput(pred_logits=logits, pred_scores=torch.zeros(b, self.q, 1), pred_boxes=boxes,
                         pred_masks=masks, query_embeddings=emb, pixel_embeddings=torch.zeros(b, 1, H // 4, W // 4),
                         padded_size=(H, W), mask_stride=4)
        prepared = PreparedBatch(images=torch.zeros(b, 3, H, W), original_sizes=[(H, W)] * b,
                                 resized_sizes=[(H, W)] * b)
        return out, prepared


@pytest.mark.parametrize("batch_size", [1, 4])
def test_moving_crossing_objects_keep_their_track_ids(tiny_model, monkeypatch, batch_size):
    oracle = OracleNetwork()
    monkeypatch.setattr(tracker_module, "forward_frames", oracle)
    frames, truth = _clip(24)
    tracker = VideoTracker(tiny_model, ["a", "b"], preprocess=PreprocessConfig(short_side=H),
                           score_threshold=0.5, batch_size=batch_size)
    id_of_object: dict[int, int] = {}
    for t, result in enumerate(tracker.track(iter(frames))):
        d = result.detections
        assert result.index == t and len(d) == 3, "exactly the three objects are tracks"
        assert d.masks is not None and d.masks.shape == (3, H, W)
        for k, box in enumerate(truth[t]):
            # the track whose box is this object's box (boxes come from the oracle, ids from the tracker)
            hit = [i for i in range(3) if np.allclose(d.boxes[i].numpy(), box, atol=1e-3)]
            assert len(hit) == 1
            tid = int(d.track_ids[hit[0]])
            assert id_of_object.setdefault(k, tid) == tid, f"object {k} changed id at frame {t}"
            assert d.class_names[hit[0]] == ["a", "b"][k % 2]
            truth_mask = torch.zeros(H, W, dtype=torch.bool)
            truth_mask[box[1] : box[3], box[0] : box[2]] = True
            m = d.masks[hit[0]]  # upsampled from the 4x coarser grid: edges are approximate
            assert (m & truth_mask).sum() / (m | truth_mask).sum() > 0.6
    assert sorted(id_of_object.values()) == sorted(set(id_of_object.values()))  # three distinct ids
    assert oracle.calls == -(-24 // batch_size)
    assert tracker.frames_seen == 24


def test_hysteresis_and_max_tracks(tiny_model, monkeypatch):
    monkeypatch.setattr(tracker_module, "forward_frames", OracleNetwork())
    frames, _ = _clip(6)
    # everything at or above 0.0 starts a track: all 8 slots, capped to the 5 best
    tracker = VideoTracker(tiny_model, ["a", "b"], preprocess=PreprocessConfig(short_side=H),
                           score_threshold=0.0, max_tracks=5)
    counts = [len(r) for r in tracker.track(frames)]
    assert counts == [5] * 6
    with pytest.raises(ValueError, match="keep_threshold"):
        VideoTracker(tiny_model, ["a"], score_threshold=0.3, keep_threshold=0.5)
    with pytest.raises(ValueError, match="either"):
        VideoTracker(tiny_model, None)
