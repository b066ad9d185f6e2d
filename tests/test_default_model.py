"""The bundled default model (nano GLEE trained on ShapesWorld) loads strictly and finds objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glee
from glee.box_ops import box_iou
from glee.checkpoint import read_state_dict
from glee.inference.predictor import ImagePredictor, PredictorConfig
from glee.inference.preprocess import PreprocessConfig

ASSETS = Path(glee.__file__).parent / "assets"
# ground truth of the sample (a held-out ShapesWorld image): name, (x, y, w, h)
SAMPLE_OBJECTS = [(o["name"], tuple(o["bbox"]))
                  for o in json.loads((ASSETS / "samples" / "shapes.json").read_text())["objects"]]


@pytest.fixture(scope="module")
def predictor() -> ImagePredictor:
    with torch.random.fork_rng():
        model = glee.GleeModel.from_pretrained(ASSETS / "nano")
    pre = PreprocessConfig(short_side=model.cfg.min_size_test, max_size=model.cfg.max_size_test)
    return ImagePredictor(model, PredictorConfig(preprocess=pre))


def test_checkpoint_holds_only_the_trained_head():
    keys = read_state_dict(ASSETS / "nano" / "model.safetensors")
    assert keys and not any(k.startswith(("backbone.", "text_encoder.")) for k in keys)  # those ship in packages
    assert (ASSETS / "nano" / "model.safetensors").stat().st_size < 20e6


def test_default_model_localises_the_sample_objects(predictor):
    image = np.asarray(Image.open(ASSETS / "samples" / "shapes.jpg").convert("RGB"))
    names = sorted({n for n, _ in SAMPLE_OBJECTS})
    dets = predictor.detect(image, names, top_k=10, threshold=0.0)
    assert len(dets) == 10 and dets.masks is not None
    gt = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in SAMPLE_OBJECTS], dtype=torch.float32)
    best_iou = box_iou(dets.boxes.float(), gt)[0].max(1).values
    # a trained model puts most of its top boxes on real objects; random weights do not
    assert (best_iou > 0.5).sum() >= 5, best_iou
