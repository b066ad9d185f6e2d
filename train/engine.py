"""Training engines behind one interface, checkpoints and the JSONL log (the loop itself is ``train.trainer``).

* ``PlainEngine``: PyTorch AdamW + full-model gradient clipping + warmup/step schedule, optional bf16 autocast,
  DistributedDataParallel when launched with torchrun / the deepspeed launcher (WORLD_SIZE > 1).
* ``DeepSpeedEngine``: ``deepspeed.initialize`` with ZeRO stage 1/2/3 (0 = plain data parallel), the same client
  AdamW parameter groups and LambdaLR schedule, gradient clipping in the DeepSpeed config, bf16 autocast with fp32
  master weights when asked for (``precision: auto`` picks it where the hardware has bf16: CUDA with bf16 support,
  or a CPU with AVX512-BF16 / AMX).  On CPU DeepSpeed uses the gloo backend.

Both expose ``train_step(batch) -> metrics``, ``save(dir)``, ``load(dir)`` and ``export(dir)``.

Determinism and resume: the data of step s is a pure function of (seed, rank, s) (``train.data.loader``), and
all training randomness (DN noise, point sampling, dropout, prompt choice) is re-seeded from (seed, rank, s)
before each step, so a run resumed from the checkpoint of step s continues exactly like an uninterrupted one.
Checkpoints are written into ``checkpoints/step_XXXXXXXX.tmp`` and renamed when complete; ``checkpoints/latest``
is replaced atomically, so a crash (even SIGKILL) at any moment leaves the last complete checkpoint usable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from glee.checkpoint import CheckpointError, load_official_checkpoint, load_state_dict_strict, read_state_dict
from glee.modeling.glee_model import GleeModel
from train.batching import TrainBatch
from train.module import GleeTrainModule
from train.optim import SolverConfig, build_optimizer, build_scheduler

log = logging.getLogger("train")
STATE_FILE = "trainer_state.json"


# ------------------------------------------------------------------------------------------ helpers
def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def seed_step(seed: int, rank: int, step: int) -> None:
    """Re-seed every RNG the training step uses from (seed, rank, step)."""
    s = (seed * 1_000_003 + rank * 7_919 + step) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision bf16 was requested but this GPU has no bf16 support; use fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


def init_model_weights(model: GleeModel, weights: str | dict | list | None, strict: bool) -> str:
    """Initial weights, applied in order.

    Each entry is a path or ``{path, prefix}``: an official GLEE / MaskDINO ``.pth`` (any stage; prefixes and
    tied aliases handled by ``glee.checkpoint``), a safetensors file, a ``save_pretrained`` folder, or any state
    dict whose keys become model keys after prepending ``prefix`` (e.g. the HF CLIP text tower with
    ``prefix: text_encoder.``).  Non-strict entries leave the other tensors as they are and report counts.
    """
    if not weights:
        return "random initialisation"
    entries = weights if isinstance(weights, list) else [weights]
    notes = []
    for entry in entries:
        spec = entry if isinstance(entry, dict) else {"path": entry}
        if "path" not in spec:
            raise ValueError(f"model.weights entry {entry!r} needs a `path`")
        path = Path(str(spec["path"]))
        if path.is_dir():
            path = path / "model.safetensors"
        sd = read_state_dict(path)
        prefix = spec.get("prefix")
        own = model.state_dict()
        if prefix is not None or (path.suffix == ".safetensors" and any(k in own for k in sd)):
            sd = {f"{prefix or ''}{k}": v for k, v in sd.items()}
            if strict or spec.get("strict"):
                report = load_state_dict_strict(model, sd)
                if not report.ok:
                    raise CheckpointError(f"{path} does not match the model\n{report.summary()}")
            loaded = 0
            with torch.no_grad():
                for k, v in sd.items():
                    if k in own and own[k].shape == v.shape:
                        own[k].copy_(v.to(own[k].dtype))
                        loaded += 1
            notes.append(f"{path}: {loaded} of {len(sd)} tensors loaded")
        else:
            report = load_official_checkpoint(model, sd, strict=strict or bool(spec.get("strict")))
            notes.append(f"{path}: {report.summary(limit=5)}")
    return "; ".join(notes)


# ------------------------------------------------------------------------------------------ engines
class PlainEngine:
    """Single process, or DDP over torch.distributed when the launcher set WORLD_SIZE > 1."""

    def __init__(self, module: GleeTrainModule, solver: SolverConfig, precision: str = "fp32") -> None:
        self.module = module
        self.solver = solver
        self.device = module.model.device
        self.precision = resolve_precision(precision, self.device)
        self.optimizer = build_optimizer(module, solver)
        self.scheduler = build_scheduler(self.optimizer, solver)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        _, world = rank_and_world()
        self.wrapped: nn.Module = module
        if world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.wrapped = nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)

    def train_step(self, batch: TrainBatch) -> dict[str, Any]:
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            total, terms = self.wrapped(batch)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.solver.clip_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_mult", 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(total.detach()), "terms": {k: float(v.detach()) for k, v in terms.items()},
                "lr": lr, "grad_norm": float(grad_norm)}

    def save(self, folder: Path, state: dict[str, Any]) -> None:
        """Write a complete checkpoint into ``folder`` (the caller renames it into place)."""
        rank, _ = rank_and_world()
        if rank == 0:
            self.module.model.save_pretrained(folder / "model")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        sd = read_state_dict(folder / "model" / "model.safetensors")
        report = load_state_dict_strict(self.module.model, sd)
        if not report.ok:
            raise CheckpointError(f"{folder}: the checkpoint does not match the model\n{report.summary()}")
        opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])

    def export(self, folder: Path) -> None:
        if rank_and_world()[0] == 0:
            self.module.model.save_pretrained(folder)


def _patch_deepspeed_shm() -> None:
    """Skip DeepSpeed's shared-memory comm op JIT build on CPU (30-110 s); gloo does the all-reduce."""
    import deepspeed.comm.torch  # noqa: F401

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


class DeepSpeedEngine:
    """ZeRO stage 0-3 through ``deepspeed.initialize`` with a client AdamW and LambdaLR."""

    def __init__(
        self, module: GleeTrainModule, solver: SolverConfig, zero_stage: int = 2, precision: str = "auto",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, default)
        if "MASTER_PORT" not in os.environ:
            raise RuntimeError("DeepSpeed needs MASTER_PORT; launch with `deepspeed` / torchrun or set MASTER_PORT")
        import deepspeed

        if os.environ["DS_ACCELERATOR"] == "cpu":
            _patch_deepspeed_shm()
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.solver = solver
        self.module = module
        self.precision = resolve_precision(precision, module.model.device)
        optimizer = build_optimizer(module, solver)
        scheduler = build_scheduler(optimizer, solver)
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": 1,  # batches are built by our loader; DeepSpeed never splits them
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": zero_stage},
            "gradient_clipping": solver.clip_grad_norm,
            "zero_allow_untested_optimizer": True,
            # bf16 through autocast with fp32 master weights (DeepSpeed's torch_autocast): GLEE keeps parts of the
            # model in float32 (text tokens, deformable attention), which a module-wide bf16 cast would break
            "torch_autocast": {"enabled": self.precision == "bf16", "dtype": "bfloat16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        config.update(extra_config or {})
        if zero_stage == 3:
            for param in _zero3_external_parameters(module):
                deepspeed.zero.register_external_parameter(module, param)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.zero_stage = zero_stage

    def train_step(self, batch: TrainBatch) -> dict[str, Any]:
        self.engine.train()
        total, terms = self.engine(batch)
        self.engine.backward(total)
        group = self.optimizer.param_groups[0]
        lr = group["lr"] / group.get("lr_mult", 1.0)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return {"loss": float(total.detach()), "terms": {k: float(v.detach()) for k, v in terms.items()},
                "lr": lr, "grad_norm": float(norm) if norm is not None else float("nan")}

    def save(self, folder: Path, state: dict[str, Any]) -> None:
        # every rank writes its shards into <parent>/<tag>; the caller renames the folder when all are done
        self.engine.save_checkpoint(str(folder.parent), tag=folder.name, client_state={"trainer": state},
                                    save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed could not load this checkpoint")

    def export(self, folder: Path) -> None:
        model = self.module.model
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                if rank_and_world()[0] == 0:
                    _save_fp32(model, folder)
        elif rank_and_world()[0] == 0:
            _save_fp32(model, folder)


def _zero3_external_parameters(module: GleeTrainModule) -> list[nn.Parameter]:
    """Parameters ZeRO-3 would not gather on its own.

    ZeRO-3 gathers a module's parameters around its forward and, for backward, through hooks on the tensors it
    returns.  GLEE's own modules return dataclasses (no hook) and use some parameters directly rather than
    through a submodule's forward (``lang_projection`` -- also in the distillation path of the train module --,
    ``category_embed``, ``level_embed``, ``mask_sptial_embed``, ``pn_indicator.weight``).  Those are registered
    on the top-level module, which returns plain tensors, so they stay gathered for its forward and backward.
    """
    params: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        if type(sub).__module__.startswith("torch.nn"):
            continue  # torch layers return tensors and use their own weights inside their forward
        for p in sub.parameters(recurse=False):
            params[id(p)] = p
    params[id(module.model.pn_indicator.weight)] = module.model.pn_indicator.weight
    return list(params.values())


def _save_fp32(model: GleeModel, folder: Path) -> None:
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        model = model.float()
    model.save_pretrained(folder)
    if dtype != torch.float32:
        model.to(dtype)


# ------------------------------------------------------------------------------------------ checkpoints
class CheckpointManager:
    """``<out>/checkpoints/step_XXXXXXXX`` folders, written atomically, plus a ``latest`` pointer."""

    def __init__(self, output_dir: Path, keep: int = 2) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.keep = max(1, keep)

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if pointer.exists():
            folder = self.root / pointer.read_text().strip()
            if (folder / STATE_FILE).exists():
                return folder
        complete = sorted(p for p in self.root.glob("step_*") if not p.name.endswith(".tmp") and
                          (p / STATE_FILE).exists())
        return complete[-1] if complete else None

    def save(self, engine: PlainEngine | DeepSpeedEngine, state: dict[str, Any]) -> Path:
        rank, world = rank_and_world()
        name = f"step_{state['step']:08d}"
        final = self.root / name
        tmp = self.root / (name + ".tmp")
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        if world > 1:
            dist.barrier()
        engine.save(tmp, state)
        if world > 1:
            dist.barrier()
        if rank == 0:
            write_atomic(tmp / STATE_FILE, json.dumps(state, indent=2) + "\n")
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            write_atomic(self.root / "latest", name + "\n")
            for old in sorted(p for p in self.root.glob("step_*") if not p.name.endswith(".tmp"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        if world > 1:
            dist.barrier()
        return final

    def cleanup_partial(self) -> None:
        """Remove folders left by a run killed while writing a checkpoint."""
        if rank_and_world()[0] == 0:
            for p in self.root.glob("step_*.tmp"):
                shutil.rmtree(p, ignore_errors=True)


class JsonlLog:
    """One JSON line per logged step; on resume, lines at or after the resume step are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self.enabled = rank_and_world()[0] == 0
        if not self.enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists() and resume_step > 0:
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", -1) < resume_step:
                        kept.append(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
        write_atomic(path, "".join(k + "\n" for k in kept))
        self.file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
