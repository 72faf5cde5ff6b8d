set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 COLUMNS=150
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
B=${BUDGET:-330}  # seconds of training planned; the two timeouts below leave room for set-up within 600 s
read P E < <(python3 scripts/ped2_gpu/plan.py $B 704) || exit 1
echo "plan: pretrain $P epochs, adversarial $E epochs"
S="python3 -m stan_cli.cli train gpu-data/ped2-train --out $OUT/stan-ped2.safetensors --val-clips 2 --precision bf16 --device cuda --seed 0 --checkpoint-every 100000 --checkpoint-dir /tmp/ckpt"
date; timeout $((B * 3 / 10 + 80)) $S --pretrain-epochs $P --epochs 0 2>&1 | grep -v "━" | tail -8
date; timeout $((B * 7 / 10 + 40)) $S --pretrain-epochs $P --epochs $E --resume 2>&1 | grep -v "━" | tail -$((E + 14))
date; cd $OUT && ls -la && split -b 15M stan-ped2.safetensors w.part. && rm stan-ped2.safetensors && ls -la
