"""Reasoning-segmentation accuracy of a trained bridge on a ReasonSeg-layout set (gIoU / cIoU, LISA's metric).

    python scripts/bench_bridge_reasoning.py runs/bridge/bridge --data datasets/shapesworld_reasoning \\
        --split heldout [--limit 100] [--threads 1] [--modes generate,forced] [--json results.json]

For every ``<data>/<split>/<name>.json`` (+ ``.jpg``) the first instruction is asked the way LISA's validation
asks it (sentence: "<text> Please output segmentation mask."; phrase: "What is <text> in this image? Please
output segmentation mask."), in up to two modes:

* ``generate`` -- the public chat API (:class:`llm_bridge.chat.BridgeChat`, greedy): the model must answer with
  ``[SEG]`` itself; the prediction is the union of the answer's masks (empty when it emits no ``[SEG]``);
* ``forced``   -- LISA's ``validate()`` protocol: the answer ``"[SEG]."`` is given (teacher forcing) and its
  mask is scored, so this measures the masks alone, not whether the model chooses to segment.

Ground truth comes from the ReasonSeg reader (``llm_bridge.data.reason_seg.load_mask``: 1 target, 255 ignore);
gIoU and cIoU are computed by ``eval.evaluate_predictions("reasonseg", ...)`` (ignore pixels excluded, as in
LISA), overall and per ``template`` (the question type recorded by scripts/make_shapesworld_reasoning.py; other
sets count as one template).  Prints a table with the machine; ``--json`` also writes every answer.
``--cover-ratio R`` decodes a ``query_pointer`` bridge with ``BridgeConfig.pointer_cover_ratio = R`` instead of its
own (each [SEG] also covers the unpicked objects it points at with R times its top weight).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import glee  # noqa: E402,F401  (installs the torchvision shim before transformers is imported)
from eval import evaluate_predictions  # noqa: E402
from glee.benchmark import machine_summary  # noqa: E402
from llm_bridge.chat import BridgeChat, load_image  # noqa: E402
from llm_bridge.data.conversation import (  # noqa: E402
    LONG_QUESTION_LIST,
    SHORT_QUESTION_LIST,
    tokenize_conversation,
    with_image,
)
from llm_bridge.data.reason_seg import load_mask, read_annotation  # noqa: E402

MODES = ("generate", "forced")
BOOTSTRAP_RESAMPLES = 2000
FORCED_ANSWER = "[SEG]."  # LISA's ValDataset answer


def lisa_prompt(text: str, is_sentence: bool) -> str:
    """The question LISA's validation asks for one ReasonSeg instruction."""
    if is_sentence:
        return LONG_QUESTION_LIST[1].format(sent=text)  # "{sent} Please output segmentation mask."
    return SHORT_QUESTION_LIST[3].format(class_name=text.lower())  # "What is {class_name} in this image? ..."


def list_items(data: Path, split: str, limit: int | None) -> list[Path]:
    folder = data / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; --data must be a ReasonSeg-layout folder with a "
                                f"{split!r} split (e.g. written by scripts/make_shapesworld_reasoning.py)")
    items = sorted(p for p in folder.glob("*.json") if p.with_suffix(".jpg").is_file())
    if not items:
        raise FileNotFoundError(f"{folder}: no <name>.json + <name>.jpg pairs")
    return items[:limit] if limit else items


@torch.no_grad()
def forced_mask(chat: BridgeChat, image: np.ndarray, prompt: str) -> np.ndarray:
    """[H, W] bool: the mask of the given answer "[SEG]." (teacher forced, one forward pass)."""
    model = chat.model
    conv = [{"role": "user", "content": with_image(prompt)}, {"role": "assistant", "content": FORCED_ANSWER}]
    ids, _ = tokenize_conversation(model.tokenizer, conv, model.config.system_prompt)
    pixel_values, original, resized = model.preprocess_images([image])
    out = model(input_ids=torch.tensor([ids]), pixel_values=pixel_values, original_sizes=original,
                resized_sizes=resized)
    masks = out.pred_masks[0]  # [1, H, W] logits
    if masks.shape[0] != 1:
        raise RuntimeError(f"expected one [SEG] in the forced answer, got {masks.shape[0]}")
    return (masks[0] > 0).cpu().numpy()


def score(gt: dict[str, np.ndarray], pred: dict[str, np.ndarray], templates: dict[str, str]) -> dict[str, Any]:
    """Overall (with 95% bootstrap intervals) and per-template gIoU / cIoU via eval's ReasonSeg metric."""
    overall = evaluate_predictions("reasonseg", gt, pred, bootstrap=BOOTSTRAP_RESAMPLES)
    groups: dict[str, list[str]] = defaultdict(list)
    for key, template in templates.items():
        groups[template].append(key)
    per = {}
    for template, keys in sorted(groups.items()):
        r = evaluate_predictions("reasonseg", {k: gt[k] for k in keys}, {k: pred[k] for k in keys})
        per[template] = {"gIoU": r["gIoU"], "cIoU": r["cIoU"], "n": r["num_samples"]}
    return {"overall": overall, "per_template": per}


def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {','.join(MODES)}")
    items = list_items(Path(args.data), args.split, args.limit)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    tic = time.perf_counter()
    chat = BridgeChat.from_pretrained(args.bridge, dtype=dtype)
    if args.cover_ratio is not None:
        chat.model.set_pointer_cover_ratio(args.cover_ratio)
    load_s = time.perf_counter() - tic
    gt: dict[str, np.ndarray] = {}
    templates: dict[str, str] = {}
    preds: dict[str, dict[str, np.ndarray]] = {m: {} for m in modes}
    seconds: dict[str, float] = dict.fromkeys(modes, 0.0)
    records = []
    for path in items:
        key = path.stem
        anno = read_annotation(path)
        image = load_image(path.with_suffix(".jpg"))
        mask, texts, is_sentence = load_mask(path, *image.shape[:2])
        gt[key] = mask
        templates[key] = str(anno.get("template", "all"))
        prompt = lisa_prompt(texts[0], is_sentence)
        record: dict[str, Any] = {"name": key, "template": templates[key], "prompt": prompt}
        if "generate" in modes:
            t = time.perf_counter()
            result = chat.ask(image, prompt, max_new_tokens=args.max_new_tokens)
            seconds["generate"] += time.perf_counter() - t
            preds["generate"][key] = result.masks.any(0) if len(result.masks) else np.zeros(mask.shape, dtype=bool)
            record.update(answer=result.text, num_seg=int(len(result.masks)))
        if "forced" in modes:
            t = time.perf_counter()
            preds["forced"][key] = forced_mask(chat, image, prompt)
            seconds["forced"] += time.perf_counter() - t
        records.append(record)
    results: dict[str, Any] = {}
    for mode in modes:
        results[mode] = score(gt, preds[mode], templates)
        results[mode]["seconds_per_item"] = seconds[mode] / len(items)
    if "generate" in modes:
        results["generate"]["seg_rate"] = float(np.mean([r["num_seg"] > 0 for r in records]))
    return {
        "machine": machine_summary(),
        "bridge": str(args.bridge),
        "data": str(args.data),
        "split": args.split,
        "num_items": len(items),
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "pointer_cover_ratio": chat.model.config.pointer_cover_ratio,
        "load_seconds": load_s,
        "modes": results,
        "items": records,
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt_interval(src: dict[str, Any], name: str) -> str:
    """``0.525 [0.45, 0.60]``: the value and its 95% bootstrap interval, when the metric has one."""
    low, high = src.get(f"{name}_ci95_low"), src.get(f"{name}_ci95_high")
    return _fmt(src[name]) + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def format_table(report: dict[str, Any]) -> str:
    modes = list(report["modes"])
    lines = [
        f"machine: {report['machine']}",
        f"bridge: {report['bridge']} ({report['dtype']}) | data: {report['data']} split {report['split']} | "
        f"{report['num_items']} items | load {report['load_seconds']:.1f}s | pointer_cover_ratio "
        f"{report['pointer_cover_ratio']}",
    ]
    for mode in modes:
        r = report["modes"][mode]
        extra = f", [SEG] emitted in {r['seg_rate']:.0%} of answers" if "seg_rate" in r else ""
        lines.append(f"{mode}: {r['seconds_per_item']:.2f} s/item{extra}")
    lines.append("(ALL: value [95% bootstrap interval over items])")
    head = "| template | n | " + " | ".join(f"gIoU {m} | cIoU {m}" for m in modes) + " |"
    lines += [head, "|" + "---|" * (2 + 2 * len(modes))]
    first = report["modes"][modes[0]]
    rows = [("ALL", first["overall"]["num_samples"])] + [(t, v["n"]) for t, v in first["per_template"].items()]
    for template, n in rows:
        cells = []
        for mode in modes:
            r = report["modes"][mode]
            src = r["overall"] if template == "ALL" else r["per_template"][template]
            cells += [_fmt_interval(src, "gIoU"), _fmt_interval(src, "cIoU")]
        lines.append(f"| {template} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bridge", help="bridge folder written by ReasonSegModel.save_pretrained (llm_bridge.train's "
                   "<output-dir>/bridge, or its merged copy)")
    p.add_argument("--data", required=True, help="ReasonSeg-layout folder (<data>/<split>/<name>.jpg + .json)")
    p.add_argument("--split", default="heldout")
    p.add_argument("--limit", type=int, help="first N items (sorted by name)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--modes", default="generate,forced", help="comma list of: generate, forced")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--cover-ratio", type=float, help="override the bridge's pointer_cover_ratio (query_pointer "
                   "heads: each [SEG] also covers the unpicked objects it points at with this fraction of its top "
                   "weight; 0: its single best)")
    p.add_argument("--json", help="write the report (metrics + every answer) here")
    args = p.parse_args(argv)
    if not (Path(args.bridge) / "bridge_config.json").is_file():
        p.error(f"{args.bridge} is not a bridge folder (no bridge_config.json); pass the folder written by "
                "ReasonSegModel.save_pretrained, e.g. <output-dir>/bridge of llm_bridge.train")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
