"""Chat with a bridge: answer text + one mask per [SEG] (+ an overlay PNG).

Python::

    from llm_bridge.chat import BridgeChat
    chat = BridgeChat.from_pretrained("runs/bridge/merged")
    result = chat.ask("street.jpg", "Which object could carry the most people? Please output segmentation mask.")
    result.text, result.masks            # str, bool array [n, H, W]
    result.save_overlay("overlay.png")

Command line (``glee chat`` dispatches to :func:`main`)::

    glee chat --model runs/bridge/merged --image street.jpg "Segment the bus." --out overlay.png
    glee chat --image shapes.jpg "Which shape has the most corners? Please output segmentation mask."  # bundled
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llm_bridge import DEFAULT_BRIDGE_DIR
from llm_bridge.data.conversation import IMAGE_PLACEHOLDER, Message, build_prompt, with_image
from llm_bridge.model import ReasonSegModel

DEFAULT_BRIDGE = DEFAULT_BRIDGE_DIR

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    dtype=np.float32,
)


@dataclass
class ChatResult:
    text: str  # the answer ([SEG] kept, end-of-turn removed)
    masks: np.ndarray  # [n, H, W] bool, one per [SEG] in answer order
    mask_logits: Tensor  # [n, H, W] float32
    image: np.ndarray  # [H, W, 3] uint8 RGB
    token_ids: list[int] = field(default_factory=list)
    finished: bool = True  # False when the answer hit the token limit

    def overlay(self, alpha: float = 0.5) -> Any:
        """The image with each mask blended in its own colour (PIL image)."""
        from PIL import Image

        out = self.image.astype(np.float32)
        for i, mask in enumerate(self.masks):
            color = PALETTE[i % len(PALETTE)]
            out[mask] = (1 - alpha) * out[mask] + alpha * color
        return Image.fromarray(out.clip(0, 255).astype(np.uint8))

    def save_overlay(self, path: str | Path, alpha: float = 0.5) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.overlay(alpha).save(path)
        return path

    def save_masks(self, folder: str | Path, stem: str = "mask") -> list[Path]:
        from PIL import Image

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, mask in enumerate(self.masks):
            p = folder / f"{stem}_{i}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(p)
            paths.append(p)
        return paths


def load_image(image: Any) -> np.ndarray:
    """Path / PIL image / HxWx3 uint8 array -> RGB uint8 array."""
    if image is None:
        raise ValueError("no image given: the bridge segments objects in an image; pass an image path, a PIL "
                         "image or an RGB uint8 array")
    if isinstance(image, (str, Path)):
        from PIL import Image, UnidentifiedImageError

        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except UnidentifiedImageError:
            raise ValueError(f"{path} is not an image PIL can read") from None
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image array must be [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 RGB, got {arr.dtype}")
    return arr


class BridgeChat:
    """Single-image chat around a :class:`ReasonSegModel` (one user turn per :meth:`ask`, optional history)."""

    def __init__(self, model: ReasonSegModel) -> None:
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        quantization: str | None = None) -> BridgeChat:
        return cls(ReasonSegModel.from_pretrained(folder, dtype=dtype, quantization=quantization))

    @torch.no_grad()
    def ask(
        self,
        image: Any,
        prompt: str,
        history: Sequence[Message] | None = None,
        max_new_tokens: int = 256,
        threshold: float = 0.0,
        **generate_kwargs: Any,
    ) -> ChatResult:
        """Answer ``prompt`` about ``image``; each [SEG] in the answer becomes a mask (logits > ``threshold``).

        ``history`` holds earlier turns (the image tag is added to the first user turn automatically).
        An answer without [SEG] is a normal outcome: ``masks`` is then empty.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty; ask a question, e.g. 'Please segment the dog.'")
        array = load_image(image)
        model = self.model
        messages = [dict(m) for m in (history or [])]
        messages.append({"role": "user", "content": prompt})
        if not any(IMAGE_PLACEHOLDER in m["content"] for m in messages if m["role"] == "user"):
            first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first_user] = {"role": "user", "content": with_image(messages[first_user]["content"])}
        ids = build_prompt(model.tokenizer, messages, system_prompt=model.config.system_prompt)
        pixel_values, original, resized = model.preprocess_images([array])
        out = model.generate(torch.tensor([ids]), pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                             **generate_kwargs)
        emb = model.project_seg(out.seg_states, out.visual, out.prepared.image_rows)
        logits = model.decode_masks(emb, out.visual, out.prepared.image_rows, 1, original, resized)[0]
        tokens = out.new_tokens(0)
        text = model.tokenizer.decode([t for t in tokens if t not in model.eos_token_ids], skip_special_tokens=True)
        return ChatResult(
            text=text.strip(),
            masks=(logits > threshold).cpu().numpy(),
            mask_logits=logits.cpu(),
            image=array,
            token_ids=tokens,
            finished=out.finished[0],
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glee chat", description="Ask a GLEE reasoning-segmentation bridge about an "
                                "image; prints the answer and writes one mask per [SEG].")
    p.add_argument("prompt", help="the question, e.g. 'Which object holds water? Please output segmentation mask.'")
    p.add_argument("--image", help="input image (required)")
    p.add_argument("--model", help="bridge folder written by ReasonSegModel.save_pretrained (default: the bundled "
                   "ShapesWorld bridge, SmolLM2-135M + nano GLEE)")
    p.add_argument("--out", help="overlay PNG to write (default: <image stem>_overlay.png next to the image)")
    p.add_argument("--masks-dir", help="also write each mask as <stem>_mask_<i>.png into this folder")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.0, help="mask logit threshold (default 0)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--load-in-4bit", action="store_true", help="NF4 language model (bitsandbytes)")
    quant.add_argument("--load-in-8bit", action="store_true", help="LLM.int8 language model (bitsandbytes)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``glee chat``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.image:
        parser.error("no image given: pass --image PATH (the bridge segments objects in an image)")
    if not args.model:
        if not (DEFAULT_BRIDGE / "bridge_config.json").is_file():
            parser.error(f"no model given and no bundled bridge at {DEFAULT_BRIDGE}: pass --model DIR, a folder "
                         "written by ReasonSegModel.save_pretrained (e.g. the output of llm_bridge.train)")
        args.model = str(DEFAULT_BRIDGE)
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image!r} does not exist")
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model!r} is not a folder")
    quantization = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else None
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    try:
        chat = BridgeChat.from_pretrained(args.model, dtype=dtype, quantization=quantization)
        result = chat.ask(args.image, args.prompt, max_new_tokens=args.max_new_tokens, threshold=args.threshold)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.text)
    stem = Path(args.image).stem
    out = Path(args.out) if args.out else Path(args.image).with_name(f"{stem}_overlay.png")
    result.save_overlay(out)
    print(f"[{len(result.masks)} mask(s)] overlay: {out}")
    if args.masks_dir:
        for path in result.save_masks(args.masks_dir, f"{stem}_mask"):
            print(f"mask: {path}")
    if not result.finished:
        print("note: the answer stopped at --max-new-tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
