#!/bin/bash
# The discriminator phase of `stan train` on Ped2 (not in the paper; README "The shipped weights"):
# a fresh discriminator alone on L_D against the frozen generator of INIT, clips 15-16 held out, fp32.
#   bash scripts/ped2_cpu/discriminator.sh --discriminator-epochs 2            # start
#   bash scripts/ped2_cpu/discriminator.sh --resume --discriminator-epochs 2   # resume after a stop
# RUN: the run folder, kept outside the work tree (checkpoints live beside the output).
# INIT: the weights whose generator it trains against (read once, at the start).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-$HOME/stan-runs/d-phase}
INIT=${INIT:-weights/stan-ped2.safetensors}
DATA=${DATA:-../shared/data/ped2/training/frames}
mkdir -p "$RUN"
command -v stan > /dev/null || . .venv/bin/activate  # the README's install, when not active
exec stan train "$DATA" --init "$INIT" --reset-discriminator --pretrain-epochs 0 --epochs 0 --val-clips 2 \
  --seed 0 --checkpoint-every 50 --out "$RUN/stan-ped2-d.safetensors" "$@"
