#!/usr/bin/env node
// Prints the compiler/linker flags for the CBLAS library, for binding.gyp.
//   node native/tools/blas-config.cjs defines|cflags|libs
// OpenBLAS is found with pkg-config (package `openblas`, then `cblas`). Without it nothing is
// printed and the addon builds with the portable built-in GEMM, so an install never fails.
//   SAEKIT_BUILD_BLAS=none   build without CBLAS even when it is installed
//   SAEKIT_BLAS_STATIC=1     link libopenblas.a's CBLAS (prebuilt binaries need no system library).
//                            Its LAPACK is left out: that is Fortran and would need libgfortran at
//                            run time (Debian's libgfortran.a is not position-independent, so it
//                            cannot go into the addon), so metrics.spectrum uses the built-in
//                            eigensolver there (saekit info: eigen builtin).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

function pkgConfig(args) {
  try {
    return execFileSync('pkg-config', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function find() {
  if (process.env.SAEKIT_BUILD_BLAS === 'none') return null;
  for (const pkg of ['openblas', 'cblas']) {
    if (pkgConfig(['--exists', pkg]) === null) continue;
    const cflags = pkgConfig(['--cflags', pkg]) || '';
    let libs = pkgConfig(['--libs', pkg]) || '';
    if (process.env.SAEKIT_BLAS_STATIC === '1') {
      const dirs = (pkgConfig(['--variable=libdir', pkg]) || '').split(/\s+/).filter(Boolean);
      const lib = dirs.map((d) => path.join(d, `lib${pkg}.a`)).find((f) => fs.existsSync(f));
      // native/cpu/spectrum.cpp's dsyevd_ is a weak reference: it pulls no archive member by
      // itself, so the static addon holds no Fortran and resolves it to null (the built-in solver).
      if (lib) libs = `${lib} -lpthread -lm`;
    }
    return { cflags, libs };
  }
  return null;
}

const what = process.argv[2];
const found = find();
if (!found) process.exit(0);
if (what === 'defines') process.stdout.write('SAEKIT_HAVE_CBLAS=1');
else if (what === 'cflags') process.stdout.write(found.cflags);
else if (what === 'libs') process.stdout.write(found.libs);
