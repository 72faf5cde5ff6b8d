#!/bin/bash
# One device call on a lent GPU (scripts/gpu/README.md): the Ped1 --time cells of the quality-vs-time
# table from scratch and fine-tuned, and the long discriminator phases of the shipped Ped2 and Ped1
# weights (docs/discriminator.md, run 9). Run from the repository root with gpu-data/ carried;
# everything comes back in $OUT (at most 8 files, 16 MiB each, 64 MiB together):
#   ped1-scratch-T.safetensors.part.aa/ab, ped1-init-T.safetensors.part.aa/ab   (cat them)
#   ped2-d.d.safetensors, ped1-d.d.safetensors   (discriminators: scripts/gpu/pack.py join)
#   csv-PART.tgz (every run's log.csv and val.csv), log.txt
# PART=d (the two discriminator phases, about 5.5 min), PART=cells (the two Ped1 cells, about 3 min)
# or PART=all (default): two calls leave room to rerun the first if it fails. DRY=1 prints the commands.
set -uo pipefail
OUT=${OUT:?the folder the device call brings back}
DEVICE=${DEVICE:-cuda}
T_CELL=${T_CELL:-1m}   # each Ped1 cell
T_D2=${T_D2:-3m}       # the Ped2 discriminator phase
T_D1=${T_D1:-1.5m}     # the Ped1 discriminator phase
RUNS=${RUNS:-/tmp/stan-gpu}
export PYTHONPATH=$PWD/gpu-data/py:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=150
PY=${PY:-python3}
mkdir -p "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi ($DEVICE)"
PART=${PART:-all}
$PY -c "import torch, cv2, stan_cli.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)" || exit 1

# NAME FOOTAGE TIME [stan train options]: the frame cache filled from the H.264 clips, then stan train --time
train() {
  local name=$1 data=$2 t=$3; shift 3
  local cmd=($PY -m stan_cli.cli train "$data" --out "$RUNS/$name.safetensors" --checkpoint-dir "$RUNS/$name.ckpt"
             --time "$t" --device "$DEVICE" --seed 0 --val-clips 2 "$@")
  echo "== $name: ${cmd[*]}"
  [ -n "${DRY:-}" ] && return
  $PY scripts/gpu/footage.py fill "$data" "$RUNS/$name.ckpt" || return
  local start=$SECONDS
  "${cmd[@]}" 2>&1 | grep -v "━"
  echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s of wall time (--time $t)"
}

D_RECIPE=(--time-shares 0,0,1 --lr 5e-5 --pseudo-anomalies skip,repeat,patch --pseudo-share 0.75 --precision bf16)
if [ "$PART" != cells ]; then
  train ped2-d gpu-data/ped2-train "$T_D2" --init weights/stan-ped2.safetensors "${D_RECIPE[@]}"
  train ped1-d gpu-data/ped1-train "$T_D1" --init weights/stan-ped1.safetensors "${D_RECIPE[@]}"
fi
if [ "$PART" != d ]; then
  train "ped1-scratch-$T_CELL" gpu-data/ped1-train "$T_CELL"
  train "ped1-init-$T_CELL" gpu-data/ped1-train "$T_CELL" --init weights/stan-ped2.safetensors
fi
[ -n "${DRY:-}" ] && exit 0

cd "$RUNS" || exit 1
for cell in ped1-scratch-$T_CELL ped1-init-$T_CELL; do
  [ -f $cell.safetensors ] && split -b 15M $cell.safetensors "$OUT/$cell.safetensors.part."
done
for d in ped2 ped1; do
  [ -f $d-d.safetensors ] && $PY "$OLDPWD/scripts/gpu/pack.py" strip $d-d.safetensors "$OLDPWD/weights/stan-$d.safetensors" "$OUT/$d-d.d.safetensors"
done
tar czf "$OUT/csv-$PART.tgz" *.csv 2>/dev/null
sha256sum *.safetensors 2>/dev/null
ls -la "$OUT"; date -u
