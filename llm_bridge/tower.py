"""GLEE as the vision tower of LLaVA-style models.

One framework-neutral core, :class:`GleeFeatureExtractor`, runs a (frozen) GLEE model on normalised square
images and returns

* visual tokens ``[B, N, C]``: GLEE's object-query embeddings (``GleeOutput.query_embeddings``, Q tokens),
  optionally followed by ``g*g`` average-pooled pixel-embedding tokens, so ``N = Q + g*g``;
* the pixel-embedding map ``[B, mask_dim, S/4, S/4]`` that ``[SEG]`` embeddings are dot-multiplied with;
* GLEE's own reading of each query (``query_mask_embeddings``, ``query_evidence``: its mask embedding, class
  probabilities over the prompt, confidence and box), which the ``query_pointer`` [SEG] head points with.

Two thin adapters expose it:

* transformers: :class:`GleeVisionConfig` / :class:`GleeVisionModel` (registered with ``AutoConfig`` /
  ``AutoModel`` as ``glee_vision_model``), :class:`GleeImageProcessor` (``AutoImageProcessor``) and
  :class:`GleeLlavaProcessor`, which inserts exactly N image tokens per ``<image>``.  They plug into
  ``LlavaForConditionalGeneration`` with ``vision_feature_select_strategy="full"`` (GLEE has no CLS token)
  and ``vision_feature_layer=-1``; see :func:`build_llava_config`.
* the original LLaVA code (haotian-liu/LLaVA and LISA's fork): :class:`GleeLlavaVisionTower` implements the
  tower contract (``is_loaded``, ``load_model``, ``image_processor``, ``forward`` on a tensor or a list,
  ``dummy_feature``, ``hidden_size``, ``num_patches`` ...) and :func:`register_llava_builder` patches both
  ``build_vision_tower`` bindings so that ``mm_vision_tower="glee:<preset or folder>"`` builds it.

Neither framework's tower API returns anything but token features, so both adapters also keep the last
forward's pixel embeddings (``last_pixel_embeddings``); the reasoning-segmentation model in
:mod:`llm_bridge.model` calls the core directly and gets both outputs explicitly.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import MultiModalData

from glee.checkpoint import CONFIG_NAME
from glee.config import GleeConfig
from glee.modeling.glee_model import CategoryEmbeddings, GleeModel
from glee.modeling.object_decoder import DecoderPrompt

MODEL_TYPE = "glee_vision_model"
DEFAULT_PROMPT = ("object",)
TOWER_NAME_PREFIX = "glee:"


# ---------------------------------------------------------------------------------------------------------------
# framework-neutral core
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class VisualFeatures:
    """What the tower gives the language side.  B images, N visual tokens."""

    tokens: Tensor  # [B, N, C] object-query embeddings (+ pooled pixel tokens)
    pixel_embeddings: Tensor  # [B, mask_dim, S/s, S/s] per-pixel embedding of the padded square input
    mask_stride: int  # s: input pixels per pixel-embedding cell (4 for ResNet/Swin GLEE)
    input_size: tuple[int, int]  # (H, W) the tower saw (after GLEE's own size_divisibility padding)
    # [B, Q, mask_dim] GLEE's own mask embedding of each object query: query_mask_embeddings[b, q] . pixel
    # embeddings = GLEE's mask logits of query q (what a pointer [SEG] projection combines)
    query_mask_embeddings: Tensor | None = None
    # [B, Q, K + 5] what GLEE reads in each query (see ``query_evidence``): sigmoid class probabilities over the K
    # prompt categories (or the extractor's ``evidence_categories``), sigmoid confidence, and the box (cx, cy, w, h)
    # relative to ``input_size``
    query_evidence: Tensor | None = None

    def select(self, index: Tensor | Sequence[int]) -> VisualFeatures:
        """Rows ``index`` (e.g. one entry per conversation that shares an image)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        masks, evidence = self.query_mask_embeddings, self.query_evidence
        return VisualFeatures(self.tokens[index], self.pixel_embeddings[index], self.mask_stride, self.input_size,
                              None if masks is None else masks[index], None if evidence is None else evidence[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VisualFeatures:
        masks, evidence = self.query_mask_embeddings, self.query_evidence
        return VisualFeatures(
            self.tokens.to(device=device, dtype=dtype),
            self.pixel_embeddings.to(device=device, dtype=dtype),
            self.mask_stride,
            self.input_size,
            None if masks is None else masks.to(device=device, dtype=dtype),
            None if evidence is None else evidence.to(device=device, dtype=dtype),
        )


def query_evidence(pred_logits: Tensor, pred_scores: Tensor, pred_boxes: Tensor) -> Tensor:
    """GLEE's per-query predictions as one feature vector: what a small LM cannot easily read off the embeddings.

    Args:
        pred_logits: [B, Q, K] class logits over the prompt; pred_scores: [B, Q, 1] confidence logits;
        pred_boxes: [B, Q, 4] sigmoid (cx, cy, w, h).
    Returns:
        [B, Q, K + 5]: sigmoid class probabilities, sigmoid confidence, the box.
    """
    return torch.cat([pred_logits.sigmoid(), pred_scores.sigmoid(), pred_boxes], dim=-1)


class GleeFeatureExtractor(nn.Module):
    """GLEE -> visual tokens + pixel embeddings.  Frozen (no grad, eval mode) unless ``freeze=False``.

    GLEE needs a prompt for every forward; the bridge uses a class-agnostic category prompt (default
    ``["object"]``, the official demo's prompt for visual prompting), so the queries are the generic
    top-scoring objects of the image.  When frozen, the prompt's text embeddings are computed once and cached.

    ``evidence_categories``: names GLEE's class head scores each query against for ``query_evidence`` instead of
    the prompt (the queries themselves still come from the prompt).  E.g. the single words of a compositional
    prompt ("white", "star" for "white star"): GLEE then reads the colour and the shape of an object separately,
    which carries over to colour-shape pairs it never saw, where the closest prompt name is a wrong pair.
    """

    def __init__(
        self,
        glee_model: GleeModel,
        pooled_tokens_per_side: int = 0,
        prompt: Sequence[str] = DEFAULT_PROMPT,
        freeze: bool = True,
        evidence_categories: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        cfg = glee_model.cfg
        if pooled_tokens_per_side < 0:
            raise ValueError(f"pooled_tokens_per_side must be >= 0, got {pooled_tokens_per_side}")
        if pooled_tokens_per_side and cfg.mask_dim != cfg.hidden_dim:
            raise ValueError(
                f"pooled pixel tokens need mask_dim == hidden_dim (got {cfg.mask_dim} and {cfg.hidden_dim}); "
                "set pooled_tokens_per_side=0"
            )
        if isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty list of class names, got {prompt!r}")
        self.glee = glee_model
        self.pooled_tokens_per_side = int(pooled_tokens_per_side)
        self.prompt = list(prompt)
        self.frozen = bool(freeze)
        self._prompt_cache: CategoryEmbeddings | None = None
        self.set_evidence_categories(evidence_categories)
        if self.frozen:
            self.glee.requires_grad_(False)
            self.glee.eval()

    # ------------------------------------------------------------------ properties
    @property
    def cfg(self) -> GleeConfig:
        return self.glee.cfg

    @property
    def hidden_size(self) -> int:
        """C: width of the visual tokens (the projector's input)."""
        return self.cfg.hidden_dim

    @property
    def mask_dim(self) -> int:
        """Channels of the pixel embedding (the [SEG] projection's output)."""
        return self.cfg.mask_dim

    @property
    def num_queries(self) -> int:
        return self.cfg.num_queries

    @property
    def evidence_dim(self) -> int:
        """K + 5: width of ``VisualFeatures.query_evidence`` (K prompt or evidence categories)."""
        return len(self.evidence_categories or self.prompt) + 5

    @property
    def num_tokens(self) -> int:
        """N = Q object queries + g*g pooled pixel tokens."""
        return self.cfg.num_queries + self.pooled_tokens_per_side**2

    @property
    def device(self) -> torch.device:
        return self.glee.device

    @property
    def dtype(self) -> torch.dtype:
        return self.glee.lang_projection.dtype

    def train(self, mode: bool = True) -> GleeFeatureExtractor:
        # a frozen tower stays in eval mode when the surrounding LLaVA model is put in training mode
        super().train(mode)
        if self.frozen:
            self.glee.eval()
        return self

    # ------------------------------------------------------------------ forward
    def _encoded(self, names: list[str], cached: CategoryEmbeddings | None) -> CategoryEmbeddings:
        """GLEE's text embeddings of ``names``: ``cached`` while it still fits (frozen tower, same device and
        dtype), else encoded anew (with grad when the tower trains)."""
        if (self.frozen and cached is not None and cached.class_embeddings.device == self.device
                and cached.class_embeddings.dtype == self.dtype):
            return cached
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.glee.encode_categories(names)

    def _prompt(self) -> CategoryEmbeddings | list[str]:
        if not self.frozen:
            return self.prompt
        self._prompt_cache = self._encoded(self.prompt, self._prompt_cache)
        return self._prompt_cache

    def set_evidence_categories(self, names: Sequence[str] | None) -> None:
        """Score the queries' evidence against ``names`` from now on (None: the prompt); see the class docs."""
        if names is not None and (isinstance(names, str) or not names):
            raise ValueError(f"evidence_categories must be None or a non-empty list of names, got {names!r}")
        self.evidence_categories = None if names is None else list(names)
        self._evidence_cache: CategoryEmbeddings | None = None

    def _evidence_logits(self, query_embeddings: Tensor) -> Tensor:
        """[B, Q, C] -> [B, Q, K] GLEE's class logits of its queries for ``evidence_categories`` (its own class
        head, ``prediction_heads``, as if those names had been the prompt)."""
        names = self._encoded(self.evidence_categories, self._evidence_cache)
        self._evidence_cache = names if self.frozen else None
        prompt = DecoderPrompt(class_embeddings=names.class_embeddings)
        return self.glee.predictor.prediction_heads(query_embeddings, None, prompt, with_masks=False)[1]

    def forward(self, pixel_values: Tensor) -> VisualFeatures:
        """
        Args:
            pixel_values: [B, 3, H, W] normalised with GLEE's mean/std (see :class:`GleeImageProcessor`).
        Returns:
            :class:`VisualFeatures` with tokens [B, N, C] and pixel embeddings [B, mask_dim, H'/s, W'/s].
        """
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a [B, 3, H, W] tensor, got {shape}")
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.glee(pixel_values, categories=self._prompt())
            tokens = out.query_embeddings
            pix = out.pixel_embeddings
            # GLEE's mask head: mask_embed(decoder_norm(.)) of the (already normalised) query embedding
            head = self.glee.predictor
            query_masks = head.mask_embed(head.decoder_norm(tokens))
            g = self.pooled_tokens_per_side
            if g:
                pooled = F.adaptive_avg_pool2d(pix, (g, g)).flatten(2).transpose(1, 2)  # [B, g*g, mask_dim]
                tokens = torch.cat([tokens, pooled], dim=1)
            logits = out.pred_logits
            if self.evidence_categories is not None:
                logits = self._evidence_logits(out.query_embeddings)
            evidence = query_evidence(logits, out.pred_scores, out.pred_boxes)
        return VisualFeatures(tokens, pix, out.mask_stride, tuple(out.padded_size), query_masks, evidence)


def read_glee_config(source: str | Path | GleeModel | GleeConfig) -> GleeConfig:
    """The GleeConfig of a preset name, ``save_pretrained`` folder, config or model (weights not read)."""
    if isinstance(source, GleeModel):
        return source.cfg
    if isinstance(source, GleeConfig):
        return source
    path = Path(str(source))
    if path.is_dir():
        if not (path / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; expected a folder written by GleeModel.save_pretrained")
        return GleeConfig.from_dict(json.loads((path / CONFIG_NAME).read_text())["config"])
    try:
        return GleeConfig.preset(str(source))
    except ValueError as err:
        raise ValueError(
            f"GLEE source {str(source)!r} is neither a folder written by GleeModel.save_pretrained nor a preset; {err}"
        ) from None


def load_glee(source: str | Path | GleeModel | GleeConfig) -> GleeModel:
    """A GLEE model from a preset name (random weights), a ``save_pretrained`` folder, a config or a model."""
    if isinstance(source, GleeModel):
        return source
    if isinstance(source, GleeConfig):
        return GleeModel(source).eval()
    path = Path(str(source))
    if path.is_dir():
        return GleeModel.from_pretrained(path)
    name = str(source)
    try:
        cfg = GleeConfig.preset(name)
    except ValueError as err:
        raise ValueError(
            f"GLEE source {name!r} is neither a folder written by GleeModel.save_pretrained nor a preset; {err}"
        ) from None
    warnings.warn(f"GLEE preset {name!r} built with random weights; load a checkpoint for real features",
                  stacklevel=2)
    return GleeModel(cfg).eval()


# ---------------------------------------------------------------------------------------------------------------
# image preprocessing (LISA's SAM branch: longest side -> S, normalise on the 0..255 scale, pad bottom/right)
# ---------------------------------------------------------------------------------------------------------------
def resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``image_size`` (same rounding as the image processor)."""
    scale = min(image_size / height, image_size / width)
    return int(height * scale), int(width * scale)


class GleeImageProcessor(PilBackend):
    """Resize the longest side to ``image_size``, rescale, normalise with GLEE's mean/std, zero-pad to a square.

    Output ``pixel_values`` [B, 3, S, S].  ``image_mean``/``image_std`` are on the 0..1 scale as transformers
    expects (GLEE's 0..255 values / 255); ``crop_size`` is what the LLaVA code uses for a dummy image.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = [m / 255 for m in GleeConfig().pixel_mean]
    image_std = [s / 255 for s in GleeConfig().pixel_std]
    size = {"max_height": 1024, "max_width": 1024}
    pad_size = {"height": 1024, "width": 1024}
    crop_size = {"height": 1024, "width": 1024}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_pad = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    @classmethod
    def for_size(cls, image_size: int, pixel_mean: Sequence[float] | None = None,
                 pixel_std: Sequence[float] | None = None) -> GleeImageProcessor:
        """A processor for square inputs of ``image_size``; mean/std on GLEE's 0..255 scale."""
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        kwargs: dict[str, Any] = {
            "size": {"max_height": image_size, "max_width": image_size},
            "pad_size": {"height": image_size, "width": image_size},
            "crop_size": {"height": image_size, "width": image_size},
        }
        if pixel_mean is not None:
            kwargs["image_mean"] = [m / 255 for m in pixel_mean]
        if pixel_std is not None:
            kwargs["image_std"] = [s / 255 for s in pixel_std]
        return cls(**kwargs)

    @property
    def image_size(self) -> int:
        return int(self.pad_size.height)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return resized_size(height, width, self.image_size)


# ---------------------------------------------------------------------------------------------------------------
# transformers: config, model, processor
# ---------------------------------------------------------------------------------------------------------------
class GleeVisionConfig(PreTrainedConfig):
    """transformers config of the GLEE tower.

    ``glee_config`` is a full ``GleeConfig.to_dict()`` (default: the ``glee_preset``); ``hidden_size``,
    ``mask_dim``, ``num_queries`` and ``image_seq_length`` are derived from it and kept for the LLaVA code.
    ``patch_size`` is nominal (queries are not a grid); ``image_size`` is the square input side.
    """

    model_type = MODEL_TYPE
    base_config_key = "vision_config"

    glee_preset: str = "lite"
    glee_config: dict | None = None
    image_size: int = 1024
    pooled_tokens_per_side: int = 0
    prompt_categories: list | None = None
    freeze: bool = True
    hidden_size: int = 256
    mask_dim: int = 256
    num_queries: int = 300
    patch_size: int = 4
    image_seq_length: int = 300

    def __post_init__(self, **kwargs: Any) -> None:
        if self.glee_config is None:
            self.glee_config = GleeConfig.preset(self.glee_preset).to_dict()
        cfg = GleeConfig.from_dict(self.glee_config)
        self.hidden_size = cfg.hidden_dim
        self.mask_dim = cfg.mask_dim
        self.num_queries = cfg.num_queries
        self.patch_size = cfg.mask_feature_stride
        if self.prompt_categories is None:
            self.prompt_categories = list(DEFAULT_PROMPT)
        self.image_seq_length = cfg.num_queries + self.pooled_tokens_per_side**2
        super().__post_init__(**kwargs)

    @property
    def glee(self) -> GleeConfig:
        return GleeConfig.from_dict(self.glee_config)


@dataclass
class GleeVisionOutput(BaseModelOutputWithPooling):
    """``last_hidden_state`` / ``hidden_states[-1]``: visual tokens [B, N, C]; ``pixel_embeddings``: the mask map."""

    pixel_embeddings: Tensor | None = None


class GleeVisionModel(PreTrainedModel):
    """GLEE tower for transformers (``AutoModel.from_config(GleeVisionConfig(...))``)."""

    config_class = GleeVisionConfig
    config: GleeVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "glee_vision"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["GleeModel"]

    def __init__(self, config: GleeVisionConfig) -> None:
        super().__init__(config)
        self.extractor = GleeFeatureExtractor(
            GleeModel(config.glee),
            pooled_tokens_per_side=config.pooled_tokens_per_side,
            prompt=config.prompt_categories,
            freeze=config.freeze,
        )
        self.last_pixel_embeddings: Tensor | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # GLEE initialises itself (official schemes); real weights come from a GLEE checkpoint
        return

    @property
    def glee(self) -> GleeModel:
        return self.extractor.glee

    def load_glee(self, source: str | Path | GleeModel) -> GleeVisionModel:
        """Copy GLEE weights (a model or a ``save_pretrained`` folder) into the tower, strictly."""
        model = load_glee(source)
        if model.cfg.to_dict() != self.config.glee_config:
            raise ValueError("the GLEE checkpoint's config differs from this tower's glee_config; build the "
                             "tower with glee_vision_config(<that model or folder>)")
        self.extractor.glee.load_state_dict(model.state_dict(), strict=True)
        self.extractor._prompt_cache = None
        return self

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = True,
        **kwargs: Any,
    ) -> GleeVisionOutput | tuple:
        """pixel_values [B, 3, S, S] -> tokens [B, N, C] (``hidden_states`` is a one-element tuple)."""
        feats = self.extractor(pixel_values)
        self.last_pixel_embeddings = feats.pixel_embeddings
        out = GleeVisionOutput(
            last_hidden_state=feats.tokens,
            pooler_output=feats.tokens.mean(dim=1),
            hidden_states=(feats.tokens,),
            pixel_embeddings=feats.pixel_embeddings,
        )
        return out if return_dict is not False else out.to_tuple()


class GleeLlavaProcessor(LlavaProcessor):
    """``LlavaProcessor`` that inserts exactly ``num_image_tokens`` image tokens per ``<image>``.

    The stock formula assumes a ViT patch grid (+1 CLS); GLEE's visual tokens are Q object queries plus
    ``g*g`` pooled pixel tokens, independent of the image size.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        **kwargs: Any,
    ) -> None:
        if num_image_tokens is None or int(num_image_tokens) < 1:
            raise ValueError("num_image_tokens (the tower's N = queries + pooled tokens) must be a positive int")
        self.num_image_tokens = int(num_image_tokens)
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=None,
            vision_feature_select_strategy="full",
            chat_template=chat_template,
            image_token=image_token,
            **kwargs,
        )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes: list | None = None, **kwargs: Any) -> MultiModalData:
        data: dict[str, Any] = {}
        if image_sizes is not None:
            data["num_image_tokens"] = [self.num_image_tokens] * len(image_sizes)
            data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**data)


def register_with_transformers() -> None:
    """Register ``glee_vision_model`` with AutoConfig / AutoModel / AutoImageProcessor (idempotent)."""
    AutoConfig.register(MODEL_TYPE, GleeVisionConfig, exist_ok=True)
    AutoModel.register(GleeVisionConfig, GleeVisionModel, exist_ok=True)
    AutoImageProcessor.register(GleeVisionConfig, image_processor_classes={"pil": GleeImageProcessor}, exist_ok=True)


register_with_transformers()


def glee_vision_config(
    glee_source: str | Path | GleeModel | GleeConfig = "lite",
    image_size: int = 1024,
    pooled_tokens_per_side: int = 0,
    prompt_categories: Sequence[str] = DEFAULT_PROMPT,
    freeze: bool = True,
) -> GleeVisionConfig:
    """A :class:`GleeVisionConfig` for a GLEE preset name, config, model or ``save_pretrained`` folder."""
    return GleeVisionConfig(
        glee_config=read_glee_config(glee_source).to_dict(),
        image_size=image_size,
        pooled_tokens_per_side=pooled_tokens_per_side,
        prompt_categories=list(prompt_categories),
        freeze=freeze,
    )


def build_llava_config(vision_config: GleeVisionConfig, text_config: PreTrainedConfig, image_token_id: int,
                       **kwargs: Any) -> LlavaConfig:
    """``LlavaConfig`` wired for the GLEE tower: 'full' selection, layer -1, ``image_seq_length = N``."""
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=vision_config.image_seq_length,
        projector_hidden_act="gelu",
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# original LLaVA (haotian-liu/LLaVA, LISA's fork): tower contract + builder hook
# ---------------------------------------------------------------------------------------------------------------
def is_glee_tower_name(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(TOWER_NAME_PREFIX)


class _TowerConfig:
    """What LLaVA reads from ``tower.config``: hidden_size, image_size, patch_size (nominal for queries)."""

    def __init__(self, hidden_size: int, image_size: int, patch_size: int) -> None:
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size


class GleeLlavaVisionTower(nn.Module):
    """LLaVA vision-tower contract around :class:`GleeFeatureExtractor`.

    ``vision_tower`` is ``"glee:<preset or save_pretrained folder>"``.  Options are read from ``args`` (the
    LLaVA model args / config): ``mm_glee_image_size`` (default 1024), ``mm_glee_pooled_tokens`` (g, default 0),
    ``mm_glee_prompt`` (list of class names, default ["object"]), ``unfreeze_mm_vision_tower``.
    ``mm_vision_select_layer`` is accepted but GLEE has one output layer; ``mm_vision_select_feature`` 'patch'
    and 'cls_patch' both keep every token (GLEE has no CLS token).
    """

    def __init__(self, vision_tower: str, args: Any = None, delay_load: bool = False) -> None:
        super().__init__()
        if not is_glee_tower_name(vision_tower):
            raise ValueError(f"a GLEE tower name starts with {TOWER_NAME_PREFIX!r}, got {vision_tower!r}")
        self.vision_tower_name = vision_tower
        self.source = vision_tower[len(TOWER_NAME_PREFIX):]
        self.image_size = int(getattr(args, "mm_glee_image_size", 1024) or 1024)
        self.pooled_tokens_per_side = int(getattr(args, "mm_glee_pooled_tokens", 0) or 0)
        self.prompt = list(getattr(args, "mm_glee_prompt", None) or DEFAULT_PROMPT)
        self.freeze = not bool(getattr(args, "unfreeze_mm_vision_tower", False))
        select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unexpected mm_vision_select_feature {select_feature!r}; use 'patch' or 'cls_patch'")
        layer = getattr(args, "mm_vision_select_layer", -1)
        if layer not in (-1, None):
            warnings.warn(f"mm_vision_select_layer={layer} ignored: GLEE's tower has one output layer", stacklevel=2)
        self.is_loaded = False
        self.extractor: GleeFeatureExtractor | None = None
        self.image_processor = GleeImageProcessor.for_size(self.image_size)
        self.last_pixel_embeddings: Tensor | None = None
        self._cfg = read_glee_config(self.source)
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()

    def load_model(self, device_map: Any = None) -> None:
        if self.is_loaded:
            return
        model = load_glee(self.source)
        self.image_processor = GleeImageProcessor.for_size(
            self.image_size, model.cfg.pixel_mean, model.cfg.pixel_std
        )
        self.extractor = GleeFeatureExtractor(model, self.pooled_tokens_per_side, self.prompt, freeze=self.freeze)
        self.is_loaded = True

    def _require_loaded(self) -> GleeFeatureExtractor:
        if self.extractor is None:
            raise RuntimeError("GLEE tower weights are not loaded; call load_model() first (LLaVA does this in "
                               "initialize_vision_modules)")
        return self.extractor

    def forward(self, images: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        """[B, 3, S, S] -> [B, N, C]; a list of [3, S, S] or [1, 3, S, S] -> a list of [1, N, C]."""
        ext = self._require_loaded()
        if isinstance(images, (list, tuple)):
            outs, pix = [], []
            for image in images:
                feats = ext(image[None] if image.dim() == 3 else image)
                outs.append(feats.tokens.to(image.dtype))
                pix.append(feats.pixel_embeddings)
            self.last_pixel_embeddings = torch.cat(pix) if pix else None
            return outs
        feats = ext(images)
        self.last_pixel_embeddings = feats.pixel_embeddings
        return feats.tokens.to(images.dtype)

    @property
    def dummy_feature(self) -> Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.extractor.dtype if self.extractor is not None else torch.float32

    @property
    def device(self) -> torch.device:
        return self.extractor.device if self.extractor is not None else torch.device("cpu")

    @property
    def config(self) -> _TowerConfig:
        return _TowerConfig(self.hidden_size, self.image_size, self._cfg.mask_feature_stride)

    @property
    def hidden_size(self) -> int:
        return self._cfg.hidden_dim

    @property
    def mask_dim(self) -> int:
        return self._cfg.mask_dim

    @property
    def num_patches(self) -> int:
        return self._cfg.num_queries + self.pooled_tokens_per_side**2

    @property
    def num_patches_per_side(self) -> int:
        # only nominal: object queries are not a grid (do not use image_aspect_ratio='anyres' with this tower)
        return int(np.ceil(np.sqrt(self.num_patches)))


def register_llava_builder(*modules: Any) -> list[str]:
    """Make LLaVA's ``build_vision_tower`` build :class:`GleeLlavaVisionTower` for ``glee:`` names.

    ``llava_arch`` imports ``build_vision_tower`` by name, so both bindings are patched.  ``modules`` defaults
    to whichever of ``llava.model.multimodal_encoder.builder``, ``llava.model.llava_arch`` (haotian-liu) and
    ``model.llava.model.multimodal_encoder.builder``, ``model.llava.model.llava_arch`` (LISA's fork) import.
    Returns the names of the patched modules.  Other tower names go to the original builder.
    """
    import importlib

    if not modules:
        found = []
        for name in (
            "llava.model.multimodal_encoder.builder",
            "llava.model.llava_arch",
            "model.llava.model.multimodal_encoder.builder",
            "model.llava.model.llava_arch",
        ):
            try:
                found.append(importlib.import_module(name))
            except ImportError:
                continue
        if not found:
            raise ImportError("no LLaVA code found (llava.model... or LISA's model.llava.model...); install LLaVA "
                              "or pass the builder/arch modules explicitly")
        modules = tuple(found)
    patched = []
    for module in modules:
        original = getattr(module, "build_vision_tower", None)
        if original is None:
            raise AttributeError(f"{module.__name__} has no build_vision_tower to patch")
        if getattr(original, "_glee_patched", False):
            patched.append(module.__name__)
            continue

        def build_vision_tower(vision_tower_cfg: Any, _original: Any = original, **kwargs: Any) -> nn.Module:
            name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
            if is_glee_tower_name(name):
                return GleeLlavaVisionTower(name, args=vision_tower_cfg, **kwargs)
            return _original(vision_tower_cfg, **kwargs)

        build_vision_tower._glee_patched = True  # type: ignore[attr-defined]
        module.build_vision_tower = build_vision_tower
        patched.append(module.__name__)
    return patched


def tower_name(source: str | Path) -> str:
    """The ``mm_vision_tower`` string for a GLEE preset or folder."""
    text = str(source)
    if re.search(r"\s", text):
        raise ValueError(f"GLEE source {text!r} contains whitespace")
    return TOWER_NAME_PREFIX + text
