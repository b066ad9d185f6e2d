"""The ``glee`` command: dispatcher and ``glee predict`` on folders, expressions and clicks (tiny random model)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glee import cli
from glee.structures import Detections

BASE = ["--weights", "tiny", "--short-side", "64", "--no-progress"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 40), dtype=np.uint8)).save(images / "000000000042.jpg")  # grayscale
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return images


def run(argv: list[str]) -> int:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return cli.main(argv)


def test_folder_with_classes(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = run(["predict", str(folder), *BASE, "--classes", "person, car", "--top-k", "2", "--threshold", "none",
                "-o", str(out)])
    assert code == 1  # one unreadable file: reported, the others written
    err = capsys.readouterr().err
    assert "broken.png" in err and "not an image" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(e["file"]).name for e in summary["images"]] == ["000000000042.jpg", "a.png"]
    assert len(summary["errors"]) == 1 and summary["classes"] == ["person", "car"]
    for stem, size in (("a", (48, 64)), ("000000000042", (70, 40))):
        dets = Detections.from_dict(json.loads((out / f"{stem}.json").read_text()))
        assert dets.image_size == size and len(dets) == 2 and set(dets.class_names) <= {"person", "car"}
        assert dets.masks.shape == (2, *size)
        assert Image.open(out / f"{stem}.png").size == (size[1], size[0])
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == 4 and {r["image_id"] for r in coco} == {42, "a.png"}
    assert {r["category_id"] for r in coco} <= {1, 2} and "segmentation" in coco[0]


def test_expression_and_clicks(folder: Path, tmp_path: Path) -> None:
    image = folder / "a.png"
    assert run(["predict", str(image), *BASE, "--expr", "the red car", "-o", str(tmp_path / "e")]) == 0
    dets = json.loads((tmp_path / "e" / "a.json").read_text())
    assert dets["class_names"] == ["the red car"]
    code = run(["predict", str(image), *BASE, "--points", "10,10;20,15;50,30,0", "--boxes", "5,5,30,30",
                "--no-masks", "-o", str(tmp_path / "p")])
    assert code == 0
    dets = json.loads((tmp_path / "p" / "a.json").read_text())
    assert dets["prompt_ids"] == [0, 1] and "masks_rle" not in dets
    assert (tmp_path / "p" / "a.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one prompt kind"),
        (["--classes", "car", "--expr", "a car"], "exactly one prompt kind"),
        (["--classes", "car,Car"], "duplicate"),
        (["--classes", "car,,dog"], "non-empty"),
        (["--points", "10;20"], "bad point"),
        (["--boxes", "30,30,10,10"], "x2 <= x1"),
        (["--classes", "missing_list.txt"], "does not exist"),
    ],
)
def test_bad_arguments(folder: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cases fail after loading the random-weight preset (it warns)
        cli.main(["predict", str(folder / "a.png"), *BASE, *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_input_and_video_without_video_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tmp_path / "nothing.png"), *BASE, "--classes", "car"])
    assert "no such file" in capsys.readouterr().err
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "glee.video", None)  # as if glee.video were not installed
    with pytest.raises(SystemExit):
        cli.main(["predict", str(video), *BASE, "--classes", "car"])
    assert "glee.video" in capsys.readouterr().err


def test_dispatcher(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main([]) == 2
    assert "predict" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    with pytest.raises(SystemExit, match="did you mean 'predict'"):
        cli.main(["predcit"])
    monkeypatch.setitem(cli.COMMANDS, "chat", cli.Command("glee_missing_part.cli", "main", "test"))
    with pytest.raises(SystemExit, match="not available in this installation"):
        cli.main(["chat"])
    assert "[not installed]" in cli.usage()
    with pytest.raises(SystemExit) as info:
        cli.main(["parity", "/nonexistent/fixture"])
    assert info.value.code == 2 and "fixture_index.json" in capsys.readouterr().err
