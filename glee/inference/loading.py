"""Build a ready-to-run ``GleeModel`` from a weights path or a preset name (no downloads, ever).

``load_model(spec)`` accepts:

* a folder written by ``GleeModel.save_pretrained`` (``config.json`` + ``model.safetensors``);
* a parity-fixture folder (``tiny_config.yaml`` + ``tiny_state_dict.safetensors`` + ``tiny_text_encoder/``);
* an official GLEE checkpoint file (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``), loaded strictly into
  the preset named by ``preset`` or, by default, the one its keys identify (Lite: ResNet stem keys, Plus:
  Swin patch embedding, Pro: EVA02 feature pyramid; stage-1 files without ``sot_fuser`` get no prompter);
* a preset name (``lite``, ``plus``, ``pro``, ``tiny``, ...) -- RANDOM weights, with a warning: useful for
  tests, smoke runs and speed measurements only.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from glee.checkpoint import load_official_checkpoint, read_state_dict, strip_prefixes
from glee.config import PRESETS, GleeConfig
from glee.modeling.glee_model import GleeModel

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def guess_preset(keys: list[str]) -> tuple[str, bool]:
    """(preset, has visual prompter) from official state-dict keys."""
    keys = list(strip_prefixes(dict.fromkeys(keys, None)))  # type: ignore[arg-type]
    has_prompter = any(k.startswith("sot_fuser.") for k in keys)
    if any(k.startswith("backbone.stem.") for k in keys):
        return "lite", has_prompter
    if any(k.startswith("backbone.patch_embed.") for k in keys) and any(k.startswith("backbone.layers.") for k in keys):
        return "plus", has_prompter
    if any(k.startswith(("backbone.simfp_", "backbone.net.")) for k in keys):
        return "pro", has_prompter
    raise ValueError("cannot tell the GLEE variant from the checkpoint keys (no ResNet, Swin or EVA02 backbone "
                     "keys found); pass preset='lite' | 'plus' | 'pro'")


def load_model(spec: str | os.PathLike, preset: str | None = None, device: str | torch.device = "cpu") -> GleeModel:
    """See the module docstring.  Returns the model in ``eval()`` mode on ``device``."""
    path = Path(spec)
    if path.is_dir():
        if (path / "config.json").exists():
            return GleeModel.from_pretrained(path, map_location=device)
        if (path / "tiny_config.yaml").exists() and (path / "tiny_state_dict.safetensors").exists():
            from glee.parity import load_fixture_model

            return load_fixture_model(path).to(device).eval()
        raise FileNotFoundError(f"{path}: a weights folder needs config.json + model.safetensors (save_pretrained) "
                                "or the parity-fixture files")
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"{path}: unknown weights format; expected one of {CHECKPOINT_SUFFIXES} or a folder")
        state = read_state_dict(path)
        guessed, has_prompter = guess_preset(list(state))
        cfg = GleeConfig.preset(preset or guessed)
        if preset is None:
            cfg.visual_prompt = has_prompter
        model = GleeModel(cfg)
        load_official_checkpoint(model, state, strict=True)
        return model.to(device).eval()
    name = os.fspath(spec)
    if name in PRESETS:
        warnings.warn(f"'{name}' is a preset name, not weights: the model has RANDOM weights and its predictions "
                      "are meaningless (fine for tests and speed measurements)", UserWarning, stacklevel=2)
        return GleeModel(GleeConfig.preset(name)).to(device).eval()
    raise FileNotFoundError(f"{name}: no such weights file or folder, and not a preset name ({sorted(PRESETS)})")
