import { describe, expect, it } from 'vitest';
import { convert, empty, fromArray, fromBytes, type DType, type Device, type Tensor } from '../lib';
import { expectCode, forEachBackend, freshSeed, hasCuda, rng } from './backends';

// Independent oracles: decode a bit pattern with the format's formula, and round by searching
// the sorted table of every finite value of the target format.
function decode(dtype: 'f16' | 'bf16' | 'fp8e4m3', bits: number): number {
  const [eb, mb, bias] = dtype === 'f16' ? [5, 10, 15] : dtype === 'bf16' ? [8, 7, 127] : [4, 3, 7];
  const total = 1 + eb + mb;
  const sign = (bits >> (total - 1)) & 1 ? -1 : 1;
  const e = (bits >> mb) & ((1 << eb) - 1);
  const m = bits & ((1 << mb) - 1);
  const emax = (1 << eb) - 1;
  if (dtype === 'fp8e4m3') {
    if (e === emax && m === (1 << mb) - 1) return NaN;
  } else if (e === emax) {
    return m === 0 ? sign * Infinity : NaN;
  }
  if (e === 0) return sign * m * 2 ** (1 - bias - mb);
  return sign * (1 + m / 2 ** mb) * 2 ** (e - bias);
}

const BITS: Record<'f16' | 'bf16' | 'fp8e4m3', number> = { f16: 16, bf16: 16, fp8e4m3: 8 };

function positiveTable(dtype: 'f16' | 'bf16' | 'fp8e4m3'): { value: number; bits: number }[] {
  const t: { value: number; bits: number }[] = [];
  const half = 1 << (BITS[dtype] - 1);
  for (let b = 0; b < half; b++) {
    const v = decode(dtype, b);
    if (Number.isFinite(v)) t.push({ value: v, bits: b });
  }
  return t.sort((a, b) => a.value - b.value);
}

function roundOracle(dtype: 'f16' | 'bf16' | 'fp8e4m3', v: number, table: { value: number; bits: number }[]): number {
  const signBit = 1 << (BITS[dtype] - 1);
  if (Number.isNaN(v)) return dtype === 'fp8e4m3' ? 0x7f : 0x7fff;
  const neg = v < 0 || Object.is(v, -0);
  const a = Math.abs(v);
  const max = table[table.length - 1];
  let bits: number;
  if (dtype === 'fp8e4m3' && a >= max.value) {
    bits = max.bits; // saturate
  } else {
    // the value one step above the largest finite one stands for infinity (IEEE overflow rule)
    const step = max.value - table[table.length - 2].value;
    if (a >= max.value + step / 2) bits = dtype === 'f16' ? 0x7c00 : 0x7f80;
    else {
      let lo = 0, hi = table.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (table[mid].value <= a) lo = mid;
        else hi = mid;
      }
      if (a >= max.value) bits = max.bits;
      else {
        const dl = a - table[lo].value, dh = table[hi].value - a;
        bits = dl < dh ? table[lo].bits : dh < dl ? table[hi].bits : table[lo].bits % 2 === 0 ? table[lo].bits : table[hi].bits;
      }
    }
  }
  return neg ? bits | signBit : bits;
}

function f32Bits(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

async function bytesOf(t: Tensor): Promise<number[]> {
  const raw = await t.toBytes();
  const width = raw.byteLength / t.numel;
  const out: number[] = [];
  for (let i = 0; i < t.numel; i++) out.push(width === 2 ? raw[2 * i] | (raw[2 * i + 1] << 8) : raw[i]);
  return out;
}

// Hand-computed cases: [input f32, expected bits].
const HAND: Record<'f16' | 'bf16' | 'fp8e4m3', [number, number][]> = {
  bf16: [
    [1, 0x3f80], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [-0, 0x8000], [Infinity, 0x7f80],
    [-Infinity, 0xff80], [NaN, 0x7fff], [3.4028234663852886e38, 0x7f80], [2 ** -130, 0x0008], [1e-45, 0x0000],
  ],
  f16: [
    [65504, 0x7bff], [65519, 0x7bff], [65520, 0x7c00], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02],
    [2 ** -24, 0x0001], [2 ** -25, 0x0000], [1.5 * 2 ** -24, 0x0002], [2.5 * 2 ** -24, 0x0002], [0.75 * 2 ** -24, 0x0001],
    [2 ** -14, 0x0400], [NaN, 0x7fff], [-Infinity, 0xfc00], [-0, 0x8000],
  ],
  fp8e4m3: [
    [448, 0x7e], [464, 0x7e], [1e9, 0x7e], [Infinity, 0x7e], [-Infinity, 0xfe], [NaN, 0x7f], [1, 0x38],
    [1.0625, 0x38], [1.1875, 0x3a], [2 ** -9, 0x01], [2 ** -10, 0x00], [1.5 * 2 ** -9, 0x02], [2 ** -6, 0x08],
    [-0, 0x80], [240, 0x77], [256, 0x78], [416, 0x7d], [432, 0x7e], [430, 0x7d], [-3, 0xc4],
  ],
};

forEachBackend('convert', (device: Device) => {
  for (const dtype of ['bf16', 'f16', 'fp8e4m3'] as const) {
    it(`f32 -> ${dtype}: hand-computed cases`, async () => {
      const cases = HAND[dtype];
      const x = fromBytes(f32Bits(cases.map((c) => c[0])), { dtype: 'f32', shape: [cases.length], device });
      const y = convert(x, dtype);
      expect((await bytesOf(y)).map((b) => b.toString(16))).toEqual(cases.map((c) => c[1].toString(16)));
    });

    it(`${dtype} -> f32: every bit pattern decodes exactly`, async () => {
      const n = 1 << BITS[dtype];
      const raw = new Uint8Array(n * (BITS[dtype] / 8));
      for (let b = 0; b < n; b++) {
        if (BITS[dtype] === 16) { raw[2 * b] = b & 0xff; raw[2 * b + 1] = b >> 8; } else raw[b] = b;
      }
      const x = fromBytes(raw, { dtype, shape: [n], device });
      const y = await convert(x, 'f32').toArray();
      for (let b = 0; b < n; b++) {
        const want = decode(dtype, b);
        if (Number.isNaN(want)) expect(Number.isNaN(y[b]), `bits ${b.toString(16)}`).toBe(true);
        else expect(Object.is(y[b], want) || y[b] === want, `bits ${b.toString(16)}: ${y[b]} vs ${want}`).toBe(true);
      }
    });

    it(`f32 -> ${dtype}: random values round to nearest even (oracle: table search)`, async () => {
      const r = rng(freshSeed(`convert f32->${dtype} ${device}`));
      const table = positiveTable(dtype);
      const maxExp = dtype === 'fp8e4m3' ? 10 : dtype === 'f16' ? 17 : 128;
      const minExp = dtype === 'fp8e4m3' ? -12 : dtype === 'f16' ? -26 : -134;
      const values: number[] = [];
      for (let i = 0; i < 20000; i++) {
        const e = minExp + Math.floor(r() * (maxExp - minExp));
        const v = Math.fround((1 + r()) * 2 ** e * (r() < 0.5 ? -1 : 1));
        values.push(v);
        // exact ties between neighbours of the target format
        if (i % 4 === 0) {
          const k = Math.floor(r() * (table.length - 1));
          values.push(Math.fround((table[k].value + table[k + 1].value) / 2));
        }
      }
      const x = fromArray(values, { dtype: 'f32', device });
      const got = await bytesOf(convert(x, dtype));
      const f32 = new Float32Array(values);
      for (let i = 0; i < values.length; i++) {
        const want = roundOracle(dtype, f32[i], table);
        if (got[i] !== want) throw new Error(`${f32[i]} -> ${dtype}: got 0x${got[i].toString(16)}, want 0x${want.toString(16)}`);
      }
    });
  }

  it('converts between 16-bit and 8-bit types through one rounding', async () => {
    const bf = fromBytes(new Uint8Array([0x7f, 0x47, 0x80, 0x47, 0xe8, 0x43]), { dtype: 'bf16', shape: [3], device });
    expect(await bytesOf(convert(bf, 'f16'))).toEqual([0x7bf8, 0x7c00, 0x5f40]);
    expect(await bytesOf(convert(bf, 'fp8e4m3'))).toEqual([0x7e, 0x7e, 0x7e]);
    // NaN: f16 and e4m3 decode to the canonical f32 NaN; bf16 widens by a shift
    const nan16 = fromBytes(new Uint8Array([0x01, 0xfe]), { dtype: 'f16', shape: [1], device });
    expect(Array.from(await convert(nan16, 'f32').toBytes())).toEqual([0xff, 0xff, 0xff, 0x7f]);
    const nan8 = fromBytes(new Uint8Array([0xff]), { dtype: 'fp8e4m3', shape: [1], device });
    expect(Array.from(await convert(nan8, 'f32').toBytes())).toEqual([0xff, 0xff, 0xff, 0x7f]);
    const nanBf = fromBytes(new Uint8Array([0xc1, 0xff]), { dtype: 'bf16', shape: [1], device });
    expect(Array.from(await convert(nanBf, 'f32').toBytes())).toEqual([0x00, 0x00, 0xc1, 0xff]);
    const h = fromBytes(new Uint8Array([0x00, 0x5f]), { dtype: 'f16', shape: [1], device });
    expect(await bytesOf(convert(h, 'fp8e4m3'))).toEqual([0x7e]);
  });

  it('handles empty, one-element and odd-sized tensors, and writes into out', async () => {
    expect(convert(empty([0, 5], { device }), 'bf16').shape).toEqual([0, 5]);
    const one = await convert(fromArray([2.5], { device }), 'f16').toArray();
    expect(Array.from(one)).toEqual([2.5]);
    const n = 100_003;
    const src = new Float32Array(n).map((_, i) => ((i % 255) - 127) * 0.125);
    const x = fromArray(src, { device });
    const out = empty([n], { dtype: 'bf16', device });
    const y = convert(x, 'bf16', { out });
    expect(y).toBe(out);
    const back = await y.toArray();
    for (let i = 0; i < n; i += 101) expect(back[i]).toBe(src[i]); // all exact in bf16
    const inPlace = fromArray([1.5, -7], { device });
    convert(inPlace, 'f32', { out: inPlace });
    expect(Array.from(await inPlace.toArray())).toEqual([1.5, -7]);
  });

  it('rejects bad input with codes that name the argument', async () => {
    const x = fromArray([1, 2, 3, 4], { shape: [2, 2], device });
    await expectCode(() => convert(x, 'i32' as DType), 'E_DTYPE', 'dtype');
    await expectCode(() => convert(x, 'f64' as DType), 'E_DTYPE', 'dtype');
    await expectCode(() => convert(fromArray([1], { dtype: 'i32', device }), 'f32'), 'E_DTYPE', 'x');
    await expectCode(() => convert(x, 'bf16', { out: empty([4], { dtype: 'bf16', device }) }), 'E_SHAPE', 'out');
    await expectCode(() => convert(x, 'bf16', { out: empty([2, 2], { dtype: 'f16', device }) }), 'E_DTYPE', 'out');
    await expectCode(() => convert(x, 'bf16', { out: x.slice(1).reshape([1, 2]) as never }), 'E_DTYPE', 'out');
    await expectCode(() => convert('x' as never, 'bf16'), 'E_ARGUMENT', 'x');
    const gone = fromArray([1], { device });
    gone.dispose();
    await expectCode(() => convert(gone, 'bf16'), 'E_DISPOSED', 'x');
  });
});

describe.skipIf(!hasCuda)('convert: CUDA and CPU agree bit for bit [cuda]', () => {
  const pairs: [DType, DType][] = [];
  for (const a of ['f32', 'f16', 'bf16', 'fp8e4m3'] as const) for (const b of ['f32', 'f16', 'bf16', 'fp8e4m3'] as const) pairs.push([a, b]);
  for (const [from, to] of pairs) {
    it(`${from} -> ${to} on random bit patterns`, async () => {
      const r = rng(freshSeed(`convert ${from}->${to}`));
      const width = from === 'f32' ? 4 : from === 'fp8e4m3' ? 1 : 2;
      const n = 300_001;
      const raw = new Uint8Array(n * width);
      for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(r() * 256);
      if (from === 'f32') {
        // also values in the small formats' ranges, where rounding decides
        const f = new Float32Array(raw.buffer);
        for (let i = 0; i < n; i += 2) f[i] = (r() - 0.5) * 2 ** Math.floor(r() * 40 - 20);
      }
      const cpu = convert(fromBytes(raw, { dtype: from, shape: [n], device: 'cpu' }), to);
      const gpu = convert(fromBytes(raw, { dtype: from, shape: [n], device: 'cuda:0' }), to);
      const a = await cpu.toBytes();
      const b = await gpu.toBytes();
      let mismatches = 0;
      let first = '';
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) { if (!mismatches) first = `byte ${i}: cpu ${a[i]} gpu ${b[i]}`; mismatches++; }
      expect(mismatches, first).toBe(0);
    });
  }

  it('tensors on different devices are refused', async () => {
    const x = fromArray([1, 2], { device: 'cpu' });
    await expectCode(() => convert(x, 'bf16', { out: empty([2], { dtype: 'bf16', device: 'cuda:0' }) }), 'E_DEVICE', 'out');
  });
});
