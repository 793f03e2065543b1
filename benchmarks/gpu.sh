#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU (at most about 9 minutes):
# 1. the bare training step: pairs/s, peak GPU memory and model FLOP utilisation of the paper's
#    recipe on SmolVLM-256M, SmolVLM-500M and InternVL3.5-1B (real sizes, random weights, bf16),
#    printed as one table (benchmarks/gpu_train.py; its arguments are passed on);
# 2. end to end from JPEG files on disk: `geoloc train`'s loop at batch 10 and 64 (pairs/s and
#    the share of time waiting for data) and `geoloc embed` (tiles/s, one-resize with workers
#    against released without), on SmolVLM-256M (benchmarks/end_to_end.py).
#   bash benchmarks/gpu.sh [--batches 10,64] [--json FILE]
# It uses the machine's own python3 with torch, transformers and peft, and this checkout's src/
# (no install step: GPU machines here reach no package registry).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU present (nvidia-smi finds none); nothing measured." >&2
  exit 3
fi
nvidia-smi -L
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
timeout 360 "$PYTHON" benchmarks/gpu_train.py "$@"
timeout 180 "$PYTHON" benchmarks/end_to_end.py --model random-smolvlm-256m --device cuda --steps 20
