#!/usr/bin/env bash
# Issue 16's GPU figures in one command, on a CUDA machine with PyTorch (run from the repository root):
#
#   bash benchmarks/run_gpu.sh                      # all parts: single image, batch, fp8 (bench_fast.py)
#   bash benchmarks/run_gpu.sh --parts batch,fp8    # extra arguments go to bench_fast.py
#
# Installs the wheels in .whl/ (benchmarks/gpu_wheels.sh fetches them) when present, puts src/ on the path, and
# writes the JSON and the log to $OUT when set (the lent device's output folder), else to benchmarks/results/.
set -euo pipefail
root=$(pwd)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root/src:$PYTHONPATH
dest=$(realpath "${OUT:-$root/benchmarks/results}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$dest/fast-gpu.txt" || true
cd "$root/benchmarks"
python3 bench_fast.py --out-dir "$dest" "$@" 2>&1 | tee "$dest/fast.log"
