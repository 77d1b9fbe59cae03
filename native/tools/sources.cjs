#!/usr/bin/env node
// Lists the addon's C++ sources for binding.gyp, split by the ISA flags they need:
//   node native/tools/sources.cjs base|avx2|avx512
// Files named *_avx2.cpp / *_avx512.cpp hold kernels compiled for those ISAs and are only called
// after a run-time CPU check (core/cpu_features.h); everything else is baseline x86-64 + SSE4.2.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const which = process.argv[2] || 'base';
const out = [];
for (const dir of ['core', 'cpu', 'napi']) {
  for (const f of fs.readdirSync(path.join(root, dir)).sort()) {
    if (!f.endsWith('.cpp')) continue;
    const isa = f.endsWith('_avx512.cpp') ? 'avx512' : f.endsWith('_avx2.cpp') ? 'avx2' : 'base';
    if (isa === which) out.push(`native/${dir}/${f}`);
  }
}
process.stdout.write(out.join(' '));
