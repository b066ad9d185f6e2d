"""LoRA on the language model (peft), LISA's recipe: r 8, alpha 16, dropout 0.05 on q_proj / v_proj.

Besides the adapter, the new token rows ([SEG], <image>) of the input embedding (and of an untied LM head) are
trained through peft's trainable tokens, so only those rows are stored and updated (``token_rows="new"``).
``token_rows="full"`` trains the whole ``embed_tokens`` and ``lm_head`` as LISA does (``modules_to_save``).
The projector and the [SEG] projection are fully trainable; GLEE stays frozen.  For 4/8-bit models
(QLoRA-style) the LM is first prepared with ``prepare_model_for_kbit_training``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from llm_bridge.model import ReasonSegModel, _is_quantized


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    token_rows: str = "new"  # "new" (trainable token rows) or "full" (whole embedding + head, as LISA)


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    for name, mod in model.named_modules():
        if mod is module:
            return name.rsplit(".", 1)[-1]
    return None


def is_tied(language_model: nn.Module) -> bool:
    emb = language_model.get_input_embeddings()
    head = language_model.get_output_embeddings()
    return head is not None and head.weight is emb.weight


def apply_lora(model: ReasonSegModel, settings: LoraSettings | None = None,
               gradient_checkpointing: bool = False) -> ReasonSegModel:
    """Wrap ``model.language_model`` with a LoRA adapter and set what trains (in place; returns the model)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    settings = settings or LoraSettings()
    if hasattr(model.language_model, "peft_config"):
        raise ValueError("the language model already has a LoRA adapter")
    if settings.token_rows not in ("new", "full"):
        raise ValueError(f"token_rows must be 'new' or 'full', got {settings.token_rows!r}")
    lm = model.language_model
    if _is_quantized(lm):
        keep_bnb_weights_trainable(lm)
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.requires_grad_(False)
    emb_name = _module_name(lm, lm.get_input_embeddings())
    head_name = _module_name(lm, lm.get_output_embeddings())
    tied = is_tied(lm)
    kwargs: dict[str, Any] = {}
    if settings.token_rows == "new":
        ids = sorted(model.new_token_ids)
        kwargs["trainable_token_indices"] = {emb_name: ids} if tied or head_name is None else \
            {emb_name: ids, head_name: ids}
    else:
        kwargs["modules_to_save"] = [emb_name] if tied or head_name is None else [emb_name, head_name]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        **kwargs,
    )
    model.language_model = get_peft_model(lm, config)
    model.mm_projector.requires_grad_(True)
    model.seg_projection.requires_grad_(True)
    return model


def keep_bnb_weights_trainable(model: nn.Module) -> int:
    """Stop bitsandbytes' CPU fast path from repacking 4-bit weights, and undo any repacking already done.

    On CPUs with AVX512-BF16, ``Linear4bit`` converts its weight to a packed layout on the first no-grad eval
    forward; the packed kernel has no autograd, so gradients through the layer silently become zero afterwards
    (LoRA and everything before it stop learning).  Returns the number of layers unpacked.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return 0
    unpacked = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state
                )
                unpacked += 1
    return unpacked


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (quantised weights counted as stored)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
