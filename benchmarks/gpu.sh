#!/usr/bin/env bash
# One prepared GPU check, about 7 minutes on one H100/H200 (each step has its own time
# limit), the most wanted figures first:
#   1. the device (nvidia-smi, JAX's backend and devices),
#   2. benchmarks/wide_layout.py at K = 1024: the transposes and layout-changing copies in the
#      GPU's compiled "wide" step (the CPU's are tests/test_wide_layout.py's),
#      then benchmarks/sweep_formulations.py at K = 1024 and 2048 with the loop unrolled 8 steps,
#      ms per model-epoch (issue 25's target: <= 0.5 at K >= 1024 on one H100): jreg.sweep with
#      vectorize "wide" and "vmap", the hand-written vmap with the model axis second (with the
#      weight gradients taken as aᵀ·g, and without), the single-model epochs (hand-written scan,
#      jreg.fit),
#   3. benchmarks/epoch_speed.py on 50,000 images (network2 skipped: it is CPU-only and slow),
#   4. the test suite's GPU-relevant subset (everything that trains or differentiates on the
#      default backend; the sharding, CLI, download and example tests are left out: they run
#      on CPU devices or in subprocesses), at "highest" matmul precision, since the tests
#      compare with NumPy/float64 references to ~1e-6 and the GPU's default float32 dots
#      round their inputs (TF32); the benchmarks keep the default precision a user gets.
#   5. benchmarks/sweep_scaling.py, K in {64, 256, 1024, 2048}, 50,000 images, jreg's default
#      sweep, with the hand-written vmap epoch beside each K,
#   6. benchmarks/stream_speed.py (streamed vs in-memory epochs, chunks of 64 and 256).
# Every figure is written to a file in OUTDIR (default: $OUT if set, else ./gpu-results).
#
#     JREG_DATA_DIR=/path/to/mnist bash benchmarks/gpu.sh [OUTDIR]
#     STEPS="device wide_layout sweep_formulations" bash benchmarks/gpu.sh   # only these steps
#
# The limits add up to more than one 10-minute device call: the steps run most wanted first, and
# STEPS= splits the script over calls. Record the card (step 1) with every figure.
#
# Without the MNIST files the benchmarks tile the embedded 1,000 images to 50,000 (speed does
# not depend on pixel values). Runs from a checkout without installing: PYTHONPATH is the repo.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output in $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || status=1
}

step device 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
    $py -c 'import jax, jaxlib, optax; print(\"jax\", jax.__version__, \"jaxlib\", jaxlib.__version__, \"optax\", optax.__version__); print(jax.default_backend(), jax.devices())'"
step wide_layout 90 "$py" benchmarks/wide_layout.py --k 1024
step sweep_formulations 240 "$py" benchmarks/sweep_formulations.py --ks 1024 2048 --reps 2 --unrolls 8 \
    --only jreg-wide vmap-mid-left vmap-mid jreg-vmap
step epoch_speed 80 "$py" benchmarks/epoch_speed.py --skip-network2 --epochs 5
# pytest-xdist spreads the compile-bound tests over the CPU cores (one process each, GPU memory
# allocated as needed rather than 75 % each up front); without xdist the subset takes ~10 minutes.
xdist=$("$py" -c 'import xdist' 2>/dev/null && echo "-n 12")
JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false step tests 200 \
    "$py" -m pytest -q -p no:cacheprovider $xdist -m "not slow" -rfE --durations=10 \
    tests/test_identities.py tests/test_train.py tests/test_sweep.py tests/test_evaluate.py \
    tests/test_model_state.py tests/test_early_stopping.py tests/test_checkpoint.py \
    tests/test_stream.py tests/test_sweep_stopping.py tests/test_sweep_checkpoint.py tests/test_precision.py \
    tests/test_frameworks.py tests/test_path.py tests/test_pbt.py tests/test_wide_gradients.py \
    tests/test_wide_layout.py
step sweep_scaling 130 "$py" benchmarks/sweep_scaling.py --ks 64 256 1024 2048 --n 50000 --epochs 2 \
    --vectorize vmap --hand
step stream_speed 60 "$py" benchmarks/stream_speed.py --reps 3 --chunks 64,256 --tiled
echo "figures in $out/: $(ls "$out" | tr '\n' ' ')"
exit $status
