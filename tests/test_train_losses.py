"""Matcher against brute force, every loss term against a hand-computed value, DN query layout."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest
import torch

import glee  # noqa: F401  (torchvision shim first)
from train.denoising import dn_attention_mask, prepare_denoising
from train.losses import (
    DenoisingMeta,
    LossConfig,
    SetCriterion,
    dice_loss,
    distillation_loss,
    loss_boxes,
    loss_conf,
    loss_labels,
    loss_masks,
    sigmoid_ce_loss,
    track_loss,
    uncertain_point_coords,
)
from train.matcher import HungarianMatcher, focal_class_cost, pairwise_dice, pairwise_sigmoid_ce, solve_assignment


# ---------------------------------------------------------------------------------------------- matcher
def _brute_force(cost: torch.Tensor) -> float:
    q, n = cost.shape
    best = math.inf
    if q >= n:
        for rows in itertools.permutations(range(q), n):
            best = min(best, sum(float(cost[r, c]) for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(n), q):
            best = min(best, sum(float(cost[r, c]) for r, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("shape", [(6, 3), (5, 5), (3, 5), (7, 1)])
def test_assignment_matches_brute_force(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(shape[0] * 10 + shape[1])
    for _ in range(20):
        cost = torch.randn(*shape, generator=gen) * 3
        rows, cols = solve_assignment(cost)
        assert len(rows) == min(shape) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force(cost), abs=1e-5)


def test_assignment_handles_inf_and_rejects_nan() -> None:
    cost = torch.tensor([[0.0, math.inf], [1.0, 2.0], [math.inf, 0.5]])
    rows, cols = solve_assignment(cost)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (2, 1)]
    with pytest.raises(FloatingPointError, match="NaN"):
        solve_assignment(torch.tensor([[float("nan"), 1.0]]))


def test_matcher_cost_terms_and_full_matching_brute_force() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.tensor([2, 0])
    p = logits.sigmoid()
    # focal class cost by hand at one entry
    pos = 0.25 * (1 - p[1, 2]) ** 2 * -torch.log(p[1, 2] + 1e-6)
    manual = pos - 0.75 * p[1, 2] ** 2 * -torch.log(1 - p[1, 2] + 1e-6)
    assert focal_class_cost(logits, labels)[1, 0] == pytest.approx(float(manual), rel=1e-5)
    # pairwise mask costs by hand
    x = torch.tensor([[0.0, 2.0, -1.0]])
    t = torch.tensor([[1.0, 0.0, 1.0]])
    bce = (math.log(2) + (2 + math.log1p(math.exp(-2))) + (1 + math.log1p(math.exp(-1)))) / 3
    assert pairwise_sigmoid_ce(x, t)[0, 0] == pytest.approx(bce, rel=1e-5)
    s = x.sigmoid()[0]
    dice = 1 - (2 * (s[0] + s[2]) + 1) / (s.sum() + 2 + 1)
    assert pairwise_dice(x, t)[0, 0] == pytest.approx(float(dice), rel=1e-5)
    # whole matcher = brute force on its own cost matrix; masks included
    boxes = torch.rand(1, 5, 4) * 0.5 + 0.25
    masks = torch.randn(1, 5, 8, 8)
    target = {"labels": labels, "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.6, 0.3, 0.1]]),
              "masks": torch.rand(2, 32, 32) > 0.5}
    matcher = HungarianMatcher(num_points=64)
    gen = torch.Generator().manual_seed(1)
    cost = matcher.cost_matrix(logits, boxes[0], masks[0], target, True, torch.Generator().manual_seed(1))
    (rows, cols), = matcher({"pred_logits": logits[None], "pred_boxes": boxes, "pred_masks": masks}, [target],
                            True, gen)
    assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force(cost), abs=1e-5)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "masks": None}
    (r0, c0), = matcher({"pred_logits": logits[None], "pred_boxes": boxes}, [empty], False)
    assert len(r0) == len(c0) == 0


# ---------------------------------------------------------------------------------------------- losses
def _focal(x: float, t: float) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    pt = p * t + (1 - p) * (1 - t)
    return (0.25 * t + 0.75 * (1 - t)) * ce * (1 - pt) ** 2


def test_loss_labels_and_conf_by_hand() -> None:
    logits = torch.tensor([[[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]])  # B=1, Q=3, K=2
    targets = [{"labels": torch.tensor([1])}]
    indices = [(torch.tensor([2]), torch.tensor([0]))]
    onehot = [[0, 0], [0, 0], [0, 1]]
    expected = sum(_focal(float(logits[0, q, k]), onehot[q][k]) for q in range(3) for k in range(2)) / 2.0
    assert float(loss_labels({"pred_logits": logits}, targets, indices, 2.0)) == pytest.approx(expected, rel=1e-5)
    scores = torch.tensor([[[0.3], [-0.7], [2.0]]])
    expected_conf = (_focal(0.3, 0) + _focal(-0.7, 0) + _focal(2.0, 1)) / 3  # mean over queries, sum over images
    assert float(loss_conf({"pred_scores": scores}, indices)) == pytest.approx(expected_conf, rel=1e-5)


def test_loss_boxes_by_hand() -> None:
    pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.4]]])
    tgt = torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    l1, giou = loss_boxes({"pred_boxes": pred}, [{"boxes": tgt}], [(torch.tensor([0]), torch.tensor([0]))], 1.0)
    assert float(l1) == pytest.approx(0.2, abs=1e-6)
    # pred box [0.4,0.4,0.6,0.6] inside target [0.3,0.4,0.7,0.6]: IoU 0.04/0.08 = 0.5, enclosing = union -> GIoU 0.5
    assert float(giou) == pytest.approx(0.5, abs=1e-6)
    # predictions outside [0, 1] are clamped first: cx 1.2 -> 1.0
    l1c, _ = loss_boxes({"pred_boxes": torch.tensor([[[1.2, 0.5, 0.4, 0.2]]])}, [{"boxes": tgt}],
                        [(torch.tensor([0]), torch.tensor([0]))], 2.0)
    assert float(l1c) == pytest.approx(0.5 / 2, abs=1e-6)


def test_point_losses_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / 4
    assert float(sigmoid_ce_loss(logits, labels, 4.0)) == pytest.approx(float(bce), rel=1e-6)
    p = logits.sigmoid()
    d0 = 1 - (2 * (p[0, 0] + p[0, 2]) + 1) / (p[0].sum() + 2 + 1)
    d1 = 1 - (2 * (p[1, 0] + p[1, 1]) + 1) / (p[1].sum() + 2 + 1)
    assert float(dice_loss(logits, labels, 2.0)) == pytest.approx(float((d0 + d1) / 2), rel=1e-6)


def test_mask_loss_constant_logits_and_importance_sampling() -> None:
    torch.manual_seed(0)
    cfg = LossConfig(num_points=500)
    # logit 0 everywhere: BCE = log 2 at every point whatever the target; empty target: dice = 1 - 1 / (P / 2 + 1)
    pred = {"pred_masks": torch.zeros(1, 2, 8, 8)}
    for fill, num_masks in ((True, 1.0), (False, 2.0)):
        tgt = [{"masks": torch.full((1, 32, 32), fill, dtype=torch.bool)}]
        bce, dice = loss_masks(pred, tgt, [(torch.tensor([1]), torch.tensor([0]))], num_masks, cfg)
        assert float(bce) == pytest.approx(math.log(2) / num_masks, rel=1e-5)
    assert float(dice) == pytest.approx((1 - 1 / 251) / 2, rel=1e-5)
    # 75% of the points are the most uncertain ones: near the zero crossing of a left-right logit ramp
    ramp = torch.linspace(-8, 8, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    coords = uncertain_point_coords(ramp, 400, 3.0, 0.75)
    assert coords.shape == (1, 400, 2)
    important = coords[0, :300, 0]
    # (a few points within half a pixel of the top/bottom border are "uncertain" too: zero padding there)
    assert float(((important - 0.5).abs() < 0.15).float().mean()) > 0.95
    assert float(((coords[0, 300:, 0] - 0.5).abs() > 0.25).float().mean()) > 0.3  # the rest is uniform


def test_track_loss_by_hand() -> None:
    # one clip of 2 frames, Q = 2, C = 2; frame 0 matches query 0 -> id 7; frame 1 matches query 1 -> id 7
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [2.0, 0.0]]])
    targets = [{"inst_id": torch.tensor([7])}, {"inst_id": torch.tensor([7])}]
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([0]))]
    rng = random.Random(0)
    loss = track_loss(emb, targets, indices, 2, num_negatives=2, rng=rng)
    # reference of frame 0 = matched q0 (id 7) + negative q1 (id -2); key = frame-1 q1 = (2, 0)
    s_pos, s_neg = 2.0, 0.0
    assert float(loss) == pytest.approx(math.log(1 + math.exp(s_neg - s_pos)), rel=1e-6)


def test_distillation_loss_valid_tokens_only() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert float(distillation_loss(s, t, torch.tensor([[1, 1, 0]]))) == pytest.approx((1 + 1 + 9 + 9) / 4)


# ---------------------------------------------------------------------------------------------- DN + criterion
def test_denoising_layout_and_mask() -> None:
    table = torch.nn.Embedding(80, 4)
    targets = [{"labels": torch.tensor([3, 5]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]])},
               {"labels": torch.tensor([7]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.2]])}]
    torch.manual_seed(0)
    dn, meta = prepare_denoising(targets, table, 80, num_queries=3, dn_num=6, noise_scale=0.0)
    assert meta.scalar == 3 and meta.single_pad == 2 and dn.content.shape == (2, 6, 4)
    # without noise the content is the label embedding, the box the inverse sigmoid; image 1 slot 1 is padding
    assert torch.equal(dn.content[0, 2], table.weight[3]) and torch.equal(dn.content[1, 4], table.weight[7])
    assert torch.equal(dn.content[1, 1], torch.zeros(4)) and torch.equal(dn.boxes_unsigmoid[1, 1], torch.zeros(4))
    assert torch.allclose(dn.boxes_unsigmoid[0, 3].sigmoid(), targets[0]["boxes"][1], atol=1e-5)
    src, tgt = meta.indices()[0]
    assert src.tolist() == [0, 1, 2, 3, 4, 5] and tgt.tolist() == [0, 1, 0, 1, 0, 1]
    mask = dn_attention_mask(3, 2, 3)
    assert mask.shape == (9, 9)
    assert mask[6:, :6].all() and not mask[6:, 6:].any() and not mask[:6, 6:].any()  # matching can't see DN
    assert not mask[0, 1] and mask[0, 2] and mask[3, 0] and not mask[4, 5]  # groups are isolated
    assert prepare_denoising([{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}],
                             table, 80, 3) is None
    with pytest.raises(ValueError, match="label table"):
        prepare_denoising([{"labels": torch.tensor([90]), "boxes": torch.rand(1, 4)}], table, 80, 3)


def test_criterion_keys_weights_and_no_mask_tasks() -> None:
    torch.manual_seed(0)
    b, q, k = 2, 4, 3

    def pred_set(masks: bool = True) -> dict:
        return {"pred_logits": torch.randn(b, q, k, requires_grad=True), "pred_scores": torch.randn(b, q, 1),
                "pred_boxes": torch.rand(b, q, 4) * 0.5 + 0.25,
                "pred_masks": torch.randn(b, q, 8, 8) if masks else None}

    final = pred_set()
    out = SimpleNamespace(
        pred_logits=final["pred_logits"], pred_scores=final["pred_scores"], pred_boxes=final["pred_boxes"],
        pred_masks=final["pred_masks"], aux_outputs=[pred_set(), pred_set()], interm_outputs=pred_set(),
        query_embeddings=torch.randn(b, q, 8),
        extra={"dn_outputs": {"sets": [pred_set(False) for _ in range(3)]}},
    )
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.rand(2, 4) * 0.3 + 0.3,
                "masks": torch.rand(2, 32, 32) > 0.5} for _ in range(b)]
    crit = SetCriterion(LossConfig(num_points=64))
    meta = DenoisingMeta(scalar=2, single_pad=2, num_targets=[2, 2])
    losses = crit(out, targets, "coco", dn_meta=meta)
    expected = {f"{n}{s}" for n in ("loss_ce", "loss_conf", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
                for s in ("", "_0", "_1", "_interm")}
    expected |= {f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("_dn", "_dn_0", "_dn_1")}
    assert set(losses) == expected | {"track_loss"}
    assert float(losses["loss_mask"]) > 0 and float(losses["loss_conf"]) == 0.0  # no prompt batch
    losses["dist_loss"] = torch.tensor(0.5)
    total, weighted = crit.weighted_total(losses, "coco")
    assert float(weighted["loss_giou_dn_1"]) == pytest.approx(2 * float(losses["loss_giou_dn_1"]))
    assert float(weighted["loss_ce_interm"].detach()) == pytest.approx(4 * float(losses["loss_ce_interm"].detach()))
    assert float(weighted["dist_loss"]) == pytest.approx(2.0)
    assert float(total) == pytest.approx(sum(float(v) for v in weighted.values()), rel=1e-5)
    total.backward()
    assert final["pred_logits"].grad is not None
    # box-only task: no mask terms, GRIT: box terms weighted 0
    box_only = crit(out, [{**t, "masks": None} for t in targets], "obj365")
    assert float(box_only["loss_mask"]) == 0.0 and float(box_only["loss_dice"]) == 0.0
    assert float(box_only["loss_ce_dn"]) == 0.0  # no DN meta -> zero DN terms with fixed keys
    _, grit = crit.weighted_total(box_only, "grit")
    assert float(grit["loss_bbox"]) == 0.0 and float(grit["loss_ce"]) > 0
    assert crit.weight("loss_dice_interm") == 5.0 and crit.weight("track_loss") == 2.0
