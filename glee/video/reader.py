"""Frame sources: a video file, a folder of images, or any iterable of frames, read one frame at a time.

Every source yields RGB ``uint8`` arrays ``[H, W, 3]`` and never holds more than the current frame, so a
tracker fed from it keeps flat memory however long the video is.  Video files are decoded by the ffmpeg
binary that ``imageio-ffmpeg`` ships (``pip install imageio-ffmpeg``, or the ``video`` extra).

Bad input fails with :class:`VideoReadError` naming the file and the problem: a file ffmpeg cannot open (not a
video, no video stream, or a truncated MP4 whose index is gone), a stream that breaks off mid-way (more than 5%
fewer frames than the header's duration x fps; raised when the stream ends, after the frames before the break),
or a source with no frames at all.  A missing path is a ``FileNotFoundError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Intact files decode a little short of duration x fps (the duration includes audio; GIF frame delays vary:
# the shipped sample clips fall short by up to 4%), so only a larger shortfall counts as truncation.
_TRUNCATION_SLACK_FRAMES = 3
_TRUNCATION_SLACK_FRACTION = 0.05


class VideoReadError(ValueError):
    """A video source that cannot be read; the message says which file, what went wrong and what to do."""


@dataclass
class VideoInfo:
    """What is known about a source before reading it (``None`` where the source cannot tell)."""

    source: str  # a path, or a short description of an in-memory iterable
    fps: float | None = None
    num_frames: int | None = None  # frames the container promises (duration x fps), or the folder size
    size: tuple[int, int] | None = None  # (height, width)
    codec: str | None = None


def to_rgb_frame(frame: Any, where: str = "frame") -> np.ndarray:
    """Convert one frame to an RGB ``uint8`` array ``[H, W, 3]`` with :func:`glee.io.read_image`'s rules.

    Accepts a PIL image, a numpy array ``[H, W]`` / ``[H, W, 1..4]`` (uint8, uint16, bool, or float in 0..1) or a
    torch tensor ``[3, H, W]`` / ``[H, W, 3]``; frames are never downscaled.  ``where`` names the frame in errors.
    """
    from glee.io import ImageReadError, read_image

    if isinstance(frame, (str, Path, bytes)):
        raise TypeError(f"{where}: got a {type(frame).__name__}; an iterable source must yield frames (arrays, PIL "
                        "images, tensors), not paths; pass a folder path to read image files")
    try:
        return read_image(frame, max_pixels=None)
    except ImageReadError as e:
        raise VideoReadError(f"{where}: {e}") from None


class FrameSource:
    """An iterable of RGB frames with :class:`VideoInfo`; iterate once, close when done (or use ``with``)."""

    def __init__(self, info: VideoInfo, frames: Iterator[np.ndarray], closer: Any = None) -> None:
        self.info = info
        self._frames = frames
        self._closer = closer
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._frames:
            self.frames_read += 1
            yield frame

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(source: Any, max_frames: int | None = None, stride: int = 1) -> FrameSource:
    """Open any frame source for streaming.

    Args:
        source: a video file path (anything ffmpeg decodes: mp4, webm, avi, mkv, gif, ...), a folder of
            images (read in natural filename order), a :class:`FrameSource`, a numpy array ``[T, H, W, 3]``,
            or any iterable (list, generator) of frames accepted by :func:`to_rgb_frame`.
        max_frames: stop after this many frames (after ``stride``).
        stride: keep every ``stride``-th frame.
    Returns:
        a :class:`FrameSource` yielding ``uint8 [H, W, 3]`` RGB frames.
    Raises:
        FileNotFoundError for a missing path; :class:`VideoReadError` for an unreadable, truncated or empty source
        (an empty iterable fails when iteration ends).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 (or None for all frames), got {max_frames}")
    if isinstance(source, FrameSource):
        src = source
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"video source {str(path)!r} does not exist; give a video file, a folder of "
                                    "images, or an iterable of frames")
        src = _open_folder(path) if path.is_dir() else _open_file(path)
    elif isinstance(source, np.ndarray):
        if source.ndim not in (3, 4):
            raise VideoReadError(f"a numpy video must be [T, H, W, 3] (or [T, H, W]), got shape {source.shape}")
        src = _open_iterable(iter(source), f"array{tuple(source.shape)}", num_frames=len(source))
    elif isinstance(source, Iterable):
        n = len(source) if hasattr(source, "__len__") else None
        src = _open_iterable(iter(source), type(source).__name__, num_frames=n)
    else:
        raise TypeError(f"cannot read frames from a {type(source).__name__}; give a video path, a folder of "
                        "images, or an iterable of frames (numpy arrays, PIL images or tensors)")
    if stride == 1 and max_frames is None:
        return src
    return _limit(src, max_frames, stride)


def _limit(src: FrameSource, max_frames: int | None, stride: int) -> FrameSource:
    def frames() -> Iterator[np.ndarray]:
        kept = 0
        for i, frame in enumerate(src):
            if i % stride:
                continue
            yield frame
            kept += 1
            if max_frames is not None and kept >= max_frames:
                return

    n = src.info.num_frames
    if n is not None:
        n = -(-n // stride)
        n = min(n, max_frames) if max_frames is not None else n
    info = VideoInfo(src.info.source, src.info.fps / stride if src.info.fps else None, n, src.info.size,
                     src.info.codec)
    return FrameSource(info, frames(), src.close)


def _open_iterable(it: Iterator[Any], name: str, num_frames: int | None) -> FrameSource:
    def frames() -> Iterator[np.ndarray]:
        count = 0
        for i, item in enumerate(it):
            yield to_rgb_frame(item, f"frame {i} of {name}")
            count += 1
        if count == 0:
            raise VideoReadError(f"the frame iterable ({name}) yielded no frames; a video needs at least one frame")

    return FrameSource(VideoInfo(name, num_frames=num_frames), frames())


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _open_folder(folder: Path) -> FrameSource:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoReadError(f"folder {str(folder)!r} holds no image frames ({', '.join(IMAGE_SUFFIXES)}); a video "
                             "needs at least one frame")

    def frames() -> Iterator[np.ndarray]:
        from glee.io import ImageReadError, read_image

        size = None
        for p in files:
            try:
                frame = read_image(p, max_pixels=None)
            except ImageReadError as e:
                raise VideoReadError(f"frame file of the video cannot be read: {e}; remove or replace it") from None
            if size is not None and frame.shape[:2] != size:
                raise VideoReadError(f"frame file {str(p)!r} is {frame.shape[1]}x{frame.shape[0]} but earlier frames "
                                     f"are {size[1]}x{size[0]}; all frames of a video must have the same size")
            size = frame.shape[:2]
            yield frame

    return FrameSource(VideoInfo(str(folder), num_frames=len(files)), frames())


def _ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError("reading video files needs imageio-ffmpeg (it ships its own ffmpeg): "
                          "pip install imageio-ffmpeg  (or: pip install 'glee-torch[video]')") from e
    return imageio_ffmpeg


def _ffmpeg_reason(message: str) -> str:
    """The informative lines of an ffmpeg log (the banner and build configuration are dropped)."""
    keep = [ln.strip() for ln in message.splitlines()
            if re.search(r"error|invalid|not found|moov|truncat|corrupt|no such|does not contain|unsupported|"
                         r"could not|misdetection", ln, re.IGNORECASE) and "configuration:" not in ln]
    # drop imageio-ffmpeg's own header line and duplicates, keep order
    seen: list[str] = []
    for ln in keep:
        ln = re.sub(r"^\[[^\]]+\]\s*", "", ln)
        if ln and ln not in seen and not ln.startswith("==="):
            seen.append(ln)
    return "; ".join(seen[-4:]) or message.strip().splitlines()[0]


def _open_file(path: Path) -> FrameSource:
    ffmpeg = _ffmpeg()
    if path.stat().st_size == 0:
        raise VideoReadError(f"video file {str(path)!r} is empty (0 bytes)")
    reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as e:
        reader.close()
        if "does not contain any stream" in str(e) or "Stream map" in str(e):
            raise VideoReadError(f"{str(path)!r} has no video stream (audio only?); give a file with video") from None
        raise VideoReadError(f"cannot open {str(path)!r} as a video: {_ffmpeg_reason(str(e))}. The file is not a "
                             "video ffmpeg can decode, or it is truncated/corrupt (e.g. an MP4 cut off before its "
                             "index); re-encode or re-download it") from None
    width, height = meta.get("size") or meta.get("source_size") or (0, 0)
    if not width or not height:
        reader.close()
        raise VideoReadError(f"{str(path)!r} has no video stream (ffmpeg reports no frame size)")
    fps = meta.get("fps") or None
    duration = meta.get("duration") or None
    expected = round(duration * fps) if fps and duration else None
    info = VideoInfo(str(path), fps=fps, num_frames=expected, size=(int(height), int(width)), codec=meta.get("codec"))
    frame_bytes = width * height * 3

    def frames() -> Iterator[np.ndarray]:
        count = 0
        while True:
            try:
                buf = next(reader)
            except StopIteration:
                break
            except (OSError, RuntimeError) as e:
                raise VideoReadError(f"{str(path)!r}: decoding failed at frame {count}: {_ffmpeg_reason(str(e))}; "
                                     "the file is truncated or corrupt") from None
            if len(buf) != frame_bytes:
                raise VideoReadError(f"{str(path)!r}: frame {count} is incomplete ({len(buf)} of {frame_bytes} "
                                     "bytes); the file is truncated or corrupt")
            yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
            count += 1
        if count == 0:
            raise VideoReadError(f"{str(path)!r} contains no decodable video frames")
        if expected is not None:
            slack = max(_TRUNCATION_SLACK_FRAMES, int(_TRUNCATION_SLACK_FRACTION * expected))
            if count < expected - slack:
                raise VideoReadError(
                    f"{str(path)!r} ended after {count} frames, but its header promises {expected} "
                    f"({duration:.2f} s at {fps:g} fps): the file is truncated or corrupt; re-encode or "
                    "re-download it"
                )

    return FrameSource(info, frames(), reader.close)
