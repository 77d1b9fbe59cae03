#!/usr/bin/env bash
# Builds the CUDA plugin against the CPU emulation (emu/cuda_runtime.h) and runs the self-test's
# quick set on it: checks the kernels' logic and the host orchestration without a GPU.
# SAEKIT_EMU_DEVICES=N (run time, default 1) gives the emulation N devices (emu/cuda_runtime.h).
#   bash native/cuda/emu/build.sh [out_dir]      (from anywhere; needs g++ only)
#   EMU_ONCE=1: one self-test pass, not the second one with tiny tiles (CI runs both)
#   EMU_SANITIZE=...: -fsanitize= for the plugin and the self-test. CI uses alignment,undefined
#     (with UBSAN_OPTIONS=halt_on_error=1): misaligned float4 / uint2 loads, which fault on a GPU
#     but pass on x86, stop the run; the plugin then pulls libubsan into node, which works.
#     address also works for the self-test (not for the plugin loaded into node).
#   Streams are deferred: their work runs when something waits for it (emu/cuda_runtime.h).
#   SAEKIT_EMU_ORDER=index|reverse|shuffle[:SEED] (run time, emu/cuda_runtime.h): the order the
#     emulation runs threads and blocks in; shuffle also lets warps drift apart between block
#     barriers. CI uses shuffle with a new seed each run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root/build-cuda-emu}
mkdir -p "$out/src"
# <<<grid, block, smem, stream>>>(args) -> ::emu::launch(kernel, ::emu::Cfg(grid, ...), args);
# extern __shared__ T name[] -> T* name = (T*)::emu::dyn_smem()
for f in native/cuda/plugin native/cuda/sae native/cuda/select native/cuda/corr bench/gpu/bench_step; do
  python3 - "$root/$f.cu" "$out/src/$(basename $f).cpp" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'(\w+)<<<(.*?)>>>\(', r'::emu::launch(\1, ::emu::Cfg(\2), ', s, flags=re.S)
s = re.sub(r'extern __shared__ ([\w ]+?) (\w+)\[\];', r'\1* \2 = reinterpret_cast<\1*>(::emu::dyn_smem());', s)
open(sys.argv[2], 'w').write(s)
PY
done
flags=(${EMU_SANITIZE:+-fsanitize=$EMU_SANITIZE} -std=c++17 -O1 -g -fPIC -I"$here" -I"$root/native" -I"$root/native/cuda" -Wall -Wno-unused-function)
objs=()
for f in plugin sae select corr; do
  g++ "${flags[@]}" -c "$out/src/$f.cpp" -o "$out/$f.o"
  objs+=("$out/$f.o")
done
g++ "${flags[@]}" -c "$here/sort_emu.cpp" -o "$out/sort_emu.o"
g++ "${flags[@]}" -DSK_EMU_DEVICE_CHECKS -c "$root/native/cuda/cublas_dl.cpp" -o "$out/cublas_dl.o"
g++ ${EMU_SANITIZE:+-fsanitize=$EMU_SANITIZE} -shared -o "$out/libsaekit_cuda.so" "${objs[@]}" "$out/sort_emu.o" "$out/cublas_dl.o" -ldl
g++ -std=c++17 -O2 -fPIC -shared -o "$out/libfakecublas.so" "$here/fake_cublas.cpp"
g++ "${flags[@]}" "$out/src/bench_step.cpp" "${objs[@]}" "$out/sort_emu.o" "$out/cublas_dl.o" -o "$out/saekit_cuda_bench" -ldl
g++ ${EMU_SANITIZE:+-fsanitize=$EMU_SANITIZE} -std=c++17 -O2 -I"$root/native" "$root/native/cuda/selftest.cpp" -o "$out/saekit_cuda_selftest" -ldl
echo "built $out"
SAEKIT_CUBLAS="$out/libfakecublas.so" "$out/saekit_cuda_selftest" --quick "$out/libsaekit_cuda.so"
echo "--- benchmark smoke test"
SAEKIT_CUBLAS="$out/libfakecublas.so" "$out/saekit_cuda_bench" --tiny
# Again with encoder tiles of 9-33 rows and the selection list at its smallest (many rows take
# the radix fallback). EMU_ONCE=1 skips it.
[ "${EMU_ONCE:-0}" = 1 ] && exit 0
echo "--- small tiles, selection fallback"
SAEKIT_CUDA_TILE_BYTES=40000 SAEKIT_CUDA_SELECT_CAP=1 SAEKIT_CUBLAS="$out/libfakecublas.so" \
  "$out/saekit_cuda_selftest" --quick "$out/libsaekit_cuda.so"
