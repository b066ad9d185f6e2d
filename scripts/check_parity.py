"""Check this implementation against outputs recorded from the official GLEE code.

Usage: python scripts/check_parity.py FIXTURE_DIR [--threads N] [--skip-model] [--skip-e2e]

Rebuilds the fixture's model from its files alone, replays every model-level call in
``fixture_index.json``, then (when the fixture has ``e2e_<task>.json`` files) runs the official demo
pipeline end to end on the fixture's images: preprocessing, forward, top-k, threshold, boxes and masks.
Prints one line per compared quantity with its max-abs difference and exits non-zero if any exceeds
|ours - official| <= 1e-4 + 1e-4 * |official| (indices, labels, tokens and masks must match exactly).
The logic lives in ``glee.parity.main`` (also ``glee parity FIXTURE_DIR``).
"""

from __future__ import annotations

import sys

import glee  # noqa: F401  (installs the torchvision shim before transformers loads)
from glee.parity import main

if __name__ == "__main__":
    sys.exit(main())
