"""Which models the app offers, and loading them: the model selector's back end.

Choices are fixed when the server starts; the page picks one by its id and can never name a path:

* ``default`` GLEE -- the bundled nano checkpoint at :data:`BUNDLED_GLEE_DIR` when it is there, otherwise a
  random-weight ``tiny`` GLEE flagged as *untrained demo weights* (the page shows a banner);
* ``default`` bridge -- the bundled chat bridge at :data:`BUNDLED_BRIDGE_DIR` when it is there, otherwise
  the tiny random bridge of :mod:`llm_bridge.testing`, flagged the same way;
* every ``--glee PATH`` (official GLEE checkpoint file, ``save_pretrained`` folder) and ``--bridge PATH``
  (``ReasonSegModel.save_pretrained`` folder) given on the command line, and every such file or folder found
  directly inside ``--weights-dir DIR``.

Weights are never named from the page: a server reachable by others must not load (or reveal) arbitrary
paths of its machine, so local weights are chosen by whoever starts the server.

Loading is lazy (on first use, inside the job queue, so it never runs beside another model) and one model of
each kind stays in memory: switching frees the previous one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import glee
import llm_bridge

Kind = Literal["glee", "bridge"]

# The bundled trained defaults; when a folder is missing the app falls back to random tiny models.
BUNDLED_GLEE_DIR = Path(glee.__file__).resolve().parent / "assets" / "nano"  # GleeModel.save_pretrained folder
BUNDLED_BRIDGE_DIR = llm_bridge.DEFAULT_BRIDGE_DIR  # ReasonSegModel folder

UNTRAINED_NOTE = ("untrained demo weights: this is a random tiny model, so its masks, scores and answers are "
                  "meaningless; start the app with --glee / --bridge to use trained weights")
DEMO_SHORT_SIDE = 320  # the random tiny model: a small input keeps a CPU demo responsive


@dataclass
class ModelChoice:
    """One entry of the model selector.

    Attributes:
        id: the key the page sends (letters, digits, ``:._-``).
        kind: ``glee`` (image and video modes) or ``bridge`` (chat mode).
        label: what the selector shows.
        loader: builds the model: a ``GleeModel`` for ``glee``, an object with
            ``ask(image, prompt, history=..., max_new_tokens=...) -> ChatResult`` (a ``BridgeChat``) for ``bridge``.
        trained: False for random demo weights (the page then shows the untrained banner).
        source: where the weights come from (shown to the user).
        short_side: preprocessing override for this model (``None``: the server's setting).
    """

    id: str
    kind: Kind
    label: str
    loader: Callable[[], Any]
    trained: bool
    source: str
    short_side: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9:._-]{1,80}", self.id):
            raise ValueError(f"model id {self.id!r} must be 1-80 letters, digits or ':._-'")
        if self.kind not in ("glee", "bridge"):
            raise ValueError(f"model kind must be 'glee' or 'bridge', got {self.kind!r}")

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "trained": self.trained,
                "source": self.source, "note": None if self.trained else UNTRAINED_NOTE}


class ModelRegistry:
    """The choices and the loaded models (one per kind).  Thread-safe; meant to be used from the job worker."""

    def __init__(self, choices: Sequence[ModelChoice]) -> None:
        self._choices: dict[str, ModelChoice] = {}
        for c in choices:
            key = f"{c.kind}/{c.id}"
            if key in self._choices:
                raise ValueError(f"two {c.kind} models share the id {c.id!r}")
            self._choices[key] = c
        for kind in ("glee", "bridge"):
            if not self.choices(kind):  # type: ignore[arg-type]
                raise ValueError(f"no {kind} model to offer; give at least one")
        self._loaded: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def choices(self, kind: Kind) -> list[ModelChoice]:
        return [c for c in self._choices.values() if c.kind == kind]

    def choice(self, kind: Kind, model_id: str | None) -> ModelChoice:
        """The choice ``model_id`` of ``kind`` (the first one when ``None``); ``KeyError`` names the valid ids."""
        if model_id in (None, ""):
            return self.choices(kind)[0]
        found = self._choices.get(f"{kind}/{model_id}")
        if found is None:
            valid = [c.id for c in self.choices(kind)]
            raise KeyError(f"unknown {kind} model {model_id!r}; this server offers {valid}")
        return found

    def get(self, kind: Kind, model_id: str | None) -> tuple[ModelChoice, Any]:
        """Load (or reuse) a model; the previously loaded model of that kind is released."""
        choice = self.choice(kind, model_id)
        with self._lock:
            current = self._loaded.get(kind)
            if current is not None and current[0] == choice.id:
                return choice, current[1]
            self._loaded.pop(kind, None)  # free the old one before building the new one
            model = choice.loader()
            self._loaded[kind] = (choice.id, model)
            return choice, model

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        return {kind: [c.describe() for c in self.choices(kind)] for kind in ("glee", "bridge")}  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
def random_tiny_glee(seed: int = 0, device: str = "cpu") -> Any:
    """The ``tiny`` GLEE with seeded random weights (the same model on every start)."""
    from glee import GleeConfig, GleeModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GleeModel(GleeConfig.preset("tiny"))
    return model.to(device).eval()


def random_tiny_chat(seed: int = 0) -> Any:
    """A ``BridgeChat`` on the tiny random bridge of :mod:`llm_bridge.testing` (built from code, no download)."""
    from llm_bridge.chat import BridgeChat
    from llm_bridge.testing import tiny_bridge, tiny_llm_dir

    return BridgeChat(tiny_bridge(tiny_llm_dir(), seed=seed))


def glee_choice_for_path(path: str | Path, preset: str | None = None, device: str = "cpu") -> ModelChoice:
    """A selector entry for local GLEE weights (official checkpoint file or ``save_pretrained`` folder)."""
    from glee.inference.loading import CHECKPOINT_SUFFIXES, load_model

    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"--glee {str(path)!r}: no such file or folder")
    if p.is_file() and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"--glee {str(path)!r}: not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a folder")
    return ModelChoice(id=f"glee:{_slug(p.name)}", kind="glee", label=f"GLEE {p.name}", trained=True, source=str(p),
                       loader=lambda: load_model(p, preset=preset, device=device))


def bridge_choice_for_path(path: str | Path, device: str = "cpu") -> ModelChoice:
    """A selector entry for a bridge folder written by ``ReasonSegModel.save_pretrained``."""
    from llm_bridge.model import CONFIG_FILE

    p = Path(path).expanduser().resolve()
    if not (p / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--bridge {str(path)!r}: not a bridge folder (no {CONFIG_FILE}); give a folder "
                                "written by ReasonSegModel.save_pretrained")

    def load() -> Any:
        from llm_bridge.chat import BridgeChat

        chat = BridgeChat.from_pretrained(p)
        chat.model.to(device)
        return chat

    return ModelChoice(id=f"bridge:{_slug(p.name)}", kind="bridge", label=f"bridge {p.name}", trained=True,
                       source=str(p), loader=load)


def default_choices(device: str = "cpu") -> list[ModelChoice]:
    """The ``default`` GLEE and bridge: bundled weights when shipped, else random tiny demo models."""
    out: list[ModelChoice] = []
    if (BUNDLED_GLEE_DIR / "config.json").is_file():
        from glee.inference.loading import load_model

        out.append(ModelChoice(id="default", kind="glee", label="GLEE nano (bundled)", trained=True,
                               source=str(BUNDLED_GLEE_DIR),
                               loader=lambda: load_model(BUNDLED_GLEE_DIR, device=device)))
    else:
        out.append(ModelChoice(id="default", kind="glee", label="tiny GLEE (untrained demo weights)", trained=False,
                               source="random weights, seed 0", loader=lambda: random_tiny_glee(0, device),
                               short_side=DEMO_SHORT_SIDE))
    from llm_bridge.model import CONFIG_FILE

    if (BUNDLED_BRIDGE_DIR / CONFIG_FILE).is_file():
        bundled = bridge_choice_for_path(BUNDLED_BRIDGE_DIR, device)
        out.append(ModelChoice(id="default", kind="bridge", label="chat bridge nano (bundled)", trained=True,
                               source=bundled.source, loader=bundled.loader))
    else:
        out.append(ModelChoice(id="default", kind="bridge", label="tiny bridge (untrained demo weights)",
                               trained=False, source="random weights, seed 0", loader=lambda: random_tiny_chat(0)))
    return out


def scan_weights_dir(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(GLEE weights, bridge folders) directly inside ``folder``: checkpoint files and ``save_pretrained``
    folders (``config.json``) for GLEE, ``ReasonSegModel`` folders (``bridge_config.json``) for the bridge."""
    from glee.inference.loading import CHECKPOINT_SUFFIXES
    from llm_bridge.model import CONFIG_FILE

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--weights-dir {str(folder)!r}: not a folder")
    glee_paths, bridge_paths = [], []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES:
            glee_paths.append(p)
        elif (p / CONFIG_FILE).is_file():
            bridge_paths.append(p)
        elif (p / "config.json").is_file():
            glee_paths.append(p)
    return glee_paths, bridge_paths


def build_registry(glee_paths: Sequence[str | Path] = (), bridge_paths: Sequence[str | Path] = (),
                   glee_preset: str | None = None, device: str = "cpu",
                   weights_dir: str | Path | None = None) -> ModelRegistry:
    """Defaults plus local weights from the command line (those first: they are what the user asked for)."""
    glee_paths, bridge_paths = list(glee_paths), list(bridge_paths)
    if weights_dir is not None:
        found_glee, found_bridge = scan_weights_dir(weights_dir)
        glee_paths += found_glee
        bridge_paths += found_bridge
    local = [glee_choice_for_path(p, glee_preset, device) for p in glee_paths]
    local += [bridge_choice_for_path(p, device) for p in bridge_paths]
    return ModelRegistry(local + default_choices(device))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:70] or "model"
