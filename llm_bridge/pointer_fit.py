"""Refit a bridge's ``query_pointer`` [SEG] head on cached language-model states (LM, LoRA, projector fixed).

    python -m llm_bridge.pointer_fit --bridge runs/bridge_nano/bridge --output-dir runs/bridge_nano_fit \\
        --reason-seg-data "datasets/shapesworld_reasoning|train" --val-data "datasets/shapesworld_reasoning|val" \\
        --query-evidence --epochs 20

A cheap second stage after ``llm_bridge.train``.  One pass over every training image runs the frozen bridge
once, teacher forced on LISA-style answers with one [SEG] per object, and keeps what the head needs: each
[SEG]'s hidden state, the image's GLEE query embeddings and evidence, and the IoU of every query mask with every
target.  The head then trains for many epochs on that cache in seconds each, with the same pointer loss (and
unordered matching of an answer's objects) as the full training; a full-model step costs a whole LM forward
and backward, so the head sees far more images per CPU-hour here.  ``--query-evidence`` first gives the head
keys on GLEE's own per-query predictions (``BridgeConfig.query_evidence``).

``--context-layers N`` fits a fresh set-aware head instead (``ObjectSetPointerProjection``: it points among
GLEE's distinct confident queries, and its keys see each other through N transformer layers, for questions about
the whole scene such as "the only object of its colour"); ``--evidence-categories`` makes GLEE read each query
against other names than its prompt, e.g. the single words of a compositional vocabulary (the shipped
``bridge_nano``: ``--context-layers 2 --evidence-categories <its 16 colour and shape words> --schedule onecycle``).

Caching an image costs one teacher-forced forward, so the head can also learn from images the LM never trained
on: ``--reason-seg-data`` takes several folders, and ``--extra-cache`` adds caches written by earlier runs (e.g.
``--epochs 0 --cache more.pt`` on another folder, in chunks or while something else runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llm_bridge.losses import matched_pointer_loss
from llm_bridge.model import QueryPointerProjection, ReasonSegModel, build_pointer_head, distinct_picks


def _pointer_head(model: ReasonSegModel) -> QueryPointerProjection:
    head = model.seg_projection
    if not isinstance(head, QueryPointerProjection):
        raise ValueError(f"pointer_fit refits the query_pointer [SEG] head; this bridge has seg_head "
                         f"{model.config.seg_head!r}")
    return head


@torch.no_grad()
def collect_pointer_examples(model: ReasonSegModel, datasets: object | Sequence[object], passes: int = 1,
                             seed: int = 0, progress: bool = True) -> list[dict[str, Tensor]]:
    """One example per answer with [SEG]s: ``states`` [n, H], ``queries`` [Q, C], ``evidence`` [Q, E],
    ``ious`` [n, Q] (query masks vs the answer's n targets), ``sets`` [n] (>= 0: an unordered set).

    ``datasets``: a :class:`~llm_bridge.data.reason_seg.ReasonSegDataset` (any dataset with ``images`` and
    ``sample_image(path, rng)``) or several, whose images are taken in turn; every image is sampled ``passes``
    times, deterministically from ``seed``.
    """
    from tqdm import tqdm

    from llm_bridge.data import BridgeCollator

    _pointer_head(model)
    model.eval()
    collator = BridgeCollator.for_model(model)
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    jobs = [(p, dataset, path) for p in range(passes) for dataset in datasets for path in dataset.images]
    examples: list[dict[str, Tensor]] = []
    for i, (p, dataset, path) in enumerate(tqdm(jobs, desc="caching [SEG] states", disable=not progress)):
        sample = dataset.sample_image(path, np.random.default_rng([seed, p, i]))
        batch = collator([sample])
        visual = model.encode_images(batch["pixel_values"])
        prepared = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], None, visual,
                                        batch["image_index"])
        states = model.seg_states(model.run_decoder(prepared).last_hidden_state, prepared)
        gt, sets = batch["gt_masks"][0], batch["gt_mask_sets"][0]
        if gt.shape[0] == 0:
            continue
        ious = model.query_target_ious(visual, 0, gt, batch["original_sizes"][0], batch["resized_sizes"][0])
        num_queries = visual.query_mask_embeddings.shape[1]
        cursor = 0
        for row_states in states:  # one row per conversation, all of this image
            n = int(row_states.shape[0])
            if n:
                examples.append({"states": row_states.float().cpu(), "ious": ious[cursor:cursor + n].cpu(),
                                 "sets": sets[cursor:cursor + n].cpu(),
                                 "queries": visual.tokens[0, :num_queries].float().cpu(),
                                 "evidence": visual.query_evidence[0].float().cpu()})
            cursor += n
    return examples


def check_examples(head: QueryPointerProjection, examples: Sequence[dict[str, Tensor]], source: str) -> None:
    """A clear error when cached examples do not fit ``head`` (e.g. a cache written for another bridge)."""
    widths = {"states": head.query[0].in_features, "queries": head.key.in_features}
    if head.evidence_dim:
        widths["evidence"] = head.evidence_dim
    first = examples[0] if examples else {}
    for key, width in widths.items():
        got = int(first[key].shape[-1]) if key in first else None
        if got != width:
            raise ValueError(f"{source}: cached {key!r} have width {got}, this bridge's head expects {width}; "
                             "the cache was written for another bridge (or without evidence): delete it or pass "
                             "another --cache")


def _log_weights(head: QueryPointerProjection, examples: Sequence[dict[str, Tensor]]) -> Tensor:
    """The head's log-attention for all [SEG]s of ``examples`` in one call: [sum of n, Q]."""
    dtype = head.key.weight.dtype

    def per_seg(key: str) -> Tensor:
        return torch.cat([ex[key].to(dtype).expand(ex["states"].shape[0], -1, -1) for ex in examples])

    states = torch.cat([ex["states"].to(dtype) for ex in examples])
    return head.log_weights(states, per_seg("queries"), per_seg("evidence") if head.evidence_dim else None)


@torch.no_grad()
def pick_accuracy(head: QueryPointerProjection, examples: Sequence[dict[str, Tensor]],
                  min_iou: float = 0.5) -> float:
    """Share of targets that one of their answer's (distinct, eval-mode) picks covers with IoU >= ``min_iou``."""
    covered = total = 0
    for ex in examples:
        picks = distinct_picks(_log_weights(head, [ex]), torch.zeros(ex["states"].shape[0], dtype=torch.long))
        hit = ex["ious"][:, picks] >= min_iou  # [targets, picks]
        covered += int(hit.any(1).sum())
        total += int(hit.shape[0])
    return covered / max(total, 1)


def fit_pointer_head(head: QueryPointerProjection, examples: Sequence[dict[str, Tensor]], epochs: int = 20,
                     lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int = 16, seed: int = 0,
                     val_examples: Sequence[dict[str, Tensor]] | None = None,
                     log: Callable[[str], object] = print, schedule: str = "constant") -> list[dict[str, float]]:
    """Train ``head`` with the pointer loss on cached examples (AdamW, shuffled mini-batches of answers).

    ``schedule``: ``constant`` learning rate, or ``onecycle`` (warm-up over the first 10% of the steps, then
    cosine decay; what the set-aware head was fitted with).
    Returns one record per epoch: mean loss, and pick accuracy on ``val_examples`` when given.
    """
    if not examples:
        raise ValueError("no cached [SEG] examples to fit on: the data gave no answer with a [SEG]")
    if schedule not in ("constant", "onecycle"):
        raise ValueError(f"unknown schedule {schedule!r}; use constant or onecycle")
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the pointer head has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(examples) + batch_size - 1) // batch_size
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=max(epochs * steps_per_epoch, 1),
                                                     pct_start=0.1) if schedule == "onecycle" else None)
    generator = torch.Generator().manual_seed(seed)
    history = []
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        running, steps = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [examples[k] for k in order[start:start + batch_size]]
            log_weights = _log_weights(head, batch)  # one call for the whole batch: [all its [SEG]s, Q]
            total, count, row = log_weights.new_zeros(()), 0, 0
            for ex in batch:
                n = ex["states"].shape[0]
                loss, counted, _ = matched_pointer_loss(log_weights[row:row + n], ex["ious"], ex["sets"])
                total, count, row = total + loss, count + counted, row + n
            if count:
                optimizer.zero_grad(set_to_none=True)
                (total / count).backward()
                optimizer.step()
                running, steps = running + float(total.detach()) / count, steps + 1
            if scheduler is not None:
                scheduler.step()
        record = {"epoch": epoch + 1, "loss": running / max(steps, 1)}
        if val_examples:
            head.eval()
            record["val_pick_accuracy"] = pick_accuracy(head, val_examples)
            head.train()
        history.append(record)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    head.eval()
    return history


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_bridge.pointer_fit", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bridge", required=True, help="bridge folder with a query_pointer head (ReasonSegModel."
                   "save_pretrained, e.g. llm_bridge.train's <output-dir>/bridge)")
    p.add_argument("--output-dir", required=True, help="where the refitted bridge is written")
    p.add_argument("--reason-seg-data", required=True, nargs="+", help="one or more '<ReasonSeg folder>|<split>' "
                   "with labelme group ids (one [SEG] per answer object); every image of each is cached")
    p.add_argument("--val-data", help="'<folder>|<split>' to report pick accuracy on after each epoch")
    p.add_argument("--query-evidence", action="store_true", help="add evidence keys to the head first "
                   "(BridgeConfig.query_evidence)")
    p.add_argument("--fresh-head", action="store_true", help="re-initialise the head instead of refining it")
    p.add_argument("--context-layers", type=int, default=0, help="> 0: a fresh set-aware head (BridgeConfig."
                   "pointer_context_layers; turns on --query-evidence): it points among GLEE's distinct confident "
                   "queries, its keys pass through this many transformer layers over them")
    p.add_argument("--evidence-categories", help="names GLEE's class head reads each query against for the "
                   "evidence (BridgeConfig.evidence_categories): a comma list, COCO JSON or text file; needs a fresh "
                   "head (--fresh-head or --context-layers) and a fresh --cache")
    p.add_argument("--cover-ratio", type=float, help="write BridgeConfig.pointer_cover_ratio into the refitted "
                   "bridge: each [SEG] also covers the unpicked objects it points at with this fraction of its top "
                   "weight (default: keep the bridge's)")
    p.add_argument("--schedule", choices=("constant", "onecycle"), default="constant", help="learning-rate schedule")
    p.add_argument("--passes", type=int, default=1, help="samples (question wordings) per training image")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=16, help="answers per optimizer step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="a .pt file: the cached training examples are read from it if it exists, "
                   "else written to it")
    p.add_argument("--extra-cache", nargs="+", default=[], help="more cached training examples: files written by "
                   "earlier runs' --cache (e.g. on more images, with --epochs 0)")
    return p


def _dataset(spec: str) -> object:
    from llm_bridge.data.reason_seg import ReasonSegDataset

    folder, _, split = spec.partition("|")
    return ReasonSegDataset(folder, split or "train", explanatory=-1, instance_masks=True)


def _read_cache(head: QueryPointerProjection, path: Path) -> list[dict[str, Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"cache {path} does not exist (write one with --cache on a run over that data)")
    examples = torch.load(path, weights_only=True)
    check_examples(head, examples, str(path))
    print(f"{len(examples)} cached answers read from {path}", flush=True)
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = ReasonSegModel.from_pretrained(args.bridge)
    head = _pointer_head(model)
    fresh = args.fresh_head or args.context_layers > 0
    if args.evidence_categories:
        if not fresh:
            raise SystemExit("--evidence-categories changes what the head reads: add --fresh-head or --context-layers")
        from llm_bridge.train import read_prompt_categories

        model.set_evidence_categories(read_prompt_categories(args.evidence_categories))
    if fresh:  # a new head of the kind the config names (--context-layers: the set-aware one)
        if args.query_evidence or args.context_layers:
            model.config.query_evidence = True
        if args.context_layers:
            model.config.pointer_context_layers = args.context_layers
        head = build_pointer_head(model.config, model.hidden_size, model._active_tower())
        model.seg_projection = head
    elif args.query_evidence:
        model.add_query_evidence()
    head.requires_grad_(True)
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        examples = _read_cache(head, cache)
    else:
        datasets = [_dataset(spec) for spec in args.reason_seg_data]
        examples = collect_pointer_examples(model, datasets, args.passes, args.seed)
        if cache is not None:
            torch.save(examples, cache)
    for extra in args.extra_cache:
        examples = examples + _read_cache(head, Path(extra))
    val = collect_pointer_examples(model, _dataset(args.val_data), 1, args.seed + 1) if args.val_data else None
    if val:
        print(f"val pick accuracy before fitting: {pick_accuracy(head, val):.3f}", flush=True)
    fit_pointer_head(head, examples, args.epochs, args.lr, args.weight_decay, args.batch_size, args.seed, val,
                     schedule=args.schedule)
    if args.cover_ratio is not None:
        model.set_pointer_cover_ratio(args.cover_ratio)
    out = model.save_pretrained(args.output_dir)
    print(f"bridge written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
