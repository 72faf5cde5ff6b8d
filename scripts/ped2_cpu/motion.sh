#!/bin/bash
# The discriminator phase with pseudo-anomalies (0.2.0; docs/discriminator.md) on Ped2: the shipped
# discriminator trained on, against the shipped generator (frozen), clips 15-16 held out, fp32.
#   bash scripts/ped2_cpu/motion.sh --discriminator-epochs 2            # start
#   bash scripts/ped2_cpu/motion.sh --resume --discriminator-epochs 2   # resume after a stop
# RUN: the run folder, kept outside the work tree. INIT: the weights it starts from (read once).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-$HOME/stan-runs/motion}
INIT=${INIT:-weights/stan-ped2.safetensors}
DATA=${DATA:-../shared/data/ped2/training/frames}
mkdir -p "$RUN"
command -v stan > /dev/null || . .venv/bin/activate  # the README's install, when not active
exec stan train "$DATA" --init "$INIT" --pretrain-epochs 0 --epochs 0 --val-clips 2 --lr 5e-5 \
  --pseudo-anomalies skip,reverse,repeat,patch --pseudo-share 0.75 \
  --seed 0 --checkpoint-every 50 --out "$RUN/stan-ped2-motion.safetensors" "$@"
