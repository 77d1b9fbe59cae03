#!/usr/bin/env bash
# Checks that the built addon is safe on a baseline x86-64 + SSE4.2 CPU:
#  1. no VEX/EVEX (AVX) instruction in the objects compiled with baseline flags;
#  2. no weak / vague-linkage symbol (inline functions, template instances) defined by the
#     AVX2/AVX-512 objects, which the linker could otherwise pick for baseline callers.
set -euo pipefail
cd "$(dirname "$0")/../.."
obj=build/Release/obj.target
[ -d "$obj" ] || { echo "check-isa: build the addon first ($obj missing)"; exit 1; }
fail=0
for f in $(find "$obj/saekit" -name '*.o'); do
  n=$(objdump -d --no-show-raw-insn "$f" | grep -cE '\sv[a-z0-9]+\s+.*(%[xyz]mm|%k[0-7])' || true)
  if [ "$n" != "0" ]; then echo "check-isa: $f has $n AVX instructions but is built for baseline x86-64"; fail=1; fi
done
for f in $(find "$obj" -name '*_avx2.o' -o -name '*_avx512.o'); do
  weak=$(nm -C --defined-only "$f" | grep -E ' [WVu] ' || true)
  if [ -n "$weak" ]; then echo "check-isa: $f defines weak symbols the linker may share with baseline code:"; echo "$weak" | head; fail=1; fi
done
[ $fail = 0 ] && echo "check-isa: ok (baseline objects are SSE-only; ISA objects export no shared inline code)"
exit $fail
