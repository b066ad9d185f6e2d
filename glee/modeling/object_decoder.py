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
import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import GleeConfig
from glee.modeling.layers import MLP, fused_linear, inverse_sigmoid
from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention
from glee.modeling.position_encoding import box_sine_embedding
from glee.modeling.threads import run_chunks, single_threaded

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
        memory_rows: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tgt, query_pos: [Nq, B, C].  reference_boxes: [Nq, B, levels, 4].  memory: [S, B, C].
            self_attn_mask: [Nq, Nq] (True = blocked) or None.
            prompt_tokens: [P, B, C] appended for self-attention only; prompt_padding [B, P].
            value: ``cross_attn.project_value(memory)`` when the caller computed it already, else None.
            memory_rows: [B, S, C] memory (e.g. in bf16) for ``cross_attn.attend_memory``, which samples the
                unprojected rows and projects only the sampled ones; used when ``value`` is None.
        """
        tgt = self.self_attention(tgt, query_pos, self_attn_mask, prompt_tokens, prompt_padding)
        return self.cross_attention_ffn(tgt, query_pos, reference_boxes, memory, spatial_shapes, value, memory_rows)

    def self_attention(
        self, tgt: Tensor, query_pos: Tensor, self_attn_mask: Tensor | None, prompt_tokens: Tensor | None,
        prompt_padding: Tensor | None,
    ) -> Tensor:
        """The layer's first block (queries [Nq, B, C] attend to each other and the prompt tokens) -> [Nq, B, C]."""
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
        return tgt

    def self_attention_inputs(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """Row-wise part of ``self_attention``: [n, B, C] queries -> [n, B, 3C] q, k (of ``tgt + query_pos``), v."""
        c = tgt.shape[-1]
        w, b = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
        return torch.cat([F.linear(tgt + query_pos, w[: 2 * c], b[: 2 * c]), F.linear(tgt, w[2 * c :], b[2 * c :])], -1)

    def self_attention_keys(
        self, qkv: Tensor, prompt_tokens: Tensor | None, prompt_padding: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Keys and values [B, H, Nq + P, C / H] of all queries ([Nq, B, 3C] from ``self_attention_inputs``) and
        prompt tokens ([P, B, C], their own positional embedding), and the mask [B, 1, 1, Nq + P] (True = attended;
        None without prompt tokens) that ``attend_rows`` takes."""
        n, batch, c3 = qkv.shape
        c = c3 // 3
        keys, values = qkv[..., c : 2 * c], qkv[..., 2 * c :]
        allowed = None
        if prompt_tokens is not None:
            w, b = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
            keys = torch.cat([keys, F.linear(prompt_tokens + prompt_tokens, w[c : 2 * c], b[c : 2 * c])])
            values = torch.cat([values, F.linear(prompt_tokens, w[2 * c :], b[2 * c :])])
            allowed = torch.cat([prompt_padding.new_ones(batch, n), ~prompt_padding], 1)[:, None, None, :]

        def heads(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], batch, self.n_heads, -1).permute(1, 2, 0, 3).contiguous()

        return heads(keys), heads(values), allowed

    def attend_rows(self, tgt: Tensor, qkv: Tensor, keys: Tensor, values: Tensor, allowed: Tensor | None) -> Tensor:
        """``self_attention`` for a subset of the query rows (no self-attention mask): tgt [n, B, C], their
        ``self_attention_inputs`` [n, B, 3C], and ``self_attention_keys`` of all queries -> [n, B, C]."""
        n, batch, c = tgt.shape
        q = qkv[..., :c].reshape(n, batch, self.n_heads, -1).permute(1, 2, 0, 3)
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)  # [B, H, n, C / H]
        attended = attended.permute(2, 0, 1, 3).reshape(n, batch, c)
        out_proj = self.self_attn.out_proj
        return self.norm2(tgt + F.linear(attended, out_proj.weight, out_proj.bias))

    def cross_attention_ffn(
        self, tgt: Tensor, query_pos: Tensor, reference_boxes: Tensor, memory: Tensor,
        spatial_shapes: list[tuple[int, int]], value: Tensor | None = None, memory_rows: Tensor | None = None,
    ) -> Tensor:
        """The rest of the layer (deformable cross-attention, FFN): row-wise in the queries, so any subset of the
        Nq rows of ``tgt``, ``query_pos`` and ``reference_boxes`` gives those rows of the result.  Arguments as
        in ``forward``."""
        query, boxes = (tgt + query_pos).transpose(0, 1), reference_boxes.transpose(0, 1)
        if value is not None:
            cross = self.cross_attn.attend(query, boxes, value, spatial_shapes).transpose(0, 1)
        elif memory_rows is not None:
            cross = self.cross_attn.attend_memory(query, boxes, memory_rows, spatial_shapes).transpose(0, 1)
        else:
            cross = self.cross_attn(query, boxes, memory.transpose(0, 1), spatial_shapes).transpose(0, 1)
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


@dataclass
class _LayerStep:
    """What the query blocks of one blocked decoder layer share (``ObjectDecoder._blocked_layers``)."""

    layer: DecoderLayer
    output: Tensor  # [Nq, B, C] the previous layer's output
    query_pos: Tensor  # [Nq, B, C]
    qkv: Tensor | None  # [Nq, B, 3C] self-attention projections, or None (``tgt`` is given instead)
    ref_input: Tensor  # [Nq, B, levels, 4]
    reference: Tensor  # [Nq, B, 4]
    memory_t: Tensor  # [S, B, C]
    memory_rows: Tensor  # [B, S, C]
    shapes: list[tuple[int, int]]
    next_layer: DecoderLayer | None
    tgt: Tensor | None = None  # [Nq, B, C] self-attention output, when computed on all rows
    keys: Tensor | None = None  # [B, H, Nq + P, C / H]
    values: Tensor | None = None
    allowed: Tensor | None = None  # [B, 1, 1, Nq + P] True = attended (prompt padding excluded), or None
    parts: dict[int, tuple[Tensor, ...]] = field(default_factory=dict)


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

    def folded_prompt(self, prompt: DecoderPrompt) -> Tensor:
        """``category_embed`` folded into the prompt: [K, C] class or [B, C] grounding embeddings times its transpose.

        ``(z @ category_embed) . e == z . (e @ category_embed^T)``: one [N, C] x [C, K] product instead of two
        (the two-stage selection scores all ~18k memory tokens); equal up to float32 rounding.
        """
        target = prompt.grounding_class if prompt.grounding_class is not None else prompt.class_embeddings
        return target @ self.category_embed.t()

    def prediction_heads(
        self, queries: Tensor, mask_features: Tensor, prompt: DecoderPrompt, with_masks: bool,
        folded: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """queries [B, Q, C] -> (confidence [B, Q, 1], class logits [B, Q, K], masks [B, Q, h, w] or None).

        ``folded``: ``folded_prompt(prompt)`` to score the queries against directly (bf16 mode), else None.
        """
        z = self.decoder_norm(queries)
        scores = self.confidence_score(z)
        class_embed = z @ self.category_embed if folded is None else z
        target = prompt.grounding_class if prompt.grounding_class is not None else prompt.class_embeddings
        target = target if folded is None else folded
        if prompt.grounding_class is not None:
            logits = torch.einsum("bqc,bc->bq", class_embed, target).unsqueeze(-1)
        else:
            logits = torch.einsum("bqc,nc->bqn", class_embed, target)
        masks = self.mask_logits(z, mask_features) if with_masks else None
        return scores, logits, masks

    def mask_logits(self, z: Tensor, mask_features: Tensor) -> Tensor:
        """Normalised queries [B, Q, C] and pixel embedding [B, C', h, w] -> float32 mask logits [B, Q, h, w].

        bf16 mode hands over bf16 pixel embeddings: the product (the decoder's largest) runs in bf16 with float32
        accumulation; float32 inputs: a plain float32 product.
        """
        embed = self.mask_embed(z).to(mask_features.dtype)
        b, c, h, w = mask_features.shape
        if mask_features.is_contiguous(memory_format=torch.channels_last) and c > 1:
            # channels-last (fast path) pixel embedding: [B, h*w, C] is a view, so the product reads it as it is
            # instead of einsum's contiguous copy of the whole map
            flat = mask_features.permute(0, 2, 3, 1).reshape(b, h * w, c)
            masks = torch.bmm(embed, flat.transpose(1, 2)).view(b, -1, h, w)
        else:
            masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        return masks.float()

    @staticmethod
    def _layer_prompt(prompt: DecoderPrompt, layer_id: int) -> tuple[Tensor | None, Tensor | None]:
        """Prompt tokens [P, B, C] and padding [B, P] that layer ``layer_id`` attends to (None, None without)."""
        if not prompt.prompt_tokens:
            return None, None
        level = layer_id % 3 if prompt.visual_prompt else 0
        return prompt.prompt_tokens[level], prompt.prompt_padding[level]

    @staticmethod
    def _block_rows(n_query: int) -> int:
        """Queries per ``run_chunks`` block in the blocked decoder: one block per torch thread."""
        return -(-n_query // max(1, torch.get_num_threads()))

    def _blocked_layers(
        self, output: Tensor, reference: Tensor, memory: Tensor, shapes: list[tuple[int, int]],
        attn_mask: Tensor | None, prompt: DecoderPrompt,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The decoder layers of the bf16 CPU path, query block by query block on ``run_chunks`` workers.

        Per layer one parallel step: each block attends to the keys and values of all queries (and prompt
        tokens), then runs the row-wise rest of the layer (``cross_attention_ffn``, value projection after the
        sampling), the box refinement, and the next layer's query positions and q / k / v projections.  With a
        self-attention mask (denoising queries, training only) the self-attention runs on all rows instead.

        Args:
            output: [Nq, B, C] initial queries; reference: [Nq, B, 4] initial boxes (sigmoid);
            memory: [B, S, C] float32.
        Returns:
            hidden states (per layer, [B, Nq, C], normalised) and the references (initial + per layer, [Nq, B, 4]).
        """
        dec = self.decoder
        n_query, n_levels = output.shape[0], len(shapes)
        block = self._block_rows(n_query)
        memory_rows, memory_t = memory.contiguous(), memory.transpose(0, 1)
        query_pos = dec.ref_point_head(box_sine_embedding(reference, self.cfg.hidden_dim // 2))  # 4 * d/2 = 2d
        qkv = dec.layers[0].self_attention_inputs(output, query_pos) if attn_mask is None else None
        hidden_states, references = [], [reference]
        for layer_id, layer in enumerate(dec.layers):
            p_tokens, p_pad = self._layer_prompt(prompt, layer_id)
            step = _LayerStep(layer=layer, output=output, query_pos=query_pos, qkv=qkv,
                              ref_input=reference[:, :, None].expand(-1, -1, n_levels, -1), reference=reference,
                              memory_t=memory_t, memory_rows=memory_rows, shapes=shapes,
                              next_layer=dec.layers[layer_id + 1] if layer_id + 1 < len(dec.layers) else None)
            if qkv is None:
                with single_threaded():
                    step.tgt = layer.self_attention(output, query_pos, attn_mask, p_tokens, p_pad)
            else:
                step.keys, step.values, step.allowed = layer.self_attention_keys(qkv, p_tokens, p_pad)
            run_chunks(functools.partial(self._layer_block, step), n_query, block, memory.device)
            parts = [step.parts[i] for i in sorted(step.parts)]
            output, new_reference, normed, query_pos = (torch.cat([p[k] for p in parts]) for k in range(4))
            if qkv is not None and step.next_layer is not None:
                qkv = torch.cat([p[4] for p in parts])
            references.append(new_reference)
            reference = new_reference.detach()
            hidden_states.append(normed.transpose(0, 1))  # [B, Nq, C]
        return hidden_states, references

    def _layer_block(self, step: _LayerStep, i: int, j: int) -> None:
        """Queries ``i:j`` of one blocked decoder layer (a ``run_chunks`` block); results into ``step.parts[i]``:
        the raw output, the refined boxes, the normalised output, the next layer's query positions and q / k / v."""
        layer = step.layer
        if step.tgt is not None:
            tgt = step.tgt[i:j]
        else:
            tgt = layer.attend_rows(step.output[i:j], step.qkv[i:j], step.keys, step.values, step.allowed)
        out = layer.cross_attention_ffn(tgt, step.query_pos[i:j], step.ref_input[i:j], step.memory_t, step.shapes,
                                        memory_rows=step.memory_rows)
        # refinement uses the raw (un-normalised) output; the reported boxes use the normalised one
        ref = (self.bbox_embed(out) + inverse_sigmoid(step.reference[i:j])).sigmoid()
        pos = qkv = ref  # placeholders after the last layer
        if step.next_layer is not None:
            pos = self.decoder.ref_point_head(box_sine_embedding(ref.detach(), self.cfg.hidden_dim // 2))
            if step.qkv is not None:
                qkv = step.next_layer.self_attention_inputs(out, pos)
        step.parts[i] = (out, ref, self.decoder_norm(out), pos, qkv)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        prompt: DecoderPrompt,
        denoising: DenoisingQueries | None = None,
        all_layer_masks: bool = False,
        value_dtype: torch.dtype | None = None,
        interm_masks: bool = True,
    ) -> DecoderOutput:
        """
        Args:
            multi_scale_features: 4 maps [B, C, h_l, w_l], strides 8..64 (pixel decoder order).
            mask_features: [B, mask_dim, h, w] pixel embedding.
            prompt: class embeddings or grounding class, and decoder prompt tokens.
            denoising: DN queries (training).
            all_layer_masks: compute masks for every prediction set (training) instead of only the last.
            value_dtype: the bf16 mode passes its autocast dtype (bfloat16; queries, boxes and scores stay
                float32).  On CPU the decoder then runs blocked (query blocks on worker threads, value projection
                after the sampling, ``category_embed`` folded into the prompt); elsewhere it is the dtype of the
                per-layer value projection of the memory.
            interm_masks: compute the two-stage prediction's masks (training losses use them; inference returns
                only the final masks, so the fast path skips these 300 full-resolution maps: ``None`` then).
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
        # bf16 mode: category_embed folded into the class embeddings once (saves an [S, C] x [C, C] product);
        # float32 modes keep the official order of the products
        folded = self.folded_prompt(prompt) if fast and value_dtype is not None else None
        if prompt.grounding_class is not None:
            if folded is None:
                token_scores = torch.einsum("bqc,bc->bq", output_memory @ self.category_embed, prompt.grounding_class)
            else:
                token_scores = torch.einsum("bqc,bc->bq", output_memory, folded)
        elif prompt.visual_prompt:
            token_scores = self.confidence_score(output_memory).squeeze(-1)
        elif folded is None:
            token_scores = torch.einsum(
                "bqc,nc->bqn", output_memory @ self.category_embed, prompt.class_embeddings
            ).max(-1)[0]
        else:
            token_scores = (output_memory @ folded.t()).max(-1)[0]
        topk = torch.topk(token_scores, self.num_queries, dim=1)[1]
        tgt_undetached = torch.gather(output_memory, 1, topk.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1]))
        if fast:  # the box MLP is row-wise: run it on the Q selected tokens instead of all S
            refpoints_undetached = self.bbox_embed(tgt_undetached) + torch.gather(
                proposals, 1, topk.unsqueeze(-1).expand(-1, -1, 4)
            )
        else:
            coords_unselected = self.bbox_embed(output_memory) + proposals
            refpoints_undetached = torch.gather(coords_unselected, 1, topk.unsqueeze(-1).expand(-1, -1, 4))
        i_scores, i_logits, i_masks = self.prediction_heads(tgt_undetached, mask_features, prompt,
                                                            interm_masks or all_layer_masks, folded)
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
        s, lg, m = self.prediction_heads(tgt, mask_features, prompt, all_layer_masks, folded)
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
        # bf16 mode on CPU ("blocked"): after its self-attention every op of a layer (and every head) is row-wise in
        # the queries, so the queries are split into one block per thread (run_chunks: single-threaded workers, no
        # thread join per small op); and each layer samples the float32 memory rows and projects only the Q * M
        # sampled ones (attend_memory: ~3x less work than projecting all S tokens in bf16, and float32 throughout).
        # float32 fast mode keeps the single-threaded small ops and the per-layer value projection: its outputs
        # stay exactly as they were.
        blocked = small_ops_alone and value_dtype is not None
        if blocked:
            hidden_states, references = self._blocked_layers(output, reference, memory, shapes, attn_mask, prompt)
        else:
            for layer_id, layer in enumerate(dec.layers):
                ref_input = reference[:, :, None].expand(-1, -1, n_levels, -1)
                query_pos = dec.ref_point_head(box_sine_embedding(reference, self.cfg.hidden_dim // 2))  # 4 * d/2
                p_tokens, p_pad = self._layer_prompt(prompt, layer_id)
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
        if blocked:
            # the heads of every layer, query block by query block; then the masks (one multi-threaded product)
            heads: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}

            def head_rows(i: int, j: int) -> None:
                heads[i] = [(*self.prediction_heads(hs[:, i:j], mask_features, prompt, False, folded)[:2],
                             (self.bbox_embed(hs[:, i:j]) + inverse_sigmoid(ref[i:j].transpose(0, 1))).sigmoid())
                            for hs, ref in zip(hidden_states, references)]

            run_chunks(head_rows, tgt.shape[1], self._block_rows(tgt.shape[1]), memory.device)
            for layer_id, hs in enumerate(hidden_states):
                s, lg, b = (torch.cat(t, 1) for t in zip(*(heads[i][layer_id] for i in sorted(heads))))
                scores_list.append(s)
                logits_list.append(lg)
                boxes_list.append(b)
                with_masks = all_layer_masks or layer_id == last
                # heads see LN(LN(raw)): decoder.norm then decoder_norm again (official double LayerNorm)
                masks_list.append(self.mask_logits(self.decoder_norm(hs), mask_features) if with_masks else None)
        else:
            for i, hs in enumerate(hidden_states):
                # heads see LN(LN(raw)): decoder.norm then decoder_norm again (official double LayerNorm)
                with_masks = all_layer_masks or i == last
                with single_threaded(small_ops_alone and not with_masks):
                    s, lg, m = self.prediction_heads(hs, mask_features, prompt, with_masks, folded)
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
