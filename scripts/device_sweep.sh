#!/usr/bin/env bash
# One device-tool call's share of the CIFAR-10 evaluation sweep behind reports/cifar10/ (the evaluation issue:
# methods hpca, swta, vae, sgd; regimes 1..100 at the best layer; layers 1..5 at 10%; 3 seeds).
#
# The sweep is resumable: finished runs live in reports/cifar10/results.json, which travels with the working
# tree, so each call continues where the last one stopped. Everything it leaves is copied to $OUT/cifar10/
# (without the pre-training checkpoints, too large to carry: a method whose regimes were cut short is
# pre-trained again in the next call). Copy that folder back to reports/cifar10/ here and commit it.
#
# On the device (python3 there has torch, tqdm and matplotlib; no faiss, which the sweep does not need):
#   run(carry=["data/cifar10-jpg.tar.gz"], command="bash scripts/device_sweep.sh 540")
# Arguments: a time budget in seconds (default 540, inside the call's 600 s), then any `hebbir evaluate`
# options, which override the defaults below (the last one given wins), e.g. for a dry run on a CPU:
#   OUT=/tmp/o HEBBIR_DATA_DIR=.test-data bash scripts/device_sweep.sh 300 --device cpu --limit 100 \
#       --methods sgd --seeds 1 --pretrain-epochs 1 --finetune-epochs 1 --out /tmp/sweep-dry
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-540}
shift || true
out_dir=${OUT:?set OUT to the folder that comes back (the device tool sets it)}
data_dir=${HEBBIR_DATA_DIR:-data}
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + budget ))

if [ ! -d "$data_dir/cifar10" ]; then
  "$python" -m retrieval.cli data import cifar10 data/cifar10-jpg.tar.gz --data-dir "$data_dir"
fi

options=(--dataset cifar10 --methods hpca,swta,vae,sgd --seeds 3 --pretrain-epochs 20 --finetune-epochs 20
         --device cuda --data-dir "$data_dir" --out reports/cifar10 "$@")
report=reports/cifar10
for ((i = 0; i < ${#options[@]}; i++)); do   # the folder the sweep really writes (--out may be overridden)
  if [ "${options[$i]}" = --out ]; then report=${options[$((i + 1))]}; fi
done

status=0
for stage in "--regimes 1,2,3,4,5,10,25,100 --layers best" "--regimes 10 --layers 1,2,3,4,5"; do
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 10 ]; then status=124; break; fi
  echo "==> evaluate $stage (${left} s left)"
  # shellcheck disable=SC2086  # $stage is two option pairs on purpose
  timeout "$left" "$python" -m retrieval.cli evaluate $stage "${options[@]}" || { status=$?; break; }
done

if [ -f "$report/results.json" ]; then
  "$python" -m retrieval.cli evaluate --report-only --out "$report" || true
  mkdir -p "$out_dir/cifar10"
  find "$report" -maxdepth 1 -type f -exec cp {} "$out_dir/cifar10/" \;
  "$python" - "$report/results.json" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
print(f"==> {len(runs)} runs finished so far in {sys.argv[1]}")
EOF
fi
if [ "$status" -eq 124 ]; then
  echo "==> time budget used up: call this script again to continue"
  exit 0
fi
exit "$status"
