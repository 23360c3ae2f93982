// Test helpers of the expert GEMM: bf16 bit handling, random experts as checkpoint bytes placed
// through the package's checkpoint import, routings with given per-expert counts, layouts.
import { expertLayout, fromArray, nvfp4FromCheckpoint, type Device, type ExpertLayout, type ExpertLayoutOptions, type Nvfp4Tensor, type Tensor } from '../lib';

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

export function bf16Bits(v: number): number {
  f32Scratch[0] = v;
  const u = u32Scratch[0];
  if ((u & 0x7fffffff) > 0x7f800000) return 0x7fff;
  return Math.floor((u + 0x7fff + ((u >>> 16) & 1)) / 65536) & 0xffff;
}

export function bf16Value(bits: number): number {
  u32Scratch[0] = bits << 16;
  return f32Scratch[0];
}

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
export const e2m1Value = (code: number): number => (code & 8 ? -E2M1[code & 7] : E2M1[code & 7]);
export function e4m3Value(b: number): number {
  const e = (b >> 3) & 15, m = b & 7;
  const v = e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}

/** silu(gate) * up with the f32 operations of the reference. */
export function swigluF32(gate: number, up: number): number {
  const e = Math.fround(Math.exp(-gate));
  return Math.fround(Math.fround(gate / Math.fround(1 + e)) * up);
}

/** The GEMM's stated error for bf16 output (test/nvfp4.test.ts), W4A16 and W4A4 alike. */
export const GEMM_TOLERANCE = 1e-3;

// ---------------------------------------------------------------------------------------------
// Random experts as checkpoint bytes, placed through the package's checkpoint import.

export interface RawExperts {
  E: number;
  N: number;
  K: number;
  data: Uint8Array;
  scales: Uint8Array;
  gs: number[];
}

export function randomExperts(r: () => number, E: number, N: number, K: number): RawExperts {
  const data = new Uint8Array((E * N * K) / 2);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(r() * 256);
  const scales = new Uint8Array((E * N * K) / 16);
  for (let i = 0; i < scales.length; i++) scales[i] = 0x20 + Math.floor(r() * 40);
  const gs = Array.from({ length: E }, () => Math.fround(0.01 + r() * 0.02));
  return { E, N, K, data, scales, gs };
}

export function placeExperts(q: RawExperts, device: Device): Nvfp4Tensor {
  return nvfp4FromCheckpoint(
    {
      weight: { data: q.data, shape: [q.E, q.N, q.K / 2], dtype: 'U8' },
      weight_scale: { data: q.scales, shape: [q.E, q.N, q.K / 16], dtype: 'F8_E4M3' },
      weight_scale_2: q.gs,
    },
    { device },
  );
}

export function randomBf16Bits(r: () => number, n: number): Uint16Array {
  const bits = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    while (v === 0) v = (r() * 2 - 1) * 2 ** Math.floor(r() * 4 - 2);
    bits[i] = bf16Bits(v);
  }
  return bits;
}

/** ids [T, 1] giving expert e exactly counts[e] tokens, in a shuffled token order. */
export function idsForCounts(r: () => number, counts: number[]): number[][] {
  const ids: number[][] = [];
  counts.forEach((c, e) => {
    for (let i = 0; i < c; i++) ids.push([e]);
  });
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  return ids;
}

/** Top-k ids without repeats; `hot` of the picks go to expert 0 (an imbalanced router). */
export function randomIds(r: () => number, T: number, k: number, E: number, hot = 0): number[][] {
  const ids: number[][] = [];
  for (let t = 0; t < T; t++) {
    const row = new Set<number>();
    while (row.size < k) row.add(r() < hot ? 0 : Math.floor(r() * E));
    ids.push([...row]);
  }
  return ids;
}

export function layoutOf(ids: number[][], k: number, E: number, options: ExpertLayoutOptions, device: Device): ExpertLayout {
  const flat = new Int32Array(ids.flat());
  return expertLayout(fromArray(flat, { shape: [ids.length, k], device }), E, options);
}

export async function readI32(t: Tensor<'i32'>): Promise<number[]> {
  return Array.from(await t.toArray());
}

/** One grouped-GEMM case: E experts of [N, K], the routing ids [T, k], the layout and the epilogue. */
export interface GemmCase {
  E: number;
  N: number;
  K: number;
  ids: number[][];
  k: number;
  layout: ExpertLayoutOptions;
  epilogue: 'none' | 'swiglu';
}
