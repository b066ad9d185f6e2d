"""CLIP BPE tokenizer, built offline.

The vocabulary comes from a folder with ``vocab.json`` + ``merges.txt`` (the official
``clip_vit_base_patch32`` layout) or, by default, from the BPE file that ``open_clip_torch`` ships.  Text
is cleaned as OpenAI CLIP does (ftfy, HTML unescape, whitespace collapse), then split and merged by the
``tokenizers``-backed transformers ``CLIPTokenizer``.  Output: ``[BOS, tokens..., EOS, PAD...]`` with
PAD = EOS = 49407, as in GLEE.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import re
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

_WHITESPACE = re.compile(r"\s+")


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-to-printable-character table, in vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _open_clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the CLIP BPE vocabulary ships with open_clip_torch; install it (`pip install open_clip_torch`) "
            "or pass a folder holding vocab.json and merges.txt"
        )
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def _vocab_from_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's recipe: bytes, bytes + '</w>', the first 48894 merges, then the two special tokens."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = _bytes_to_unicode()
    words = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}, merges  # type: ignore[return-value]


def clean_text(text: str) -> str:
    """OpenAI CLIP's ``basic_clean`` + ``whitespace_clean`` (ftfy, HTML unescape twice, collapse spaces)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip()


class SpecialTokenTokenizer:
    """Shared packing of ``encode(text)`` ids into ``[BOS, ..., EOS, PAD...]`` rows with an attention mask.

    Subclasses set ``max_length``, ``bos_id``, ``eos_id``, ``pad_id`` and implement ``encode``.
    """

    max_length: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def __call__(self, texts: list[str], pad_to_max_length: bool = True) -> tuple[Tensor, Tensor]:
        """Strings -> (input_ids [N, L], attention_mask [N, L]): ``[BOS, tokens..., EOS, PAD...]``.

        ``L`` is ``max_length`` when padding to max length (GLEE's official setting), else the longest
        sequence.  Longer texts are truncated to ``max_length - 2`` tokens with a warning.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        rows = []
        for text in texts:
            ids = self.encode(text)
            if len(ids) > self.max_length - 2:
                warnings.warn(
                    f"text of {len(ids)} tokens truncated to {self.max_length - 2}: {text[:60]!r}", stacklevel=2
                )
                ids = ids[: self.max_length - 2]
            rows.append([self.bos_id, *ids, self.eos_id])
        length = self.max_length if pad_to_max_length else max((len(r) for r in rows), default=2)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask


class ClipTokenizer(SpecialTokenTokenizer):
    """Tokenise strings for GLEE's CLIP text encoder."""

    bos_id = 49406
    eos_id = 49407
    pad_id = 49407  # GLEE pads with EOS

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77) -> None:
        from transformers import CLIPTokenizer

        self.max_length = max_length
        self._tok = CLIPTokenizer(vocab=vocab, merges=merges)
        self.vocab_size = len(vocab)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = 77) -> ClipTokenizer:
        folder = Path(folder)
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        if not vocab_file.exists() or not merges_file.exists():
            raise FileNotFoundError(f"{folder}: a CLIP tokenizer folder needs vocab.json and merges.txt")
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = [
            tuple(line.split())
            for line in merges_file.read_text(encoding="utf-8").split("\n")
            if line and not line.startswith("#version")
        ]
        return cls(vocab, merges, max_length)  # type: ignore[arg-type]

    @classmethod
    def default(cls, max_length: int = 77) -> ClipTokenizer:
        return _default_tokenizer(max_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one string without special tokens and without truncation."""
        return self._tok(clean_text(text), add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=2)
def _default_tokenizer(max_length: int) -> ClipTokenizer:
    vocab, merges = _vocab_from_bpe(_open_clip_bpe_path())
    return ClipTokenizer(vocab, merges, max_length)
