#!/usr/bin/env bash
# Fetch, on this machine, the pure-Python wheels the GPU image lacks (diffusers, the reference, and its
# importlib_metadata) into .whl/ (git-ignored), for run_gpu.sh to install there. Run from the repository root.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata
ls .whl
