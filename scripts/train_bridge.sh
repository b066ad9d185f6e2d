#!/usr/bin/env bash
# Train the GLEE reasoning-segmentation bridge with DeepSpeed (LISA's recipe: ZeRO-2, bf16, LoRA r8/a16 on
# q_proj/v_proj, lr 3e-4, batch 2 x accumulation 10, 5000 steps, CE 1 / BCE 2 / DICE 0.5).
#
#   GLEE=/path/to/glee_folder DATA=/path/to/lisa_dataset scripts/train_bridge.sh [extra llm_bridge.train flags]
#
# Environment: GPUS (processes; default: all visible GPUs, 1 on CPU), ZERO (2 or 3; default 2), PORT (default
# 24999), LLM (default smollm2), OUT (default runs/bridge), STEPS, BATCH, ACCUM.  On a CPU-only machine DeepSpeed
# runs on its CPU accelerator with gloo; the plain PyTorch fallback is `python -m llm_bridge.train` without
# --deepspeed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${GLEE:?set GLEE to a GLEE save_pretrained folder}"
: "${DATA:?set DATA to a LISA-style dataset folder (reason_seg/, refer_seg/, ade20k/, llava_dataset/, coco/ ...)}"
ZERO="${ZERO:-2}"
PORT="${PORT:-24999}"
LLM="${LLM:-smollm2}"
OUT="${OUT:-runs/bridge}"
STEPS="${STEPS:-5000}"
BATCH="${BATCH:-2}"
ACCUM="${ACCUM:-10}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPUS="${GPUS:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
else
  export DS_ACCELERATOR=cpu
  GPUS="${GPUS:-1}"
fi

exec deepspeed --num_gpus "${GPUS}" --master_port "${PORT}" --module llm_bridge.train \
  --deepspeed "${here}/llm_bridge/configs/ds_zero${ZERO}_bf16.json" \
  --output-dir "${OUT}" --llm "${LLM}" --glee "${GLEE}" --dataset-dir "${DATA}" \
  --dataset "sem_seg||refer_seg||vqa||reason_seg" --sample-rates "9,3,3,1" \
  --steps "${STEPS}" --batch-size "${BATCH}" --grad-accum "${ACCUM}" --lr 3e-4 --warmup-steps 100 \
  --precision bf16 --merge "$@"
