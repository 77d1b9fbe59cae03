#!/usr/bin/env bash
# Runs test files against the addon built with AddressSanitizer and UndefinedBehaviorSanitizer.
# The sanitizer build lives outside the repository (default /tmp/saekit-asan; the repository's
# build/ is never touched): a copy of native/, binding.gyp and package.json with -O1 -g
# -fsanitize=address,undefined, loaded through node-gyp-build's SAEKIT_PREBUILD. Node itself is
# not instrumented, so libasan is preloaded; leaks are not checked (V8 keeps memory to exit).
#   bash native/tools/sanitize.sh data sae io-fuzz     (test/<name>.test.ts, one process each)
#   ASAN_DIR=/path REBUILD=1 bash native/tools/sanitize.sh ...
# Prints one line per file (vitest's status, sanitizer reports found) and exits non-zero if any
# file failed or any report was written. A file can fail on its time limits alone: the sanitized
# addon runs 2-5x slower (the reports, not the status, are what this run is for).
# Takes about 5 minutes to build on 2 cores, then each file's usual time times 2-5.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
dir=${ASAN_DIR:-/tmp/saekit-asan}
[ $# -gt 0 ] || { echo "usage: bash native/tools/sanitize.sh <test name>... (e.g. data sae io-fuzz)" >&2; exit 2; }
if [ -n "${REBUILD:-}" ] || [ ! -f "$dir/build/Release/saekit.node" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -r native package.json "$dir/"
  ln -s "$root/node_modules" "$dir/node_modules"
  # -O3 -> -O1 -g with both sanitizers, in every target (the common flags), and in the link.
  python3 - "$root/binding.gyp" "$dir/binding.gyp" <<'EOF'
import sys
s = open(sys.argv[1]).read()
old = '"saekit_common_cflags": ["-O3",'
assert old in s, 'binding.gyp: saekit_common_cflags no longer starts with -O3'
s = s.replace(old, '"saekit_common_cflags": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",')
old = '"ldflags": ["-pthread"]'
assert old in s, 'binding.gyp: the addon ldflags changed'
s = s.replace(old, '"ldflags": ["-pthread", "-fsanitize=address,undefined"]')
open(sys.argv[2], 'w').write(s)
EOF
  (cd "$dir" && npx node-gyp configure > build.log 2>&1 && npx node-gyp build -j "$(nproc)" >> build.log 2>&1) ||
    { tail -30 "$dir/build.log"; exit 1; }
fi
logs=$dir/logs
rm -rf "$logs"
mkdir -p "$logs"
export LD_PRELOAD
LD_PRELOAD=$(gcc -print-file-name=libasan.so)
# allocator_may_return_null: tests ask for absurd sizes on purpose and expect ERR_SAEKIT_MEMORY.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:allocator_may_return_null=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export SAEKIT_PREBUILD=$dir
bad=0
# Reports, not warnings: with allocator_may_return_null an absurd size the tests ask for on purpose
# writes a log holding only "WARNING: AddressSanitizer failed to allocate ..." lines.
list_reports() { find "$logs" -maxdepth 1 \( -name 'asan.*' -o -name 'ubsan.*' \) -exec grep -lE 'ERROR: |runtime error:' {} + 2>/dev/null || true; }
for t in "$@"; do
  rc=0
  npx vitest run "test/$t.test.ts" > "$logs/test-$t.log" 2>&1 || rc=$?
  reports=$(list_reports | wc -l)
  echo "$t: vitest rc=$rc, sanitizer reports so far: $reports (log $logs/test-$t.log)"
  [ "$rc" -eq 0 ] || bad=1
done
if list_reports | grep -q .; then
  echo "sanitizer reports:"
  for f in $(list_reports); do echo "== $f"; head -20 "$f"; done
  bad=1
fi
exit $bad
