#!/usr/bin/env bash
# fastgan's GPU acceptance in one call (bench/README.md, "GPU acceptance"): runs
# bench/gpu_acceptance.py with the Python that has torch ($PYTHON, else python3), passing every
# argument on (the steps themselves run in the repository root), e.g.
#   bash bench/gpu_acceptance.sh --out "$OUT" --commit <sha>
#   bash bench/gpu_acceptance.sh --out /tmp/acceptance --dry-run
set -u
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_acceptance.py" "$@"
