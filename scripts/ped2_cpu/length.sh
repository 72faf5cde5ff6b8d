#!/bin/bash
# Run 9 on the CPU (docs/discriminator.md, "Run 9 on this CPU"): the shipped discriminator of one camera
# trained on against its frozen generator for hours (the recipe of runs 2 to 6, fp32), clips held out as
# when it was shipped. Run it again after a stop: it resumes with what is left of the --time budget.
#   bash scripts/ped2_cpu/length.sh ped1     # --time 2h
#   bash scripts/ped2_cpu/length.sh ped2     # --time 4h
# RUNS: where the runs go, outside the work tree. TIME: another budget. SHARED: the folder with data/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cam=${1:?ped1 or ped2}
case $cam in
  ped1) budget=${TIME:-2h} ;;
  ped2) budget=${TIME:-4h} ;;
  *) echo "length.sh: camera '$cam' is not ped1 or ped2" >&2; exit 2 ;;
esac
SHARED=${SHARED:-../shared}
RUNS=${RUNS:-$HOME/stan-runs/run9-cpu}
mkdir -p "$RUNS"
out=$RUNS/$cam-d.safetensors
command -v stan > /dev/null || . .venv/bin/activate  # the README's install, when not active
if [ -f "$out" ]; then echo "length.sh: $out is there: the $cam run has finished" >&2; exit 0; fi
if [ -f "$out.ckpt/last.safetensors" ]; then   # a stopped run goes on with what is left of its budget
  exec stan train "$SHARED/data/$cam/training/frames" --out "$out" --device cpu --resume
fi
exec stan train "$SHARED/data/$cam/training/frames" --init "weights/stan-$cam.safetensors" \
  --time "$budget" --time-shares 0,0,1 --lr 5e-5 --pseudo-anomalies skip,repeat,patch --pseudo-share 0.75 \
  --device cpu --precision fp32 --seed 0 --val-clips 2 --checkpoint-every 50 --out "$out"
