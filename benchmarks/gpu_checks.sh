#!/usr/bin/env bash
# The GPU checks of tokbench in one run, for a machine with a CUDA GPU (a lent device machine, or yours):
# the CUDA tests (tests/test_gpu.py: CUDA run == CPU run, channels_last + compile == eager, bf16, pinned
# batches), the distributed tests, then `benchmarks/perf.py --preset gpu`. Everything it writes goes to
# $OUT (default results/gpu-checks): gpu-checks.log, and perf.md / perf.csv / throughput.csv / perf.png /
# environment.json of the perf run (commit those as results/perf-gpu/).
#
#   bash benchmarks/gpu_checks.sh                 # in the repository root
#
# On a machine without the project's virtualenv (a device machine's python3 holds PyTorch but not every
# dependency), the packages it lacks travel as wheels in .whl/ (ignored by git), which this script
# installs first; download them where pip works (Python 3.12 there), e.g.:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection \
#     lpips clean-fid open_clip_torch ftfy wcwidth pytesseract
# The first lines of the log say which imports still fail.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-checks}
mkdir -p "$OUT"
LOG="$OUT/gpu-checks.log"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tokbench-site \
    .whl/*.whl && export PYTHONPATH=/tmp/tokbench-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" - <<'PYEOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for name in ("pydantic", "transformers", "timm", "torchmetrics", "diffusers", "open_clip", "lpips", "cleanfid",
             "pytesseract", "tokbench"):
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - a report of what is missing
        print(f"import {name}: {type(e).__name__}: {e}")
PYEOF
  echo "== tests"
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_distributed.py
  echo "== tests: exit $?"; echo "== perf"
  # shellcheck disable=SC2086 # PERF_ARGS: extra options, split on spaces (a smoke run: see README)
  timeout 420 "$PY" benchmarks/perf.py --preset gpu --out "$OUT" --note "benchmarks/gpu_checks.sh" ${PERF_ARGS:-}
  echo "== perf: exit $?"
} 2>&1 | tee "$LOG"
