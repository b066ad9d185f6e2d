"""VOS from first-frame masks/boxes/clicks, frame-0 prompt-token reuse, and R-VOS, with the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glee import GleeConfig, GleeModel
from glee.inference.preprocess import PreprocessConfig, prepare_batch, resize_prompt_mask
from glee.inference.prompts import VisualPrompt
from glee.video import ObjectTracker, ReferringTracker, segment_expression, segment_objects, track_click

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier

PRE = PreprocessConfig(short_side=48)




def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(n)]


def _mask() -> np.ndarray:
    m = np.zeros((40, 56), bool)
    m[8:28, 10:34] = True
    return m


def _forward(model, image, mask, seed=0, encoded=None):
    batch = prepare_batch([image], PRE, model.cfg)
    prompt = None if mask is None else resize_prompt_mask(mask, batch.resized_sizes[0], batch.padded_size, PRE)[None]
    with torch.inference_mode():
        return model(batch.images, categories=["object"], visual_prompt_masks=prompt, visual_prompt_type="mask",
                     generator=torch.Generator().manual_seed(seed), visual_prompt=encoded)


def test_encoded_visual_prompt_is_reused_on_later_frames(tiny_model):
    f0, f1 = _frames(2)
    first = _forward(tiny_model, f0, _mask())
    encoded = first.extra["visual_prompt"]
    assert encoded.template.shape[0] == 1 and encoded.nbytes() > 0
    assert len(encoded.point_tokens) == len(encoded.point_padding) == len(encoded.points)
    # reusing it on frame 0 reproduces the prompted forward; on frame 1 it differs from re-prompting frame 1
    reused0 = _forward(tiny_model, f0, None, encoded=encoded)
    torch.testing.assert_close(reused0.pred_logits, first.pred_logits)
    torch.testing.assert_close(reused0.pred_masks, first.pred_masks)
    assert reused0.extra["visual_prompt"] is encoded
    reused1 = _forward(tiny_model, f1, None, encoded=encoded)
    plain1 = _forward(tiny_model, f1, _mask())
    assert not torch.allclose(reused1.query_embeddings, plain1.query_embeddings, atol=1e-4)
    with pytest.raises(ValueError, match="not both"):
        _forward(tiny_model, f1, _mask(), encoded=encoded)
    with pytest.raises(ValueError, match="one per image"):
        batch = prepare_batch([f1, f1], PRE, tiny_model.cfg)
        tiny_model(batch.images, categories=["object"], visual_prompt=encoded)


@pytest.mark.parametrize("mode", ["first_frame", "propagate"])
def test_objects_from_mask_box_and_click_keep_their_ids(tiny_model, mode):
    frames = _frames(4)
    results = list(segment_objects(tiny_model, frames, masks=[_mask()], boxes=[(30, 5, 50, 35)], points=[(12, 30)],
                                   prompt_mode=mode, preprocess=PRE))
    assert len(results) == 4
    for r in results:
        d = r.detections
        assert r.track_ids == [1, 2, 3] and d.class_names == ["object"] * 3
        assert d.masks is not None and d.masks.shape == (3, 40, 56)
        assert d.meta["frame_index"] == r.index


def test_frame0_mask_prompt_picks_the_best_overlapping_query(tiny_model):
    image = _frames(1)[0]
    tracker = ObjectTracker(tiny_model, preprocess=PRE)
    first = next(tracker.track([image], [_mask()]))
    out = _forward(tiny_model, image, _mask())
    low = torch.nn.functional.adaptive_avg_pool2d(
        resize_prompt_mask(_mask(), (48, 67), (64, 96), PRE).float()[None, None], out.pred_masks.shape[-2:])[0, 0] > 0.5
    pred = out.pred_masks[0] > 0
    iou = (pred & low).flatten(1).sum(1) / (pred | low).flatten(1).sum(1).clamp(min=1)
    assert int(first.detections.query_indices[0]) in torch.nonzero(iou == iou.max()).flatten().tolist()


def test_absent_objects_and_bounded_state(tiny_model):
    frames = _frames(5)
    calls = []

    def low_confidence_after_frame0(module, args, output):
        calls.append(1)
        if len(calls) > 1:  # from frame 1 on, no query is confident (probability 0.05)
            output.pred_logits = torch.full_like(output.pred_logits, -3.0)
        return output

    handle = tiny_model.register_forward_hook(low_confidence_after_frame0)
    try:
        tracker = ObjectTracker(tiny_model, preprocess=PRE, min_score=0.5, memory=2)
        sizes, counts = [], []
        for r in tracker.track(frames, [VisualPrompt(box=(4, 4, 40, 30))]):
            sizes.append(tracker.state_nbytes())
            counts.append(len(r))
    finally:
        handle.remove()
    assert counts == [1, 0, 0, 0, 0]  # frame 0 is given; later frames fall below min_score
    assert len(set(sizes)) == 1


def test_vos_input_errors(tiny_model):
    with pytest.raises(ValueError, match="outside"):
        list(track_click(tiny_model, _frames(1), (100, 5), preprocess=PRE))
    with pytest.raises(ValueError, match="prompt_mode"):
        ObjectTracker(tiny_model, prompt_mode="guess")
    with pytest.raises(ValueError, match="at least one"):
        list(ObjectTracker(tiny_model).track(_frames(1), []))
    stage1 = GleeModel(GleeConfig.preset("tiny").replace(visual_prompt=False)).eval()
    with pytest.raises(ValueError, match="no visual prompter"):
        ObjectTracker(stage1)


def test_referring_tracker_batches_and_labels(tiny_model):
    frames = _frames(5, seed=3)
    one = list(segment_expression(tiny_model, frames, "the left zebra", preprocess=PRE))
    three = list(ReferringTracker(tiny_model, "the left zebra", preprocess=PRE, batch_size=3).track(frames))
    for a, b in zip(one, three):
        assert a.track_ids == b.track_ids == [1] and a.detections.class_names == ["the left zebra"]
        assert torch.equal(a.detections.query_indices, b.detections.query_indices)
        torch.testing.assert_close(a.detections.boxes, b.detections.boxes, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="expression"):
        ReferringTracker(tiny_model, "  ")
