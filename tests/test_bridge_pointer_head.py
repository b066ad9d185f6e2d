"""The ``query_pointer`` [SEG] head: attention over GLEE's object queries that mixes their mask embeddings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from llm_bridge.data.conversation import build_prompt, with_image
from llm_bridge.generation import seg_states_teacher_forced
from llm_bridge.model import (
    BridgeConfig,
    MissingPixelEmbeddingError,
    QueryPointerProjection,
    ReasonSegModel,
    cover_queries,
    distinct_picks,
)
from llm_bridge.testing import ForcedAnswer, random_image_inputs, tiny_bridge, tiny_llm_dir
from llm_bridge.testing import conversation_batch as batch
from llm_bridge.testing import image_conversation as conv
from llm_bridge.tower import VisualFeatures

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=2, seg_head="query_pointer")  # 6 queries + 4 pooled


@pytest.fixture(scope="module")
def images(model):
    return random_image_inputs(model)


class _PointAt(nn.Module):
    """A query network that always asks for key ``target`` (scaled up so the softmax is one-hot)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.target.expand(states.shape[0], -1)


def test_tower_query_mask_embeddings_give_glee_masks(model, images):
    visual = images["visual"]
    glee = model.tower.glee
    with torch.no_grad():
        out = glee(images["pixel_values"], categories=model.config.prompt_categories)
    rebuilt = torch.einsum("bqd,bdhw->bqhw", visual.query_mask_embeddings, visual.pixel_embeddings)
    torch.testing.assert_close(rebuilt, out.pred_masks, atol=1e-4, rtol=1e-4)
    assert visual.query_mask_embeddings.shape == (2, glee.cfg.num_queries, glee.cfg.mask_dim)
    picked = visual.select([1])
    assert torch.equal(picked.query_mask_embeddings[0], visual.query_mask_embeddings[1])


def test_a_one_hot_pointer_gives_exactly_glee_query_mask(model, images):
    visual = images["visual"]
    head = model.seg_projection
    assert isinstance(head, QueryPointerProjection)
    states = [torch.randn(1, model.hidden_size), torch.randn(1, model.hidden_size)]  # two answers, one [SEG] each
    for image, query in ((0, 3), (1, 0)):
        with torch.no_grad():
            key = head.key(visual.tokens[image, query])
        original = head.query
        head.query = _PointAt(key * 1e4)
        try:
            with torch.no_grad():
                emb = model.project_seg(states, visual, image_rows=[image, image])
        finally:
            head.query = original
        for e in emb:
            for row in e:
                torch.testing.assert_close(row, visual.query_mask_embeddings[image, query], atol=1e-5, rtol=1e-5)


def test_forward_backward_reaches_the_head(model, images):
    ids, mask, labels = batch(model, [conv("Segment the dog.", "Sure, [SEG]."),
                                      conv("Segment the two.", "They are [SEG] and [SEG].")])
    gt = [torch.from_numpy((np.random.default_rng(s).random((n, *hw)) > 0.5).astype(np.uint8))
          for s, n, hw in ((0, 1, (48, 80)), (1, 2, (70, 50)))]
    model.train()
    try:
        out = model(ids, mask, labels, visual=images["visual"], image_index=[0, 1], gt_masks=gt,
                    original_sizes=images["original"], resized_sizes=images["resized"])
        model.zero_grad(set_to_none=True)
        out.loss.backward()
    finally:
        model.eval()
    assert out.num_masks == 3 and torch.isfinite(out.loss)
    for module in (model.seg_projection.query, model.seg_projection.key, model.mm_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in model.tower.parameters())


def _striped_features(num_queries: int, channels: int, mask_dim: int) -> VisualFeatures:
    """Two images whose query q owns vertical stripe q: query masks are +8 on their stripe, -8 elsewhere."""
    torch.manual_seed(0)
    size = 4 * num_queries
    pixel = -torch.ones(2, mask_dim, size, size)
    for q in range(num_queries):
        pixel[:, q, :, 4 * q:4 * q + 4] = 1.0
    query_masks = torch.zeros(2, num_queries, mask_dim)
    query_masks[:, torch.arange(num_queries), torch.arange(num_queries)] = 8.0
    return VisualFeatures(torch.randn(2, num_queries, channels), pixel, 1, (size, size), query_masks)


def test_the_head_learns_to_point_at_the_target_queries(model):
    """Trained on mask losses alone, the head puts its attention on the query whose mask is the target."""
    from llm_bridge.losses import mask_losses

    q = 6
    visual = _striped_features(q, model.tower.hidden_size, model.mask_dim)
    rows, targets = [0, 1], [[2], [4, 1]]  # image 0: one [SEG]; image 1: two
    gt = [torch.stack([(visual.pixel_embeddings[0, t] > 0).to(torch.uint8) for t in ts]) for ts in targets]
    torch.manual_seed(1)
    states = [torch.randn(1, model.hidden_size), torch.randn(2, model.hidden_size)]
    head = QueryPointerProjection(model.hidden_size, model.tower.hidden_size)
    original, model.seg_projection = model.seg_projection, head
    try:
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(100):
            pred = model.decode_masks(model.project_seg(states, visual, rows), visual, rows)
            bce, dice, _ = mask_losses(pred, gt)
            opt.zero_grad()
            (2 * bce + 0.5 * dice).backward()
            opt.step()
        with torch.no_grad():
            weights = head.log_weights(torch.cat(states), visual.tokens[[0, 1, 1]]).exp()
            pred = model.decode_masks(model.project_seg(states, visual, rows), visual, rows)
    finally:
        model.seg_projection = original
    assert weights.argmax(-1).tolist() == [2, 4, 1]
    assert float(weights.max(-1).values.min()) > 0.9
    for p, g in zip(pred, gt):
        assert torch.equal((p > 0).to(torch.uint8), g)  # exactly the target stripes


def test_kv_cache_generation_and_teacher_forcing_give_the_same_masks(model, images):
    tok = model.tokenizer
    prompt = build_prompt(tok, [{"role": "user", "content": with_image("Segment the cat and the dog.")}])
    script = tok("They are [SEG] and [SEG].", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt])
    visual = images["visual"].select([1])
    decoded = []
    for use_cache in (True, False):
        out = model.generate(ids, visual=visual, max_new_tokens=len(script) + 2, use_cache=use_cache,
                             logits_processor=ForcedAnswer(script, ids.shape[1]))
        for states in (out.seg_states, seg_states_teacher_forced(model, out)):
            with torch.no_grad():
                emb = model.project_seg(states, out.visual, out.prepared.image_rows)
            decoded.append(model.decode_masks(emb, out.visual, out.prepared.image_rows, 1, images["original"][1:],
                                              images["resized"][1:])[0])
    assert decoded[0].shape == (2, 70, 50)
    for other in decoded[1:]:
        torch.testing.assert_close(decoded[0], other, atol=1e-4, rtol=1e-4)


def test_save_load_keeps_the_head(model, images, tmp_path):
    model.save_pretrained(tmp_path / "bridge")
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge")
    assert loaded.config.seg_head == "query_pointer" and isinstance(loaded.seg_projection, QueryPointerProjection)
    ids, mask, _ = batch(model, [conv("Segment the two.", "They are [SEG] and [SEG].")])
    visual = images["visual"].select([0])
    with torch.no_grad():
        a = model(ids, mask, visual=visual).pred_masks[0]
        b = loaded(ids, mask, visual=loaded.encode_images(images["pixel_values"][:1])).pred_masks[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_input(model):
    states = [torch.randn(1, model.hidden_size)]
    with pytest.raises(MissingPixelEmbeddingError, match="object queries"):
        model.project_seg(states, None, [0])
    with pytest.raises(MissingPixelEmbeddingError, match="object queries"):
        model.project_seg(states, None, [-1])
    with pytest.raises(ValueError, match="image_rows"):
        model.project_seg(states)
    empty = model.project_seg([torch.zeros(0, model.hidden_size)], None, [-1])  # no [SEG]: no image needed
    assert [tuple(e.shape) for e in empty] == [(0, model.mask_dim)]
    with pytest.raises(ValueError, match="unknown seg_head"):
        BridgeConfig(seg_head="sam")


def test_pointer_loss_targets_the_best_query_and_does_not_saturate(model):
    from llm_bridge.losses import pointer_loss, query_mask_ious

    visual = _striped_features(6, model.tower.hidden_size, model.mask_dim)
    query_masks = torch.einsum("qd,dhw->qhw", visual.query_mask_embeddings[0], visual.pixel_embeddings[0])
    gt = torch.stack([(query_masks[t] > 0).to(torch.uint8) for t in (2, 5)])
    gt[1, :, :2] = 255  # ignore pixels count for neither side
    ious = query_mask_ious(query_masks, gt)
    assert ious.shape == (2, 6) and ious.argmax(-1).tolist() == [2, 5]
    assert torch.allclose(ious.max(-1).values, torch.ones(2)) and float(ious.sum()) == 2.0
    # attention saturated on a wrong query: the mask loss's gradient through the softmax vanishes, this one doesn't
    logits = torch.full((2, 6), -20.0)
    logits[:, 0] = 20.0
    logits.requires_grad_(True)
    loss, count = pointer_loss(torch.log_softmax(logits, -1), ious)
    loss.backward()
    assert count == 2 and float(loss) > 70 and float(logits.grad[0, 2]) < -0.99
    # near-duplicate queries of the target share the credit: -log of their summed attention
    dup = ious.clone()
    dup[0, 4] = 0.95
    log_w = torch.log_softmax(torch.randn(2, 6), -1)
    expected = -(torch.logsumexp(log_w[0, [2, 4]], 0) + log_w[1, 5])
    torch.testing.assert_close(pointer_loss(log_w, dup)[0], expected)
    # a target no query covers (GLEE missed it) is left out
    missed = torch.zeros_like(gt[:1])
    missed[0, 0, 0] = 1
    assert pointer_loss(torch.full((1, 6), 1 / 6).log(), query_mask_ious(query_masks, missed))[1] == 0


def test_forward_adds_the_pointer_loss(model, images):
    ids, mask, labels = batch(model, [conv("Segment the two.", "They are [SEG] and [SEG].")])
    visual = images["visual"].select([0])
    # targets: GLEE's own masks of queries 0 and 1 (so the best query of each is known)
    gt = [(model.decode_masks([visual.query_mask_embeddings[0, :2]], visual, [0], 1, images["original"][:1],
                              images["resized"][:1])[0] > 0).to(torch.uint8)]
    with torch.no_grad():
        out = model(ids, mask, labels, visual=visual, gt_masks=gt, original_sizes=images["original"][:1],
                    resized_sizes=images["resized"][:1])
        expected = out.ce_loss + 2.0 * out.mask_bce_loss + 0.5 * out.mask_dice_loss + 1.0 * out.pointer_loss
        torch.testing.assert_close(out.loss, expected)
        hidden = model(ids, mask, visual=visual, return_hidden=True).hidden_states
        states = model.seg_states(hidden, model.prepare_inputs(ids, mask, None, visual))
        log_weights = model.seg_projection.log_weights(states[0], visual.tokens[0, :6].expand(2, -1, -1))
    manual = -(log_weights[0, 0] + log_weights[1, 1]) / 2
    torch.testing.assert_close(out.pointer_loss, manual, atol=1e-5, rtol=1e-5)
    mlp = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=2)  # LISA's head: no pointer term
    assert mlp.config.loss_weights.pointer == 0.0


def test_soft_mix_in_training_best_query_in_eval():
    head = QueryPointerProjection(hidden=16, query_dim=8, key_dim=4)
    torch.manual_seed(0)
    states, queries, query_masks = torch.randn(3, 16), torch.randn(3, 5, 8), torch.randn(3, 5, 6)
    weights = head.log_weights(states, queries).exp()
    head.train()
    torch.testing.assert_close(head(states, queries, query_masks), torch.einsum("nq,nqd->nd", weights, query_masks))
    assert float(weights.max(-1).values.max()) < 0.99  # a real mix, not already one-hot
    head.eval()
    best = query_masks[torch.arange(3), weights.argmax(-1)]
    torch.testing.assert_close(head(states, queries, query_masks), best)


def test_match_unordered_and_pointer_costs():
    from llm_bridge.losses import match_unordered, pointer_costs

    cost = torch.tensor([[5.0, 1.0, 9.0, 9.0],
                         [1.0, 5.0, 9.0, 9.0],
                         [9.0, 9.0, 0.0, 7.0],
                         [9.0, 9.0, 7.0, 0.0]])
    # positions 0, 1: one unordered set (swapped is cheaper); 2: its own set; 3: ordered
    assert match_unordered(cost, torch.tensor([0, 0, 1, -1])).tolist() == [1, 0, 2, 3]
    assert match_unordered(cost, torch.tensor([-1, -1, -1, -1])).tolist() == [0, 1, 2, 3]
    ious = torch.tensor([[0.9, 0.85, 0.1], [0.2, 0.3, 0.4]])  # target 1: no query reaches 0.5 (not counted)
    log_w = torch.log_softmax(torch.randn(2, 3), -1)
    costs, counted = pointer_costs(log_w, ious)
    assert counted.tolist() == [True, False] and torch.equal(costs[:, 1], torch.zeros(2))
    torch.testing.assert_close(costs[:, 0], -torch.logsumexp(log_w[:, :2], -1))


def test_an_answer_names_its_objects_in_any_order(model, images):
    """With mask sets the loss is the same whichever order the ground truth lists an answer's objects in."""
    ids, mask, labels = batch(model, [conv("Segment the two.", "They are [SEG] and [SEG].")])
    visual = images["visual"].select([0])
    glee_masks = model.decode_masks([visual.query_mask_embeddings[0, :2]], visual, [0], 1, images["original"][:1],
                                    images["resized"][:1])[0]
    gt = (glee_masks > 0).to(torch.uint8)
    sizes = {"original_sizes": images["original"][:1], "resized_sizes": images["resized"][:1]}
    losses = {}
    with torch.no_grad():
        for name, order, sets in (("given", [0, 1], None), ("swapped", [1, 0], None),
                                  ("set", [0, 1], [0, 0]), ("set swapped", [1, 0], [0, 0])):
            mask_sets = None if sets is None else [torch.tensor(sets)]
            out = model(ids, mask, labels, visual=visual, gt_masks=[gt[order]], gt_mask_sets=mask_sets, **sizes)
            losses[name] = float(out.loss)
    assert losses["set"] == pytest.approx(losses["set swapped"], rel=1e-6)
    # the matching picks one of the two orders (the one its pointer cost prefers)
    assert any(losses["set"] == pytest.approx(losses[k], rel=1e-6) for k in ("given", "swapped"))
    assert losses["given"] != pytest.approx(losses["swapped"], rel=1e-4)  # order matters without sets


def test_tower_query_evidence_is_glee_own_predictions(model, images):
    visual = images["visual"]
    glee = model.tower.glee
    with torch.no_grad():
        out = glee(images["pixel_values"], categories=model.config.prompt_categories)
    k = len(model.config.prompt_categories)
    assert visual.query_evidence.shape == (2, glee.cfg.num_queries, k + 5) == (2, 6, model.tower.evidence_dim)
    torch.testing.assert_close(visual.query_evidence[..., :k], out.pred_logits.sigmoid())
    torch.testing.assert_close(visual.query_evidence[..., k], out.pred_scores[..., 0].sigmoid())
    torch.testing.assert_close(visual.query_evidence[..., k + 1:], out.pred_boxes)
    assert torch.equal(visual.select([1]).query_evidence[0], visual.query_evidence[1])
    assert visual.to(dtype=torch.bfloat16).query_evidence.dtype == torch.bfloat16


def test_add_query_evidence_points_as_before_then_reads_the_evidence(images, tmp_path):
    bridge = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=2, seg_head="query_pointer")
    ids, mask, _ = batch(bridge, [conv("Segment the two.", "They are [SEG] and [SEG].")])
    visual = images["visual"].select([0])

    def log_weights(m, v=visual):
        with torch.no_grad():
            out = m(ids, mask, visual=v, return_hidden=True)
            states = m.seg_states(out.hidden_states, m.prepare_inputs(ids, mask, None, v))
            queries, _, evidence = m._pointer_targets([2], v, [0])
            return m.seg_projection.log_weights(states[0], queries, evidence)

    before = log_weights(bridge)
    bridge.add_query_evidence()
    head = bridge.seg_projection
    assert bridge.config.query_evidence and head.evidence_key.in_features == len(bridge.config.prompt_categories) + 5
    torch.testing.assert_close(log_weights(bridge), before, atol=0, rtol=0)  # a zero evidence key
    bridge.add_query_evidence()  # idempotent
    with torch.no_grad():
        head.evidence_key.weight.normal_()  # once trained (here: random) the head reads the evidence
    after = log_weights(bridge)
    assert not torch.allclose(after, before)
    other = dataclasses.replace(visual, query_evidence=visual.query_evidence.flip(1))  # queries' evidence swapped
    assert not torch.allclose(log_weights(bridge, other), after)
    bridge.save_pretrained(tmp_path / "bridge")
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge")
    assert loaded.config.query_evidence
    torch.testing.assert_close(log_weights(loaded), after, atol=1e-5, rtol=1e-5)
    # features without evidence: a clear error, not a shape crash
    with pytest.raises(ValueError, match="query evidence"):
        bridge.project_seg([torch.randn(1, bridge.hidden_size)], dataclasses.replace(visual, query_evidence=None), [0])
    with pytest.raises(ValueError, match="query_pointer"):
        tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=2).add_query_evidence()  # LISA's head has no keys


def test_the_seg_of_one_answer_take_distinct_queries_in_eval(model, images):
    log_w = torch.log_softmax(torch.tensor([[0.0, 1.0, 5.0, 0.0],
                                            [0.0, 0.5, 4.0, 3.0],  # also prefers 2; 3 is its next best
                                            [0.0, 0.0, 6.0, 0.0]]), -1)
    assert distinct_picks(log_w).tolist() == [2, 2, 2]  # alone, each takes its best
    assert distinct_picks(log_w, torch.tensor([0, 0, 1])).tolist() == [2, 3, 2]  # answer 0: distinct
    # the best joint assignment, not first come first served: row 0 gives 2 up (cost 4) for row 1 (cost 1.5)
    joint = torch.log_softmax(torch.tensor([[0.0, 1.0, 5.0], [0.0, 0.0, 5.0]]), -1)
    assert distinct_picks(joint, torch.tensor([7, 7])).tolist() == [1, 2]
    # through the model: two [SEG]s of one answer never decode the same query in eval mode
    visual = images["visual"]
    head = model.seg_projection
    with torch.no_grad():
        key = head.key(visual.tokens[0, 3])
    original = head.query
    head.query = _PointAt(key * 1e4)  # every state asks for query 3
    try:
        with torch.no_grad():
            emb = model.project_seg([torch.randn(2, model.hidden_size), torch.randn(1, model.hidden_size)], visual,
                                    image_rows=[0, 0])
    finally:
        head.query = original
    torch.testing.assert_close(emb[0][0], visual.query_mask_embeddings[0, 3])
    assert not torch.allclose(emb[0][1], visual.query_mask_embeddings[0, 3])
    torch.testing.assert_close(emb[1][0], visual.query_mask_embeddings[0, 3])  # another answer: its own best


def test_cover_queries_adds_the_objects_a_seg_cannot_tell_apart():
    alone = torch.log(torch.tensor([[0.30, 0.28, 0.27, 0.14, 0.01, 0.0]]))  # query 5: not a candidate (-inf)
    pick = distinct_picks(alone.clone())
    assert pick.tolist() == [0]
    assert cover_queries(alone, pick, None, 0.5).tolist() == [[0, 1, 2]]  # 0.14 < 0.5 * 0.30
    assert cover_queries(alone, pick, None, 0.95).tolist() == [[0]]  # sure enough of one object: only it
    assert cover_queries(alone, pick, None, 0.0).tolist() == [[0, 1, 2, 3, 4]]  # every candidate
    # one answer, two [SEG]s: each leftover query goes to the [SEG] that attends to it most, if near its top
    answer = torch.log(torch.tensor([[0.40, 0.35, 0.05, 0.19],
                                     [0.10, 0.30, 0.35, 0.25]]))
    picks = distinct_picks(answer.clone(), torch.tensor([0, 0]))
    assert picks.tolist() == [0, 2]
    assert cover_queries(answer, picks, torch.tensor([0, 0]), 0.5).tolist() == [[0, 1], [2, 3]]
    # rows padded with their own pick; separate answers cover on their own (both may cover query 1)
    apart = cover_queries(answer, torch.tensor([0, 2]), torch.tensor([0, 1]), 0.5)
    assert apart.tolist() == [[0, 1, 0], [2, 1, 3]]
    assert cover_queries(answer[:0], picks[:0], None, 0.5).shape == (0, 1)
    # more [SEG]s than objects: the third is pushed off the two it means onto a far weaker one, so it repeats its top
    surplus = torch.log(torch.tensor([[0.5, 0.45, 0.05], [0.45, 0.5, 0.05], [0.48, 0.47, 0.05]]))
    forced = distinct_picks(surplus.clone(), torch.tensor([0, 0, 0]))
    assert sorted(forced.tolist()) == [0, 1, 2] and int(forced[2]) == 2
    assert cover_queries(surplus, forced, torch.tensor([0, 0, 0]), 0.5).tolist() == [[0], [1], [0]]
    assert cover_queries(surplus, forced, torch.tensor([0, 0, 0]), 0.05).tolist() == [[0], [1], [2]]


def test_a_covering_seg_decodes_the_union_of_its_queries_masks(model, images):
    visual = images["visual"].select([0])
    head = model.seg_projection
    fixed = torch.log(torch.tensor([[0.05, 0.4, 0.05, 0.35, 0.1, 0.05]]))  # over the 6 object queries
    original_log_weights, original_ratio = head.log_weights, model.config.pointer_cover_ratio
    head.log_weights = lambda states, queries, evidence=None: fixed.expand(states.shape[0], -1)
    try:
        with torch.no_grad():
            single = model.project_seg([torch.randn(1, model.hidden_size)], visual, [0])
            model.set_pointer_cover_ratio(0.5)
            covering = model.project_seg([torch.randn(1, model.hidden_size)], visual, [0])
            ids, mask, _ = batch(model, [conv("Segment the pair.", "[SEG].")])
            forward = model(ids, mask, visual=visual).pred_masks[0]
    finally:
        head.log_weights = original_log_weights
        model.set_pointer_cover_ratio(original_ratio)
    torch.testing.assert_close(single[0][0], visual.query_mask_embeddings[0, 1])
    assert covering[0].shape == (1, 2, model.mask_dim)
    torch.testing.assert_close(covering[0][0], visual.query_mask_embeddings[0, [1, 3]])
    with torch.no_grad():
        union = model.decode_masks(covering, visual, [0])[0]
        each = model.decode_masks([visual.query_mask_embeddings[0, [1, 3]]], visual, [0])[0]
    torch.testing.assert_close(union[0], each.amax(0))
    torch.testing.assert_close(forward[0], union[0])
    assert not torch.equal(union[0], each[0]) and not torch.equal(union[0], each[1])


def test_pointer_cover_ratio_comes_from_the_config_and_is_checked(tmp_path):
    covering = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0, seg_head="query_pointer",
                           pointer_cover_ratio=0.4)
    assert covering.config.pointer_cover_ratio == 0.4
    covering.save_pretrained(tmp_path / "bridge")
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge").eval()
    assert loaded.config.pointer_cover_ratio == 0.4
    visual = random_image_inputs(loaded)["visual"]
    with torch.no_grad():  # the loaded ratio is what decoding uses: K covered queries per [SEG]
        assert loaded.project_seg([torch.randn(1, loaded.hidden_size)], visual, [0])[0].dim() == 3
        loaded.config.pointer_cover_ratio = 0.0  # read at each call: setting the config is enough
        assert loaded.project_seg([torch.randn(1, loaded.hidden_size)], visual, [0])[0].dim() == 2
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        BridgeConfig(seg_head="query_pointer", pointer_cover_ratio=1.5)
    with pytest.raises(ValueError, match="needs seg_head='query_pointer'"):
        BridgeConfig(pointer_cover_ratio=0.5)
