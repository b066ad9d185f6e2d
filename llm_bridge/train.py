"""Train the bridge: LoRA on the LM, new token rows, projector and [SEG] projection; GLEE frozen.

Two back ends share one trainer:

* plain PyTorch: AdamW (lr 3e-4, betas 0.9/0.95, no weight decay), linear warm-up then linear decay
  (LISA's WarmupDecayLR), gradient clipping 1.0, gradient accumulation, optional bf16 autocast;
* DeepSpeed (ZeRO-2 / ZeRO-3, bf16; ``configs/ds_zero{2,3}_bf16.json``) with the same client optimizer and
  scheduler.  The frozen GLEE tower is kept outside the engine, in float32, and its features are fed in.

Checkpoints: plain = ``trainable.safetensors`` + ``optimizer.pt`` (loaded with ``weights_only=True``) +
``trainer_state.json``; DeepSpeed = its own checkpoint folders (``save_checkpoint`` / ``load_checkpoint``).
``export`` writes a loadable bridge (adapter form) and, with ``merge``, a standalone merged copy.

Command line (single process; multi-process through ``scripts/train_bridge.sh``)::

    python -m llm_bridge.train --output-dir runs/bridge --llm smollm2 --glee /path/to/glee \\
        --dataset-dir /data/lisa --dataset "sem_seg||refer_seg||vqa||reason_seg" --sample-rates 9,3,3,1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_bridge.lora import LoraSettings, apply_lora, count_parameters, trainable_parameters
from llm_bridge.model import SEG_HEADS, ReasonSegModel

CONFIG_DIR = Path(__file__).parent / "configs"
TRAIN_KEYS = ("input_ids", "attention_mask", "labels", "image_index", "gt_masks", "original_sizes", "resized_sizes",
              "gt_mask_sets")


@dataclass
class TrainConfig:
    output_dir: str = "runs/bridge"
    steps: int = 5000  # optimizer steps (LISA: 10 epochs x 500)
    grad_accum: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    precision: str = "bf16"  # "bf16" or "fp32"
    log_every: int = 10
    save_every: int = 500
    seed: int = 42
    deepspeed: str | dict | None = None  # config path or dict; None = plain PyTorch
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r} (fp16 is GPU-only in "
                             "DeepSpeed and not used here)")
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError("steps and grad_accum must be >= 1")


def warmup_decay(total_steps: int, warmup_steps: int) -> Any:
    """LISA's WarmupDecayLR as a LambdaLR factor: 0 -> 1 over ``warmup_steps``, then linearly to 0."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_deepspeed_env() -> None:
    """Single-process defaults for the rendezvous variables (the ``deepspeed`` launcher sets them itself).

    On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op on first init (30-110 s); gloo
    does the same job, so the build is skipped unless ``GLEE_DS_SHM_OP=1``.
    """
    import sys as _sys

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.comm.torch  # noqa: F401

    if os.environ.get("DS_ACCELERATOR") == "cpu" and os.environ.get("GLEE_DS_SHM_OP") != "1":
        _sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def load_ds_config(source: str | dict, cfg: TrainConfig, micro_batch: int) -> dict:
    config = json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else json.loads(json.dumps(source))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = cfg.grad_accum
    config["train_batch_size"] = micro_batch * cfg.grad_accum * world
    config["gradient_clipping"] = cfg.grad_clip
    config.setdefault("zero_allow_untested_optimizer", True)
    config["bf16"] = {"enabled": cfg.precision == "bf16"}
    config.pop("fp16", None)
    if "optimizer" in config or "scheduler" in config:
        raise ValueError("the bridge trainer passes its own AdamW and warm-up/decay schedule; remove 'optimizer' "
                         "and 'scheduler' from the DeepSpeed config")
    return config


class BridgeTrainer:
    """Owns the optimisation of a :class:`ReasonSegModel` (LoRA applied here if it is not yet)."""

    def __init__(self, model: ReasonSegModel, cfg: TrainConfig, micro_batch: int = 2) -> None:
        self.cfg = cfg
        self.model = model
        if not hasattr(model.language_model, "peft_config"):
            apply_lora(model, cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
        # the frozen tower runs outside the optimised module (fp32, no grad; never cast or partitioned)
        self.tower = model.detach_tower() if model.tower is not None else model._active_tower()
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("nothing to train: no parameter requires grad")
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_decay(cfg.steps, cfg.warmup_steps))
        self.engine: Any = None
        self.step = 0  # optimizer steps done
        self.micro_step = 0
        self.history: list[dict[str, float]] = []
        if cfg.deepspeed is not None:
            import deepspeed

            init_deepspeed_env()
            ds_config = load_ds_config(cfg.deepspeed, cfg, micro_batch)
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds_config,
                dist_init_required=True,
            )
        model.train()

    # ------------------------------------------------------------------ steps
    @property
    def module(self) -> ReasonSegModel:
        return self.engine.module if self.engine is not None else self.model

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            visual = self.tower(batch["pixel_values"])
        kwargs = {k: batch[k] for k in TRAIN_KEYS if k in batch}
        kwargs["visual"] = visual
        return kwargs

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One micro-batch: forward, backward, and an optimizer step at each accumulation boundary."""
        kwargs = self._inputs(batch)
        if self.engine is not None:
            out = self.engine(**kwargs)
            self.engine.backward(out.loss)
            self.engine.step()
            boundary = self.engine.is_gradient_accumulation_boundary() or \
                (self.micro_step + 1) % self.cfg.grad_accum == 0
        else:
            autocast = torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16,
                                      enabled=self.cfg.precision == "bf16")
            with autocast:
                out = self.model(**kwargs)
            (out.loss / self.cfg.grad_accum).backward()
            boundary = (self.micro_step + 1) % self.cfg.grad_accum == 0
            if boundary:
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.micro_step += 1
        if boundary:
            self.step += 1
        record = {
            "step": float(self.step),
            "loss": float(out.loss.detach()),
            "ce": float(out.ce_loss.detach()),
            "bce": float(out.mask_bce_loss.detach()) if out.mask_bce_loss is not None else 0.0,
            "dice": float(out.mask_dice_loss.detach()) if out.mask_dice_loss is not None else 0.0,
            "masks": float(out.num_masks or 0),
            **({"pointer": float(out.pointer_loss.detach())} if out.pointer_loss is not None else {}),
            "lr": float(self.scheduler.get_last_lr()[0]),
        }
        self.history.append(record)
        return record

    def fit(self, batches: Iterable[dict[str, Any]], steps: int | None = None,
            on_log: Any = None) -> list[dict[str, float]]:
        """Run until ``steps`` optimizer steps (default ``cfg.steps``) are done; saves every ``save_every``."""
        target = steps if steps is not None else self.cfg.steps
        iterator: Iterator[dict[str, Any]] = iter(batches)
        start = time.time()
        while self.step < target:
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(batches)
                batch = next(iterator)
            before = self.step
            record = self.train_step(batch)
            if self.step != before:
                if self.cfg.log_every and self.step % self.cfg.log_every == 0:
                    record["elapsed_s"] = time.time() - start
                    (on_log or _print_log)(record)
                if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                    self.save_checkpoint(Path(self.cfg.output_dir) / "checkpoints")
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        folder = Path(folder)
        tag = f"step_{self.step}"
        state = {"step": self.step, "micro_step": self.micro_step, "config": _jsonable(asdict(self.cfg))}
        if self.engine is not None:
            self.engine.save_checkpoint(str(folder), tag=tag, client_state=state)
            return folder / tag
        from safetensors.torch import save_file

        target = folder / tag
        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous() for k, v in self.params.items()},
                  str(target / "trainable.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   target / "optimizer.pt")
        (target / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        (folder / "latest").write_text(tag)
        return target

    def load_checkpoint(self, folder: str | Path, tag: str | None = None) -> int:
        """Resume from ``folder`` (the latest tag by default); returns the optimizer step reached."""
        folder = Path(folder)
        if self.engine is not None:
            path, state = self.engine.load_checkpoint(str(folder), tag=tag)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint found in {folder}")
        else:
            from safetensors.torch import load_file

            if tag is None:
                latest = folder / "latest"
                if not latest.exists():
                    raise FileNotFoundError(f"{folder}: no 'latest' file; pass tag='step_N'")
                tag = latest.read_text().strip()
            target = folder / tag
            weights = load_file(str(target / "trainable.safetensors"))
            missing = sorted(set(self.params) - set(weights))
            unexpected = sorted(set(weights) - set(self.params))
            if missing or unexpected:
                raise ValueError(f"{target}: checkpoint does not fit the model (missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}); same LoRA settings and base model are needed")
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(weights[name].to(p.dtype))
            opt = torch.load(target / "optimizer.pt", map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(opt["optimizer"])
            self.scheduler.load_state_dict(opt["scheduler"])
            state = json.loads((target / "trainer_state.json").read_text())
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])
        return self.step

    # ------------------------------------------------------------------ export
    def export(self, folder: str | Path, merge: bool = False) -> Path:
        """Write the trained bridge (adapter form) to ``folder``; with ``merge`` also ``folder/merged``.

        Under DeepSpeed the fp32 master weights are gathered from a fresh checkpoint (the engine's module holds
        bf16 copies, and ZeRO-3 partitions them).
        """
        folder = Path(folder)
        model = self.model
        if self.engine is not None:
            import shutil

            import deepspeed
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            ckpt = self.save_checkpoint(folder / "_ds_export")
            fp32 = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
            deepspeed.comm.barrier()  # every rank has read the consolidated weights before rank 0 deletes them
            if _rank() == 0:
                shutil.rmtree(ckpt.parent, ignore_errors=True)
            with torch.no_grad():
                for name, p in self.params.items():
                    if name not in fp32:
                        raise KeyError(f"{name} missing from the consolidated DeepSpeed state")
                    p.data = fp32[name].float().clone()
            for module in (model.mm_projector, model.seg_projection):
                module.float()
        model.attach_tower(self.tower)
        model.eval()
        if _rank() != 0:
            return folder
        model.save_pretrained(folder)
        if merge:
            merged = ReasonSegModel.from_pretrained(folder)
            merged.merge_lora().save_pretrained(folder / "merged")
        return folder


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _print_log(record: dict[str, float]) -> None:
    if _rank() == 0:
        print(" ".join(f"{k}={v:.4g}" for k, v in record.items()), flush=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------------------------------------------
# data from LISA-style flags
# ---------------------------------------------------------------------------------------------------------------
def build_datasets(args: argparse.Namespace, samples_per_epoch: int) -> Any:
    from llm_bridge.data import (
        HybridDataset,
        ReasonSegDataset,
        ReferSegDataset,
        VQADataset,
        build_sem_seg,
        parse_rates,
    )

    root = Path(args.dataset_dir)
    rates = parse_rates(args.dataset, args.sample_rates)
    # datasets draw at random per index: each process gets its own seed (LISA: a DistributedSampler)
    common = {"samples_per_epoch": samples_per_epoch, "seed": args.seed + _rank()}
    built: dict[str, list] = {}
    for kind in rates:
        if kind == "sem_seg":
            built[kind] = build_sem_seg(root, args.sem_seg_data, **common)
        elif kind == "refer_seg":
            built[kind] = [ReferSegDataset(root / "refer_seg", args.refer_seg_data, **common)]
        elif kind == "vqa":
            built[kind] = [VQADataset(root / "llava_dataset" / f"{args.vqa_data}.json", root / "coco/train2017",
                                      **common)]
        elif kind == "reason_seg":
            name, splits = args.reason_seg_data.split("|")
            # a name is a folder under <dataset-dir>/reason_seg (LISA); an absolute path is used as it is
            folder = Path(name) if Path(name).is_absolute() else root / "reason_seg" / name
            built[kind] = [ReasonSegDataset(folder, splits, explanatory=args.explanatory,
                                            instance_masks=args.reason_seg_instances or args.reason_seg_named,
                                            named_answers=args.reason_seg_named, **common)]
        else:
            raise ValueError(f"unknown dataset type {kind!r}; use sem_seg, refer_seg, vqa, reason_seg")
    return HybridDataset(built, rates, **common)


def read_prompt_categories(spec: str) -> list[str]:
    """Class names from a comma list, a COCO JSON (``categories[*].name``) or a text file (one per line)."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
                raise SystemExit(f"--prompt-categories {spec}: not a COCO JSON (no 'categories' list)")
            names = [str(c["name"]) for c in data["categories"]]
        else:
            names = [line.strip() for line in path.read_text().splitlines()]
    else:
        names = [n.strip() for n in spec.split(",")]
    names = [n for n in names if n]
    if not names:
        raise SystemExit(f"--prompt-categories {spec!r}: no class names")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_bridge.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--llm", default="smollm2", help="'smollm2' or a local transformers causal-LM folder")
    p.add_argument("--glee", required=False, help="GLEE save_pretrained folder (or a preset name: random weights); "
                   "with --resume-bridge: replaces the bridge's own tower (same architecture)")
    p.add_argument("--resume-bridge", help="continue from a saved bridge folder (adapter form)")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--pooled-tokens", type=int, default=0, help="g: g*g pooled pixel tokens after the queries")
    p.add_argument("--prompt-categories", help="GLEE's prompt for the visual tokens: a comma list of class names, "
                   "a COCO JSON (its category names) or a text file (one name per line); default 'object'. A tower "
                   "trained on a closed vocabulary finds its objects far better with that vocabulary")
    p.add_argument("--seg-head", choices=SEG_HEADS, default="mlp",
                   help="[SEG] state -> mask embedding: LISA's mlp, or query_pointer (attention over GLEE's object "
                   "queries, mixing their own mask embeddings)")
    p.add_argument("--query-evidence", action="store_true",
                   help="the query_pointer head's keys also read GLEE's per-query class probabilities, confidence "
                        "and box (BridgeConfig.query_evidence); with --resume-bridge a bridge trained without them "
                        "gets a zero evidence key and continues from exactly its outputs")
    p.add_argument("--pointer-context-layers", type=int, default=0,
                   help="> 0: the set-aware query_pointer head (BridgeConfig.pointer_context_layers; needs "
                        "--query-evidence): it points among GLEE's distinct confident queries, its keys pass through "
                        "this many transformer layers over them")
    p.add_argument("--evidence-categories", help="names GLEE's class head reads each query against for the evidence "
                   "instead of the prompt (BridgeConfig.evidence_categories): a comma list, COCO JSON or text file")
    p.add_argument("--model-max-length", type=int, default=512)
    p.add_argument("--dataset-dir", default="./dataset")
    p.add_argument("--dataset", default="sem_seg||refer_seg||vqa||reason_seg")
    p.add_argument("--sample-rates", default="9,3,3,1")
    p.add_argument("--sem-seg-data", default="ade20k||cocostuff||pascal_part||paco_lvis")
    p.add_argument("--refer-seg-data", default="refclef||refcoco||refcoco+||refcocog")
    p.add_argument("--vqa-data", default="llava_instruct_150k")
    p.add_argument("--reason-seg-data", default="ReasonSeg|train",
                   help="FOLDER|SPLITS: FOLDER under <dataset-dir>/reason_seg, or an absolute path (e.g. a set "
                   "from scripts/make_shapesworld_reasoning.py); SPLITS like train or train_val")
    p.add_argument("--reason-seg-instances", action="store_true",
                   help="one [SEG] and one mask per answer object (target polygons grouped by labelme group_id, "
                   "as scripts/make_shapesworld_reasoning.py writes them) instead of one union mask")
    p.add_argument("--reason-seg-named", action="store_true",
                   help="with one [SEG] per object: the answer names each object before its [SEG] (from the "
                   "annotations' target_names), so the text loss supervises what the answer is")
    p.add_argument("--explanatory", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=2, help="images per micro-batch")
    p.add_argument("--grad-accum", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--deepspeed", help="DeepSpeed JSON (llm_bridge/configs/ds_zero2_bf16.json); omit for plain "
                   "PyTorch")
    p.add_argument("--resume", action="store_true", help="resume from <output-dir>/checkpoints (latest)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="q_proj,v_proj")
    p.add_argument("--token-rows", choices=("new", "full"), default="new")
    p.add_argument("--load-in-4bit", action="store_true", help="QLoRA: NF4 base LM")
    p.add_argument("--load-in-8bit", action="store_true", help="8-bit base LM")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--merge", action="store_true", help="also write a merged standalone model at the end")
    p.add_argument("--merge-from", help="only merge: the adapter-form bridge folder to merge into --output-dir")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge_from:
        merged = ReasonSegModel.from_pretrained(args.merge_from).merge_lora()
        merged.save_pretrained(args.output_dir)
        print(f"merged bridge written to {args.output_dir}")
        return 0
    from llm_bridge.data import BridgeCollator
    from llm_bridge.model import BridgeConfig, build_bridge
    from llm_bridge.tower import read_glee_config

    if args.load_in_4bit and args.load_in_8bit:
        raise SystemExit("choose one of --load-in-4bit / --load-in-8bit")
    quantization = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else None
    if quantization and args.deepspeed:
        raise SystemExit("4/8-bit (QLoRA) training runs with the plain PyTorch loop; drop --deepspeed")
    torch.manual_seed(args.seed)
    if args.resume_bridge and (args.pointer_context_layers or args.evidence_categories):
        raise SystemExit("--pointer-context-layers / --evidence-categories build a new head: give them to a new "
                         "bridge, or refit a trained bridge's head with python -m llm_bridge.pointer_fit")
    if args.resume_bridge:
        # with --glee: continue on that tower (e.g. a retrained GLEE) instead of the bridge's own
        model = ReasonSegModel.from_pretrained(args.resume_bridge, quantization=quantization, is_trainable=True,
                                               glee=args.glee)
        if args.query_evidence:
            model.add_query_evidence()
    else:
        if not args.glee:
            raise SystemExit("--glee is required: a GLEE save_pretrained folder (or a preset name for a smoke run)")
        prompt = {"prompt_categories": read_prompt_categories(args.prompt_categories)} if args.prompt_categories else {}
        if args.evidence_categories:
            prompt["evidence_categories"] = read_prompt_categories(args.evidence_categories)
        cfg = BridgeConfig(llm=args.llm, glee=read_glee_config(args.glee).to_dict(), image_size=args.image_size,
                           pooled_tokens_per_side=args.pooled_tokens, model_max_length=args.model_max_length,
                           seg_head=args.seg_head, query_evidence=args.query_evidence,
                           pointer_context_layers=args.pointer_context_layers, **prompt)
        model = build_bridge(cfg, glee_model=args.glee, quantization=quantization)
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                        target_modules=args.lora_targets.split(","), token_rows=args.token_rows)
    tcfg = TrainConfig(output_dir=args.output_dir, steps=args.steps, grad_accum=args.grad_accum, lr=args.lr,
                       warmup_steps=args.warmup_steps, precision=args.precision, log_every=args.log_every,
                       save_every=args.save_every, seed=args.seed, deepspeed=args.deepspeed,
                       gradient_checkpointing=args.gradient_checkpointing, lora=lora)
    say = print if _rank() == 0 else (lambda *a, **k: None)
    samples = args.steps * args.grad_accum * args.batch_size
    dataset = build_datasets(args, samples_per_epoch=max(samples, 1))
    say(f"data: {dataset}", flush=True)
    collator = BridgeCollator.for_model(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collator,
                                         num_workers=args.workers, shuffle=False)
    trainer = BridgeTrainer(model, tcfg, micro_batch=args.batch_size)
    trainable, total = count_parameters(trainer.module)
    say(f"trainable parameters: {trainable:,} of {total:,} (GLEE tower frozen, outside)", flush=True)
    ckpt_dir = Path(args.output_dir) / "checkpoints"
    if args.resume:
        say(f"resumed at step {trainer.load_checkpoint(ckpt_dir)}", flush=True)
    trainer.fit(loader, args.steps)
    trainer.save_checkpoint(ckpt_dir)
    out = trainer.export(Path(args.output_dir) / "bridge", merge=args.merge)
    say(f"bridge written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

