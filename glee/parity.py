"""Compare this implementation with outputs recorded from the official GLEE code.

A fixture folder holds (see ``shared/reference/glee_official/README.md``): ``tiny_config.yaml`` (an official
config dump), ``tiny_state_dict.safetensors`` (float8 storage, tied aliases in its metadata), a CLIP
``tiny_text_encoder/`` folder (config + tokenizer), ``tiny_inputs.safetensors``,
``tiny_outputs_<task>.safetensors`` and ``fixture_index.json`` describing every forward call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from glee.checkpoint import load_official_checkpoint
from glee.config import GleeConfig
from glee.modeling.glee_model import GleeModel, GleeOutput
from glee.modeling.text_encoder import text_config_from_hf_json
from glee.tokenizer import ClipTokenizer

ATOL = 1e-4
RTOL = 1e-4
# recorded outputs that are training losses, not predictions
SKIPPED = {"ret1_fake_track_loss": "training loss (tracking)", "ret2_dist_plus_zero_loss": "training loss (distillation)"}


@dataclass
class Comparison:
    task: str
    image: str
    name: str
    max_abs: float
    excess: float  # max of |ours - official| - (atol + rtol * |official|); <= 0 passes
    shape: tuple[int, ...]
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.excess <= 0


def read_fixture_state_dict(path: Path) -> dict[str, Tensor]:
    """Upcast float8 storage to float32 and restore tied aliases from the header metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if "glee_fixture" in meta:
        for alias, source in json.loads(meta["glee_fixture"]).get("aliases", {}).items():
            sd[alias] = sd[source]
    return sd


def load_fixture_model(folder: str | Path) -> GleeModel:
    """Rebuild the fixture's model from its config, text-encoder folder and state dict alone."""
    folder = Path(folder)
    cfg = GleeConfig.from_official_yaml(folder / "tiny_config.yaml")
    text_dir = folder / "tiny_text_encoder"
    cfg.text = text_config_from_hf_json(text_dir / "config.json", arch=cfg.text.arch)
    model = GleeModel(cfg, tokenizer=ClipTokenizer.from_folder(text_dir, cfg.text.max_length))
    load_official_checkpoint(model, read_fixture_state_dict(folder / "tiny_state_dict.safetensors"), strict=True)
    return model.eval()


def _read(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def run_call(model: GleeModel, call: dict, inputs: dict[str, Tensor], image: str, task: str) -> GleeOutput:
    """Replay one recorded ``GLEE_Model.forward`` call."""
    fc = call["forward_call"]
    prompts = fc.get("prompts") or {}
    images = inputs[f"{image}.image"]
    kwargs: dict = {}
    if fc["task"] in ("grounding", "rvos"):
        kwargs["expressions"] = list(prompts["grounding"])
    else:
        kwargs["categories"] = list(fc["batch_name_list"])
    if "spatial" in prompts:
        kwargs["visual_prompt_masks"] = inputs[f"{image}.{task}.prompt_mask"]
        kwargs["visual_prompt_type"] = fc["visual_prompt_type"]
    torch.manual_seed(call.get("torch_manual_seed_before_call", 0))
    with torch.no_grad():
        return model(images, **kwargs)


def output_tensors(out: GleeOutput) -> dict[str, Tensor]:
    """Our outputs under the fixture's names."""
    res: dict[str, Tensor] = {
        "pred_logits": out.pred_logits, "pred_scores": out.pred_scores, "pred_boxes": out.pred_boxes,
        "pred_masks": out.pred_masks, "pred_track_embed": out.query_embeddings,
    }
    for i, aux in enumerate(out.aux_outputs):
        for k in ("pred_logits", "pred_scores", "pred_boxes"):
            res[f"aux_outputs.{i}.{k}"] = aux[k]
    for k in ("pred_logits", "pred_scores", "pred_boxes", "pred_masks"):
        if out.interm_outputs.get(k) is not None:
            res[f"interm_outputs.{k}"] = out.interm_outputs[k]
    extra = out.extra
    if "categories" in extra:
        cats = extra["categories"]
        res["extra.class_embeddings"] = cats.class_embeddings
        res["tokens.0.input_ids"], res["tokens.0.attention_mask"] = cats.input_ids, cats.attention_mask
    if "expressions" in extra:
        expr = extra["expressions"]
        res["extra.grounding_tokens"] = expr.tokens.transpose(0, 1)
        res["extra.grounding_class"] = expr.grounding_class
        res["extra.grounding_nonzero_mask"] = expr.attention_mask == 0
        res["tokens.0.input_ids"], res["tokens.0.attention_mask"] = expr.input_ids, expr.attention_mask
    if "prompt_points" in extra:
        for level, sampled in enumerate(extra["prompt_points"]):
            res[f"rand_sample.{2 + 2 * level}.points"] = sampled[0].T  # one image per call: [2, P]
            res[f"extra.visual_prompt_nonzero_mask.{level}"] = out.extra.get("prompt_padding", [None] * 4)[level]
    return {k: v for k, v in res.items() if v is not None}


def compare(ours: Tensor, ref: Tensor) -> tuple[float, float]:
    if tuple(ours.shape) != tuple(ref.shape):
        return float("inf"), float("inf")
    if not ref.is_floating_point():
        diff = (ours.to(ref.dtype) != ref).any().item()
        return float(diff), float(diff)
    ours = ours.detach().float().cpu()
    delta = (ours - ref).abs()
    if delta.numel() == 0:
        return 0.0, -ATOL
    return delta.max().item(), (delta - (ATOL + RTOL * ref.abs())).max().item()


def check_fixture(folder: str | Path) -> Iterator[Comparison]:
    """Run every model-level call the fixture index lists and compare every recorded output tensor."""
    folder = Path(folder)
    index = json.loads((folder / "fixture_index.json").read_text())
    model = load_fixture_model(folder)
    inputs = _read(folder / "tiny_inputs.safetensors")
    for task, per_image in index["tasks"].items():
        recorded = _read(folder / f"tiny_outputs_{task}.safetensors")
        for image, call in per_image.items():
            out = run_call(model, call, inputs, image, task)
            ours = output_tensors(out)
            prefix = f"{image}."
            for key in sorted(k for k in recorded if k.startswith(prefix)):
                name = key[len(prefix) :]
                ref = recorded[key]
                if name in SKIPPED:
                    yield Comparison(task, image, name, 0.0, -1.0, tuple(ref.shape), f"skipped: {SKIPPED[name]}")
                    continue
                if name.startswith("rand_sample.") and name not in ours:
                    note = "pooled-query sample (unused downstream)" if ref.numel() else "empty negative set"
                    yield Comparison(task, image, name, 0.0, -1.0, tuple(ref.shape), f"skipped: {note}")
                    continue
                if name not in ours:
                    yield Comparison(task, image, name, float("inf"), float("inf"), tuple(ref.shape), "missing")
                    continue
                max_abs, excess = compare(ours[name], ref)
                yield Comparison(task, image, name, max_abs, excess, tuple(ref.shape))
