import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  Nvfp4Tensor,
  captureGraph,
  createStream,
  dequantizeNvfp4,
  empty,
  fromArray,
  fromBytes,
  gemmNvfp4,
  globalScaleNvfp4,
  memoryStats,
  nvfp4FromCheckpoint,
  quantizeNvfp4,
  swizzleScales,
  unswizzleScales,
  defaultStream,
  type Device,
  type Tensor,
} from '../lib';
import { native } from '../lib/native';
import { expectCode, forEachBackend, freshSeed, hasCuda, rng, nativeCalls, expectClose } from './backends';

// ---------------------------------------------------------------------------------------------
// Independent oracles, written from the format's definition (native/common/nvfp4.h). Every
// f32 operation of the quantizer is one IEEE operation on f32 operands, which a double
// computation followed by Math.fround reproduces exactly.

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

function e2m1Value(code: number): number {
  const v = E2M1[code & 7];
  return code & 8 ? -v : v;
}

function e4m3Value(b: number): number {
  const e = (b >> 3) & 15, m = b & 7;
  if (e === 15 && m === 7) return NaN;
  const v = e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}

// Positive finite E4M3 values by code (0x00..0x7e), increasing with the code.
const E4M3_POSITIVE = Array.from({ length: 0x7f }, (_, b) => e4m3Value(b));

/** E4M3 code of a positive value in [2^-9, 448], round to nearest even. */
function e4m3Code(s: number): number {
  let lo = 0;
  while (lo + 1 < E4M3_POSITIVE.length && E4M3_POSITIVE[lo + 1] <= s) lo++;
  if (E4M3_POSITIVE[lo] === s || lo === E4M3_POSITIVE.length - 1) return lo;
  const dl = s - E4M3_POSITIVE[lo], dh = E4M3_POSITIVE[lo + 1] - s;
  return dl < dh ? lo : dh < dl ? lo + 1 : lo % 2 === 0 ? lo : lo + 1;
}

/** E2M1 magnitude code of |q|: nearest grid value, ties to the even code, saturating at 6. */
function e2m1Code(q: number): number {
  const a = Math.abs(q);
  if (Number.isNaN(a)) return 0;
  if (a >= 6) return 7;
  let lo = 0;
  while (lo < 7 && E2M1[lo + 1] <= a) lo++;
  if (E2M1[lo] === a) return lo;
  const dl = a - E2M1[lo], dh = E2M1[lo + 1] - a;
  return dl < dh ? lo : dh < dl ? lo + 1 : lo % 2 === 0 ? lo : lo + 1;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

function f32Sign(v: number): boolean {
  f32Scratch[0] = v;
  return u32Scratch[0] >>> 31 === 1;
}

function bf16Bits(v: number): number {
  f32Scratch[0] = v;
  const u = u32Scratch[0];
  if ((u & 0x7fffffff) > 0x7f800000) return 0x7fff;
  return Math.floor((u + 0x7fff + ((u >>> 16) & 1)) / 65536) & 0xffff;
}

function bf16Value(bits: number): number {
  u32Scratch[0] = bits << 16;
  return f32Scratch[0];
}

/** Oracle quantizer for exact f32 inputs x [rows, K] with global scale gs (an f32). */
function oracleQuantize(x: ArrayLike<number>, K: number, gs: number): { data: Uint8Array; scales: Uint8Array } {
  const blocks = x.length / 16;
  const data = new Uint8Array(x.length / 2);
  const scales = new Uint8Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let i = 0; i < 16; i++) {
      const a = Math.abs(x[b * 16 + i]);
      if (a > amax) amax = a;
    }
    let s = Math.fround(amax / Math.fround(6 * gs));
    if (s === 0) s = 1;
    s = Math.min(Math.max(s, 2 ** -9), 448);
    const code = e4m3Code(s);
    const denom = Math.fround(e4m3Value(code) * gs);
    for (let i = 0; i < 16; i++) {
      const v = x[b * 16 + i];
      const nib = e2m1Code(Math.fround(v / denom)) | (f32Sign(v) ? 8 : 0);
      data[(b * 16 + i) >> 1] |= i % 2 === 0 ? nib : nib << 4;
    }
    scales[b] = code;
  }
  void K;
  return { data, scales };
}

/** Swizzled byte offset of (row m, block k): the layout's formula (see swizzleScales). */
function swizzledOffset(m: number, k: number, numKTiles: number): number {
  return (Math.floor(m / 128) * numKTiles + Math.floor(k / 4)) * 512 + (m % 32) * 16 + (Math.floor(m / 32) % 4) * 4 + (k % 4);
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers whose failure messages say where and by how much.

function compareBytes(label: string, got: Uint8Array, want: Uint8Array): void {
  expect(got.length, `${label}: byte length`).toBe(want.length);
  let mismatches = 0;
  let first = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      mismatches++;
    }
  }
  if (mismatches > 0) {
    const around = (a: Uint8Array) => Array.from(a.subarray(Math.max(0, first - 2), first + 6), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new Error(
      `${label}: ${mismatches} of ${want.length} bytes differ; first at byte ${first}: got 0x${got[first].toString(16)}, ` +
        `want 0x${want[first].toString(16)} (bytes ${Math.max(0, first - 2)}.. got [${around(got)}] want [${around(want)}])`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Random NVFP4 operands as raw bytes, and their exact values.

interface RawNvfp4 {
  rows: number;
  K: number;
  data: Uint8Array;
  scales: Uint8Array;
  gs: number;
}

function randomNvfp4(r: () => number, rows: number, K: number): RawNvfp4 {
  const data = new Uint8Array((rows * K) / 2);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(r() * 256);
  // scales 2^-3 .. ~2^2 (codes 0x20..0x47): finite, varied mantissas and exponents
  const scales = new Uint8Array((rows * K) / 16);
  for (let i = 0; i < scales.length; i++) scales[i] = 0x20 + Math.floor(r() * 40);
  return { rows, K, data, scales, gs: Math.fround(0.01 + r() * 0.02) };
}

/** Exact element values without the global scale: e2m1 * e4m3. */
function rawValues(q: RawNvfp4): Float64Array {
  const out = new Float64Array(q.rows * q.K);
  for (let i = 0; i < out.length; i++) {
    const code = (q.data[i >> 1] >> ((i & 1) * 4)) & 15;
    out[i] = e2m1Value(code) * e4m3Value(q.scales[i >> 4]);
  }
  return out;
}

function place(q: RawNvfp4, device: Device): Nvfp4Tensor {
  return nvfp4FromCheckpoint(
    {
      weight: { data: q.data, shape: [q.rows, q.K / 2], dtype: 'U8' },
      weight_scale: { data: q.scales, shape: [q.rows, q.K / 16], dtype: 'F8_E4M3' },
      weight_scale_2: q.gs,
    },
    { device },
  );
}

function randomBf16(r: () => number, n: number): { bits: Uint16Array; values: Float64Array } {
  const bits = new Uint16Array(n);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    while (v === 0) v = (r() * 2 - 1) * 2 ** Math.floor(r() * 4 - 2);
    bits[i] = bf16Bits(v);
    values[i] = bf16Value(bits[i]);
  }
  return { bits, values };
}

/**
 * The reference product: exact operand values, dot products in double, scaled by
 * f32(alpha) * gsA * gsW in double, bias added, rounded once to f32 and then to bf16 if asked.
 */
function oracleGemm(
  a: Float64Array, w: Float64Array, M: number, N: number, K: number, scale: number,
  bias: ArrayLike<number> | undefined, outDtype: 'bf16' | 'f32',
): Float64Array {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += a[m * K + k] * w[n * K + k];
      const v = Math.fround(scale * acc + (bias ? bias[n] : 0));
      out[m * N + n] = outDtype === 'bf16' ? bf16Value(bf16Bits(v)) : v;
    }
  }
  return out;
}

async function values(t: Tensor<'bf16' | 'f32'>): Promise<Float64Array> {
  return Float64Array.from(await t.toArray());
}

// ---------------------------------------------------------------------------------------------
// Hand-computed quantization blocks, global scale 1 unless stated: [16 inputs, 8 data bytes,
// scale byte]. Every input is exact in f32, bf16 and f16, so each table runs for all three.
// With global scale 1, block scale = e4m3(amax / 6) and q = x / scale.

const HAND_BLOCKS: { name: string; x: number[]; data: number[]; scale: number }[] = [
  {
    // amax 6 -> scale 1 (0x38), q = x: the ties go to the even code
    // 6->7, .25->0, .75->2 (1.0), 1.25->2 (1.0), 1.75->4 (2.0), 2.5->4 (2.0), 3.5->6 (4.0), 5->6 (4.0)
    name: 'ties to even (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) and their negatives',
    x: [6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, -6],
    data: [0x07, 0x22, 0x44, 0x66, 0xa8, 0xca, 0xec, 0xfe],
    scale: 0x38,
  },
  {
    // just past each midpoint (1/64 .. 1/16 away), the grid itself, +0 and -0
    name: 'just off the ties, exact grid values, +0 and -0',
    x: [6, 0.265625, 0.734375, 1.265625, 1.734375, 2.53125, 3.46875, 5.0625, 0.5, 1, 1.5, 2, 3, 4, 0, -0],
    data: [0x17, 0x31, 0x53, 0x75, 0x21, 0x43, 0x65, 0x80],
    scale: 0x38,
  },
  {
    // amax 6.25: scale 6.25/6 = 1.0417 rounds down to 1, so 6.25 and 6.125 saturate at 6
    name: 'saturation above 6 when the scale rounds down',
    x: [6.25, -6.25, 6.125, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    data: [0xf7, 0x07, 0, 0, 0, 0, 0, 0],
    scale: 0x38,
  },
  {
    name: 'an all-zero block gets scale 1 and zero codes',
    x: new Array(16).fill(0),
    data: new Array(8).fill(0),
    scale: 0x38,
  },
  {
    name: 'negative zero keeps its sign bit',
    x: new Array(16).fill(-0),
    data: new Array(8).fill(0x88),
    scale: 0x38,
  },
  {
    // scale 4.75/6 = 0.7917 rounds to 0.8125 (0x35): 4.75/.8125 = 5.85 -> 6 (7), 2.375 -> 2.92
    // -> 3 (5), 1.1875 -> 1.46 -> 1.5 (3), 0.375 -> 0.46 -> 0.5 (1)
    name: 'the block scale rounds to nearest in E4M3',
    x: [4.75, -2.375, 1.1875, 0.375, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    data: [0xd7, 0x13, 0, 0, 0, 0, 0, 0],
    scale: 0x35,
  },
  {
    // scale 6144/6 = 1024 clamps to 448 (0x7e): 6144/448 = 13.7 -> 6, 3072 -> 6.9 -> 6, 1024 -> 2.29 -> 2
    name: 'scale clamped at 448',
    x: [6144, -6144, 3072, 1024, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    data: [0xf7, 0x47, 0, 0, 0, 0, 0, 0],
    scale: 0x7e,
  },
  {
    // scale 1.25*2^-11/6 < 2^-9 clamps to 2^-9 (0x01): q = 0.3125 -> 0.5, -0.156 -> -0, 0.0625 -> 0
    name: 'scale clamped at 2^-9',
    x: [1.25 * 2 ** -11, -1.25 * 2 ** -12, 2 ** -13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    data: [0x81, 0, 0, 0, 0, 0, 0, 0],
    scale: 0x01,
  },
  {
    // NaN is left out of the block amax (3 -> scale 0.5 = 0x30) and encodes as +0
    name: 'NaN elements encode as zero and do not set the scale',
    x: [NaN, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    data: [0x70, 0, 0, 0, 0, 0, 0, 0],
    scale: 0x30,
  },
];

const SOURCE_DTYPES = ['f32', 'bf16', 'f16'] as const;

// ---------------------------------------------------------------------------------------------

forEachBackend('nvfp4 quantize', (device: Device) => {
  for (const dtype of SOURCE_DTYPES) {
    it(`${dtype}: hand-computed blocks (global scale 1)`, async () => {
      const x = fromArray(HAND_BLOCKS.flatMap((b) => b.x), { dtype, shape: [HAND_BLOCKS.length, 16], device });
      const q = quantizeNvfp4(x, { globalScale: 1 });
      expect(q.shape).toEqual([HAND_BLOCKS.length, 16]);
      expect(q.data.shape).toEqual([HAND_BLOCKS.length, 8]);
      expect(q.scales.shape).toEqual([HAND_BLOCKS.length, 1]);
      expect(q.scales.dtype).toBe('fp8e4m3');
      expect(q.globalScale.shape).toEqual([1]);
      const data = await q.data.toBytes();
      const scales = await q.scales.toBytes();
      HAND_BLOCKS.forEach((b, i) => {
        const hex = (xs: ArrayLike<number>) => Array.from(xs, (v) => '0x' + v.toString(16).padStart(2, '0')).join(' ');
        expect(hex(data.subarray(i * 8, i * 8 + 8)), `${b.name}: data`).toBe(hex(b.data));
        expect(hex([scales[i]]), `${b.name}: scale`).toBe(hex([b.scale]));
      });
      expect(Array.from(await q.globalScale.toArray())).toEqual([1]);
    });
  }

  it('computes the global scale on the device: amax / (6 * 448)', async () => {
    // amax 2688 = 6 * 448 gives exactly 1. Block 0: scale 448 (0x7e), 2688 -> 6.
    // Block 1: amax 1344, scale 224 (0x76), -1344 -> -6.
    const x = fromArray([...new Array(15).fill(0), 2688, -1344, ...new Array(15).fill(0)], { dtype: 'bf16', shape: [2, 16], device });
    const q = quantizeNvfp4(x);
    expect(Array.from(await q.globalScale.toArray())).toEqual([1]);
    expect(Array.from(await q.scales.toBytes())).toEqual([0x7e, 0x76]);
    expect(Array.from(await q.data.toBytes())).toEqual([0, 0, 0, 0, 0, 0, 0, 0x70, 0x0f, 0, 0, 0, 0, 0, 0, 0]);
    // all zeros: the quotient is 0, so the scale is 1 (no 0/0 downstream)
    const zero = quantizeNvfp4(fromArray(new Array(32).fill(0), { shape: [32], device }));
    expect(Array.from(await zero.globalScale.toArray())).toEqual([1]);
    expect(Array.from(await zero.scales.toBytes())).toEqual([0x38, 0x38]);
    // standalone, for calibrating activations; NaN propagates
    const gs = globalScaleNvfp4(fromArray([1, -5376, 3], { device }));
    expect(Array.from(await gs.toArray())).toEqual([2]);
    // NaN propagates as amax's canonical NaN, bits unchanged by the division
    const nan = globalScaleNvfp4(fromArray([1, NaN, 3], { device }));
    expect(Array.from(await nan.toBytes())).toEqual([0x00, 0x00, 0xc0, 0x7f]);
  });

  it('takes the global scale as a device tensor (copied)', async () => {
    const halved = HAND_BLOCKS[0].x.map((v) => v / 2);
    const gs = fromArray([0.5], { device });
    const q = quantizeNvfp4(fromArray(halved, { shape: [16], device }), { globalScale: gs });
    expect(Array.from(await q.data.toBytes())).toEqual(HAND_BLOCKS[0].data);
    expect(Array.from(await q.scales.toBytes())).toEqual([0x38]);
    gs.dispose();
    expect(Array.from(await q.globalScale.toArray())).toEqual([0.5]);
  });

  it('quantizes into a given NVFP4 tensor, the same bytes as a new one, and refuses a wrong one', async () => {
    const r = rng(freshSeed(`nvfp4 quantize out ${device}`));
    const x = fromArray(Array.from({ length: 3 * 64 }, () => (r() - 0.5) * 8), { shape: [3, 64], dtype: 'bf16', device });
    const gs = fromArray([0.01], { device });
    const fresh = quantizeNvfp4(x, { globalScale: gs });
    const out = quantizeNvfp4(fromArray(new Array(3 * 64).fill(1), { shape: [3, 64], dtype: 'bf16', device }));
    const same = quantizeNvfp4(x, { globalScale: gs, out });
    expect(same).toBe(out);
    expect(Array.from(await out.data.toBytes())).toEqual(Array.from(await fresh.data.toBytes()));
    expect(Array.from(await out.scales.toBytes())).toEqual(Array.from(await fresh.scales.toBytes()));
    expect(Array.from(await out.globalScale.toArray())).toEqual([Math.fround(0.01)]);
    const small = quantizeNvfp4(fromArray(new Array(64).fill(1), { shape: [1, 64], dtype: 'bf16', device }));
    await expectCode(() => quantizeNvfp4(x, { globalScale: gs, out: small }), 'E_SHAPE', 'out');
    await expectCode(() => quantizeNvfp4(x, { globalScale: gs, out: x as never }), 'E_ARGUMENT', 'out');
    for (const t of [x, gs, fresh, out, small]) t.dispose();
  });

  for (const dtype of SOURCE_DTYPES) {
    it(`${dtype}: random tensors match the oracle quantizer byte for byte`, async () => {
      const seed = freshSeed(`nvfp4 quantize ${dtype} ${device}`);
      const r = rng(seed);
      const rows = 37, K = 208;
      const src = new Float32Array(rows * K);
      for (let b = 0; b < src.length / 16; b++) {
        // per-block magnitudes across 2^-12 .. 2^12 so that scales, clamps and codes all vary
        const mag = 2 ** Math.floor(r() * 24 - 12);
        for (let i = 0; i < 16; i++) src[b * 16 + i] = (r() * 2 - 1) * mag * (r() < 0.1 ? 8 : 1);
      }
      const x = fromArray(src, { dtype, shape: [rows, K], device });
      const exact = await x.toArray(); // the inputs as the dtype holds them
      for (const gsMode of ['computed', 'given'] as const) {
        const q = gsMode === 'computed' ? quantizeNvfp4(x) : quantizeNvfp4(x, { globalScale: 0.0375 });
        const gs = (await q.globalScale.toArray())[0];
        let amax = 0;
        for (const v of exact) amax = Math.max(amax, Math.abs(v));
        expect(gs, `seed ${seed}: global scale (${gsMode})`).toBe(gsMode === 'computed' ? Math.fround(amax / 2688) : Math.fround(0.0375));
        const want = oracleQuantize(exact, K, gs);
        compareBytes(`seed ${seed} ${dtype} [${rows}, ${K}] gs ${gsMode}: scales`, await q.scales.toBytes(), want.scales);
        compareBytes(`seed ${seed} ${dtype} [${rows}, ${K}] gs ${gsMode}: data`, await q.data.toBytes(), want.data);
      }
    });
  }

  it('keeps leading dimensions and handles empty tensors', async () => {
    const q = quantizeNvfp4(fromArray(new Float32Array(2 * 3 * 32).fill(1.5), { shape: [2, 3, 32], device }));
    expect(q.shape).toEqual([2, 3, 32]);
    expect(q.data.shape).toEqual([2, 3, 16]);
    expect(q.scales.shape).toEqual([2, 3, 2]);
    expect(q.numel).toBe(192);
    expect(q.byteLength).toBe(96 + 12);
    const e = quantizeNvfp4(empty([0, 64], { dtype: 'bf16', device }));
    expect(e.data.shape).toEqual([0, 32]);
    expect(Array.from(await e.globalScale.toArray())).toEqual([1]);
  });

  it('rejects bad input with codes that name the argument', async () => {
    await expectCode(() => quantizeNvfp4(fromArray([1, 2], { dtype: 'i32', device })), 'E_DTYPE', 'x');
    await expectCode(() => quantizeNvfp4(empty([4, 24], { dtype: 'bf16', device })), 'E_SHAPE', 'multiple of 16');
    await expectCode(() => quantizeNvfp4(empty([], { dtype: 'f32', device })), 'E_SHAPE', 'x');
    await expectCode(() => quantizeNvfp4('x' as never), 'E_ARGUMENT', 'x');
    const x = empty([2, 16], { dtype: 'bf16', device });
    await expectCode(() => quantizeNvfp4(x, { globalScale: 0 }), 'E_ARGUMENT', 'globalScale');
    await expectCode(() => quantizeNvfp4(x, { globalScale: NaN }), 'E_ARGUMENT', 'globalScale');
    await expectCode(() => quantizeNvfp4(x, { globalScale: 1e-50 }), 'E_ARGUMENT', 'globalScale');
    await expectCode(() => quantizeNvfp4(x, { globalScale: fromArray([1, 2], { device }) }), 'E_SHAPE', 'globalScale');
    await expectCode(() => quantizeNvfp4(x, { globalScale: fromArray([1], { dtype: 'bf16', device }) as never }), 'E_DTYPE', 'globalScale');
    await expectCode(() => quantizeNvfp4(x, 5 as never), 'E_ARGUMENT', 'options');
    const gone = empty([16], { dtype: 'f32', device });
    gone.dispose();
    await expectCode(() => quantizeNvfp4(gone), 'E_DISPOSED', 'x');
  });
});

forEachBackend('nvfp4 dequantize and checkpoints', (device: Device) => {
  it('decodes every code at hand-picked scales', async () => {
    // row 0: scale 1, global 1 -> the E2M1 table itself, codes 0..15
    // row 1: scale 448 (0x7e) -> code 7 gives 2688, code 15 gives -2688
    // row 2: scale 2^-9 (0x01) -> code 1 gives 2^-10
    const codes = Array.from({ length: 16 }, (_, i) => i);
    const pack = (c: number[]) => Array.from({ length: 8 }, (_, i) => c[2 * i] | (c[2 * i + 1] << 4));
    const q = nvfp4FromCheckpoint(
      {
        weight: { data: new Uint8Array([...pack(codes), ...pack(codes), ...pack(codes)]), shape: [3, 8] },
        weight_scale: { data: new Uint8Array([0x38, 0x7e, 0x01]), shape: [3, 1] },
        weight_scale_2: { data: new Float32Array([1]), shape: [], dtype: 'F32' },
      },
      { device },
    );
    const table = codes.map(e2m1Value);
    const y = await dequantizeNvfp4(q, 'f32').toArray();
    expect(Array.from(y.subarray(0, 16))).toEqual(table);
    expect(Object.is(y[8], -0)).toBe(true);
    expect(Array.from(y.subarray(16, 32))).toEqual(table.map((v) => v * 448));
    expect(Array.from(y.subarray(32, 48))).toEqual(table.map((v) => v * 2 ** -9));
    for (const dtype of ['bf16', 'f16'] as const) {
      const h = await dequantizeNvfp4(q, dtype).toArray();
      expect(Array.from(h)).toEqual(Array.from(y)); // all exact in bf16 and f16
    }
    // a NaN scale byte decodes to the canonical NaN
    const nan = nvfp4FromCheckpoint(
      { weight: { data: new Uint8Array(8).fill(0x11), shape: [1, 8] }, weight_scale: { data: new Uint8Array([0x7f]), shape: [1, 1] }, weight_scale_2: 1 },
      { device },
    );
    expect(Array.from((await dequantizeNvfp4(nan, 'f32').toBytes()).subarray(0, 4))).toEqual([0xff, 0xff, 0xff, 0x7f]);
    expect(Array.from((await dequantizeNvfp4(nan, 'bf16').toBytes()).subarray(0, 2))).toEqual([0xff, 0x7f]);
  });

  it('round-trips: dequantize(quantize(x)) is within one grid unit, and quantizing that again gives the same bytes', async () => {
    const seed = freshSeed(`nvfp4 round trip ${device}`);
    const r = rng(seed);
    const src = Float32Array.from({ length: 64 * 96 }, () => (r() * 2 - 1) * 3);
    const x = fromArray(src, { shape: [64, 96], device });
    const q = quantizeNvfp4(x);
    const y = dequantizeNvfp4(q, 'f32');
    const back = await y.toArray();
    const gs = (await q.globalScale.toArray())[0];
    const scales = await q.scales.toBytes();
    for (let i = 0; i < src.length; i++) {
      // the grid's widest gap (4 to 6) is 2 units: rounding moves a value by at most 1 unit
      const step = e4m3Value(scales[i >> 4]) * gs;
      const err = Math.abs(back[i] - src[i]);
      if (err > step + 1e-6 * Math.abs(src[i])) throw new Error(`seed ${seed}: element ${i}: ${src[i]} -> ${back[i]} (grid unit ${step})`);
    }
    const again = quantizeNvfp4(y, { globalScale: gs });
    compareBytes(`seed ${seed}: requantized data`, await again.data.toBytes(), await q.data.toBytes());
  });

  it('dequantizes into out, and refuses bad input', async () => {
    const q = quantizeNvfp4(fromArray(new Float32Array(32).fill(-1.5), { shape: [2, 16], device }));
    const out = empty([2, 16], { dtype: 'bf16', device });
    expect(dequantizeNvfp4(q, 'bf16', { out })).toBe(out);
    expect(Array.from(await out.toArray())).toEqual(new Array(32).fill(-1.5));
    await expectCode(() => dequantizeNvfp4(q, 'u8' as never), 'E_DTYPE', 'dtype');
    await expectCode(() => dequantizeNvfp4(q, 'f32', { out: empty([2, 16], { dtype: 'bf16', device }) as never }), 'E_DTYPE', 'out');
    await expectCode(() => dequantizeNvfp4(q, 'bf16', { out: empty([32], { dtype: 'bf16', device }) }), 'E_SHAPE', 'out');
    await expectCode(() => dequantizeNvfp4(empty([2, 16], { device }) as never), 'E_ARGUMENT', 'q');
    const gone = quantizeNvfp4(fromArray(new Float32Array(16).fill(1), { device }));
    gone.dispose();
    expect(gone.disposed).toBe(true);
    await expectCode(() => dequantizeNvfp4(gone), 'E_DISPOSED', 'q');
    const partGone = quantizeNvfp4(fromArray(new Float32Array(16).fill(1), { device }));
    partGone.scales.dispose();
    await expectCode(() => dequantizeNvfp4(partGone), 'E_DISPOSED', 'q');
  });

  it('builds the MoE form with one global scale per expert, and select(e) views one expert', async () => {
    const seed = freshSeed(`nvfp4 moe checkpoint ${device}`);
    const r = rng(seed);
    const E = 3, N = 5, K = 48;
    const experts = Array.from({ length: E }, () => randomNvfp4(r, N, K));
    const cat = (xs: Uint8Array[]) => {
      const out = new Uint8Array(xs.reduce((n, x) => n + x.length, 0));
      let o = 0;
      for (const x of xs) { out.set(x, o); o += x.length; }
      return out;
    };
    const q = nvfp4FromCheckpoint(
      {
        weight: { data: cat(experts.map((e) => e.data)), shape: [E, N, K / 2], dtype: 'U8' },
        weight_scale: { data: cat(experts.map((e) => e.scales)), shape: [E, N, K / 16], dtype: 'F8_E4M3' },
        weight_scale_2: { data: new Float32Array(experts.map((e) => e.gs)), shape: [E], dtype: 'F32' },
      },
      { device },
    );
    expect(q.shape).toEqual([E, N, K]);
    expect(q.globalScale.shape).toEqual([E]);
    const all = await dequantizeNvfp4(q, 'f32').toArray();
    for (let e = 0; e < E; e++) {
      const want = rawValues(experts[e]).map((v) => Math.fround(v * experts[e].gs));
      const one = q.select(e);
      expect(one.shape).toEqual([N, K]);
      expect(one.globalScale.shape).toEqual([1]);
      const got = await dequantizeNvfp4(one, 'f32').toArray();
      expect(Array.from(got), `seed ${seed}: expert ${e} via select`).toEqual(Array.from(want));
      expect(Array.from(all.subarray(e * N * K, (e + 1) * N * K)), `seed ${seed}: expert ${e} in the stack`).toEqual(Array.from(want));
      one.dispose();
    }
    // a view outlives its parent
    const last = q.select(E - 1);
    q.dispose();
    const got = await dequantizeNvfp4(last, 'f32').toArray();
    expect(got[0]).toBe(Math.fround(rawValues(experts[E - 1])[0] * experts[E - 1].gs));
    await expectCode(() => last.select(0).select(0), 'E_SHAPE', 'select');
    await expectCode(() => last.select(N), 'E_SHAPE', 'index');
  });

  it('takes tensors already on the device without copying', async () => {
    const weight = fromBytes(new Uint8Array(16).fill(0x22), { dtype: 'u8', shape: [2, 8], device });
    const scale = fromBytes(new Uint8Array([0x38, 0x40]), { dtype: 'fp8e4m3', shape: [2, 1], device });
    const gs = fromArray([0.25], { device });
    const q = nvfp4FromCheckpoint({ weight, weight_scale: scale, weight_scale_2: gs });
    expect(q.device).toBe(device);
    expect(q.data.dataPtr).toBe(weight.dataPtr);
    weight.dispose();
    const y = await dequantizeNvfp4(q, 'f32').toArray();
    expect(Array.from(y)).toEqual([...new Array(16).fill(0.25), ...new Array(16).fill(0.5)]);
  });

  it('validates checkpoint tensors against each other', async () => {
    const w = { data: new Uint8Array(4 * 8), shape: [4, 8] };
    const s = { data: new Uint8Array(4).fill(0x38), shape: [4, 1] };
    const o = { device };
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: s } as never, o), 'E_ARGUMENT', 'weight_scale_2');
    await expectCode(() => nvfp4FromCheckpoint(null as never, o), 'E_ARGUMENT', 'tensors');
    await expectCode(() => nvfp4FromCheckpoint({ weight: { data: new Uint8Array(32), shape: [32] }, weight_scale: s, weight_scale_2: 1 }, o), 'E_SHAPE', 'weight');
    await expectCode(() => nvfp4FromCheckpoint({ weight: { data: new Uint8Array(24), shape: [4, 6] }, weight_scale: s, weight_scale_2: 1 }, o), 'E_SHAPE', 'multiple of 8');
    await expectCode(() => nvfp4FromCheckpoint({ weight: { data: new Uint8Array(31), shape: [4, 8] }, weight_scale: s, weight_scale_2: 1 }, o), 'E_SHAPE', 'weight.data');
    await expectCode(() => nvfp4FromCheckpoint({ weight: { ...w, dtype: 'F16' }, weight_scale: s, weight_scale_2: 1 }, o), 'E_DTYPE', 'weight.dtype');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: { data: new Uint8Array(8), shape: [4, 2] }, weight_scale_2: 1 }, o), 'E_SHAPE', 'weight_scale');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: { ...s, dtype: 'F32' }, weight_scale_2: 1 }, o), 'E_DTYPE', 'weight_scale.dtype');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: s, weight_scale_2: [1, 2] }, o), 'E_SHAPE', 'weight_scale_2');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: s, weight_scale_2: 0 }, o), 'E_ARGUMENT', 'positive');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: s, weight_scale_2: NaN }, o), 'E_ARGUMENT', 'weight_scale_2');
    await expectCode(() => nvfp4FromCheckpoint({ weight: w, weight_scale: s, weight_scale_2: { data: new Float32Array([1]), shape: [], dtype: 'BF16' } }, o), 'E_DTYPE', 'weight_scale_2.dtype');
    await expectCode(() => nvfp4FromCheckpoint({ weight: 'w' as never, weight_scale: s, weight_scale_2: 1 }, o), 'E_ARGUMENT', 'weight');
    // MoE: one weight_scale_2 per expert, and the scales' leading dimensions follow the weight
    const mw = { data: new Uint8Array(2 * 4 * 8), shape: [2, 4, 8] };
    const ms = { data: new Uint8Array(8).fill(0x38), shape: [2, 4, 1] };
    await expectCode(() => nvfp4FromCheckpoint({ weight: mw, weight_scale: ms, weight_scale_2: 1 }, o), 'E_SHAPE', 'one scale per expert');
    await expectCode(() => nvfp4FromCheckpoint({ weight: mw, weight_scale: ms, weight_scale_2: [1, 2, 3] }, o), 'E_SHAPE', 'shape [2]');
    await expectCode(() => nvfp4FromCheckpoint({ weight: mw, weight_scale: { data: new Uint8Array(8), shape: [8, 1] }, weight_scale_2: [1, 2] }, o), 'E_SHAPE', 'weight_scale');
    await expectCode(() => nvfp4FromCheckpoint({ weight: mw, weight_scale: ms, weight_scale_2: [1, -2] }, o), 'E_ARGUMENT', 'weight_scale_2[1]');
    expect(nvfp4FromCheckpoint({ weight: mw, weight_scale: ms, weight_scale_2: [1, 2] }, o).shape).toEqual([2, 4, 16]);
    // tensors must be of the right dtype
    await expectCode(
      () => nvfp4FromCheckpoint({ weight: empty([4, 8], { dtype: 'i32', device }) as never, weight_scale: s, weight_scale_2: 1 }, o),
      'E_DTYPE',
      'weight',
    );
  });
});

forEachBackend('nvfp4 scale swizzling', (device: Device) => {
  it('places every scale where the 128x4 layout says, pads with zeros, and inverts', async () => {
    // hand-checked offsets for numKTiles = 2: (0,0)->0, (33,2)->22, (127,3)->511, (1,4)->528,
    // (128,0)->1024, (129,4)->1552
    expect([swizzledOffset(0, 0, 2), swizzledOffset(33, 2, 2), swizzledOffset(127, 3, 2), swizzledOffset(1, 4, 2), swizzledOffset(128, 0, 2), swizzledOffset(129, 4, 2)])
      .toEqual([0, 22, 511, 528, 1024, 1552]);
    const rows = 130, kBlocks = 5;
    const linear = Uint8Array.from({ length: rows * kBlocks }, (_, i) => (i % 251) + 1);
    const scales = fromBytes(linear, { dtype: 'fp8e4m3', shape: [rows, kBlocks], device });
    const sw = swizzleScales(scales);
    expect(sw.shape).toEqual([256, 8]);
    expect(sw.dtype).toBe('fp8e4m3');
    const got = await sw.toBytes();
    const want = new Uint8Array(256 * 8);
    for (let m = 0; m < rows; m++) for (let k = 0; k < kBlocks; k++) want[swizzledOffset(m, k, 2)] = linear[m * kBlocks + k];
    compareBytes(`swizzle [${rows}, ${kBlocks}]`, got, want);
    expect(got[22]).toBe(linear[33 * kBlocks + 2]);
    expect(got[1552]).toBe(linear[129 * kBlocks + 4]);
    const back = unswizzleScales(sw, [rows, kBlocks]);
    expect(back.shape).toEqual([rows, kBlocks]);
    compareBytes('unswizzle', await back.toBytes(), linear);
    // a flat swizzled buffer (as other libraries hand it over) is accepted too
    compareBytes('unswizzle flat', await unswizzleScales(sw.reshape([-1]), [rows, kBlocks]).toBytes(), linear);
  });

  it('swizzles each matrix of a stack on its own (MoE experts)', async () => {
    const E = 2, rows = 3, kBlocks = 6;
    const linear = Uint8Array.from({ length: E * rows * kBlocks }, (_, i) => i + 1);
    const sw = swizzleScales(fromBytes(linear, { dtype: 'u8', shape: [E, rows, kBlocks], device }));
    expect(sw.shape).toEqual([E, 128, 8]);
    expect(sw.dtype).toBe('u8');
    const got = await sw.toBytes();
    const want = new Uint8Array(E * 128 * 8);
    for (let e = 0; e < E; e++)
      for (let m = 0; m < rows; m++)
        for (let k = 0; k < kBlocks; k++) want[e * 1024 + swizzledOffset(m, k, 2)] = linear[(e * rows + m) * kBlocks + k];
    compareBytes('swizzle [2, 3, 6]', got, want);
    compareBytes('unswizzle [2, 3, 6]', await unswizzleScales(sw, [E, rows, kBlocks]).toBytes(), linear);
  });

  it('refuses bad input', async () => {
    await expectCode(() => swizzleScales(empty([16], { dtype: 'fp8e4m3', device })), 'E_SHAPE', 'scales');
    await expectCode(() => swizzleScales(empty([4, 4], { dtype: 'f32', device }) as never), 'E_DTYPE', 'scales');
    const sw = swizzleScales(empty([4, 4], { dtype: 'fp8e4m3', device }));
    await expectCode(() => unswizzleScales(sw, [4]), 'E_SHAPE', 'shape');
    await expectCode(() => unswizzleScales(sw, [129, 4]), 'E_SHAPE', 'swizzled');
    await expectCode(() => unswizzleScales(sw, [4, -1]), 'E_SHAPE', 'shape');
  });
});

// ---------------------------------------------------------------------------------------------

interface GemmCase {
  M: number;
  N: number;
  K: number;
  outDtype: 'bf16' | 'f32';
  w4a4?: boolean;
  alpha?: number;
  bias?: 'bf16' | 'f32';
  path?: 'auto' | 'portable';
}

const TOLERANCE = { bf16: 1e-3, f32: 1e-5 } as const;

/**
 * Runs one GEMM case on `device` from seeded random operands; compares with the JS oracle on
 * the CPU backend and with the CPU reference (the same operands on 'cpu') on CUDA.
 */
async function checkGemm(device: Device, c: GemmCase, seed: number): Promise<void> {
  const r = rng(seed);
  const { M, N, K, outDtype } = c;
  const w = randomNvfp4(r, N, K);
  const aq = c.w4a4 ? randomNvfp4(r, M, K) : undefined;
  const ab = c.w4a4 ? undefined : randomBf16(r, M * K);
  const biasValues = c.bias
    ? Array.from({ length: N }, () => {
        const v = r() * 2 - 1;
        return c.bias === 'bf16' ? bf16Value(bf16Bits(v)) : Math.fround(v);
      })
    : undefined;
  const run = (dev: Device) => {
    const wt = place(w, dev);
    const a = aq ? place(aq, dev) : fromBytes(ab!.bits, { dtype: 'bf16', shape: [M, K], device: dev });
    const bias = biasValues ? fromArray(biasValues, { dtype: c.bias!, device: dev }) : undefined;
    return gemmNvfp4(a, wt, { outDtype, alpha: c.alpha, bias, path: c.path });
  };
  const label = `seed ${seed} M=${M} N=${N} K=${K} ${c.w4a4 ? 'W4A4' : 'W4A16'} out=${outDtype}` +
    `${c.alpha !== undefined ? ` alpha=${c.alpha}` : ''}${c.bias ? ` bias=${c.bias}` : ''}${c.path ? ` path=${c.path}` : ''} on ${device}`;
  const out = run(device);
  expect(out.shape, label).toEqual([M, N]);
  expect(out.dtype, label).toBe(outDtype);
  const got = await values(out);
  let want: Float64Array;
  if (device === 'cpu') {
    const scale = Math.fround(c.alpha ?? 1) * (aq ? aq.gs : 1) * w.gs;
    want = oracleGemm(aq ? rawValues(aq) : ab!.values, rawValues(w), M, N, K, scale, biasValues, outDtype);
  } else {
    want = await values(run('cpu'));
  }
  expectClose(label, got, want, TOLERANCE[outDtype]);
}

// MOE_KERNELS_GEMM_PATH is read once per process, so its cases run in a child process
// (vite-node, the runner vitest itself uses) that imports this checkout's lib/.
const CHILD = `
import * as fs from 'node:fs';
import { fromBytes, gemmNvfp4, nvfp4FromCheckpoint } from ${JSON.stringify(path.resolve(__dirname, '../lib/index'))};
const p = JSON.parse(fs.readFileSync(process.env.NVFP4_CHILD_PAYLOAD!, 'utf8'));
const device = process.env.NVFP4_CHILD_DEVICE as 'cpu';
const bytes = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));
const report = (r: unknown) => console.log('NVFP4_CHILD ' + JSON.stringify(r));
try {
  const w = nvfp4FromCheckpoint({ weight: { data: bytes(p.wData), shape: [p.N, p.K / 2] },
    weight_scale: { data: bytes(p.wScales), shape: [p.N, p.K / 16] }, weight_scale_2: p.gs }, { device });
  const a = fromBytes(bytes(p.a), { dtype: 'bf16', shape: [p.M, p.K], device });
  gemmNvfp4(a, w, { outDtype: 'f32' }).toBytes().then((b) => report({ bytes: Buffer.from(b).toString('base64') }));
} catch (e) {
  report({ code: (e as { code?: string }).code, message: (e as Error).message });
}
`;

function gemmInChild(env: string, device: Device, payload: object): { bytes?: string; code?: string; message?: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvfp4-env-'));
  try {
    const script = path.join(dir, 'child.ts');
    const data = path.join(dir, 'payload.json');
    fs.writeFileSync(script, CHILD);
    fs.writeFileSync(data, JSON.stringify(payload));
    const runner = path.resolve(__dirname, '../node_modules/vite-node/vite-node.mjs');
    const stdout = execFileSync(process.execPath, [runner, script], {
      env: { ...process.env, MOE_KERNELS_GEMM_PATH: env, NVFP4_CHILD_PAYLOAD: data, NVFP4_CHILD_DEVICE: device },
      encoding: 'utf8',
      timeout: 120_000,
    });
    const line = stdout.split('\n').find((l) => l.startsWith('NVFP4_CHILD '));
    if (!line) throw new Error(`the child process printed no result; its output:\n${stdout}`);
    return JSON.parse(line.slice('NVFP4_CHILD '.length));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

forEachBackend('nvfp4 gemm', (device: Device) => {
  for (const outDtype of ['bf16', 'f32'] as const) {
    it(`W4A16, out ${outDtype}: M in {1, 3, 64, 65, 129} x N in {1, 19, 130} x K in {16, 48, 96, 1040}`, async () => {
      const seed = freshSeed(`nvfp4 gemm W4A16 ${outDtype} ${device}`);
      let i = 0;
      for (const M of [1, 3, 64, 65, 129]) for (const N of [1, 19, 130]) for (const K of [16, 48, 96, 1040]) {
        await checkGemm(device, { M, N, K, outDtype }, seed + i++);
      }
    });
  }

  it('W4A4 (both operands NVFP4, with their own global scales)', async () => {
    const seed = freshSeed(`nvfp4 gemm W4A4 ${device}`);
    let i = 0;
    for (const [M, N, K] of [[1, 19, 16], [3, 130, 1040], [64, 1, 48], [65, 130, 96], [129, 19, 1040]]) {
      for (const outDtype of ['bf16', 'f32'] as const) await checkGemm(device, { M, N, K, outDtype, w4a4: true }, seed + i++);
    }
  });

  it('alpha and bias (f32 and bf16), with and without split K', async () => {
    const seed = freshSeed(`nvfp4 gemm alpha bias ${device}`);
    let i = 0;
    for (const [M, N, K] of [[1, 130, 1040], [65, 19, 48], [129, 130, 1040], [4, 19, 96]]) {
      for (const bias of ['f32', 'bf16'] as const) {
        await checkGemm(device, { M, N, K, outDtype: 'f32', alpha: -0.3, bias }, seed + i++);
        await checkGemm(device, { M, N, K, outDtype: 'bf16', alpha: 2.5, bias, w4a4: i % 2 === 0 }, seed + i++);
      }
    }
  });

  it('tiles too few for the SMs: the Hopper kernel splits K (2 to 8 splits; a K tail in the last step)', async () => {
    const seed = freshSeed(`nvfp4 gemm sm90 split K ${device}`);
    let i = 0;
    // On 132 SMs (heuristics.h, selectSm90Tile): [65, 130, 2048] 128-token tiles in 4 splits,
    // [129, 600, 1056] and [300, 260, 4096] 128-token tiles in 2 and 8 splits (256-token ones
    // would cut K too short), [257, 2100, 5792] 256-token tiles in 3 splits of 31 steps with a
    // ragged N and M and a K tail.
    for (const [M, N, K] of [[65, 130, 2048], [129, 600, 1056], [300, 260, 4096], [257, 2100, 5792]]) {
      await checkGemm(device, { M, N, K, outDtype: 'f32', alpha: 0.7, bias: 'f32' }, seed + i++);
      await checkGemm(device, { M, N, K, outDtype: 'bf16' }, seed + i++);
    }
  });

  it('W4A4 above 64 tokens (the Hopper kernel, activations expanded first): split K, tails, alpha and bias', async () => {
    const seed = freshSeed(`nvfp4 gemm sm90 W4A4 ${device}`);
    let i = 0;
    // K % 32 == 0 takes the wgmma kernel on Hopper: [65, 130, 2048] and [300, 260, 4096] split K,
    // [257, 19, 96] has a K tail inside its last step and a ragged N; M = 64 stays on mma.sync.
    for (const [M, N, K] of [[65, 130, 2048], [300, 260, 4096], [257, 19, 96], [64, 130, 96]]) {
      await checkGemm(device, { M, N, K, outDtype: 'bf16', w4a4: true }, seed + i++);
      await checkGemm(device, { M, N, K, outDtype: 'f32', alpha: -0.6, bias: 'f32', w4a4: true }, seed + i++);
    }
  });

  it('Hopper kernel: step counts around the scale prefetch depth, CTAs that take a second tile', async () => {
    const seed = freshSeed(`nvfp4 gemm sm90 prefetch ${device}`);
    let i = 0;
    // (sm90_gemm.cuh, kScaleAhead = 8 steps of 64 k) K = 32: one partial step; K = 576: nine
    // steps, the ring's depth plus one; [4100, 1000, 96]: 17 x 8 tiles of 256 tokens on a grid of
    // at most 132 CTAs, so some take a second tile and restart the prefetch, with a K tail.
    for (const [M, N, K] of [[65, 130, 32], [129, 300, 576], [4100, 1000, 96]]) {
      await checkGemm(device, { M, N, K, outDtype: 'bf16' }, seed + i++);
      await checkGemm(device, { M, N, K, outDtype: 'f32', alpha: 0.3, bias: 'bf16' }, seed + i++);
    }
  });

  it('16 < M <= 64 (the wide streaming kernel on Hopper): 1 to 6 K splits, uneven ones, tails of N and K', async () => {
    const seed = freshSeed(`nvfp4 gemm wide ${device}`);
    let i = 0;
    // (heuristics.h, selectGemvWideConfig) K = 96: one partial 256-k batch; 2080: nine batches,
    // the last partial, over 6 splits; 1056: five splits; N = 14500: 114 row blocks, one split of
    // three batches; N = 4100: a lone row in the last block, two splits. M = 16 is the boundary.
    for (const [M, N, K] of [[16, 130, 288], [17, 130, 2080], [32, 19, 96], [33, 300, 1056], [64, 129, 2080],
      [20, 14500, 768], [64, 4100, 512]]) {
      await checkGemm(device, { M, N, K, outDtype: 'bf16' }, seed + i++);
      await checkGemm(device, { M, N, K, outDtype: 'f32', alpha: -0.7, bias: i % 4 === 1 ? 'bf16' : 'f32' }, seed + i++);
    }
  });

  it("path: 'portable' computes the product; bad values are refused", async () => {
    const seed = freshSeed(`nvfp4 gemm portable ${device}`);
    await checkGemm(device, { M: 3, N: 130, K: 1040, outDtype: 'f32', path: 'portable' }, seed);
    await checkGemm(device, { M: 129, N: 19, K: 96, outDtype: 'bf16', path: 'portable', w4a4: true }, seed + 1);
    const w = place(randomNvfp4(rng(seed), 16, 16), device);
    await expectCode(() => gemmNvfp4(empty([2, 16], { dtype: 'bf16', device }), w, { path: 'fast' as never }), 'E_ARGUMENT', 'path');
  });

  it('MOE_KERNELS_GEMM_PATH=portable gives the same bytes as path: portable; other values are refused', async () => {
    const seed = freshSeed(`nvfp4 gemm env ${device}`);
    const r = rng(seed);
    const M = 65, N = 130, K = 1040;
    const w = randomNvfp4(r, N, K);
    const a = randomBf16(r, M * K);
    const b64 = (x: ArrayBufferView) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64');
    const payload = { M, N, K, gs: w.gs, wData: b64(w.data), wScales: b64(w.scales), a: b64(a.bits) };
    const here = gemmNvfp4(fromBytes(a.bits, { dtype: 'bf16', shape: [M, K], device }), place(w, device), { outDtype: 'f32', path: 'portable' });
    const child = gemmInChild('portable', device, payload);
    expect(child.code, `seed ${seed}: ${child.message}`).toBeUndefined();
    compareBytes(`seed ${seed}: MOE_KERNELS_GEMM_PATH=portable vs path: 'portable'`, new Uint8Array(Buffer.from(child.bytes!, 'base64')), await here.toBytes());
    const bad = gemmInChild('fast', device, payload);
    expect(bad.code).toBe('E_ARGUMENT');
    expect(bad.message).toContain('MOE_KERNELS_GEMM_PATH');
  });

  it('batched activations [..., K] and out given', async () => {
    const seed = freshSeed(`nvfp4 gemm batched ${device}`);
    const r = rng(seed);
    const w = randomNvfp4(r, 19, 64);
    const a = randomBf16(r, 2 * 3 * 64);
    const wt = place(w, device);
    const at = fromBytes(a.bits, { dtype: 'bf16', shape: [2, 3, 64], device });
    const out = empty([2, 3, 19], { dtype: 'f32', device });
    expect(gemmNvfp4(at, wt, { out })).toBe(out); // outDtype follows out
    const want = oracleGemm(a.values, rawValues(w), 6, 19, 64, w.gs, undefined, 'f32');
    expectClose(`seed ${seed}: batched`, await values(out), want, TOLERANCE.f32);
    // a quantized activation from quantizeNvfp4 feeds W4A4 directly
    const aq = quantizeNvfp4(at);
    expect(gemmNvfp4(aq, wt).shape).toEqual([2, 3, 19]);
  });

  it('rejects bad input with codes that name the argument', async () => {
    const seed = freshSeed(`nvfp4 gemm errors ${device}`);
    const r = rng(seed);
    const w = place(randomNvfp4(r, 8, 32), device);
    const a = empty([4, 32], { dtype: 'bf16', device });
    await expectCode(() => gemmNvfp4(empty([4, 32], { dtype: 'f32', device }), w), 'E_DTYPE', 'a');
    await expectCode(() => gemmNvfp4(empty([4, 24], { dtype: 'bf16', device }), w), 'E_SHAPE', 'multiple of 16');
    await expectCode(() => gemmNvfp4(empty([4, 48], { dtype: 'bf16', device }), w), 'E_SHAPE', 'K = 32');
    await expectCode(() => gemmNvfp4(quantizeNvfp4(empty([4, 48], { dtype: 'bf16', device })), w), 'E_SHAPE', 'K = 32');
    await expectCode(() => gemmNvfp4(a, a as never), 'E_ARGUMENT', 'w');
    await expectCode(() => gemmNvfp4('a' as never, w), 'E_ARGUMENT', 'a');
    await expectCode(() => gemmNvfp4(a, w, { out: empty([4, 9], { dtype: 'bf16', device }) }), 'E_SHAPE', 'out');
    await expectCode(() => gemmNvfp4(a, w, { out: empty([4, 8], { dtype: 'f16', device }) as never }), 'E_DTYPE', 'out');
    await expectCode(() => gemmNvfp4(a, w, { outDtype: 'f32', out: empty([4, 8], { dtype: 'bf16', device }) as never }), 'E_DTYPE', 'out');
    await expectCode(() => gemmNvfp4(a, w, { outDtype: 'f16' as never }), 'E_DTYPE', 'outDtype');
    await expectCode(() => gemmNvfp4(a, w, { alpha: NaN }), 'E_ARGUMENT', 'alpha');
    await expectCode(() => gemmNvfp4(a, w, { bias: empty([9], { dtype: 'f32', device }) }), 'E_SHAPE', 'bias');
    await expectCode(() => gemmNvfp4(a, w, { bias: empty([8], { dtype: 'i32', device }) as never }), 'E_DTYPE', 'bias');
    // out over its own input is refused (the kernel would read what it overwrites)
    const square = place(randomNvfp4(r, 32, 32), device);
    await expectCode(() => gemmNvfp4(a, square, { out: a }), 'E_ARGUMENT', 'overlaps');
    // an [E, N, K] stack needs select(e)
    const stack = nvfp4FromCheckpoint(
      { weight: { data: new Uint8Array(2 * 8 * 16), shape: [2, 8, 16] }, weight_scale: { data: new Uint8Array(2 * 8 * 2).fill(0x38), shape: [2, 8, 2] }, weight_scale_2: [1, 1] },
      { device },
    );
    await expectCode(() => gemmNvfp4(a, stack), 'E_SHAPE', 'select');
    expect(gemmNvfp4(a, stack.select(1)).shape).toEqual([4, 8]);
    const goneA = empty([4, 32], { dtype: 'bf16', device });
    goneA.dispose();
    await expectCode(() => gemmNvfp4(goneA, w), 'E_DISPOSED', 'a');
    const goneW = place(randomNvfp4(r, 8, 32), device);
    goneW.dispose();
    await expectCode(() => gemmNvfp4(a, goneW), 'E_DISPOSED', 'w');
    const goneQ = quantizeNvfp4(a);
    goneQ.globalScale.dispose();
    await expectCode(() => gemmNvfp4(goneQ, w), 'E_DISPOSED', 'a');
  });
});

// ---------------------------------------------------------------------------------------------
// CUDA against the CPU reference on larger data, plus what only a device has.

describe.skipIf(!hasCuda)('nvfp4: CUDA and the CPU reference agree [cuda]', () => {
  const gpu: Device = 'cuda:0';

  for (const dtype of SOURCE_DTYPES) {
    it(`quantize ${dtype} (computed and given global scale) and dequantize to every dtype, byte for byte`, async () => {
      const seed = freshSeed(`nvfp4 quantize cpu-vs-cuda ${dtype}`);
      const r = rng(seed);
      const rows = 333, K = 7168 / 4 + 16;
      const finite = new Float32Array(rows * K);
      for (let b = 0; b < finite.length / 16; b++) {
        const mag = 2 ** Math.floor(r() * 30 - 15);
        for (let i = 0; i < 16; i++) finite[b * 16 + i] = (r() * 2 - 1) * mag;
      }
      finite[5] = 0; finite[6] = -0;
      for (let i = 16 * 50; i < 16 * 51; i++) finite[i] = 0;
      // NaN and infinities only with a given global scale: a computed one would be NaN or inf,
      // which the quantizer's contract excludes
      const special = finite.slice();
      special[100] = NaN; special[2000] = Infinity; special[3001] = -Infinity;
      const label = `seed ${seed} ${dtype} [${rows}, ${K}]`;
      for (const globalScale of [undefined, 0.0123]) {
        const src = globalScale === undefined ? finite : special;
        const qc = quantizeNvfp4(fromArray(src, { dtype, shape: [rows, K], device: 'cpu' }), { globalScale });
        const qg = quantizeNvfp4(fromArray(src, { dtype, shape: [rows, K], device: gpu }), { globalScale });
        const tag = `${label} gs=${globalScale ?? 'computed'}`;
        compareBytes(`${tag}: global scale`, await qg.globalScale.toBytes(), await qc.globalScale.toBytes());
        compareBytes(`${tag}: scales`, await qg.scales.toBytes(), await qc.scales.toBytes());
        compareBytes(`${tag}: data`, await qg.data.toBytes(), await qc.data.toBytes());
        for (const to of SOURCE_DTYPES) {
          compareBytes(`${tag}: dequantize -> ${to}`, await dequantizeNvfp4(qg, to).toBytes(), await dequantizeNvfp4(qc, to).toBytes());
        }
      }
      // the global scale alone, also over a size that is not a multiple of the vector width
      for (const src of [finite, special]) {
        const odd = fromArray(src.subarray(0, 12345), { dtype, device: gpu });
        compareBytes(`${label}: globalScaleNvfp4 (12345 elements${src === special ? ', NaN and inf' : ''})`, await globalScaleNvfp4(odd).toBytes(),
          await globalScaleNvfp4(fromArray(src.subarray(0, 12345), { dtype, device: 'cpu' })).toBytes());
      }
    });
  }

  it('dequantize decodes every (code, scale) byte pair like the CPU, NaN scales included', async () => {
    // 256 blocks (16 rows x 16 blocks), block b with scale byte b and codes 0..15 in order
    const scales = Uint8Array.from({ length: 256 }, (_, b) => b);
    const data = Uint8Array.from({ length: 256 * 8 }, (_, i) => (2 * (i % 8)) | ((2 * (i % 8) + 1) << 4));
    const make = (device: Device) =>
      nvfp4FromCheckpoint({ weight: { data, shape: [16, 128] }, weight_scale: { data: scales, shape: [16, 16] }, weight_scale_2: 0.75 }, { device });
    for (const to of SOURCE_DTYPES) {
      compareBytes(`every byte pair -> ${to}`, await dequantizeNvfp4(make(gpu), to).toBytes(), await dequantizeNvfp4(make('cpu'), to).toBytes());
    }
  });

  it('swizzle and unswizzle agree on many shapes', async () => {
    const seed = freshSeed('nvfp4 swizzle cpu-vs-cuda');
    const r = rng(seed);
    for (const [rows, kBlocks] of [[1, 1], [127, 3], [128, 4], [129, 5], [1000, 448], [7168, 128]]) {
      const bytes = Uint8Array.from({ length: rows * kBlocks }, () => Math.floor(r() * 256));
      const c = swizzleScales(fromBytes(bytes, { dtype: 'fp8e4m3', shape: [rows, kBlocks], device: 'cpu' }));
      const g = swizzleScales(fromBytes(bytes, { dtype: 'fp8e4m3', shape: [rows, kBlocks], device: gpu }));
      compareBytes(`seed ${seed} swizzle [${rows}, ${kBlocks}]`, await g.toBytes(), await c.toBytes());
      compareBytes(`seed ${seed} unswizzle [${rows}, ${kBlocks}]`, await unswizzleScales(g, [rows, kBlocks]).toBytes(), bytes);
    }
  });

  it('GEMM at DeepSeek-V3 sizes (decode with split K, prefill) matches the CPU reference', async () => {
    const seed = freshSeed('nvfp4 gemm large');
    let i = 0;
    for (const [M, N, K] of [[1, 4096, 7168], [16, 2048, 7168], [64, 7168, 2048], [256, 576, 7168], [300, 1000, 1536]]) {
      await checkGemm(gpu, { M, N, K, outDtype: 'bf16' }, seed + i++);
      await checkGemm(gpu, { M, N, K, outDtype: 'f32', w4a4: true, bias: 'f32', alpha: 0.5 }, seed + i++);
    }
  });

  it('GEMM split-K workspace comes from the stream arena: no allocation per call (device memory flat)', async () => {
    const seed = freshSeed('nvfp4 gemm workspace');
    const r = rng(seed);
    const w = place(randomNvfp4(r, 4096, 7168), gpu);
    // M = 32 runs the tiled decode kernel, which splits K through a workspace
    const M = 32;
    const a = fromBytes(randomBf16(r, M * 7168).bits, { dtype: 'bf16', shape: [M, 7168], device: gpu });
    const out = empty([M, 4096], { dtype: 'bf16', device: gpu });
    gemmNvfp4(a, w, { out }); // warm: first-use allocations
    await out.toBytes();
    const before = memoryStats(gpu);
    for (let k = 0; k < 10; k++) gemmNvfp4(a, w, { out });
    await out.toBytes();
    const after = memoryStats(gpu);
    // the split-K partials live in the stream's workspace arena, grown once by the warm call
    expect(after.allocations - before.allocations, 'no call allocates').toBe(0);
    expect(after.allocatedBytes, `seed ${seed}`).toBe(before.allocatedBytes);
    expect(after.reservedBytes, `seed ${seed}`).toBe(before.reservedBytes);
    // and the split result is the CPU reference's
    await checkGemm(gpu, { M, N: 4096, K: 7168, outDtype: 'f32', bias: 'bf16' }, seed + 1);
  });

  it('decode step captured into a CUDA graph replays like eager', async () => {
    const seed = freshSeed('nvfp4 gemm graph');
    const r = rng(seed);
    const s = createStream(gpu);
    const w = place(randomNvfp4(r, 2048, 7168), gpu);
    const x = fromBytes(randomBf16(r, 4 * 7168).bits, { dtype: 'bf16', shape: [4, 7168], device: gpu, stream: s });
    const eagerA16 = await gemmNvfp4(x, w, { stream: s }).toBytes({ stream: s });
    const eagerA4 = await gemmNvfp4(quantizeNvfp4(x, { stream: s }), w, { stream: s }).toBytes({ stream: s });
    const y16 = empty([4, 2048], { dtype: 'bf16', device: gpu, stream: s });
    const y4 = empty([4, 2048], { dtype: 'bf16', device: gpu, stream: s });
    const graph = captureGraph(s, () => {
      gemmNvfp4(x, w, { out: y16, stream: s });
      gemmNvfp4(quantizeNvfp4(x, { stream: s }), w, { out: y4, stream: s });
    });
    graph.replay();
    compareBytes(`seed ${seed}: graph W4A16`, await y16.toBytes({ stream: s }), eagerA16);
    compareBytes(`seed ${seed}: graph W4A4`, await y4.toBytes({ stream: s }), eagerA4);
    graph.dispose();
    await expectCode(() => captureGraph(s, () => void quantizeNvfp4(x, { globalScale: 2, stream: s })), 'E_CAPTURE', 'globalScale');
  });

  it('tensors on different devices are refused', async () => {
    const w = place(randomNvfp4(rng(1), 8, 32), gpu);
    const a = empty([2, 32], { dtype: 'bf16', device: 'cpu' });
    await expectCode(() => gemmNvfp4(a, w), 'E_DEVICE', 'w');
    await expectCode(() => gemmNvfp4(empty([2, 32], { dtype: 'bf16', device: gpu }), w, { bias: empty([8], { device: 'cpu' }) }), 'E_DEVICE', 'bias');
    await expectCode(() => gemmNvfp4(empty([2, 32], { dtype: 'bf16', device: gpu }), w, { out: empty([2, 8], { dtype: 'bf16', device: 'cpu' }) }), 'E_DEVICE', 'out');
    await expectCode(() => quantizeNvfp4(empty([2, 32], { dtype: 'bf16', device: gpu }), { globalScale: fromArray([1], { device: 'cpu' }) }), 'E_DEVICE', 'globalScale');
    await expectCode(() => dequantizeNvfp4(w, 'bf16', { out: empty([8, 32], { dtype: 'bf16', device: 'cpu' }) }), 'E_DEVICE', 'out');
    await expectCode(
      () => nvfp4FromCheckpoint({ weight: w.data, weight_scale: w.scales, weight_scale_2: 1 }, { device: 'cpu' }),
      'E_DEVICE',
      'weight',
    );
  });
});

forEachBackend('Nvfp4Tensor assembled from parts', (device: Device) => {
  it('checks every part against the shape before kernels size their reads from it', async () => {
    const data = empty([4, 32], { dtype: 'u8', device });
    const scales = empty([4, 4], { dtype: 'fp8e4m3', device });
    const gs = fromArray([1], { device });
    const ok = new Nvfp4Tensor(data, scales, gs, [4, 64]);
    expect(ok.shape).toEqual([4, 64]);
    await expectCode(() => new Nvfp4Tensor(data, scales, gs, [1 << 20, 64]), 'E_SHAPE', 'data');
    await expectCode(() => new Nvfp4Tensor(data, scales, gs, [4, 60]), 'E_SHAPE', 'shape');
    await expectCode(() => new Nvfp4Tensor(data, empty([4, 2], { dtype: 'fp8e4m3', device }), gs, [4, 64]), 'E_SHAPE', 'scales');
    await expectCode(() => new Nvfp4Tensor(data, scales, fromArray([1, 2], { device }), [4, 64]), 'E_SHAPE', 'globalScale');
    await expectCode(() => new Nvfp4Tensor(data, empty([4, 4], { dtype: 'u8', device }) as never, gs, [4, 64]), 'E_DTYPE', 'scales');
    await expectCode(() => new Nvfp4Tensor(empty([4, 32], { dtype: 'i32', device }) as never, scales, gs, [4, 64]), 'E_DTYPE', 'data');
  });
});

// ---------------------------------------------------------------------------------------------
// The op path: options objects, preconditions the native side applies, native calls per op.

forEachBackend('nvfp4 op path', (device: Device) => {
  const r = rng(7);
  const x = () => fromArray(Array.from({ length: 64 }, () => r() - 0.5), { dtype: 'bf16', shape: [2, 32], device });

  it('every options object refuses unknown keys and null with E_ARGUMENT', async () => {
    const a = x();
    const q = quantizeNvfp4(a);
    const scales = empty([4, 4], { dtype: 'fp8e4m3', device });
    const sw = swizzleScales(scales);
    const checkpoint = { weight: { data: new Uint8Array(8 * 8), shape: [8, 8] }, weight_scale: { data: new Uint8Array(8).fill(0x38), shape: [8, 1] }, weight_scale_2: 1 };
    const ops: [string, (o: unknown) => unknown][] = [
      ['globalScaleNvfp4', (o) => globalScaleNvfp4(a, o as never)],
      ['quantizeNvfp4', (o) => quantizeNvfp4(a, o as never)],
      ['dequantizeNvfp4', (o) => dequantizeNvfp4(q, 'bf16', o as never)],
      ['swizzleScales', (o) => swizzleScales(scales, o as never)],
      ['unswizzleScales', (o) => unswizzleScales(sw, [4, 4], o as never)],
      ['gemmNvfp4', (o) => gemmNvfp4(a, place(randomNvfp4(rng(1), 8, 32), device), o as never)],
      ['nvfp4FromCheckpoint', (o) => nvfp4FromCheckpoint(checkpoint, (o !== null && typeof o === 'object' ? { device, ...o } : o) as never)],
    ];
    for (const [name, run] of ops) {
      // each accepts its options (so the refusals below are about the options alone)
      expect(() => run(undefined), name).not.toThrow();
      expect(() => run({ stream: defaultStream(device) }), name).not.toThrow();
      await expectCode(() => run({ stream: defaultStream(device), steram: 1 }), 'E_ARGUMENT', 'steram');
      await expectCode(() => run(null), 'E_ARGUMENT', 'options');
    }
    // misspellings of each op's own keys
    await expectCode(() => quantizeNvfp4(a, { globalscale: 2 } as never), 'E_ARGUMENT', 'globalscale');
    await expectCode(() => dequantizeNvfp4(q, 'f32', { outt: empty([2, 32], { device }) } as never), 'E_ARGUMENT', 'outt');
    await expectCode(() => gemmNvfp4(a, place(randomNvfp4(rng(1), 8, 32), device), { outdtype: 'f32' } as never), 'E_ARGUMENT', 'outdtype');
    await expectCode(() => nvfp4FromCheckpoint(checkpoint, { device, devcie: device } as never), 'E_ARGUMENT', 'devcie');
  });

  it('the native side names the argument of a precondition it refuses (not E_CUDA)', async () => {
    const b = native();
    const dev = device === 'cpu' ? -1 : 0;
    const s = defaultStream(device).handle;
    const a = empty([4, 32], { dtype: 'bf16', device });
    const w = place(randomNvfp4(rng(2), 8, 32), device);
    const out = empty([4, 8], { dtype: 'f32', device });
    const gemm = (K: number, aType = 2, outType = 0) => () =>
      b.nvfp4Gemm(dev, s, a.dataPtr, aType, 0n, 0n, w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr, 0n, 0, out.dataPtr, outType, 4, 8, K, 1, false);
    gemm(32)(); // the same call with a valid K runs
    await expectCode(gemm(24), 'E_SHAPE', 'K');
    await expectCode(gemm(-16), 'E_SHAPE', 'K');
    await expectCode(gemm(32, 0), 'E_DTYPE', 'a');
    await expectCode(gemm(32, 2, 1), 'E_DTYPE', 'out');
    // W4A4 without the activation's scales
    await expectCode(gemm(32, 4), 'E_ARGUMENT', 'a.globalScale');
    // a misaligned activation pointer
    await expectCode(() => b.nvfp4Gemm(dev, s, a.dataPtr + 2n, 2, 0n, 0n, w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr, 0n, 0, out.dataPtr, 0, 2, 8, 32, 1, false), 'E_ARGUMENT', 'aligned');
    const q = quantizeNvfp4(a);
    await expectCode(() => b.nvfp4Quantize(dev, s, a.dataPtr, 2, 4, 24, q.globalScale.dataPtr, q.data.dataPtr, q.scales.dataPtr, 0n), 'E_SHAPE', 'K');
    await expectCode(() => b.nvfp4Quantize(dev, s, a.dataPtr, 5, 4, 32, q.globalScale.dataPtr, q.data.dataPtr, q.scales.dataPtr, 0n), 'E_DTYPE', 'x');
    await expectCode(() => b.nvfp4Dequantize(dev, s, q.data.dataPtr, q.scales.dataPtr, q.globalScale.dataPtr, 4, 32, out.dataPtr, 3), 'E_DTYPE', 'dtype');
    await expectCode(() => b.nvfp4SwizzleScales(dev, s, q.scales.dataPtr, 4, 40, 0n), 'E_SHAPE', 'K');
    await expectCode(() => b.nvfp4Amax(dev, s, a.dataPtr, 2, 128, 0n), 'E_ARGUMENT', 'amax');
  });

  it('gemmNvfp4 with out given makes exactly one native call; quantizeNvfp4 with a device global scale two', async () => {
    const a = x();
    const w = place(randomNvfp4(rng(3), 8, 32), device);
    const out = empty([2, 8], { dtype: 'bf16', device });
    const gs = fromArray([0.01], { device });
    // warm: the default stream and anything else made on first use
    gemmNvfp4(a, w, { out });
    quantizeNvfp4(a, { globalScale: gs }).dispose();
    expect(nativeCalls(() => gemmNvfp4(a, w, { out }))).toEqual(['nvfp4Gemm']);
    expect(nativeCalls(() => gemmNvfp4(quantizeNvfp4(a, { globalScale: gs }), w, { out })).filter((n) => n.startsWith('nvfp4'))).toEqual([
      'nvfp4Quantize',
      'nvfp4Gemm',
    ]);
    // the three parts of the result come from one allocation, and the op copies the scale
    let q: Nvfp4Tensor | undefined;
    const calls = nativeCalls(() => void (q = quantizeNvfp4(a, { globalScale: gs })));
    expect(calls).toEqual([device === 'cpu' ? 'hostAlloc' : 'deviceAlloc', 'nvfp4Quantize']);
    expect(Array.from(await q!.globalScale.toArray())).toEqual([Math.fround(0.01)]);
    // each part is usable on its own, aligned for the kernels' vector loads
    for (const p of [q!.data, q!.scales, q!.globalScale]) expect(p.dataPtr % 16n).toBe(0n);
    const want = await quantizeNvfp4(a, { globalScale: 0.01 }).data.toBytes();
    compareBytes('quantize with a device scale vs a number', await q!.data.toBytes(), want);
  });
});
