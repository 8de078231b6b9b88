#!/usr/bin/env bash
# One prepared GPU session, at most ~9 minutes on one H100/H200 with 16 CPU cores:
#
#   bash benchmarks/gpu.sh OUT_DIR [WHEEL_DIR]
#
# 1. installs what is missing next to the CUDA torch already installed, never torch itself:
#    when Ray, Pyomo or HiGHS is missing and WHEEL_DIR (default: ./wheels, built by
#    `make wheelhouse`) holds a wheelhouse, its pinned set with no index (as
#    `make install-offline`); otherwise the missing packages from PyPI (a node with internet);
#    OUT_DIR/install.json says which;
# 2. runs the tests marked `gpu`;
# 3. measures steps/s of the plain loop (the worker's step pipeline, solver in-process; needs
#    only pyomo and highspy) and, where Ray imports, of the system, before and in the discrete
#    stage; the plain loop in the discrete stage on each rung of the device switches (default,
#    +data_on_device, +metrics_on_device, +fused Adam, +compile, +bf16); then total steps/s of
#    4 and 10 trials sharing the GPU;
# 4. trains configs/dsprites.yaml for as many steps as the time left allows, with its
#    evaluation at the end;
# 5. writes OUT_DIR/figures.json (every figure) and one log per part.
# Each part has its own time limit; a part that fails or runs out of time is recorded as such
# and the next one runs. GPU_BUDGET_S (default 540) is the whole budget in seconds, the
# install included; GPU_PARTS (default: all) names the parts to run, e.g. "install tests".
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
PY=${PYTHON:-python3}
budget=${GPU_BUDGET_S:-540}
started=$(date +%s)
left() { echo $((budget - ($(date +%s) - started))); }
status() { echo "{\"part\": \"$1\", \"exit_status\": $2}" > "$out/$1.status.json"; }

only=${GPU_PARTS:-}
part() {  # part NAME LIMIT_S COMMAND...: run with a limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then
        echo "[gpu.sh] $name: not in GPU_PARTS"
        return 0
    fi
    local remaining
    remaining=$(left)
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    if [ "$limit" -le 5 ]; then
        echo "[gpu.sh] $name: skipped, no time left"
        status "$name" 124
        return 124
    fi
    echo "[gpu.sh] $name (at most ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    status "$name" "$rc"
    tail -n 2 "$out/$name.log"
    return $rc
}

# ---- 1. what is missing (module:package)
[ -z "$wheels" ] && [ -f wheels/requirements.txt ] && wheels=wheels
missing=()
for pair in ray:"ray[default,train,tune]" pyomo:pyomo highspy:highspy pyarrow:pyarrow \
            yaml:pyyaml pydantic:pydantic filelock:filelock tensorboard:tensorboard PIL:pillow \
            pytest:pytest pytest_timeout:pytest-timeout; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
core_missing=0
for module in ray pyomo highspy; do
    "$PY" -c "import $module" 2>/dev/null || core_missing=1
done
source=none
if [ "$core_missing" = 1 ] && [ -n "$wheels" ] && [ -f "$wheels/requirements.txt" ]; then
    source=wheelhouse
    part install 150 "$PY" -m pip install --no-index --find-links "$wheels" --no-deps \
        -r "$wheels/requirements.txt"
elif [ ${#missing[@]} -gt 0 ]; then
    source=pypi
    part install 150 "$PY" -m pip install "${missing[@]}"
fi
printf '{"source": "%s", "wheel_dir": "%s", "missing_before": "%s"}\n' \
    "$source" "$wheels" "${missing[*]}" > "$out/install.json"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || {
    echo "[gpu.sh] torch sees no CUDA device: the figures below are CPU figures"
}
have_ray=0
"$PY" -c "import ray.train, ray.tune" 2>/dev/null && have_ray=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---- 2. the gpu tests
part tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

# ---- 3. steps/s
bench() { part "$1" "$2" "$PY" benchmarks/gpu_bench.py "${@:3}" --out "$out/$1.json"; }
bench plain_pre 45 plain --stage pre --steps 3000
bench plain_discrete 45 plain --stage discrete --steps 3000
bench switches_discrete 150 switches --stage discrete --steps 1500 --warmup 200
if [ "$have_ray" = 1 ]; then
    bench system_pre 75 system --stage pre --steps 3000
    bench system_discrete 75 system --stage discrete --steps 3000
    bench trials_4 80 trials --count 4 --steps 1500
    bench trials_10 90 trials --count 10 --steps 1000
else
    echo "[gpu.sh] Ray does not import: only the Ray-free parts ran"
fi

# ---- 4. the paper's config for the time left (the evaluation at the end needs ~40 s)
if [ "$have_ray" = 1 ]; then
    rate=$("$PY" -c "import json; print(json.load(open('$out/system_discrete.json'))['steps_per_s'])" 2>/dev/null || echo 0)
    steps=$("$PY" -c "print(max(0, int(float('$rate') * ($(left) - 70) * 0.8) // 1000 * 1000))")
    if [ "$steps" -ge 1000 ]; then
        part dsprites $(($(left) - 5)) "$PY" -m launch.train --config configs/dsprites.yaml \
            --set train.num_steps="$steps" --set train.use_gpu=true \
            --set train.storage_path="$out/runs" --set train.eval_every=0 \
            --set train.checkpoint_every="$steps" --set train.log_every=1000
    else
        echo "[gpu.sh] dsprites: skipped (rate $rate steps/s, $(left) s left)"
    fi
fi

# ---- 5. one JSON of figures
"$PY" - "$out" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
figures = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
           if p.name != "figures.json"}
(out / "figures.json").write_text(json.dumps(figures, indent=2))
print(json.dumps(figures, indent=2))
PYEOF
echo "[gpu.sh] done in $(($(date +%s) - started)) s; figures in $out/figures.json"
