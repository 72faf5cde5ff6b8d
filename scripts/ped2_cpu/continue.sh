#!/bin/bash
# CPU continuation of a Ped2 generator on the pixel loss alone (the pretrain phase of L_G; the
# discriminator is carried over unchanged), clips 15-16 held out, fp32, as run for the shipped
# weights from 2026-11-29 to 2026-11-30 (see README.md beside this file).
#   bash scripts/ped2_cpu/continue.sh --pretrain-epochs 2            # start
#   bash scripts/ped2_cpu/continue.sh --resume --pretrain-epochs 7   # resume or extend
# RUN: the run folder, kept outside the work tree (checkpoints live beside the output).
# INIT: the weights it starts from (read once, at the start; its history goes into the output).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-$HOME/stan-runs/g-cont}
INIT=${INIT:-weights/stan-ped2.safetensors}
DATA=${DATA:-../shared/data/ped2/training/frames}
mkdir -p "$RUN"
command -v stan > /dev/null || . .venv/bin/activate  # the README's install, when not active
exec stan train "$DATA" --init "$INIT" --epochs 0 --val-clips 2 --seed 0 \
  --checkpoint-every 50 --out "$RUN/stan-ped2-gcont.safetensors" "$@"
