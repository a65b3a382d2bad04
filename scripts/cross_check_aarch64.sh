#!/usr/bin/env bash
# Cross-compiles every C++ source of the extension for Linux aarch64 against torch's aarch64 wheel and links them
# into one shared library: the check that nothing x86-only leaks into the portable build (csrc/cpu/isa.h). It does
# not run anything (running needs an arm64 root under emulation: see ../shared/PLATFORMS.md when present).
#
#   bash scripts/cross_check_aarch64.sh [WORKDIR]      (default WORKDIR: build/aarch64)
#
# Needs aarch64-linux-gnu-g++ (Debian: apt-get install g++-aarch64-linux-gnu) and the package registry (the torch
# 2.13.0 aarch64 wheel, 427 MB, kept in WORKDIR between runs). About 25 s of compiling on 2 cores at -O0.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(realpath -m "${1:-$repo/build/aarch64}")"
cxx="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
command -v "$cxx" >/dev/null || { echo "cross_check_aarch64: $cxx not found (apt-get install g++-aarch64-linux-gnu)" >&2; exit 2; }
mkdir -p "$work/obj"
wheel=$(ls "$work"/torch-2.13.0-*aarch64.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
    torch==2.13.0 -d "$work"
  wheel=$(ls "$work"/torch-2.13.0-*aarch64.whl | head -1)
fi
if [ ! -d "$work/whl/torch/include" ]; then
  python3 - "$wheel" "$work/whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/"))])
PY
fi
inc="$work/whl/torch/include"
pyinc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
cd "$repo"
sources=(csrc/ops.cpp csrc/python_module.cpp csrc/cpu/*.cpp csrc/autograd/*.cpp)
printf '%s\n' "${sources[@]}" | xargs -P 2 -I{} sh -c \
  "$cxx -std=c++17 -O0 -g0 -w -c -fopenmp -fPIC -fno-trapping-math -fno-math-errno -D_GLIBCXX_USE_CXX11_ABI=1 \
   -Icsrc -I$inc -I$inc/torch/csrc/api/include -I$pyinc {} -o $work/obj/\$(basename {} .cpp).o \
   || { echo 'cross_check_aarch64: {} failed to compile' >&2; exit 255; }"
# Every symbol resolved but the Python C API's (the interpreter provides it when the module loads).
undefined=$("$cxx" -shared -o "$work/_C.so" "$work"/obj/*.o -L"$work/whl/torch/lib" -ltorch -ltorch_cpu -lc10 \
  -fopenmp -Wl,--no-undefined -Wl,--allow-shlib-undefined 2>&1 | grep -o "undefined reference to \`[^']*'" \
  | grep -v "\`_\?Py" | sort -u || true)
if [ -n "$undefined" ]; then
  echo "cross_check_aarch64: unresolved symbols in the aarch64 link:" >&2
  echo "$undefined" >&2
  exit 1
fi
"$cxx" -shared -o "$work/_C.so" "$work"/obj/*.o -L"$work/whl/torch/lib" -ltorch -ltorch_cpu -lc10 -fopenmp
echo "aarch64: ${#sources[@]} sources compiled and linked ($(file -b "$work/_C.so" | cut -d, -f1-2))"
