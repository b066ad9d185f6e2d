"""The training loop: build model, data and engine from a recipe, resume, train, log, checkpoint, export.

Outputs in ``output_dir``: ``log.jsonl`` (one line per step: total loss, every weighted loss term, lr, grad norm,
task, dataset, skipped samples, seconds), ``checkpoints/`` (see ``train.engine.CheckpointManager``),
``datasets.json`` (what each dataset loaded and skipped), ``recipe.yaml`` (the merged recipe) and, at the end,
``model/`` (``GleeModel.from_pretrained`` folder).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from glee.modeling.glee_model import GleeModel
from train.batching import BatchingConfig
from train.config import TrainConfig
from train.data.loader import BatchSource, load_dataset, make_loader
from train.engine import (
    CheckpointManager,
    DeepSpeedEngine,
    JsonlLog,
    PlainEngine,
    init_model_weights,
    rank_and_world,
    seed_step,
)
from train.module import GleeTrainModule

log = logging.getLogger("train")


def build_module(cfg: TrainConfig) -> tuple[GleeTrainModule, str]:
    glee_cfg = cfg.model.glee_config()
    teacher = cfg.model.teacher if cfg.model.teacher is not None else glee_cfg.text.arch == "clip_teacher"
    torch.manual_seed(cfg.seed)
    model = GleeModel(glee_cfg, with_teacher=teacher)
    if cfg.model.scratch_init:  # before the weights, so that loaded tensors are never re-initialised
        torch.nn.init.normal_(model.lang_projection, std=0.02)
        torch.nn.init.normal_(model.predictor.category_embed, std=0.02)
    info = init_model_weights(model, cfg.model.weights, cfg.model.weights_strict)
    if cfg.model.scratch_init:
        info += "; scratch init of lang_projection and category_embed (N(0, 0.02^2)) unless loaded"
    if teacher and not cfg.model.weights:
        model.text_encoder_teacher.load_state_dict(model.text_encoder.state_dict())  # teacher = initial student
    module = GleeTrainModule(model, cfg.loss, cfg.dn)
    return module, info


def build_source(cfg: TrainConfig, module: GleeTrainModule, rank: int) -> tuple[BatchSource, dict[str, Any]]:
    glee_cfg = module.model.cfg
    batching = BatchingConfig(
        pixel_mean=tuple(glee_cfg.pixel_mean), pixel_std=tuple(glee_cfg.pixel_std),
        size_divisibility=glee_cfg.size_divisibility, max_category_len=cfg.batching.max_category_len,
        visual_prompt=glee_cfg.visual_prompt, visual_prompt_prob=cfg.batching.visual_prompt_prob,
    )
    datasets = [load_dataset(spec) for spec in cfg.datasets]
    report = {
        d.name: {"records": len(d), "classes": len(d.class_names), "masks": d.has_masks, "video": d.is_video,
                 "skipped": d.stats.as_dict(), "source": d.source}
        for d in datasets
    }
    source = BatchSource(datasets, cfg.datasets, cfg.augment, batching, cfg.seed, rank, cfg.solver.max_iter)
    return source, report


def make_engine(cfg: TrainConfig, module: GleeTrainModule) -> PlainEngine | DeepSpeedEngine:
    if cfg.engine.backend == "deepspeed":
        return DeepSpeedEngine(module, cfg.solver, cfg.engine.zero_stage, cfg.engine.precision, cfg.engine.deepspeed)
    return PlainEngine(module, cfg.solver, cfg.engine.precision)


def train(cfg: TrainConfig, resume: bool = True, max_steps: int | None = None, progress: bool = True) -> dict:
    """Run (or continue) the recipe.

    Args:
        resume: continue from ``output_dir/checkpoints/latest`` when there is one.
        max_steps: stop after this many steps in this call (the schedule still targets ``solver.max_iter``).
    Returns:
        a summary: first/last step, last loss, checkpoint and export paths.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    rank, world = rank_and_world()
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    module, init_info = build_module(cfg)
    log.info("model: %s", init_info)
    source, report = build_source(cfg, module, rank)
    if rank == 0:
        (out / "datasets.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report.items():
        log.info("dataset %s: %d records, skipped %s", name, r["records"], r["skipped"] or "nothing")
    engine = make_engine(cfg, module)
    ckpts = CheckpointManager(out, cfg.keep_checkpoints)
    ckpts.cleanup_partial()
    start = 0
    latest = ckpts.latest() if resume else None
    if latest is not None:
        engine.load(latest)
        start = json.loads((latest / "trainer_state.json").read_text())["step"]
        log.info("resumed from %s at step %d", latest, start)
    end = cfg.solver.max_iter if max_steps is None else min(cfg.solver.max_iter, start + max_steps)
    jsonl = JsonlLog(out / "log.jsonl", start)
    loader = make_loader(source, start, end, cfg.num_workers)
    period = cfg.solver.checkpoint_period
    bar = tqdm(total=cfg.solver.max_iter, initial=start, disable=not progress or rank != 0, dynamic_ncols=True,
               desc="train")
    last: dict[str, Any] = {}
    saved: Path | None = None
    tic = time.perf_counter()
    try:
        for batch in loader:
            step = batch.step
            seed_step(cfg.seed, rank, step)
            metrics = engine.train_step(batch)
            now = time.perf_counter()
            last = {"step": step, "loss": metrics["loss"], "lr": metrics["lr"], "grad_norm": metrics["grad_norm"],
                    "task": batch.task, "dataset": cfg.datasets[batch.dataset_index].name,
                    "prompt": batch.visual_prompt_type if batch.visual_prompt_masks is not None else None,
                    "images": batch.num_images, "seconds": round(now - tic, 4), "skipped": batch.skipped,
                    "terms": metrics["terms"]}
            tic = now
            if step % cfg.log_period == 0 or step + 1 == end:
                jsonl.write(last)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", task=batch.task)
            done = step + 1
            if done % period == 0 or done == cfg.solver.max_iter or done == end:
                saved = ckpts.save(engine, {"step": done, "seed": cfg.seed, "world_size": world,
                                            "backend": cfg.engine.backend})
    finally:
        bar.close()
        jsonl.close()
    export = None
    if last and last["step"] + 1 == cfg.solver.max_iter:
        export = out / "model"
        engine.export(export)
    return {"start": start, "end": end, "last": last, "checkpoint": str(saved) if saved else None,
            "export": str(export) if export else None}
