"""Command line, `evaluate_predictions` dispatch, and the package's import boundaries."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from eval.cli import METRICS, evaluate_predictions, format_table, main

ROOT = Path(__file__).resolve().parents[2]


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _coco_files(tmp_path, preds):
    gt = {"images": [{"id": 1, "height": 50, "width": 50}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    return str(tmp_path / "gt.json"), str(tmp_path / "preds.json")


def test_cli_writes_metrics_json_and_prints_table(tmp_path, capsys):
    gt, pred = _coco_files(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 1}])
    out = tmp_path / "sub" / "metrics.json"
    assert main(["--metric", "coco-bbox", "--gt", gt, "--pred", pred, "--out", str(out),
                 "--backend", "pycocotools"]) == 0
    record = json.loads(out.read_text())
    assert record["metric"] == "coco-bbox" and record["backend"] == "pycocotools"
    assert record["results"]["AP"] == pytest.approx(1.0) and record["results"]["APl"] is None
    table = capsys.readouterr().out
    assert "AP50" in table and "1.0000" in table and "n/a" in table


def test_cli_reports_malformed_file_with_name_and_field(tmp_path, capsys):
    ok = {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 1}
    gt, pred = _coco_files(tmp_path, [ok, ok, ok, {"image_id": 1, "category_id": 1, "score": 1}])
    assert main(["--metric", "coco-bbox", "--gt", gt, "--pred", pred]) == 1
    assert "preds.json: annotation 3 has no 'bbox' field" in capsys.readouterr().err


def test_cli_rejects_unknown_metric():
    with pytest.raises(SystemExit):
        main(["--metric", "nope", "--gt", "a", "--pred", "b"])
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        evaluate_predictions("nope", None, None)


def _perfect_inputs(metric, tmp_path):
    """A small perfect prediction for every metric, written to files the CLI reads."""
    m = np.zeros((12, 12), np.uint8)
    m[2:8, 3:9] = 1
    if metric.startswith(("coco", "lvis")):
        img = {"id": 1, "height": 12, "width": 12}
        if metric.startswith("lvis"):
            img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
        gt = {"images": [img], "categories": [{"id": 1, "frequency": "f"}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 6, 6],
                               "segmentation": _rle(m), "area": 36.0}]}
        pred = [{"image_id": 1, "category_id": 1, "bbox": [3, 2, 6, 6], "segmentation": _rle(m),
                 "score": 0.5}]
        key = "AP"
    elif metric == "refcoco":
        gt = [{"id": 1, "bbox": [3, 2, 6, 6], "segmentation": _rle(m)}]
        pred = [{"id": 1, "bbox": [3, 2, 6, 6], "segmentation": _rle(m)}]
        key = "oIoU"
    elif metric == "ytvis":
        gt = {"videos": [{"id": 1, "length": 2, "height": 12, "width": 12}], "categories": [{"id": 1}],
              "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "segmentations": [_rle(m), None]}]}
        pred = [{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [_rle(m), None]}]
        key = "AP"
    elif metric == "mot":
        (tmp_path / "gt.txt").write_text("1,1,3,2,6,6,1,1,1\n2,1,4,2,6,6,1,1,1\n")
        (tmp_path / "pred.txt").write_text("1,9,3,2,6,6,0.9,-1,-1,-1\n2,9,4,2,6,6,0.9,-1,-1,-1\n")
        return str(tmp_path / "gt.txt"), str(tmp_path / "pred.txt"), "HOTA"
    elif metric == "teta":
        gt = {"videos": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
              "images": [{"id": 1, "video_id": 1, "frame_index": 0}],
              "annotations": [{"id": 1, "image_id": 1, "video_id": 1, "track_id": 1, "category_id": 1,
                               "bbox": [3, 2, 6, 6]}]}
        pred = [{"image_id": 1, "track_id": 4, "category_id": 1, "bbox": [3, 2, 6, 6], "score": 0.5}]
        key = "TETA"
    elif metric == "vos":
        np.savez(tmp_path / "gt.npz", v=np.stack([m, m, m]))
        np.savez(tmp_path / "pred.npz", v=np.stack([m, m, m]))
        return str(tmp_path / "gt.npz"), str(tmp_path / "pred.npz"), "J&F"
    else:
        np.savez(tmp_path / "gt.npz", s=m)
        np.savez(tmp_path / "pred.npz", s=m)
        return str(tmp_path / "gt.npz"), str(tmp_path / "pred.npz"), "gIoU"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    return str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), key


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_runs_from_files(metric, tmp_path):
    if metric == "mot":
        pytest.importorskip("trackeval")
    gt, pred, key = _perfect_inputs(metric, tmp_path)
    out = tmp_path / "m.json"
    assert main(["--metric", metric, "--gt", gt, "--pred", pred, "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["results"][key] == pytest.approx(1.0, abs=1e-4)


def test_cli_bootstrap_intervals_for_reasonseg(tmp_path, capsys):
    np.savez(tmp_path / "gt.npz", a=np.array([[1, 0]], np.uint8), b=np.array([[1, 1]], np.uint8))
    np.savez(tmp_path / "pred.npz", a=np.array([[1, 1]], np.uint8), b=np.array([[1, 1]], np.uint8))
    files = ["--gt", str(tmp_path / "gt.npz"), "--pred", str(tmp_path / "pred.npz"), "--quiet"]
    assert main(["--metric", "reasonseg", *files, "--bootstrap", "200", "--out", str(tmp_path / "m.json")]) == 0
    results = json.loads((tmp_path / "m.json").read_text())["results"]
    assert results["gIoU_ci95_low"] == pytest.approx(0.5, abs=1e-4)  # samples with IoU 0.5 and 1
    assert results["gIoU_ci95_high"] == pytest.approx(1.0, abs=1e-4)
    assert "gIoU_ci95_low" in capsys.readouterr().out
    assert main(["--metric", "coco-bbox", *files, "--bootstrap", "200"]) == 1
    assert "--bootstrap applies to --metric reasonseg" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # running a model: scoring options only
        main(["--task", "coco", "--weights", "w", "--gt", "g", "--images", "i", "--bootstrap", "5"])
    assert "--bootstrap only applies to scoring" in capsys.readouterr().err


def test_format_table():
    text = format_table({"AP": 0.51234, "n": 3, "APs": None})
    assert text.splitlines()[2:] == ["AP      0.5123", "n       3", "APs     n/a"]


def test_package_imports_no_model_code():
    """eval/ must not import glee, train, llm_bridge or scripts (nor torch, which they pull in)."""
    code = ("import sys, eval, eval.cli, eval.coco, eval.io, eval.refcoco, eval.reasonseg, eval.video, "
            "eval.vos, eval.tracking\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('glee', 'train', 'llm_bridge', 'scripts', "
            "'torch')]\n"
            "print(bad)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_python_dash_m_entry_point(tmp_path):
    np.savez(tmp_path / "gt.npz", s=np.array([[1, 0]], np.uint8))
    np.savez(tmp_path / "pred.npz", s=np.array([[1, 1]], np.uint8))
    res = subprocess.run([sys.executable, "-m", "eval.cli", "--metric", "reasonseg", "--gt",
                          str(tmp_path / "gt.npz"), "--pred", str(tmp_path / "pred.npz"), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cIoU" in res.stdout and "0.5000" in res.stdout
    assert "RuntimeWarning" not in res.stderr
