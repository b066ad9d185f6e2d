"""``glee track``: track objects through a video (file or frame folder) and write MOT, YouTube-VIS and MP4 output.

Examples::

    glee track clip.mp4 --weights GLEE_Lite_joint.pth --classes "person,car"            # MOT / VIS, streaming
    glee track clip.mp4 --weights lite/ --classes ytvis.json --mode offline --top-k 30  # official offline VIS
    glee track clip.mp4 --weights lite/ --expr "the man playing the drums"              # R-VOS
    glee track frames/ --weights lite/ --mask first_frame_mask.png                      # VOS from a mask
    glee track clip.mp4 --weights lite/ --boxes 10,20,80,120 --points "140,60"          # VOS from a box / a click

Output folder (``-o``, default ``glee_tracks``), for a source named ``clip``:

* ``clip.mot.txt`` -- MOTChallenge tracks (``frame,id,x,y,w,h,conf,-1,-1,-1``, 1-based frames);
* ``clip.ytvis.json`` -- YouTube-VIS results (``video_id``, ``score``, ``category_id``, RLE per frame);
* ``clip.tracks.mp4`` -- the video with masks, boxes and ``#id`` labels drawn (``--no-video`` to skip);
* ``clip.summary.json`` -- settings, frame count, tracks, speed and any error.

Unreadable, truncated or empty videos give a clear error (exit status 1; frames before a break are written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from glee.inference.cli import parse_box, parse_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glee track", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="video file (mp4, webm, avi, mkv, gif, ...) or folder of frames")
    parser.add_argument("--weights", required=True,
                        help="save_pretrained folder, official checkpoint file, fixture folder, or a preset name "
                             "(random weights: tests and benchmarks only)")
    parser.add_argument("--preset", default=None, help="variant of an official checkpoint file (default: from keys)")
    prompts = parser.add_argument_group("what to track (one kind; --points, --boxes and --mask may be combined)")
    prompts.add_argument("--classes", help="comma-separated names, a .txt/.json file, or 'coco' (multi-object "
                                           "tracking)")
    prompts.add_argument("--class-agnostic", action="store_true", help="track every object (class 'object')")
    prompts.add_argument("--expr", help="referring expression: segment the object it describes (R-VOS)")
    prompts.add_argument("--points", action="append", type=parse_points, default=[],
                         help="clicks on ONE object in the first frame: 'x,y;x,y;x,y,0'; repeat for more objects")
    prompts.add_argument("--boxes", nargs="+", action="extend", type=parse_box, default=[],
                         help="first-frame boxes 'x1,y1,x2,y2', one object each")
    prompts.add_argument("--mask", action="append", type=Path, default=[],
                         help="first-frame object mask image (non-zero = object); repeat for more objects")
    tr = parser.add_argument_group("tracking")
    tr.add_argument("--mode", choices=["stream", "offline"], default="stream",
                    help="stream: online, flat memory (default); offline: the official whole-video protocol "
                         "(classes/expr only)")
    tr.add_argument("--score-threshold", type=float, default=0.3, help="stream: frame score that starts a track")
    tr.add_argument("--keep-threshold", type=float, default=None,
                    help="stream: frame score that keeps a track visible (default: --score-threshold)")
    tr.add_argument("--max-tracks", type=int, default=100, help="stream: tracks per frame at most")
    tr.add_argument("--top-k", type=int, default=None,
                    help="offline: instances kept (default: 30 as officially for classes, 1 for --expr)")
    tr.add_argument("--window", type=int, default=None, help="offline: frames per forward (official 10)")
    tr.add_argument("--prompt-mode", choices=["first_frame", "propagate"], default="first_frame",
                    help="VOS: reuse frame-0 prompt tokens, or re-prompt with the previous mask")
    tr.add_argument("--embed-weight", type=float, default=0.5,
                    help="VOS / R-VOS: weight of embedding similarity vs class probability")
    tr.add_argument("--memory", type=int, default=3, help="frames averaged for association (official 3)")
    pre = parser.add_argument_group("preprocessing")
    pre.add_argument("--short-side", type=int, default=None,
                     help="resize the shorter side to this (default: the model's own, 800 = the official demo)")
    pre.add_argument("--max-size", type=int, default=None, help="cap on the longer side")
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--output", type=Path, default=Path("glee_tracks"), help="output folder")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    run.add_argument("--stride", type=int, default=1, help="use every n-th frame")
    run.add_argument("--batch-size", type=int, default=1, help="frames per forward (stream classes/expr)")
    run.add_argument("--video-id", type=int, default=1, help="video_id written into the YouTube-VIS results")
    run.add_argument("--fps", type=float, default=None, help="output video frame rate (default: the source's)")
    run.add_argument("--no-video", action="store_true", help="do not write the MP4 with drawn tracks")
    run.add_argument("--no-masks", action="store_true", help="boxes only (no YouTube-VIS output)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _task(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    kinds = [k for k, given in (("classes", args.classes is not None), ("class-agnostic", args.class_agnostic),
                                ("expr", args.expr is not None),
                                ("objects", bool(args.points or args.boxes or args.mask))) if given]
    if len(kinds) != 1:
        parser.error("give exactly one kind of target: --classes, --class-agnostic, --expr, or first-frame "
                     f"--points/--boxes/--mask (got {kinds or 'none'})")
    if args.mode == "offline" and kinds[0] == "objects":
        parser.error("--mode offline is the official VIS protocol for --classes/--class-agnostic/--expr; "
                     "VOS from points, boxes or masks runs in stream mode")
    return kinds[0]


def _read_mask(path: Path) -> Any:
    import numpy as np

    from glee.io import ImageReadError, read_image

    try:
        image = read_image(path, max_pixels=None)
    except ImageReadError as exc:
        raise ValueError(f"--mask {path}: {exc}") from None
    mask = image.max(axis=-1) > 0
    if not mask.any():
        raise ValueError(f"--mask {path}: the mask is empty (all pixels zero); non-zero pixels mark the object")
    return np.asarray(mask)


def run_video(model: Any, source: Any, output: Path, *, stem: str, task: str, names: list[str] | None = None,
              category_ids: list[int] | None = None, expression: str | None = None, prompts: list[Any] | None = None,
              mode: str = "stream", preprocess: Any = None, options: dict[str, Any] | None = None,
              max_frames: int | None = None, stride: int = 1, batch_size: int = 1, with_masks: bool = True,
              write_video: bool = True, fps: float | None = None, video_id: int = 1,
              progress: bool = True) -> dict[str, Any]:
    """Track one video and write ``<stem>.mot.txt``, ``<stem>.ytvis.json``, ``<stem>.tracks.mp4`` and
    ``<stem>.summary.json`` under ``output``.  Returns the summary (``error`` set when reading broke off).

    ``task``: ``classes`` (``names``), ``expr`` (``expression``) or ``objects`` (``prompts``: first-frame
    VisualPrompts).  ``options``: tracker settings (thresholds, memory, ...).
    """
    from glee.video.export import MOTWriter, YTVISWriter
    from glee.video.offline import track_offline
    from glee.video.reader import VideoReadError, open_video
    from glee.video.tracker import VideoTracker
    from glee.video.vos import ObjectTracker, ReferringTracker
    from glee.video.writer import VideoWriter, draw_frame

    options = dict(options or {})
    output.mkdir(parents=True, exist_ok=True)
    paths = {"mot": output / f"{stem}.mot.txt", "summary": output / f"{stem}.summary.json"}
    if with_masks:
        paths["ytvis"] = output / f"{stem}.ytvis.json"
    if write_video:
        paths["video"] = output / f"{stem}.tracks.mp4"
    src = open_video(source, max_frames=max_frames, stride=stride)
    out_fps = fps or src.info.fps or 24.0
    summary: dict[str, Any] = {"source": str(source), "task": task, "mode": mode, "classes": names,
                               "expression": expression, "options": options, "fps": out_fps,
                               "outputs": {k: str(v) for k, v in paths.items() if k != "summary"}}
    start = time.perf_counter()
    frames = 0
    track_ids: set[int] = set()
    error = None
    ytvis = YTVISWriter(video_id, category_ids) if with_masks else None
    writer = VideoWriter(paths["video"], fps=out_fps) if write_video else None
    try:
        with MOTWriter(paths["mot"]) as mot:
            if mode == "offline":
                result = track_offline(model, src, names, expression=expression, preprocess=preprocess,
                                       with_masks=with_masks, progress=progress,
                                       **{k: v for k, v in options.items() if k in ("top_k", "window", "memory")})
                if with_masks:
                    Path(paths["ytvis"]).write_text(json.dumps(result.to_ytvis(video_id, category_ids)))
                    ytvis = None
                again = open_video(source, max_frames=max_frames, stride=stride) if write_video else None
                stream = result.frames(images=again)
            elif task == "objects":
                tracker = ObjectTracker(model, preprocess=preprocess, with_masks=with_masks, **options)
                stream = tracker.track(src, prompts or [], progress=progress)
            elif task == "expr":
                tracker = ReferringTracker(model, expression or "", preprocess=preprocess, with_masks=with_masks,
                                           batch_size=batch_size, **options)
                stream = tracker.track(src, progress=progress)
            else:
                tracker = VideoTracker(model, names, preprocess=preprocess, with_masks=with_masks,
                                       batch_size=batch_size, **options)
                stream = tracker.track(src, progress=progress)
            for frame in stream:
                frames += 1
                track_ids.update(frame.track_ids)
                mot.write(frame)
                if ytvis is not None:
                    ytvis.add(frame)
                if writer is not None:
                    writer.write(draw_frame(frame))
    except VideoReadError as exc:
        error = str(exc)
    finally:
        if writer is not None:
            writer.close()
        src.close()
    if ytvis is not None and frames:
        ytvis.save(paths["ytvis"])
    seconds = time.perf_counter() - start
    summary.update({"frames": frames, "tracks": sorted(track_ids), "seconds": round(seconds, 3),
                    "frames_per_second": round(frames / seconds, 3) if seconds > 0 else None, "error": error})
    paths["summary"].write_text(json.dumps(summary, indent=1))
    return summary


def _summary_line(summary: dict[str, Any], output: Path) -> str:
    return (f"glee track: {summary['frames']} frame(s), {len(summary['tracks'])} track(s), "
            f"{summary['frames_per_second']} frames/s; results in {output}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    task = _task(args, parser)
    import torch

    from glee.inference.loading import load_model
    from glee.inference.preprocess import PreprocessConfig
    from glee.inference.vocab import load_class_names
    from glee.video.reader import VideoReadError, open_video

    if args.threads:
        torch.set_num_threads(args.threads)
    names = category_ids = None
    prompts: list[Any] = []
    try:
        if task == "classes":
            names, category_ids = load_class_names(args.classes)
        elif task == "class-agnostic":
            names = ["object"]
        elif task == "objects":
            from glee.inference.prompts import VisualPrompt

            prompts = [VisualPrompt(mask=_read_mask(p)) for p in args.mask] + list(args.boxes) + list(args.points)
        # check the source before loading a model: a bad path fails in a second
        open_video(args.source, max_frames=1).close()
        model = load_model(args.weights, preset=args.preset, device=args.device)
        pre = PreprocessConfig(short_side=args.short_side or model.cfg.predict_short_side, max_size=args.max_size)
    except (OSError, ValueError) as exc:
        print(f"glee track: error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"memory": args.memory}
    if task in ("classes", "class-agnostic"):
        task = "classes"
        if args.mode == "offline":
            options.update(top_k=args.top_k or 30, window=args.window)
        else:
            options.update(score_threshold=args.score_threshold, keep_threshold=args.keep_threshold,
                           max_tracks=args.max_tracks)
    elif task == "expr" and args.mode == "offline":
        options.update(top_k=args.top_k or 1, window=args.window)
    else:
        options.update(embed_weight=args.embed_weight)
        if task == "objects":
            options.update(prompt_mode=args.prompt_mode)
    stem = args.source.stem if args.source.is_file() else args.source.name
    try:
        summary = run_video(
            model, args.source, args.output, stem=stem, task=task, names=names, category_ids=category_ids,
            expression=args.expr, prompts=prompts, mode=args.mode, preprocess=pre, options=options,
            max_frames=args.max_frames, stride=args.stride, batch_size=args.batch_size,
            with_masks=not args.no_masks, write_video=not args.no_video, fps=args.fps, video_id=args.video_id,
            progress=not args.no_progress,
        )
    except (VideoReadError, ValueError) as exc:
        print(f"glee track: error: {exc}", file=sys.stderr)
        return 1
    print(_summary_line(summary, args.output))
    if summary["error"]:
        print(f"glee track: error: {summary['error']}", file=sys.stderr)
        return 1
    return 0


def cli_predict_video(path: Path, predictor: Any, args: argparse.Namespace, output_dir: Path) -> int:
    """``glee predict`` on a video file: track with the predictor's model and its prompt arguments."""
    from glee.inference.vocab import load_class_names
    from glee.video.reader import VideoReadError

    prompts = list(getattr(args, "points", []) or []) + list(getattr(args, "boxes", []) or [])
    expression = getattr(args, "expr", None)
    names = category_ids = None
    if getattr(args, "classes", None):
        names, category_ids = load_class_names(args.classes)
        task = "classes"
    elif getattr(args, "class_agnostic", False):
        names, task = ["object"], "classes"
    elif expression:
        task = "expr"
    else:
        task = "objects"
    options: dict[str, Any] = {}
    threshold = getattr(args, "threshold", None)
    if task == "classes" and threshold is not None:
        options["score_threshold"] = threshold
    try:
        summary = run_video(
            predictor.model, path, output_dir, stem=path.stem, task=task, names=names, category_ids=category_ids,
            expression=expression, prompts=prompts, preprocess=predictor.config.preprocess, options=options,
            batch_size=getattr(args, "batch_size", 1), with_masks=not getattr(args, "no_masks", False),
            write_video=not getattr(args, "no_overlay", False), progress=not getattr(args, "no_progress", False),
        )
    except (VideoReadError, ValueError, OSError) as exc:
        print(f"glee predict: {path}: {exc}", file=sys.stderr)
        return 1
    print(_summary_line(summary, output_dir))
    if summary["error"]:
        print(f"glee predict: {path}: {summary['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
