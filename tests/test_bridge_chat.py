"""Chat API and `glee chat` command line, including bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llm_bridge.chat import BridgeChat, load_image, main
from llm_bridge.testing import ForcedAnswer, tiny_bridge, tiny_llm_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier





@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bridge")
    tiny_bridge(tiny_llm_dir()).save_pretrained(folder / "model")
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "street.png")
    return folder


def test_chat_api_returns_text_masks_and_overlay(saved, tmp_path):
    chat = BridgeChat.from_pretrained(saved / "model")
    tok = chat.model.tokenizer
    script = tok("Sure, the cat is [SEG] and the dog is [SEG].", add_special_tokens=False)["input_ids"]
    script.append(tok.eos_token_id)

    class ForceAfterPrompt(ForcedAnswer):  # the prompt length is only known inside ask()
        def __call__(self, ids, scores):
            self.prompt_length = self.prompt_length or ids.shape[1]
            return super().__call__(ids, scores)

    result = chat.ask(saved / "street.png", "Segment the cat and the dog.", max_new_tokens=30,
                      logits_processor=ForceAfterPrompt(script, 0))
    assert result.text == "Sure, the cat is [SEG] and the dog is [SEG]."
    assert result.masks.shape == (2, 40, 56) and result.masks.dtype == bool and result.finished
    path = result.save_overlay(tmp_path / "overlay.png")
    assert Image.open(path).size == (56, 40)
    assert len(result.save_masks(tmp_path / "masks")) == 2
    # an answer without [SEG] is a normal outcome
    plain = chat.ask(saved / "street.png", "What is this?", max_new_tokens=4, suppress_seg=True)
    assert plain.masks.shape == (0, 40, 56)
    assert np.array_equal(np.asarray(plain.overlay()), plain.image)


def test_chat_bad_input(saved):
    chat = BridgeChat.from_pretrained(saved / "model")
    with pytest.raises(ValueError, match="no image given"):
        chat.ask(None, "Segment the dog.")
    with pytest.raises(ValueError, match="prompt is empty"):
        chat.ask(saved / "street.png", "  ")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(saved / "missing.png")
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))


def test_glee_chat_command(saved, tmp_path, capsys):
    out = tmp_path / "o.png"
    status = main(["--model", str(saved / "model"), "--image", str(saved / "street.png"), "--out", str(out),
                   "--max-new-tokens", "3", "--masks-dir", str(tmp_path / "m"), "Please segment the dog."])
    assert status == 0 and out.exists()
    assert "mask(s)] overlay:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["--model", str(saved / "model"), "Segment the dog."])
    assert err.value.code == 2 and "no image given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(saved / "model"), "--image", str(tmp_path / "nope.jpg"), "x"])
    assert "does not exist" in capsys.readouterr().err
    long_prompt = "segment the dog " * 400
    assert main(["--model", str(saved / "model"), "--image", str(saved / "street.png"), long_prompt]) == 1
    assert "context holds 512" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1
