"""GLEE's training criterion (official ``SetCriterion`` + the model-level track and distillation losses).

Per prediction set (the final one, every auxiliary set ``_0.._{L-2}``, the encoder proposals ``_interm``):

* ``loss_ce``    sigmoid focal loss (alpha 0.25, gamma 2) on the text-similarity logits against one-hot targets,
                 summed over queries and classes / num_boxes                                      weight 4
* ``loss_conf``  visual-prompt batches only: focal loss on the confidence head, target 1 for matched queries,
                 mean over queries summed over images (final and auxiliary sets; the official interm dict has
                 no prompt flag, so its term is 0)                                                 weight 4
* ``loss_bbox``  L1 on cxcywh (predictions clamped to [0, 1]) / num_boxes                         weight 5
* ``loss_giou``  (1 - GIoU) / num_boxes                                                            weight 2
* ``loss_mask``  BCE on importance-sampled points (PointRend: 3x oversampling, 75% most uncertain) weight 5
* ``loss_dice``  dice (+1 smoothing) on the same points                                            weight 5

Denoising queries add ``_dn`` (last set) and ``_dn_{i}`` (the others) for labels and boxes only, normalised by
num_boxes * groups.  Video clips add ``track_loss`` (IDOL-style contrastive loss between consecutive frames,
weight 2); category batches of a ``clip_teacher`` model add ``dist_loss`` (weight 4).  num_boxes is the number of
ground-truth boxes in the batch, averaged over ranks, at least 1.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from train.matcher import FOCAL_ALPHA, FOCAL_GAMMA, HungarianMatcher, MatchCosts, point_sample

# Tasks whose data carry boxes only (official ``no_mask_tasks``): box-only matching, no mask loss.
NO_MASK_TASKS = frozenset(
    {"obj365", "obj365_clip", "openimage", "openimage_clip", "vg", "grit", "bdd_det", "bdd_track_box"}
)

Target = dict[str, Any]  # labels [N] long, boxes [N, 4] cxcywh in [0, 1], masks [N, H, W] or None, inst_id [N]
Indices = list[tuple[Tensor, Tensor]]


@dataclass
class LossConfig:
    """Weights (``MODEL.MaskDINO.*_WEIGHT`` and the two hard-coded ones) and point-sampling settings."""

    class_weight: float = 4.0
    conf_weight: float = 4.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    box_weight: float = 5.0
    giou_weight: float = 2.0
    track_weight: float = 2.0
    dist_weight: float = 4.0
    num_points: int = 12544  # TRAIN_NUM_POINTS
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    track_negatives: int = 20
    costs: MatchCosts = field(default_factory=MatchCosts)

    def base_weights(self) -> dict[str, float]:
        return {
            "loss_ce": self.class_weight, "loss_conf": self.conf_weight, "loss_mask": self.mask_weight,
            "loss_dice": self.dice_weight, "loss_bbox": self.box_weight, "loss_giou": self.giou_weight,
            "track_loss": self.track_weight, "dist_loss": self.dist_weight,
        }


_SUFFIX = re.compile(r"(_dn)?(_\d+)?(_interm)?$")


# ---------------------------------------------------------------------------------------------- elementary losses
def focal_loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum of the sigmoid focal loss (alpha 0.25, gamma 2) over all elements (RetinaNet form)."""
    return sigmoid_focal_loss(logits.float(), targets.float(), FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum")


def sigmoid_ce_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """[M, P] point logits and labels: mean BCE over points, summed over masks / num_masks."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """[M, P] point logits and labels: 1 - (2 p.t + 1) / (sum p + sum t + 1), summed / num_masks."""
    prob = logits.sigmoid().flatten(1)
    numerator = 2 * (prob * labels).sum(-1)
    denominator = prob.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """PointRend training points for [R, 1, h, w] logits -> [R, num_points, 2] (x, y) in [0, 1].

    ``oversample_ratio * num_points`` random points are scored by uncertainty -|logit|; the most uncertain
    ``importance_sample_ratio`` share is kept and the rest is drawn uniformly.
    """
    rois = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(rois, num_sampled, 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, coords)[:, 0].abs()  # [R, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]
    chosen = torch.gather(coords, 1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(rois, num_random, 2, device=mask_logits.device)], 1)
    return chosen


def _src_permutation(indices: Indices) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src = torch.cat([src for src, _ in indices])
    return batch, src


# ---------------------------------------------------------------------------------------------- per-set losses
def loss_labels(outputs: dict, targets: list[Target], indices: Indices, num_boxes: float) -> Tensor:
    """Focal loss on ``pred_logits`` [B, Q, K] with one-hot targets of the matched queries."""
    logits = outputs["pred_logits"]
    onehot = torch.zeros_like(logits, dtype=torch.float32)
    batch, src = _src_permutation(indices)
    if len(src):
        classes = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        onehot[batch.to(logits.device), src.to(logits.device), classes] = 1.0
    return focal_loss_sum(logits, onehot) / num_boxes


def loss_conf(outputs: dict, indices: Indices) -> Tensor:
    """Visual-prompt confidence: focal loss on ``pred_scores`` [B, Q, 1], target 1 at matched queries.

    Per-image mean over queries, summed over images (the official ``* num_boxes`` undoes its normalisation).
    """
    scores = outputs["pred_scores"].float()
    target = torch.zeros_like(scores)
    batch, src = _src_permutation(indices)
    target[batch.to(scores.device), src.to(scores.device), 0] = 1.0
    loss = sigmoid_focal_loss(scores, target, FOCAL_ALPHA, FOCAL_GAMMA, reduction="none")
    return loss.mean(1).sum()


def loss_boxes(outputs: dict, targets: list[Target], indices: Indices, num_boxes: float) -> tuple[Tensor, Tensor]:
    """(L1, 1 - GIoU) on matched boxes, both / num_boxes.  Predictions are clamped to [0, 1]."""
    boxes = outputs["pred_boxes"]
    batch, src = _src_permutation(indices)
    if len(src) == 0:
        zero = boxes.sum() * 0.0
        return zero, zero
    pred = boxes[batch.to(boxes.device), src.to(boxes.device)].float().clamp(0, 1)
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred)
    l1 = F.l1_loss(pred, tgt, reduction="none").sum() / num_boxes
    giou = torch.diag(generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")))
    return l1, (1 - giou).sum() / num_boxes


def loss_masks(
    outputs: dict, targets: list[Target], indices: Indices, num_masks: float, cfg: LossConfig
) -> tuple[Tensor, Tensor]:
    """(BCE, dice) on importance-sampled points of the matched masks, each summed / num_masks.

    Predicted masks [B, Q, h, w] and target masks [N, H, W] (padded input size) are sampled at the same
    normalised points, so no upsampling is needed.
    """
    masks = outputs["pred_masks"]
    batch, src = _src_permutation(indices)
    if len(src) == 0:
        zero = masks.sum() * 0.0
        return zero, zero
    src_masks = masks[batch.to(masks.device), src.to(masks.device)][:, None].float()
    tgt_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])[:, None].to(src_masks)
    with torch.no_grad():
        coords = uncertain_point_coords(src_masks, cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio)
        labels = point_sample(tgt_masks, coords)[:, 0]
    logits = point_sample(src_masks, coords)[:, 0]
    return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)


def track_loss(
    embeddings: Tensor, targets: list[Target], indices: Indices, clip_length: int, num_negatives: int = 20,
    rng: random.Random | None = None,
) -> Tensor:
    """IDOL-style contrastive loss between consecutive frames (official ``get_tracking_contrastive_lossv3``).

    Args:
        embeddings: [B * T, Q, C] final-layer query embeddings, clips flattened frame-major per clip.
        targets: B * T frame targets with ``inst_id``; indices: the final-set matching of each frame.
        clip_length: T.
    For frame f >= 1: S = [matched + up to ``num_negatives`` random unmatched queries of frame f-1] x
    [matched queries of frame f]; positives share an instance id.  Loss per pair of frames =
    log(1 + sum over (positive, negative) entries of exp(s_neg - s_pos)); the sum is divided by the number of
    ground-truth instances in frames f >= 1.
    """
    rng = rng or random
    num_queries = embeddings.shape[1]
    if len(targets) % clip_length:
        raise ValueError(f"{len(targets)} frame targets are not a whole number of {clip_length}-frame clips")
    losses = []
    num_inst = 0
    for start in range(0, len(targets), clip_length):
        previous: tuple[Tensor, Tensor] | None = None
        for f in range(clip_length):
            frame = start + f
            src, tgt = indices[frame]
            embed = embeddings[frame]
            matched = embed[src.to(embed.device)]
            ids = targets[frame]["inst_id"][tgt].to(embed.device)
            negatives = sorted(set(rng.sample(range(num_queries), min(num_negatives, num_queries))) - set(src.tolist()))
            ref_embed = torch.cat([matched, embed[negatives]], 0)
            ref_ids = torch.cat([ids, ids.new_full((len(negatives),), -2)])
            if previous is not None:
                num_inst += len(targets[frame]["inst_id"])
                sim = previous[0] @ matched.T  # [n_prev, n_cur]
                label = previous[1][:, None] == ids[None, :]
                if sim.numel():
                    sim, label = sim.flatten(), label.flatten()
                    pos, neg = sim[label], sim[~label]
                    diff = (neg[None, :] - pos[:, None]).flatten()
                    losses.append(torch.logsumexp(F.pad(diff, (0, 1)), 0))
            previous = (ref_embed, ref_ids)
    if not losses:
        return embeddings.sum() * 0.0
    return torch.stack(losses).sum() / max(num_inst, 1)


def distillation_loss(student: Tensor, teacher: Tensor, attention_mask: Tensor) -> Tensor:
    """MSE between student and frozen-teacher CLIP ``last_hidden_state`` [N, L, D] over the valid tokens."""
    valid = attention_mask.bool()
    return F.mse_loss(student[valid].float(), teacher[valid].float())


# ---------------------------------------------------------------------------------------------- the criterion
@dataclass
class DenoisingMeta:
    """What the criterion needs from DN query preparation."""

    scalar: int  # number of DN groups
    single_pad: int  # queries per group (max targets per image)
    num_targets: list[int]  # per image

    def indices(self) -> Indices:
        """DN query i of group g answers target i: (g * single_pad + i, i) for every group."""
        out = []
        for n in self.num_targets:
            t = torch.arange(n, dtype=torch.int64)
            src = (torch.arange(self.scalar, dtype=torch.int64)[:, None] * self.single_pad + t[None]).flatten()
            out.append((src, t.repeat(self.scalar)))
        return out


class SetCriterion:
    """Matches every prediction set to the targets and computes the official loss terms (unweighted)."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        self.cfg = cfg or LossConfig()
        self.matcher = HungarianMatcher(self.cfg.costs, self.cfg.num_points)
        self.base_weights = self.cfg.base_weights()

    # ------------------------------------------------------------------ weights
    def weight(self, name: str) -> float:
        """Weight of a loss key: the base term's weight, whatever its suffix (``_3``, ``_interm``, ``_dn_2``)."""
        base = _SUFFIX.sub("", name)
        if base not in self.base_weights:
            raise KeyError(f"no weight for loss term {name!r}")
        return self.base_weights[base]

    def weighted_total(self, losses: dict[str, Tensor], task: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum of weighted terms.  GRIT batches zero every box/GIoU term (phrase-box supervision only)."""
        weighted = {}
        for name, value in losses.items():
            w = self.weight(name)
            if task == "grit" and ("bbox" in name or "giou" in name):
                w = 0.0
            weighted[name] = value * w
        total = torch.stack([v.float() for v in weighted.values()]).sum()
        return total, weighted

    # ------------------------------------------------------------------ forward
    @staticmethod
    def num_boxes(targets: list[Target], device: torch.device) -> float:
        n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return max(float(n.item()), 1.0)

    def set_losses(
        self, outputs: dict, targets: list[Target], indices: Indices, num_boxes: float, use_masks: bool,
        visual_prompt: bool, conf: bool = True,
    ) -> dict[str, Tensor]:
        losses = {"loss_ce": loss_labels(outputs, targets, indices, num_boxes)}
        if conf:
            losses["loss_conf"] = (
                loss_conf(outputs, indices) if visual_prompt else outputs["pred_scores"].sum() * 0.0
            )
        losses["loss_bbox"], losses["loss_giou"] = loss_boxes(outputs, targets, indices, num_boxes)
        if use_masks:
            if outputs.get("pred_masks") is None:
                raise ValueError("mask losses need masks for every prediction set: call the model with "
                                 "all_layer_masks=True during training")
            losses["loss_mask"], losses["loss_dice"] = loss_masks(outputs, targets, indices, num_boxes, self.cfg)
        else:
            zero = outputs["pred_boxes"].sum() * 0.0
            losses["loss_mask"], losses["loss_dice"] = zero, zero
        return losses

    def __call__(
        self,
        output: Any,
        targets: list[Target],
        task: str,
        *,
        visual_prompt: bool = False,
        dn_meta: DenoisingMeta | None = None,
        clip_length: int | None = None,
        rng: random.Random | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            output: a ``GleeOutput`` of a training forward (``all_layer_masks=True``; DN outputs in ``extra``).
            targets: one dict per image (per frame for video clips, frame-major within a clip).
            task: the routed task name (selects box-only matching for the no-mask tasks).
            visual_prompt: the batch is a visual-prompt batch (adds ``loss_conf``).
            dn_meta: the DN bookkeeping of ``train.denoising.prepare_denoising`` (None: the DN terms are zeros).
            clip_length: frames per clip for video tasks (adds ``track_loss``).
        Returns:
            unweighted loss terms keyed by their official names.
        """
        # matching and losses in float32 even inside a bf16 autocast region (official: the matcher disables AMP)
        with torch.autocast(output.pred_logits.device.type, enabled=False):
            return self._losses(output, targets, task, visual_prompt, dn_meta, clip_length, rng)

    def _losses(
        self, output: Any, targets: list[Target], task: str, visual_prompt: bool, dn_meta: DenoisingMeta | None,
        clip_length: int | None, rng: random.Random | None,
    ) -> dict[str, Tensor]:
        # mask losses whenever the targets carry masks; box-only tasks match on class and box only (official)
        use_masks = all(t.get("masks") is not None for t in targets)
        match_masks = use_masks and task not in NO_MASK_TASKS
        final = {
            "pred_logits": output.pred_logits, "pred_scores": output.pred_scores,
            "pred_boxes": output.pred_boxes, "pred_masks": output.pred_masks,
        }
        device = output.pred_logits.device
        num_boxes = self.num_boxes(targets, device)
        losses: dict[str, Tensor] = {}

        final_indices = self.matcher(final, targets, match_masks)
        losses.update(self.set_losses(final, targets, final_indices, num_boxes, use_masks, visual_prompt))
        for i, aux in enumerate(output.aux_outputs):
            idx = self.matcher(aux, targets, match_masks)
            terms = self.set_losses(aux, targets, idx, num_boxes, use_masks, visual_prompt)
            losses.update({f"{k}_{i}": v for k, v in terms.items()})
        if output.interm_outputs:
            interm = output.interm_outputs
            idx = self.matcher(interm, targets, match_masks)
            terms = self.set_losses(interm, targets, idx, num_boxes, use_masks, visual_prompt=False)
            losses.update({f"{k}_interm": v for k, v in terms.items()})

        dn_sets = output.extra.get("dn_outputs", {}).get("sets") if dn_meta is not None else None
        num_sets = len(output.aux_outputs) + 1
        if dn_sets is not None:
            dn_idx = dn_meta.indices()
            norm = num_boxes * dn_meta.scalar
            for i, dn_set in enumerate(dn_sets):
                suffix = "_dn" if i == len(dn_sets) - 1 else f"_dn_{i}"
                losses[f"loss_ce{suffix}"] = loss_labels(dn_set, targets, dn_idx, norm)
                losses[f"loss_bbox{suffix}"], losses[f"loss_giou{suffix}"] = loss_boxes(dn_set, targets, dn_idx, norm)
        else:  # keep the key set fixed (official fills zeros when a batch has no DN groups)
            zero = output.pred_boxes.sum() * 0.0
            for i in range(num_sets):
                suffix = "_dn" if i == num_sets - 1 else f"_dn_{i}"
                for name in ("loss_ce", "loss_bbox", "loss_giou"):
                    losses[name + suffix] = zero

        if clip_length is not None and clip_length > 1:
            losses["track_loss"] = track_loss(
                output.query_embeddings.float(), targets, final_indices, clip_length, self.cfg.track_negatives, rng
            )
        else:
            losses["track_loss"] = output.query_embeddings.sum() * 0.0
        return losses
