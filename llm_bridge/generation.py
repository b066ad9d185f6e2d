"""Generation that keeps the KV cache and still recovers every [SEG] hidden state.

LISA generates with ``use_cache=False`` (each step re-runs the whole sequence, and re-encodes the image) so
that the final step's hidden states cover the full answer, then selects ``[SEG]`` rows with a hard-coded
255-token offset.  Here each step feeds one token through the cached decoder; when a step samples ``[SEG]``,
the hidden state that produced those logits -- the state of the position just before ``[SEG]``, exactly what
LISA selects -- is stored right away.  Nothing has to be re-run and no offset is involved.

``use_cache=False`` keeps a LISA-style loop (full re-run per token, optional image re-encoding) for
benchmarks and equivalence tests; :func:`seg_states_teacher_forced` recovers the states LISA's way (one full
pass over prompt + answer, positions computed from the ids).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from llm_bridge.model import ContextLengthError, PreparedInputs
from llm_bridge.tower import VisualFeatures

if TYPE_CHECKING:
    from llm_bridge.model import ReasonSegModel

LogitsProcessor = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GenerationOutput:
    """B rows; T generated positions."""

    sequences: Tensor  # [B, T] new token ids, pad id after a row ended
    lengths: list[int]  # new tokens per row (the end-of-turn token included when generated)
    seg_states: list[Tensor]  # per row [n_b, H]: the hidden state that predicted each [SEG]
    prepared: PreparedInputs  # the prompt after image expansion (left padded)
    visual: VisualFeatures | None
    finished: list[bool]  # row ended with an end-of-turn token (not by the length limit)
    forward_passes: int

    def new_tokens(self, row: int) -> list[int]:
        return self.sequences[row, : self.lengths[row]].tolist()


def _warpers(do_sample: bool, temperature: float, top_k: int, top_p: float) -> list[Any]:
    if not do_sample:
        return []
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out: list[Any] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


@torch.no_grad()
def generate(
    model: ReasonSegModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    pixel_values: Tensor | None = None,
    visual: VisualFeatures | None = None,
    image_index: Tensor | Sequence[int] | None = None,
    *,
    max_new_tokens: int = 128,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    suppress_seg: bool = False,
    use_cache: bool = True,
    reencode_images: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Greedy or sampled decoding from prompts that may contain one ``<image>`` each.

    Args:
        input_ids / attention_mask: [B, L] prompts (any padding side), e.g. from :func:`build_prompt`.
        pixel_values / visual: the images (or their features); ``image_index`` maps rows to images.
        max_new_tokens: cap on new tokens (also capped by the context budget).
        min_new_tokens: end-of-turn tokens are suppressed before this many tokens (benchmarks).
        logits_processor: callables ``(ids [B, t], scores [B, V]) -> scores`` (transformers-compatible), run
            before sampling; ``ids`` are the prompt ids as given followed by the new tokens.
        suppress_seg: never emit [SEG] (text-only chat).
        use_cache: False = LISA-style loop that re-runs the full sequence every step.
        reencode_images: with ``use_cache=False``, also re-run GLEE every step (what LISA does).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if reencode_images and (use_cache or pixel_values is None):
        raise ValueError("reencode_images needs use_cache=False and pixel_values")
    if visual is None and pixel_values is not None:
        visual = model.encode_images(pixel_values)
    prepared = model.prepare_inputs(input_ids, attention_mask, None, visual, image_index, padding_side="left")
    batch, prompt_len = prepared.input_ids.shape
    budget = model.max_context - prompt_len
    if budget < 1:
        raise ContextLengthError(model._context_message(prompt_len, bool((prepared.image_rows >= 0).any()))
                                 + "; no room is left for the answer")
    if max_new_tokens > budget:
        warnings.warn(f"max_new_tokens={max_new_tokens} capped at {budget} by the context budget", stacklevel=2)
        max_new_tokens = budget
    eos = set(model.eos_token_ids if eos_token_id is None else
              ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)))
    processors = list(logits_processor) if isinstance(logits_processor, (list, tuple)) else \
        ([logits_processor] if logits_processor is not None else [])
    warpers = _warpers(do_sample, temperature, top_k, top_p)
    device = prepared.inputs_embeds.device
    prompt_ids = input_ids.to(device)
    generated = torch.empty((batch, 0), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    seg_states: list[list[Tensor]] = [[] for _ in range(batch)]
    pad = model.pad_token_id
    eos_list = sorted(eos)

    # first pass over the prompt
    out = model.run_decoder(prepared, use_cache=use_cache)
    cache = out.past_key_values if use_cache else None
    last = out.last_hidden_state[:, -1]
    attn = prepared.attention_mask
    next_pos = prepared.position_ids[:, -1] + 1
    passes = 1
    for step in range(max_new_tokens):
        scores = model.lm_head(last).float()
        scores[:, model.image_token_id] = float("-inf")
        if suppress_seg:
            scores[:, model.seg_token_id] = float("-inf")
        if step < min_new_tokens and eos_list:
            scores[:, eos_list] = float("-inf")
        ids_so_far = torch.cat([prompt_ids, generated], dim=1)
        for proc in processors + warpers:
            scores = proc(ids_so_far, scores)
        if do_sample:
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad), token)
        for b in (token == model.seg_token_id).nonzero().flatten().tolist():
            seg_states[b].append(last[b])
        generated = torch.cat([generated, token[:, None]], dim=1)
        lengths = lengths + (~finished).long()
        finished = finished | torch.isin(token, torch.tensor(eos_list, device=device, dtype=token.dtype))
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, attn.new_ones((batch, 1))], dim=1)
        if use_cache:
            step_inputs = PreparedInputs(
                inputs_embeds=model.embed_tokens(token[:, None]),
                attention_mask=attn,
                position_ids=next_pos[:, None],
                input_ids=token[:, None],
                labels=None,
                image_rows=prepared.image_rows,
            )
            out = model.run_decoder(step_inputs, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            if reencode_images:
                visual = model.encode_images(pixel_values)
                prepared = model.prepare_inputs(input_ids, attention_mask, None, visual, image_index,
                                                padding_side="left")
            full = _append_tokens(model, prepared, generated)
            out = model.run_decoder(full, use_cache=False)
        next_pos = next_pos + 1
        last = out.last_hidden_state[:, -1]
        passes += 1
    states = [torch.stack(s) if s else last.new_zeros((0, last.shape[-1])) for s in seg_states]
    return GenerationOutput(
        sequences=generated,
        lengths=lengths.tolist(),
        seg_states=states,
        prepared=prepared,
        visual=visual,
        finished=[bool(f) for f in finished.tolist()],
        forward_passes=passes,
    )


def _append_tokens(model: ReasonSegModel, prepared: PreparedInputs, tokens: Tensor) -> PreparedInputs:
    """The prompt (left padded) followed by ``tokens`` [B, t]: embeddings, mask and positions."""
    batch, t = tokens.shape
    embeds = torch.cat([prepared.inputs_embeds, model.embed_tokens(tokens).to(prepared.inputs_embeds.dtype)], 1)
    mask = torch.cat([prepared.attention_mask, prepared.attention_mask.new_ones((batch, t))], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids = torch.cat([prepared.input_ids, tokens], 1)
    return PreparedInputs(embeds, mask, positions, ids, None, prepared.image_rows)


@torch.no_grad()
def seg_states_teacher_forced(model: ReasonSegModel, output: GenerationOutput) -> list[Tensor]:
    """LISA's recovery: one full pass over prompt + answer, [SEG] states taken at computed positions."""
    tokens = output.sequences.clone()
    for b, n in enumerate(output.lengths):
        tokens[b, n:] = model.pad_token_id
    full = _append_tokens(model, output.prepared, tokens)
    # positions after a row's end are padding: mask them so they are never selected
    for b, n in enumerate(output.lengths):
        full.attention_mask[b, output.prepared.input_ids.shape[1] + n:] = 0
    hidden = model.run_decoder(full).last_hidden_state
    return model.seg_states(hidden, full)
