#!/usr/bin/env bash
# Compile-only check of the CUDA sources, no GPU needed:
#   1. every csrc/cuda/*.cu is compiled for real with nvcc for sm_80 and sm_90; any error or
#      warning (nvcc's or the host compiler's) fails the script;
#   2. the torch-side files compiled only in CUDA builds (csrc/cuda/*.cpp, csrc/ops.cpp with
#      LAW_FAST_WITH_CUDA) are syntax-checked with -Werror against the installed torch's headers
#      (a CPU build of torch lacks one generated CUDA header; a stub stands in for it).
# Exits 0 with a message when nvcc is absent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then
  NVCC=/usr/local/cuda/bin/nvcc
fi
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "compile_cuda: nvcc not found; skipping the CUDA compile check"
  exit 0
fi
# nvcc's own include directory (nvcc may be a wrapper script, so ask it)
CUDA_INCLUDE="$("$NVCC" --dryrun -c x.cu 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1)"
if [[ -z "$CUDA_INCLUDE" || ! -f "$CUDA_INCLUDE/cuda_runtime.h" ]]; then
  CUDA_INCLUDE="${CUDA_HOME:-/usr/local/cuda}/include"
fi
CXX="${CXX:-g++}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "compile_cuda: $("$NVCC" --version | tail -n 1)"
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
if [[ ${#cu_files[@]} -eq 0 ]]; then
  echo "compile_cuda: no csrc/cuda/*.cu files found" >&2
  exit 1
fi
for cu in "${cu_files[@]}"; do
  echo "compile_cuda: nvcc -c $cu (sm_80, sm_90)"
  "$NVCC" -c "$cu" -o "$work/$(basename "$cu").o" -std=c++17 -O3 -I csrc/include \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror
done

torch_include="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)"
if [[ -z "$torch_include" || ! -d "$torch_include" ]]; then
  echo "compile_cuda: torch not importable; skipping the syntax check of the torch bindings"
  echo "compile_cuda: OK (${#cu_files[@]} .cu files)"
  exit 0
fi
stub="$work/stub"
if [[ ! -f "$torch_include/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  mkdir -p "$stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
fi
python_include="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
for cpp in csrc/cuda/*.cpp csrc/ops.cpp; do
  echo "compile_cuda: $CXX -fsyntax-only -DLAW_FAST_WITH_CUDA $cpp"
  "$CXX" -fsyntax-only -std=c++20 -Wall -Wextra -Werror -Wno-unused-parameter \
    -DLAW_FAST_WITH_CUDA -DTORCH_EXTENSION_NAME=_C -I csrc/include -I "$torch_include" \
    -I "$torch_include/torch/csrc/api/include" -I "$stub" -I "$CUDA_INCLUDE" -I "$python_include" "$cpp"
done
echo "compile_cuda: OK (${#cu_files[@]} .cu files compiled, torch bindings syntax-checked)"
