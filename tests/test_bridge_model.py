"""Reasoning-segmentation model: losses, [SEG] indexing, KV-cache generation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_bridge.data.conversation import build_prompt, pad_batch, with_image
from llm_bridge.generation import seg_states_teacher_forced
from llm_bridge.model import ContextLengthError, MaskCountError, MissingPixelEmbeddingError
from llm_bridge.testing import ForcedAnswer, random_image_inputs, tiny_bridge, tiny_llm_dir
from llm_bridge.testing import conversation_batch as batch
from llm_bridge.testing import image_conversation as conv

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier

TWO_SEG = "The cat is [SEG] and the dog is [SEG]."





@pytest.fixture(scope="module")
def model():
    return tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=2)  # N = 6 queries + 4 pooled tokens


@pytest.fixture(scope="module")
def images(model):
    return random_image_inputs(model)


def random_masks(shape, n, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.random((n, *shape)) > 0.5).astype(np.uint8))


def test_forward_backward_all_three_losses(model, images):
    # LISA's layout: image 0 has two conversations (rows 0, 1), image 1 one with two [SEG]
    ids, mask, labels = batch(model, [conv("Segment the dog.", "Sure, [SEG]."),
                                      conv("Where is the cat?", "It is [SEG]."),
                                      conv("Segment the cat and the dog.", TWO_SEG)])
    gt = [random_masks((48, 80), 2, 1), random_masks((70, 50), 2, 2)]
    gt[1][0, :5, :5] = 255  # an ignore region
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        out = model(ids, mask, labels, visual=images["visual"], image_index=[0, 0, 1], gt_masks=gt,
                    original_sizes=images["original"], resized_sizes=images["resized"])
    finally:
        model.eval()
    assert out.num_masks == 4
    assert [tuple(p.shape) for p in out.pred_masks] == [(2, 48, 80), (2, 70, 50)]
    expected = out.ce_loss + 2.0 * out.mask_bce_loss + 0.5 * out.mask_dice_loss
    assert torch.allclose(out.loss, expected)
    assert all(torch.isfinite(x) and x > 0 for x in (out.ce_loss, out.mask_bce_loss, out.mask_dice_loss))
    out.loss.backward()
    for module in (model.mm_projector, model.seg_projection, model.embed_tokens):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.tower.parameters()), "GLEE must stay frozen"
    # the mask count must match the [SEG] count, per image
    with pytest.raises(MaskCountError, match="image 1: 2"):
        model(ids, mask, labels, visual=images["visual"], image_index=[0, 0, 1],
              gt_masks=[gt[0], gt[1][:1]], original_sizes=images["original"], resized_sizes=images["resized"])


def test_seg_positions_are_computed_not_offset(model, images):
    """Any visual-token count and any image position: the state before each [SEG] is the one used."""
    other = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0)  # N = 6
    messages = [{"role": "user", "content": "Look: <image>\nnow segment the cat and the dog."},
                {"role": "assistant", "content": TWO_SEG}]
    for m in (model, other):
        ids, mask, labels = batch(m, [messages])
        visual = m.encode_images(images["pixel_values"][:1])
        prepared = m.prepare_inputs(ids, mask, labels, visual)
        assert int((prepared.input_ids == m.image_token_id).sum()) == m.num_visual_tokens
        with torch.no_grad():
            hidden = m.run_decoder(prepared).last_hidden_state
        states = m.seg_states(hidden, prepared)[0]
        seg_pos = (prepared.input_ids[0] == m.seg_token_id).nonzero().flatten()
        assert len(seg_pos) == 2 and torch.equal(states, hidden[0, seg_pos - 1])
        # the selected states are the ones whose LM head predicts [SEG] (labels align with the next token)
        assert torch.equal(prepared.labels[0, seg_pos], torch.full_like(seg_pos, m.seg_token_id))
    assert model.num_visual_tokens == 10 and other.num_visual_tokens == 6


def test_several_seg_in_one_answer_give_several_masks(model, images):
    ids, mask, _ = batch(model, [conv("Segment the cat and the dog.", TWO_SEG)])
    with torch.no_grad():
        out = model(ids, mask, visual=images["visual"].select([1]), original_sizes=images["original"][1:],
                    resized_sizes=images["resized"][1:])
    assert tuple(out.pred_masks[0].shape) == (2, 70, 50)
    assert not torch.allclose(out.pred_masks[0][0], out.pred_masks[0][1])  # different hidden states


def _forced_generation(model, images, use_cache):
    tok = model.tokenizer
    p1 = build_prompt(tok, [{"role": "user", "content": with_image("Segment the cat and the dog.")}])
    p2 = build_prompt(tok, [{"role": "user", "content": with_image("Where?")}])
    ids, mask, _ = pad_batch([p1, p2], model.pad_token_id, side="left")
    script = tok(TWO_SEG, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return model.generate(ids, mask, visual=images["visual"], max_new_tokens=len(script) + 3,
                          logits_processor=ForcedAnswer(script, ids.shape[1], rows=[0]), use_cache=use_cache)


def test_kv_cache_and_full_rerun_give_the_same_masks(model, images):
    cached = _forced_generation(model, images, use_cache=True)
    lisa = _forced_generation(model, images, use_cache=False)  # LISA's loop: full sequence re-run per token
    assert torch.equal(cached.sequences, lisa.sequences)
    assert cached.finished[0] and len(cached.seg_states[0]) == 2
    assert cached.forward_passes == lisa.forward_passes
    teacher = seg_states_teacher_forced(model, cached)  # LISA's recovery: one full pass, computed positions
    decoded = []
    for states in (cached.seg_states, lisa.seg_states, teacher):
        with torch.no_grad():
            emb = model.project_seg(states)
            decoded.append(model.decode_masks(emb, cached.visual, cached.prepared.image_rows, 2,
                                              images["original"], images["resized"]))
    for other in decoded[1:]:
        for a, b in zip(decoded[0], other):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert decoded[0][0].shape[0] == 2


def test_batched_generation_matches_single_rows(model, images):
    tok = model.tokenizer
    prompts = [build_prompt(tok, [{"role": "user", "content": with_image(q)}])
               for q in ("Please segment the big yellow circle on the left.", "Hello?")]
    ids, mask, _ = pad_batch(prompts, model.pad_token_id, side="left")
    both = model.generate(ids, mask, visual=images["visual"], max_new_tokens=6)
    for b, prompt in enumerate(prompts):
        single = model.generate(torch.tensor([prompt]), visual=images["visual"].select([b]), max_new_tokens=6)
        assert both.new_tokens(b) == single.new_tokens(0)


def test_answer_without_seg_is_not_an_error(model, images):
    tok = model.tokenizer
    ids = torch.tensor([build_prompt(tok, [{"role": "user", "content": with_image("Describe the image.")}])])
    out = model.generate(ids, visual=images["visual"].select([0]), max_new_tokens=3, suppress_seg=True)
    assert model.seg_token_id not in out.new_tokens(0)
    # LISA's loop that also re-encodes the image every step decodes the same tokens
    lisa = model.generate(ids, pixel_values=images["pixel_values"][:1], max_new_tokens=3, suppress_seg=True,
                          use_cache=False, reencode_images=True)
    assert lisa.new_tokens(0) == out.new_tokens(0)
    masks = model.decode_masks(model.project_seg(out.seg_states), out.visual, out.prepared.image_rows, 1,
                               images["original"][:1], images["resized"][:1])
    assert tuple(masks[0].shape) == (0, 48, 80)


def test_seg_without_pixel_embedding_is_a_clear_error(model, images):
    tok = model.tokenizer
    ids = torch.tensor([build_prompt(tok, [{"role": "user", "content": "Segment the dog."}])])  # text only
    script = tok("Sure, [SEG].", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    out = model.generate(ids, max_new_tokens=8, logits_processor=ForcedAnswer(script, ids.shape[1]))
    assert len(out.seg_states[0]) == 1
    with pytest.raises(MissingPixelEmbeddingError, match="no image"):
        model.decode_masks(model.project_seg(out.seg_states), out.visual, out.prepared.image_rows)
    # teacher-forced: a text-only row with [SEG] in a batch that has images elsewhere
    text_only = [{"role": "user", "content": "Segment the dog."}, {"role": "assistant", "content": "Sure, [SEG]."}]
    ids, mask, labels = batch(model, [conv("Segment it.", "It is [SEG]."), text_only])
    with pytest.raises(MissingPixelEmbeddingError, match="row 1"):
        model(ids, mask, labels, visual=images["visual"].select([0]), image_index=[0, 0])


def test_image_token_without_image_and_bad_counts(model, images):
    ids, mask, _ = batch(model, [conv("Segment the dog.", "Sure, [SEG].")])
    with pytest.raises(ValueError, match="no image was given"):
        model(ids, mask)
    two = torch.cat([ids[:, :1], torch.tensor([[model.image_token_id]]), ids[:, 1:]], 1)
    with pytest.raises(ValueError, match="2 <image> tokens"):
        model.prepare_inputs(two, visual=images["visual"].select([0]))
    with pytest.raises(ValueError, match="only 1 were given"):
        model.prepare_inputs(ids, visual=images["visual"].select([0]), image_index=[3])


def test_prompt_longer_than_context_is_a_clear_error(model, images):
    tok = model.tokenizer
    long_question = "please segment the big yellow circle " * 400
    ids = torch.tensor([build_prompt(tok, [{"role": "user", "content": with_image(long_question)}])])
    with pytest.raises(ContextLengthError, match=r"tokens including 10 visual tokens, but the context holds 512"):
        model.generate(ids, visual=images["visual"].select([0]), max_new_tokens=4)
    # a prompt that fits but leaves no room: still a clear error, and an over-long max_new_tokens is capped
    fit = ids[:, : 512 - model.num_visual_tokens + 1]
    with pytest.raises(ContextLengthError, match="no room is left"):
        model.generate(fit, visual=images["visual"].select([0]), max_new_tokens=4)
    short = ids[:, : 500 - model.num_visual_tokens]
    with pytest.warns(UserWarning, match="capped"):
        out = model.generate(short, visual=images["visual"].select([0]), max_new_tokens=50)
    assert out.lengths[0] <= 512 - (short.shape[1] - 1 + model.num_visual_tokens)


def test_seg_token_is_one_id(model):
    ids = model.tokenizer("Sure, it is [SEG].", add_special_tokens=False)["input_ids"]
    assert ids.count(model.seg_token_id) == 1
    assert model.tokenizer.decode([model.seg_token_id]) == "[SEG]"


def test_dice_loss_scales_like_lisa():
    """LISA: 1 - (2 sum(p/s * t) + eps) / (sum(p/s) + sum(t/s) + eps), s = 1000 (the target is scaled once).

    Scaling the target inside the product as well pins the loss near 1 for any prediction (found while
    training on the reasoning set: DICE stayed at 0.9999 while BCE fell).
    """
    from llm_bridge.losses import mask_dice_loss

    gt = torch.zeros((1, 40, 40), dtype=torch.uint8)
    gt[0, 10:20, 10:20] = 1
    perfect = torch.where(gt == 1, 12.0, -12.0)
    assert float(mask_dice_loss(perfect, gt)) < 1e-3
    assert float(mask_dice_loss(-perfect, gt)) > 0.999
    half = torch.zeros((1, 40, 40))  # p = 0.5 everywhere: 1 - 2 * 0.5 * 100 / (0.5 * 1600 + 100)
    assert float(mask_dice_loss(half, gt)) == pytest.approx(1 - 100 / 900, abs=1e-4)
    gt[0, 0, :] = 255  # ignore pixels count for neither prediction nor target
    assert float(mask_dice_loss(half, gt)) == pytest.approx(1 - 100 / (0.5 * 1560 + 100), abs=1e-4)
