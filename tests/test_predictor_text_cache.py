"""Text-embedding cache: counted text-encoder calls, chunked == unchunked, LRU bound, weight-change invalidation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glee import GleeConfig, GleeModel
from glee.inference import ImagePredictor, PredictorConfig, PreprocessConfig, TextEmbeddingCache


class EncoderCalls:
    """Counts forwards of ``model.text_encoder`` (every path to CLIP goes through it)."""

    def __init__(self, model: GleeModel) -> None:
        self.count = 0
        self._handle = model.text_encoder.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def model() -> GleeModel:
    torch.manual_seed(0)
    return GleeModel(GleeConfig.preset("tiny")).eval()


def test_repeated_category_list_costs_no_text_encoder_call(model: GleeModel) -> None:
    predictor = ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=32)))
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    calls = EncoderCalls(model)
    first = predictor.detect(image, ["person", "car", "dog"], threshold=None)
    assert calls.count == 1  # three names, one chunk, one call; the forward itself re-encodes nothing
    second = predictor.detect(image, ["person", "car", "dog"], threshold=None)
    assert calls.count == 1
    torch.testing.assert_close(first.scores, second.scores)
    predictor.detect(image, ["person", "cat"], threshold=None)  # only the new name is encoded
    assert calls.count == 2 and predictor.text_cache.misses == 4
    predictor.ground(image, "a red car")
    predictor.ground([image, image], "a red car")
    assert calls.count == 3  # expressions are cached too
    calls.close()


def test_chunked_encoding_of_1203_names_equals_one_call(model: GleeModel) -> None:
    names = [f"thing number {i}" for i in range(1203)]  # LVIS-sized vocabulary
    cache = TextEmbeddingCache(chunk_size=256)
    calls = EncoderCalls(model)
    chunked = cache.categories(model, names)
    assert calls.count == 5 and cache.encoder_calls == 5  # ceil(1203 / 256)
    with torch.no_grad():
        whole = model.encode_categories(names)
    assert calls.count == 6
    assert chunked.names == names
    # equal up to float32 rounding (batch composition changes the matmul kernels' summation order)
    torch.testing.assert_close(chunked.class_embeddings, whole.class_embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.fusion_tokens, whole.fusion_tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked.input_ids, whole.input_ids)
    assert torch.equal(chunked.attention_mask.cpu(), whole.attention_mask.cpu())
    assert cache.categories(model, names) is chunked and calls.count == 6  # the assembled list is cached too
    calls.close()


def test_expression_cache_equals_model_encoding(model: GleeModel) -> None:
    cache = TextEmbeddingCache()
    texts = ["the dog on the left", "a man riding a horse"]
    ours = cache.expressions(model, texts)
    with torch.no_grad():
        ref = model.encode_expressions(texts)
    torch.testing.assert_close(ours.tokens, ref.tokens, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.grounding_class, ref.grounding_class, atol=1e-6, rtol=1e-6)
    assert torch.equal(ours.attention_mask, ref.attention_mask) and torch.equal(ours.input_ids, ref.input_ids)


def test_cache_is_bounded_and_least_recently_used(model: GleeModel) -> None:
    cache = TextEmbeddingCache(max_texts=3, max_lists=0)
    cache.categories(model, ["a", "b", "c"])
    cache.categories(model, ["a"])  # touch "a": "b" is now the oldest
    cache.categories(model, ["d"])
    assert len(cache) == 3
    calls = cache.encoder_calls
    cache.categories(model, ["a", "c", "d"])
    assert cache.encoder_calls == calls  # all still cached
    cache.categories(model, ["b"])
    assert cache.encoder_calls == calls + 1  # "b" was evicted


def test_new_weights_invalidate_entries() -> None:
    model = GleeModel(GleeConfig.preset("tiny")).eval()  # mutated below: not the shared one
    cache = TextEmbeddingCache()
    before = cache.categories(model, ["person"]).class_embeddings.clone()
    with torch.no_grad():
        model.lang_projection.mul_(2.0)  # in-place update, as load_state_dict does
    after = cache.categories(model, ["person"]).class_embeddings
    torch.testing.assert_close(after, 2.0 * before)
    other = GleeModel(GleeConfig.preset("tiny")).eval()  # another model never sees this model's entries
    calls = cache.encoder_calls
    cache.categories(other, ["person"])
    assert cache.encoder_calls == calls + 1
