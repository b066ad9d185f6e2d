"""Benchmark streaming video tracking (``glee.video.VideoTracker``): frames per second on CPU (or GPU).

Usage: python scripts/bench_video.py [--models nano,lite] [--short-side 800] [--frames 8] [--threads N]

Each model is a preset (``lite``, ``tiny``: RANDOM weights -- speed does not depend on the weight values and
nothing is downloaded; ``nano``: the shipped default, backbone and text tower from installed packages).  The
clip is the real 176x144 video shipped in ``iscc-samples`` (a synthetic clip of the same size without it),
resized so its shorter side is ``--short-side`` (800 px: the demo's input size).  The timed path is the whole
per-frame pipeline: decode, preprocess, forward with a cached category list, MinVIS association (Hungarian on
Q x Q), track selection, boxes, and full-resolution masks of the reported tracks.  Warm-up frames (including the
one-time text encoding) are not timed.

Prints the machine, then one row per model: frames/s (wall), seconds per frame split into forward /
association + postprocessing / decode + preprocess, process CPU seconds per frame (all threads; robust to other
load on a shared machine, where wall time is not), peak RSS, and the tracker state carried between frames.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import glee
from glee import GleeConfig, GleeModel
from glee.benchmark import machine_summary, peak_rss_mb
from glee.inference.preprocess import PreprocessConfig
from glee.video import VideoTracker, open_video
from glee.video import tracker as tracker_module

DEFAULT_CLASSES = "person,drum,guitar,microphone,chair,lamp,speaker,cymbal"


def clip_source(path: str | None) -> tuple[str, object]:
    """(description, source) of the benchmark clip."""
    if path:
        return path, path
    try:
        import iscc_samples

        video = Path(iscc_samples.videos(".mp4")[0])
        return f"iscc-samples {video.name} (176x144, 24 fps)", video
    except ImportError:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (144, 176, 3), dtype=np.uint8) for _ in range(64)]
        return "synthetic 176x144 noise (install iscc-samples for the real clip)", frames


class _TimedForward:
    """Wraps the tracker's forward to time it separately from the rest of the pipeline."""

    def __init__(self, device: str) -> None:
        self.inner = tracker_module.forward_frames
        self.device = device
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        t0 = time.perf_counter()
        result = self.inner(*args, **kwargs)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return result


def bench(preset: str, source: object, args: argparse.Namespace) -> dict[str, str]:
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset(preset)).eval().to(args.device)
    params = sum(p.numel() for p in model.parameters())
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    tracker = VideoTracker(model, classes, preprocess=PreprocessConfig(short_side=args.short_side),
                           score_threshold=args.score_threshold, batch_size=args.batch_size)
    timed = _TimedForward(args.device)
    tracker_module.forward_frames = timed
    try:
        frames = tracker.track(open_video(source, max_frames=args.warmup + args.frames))
        per_frame: list[float] = []
        tracks = 0
        forward_before = 0.0
        start, c_start = time.perf_counter(), time.process_time()  # replaced after the warm-up frames
        t_prev = start
        for r in frames:
            now = time.perf_counter()
            if r.index < args.warmup:
                if r.index == args.warmup - 1:
                    start, c_start, forward_before = now, time.process_time(), timed.seconds
            else:
                per_frame.append(now - t_prev)
                tracks += len(r)
            t_prev = now
        wall = time.perf_counter() - start
        cpu = time.process_time() - c_start
    finally:
        tracker_module.forward_frames = timed.inner
    n = len(per_frame)
    forward = (timed.seconds - forward_before) / n
    seconds = wall / n
    return {
        "model": preset,
        "params (M)": f"{params / 1e6:.1f}",
        "queries": str(model.cfg.num_queries),
        "input": f"short side {args.short_side}",
        "frames": str(n),
        "frames/s": f"{1 / seconds:.3f}",
        "s/frame": f"{seconds:.3f}",
        "forward s": f"{forward:.3f}",
        "rest s": f"{seconds - forward:.3f}",
        "frame s (median)": f"{statistics.median(per_frame):.3f}",
        "cpu s/frame": f"{cpu / n:.3f}",
        "tracks/frame": f"{tracks / n:.1f}",
        "state KB": f"{tracker.state_nbytes() / 1024:.1f}",
        "peak RSS MB": f"{peak_rss_mb():.0f}",
    }


def table(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = [" | ".join(k.ljust(widths[k]) for k in keys), "-+-".join("-" * widths[k] for k in keys)]
    lines += [" | ".join(r[k].ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="nano,lite", help="comma-separated presets")
    parser.add_argument("--short-side", type=int, default=800, help="network input: shorter side in pixels")
    parser.add_argument("--frames", type=int, default=8, help="timed frames per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames first (text encoding, caches)")
    parser.add_argument("--batch-size", type=int, default=1, help="frames per forward")
    parser.add_argument("--classes", default=DEFAULT_CLASSES, help="comma-separated category list")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--video", default=None, help="video file or frame folder (default: the iscc-samples clip)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        parser.error("--frames must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    name, source = clip_source(args.video)
    print(f"machine: {machine_summary()}")
    if hasattr(os, "getloadavg"):
        print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(f"glee {glee.__version__}; clip: {name}; short side {args.short_side}; "
          f"{len(args.classes.split(','))} classes; batch {args.batch_size}; masks of reported tracks\n")
    rows = []
    for preset in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append(bench(preset, source, args))
        print(f"  done: {preset}", file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
