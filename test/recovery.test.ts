import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { linearAssignment } from '../lib/eval/assignment.js';
import { mcc, mmcs } from '../lib/eval/recovery.js';
import { distUrl, haveDist } from './helpers/child.js';
import { expectNamedError } from './helpers/errors.js';
import { bruteForceAssignment } from './helpers/eval-reference.js';
import { lcg, randomMatrix } from './helpers/reference.js';

/** Fresh seeds each run (reported in failure messages), as in the other suites. */
function freshSeed(salt: number): number {
  return (Date.now() ^ Math.imul(salt, 0x9e3779b1)) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Independent references.

/** Naive float64 cosine matrix [nA, nB], dot / (|a| |b|), zero rows give 0. */
function cosMatrix(A: Float32Array, B: Float32Array, d: number): Float64Array {
  const nA = A.length / d;
  const nB = B.length / d;
  const out = new Float64Array(nA * nB);
  for (let i = 0; i < nA; i++) {
    for (let j = 0; j < nB; j++) {
      let ab = 0;
      let aa = 0;
      let bb = 0;
      for (let k = 0; k < d; k++) {
        const a = A[i * d + k]!;
        const b = B[j * d + k]!;
        ab += a * b;
        aa += a * a;
        bb += b * b;
      }
      out[i * nB + j] = aa === 0 || bb === 0 ? 0 : ab / (Math.sqrt(aa) * Math.sqrt(bb));
    }
  }
  return out;
}

/**
 * Textbook Kuhn-Munkres (the O(n^4) star/prime/cover formulation), minimisation on a square
 * matrix of integers (exact arithmetic). Returns the assigned column of each row.
 */
function munkres(costIn: Float64Array, n: number): Int32Array {
  const C = Float64Array.from(costIn);
  for (let i = 0; i < n; i++) {
    let lo = Infinity;
    for (let j = 0; j < n; j++) lo = Math.min(lo, C[i * n + j]!);
    for (let j = 0; j < n; j++) C[i * n + j]! -= lo;
  }
  const starInRow = new Int32Array(n).fill(-1);
  const starInCol = new Int32Array(n).fill(-1);
  const primeInRow = new Int32Array(n).fill(-1);
  const rowCovered = new Uint8Array(n);
  const colCovered = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (C[i * n + j] === 0 && starInRow[i] === -1 && starInCol[j] === -1) {
        starInRow[i] = j;
        starInCol[j] = i;
      }
    }
  }
  for (;;) {
    colCovered.fill(0);
    rowCovered.fill(0);
    let covered = 0;
    for (let j = 0; j < n; j++) if (starInCol[j] !== -1) colCovered[j] = 1, covered++;
    if (covered === n) return starInRow;
    primeInRow.fill(-1);
    // Step 4/6 loop until an augmenting path is found.
    for (;;) {
      let zi = -1;
      let zj = -1;
      for (let i = 0; i < n && zi < 0; i++) {
        if (rowCovered[i]) continue;
        for (let j = 0; j < n; j++) {
          if (!colCovered[j] && C[i * n + j] === 0) {
            zi = i;
            zj = j;
            break;
          }
        }
      }
      if (zi < 0) {
        let lo = Infinity;
        for (let i = 0; i < n; i++) if (!rowCovered[i]) for (let j = 0; j < n; j++) if (!colCovered[j]) lo = Math.min(lo, C[i * n + j]!);
        for (let i = 0; i < n; i++) {
          for (let j = 0; j < n; j++) {
            if (rowCovered[i]) C[i * n + j]! += lo;
            if (!colCovered[j]) C[i * n + j]! -= lo;
          }
        }
        continue;
      }
      primeInRow[zi] = zj;
      const sj = starInRow[zi]!;
      if (sj !== -1) {
        rowCovered[zi] = 1;
        colCovered[sj] = 0;
        continue;
      }
      // Step 5: alternate primes and stars starting from the uncovered prime.
      let i = zi;
      let j = zj;
      for (;;) {
        const si = starInCol[j]!;
        starInRow[i] = j;
        starInCol[j] = i;
        if (si === -1) break;
        const pj = primeInRow[si]!;
        starInRow[si] = -1; // re-starred on the next turn
        i = si;
        j = pj;
      }
      break;
    }
  }
}

/**
 * Optimality certificate for a minimising assignment of a [n, m] matrix, n <= m, all rows
 * assigned: no negative cycle in the residual graph (row -> col for unused pairs at +c,
 * col -> row for used pairs at -c, free col -> S at 0, S -> used col at 0, where S lets a row
 * move to a free column). Bellman-Ford from a virtual source; returns true if optimal.
 */
function noNegativeCycle(cost: Float64Array, n: number, m: number, col4row: Int32Array, tol: number): boolean {
  const row4col = new Int32Array(m).fill(-1);
  for (let i = 0; i < n; i++) row4col[col4row[i]!] = i;
  // Nodes: rows 0..n-1, cols n..n+m-1, S = n+m. All start at distance 0 (virtual source).
  const dist = new Float64Array(n + m + 1);
  const V = n + m + 1;
  for (let iter = 0; iter < V; iter++) {
    let changed = false;
    for (let i = 0; i < n; i++) {
      const di = dist[i]!;
      for (let j = 0; j < m; j++) {
        if (col4row[i] === j) continue;
        const nd = di + cost[i * m + j]!;
        if (nd < dist[n + j]! - tol) {
          dist[n + j] = nd;
          changed = true;
        }
      }
    }
    for (let j = 0; j < m; j++) {
      const i = row4col[j]!;
      if (i >= 0) {
        // col -> its row (undo the pair), and S -> this used column.
        const nd = dist[n + j]! - cost[i * m + j]!;
        if (nd < dist[i]! - tol) {
          dist[i] = nd;
          changed = true;
        }
        if (dist[n + m]! < dist[n + j]! - tol) {
          dist[n + j] = dist[n + m]!;
          changed = true;
        }
      } else if (dist[n + j]! < dist[n + m]! - tol) {
        dist[n + m] = dist[n + j]!; // free col -> S
        changed = true;
      }
    }
    if (!changed) return true;
  }
  return false;
}

function checkMatching(r: { rowToCol: Int32Array; colToRow: Int32Array; total: number }, cost: Float64Array, rows: number, cols: number): void {
  let assigned = 0;
  let total = 0;
  for (let i = 0; i < rows; i++) {
    const j = r.rowToCol[i]!;
    if (j < 0) continue;
    assigned++;
    expect(r.colToRow[j]).toBe(i);
    total += cost[i * cols + j]!;
  }
  for (let j = 0; j < cols; j++) if (r.colToRow[j]! >= 0) expect(r.rowToCol[r.colToRow[j]!]).toBe(j);
  expect(assigned).toBe(Math.min(rows, cols));
  expect(r.total).toBe(total);
}

// ---------------------------------------------------------------------------------------------

describe('linearAssignment', () => {
  it('matches brute force over all matchings for small random matrices (square and rectangular, min and max)', () => {
    const seed = freshSeed(1);
    const next = lcg(seed);
    let cases = 0;
    for (let rows = 1; rows <= 6; rows++) {
      for (let cols = 1; cols <= 6; cols++) {
        for (let rep = 0; rep < 3; rep++) {
          // Alternate continuous costs (with negatives) and small integers (many ties).
          const cost = Float64Array.from({ length: rows * cols }, () => (rep === 1 ? Math.floor(next() * 4) : 20 * next() - 10));
          for (const maximize of [false, true]) {
            const r = linearAssignment(cost, rows, cols, { maximize });
            checkMatching(r, cost, rows, cols);
            const want = bruteForceAssignment(cost, rows, cols, maximize);
            expect(Math.abs(r.total - want), `seed ${seed} ${rows}x${cols} maximize=${maximize}`).toBeLessThanOrEqual(1e-9 * (1 + Math.abs(want)));
            cases++;
          }
        }
      }
    }
    for (const [rows, cols] of [
      [7, 7],
      [5, 7],
      [7, 4],
    ]) {
      const cost = Float64Array.from({ length: rows! * cols! }, () => next());
      const r = linearAssignment(cost, rows!, cols!);
      checkMatching(r, cost, rows!, cols!);
      expect(Math.abs(r.total - bruteForceAssignment(cost, rows!, cols!, false)), `seed ${seed} ${rows}x${cols}`).toBeLessThanOrEqual(1e-12);
      cases++;
    }
    expect(cases).toBe(6 * 6 * 3 * 2 + 3);
  });

  it('is optimal on a 300 x 300 random instance: equals textbook Munkres, and no negative residual cycle', () => {
    const seed = freshSeed(2);
    const next = lcg(seed);
    const n = 300;
    // Integer costs keep Munkres' zero tests exact.
    const cost = Float64Array.from({ length: n * n }, () => Math.floor(next() * 1e6));
    const r = linearAssignment(cost, n, n);
    checkMatching(r, cost, n, n);
    const ref = munkres(cost, n);
    let refTotal = 0;
    for (let i = 0; i < n; i++) refTotal += cost[i * n + ref[i]!]!;
    expect(r.total, `seed ${seed}`).toBe(refTotal);
    expect(noNegativeCycle(cost, n, n, r.rowToCol, 0.5), `seed ${seed}`).toBe(true);
  });

  it('is optimal on rectangular float instances (negative-cycle certificate), either orientation', () => {
    const seed = freshSeed(3);
    const next = lcg(seed);
    for (const [rows, cols] of [
      [120, 211],
      [211, 120],
    ] as const) {
      const cost = Float64Array.from({ length: rows * cols }, () => next() - 0.3);
      const r = linearAssignment(cost, rows, cols);
      checkMatching(r, cost, rows, cols);
      // The certificate wants rows <= cols: transpose the wide case.
      const [n, m] = rows <= cols ? [rows, cols] : [cols, rows];
      const C = new Float64Array(n * m);
      const col4row = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < m; j++) C[i * m + j] = rows <= cols ? cost[i * cols + j]! : cost[j * cols + i]!;
        col4row[i] = rows <= cols ? r.rowToCol[i]! : r.colToRow[i]!;
      }
      expect(noNegativeCycle(C, n, m, col4row, 1e-12), `seed ${seed} ${rows}x${cols}`).toBe(true);
      // The certificate is not vacuous: swapping two assignments is detected as suboptimal
      // (unless the swap happens to cost exactly the same).
      const bad = Int32Array.from(col4row);
      [bad[0], bad[1]] = [bad[1]!, bad[0]!];
      const delta = C[bad[0]!]! + C[m + bad[1]!]! - C[col4row[0]!]! - C[m + col4row[1]!]!;
      if (delta > 1e-9) expect(noNegativeCycle(C, n, m, bad, 1e-12)).toBe(false);
    }
  });

  it('solves 1000 x 1000 (maximising) to a valid matching whose total is its cost (its speed: npm run bench -- correlate)', () => {
    const seed = freshSeed(4);
    const next = lcg(seed);
    const n = 1000;
    const cost = Float64Array.from({ length: n * n }, () => next());
    const r = linearAssignment(cost, n, n, { maximize: true });
    checkMatching(r, cost, n, n);
  });

  it('handles empty sides and rejects bad input with named errors', () => {
    const e = linearAssignment(new Float64Array(0), 0, 3);
    expect(Array.from(e.colToRow)).toEqual([-1, -1, -1]);
    expect(e.total).toBe(0);
    const err = expectNamedError;
    err(() => linearAssignment(new Float64Array(5), 2, 3), 'cost', 'ERR_SAEKIT_SHAPE');
    err(() => linearAssignment(new Float32Array(6) as unknown as Float64Array, 2, 3), 'cost', 'ERR_SAEKIT_DTYPE');
    err(() => linearAssignment(new Float64Array(6), -1, 3), 'rows');
    err(() => linearAssignment(new Float64Array(6), 2, 3.5), 'cols');
    err(() => linearAssignment(Float64Array.of(0, 1, NaN, 0, 0, 0), 2, 3), 'cost[2]', 'ERR_SAEKIT_NONFINITE');
    err(() => linearAssignment(new Float64Array(6), 2, 3, { maximize: 1 as unknown as boolean }), 'options.maximize');
  });
});

describe('mmcs', () => {
  const SHAPES: [number, number, number][] = [
    [37, 23, 19],
    [23, 37, 19],
    [1, 5, 3],
    [64, 64, 33],
    [130, 7, 1],
  ];
  for (const [nL, nT, d] of SHAPES) {
    it(`matches a naive float64 reference for ${nL} learned x ${nT} truth, d=${d}`, async () => {
      const seed = freshSeed(nL * 131 + nT);
      const next = lcg(seed);
      const learned = randomMatrix(nL, d, next);
      const truth = randomMatrix(nT, d, next);
      learned.fill(0, 0, d); // a zero row: cosine 0 with everything
      const C = cosMatrix(learned, truth, d); // [nL, nT]
      for (const direction of ['truth-to-learned', 'learned-to-truth'] as const) {
        for (const similarity of ['cos', 'abs-cos'] as const) {
          const got = await mmcs(learned, truth, { d, direction, similarity });
          const [nS, nO] = direction === 'truth-to-learned' ? [nT, nL] : [nL, nT];
          const at = (s: number, o: number) => {
            const c = direction === 'truth-to-learned' ? C[o * nT + s]! : C[s * nT + o]!;
            return similarity === 'abs-cos' ? Math.abs(c) : c;
          };
          expect(got.perRow.length).toBe(nS);
          let sum = 0;
          for (let s = 0; s < nS; s++) {
            let best = -Infinity;
            for (let o = 0; o < nO; o++) best = Math.max(best, at(s, o));
            sum += best;
            // Both are float64 sums of <= 33 exact products: they agree to ~1e-15.
            expect(Math.abs(got.perRow[s]! - best), `seed ${seed} ${direction} ${similarity} row ${s}`).toBeLessThanOrEqual(1e-12);
            expect(Math.abs(at(s, got.best[s]!) - best)).toBeLessThanOrEqual(1e-12);
          }
          expect(Math.abs(got.mean - sum / nS)).toBeLessThanOrEqual(1e-12);
        }
      }
      if (nL > 1) {
        // The zero learned row scores 0 against every truth row.
        const r = await mmcs(learned, truth, { d, direction: 'learned-to-truth' });
        expect(r.perRow[0]).toBe(0);
      }
    });
  }

  it('a large case crosses tile boundaries and still matches the reference', async () => {
    const seed = freshSeed(5);
    const next = lcg(seed);
    const [nL, nT, d] = [301, 157, 9]; // 157 source rows: blocks of 64, 64 and a ragged 29
    const learned = randomMatrix(nL, d, next);
    const truth = randomMatrix(nT, d, next);
    const C = cosMatrix(learned, truth, d);
    const got = await mmcs(learned, truth, { d, similarity: 'abs-cos' });
    for (let t = 0; t < nT; t++) {
      let best = 0;
      for (let l = 0; l < nL; l++) best = Math.max(best, Math.abs(C[l * nT + t]!));
      expect(Math.abs(got.perRow[t]! - best), `seed ${seed}`).toBeLessThanOrEqual(1e-12);
    }
    const [nL2, nT2, d2] = [45, 70, 1000]; // 32 truth rows per tile: 3 tiles, ragged last one
    const l2 = randomMatrix(nL2, d2, next);
    const t2 = randomMatrix(nT2, d2, next);
    const C2 = cosMatrix(l2, t2, d2);
    const got2 = await mmcs(l2, t2, { d: d2, direction: 'learned-to-truth' });
    for (let l = 0; l < nL2; l++) {
      let best = -Infinity;
      for (let t = 0; t < nT2; t++) best = Math.max(best, C2[l * nT2 + t]!);
      expect(Math.abs(got2.perRow[l]! - best), `seed ${seed}`).toBeLessThanOrEqual(1e-12);
    }
  });
  it('best is the first of tied rows: several power-of-two copies of a truth row (cosine exactly 1) name the lowest index', async () => {
    const seed = freshSeed(17);
    const next = lcg(seed);
    const d = 3 + Math.floor(next() * 9);
    const nT = 5 + Math.floor(next() * 7);
    const truth = randomMatrix(nT, d, next);
    // Learned: random rows plus 2-4 copies of each truth row, scaled by +-2^e, at random places.
    const rows: { t: number; s: number }[] = [];
    for (let t = 0; t < nT; t++) for (let c = 2 + Math.floor(next() * 3); c > 0; c--) rows.push({ t, s: (next() < 0.5 ? -1 : 1) * 2 ** (Math.floor(next() * 9) - 4) });
    for (let r = 3 + Math.floor(next() * 40); r > 0; r--) rows.push({ t: -1, s: 1 });
    for (let i = rows.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [rows[i], rows[j]] = [rows[j]!, rows[i]!];
    }
    const nL = rows.length;
    const learned = randomMatrix(nL, d, next);
    rows.forEach(({ t, s }, l) => {
      if (t >= 0) for (let k = 0; k < d; k++) learned[l * d + k] = truth[t * d + k]! * s;
    });
    for (const similarity of ['cos', 'abs-cos'] as const) {
      const got = await mmcs(learned, truth, { d, similarity });
      for (let t = 0; t < nT; t++) {
        // The first learned row that is a copy of t (with a positive scale for the signed cosine).
        const first = rows.findIndex((r) => r.t === t && (similarity === 'abs-cos' || r.s > 0));
        if (first < 0) continue; // only negative copies: no exact tie to check
        expect(got.perRow[t], `seed ${seed} ${similarity} truth ${t}`).toBe(1);
        expect(got.best[t], `seed ${seed} ${similarity} truth ${t}`).toBe(first);
      }
    }
  });
});

describe('mcc', () => {
  for (const [nL, nT, d] of [
    [6, 4, 5],
    [4, 6, 5],
    [5, 5, 3],
    [7, 7, 11],
  ] as const) {
    it(`equals the brute-force best matching for ${nL} learned x ${nT} truth, d=${d}`, async () => {
      const seed = freshSeed(nL * 17 + nT);
      const next = lcg(seed);
      const learned = randomMatrix(nL, d, next);
      const truth = randomMatrix(nT, d, next);
      const C = cosMatrix(truth, learned, d); // [nT, nL]
      for (const similarity of ['abs-cos', 'cos'] as const) {
        const S = C.map((c) => (similarity === 'abs-cos' ? Math.abs(c) : c));
        const got = await mcc(learned, truth, { d, similarity });
        const k = Math.min(nL, nT);
        const want = bruteForceAssignment(S, nT, nL, true) / k;
        expect(Math.abs(got.mean - want), `seed ${seed} ${similarity}`).toBeLessThanOrEqual(1e-12);
        const seen = new Set<number>();
        let matched = 0;
        for (let t = 0; t < nT; t++) {
          const l = got.pairs[t]!;
          if (l < 0) {
            expect(Number.isNaN(got.cos[t])).toBe(true);
            continue;
          }
          matched++;
          expect(seen.has(l)).toBe(false);
          seen.add(l);
          expect(Math.abs(got.cos[t]! - C[t * nL + l]!)).toBeLessThanOrEqual(1e-12);
        }
        expect(matched).toBe(k);
      }
    });
  }

  it('matches an independent Munkres matching on a 40 x 55 instance', async () => {
    const seed = freshSeed(6);
    const next = lcg(seed);
    const [nL, nT, d] = [55, 40, 13];
    const learned = randomMatrix(nL, d, next);
    const truth = randomMatrix(nT, d, next);
    const C = cosMatrix(truth, learned, d);
    // Square-pad 1 - |cos| with zero rows (dummy truth rows cost nothing), scaled to integers
    // so that Munkres' exact zero tests apply; compare totals in the same integer units.
    const n = nL;
    const cost = new Float64Array(n * n);
    for (let t = 0; t < nT; t++) for (let l = 0; l < nL; l++) cost[t * n + l] = Math.round((1 - Math.abs(C[t * nL + l]!)) * 2 ** 40);
    const ref = munkres(cost, n);
    let refTotal = 0;
    for (let t = 0; t < nT; t++) refTotal += cost[t * n + ref[t]!]!;
    const got = await mcc(learned, truth, { d });
    let gotTotal = 0;
    for (let t = 0; t < nT; t++) gotTotal += cost[t * n + got.pairs[t]!]!;
    // Rounding to 2^-40 can reorder near-ties by at most nT units.
    expect(Math.abs(gotTotal - refTotal), `seed ${seed}`).toBeLessThanOrEqual(nT);
  });

  it('the Hungarian (one-to-one) value never exceeds the max variant', async () => {
    const seed = freshSeed(7);
    const next = lcg(seed);
    const learned = randomMatrix(50, 8, next);
    const truth = randomMatrix(30, 8, next);
    const a = (await mcc(learned, truth, { d: 8 })).mean;
    const b = (await mmcs(learned, truth, { d: 8, similarity: 'abs-cos' })).mean;
    expect(a).toBeLessThanOrEqual(b + 1e-15);
    expect(a).toBeGreaterThan(0.3);
  });
});

describe('recovery of a permuted, rescaled copy of the truth', () => {
  function copy(truth: Float32Array, nT: number, d: number, scales: number[], perm: number[]): Float32Array {
    const out = new Float32Array(perm.length * d);
    for (let l = 0; l < perm.length; l++) for (let k = 0; k < d; k++) out[l * d + k] = truth[perm[l]! * d + k]! * scales[l]!;
    return out;
  }

  function shuffled(n: number, next: () => number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [p[i], p[j]] = [p[j]!, p[i]!];
    }
    return p;
  }

  it('gives exactly 1 for power-of-two scales of either sign (MMCS |cos| both directions, MCC)', async () => {
    const seed = freshSeed(8);
    const next = lcg(seed);
    const [nT, d] = [41, 29];
    const truth = randomMatrix(nT, d, next);
    const perm = shuffled(nT, next);
    const pow2 = [0.25, 0.5, 1, 2, 8];
    const scales = perm.map(() => pow2[Math.floor(next() * pow2.length)]! * (next() < 0.5 ? -1 : 1));
    const learned = copy(truth, nT, d, scales, perm);
    for (const direction of ['truth-to-learned', 'learned-to-truth'] as const) {
      const r = await mmcs(learned, truth, { d, direction, similarity: 'abs-cos' });
      expect(r.mean, `seed ${seed} ${direction}`).toBe(1);
    }
    const m = await mcc(learned, truth, { d });
    expect(m.mean, `seed ${seed}`).toBe(1);
    for (let l = 0; l < nT; l++) {
      expect(m.pairs[perm[l]!]).toBe(l);
      expect(m.cos[perm[l]!]).toBe(Math.sign(scales[l]!));
    }
    // Signed cosine (the MMCS default): flipped rows no longer count as recovered...
    const signed = await mmcs(learned, truth, { d });
    for (let l = 0; l < nT; l++) {
      const t = perm[l]!;
      if (scales[l]! > 0) expect(signed.perRow[t]).toBe(1);
      else expect(signed.perRow[t]!).toBeLessThan(1);
    }
    // ...and with positive scales only the signed MMCS and the signed MCC are exactly 1 too.
    const positive = copy(truth, nT, d, scales.map(Math.abs), perm);
    expect((await mmcs(positive, truth, { d })).mean).toBe(1);
    expect((await mmcs(positive, truth, { d, direction: 'learned-to-truth' })).mean).toBe(1);
    expect((await mcc(positive, truth, { d, similarity: 'cos' })).mean).toBe(1);
  });

  it('gives 1 up to float32 rounding for arbitrary scales, and extra learned rows do not hurt truth-to-learned', async () => {
    const seed = freshSeed(9);
    const next = lcg(seed);
    const [nT, d, extra] = [33, 17, 20];
    const truth = randomMatrix(nT, d, next);
    const perm = [...shuffled(nT, next)];
    const scales = perm.map(() => (0.1 + 10 * next()) * (next() < 0.5 ? -1 : 1));
    const exact = copy(truth, nT, d, scales, perm);
    const learned = new Float32Array((nT + extra) * d);
    learned.set(exact);
    learned.set(randomMatrix(extra, d, next), nT * d);
    // Each copied entry is rounded to float32 (relative 2^-24), so 1 - cos = O(2^-48): 1e-12 is ample.
    expect(1 - (await mmcs(learned, truth, { d, similarity: 'abs-cos' })).mean, `seed ${seed}`).toBeLessThanOrEqual(1e-12);
    const m = await mcc(learned, truth, { d });
    expect(1 - m.mean, `seed ${seed}`).toBeLessThanOrEqual(1e-12);
    for (let l = 0; l < nT; l++) expect(m.pairs[perm[l]!]).toBe(l);
    // The other direction averages over the random extra rows too, so it drops below 1.
    expect((await mmcs(learned, truth, { d, direction: 'learned-to-truth', similarity: 'abs-cos' })).mean).toBeLessThan(0.99);
  });
});

describe('recovery: cosines are clamped to [-1, 1]', () => {
  it('scaled float32 copies whose float64 cosine rounds above 1 give exactly 1 (mmcs both directions, mcc), never more', async () => {
    // Found by the mutation round: without the clamp about 1% of such pairs gave 1 + 2^-52.
    // The pairs are searched for with the same index-order float64 sums the module uses.
    const seed = freshSeed(60);
    const next = lcg(seed);
    const d = 11;
    const truthRows: number[] = [];
    const learnedRows: number[] = [];
    let found = 0;
    for (let tries = 0; found < 6 && tries < 100_000; tries++) {
      const a = Float32Array.from({ length: d }, () => next() * 2 - 1);
      const s = 0.1 + 10 * next();
      const b = Float32Array.from(a, (v) => v * s);
      let ab = 0;
      let aa = 0;
      let bb = 0;
      for (let k = 0; k < d; k++) {
        ab += a[k]! * b[k]!;
        aa += a[k]! * a[k]!;
        bb += b[k]! * b[k]!;
      }
      if (ab / Math.sqrt(aa * bb) > 1) {
        truthRows.push(...a);
        learnedRows.push(...b);
        found++;
      }
    }
    expect(found, `seed ${seed}`).toBe(6);
    const truth = Float32Array.from(truthRows);
    const learned = Float32Array.from(learnedRows);
    for (const direction of ['truth-to-learned', 'learned-to-truth'] as const) {
      for (const similarity of ['cos', 'abs-cos'] as const) {
        const r = await mmcs(learned, truth, { d, direction, similarity });
        expect(Array.from(r.perRow), `seed ${seed} ${direction} ${similarity}`).toEqual(new Array(found).fill(1));
        expect(r.mean).toBe(1);
      }
    }
    for (const similarity of ['cos', 'abs-cos'] as const) {
      const m = await mcc(learned, truth, { d, similarity });
      expect(Array.from(m.cos), `seed ${seed} ${similarity}`).toEqual(new Array(found).fill(1));
      expect(m.mean).toBe(1);
    }
  });
});

describe('recovery: the event loop runs meanwhile', () => {
  it('mmcs and mcc let timers run between tiles; mcc matches one to one', async () => {
    const next = lcg(freshSeed(11));
    const [nL, nT, d] = [6000, 600, 64];
    const learned = randomMatrix(nL, d, next);
    const truth = randomMatrix(nT, d, next);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    try {
      const t0 = performance.now();
      const r = await mmcs(learned, truth, { d, direction: 'learned-to-truth' });
      const ms = performance.now() - t0;
      // About one tick per 20 ms slice (timers fire between slices); only checked on a run long
      // enough for several slices.
      if (ms > 200) expect(ticks, `${ms.toFixed(0)} ms`).toBeGreaterThanOrEqual(3);
      expect(r.perRow.length).toBe(nL);
      ticks = 0;
      const m = await mcc(learned, truth, { d });
      expect(m.pairs.filter((p) => p >= 0).length).toBe(nT);
      expect(new Set(m.pairs).size).toBe(nT);
    } finally {
      clearInterval(timer);
    }
  });
});

describe('recovery: validation', () => {
  it('rejects bad inputs with named errors', async () => {
    const a = new Float32Array(12);
    const err = async (p: Promise<unknown>, name: string, code = 'ERR_SAEKIT_ARG') =>
      expect(p).rejects.toMatchObject({ code, message: expect.stringContaining(name) });
    await err(mmcs(a, a, {} as { d: number }), 'options.d');
    await err(mmcs(a, new Float32Array(10), { d: 4 }), 'truth', 'ERR_SAEKIT_SHAPE');
    await err(mmcs(new Float32Array(0), a, { d: 4 }), 'learned', 'ERR_SAEKIT_SHAPE');
    await err(mmcs(Array.from(a) as unknown as Float32Array, a, { d: 4 }), 'learned');
    await err(mmcs(a, a, { d: 4, direction: 'both' as 'truth-to-learned' }), 'options.direction');
    await err(mmcs(a, a, { d: 4, similarity: 'dot' as 'cos' }), 'options.similarity');
    await err(mcc(a, Float32Array.of(1, 2, Infinity, 4), { d: 4 }), 'truth[2]', 'ERR_SAEKIT_NONFINITE');
    await err(mcc(a, a, undefined as unknown as { d: number }), 'options.d');
  });
});

describe('recovery: inputs detached while the call runs', () => {
  // The tiles read learned and truth across pauses; detached, they read undefined: mmcs resolved
  // with a mean of NaN or 0 and mcc failed with ERR_SAEKIT_NONFINITE naming an internal 'cost'.
  const [n, d] = [1024, 128]; // ~1.3e8 multiply-adds: many 20 ms slices
  for (const fn of ['mmcs', 'mcc'] as const) {
    for (const which of ['learned', 'truth'] as const) {
      it(`${fn}: ${which} detached at the first pause is ERR_SAEKIT_ARG naming it`, async () => {
        const next = lcg(freshSeed(fn === 'mmcs' ? 21 : 22));
        const inputs = { learned: randomMatrix(n, d, next), truth: randomMatrix(n, d, next) };
        const p = fn === 'mmcs' ? mmcs(inputs.learned, inputs.truth, { d }) : mcc(inputs.learned, inputs.truth, { d });
        setImmediate(() => structuredClone(inputs[which].buffer, { transfer: [inputs[which].buffer as ArrayBuffer] }));
        await expect(p).rejects.toMatchObject({
          code: 'ERR_SAEKIT_ARG',
          message: `Expected ${which} to keep its ${n * d} values until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`,
        });
      }, 30_000);
    }
  }
});

describe('mcc: a cost matrix that cannot be allocated', () => {
  // Not under AddressSanitizer (native/tools/sanitize.sh preloads it): its shadow memory cannot be mapped under ulimit -v.
  it.skipIf(!haveDist || /asan/.test(process.env.LD_PRELOAD ?? ''))('is ERR_SAEKIT_MEMORY naming its size, not a bare RangeError (a child process limited to 6 GB of address space; 32000 x 32000 needs 7.6 GiB)', () => {
    const script = `import { metrics } from ${distUrl};
      const n = 32000;
      const L = Float32Array.from({ length: n }, (_, i) => 1 + (i % 7));
      const T = Float32Array.from({ length: n }, (_, i) => 1 + (i % 5));
      try { await metrics.mcc(L, T, { d: 1 }); console.log('resolved'); }
      catch (e) { console.log(JSON.stringify({ name: e.constructor.name, code: e.code, message: e.message })); }`;
    const r = spawnSync('bash', ['-c', 'ulimit -v 6000000 && "$0" --input-type=module -e "$1"', process.execPath, script], { encoding: 'utf8', timeout: 60_000 });
    const last = r.stdout.trim().split('\n').pop()!;
    expect(JSON.parse(last)).toMatchObject({ name: 'SaekitError', code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(/^mcc needs a 32000 x 32000 float64 cost matrix \(7\.6 GiB\), which cannot be allocated here/) });
  });
});
