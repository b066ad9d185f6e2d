"""Training recipes: YAML files with ``_base_`` inheritance and dotted command-line overrides.

Top-level sections (all optional except ``model`` and ``data``)::

    _base_: other.yaml            # deep-merged first (lists are replaced, not merged)
    model:    {preset: lite, overrides: {...}, weights: path, weights_strict: false, teacher: true}
    data:     {root: <dir>, num_workers: 4, datasets: [DatasetSpec, ...]}
    augment:  AugmentConfig fields
    batching: {max_category_len: 100, visual_prompt_prob: 0.2}
    solver:   SolverConfig fields
    loss:     LossConfig fields (weights, num_points, ...)
    dn:       {enabled: true, dn_num: 100, noise_scale: 0.4}
    engine:   {backend: deepspeed | plain, zero_stage: 2, precision: auto | bf16 | fp32, deepspeed: {extra config}}
    output_dir, seed, log_period, keep_checkpoints, threads

``data.root`` defaults to ``$DETECTRON2_DATASETS`` or ``datasets`` (the official layout); relative dataset paths
are resolved against it.  Strings may use ``${VAR}`` / ``${VAR:-default}`` environment references.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glee.config import GleeConfig
from train.batching import BatchingConfig
from train.data.loader import DatasetSpec
from train.data.transforms import AugmentConfig
from train.losses import LossConfig
from train.matcher import MatchCosts
from train.module import DenoisingConfig
from train.optim import SolverConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
SECTIONS = {"_base_", "model", "data", "augment", "batching", "solver", "loss", "dn", "engine", "output_dir", "seed",
            "log_period", "keep_checkpoints", "threads", "description"}


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe with its ``_base_`` chain merged (paths relative to the including file, or train/configs)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} not found (bundled recipes live in {CONFIG_DIR})")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping")
    base = raw.pop("_base_", None)
    if base is not None:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        raw = deep_merge(read_recipe(base_path), raw)
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings (value parsed as YAML) applied on top of a recipe."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. solver.max_iter=100)")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


@dataclass
class EngineConfig:
    backend: str = "plain"  # plain | deepspeed
    zero_stage: int = 2
    precision: str = "fp32"  # auto | bf16 | fp32
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged into the generated DeepSpeed config

    @classmethod
    def from_dict(cls, raw: dict | None) -> EngineConfig:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**raw)
        if cfg.backend not in ("plain", "deepspeed"):
            raise ValueError(f"engine.backend must be plain or deepspeed, got {cfg.backend!r}")
        if cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}")
        if cfg.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"engine.precision must be auto, bf16 or fp32, got {cfg.precision!r}")
        return cfg


@dataclass
class ModelSpec:
    preset: str | None = "lite"
    config_json: str | None = None  # a GleeConfig JSON instead of a preset
    overrides: dict[str, Any] = field(default_factory=dict)
    weights: str | dict | list | None = None  # path(s) or {path, prefix}; see train.engine.init_model_weights
    weights_strict: bool = False
    teacher: bool | None = None  # None: build the frozen teacher when text.arch is clip_teacher
    # training from scratch: draw lang_projection and category_embed from N(0, 0.02^2) instead of the official
    # torch.rand init, whose all-positive [0, 1) entries give class logits in the hundreds before any training
    scratch_init: bool = False

    def glee_config(self) -> GleeConfig:
        if self.config_json:
            cfg = GleeConfig.from_json(self.config_json)
        else:
            cfg = GleeConfig.preset(self.preset or "lite")
        if self.overrides:
            cfg = GleeConfig.from_dict(deep_merge(cfg.to_dict(), self.overrides))
        return cfg


@dataclass
class TrainConfig:
    model: ModelSpec
    datasets: list[DatasetSpec]
    augment: AugmentConfig
    batching: BatchingConfig
    solver: SolverConfig
    loss: LossConfig
    dn: DenoisingConfig | None
    engine: EngineConfig
    output_dir: Path
    seed: int = 0
    num_workers: int = 0
    log_period: int = 1
    keep_checkpoints: int = 2
    threads: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = _expand(copy.deepcopy(raw))
        unknown = sorted(set(raw) - SECTIONS)
        if unknown:
            raise ValueError(f"unknown recipe section(s) {unknown}; known: {sorted(SECTIONS)}")
        if "model" not in raw or "data" not in raw:
            raise ValueError("a recipe needs a `model` and a `data` section")
        model_raw = dict(raw["model"])
        unknown = sorted(set(model_raw) - set(ModelSpec.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(ModelSpec.__dataclass_fields__)}")
        model = ModelSpec(**model_raw)
        data = dict(raw["data"])
        root = data.pop("root", None) or os.environ.get("DETECTRON2_DATASETS", "datasets")
        num_workers = int(data.pop("num_workers", 0))
        entries = data.pop("datasets", None)
        if data:
            raise ValueError(f"unknown data option(s) {sorted(data)}; known: root, num_workers, datasets")
        if not entries:
            raise ValueError("data.datasets is empty: list at least one dataset")
        datasets = [DatasetSpec.from_dict(d, root) for d in entries]
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        loss_raw = dict(raw.get("loss") or {})
        costs = MatchCosts(**loss_raw.pop("costs", {}))
        unknown = sorted(set(loss_raw) - set(LossConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown loss option(s) {unknown}; known: {sorted(LossConfig.__dataclass_fields__)}")
        loss = LossConfig(costs=costs, **loss_raw)
        batching_raw = dict(raw.get("batching") or {})
        unknown = sorted(set(batching_raw) - {"max_category_len", "visual_prompt_prob"})
        if unknown:
            raise ValueError(f"unknown batching option(s) {unknown}; known: max_category_len, visual_prompt_prob")
        dn = DenoisingConfig(**raw["dn"]) if raw.get("dn") is not None else None
        cfg = cls(
            model=model, datasets=datasets, augment=AugmentConfig.from_dict(raw.get("augment")),
            batching=BatchingConfig(**batching_raw), solver=SolverConfig.from_dict(raw.get("solver")), loss=loss,
            dn=dn, engine=EngineConfig.from_dict(raw.get("engine")),
            output_dir=Path(raw.get("output_dir") or "./exp/glee"), seed=int(raw.get("seed", 0)),
            num_workers=num_workers, log_period=int(raw.get("log_period", 1)),
            keep_checkpoints=int(raw.get("keep_checkpoints", 2)), threads=raw.get("threads"), raw=raw,
        )
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        return cls.from_dict(apply_overrides(read_recipe(path), overrides or []))
