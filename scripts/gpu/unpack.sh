#!/bin/bash
# Here, after the device call: the weights files of scripts/gpu/run.sh put together from what came
# back (FROM: the call's files_at folder) into RUNS (default ~/stan-runs/gpu), checked against the
# sha256 the GPU machine printed (log.txt).
set -euo pipefail
FROM=${1:?the folder the device call brought back}
RUNS=${RUNS:-$HOME/stan-runs/gpu}
cd "$(dirname "$0")/../.."
command -v stan > /dev/null || . .venv/bin/activate
mkdir -p "$RUNS"
for first in "$FROM"/*.safetensors.part.aa; do
  [ -e "$first" ] || continue
  name=$(basename "$first" .part.aa)
  cat "$FROM/$name".part.* > "$RUNS/$name"
done
for d in ped2 ped1; do
  [ -f "$FROM/$d-d.d.safetensors" ] && python scripts/gpu/pack.py join "$FROM/$d-d.d.safetensors" "weights/stan-$d.safetensors" "$RUNS/$d-d.safetensors"
done
for t in "$FROM"/csv-*.tgz; do tar xzf "$t" -C "$RUNS"; done
cat "$FROM/log.txt" >> "$RUNS/log.txt"
(cd "$RUNS" && shopt -s nullglob && for f in ped1-scratch-*.safetensors ped1-init-*.safetensors; do
  [ -e "$f" ] || continue
  grep -q "$(sha256sum "$f" | cut -d' ' -f1)" log.txt && echo "$f: sha256 as on the GPU" || { echo "$f: sha256 differs from the GPU's"; exit 1; }
done)
for f in "$RUNS"/*.safetensors; do python -c "from stan_cli.weights import load_weights as l; w = l('$f'); print('$f', w.name)"; done
