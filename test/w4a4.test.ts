// NVFP4 activations through the MoE layer (W4A4): permute with quantization, the grouped GEMM
// with NVFP4 x and with the swiglu epilogue writing NVFP4, and moeForward({ activations: 'nvfp4' }).
import { describe, expect, it } from 'vitest';
import {
  createMoeWorkspace,
  dequantizeNvfp4,
  empty,
  expertLayout,
  fromArray,
  fromBytes,
  gemmNvfp4,
  globalScaleNvfp4,
  groupedGemmNvfp4,
  moeForward,
  nvfp4FromCheckpoint,
  permute,
  quantizeNvfp4,
  routeTopK,
  routerLogits,
  unpermute,
  type Device,
  type ExpertLayoutOptions,
  type MoeExperts,
  type MoeRouter,
  type Nvfp4Tensor,
  type Tensor,
} from '../lib';
import { expectClose, expectCode, forEachBackend, freshSeed, hasCuda, rng } from './backends';
import {
  GEMM_TOLERANCE as TOLERANCE,
  bf16Bits,
  bf16Value,
  idsForCounts,
  layoutOf,
  placeExperts,
  randomBf16Bits,
  randomExperts,
  randomIds,
  readI32,
  swigluF32,
  type GemmCase as Case,
  type RawExperts,
} from './experts';


async function bytes(t: Tensor): Promise<Uint8Array> {
  return (await t.toBytes()).slice();
}

/** Rows [r0, r1) of a [rows, K] NVFP4 tensor's data and scales. */
function rowsOf(data: Uint8Array, scales: Uint8Array, K: number, r0: number, r1: number) {
  return { data: data.slice((r0 * K) / 2, (r1 * K) / 2), scales: scales.slice((r0 * K) / 16, (r1 * K) / 16) };
}

/** Where two byte arrays first differ, or 'equal': toEqual walks typed arrays element by element, far too slowly for DeepSeek-V3 widths. */
function firstDifference(got: Uint8Array, want: Uint8Array): string {
  if (got.length !== want.length) return `lengths ${got.length} and ${want.length}`;
  if (Buffer.from(got.buffer, got.byteOffset, got.length).equals(Buffer.from(want.buffer, want.byteOffset, want.length))) return 'equal';
  let i = 0;
  while (got[i] === want[i]) i++;
  return `byte ${i}: ${got[i]} against ${want[i]}`;
}

function expectSameRows(got: { data: Uint8Array; scales: Uint8Array }, want: { data: Uint8Array; scales: Uint8Array }, label: string): void {
  expect(firstDifference(got.data, want.data), `${label}: codes`).toBe('equal');
  expect(firstDifference(got.scales, want.scales), `${label}: scales`).toBe('equal');
}

/** An NVFP4 tensor filled with a sentinel, to see which rows an op writes. */
function sentinelNvfp4(rows: number, K: number, device: Device): Nvfp4Tensor {
  return nvfp4FromCheckpoint(
    {
      weight: { data: new Uint8Array((rows * K) / 2).fill(0xa5), shape: [rows, K / 2] },
      weight_scale: { data: new Uint8Array((rows * K) / 16).fill(0x5a), shape: [rows, K / 16], dtype: 'F8_E4M3' },
      weight_scale_2: 3,
    },
    { device },
  );
}

const FORMS: ExpertLayoutOptions[] = [{ align: 1 }, { align: 8 }, { maxTokensPerExpert: 3 }, { maxTokensPerExpert: 40 }];

forEachBackend('permute with NVFP4 quantization', (device: Device) => {
  it('hand-computed rows: a gathered row, a padding row (zeros), rows past usedRows untouched', async () => {
    // x [2, 16]; token 1 goes to expert 0, token 0 to expert 1; align 2 pads each expert's block
    const row0 = [6, -3, 0.5, 0, 1, 1.5, 2, 4, -6, 0.25, 0.75, 5, -0.5, 3, 1.25, 2.5];
    const row1 = row0.map((v) => v * 2);
    const x = fromArray([row0, row1], { dtype: 'f32', device });
    const l = layoutOf([[1], [0]], 1, 2, { align: 2 }, device);
    expect(l.rows).toBe(4);
    const out = sentinelNvfp4(l.rows, 16, device);
    const q = permute(x, l, { quantize: 'nvfp4', globalScale: 1, out });
    expect(q).toBe(out);
    const data = await bytes(q.data);
    const scales = await bytes(q.scales);
    // row 0 = token 1 = 2 * row0: amax 12, s = 12 / 6 = 2 -> e4m3 0x40, so the codes are those of row0 / 1;
    // row 2 = token 0: amax 6, s = 1 -> 0x38. E2M1 of 6, -3, .5, 0, 1, 1.5, 2, 4, -6, .25 (tie -> 0), .75 (tie -> 1.0),
    // 5 (tie -> 4), -.5, 3, 1.25 (tie -> 1.0), 2.5 (tie -> 2)
    const codes = [7, 0x8 | 5, 1, 0, 2, 3, 4, 6, 0x8 | 7, 0, 2, 6, 0x8 | 1, 5, 2, 4];
    const codes1 = codes, codes0 = codes;
    const pack = (c: number[]) => Array.from({ length: 8 }, (_, i) => c[2 * i] | (c[2 * i + 1] << 4));
    expect(Array.from(data.slice(0, 8))).toEqual(pack(codes1));
    expect(Array.from(data.slice(16, 24))).toEqual(pack(codes0));
    expect(Array.from(scales)).toEqual([0x40, 0x38, 0x38, 0x38]);
    // rows 1 and 3 are padding: the quantized zero row
    expect(Array.from(data.slice(8, 16))).toEqual(new Array(8).fill(0));
    expect(Array.from(data.slice(24, 32))).toEqual(new Array(8).fill(0));
    expect((await q.globalScale.toArray())[0]).toBe(1);
    // both tokens to expert 0 with align 2: 4 rows, usedRows 2, rows 2 and 3 are not written
    const l1 = layoutOf([[0], [0]], 1, 2, { align: 2 }, device);
    expect(await readI32(l1.usedRows)).toEqual([2]);
    const out1 = sentinelNvfp4(l1.rows, 16, device);
    permute(x, l1, { quantize: 'nvfp4', globalScale: 1, out: out1 });
    const d1 = await bytes(out1.data);
    expect(Array.from(d1.slice(0, 8))).toEqual(pack(codes0));
    expect(Array.from(d1.slice(8, 16))).toEqual(pack(codes1));
    expect(Array.from(d1.slice(16, 32))).toEqual(new Array(16).fill(0xa5));
    expect(Array.from(await bytes(out1.scales))).toEqual([0x38, 0x40, 0x5a, 0x5a]);
  });

  it('bit for bit quantizeNvfp4(permute(x)) in every form and source dtype, with every kind of global scale', async () => {
    const seed = freshSeed(`permute nvfp4 ${device}`);
    let i = 0;
    for (const dtype of ['bf16', 'f16', 'f32'] as const) {
      for (const form of FORMS) {
        for (const scaleKind of ['default', 'number', 'tensor'] as const) {
          const r = rng(seed + i++);
          const T = 1 + Math.floor(r() * 20), k = 1 + Math.floor(r() * 3), E = 6, H = 48;
          const label = `seed ${seed + i - 1} ${dtype} ${JSON.stringify(form)} ${scaleKind} T=${T} k=${k}`;
          const values = Array.from({ length: T * H }, () => (r() - 0.5) * 2 ** Math.floor(r() * 6 - 3));
          const x = fromArray(values, { shape: [T, H], dtype, device });
          const l = layoutOf(randomIds(r, T, k, E), k, E, form, device);
          const gsNumber = Math.fround(0.001 + r() * 0.01);
          const globalScale = scaleKind === 'number' ? gsNumber : scaleKind === 'tensor' ? fromArray([gsNumber], { device }) : undefined;
          const out = sentinelNvfp4(l.rows, H, device);
          permute(x, l, { quantize: 'nvfp4', out, ...(globalScale !== undefined ? { globalScale } : {}) });
          const plain = permute(x, l);
          // the default is x's own scale (every token, also those a masked layout drops)
          const want = quantizeNvfp4(plain, { globalScale: globalScale ?? globalScaleNvfp4(x) });
          const used = (await readI32(l.usedRows))[0];
          const got = { data: await bytes(out.data), scales: await bytes(out.scales) };
          const ref = { data: await bytes(want.data), scales: await bytes(want.scales) };
          expectSameRows(rowsOf(got.data, got.scales, H, 0, used), rowsOf(ref.data, ref.scales, H, 0, used), label);
          const rest = rowsOf(got.data, got.scales, H, used, l.rows);
          expect(rest.data.every((b) => b === 0xa5) && rest.scales.every((b) => b === 0x5a), `${label}: rows past usedRows`).toBe(true);
          expect(Array.from(await out.globalScale.toArray()), label).toEqual(Array.from(await want.globalScale.toArray()));
          // a new result has the layout's shape
          const fresh = permute(x, l, { quantize: 'nvfp4', globalScale: gsNumber });
          expect(fresh.shape).toEqual([l.rows, H]);
        }
      }
    }
  });

  it('T = 0, T = 1, every token to one expert, masked overflow dropped', async () => {
    const seed = freshSeed(`permute nvfp4 edges ${device}`);
    const r = rng(seed);
    const H = 32;
    const cases: [number[][], number, ExpertLayoutOptions][] = [
      [[], 2, { align: 4 }],
      [[[3]], 1, { align: 1 }],
      [[[3]], 1, { maxTokensPerExpert: 1 }],
      [Array.from({ length: 9 }, () => [2]), 1, { maxTokensPerExpert: 4 }],
      [Array.from({ length: 9 }, () => [2]), 1, { align: 16 }],
    ];
    for (const [ids, k, form] of cases) {
      const T = ids.length;
      const x = fromBytes(randomBf16Bits(r, T * H), { dtype: 'bf16', shape: [T, H], device });
      const l = layoutOf(ids, k, 4, form, device);
      const q = permute(x, l, { quantize: 'nvfp4', globalScale: 0.01 });
      const want = quantizeNvfp4(permute(x, l), { globalScale: 0.01 });
      const used = (await readI32(l.usedRows))[0];
      const label = `seed ${seed} T=${T} ${JSON.stringify(form)}`;
      expectSameRows(rowsOf(await bytes(q.data), await bytes(q.scales), H, 0, used), rowsOf(await bytes(want.data), await bytes(want.scales), H, 0, used), label);
    }
  });

  it('refuses bad input with codes that name the argument', async () => {
    const x = fromArray([[...new Array(16).fill(1)], [...new Array(16).fill(2)]], { dtype: 'bf16', device });
    const l = layoutOf([[0], [1]], 1, 2, { align: 1 }, device);
    await expectCode(() => permute(fromArray([[1, 2], [3, 4]], { dtype: 'fp8e4m3', device }) as never, l, { quantize: 'nvfp4' }), 'E_DTYPE', 'x');
    await expectCode(() => permute(fromArray([new Array(24).fill(1), new Array(24).fill(1)], { dtype: 'bf16', device }), l, { quantize: 'nvfp4' }), 'E_SHAPE', 'x');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', globalScale: -1 }), 'E_ARGUMENT', 'options.globalScale');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', globalScale: Number.NaN }), 'E_ARGUMENT', 'options.globalScale');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', globalScale: fromArray([1, 2], { device }) }), 'E_SHAPE', 'options.globalScale');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', globalScale: fromArray([1], { dtype: 'i32', device }) as never }), 'E_DTYPE', 'options.globalScale');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', out: empty([l.rows, 16], { dtype: 'bf16', device }) as never }), 'E_ARGUMENT', 'options.out');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', out: sentinelNvfp4(l.rows + 1, 16, device) }), 'E_SHAPE', 'options.out');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', out: sentinelNvfp4(l.rows, 32, device) }), 'E_SHAPE', 'options.out');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', stream: 1 } as never), 'E_ARGUMENT', 'options.stream');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4', align: 1 } as never), 'E_ARGUMENT', 'align');
  });
});

// ---- grouped GEMM, W4A4 and NVFP4 output -------------------------------------------------


/**
 * One W4A4 case: x quantized by permute, the grouped GEMM, against a loop of the dense W4A4
 * gemmNvfp4 over each expert's rows on the CPU backend (the same bits there for 'none').
 */
async function checkW4A4(device: Device, c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const q = randomExperts(r, c.E, c.N, c.K);
  const T = c.ids.length;
  const label = `seed ${seed} E=${c.E} N=${c.N} K=${c.K} T=${T} k=${c.k} ${JSON.stringify(c.layout)} ${c.epilogue} on ${device}`;
  const xBits = randomBf16Bits(r, T * c.K);
  const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, c.K], device });
  const layout = layoutOf(c.ids, c.k, c.E, c.layout, device);
  const gs = Math.fround(0.002 + r() * 0.002);
  const xq = permute(x, layout, { quantize: 'nvfp4', globalScale: gs });
  const w = placeExperts(q, device);
  const outN = c.epilogue === 'swiglu' ? c.N / 2 : c.N;
  const sentinel = bf16Bits(12345);
  const out = fromBytes(new Uint16Array(layout.rows * outN).fill(sentinel), { dtype: 'bf16', shape: [layout.rows, outN], device });
  expect(groupedGemmNvfp4(xq, w, layout, { epilogue: c.epilogue, out }), label).toBe(out);
  const got = new Uint16Array((await out.toBytes()).slice().buffer);

  // the reference: per expert, its rows of the CPU permute + quantize, dense W4A4 on the CPU
  const counts = await readI32(layout.counts);
  const offsets = await readI32(layout.offsets);
  const cpuLayout = layoutOf(c.ids, c.k, c.E, c.layout, 'cpu');
  const cpuXp = permute(fromBytes(xBits, { dtype: 'bf16', shape: [T, c.K], device: 'cpu' }), cpuLayout);
  const wCpu = placeExperts(q, 'cpu');
  const holds = new Uint8Array(layout.rows);
  const gotRows: number[] = [];
  const want: number[] = [];
  for (let e = 0; e < c.E; e++) {
    const n = counts[e];
    if (n === 0) continue;
    const a = quantizeNvfp4(cpuXp.slice(offsets[e], offsets[e] + n), { globalScale: gs });
    const y = Array.from(await gemmNvfp4(a, wCpu.select(e), { outDtype: c.epilogue === 'swiglu' ? 'f32' : 'bf16' }).toArray());
    for (let m = 0; m < n; m++) {
      const row = offsets[e] + m;
      holds[row] = 1;
      for (let j = 0; j < outN; j++) {
        gotRows.push(bf16Value(got[row * outN + j]));
        want.push(c.epilogue === 'swiglu' ? bf16Value(bf16Bits(swigluF32(y[m * c.N + j], y[m * c.N + outN + j]))) : y[m * outN + j]);
      }
    }
  }
  if (device === 'cpu' && c.epilogue === 'none') expect(gotRows, label).toEqual(want);
  else expectClose(label, gotRows, want, TOLERANCE);
  let untouched = true;
  for (let row = 0; row < layout.rows && untouched; row++) {
    if (holds[row]) continue;
    for (let j = 0; j < outN; j++) if (got[row * outN + j] !== sentinel) untouched = false;
  }
  expect(untouched, `${label}: rows without a pair are not written`).toBe(true);
  // gather: the unpermuted tokens quantized with the same global scale (each row's bytes are
  // those permute's quantizer gives it), read through sourceIndex by the same kernel: the same bits
  const xt = quantizeNvfp4(x, { globalScale: gs });
  const gathered = fromBytes(new Uint16Array(layout.rows * outN).fill(sentinel), { dtype: 'bf16', shape: [layout.rows, outN], device });
  groupedGemmNvfp4(xt, w, layout, { epilogue: c.epilogue, out: gathered, gather: true });
  expect(new Uint16Array((await gathered.toBytes()).slice().buffer), `${label} gather`).toEqual(got);
}

/**
 * The swiglu epilogue writing NVFP4: bit for bit quantizeNvfp4 of the same call's bf16 output on
 * the same backend (both run the tiled kernels: x NVFP4, or K % 32 != 0, or a contiguous mean
 * above the streaming kernel's 4 rows), rows without a pair untouched.
 */
async function checkNvfp4Out(device: Device, c: Case, xFp4: boolean, scaleKind: 'number' | 'tensor', seed: number): Promise<void> {
  const r = rng(seed);
  const q = randomExperts(r, c.E, c.N, c.K);
  const T = c.ids.length;
  const I = c.N / 2;
  const label = `seed ${seed} E=${c.E} N=${c.N} K=${c.K} T=${T} ${JSON.stringify(c.layout)} x ${xFp4 ? 'nvfp4' : 'bf16'} ${scaleKind} on ${device}`;
  const x = fromBytes(randomBf16Bits(r, T * c.K), { dtype: 'bf16', shape: [T, c.K], device });
  const layout = layoutOf(c.ids, c.k, c.E, c.layout, device);
  const xin = xFp4 ? permute(x, layout, { quantize: 'nvfp4', globalScale: 0.003 }) : permute(x, layout);
  const w = placeExperts(q, device);
  const gsOut = Math.fround(0.0005 + r() * 0.001);
  const outGlobalScale = scaleKind === 'number' ? gsOut : fromArray([gsOut], { device });
  const out = sentinelNvfp4(layout.rows, I, device);
  const res = groupedGemmNvfp4(xin as Nvfp4Tensor, w, layout, { epilogue: 'swiglu', out, outGlobalScale });
  expect(res, label).toBe(out);
  const bf = groupedGemmNvfp4(xin as Nvfp4Tensor, w, layout, { epilogue: 'swiglu' });
  const want = quantizeNvfp4(bf, { globalScale: gsOut });
  const gotData = await bytes(out.data), gotScales = await bytes(out.scales);
  const wantData = await bytes(want.data), wantScales = await bytes(want.scales);
  const counts = await readI32(layout.counts);
  const offsets = await readI32(layout.offsets);
  const holds = new Uint8Array(layout.rows);
  for (let e = 0; e < c.E; e++) {
    if (counts[e] === 0) continue;
    const r0 = offsets[e], r1 = offsets[e] + counts[e];
    for (let row = r0; row < r1; row++) holds[row] = 1;
    expectSameRows(rowsOf(gotData, gotScales, I, r0, r1), rowsOf(wantData, wantScales, I, r0, r1), `${label}: expert ${e}`);
  }
  for (let row = 0; row < layout.rows; row++) {
    if (holds[row]) continue;
    const rest = rowsOf(gotData, gotScales, I, row, row + 1);
    expect(rest.data.every((b) => b === 0xa5) && rest.scales.every((b) => b === 0x5a), `${label}: row ${row} holds no pair`).toBe(true);
  }
  expect((await out.globalScale.toArray())[0], label).toBe(gsOut);
  // gather from the unpermuted tokens: the same bytes, the same rows left alone
  const xg = xFp4 ? quantizeNvfp4(x, { globalScale: 0.003 }) : x;
  const outG = sentinelNvfp4(layout.rows, I, device);
  groupedGemmNvfp4(xg as Nvfp4Tensor, w, layout, { epilogue: 'swiglu', out: outG, outGlobalScale, gather: true });
  expect(await bytes(outG.data), `${label} gather`).toEqual(gotData);
  expect(await bytes(outG.scales), `${label} gather`).toEqual(gotScales);
}

// Per-expert counts across every tiled kernel's boundaries (heuristics.h, selectGroupedConfig:
// W4A4 and NVFP4 output never take the streaming kernel): N = 200 / K = 96 gives a contiguous
// mean of 53 rows (Tile64), masked at 129 the same, masked at 16 Tile16 (where W4A16 would
// stream); K = 80 is off every 32 and 64 (no 16-byte code rows, no 4-byte scale rows).
const COUNTS = [0, 1, 16, 17, 64, 65, 128, 129];
const GROUPED_FORMS: ExpertLayoutOptions[] = [{ align: 1 }, { align: 128 }, { maxTokensPerExpert: 129 }, { maxTokensPerExpert: 16 }];

forEachBackend('grouped nvfp4 gemm: W4A4 and NVFP4 output', (device: Device) => {
  for (const epilogue of ['none', 'swiglu'] as const) {
    it(`W4A4 ${epilogue}: counts ${COUNTS.join(', ')}, both forms, N and K off the tiles`, async () => {
      const seed = freshSeed(`w4a4 ${epilogue} ${device}`);
      let i = 0;
      for (const K of [96, 80]) {
        for (const layout of GROUPED_FORMS) {
          await checkW4A4(device, { E: 8, N: 200, K, ids: idsForCounts(rng(seed + i), COUNTS), k: 1, layout, epilogue }, seed + i++);
        }
      }
    });

    it(`W4A4 ${epilogue}: every kernel the heuristic picks (tiles of 16, 64, 128), decode routings included`, async () => {
      const seed = freshSeed(`w4a4 kernels ${epilogue} ${device}`);
      let i = 0;
      const cases: [number[], ExpertLayoutOptions, number][] = [
        // mean 124 rows: Tile128 (the 300-row expert loops over 3 tiles with 2 slots)
        [[0, 65, 129, 300], { align: 1 }, 96],
        [[0, 65, 129, 300], { maxTokensPerExpert: 300 }, 80],
        // contiguous mean 4 and masked at 8: W4A16 would stream, W4A4 takes Tile16; K = 1056 is many chunks
        [[0, 1, 0, 17, 2, 3, 0, 5], { align: 1 }, 1056],
        [[0, 1, 8, 3, 0, 0, 5, 2], { maxTokensPerExpert: 8 }, 288],
        // contiguous mean 9: Tile16
        [[9, 0, 16, 17, 1, 3, 15, 11], { align: 8 }, 96],
      ];
      for (const [counts, layout, K] of cases) {
        await checkW4A4(device, { E: counts.length, N: 136, K, ids: idsForCounts(rng(seed + i), counts), k: 1, layout, epilogue }, seed + i++);
      }
    });
  }

  it('W4A4 edge routings: T = 0, T = 1 (k = 1 and k = 8), every token to one expert, masked overflow', async () => {
    const seed = freshSeed(`w4a4 edges ${device}`);
    const r = rng(seed);
    let i = 0;
    const routings: [number[][], number, number][] = [
      [[], 8, 16],
      [[[5]], 1, 16],
      [randomIds(r, 1, 8, 16), 8, 16],
      [Array.from({ length: 40 }, () => [3]), 1, 6],
    ];
    for (const [ids, k, E] of routings) {
      for (const layout of [{ align: 1 }, { align: 64 }, { maxTokensPerExpert: Math.max(1, ids.length) }, { maxTokensPerExpert: 4 }]) {
        for (const epilogue of ['none', 'swiglu'] as const) {
          await checkW4A4(device, { E, N: 48, K: 64, ids, k, layout, epilogue }, seed + i++);
        }
      }
    }
  });

  it('swiglu with NVFP4 out: the bytes of quantizeNvfp4(bf16 swiglu output), x bf16 or NVFP4, every tiled kernel', async () => {
    const seed = freshSeed(`nvfp4 out ${device}`);
    let i = 0;
    const cases: [number[], ExpertLayoutOptions, number, number][] = [
      // [counts, layout, K, N]: Tile64, Tile128, Tile16; I = 96 is not a multiple of the 64 output columns of a tile
      [COUNTS, { align: 1 }, 96, 192],
      [COUNTS, { maxTokensPerExpert: 129 }, 80, 192],
      [[0, 65, 129, 300], { align: 4 }, 64, 288],
      [[9, 0, 16, 17, 1, 3, 15, 11], { maxTokensPerExpert: 17 }, 80, 64],
      [[0, 0, 40, 0], { maxTokensPerExpert: 40 }, 48, 32],
    ];
    for (const [counts, layout, K, N] of cases) {
      for (const xFp4 of [false, true]) {
        const ids = idsForCounts(rng(seed + i), counts);
        await checkNvfp4Out(device, { E: counts.length, N, K, ids, k: 1, layout, epilogue: 'swiglu' }, xFp4, i % 2 ? 'number' : 'tensor', seed + i++);
      }
    }
  });

  it('the CPU reference of the NVFP4 swiglu output against a hand computation', async () => {
    if (device !== 'cpu') return;
    // one expert, one token, K = 16, I = 16. x = 6 everywhere (global scale 1: codes 6, block scale
    // 1, exact); w13 codes 0.5, block scales 1, weight_scale_2 0.5. Gate row j holds j + 1 halves,
    // up rows two: gate_j = 1.5 (j + 1), up_j = 3, exactly.
    const K = 16, I = 16;
    const data = new Uint8Array((2 * I * K) / 2);
    for (let n = 0; n < 2 * I; n++) {
      for (let kk = 0; kk < K; kk++) {
        if (n < I ? kk <= n : kk < 2) data[(n * K + kk) >> 1] |= 1 << ((kk & 1) * 4);
      }
    }
    const w = nvfp4FromCheckpoint(
      { weight: { data, shape: [1, 2 * I, K / 2] }, weight_scale: { data: new Uint8Array(2 * I).fill(0x38), shape: [1, 2 * I, 1], dtype: 'F8_E4M3' }, weight_scale_2: [0.5] },
      { device },
    );
    const l = layoutOf([[0]], 1, 1, { align: 1 }, device);
    const x = permute(fromArray([new Array(K).fill(6)], { dtype: 'bf16', device }), l, { quantize: 'nvfp4', globalScale: 1 });
    const out = sentinelNvfp4(1, I, device);
    groupedGemmNvfp4(x, w, l, { epilogue: 'swiglu', out, outGlobalScale: 1 });
    // the swiglu values rounded to bf16, then the quantizer's rules with global scale 1
    const v = Array.from({ length: I }, (_, j) => bf16Value(bf16Bits(swigluF32(1.5 * (j + 1), 3))));
    const s = Math.max(...v) / 6; // 6 * 1 is exact; amax ~ 72, s ~ 12: e4m3 steps of 1 in [8, 16)
    const e = Math.floor(Math.log2(s));
    const step = 2 ** (e - 3);
    const lo = Math.floor(s / step), frac = s / step - lo;
    const scale = (frac > 0.5 || (frac === 0.5 && lo % 2 === 1) ? lo + 1 : lo) * step;
    const grid = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
    const magnitude = (a: number) =>
      Number(a > 0.25) + Number(a >= 0.75) + Number(a > 1.25) + Number(a >= 1.75) + Number(a > 2.5) + Number(a >= 3.5) + Number(a > 5);
    const want = v.map((x1) => grid[magnitude(Math.fround(x1 / scale))] * scale);
    expect(Array.from(await bytes(out.scales))[0]).toBe(0x38 + 8 * (e) + (scale / step - 8)); // e4m3 bits: exponent e + 7, 3 mantissa bits
    expect(Array.from(await dequantizeNvfp4(out, 'f32').toArray())).toEqual(want);
  });

  it('refuses bad input with codes that name the argument', async () => {
    const r = rng(21);
    const E = 4, N = 64, K = 32;
    const w = placeExperts(randomExperts(r, E, N, K), device);
    const layout = layoutOf([[0], [1], [1], [3]], 1, E, { align: 1 }, device);
    const x = fromBytes(randomBf16Bits(r, 4 * K), { dtype: 'bf16', shape: [4, K], device });
    const xq = permute(x, layout, { quantize: 'nvfp4' });
    const xb = permute(x, layout);
    const out = sentinelNvfp4(layout.rows, N / 2, device);
    expect(groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out, outGlobalScale: 0.01 })).toBe(out);
    // x: an NVFP4 x of the wrong shape, or with one global scale per expert
    await expectCode(() => groupedGemmNvfp4(quantizeNvfp4(empty([layout.rows, 2 * K], { dtype: 'bf16', device })), w, layout), 'E_SHAPE', 'x');
    await expectCode(() => groupedGemmNvfp4(w as never, w, layout), 'E_SHAPE', 'x');
    // out: NVFP4 without swiglu, without outGlobalScale, wrong shapes, I not a multiple of 16
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { out: sentinelNvfp4(layout.rows, N, device), outGlobalScale: 1 }), 'E_ARGUMENT', 'swiglu');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out }), 'E_ARGUMENT', 'options.outGlobalScale');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', outGlobalScale: 1 }), 'E_ARGUMENT', 'options.outGlobalScale');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out: sentinelNvfp4(layout.rows + 1, N / 2, device), outGlobalScale: 1 }), 'E_SHAPE', 'options.out');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out, outGlobalScale: 0 }), 'E_ARGUMENT', 'options.outGlobalScale');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out, outGlobalScale: fromArray([1, 1], { device }) }), 'E_SHAPE', 'options.outGlobalScale');
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out, outGlobalScale: fromArray([1], { dtype: 'bf16', device }) as never }), 'E_DTYPE', 'options.outGlobalScale');
    const w48 = placeExperts(randomExperts(r, E, 48, K), device);
    await expectCode(() => groupedGemmNvfp4(xb, w48, layout, { epilogue: 'swiglu', out: sentinelNvfp4(layout.rows, 32, device), outGlobalScale: 1 }), 'E_SHAPE', 'options.out');
    // out overlapping x (x [rows, 32] has the shape of the swiglu output here)
    await expectCode(() => groupedGemmNvfp4(xq, w, layout, { epilogue: 'swiglu', out: xq, outGlobalScale: 1 }), 'E_ARGUMENT', 'overlaps');
  });

  it('the native side names the argument of the new preconditions', async () => {
    const { native } = await import('../lib/native');
    const { defaultStream } = await import('../lib');
    const b = native();
    const dev = device === 'cpu' ? -1 : 0;
    const s = defaultStream(device).handle;
    const r = rng(22);
    const E = 2, N = 64, K = 32;
    const w = placeExperts(randomExperts(r, E, N, K), device);
    const layout = layoutOf([[0], [1]], 1, E, { maxTokensPerExpert: 2 }, device);
    const xq = sentinelNvfp4(4, K, device);
    const out = sentinelNvfp4(4, N / 2, device);
    const call = (o: { outType?: number; epilogue?: number; N?: number; xScales?: bigint; outScales?: bigint; outGs?: bigint; out?: bigint }) => () =>
      b.nvfp4GroupedGemm(
        dev, s, xq.data.dataPtr, 4, o.xScales ?? xq.scales.dataPtr, xq.globalScale.dataPtr, w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr,
        layout.counts.dataPtr, layout.offsets.dataPtr, o.out ?? out.data.dataPtr, o.outType ?? 4, o.outScales ?? out.scales.dataPtr,
        o.outGs ?? out.globalScale.dataPtr, 0n, E, 4, o.N ?? N, K, 2, 2, o.epilogue ?? 1, 0n, 0, 0, false,
      );
    call({})();
    await expectCode(call({ outType: 0 }), 'E_DTYPE', 'out');
    await expectCode(call({ epilogue: 0 }), 'E_ARGUMENT', 'swiglu');
    await expectCode(call({ N: 48 }), 'E_SHAPE', 'out');
    await expectCode(call({ xScales: 0n }), 'E_ARGUMENT', 'x.scales');
    await expectCode(call({ outScales: 0n }), 'E_ARGUMENT', 'out.scales');
    await expectCode(call({ outGs: 0n }), 'E_ARGUMENT', 'outGlobalScale');
    await expectCode(call({ out: out.data.dataPtr + 4n }), 'E_ARGUMENT', 'out.data');
  });
});

// ---- moeForward with NVFP4 activations -----------------------------------------------------

interface Layer {
  H: number;
  I: number;
  E: number;
  k: number;
  routerW: number[];
  w13: RawExperts;
  w2: RawExperts;
}

function makeLayer(r: () => number, H: number, I: number, E: number, k: number): Layer {
  const routerW = Array.from({ length: E * H }, () => bf16Value(bf16Bits((r() - 0.5) * 0.5)));
  return { H, I, E, k, routerW, w13: randomExperts(r, E, 2 * I, H), w2: randomExperts(r, E, H, I) };
}

/**
 * The down projection's input scale as a calibration finds it: amax / (6 * 448) of the SwiGLU
 * output of a batch (CPU ops, contiguous layout without padding, so every row holds a pair).
 */
async function calibrateW2(l: Layer, xBits: Uint16Array, T: number): Promise<number> {
  const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, l.H], device: 'cpu' });
  const routed = routeTopK(routerLogits(x, routerOf(l, 'cpu').weight), { k: l.k, scoring: 'softmax' });
  const layout = expertLayout(routed.ids, l.E);
  const act = groupedGemmNvfp4(permute(x, layout, { quantize: 'nvfp4' }), placeExperts(l.w13, 'cpu'), layout, { epilogue: 'swiglu' });
  return (await globalScaleNvfp4(act).toArray())[0];
}

function routerOf(l: Layer, device: Device): MoeRouter {
  return { weight: fromArray(l.routerW, { shape: [l.E, l.H], dtype: 'bf16', device }), k: l.k, scoring: 'softmax' };
}

function expertsOf(l: Layer, device: Device, scales: { w13?: number; w2?: number }): MoeExperts {
  return {
    w13: placeExperts(l.w13, device),
    w2: placeExperts(l.w2, device),
    ...(scales.w13 !== undefined ? { w13InputScale: scales.w13 } : {}),
    ...(scales.w2 !== undefined ? { w2InputScale: scales.w2 } : {}),
  };
}

/** The W4A4 block from the public ops on the CPU backend: the reference of the same math. */
async function composedOnCpu(l: Layer, xBits: Uint16Array, T: number, form: ExpertLayoutOptions, scales: { w13?: number; w2: number }) {
  const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, l.H], device: 'cpu' });
  const logits = routerLogits(x, routerOf(l, 'cpu').weight);
  const routed = routeTopK(logits, { k: l.k, scoring: 'softmax' });
  const layout = expertLayout(routed.ids, l.E, form);
  const xq = permute(x, layout, { quantize: 'nvfp4', ...(scales.w13 !== undefined ? { globalScale: scales.w13 } : {}) });
  const act = groupedGemmNvfp4(xq, placeExperts(l.w13, 'cpu'), layout, { epilogue: 'swiglu', out: sentinelNvfp4(layout.rows, l.I, 'cpu'), outGlobalScale: scales.w2 });
  const y = groupedGemmNvfp4(act, placeExperts(l.w2, 'cpu'), layout);
  return Array.from(await unpermute(y, layout, routed.weights, { out: empty([T, l.H], { dtype: 'bf16', device: 'cpu' }) }).toArray());
}

forEachBackend("moeForward with activations 'nvfp4'", (device: Device) => {
  const H = 64, I = 32, E = 8, k = 2;

  it('the composition of the ops on the CPU (exact there; CUDA within the GEMM error), both forms, with and without the w13 input scale', async () => {
    const seed = freshSeed(`moe w4a4 ${device}`);
    const r = rng(seed);
    const l = makeLayer(r, H, I, E, k);
    const W2_SCALE = await calibrateW2(l, randomBf16Bits(r, 33 * H), 33);
    for (const T of [1, 5, 33]) {
      for (const form of [{ align: 1 }, { align: 16 }, { maxTokensPerExpert: T }] as ExpertLayoutOptions[]) {
        for (const w13 of [undefined, Math.fround(3 / 2688)]) {
          const label = `seed ${seed} T=${T} ${JSON.stringify(form)} w13 scale ${w13}`;
          const xBits = randomBf16Bits(r, T * H);
          const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, H], device });
          const scales = { ...(w13 !== undefined ? { w13 } : {}), w2: W2_SCALE };
          const got = Array.from(await moeForward(x, routerOf(l, device), expertsOf(l, device, scales), { activations: 'nvfp4', ...form }).toArray());
          const want = await composedOnCpu(l, xBits, T, form, scales);
          if (device === 'cpu') expect(got, label).toEqual(want);
          // CUDA: the GEMMs' accumulation order can move a bf16 SwiGLU value by one ulp, and rarely
          // that moves its E2M1 code by one step; 2^-6 (L2) covers a few such flips in these sizes
          else expectClose(label, got, want, 2 ** -6);
        }
      }
    }
  });

  it('against the bf16-activation path: the quantization error of NVFP4 activations, stated', async () => {
    const seed = freshSeed(`moe w4a4 vs bf16 ${device}`);
    const r = rng(seed);
    const l = makeLayer(r, H, I, E, k);
    const T = 24;
    const xBits = randomBf16Bits(r, T * H);
    const W2_SCALE = await calibrateW2(l, xBits, T);
    const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, H], device });
    const a4 = Array.from(await moeForward(x, routerOf(l, device), expertsOf(l, device, { w2: W2_SCALE }), { activations: 'nvfp4' }).toArray());
    const a16 = Array.from(await moeForward(x, routerOf(l, device), expertsOf(l, device, {})).toArray());
    // Two NVFP4 quantizations (x, then the SwiGLU output): each element is within half an E2M1
    // step of its block's grid (relative RMS about 5-10% for such data), both GEMMs average
    // them down; measured 0.13 - 0.20 relative L2 over seeds here, bounded at 0.3.
    expectClose(`seed ${seed}: W4A4 vs W4A16`, a4, a16, 0.3);
    let num = 0, den = 0;
    for (let i = 0; i < a4.length; i++) {
      num += (a4[i] - a16[i]) ** 2;
      den += a16[i] ** 2;
    }
    console.log(`[w4a4] seed ${seed}: relative L2 error of NVFP4 activations against bf16: ${Math.sqrt(num / den).toFixed(4)}`);
    // and it is not the bf16 path itself
    let differ = 0;
    for (let i = 0; i < a4.length; i++) if (a4[i] !== a16[i]) differ++;
    expect(differ, 'the activations were quantized').toBeGreaterThan(a4.length / 2);
  });

  it('T = 0; k = 1; every token to one expert; a workspace sized for NVFP4 gives the bits of fresh calls', async () => {
    const seed = freshSeed(`moe w4a4 edges ${device}`);
    const r = rng(seed);
    const l = makeLayer(r, H, I, E, 1);
    const W2_SCALE = await calibrateW2(l, randomBf16Bits(r, 16 * H), 16);
    const router = routerOf(l, device);
    const experts = expertsOf(l, device, { w2: W2_SCALE });
    const empty0 = moeForward(empty([0, H], { dtype: 'bf16', device }), router, experts, { activations: 'nvfp4' });
    expect(empty0.shape).toEqual([0, H]);
    for (const T of [1, 7]) {
      const xBits = randomBf16Bits(r, T * H);
      const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, H], device });
      const ws = createMoeWorkspace(T, router, experts, { activations: 'nvfp4', maxTokensPerExpert: T });
      expect(ws.activations).toBe('nvfp4');
      const fresh = Array.from(await moeForward(x, router, experts, { activations: 'nvfp4', maxTokensPerExpert: T }).toArray());
      for (let rep = 0; rep < 2; rep++) {
        const got = Array.from(await moeForward(x, router, experts, { activations: 'nvfp4', workspace: ws }).toArray());
        expect(got, `seed ${seed} T=${T} rep ${rep}`).toEqual(fresh);
      }
      const want = await composedOnCpu(l, xBits, T, { maxTokensPerExpert: T }, { w2: W2_SCALE });
      if (device === 'cpu') expect(fresh).toEqual(want);
      else expectClose(`seed ${seed} T=${T}`, fresh, want, 2 ** -6);
      ws.dispose();
    }
    // every token to one expert (a router that prefers expert 5 for every token), masked below T: overflow dropped
    const hot = { ...router, weight: fromArray(Array.from({ length: E * H }, (_, i) => (Math.floor(i / H) === 5 ? 0.5 : 0)), { shape: [E, H], dtype: 'bf16', device }) };
    const T = 6;
    const xBits = new Uint16Array(T * H).fill(bf16Bits(1));
    for (let i = 0; i < xBits.length; i++) xBits[i] = bf16Bits(1 + r());
    const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, H], device });
    const got = Array.from(await moeForward(x, hot, experts, { activations: 'nvfp4', maxTokensPerExpert: 4 }).toArray());
    expect(got.slice(4 * H).every((v) => v === 0), 'the dropped tokens add nothing').toBe(true);
    expect(got.slice(0, 4 * H).some((v) => v !== 0)).toBe(true);
  });

  it('bad input named', async () => {
    const r = rng(31);
    const l = makeLayer(r, H, I, E, k);
    const W2_SCALE = 0.01;
    const router = routerOf(l, device);
    const x = fromBytes(randomBf16Bits(r, 2 * H), { dtype: 'bf16', shape: [2, H], device });
    await expectCode(() => moeForward(x, router, expertsOf(l, device, {}), { activations: 'nvfp4' }), 'E_ARGUMENT', 'experts.w2InputScale');
    await expectCode(() => moeForward(x, router, expertsOf(l, device, { w2: W2_SCALE }), { activations: 'fp8' as never }), 'E_ARGUMENT', 'options.activations');
    await expectCode(() => moeForward(x, router, { ...expertsOf(l, device, {}), w2InputScale: -1 }, { activations: 'nvfp4' }), 'E_ARGUMENT', 'experts.w2InputScale');
    await expectCode(() => moeForward(x, router, { ...expertsOf(l, device, { w2: W2_SCALE }), w13InputScale: fromArray([1, 2], { device }) }, { activations: 'nvfp4' }), 'E_SHAPE', 'experts.w13InputScale');
    const experts = expertsOf(l, device, { w2: W2_SCALE });
    const ws = createMoeWorkspace(2, router, experts);
    await expectCode(() => moeForward(x, router, experts, { activations: 'nvfp4', workspace: ws }), 'E_ARGUMENT', 'activations');
    await expectCode(() => createMoeWorkspace(2, router, experts, { activations: 'int4' as never }), 'E_ARGUMENT', 'options.activations');
  });
});

describe.skipIf(!hasCuda)('W4A4 on CUDA against the CPU backend', () => {
  it('permute with quantization: the same bytes on both backends (DeepSeek-V3 hidden 7168, decode and prefill)', async () => {
    const seed = freshSeed('permute nvfp4 cuda');
    const r = rng(seed);
    for (const [T, k, E] of [[1, 8, 32], [64, 8, 32]]) {
      const H = 7168;
      const xBits = randomBf16Bits(r, T * H);
      const ids = randomIds(r, T, k, E);
      for (const form of [{ align: 128 }, { maxTokensPerExpert: Math.min(T, 16) }]) {
        const outs = [];
        for (const device of ['cuda:0', 'cpu'] as Device[]) {
          const l = layoutOf(ids, k, E, form, device);
          const q = permute(fromBytes(xBits, { dtype: 'bf16', shape: [T, H], device }), l, { quantize: 'nvfp4' });
          const used = (await readI32(l.usedRows))[0];
          outs.push({ rows: rowsOf(await bytes(q.data), await bytes(q.scales), H, 0, used), gs: Array.from(await q.globalScale.toArray()) });
        }
        const label = `seed ${seed} T=${T} ${JSON.stringify(form)}`;
        expectSameRows(outs[0].rows, outs[1].rows, label);
        expect(outs[0].gs, label).toEqual(outs[1].gs);
      }
    }
  });

  it('W4A4 at DeepSeek-V3 widths (K = 7168 and 2048), decode and prefill routings', async () => {
    const seed = freshSeed('w4a4 large');
    const r = rng(seed);
    let i = 0;
    // N stays small: the oracle is the CPU backend's dense W4A4 GEMM per expert
    for (const [T, k, E] of [[1, 8, 32], [16, 8, 32], [128, 8, 32]]) {
      const ids = randomIds(r, T, k, E);
      for (const layout of [{ align: 128 }, { maxTokensPerExpert: Math.min(T, 32) }]) {
        await checkW4A4('cuda:0', { E, N: 256, K: 7168, ids, k, layout, epilogue: 'swiglu' }, seed + i++);
        await checkW4A4('cuda:0', { E, N: 256, K: 2048, ids, k, layout, epilogue: 'none' }, seed + i++);
        await checkNvfp4Out('cuda:0', { E, N: 256, K: 7168, ids, k, layout, epilogue: 'swiglu' }, true, 'tensor', seed + i++);
      }
    }
  });
});
