#!/bin/bash
# One device call on a lent GPU (scripts/gpu/README.md): the long discriminator phases of the shipped
# Ped2 and Ped1 weights (docs/discriminator.md, run 9) and the Ped1 --time cells of the quality-vs-time
# table, from scratch and fine-tuned (docs/training.md, "On a GPU"). Run from the repository root
# with gpu-data/ carried; what comes back is in $OUT (at most 8 files, 16 MiB each, 64 MiB together):
#   ped2-d.d.safetensors, ped1-d.d.safetensors   (discriminators: scripts/gpu/pack.py join)
#   ped1-scratch-T.safetensors.part.aa/ab, ped1-init-T.safetensors.part.aa/ab   (cat them)
#   csv-PART.tgz (every run's log.csv and val.csv), log.txt
# Each run's weights are packed into $OUT as soon as it ends, so a call stopped at its limit still
# brings back the runs it finished.
# PART=d (the two discriminator phases, about 5.5 min: 2 files + 2) or PART=cells (the two Ped1
# cells, about 3 min: 4 files + 2): two calls leave room to rerun the first if it fails. PART=all
# does both in one call (8 files). DRY=1 prints the commands; DEVICE=cpu with short T_* runs here.
set -uo pipefail
OUT=${OUT:?the folder the device call brings back}
DEVICE=${DEVICE:-cuda}
PART=${PART:-all}
T_CELL=${T_CELL:-1m}   # each Ped1 cell
T_D2=${T_D2:-3m}       # the Ped2 discriminator phase
T_D1=${T_D1:-1.5m}     # the Ped1 discriminator phase
RUNS=${RUNS:-/tmp/stan-gpu}
ROOT=$PWD
export PYTHONPATH=$ROOT/gpu-data/py:$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=150
PY=${PY:-python3}
mkdir -p "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
finish() {  # the log's last lines reach the file before the call returns
  exec >&- 2>&-
  wait "$TEE"
}
trap finish EXIT
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi ($DEVICE)"
if [ -z "${DRY:-}" ]; then
  $PY -c "import torch, cv2, stan_cli.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)" || exit 1
  # every clip decodes here to the frames encode checked, before any GPU time goes to training
  [ "$PART" = cells ] || $PY scripts/gpu/footage.py check gpu-data/ped2-train || exit 1
  $PY scripts/gpu/footage.py check gpu-data/ped1-train || exit 1
fi

# NAME FOOTAGE TIME INIT|- [stan train options]: a fresh run (an earlier try's files removed), the frame
# cache filled from the H.264 clips, stan train --time, then its weights packed into $OUT
train() {
  local name=$1 data=$2 t=$3 init=$4; shift 4
  local cmd=($PY -m stan_cli.cli train "$data" --out "$RUNS/$name.safetensors" --checkpoint-dir "$RUNS/$name.ckpt"
             --time "$t" --device "$DEVICE" --seed 0 --val-clips 2)
  [ "$init" = - ] || cmd+=(--init "$init")
  cmd+=("$@")
  echo "== $name: ${cmd[*]}"
  [ -n "${DRY:-}" ] && return
  rm -rf "$RUNS/$name".*
  $PY scripts/gpu/footage.py fill "$data" "$RUNS/$name.ckpt" || return
  local start=$SECONDS
  "${cmd[@]}" 2>&1 | grep --line-buffered -v "━"
  echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s of wall time (--time $t)"
  local w="$RUNS/$name.safetensors"
  [ -f "$w" ] || return
  sha256sum "$w"
  # a discriminator phase (NAME-d) leaves its generator as its --init file's: only the discriminator travels
  if [[ $name != *-d ]] || ! $PY scripts/gpu/pack.py strip "$w" "$init" "$OUT/$name.d.safetensors"; then
    split -b 15M "$w" "$OUT/$name.safetensors.part."
  else
    sha256sum "$OUT/$name.d.safetensors"
  fi
}

D_RECIPE=(--time-shares 0,0,1 --lr 5e-5 --pseudo-anomalies skip,repeat,patch --pseudo-share 0.75 --precision bf16)
if [ "$PART" != cells ]; then
  train ped2-d gpu-data/ped2-train "$T_D2" weights/stan-ped2.safetensors "${D_RECIPE[@]}"
  train ped1-d gpu-data/ped1-train "$T_D1" weights/stan-ped1.safetensors "${D_RECIPE[@]}"
fi
if [ "$PART" != d ]; then
  train "ped1-scratch-$T_CELL" gpu-data/ped1-train "$T_CELL" -
  train "ped1-init-$T_CELL" gpu-data/ped1-train "$T_CELL" weights/stan-ped2.safetensors
fi
[ -n "${DRY:-}" ] && exit 0
csvs=$(cd "$RUNS" && ls *.csv *.ckpt/*.csv 2>/dev/null)
[ -z "$csvs" ] || (cd "$RUNS" && tar czf "$OUT/csv-$PART.tgz" $csvs)
ls -la "$OUT"; date -u
