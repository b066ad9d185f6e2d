"""Tiny random components for tests, demos and benchmarks: a byte-level BPE tokenizer, a small Llama, a bridge.

Nothing here downloads anything; everything is built from code in well under a second (the tokenizer is
trained on LISA's own prompt templates, so those encode compactly).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from glee.modeling.threads import single_threaded

# ChatML, the format of SmolLM2-Instruct's template (so the tiny stack exercises the same code path)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Can you segment the {} in this image?",
    "Please segment the {} in this image.",
    "What is {} in this image? Please respond with segmentation mask.",
    "What is {} in this image? Please output segmentation mask.",
    "It is [SEG]. Sure, [SEG]. Sure, it is [SEG]. Sure, the segmentation result is [SEG].",
    "Please output segmentation mask and explain why. The {} is on the left of the red square.",
    "There is a {} and a circle. Which object could hold water? What color is the {}?",
]
_WORDS = ["dog", "cat", "person", "chair", "table", "bottle", "car", "tree", "sky", "road", "square", "circle",
          "triangle", "blue", "green", "yellow", "big", "small", "left", "right", "top", "bottom", "hello", "world"]


@lru_cache(maxsize=4)
def _trained_bpe(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [line.replace("{}", word) for line in _CORPUS for word in _WORDS]
    tok.train_from_iterator(corpus * 2, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A fast byte-level BPE tokenizer (any text encodes) with a ChatML template; eos ``<|im_end|>``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe(vocab_size)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "right"
    return tok


def tiny_llama(vocab_size: int, hidden_size: int = 64, layers: int = 2, tie: bool = False, seed: int = 0,
               max_positions: int = 512) -> Any:
    """A random ``LlamaForCausalLM`` (about 0.1M parameters plus the vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.eval()


def save_tiny_llm(folder: str | Path, tie: bool = False, seed: int = 0, hidden_size: int = 64) -> Path:
    """Write a tiny random Llama + tokenizer to ``folder`` (a source the bridge can reload by path)."""
    folder = Path(folder)
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=hidden_size, tie=tie, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_bridge(llm_folder: str | Path, glee_preset: str = "tiny", image_size: int = 64,
                pooled_tokens_per_side: int = 2, seed: int = 0, quantization: str | None = None,
                **config: Any) -> Any:
    """A :class:`~llm_bridge.model.ReasonSegModel` on a tiny Llama folder and a random tiny GLEE."""
    from glee import GleeConfig, GleeModel
    from llm_bridge.model import BridgeConfig, build_bridge

    cfg = BridgeConfig(
        llm=str(llm_folder),
        glee=GleeConfig.preset(glee_preset).to_dict(),
        image_size=image_size,
        pooled_tokens_per_side=pooled_tokens_per_side,
        **config,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        glee_model = GleeModel(GleeConfig.from_dict(cfg.glee)).eval()
        return build_bridge(cfg, glee_model=glee_model, quantization=quantization)


def _shape_image(rng: Any, height: int, width: int) -> tuple[Any, Any]:
    """A noisy background with one coloured rectangle; returns (RGB uint8 image, rectangle mask)."""
    import numpy as np

    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    y1, x1 = y0 + height // 3, x0 + width // 3
    image[y0:y1, x0:x1] = np.array([200, 40, 40], dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return image, mask


def write_lisa_fixture(root: str | Path, n_images: int = 2, height: int = 48, width: int = 64,
                       seed: int = 0) -> Path:
    """A miniature LISA ``--dataset_dir`` with every format: ReasonSeg (+ explanatory), refCOCO (refs pickle +
    instances.json), ADE20K (label PNGs + class list) and LLaVA-Instruct VQA.  Images are synthetic."""
    import json
    import pickle

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    root = Path(root)
    rng = np.random.default_rng(seed)
    dirs = {
        "reason": root / "reason_seg/ReasonSeg/train",
        "refer_img": root / "refer_seg/images/mscoco/images/train2014",
        "refcoco": root / "refer_seg/refcoco",
        "ade_img": root / "ade20k/images/training",
        "ade_ann": root / "ade20k/annotations/training",
        "coco": root / "coco/train2017",
        "llava": root / "llava_dataset",
        "explain": root / "reason_seg/ReasonSeg/explanatory",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    refs, images, anns, explanations, vqa = [], [], [], [], []
    for i in range(n_images):
        image, mask = _shape_image(rng, height, width)
        name = f"img{i:03d}.jpg"
        for folder in ("reason", "refer_img", "ade_img", "coco"):
            Image.fromarray(image).save(dirs[folder] / name, quality=95)
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        poly = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        shapes = [{"label": "target", "points": poly, "shape_type": "polygon"},
                  {"label": "ignore", "points": [[0, 0], [4, 0], [4, 4], [0, 4]], "shape_type": "polygon"},
                  {"label": "flag", "points": [[1, 1], [2, 1], [2, 2]], "shape_type": "polygon"}]
        anno = {"text": ["the red square", "the object that stands out"], "is_sentence": bool(i % 2), "shapes": shapes}
        (dirs["reason"] / name.replace(".jpg", ".json")).write_text(json.dumps(anno))
        if i == 0:
            explanations.append({"image": name, "query": "what stands out?", "outputs": "The red square is bright."})
        rle = mask_utils.encode(np.asfortranarray(mask))
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "segmentation": [[float(v) for p in poly for v in p]], "area": float(mask.sum()),
                     "iscrowd": 0, "rle_check": rle["counts"].decode()})
        refs.append({"ref_id": i, "ann_id": 100 + i, "image_id": i + 1, "category_id": 1, "split": "train",
                     "sentences": [{"sent": "red square", "sent_id": 2 * i, "tokens": ["red", "square"]},
                                   {"sent": "the bright box", "sent_id": 2 * i + 1, "tokens": ["the", "box"]}]})
        label = (mask * 2 + 1).astype(np.uint8)  # ADE: 0 ignore, 1 "wall" background, 3 -> class 2 "box"
        Image.fromarray(label).save(dirs["ade_ann"] / name.replace(".jpg", ".png"))
        vqa.append({"id": str(i), "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": "The square is red."},
            {"from": "human", "value": "Is it large?"},
            {"from": "gpt", "value": "It covers about a ninth of the image."}]})
    with (dirs["refcoco"] / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f)
    (dirs["refcoco"] / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}))
    (root / "ade20k/ade20k_classes.json").write_text(json.dumps(["wall", "floor", "box"]))
    (dirs["explain"] / "train.json").write_text(json.dumps(explanations))
    (dirs["llava"] / "llava_instruct_150k.json").write_text(json.dumps(vqa))
    return root


_LLM_DIRS: dict[tuple[bool, int], Path] = {}


def tiny_llm_dir(tie: bool = False, hidden_size: int = 64) -> Path:
    """A tiny random Llama folder, written once per process (a temporary directory)."""
    import tempfile

    key = (tie, hidden_size)
    if key not in _LLM_DIRS:
        import atexit
        import shutil

        folder = Path(tempfile.mkdtemp(prefix="glee_tiny_llm_"))
        atexit.register(shutil.rmtree, folder, True)
        _LLM_DIRS[key] = save_tiny_llm(folder, tie=tie, hidden_size=hidden_size)
    return _LLM_DIRS[key]


class ForcedAnswer:
    """Logits processor that makes generation emit ``token_ids`` (then keep emitting the last one).

    ``rows`` limits forcing to some batch rows; the others decode freely.  Works for the bridge's
    :func:`~llm_bridge.generation.generate` and for transformers' ``generate`` (same call signature).
    """

    def __init__(self, token_ids: list[int], prompt_length: int, rows: list[int] | None = None) -> None:
        self.token_ids = list(token_ids)
        self.prompt_length = prompt_length
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        token = self.token_ids[min(step, len(self.token_ids) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        if self.rows is None:
            return forced
        out = scores.clone()
        out[self.rows] = forced[self.rows]
        return out


# ``with single_thread(): ...`` runs torch on one intra-op thread (tiny models: faster and steadier)
single_thread = single_threaded


def image_conversation(question: str, answer: str) -> list[dict[str, str]]:
    """One user turn with the image tag + one assistant turn (LISA's conversation layout)."""
    from llm_bridge.data.conversation import with_image

    return [{"role": "user", "content": with_image(question)}, {"role": "assistant", "content": answer}]


def conversation_batch(model: Any, conversations: list[list[dict[str, str]]]) -> tuple[Any, Any, Any]:
    """Conversations -> right-padded (input_ids, attention_mask, labels) for ``model``'s tokenizer."""
    from llm_bridge.data.conversation import pad_batch, tokenize_conversation

    rows = [tokenize_conversation(model.tokenizer, c) for c in conversations]
    return pad_batch([r[0] for r in rows], model.pad_token_id, labels=[r[1] for r in rows])


def random_image_inputs(model: Any, seed: int = 0) -> dict[str, Any]:
    """Two random RGB images (48x80, 70x50) preprocessed and encoded by ``model``'s tower."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)]
    pixel_values, original, resized = model.preprocess_images(arrays)
    return {"pixel_values": pixel_values, "original": original, "resized": resized,
            "visual": model.encode_images(pixel_values)}
