#!/usr/bin/env bash
# Prepares .gpu/ (ignored by git) for a GPU machine that has no Node.js and no network: a
# Node binary (xz), the addon built without OpenBLAS (the GPU image has none), node-gyp-build,
# test/cuda.test.ts bundled with saekit into one file (bench/gpu/parity.ts; 'vitest' is the
# stand-in bench/gpu/mini-vitest.ts), and the Trainer check bench/gpu/trainer.ts bundled the same
# way. Run it here before a device call
# that names `.gpu` in carry; bench/gpu/run.sh then runs the parity suite through saekit's API.
#   bash bench/gpu/pack.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/.gpu"
rm -rf "$out"
mkdir -p "$out/build/Release" "$out/node_modules" "$out/bundle/gpu"

# 1. The addon without BLAS, built in a scratch copy so the checkout's own build stays.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$scratch")
ln -s "$root/node_modules" "$scratch/node_modules"
(cd "$scratch" && SAEKIT_BUILD_BLAS=none npx node-gyp rebuild -j "$(nproc)" >/dev/null)
cp "$scratch/build/Release/saekit.node" "$out/build/Release/"

# 2. node-gyp-build (the addon loader), the bundled parity suite and API training loop.
cp -r "$root/node_modules/node-gyp-build" "$out/node_modules/"
(cd "$root" && npx esbuild bench/gpu/parity.ts --bundle --platform=node --format=esm --target=node20 \
  --alias:vitest=./bench/gpu/mini-vitest.ts --outfile="$out/bundle/gpu/parity.mjs" --log-level=warning)
(cd "$root" && npx esbuild bench/gpu/trainer.ts --bundle --platform=node --format=esm --target=node20 \
  --outfile="$out/bundle/gpu/trainer.mjs" --log-level=warning)

# 3. The commit this bundle was made from (the device's copy of .git may lag the working tree).
c="$(git -C "$root" rev-parse --short HEAD)"
[ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ] || c="$c-dirty"
echo "$c" > "$out/commit"
# A hash of the sources the bundle and the plugin are built from: run.sh warns when the tree it
# runs on differs (a bundle packed before the last edit).
(cd "$root" && bash bench/gpu/tree-hash.sh) > "$out/tree-hash"

# 4. Node itself.
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$out/node.xz"
du -sh "$out"
