/**
 * Independent float64 references for the synthetic-data tests: the normal CDF, its inverse and the
 * bivariate-normal orthant probability by plain composite Simpson integration of the densities
 * (nothing shared with lib/data/synthetic.ts but Math.exp).
 */

const LOWER = -12; // Phi(-12) ~ 2e-33: the truncated mass is far below every tolerance used

function simpson(f: (x: number) => number, a: number, b: number, intervals: number): number {
  const n = intervals % 2 === 0 ? intervals : intervals + 1;
  const h = (b - a) / n;
  let s = f(a) + f(b);
  for (let i = 1; i < n; i++) s += (i % 2 === 1 ? 4 : 2) * f(a + i * h);
  return (s * h) / 3;
}

const pdf = (x: number): number => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);

/** Phi(x) = integral of the density from -12 to x (step <= 2e-3: Simpson error ~ 24 h^4 max|f''''| / 180 < 1e-11). */
export function phiRef(x: number): number {
  if (x <= LOWER) return 0;
  return simpson(pdf, LOWER, x, 2 * Math.ceil((x - LOWER) / 0.004));
}

/** Phi^-1(p) by bisection on phiRef. */
export function quantileRef(p: number): number {
  let lo = LOWER;
  let hi = 12;
  for (let i = 0; i < 80; i++) {
    const mid = 0.5 * (lo + hi);
    if (phiRef(mid) < p) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

/**
 * P(Z1 < a, Z2 < b) for standard bivariate normal Z with correlation rho (|rho| < 1), by 2-D
 * composite Simpson over [-9, a] x [-9, b] (mass outside < 1e-18; with ~0.01 steps the
 * quadrature error is below ~1e-7 for |rho| <= 0.9, far below the binomial bounds it serves,
 * which are of order 1e-3).
 */
export function orthantRef(a: number, b: number, rho: number): number {
  const lo = -9;
  if (a <= lo || b <= lo) return 0;
  const nx = 2 * Math.ceil((a - lo) / 0.02);
  const ny = 2 * Math.ceil((b - lo) / 0.02);
  const hx = (a - lo) / nx;
  const hy = (b - lo) / ny;
  const c = 1 / (2 * Math.PI * Math.sqrt(1 - rho * rho));
  const k = -0.5 / (1 - rho * rho);
  let total = 0;
  for (let i = 0; i <= nx; i++) {
    const x = lo + i * hx;
    const wx = i === 0 || i === nx ? 1 : i % 2 === 1 ? 4 : 2;
    let row = 0;
    for (let j = 0; j <= ny; j++) {
      const y = lo + j * hy;
      const wy = j === 0 || j === ny ? 1 : j % 2 === 1 ? 4 : 2;
      row += wy * Math.exp(k * (x * x - 2 * rho * x * y + y * y));
    }
    total += wx * row;
  }
  return (c * total * hx * hy) / 9;
}

/** E[X^k] for X = max(0, mean + std Z), by Simpson over the positive part (|error| < 1e-10). */
export function reluNormalMoment(k: number, mean: number, std: number): number {
  const lo = Math.max(0, mean - 12 * std);
  const hi = mean + 12 * std;
  if (hi <= 0) return 0;
  return simpson((x) => x ** k * (pdf((x - mean) / std) / std), lo, hi, 20000);
}

/** Binomial 5-sigma check: |count - n p| <= 5 sqrt(n p (1 - p)) (+0.5 for the discreteness). */
export function within5Sigma(count: number, n: number, p: number): boolean {
  return Math.abs(count - n * p) <= 5 * Math.sqrt(n * p * (1 - p)) + 0.5;
}
