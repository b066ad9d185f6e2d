"""Postprocessing: query selection, scores, boxes and masks back to image coordinates.

Defaults equal the official demo (``app.py`` ``segment_image``):

1. class probability per query = max over classes of ``sigmoid(pred_logits)``;
2. top-k queries by that probability (sorted), then keep those with probability > threshold;
3. label = argmax over classes;
4. boxes: (cx, cy, w, h) -> (x1, y1, x2, y2), times the padded size, divided by the resized size, clamped to
   [0, 1], times the original size;
5. masks: kept mask logits upsampled (bilinear, ``align_corners=False``) to the padded size, cropped to the
   resized size, resized to the original size, ``> 0``.

``score_mode="eval"`` gives the official *evaluation* score instead: class probability x mask score, where
the mask score is the mean mask probability over the mask's own pixels (``GLEE.instance_inference``).
``multi_label=True`` selects the top-k over all (query, class) pairs as the evaluation does, so a query may
appear once per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ScoreMode = Literal["demo", "eval"]


@dataclass
class PostprocessConfig:
    """Selection and output settings for one kind of prompt.

    Attributes:
        top_k: queries (or query-class pairs with ``multi_label``) kept before thresholding; clamped to the
            number available.  Demo: 15 for categories, 1 for expressions and visual prompts.
        threshold: keep instances whose final score is > threshold; ``None`` keeps all top-k.
        score_mode: ``demo`` (class probability) or ``eval`` (class probability x mean mask probability).
        multi_label: top-k over (query, class) pairs instead of one best class per query.
        mask_threshold: mask logit threshold (0 = probability 0.5).
        with_masks: compute full-resolution masks.
        clamp_boxes: clamp boxes to the image (the demo does).
    """

    top_k: int = 15
    threshold: float | None = 0.2
    score_mode: ScoreMode = "demo"
    multi_label: bool = False
    mask_threshold: float = 0.0
    with_masks: bool = True
    clamp_boxes: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.score_mode not in ("demo", "eval"):
            raise ValueError(f"score_mode must be 'demo' (class probability, official demo) or 'eval' "
                             f"(class probability x mask score, official evaluation), got {self.score_mode!r}")


@dataclass
class Selection:
    """Chosen instances of one image, before box/mask conversion (N instances)."""

    query_indices: Tensor  # [N] int64
    class_ids: Tensor  # [N] int64
    class_probs: Tensor  # [N] float


def select_queries(logits: Tensor, top_k: int, multi_label: bool = False) -> Selection:
    """Top-k by class probability.

    Args:
        logits: [Q, K] class logits of one image.
    Returns:
        the top-k sorted by probability (descending); ties keep ``torch.topk``'s order.
    """
    probs = logits.sigmoid()
    num_queries, num_classes = probs.shape
    if multi_label:
        flat = probs.flatten()
        values, idx = flat.topk(min(top_k, flat.numel()), sorted=True)
        return Selection(idx // num_classes, idx % num_classes, values)
    best, _ = probs.max(-1)
    values, idx = best.topk(min(top_k, num_queries), sorted=True)
    labels = logits[idx].max(-1)[1]  # the demo takes argmax over logits (same order as over probabilities)
    return Selection(idx, labels, values)


def boxes_to_image(boxes: Tensor, padded: tuple[int, int], resized: tuple[int, int], original: tuple[int, int],
                   clamp: bool = True) -> Tensor:
    """[N, 4] sigmoid (cx, cy, w, h) relative to the padded canvas -> [N, 4] xyxy in original pixels."""
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    ph, pw = padded
    rh, rw = resized
    oh, ow = original
    xyxy = xyxy * xyxy.new_tensor([pw, ph, pw, ph])
    xyxy = xyxy / xyxy.new_tensor([rw, rh, rw, rh])
    if clamp:
        xyxy = xyxy.clamp(0, 1)
    return xyxy * xyxy.new_tensor([ow, oh, ow, oh])


def mask_logits_to_image(mask_logits: Tensor, padded: tuple[int, int], resized: tuple[int, int],
                         original: tuple[int, int]) -> Tensor:
    """[N, h, w] mask logits at feature resolution -> [N, H, W] logits at the original image size."""
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *original))
    x = F.interpolate(mask_logits[None].float(), size=padded, mode="bilinear", align_corners=False)
    x = x[:, :, : resized[0], : resized[1]]
    x = F.interpolate(x, size=original, mode="bilinear", align_corners=False)
    return x[0]


def mask_scores(mask_logits: Tensor, binary: Tensor) -> Tensor:
    """Mean mask probability over each mask's own pixels (official evaluation), [N]."""
    prob = mask_logits.sigmoid().flatten(1)
    area = binary.flatten(1).to(prob.dtype)
    return (prob * area).sum(1) / (area.sum(1) + 1e-6)


@dataclass
class ImageResult:
    """Postprocessed tensors of one image (what ``Detections`` is built from)."""

    query_indices: Tensor
    class_ids: Tensor
    scores: Tensor
    class_probs: Tensor
    boxes: Tensor
    masks: Tensor | None
    mask_scores: Tensor | None


def postprocess_image(
    logits: Tensor,
    boxes: Tensor,
    mask_logits: Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    cfg: PostprocessConfig,
    selection: Selection | None = None,
) -> ImageResult:
    """One image's predictions -> kept instances.

    Args:
        logits: [Q, K] class logits.  boxes: [Q, 4] cxcywh.  mask_logits: [Q, h, w].
        selection: a precomputed selection (e.g. click-aware ranking of visual prompts); default top-k.
    """
    sel = selection if selection is not None else select_queries(logits, cfg.top_k, cfg.multi_label)
    need_masks = cfg.with_masks or cfg.score_mode == "eval"
    scores = sel.class_probs
    if cfg.score_mode == "demo" and cfg.threshold is not None:  # threshold before costly mask upsampling
        keep = scores > cfg.threshold
        sel = Selection(sel.query_indices[keep], sel.class_ids[keep], sel.class_probs[keep])
        scores = sel.class_probs
    full = binary = m_scores = None
    if need_masks:
        full = mask_logits_to_image(mask_logits[sel.query_indices], padded, resized, original)
        binary = full > cfg.mask_threshold
    if cfg.score_mode == "eval":
        m_scores = mask_scores(full, binary)
        scores = sel.class_probs * m_scores
        order = torch.sort(scores, descending=True, stable=True).indices
        if cfg.threshold is not None:
            order = order[scores[order] > cfg.threshold]
        sel = Selection(sel.query_indices[order], sel.class_ids[order], sel.class_probs[order])
        scores, m_scores, binary = scores[order], m_scores[order], binary[order]
    elif full is not None:
        m_scores = mask_scores(full, binary)
    return ImageResult(
        query_indices=sel.query_indices,
        class_ids=sel.class_ids,
        scores=scores,
        class_probs=sel.class_probs,
        boxes=boxes_to_image(boxes[sel.query_indices], padded, resized, original, cfg.clamp_boxes),
        masks=binary if cfg.with_masks else None,
        mask_scores=m_scores,
    )


def select_by_clicks(
    logits: Tensor,
    mask_logits: Tensor,
    positive: Sequence[tuple[float, float]],
    negative: Sequence[tuple[float, float]],
    top_k: int,
    mask_threshold: float = 0.0,
) -> Selection:
    """Click-aware ranking for one visual prompt with several clicks (see ``glee.inference.prompts``).

    Each query's mask is sampled at every click (bilinear, ``align_corners=False``).  Queries are ranked by
    (positive clicks inside the mask - negative clicks inside the mask), ties by class probability, so a
    candidate that covers a negative click loses to one that does not whenever one exists.

    Args:
        logits: [Q, K] class logits.  mask_logits: [Q, h, w] on the padded canvas.
        positive / negative: click positions as (x, y) in [0, 1] of the padded canvas.
    """
    probs = logits.sigmoid().max(-1)
    agreement = torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)
    for points, sign in ((positive, 1.0), (negative, -1.0)):
        if len(points) == 0:
            continue
        grid = torch.tensor(points, dtype=mask_logits.dtype, device=mask_logits.device) * 2 - 1  # [n, 2]
        grid = grid[None, :, None].expand(mask_logits.shape[0], -1, -1, -1)  # [Q, n, 1, 2]
        sampled = F.grid_sample(mask_logits[:, None].float(), grid.float(), align_corners=False)[:, 0, :, 0]
        agreement += sign * (sampled > mask_threshold).sum(1).double()
    # integers dominate; the probability (< 1) only breaks ties
    key = agreement + probs.values.double() * 0.5
    order = key.argsort(descending=True, stable=True)[: min(top_k, logits.shape[0])]
    return Selection(order, probs.indices[order], probs.values[order])
