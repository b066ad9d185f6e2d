"""The set-aware [SEG] pointer (BridgeConfig.pointer_context_layers) and GLEE evidence on other names."""

from __future__ import annotations

import pytest
import torch

from glee.box_ops import box_cxcywh_to_xyxy, box_iou
from llm_bridge.losses import matched_pointer_loss, pointer_costs
from llm_bridge.model import (
    BridgeConfig,
    ObjectSetPointerProjection,
    QueryPointerProjection,
    ReasonSegModel,
    distinct_candidates,
    distinct_picks,
)
from llm_bridge.pointer_fit import fit_pointer_head, main, pick_accuracy
from llm_bridge.testing import random_image_inputs, tiny_bridge, tiny_llm_dir, write_lisa_fixture
from llm_bridge.tower import GleeFeatureExtractor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_box_iou_and_distinct_candidates_are_greedy_nms_by_confidence():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1],
                          [0.5, 0.5, 0.1, 0.1]])
    corners = box_cxcywh_to_xyxy(boxes)
    iou = box_iou(corners, corners)[0]
    torch.testing.assert_close(iou.diagonal(), torch.ones(5))
    torch.testing.assert_close(iou[0, 1], torch.tensor(0.19 * 0.2 / (0.08 - 0.19 * 0.2)))
    assert float(iou[2, 3]) == pytest.approx(0.25) and float(iou[0, 2]) == 0.0
    scores = torch.tensor([0.8, 0.9, 0.5, 0.6, 0.05])
    # 1 beats its duplicate 0; 3 and 2 overlap by 0.25 only: both kept; 4 is not confident
    assert distinct_candidates(scores, boxes).tolist() == [False, True, True, True, False]
    assert distinct_candidates(scores, boxes, max_overlap=0.2).tolist() == [False, True, False, True, False]
    # leading batch dimensions: one IoU matrix per row
    torch.testing.assert_close(box_iou(corners.expand(2, -1, -1), corners[:2].expand(2, -1, -1))[0],
                               iou[:, :2].expand(2, -1, -1))
    # nothing confident: the most confident query is still a candidate; rows are independent
    batched = distinct_candidates(torch.stack([scores, scores * 0.01]), boxes.expand(2, -1, -1))
    assert batched[0].tolist() == [False, True, True, True, False]
    assert batched[1].tolist() == [False, True, False, False, False]


def test_pointer_costs_skip_targets_only_non_candidates_cover():
    log_w = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), -1).masked_fill(torch.tensor([[False, True, False]]),
                                                                                float("-inf"))
    ious = torch.tensor([[0.0, 0.9, 0.0], [0.8, 0.0, 0.0]])  # target 0: only query 1 (not a candidate) covers it
    cost, counted = pointer_costs(log_w.expand(2, -1), ious)
    assert counted.tolist() == [False, True] and torch.isfinite(cost).all()
    loss, count, _ = matched_pointer_loss(log_w.expand(2, -1), ious, torch.tensor([0, 0]))
    assert count == 1 and torch.isfinite(loss)
    assert distinct_picks(log_w.expand(2, -1).clone(), torch.tensor([0, 0])).tolist() in ([0, 2], [2, 0])


def _odd_colour_examples(seed: int, count: int, hidden: int = 8, queries: int = 8, channels: int = 6) -> list[dict]:
    """"The only object of its colour": five objects (two colour pairs and one odd colour, four colours one-hot
    in the evidence) and three empty queries.  Which colour is odd changes per image, so no key that sees one
    query alone can rank it; the query embeddings are noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        colours = torch.randperm(4, generator=g)
        paint = torch.cat([colours[:1], colours[1:3].repeat_interleave(2)])  # odd one first, then two pairs
        slots = torch.randperm(queries, generator=g)[:5]  # which queries hold the five objects
        place = torch.randperm(5, generator=g).tolist()  # where each object is (left to right)
        evidence = torch.zeros(queries, 4 + 5)
        evidence[:, 4] = 0.01  # empty queries: not confident
        evidence[:, 5:] = torch.tensor([0.5, 0.5, 0.05, 0.05])
        for k, (q, c) in enumerate(zip(slots.tolist(), paint.tolist())):
            evidence[q, c] = 1.0
            evidence[q, 4] = 0.9
            evidence[q, 5:] = torch.tensor([0.1 + 0.18 * place[k], 0.5, 0.1, 0.1])  # separate boxes
        ious = torch.zeros(1, queries)
        ious[0, int(slots[0])] = 0.9
        out.append({"states": torch.ones(1, hidden), "queries": 0.1 * torch.randn(queries, channels, generator=g),
                    "evidence": evidence, "ious": ious, "sets": torch.tensor([-1])})
    return out


def test_the_set_pointer_learns_a_question_about_the_whole_scene():
    torch.manual_seed(0)
    train, val = _odd_colour_examples(0, 1024), _odd_colour_examples(1, 100)
    head = ObjectSetPointerProjection(8, 6, evidence_dim=9, context_layers=1, key_dim=32, dropout=0.0)
    history = fit_pointer_head(head, train, epochs=20, lr=3e-3, batch_size=16, val_examples=val,
                               schedule="onecycle", log=lambda *a: None)
    assert history[-1]["val_pick_accuracy"] > 0.9
    torch.manual_seed(0)
    alone = QueryPointerProjection(8, 6, key_dim=32, evidence_dim=9)  # one key per query: about chance (1/5)
    fit_pointer_head(alone, train, epochs=20, lr=3e-3, batch_size=16, log=lambda *a: None)
    assert pick_accuracy(alone, val) < 0.5


def test_the_set_pointer_points_among_candidates_and_ignores_query_order():
    torch.manual_seed(0)
    head = ObjectSetPointerProjection(8, 6, evidence_dim=9, context_layers=1, key_dim=16).eval()
    ex = _odd_colour_examples(2, 1)[0]
    states, queries, evidence = ex["states"], ex["queries"][None], ex["evidence"][None]
    log_w = head.log_weights(states, queries, evidence)
    candidates = evidence[0, :, 4] > 0.5
    assert torch.isinf(log_w[0, ~candidates]).all() and torch.isfinite(log_w[0, candidates]).all()
    torch.testing.assert_close(log_w[0, candidates].exp().sum(), torch.tensor(1.0))
    perm = torch.randperm(8)
    torch.testing.assert_close(head.log_weights(states, queries[:, perm], evidence[:, perm]), log_w[:, perm])
    with pytest.raises(ValueError, match="query evidence"):
        head.log_weights(states, queries, None)
    with pytest.raises(ValueError, match="evidence"):
        ObjectSetPointerProjection(8, 6, evidence_dim=0)


@pytest.fixture(scope="module")
def set_bridge():
    return tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0, seg_head="query_pointer", query_evidence=True,
                       pointer_context_layers=1, evidence_categories=["red", "star"])


def test_a_set_pointer_bridge_decodes_saves_and_loads(set_bridge, tmp_path):
    images = random_image_inputs(set_bridge)
    assert isinstance(set_bridge.seg_projection, ObjectSetPointerProjection)
    states = [torch.randn(2, set_bridge.hidden_size), torch.randn(1, set_bridge.hidden_size)]
    with torch.no_grad():
        embeddings = set_bridge.project_seg(states, images["visual"], [0, 1])
    assert [tuple(e.shape) for e in embeddings] == [(2, set_bridge.mask_dim), (1, set_bridge.mask_dim)]
    set_bridge.save_pretrained(tmp_path / "bridge")
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge")
    assert loaded.config.pointer_context_layers == 1 and loaded.config.evidence_categories == ["red", "star"]
    with torch.no_grad():
        again = loaded.project_seg(states, loaded.encode_images(images["pixel_values"]), [0, 1])
    for a, b in zip(again, embeddings):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="query_evidence=True"):
        BridgeConfig(seg_head="query_pointer", pointer_context_layers=2)
    with pytest.raises(ValueError, match=">= 0"):
        BridgeConfig(seg_head="query_pointer", query_evidence=True, pointer_context_layers=-1)


def test_evidence_categories_read_glee_class_head_on_other_names(set_bridge):
    tower = set_bridge.tower
    images = random_image_inputs(set_bridge)
    evidence = images["visual"].query_evidence
    assert evidence.shape[-1] == tower.evidence_dim == 2 + 5
    glee = tower.glee
    prompt = set_bridge.config.prompt_categories
    with torch.no_grad():
        prompted = glee(images["pixel_values"], categories=prompt)
    # GLEE's class head on the names = its own logits had they been the prompt, on the prompt's queries
    head = glee.predictor
    logits = head.decoder_norm(prompted.query_embeddings) @ head.category_embed @ \
        glee.encode_categories(["red", "star"]).class_embeddings.t()
    torch.testing.assert_close(evidence[..., :2], logits.sigmoid())
    torch.testing.assert_close(evidence[..., 2], prompted.pred_scores[..., 0].sigmoid())
    try:
        for names in (prompt, None):  # the prompt's own names, or none: GLEE's own class probabilities
            set_bridge.set_evidence_categories(names)
            with torch.no_grad():
                back = set_bridge.encode_images(images["pixel_values"]).query_evidence
            torch.testing.assert_close(back[..., :len(prompt)], prompted.pred_logits.sigmoid())
    finally:
        set_bridge.set_evidence_categories(["red", "star"])
    with pytest.raises(ValueError, match="evidence_categories"):
        GleeFeatureExtractor(glee, evidence_categories=[])


def test_pointer_fit_cli_builds_a_set_pointer_on_word_evidence(set_bridge, tmp_path, capsys):
    data = write_lisa_fixture(tmp_path / "lisa", n_images=1) / "reason_seg/ReasonSeg"
    plain = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0, seg_head="query_pointer")
    plain.save_pretrained(tmp_path / "plain")
    tower = plain.tower
    cache = _odd_colour_examples(0, 48, plain.hidden_size, tower.num_queries, tower.hidden_size)
    for ex in cache:  # "red,star": 2 class probabilities + confidence + box
        ex["evidence"] = torch.cat([ex["evidence"][:, :2], ex["evidence"][:, 4:]], -1)
    torch.save(cache, tmp_path / "cache.pt")
    args = ["--bridge", str(tmp_path / "plain"), "--output-dir", str(tmp_path / "fit"), "--reason-seg-data",
            f"{data}|train", "--epochs", "2", "--cache", str(tmp_path / "cache.pt"), "--evidence-categories",
            "red,star"]
    with pytest.raises(SystemExit, match="--fresh-head or --context-layers"):
        main(args)
    assert main(args + ["--context-layers", "1", "--schedule", "onecycle"]) == 0
    assert "48 cached answers read" in capsys.readouterr().out
    fitted = ReasonSegModel.from_pretrained(tmp_path / "fit")
    assert isinstance(fitted.seg_projection, ObjectSetPointerProjection)
    assert fitted.config.query_evidence and fitted.config.pointer_context_layers == 1
    assert fitted.config.evidence_categories == ["red", "star"] and fitted.tower.evidence_dim == 7
    refit = ["--bridge", str(tmp_path / "fit"), "--output-dir", str(tmp_path / "refit"), "--reason-seg-data",
             f"{data}|train", "--epochs", "1", "--cache", str(tmp_path / "cache.pt"), "--fresh-head",
             "--cover-ratio", "0.5"]
    assert main(refit) == 0  # a fresh head of the kind the bridge has: set-aware
    refitted = ReasonSegModel.from_pretrained(tmp_path / "refit")
    assert isinstance(refitted.seg_projection, ObjectSetPointerProjection)
    assert refitted.config.pointer_cover_ratio == 0.5
    with pytest.raises(ValueError, match="schedule"):
        fit_pointer_head(fitted.seg_projection, cache, schedule="cosine")
