"""Optimiser and schedule of the official recipes (``train_net.build_optimizer`` + detectron2 WarmupMultiStepLR).

* AdamW, base LR 1e-4, the same weight decay for every parameter (norms and embeddings included);
* LR multipliers by parameter name: "backbone" x ``backbone_multiplier`` (0.1 Lite/Plus, 1.0 Pro), with the Pro
  layer-wise decay ``rate ** (num_layers + 1 - layer_id)`` (layer 0 = patch / position embedding, block i -> i + 1,
  the rest num_layers + 1); "text_encoder" x ``text_encoder_multiplier`` (0.1 in the Lite/Plus stage-2/3 YAMLs,
  the 1.0 default elsewhere); ``lang_projection`` keeps the base LR.  The frozen teacher has no trainable
  parameters.
* schedule: linear warmup from ``warmup_factor`` over ``warmup_iters``, then x gamma (0.1) at each step in ``steps``;
* gradient clipping: full-model L2 norm at ``clip_grad_norm`` (0.01).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SolverConfig:
    max_iter: int = 90000
    base_lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_multiplier: float = 0.1
    text_encoder_multiplier: float = 1.0
    lr_decay_rate: float | None = None  # Pro: 0.8
    lr_decay_num_layers: int | None = None  # Pro: 24
    steps: list[int] = field(default_factory=lambda: [79200, 86400])
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.01
    clip_grad_norm: float = 0.01
    checkpoint_period: int = 10000
    ims_per_batch: int | None = None  # the official global batch, for the record (batch = per-rank size x ranks)

    @classmethod
    def from_dict(cls, raw: dict | None) -> SolverConfig:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown solver option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        if "betas" in raw:
            raw["betas"] = tuple(raw["betas"])
        for key in ("base_lr", "weight_decay", "gamma", "warmup_factor", "clip_grad_norm", "backbone_multiplier",
                    "text_encoder_multiplier"):
            if key in raw:
                raw[key] = float(raw[key])  # YAML reads 1e-4 as a string
        cfg = cls(**raw)
        if list(cfg.steps) != sorted(cfg.steps):
            raise ValueError(f"solver.steps must be increasing, got {cfg.steps}")
        return cfg


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer index for layer-wise LR decay (official ``get_vit_lr_decay_rate``)."""
    if ".pos_embed" in name or ".patch_embed" in name:
        return 0
    if ".blocks." in name:
        return int(name.split(".blocks.")[1].split(".")[0]) + 1
    return num_layers + 1


def lr_multiplier(name: str, cfg: SolverConfig) -> float:
    mult = 1.0
    if "backbone" in name:
        mult *= cfg.backbone_multiplier
        if cfg.lr_decay_rate is not None:
            layers = cfg.lr_decay_num_layers or 24
            mult *= cfg.lr_decay_rate ** (layers + 1 - vit_layer_id(name, layers))
    if "text_encoder" in name:
        mult *= cfg.text_encoder_multiplier
    return mult


def param_groups(model: nn.Module, cfg: SolverConfig) -> list[dict]:
    """Trainable parameters grouped by LR multiplier (one group per distinct value; shared tensors once)."""
    groups: dict[float, dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mult = lr_multiplier(name, cfg)
        group = groups.setdefault(mult, {"params": [], "names": [], "lr_mult": mult,
                                         "lr": cfg.base_lr * mult, "weight_decay": cfg.weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[k] for k in sorted(groups, reverse=True)]


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    # foreach: one fused loop over all tensors (also on CPU), far fewer kernel launches than per-parameter updates
    return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=True)


def lr_factor(it: int, cfg: SolverConfig) -> float:
    """detectron2 WarmupMultiStepLR factor at iteration ``it`` (linear warmup)."""
    factor = cfg.gamma ** bisect_right(cfg.steps, it)
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))
