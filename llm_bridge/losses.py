"""LISA's training losses: causal-LM cross-entropy, per-mask BCE and DICE, weighted 1 / 2 / 0.5.

Mask losses are per-mask means (BCE: mean over pixels; DICE with LISA's 1/1000 scale and eps 1e-6), averaged
over every mask of the batch.  Ground-truth pixels equal to ``ignore_value`` (255, ReasonSeg's "ignore"
polygons) are left out of both mask losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
IGNORE_VALUE = 255
DICE_SCALE = 1000.0
DICE_EPS = 1e-6


@dataclass
class LossWeights:
    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    pointer: float = 0.0  # query_pointer head only: cross-entropy of its attention against the best GLEE query


def causal_lm_loss(hidden: Tensor, labels: Tensor, lm_head: torch.nn.Module) -> Tensor:
    """Mean next-token cross-entropy over supervised positions.

    Only the hidden states of supervised positions go through ``lm_head`` (a [T, V] logits tensor instead of
    [B, L, V]), which matters for large vocabularies.

    Args:
        hidden: [B, L, H] last-layer hidden states.
        labels: [B, L] target ids, ``IGNORE_INDEX`` where unsupervised (not yet shifted).
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    if not bool(keep.any()):
        return hidden.sum() * 0.0  # keeps the graph (and DeepSpeed's gradient hooks) intact
    logits = lm_head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, target[keep])


def _valid_and_target(gt: Tensor, ignore_value: int) -> tuple[Tensor, Tensor]:
    valid = gt != ignore_value
    target = (gt == 1).float()
    return valid.float(), target


def mask_bce_loss(logits: Tensor, gt: Tensor, ignore_value: int = IGNORE_VALUE) -> Tensor:
    """Per-mask mean BCE, summed over masks.  logits/gt: [n, H, W]; gt values 0, 1 (and ``ignore_value``)."""
    valid, target = _valid_and_target(gt, ignore_value)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * valid
    return (loss.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)).sum()


def mask_dice_loss(logits: Tensor, gt: Tensor, ignore_value: int = IGNORE_VALUE) -> Tensor:
    """LISA's soft DICE per mask (inputs and targets scaled by 1/1000, eps 1e-6), summed over masks."""
    valid, target = _valid_and_target(gt, ignore_value)
    prob = (torch.sigmoid(logits.float()) * valid).flatten(1)
    target = (target * valid).flatten(1)
    # LISA scales once: 2 * sum(p / s * t) over sum(p / s) + sum(t / s).  Scaling both p and t inside the
    # product would shrink the numerator by another 1/s and pin the loss at 1 (no gradient).
    numerator = 2 * (prob / DICE_SCALE * target).sum(-1)
    denominator = (prob / DICE_SCALE).sum(-1) + (target / DICE_SCALE).sum(-1)
    return (1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)).sum()


def mask_losses(pred: list[Tensor], gt: list[Tensor], ignore_value: int = IGNORE_VALUE) -> tuple[Tensor, Tensor, int]:
    """(mean BCE, mean DICE, number of masks) over lists of per-image [n_i, H_i, W_i] logits / targets."""
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predicted mask sets for {len(gt)} ground-truth sets")
    total = sum(int(g.shape[0]) for g in gt)
    device = pred[0].device if pred else torch.device("cpu")
    bce = torch.zeros((), device=device)
    dice = torch.zeros((), device=device)
    for i, (p, g) in enumerate(zip(pred, gt)):
        if p.shape != g.shape:
            raise ValueError(f"image {i}: predicted masks {tuple(p.shape)} vs ground truth {tuple(g.shape)}")
        if g.shape[0] == 0:
            continue
        g = g.to(p.device)
        bce = bce + mask_bce_loss(p, g, ignore_value)
        dice = dice + mask_dice_loss(p, g, ignore_value)
    denom = max(total, 1)
    return bce / denom, dice / denom, total


def query_mask_ious(query_masks: Tensor, gt: Tensor, ignore_value: int = IGNORE_VALUE) -> Tensor:
    """IoU of every GLEE query mask with every ground-truth mask of one image, ignore pixels left out.

    Args:
        query_masks: [Q, H, W] query mask logits (> 0 is foreground).
        gt: [n, H, W] 0/1 targets, ``ignore_value`` where unlabelled.
    Returns:
        [n, Q] IoU.
    """
    pred = (query_masks > 0).flatten(1).float()  # [Q, HW]
    valid = (gt != ignore_value).flatten(1).float()  # [n, HW]
    target = (gt == 1).flatten(1).float()  # [n, HW]
    inter = target @ pred.T
    union = target.sum(1, keepdim=True) + valid @ pred.T - inter
    return inter / union.clamp(min=1.0)


def pointer_costs(log_weights: Tensor, ious: Tensor, min_iou: float = 0.5,
                  margin: float = 0.1) -> tuple[Tensor, Tensor]:
    """Cost of pointing each [SEG] at each target: -log of its attention on the queries that cover the target.

    GLEE often has several near-duplicate queries of one object: all queries within ``margin`` IoU of the best
    count as right.  A target that no query covers with IoU >= ``min_iou`` (GLEE missed the object) is not
    counted (its column is 0); queries with log-attention -inf in every row (a head that points among candidate
    queries only) do not cover anything.

    Args:
        log_weights: [n, Q] log-attention of each [SEG] (log-softmax over the queries).
        ious: [t, Q] IoU of each query's mask with each target (:func:`query_mask_ious`).
    Returns:
        cost [n, t] and counted [t] (bool).
    """
    # a head that points among some queries only (-inf elsewhere) can reach a target only through those
    if log_weights.shape[0]:
        ious = ious * torch.isfinite(log_weights).any(0).to(ious.dtype)
    best = ious.max(-1, keepdim=True).values  # [t, 1]
    counted = best[:, 0] >= min_iou
    right = ious >= (best - margin).clamp(min=min_iou)  # [t, Q]
    picked = log_weights[:, None, :].masked_fill(~right[None], float("-inf"))  # [n, t, Q]
    cost = -torch.logsumexp(picked, dim=-1)
    return torch.where(counted[None], cost, torch.zeros_like(cost)), counted


def pointer_loss(log_weights: Tensor, ious: Tensor, min_iou: float = 0.5, margin: float = 0.1) -> tuple[Tensor, int]:
    """Cross-entropy of the pointer's attention against the queries that best cover each [SEG]'s target.

    A mask loss alone reaches the attention through a softmax that saturates once the head points at a wrong
    object (its gradient towards the right query vanishes); this term keeps pulling towards the right one.

    Args:
        log_weights: [n, Q] log-attention of each [SEG]; ious: [n, Q] IoU of each query with that [SEG]'s target.
    Returns:
        (summed loss over the counted [SEG]s, how many were counted); see :func:`pointer_costs`.
    """
    cost, counted = pointer_costs(log_weights, ious, min_iou, margin)
    return cost.diagonal()[counted].sum(), int(counted.sum())


def match_unordered(cost: Tensor, sets: Tensor) -> Tensor:
    """Order of the targets that minimises the summed cost within each unordered set.

    Args:
        cost: [n, n] cost of giving [SEG] i target j (targets in their given order).
        sets: [n] set id of each position (>= 0: positions with one id are an unordered set, e.g. the objects of
            one answer, matched by ``scipy.optimize.linear_sum_assignment``; -1: the given order stands).
    Returns:
        [n] long: position i gets target ``order[i]``.
    """
    from scipy.optimize import linear_sum_assignment

    order = torch.arange(cost.shape[0])
    for set_id in sorted({int(v) for v in sets.tolist() if int(v) >= 0}):
        positions = (sets == set_id).nonzero().flatten()
        block = cost[positions][:, positions].detach().float().cpu().numpy()
        rows, cols = linear_sum_assignment(block)
        order[positions[torch.as_tensor(rows)]] = positions[torch.as_tensor(cols)]
    return order


def matched_pointer_loss(log_weights: Tensor, ious: Tensor, sets: Tensor | None = None) -> tuple[Tensor, int, Tensor]:
    """:func:`pointer_loss` after putting each unordered set of targets in the order of the [SEG]s that point
    at them best (:func:`match_unordered` on :func:`pointer_costs`).

    Args:
        log_weights: [n, Q] log-attention of n [SEG]s; ious: [n, Q] IoU of each query with the n targets;
        sets: [n] set id of each target (-1 or None: the given order stands).
    Returns:
        (summed loss, counted [SEG]s, order [n]: target ``order[i]`` went to [SEG] i).
    """
    order = torch.arange(ious.shape[0])
    if sets is not None and bool((sets >= 0).any()):
        order = match_unordered(pointer_costs(log_weights, ious)[0], sets.cpu())
        ious = ious[order.to(ious.device)]
    loss, count = pointer_loss(log_weights, ious)
    return loss, count, order
