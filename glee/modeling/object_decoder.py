"""Object decoder (``MaskDINODecoder`` + DINO ``TransformerDecoder``) with GLEE's heads.

Flow for one forward (shapes: B images, Q queries, C = 256)::

    memory  = 4 encoder levels flattened in REVERSE order (stride 64 first)          [B, S, C]
    scores  = text similarity | grounding similarity | confidence  of every token    [B, S]
    top-Q tokens -> content queries and reference boxes (two-stage selection)
    9 x (self-attention [+ prompt tokens] -> deformable cross-attention -> FFN -> box refinement)
    heads on every layer output: class logits (dot product with text), confidence, boxes, masks (last)

State-dict keys (under ``predictor.``) equal the official ones, except that the box MLP shared by all
layers is stored once as ``bbox_embed`` (the official ``_bbox_embed``; its per-layer aliases are dropped by
the checkpoint loader) and ``decoder_norm`` is not repeated as ``decoder.norm``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import GleeConfig
from glee.modeling.layers import MLP, fused_linear, inverse_sigmoid
from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention
from glee.modeling.position_encoding import box_sine_embedding
from glee.modeling.threads import single_threaded

# DN label-embedding tables: name -> rows (official, all kept for checkpoint compatibility)
LABEL_ENCODERS = {
    "coco_label_enc": 80, "obj365_label_enc": 100, "vg_label_enc": 200, "grounding_label_enc": 1,
    "ytvis19_label_enc": 40, "ytvis21_label_enc": 40, "ovis_label_enc": 25, "uvo_label_enc": 81,
    "bdd_det": 10, "bdd_inst": 8,
}
# task -> (label table, number of DN classes)
TASK_LABEL_ENCODER = {
    "coco": ("coco_label_enc", 80), "coco_clip": ("coco_label_enc", 80),
    "obj365": ("obj365_label_enc", 100), "obj365_clip": ("obj365_label_enc", 100),
    "lvis": ("obj365_label_enc", 100), "lvis_clip": ("obj365_label_enc", 100),
    "openimage": ("obj365_label_enc", 100), "openimage_clip": ("obj365_label_enc", 100),
    "grit": ("obj365_label_enc", 100), "vg": ("vg_label_enc", 200),
    "bdd_det": ("bdd_det", 10), "bdd_inst": ("bdd_inst", 8),
    "bdd_track_seg": ("bdd_inst", 8), "bdd_track_box": ("bdd_inst", 8),
    "sa1b": ("grounding_label_enc", 1), "sa1b_clip": ("grounding_label_enc", 1),
    "grounding": ("grounding_label_enc", 1), "rvos": ("grounding_label_enc", 1),
    "burst": ("grounding_label_enc", 1), "ytbvos": ("grounding_label_enc", 1),
    "uvo_video": ("uvo_label_enc", 81), "ytvis19": ("ytvis19_label_enc", 40),
    "image_yt19": ("ytvis19_label_enc", 40), "ytvis21": ("ytvis21_label_enc", 40),
    "image_yt21": ("ytvis21_label_enc", 40), "ovis": ("ovis_label_enc", 25), "image_o": ("ovis_label_enc", 25),
}


@dataclass
class DecoderPrompt:
    """What the decoder is asked to find.

    Exactly one of ``class_embeddings`` ([K, C], category mode) or ``grounding_class`` ([B, C],
    expression mode) is set.  ``prompt_tokens`` ([P, B, C] per level) join decoder self-attention, with
    ``prompt_padding`` ([B, P], True = padding).  Grounding gives one token set used by every layer;
    visual prompts give one per encoder level, used by layer ``i`` as level ``i % 3``.
    """

    class_embeddings: Tensor | None = None
    grounding_class: Tensor | None = None
    prompt_tokens: list[Tensor] = field(default_factory=list)
    prompt_padding: list[Tensor] = field(default_factory=list)
    visual_prompt: bool = False


@dataclass
class DenoisingQueries:
    """Training-only DN queries prepended to the matching queries."""

    content: Tensor  # [B, pad, C]
    boxes_unsigmoid: Tensor  # [B, pad, 4]
    attn_mask: Tensor  # [pad + Q, pad + Q], True = blocked
    info: dict


class DecoderLayer(nn.Module):
    """Self-attention -> deformable cross-attention -> FFN, each post-norm (``norm2``, ``norm1``, ``norm3``)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        spatial_shapes: list[tuple[int, int]],
        self_attn_mask: Tensor | None,
        prompt_tokens: Tensor | None,
        prompt_padding: Tensor | None,
        value: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tgt, query_pos: [Nq, B, C].  reference_boxes: [Nq, B, levels, 4].  memory: [S, B, C].
            self_attn_mask: [Nq, Nq] (True = blocked) or None.
            prompt_tokens: [P, B, C] appended for self-attention only; prompt_padding [B, P].
            value: ``cross_attn.project_value(memory)`` when the caller computed it already, else None.
        """
        nq = tgt.shape[0]
        if prompt_tokens is not None:
            batch, n_prompt = prompt_padding.shape
            mask = tgt.new_zeros((batch, nq + n_prompt, nq + n_prompt), dtype=torch.bool)
            if self_attn_mask is not None:
                mask[:, :nq, :nq] = self_attn_mask
            # queries never see padded prompt tokens and padded prompt tokens never see queries
            mask[:, :nq, nq:] |= prompt_padding[:, None, :]
            mask[:, nq:, :nq] |= prompt_padding[:, :, None]
            mask = mask.repeat_interleave(self.n_heads, dim=0)
            # prompt tokens are their own positional embedding (q = k = 2 * token)
            seq = torch.cat([tgt, prompt_tokens], 0)
            qk = torch.cat([tgt + query_pos, prompt_tokens + prompt_tokens.detach()], 0)
            tgt = self.norm2(seq + self.self_attn(qk, qk, seq, attn_mask=mask, need_weights=False)[0])[:nq]
        else:
            qk = tgt + query_pos
            tgt = self.norm2(tgt + self.self_attn(qk, qk, tgt, attn_mask=self_attn_mask, need_weights=False)[0])
        query, boxes = (tgt + query_pos).transpose(0, 1), reference_boxes.transpose(0, 1)
        if value is None:
            cross = self.cross_attn(query, boxes, memory.transpose(0, 1), spatial_shapes).transpose(0, 1)
        else:
            cross = self.cross_attn.attend(query, boxes, value, spatial_shapes).transpose(0, 1)
        tgt = self.norm1(tgt + cross)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class DinoDecoder(nn.Module):
    """Holds the layers and ``ref_point_head`` (key path ``predictor.decoder.*``)."""

    def __init__(self, cfg: GleeConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.dec_dim_feedforward, cfg.total_num_feature_levels, cfg.dec_n_heads, cfg.dec_n_points)
            for _ in range(cfg.dec_layers)
        )
        self.ref_point_head = MLP(2 * d, d, d, 2)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()


@dataclass
class DecoderOutput:
    """Raw decoder predictions.  ``L`` = number of prediction sets (initial + one per layer)."""

    pred_logits: Tensor  # [B, Q, K]
    pred_scores: Tensor  # [B, Q, 1]
    pred_boxes: Tensor  # [B, Q, 4] sigmoid (cx, cy, w, h), relative to the padded input
    pred_masks: Tensor  # [B, Q, h, w] mask logits at the pixel-embedding resolution
    pred_track_embed: Tensor  # [B, Q, C] last layer's LayerNorm-ed query
    aux_outputs: list[dict[str, Tensor | None]]  # L - 1 dicts (initial + all but the last layer)
    interm_outputs: dict[str, Tensor | None]  # two-stage encoder prediction
    dn_outputs: dict | None = None  # training only


def trim_prompt_padding(prompt: DecoderPrompt) -> DecoderPrompt:
    """Drop prompt tokens that are padding in every image of the batch (exact for the decoder's outputs).

    Padded prompt tokens are masked out of every query's attention and their own outputs are discarded
    (only the query rows are kept), so removing them changes no output -- e.g. a referring expression keeps
    its ~5-10 real tokens of 77.
    """
    tokens, paddings = [], []
    for tok, pad in zip(prompt.prompt_tokens, prompt.prompt_padding):
        keep = ~pad.all(0)
        if not bool(keep.all()):
            tok, pad = tok[keep], pad[:, keep]
        tokens.append(tok)
        paddings.append(pad)
    return dataclasses.replace(prompt, prompt_tokens=tokens, prompt_padding=paddings)


class ObjectDecoder(nn.Module):
    fast_inference = False  # set by GleeModel.set_inference_mode; used only in eval mode

    def __init__(self, cfg: GleeConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.cfg = cfg
        self.num_queries = cfg.num_queries
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.confidence_score = MLP(d, d, 1, 2)
        self.category_embed = nn.Parameter(torch.rand(d, cfg.dim_proj))  # right-multiplied, not a Linear
        for name, rows in LABEL_ENCODERS.items():
            self.add_module(name, nn.Embedding(rows, d))
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder = DinoDecoder(cfg)
        self.bbox_embed = MLP(d, d, 4, 3)  # shared by every layer (official ``_bbox_embed``)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def encoder_proposals(memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Per-token proposal boxes in logit space and the memory with invalid tokens zeroed.

        Box size is ``0.05 * 2**level`` where level is the memory index; the memory starts at stride 64,
        so the coarsest level gets the smallest boxes -- the reverse of DINO, kept for the weights.
        """
        batch = memory.shape[0]
        proposals = []
        for level, (h, w) in enumerate(spatial_shapes):
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            scale = torch.tensor([w, h], dtype=torch.float32, device=memory.device)
            grid = (torch.stack([grid_x, grid_y], -1) + 0.5) / scale
            wh = torch.full_like(grid, 0.05 * (2.0**level))
            proposals.append(torch.cat([grid, wh], -1).view(1, -1, 4).expand(batch, -1, -1))
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
        # invalid tokens stay eligible for the top-k (official behaviour); their boxes become 1.0
        return memory.masked_fill(~valid, 0.0), proposals

    def prediction_heads(
        self, queries: Tensor, mask_features: Tensor, prompt: DecoderPrompt, with_masks: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """queries [B, Q, C] -> (confidence [B, Q, 1], class logits [B, Q, K], masks [B, Q, h, w] or None)."""
        z = self.decoder_norm(queries)
        scores = self.confidence_score(z)
        class_embed = z @ self.category_embed
        if prompt.grounding_class is not None:
            logits = torch.einsum("bqc,bc->bq", class_embed, prompt.grounding_class).unsqueeze(-1)
        else:
            logits = torch.einsum("bqc,nc->bqn", class_embed, prompt.class_embeddings)
        masks = None
        if with_masks:
            # bf16 mode hands over bf16 pixel embeddings: the product (the decoder's largest) runs in bf16 with
            # float32 accumulation, the mask logits come back float32; float32 inputs: a plain float32 product
            embed = self.mask_embed(z).to(mask_features.dtype)
            b, c, h, w = mask_features.shape
            if mask_features.is_contiguous(memory_format=torch.channels_last) and c > 1:
                # channels-last (fast path) pixel embedding: [B, h*w, C] is a view, so the product reads it as
                # it is instead of einsum's contiguous copy of the whole map
                flat = mask_features.permute(0, 2, 3, 1).reshape(b, h * w, c)
                masks = torch.bmm(embed, flat.transpose(1, 2)).view(b, -1, h, w)
            else:
                masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
            masks = masks.float()
        return scores, logits, masks

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        prompt: DecoderPrompt,
        denoising: DenoisingQueries | None = None,
        all_layer_masks: bool = False,
        value_dtype: torch.dtype | None = None,
    ) -> DecoderOutput:
        """
        Args:
            multi_scale_features: 4 maps [B, C, h_l, w_l], strides 8..64 (pixel decoder order).
            mask_features: [B, mask_dim, h, w] pixel embedding.
            prompt: class embeddings or grounding class, and decoder prompt tokens.
            denoising: DN queries (training).
            all_layer_masks: compute masks for every prediction set (training) instead of only the last.
            value_dtype: fast CPU path: the dtype of the per-layer value projection of the memory (bf16 mode
                passes bfloat16: the decoder's largest GEMMs; queries, boxes and scores stay float32).
        """
        levels = multi_scale_features[::-1]  # memory level 0 = stride 64 (official order)
        shapes = [(f.shape[2], f.shape[3]) for f in levels]
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in levels], 1)  # [B, S, C]

        # two-stage query selection
        output_memory, proposals = self.encoder_proposals(memory, shapes)
        fast = self.fast_inference and not self.training
        projected = (fused_linear(output_memory, self.enc_output.weight, self.enc_output.bias) if fast
                     else self.enc_output(output_memory))
        output_memory = self.enc_output_norm(projected)
        if prompt.grounding_class is not None:
            token_scores = torch.einsum("bqc,bc->bq", output_memory @ self.category_embed, prompt.grounding_class)
        elif prompt.visual_prompt:
            token_scores = self.confidence_score(output_memory).squeeze(-1)
        else:
            token_scores = torch.einsum(
                "bqc,nc->bqn", output_memory @ self.category_embed, prompt.class_embeddings
            ).max(-1)[0]
        topk = torch.topk(token_scores, self.num_queries, dim=1)[1]
        tgt_undetached = torch.gather(output_memory, 1, topk.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1]))
        if fast:  # the box MLP is row-wise: run it on the Q selected tokens instead of all S
            refpoints_undetached = self.bbox_embed(tgt_undetached) + torch.gather(
                proposals, 1, topk.unsqueeze(-1).expand(-1, -1, 4)
            )
        else:
            coords_unselected = self.bbox_embed(output_memory) + proposals
            refpoints_undetached = torch.gather(coords_unselected, 1, topk.unsqueeze(-1).expand(-1, -1, 4))
        i_scores, i_logits, i_masks = self.prediction_heads(tgt_undetached, mask_features, prompt, True)
        interm = {
            "pred_logits": i_logits, "pred_scores": i_scores,
            "pred_boxes": refpoints_undetached.sigmoid(), "pred_masks": i_masks,
        }
        tgt = tgt_undetached.detach()
        refpoints = refpoints_undetached.detach()
        attn_mask = None
        if denoising is not None:
            tgt = torch.cat([denoising.content, tgt], 1)
            refpoints = torch.cat([denoising.boxes_unsigmoid, refpoints], 1)
            attn_mask = denoising.attn_mask

        if fast and prompt.prompt_tokens:
            prompt = trim_prompt_padding(prompt)
        scores_list, logits_list, masks_list = [], [], []
        s, lg, m = self.prediction_heads(tgt, mask_features, prompt, all_layer_masks)
        scores_list.append(s)
        logits_list.append(lg)
        masks_list.append(m)

        # decoder layers with iterative box refinement
        dec = self.decoder
        output = tgt.transpose(0, 1)  # [Nq, B, C]
        memory_t = memory.transpose(0, 1)
        reference = refpoints.sigmoid().transpose(0, 1)  # [Nq, B, 4]
        references = [reference]
        hidden_states = []
        n_levels = len(shapes)
        small_ops_alone = fast and memory.device.type == "cpu"
        for layer_id, layer in enumerate(dec.layers):
            ref_input = reference[:, :, None].expand(-1, -1, n_levels, -1)
            query_pos = dec.ref_point_head(box_sine_embedding(reference, self.cfg.hidden_dim // 2))  # 4 * d/2 = 2d
            if prompt.prompt_tokens:
                level = layer_id % 3 if prompt.visual_prompt else 0
                p_tokens, p_pad = prompt.prompt_tokens[level], prompt.prompt_padding[level]
            else:
                p_tokens = p_pad = None
            # fast CPU path: the value projection over all S memory tokens is the one large op of a layer;
            # the rest (Nq queries) is many small ops, run single-threaded (no thread join per op)
            value = None
            if small_ops_alone:
                with torch.autocast("cpu", dtype=value_dtype or torch.bfloat16, enabled=value_dtype is not None):
                    value = layer.cross_attn.project_value(memory)
            with single_threaded(small_ops_alone):
                output = layer(output, query_pos, ref_input, memory_t, shapes, attn_mask, p_tokens, p_pad, value)
                # refinement uses the raw (un-normalised) output; the reported boxes use the normalised one
                new_reference = (self.bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
                references.append(new_reference)
                reference = new_reference.detach()
                hidden_states.append(self.decoder_norm(output).transpose(0, 1))  # [B, Nq, C]

        boxes_list = [refpoints.sigmoid()]
        last = len(hidden_states) - 1
        for i, hs in enumerate(hidden_states):
            # heads see LN(LN(raw)): decoder.norm then decoder_norm again (official double LayerNorm)
            with_masks = all_layer_masks or i == last
            with single_threaded(small_ops_alone and not with_masks):
                s, lg, m = self.prediction_heads(hs, mask_features, prompt, with_masks)
            scores_list.append(s)
            logits_list.append(lg)
            masks_list.append(m)
            ref_in = references[i].transpose(0, 1)
            with single_threaded(small_ops_alone):
                boxes_list.append((self.bbox_embed(hs) + inverse_sigmoid(ref_in)).sigmoid())

        dn_outputs = None
        track_embed = hidden_states[-1]
        if denoising is not None:
            pad = denoising.content.shape[1]
            dn_outputs = {
                "sets": [
                    {"pred_logits": lg[:, :pad], "pred_scores": s[:, :pad], "pred_boxes": b[:, :pad],
                     "pred_masks": None if m is None else m[:, :pad]}
                    for s, lg, b, m in zip(scores_list, logits_list, boxes_list, masks_list)
                ],
                "info": denoising.info,
            }
            scores_list = [s[:, pad:] for s in scores_list]
            logits_list = [lg[:, pad:] for lg in logits_list]
            boxes_list = [b[:, pad:] for b in boxes_list]
            masks_list = [None if m is None else m[:, pad:] for m in masks_list]
            track_embed = track_embed[:, pad:]
        aux = [
            {"pred_logits": lg, "pred_scores": s, "pred_boxes": b, "pred_masks": m}
            for s, lg, b, m in zip(scores_list[:-1], logits_list[:-1], boxes_list[:-1], masks_list[:-1])
        ]
        return DecoderOutput(
            pred_logits=logits_list[-1], pred_scores=scores_list[-1], pred_boxes=boxes_list[-1],
            pred_masks=masks_list[-1], pred_track_embed=track_embed, aux_outputs=aux,
            interm_outputs=interm, dn_outputs=dn_outputs,
        )

    def label_encoder(self, task: str) -> tuple[nn.Embedding, int]:
        """DN label table and class count for a training task."""
        if task not in TASK_LABEL_ENCODER:
            raise ValueError(f"no denoising label table for task {task!r}; known: {sorted(TASK_LABEL_ENCODER)}")
        name, num = TASK_LABEL_ENCODER[task]
        return getattr(self, name), num
