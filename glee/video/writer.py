"""MP4 output: frames with their tracks drawn (masks, boxes, ``#id name score`` labels), encoded by the ffmpeg
binary that ``imageio-ffmpeg`` ships (H.264, yuv420p: plays in browsers and every common player).

Frames are encoded as they arrive; nothing is buffered.  Drawing is :func:`glee.visualize.draw_detections`,
which colours each track by its id, so an object keeps its colour through the video.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glee.video.reader import VideoReadError, _ffmpeg
from glee.video.tracks import TrackedFrame


class VideoWriter:
    """Write RGB frames to a video file.

    Args:
        path: output file (``.mp4`` recommended; parent folders are created).
        fps: frames per second.
        quality: 0 (worst) .. 10 (best), imageio-ffmpeg's scale.
        codec: ffmpeg codec (default libx264).

    Odd frame sizes are padded by one edge row/column (yuv420p needs even sizes) rather than resized.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 24.0, quality: float = 7, codec: str = "libx264") -> None:
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.quality = quality
        self.codec = codec
        self._gen: Any = None
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame [H, W, 3]; every frame must have the first frame's size."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("VideoWriter.write takes uint8 RGB arrays [H, W, 3]")
        h, w = frame.shape[:2]
        if self._gen is None:
            self._size = (h, w)
            ph, pw = h + h % 2, w + w % 2
            self._gen = _ffmpeg().write_frames(
                str(self.path), (pw, ph), fps=self.fps, codec=self.codec, quality=self.quality,
                macro_block_size=2, ffmpeg_log_level="error",
            )
            self._gen.send(None)
        elif (h, w) != self._size:
            raise ValueError(f"frame {self.frames_written} is {w}x{h} but the video is {self._size[1]}x{self._size[0]}")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._gen.send(np.ascontiguousarray(frame))
        except (OSError, BrokenPipeError) as e:
            raise VideoReadError(f"ffmpeg failed writing {str(self.path)!r}: {e}") from None
        self.frames_written += 1

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def draw_frame(frame: TrackedFrame, **draw_options: Any) -> np.ndarray:
    """The frame's image with its tracks drawn (``draw_options`` go to :func:`glee.visualize.draw_detections`)."""
    from glee.visualize import draw_detections

    if frame.image is None:
        raise ValueError(f"frame {frame.index} carries no image to draw on")
    return draw_detections(frame.image, frame.detections, **draw_options)


def write_tracks_video(frames: Iterable[TrackedFrame], path: str | os.PathLike, fps: float = 24.0,
                       **draw_options: Any) -> Iterator[TrackedFrame]:
    """Draw each tracked frame into an MP4 at ``path`` while passing the frames on (a pipeline stage).

    Example::

        for f in write_tracks_video(tracker.track("in.mp4"), "out.mp4", fps=24):
            mot.write(f)
    """
    with VideoWriter(path, fps=fps) as writer:
        for frame in frames:
            writer.write(draw_frame(frame, **draw_options))
            yield frame
