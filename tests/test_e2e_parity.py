"""End to end against the official demo pipeline (fixture files e2e_det / e2e_ref, tiny model at 800 px).

Kept detections, labels, token ids and masks must match exactly; scores, boxes and raw outputs within
1e-4 + 1e-4 * |official|.  ``scripts/check_parity.py`` runs the same checks from the command line.
"""

from __future__ import annotations

import pytest

from glee.parity import check_fixture_e2e, e2e_tasks, load_fixture_model


@pytest.fixture(scope="module")
def fixture_model(fixture_dir):
    return load_fixture_model(fixture_dir)


@pytest.mark.parametrize("task", ["det", "ref"])
def test_demo_pipeline_matches_official(fixture_dir, fixture_model, task: str) -> None:
    if task not in e2e_tasks(fixture_dir):
        pytest.skip(f"fixture has no e2e_{task}.json")
    results = list(check_fixture_e2e(fixture_dir, fixture_model, tasks=[task]))
    names = {c.name for c in results}
    # every recorded quantity was compared, for both images
    assert {"kept_query_indices", "labels", "scores", "boxes_xyxy", "masks", "raw.pred_logits",
            "topk_indices_before_threshold", "input.mean"} <= names
    assert {c.image for c in results} == {"image1", "image2"}
    failed = [f"{c.image} {c.name}: max|diff| {c.max_abs:.3e} {c.note}" for c in results if not c.passed]
    assert not failed, "\n".join(failed)


def test_unknown_task_is_an_error(fixture_dir, fixture_model) -> None:
    with pytest.raises(ValueError, match="no end-to-end files"):
        list(check_fixture_e2e(fixture_dir, fixture_model, tasks=["vp_box"]))


def test_fixture_without_e2e_files_is_skipped_cleanly(fixture_dir, tmp_path, capsys) -> None:
    from glee.parity import main

    for path in fixture_dir.iterdir():
        if not path.name.startswith("e2e_"):
            (tmp_path / path.name).symlink_to(path)
    assert e2e_tasks(tmp_path) == []
    assert list(check_fixture_e2e(tmp_path)) == []
    assert main([str(tmp_path), "--skip-model"]) == 0
    out = capsys.readouterr().out
    assert "SKIP end-to-end" in out and "0 passed, 0 failed" in out
