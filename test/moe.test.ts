import { describe, expect, it } from 'vitest';
import {
  empty,
  fromArray,
  routerLogits,
  swiglu,
  type Device,
} from '../lib';
import { expectCode, forEachBackend, freshSeed, hasCuda, rng } from './backends';

const bf16 = (v: number): number => {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
};
const silu = (g: number): number => g / (1 + Math.exp(-g));

// ---- routerLogits ----------------------------------------------------------------------------

// The kernels sum in f32 in their own order: a sum of n products differs from the exactly
// rounded one by at most about n_seq * 2^-24 of sum |x_i w_i|, n_seq the longest chain of
// sequential f32 additions (H/128 + 7 in the decode kernel, ~H/16 tensor-core steps). 2^-14
// (6e-5) of sum |x_i w_i| covers H = 7168 on either path with margin; random data lands far below.
const LOGIT_TOLERANCE = 2 ** -14;

async function logitsAgainstF64(device: Device, T: number, E: number, H: number, seed: number) {
  const r = rng(seed);
  const xs = Array.from({ length: T * H }, () => bf16((r() - 0.5) * 4));
  const ws = Array.from({ length: E * H }, () => bf16((r() - 0.5) * 0.2));
  const got = await routerLogits(fromArray(xs, { shape: [T, H], dtype: 'bf16', device }), fromArray(ws, { shape: [E, H], dtype: 'bf16', device })).toArray();
  let worst = 0;
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let s = 0;
      let abs = 0;
      for (let h = 0; h < H; h++) {
        s += xs[t * H + h] * ws[e * H + h];
        abs += Math.abs(xs[t * H + h] * ws[e * H + h]);
      }
      worst = Math.max(worst, Math.abs(got[t * E + e] - s) / (abs || 1));
    }
  }
  return worst;
}

forEachBackend('routerLogits', (device) => {
  it('a hand-computed case', async () => {
    const x = fromArray([[1, 2, 3], [4, 5, 6]], { dtype: 'bf16', device });
    const w = fromArray([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0.5, -1, 2], [-0.25, 0.125, 0]], { dtype: 'bf16', device });
    expect(Array.from(await routerLogits(x, w).toArray())).toEqual([1, 2, 6, 4.5, 0, 4, 5, 15, 9, -0.375]);
  });

  it('against f64 sums: decode and tensor-core sizes, odd shapes', async () => {
    const seed = freshSeed(`routerLogits ${device}`);
    for (const [T, E, H] of [[1, 256, 7168], [3, 7, 64], [8, 9, 40], [9, 33, 13], [128, 64, 256], [129, 40, 272], [300, 512, 64], [70, 5, 24]]) {
      expect(await logitsAgainstF64(device, T, E, H, seed + T), `T=${T} E=${E} H=${H}`).toBeLessThanOrEqual(LOGIT_TOLERANCE);
    }
  });

  it('T = 0, a given out, bad input named', async () => {
    const w = fromArray([[1, 2]], { dtype: 'bf16', device });
    expect(routerLogits(empty([0, 2], { dtype: 'bf16', device }), w).shape).toEqual([0, 1]);
    const out = empty([1, 1], { device });
    expect(routerLogits(fromArray([[3, 4]], { dtype: 'bf16', device }), w, { out })).toBe(out);
    expect(Array.from(await out.toArray())).toEqual([11]);
    await expectCode(() => routerLogits(fromArray([[3, 4]], { device }), w), 'E_DTYPE', 'x');
    await expectCode(() => routerLogits(fromArray([[3, 4, 5]], { dtype: 'bf16', device }), w), 'E_SHAPE', 'weight');
    await expectCode(() => routerLogits(fromArray([[3, 4]], { dtype: 'bf16', device }), w, { out: empty([1, 2], { device }) }), 'E_SHAPE', 'options.out');
    await expectCode(() => routerLogits(fromArray([[3, 4]], { dtype: 'bf16', device }), w, { bias: w } as never), 'E_ARGUMENT', 'bias');
    await expectCode(() => routerLogits(empty([1, 2], { dtype: 'bf16', device }), empty([513, 2], { dtype: 'bf16', device })), 'E_SHAPE', '512');
  });
});

// ---- swiglu ----------------------------------------------------------------------------------

forEachBackend('swiglu', (device) => {
  it('hand-computed: silu of the first half times the second', async () => {
    const rows = [[1, -2, 0.5, 3, 4, -1], [0, 10, -10, 2, 2, 2]];
    const want = rows.map((r) => [0, 1, 2].map((i) => silu(r[i]) * r[i + 3]));
    const got = await swiglu(fromArray(rows, { device })).toArray();
    for (let i = 0; i < 6; i++) expect(Math.abs(got[i] - want.flat()[i]), `[${i}]`).toBeLessThanOrEqual(4e-7 * Math.max(1, Math.abs(want.flat()[i])));
    const b = await swiglu(fromArray(rows, { device, dtype: 'bf16' })).toArray();
    for (let i = 0; i < 6; i++) expect(b[i], `[${i}] bf16`).toBe(bf16(got[i]));
    const f = empty([2, 3], { device });
    swiglu(fromArray(rows, { device, dtype: 'bf16' }), { out: f });
    expect(Array.from(await f.toArray())).toEqual(Array.from(got));
  });

  it('bad input named', async () => {
    await expectCode(() => swiglu(fromArray([[1, 2, 3]], { device })), 'E_SHAPE', 'x');
    await expectCode(() => swiglu(fromArray([[1, 2]], { device, dtype: 'f16' }) as never), 'E_DTYPE', 'x');
    await expectCode(() => swiglu(fromArray([[1, 2]], { device }), { out: empty([1, 2], { device }) }), 'E_SHAPE', 'options.out');
    await expectCode(() => swiglu(fromArray([[1, 2]], { device }), { extra: 1 } as never), 'E_ARGUMENT', 'extra');
  });
});

describe.skipIf(!hasCuda)('moe ops: CUDA and CPU agree [cuda]', () => {
  it('swiglu: the same bits (bf16 and f32, 2^20 values)', async () => {
    const r = rng(freshSeed('swiglu cuda'));
    const xs = Float32Array.from({ length: 1 << 21 }, () => (r() - 0.5) * 40);
    for (const dtype of ['f32', 'bf16'] as const) {
      const run = async (device: Device) => swiglu(fromArray(xs, { shape: [512, 4096], dtype, device })).toBytes();
      expect(Buffer.compare(Buffer.from(await run('cpu')), Buffer.from(await run('cuda:0'))), dtype).toBe(0);
    }
  });
});

