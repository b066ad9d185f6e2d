"""Compare this implementation with outputs recorded from the official GLEE code.

A fixture folder holds (see ``shared/reference/glee_official/README.md``): ``tiny_config.yaml`` (an official
config dump), ``tiny_state_dict.safetensors`` (float8 storage, tied aliases in its metadata), a CLIP
``tiny_text_encoder/`` folder (config + tokenizer), ``tiny_inputs.safetensors``,
``tiny_outputs_<task>.safetensors`` and ``fixture_index.json`` describing every forward call.

Optionally it also holds end-to-end results of the official demo pipeline: ``e2e_<task>.json`` (kept
detections, scores, labels, boxes, preprocessing statistics), ``e2e_<task>_masks.npz`` (final boolean masks)
and ``e2e_<task>_raw.safetensors`` (raw outputs at the 800-px input).  :func:`check_fixture_e2e` replays them
through :class:`glee.inference.ImagePredictor` with its default (demo) settings.

:func:`main` is the command line (``glee parity FIXTURE`` and ``scripts/check_parity.py FIXTURE``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
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
SKIPPED = {
    "ret1_fake_track_loss": "training loss (tracking)",
    "ret2_dist_plus_zero_loss": "training loss (distillation)",
}


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


def check_fixture(folder: str | Path, model: GleeModel | None = None) -> Iterator[Comparison]:
    """Run every model-level call the fixture index lists and compare every recorded output tensor."""
    folder = Path(folder)
    index = json.loads((folder / "fixture_index.json").read_text())
    model = model if model is not None else load_fixture_model(folder)
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


# ---------------------------------------------------------------------- end to end (demo pipeline)
def e2e_tasks(folder: str | Path) -> list[str]:
    """Tasks with end-to-end results in ``folder`` (``e2e_<task>.json``), sorted."""
    return sorted(p.stem[len("e2e_"):] for p in Path(folder).glob("e2e_*.json"))


def _image_files(folder: Path) -> dict[str, Path]:
    """Image name -> PNG, from ``fixture_index.json`` (``images[*].png``) or the README's naming."""
    index_file = folder / "fixture_index.json"
    if index_file.exists():
        index = json.loads(index_file.read_text())
        files = {im["name"]: folder / im["png"] for im in index.get("images", []) if "png" in im}
        if files:
            return files
    return {"image1": folder / "input_image.png", "image2": folder / "input_image2.png"}


def _exact(task: str, image: str, name: str, ours: list, ref: list) -> Comparison:
    same = ours == ref
    note = "" if same else f"ours {ours} vs official {ref}"
    return Comparison(task, image, name, 0.0 if same else 1.0, -1.0 if same else 1.0, (len(ref),), note)


def _close(task: str, image: str, name: str, ours: Tensor, ref: Tensor, note: str = "") -> Comparison:
    max_abs, excess = compare(ours, ref)
    return Comparison(task, image, name, max_abs, excess, tuple(ref.shape), note)


def check_fixture_e2e(folder: str | Path, model: GleeModel | None = None, tasks: Sequence[str] | None = None,
                      images: Sequence[str] | None = None) -> Iterator[Comparison]:
    """Replay every ``e2e_<task>.json`` image through the demo path and compare what it records.

    Per image: preprocessing statistics, raw outputs at the network resolution (when
    ``e2e_<task>_raw.safetensors`` exists), the top-k before the threshold, kept query indices, labels and
    names (exact), scores and boxes (tolerance), token ids (exact) and final masks (pixel-exact).
    ``tasks`` / ``images`` restrict the run (e.g. ``["det"]``, ``["image2"]``); by default everything runs.
    Yields nothing when the fixture has no end-to-end files.
    """
    import numpy as np

    from glee.inference.postprocess import PostprocessConfig, select_queries
    from glee.inference.predictor import ImagePredictor
    from glee.io import read_image

    folder = Path(folder)
    available = e2e_tasks(folder)
    unknown = sorted(set(tasks or []) - set(available))
    if unknown:
        raise ValueError(f"{folder}: no end-to-end files for task(s) {unknown}; available: {available}")
    selected = [t for t in available if tasks is None or t in tasks]
    if not selected:
        return
    model = model if model is not None else load_fixture_model(folder)
    predictor = ImagePredictor(model)
    files = _image_files(folder)
    for task in selected:
        label = f"e2e_{task}"
        records = json.loads((folder / f"e2e_{task}.json").read_text())
        masks_file = folder / f"e2e_{task}_masks.npz"
        raw_file = folder / f"e2e_{task}_raw.safetensors"
        ref_masks = dict(np.load(masks_file)) if masks_file.exists() else {}
        raw = _read(raw_file) if raw_file.exists() else {}
        for image, rec in records.items():
            if images is not None and image not in images:
                continue
            if image not in files or not files[image].exists():
                yield Comparison(label, image, "input", float("inf"), float("inf"), (), "missing input image")
                continue
            array = read_image(files[image])
            batch = predictor.prepare([array])
            yield _exact(label, image, "sizes", [list(array.shape[:2]), list(batch.resized_sizes[0]),
                                                 list(batch.padded_size)],
                         [rec["original_hw"], rec["resized_hw"], rec["padded_hw"]])
            yield from _compare_preprocessed(label, image, batch.images, batch.resized_sizes[0],
                                             rec.get("preprocessed_input"))
            if rec.get("prompt_mode") == "expression" or rec.get("forward_task") == "grounding":
                texts = list(rec["prompts"]["grounding"])
                expr = predictor.encode_expressions(texts)
                out = predictor.forward(batch, expressions=expr)
                names, ids, mask = texts, expr.input_ids, expr.attention_mask
                post = PostprocessConfig(top_k=int(rec.get("topK_instance") or 1), threshold=rec.get("threshold"))
            else:
                cats = predictor.encode_classes(rec["batch_name_list"])
                out = predictor.forward(batch, categories=cats)
                names, ids, mask = cats.names, cats.input_ids, cats.attention_mask
                post = PostprocessConfig(top_k=int(rec.get("topK_instance") or rec["num_inst_select"]),
                                         threshold=rec.get("threshold"))
            for call in (rec.get("tokens") or {}).values():
                ours_ids = [row[m > 0].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
                yield _exact(label, image, "tokens.input_ids", ours_ids, call["input_ids_nonpad"])
            prefix = f"{image}."
            ours_raw = {"pred_logits": out.pred_logits, "pred_scores": out.pred_scores,
                        "pred_boxes": out.pred_boxes}
            for k in ("pred_logits", "pred_boxes", "pred_scores"):
                if out.interm_outputs.get(k) is not None:
                    ours_raw[f"interm_outputs.{k}"] = out.interm_outputs[k]
            for key in sorted(k for k in raw if k.startswith(prefix)):
                name = key[len(prefix):]
                if name not in ours_raw:
                    yield Comparison(label, image, f"raw.{name}", float("inf"), float("inf"),
                                     tuple(raw[key].shape), "missing")
                    continue
                yield _close(label, image, f"raw.{name}", ours_raw[name], raw[key])
            before = select_queries(out.pred_logits[0], post.top_k)
            if "topk_indices_before_threshold" in rec:
                yield _exact(label, image, "topk_indices_before_threshold", before.query_indices.tolist(),
                             rec["topk_indices_before_threshold"])
                yield _close(label, image, "topk_scores_before_threshold", before.class_probs,
                             torch.tensor(rec["topk_scores_before_threshold"]))
            det = predictor.to_detections(out, batch, [names], post)[0]
            yield _exact(label, image, "kept_query_indices", det.query_indices.tolist(), rec["kept_query_indices"])
            yield _exact(label, image, "labels", det.class_ids.tolist(), rec["labels"])
            if "label_names" in rec:
                yield _exact(label, image, "label_names", det.class_names, rec["label_names"])
            if len(det) != len(rec["kept_query_indices"]):
                continue  # shapes differ: the kept-index line above already failed
            yield _close(label, image, "scores", det.scores, torch.tensor(rec["scores"]))
            yield _close(label, image, "boxes_xyxy", det.boxes, torch.tensor(rec["boxes_xyxy"]).reshape(-1, 4))
            if "mask_pixel_counts" in rec:
                yield _exact(label, image, "mask_pixel_counts", det.mask_areas().tolist(), rec["mask_pixel_counts"])
            if image in ref_masks:
                ref = torch.from_numpy(ref_masks[image].astype(bool))
                if det.masks is None or det.masks.shape != ref.shape:
                    got = None if det.masks is None else tuple(det.masks.shape)
                    yield Comparison(label, image, "masks", float("inf"), float("inf"), tuple(ref.shape),
                                     f"shape {got} vs {tuple(ref.shape)}")
                else:
                    wrong = int((det.masks != ref).sum())
                    yield Comparison(label, image, "masks", float(wrong), float(wrong), tuple(ref.shape),
                                     f"{wrong} of {ref.numel()} pixels differ" if wrong else "")


def _compare_preprocessed(task: str, image: str, tensor: Tensor, resized: tuple[int, int],
                          rec: dict | None) -> Iterator[Comparison]:
    """The padded network input against the recorded shape, statistics and two 4x4 crops."""
    if not rec:
        return
    x = tensor.detach().float().cpu()
    yield _exact(task, image, "input.shape", list(x.shape), list(rec["shape"]))
    if list(x.shape) != list(rec["shape"]):
        return
    sha = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    same = sha == rec.get("sha256_float32")
    stats = rec.get("stats", {})
    ours = {"mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
    for key, value in ours.items():
        if key in stats:
            yield _close(task, image, f"input.{key}", value.reshape(1), torch.tensor([stats[key]]),
                         "" if same else "sha256 differs (not bit-identical)")
    if "first8" in stats:
        yield _close(task, image, "input.first8", x.flatten()[:8], torch.tensor(stats["first8"]))
    if "crop_c0_y0to4_x0to4" in rec:
        yield _close(task, image, "input.crop_c0_y0to4_x0to4", x[0, 0, :4, :4],
                     torch.tensor(rec["crop_c0_y0to4_x0to4"]))
    if "crop_c2_center4x4" in rec:  # centre of the resized image (before padding)
        cy, cx = resized[0] // 2, resized[1] // 2
        yield _close(task, image, "input.crop_c2_center4x4", x[0, 2, cy : cy + 4, cx : cx + 4],
                     torch.tensor(rec["crop_c2_center4x4"]))


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """Check a fixture folder: every model-level call, then the end-to-end files when present.

    Prints one line per compared quantity and exits non-zero if any exceeds
    |ours - official| <= 1e-4 + 1e-4 * |official| (exact equality for indices, labels, tokens and masks).
    """
    parser = argparse.ArgumentParser(
        prog="glee parity", description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fixture", type=Path, help="fixture folder (layout of shared/reference/glee_official)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the fixture used 2)")
    parser.add_argument("--skip-model", action="store_true", help="skip the model-level calls")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end (demo pipeline) files")
    parser.add_argument("--mode", choices=("reference", "fast", "fast_bf16"), default="fast",
                        help="GleeModel inference mode (default fast, the model's default; the tolerance is the "
                             "same for reference and fast -- fast_bf16 is not expected to pass)")
    args = parser.parse_args(argv)
    if not (args.fixture / "fixture_index.json").exists():
        parser.error(f"{args.fixture}: no fixture_index.json; is this a parity fixture folder?")
    torch.set_num_threads(args.threads)
    failures = checked = 0
    print(f"tolerance: |ours - official| <= {ATOL:g} + {RTOL:g} * |official|")
    sections: list[Iterator[Comparison]] = []
    run_e2e = not args.skip_e2e and bool(e2e_tasks(args.fixture))
    if not args.skip_e2e and not run_e2e:
        print("  SKIP end-to-end: the fixture has no e2e_<task>.json files")
    model = load_fixture_model(args.fixture) if (run_e2e or not args.skip_model) else None  # one rebuild for both
    if model is not None:
        model.set_inference_mode(args.mode)
        print(f"inference mode: {args.mode}")
    if not args.skip_model:
        sections.append(check_fixture(args.fixture, model))
    if run_e2e:
        sections.append(check_fixture_e2e(args.fixture, model))
    for section in sections:
        for c in section:
            if c.note.startswith("skipped"):
                print(f"  SKIP {c.task:>12} {c.image} {c.name:<40} {c.note}")
                continue
            checked += 1
            status = "ok  " if c.passed else "FAIL"
            failures += not c.passed
            print(f"  {status} {c.task:>12} {c.image} {c.name:<40} max|diff| {c.max_abs:.3e} {c.note}", flush=True)
    print(f"{checked - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
