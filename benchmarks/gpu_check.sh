#!/usr/bin/env bash
# The GPU check in one command: tests/test_gpu.py on the device, bench_stream.py --full, a profile of the
# replay step, a synthetic ImageNet-size image stream and the VQA replay steps; writes gpu_check.json,
# gpu_check.md, pytest_gpu.log and gpu_check.log to $OUT (else results/gpu_check/). Under 8 minutes on one
# H100 (section caps sum to 430 s). Exit code 1 if any section failed (each is recorded with its error).
#
# On the device tool (never run on a GPU yet):
#   1. on the CPU machine, once, fetch the faiss wheel (and `packaging`, which faiss imports) into .whl/:
#        echo /.whl/ >> .git/info/exclude
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl 'faiss-cpu==1.15.*' packaging
#      (gives faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl, 18.8 MB, and
#       packaging-26.4-py3-none-any.whl);
#   2. run, with carry [".whl"] and timeout_s 540:
#        bash benchmarks/gpu_check.sh
#      Without .whl/ it still runs: PQ training in the tests uses a torch k-means, and bench_stream leaves
#      out its faiss sections (the reference-loop comparison among them); the output says so.
#
# bash benchmarks/gpu_check.sh --smoke: the same code paths at tiny sizes on the CPU (CI; 1-2 min on 2 cores).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import faiss" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  echo "[gpu_check.sh] installing the carried wheels: $(ls .whl)"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" \
    || echo "[gpu_check.sh] wheel install failed; going on without faiss"
fi
OUT_DIR="${OUT:-results/gpu_check}"
mkdir -p "$OUT_DIR"
"$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
