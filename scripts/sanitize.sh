#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run: builds the extension with RNNEXT_SANITIZE=1 (setup.py) in its
# own virtual environment and runs the suites that drive the kernels (the fuzz suite, the op suites) under the
# sanitizers. Any report stops the run (halt_on_error) and fails the script.
#
#   bash scripts/sanitize.sh [--full] [extra pytest arguments]
#
# By default (CI) at small sizes: the fuzz suite at RNNEXT_FUZZ_EXAMPLES=50 examples per property (300 in the
# plain suite), and the op suites' equivalence grids (every layout, both sides of the threading thresholds, 1
# and 2 threads), opchecks, raw-op and error tests, without their gradcheck/gradgradcheck cases (thousands of
# calls of the paths the grids already take, or the plain-PyTorch twins of double backward), which the plain
# suite runs in full. --full: every case of those suites, and the C++ dispatcher test built with
# -DRNNEXT_SANITIZE=ON (CMakeLists.txt). About 3 minutes on 2 AVX-512 cores by default, 8 with --full.
# RNNEXT_ASAN_VENV: the virtual environment to build and test in (default .venv-asan, made if missing; rnnext is
# replaced there by the sanitized build).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
full=0
if [ "${1:-}" = "--full" ]; then full=1; shift; fi
venv="${RNNEXT_ASAN_VENV:-$repo/.venv-asan}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q torch==2.13.0 setuptools wheel ninja numpy tqdm "pytest>=7" pytest-xdist "hypothesis>=6" matplotlib \
  expecttest
rm -rf build/temp.* build/lib.*
RNNEXT_SANITIZE=1 MAX_JOBS=2 pip install -q --no-build-isolation --no-deps --force-reinstall .
rm -rf build/temp.* build/lib.*  # keep a later normal build from reusing the sanitized objects

export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=0:halt_on_error=1:abort_on_error=1:alloc_dealloc_mismatch=0:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

if [ "$full" = 1 ]; then
  echo "== C++ test under ASan + UBSan"
  prefix="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  cmake -S . -B build/cmake-asan -G Ninja -DRNNEXT_SANITIZE=ON -DCMAKE_PREFIX_PATH="$prefix" > /dev/null
  cmake --build build/cmake-asan -j2
  ctest --test-dir build/cmake-asan --output-on-failure
fi

echo "== Python suites under ASan + UBSan (the interpreter is not instrumented: the runtimes are preloaded)"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
cd "$(mktemp -d)"
python -c "import rnnext; print('sanitized build imported from', rnnext.__file__)"
# (The memory-growth tests are left out: ASan's quarantine holds freed memory by design.)
skip="not compile and not export and not memory"
if [ "$full" = 0 ]; then
  export RNNEXT_FUZZ_EXAMPLES="${RNNEXT_FUZZ_EXAMPLES:-50}"
  skip="$skip and not gradcheck and not gradgradcheck"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # (two test processes on two cores: see tests/conftest.py)
pytest -q -p no:cacheprovider -n 2 "$repo/tests/test_fuzz.py" "$repo/tests/test_lstm.py" "$repo/tests/test_packing.py" \
  "$repo/tests/test_tree.py" "$repo/tests/test_correctness.py" "$repo/tests/test_rnn.py" "$repo/tests/test_one_step.py" \
  "$repo/tests/test_models.py" "$repo/tests/test_bf16.py" -k "$skip" "$@"
echo "== no sanitizer report"
