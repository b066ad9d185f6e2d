"""A bounded LRU cache of text embeddings (class names and referring expressions), filled in chunks.

Each text is encoded once per model: a repeated category list, or a new list that shares names with an
earlier one, costs no text-encoder call for the known names.  New names are encoded ``chunk_size`` at a time
(LVIS's 1203 names: 5 calls of up to 256), so memory stays bounded however long the list.

The CLIP text tower is causal with a padding mask, so a name's token features do not depend on which other
names share its batch or on the padding length: chunked and per-name results equal the one-call result up to
float rounding (tested).  Keys hold the model (by a private token, never by ``id``, which can be reused),
its tokenizer, device, dtype and the version counters of the text weights, so loading new weights into the
same model invalidates its entries.

The cache is for inference (it encodes under ``torch.no_grad``); training should call the model's
``encode_categories`` / ``encode_expressions`` directly.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glee.modeling.glee_model import CategoryEmbeddings, ExpressionEmbeddings, GleeModel

_tokens: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_counter = itertools.count()


def _token(obj: Any) -> int:
    """A stable, never-reused integer for a live object (weak: the object may be collected)."""
    try:
        if obj not in _tokens:
            _tokens[obj] = next(_counter)
        return _tokens[obj]
    except TypeError:  # not weak-referenceable: fall back to identity (documented limitation)
        return id(obj)


def model_key(model: GleeModel) -> tuple:
    """Identity of everything that shapes a text embedding of ``model``."""
    params = list(model.text_encoder.parameters()) + [model.lang_projection]
    # _version counts in-place updates (load_state_dict, optimiser steps): changed weights, new key
    version = sum(p._version for p in params)
    return (_token(model), _token(model.tokenizer), str(model.device), model.lang_projection.dtype, version)


@dataclass
class _Entry:
    """One encoded text: ``tokens`` [T, C] are the valid tokens (names) or all L positions (expressions)."""

    tokens: Tensor
    input_ids: Tensor  # [L]
    attention_mask: Tensor  # [L]
    pooled: Tensor  # [C] masked mean


class TextEmbeddingCache:
    """LRU cache of per-text encodings.

    Args:
        max_texts: entries kept (names and expressions together); the least recently used go first.
        chunk_size: texts per text-encoder call when filling the cache.
        max_lists: assembled category lists kept (saves re-stacking a 1203-name list on every image).
    """

    def __init__(self, max_texts: int = 8192, chunk_size: int = 256, max_lists: int = 8) -> None:
        if max_texts < 1 or chunk_size < 1 or max_lists < 0:
            raise ValueError("max_texts and chunk_size must be >= 1 and max_lists >= 0")
        self.max_texts = max_texts
        self.chunk_size = chunk_size
        self.max_lists = max_lists
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lists: OrderedDict[tuple, CategoryEmbeddings] = OrderedDict()
        self.encoder_calls = 0  # text-encoder forwards this cache made
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._lists.clear()

    # ------------------------------------------------------------------ public
    def categories(self, model: GleeModel, names: Sequence[str]) -> CategoryEmbeddings:
        """Class names -> ``CategoryEmbeddings`` (as ``model.encode_categories(names)``), cached per name."""
        names = list(names)
        mkey = model_key(model)
        list_key = (mkey, tuple(names))
        if list_key in self._lists:
            self._lists.move_to_end(list_key)
            self.hits += len(names)
            return self._lists[list_key]
        entries = self._lookup(model, mkey, "category", names, model.cfg.text.pad_to_max_length)
        length = max(e.input_ids.shape[0] for e in entries)
        pad_id = model.tokenizer.pad_id
        result = CategoryEmbeddings(
            names=names,
            class_embeddings=torch.stack([e.pooled for e in entries]),
            fusion_tokens=torch.cat([e.tokens for e in entries]),
            input_ids=torch.stack([_pad(e.input_ids, length, pad_id) for e in entries]),
            attention_mask=torch.stack([_pad(e.attention_mask, length, 0) for e in entries]),
        )
        if self.max_lists:
            self._lists[list_key] = result
            while len(self._lists) > self.max_lists:
                self._lists.popitem(last=False)
        return result

    def expressions(self, model: GleeModel, texts: Sequence[str]) -> ExpressionEmbeddings:
        """Expressions (one per image) -> ``ExpressionEmbeddings`` (as ``model.encode_expressions``)."""
        texts = list(texts)
        entries = self._lookup(model, model_key(model), "expression", texts, True)
        return ExpressionEmbeddings(
            texts=texts,
            tokens=torch.stack([e.tokens for e in entries]),
            attention_mask=torch.stack([e.attention_mask for e in entries]),
            grounding_class=torch.stack([e.pooled for e in entries]),
            input_ids=torch.stack([e.input_ids for e in entries]),
        )

    # ------------------------------------------------------------------ internals
    def _lookup(self, model: GleeModel, mkey: tuple, kind: str, texts: list[str], pad_max: bool) -> list[_Entry]:
        keys = [(mkey, kind, t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self._entries))
        self.hits += len(texts) - sum(1 for k in keys if k not in self._entries)
        self.misses += len(missing)
        fresh: dict[str, _Entry] = {}
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            fresh.update(zip(chunk, self._encode(model, chunk, kind, pad_max)))
        out = []
        for text, key in zip(texts, keys):
            entry = fresh.get(text)
            if entry is None:
                entry = self._entries[key]
                self._entries.move_to_end(key)
            out.append(entry)
        for text in missing:
            self._entries[(mkey, kind, text)] = fresh[text]
        while len(self._entries) > self.max_texts:
            self._entries.popitem(last=False)
        return out

    @torch.no_grad()
    def _encode(self, model: GleeModel, texts: list[str], kind: str, pad_max: bool) -> list[_Entry]:
        ids, mask = model.tokenizer(texts, pad_to_max_length=pad_max)
        tokens = model.encode_text_tokens(ids, mask)  # [N, L, C]
        self.encoder_calls += 1
        mask = mask.to(tokens.device)
        weights = mask.to(tokens.dtype)
        pooled = (tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        entries = []
        for i in range(len(texts)):
            valid = mask[i] > 0
            toks = tokens[i][valid] if kind == "category" else tokens[i]
            entries.append(_Entry(toks.detach(), ids[i], mask[i], pooled[i].detach()))
        return entries


def _pad(row: Tensor, length: int, value: int) -> Tensor:
    if row.shape[0] == length:
        return row
    return torch.cat([row, row.new_full((length - row.shape[0],), value)])
