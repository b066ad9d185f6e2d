"""GLEE training: matcher and criterion, denoising queries, data readers and the multi-dataset sampler,
ShapesWorld, and one training loop that runs on plain PyTorch or DeepSpeed ZeRO 1/2/3.

Entry point: ``python -m train --config train/configs/<recipe>.yaml`` (see ``train/cli.py``).
"""

import glee  # noqa: F401  (installs the torchvision shim before train.* imports torchvision)
