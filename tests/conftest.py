"""Shared test set-up: offline hub, the torchvision shim before anything imports transformers, 2 threads."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import glee  # noqa: E402,F401  (installs the torchvision shim)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "reference" / "glee_official"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "fixture_index.json").exists():
        pytest.skip(f"official parity fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture(scope="session")
def tiny_model():
    """The parity fixture's architecture with random weights (shared, eval mode, do not mutate)."""
    from glee import GleeConfig, GleeModel

    torch.manual_seed(0)
    return GleeModel(GleeConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: every op is too small to split, and on a shared machine OpenMP threads spin-wait for a busy
    core, so one intra-op thread is faster and far steadier (the previous setting is restored)."""
    from glee.modeling.threads import single_threaded

    with single_threaded():
        yield
