#!/usr/bin/env bash
# The GPU check, one script for a short lease of a GPU machine: build rnnext in place against that machine's
# CUDA torch, run tests/test_cuda.py, then `rnnext bench --device cuda --quick` suite by suite, and (time
# permitting) compute-sanitizer's memcheck over the float32 and
# SPINN/generation/packing/TreeLSTM CUDA tests. Logs go to $OUT (default
# /tmp/gpu_check). Each step has its own time limit, and the optional steps are skipped once BUDGET seconds
# (default 330) have passed, so that the whole run ends inside a lease.
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh        # PYTHON=python3, TORCH_CUDA_ARCH_LIST=9.0 (H100/H200) by default
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-330}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  nvcc --version 2>&1 | tail -1
  grep -m1 "model name" /proc/cpuinfo; echo "cpus $(nproc)"; grep -q avx512_bf16 /proc/cpuinfo && echo "avx512_bf16: yes" || echo "avx512_bf16: no"
} 2>&1 | tee "$OUT/env.txt"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
rm -rf build/temp.* build/lib.* rnnext/_C*.so
timeout 240 $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
rc=$?
echo "== build rc=$rc after $(elapsed) s" | tee -a "$OUT/env.txt"
if [ $rc -ne 0 ]; then
  grep -n -m40 -i "error" "$OUT/build.log"
  tail -40 "$OUT/build.log"
  exit 1
fi
$PY -c "from rnnext import _build_info as b; print('WITH_CUDA', b.WITH_CUDA)" 2>&1 | tee -a "$OUT/env.txt"

echo "== tests/test_cuda.py"
# (The bench test is left out: the loop below runs the same command suite by suite, with its output kept.)
(cd tests && timeout 200 $PY -m pytest -q -p no:cacheprovider -rfE --tb=line -k "not bench_quick" test_cuda.py \
   > "$OUT/test_cuda.log" 2>&1)
echo "test_cuda rc=$? after $(elapsed) s" | tee -a "$OUT/env.txt"
grep -E "^(FAILED|ERROR)|^E |Error:|passed|failed" "$OUT/test_cuda.log" | cut -c1-300 | head -60

echo "== rnnext bench --device cuda --quick"
[ "${SKIP_BENCH:-0}" = 1 ] && BENCH_SUITES="" || BENCH_SUITES="LSTM GRU Cells Packed SPINN Generation bfloat16 ListOps"
for suite in $BENCH_SUITES; do
  if [ "$(elapsed)" -gt "$BUDGET" ]; then echo "skipped bench suite $suite: budget spent" | tee -a "$OUT/bench.log"; continue; fi
  timeout 90 $PY -m rnnext bench --device cuda --quick --only "$suite" >> "$OUT/bench.log" 2>&1
  echo "suite $suite rc=$? after $(elapsed) s" | tee -a "$OUT/bench.log"
done
[ -f "$OUT/bench.log" ] && grep -v "^rnnext bench on\|^wrote\|Cell.* x200" "$OUT/bench.log"

if [ "$(elapsed)" -lt "$BUDGET" ] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck: float32, SPINN, generation, packing and TreeLSTM CUDA tests"
  (cd tests && timeout $(( BUDGET + 60 - $(elapsed) )) compute-sanitizer --tool memcheck --error-exitcode 9 \
     $PY -m pytest -q -p no:cacheprovider -k "dtype1 or spinn or generation or packing or treelstm" test_cuda.py > "$OUT/memcheck.log" 2>&1)
  echo "memcheck rc=$? after $(elapsed) s" | tee -a "$OUT/env.txt"
  grep -E "ERROR SUMMARY|Invalid|passed|failed" "$OUT/memcheck.log" | head -20
fi
echo "== done after $(elapsed) s"
