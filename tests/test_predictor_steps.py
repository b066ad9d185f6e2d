"""Pre/postprocessing steps and prompt construction, checked against hand-computed values and torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glee.config import GleeConfig
from glee.inference.postprocess import (
    PostprocessConfig,
    boxes_to_image,
    mask_logits_to_image,
    postprocess_image,
    select_by_clicks,
    select_queries,
)
from glee.inference.preprocess import (
    PreprocessConfig,
    prepare_batch,
    preprocess_image,
    resize_prompt_mask,
    resized_size,
)
from glee.inference.prompts import VisualPrompt, clicks_to_canvas, prompt_mask

TINY = GleeConfig.preset("tiny")


# ---------------------------------------------------------------------- preprocessing
def test_resized_size_rules() -> None:
    demo = PreprocessConfig()
    assert resized_size(320, 480, demo) == (800, 1200)  # the fixture's image1
    assert resized_size(224, 160, demo) == (1120, 800)  # image2 (portrait): floor(800 * 224 / 160)
    assert resized_size(100, 1000, PreprocessConfig(max_size=1333)) == (133, 1333)  # torchvision's cap
    evaluation = PreprocessConfig(max_size=1333, rounding="round")
    assert resized_size(480, 640, evaluation) == (800, 1067)  # detectron2 rounds 1066.67 half up
    assert resized_size(480, 640, PreprocessConfig(short_side=None, long_side=1536)) == (1152, 1536)
    assert resized_size(37, 53, PreprocessConfig(short_side=None)) == (37, 53)
    with pytest.warns(UserWarning, match="max_input_side"):
        assert resized_size(10, 2000, demo) == (20, 4096)
    with pytest.raises(ValueError, match="not both"):
        PreprocessConfig(short_side=800, long_side=1333)


def test_preprocessing_equals_torchvision_resize_of_the_normalised_image() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mean = torch.tensor(TINY.pixel_mean).view(3, 1, 1)
    std = torch.tensor(TINY.pixel_std).view(3, 1, 1)
    normalised = ((torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std)[None]
    expected = transforms.Resize(800)(normalised)  # the official demo's resizer
    ours = preprocess_image(image, PreprocessConfig(), TINY)
    assert torch.equal(ours, expected)


def test_batch_of_two_sizes_pads_each_to_a_common_canvas() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 50, 3), dtype=np.uint8), rng.integers(0, 256, (45, 20, 3), dtype=np.uint8)]
    cfg = PreprocessConfig(short_side=64)
    batch = prepare_batch(images, cfg, TINY)
    assert batch.resized_sizes == [(64, 106), (144, 64)]
    assert batch.padded_size == (160, 128)  # max of each side, rounded up to 32
    assert batch.original_sizes == [(30, 50), (45, 20)]
    for i, img in enumerate(images):
        alone = preprocess_image(img, cfg, TINY)[0]
        h, w = batch.resized_sizes[i]
        assert torch.equal(batch.images[i, :, :h, :w], alone)
        assert batch.images[i, :, h:].abs().sum() == 0 and batch.images[i, :, :, w:].abs().sum() == 0


def test_prompt_mask_is_resized_like_the_image_and_thresholded_above_zero() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 6:12] = True
    out = resize_prompt_mask(mask, (40, 60), (64, 64), PreprocessConfig())
    assert out.shape == (64, 64) and out.dtype == torch.bool
    ys, xs = torch.nonzero(out, as_tuple=True)
    # bilinear x2 with "> 0": the box grows by the interpolation support (one output pixel per side)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (9, 20, 11, 24)
    assert not out[40:].any() and not out[:, 60:].any()


# ---------------------------------------------------------------------- postprocessing
def test_boxes_follow_the_demo_formula() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.95, 0.5, 0.3, 0.2]])
    out = boxes_to_image(boxes, padded=(64, 96), resized=(60, 90), original=(30, 45))
    # (0.25..0.75) * (96, 64) / (90, 60) * (45, 30)
    torch.testing.assert_close(out[0], torch.tensor([12.0, 8.0, 36.0, 24.0]))
    assert out[1, 2].item() == 45.0  # x2 = 1.1 * 96 / 90 > 1: clamped to the image width
    unclamped = boxes_to_image(boxes, (64, 96), (60, 90), (30, 45), clamp=False)
    assert unclamped[1, 2].item() > 45.0


def test_masks_are_upsampled_cropped_and_resized() -> None:
    logits = torch.full((1, 16, 24), -5.0)
    logits[0, :, :12] = 5.0  # left half of the padded canvas (64 x 96) is foreground
    full = mask_logits_to_image(logits, padded=(64, 96), resized=(64, 64), original=(32, 32))
    assert full.shape == (1, 32, 32)
    binary = full[0] > 0
    # the resized image spans columns 0..63 of the canvas; its left 48 columns are foreground -> 24 of 32
    assert binary[:, :23].all() and not binary[:, 25:].any()
    assert mask_logits_to_image(logits[:0], (64, 96), (64, 64), (32, 32)).shape == (0, 32, 32)


def test_select_queries_single_and_multi_label() -> None:
    logits = torch.tensor([[0.0, 3.0], [2.0, -1.0], [-4.0, -3.0]])
    sel = select_queries(logits, top_k=2)
    assert sel.query_indices.tolist() == [0, 1] and sel.class_ids.tolist() == [1, 0]
    torch.testing.assert_close(sel.class_probs, torch.sigmoid(torch.tensor([3.0, 2.0])))
    assert len(select_queries(logits, top_k=50).query_indices) == 3  # clamped to Q
    multi = select_queries(logits, top_k=3, multi_label=True)
    assert list(zip(multi.query_indices.tolist(), multi.class_ids.tolist())) == [(0, 1), (1, 0), (0, 0)]


def test_eval_score_is_class_probability_times_mask_score() -> None:
    logits = torch.tensor([[2.0], [1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    masks = torch.full((2, 8, 8), -3.0)
    masks[0, :2, :2] = 0.1  # weak mask: mask score ~ sigmoid(0.1)
    masks[1, :, :] = 6.0  # confident mask
    common = dict(padded=(32, 32), resized=(32, 32), original=(32, 32))
    demo = postprocess_image(logits, boxes, masks, cfg=PostprocessConfig(top_k=2, threshold=None), **common)
    assert demo.query_indices.tolist() == [0, 1]
    torch.testing.assert_close(demo.scores, torch.sigmoid(torch.tensor([2.0, 1.0])))
    ev = postprocess_image(logits, boxes, masks, cfg=PostprocessConfig(top_k=2, threshold=None, score_mode="eval"),
                           **common)
    assert ev.query_indices.tolist() == [1, 0]  # re-sorted by the combined score
    full = mask_logits_to_image(masks[[1, 0]], (32, 32), (32, 32), (32, 32))
    expected_mask_score = (full.sigmoid() * (full > 0)).flatten(1).sum(1) / (full > 0).flatten(1).sum(1)
    torch.testing.assert_close(ev.scores, torch.sigmoid(torch.tensor([1.0, 2.0])) * expected_mask_score)
    thr = postprocess_image(logits, boxes, masks, cfg=PostprocessConfig(top_k=2, threshold=0.6, score_mode="eval"),
                            **common)
    assert thr.query_indices.tolist() == [1]  # the threshold applies to the final score


def test_click_ranking_prefers_masks_that_avoid_negative_clicks() -> None:
    logits = torch.tensor([[3.0], [1.0], [2.0]])  # query 0 is the most confident
    masks = torch.full((3, 10, 10), -4.0)
    masks[0] = 4.0  # covers everything, including the negative click
    masks[1, :, :5] = 4.0  # covers the positive clicks only (left half)
    pos, neg = [(0.2, 0.5), (0.3, 0.3)], [(0.8, 0.5)]
    assert select_by_clicks(logits, masks, pos, [], top_k=1).query_indices.tolist() == [0]
    chosen = select_by_clicks(logits, masks, pos, neg, top_k=3)
    assert chosen.query_indices.tolist() == [1, 0, 2]
    torch.testing.assert_close(chosen.class_probs, torch.sigmoid(logits[[1, 0, 2], 0]))


# ---------------------------------------------------------------------- prompts
def test_click_rectangle_matches_the_demo() -> None:
    mask = prompt_mask(VisualPrompt(points=[(100, 200)]), 400, 600)
    ys, xs = np.nonzero(mask)
    # rows cy - H//40 : cy + H//40, columns cx - W//40 : cx + W//40
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (190, 210, 85, 115)
    corner = prompt_mask(VisualPrompt(points=[(2, 3)]), 400, 600)
    assert corner[0, 0] and corner.sum() == 13 * 17  # clamped at the border instead of wrapping around
    small = prompt_mask(VisualPrompt(points=[(5, 5)]), 20, 20)
    assert small.sum() == 4  # images under 40 px still get a (2 x 2) prompt


def test_multi_click_union_and_negative_carving() -> None:
    two = prompt_mask(VisualPrompt(points=[(100, 100), (300, 100)]), 400, 400)
    assert two.sum() == 2 * 20 * 20
    carved = prompt_mask(VisualPrompt(points=[(100, 100), (300, 100)], negative_points=[(105, 100)]), 400, 400)
    assert carved.sum() < two.sum() and not carved[100, 105] and carved[100, 300]
    with pytest.raises(ValueError, match="remove the whole prompt"):
        prompt_mask(VisualPrompt(points=[(100, 100)], negative_points=[(100, 100)]), 400, 400)
    canvas = clicks_to_canvas([(100, 100)], original=(400, 400), resized=(800, 800), padded=(800, 832))
    assert canvas[0] == pytest.approx((100.5 / 400 * 800 / 832, 100.5 / 400))


def test_box_scribble_and_mask_prompts() -> None:
    box = prompt_mask(VisualPrompt(box=(80, 200, 104, 220)), 320, 480)
    assert box.sum() == 480 and box[200, 80] and not box[220, 104]  # rows y1:y2, columns x1:x2 (fixture vp_box)
    clipped = prompt_mask(VisualPrompt(box=(-10, -10, 5, 5)), 20, 20)
    assert clipped.sum() == 25
    line = prompt_mask(VisualPrompt(scribble=[[(2, 10), (17, 10)]], scribble_width=1), 20, 20)
    assert line[10, 2:18].all() and line.sum() == 16
    given = np.zeros((20, 20), dtype=bool)
    given[3:6, 3:6] = True
    np.testing.assert_array_equal(prompt_mask(VisualPrompt(mask=given), 20, 20), given)
    assert VisualPrompt(scribble=given).kind == "scribble" and VisualPrompt(mask=given).kind == "mask"


def test_prompts_outside_the_frame_and_malformed_prompts() -> None:
    with pytest.raises(ValueError, match="outside"):
        prompt_mask(VisualPrompt(points=[(500, 10)]), 100, 100)
    with pytest.raises(ValueError, match="outside"):
        prompt_mask(VisualPrompt(points=[(10, 10)], negative_points=[(10, -1)]), 100, 100)
    with pytest.raises(ValueError, match="outside"):
        prompt_mask(VisualPrompt(box=(200, 200, 300, 300)), 100, 100)
    with pytest.raises(ValueError, match="x2 <= x1"):
        VisualPrompt(box=(10, 10, 5, 20))
    with pytest.raises(ValueError, match="one positive kind"):
        VisualPrompt(points=[(1, 1)], box=(0, 0, 5, 5))
    with pytest.raises(ValueError, match="positive part"):
        VisualPrompt(negative_points=[(1, 1)])
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        prompt_mask(VisualPrompt(mask=np.ones((5, 5), dtype=bool)), 20, 20)
    with pytest.raises(ValueError, match="covers no pixel"):
        prompt_mask(VisualPrompt(scribble=[[(50, 50), (60, 60)]]), 20, 20)


def test_predictor_without_config_resizes_to_the_models_input_size() -> None:
    from glee.inference.predictor import ImagePredictor, PredictorConfig
    from glee.modeling.glee_model import GleeModel

    model = GleeModel(GleeConfig.preset("tiny")).eval()
    model.cfg.predict_short_side = 96
    predictor = ImagePredictor(model)
    assert predictor.config.preprocess.short_side == 96
    batch = prepare_batch([np.zeros((120, 180, 3), np.uint8)], predictor.config.preprocess, model.cfg)
    assert batch.resized_sizes == [(96, 144)]
    assert ImagePredictor(model, PredictorConfig()).config.preprocess.short_side == 800  # explicit config wins
    assert GleeConfig.preset("lite").predict_short_side == 800 and GleeConfig.preset("nano").predict_short_side == 320
