#!/usr/bin/env bash
# Prints one hash of the sources the GPU check builds from (lib, native, bench/gpu, the build
# files), so pack.sh and run.sh can tell whether .gpu/ was packed from this tree. Needs no git.
set -euo pipefail
cd "$(dirname "$0")/../.."
find lib native bench/gpu CMakeLists.txt binding.gyp package.json -type f \
  \( -name '*.ts' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.inc' -o -name '*.cjs' \
     -o -name '*.py' -o -name '*.sh' -o -name 'CMakeLists.txt' -o -name 'binding.gyp' -o -name 'package.json' \) \
  -not -path 'native/cuda/emu/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
