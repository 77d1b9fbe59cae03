/**
 * PS-Eval, polysemous-word evaluation (docs/references.md §5.4, Minegishi et al., after
 * `gouki510/PS-Eval` `wic_eval.py`).
 *
 * Each pair holds the SAE activation vectors of the target word in two contexts and the WiC label:
 * `same: true` is label 1 (same meaning, "mono-context"), `same: false` is label 0 (different
 * meaning, "poly-context"). The "max feature" of a vector is its argmax over latents (first index
 * among ties, as numpy's argmax). The positive class is "same meaning":
 * - label 1, equal argmax: TP; label 1, different argmax: FN;
 * - label 0, equal argmax: FP; label 0, different argmax: TN.
 * Metrics: precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN),
 * accuracy = (TP+TN)/N, specificity = TN/(TN+FP). A metric whose denominator is 0 is NaN (the
 * reference would divide by zero).
 *
 * Selecting the token, building prompts and balancing the classes (the reference uses the first
 * cnt_0 label-1 rows) are the caller's job.
 */
import { argError, arrayTypeError, SaekitError } from '../errors.js';

/** One WiC pair: the SAE activations [numLatents] of the target word in two contexts, and the label. */
export interface PsEvalPair {
  /** Activations in the first context. */
  a: Float32Array;
  /** Activations in the second context. */
  b: Float32Array;
  /** true: same meaning (label 1); false: different meaning (label 0). */
  same: boolean;
}

/** Confusion counts and metrics of psEval() (positive class: same meaning; a 0/0 metric is NaN). */
export interface PsEvalResult {
  tp: number;
  fp: number;
  tn: number;
  fn: number;
  precision: number;
  recall: number;
  f1: number;
  accuracy: number;
  specificity: number;
}

function argmax(v: Float32Array, name: string): number {
  let best = 0;
  for (let i = 0; i < v.length; i++) {
    if (Number.isNaN(v[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `${name}[${i}] is NaN: expected numbers`);
    if (v[i] > v[best]) best = i;
  }
  return best;
}

const ratio = (num: number, den: number): number => (den === 0 ? Number.NaN : num / den);

/** Confusion counts and metrics of PS-Eval over the given pairs. */
export function psEval(pairs: PsEvalPair[]): PsEvalResult {
  if (!Array.isArray(pairs) || pairs.length === 0) throw argError('pairs', 'a non-empty array of { a, b, same }', pairs);
  let tp = 0;
  let fp = 0;
  let tn = 0;
  let fn = 0;
  // A plain loop: forEach skips the holes of a sparse array, which then counted in accuracy.
  for (let i = 0; i < pairs.length; i++) {
    const p = pairs[i];
    if (p === null || typeof p !== 'object') throw argError(`pairs[${i}]`, 'an object { a, b, same }', p);
    if (!(p.a instanceof Float32Array)) throw arrayTypeError(`pairs[${i}].a`, 'a Float32Array', p.a);
    if (!(p.b instanceof Float32Array)) throw arrayTypeError(`pairs[${i}].b`, 'a Float32Array', p.b);
    if (typeof p.same !== 'boolean') throw argError(`pairs[${i}].same`, 'boolean', p.same);
    if (p.a.length === 0 || p.a.length !== p.b.length || (i > 0 && p.a.length !== pairs[0]!.a.length)) {
      throw new SaekitError(
        'ERR_SAEKIT_SHAPE',
        `Expected pairs[${i}].a and pairs[${i}].b of the same non-zero length ${pairs[0]!.a.length} but received ${p.a.length} and ${p.b.length}`,
      );
    }
    const equal = argmax(p.a, `pairs[${i}].a`) === argmax(p.b, `pairs[${i}].b`);
    if (p.same) equal ? tp++ : fn++;
    else equal ? fp++ : tn++;
  }
  return {
    tp,
    fp,
    tn,
    fn,
    precision: ratio(tp, tp + fp),
    recall: ratio(tp, tp + fn),
    f1: ratio(2 * tp, 2 * tp + fp + fn),
    accuracy: ratio(tp + tn, pairs.length),
    specificity: ratio(tn, tn + fp),
  };
}
