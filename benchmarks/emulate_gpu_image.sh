#!/usr/bin/env bash
# The test suite under the Python and package versions of a typical GPU machine (the versions
# gpu_instruments.sh was checked against), on the CPU, with the carried wheels installed the way
# gpu_instruments.sh installs them: catches version breakage (Python 3.12, torch 2.11,
# transformers 5.17, numpy 2.5) before GPU time is spent on it.
#   bash benchmarks/emulate_gpu_image.sh [pytest args]
# Needs python3.12 (PYTHON312=...) and .whl (benchmarks/README.md). The venv (VENV, default
# /tmp/gpu_image_venv) takes about 5 GB: PyPI's torch 2.11 is the CUDA build; it runs on the CPU.
# Versions of that machine's environment (read 2026-11); torchvision is left out.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON312:-python3.12}
VENV=${VENV:-/tmp/gpu_image_venv}
SITE=${SITE:-/tmp/gpu_image_site}
if [ ! -x "$VENV/bin/python3" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python3" -m pip install -q torch==2.11.0 transformers==5.17.0 numpy==2.5.2 'pandas==3.0.*' \
      peft scikit-learn scipy tqdm pyyaml tensorboard pytest matplotlib pillow psutil tabulate colorama
fi
rm -rf "$SITE"
"$VENV/bin/python3" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl
cd "$ROOT"
PYTHONPATH="$SITE:$ROOT" "$VENV/bin/python3" -c "import sys, torch, transformers, numpy, pandas; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
PYTHONPATH="$SITE:$ROOT" exec "$VENV/bin/python3" -m pytest -p no:cacheprovider "$@"
