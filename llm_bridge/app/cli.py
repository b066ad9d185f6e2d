"""``glee app`` command line: pick models and limits, then serve the app on this machine."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glee app",
        description="Local web app: segment images (classes, expressions, clicks, boxes), track objects in "
                    "videos, and chat with the LLM bridge. Runs offline on the bundled default models (random "
                    "tiny demo models, with a banner, until trained ones ship).",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    models = p.add_argument_group("models (the selector offers these plus the defaults)")
    models.add_argument("--glee", action="append", default=[], metavar="PATH",
                        help="official GLEE checkpoint (.pth/.safetensors) or save_pretrained folder; repeatable")
    models.add_argument("--glee-preset", default=None, help="variant of official checkpoint files (default: from keys)")
    models.add_argument("--bridge", action="append", default=[], metavar="DIR",
                        help="chat bridge folder (ReasonSegModel.save_pretrained); repeatable")
    models.add_argument("--weights-dir", default=None, metavar="DIR",
                        help="offer every GLEE checkpoint / save_pretrained folder / bridge folder inside DIR")
    models.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload (default 25 MB)")
    lim.add_argument("--max-video-seconds", type=float, default=30.0, help="longest video (default 30 s)")
    lim.add_argument("--max-video-frames", type=int, default=300, help="most frames tracked (default 300)")
    lim.add_argument("--max-queue", type=int, default=8, help="jobs that may wait (default 8); more get 'busy'")
    lim.add_argument("--max-new-tokens", type=int, default=96, help="chat answer length cap (default 96)")
    run = p.add_argument_group("run")
    run.add_argument("--short-side", type=int, default=None,
                     help="image shorter side GLEE sees (default: 800 as the official demo; 320 for the demo model)")
    run.add_argument("--work-dir", default=None, help="folder for uploads and results (default: a temporary one)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``glee app``; serves until interrupted."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the app never downloads anything
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import uvicorn

    from llm_bridge.app.config import AppConfig
    from llm_bridge.app.models import build_registry
    from llm_bridge.app.server import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = AppConfig(max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds,
                           max_video_frames=args.max_video_frames, max_queue=args.max_queue,
                           max_new_tokens=args.max_new_tokens, short_side=args.short_side,
                           work_dir=args.work_dir)
        registry = build_registry(args.glee, args.bridge, args.glee_preset, args.device, args.weights_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"glee app: {exc}", file=sys.stderr)
        return 2
    for kind, choices in registry.describe().items():
        for c in choices:
            flag = "" if c["trained"] else "  [untrained demo weights]"
            print(f"{kind:6s} {c['id']:24s} {c['label']}{flag}")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"glee app: open http://{host}:{args.port}/  (Ctrl+C stops it)", flush=True)
    uvicorn.run(create_app(registry, config), host=args.host, port=args.port, log_level="warning")
    return 0
