"""Check this implementation against outputs recorded from the official GLEE code.

Usage: python scripts/check_parity.py FIXTURE_DIR [--threads N]

Rebuilds the fixture's model from its files alone, replays every model-level call in
``fixture_index.json``, prints one line per recorded output tensor with its max-abs difference and exits
non-zero if any exceeds |ours - official| <= 1e-4 + 1e-4 * |official|.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import glee  # noqa: F401  (installs the torchvision shim before transformers loads)
from glee.parity import ATOL, RTOL, check_fixture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixture", type=Path, help="fixture folder (layout of shared/reference/glee_official)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the fixture used 2)")
    args = parser.parse_args(argv)
    if not (args.fixture / "fixture_index.json").exists():
        parser.error(f"{args.fixture}: no fixture_index.json; is this a parity fixture folder?")
    torch.set_num_threads(args.threads)
    failures = checked = 0
    print(f"tolerance: |ours - official| <= {ATOL:g} + {RTOL:g} * |official|")
    for c in check_fixture(args.fixture):
        if c.note.startswith("skipped"):
            print(f"  SKIP {c.task:>12} {c.image} {c.name:<40} {c.note}")
            continue
        checked += 1
        status = "ok  " if c.passed else "FAIL"
        failures += not c.passed
        print(f"  {status} {c.task:>12} {c.image} {c.name:<40} max|diff| {c.max_abs:.3e} {c.note}")
    print(f"{checked - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
