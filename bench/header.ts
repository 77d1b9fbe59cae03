/**
 * header: time to parse and check a safetensors header (readSafetensors' header pass: the JSON,
 * every entry's dtype, shape and data_offsets, the overlap and coverage checks) as the tensor count
 * doubles, 6,250 to 50,000 tensors with a metadata entry per ten (a large MoE checkpoint has tens
 * of thousands), against JSON.parse of the same text alone (the floor: the header must be parsed),
 * measured in the same run. The checks must stay linear (or n log n) in the count: a pairwise
 * overlap test would take four times as long per doubling. V8's JSON.parse is itself somewhat
 * super-linear at these sizes (garbage collection of the growing object), so the target is on the
 * checks' share: the ratio to JSON.parse at the largest size at most 1.5 times the ratio at the
 * smallest (a quadratic check would multiply it by about 8). Growth exponents, log2(t(2n) / t(n)),
 * are printed for both. Times on a shared machine are noisy: these are ratios within one run.
 */
import { parseSafetensorsHeader } from '../lib/io/safetensors.js';
import { type Benchmark, type Row, time } from './harness.js';

/** A safetensors file (8-byte length, JSON header, data) of `tensors` one-element bf16 tensors. */
function headerFile(tensors: number): Uint8Array {
  const header: Record<string, unknown> = {
    __metadata__: Object.fromEntries(Array.from({ length: Math.ceil(tensors / 10) }, (_, i) => [`key.${i}`, `value ${i}`])),
  };
  for (let i = 0; i < tensors; i++) header[`model.layers.${i >> 4}.expert.${i & 15}.weight`] = { dtype: 'BF16', shape: [1, 1, 1], data_offsets: [2 * i, 2 * i + 2] };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + json.length + 2 * tensors);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

export const header: Benchmark = {
  name: 'header',
  description: 'safetensors header parse and checks, 6,250 to 50,000 tensors, against JSON.parse alone (target: the ratio grows at most 1.5x)',
  async run({ repeats, warmup, quick }) {
    const sizes = quick ? [6250, 12_500, 25_000] : [6250, 12_500, 25_000, 50_000];
    const rows: Row[] = [];
    const ratios: number[] = [];
    let prev: { ours: number; json: number } | undefined;
    for (const n of sizes) {
      const bytes = headerFile(n);
      const text = new TextDecoder().decode(bytes.subarray(8, bytes.length - 2 * n));
      const ours = await time(() => {
        const h = parseSafetensorsHeader(bytes, bytes.length, 'bench.safetensors');
        if (h.tensors.length !== n) throw new Error(`parsed ${h.tensors.length} tensors, expected ${n}`);
      }, { repeats, warmup });
      const json = await time(() => JSON.parse(text), { repeats, warmup });
      const exp = (a: number, b: number | undefined) => (b === undefined ? '-' : Math.log2(a / b).toFixed(2));
      ratios.push(ours.median / json.median);
      rows.push({
        tensors: n,
        'header MB': (bytes.length / 1e6).toFixed(2),
        'saekit ms': (ours.median * 1e3).toFixed(1),
        'JSON.parse ms': (json.median * 1e3).toFixed(1),
        ratio: (ours.median / json.median).toFixed(2),
        'growth saekit': exp(ours.median, prev?.ours),
        'growth JSON': exp(json.median, prev?.json),
      });
      prev = { ours: ours.median, json: json.median };
    }
    const growth = ratios[ratios.length - 1]! / ratios[0]!;
    rows.push({ tensors: 'target', 'header MB': '', 'saekit ms': '', 'JSON.parse ms': '', ratio: `x${growth.toFixed(2)} <= 1.5: ${growth <= 1.5 ? 'met' : 'NOT met'}`, 'growth saekit': '', 'growth JSON': '' });
    return { rows, meta: { sizes, ratios } };
  },
};
