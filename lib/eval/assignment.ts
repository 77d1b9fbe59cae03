/**
 * Exact linear assignment (rectangular allowed) by shortest augmenting paths: one Dijkstra-like
 * search per row of the smaller side over reduced costs c_ij - u_i - v_j, with the dual update of
 * Jonker and Volgenant (1987) in the rectangular form described by Crouse ("On implementing 2D
 * rectangular assignment algorithms", IEEE TAES 2016). O(n^2 m) worst case for n <= m; every row
 * of the smaller side is assigned.
 *
 * Two entry points with the same contract:
 * - linearAssignment(): synchronous, in JS, for small problems (a few hundred rows: ~0.1-1 s at
 *   n = 2048); it is also the reference the native solver is tested against.
 * - linearAssignmentAsync(): the native solver (native/cpu/lap.cpp, same algorithm plus LAPJV's
 *   column reduction and augmenting row reduction for square problems) run off the JS thread;
 *   use it for anything large (match 'hungarian' and saeMatch do). The cost is copied to native
 *   memory (rows x cols x 8 bytes) and checked there, a few million values per turn of the event
 *   loop, and solved on the executor thread.
 * Both return an optimal assignment; when several are optimal they may return different ones.
 */
import { yieldToEventLoop } from '../slices.js';
import { argError, arrayTypeError, callNative, settleNative } from '../errors.js';
import { native } from '../native/index.js';
import { checkBool, checkInt, checkKept, checkOptions, optionNames } from '../validate.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const ASSIGNMENT_OPTIONS = optionNames<AssignmentOptions>({ maximize: true });

/** Options of linearAssignment() and linearAssignmentAsync(). */
export interface AssignmentOptions {
  /** Maximise the total instead of minimising it. Default false. */
  maximize?: boolean;
}

/** An optimal assignment: each row's column, each column's row, and the total cost. */
export interface AssignmentResult {
  /** Column of each row, -1 if unassigned (only when rows > cols). */
  rowToCol: Int32Array;
  /** Row of each column, -1 if unassigned (only when cols > rows). */
  colToRow: Int32Array;
  /** Sum of cost over the assigned pairs. */
  total: number;
}

/** Largest cost magnitude accepted: differences of costs and dual values stay finite below it. */
const MAX_COST = 1e300;

/** Checks linearAssignment's arguments but not the cost's values; returns the sizes and the direction. */
function checkShape(cost: Float64Array, rows: number, cols: number, options: AssignmentOptions | undefined) {
  const r = checkInt('rows', rows, 0, 2 ** 31 - 1);
  const c = checkInt('cols', cols, 0, 2 ** 31 - 1);
  if (!(cost instanceof Float64Array)) throw arrayTypeError('cost', 'a Float64Array', cost);
  if (cost.length !== r * c) throw argError('cost', `a Float64Array of length rows * cols = ${r * c}`, cost, 'ERR_SAEKIT_SHAPE');
  const o = checkOptions('options', options, ASSIGNMENT_OPTIONS);
  const maximize = o.maximize === undefined ? false : checkBool('options.maximize', o.maximize);
  return { r, c, maximize };
}

/** Checks linearAssignment's arguments; returns the sizes and the direction. */
function checkAssignment(cost: Float64Array, rows: number, cols: number, options: AssignmentOptions | undefined) {
  const { r, c, maximize } = checkShape(cost, rows, cols, options);
  for (let i = 0; i < cost.length; i++) {
    const v = cost[i]!;
    if (!Number.isFinite(v)) throw argError(`cost[${i}]`, 'finite number', v, 'ERR_SAEKIT_NONFINITE');
    // Reduced costs are differences of costs: near the float64 maximum they overflow.
    if (Math.abs(v) > MAX_COST) throw argError(`cost[${i}]`, 'a number of magnitude at most 1e300', v);
  }
  return { r, c, maximize };
}

/** Values copied to native memory per lapAppend call: a few milliseconds of the JS thread. */
const CHUNK_VALUES = 1 << 19;

/**
 * The native solver fed in chunks of whole rows: `rowsOf(row0, count)` returns rows row0 ..
 * row0 + count - 1 of the [rows, cols] cost (Float32Array or Float64Array, row-major), which the
 * addon copies and checks (finite, |v| <= 1e300; an error names `${name}[i]`); the JS thread is
 * given back between chunks and while the solver runs. Resolves to rowToCol. @internal
 */
export async function solveChunked(
  rows: number,
  cols: number,
  maximize: boolean,
  rowsOf: (row0: number, count: number) => Float32Array | Float64Array | Promise<Float32Array | Float64Array>,
  name: string,
  site: Error,
): Promise<Int32Array> {
  if (rows === 0 || cols === 0) return new Int32Array(rows).fill(-1);
  const lap = callNative(() => native().lapCreate(rows, cols, maximize));
  const step = Math.max(1, Math.floor(CHUNK_VALUES / cols));
  try {
    for (let row0 = 0; row0 < rows; row0 += step) {
      const chunk = await rowsOf(row0, Math.min(step, rows - row0));
      callNative(() => native().lapAppend(lap, chunk, row0, name));
      if (row0 + step < rows) await yieldToEventLoop();
    }
  } catch (err) {
    native().lapFree(lap); // the rows x cols buffer goes now, not whenever a GC collects the handle
    throw err;
  }
  return settleNative(callNative(() => native().lapRun(lap)), site);
}

/**
 * linearAssignment's contract, solved natively off the JS thread (see the module comment):
 * resolves to an optimal assignment of every row of the smaller side. The values are checked
 * (finite, magnitude at most 1e300) as they are copied, a few million at a time, so even a
 * 16k x 16k cost never holds the JS thread for more than a few milliseconds at once. `cost` is
 * read until the Promise settles: detached or resized before then, the call rejects with
 * ERR_SAEKIT_ARG naming cost.
 */
export async function linearAssignmentAsync(cost: Float64Array, rows: number, cols: number, options?: AssignmentOptions): Promise<AssignmentResult> {
  const site = new Error();
  const { r, c, maximize } = checkShape(cost, rows, cols, options);
  const length = cost.length;
  const rowsOf = (row0: number, count: number): Float64Array => {
    checkKept('cost', cost, length);
    return cost.subarray(row0 * c, (row0 + count) * c);
  };
  const rowToCol = await solveChunked(r, c, maximize, rowsOf, 'cost', site);
  checkKept('cost', cost, length); // total reads it again
  const colToRow = new Int32Array(c).fill(-1);
  let total = 0;
  for (let i = 0; i < r; i++) {
    const j = rowToCol[i]!;
    if (j < 0) continue;
    colToRow[j] = i;
    total += cost[i * c + j]!;
  }
  return { rowToCol, colToRow, total };
}

/**
 * Solves min (or max) sum_i cost[i, rowToCol[i]] over one-to-one matchings that assign every row
 * of the smaller side. `cost` is row-major [rows, cols] and is not modified. Synchronous, in JS:
 * for small problems; linearAssignmentAsync solves the same problem natively off the JS thread.
 */
export function linearAssignment(cost: Float64Array, rows: number, cols: number, options?: AssignmentOptions): AssignmentResult {
  const { r, c, maximize } = checkAssignment(cost, rows, cols, options);
  const rowToCol = new Int32Array(r).fill(-1);
  const colToRow = new Int32Array(c).fill(-1);
  if (r === 0 || c === 0) return { rowToCol, colToRow, total: 0 };

  // Work on [n, m] with n <= m (transposed if needed), minimisation, each row shifted by its
  // minimum so that all entries are >= 0 (every row is assigned, so the optimum is unchanged).
  const transpose = r > c;
  const n = transpose ? c : r;
  const m = transpose ? r : c;
  const sign = maximize ? -1 : 1;
  const work = new Float64Array(n * m);
  for (let i = 0; i < n; i++) {
    const base = i * m;
    for (let j = 0; j < m; j++) work[base + j] = sign * (transpose ? cost[j * c + i]! : cost[i * c + j]!);
  }
  shiftRows(work, n, m);
  const col4row = solveAssignment(work, n, m);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const j = col4row[i]!;
    const [row, col] = transpose ? [j, i] : [i, j];
    rowToCol[row] = col;
    colToRow[col] = row;
  }
  for (let i = 0; i < r; i++) if (rowToCol[i]! >= 0) total += cost[i * c + rowToCol[i]!]!;
  return { rowToCol, colToRow, total };
}

/** Subtracts each row's minimum, making every entry >= 0. @internal */
export function shiftRows(work: Float64Array, n: number, m: number): void {
  for (let i = 0; i < n; i++) {
    const base = i * m;
    let lo = Infinity;
    for (let j = 0; j < m; j++) if (work[base + j]! < lo) lo = work[base + j]!;
    for (let j = 0; j < m; j++) work[base + j]! -= lo;
  }
}

/**
 * The solver proper: minimises over `work` [n, m], n <= m, entries finite and >= 0 (it may be
 * reused by callers that build such a matrix directly). Returns the column of each row.
 * @internal
 */
export function solveAssignment(work: Float64Array, n: number, m: number): Int32Array {
  const u = new Float64Array(n);
  const v = new Float64Array(m);
  const col4row = new Int32Array(n).fill(-1);
  const row4col = new Int32Array(m).fill(-1);
  const spc = new Float64Array(m); // shortest path cost to each column in this search
  const path = new Int32Array(m); // predecessor row of each column
  const remaining = new Int32Array(m); // columns not yet scanned
  const rowsSeen = new Int32Array(n);
  const colsSeen = new Int32Array(m);

  for (let cur = 0; cur < n; cur++) {
    for (let j = 0; j < m; j++) remaining[j] = j;
    spc.fill(Infinity);
    let numRemaining = m;
    let nRows = 0;
    let nCols = 0;
    let minVal = 0;
    let i = cur;
    let sink = -1;
    while (sink < 0) {
      rowsSeen[nRows++] = i;
      const base = i * m;
      const ui = u[i]!;
      let lowest = Infinity;
      let at = -1;
      for (let t = 0; t < numRemaining; t++) {
        const j = remaining[t]!;
        const rc = minVal + work[base + j]! - ui - v[j]!;
        if (rc < spc[j]!) {
          path[j] = i;
          spc[j] = rc;
        }
        const s = spc[j]!;
        if (s < lowest || (s === lowest && row4col[j] === -1)) {
          lowest = s;
          at = t;
        }
      }
      if (at < 0) throw new Error('linearAssignment: no augmenting path (non-finite costs)');
      minVal = lowest;
      const j = remaining[at]!;
      colsSeen[nCols++] = j;
      remaining[at] = remaining[--numRemaining]!;
      if (row4col[j] === -1) sink = j;
      else i = row4col[j]!;
    }
    // Dual update, then augment along the path back to `cur`.
    u[cur]! += minVal;
    for (let t = 1; t < nRows; t++) {
      const r = rowsSeen[t]!;
      u[r]! += minVal - spc[col4row[r]!]!;
    }
    for (let t = 0; t < nCols; t++) {
      const j = colsSeen[t]!;
      v[j]! -= minVal - spc[j]!;
    }
    let j = sink;
    for (;;) {
      const r = path[j]!;
      row4col[j] = r;
      const prev = col4row[r]!;
      col4row[r] = j;
      j = prev;
      if (r === cur) break;
    }
  }
  return col4row;
}
