#!/usr/bin/env bash
# Instruments on one GPU, in one call: TIGER, LC-Rec, the MQL4GRec preset and MACRec on the published
# semantic IDs, then RecBole built-ins on the same split; plus the beam-search benchmark.
#
# On a fresh GPU machine with no network, from the repository root:
#   .whl/        wheels the image lacks: recbole (no deps), pandas<3 (+pytz, tzdata), faiss-cpu,
#                colorlog, texttable (benchmarks/README.md lists the download command)
#   .gpu_data/Instruments/   a copy of ../shared/data/Instruments
#   bash benchmarks/gpu_instruments.sh OUT_DIR
# Every run writes its json into OUT_DIR as soon as it finishes; log.txt has everything.
# Epoch budgets are sized to finish inside one 10-minute call on an H100/H200; override them with
# GR_EPOCHS_TIGER, GR_EPOCHS (MACRec and MQL4GRec, equal) and BUILTIN_EPOCHS.
set -uo pipefail
OUT=${1:-${OUT:-results/gpu_run}}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
SRC=${INSTRUMENTS_SRC:-.gpu_data/Instruments}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee -a "$LOG"
python3 dataset_prep/mql4grec_to_recbole.py --src="$SRC" --out=dataset/Instruments 2>&1 | tail -3 | tee -a "$LOG"

run() {  # run LIMIT_S MODEL ARGS...: one model, bounded in time, its json into $OUT
  local limit=$1 model=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" python3 run_recbole.py --model="$model" --dataset=Instruments --results_dir="$OUT" \
      --show_progress=False --state=INFO "$@" >> "$LOG" 2>&1
  echo "$model: exit $? after $(( $(date +%s) - start )) s" | tee -a "$LOG"
  grep -E "epoch [0-9]+ training|evaluating \[|test result" "$LOG" | tail -4
}

python3 benchmarks/beam_search_vs_hf.py --users=1024 --batch=256 --codes="$SRC/Instruments.index_lemb.json" \
    --out="$OUT/beam_search_vs_hf.json" 2>&1 | grep -v Warning | tail -14 | tee -a "$LOG"

E_TIGER=${GR_EPOCHS_TIGER:-10}
E_GR=${GR_EPOCHS:-3}
E_BUILTIN=${BUILTIN_EPOCHS:-5}
GR_ARGS="--train_batch_size=1024 --eval_batch_size=512"
run 120 TIGER --epochs=$E_TIGER --eval_step=$E_TIGER $GR_ARGS
run 100 LCRec --epochs=$E_TIGER --eval_step=$E_TIGER $GR_ARGS   # no item text offline: seqrec only
run 150 MACRec --epochs=$E_GR --eval_step=$E_GR $GR_ARGS
run 150 MQL4GRec --epochs=$E_GR --eval_step=$E_GR $GR_ARGS
for m in SASRec GRU4Rec BERT4Rec; do
  run 40 $m --epochs=$E_BUILTIN --eval_step=$E_BUILTIN --train_batch_size=2048
done
ls -la "$OUT"
