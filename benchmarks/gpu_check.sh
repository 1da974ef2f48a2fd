#!/usr/bin/env bash
# One pass of every GPU check on a machine with a CUDA GPU (written for the lent H200):
#   bash benchmarks/gpu_check.sh            (from the repository root; 106 s on an H200)
# PYTHON (default python3) and GPU_CHECK_ARGS (extra arguments of gpu_check.py) may be set.
# Logs to $OUT/gpu_log.txt (or ./gpu_log.txt without $OUT).  Every step runs even when an
# earlier one failed; the exit status is the number of failed steps (0: all passed).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 99
LOG="${OUT:-.}/gpu_log.txt"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
FAILED=()
START=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record a failure
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== [$((SECONDS - START)) s] $name: $*"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== [$((SECONDS - START)) s] $name: exit $rc"
    [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
    return 0
}

echo "=== gpu_check.sh $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs"
nvidia-smi || FAILED+=("nvidia-smi")
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm --format=csv || true
"$PY" - <<'EOF' || FAILED+=("versions")
import importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "numba", "numba-cuda", "llvmlite", "cupy-cuda13x", "torch", "ml-dtypes",
             "cuda-bindings", "cuda-python", "nvidia-nvvm", "nvidia-cuda-nvcc", "hypothesis",
             "pytest", "scipy"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
import torch
print("torch.cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

# numba-cuda up to 0.30.x registers np.row_stack, which numpy 2.5 removed: on that pair every
# kernel compilation fails.  Probe with a trivial kernel; on that error only, restore the alias
# in this run's Python processes (a sitecustomize outside the repository) and say so.
PROBE='
import numpy as np
from numba import cuda
@cuda.jit
def double(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] *= 2
x = cuda.to_device(np.arange(4, dtype=np.float32))
double[1, 32](x)
assert x.copy_to_host().tolist() == [0, 2, 4, 6]
print("trivial numba.cuda kernel: ok")
'
echo
echo "=== numba.cuda probe"
if ! "$PY" -c "$PROBE" 2>/tmp/probe.err; then
    cat /tmp/probe.err | tail -5
    if grep -q row_stack /tmp/probe.err; then
        echo "WORKAROUND: numba-cuda needs numpy.row_stack (removed in numpy 2.5); aliasing it to"
        echo "numpy.vstack through /tmp/bl_shim/sitecustomize.py for the rest of this run"
        mkdir -p /tmp/bl_shim
        printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' \
            >/tmp/bl_shim/sitecustomize.py
        export PYTHONPATH="/tmp/bl_shim${PYTHONPATH:+:$PYTHONPATH}"
        FAILED+=("numba.cuda probe without the numpy.row_stack alias")
        step "numba.cuda probe (with alias)" 60 "$PY" -c "$PROBE"
    else
        FAILED+=("numba.cuda probe")
    fi
fi

PIP=("$PY" -m pip install -q --no-deps --no-index --no-build-isolation --disable-pip-version-check)
step "install bundlelab (editable, no deps)" 90 "${PIP[@]}" -e .
if ! (cd /tmp && "$PY" -c 'import bundlelab.adapters') 2>/dev/null; then
    step "install bundlelab (regular, no deps)" 90 "${PIP[@]}" .
fi
step "import check" 30 bash -c "cd /tmp && '$PY' -c 'import bundlelab, bundlelab.adapters.torch; print(bundlelab.__file__)'"

BUNDLELAB_TEST_REAL_GPU=1 step "pytest tests/test_cuda_backend.py on the GPU" 130 \
    "$PY" -m pytest tests/test_cuda_backend.py -q --maxfail=5 -p no:cacheprovider --durations=5
# (no test of tests/ other than test_cuda_backend.py puts a tensor on a GPU; gpu_check.py
# checks the torch adapter with a CUDA model)

step "gpu_check.py: GPU == CPU at 2048x65536, timings, bandwidth" 160 \
    "$PY" benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-}
step "bench_bundles.py --quick" 75 "$PY" benchmarks/bench_bundles.py --quick

echo
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv || true
echo "=== done in $((SECONDS - START)) s; ${#FAILED[@]} failed step(s)"
for f in "${FAILED[@]}"; do echo "  FAILED: $f"; done
exit "${#FAILED[@]}"
