"""CPU time of one GLEE model forward + backward in training mode (default: the nano preset at 320x320).

Usage: python scripts/bench_model_train_step.py [--preset nano] [--size 320] [--batch 1] [--threads 2] [--repeats 5]

The backward pass starts from a surrogate loss over every prediction set (logits, boxes, masks of all
layers, as ``all_layer_masks=True`` training produces them); matching and the real loss terms live in
``train/`` and are not timed here.  Text is encoded inside the step (no cache: gradients are on).  Prints a
table with the machine, the 1-minute load average (numbers from a busy machine are not comparable) and both
wall-clock and process CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--size", type=int, default=320, help="square input side (pixels)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    import glee  # noqa: F401  (torchvision shim before transformers)
    from glee import GleeConfig, GleeModel
    from glee.benchmark import machine_summary, peak_rss_mb

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset(args.preset)).train()
    images = torch.randn(args.batch, 3, args.size, args.size)
    names = ["red circle", "blue square", "green triangle", "yellow star", "purple hexagon"]
    expressions = ["the small red circle left of the blue square"] * args.batch

    def step(prompt: dict) -> None:
        out = model(images, all_layer_masks=True, **prompt)
        sets = [{"pred_logits": out.pred_logits, "pred_boxes": out.pred_boxes, "pred_masks": out.pred_masks},
                *out.aux_outputs]
        loss = sum(s["pred_logits"].sigmoid().mean() + s["pred_boxes"].mean() + s["pred_masks"].sigmoid().mean()
                   for s in sets)
        loss.backward()
        model.zero_grad(set_to_none=True)

    rows = []
    prompts = {"5 category names": {"categories": names}, "one expression": {"expressions": expressions}}
    for label, prompt in prompts.items():
        step(prompt)  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            step(prompt)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        rows.append((label, sum(walls) / len(walls), min(walls), sum(cpus) / len(cpus)))

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"machine: {machine_summary()}; load average (1 min) {os.getloadavg()[0]:.1f}")
    print(f"model: GLEE-{args.preset} ({total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable), "
          f"train mode, batch {args.batch} at {args.size}x{args.size}, peak RSS {peak_rss_mb():.0f} MiB")
    print(f"{'prompt':<18} {'wall mean s':>12} {'wall min s':>11} {'CPU s':>8}")
    for label, mean, low, cpu in rows:
        print(f"{label:<18} {mean:>12.3f} {low:>11.3f} {cpu:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
