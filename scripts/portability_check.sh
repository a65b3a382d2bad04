#!/usr/bin/env bash
# Compile checks of the portable build (issue: one engine on every platform), none of which runs the code:
#   1. every source with clang++ (x86-64), where GCC's target pragmas do not apply (csrc/cpu/isa.h's regions);
#   2. the sources with ISA clones with -DRNNEXT_NO_IFUNC (what macOS and Windows toolchains compile): no clone left;
#   3. every source cross-compiled for Linux aarch64 and linked (scripts/cross_check_aarch64.sh).
# A check whose compiler is missing says so and is skipped (apt-get install clang libomp-dev g++-aarch64-linux-gnu).
#
#   bash scripts/portability_check.sh      (in an environment with torch installed: its headers are used)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
inc="$(python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
pyinc="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
out="$(mktemp -d)"
flags=(-std=c++17 -O0 -g0 -w -c -fopenmp -fPIC -D_GLIBCXX_USE_CXX11_ABI=1 -Icsrc -I"$inc" -I"$inc/torch/csrc/api/include"
       -I"$pyinc")
sources=(csrc/ops.cpp csrc/python_module.cpp csrc/cpu/*.cpp csrc/autograd/*.cpp)

if command -v clang++ >/dev/null; then
  for f in "${sources[@]}"; do
    clang++ "${flags[@]}" "$f" -o "$out/clang_$(basename "$f" .cpp).o" || { echo "clang++: $f failed" >&2; exit 1; }
  done
  echo "clang++: ${#sources[@]} sources compiled"
else
  echo "clang++ not found: the clang check is skipped"
fi

for f in csrc/cpu/gemm.cpp csrc/cpu/pointwise.cpp csrc/cpu/rnn_layer.cpp; do
  g++ "${flags[@]}" -DRNNEXT_NO_IFUNC "$f" -o "$out/noifunc.o"
  if nm "$out/noifunc.o" | grep -q "\.resolver\|\.avx2\b\|\.avx512f\b"; then
    echo "RNNEXT_NO_IFUNC: $f still has ISA clones" >&2
    exit 1
  fi
done
echo "RNNEXT_NO_IFUNC: the sources with ISA clones compile without them"

if command -v aarch64-linux-gnu-g++ >/dev/null; then
  bash scripts/cross_check_aarch64.sh
else
  echo "aarch64-linux-gnu-g++ not found: the aarch64 check is skipped"
fi
rm -rf "$out"
