"""``glee train`` / ``python -m train``: run a recipe, fine-tune on a COCO-format dataset, list recipes.

Run a recipe (resumes from ``<output_dir>/checkpoints/latest`` when there is one)::

    python -m train --config lite_stage2.yaml [--set solver.max_iter=1000 --set engine.zero_stage=3 ...]
    deepspeed --num_gpus 8 --module train --config lite_stage2.yaml          # multi-GPU, DeepSpeed ZeRO

Fine-tune a GLEE checkpoint on your own COCO-format data (one command)::

    python -m train finetune --json my/train.json --images my/images --weights GLEE_Lite_joint.pth \\
        --output-dir runs/mine [--preset lite] [--max-iter 5000] [--lr 1e-4] [--batch-size 2]

Recipes: ``python -m train recipes``.  Paths in recipes are relative to ``data.root`` ($DETECTRON2_DATASETS or
./datasets, the official layout).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from train.config import CONFIG_DIR, TrainConfig, apply_overrides, read_recipe


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glee train", description="Train GLEE from a recipe (YAML).")
    p.add_argument("--config", required=True, help="recipe YAML (a path, or a name in train/configs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe entry, e.g. --set solver.max_iter=1000 (repeatable)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in this call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return p


def _finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glee train finetune",
                                description="Fine-tune GLEE on a COCO-format instance dataset.")
    p.add_argument("--json", required=True, help="COCO instances JSON of the training set")
    p.add_argument("--images", required=True, help="folder the JSON's file_name entries are relative to")
    p.add_argument("--weights", help="initial weights: an official GLEE .pth or a save_pretrained folder")
    p.add_argument("--preset", default="lite", help="model preset matching the weights (lite, plus, pro, ...)")
    p.add_argument("--name", default="custom", help="dataset name (its task name in the logs)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-iter", type=int, default=5000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--backend", choices=["plain", "deepspeed"], default="plain")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def finetune_recipe(args: argparse.Namespace) -> dict:
    """The fine-tuning recipe: ``finetune_coco.yaml`` with the user's dataset, weights and schedule."""
    raw = read_recipe(CONFIG_DIR / "finetune_coco.yaml")
    raw["model"]["preset"] = args.preset
    if args.weights:
        raw["model"]["weights"] = args.weights
    raw["data"]["root"] = "/"
    raw["data"]["datasets"] = [{
        "name": args.name, "reader": "coco", "json": str(Path(args.json).resolve()),
        "image_root": str(Path(args.images).resolve()), "dataset_name": args.name, "batch_size": args.batch_size,
    }]
    solver = raw.setdefault("solver", {})
    solver.update({"max_iter": args.max_iter, "base_lr": args.lr,
                   "steps": [int(args.max_iter * 0.8), int(args.max_iter * 0.95)],
                   "checkpoint_period": max(1, min(1000, args.max_iter // 5))})
    raw.setdefault("engine", {})["backend"] = args.backend
    raw["output_dir"] = args.output_dir
    return apply_overrides(raw, args.overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from train.engine import rank_and_world

    logging.basicConfig(level=logging.INFO if rank_and_world()[0] == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if argv[:1] == ["recipes"]:
        for path in sorted(CONFIG_DIR.glob("*.yaml")):
            first = path.read_text().splitlines()[0].lstrip("# ").strip() if path.read_text() else ""
            print(f"{path.name:<28} {first}")
        return 0
    if argv[:1] == ["finetune"]:
        args = _finetune_parser().parse_args(argv[1:])
        cfg = TrainConfig.from_dict(finetune_recipe(args))
        resume, max_steps, progress = True, None, not args.no_progress
    else:
        args = _run_parser().parse_args(argv)
        overrides = list(args.overrides)
        if args.output_dir:
            overrides.append(f"output_dir={args.output_dir}")
        cfg = TrainConfig.load(args.config, overrides)
        resume, max_steps, progress = not args.no_resume, args.max_steps, not args.no_progress
    from train.trainer import train

    summary = train(cfg, resume=resume, max_steps=max_steps, progress=progress)
    if rank_and_world()[0] == 0:
        last = summary["last"]
        print(f"trained steps {summary['start']}..{summary['end']}; last loss "
              f"{last.get('loss', float('nan')):.4f}; checkpoint {summary['checkpoint']}; model {summary['export']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
