"""``glee predict``: run a GLEE model on images, folders or videos and write JSON results and overlays.

Examples::

    glee predict photo.jpg --weights GLEE_Lite_joint.pth --classes "person,car,dog"
    glee predict photos/ --weights my_model/ --classes coco --threshold 0.3 -o out/
    glee predict photo.jpg --weights lite_folder/ --expr "the man in the red shirt"
    glee predict photo.jpg --weights lite_folder/ --points "120,80;140,95;300,40,0" --boxes 10,20,200,220
    glee predict photo.jpg --weights lite_folder/ --class-agnostic

Output folder: ``<name>.json`` per image (boxes, scores, classes, RLE masks, query indices), ``<name>.png``
overlays, ``coco_results.json`` (category and expression runs) and ``summary.json`` (settings, per-file
outcome, errors).  Unreadable images are reported and skipped; the exit status is 1 if any failed.

Video inputs are handed to ``glee.video.cli_predict_video(path, predictor, args, output_dir) -> int`` when
that module is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from glee.cli import threshold_arg
from glee.inference.loading import load_model
from glee.inference.postprocess import PostprocessConfig
from glee.inference.predictor import ImagePredictor, PredictorConfig
from glee.inference.preprocess import PreprocessConfig
from glee.inference.prompts import VisualPrompt
from glee.io import ImageReadError, is_video_path, list_images, read_image
from glee.structures import Detections


def parse_points(text: str) -> VisualPrompt:
    """``"x,y[,label];x,y[,label]..."`` (label 1 positive, 0 negative) -> one VisualPrompt."""
    pos, neg = [], []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        parts = [p.strip() for p in item.split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad point {item!r}: use x,y or x,y,label") from exc
        if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0.0, 1.0)):
            raise argparse.ArgumentTypeError(f"bad point {item!r}: use x,y (positive) or x,y,0 (negative)")
        (pos if len(values) == 2 or values[2] == 1.0 else neg).append((values[0], values[1]))
    if not pos:
        raise argparse.ArgumentTypeError(f"--points {text!r} has no positive click")
    return VisualPrompt(points=pos, negative_points=neg)


def parse_box(text: str) -> VisualPrompt:
    """``"x1,y1,x2,y2"`` -> one box VisualPrompt."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad box {text!r}: use x1,y1,x2,y2") from exc
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"bad box {text!r}: use x1,y1,x2,y2")
    try:
        return VisualPrompt(box=values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glee predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files, folders of images, or videos")
    parser.add_argument("--weights", required=True,
                        help="save_pretrained folder, official checkpoint file, fixture folder, or a preset name "
                             "(random weights: tests and benchmarks only)")
    parser.add_argument("--preset", default=None,
                        help="variant of an official checkpoint file (default: from its keys)")
    prompts = parser.add_argument_group("prompts (give one kind; --points and --boxes may be combined)")
    prompts.add_argument("--classes", help="comma-separated names, a .txt (one per line) or COCO/LVIS .json file, "
                                           "or 'coco'")
    prompts.add_argument("--class-agnostic", action="store_true", help="open-world detection (class 'object')")
    prompts.add_argument("--expr", help="referring expression (top-1 instance per image)")
    prompts.add_argument("--points", action="append", type=parse_points, default=[],
                         help="clicks on ONE object: 'x,y;x,y;x,y,0' (',0' marks a negative click); repeat the "
                              "option for more objects")
    prompts.add_argument("--boxes", nargs="+", action="extend", type=parse_box, default=[],
                         help="boxes 'x1,y1,x2,y2', one object each")
    post = parser.add_argument_group("postprocessing (defaults: the official demo)")
    post.add_argument("--top-k", type=int, default=None, help="instances kept before thresholding (demo: 15)")
    post.add_argument("--threshold", type=threshold_arg, default=argparse.SUPPRESS,
                      help="score threshold, or 'none' (demo: 0.2 for classes, none for expressions and prompts)")
    post.add_argument("--score-mode", choices=["demo", "eval"], default="demo",
                      help="demo: class probability; eval: class probability x mean mask probability")
    post.add_argument("--multi-label", action="store_true", help="top-k over (query, class) pairs (evaluation style)")
    post.add_argument("--no-masks", action="store_true", help="boxes only (faster; no RLE in the JSON)")
    pre = parser.add_argument_group("preprocessing")
    pre.add_argument("--short-side", type=int, default=None,
                     help="resize the shorter side to this (default: the model's own, 800 = the official demo)")
    pre.add_argument("--max-size", type=int, default=None, help="cap on the longer side (evaluation: 1333)")
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--output", type=Path, default=Path("glee_predictions"), help="output folder")
    run.add_argument("--batch-size", type=int, default=1, help="images per forward")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--recursive", action="store_true", help="search folders recursively")
    run.add_argument("--no-overlay", action="store_true", help="do not write PNG overlays")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _task(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    kinds = [k for k, given in (("classes", args.classes is not None), ("class-agnostic", args.class_agnostic),
                                ("expr", args.expr is not None), ("prompts", bool(args.points or args.boxes)))
             if given]
    if len(kinds) != 1:
        parser.error(f"give exactly one prompt kind: --classes, --class-agnostic, --expr, or --points/--boxes "
                     f"(got {kinds or 'none'})")
    return kinds[0]


def _expand_inputs(paths: list[Path], recursive: bool) -> tuple[list[Path], list[Path]]:
    images: list[Path] = []
    videos: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = list_images(p, recursive)
            if not found:
                warnings.warn(f"{p}: folder has no image files", UserWarning, stacklevel=2)
            images += found
        elif p.is_file():
            (videos if is_video_path(p) else images).append(p)
        else:
            raise ImageReadError(f"{p}: no such file or folder")
    return images, videos


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}_{n}"
    used.add(stem)
    return stem


def _image_id(path: Path) -> int | str:
    """COCO-style numeric file names (000000397133.jpg) -> 397133; otherwise the file name."""
    return int(path.stem) if path.stem.isdigit() else path.name


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    task = _task(args, parser)
    import torch

    from glee.inference.vocab import load_class_names
    from glee.visualize import draw_detections, draw_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        images, videos = _expand_inputs(args.inputs, args.recursive)
    except ImageReadError as exc:
        parser.error(str(exc))
    if videos:
        try:
            import glee.video as video_module
        except ModuleNotFoundError:
            parser.error(f"video input {videos[0]} needs the glee.video module, which is not installed in this build; "
                         "extract frames to a folder and predict that instead")
        if not hasattr(video_module, "cli_predict_video"):
            parser.error("glee.video has no cli_predict_video(path, predictor, args, output_dir); update glee")
    names: list[str] | None = None
    category_ids: list[int] | None = None
    if task == "classes":
        try:
            names, category_ids = load_class_names(args.classes)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    elif task == "class-agnostic":
        names = ["object"]
    threshold_given = hasattr(args, "threshold")
    overrides: dict[str, Any] = {"score_mode": args.score_mode, "multi_label": args.multi_label,
                                 "with_masks": not args.no_masks}
    if args.top_k is not None:
        overrides["top_k"] = args.top_k
    if threshold_given:
        overrides["threshold"] = args.threshold
    try:
        PostprocessConfig(**overrides)  # validate early, with the library's message
        model = load_model(args.weights, preset=args.preset, device=args.device)
        short_side = args.short_side or model.cfg.predict_short_side
        pre = PreprocessConfig(short_side=short_side, max_size=args.max_size)
        predictor = ImagePredictor(model, PredictorConfig(preprocess=pre, batch_size=args.batch_size))
        if names is not None:
            predictor.encode_classes(names)  # bad class lists fail before any image is read
    except (OSError, ValueError) as exc:
        parser.error(str(exc))

    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    summary: dict[str, Any] = {"weights": str(args.weights), "task": task, "classes": names, "expression": args.expr,
                               "settings": {**overrides, "short_side": short_side, "max_size": args.max_size},
                               "images": [], "errors": []}
    coco: list[dict[str, Any]] = []
    prompts = list(args.points) + list(args.boxes)

    def write(path: Path, dets: Detections, overlay_prompts: list[VisualPrompt] | None = None) -> None:
        stem = _unique_stem(path, used)
        json_path = out_dir / f"{stem}.json"
        record = dets.to_dict(with_masks=not args.no_masks)
        record["file_name"] = str(path)
        json_path.write_text(json.dumps(record))
        entry = {"file": str(path), "json": json_path.name, "instances": len(dets)}
        if not args.no_overlay:
            image = read_image(path, max_pixels=predictor.config.max_pixels)
            if overlay_prompts:
                image = draw_prompts(image, overlay_prompts)
            from PIL import Image

            Image.fromarray(draw_detections(image, dets)).save(out_dir / f"{stem}.png")
            entry["overlay"] = f"{stem}.png"
        summary["images"].append(entry)
        if task != "prompts":
            coco.extend(dets.to_coco(_image_id(path), category_ids, with_masks=not args.no_masks))

    if task == "prompts":
        from tqdm.auto import tqdm

        for path in tqdm(images, unit="img", desc="predict", disable=args.no_progress or len(images) < 2):
            try:
                dets = predictor.segment(path, prompts, **overrides)
            except ValueError as exc:  # unreadable image, or prompts that do not fit this image
                summary["errors"].append({"file": str(path), "error": str(exc)})
                print(f"glee predict: {path}: {exc}", file=sys.stderr)
                continue
            write(path, dets, prompts)
    else:
        kwargs = {"classes": names} if names is not None else {"expressions": args.expr}
        for path, result in predictor.iter_paths(images, progress=not args.no_progress and len(images) > 1,
                                                 **kwargs, **overrides):
            if isinstance(result, Exception):
                summary["errors"].append({"file": str(path), "error": str(result)})
                print(f"glee predict: {result}", file=sys.stderr)
                continue
            write(path, result)
    status = 0
    for video in videos:
        import glee.video as video_module

        status |= int(video_module.cli_predict_video(video, predictor, args, out_dir) or 0)
    if task != "prompts":
        (out_dir / "coco_results.json").write_text(json.dumps(coco))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    done, failed = len(summary["images"]), len(summary["errors"])
    print(f"glee predict: {done} image(s) written to {out_dir}" + (f", {failed} failed" if failed else ""))
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
