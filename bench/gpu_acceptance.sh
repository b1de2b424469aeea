#!/usr/bin/env bash
# fastgan's GPU acceptance in one call (bench/README.md, "GPU acceptance"): runs
# bench/gpu_acceptance.py from the repository root with the Python that has torch
# ($PYTHON, else python3), passing every argument on, e.g.
#   bash bench/gpu_acceptance.sh --out "$OUT" --commit <sha>
#   bash bench/gpu_acceptance.sh --out /tmp/acceptance --dry-run
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_acceptance.py "$@"
