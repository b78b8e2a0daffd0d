#!/usr/bin/env bash
# GPU decoding paths vs the CPU path, then loader and training throughput (fastkd/bench/gpu_check.py).
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: nvJPEG (torch), DALI mixed, FFCV, memory on cuda
#   bash benchmarks/gpu_check.sh --cpu      # the same checks with the CPU equivalents (run by the tests)
# Extra arguments go to the Python module (--photos N, --out DIR). Exit status 1 when a path disagrees.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
if [ "${1:-}" != "--cpu" ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
exec "$PY" -m fastkd.bench.gpu_check "$@"
