"""Frame sources: video files, folders, iterables; and clear errors for unreadable, truncated or empty input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glee.video import VideoReadError, VideoWriter, open_video
from glee.video.reader import to_rgb_frame

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")


@pytest.fixture(scope="module")
def sample_dir() -> Path:
    iscc_samples = pytest.importorskip("iscc_samples")
    return Path(iscc_samples.videos(".mp4")[0]).parent


def test_real_clip_streams_frames_with_metadata(sample_dir):
    src = open_video(sample_dir / "demo.mp4", max_frames=30, stride=2)
    frames = list(src)
    assert len(frames) == 30 and src.frames_read == 30
    assert frames[0].shape == (144, 176, 3) and frames[0].dtype == np.uint8
    assert src.info.fps == pytest.approx(12.0) and src.info.size == (144, 176) and src.info.codec == "h264"
    assert src.info.num_frames == 30
    full = open_video(sample_dir / "demo.mp4", max_frames=60)
    assert all(np.array_equal(a, b) for a, b in zip(frames, list(full)[::2]))


def test_other_containers_decode(sample_dir):
    for name in ("demo.webm", "demo.avi", "demo.gif"):
        frames = list(open_video(sample_dir / name, max_frames=3))
        assert len(frames) == 3 and frames[0].ndim == 3


def test_folder_iterable_and_array_sources(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) for _ in range(11)]
    for i, f in enumerate(frames):  # natural order: frame_2 before frame_10
        Image.fromarray(f).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert all(np.array_equal(a, b) for a, b in zip(open_video(tmp_path), frames))
    assert open_video(tmp_path).info.num_frames == 11
    mixed = [frames[0], Image.fromarray(frames[1]), torch.from_numpy(frames[2]).permute(2, 0, 1),
             frames[3].astype(np.float32) / 255, frames[4][..., 0]]
    out = list(open_video(iter(mixed)))
    assert [o.shape for o in out] == [(12, 16, 3)] * 5
    assert all(np.array_equal(out[i], frames[i]) for i in range(4))
    assert np.array_equal(out[4][..., 1], frames[4][..., 0])
    assert len(list(open_video(np.stack(frames[:3])))) == 3


def test_bad_frames_and_folders_fail_clearly(tmp_path):
    with pytest.raises(VideoReadError, match="no frames"):
        list(open_video(iter([])))
    with pytest.raises(VideoReadError, match="frame 1"):
        list(open_video([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32) + 7]))
    with pytest.raises(TypeError, match="folder path"):
        to_rgb_frame("frame.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no image frames"):
        open_video(empty)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("RGB", (8, 8)).save(odd / "0.png")
    Image.new("RGB", (9, 8)).save(odd / "1.png")
    with pytest.raises(VideoReadError, match="same size"):
        list(open_video(odd))
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (8, 8)).save(broken / "0.png")
    (broken / "1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(VideoReadError, match="1.jpg"):
        list(open_video(broken))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="stride"):
        open_video(broken, stride=0)


def test_unreadable_truncated_and_empty_video_files(tmp_path, sample_dir):
    data = (sample_dir / "demo.mp4").read_bytes()
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(data[: len(data) // 2])  # the MP4 index (moov) sits at the end: nothing decodes
    with pytest.raises(VideoReadError, match="moov atom not found"):
        open_video(cut_mp4)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoReadError, match="cannot open"):
        open_video(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        open_video(empty)
    webm = (sample_dir / "demo.webm").read_bytes()
    cut_webm = tmp_path / "cut.webm"
    cut_webm.write_bytes(webm[:150_000])  # streams decode up to the cut, then the count gives it away
    src = open_video(cut_webm)
    seen = 0
    with pytest.raises(VideoReadError, match="truncated"):
        for _ in src:
            seen += 1
    assert 0 < seen < src.info.num_frames


def test_audio_only_file_has_no_video_stream(tmp_path):
    import subprocess

    audio = tmp_path / "audio.m4a"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc",
                    "-t", "0.2", str(audio)], check=True)
    with pytest.raises(VideoReadError, match="no video stream"):
        open_video(audio)


def test_writer_round_trip_with_odd_size(tmp_path):
    path = tmp_path / "out" / "clip.mp4"
    with VideoWriter(path, fps=10) as w:
        for i in range(5):
            w.write(np.full((33, 47, 3), 40 * i, np.uint8))
        with pytest.raises(ValueError, match="47x33"):
            w.write(np.zeros((32, 32, 3), np.uint8))
    src = open_video(path)
    frames = list(src)
    assert len(frames) == 5 and frames[0].shape == (34, 48, 3) and src.info.fps == pytest.approx(10)
    assert abs(float(frames[4].mean()) - 160) < 3  # lossy codec, flat frames come back close
