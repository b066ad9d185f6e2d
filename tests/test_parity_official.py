"""The model reproduces the official GLEE code on the recorded fixture (random weights, float32, CPU)."""

from __future__ import annotations

import subprocess
import sys

from glee.parity import check_fixture


def test_every_model_level_output_matches_official(fixture_dir):
    results = [c for c in check_fixture(fixture_dir) if not c.note.startswith("skipped")]
    tasks = {c.task for c in results}
    assert {"det", "ref", "vp_box", "vp_point", "vp_box_large"} <= tasks
    names = {c.name for c in results}
    assert {"pred_logits", "pred_boxes", "pred_masks", "pred_scores", "pred_track_embed"} <= names
    failed = [f"{c.task}/{c.image}/{c.name}: max|diff| {c.max_abs:.3g}" for c in results if not c.passed]
    assert not failed, "\n".join(failed)
    assert len(results) >= 200


def test_check_parity_script_exit_codes(fixture_dir, tmp_path):
    bad = subprocess.run([sys.executable, "scripts/check_parity.py", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "fixture_index.json" in bad.stderr
