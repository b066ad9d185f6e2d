"""Hungarian matcher with GLEE's (MaskDINO's) cost: focal class cost, point-sampled mask BCE and dice, box L1
and GIoU, solved per image with ``scipy.optimize.linear_sum_assignment``.

    C = 4 * cost_class + 5 * cost_mask + 5 * cost_dice + 5 * L1 + 2 * (-GIoU)

``cost_class`` is the focal-loss-shaped cost at the ground-truth class column; the mask costs use one set of
uniformly random points shared by every (query, target) pair; predicted boxes are clamped to [0, 1].
Tasks without masks (Objects365, OpenImages, VG, ...) match on class and box only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of [N, C, H, W] maps at [N, P, 2] points given as (x, y) in [0, 1] -> [N, C, P].

    ``align_corners=False``, as detectron2's ``point_sample`` (PointRend) used by the official losses.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False).squeeze(3)


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """[Q, K] logits, [N] labels -> [Q, N] focal classification cost (official, with its 1e-6 in the logs)."""
    prob = logits.float().sigmoid()
    neg = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-6).log())
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-6).log())
    return pos[:, labels] - neg[:, labels]


def pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE over P points for every pair: [Q, P] logits, [N, P] targets -> [Q, N]."""
    points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / points


def pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (+1 smoothing) for every pair: [Q, P] logits, [N, P] targets -> [Q, N]."""
    prob = inputs.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass
class MatchCosts:
    """Cost weights (``MODEL.MaskDINO.COST_*_WEIGHT``; the official values are the defaults)."""

    cost_class: float = 4.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    cost_box: float = 5.0
    cost_giou: float = 2.0


def solve_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost matching of a [Q, N] matrix -> (query indices, target indices), each of length min(Q, N).

    Infinite entries are replaced by the largest finite cost (as the official ``linear_sum_assignment_with_inf``);
    NaN means the predictions themselves are broken, which is reported instead of silently matched.
    """
    matrix = cost.detach().float().cpu().numpy()
    if matrix.size == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    if np.isnan(matrix).any():
        raise FloatingPointError(
            "the matching cost contains NaN: the model produced non-finite predictions (diverged training? "
            "lower the learning rate or check the inputs for NaN)"
        )
    infinite = np.isinf(matrix)
    if infinite.any():
        finite = matrix[~infinite]
        matrix = matrix.copy()
        matrix[infinite] = finite.max() if finite.size else 0.0
    rows, cols = linear_sum_assignment(matrix)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """One-to-one matching of predictions to targets, per image (official ``HungarianMatcher``)."""

    def __init__(self, costs: MatchCosts | None = None, num_points: int = 12544) -> None:
        self.costs = costs or MatchCosts()
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        target: dict[str, Tensor | None],
        use_masks: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Cost of every (query, target) pair of one image.

        Args:
            logits: [Q, K] class logits.  boxes: [Q, 4] sigmoid cxcywh.  masks: [Q, h, w] mask logits or None.
            target: ``labels`` [N], ``boxes`` [N, 4] normalised cxcywh, ``masks`` [N, H, W] or None.
            use_masks: add the mask BCE and dice costs (needs both predicted and target masks).
        Returns:
            [Q, N] float cost.
        """
        c = self.costs
        labels = target["labels"]
        tgt_boxes = target["boxes"].float()
        out_boxes = boxes.float().clamp(0, 1)
        cost = c.cost_class * focal_class_cost(logits, labels)
        cost = cost + c.cost_box * torch.cdist(out_boxes, tgt_boxes, p=1)
        giou = generalized_box_iou(box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
        cost = cost - c.cost_giou * giou
        tgt_masks = target.get("masks")
        if use_masks and masks is not None and tgt_masks is not None and len(labels) > 0:
            coords = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
            tgt_points = point_sample(tgt_masks[:, None].float(), coords.expand(len(labels), -1, -1))[:, 0]
            out_points = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
            cost = cost + c.cost_mask * pairwise_sigmoid_ce(out_points, tgt_points)
            cost = cost + c.cost_dice * pairwise_dice(out_points, tgt_points)
        return cost

    @torch.no_grad()
    def __call__(
        self,
        outputs: dict[str, Tensor | None],
        targets: list[dict[str, Tensor | None]],
        use_masks: bool = True,
        generator: torch.Generator | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4], ``pred_masks`` [B, Q, h, w] or None.
            targets: B dicts (see ``cost_matrix``).
        Returns:
            per image (query indices, target indices), int64 on CPU.
        """
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs.get("pred_masks")
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} predictions")
        indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(
                logits[b], boxes[b], None if masks is None else masks[b], target, use_masks, generator
            )
            indices.append(solve_assignment(cost))
        return indices
