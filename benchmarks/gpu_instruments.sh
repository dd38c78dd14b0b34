#!/usr/bin/env bash
# Instruments on one GPU: a training profile (old vs new data/compute path, side by side), then
# MACRec, the MQL4GRec preset, TIGER and LC-Rec on the published semantic IDs; optionally the
# MACRec ablation rows, RecBole built-ins and the beam-search benchmark.
#
# On a fresh GPU machine with no network, from the repository root:
#   .whl/        wheels the image lacks: recbole (no deps), pandas<3 (+pytz, tzdata), faiss-cpu,
#                colorlog, texttable (benchmarks/README.md lists the download command)
#   .gpu_data/Instruments/   a copy of ../shared/data/Instruments
#   bash benchmarks/gpu_instruments.sh OUT_DIR
# Every run writes its json into OUT_DIR as soon as it finishes; log.txt has everything; add them
# to the leaderboard with `python -m recbole_macrec.leaderboard --dataset=Instruments --ingest OUT_DIR/*.json`.
#
# Steps are chosen by environment variables, so that a budget split over several calls resumes at
# model granularity (e.g. MODELS="TIGER LCRec" PROFILE=0 for a second call):
#   MODELS        generative models to train       (default: MACRec MQL4GRec TIGER LCRec)
#   GR_EPOCHS     epochs of MACRec and MQL4GRec    (default 10, equal for both)
#   GR_EPOCHS_TIGER  epochs of TIGER and LC-Rec    (default 20, equal for both)
#   PROFILE=1     benchmarks/profile_training.py for MACRec (old vs new path)   (default 1)
#   ABLATIONS=1   MACRec w/o implicit and w/o explicit (the terms that act on imported codes)
#   BUILTINS=1    SASRec, GRU4Rec, BERT4Rec (BUILTIN_EPOCHS, default 5)
#   BEAM_BENCH=1  our beam search vs HF generate + trie
set -uo pipefail
OUT=${1:-${OUT:-results/gpu_run}}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then   # SKIP_WHEELS=1: an environment that already has them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
SRC=${INSTRUMENTS_SRC:-.gpu_data/Instruments}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee -a "$LOG"
python3 dataset_prep/mql4grec_to_recbole.py --src="$SRC" --out=dataset/Instruments 2>&1 | tail -3 | tee -a "$LOG"
# GPU utilisation while the script runs (one sample per second)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu_utilisation.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

run() {  # run LIMIT_S MODEL ARGS...: one model, bounded in time, its json into $OUT
  local limit=$1 model=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" python3 run_recbole.py --model="$model" --dataset=Instruments --results_dir="$OUT" \
      --show_progress=False --state=INFO "$@" >> "$LOG" 2>&1
  echo "$model $*: exit $? after $(( $(date +%s) - start )) s" | tee -a "$LOG"
  grep -E "epoch [0-9]+ training|evaluating \[|test result" "$LOG" | tail -3
}

GR_ARGS="--train_batch_size=1024 --eval_batch_size=512"
if [ "${PROFILE:-1}" = 1 ]; then
  timeout 150 python3 benchmarks/profile_training.py --model=MACRec --dataset=Instruments --batches=10 \
      --out="$OUT/profile_MACRec_Instruments.json" --set train_batch_size=1024 2>&1 | grep -v Warning | tail -32 | tee -a "$LOG"
fi
E_GR=${GR_EPOCHS:-10}
E_TIGER=${GR_EPOCHS_TIGER:-20}
for model in ${MODELS:-MACRec MQL4GRec TIGER LCRec}; do
  case $model in
    MACRec|MQL4GRec) run 200 "$model" --epochs=$E_GR --eval_step=$E_GR $GR_ARGS ;;
    TIGER|LCRec)     run 150 "$model" --epochs=$E_TIGER --eval_step=$E_TIGER $GR_ARGS ;;   # LC-Rec: no item text offline, seqrec only
    *)               run 200 "$model" $GR_ARGS ;;
  esac
done
if [ "${ABLATIONS:-0}" = 1 ]; then
  for a in wo_implicit wo_explicit; do
    run 200 MACRec --epochs=$E_GR --eval_step=$E_GR $GR_ARGS --config_files="properties/ablation/$a.yaml"
  done
fi
if [ "${BUILTINS:-0}" = 1 ]; then
  E_BUILTIN=${BUILTIN_EPOCHS:-5}
  for m in SASRec GRU4Rec BERT4Rec; do
    run 40 $m --epochs=$E_BUILTIN --eval_step=$E_BUILTIN --train_batch_size=2048
  done
fi
if [ "${BEAM_BENCH:-0}" = 1 ]; then
  python3 benchmarks/beam_search_vs_hf.py --users=1024 --batch=256 --codes="$SRC/Instruments.index_lemb.json" \
      --out="$OUT/beam_search_vs_hf.json" 2>&1 | grep -v Warning | tail -14 | tee -a "$LOG"
fi
ls -la "$OUT"
