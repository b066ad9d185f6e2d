"""``glee track`` end to end on the real clip shipped in ``iscc-samples``, every target kind, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glee.cli import main as glee_main
from glee.video import VideoWriter, open_video, read_mot

pytest.importorskip("imageio_ffmpeg")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:'tiny' is a preset name")]




@pytest.fixture(scope="module")
def clip() -> Path:
    iscc_samples = pytest.importorskip("iscc_samples")
    return Path(iscc_samples.videos(".mp4")[0])


def _track(*args: str) -> int:
    return glee_main(["track", *map(str, args), "--weights", "tiny", "--no-progress"])


def test_real_clip_end_to_end(clip, tmp_path):
    rc = _track(clip, "--classes", "person,drum", "--short-side", "64", "--max-frames", "6", "--batch-size", "3",
                "--score-threshold", "0", "-o", tmp_path)
    assert rc == 0
    q = 6  # the tiny preset's query count: threshold 0 reports every slot
    rows = read_mot(tmp_path / "demo.mot.txt")
    assert rows.shape == (6 * q, 10)
    assert sorted(set(rows[:, 0].astype(int))) == list(range(1, 7)) and set(rows[:, 1].astype(int)) == set(range(1, 7))
    assert (rows[:, 2] >= 0).all() and (rows[:, 2] + rows[:, 4] <= 176 + 1e-3).all()
    ytvis = json.loads((tmp_path / "demo.ytvis.json").read_text())
    assert len(ytvis) == q and all(len(r["segmentations"]) == 6 for r in ytvis)
    assert ytvis[0]["segmentations"][0]["size"] == [144, 176]
    assert {r["category_id"] for r in ytvis} <= {1, 2}
    video = open_video(tmp_path / "demo.tracks.mp4")
    frames = list(video)
    assert len(frames) == 6 and frames[0].shape == (144, 176, 3) and video.info.fps == pytest.approx(24)
    summary = json.loads((tmp_path / "demo.summary.json").read_text())
    assert summary["frames"] == 6 and summary["tracks"] == list(range(1, 7)) and summary["error"] is None


def test_vos_expression_and_offline_targets(clip, tmp_path):
    mask = np.zeros((144, 176), np.uint8)
    mask[40:100, 60:120] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ("--short-side", "48", "--max-frames", "3", "--no-video")
    assert _track(clip, "--mask", tmp_path / "mask.png", "--boxes", "10,10,60,80", "--points", "150,40",
                  "-o", tmp_path / "vos", *common) == 0
    rows = read_mot(tmp_path / "vos" / "demo.mot.txt")
    assert sorted(set(rows[:, 1].astype(int))) == [1, 2, 3] and rows.shape[0] == 9
    assert _track(clip, "--expr", "the drummer", "-o", tmp_path / "expr", *common) == 0
    assert set(read_mot(tmp_path / "expr" / "demo.mot.txt")[:, 1]) == {1}
    assert _track(clip, "--class-agnostic", "--mode", "offline", "--top-k", "3", "-o", tmp_path / "off",
                  *common) == 0
    assert len(json.loads((tmp_path / "off" / "demo.ytvis.json").read_text())) == 3


def test_bad_inputs_fail_clearly(clip, tmp_path, capsys):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:200_000])
    assert _track(cut, "--classes", "a", "-o", tmp_path) == 2
    assert "moov atom not found" in capsys.readouterr().err
    (tmp_path / "frames").mkdir()
    assert _track(tmp_path / "frames", "--classes", "a", "-o", tmp_path) == 2
    assert "no image frames" in capsys.readouterr().err
    assert _track(tmp_path / "missing.mp4", "--classes", "a", "-o", tmp_path) == 2
    assert "does not exist" in capsys.readouterr().err
    webm = tmp_path / "cut.webm"
    webm.write_bytes((clip.parent / "demo.webm").read_bytes()[:40_000])  # about 50 decodable frames
    assert _track(webm, "--classes", "a", "--stride", "12", "--short-side", "32", "--no-video", "-o", tmp_path) == 1
    assert "truncated" in capsys.readouterr().err
    assert set(read_mot(tmp_path / "cut.mot.txt")[:, 0].astype(int)) <= {1, 2, 3, 4, 5}  # frames before the break
    with pytest.raises(SystemExit):
        _track(clip, "--classes", "a", "--expr", "b")
    with pytest.raises(SystemExit):
        _track(clip, "--points", "1,1", "--mode", "offline")


def test_glee_predict_hands_videos_to_the_tracker(tmp_path):
    video = tmp_path / "short.mp4"
    with VideoWriter(video, fps=5) as w:
        for i in range(3):
            w.write(np.full((32, 48, 3), 60 * i, np.uint8))
    rc = glee_main(["predict", str(video), "--weights", "tiny", "--classes", "a,b", "--short-side", "32",
                    "--threshold", "0", "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    assert read_mot(tmp_path / "out" / "short.mot.txt")[:, 0].max() == 3
    assert (tmp_path / "out" / "short.tracks.mp4").exists()
