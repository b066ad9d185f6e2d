"""Server settings of the web app: limits, folders, preprocessing.  One object, filled from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AppConfig:
    """Limits and folders of one ``glee app`` server.

    Attributes:
        max_upload_mb: largest accepted upload (image or video), in MiB; larger bodies get HTTP 413.
        max_json_kb: largest accepted JSON request body, in KiB.
        max_video_seconds: longest accepted video (by its header; GIFs and others without one are counted).
        max_video_frames: hard cap on frames tracked, whatever the header says.
        max_image_pixels: larger images are downscaled on upload (aspect kept).
        max_queue: jobs waiting at most; one more gets HTTP 503 "busy".
        max_new_tokens: answer length cap of the chat.
        max_history_turns: earlier chat turns sent back to the model at most.
        short_side: the shorter image side GLEE sees; ``None``: the model's own (800 as the official demo, 320
            for the random demo model).  Smaller is faster on a CPU.
        work_dir: uploads and results live here (a fresh temporary folder by default); nothing outside it
            (and the app's own static folder) is ever served.
        retention_s: uploads and results older than this are deleted.
    """

    max_upload_mb: float = 25.0
    max_json_kb: int = 256
    max_video_seconds: float = 30.0
    max_video_frames: int = 300
    max_image_pixels: int = 12_000_000
    max_queue: int = 8
    max_new_tokens: int = 96
    max_history_turns: int = 8
    short_side: int | None = None
    work_dir: Path | None = None
    retention_s: float = 3600.0

    def __post_init__(self) -> None:
        positive = {"max_upload_mb": self.max_upload_mb, "max_json_kb": self.max_json_kb,
                    "max_video_seconds": self.max_video_seconds, "max_video_frames": self.max_video_frames,
                    "max_image_pixels": self.max_image_pixels, "max_queue": self.max_queue,
                    "max_new_tokens": self.max_new_tokens, "retention_s": self.retention_s}
        bad = {k: v for k, v in positive.items() if not v or v <= 0}
        if bad:
            raise ValueError(f"these app limits must be positive: {bad}")
        if self.short_side is not None and self.short_side < 32:
            raise ValueError(f"short_side must be at least 32 pixels (or None), got {self.short_side}")
        if self.max_history_turns < 0:
            raise ValueError(f"max_history_turns must be >= 0, got {self.max_history_turns}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_kb * 1024)
