#!/bin/bash
# Here, after a device call of scripts/gpu/run.sh: its weights files put together from what came back
# (FROM: the call's files_at folder) into RUNS (default ~/stan-runs/gpu), each checked against the
# sha256 the GPU machine printed (log.txt). Files already in RUNS are left as they are.
set -euo pipefail
FROM=$(realpath "${1:?the folder the device call brought back}")
RUNS=${RUNS:-$HOME/stan-runs/gpu}
cd "$(dirname "$0")/../.."
command -v stan > /dev/null || . .venv/bin/activate
mkdir -p "$RUNS"
RUNS=$(realpath "$RUNS")
log="$FROM/log.txt"
# SHA FILE: the sha256 the GPU printed for FILE's name
printed() { grep -E "^[0-9a-f]{64}  .*/$1\$" "$log" | tail -1 | cut -d' ' -f1; }

shopt -s nullglob
for first in "$FROM"/*.safetensors.part.aa; do
  name=$(basename "$first" .part.aa)
  [ -e "$RUNS/$name" ] && { echo "$RUNS/$name: there already, left as it is"; continue; }
  cat "$FROM/$name".part.* > "$RUNS/$name.tmp"
  [ "$(sha256sum < "$RUNS/$name.tmp" | cut -d' ' -f1)" = "$(printed "$name")" ] || { echo "$name: sha256 is not the GPU's"; exit 1; }
  mv "$RUNS/$name.tmp" "$RUNS/$name"
  echo "$RUNS/$name: put together, sha256 as on the GPU"
done
for part in "$FROM"/*.d.safetensors; do
  name=$(basename "$part" .d.safetensors)
  [ "$(sha256sum < "$part" | cut -d' ' -f1)" = "$(printed "$name.d.safetensors")" ] || { echo "$part: sha256 is not the GPU's"; exit 1; }
  camera=${name%%-*}  # ped2-d -> ped2
  [ -e "$RUNS/$name.safetensors" ] && { echo "$RUNS/$name.safetensors: there already, left as it is"; continue; }
  python scripts/gpu/pack.py join "$part" "weights/stan-$camera.safetensors" "$RUNS/$name.safetensors"
  echo "$RUNS/$name.safetensors: the discriminator joined to weights/stan-$camera.safetensors's generator"
done
for t in "$FROM"/csv-*.tgz; do tar xzf "$t" -C "$RUNS"; done
cat "$log" >> "$RUNS/log.txt"
for f in "$RUNS"/*.safetensors; do python -c "from stan_cli.weights import load_weights as l; print('$f', l('$f').name)"; done
