"""`glee eval --task ...`: the bundled nano model run over a tiny ShapesWorld set (3 images, 2 three-frame videos)
through the real command line, the files it writes, consistency with the scoring mode, and input errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from eval import runner
from eval.cli import TASKS, main
from train.data.shapesworld import ShapesWorldConfig, write_dataset

ROOT = Path(__file__).resolve().parents[2]
NANO = str(ROOT / "glee" / "assets" / "nano")
COCO_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
COUNTS = {"num_samples", "num_missing"}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()  # --threads changes the process-wide setting; give it back
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapesworld")
    written = write_dataset(root, {"val": 3}, {"val": 2}, ShapesWorldConfig(video_frames=3))["val"]
    return {k: Path(v) for k, v in written.items()}


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory) -> dict[str, tuple[dict, str, str]]:
    """One run per task (module-scoped: each loads the model once); stdout/stderr captured by hand."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("runs")
    lvis_gt = json.loads(world["instances"].read_text())
    for im in lvis_gt["images"]:
        im.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    for c in lvis_gt["categories"]:
        c["frequency"] = "frc"[c["id"] % 3]
    (base / "lvis_val.json").write_text(json.dumps(lvis_gt))
    jobs = {
        # progress bars on for this one (checked below); --threads exercised
        "coco": ["--task", "coco", "--gt", str(world["instances"]), "--images", str(world["image_root"]),
                 "--threads", "1"],
        "lvis": ["--task", "lvis", "--gt", str(base / "lvis_val.json"), "--images", str(world["image_root"]),
                 "--limit", "2", "--quiet"],
        "refcoco": ["--task", "refcoco", "--gt", str(world["refs"]), "--images", str(world["image_root"]),
                    "--limit", "2", "--quiet"],
        "ytvis": ["--task", "ytvis", "--gt", str(world["videos"]), "--images", str(world["video_root"]), "--quiet"],
    }
    out = {}
    n = torch.get_num_threads()
    try:
        for task, args in jobs.items():
            o, e = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
                assert main([*args, "--weights", NANO, "--out", str(base / task)]) == 0, e.getvalue()
            out[task] = (json.loads((base / task / "metrics.json").read_text()), o.getvalue(), e.getvalue())
    finally:
        torch.set_num_threads(n)
    return out


def _check_values(results: dict) -> None:
    for key, value in results.items():
        if key in COUNTS:
            assert isinstance(value, int) and value >= 0
        else:
            assert value is None or 0.0 <= value <= 1.0, (key, value)


def _rle_ok(rle: dict, size: list[int]) -> bool:
    return list(rle["size"]) == size and isinstance(rle["counts"], str)


def test_task_lists_agree():
    assert TASKS == runner.TASKS  # eval.cli repeats the list so that `--help` does not import torch


def test_coco_run_writes_valid_results_metrics_and_table(runs, world):
    record, stdout, stderr = runs["coco"]
    assert set(record["results"]) == {"coco-bbox", "coco-segm"}
    for res in record["results"].values():
        assert set(res) == COCO_KEYS
        _check_values(res)
    assert record["timing"]["items"] == 3 and record["timing"]["unit"] == "images" and record["timing"]["per_s"] > 0
    assert record["settings"]["short_side"] == 320 and record["settings"]["max_size"] == 512  # nano's config
    assert "threads" in record["machine"]
    # the model does real work: the category list maps back to the right ids
    assert record["results"]["coco-bbox"]["AP50"] > 0.3 and record["results"]["coco-segm"]["AP50"] > 0.3
    # the whole file was run: the GT is referenced, not copied
    assert record["files"]["gt"] == str(world["instances"])
    gt = json.loads(world["instances"].read_text())
    sizes = {im["id"]: [im["height"], im["width"]] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    preds = json.loads(Path(record["files"]["pred"]).read_text())
    assert isinstance(preds, list) and preds
    per_image = {i: 0 for i in sizes}
    for p in preds:
        assert p["image_id"] in sizes and p["category_id"] in cat_ids and 0.0 < p["score"] <= 1.0
        x, y, w, h = p["bbox"]
        height, width = sizes[p["image_id"]]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert _rle_ok(p["segmentation"], sizes[p["image_id"]])
        per_image[p["image_id"]] += 1
    assert all(0 < n <= 100 for n in per_image.values())  # top-100 per image
    # the printed table, machine line and throughput; tqdm bars on stderr
    assert "coco-bbox/AP50" in stdout and "coco-segm/AP" in stdout and "machine:" in stdout
    assert "images/s" in stdout
    assert "glee eval coco" in stderr and "3/3" in stderr


def test_lvis_run_with_limit_scores_the_subset(runs):
    record, _, _ = runs["lvis"]
    assert set(record["results"]) == {"lvis-bbox", "lvis-segm"}
    res = record["results"]["lvis-bbox"]
    assert {"APr", "APc", "APf", "AR@300"} <= set(res)
    _check_values(res)
    cut = json.loads(Path(record["files"]["gt"]).read_text())  # a copy cut to the first 2 images
    assert Path(record["files"]["gt"]).parent == Path(record["files"]["pred"]).parent
    assert [im["id"] for im in cut["images"]] == [1, 2]
    assert cut["annotations"] and {a["image_id"] for a in cut["annotations"]} <= {1, 2}
    preds = json.loads(Path(record["files"]["pred"]).read_text())
    assert {p["image_id"] for p in preds} == {1, 2}
    assert record["settings"]["top_k"] == 300 and record["timing"]["items"] == 2


def test_refcoco_run(runs, world):
    record, stdout, _ = runs["refcoco"]
    res = record["results"]["refcoco"]
    _check_values(res)
    refs = json.loads(world["refs"].read_text())
    n_expr = sum(len(im["expressions"]) for im in refs["images"][:2])
    assert res["num_samples"] == n_expr and res["num_missing"] == 0
    assert {"P@0.5", "box_mIoU", "oIoU", "mIoU"} <= set(res)
    preds = json.loads(Path(record["files"]["pred"]).read_text())
    assert len(preds) == n_expr and len({p["id"] for p in preds}) == n_expr  # top-1 per expression
    sizes = {str(im["id"]): [im["height"], im["width"]] for im in refs["images"]}
    assert all(_rle_ok(p["segmentation"], sizes[p["id"].split(":")[0]]) for p in preds)
    assert "expressions/s" in stdout


def test_ytvis_run(runs, world):
    record, _, _ = runs["ytvis"]
    res = record["results"]["ytvis"]
    assert set(res) == COCO_KEYS
    _check_values(res)
    assert record["timing"]["items"] == 6 and record["timing"]["unit"] == "frames"
    gt = json.loads(world["videos"].read_text())
    videos = {v["id"]: v for v in gt["videos"]}
    preds = json.loads(Path(record["files"]["pred"]).read_text())
    assert {p["video_id"] for p in preds} == set(videos)
    for p in preds:
        v = videos[p["video_id"]]
        assert len(p["segmentations"]) == v["length"] == 3
        assert all(_rle_ok(s, [v["height"], v["width"]]) for s in p["segmentations"])
    assert sum(p["video_id"] == 1 for p in preds) == 30  # top-30 (slot, class) pairs per video


@pytest.mark.parametrize("task", ["coco", "lvis", "refcoco", "ytvis"])
def test_scoring_mode_reproduces_run_metrics(runs, task, tmp_path, capsys):
    """The runner's files scored by `glee eval --metric` give exactly the runner's numbers."""
    record, _, _ = runs[task]
    for metric, expected in record["results"].items():
        out = tmp_path / f"{metric}.json"
        assert main(["--metric", metric, "--gt", record["files"]["gt"], "--pred", record["files"]["pred"],
                     "--out", str(out), "--quiet"]) == 0
        assert json.loads(out.read_text())["results"] == expected
    capsys.readouterr()


def test_ground_truth_as_predictions_scores_one(world, runs, tmp_path):
    """The score path on the same files: perfect predictions made from the ground truth give AP / P@0.5 = 1."""
    gt = json.loads(world["instances"].read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "segmentation": a["segmentation"], "score": 1.0} for a in gt["annotations"]]
    (tmp_path / "perfect.json").write_text(json.dumps(perfect))
    for metric in ("coco-bbox", "coco-segm"):
        out = tmp_path / f"{metric}.json"
        assert main(["--metric", metric, "--gt", str(world["instances"]), "--pred", str(tmp_path / "perfect.json"),
                     "--out", str(out), "--quiet"]) == 0
        assert json.loads(out.read_text())["results"]["AP"] == pytest.approx(1.0)
    # the refcoco samples file the runner wrote is a valid prediction of itself
    ref_gt = runs["refcoco"][0]["files"]["gt"]
    out = tmp_path / "refcoco.json"
    assert main(["--metric", "refcoco", "--gt", ref_gt, "--pred", ref_gt, "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())["results"]
    assert res["P@0.5"] == 1.0 and res["oIoU"] == pytest.approx(1.0)
    videos = json.loads(world["videos"].read_text())
    vis = [{"video_id": a["video_id"], "category_id": a["category_id"], "segmentations": a["segmentations"],
            "score": 1.0} for a in videos["annotations"]]
    (tmp_path / "vis.json").write_text(json.dumps(vis))
    out = tmp_path / "ytvis.json"
    assert main(["--metric", "ytvis", "--gt", str(world["videos"]), "--pred", str(tmp_path / "vis.json"),
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["results"]["AP"] == pytest.approx(1.0)


def test_bench_shapesworld_uses_the_runner(world, runs, capsys):
    """scripts/bench_shapesworld.py goes through eval.runner: same numbers as `glee eval --task coco`."""
    spec = importlib.util.spec_from_file_location("bench_shapesworld", ROOT / "scripts" / "bench_shapesworld.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = world["instances"].parents[1]
    assert bench.main([NANO, "--data", str(data), "--splits", "val", "--limit", "3", "--threads", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("val "))
    box_ap = runs["coco"][0]["results"]["coco-bbox"]["AP"]
    assert float(row.split()[1]) == pytest.approx(box_ap, abs=5e-4)


# ---------------------------------------------------------------------------------------------- errors


def _err(args: list[str], capsys) -> str:
    assert main(args) == 1
    return capsys.readouterr().err


def _coco_args(gt: Path, images: Path, out: Path) -> list[str]:
    return ["--task", "coco", "--weights", NANO, "--gt", str(gt), "--images", str(images), "--out", str(out),
            "--quiet"]


def test_missing_ground_truth_file(world, tmp_path, capsys):
    err = _err(_coco_args(tmp_path / "nope.json", world["image_root"], tmp_path / "o"), capsys)
    assert "nope.json: file not found" in err and not (tmp_path / "o").exists()


def test_ground_truth_missing_fields_named(world, tmp_path, capsys):
    gt = json.loads(world["instances"].read_text())
    del gt["images"][1]["file_name"]
    (tmp_path / "bad.json").write_text(json.dumps(gt))
    err = _err(_coco_args(tmp_path / "bad.json", world["image_root"], tmp_path / "o"), capsys)
    assert "bad.json: image 1 has no 'file_name' field" in err
    gt = json.loads(world["instances"].read_text())
    del gt["annotations"][2]["area"]
    (tmp_path / "bad2.json").write_text(json.dumps(gt))
    err = _err(_coco_args(tmp_path / "bad2.json", world["image_root"], tmp_path / "o"), capsys)
    assert "bad2.json: annotation 2 has no 'area' field" in err
    gt = json.loads(world["instances"].read_text())
    del gt["categories"]
    (tmp_path / "bad3.json").write_text(json.dumps(gt))
    assert "bad3.json: ground truth has no 'categories' field" in _err(
        _coco_args(tmp_path / "bad3.json", world["image_root"], tmp_path / "o"), capsys)
    refs = json.loads(world["refs"].read_text())
    del refs["images"][0]["expressions"]
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    err = _err(["--task", "refcoco", "--weights", NANO, "--gt", str(tmp_path / "refs.json"), "--images",
                str(world["image_root"]), "--out", str(tmp_path / "o")], capsys)
    assert "refs.json: image 0 has no 'expressions' field" in err
    vids = json.loads(world["videos"].read_text())
    del vids["videos"][1]["file_names"]
    (tmp_path / "vids.json").write_text(json.dumps(vids))
    err = _err(["--task", "ytvis", "--weights", NANO, "--gt", str(tmp_path / "vids.json"), "--images",
                str(world["video_root"]), "--out", str(tmp_path / "o")], capsys)
    assert "vids.json: video 1 has no 'file_names' field" in err


def test_image_missing_from_folder(world, tmp_path, capsys):
    gt = json.loads(world["instances"].read_text())
    gt["images"][2]["file_name"] = "missing.jpg"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    err = _err(_coco_args(tmp_path / "gt.json", world["image_root"], tmp_path / "o"), capsys)
    assert "image 2 (id 3) names 'missing.jpg', which is not in the image folder" in err
    err = _err(_coco_args(world["instances"], tmp_path / "no_such_folder", tmp_path / "o"), capsys)
    assert "no_such_folder: image folder not found" in err


def test_image_size_disagreeing_with_ground_truth(world, tmp_path, capsys):
    gt = json.loads(world["instances"].read_text())
    gt["images"][0]["height"] += 1  # a mask-free file: the GT alone cannot show the mismatch, the image does
    for a in gt["annotations"]:
        del a["segmentation"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    err = _err(_coco_args(tmp_path / "gt.json", world["image_root"], tmp_path / "o"), capsys)
    assert "000000.jpg: the image is" in err and "would not line up" in err
    assert runner.load_task_inputs("coco", tmp_path / "gt.json", world["image_root"]).metrics == ("coco-bbox",)


def test_bad_weights(world, tmp_path, capsys):
    args = _coco_args(world["instances"], world["image_root"], tmp_path / "o")
    args[args.index("--weights") + 1] = str(tmp_path / "none")
    assert "no such weights file or folder" in _err(args, capsys)


def test_unknown_task_and_mode_errors(world, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--task", "nope", "--weights", NANO, "--gt", "a", "--images", "b"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "coco", "--weights", NANO, "--gt", str(world["instances"])])
    assert "--task coco needs --images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--metric", "coco-bbox", "--gt", "a", "--pred", "b", "--weights", NANO])
    assert "--weights only applies to running a model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--metric", "coco-bbox", "--task", "coco", "--gt", "a", "--pred", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        runner.load_task_inputs("nope", world["instances"], world["image_root"])

