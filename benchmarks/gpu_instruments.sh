#!/usr/bin/env bash
# Instruments on one GPU: a training profile (old vs new data/compute path, side by side), then
# MACRec, the MQL4GRec preset, TIGER and LC-Rec on the published semantic IDs; optionally the
# MACRec ablation rows, RecBole built-ins and the beam-search benchmark.
#
# On a fresh GPU machine with no network, from the repository root:
#   .whl/        wheels the machine may lack: recbole (no deps), pandas<3 (+pytz, tzdata), colorlog,
#                texttable, optionally faiss-cpu (only the k-means pre-stages need it; these runs
#                import the published IDs); benchmarks/README.md lists the download command
#   .gpu_data/Instruments/   a copy of ../shared/data/Instruments
#   bash benchmarks/gpu_instruments.sh OUT_DIR
# (from another folder too: RecBole's dataset/, log/ and saved/ then go into that folder)
# Every run writes its json (+ per-user ranks) as soon as it finishes; log.txt has everything.
# BUNDLE=1 (one archive to copy back instead of one file per run) keeps the run files in RUNS_DIR
# (default /tmp/gpu_runs) and refreshes OUT_DIR/runs.tgz after every step, so OUT_DIR holds only
# log.txt, gpu_utilisation.csv and runs.tgz. Add them to the leaderboard on your own machine with
# `python -m recbole_macrec.leaderboard --dataset=Instruments --ingest OUT_DIR/runs.tgz` (or OUT_DIR).
#
# Training is budgeted in seconds, not epochs: each budgeted run times a few probe steps and
# trains as many epochs as fit (gr_train_budget_s; at most the yaml's 200), and its partner is
# then trained for the same epochs, so that each pair compares at equal epochs:
#   MODELS           generative models to train, in order      (default: MACRec MQL4GRec TIGER LCRec; "" = none)
#   GR_BUDGET_S      training seconds of MACRec                (default 120); MQL4GRec gets its epochs
#   GR_BUDGET_S_TIGER  training seconds of TIGER               (default 45); LC-Rec gets its epochs
#   GR_EPOCHS, GR_EPOCHS_TIGER   fixed epochs instead of a budget (validated once, at the end)
#   GR_BATCH      rows per optimiser step of the generative models (default 4096, the yaml's: the released step)
#   PROFILE=1     benchmarks/profile_training.py for MACRec (old vs new path, host syncs)  (default 1)
#   ABLATIONS=1   MACRec w/o implicit and w/o explicit (the terms that act on imported codes), MACRec's epochs
#   BUILTINS=1    SASRec, GRU4Rec, BERT4Rec (BUILTIN_EPOCHS, default 5)
#   BEAM_BENCH=1  our beam search vs HF generate + trie
#   DRY_RUN=1     print each model run's arguments instead of running it (checks the schedule);
#                 the PROFILE and BEAM_BENCH steps are skipped
# About 10 minutes fit MACRec + MQL4GRec with the defaults (one H200); a second invocation
# (MODELS="TIGER LCRec" PROFILE=0) the rest. Each step has its own timeout, so the script ends.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-${OUT:-results/gpu_run}}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
if [ "${BUNDLE:-0}" = 1 ]; then RUNS=${RUNS_DIR:-/tmp/gpu_runs}; else RUNS=$OUT; fi
mkdir -p "$RUNS"
bundle() {  # refresh OUT/runs.tgz from the run files (BUNDLE=1)
  [ "${BUNDLE:-0}" = 1 ] || return 0
  tar -czf "$OUT/runs.tgz.part" -C "$RUNS" . && mv "$OUT/runs.tgz.part" "$OUT/runs.tgz"
}
export PYTHONUNBUFFERED=1
if [ -d "$ROOT/.whl" ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then   # SKIP_WHEELS=1: an environment that already has them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$ROOT
else   # keep the caller's path: it may hold the packages
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
SRC=${INSTRUMENTS_SRC:-$ROOT/.gpu_data/Instruments}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee -a "$LOG"
python3 "$ROOT/dataset_prep/mql4grec_to_recbole.py" --src="$SRC" --out=dataset/Instruments 2>&1 | tail -3 | tee -a "$LOG" \
  || { echo "converting $SRC failed (see above); nothing was run" | tee -a "$LOG"; exit 1; }
# GPU utilisation while the script runs (one sample per second)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu_utilisation.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

run() {  # run LIMIT_S MODEL ARGS...: one model, bounded in time, its json into $RUNS
  local limit=$1 model=$2; shift 2
  local start=$(date +%s)
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "would run (limit $limit s): $model $*" | tee -a "$LOG"; return; fi
  timeout "$limit" python3 "$ROOT/run_recbole.py" --model="$model" --dataset=Instruments --results_dir="$RUNS" \
      --show_progress=False --state=INFO "$@" >> "$LOG" 2>&1
  echo "$model $*: exit $? after $(( $(date +%s) - start )) s" | tee -a "$LOG"
  grep -E "training budget|epoch [0-9]+ training|evaluating \[|test result" "$LOG" | tail -3
  bundle
}
trained() {  # trained MODEL: "--epochs=E --eval_step=S" of MODEL's newest run in $RUNS (empty if none)
  python3 - "$RUNS" "$1" <<'PY'
import glob, json, os, sys
runs = sorted(glob.glob(os.path.join(sys.argv[1], f"{sys.argv[2]}-Instruments-*.json")), key=os.path.getmtime)
if runs:
    run = json.load(open(runs[-1]))
    step = (run.get("train_budget") or {}).get("eval_step", run["epochs"])
    print(f"--epochs={run['epochs']} --eval_step={step}")
PY
}
schedule() {  # schedule MODEL BUDGET_S FIXED_EPOCHS PARTNER: epochs args (fixed, the partner's, or a budget)
  local fixed=$3 partner=$4 same=""
  if [ -n "$fixed" ]; then echo "--epochs=$fixed --eval_step=$fixed"; return; fi
  [ -n "$partner" ] && same=$(trained "$partner")
  if [ -n "$same" ]; then echo "$same"; else echo "--gr_train_budget_s=$2"; fi
}

GR_BATCH=${GR_BATCH:-4096}   # rows per optimiser step, in gr_grad_accum micro-batches (the yaml: 4 of 1024)
GR_ARGS="--train_batch_size=$GR_BATCH --eval_batch_size=512"
if [ "${PROFILE:-1}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ]; then
  timeout 150 python3 "$ROOT/benchmarks/profile_training.py" --model=MACRec --dataset=Instruments --batches=10 \
      --out="$RUNS/profile_MACRec_Instruments.json" --set train_batch_size=$GR_BATCH 2>&1 | grep -v Warning | tail -40 | tee -a "$LOG"
  bundle
fi
B_GR=${GR_BUDGET_S:-120}
B_TIGER=${GR_BUDGET_S_TIGER:-45}
for model in ${MODELS-MACRec MQL4GRec TIGER LCRec}; do   # MODELS="" runs none
  case $model in   # the time limit: the budget plus data loading, validation and the test
    MACRec)   run $((B_GR + 150)) MACRec $(schedule MACRec "$B_GR" "${GR_EPOCHS:-}" "") $GR_ARGS ;;
    MQL4GRec) run $((B_GR + 150)) MQL4GRec $(schedule MQL4GRec "$B_GR" "${GR_EPOCHS:-}" MACRec) $GR_ARGS ;;
    TIGER)    run $((B_TIGER + 120)) TIGER $(schedule TIGER "$B_TIGER" "${GR_EPOCHS_TIGER:-}" "") $GR_ARGS ;;
    LCRec)    run $((B_TIGER + 120)) LCRec $(schedule LCRec "$B_TIGER" "${GR_EPOCHS_TIGER:-}" TIGER) $GR_ARGS ;;   # no item text offline: seqrec only
    *)        run 300 "$model" $GR_ARGS ;;
  esac
done
if [ "${ABLATIONS:-0}" = 1 ]; then
  for a in wo_implicit wo_explicit; do
    run $((B_GR + 150)) MACRec $(schedule MACRec "$B_GR" "${GR_EPOCHS:-}" MACRec) $GR_ARGS --config_files="$ROOT/properties/ablation/$a.yaml"
  done
fi
if [ "${BUILTINS:-0}" = 1 ]; then
  E_BUILTIN=${BUILTIN_EPOCHS:-5}
  for m in SASRec GRU4Rec BERT4Rec; do
    run 40 $m --epochs=$E_BUILTIN --eval_step=$E_BUILTIN --train_batch_size=2048
  done
fi
if [ "${BEAM_BENCH:-0}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ]; then
  python3 "$ROOT/benchmarks/beam_search_vs_hf.py" --users=1024 --batch=256 --codes="$SRC/Instruments.index_lemb.json" \
      --out="$RUNS/beam_search_vs_hf.json" 2>&1 | grep -v Warning | tail -14 | tee -a "$LOG"
  bundle
fi
bundle
python3 - "$RUNS" <<'PY' 2>&1 | tee -a "$LOG"
import glob, json, os, statistics, sys
print("model | epochs | s/epoch (median) | probe's s/epoch | test s | NDCG@10 | HR@10")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*-Instruments-*.json")), key=os.path.getmtime):
    run = json.load(open(path))
    t = run.get("timing") or {}
    epoch = statistics.median(t["train_epoch_s"]) if t.get("train_epoch_s") else float("nan")
    probe = (run.get("train_budget") or {}).get("estimated_epoch_s", float("nan"))
    print(f"{run.get('label', run['model'])} | {run.get('epochs_run', '?')}/{run['epochs']} | {epoch:.2f} | "
          f"{probe:.2f} | {t.get('test_s') or float('nan'):.2f} | {run['test_result']['ndcg@10']:.4f} | {run['test_result']['hit@10']:.4f}")
PY
ls -la "$OUT" "$RUNS"
