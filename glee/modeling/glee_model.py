"""The GLEE network: backbone, CLIP text encoder, visual prompter, pixel decoder and object decoder.

One forward serves every task; what changes is the prompt:

* ``categories``   -- a list of class names (detection / instance segmentation / class-agnostic)
* ``expressions``  -- one referring expression per image (REC / RES)
* ``visual_prompt_masks`` (+ ``visual_prompt_type``) -- interactive segmentation; combine with
  ``categories=["object"]`` as the official demo does.

Inputs are normalised images; sizes that are not a multiple of ``size_divisibility`` are zero-padded at the
bottom and right, so boxes are relative to the padded size (``GleeOutput.padded_size``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import GleeConfig
from glee.modeling.backbones import build_backbone
from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention
from glee.modeling.ms_deform_attn_fast import ms_deform_attn_auto
from glee.modeling.object_decoder import DecoderPrompt, DenoisingQueries, ObjectDecoder
from glee.modeling.pixel_decoder import PixelDecoder
from glee.modeling.text_encoder import masked_mean
from glee.modeling.text_encoder_minilm import build_text_encoder, build_tokenizer
from glee.modeling.visual_prompt import FeatureFuser, point_tokens, prompt_points, sample_points, template_crops
from glee.tokenizer import ClipTokenizer

VISUAL_PROMPT_TYPES = ("point", "box", "scribble", "mask")
# "reference": the official computation step by step (parity tests); "fast": the same outputs (float32, within
# the parity tolerance) with cached/trimmed text, fused kernels and folded layers; "fast_bf16": "fast" with
# bfloat16 autocast for the image side (text stays float32).  Training mode always computes as "reference".
INFERENCE_MODES = ("reference", "fast", "fast_bf16")


@dataclass
class CategoryEmbeddings:
    """Encoded class names: what the category path of a forward needs, reusable across images."""

    names: list[str]
    class_embeddings: Tensor  # [K, C] mean of projected CLIP token features over BOS..EOS
    fusion_tokens: Tensor  # [T, C] every valid projected token of every name, concatenated
    input_ids: Tensor  # [K, L]
    attention_mask: Tensor  # [K, L]


@dataclass
class ExpressionEmbeddings:
    """Encoded referring expressions, one per image."""

    texts: list[str]
    tokens: Tensor  # [B, L, C] projected token features (padding included)
    attention_mask: Tensor  # [B, L]
    grounding_class: Tensor  # [B, C] masked mean
    input_ids: Tensor  # [B, L]


@dataclass
class VisualPromptEmbeddings:
    """A visual prompt encoded on one frame (``GleeOutput.extra["visual_prompt"]``), reusable on later frames.

    Video object segmentation keeps the first frame's prompt: the official code encodes the template crop and
    the point tokens once and feeds them to every later frame (pass this as ``visual_prompt=``).
    """

    template: Tensor  # [B, T, C] early-fusion tokens of the template crops
    point_tokens: list[Tensor]  # per encoder level: [P, B, C]
    point_padding: list[Tensor]  # per encoder level: [B, P] (True = padding)
    points: list[Any]  # per encoder level: the sampled (y, x) points of each prompt

    def nbytes(self) -> int:
        tensors = [self.template, *self.point_tokens, *self.point_padding]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class GleeOutput:
    """Model-level predictions.  B images, Q queries, K classes (1 for expressions)."""

    pred_logits: Tensor  # [B, Q, K] raw class logits (dot product with the text embedding)
    pred_scores: Tensor  # [B, Q, 1] raw confidence logits
    pred_boxes: Tensor  # [B, Q, 4] sigmoid (cx, cy, w, h) relative to ``padded_size``
    pred_masks: Tensor  # [B, Q, H/s, W/s] mask logits, s = ``mask_stride``
    query_embeddings: Tensor  # [B, Q, C] last decoder layer, LayerNorm-ed (the tracking embedding)
    pixel_embeddings: Tensor  # [B, mask_dim, H/s, W/s] the per-pixel embedding masks are made from
    padded_size: tuple[int, int]  # (H, W) the network saw
    mask_stride: int
    aux_outputs: list[dict[str, Tensor | None]] = field(default_factory=list)
    interm_outputs: dict[str, Tensor | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # text embeddings, prompt points, DN outputs


class GleeModel(nn.Module):
    """GLEE (official ``GLEE_Model``).  State-dict keys follow the official names (see ``glee.checkpoint``)."""

    def __init__(self, cfg: GleeConfig, with_teacher: bool = False, tokenizer: ClipTokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        channels = [self.backbone.out_channels[f] for f in self.backbone.out_features]
        if cfg.visual_prompt:
            self.sot_fuser = FeatureFuser(channels[-3:], cfg.hidden_dim)
        self.text_encoder = build_text_encoder(cfg.text)  # CLIP, or frozen MiniLM for arch "minilm"
        if cfg.text.arch == "clip_frozen":
            self.text_encoder.requires_grad_(False)
        if with_teacher:
            self.text_encoder_teacher = build_text_encoder(cfg.text).requires_grad_(False)
        self.lang_projection = nn.Parameter(torch.rand(cfg.text.hidden_size, cfg.dim_proj))
        self.pixel_decoder = PixelDecoder(cfg, self.backbone.out_channels, self.backbone.out_strides)
        self.predictor = ObjectDecoder(cfg)
        self.mask_sptial_embed = nn.ParameterList(  # (sic) official name
            [nn.Parameter(torch.empty(cfg.hidden_dim, cfg.hidden_dim)) for _ in range(cfg.total_num_feature_levels)]
        )
        for p in self.mask_sptial_embed:
            nn.init.trunc_normal_(p, std=0.02)
        self.pn_indicator = nn.Embedding(2, cfg.hidden_dim)
        self._tokenizer = tokenizer
        self.text_cache_size = 8192  # texts kept by the fast mode's per-text cache (least recently used go first)
        self._text_cache: OrderedDict[tuple[str, str], _TextEntry] = OrderedDict()
        self._text_cache_version: tuple = ()
        self.inference_mode = "fast"
        self.set_inference_mode("fast")

    # ------------------------------------------------------------------ inference mode
    def set_inference_mode(self, mode: str) -> GleeModel:
        """Choose how eval-mode forwards compute: ``reference``, ``fast`` (default) or ``fast_bf16``.

        ``fast`` gives the reference's outputs within the parity tolerance: per-text cache of the text
        features (under ``torch.no_grad``), category names encoded at their own length instead of 77
        tokens, padded expression tokens dropped from decoder self-attention (where they are masked), the
        C / Triton deformable-attention kernel, early fusion folded into the prompt tokens, token-chunked
        encoder layers, frozen BatchNorm folded into the convolutions, channels-last images.
        ``fast_bf16`` adds bfloat16 autocast for everything but the text encoder.  Returns ``self``.
        """
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference mode must be one of {INFERENCE_MODES}, got {mode!r}")
        fast = mode != "reference"
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.fast_kernel = ms_deform_attn_auto if fast else None  # instance attribute: not bound
            elif hasattr(type(module), "fast_inference"):
                module.fast_inference = fast
        self.inference_mode = mode
        return self

    def compile_fast(self, enable: bool = True) -> GleeModel:
        """Run the fast path's per-chunk encoder FFN block through ``torch.compile`` (opt-in).

        One dynamic-shape graph serves all encoder layers.  It fuses the residual adds, LayerNorms and bias +
        ReLU around the GEMMs, but compiling costs tens of seconds on a small CPU, so it pays only in long
        runs (video, evaluation), not for one image.  Any compile or run failure falls back to eager with a
        warning.  Returns ``self``.
        """
        from glee.modeling.pixel_decoder import DeformableEncoderLayer

        for module in self.modules():
            if isinstance(module, DeformableEncoderLayer):
                module.use_compiled = enable
        return self

    @contextlib.contextmanager
    def using_inference_mode(self, mode: str) -> Iterator[GleeModel]:
        """``with model.using_inference_mode("reference"): ...`` -- the previous mode is restored on exit."""
        previous = self.inference_mode
        self.set_inference_mode(mode)
        try:
            yield self
        finally:
            self.set_inference_mode(previous)

    def _fast(self) -> bool:
        return self.inference_mode != "reference" and not self.training

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self) -> ClipTokenizer:
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.cfg.text)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: ClipTokenizer) -> None:
        self._tokenizer = value

    @property
    def device(self) -> torch.device:
        return self.lang_projection.device

    def encode_text_tokens(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[N, L] ids -> [N, L, dim_proj] projected CLIP features (``last_hidden_state @ lang_projection``)."""
        return self.text_encoder(input_ids.to(self.device), attention_mask.to(self.device)) @ self.lang_projection

    def encode_categories(self, names: list[str]) -> CategoryEmbeddings:
        """Class names -> class embeddings and early-fusion tokens (official category path)."""
        names = _check_names(names)
        if self._fast():
            return self._encode_categories_fast(names)
        ids, mask = self.tokenizer(names, pad_to_max_length=self.cfg.text.pad_to_max_length)
        tokens = self.encode_text_tokens(ids, mask)
        teacher = getattr(self, "text_encoder_teacher", None)
        if teacher is not None and not self.training:
            # reference mode repeats the official per-call work: the official forward also runs the frozen
            # teacher on the names for a zero-weighted distillation loss; its output never reaches a prediction
            with torch.no_grad():
                teacher(ids.to(self.device), mask.to(self.device))
        mask = mask.to(tokens.device)
        return CategoryEmbeddings(
            names=names,
            class_embeddings=masked_mean(tokens, mask),
            fusion_tokens=tokens.flatten(0, 1)[mask.flatten() > 0],
            input_ids=ids,
            attention_mask=mask,
        )

    def encode_expressions(self, texts: list[str]) -> ExpressionEmbeddings:
        """Referring expressions (one per image) -> per-token features and pooled embedding."""
        if isinstance(texts, str) or not texts:
            raise ValueError("expressions must be a non-empty list of strings, one per image")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(f"every expression must be a non-empty string, got {texts!r}")
        if self._fast():
            return self._encode_expressions_fast(list(texts))
        ids, mask = self.tokenizer(list(texts), pad_to_max_length=True)
        tokens = self.encode_text_tokens(ids, mask)
        mask = mask.to(tokens.device)
        return ExpressionEmbeddings(
            texts=list(texts), tokens=tokens, attention_mask=mask, grounding_class=masked_mean(tokens, mask),
            input_ids=ids,
        )

    # ------------------------------------------------------------------ fast text path
    def _cached_texts(self, kind: str, texts: list[str]) -> tuple[list[_TextEntry | None], bool]:
        """Cache look-up: entries (None = miss) and whether the cache may be used at all.

        The cache serves only no-grad eval forwards; its entries are dropped when any text weight changes
        (in-place update, new storage, dtype or device), which the (pointer, version) key detects.
        """
        if torch.is_grad_enabled():
            return [None] * len(texts), False
        params = [*self.text_encoder.parameters(), self.lang_projection]
        version = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if version != self._text_cache_version:
            self._text_cache.clear()
            self._text_cache_version = version
        entries = []
        for text in texts:
            entry = self._text_cache.get((kind, text))
            if entry is not None:
                self._text_cache.move_to_end((kind, text))
            entries.append(entry)
        return entries, True

    def _store_texts(self, kind: str, texts: list[str], entries: list[_TextEntry]) -> None:
        for text, entry in zip(texts, entries):
            self._text_cache[(kind, text)] = entry
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)

    def _encode_categories_fast(self, names: list[str]) -> CategoryEmbeddings:
        """``encode_categories`` with each name encoded at its own length and cached per name.

        Exact: CLIP's text attention is causal with a padding mask and only valid tokens are used (pooled
        mean, early-fusion tokens), so trailing padding changes nothing.  ``input_ids`` / ``attention_mask``
        are still returned padded as the tokenizer would pad them.
        """
        entries, use_cache = self._cached_texts("category", names)
        missing = list(dict.fromkeys(n for n, e in zip(names, entries) if e is None))
        if missing:
            fresh = self._encode_texts(missing, self.cfg.text.pad_to_max_length, trim=True)
            if use_cache:
                self._store_texts("category", missing, fresh)
            by_name = dict(zip(missing, fresh))
            entries = [e if e is not None else by_name[n] for n, e in zip(names, entries)]
        length = max(e.input_ids.shape[0] for e in entries)
        return CategoryEmbeddings(
            names=names,
            class_embeddings=torch.stack([e.pooled for e in entries]),
            fusion_tokens=torch.cat([e.tokens for e in entries]),
            input_ids=torch.stack([_pad_row(e.input_ids, length, self.tokenizer.pad_id) for e in entries]),
            attention_mask=torch.stack([_pad_row(e.attention_mask, length, 0) for e in entries]),
        )

    def _encode_expressions_fast(self, texts: list[str]) -> ExpressionEmbeddings:
        """``encode_expressions`` cached per text.  All 77 positions are kept: early fusion reads the padded
        ones (their features depend on the valid tokens and their own position); the decoder drops them."""
        entries, use_cache = self._cached_texts("expression", texts)
        missing = list(dict.fromkeys(t for t, e in zip(texts, entries) if e is None))
        if missing:
            fresh = self._encode_texts(missing, True, trim=False)
            if use_cache:
                self._store_texts("expression", missing, fresh)
            by_text = dict(zip(missing, fresh))
            entries = [e if e is not None else by_text[t] for t, e in zip(texts, entries)]
        return ExpressionEmbeddings(
            texts=texts,
            tokens=torch.stack([e.tokens for e in entries]),
            attention_mask=torch.stack([e.attention_mask for e in entries]).to(self.device),
            grounding_class=torch.stack([e.pooled for e in entries]),
            input_ids=torch.stack([e.input_ids for e in entries]),
        )

    def _encode_texts(self, texts: list[str], pad_to_max_length: bool, trim: bool) -> list[_TextEntry]:
        """Tokenise, run the text tower once (on the longest valid length when ``trim``), split per text.

        Trimmed entries hold the valid tokens only; untrimmed ones every position.  Always float32: the
        bf16 mode autocasts only the image side.
        """
        ids, mask = self.tokenizer(texts, pad_to_max_length=pad_to_max_length)
        lengths = mask.sum(1)
        used = int(lengths.max()) if trim else ids.shape[1]
        with torch.autocast(self.device.type, enabled=False):
            tokens = self.encode_text_tokens(ids[:, :used], mask[:, :used])
        dev_mask = mask[:, :used].to(tokens.device)
        pooled = masked_mean(tokens, dev_mask)
        entries = []
        for i in range(len(texts)):
            toks = tokens[i, : int(lengths[i])] if trim else tokens[i]
            entries.append(_TextEntry(ids[i], mask[i], toks.detach(), pooled[i].detach()))
        return entries

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        categories: list[str] | CategoryEmbeddings | None = None,
        expressions: list[str] | ExpressionEmbeddings | None = None,
        visual_prompt_masks: Tensor | None = None,
        visual_prompt_type: str = "box",
        generator: torch.Generator | None = None,
        denoising: DenoisingQueries | None = None,
        all_layer_masks: bool = False,
        visual_prompt: VisualPromptEmbeddings | None = None,
        interm_masks: bool | None = None,
    ) -> GleeOutput:
        """
        Args:
            images: [B, 3, H, W] float, normalised with ``cfg.pixel_mean`` / ``cfg.pixel_std``.
            categories: class names (or ``encode_categories`` output) for the category path.
            expressions: one referring expression per image (or ``encode_expressions`` output).
            visual_prompt_masks: [B, H, W] bool, one prompt per image, in the same coordinates as ``images``.
            visual_prompt_type: ``point``, ``box``, ``scribble`` or ``mask``.
            generator: RNG for subsampling prompts with more than ``max_spatial_len`` pixels (default: global).
            denoising: DN queries (training).
            all_layer_masks: masks for every prediction set (training).
            visual_prompt: a prompt already encoded by an earlier forward (its ``extra["visual_prompt"]``), used
                instead of ``visual_prompt_masks`` (video object segmentation keeps the first frame's prompt).
            interm_masks: whether ``interm_outputs["pred_masks"]`` (masks of the two-stage query selection, used
                by the training losses) is computed.  Default (None): yes in training, in reference mode and
                with ``all_layer_masks``; no in the fast inference modes, where it is None (300 mask maps at
                the pixel-embedding resolution that no prediction uses).  Pass True to get them there too.
        """
        images = self._check_images(images)
        if (self.inference_mode == "fast_bf16" and not self.training
                and not torch.is_autocast_enabled(images.device.type)):
            # text first, in float32 (and through the cache); then the image side under bf16 autocast
            if categories is not None and not isinstance(categories, CategoryEmbeddings):
                categories = self.encode_categories(categories)
            if expressions is not None and not isinstance(expressions, ExpressionEmbeddings):
                expressions = self.encode_expressions(expressions)
            with torch.autocast(images.device.type, dtype=torch.bfloat16):
                out = self.forward(images, categories, expressions, visual_prompt_masks, visual_prompt_type,
                                   generator, denoising, all_layer_masks, visual_prompt, interm_masks)
            return _outputs_to_float32(out)
        batch = images.shape[0]
        if categories is None and expressions is None:
            raise ValueError("give `categories` (class names) or `expressions` (one per image); for visual "
                             "prompts pass categories=['object'] as the official demo does")
        if visual_prompt_masks is not None:
            visual_prompt_masks = self._check_prompt_masks(visual_prompt_masks, images)
            if not self.cfg.visual_prompt:
                raise ValueError("this model has no visual prompter (cfg.visual_prompt is False, e.g. a stage-1 "
                                 "checkpoint); use a stage-2/3 model for interactive segmentation")
            if visual_prompt_type not in VISUAL_PROMPT_TYPES:
                raise ValueError(f"visual_prompt_type must be one of {VISUAL_PROMPT_TYPES}, got {visual_prompt_type!r}")
        if visual_prompt is not None:
            if visual_prompt_masks is not None:
                raise ValueError("give visual_prompt_masks (a new prompt) or visual_prompt (an encoded one), not both")
            if visual_prompt.template.shape[0] != batch:
                raise ValueError(f"the encoded visual prompt holds {visual_prompt.template.shape[0]} prompts for "
                                 f"{batch} images; give one per image")
        padded, (height, width) = self._pad(images)
        if self._fast():  # oneDNN convolutions run fastest on NHWC; the pixel decoder reads NHWC for free
            padded = padded.contiguous(memory_format=torch.channels_last)
        if visual_prompt_masks is not None:
            visual_prompt_masks = F.pad(
                visual_prompt_masks, (0, padded.shape[-1] - width, 0, padded.shape[-2] - height)
            )

        extra: dict[str, Any] = {}
        fusion_tokens: Tensor | None = None
        prompt = DecoderPrompt()
        if expressions is not None:
            expr = expressions
            if not isinstance(expr, ExpressionEmbeddings):
                expr = self.encode_expressions(expr)
            if expr.tokens.shape[0] != batch:
                raise ValueError(f"got {expr.tokens.shape[0]} expressions for {batch} images; give one per image")
            prompt.grounding_class = expr.grounding_class
            prompt.prompt_tokens = [expr.tokens.transpose(0, 1)]
            prompt.prompt_padding = [expr.attention_mask == 0]
            fusion_tokens = expr.tokens.float()
            extra["expressions"] = expr
        elif categories is not None:
            cats = categories if isinstance(categories, CategoryEmbeddings) else self.encode_categories(categories)
            prompt.class_embeddings = cats.class_embeddings
            fusion_tokens = cats.fusion_tokens[None].expand(batch, -1, -1).float()
            extra["categories"] = cats

        features = self.backbone(padded)
        template = None
        if visual_prompt_masks is not None:
            crops = template_crops(padded, visual_prompt_masks, visual_prompt_type, self.cfg.visual_template_size)
            template = self.encode_template(crops)
        elif visual_prompt is not None:
            template = visual_prompt.template
        if template is not None:
            fusion_tokens = template if fusion_tokens is None else torch.cat([fusion_tokens, template], 1)
        if not self.cfg.early_fusion:
            fusion_tokens = None
        pix = self.pixel_decoder(features, fusion_tokens)

        if template is not None:
            if visual_prompt is None:
                tokens, padding, sampled = self.visual_point_tokens(
                    pix.multi_scale_features, visual_prompt_masks, generator
                )
                visual_prompt = VisualPromptEmbeddings(template, tokens, padding, sampled)
            prompt.visual_prompt = True
            prompt.prompt_tokens = list(visual_prompt.point_tokens)
            prompt.prompt_padding = list(visual_prompt.point_padding)
            extra["visual_prompt"] = visual_prompt
            extra["prompt_points"] = visual_prompt.points
            extra["prompt_padding"] = prompt.prompt_padding
        mask_features = pix.mask_features
        decoder_context = contextlib.nullcontext()
        value_dtype = None
        if self._fast() and torch.is_autocast_enabled(padded.device.type):
            # bf16 mode: the object decoder (300 queries, small GEMMs) stays float32 -- cheap, and it keeps the
            # two-stage top-k and the heads precise -- except its largest product, the masks, which takes the
            # bf16 pixel embedding as it is (see ObjectDecoder.mask_logits); on CPU it runs blocked (query blocks
            # on worker threads, value projection after the sampling; see ObjectDecoder.forward)
            decoder_context = torch.autocast(padded.device.type, enabled=False)
            value_dtype = torch.get_autocast_dtype(padded.device.type)
        if interm_masks is None:
            interm_masks = all_layer_masks or not self._fast()
        with decoder_context:
            out = self.predictor(pix.multi_scale_features, mask_features, prompt, denoising, all_layer_masks,
                                 value_dtype=value_dtype, interm_masks=interm_masks)
        if out.dn_outputs is not None:
            extra["dn_outputs"] = out.dn_outputs
        return GleeOutput(
            pred_logits=out.pred_logits,
            pred_scores=out.pred_scores,
            pred_boxes=out.pred_boxes,
            pred_masks=out.pred_masks,
            query_embeddings=out.pred_track_embed,
            pixel_embeddings=pix.mask_features,
            padded_size=(padded.shape[-2], padded.shape[-1]),
            mask_stride=self.cfg.mask_feature_stride,
            aux_outputs=out.aux_outputs,
            interm_outputs=out.interm_outputs,
            extra=extra,
        )

    def encode_template(self, crops: Tensor) -> Tensor:
        """[N, 3, 256, 256] template crops -> [N, T, C] early-fusion tokens (backbone frozen here)."""
        with torch.no_grad():
            feats = self.backbone(crops.contiguous())
        levels = [feats[f] for f in self.backbone.out_features][-3:]
        return self.sot_fuser(levels).float().flatten(2).transpose(1, 2)

    def visual_point_tokens(
        self, levels: list[Tensor], masks: Tensor, generator: torch.Generator | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per encoder level: prompt tokens [P, B, C], padding [B, P] and the sampled (y, x) points.

        Subsampling draws ``randperm`` in the official order -- first for the (unused) pooled prompt query,
        then for each level -- so a seeded run reproduces the official point choice.
        """
        points = prompt_points(masks)
        max_len = self.cfg.max_spatial_len
        for p in points:  # the official pooled query's draw: its result is never used
            sample_points(p, max_len, generator)
        tokens, paddings, sampled_all = [], [], []
        for i, level_map in enumerate(levels):
            sampled = [sample_points(p, max_len, generator) for p in points]
            tok, pad = point_tokens(level_map, self.mask_sptial_embed[i], sampled, self.pn_indicator.weight[0])
            tokens.append(tok)
            paddings.append(pad)
            sampled_all.append(sampled)
        return tokens, paddings, sampled_all

    # ------------------------------------------------------------------ input checks
    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dim() == 3:
            raise ValueError(f"images must have rank 4 [B, 3, H, W], got shape {tuple(images.shape)}; "
                             "add a batch dimension with images[None]")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a normalised float tensor, got dtype {images.dtype}; "
                             "use glee.preprocess or (x - cfg.pixel_mean) / cfg.pixel_std")
        if images.shape[-1] < 1 or images.shape[-2] < 1:
            raise ValueError(f"images have zero size {tuple(images.shape)}")
        return images

    def _check_prompt_masks(self, masks: Tensor, images: Tensor) -> Tensor:
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"visual_prompt_masks must be [B, H, W] = {(images.shape[0], *images.shape[-2:])}, "
                             f"got {tuple(masks.shape)}")
        masks = masks.bool()
        empty = [i for i, m in enumerate(masks) if not m.any()]
        if empty:
            raise ValueError(f"visual prompt of image(s) {empty} is empty or lies outside the image; "
                             "give a point, box or scribble inside the image")
        return masks

    def _pad(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = images.shape[-2:]
        div = self.cfg.size_divisibility
        ph, pw = (-h) % div, (-w) % div
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        return images, (h, w)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path) -> None:
        from glee.checkpoint import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> GleeModel:
        from glee.checkpoint import from_pretrained

        return from_pretrained(folder, map_location)


@dataclass
class _TextEntry:
    """One cached text: tokenizer row, token features ([T, C] valid tokens or [L, C] all) and pooled mean."""

    input_ids: Tensor  # [L]
    attention_mask: Tensor  # [L]
    tokens: Tensor
    pooled: Tensor  # [C]


def _pad_row(row: Tensor, length: int, value: int) -> Tensor:
    return row if row.shape[0] == length else torch.cat([row, row.new_full((length - row.shape[0],), value)])


def _outputs_to_float32(out: GleeOutput) -> GleeOutput:
    """Cast every floating tensor of a (bf16 autocast) output to float32."""

    def cast(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.float() if x.is_floating_point() else x
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        if isinstance(x, list):
            return [cast(v) for v in x]
        return x

    for name in ("pred_logits", "pred_scores", "pred_boxes", "pred_masks", "query_embeddings", "pixel_embeddings",
                 "aux_outputs", "interm_outputs"):
        setattr(out, name, cast(getattr(out, name)))
    return out


def _check_names(names: list[str]) -> list[str]:
    if isinstance(names, str):
        raise ValueError("categories must be a list of names, not one string; e.g. ['person', 'car']")
    names = list(names)
    if not names:
        raise ValueError("the category list is empty; give at least one class name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"category names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        warnings.warn("duplicate class names: each copy gets its own class index", stacklevel=3)
    return names
