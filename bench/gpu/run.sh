#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one call (budget: 8 minutes on an H200):
#   build (sm_90 only) -> self-test -> compute-sanitizer memcheck on the quick self-test (if
#   present) -> step benchmark -> the parity suite through saekit's API (if .gpu/ from
#   bench/gpu/pack.sh was carried) -> PyTorch reference (if torch imports) -> a short table, last.
# Logs go to $OUT (or bench/gpu/out). Every stage has its own timeout; a failing stage is
# recorded and the later ones still run, and the exit status is non-zero if any stage failed.
# Usage: bash bench/gpu/run.sh        (from the repository root; no network needed)
#   SKIP_BUILD=1 bash bench/gpu/run.sh reuses build-gpu/ on a still-warm machine.
#   Here first: bash bench/gpu/pack.sh; then device run with carry [".gpu"], timeout_s 520.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Logs are written to OUT_DIR; under the device tool (OUT set, at most 8 files come back) they are
# kept in a scratch folder and come back as $OUT/logs.tgz plus $OUT/summary.txt.
if [ -n "${OUT:-}" ]; then OUT_DIR="$(mktemp -d)"; else OUT_DIR=bench/gpu/out; fi
mkdir -p "$OUT_DIR"
BUILD=build-gpu
START=$SECONDS
declare -A STATUS
FAILED=0
stage() {  # stage NAME TIMEOUT_S CMD...: runs CMD with a timeout, logs to $OUT_DIR/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (timeout ${limit}s, t=$((SECONDS - START))s)"
  local rc=0
  # A pipeline, not `> >(tee ...)`: the log is complete when the stage returns (the process
  # substitution's tee could still be writing when the next stage read its log).
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -eq 0 ]; then STATUS[$name]=ok
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then STATUS[$name]="TIMEOUT"; FAILED=1
  else STATUS[$name]="FAIL(rc=$rc)"; FAILED=1
  fi
  echo "=== $name: ${STATUS[$name]} ($((SECONDS - START))s)"
  # What has run so far comes back even if the call is cut short (the tool returns $OUT).
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/logs.tgz" -C "$OUT_DIR" . 2>/dev/null || true
    { for s in "${!STATUS[@]}"; do echo "$s ${STATUS[$s]}"; done; cat "$OUT_DIR"/*.log 2>/dev/null | grep -E '^(BENCH|CHECK|CORR|TRAINER|tests:|ALL PASSED|FAIL)' || true; } > "$OUT/partial.txt"
  fi
}

# The carried bundle (.gpu/, from pack.sh) should come from this tree: the plugin is built from
# the tree here, the addon and the parity bundle were built there.
if [ -f .gpu/tree-hash ] && [ "$(bash bench/gpu/tree-hash.sh)" != "$(cat .gpu/tree-hash)" ]; then
  echo "WARNING: .gpu/ was packed from other sources than this tree (run bench/gpu/pack.sh again): parity and trainer results may not match the plugin" | tee "$OUT_DIR/stale.txt"
fi
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT_DIR/gpu.txt" || true
else
  echo "no nvidia-smi" > "$OUT_DIR/gpu.txt"
fi
# nvcc: the newest toolkit whose CUDA version the driver supports (a CUDA 13 build needs a >= 580
# driver; nvidia-smi's header names the newest CUDA the driver runs).
DRIVER_CUDA=$(timeout 30 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | awk '{print $3}' || true)
NVCC=""
for c in $(command -v nvcc || true) /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
  [ -x "$c" ] || continue
  v=$("$c" --version 2>/dev/null | grep -o 'release [0-9.]*' | awk '{print $2}' || true)
  [ -n "$v" ] || continue
  if [ -n "$DRIVER_CUDA" ] && [ "$(printf '%s\n%s\n' "$v" "$DRIVER_CUDA" | sort -V | tail -1)" != "$DRIVER_CUDA" ]; then
    echo "skipping $c (CUDA $v is newer than the driver's $DRIVER_CUDA)"
    continue
  fi
  if [ -z "$NVCC" ] || [ "$(printf '%s\n%s\n' "$v" "$NVCC_V" | sort -V | tail -1)" = "$v" ]; then NVCC=$c; NVCC_V=$v; fi
done
[ -n "$NVCC" ] || NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
echo "nvcc: $NVCC (driver supports CUDA ${DRIVER_CUDA:-?})"
export BUILD NVCC
"$NVCC" --version | tail -1 | tee "$OUT_DIR/nvcc.txt" || true

# cuBLAS: the plugin dlopens libcublas.so.{13,12}; add the toolkit's or PyTorch's folder if the
# loader does not already know one.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23]'; then
  for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib \
           "$(timeout 60 python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)"; do
    if [ -n "$d" ] && ls "$d"/libcublas.so.1[23] >/dev/null 2>&1; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "cuBLAS from $d"
      break
    fi
  done
fi

build() {
  # SKIP_BUILD=1: reuse this machine's build (a warm rerun of later stages).
  if [ "${SKIP_BUILD:-0}" = 1 ] && [ -x "$BUILD/saekit_cuda_selftest" ]; then echo "reusing $BUILD"; return 0; fi
  rm -rf "$BUILD"  # never reuse a cache from another machine or compiler
  local v
  v=$(cmake --version 2>/dev/null | head -1 | awk '{print $3}' || true)
  if [ -n "$v" ] && [ "$(printf '%s\n3.24\n' "$v" | sort -V | head -1)" = 3.24 ]; then
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$NVCC" &&
      cmake --build "$BUILD" -j "$(nproc)"
  else  # no (recent) cmake: the same targets by hand
    mkdir -p "$BUILD"
    local src="native/cuda/plugin.cu native/cuda/sae.cu native/cuda/select.cu native/cuda/corr.cu native/cuda/sort.cu native/cuda/cublas_dl.cpp"
    "$NVCC" -O3 -std=c++17 -arch=sm_90 -Inative -Xcompiler -fPIC,-fvisibility=hidden -cudart static -shared \
      $src -o "$BUILD/libsaekit_cuda.so" -ldl &&
      g++ -O2 -std=c++17 -Inative native/cuda/selftest.cpp -o "$BUILD/saekit_cuda_selftest" -ldl &&
      "$NVCC" -O3 -std=c++17 -arch=sm_90 -Inative -cudart static bench/gpu/bench_step.cu $src \
        -o "$BUILD/saekit_cuda_bench" -ldl
  fi
}
stage build 120 bash -c "set -euo pipefail; $(declare -f build); build"
if [ "${STATUS[build]}" = ok ]; then
  stage selftest 150 "$BUILD/saekit_cuda_selftest"
  if grep -q '^SKIP' "$OUT_DIR/selftest.log" && [ "$(cat "$OUT_DIR/gpu.txt")" != "no nvidia-smi" ]; then
    STATUS[selftest]="FAIL (skipped on a machine with a GPU)"
    FAILED=1
  fi
  if command -v compute-sanitizer >/dev/null && [ $((SECONDS - START)) -lt 240 ]; then
    before=$FAILED
    stage memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/saekit_cuda_selftest" --quick
    if [ "${STATUS[memcheck]}" = TIMEOUT ]; then FAILED=$before; STATUS[memcheck]="timeout (not a failure)"; fi
    # Under gVisor compute-sanitizer answers "Device not supported": nothing was checked.
    if grep -q 'Device not supported' "$OUT_DIR/memcheck.log" 2>/dev/null; then FAILED=$before; STATUS[memcheck]="unsupported here"; fi
  else
    STATUS[memcheck]="skipped"
  fi
  # The benchmark leaves the bf16 matrices its TopK alone ran on in SEL_DIR (0.4 and 1 GiB; not
  # under $OUT, which comes back), and the reference times torch.topk on the same values.
  SEL_DIR="$(mktemp -d)"
  trap 'rm -rf "$SEL_DIR"' EXIT
  SAEKIT_BENCH_SELECT_DIR="$SEL_DIR" stage bench 120 "$BUILD/saekit_cuda_bench"
  # The PyTorch reference right after: the headline ratio must not wait behind informational stages.
  if timeout 60 python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    stage torch 120 python3 bench/gpu/torch_step.py --select-dir "$SEL_DIR"
    rm -rf "$SEL_DIR"
  else
    STATUS[torch]="skipped (no torch with CUDA)"
  fi
  # Hardware counters for the step's own kernels (second step of the large shape), where ncu can
  # read them (not under gVisor). Informational: a failure here does not fail the check.
  if command -v ncu >/dev/null && [ $((SECONDS - START)) -lt 200 ]; then
    before=$FAILED
    stage ncu 90 ncu --clock-control none -k 'regex:topk_|residual|latent_|nvjet|gemm' \
      --launch-skip 11 --launch-count 11 --section SpeedOfLight \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct \
      "$BUILD/saekit_cuda_bench" --quick --shape 2 --no-corr
    FAILED=$before
  else
    STATUS[ncu]="skipped"
  fi
  # test/cuda.test.ts (CUDA vs CPU through saekit's own API: tensors, SAE ops, Adam, Trainer), when
  # bench/gpu/pack.sh prepared .gpu/ here and the call carried it (the image has no Node.js).
  if [ -f .gpu/node.xz ] && [ $((SECONDS - START)) -lt 330 ]; then
    timeout 60 xz -dc .gpu/node.xz > /tmp/saekit-node && chmod +x /tmp/saekit-node
    export SAEKIT_CUDA_PLUGIN="$PWD/$BUILD/libsaekit_cuda.so"
    stage parity 120 /tmp/saekit-node .gpu/bundle/gpu/parity.mjs
  else
    STATUS[parity]="skipped (no .gpu/: run bench/gpu/pack.sh and carry .gpu)"
  fi
fi
# Training steps through the API (bench/gpu/trainer.ts): what a Node loop gets, the JS thread's
# part per batch, and Trainer.fit on a file. Informational, so after the PyTorch comparison.
if [ -x /tmp/saekit-node ] && [ -f .gpu/bundle/gpu/trainer.mjs ] && [ $((SECONDS - START)) -lt 400 ]; then
  before=$FAILED
  stage trainer $((470 - (SECONDS - START))) /tmp/saekit-node .gpu/bundle/gpu/trainer.mjs
  FAILED=$before
else
  STATUS[trainer]="skipped"
fi

# ---- summary, last
{
  echo
  echo "== saekit CUDA GPU check ($(cat "$OUT_DIR/gpu.txt" 2>/dev/null | head -1), $(date -u +%F), commit $(cat .gpu/commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  cat "$OUT_DIR/stale.txt" 2>/dev/null || true
  for s in build selftest memcheck bench ncu parity trainer torch; do printf '%-9s %s\n' "$s" "${STATUS[$s]:-not run}"; done
  if [ -f "$OUT_DIR/selftest.log" ]; then
    grep -E '^(FAIL|ALL PASSED|FAILED|SKIP)' "$OUT_DIR/selftest.log" | head -20 || true
  fi
  if [ -f "$OUT_DIR/parity.log" ]; then grep -E '^(FAIL|tests:)' "$OUT_DIR/parity.log" | head -12 || true; fi
  if [ -f "$OUT_DIR/memcheck.log" ]; then grep -E 'ERROR SUMMARY' "$OUT_DIR/memcheck.log" | tail -1 || true; fi
  if [ -f "$OUT_DIR/ncu.log" ]; then
    grep -E '^  [A-Za-z_].*\(|Duration|DRAM Throughput|Memory Throughput|dram__bytes|hit_rate' "$OUT_DIR/ncu.log" |
      sed -E 's/ +/ /g; s/\(int, long.*//' | cut -c1-110 | head -90 || true
  fi
  printf '%-12s %-12s %4s %10s %10s %10s %9s %9s %9s %9s %9s\n' impl shape k tokens/s tok/s_pin tok/s_pref step_ms device_ms floor_ms topk_ms select_ms
  # get KEY: the value of KEY=... in the current summary line ($line).
  get() { echo "$line" | tr ' ' '\n' | grep "^$1=" | head -1 | cut -d= -f2 || true; }
  { cat "$OUT_DIR"/bench.log "$OUT_DIR"/torch.log 2>/dev/null || true; } | { grep '^BENCH' || true; } | while read -r line; do
    # TopK alone: saekit's on the floor GEMM's bf16 output; torch.topk on that same matrix where
    # the reference could read it (topk_same_ms), else on its own pre-activations.
    topk=$(get topk_alone_ms); [ -z "$topk" ] && topk=$(get topk_same_ms); [ -z "$topk" ] && topk=$(get topk_ms)
    printf '%-12s %-12s %4s %10s %10s %10s %9s %9s %9s %9s %9s\n' "$(get impl)" "$(get dIn)x$(get numLatents)" "$(get k)" \
      "$(get tokens_per_s)" "$(get tokens_per_s_pinned)" "$(get tokens_per_s_prefetched)" "$(get step_ms)" "$(get device_ms)" "$(get floor_ms)" "$topk" \
      "$(get select_ms)"
  done
  # The issue's targets, per shape: saekit's step (prefetched batches) against sparsify's in
  # PyTorch (>= 1.5x) and against the floor (<= 1.3x).
  { grep '^BENCH impl=saekit' "$OUT_DIR/bench.log" 2>/dev/null || true; } | while read -r line; do
    sk=$(get tokens_per_s_prefetched); [ -n "$sk" ] || sk=$(get tokens_per_s)
    st=$(get step_prefetched_ms); [ -n "$st" ] || st=$(get step_ms)
    fl=$(get floor_ms)
    # Against the faster PyTorch variant (sparsify's sparse-encoder step or the dense one), as
    # the CPU bench does: the target is beating the best reference, not the slower one.
    best=$({ grep -E "^BENCH impl=torch(-dense)? dIn=$(get dIn) numLatents=$(get numLatents) " "$OUT_DIR/torch.log" 2>/dev/null || true; } |
      awk '{ impl = ""; tps = 0; for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "impl") impl = kv[2]; if (kv[1] == "tokens_per_s") tps = kv[2] + 0 }
             if (tps > best) { best = tps; which = impl } } END { if (best > 0) print best, which }')
    tt=${best%% *}; which=${best#* }
    awk -v s="$(get dIn)x$(get numLatents)" -v sk="$sk" -v tt="$tt" -v which="$which" -v st="$st" -v fl="$fl" 'BEGIN {
      printf "targets %s: saekit/torch %s (>= 1.5; the faster torch variant: %s), step/floor %s (<= 1.3)\n", s,
        (tt + 0 > 0 ? sprintf("%.2f", sk / tt) : "n/a"), (tt + 0 > 0 ? which : "none"), (fl + 0 > 0 ? sprintf("%.2f", st / fl) : "n/a") }'
  done
  { grep '^BENCH impl=saekit' "$OUT_DIR/bench.log" 2>/dev/null || true; } | while read -r line; do
    echo "saekit $(get dIn)x$(get numLatents) phases ms: gemm $(get gemm_ms) select $(get select_ms) (a block per row: $(get select_block_ms); topk alone $(get topk_alone_ms) vs $(get topk_alone_block_ms)) decode $(get decode_ms) (rows gathered twice: $(get decode_plain_ms), device $(get device_plain_ms))" \
      "backward $(get backward_ms) update $(get update_ms); pageable $(get step_ms), driver-staged $(get step_driver_staging_ms)," \
      "AuxK step $(get step_auxk_ms) (per pair $(get step_auxk_pairs_ms)); float32 pre-activations: gemm $(get gemm_pre32_ms) select $(get select_pre32_ms) device $(get device_pre32_ms), floor gemm f32-out $(get floor_gemm_f32out_ms), topk alone f32 $(get topk_alone_f32_ms); floor gemm $(get floor_gemm_ms) + adam $(get floor_adam_ms); D2D $(get bw_GBps) GB/s"
  done
  { grep '^CORR' "$OUT_DIR/bench.log" 2>/dev/null || true; } | sed 's/^CORR /sparse correlation: /'
  { grep '^TRAINER' "$OUT_DIR/trainer.log" 2>/dev/null || true; } | while read -r line; do
    echo "API loop $(get dIn)x$(get numLatents): prefetched $(get tokens_per_s_prefetched) tok/s ($(get step_prefetched_ms) ms," \
      "JS copy $(get prefetch_js_ms) ms of a $(get batch_MiB) MiB batch), borrowed $(get tokens_per_s_borrowed) tok/s (JS $(get prefetch_borrowed_js_ms) ms)," \
      "plain arrays $(get tokens_per_s_plain) tok/s; Trainer.fit on a shuffled .npy: $(get fit_tokens_per_s) tok/s (copied: $(get fit_copied_tokens_per_s))"
  done
  if [ -n "${OUT:-}" ]; then echo "total $((SECONDS - START)) s; logs in \$OUT/logs.tgz"; else echo "total $((SECONDS - START)) s; logs in $OUT_DIR"; fi
} | tee "$OUT_DIR/summary.txt"
if [ -n "${OUT:-}" ]; then
  cp "$OUT_DIR/summary.txt" "$OUT/summary.txt" || true
  tar czf "$OUT/logs.tgz" -C "$OUT_DIR" . || echo "tar of the logs failed"
  ls -la "$OUT"
fi
exit "$FAILED"
