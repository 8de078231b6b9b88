#!/usr/bin/env bash
# The wheelhouse on a stand-in for a GPU node: a fresh venv of PYTHON that gets, from the
# package index, only what the node is assumed to have (torch and the rest of
# tools/wheelhouse.py's PREINSTALLED), then `make install-offline` with no index, then the
# debug config end to end and `pytest -m gpu` (collected, and skipped without CUDA).
#
#   bash tools/offline_check.sh PYTHON WHEEL_DIR VENV_DIR
#
# VENV_DIR is reused when it already has torch (the index step is then skipped). Every step's
# time is printed; the exit status is the first failing step's.
set -euo pipefail
python=${1:?usage: bash tools/offline_check.sh PYTHON WHEEL_DIR VENV_DIR}
wheels=$(cd "${2:?WHEEL_DIR}" && pwd)
venv=${3:?VENV_DIR}
cd "$(dirname "$0")/.."
step() {
    local name=$1 started
    shift
    started=$(date +%s)
    echo "[offline_check] $name"
    "$@"
    echo "[offline_check] $name: ok in $(($(date +%s) - started)) s"
}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    step "fresh venv with the node's packages from the index" bash -c "
        '$python' -m venv '$venv' &&
        '$venv/bin/python' -m pip install --quiet torch==2.13.0 numpy pyarrow tensorboard \
            pandas grpcio aiohttp protobuf msgpack"
fi
"$venv/bin/python" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("ray", "pyomo", "highspy") if importlib.util.find_spec(m)]
if missing:
    sys.exit(f"the venv already has {missing}: not a stand-in for a node without them")
print("node stand-in: torch present; ray, pyomo, highspy absent")
EOF
step "make install-offline (no index)" env PIP_CONFIG_FILE=/dev/null make install-offline WHEELS="$wheels" PYTHON="$venv/bin/python"
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
step "the debug config end to end" env CASCADEVAE_CACHE="$runs/cache" "$venv/bin/python" \
    -m launch.train --config configs/debug.yaml --set train.storage_path="$runs"
step "pytest -m gpu" "$venv/bin/python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
"$venv/bin/python" -c "import sys, torch; print(f'Python {sys.version.split()[0]}, torch {torch.__version__}')"
du -sh "$wheels" | sed 's/^/[offline_check] wheelhouse: /'
