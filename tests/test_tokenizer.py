"""The offline CLIP tokenizer gives OpenAI CLIP's ids (open_clip's reference tokenizer)."""

from __future__ import annotations

import pytest
import torch

from glee.tokenizer import ClipTokenizer

TEXTS = [
    "a photo of a cat.",
    "Hello, World!! (really?) -- yes; #1 & *2*: 'quoted' \"double\"",
    "the red car on the left",
    "café naïve résumé Ünïcödé",
    "東京タワー 🗼 and emoji 👍🏽",
    "it's 3.14 - don't / x-ray",
    "  multiple   spaces\tand\nnewlines ",
    "&amp; html &lt;tag&gt;",
    "Ｆｕｌｌｗｉｄｔｈ letters",
    "word " * 100,  # longer than 77 tokens
]


def test_ids_equal_open_clip():
    import open_clip

    ref_tok = open_clip.get_tokenizer("ViT-B-32")
    ours = ClipTokenizer.default()
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = ours(TEXTS)
    ref = ref_tok(TEXTS)  # open_clip pads with 0 after EOT
    for i in range(len(TEXTS)):
        n = int(mask[i].sum())
        assert ids[i, :n].tolist() == ref[i, :n].tolist(), TEXTS[i]
        assert ids[i, n - 1] == 49407 and ids[i, 0] == 49406
        assert (ids[i, n:] == 49407).all()  # GLEE pads with EOS
    assert int(mask[-1].sum()) == 77


def test_fixture_tokenizer_folder_matches_default(fixture_dir):
    folder = ClipTokenizer.from_folder(fixture_dir / "tiny_text_encoder")
    default = ClipTokenizer.default()
    texts = ["person", "car", "the red car on the left", "café!"]
    assert torch.equal(folder(texts)[0], default(texts)[0])


def test_longest_padding_and_errors(tmp_path):
    tok = ClipTokenizer.default()
    ids, mask = tok(["dog", "a very small dog"], pad_to_max_length=False)
    assert ids.shape == (2, 6) and mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(TypeError, match="list of strings"):
        tok("dog")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ClipTokenizer.from_folder(tmp_path)
