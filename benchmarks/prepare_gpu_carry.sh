#!/usr/bin/env bash
# On a machine that reaches PyPI, once: the two git-ignored folders that a GPU machine without
# network needs: [".whl", ".gpu_data"], copied into its checkout.
#   .whl/                     wheels such a machine may lack, for Python 3.12 (FAISS=1 adds faiss-cpu,
#                             19 MB, which only the k-means pre-stages use)
#   .gpu_data/Instruments/    a copy of ../shared/data/Instruments (INSTRUMENTS_SRC=...)
#   bash benchmarks/prepare_gpu_carry.sh
# Ends with their size; CARRY_LIMIT_MIB=N fails above N MiB (for a transfer with a size limit).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SRC=${INSTRUMENTS_SRC:-$ROOT/../shared/data/Instruments}
[ -f "$SRC/Instruments.inter.json" ] || { echo "no Instruments.inter.json in $SRC (set INSTRUMENTS_SRC)"; exit 1; }
for folder in .whl .gpu_data; do
  grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done
WHEELS="recbole==1.2.1 pandas==2.3.3 pytz tzdata colorlog==4.7.2 texttable"
[ "${FAISS:-0}" = 1 ] && WHEELS="$WHEELS faiss-cpu"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 -d .whl $WHEELS
rm -rf .gpu_data && mkdir .gpu_data && cp -r "$SRC" .gpu_data/Instruments
ls .whl
du -sh --total .whl .gpu_data
total_kib=$(du -sk --total .whl .gpu_data | tail -1 | cut -f1)
if [ -n "${CARRY_LIMIT_MIB:-}" ] && [ "$total_kib" -ge $((CARRY_LIMIT_MIB * 1024)) ]; then
  echo "the two folders take ${total_kib} KiB, over ${CARRY_LIMIT_MIB} MiB: leave faiss out (FAISS=0)"; exit 1
fi
