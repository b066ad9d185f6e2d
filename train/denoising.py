"""Denoising (DN) queries for training, "standard" mode (official ``MaskDINODecoder.prepare_for_dn``).

``groups = dn_num // max_targets_per_image`` (no DN when that is 0).  Every group holds every ground-truth
object once, with noise:

* label: with probability ``0.5 * noise_scale`` (0.2) replaced by a uniform id in [0, num_classes);
* box: centre moved by U(-1, 1) * (w/2, h/2) * noise_scale, size changed by U(-1, 1) * (w, h) * noise_scale,
  then clamped to [0, 1].

The content of a DN query is the task's label embedding of the noisy label, its reference box the
inverse-sigmoid of the noisy box.  Queries are laid out per image as ``group * max_targets + i`` and padded
with zeros (content 0, box logit 0) up to ``max_targets * groups``.  Attention mask (True = blocked): the
matching queries cannot see any DN query, and DN groups cannot see each other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glee.modeling.layers import inverse_sigmoid
from glee.modeling.object_decoder import DenoisingQueries
from train.losses import DenoisingMeta


def dn_attention_mask(scalar: int, single_pad: int, num_queries: int, device: torch.device | None = None) -> Tensor:
    """[pad + Q, pad + Q] bool, True = blocked, for ``scalar`` groups of ``single_pad`` queries."""
    pad = scalar * single_pad
    size = pad + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    group = torch.arange(pad, device=device) // single_pad
    mask[:pad, :pad] = group[:, None] != group[None, :]
    return mask


def prepare_denoising(
    targets: list[dict[str, Tensor]],
    label_table: nn.Embedding,
    num_classes: int,
    num_queries: int,
    dn_num: int = 100,
    noise_scale: float = 0.4,
    generator: torch.Generator | None = None,
) -> tuple[DenoisingQueries, DenoisingMeta] | None:
    """Build DN queries for a batch.

    Args:
        targets: per image ``labels`` [N_b] (indices into the batch vocabulary) and ``boxes`` [N_b, 4] cxcywh.
        label_table: the task's DN label embedding (``model.predictor.label_encoder(task)[0]``).
        num_classes: range of the random replacement labels (the task's DN class count).
        num_queries: Q, the number of matching queries that follow the DN queries.
    Returns:
        (queries for ``GleeModel.forward(denoising=...)``, bookkeeping for the criterion), or None when the batch
        has no targets or more targets per image than ``dn_num``.
    """
    counts = [len(t["labels"]) for t in targets]
    max_known = max(counts, default=0)
    if max_known == 0 or dn_num // max_known == 0:
        return None
    scalar = dn_num // max_known
    device = label_table.weight.device
    batch = len(targets)
    labels = torch.cat([t["labels"] for t in targets]).to(device).long()
    if labels.numel() and int(labels.max()) >= label_table.num_embeddings:
        raise ValueError(
            f"label {int(labels.max())} does not fit the DN label table of {label_table.num_embeddings} rows; "
            "the batch vocabulary must be at most the table size (pad/sample categories to MAX_CATEGORY_LEN)"
        )
    boxes = torch.cat([t["boxes"] for t in targets]).to(device).float()
    image_idx = torch.cat([torch.full((n,), b, dtype=torch.int64) for b, n in enumerate(counts)]).to(device)

    known_labels = labels.repeat(scalar)
    known_boxes = boxes.repeat(scalar, 1)
    known_image = image_idx.repeat(scalar)
    noisy_labels = known_labels.clone()
    noisy_boxes = known_boxes.clone()
    if noise_scale > 0:
        flip = torch.rand(noisy_labels.shape, generator=generator).to(device) < noise_scale * 0.5
        random_labels = torch.randint(0, num_classes, (int(flip.sum()),), generator=generator).to(device)
        noisy_labels[flip] = random_labels
        diff = torch.cat([known_boxes[:, 2:] / 2, known_boxes[:, 2:]], 1)
        jitter = torch.rand(noisy_boxes.shape, generator=generator).to(device) * 2 - 1
        noisy_boxes = (noisy_boxes + jitter * diff * noise_scale).clamp(0.0, 1.0)

    single_pad = max_known
    pad_size = single_pad * scalar
    hidden = label_table.embedding_dim
    # position of the i-th object of image b in group g: g * single_pad + i
    within = torch.cat([torch.arange(n, dtype=torch.int64) for n in counts]).to(device)
    positions = (torch.arange(scalar, device=device)[:, None] * single_pad + within[None]).flatten()
    content = torch.zeros(batch, pad_size, hidden, device=device, dtype=label_table.weight.dtype)
    ref = torch.zeros(batch, pad_size, 4, device=device, dtype=torch.float32)
    content = content.index_put((known_image, positions), label_table(noisy_labels))
    ref = ref.index_put((known_image, positions), inverse_sigmoid(noisy_boxes))
    meta = DenoisingMeta(scalar=scalar, single_pad=single_pad, num_targets=counts)
    queries = DenoisingQueries(
        content=content,
        boxes_unsigmoid=ref,
        attn_mask=dn_attention_mask(scalar, single_pad, num_queries, device),
        info={"scalar": scalar, "single_pad": single_pad, "pad_size": pad_size, "num_targets": counts},
    )
    return queries, meta
