// groupedGemmNvfp4: the expert GEMM over routing's layouts, against a loop of gemmNvfp4 over the
// experts' row blocks (on the CPU reference), on every backend.
import { describe, expect, it } from 'vitest';
import {
  captureGraph,
  convert,
  createStream,
  defaultStream,
  devices,
  empty,
  expertLayout,
  fromArray,
  fromBytes,
  gemmNvfp4,
  groupedGemmNvfp4,
  nvfp4FromCheckpoint,
  permute,
  quantizeNvfp4,
  routeTopK,
  type Device,
  type ExpertLayout,
  type ExpertLayoutOptions,
  type Tensor,
} from '../lib';
import { native } from '../lib/native';
import { expectCode, forEachBackend, freshSeed, hasCuda, rng, nativeCalls, expectClose } from './backends';
import {
  GEMM_TOLERANCE as TOLERANCE,
  bf16Bits,
  bf16Value,
  e2m1Value,
  e4m3Value,
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


const SENTINEL = bf16Bits(12345);

/**
 * The unfused reference on the CPU backend: gemmNvfp4 over each expert's rows (f32 out for
 * swiglu, then silu(gate) * up in f32), and the list of rows that hold pairs.
 */
async function reference(xp: Tensor<'bf16'>, q: RawExperts, layout: ExpertLayout, epilogue: 'none' | 'swiglu') {
  const counts = await readI32(layout.counts);
  const offsets = await readI32(layout.offsets);
  const x = xp.device === 'cpu' ? xp : await xp.copyTo('cpu');
  const w = placeExperts(q, 'cpu');
  const outN = epilogue === 'swiglu' ? q.N / 2 : q.N;
  const rows: number[] = [];
  const want: number[] = [];
  for (let e = 0; e < q.E; e++) {
    const c = counts[e];
    if (c === 0) continue;
    const y = Array.from(await gemmNvfp4(x.slice(offsets[e], offsets[e] + c), w.select(e), { outDtype: epilogue === 'swiglu' ? 'f32' : 'bf16' }).toArray());
    for (let m = 0; m < c; m++) {
      rows.push(offsets[e] + m);
      for (let j = 0; j < outN; j++) {
        want.push(epilogue === 'swiglu' ? bf16Value(bf16Bits(swigluF32(y[m * q.N + j], y[m * q.N + outN + j]))) : y[m * outN + j]);
      }
    }
  }
  return { rows, want, outN };
}


/** A case, with the grouped GEMM's `path` option. */
type PathCase = Case & { path?: 'auto' | 'portable' };

/**
 * Whether the CUDA backend runs this case on the Hopper wgmma kernel (heuristics.h,
 * selectGroupedConfig): a compute capability 9.0 device, K % 32 == 0 and more than 64 expected
 * rows per expert (the mean pairs per expert, capped by a masked capacity). Its gathering form
 * runs the mma.sync kernel, so the two agree to the GEMM's rounding there, not bit for bit.
 */
function onWgmmaPath(device: Device, c: PathCase): boolean {
  if (c.path === 'portable' || device === 'cpu' || devices().find((d) => d.device === device)?.computeCapability !== '9.0') return false;
  const mean = Math.max(1, Math.ceil((c.ids.length * c.k) / c.E));
  const rows = c.layout.maxTokensPerExpert !== undefined ? Math.min(c.layout.maxTokensPerExpert, mean) : mean;
  return c.K % 32 === 0 && rows > 64;
}

/**
 * Runs one case on `device`: permute, grouped GEMM into a sentinel-filled out, compared with the
 * reference on the pair rows; every other row must keep the sentinel.
 */
async function checkCase(device: Device, c: PathCase, seed: number): Promise<void> {
  const r = rng(seed);
  const q = randomExperts(r, c.E, c.N, c.K);
  const T = c.ids.length;
  const label = `seed ${seed} E=${c.E} N=${c.N} K=${c.K} T=${T} k=${c.k} ${JSON.stringify(c.layout)} ${c.epilogue} path ${c.path ?? 'auto'} on ${device}`;
  const x = fromBytes(randomBf16Bits(r, T * c.K), { dtype: 'bf16', shape: [T, c.K], device });
  const layout = layoutOf(c.ids, c.k, c.E, c.layout, device);
  const xp = permute(x, layout);
  const w = placeExperts(q, device);
  const outN = c.epilogue === 'swiglu' ? c.N / 2 : c.N;
  const out = fromBytes(new Uint16Array(layout.rows * outN).fill(SENTINEL), { dtype: 'bf16', shape: [layout.rows, outN], device });
  expect(groupedGemmNvfp4(xp, w, layout, { epilogue: c.epilogue, out, path: c.path }), label).toBe(out);
  const got = new Uint16Array((await out.toBytes()).slice().buffer);
  const ref = await reference(xp, q, layout, c.epilogue);
  const holds = new Uint8Array(layout.rows);
  const gotRows: number[] = [];
  for (const row of ref.rows) {
    holds[row] = 1;
    for (let j = 0; j < outN; j++) gotRows.push(bf16Value(got[row * outN + j]));
  }
  if (device === 'cpu' && c.epilogue === 'none') {
    // the CPU reference is that loop: the same bits
    expect(gotRows, label).toEqual(ref.want);
  } else {
    expectClose(label, gotRows, ref.want, TOLERANCE);
  }
  let untouched = true;
  for (let row = 0; row < layout.rows && untouched; row++) {
    if (holds[row]) continue;
    for (let j = 0; j < outN; j++) if (got[row * outN + j] !== SENTINEL) untouched = false;
  }
  expect(untouched, `${label}: rows without a pair are not written`).toBe(true);
  // a new out has the layout's shape
  const fresh = groupedGemmNvfp4(xp, w, layout, { epilogue: c.epilogue, path: c.path });
  expect(fresh.shape).toEqual([layout.rows, outN]);
  expect(fresh.dtype).toBe('bf16');
  // gather: the unpermuted x, read through sourceIndex by the same kernel: the same bits, and
  // the same rows left alone (on the wgmma path another kernel: the reference's tolerance)
  const gathered = fromBytes(new Uint16Array(layout.rows * outN).fill(SENTINEL), { dtype: 'bf16', shape: [layout.rows, outN], device });
  groupedGemmNvfp4(x, w, layout, { epilogue: c.epilogue, out: gathered, gather: true, path: c.path });
  const gatheredBits = new Uint16Array((await gathered.toBytes()).slice().buffer);
  if (!onWgmmaPath(device, c)) {
    expect(gatheredBits, `${label} gather`).toEqual(got);
  } else {
    const gatheredRows: number[] = [];
    for (const row of ref.rows) for (let j = 0; j < outN; j++) gatheredRows.push(bf16Value(gatheredBits[row * outN + j]));
    expectClose(`${label} gather`, gatheredRows, ref.want, TOLERANCE);
    for (let row = 0; row < layout.rows; row++) {
      if (holds[row]) continue;
      for (let j = 0; j < outN; j++) expect(gatheredBits[row * outN + j], `${label} gather: row ${row} has no pair`).toBe(SENTINEL);
    }
  }
}

// Per-expert counts across every kernel's boundaries (heuristics.h, selectGroupedConfig): with
// N = 200 and K = 96 the contiguous form has a mean of 53 rows (Tile64, experts past 2 * 53 rows
// loop over their tiles), masked at 129 the same, masked at 16 the streaming kernel (16 tokens
// per pass); K = 80 (not a multiple of 32) keeps to the tiled kernels (Tile16 at masked 16).
const COUNTS = [0, 1, 16, 17, 64, 65, 128, 129];
const FORMS: ExpertLayoutOptions[] = [{ align: 1 }, { align: 128 }, { maxTokensPerExpert: 129 }, { maxTokensPerExpert: 16 }];

forEachBackend('grouped nvfp4 gemm', (device: Device) => {
  for (const epilogue of ['none', 'swiglu'] as const) {
    it(`${epilogue}: counts ${COUNTS.join(', ')}, both forms, N and K off the tiles`, async () => {
      const seed = freshSeed(`grouped ${epilogue} ${device}`);
      let i = 0;
      for (const K of [96, 80]) {
        for (const layout of FORMS) {
          const ids = idsForCounts(rng(seed + i), COUNTS);
          await checkCase(device, { E: 8, N: 200, K, ids, k: 1, layout, epilogue }, seed + i++);
        }
      }
    });

    it(`${epilogue}: every kernel the heuristic picks (streaming 8 and 16 tokens, tiles of 16, 64, 128)`, async () => {
      const seed = freshSeed(`grouped kernels ${epilogue} ${device}`);
      let i = 0;
      const cases: [number[], ExpertLayoutOptions, number][] = [
        // mean 124 rows: Tile128 (the 300-row expert loops over 3 tiles with 2 slots); on
        // Hopper the wgmma kernel at K = 96, Tile128 at K = 80
        [[0, 65, 129, 300], { align: 1 }, 96],
        [[0, 65, 129, 300], { maxTokensPerExpert: 300 }, 80],
        // mean 4: the streaming kernel with 8-token passes, the 17-row expert in three; K = 1056
        // splits K over warps and ends in a partial 256-k batch; masked at 32 as well
        [[0, 1, 0, 17, 2, 3, 0, 5], { align: 1 }, 1056],
        [[0, 1, 0, 17, 2, 3, 0, 5], { maxTokensPerExpert: 32 }, 1056],
        // masked at 16 with a mean above 4: the streaming kernel with 16-token passes
        [[16, 9, 3, 16, 7, 12, 0, 14], { maxTokensPerExpert: 16 }, 288],
        [[0, 1, 0, 17, 2, 3, 0, 5], { align: 16 }, 80],
        // masked at 8: the streaming kernel with 8-token passes
        [[0, 1, 8, 3, 0, 0, 5, 2], { maxTokensPerExpert: 8 }, 288],
        // contiguous mean 9: Tile16
        [[9, 0, 16, 17, 1, 3, 15, 11], { align: 8 }, 96],
      ];
      for (const [counts, layout, K] of cases) {
        const E = counts.length;
        await checkCase(device, { E, N: 136, K, ids: idsForCounts(rng(seed + i), counts), k: 1, layout, epilogue }, seed + i++);
      }
    });
  }

  // Prefill sizes, on Hopper the wgmma kernel (onWgmmaPath): 128-token tiles below 120 expected
  // rows per expert, 192 below 176, 256 above; experts of 0, 1 and one past / one short of a tile;
  // N and K off the tiles (K = 96 ends in a half 64-k step and has unaligned scale rows); rows of
  // out that are not 16-byte multiples (N = 196, I = 98); 70 experts (the unit table's scan over
  // several experts per lane).
  for (const epilogue of ['none', 'swiglu'] as const) {
    it(`${epilogue}: prefill sizes (over 64 rows per expert), 128-, 192- and 256-token tiles`, async () => {
      const seed = freshSeed(`grouped prefill ${epilogue} ${device}`);
      const r = rng(seed);
      let i = 0;
      const many = Array.from({ length: 70 }, () => 60 + Math.floor(r() * 21));
      const cases: [number, number, number[], ExpertLayoutOptions][] = [
        // means 87 (128-token tiles), 148 (192), 273 and 573 (256)
        [200, 96, [0, 1, 127, 128, 129, 257, 20, 30], { align: 1 }],
        [200, 96, [0, 1, 127, 128, 129, 257, 20, 30], { maxTokensPerExpert: 257 }],
        [200, 96, [0, 1, 191, 192, 193, 385, 120, 100], { align: 1 }],
        [200, 96, [0, 1, 191, 192, 193, 385, 120, 100], { maxTokensPerExpert: 385 }],
        [200, 96, [0, 1, 255, 256, 257, 511, 300, 600], { align: 1 }],
        [196, 256, [0, 255, 256, 257, 511, 700, 1100, 1500], { align: 8 }],
        [136, 64, many, { align: 1 }],
        [136, 64, many, { maxTokensPerExpert: 80 }],
      ];
      for (const [N, K, counts, layout] of cases) {
        await checkCase(device, { E: counts.length, N, K, ids: idsForCounts(rng(seed + i), counts), k: 1, layout, epilogue }, seed + i++);
      }
    });
  }

  it("path: 'portable' keeps prefill sizes on the mma.sync kernels (gathered and permuted forms then agree bit for bit)", async () => {
    const seed = freshSeed(`grouped portable ${device}`);
    let i = 0;
    for (const epilogue of ['none', 'swiglu'] as const) {
      for (const counts of [[0, 1, 127, 128, 129, 257, 20, 30], [0, 1, 191, 192, 193, 385, 120, 100]]) {
        const ids = idsForCounts(rng(seed + i), counts);
        await checkCase(device, { E: 8, N: 200, K: 96, ids, k: 1, layout: { align: 1 }, epilogue, path: 'portable' }, seed + i++);
      }
    }
  });

  it('edge routings: T = 0, T = 1 (k = 1 and k = 8), every token to one expert, top-8 with a hot expert', async () => {
    const seed = freshSeed(`grouped edges ${device}`);
    const r = rng(seed);
    let i = 0;
    const routings: [number[][], number, number][] = [
      [[], 8, 16],
      [[[5]], 1, 16],
      [randomIds(r, 1, 8, 16), 8, 16],
      [Array.from({ length: 40 }, () => [3]), 1, 6],
      [randomIds(r, 37, 8, 32, 0.3), 8, 32],
    ];
    for (const [ids, k, E] of routings) {
      for (const layout of [{ align: 1 }, { align: 64 }, { maxTokensPerExpert: Math.max(1, ids.length) }, { maxTokensPerExpert: 4 }]) {
        for (const epilogue of ['none', 'swiglu'] as const) {
          await checkCase(device, { E, N: 48, K: 64, ids, k, layout, epilogue }, seed + i++);
        }
      }
    }
  });

  it('swiglu takes the gate from the first half of w13 (a checkpoint built from separate gate and up matrices)', async () => {
    const seed = freshSeed(`grouped w13 ${device}`);
    const r = rng(seed);
    const E = 3, I = 24, K = 64, N = 2 * I;
    const gate = randomExperts(r, E, I, K);
    const up = randomExperts(r, E, I, K);
    const gs = gate.gs; // ModelOpt gives w1 and w3 of an expert one weight_scale_2
    // w13[e] = concat(w1[e], w3[e]) along N, bytes as a checkpoint stores them
    const cat = (a: Uint8Array, b: Uint8Array, per: number) => {
      const outBytes = new Uint8Array(a.length + b.length);
      for (let e = 0; e < E; e++) {
        outBytes.set(a.subarray(e * per, (e + 1) * per), 2 * e * per);
        outBytes.set(b.subarray(e * per, (e + 1) * per), (2 * e + 1) * per);
      }
      return outBytes;
    };
    const w13 = nvfp4FromCheckpoint(
      {
        weight: { data: cat(gate.data, up.data, (I * K) / 2), shape: [E, N, K / 2], dtype: 'U8' },
        weight_scale: { data: cat(gate.scales, up.scales, (I * K) / 16), shape: [E, N, K / 16], dtype: 'F8_E4M3' },
        weight_scale_2: gs,
      },
      { device },
    );
    const value = (q: RawExperts, e: number, n: number, kk: number) => {
      const i = (e * q.N + n) * K + kk;
      return e2m1Value((q.data[i >> 1] >> ((i & 1) * 4)) & 15) * e4m3Value(q.scales[i >> 4]);
    };
    const T = 5;
    const xBits = randomBf16Bits(r, T * K);
    const ids = [[0], [2], [2], [1], [0]];
    for (const layout of [{ align: 1 }, { maxTokensPerExpert: 2 }]) {
      const l = layoutOf(ids, 1, E, layout, device);
      const xp = permute(fromBytes(xBits, { dtype: 'bf16', shape: [T, K], device }), l);
      const got = Array.from(await groupedGemmNvfp4(xp, w13, l, { epilogue: 'swiglu' }).toArray());
      const rowIndex = await readI32(l.rowIndex);
      const g: number[] = [];
      const want: number[] = [];
      for (let t = 0; t < T; t++) {
        const e = ids[t][0];
        for (let j = 0; j < I; j++) {
          let a = 0, b = 0;
          for (let kk = 0; kk < K; kk++) {
            const xv = bf16Value(xBits[t * K + kk]);
            a += xv * value(gate, e, j, kk);
            b += xv * value(up, e, j, kk);
          }
          const gv = a * gs[e], uv = b * gs[e];
          want.push(bf16Value(bf16Bits((gv / (1 + Math.exp(-gv))) * uv)));
          g.push(got[rowIndex[t] * I + j]);
        }
      }
      expectClose(`seed ${seed} ${JSON.stringify(layout)} on ${device}`, g, want, TOLERANCE);
    }
  });

  it('refuses bad input with codes that name the argument', async () => {
    const r = rng(11);
    const E = 4, N = 24, K = 32;
    const w = placeExperts(randomExperts(r, E, N, K), device);
    const ids = [[0], [1], [1], [3]];
    const layout = layoutOf(ids, 1, E, { align: 1 }, device);
    const x = permute(fromBytes(randomBf16Bits(r, 4 * K), { dtype: 'bf16', shape: [4, K], device }), layout);
    expect(groupedGemmNvfp4(x, w, layout).shape).toEqual([layout.rows, N]);
    // wrong number of experts
    const w3 = placeExperts(randomExperts(r, 3, N, K), device);
    await expectCode(() => groupedGemmNvfp4(x, w3, layout), 'E_SHAPE', 'layout.numExperts');
    // wrong K
    const w48 = placeExperts(randomExperts(r, E, N, 48), device);
    await expectCode(() => groupedGemmNvfp4(x, w48, layout), 'E_SHAPE', 'x');
    // wrong rows
    await expectCode(() => groupedGemmNvfp4(empty([layout.rows + 1, K], { dtype: 'bf16', device }), w, layout), 'E_SHAPE', 'layout.rows');
    // dtypes
    await expectCode(() => groupedGemmNvfp4(empty([layout.rows, K], { dtype: 'f32', device }) as never, w, layout), 'E_DTYPE', 'x');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { out: empty([layout.rows, N], { dtype: 'f32', device }) as never }), 'E_DTYPE', 'options.out');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { out: empty([layout.rows, N / 2], { dtype: 'bf16', device }) }), 'E_SHAPE', 'options.out');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { out: x }), 'E_SHAPE', 'options.out');
    // a dense weight, or one global scale for all the experts
    await expectCode(() => groupedGemmNvfp4(x, w.select(0), layout), 'E_SHAPE', '[E, N, K]');
    const oneScale = quantizeNvfp4(empty([E, N, K], { dtype: 'bf16', device }));
    await expectCode(() => groupedGemmNvfp4(x, oneScale, layout), 'E_SHAPE', 'global scale per expert');
    await expectCode(() => groupedGemmNvfp4(x, x as never, layout), 'E_ARGUMENT', 'w');
    // layouts not made by expertLayout
    await expectCode(() => groupedGemmNvfp4(x, w, { ...layout }), 'E_ARGUMENT', 'layout');
    await expectCode(() => groupedGemmNvfp4(x, w, {} as never), 'E_ARGUMENT', 'layout');
    // options
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { epilogue: 'gelu' as never }), 'E_ARGUMENT', 'epilogue');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { epilog: 'swiglu' } as never), 'E_ARGUMENT', 'epilog');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, null as never), 'E_ARGUMENT', 'options');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { path: 'fast' as never }), 'E_ARGUMENT', 'path');
    const odd = placeExperts(randomExperts(r, E, 25, K), device);
    await expectCode(() => groupedGemmNvfp4(x, odd, layout, { epilogue: 'swiglu' }), 'E_SHAPE', 'swiglu');
    const gone = placeExperts(randomExperts(r, E, N, K), device);
    gone.dispose();
    await expectCode(() => groupedGemmNvfp4(x, gone, layout), 'E_DISPOSED', 'w');
  });

  it('gather: x is [layout.tokens, K]; a row whose pair names no token of x reads zeros', async () => {
    const seed = freshSeed(`grouped gather ${device}`);
    const r = rng(seed);
    const E = 4, N = 48, K = 64, T = 6, k = 2;
    const ids = randomIds(r, T, k, E);
    const layout = layoutOf(ids, k, E, { align: 1 }, device);
    const xBits = randomBf16Bits(r, T * K);
    const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, K], device });
    const w = placeExperts(randomExperts(r, E, N, K), device);
    await expectCode(() => groupedGemmNvfp4(permute(x, layout), w, layout, { gather: true }), 'E_SHAPE', 'layout.tokens');
    await expectCode(() => groupedGemmNvfp4(x, w, layout, { gather: 1 as never }), 'E_ARGUMENT', 'options.gather');
    // the native call with pairs of our own: -1, one past the last pair, and far past it
    const pairs = await readI32(layout.sourceIndex);
    pairs[1] = -1;
    pairs[4] = T * k;
    pairs[7] = 1 << 30;
    const xRows = fromArray(Array.from(pairs), { dtype: 'i32', device });
    const rows = layout.rows;
    const got = fromBytes(new Uint16Array(rows * N).fill(SENTINEL), { dtype: 'bf16', shape: [rows, N], device });
    const b = native();
    const ptrs = [w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr, layout.counts.dataPtr, layout.offsets.dataPtr] as const;
    b.nvfp4GroupedGemm(device === 'cpu' ? -1 : 0, defaultStream(device).handle, x.dataPtr, 2, 0n, 0n, ...ptrs, got.dataPtr, 2, 0n, 0n, 0n, E, rows, N, K, 0, T * k, 0,
      xRows.dataPtr, k, T, false);
    // the same kernel on rows permuted by hand, zeros where the pair names no token
    const xp = new Uint16Array(rows * K);
    for (let row = 0; row < rows; row++) {
      const t = pairs[row] >= 0 ? Math.floor(pairs[row] / k) : -1;
      if (t >= 0 && t < T) xp.set(xBits.subarray(t * K, (t + 1) * K), row * K);
    }
    const want = fromBytes(new Uint16Array(rows * N).fill(SENTINEL), { dtype: 'bf16', shape: [rows, N], device });
    groupedGemmNvfp4(fromBytes(xp, { dtype: 'bf16', shape: [rows, K], device }), w, layout, { out: want });
    expect(await got.toBytes(), `seed ${seed}`).toEqual(await want.toBytes());
  });

  it('the native side names the argument of a precondition it refuses', async () => {
    const b = native();
    const dev = device === 'cpu' ? -1 : 0;
    const s = defaultStream(device).handle;
    const r = rng(12);
    const E = 2, N = 16, K = 32;
    const w = placeExperts(randomExperts(r, E, N, K), device);
    const layout = layoutOf([[0], [1]], 1, E, { maxTokensPerExpert: 2 }, device);
    const x = empty([4, K], { dtype: 'bf16', device });
    const out = empty([4, N], { dtype: 'bf16', device });
    const call = (o: { K?: number; xType?: number; outType?: number; rows?: number; maxRows?: number; epilogue?: number; N?: number; x?: bigint }) => () =>
      b.nvfp4GroupedGemm(
        dev, s, o.x ?? x.dataPtr, o.xType ?? 2, 0n, 0n, w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr, layout.counts.dataPtr,
        layout.offsets.dataPtr, out.dataPtr, o.outType ?? 2, 0n, 0n, 0n, E, o.rows ?? 4, o.N ?? N, o.K ?? K, o.maxRows ?? 2, 2, o.epilogue ?? 0, 0n, 0, 0,
        false,
      );
    call({})();
    await expectCode(call({ K: 24 }), 'E_SHAPE', 'K');
    await expectCode(call({ xType: 0 }), 'E_DTYPE', 'x');
    await expectCode(call({ outType: 0 }), 'E_DTYPE', 'out');
    await expectCode(call({ rows: 5 }), 'E_SHAPE', 'layout');
    await expectCode(call({ epilogue: 7 }), 'E_ARGUMENT', 'epilogue');
    await expectCode(call({ epilogue: 1, N: 15 }), 'E_SHAPE', 'swiglu');
    await expectCode(call({ x: x.dataPtr + 2n }), 'E_ARGUMENT', 'aligned');
    const gather = (gatherK: number, xTokens: number) => () =>
      b.nvfp4GroupedGemm(
        dev, s, x.dataPtr, 2, 0n, 0n, w.data.dataPtr, w.scales.dataPtr, w.globalScale.dataPtr, layout.counts.dataPtr,
        layout.offsets.dataPtr, out.dataPtr, 2, 0n, 0n, 0n, E, 4, N, K, 2, 2, 0, layout.sourceIndex.dataPtr, gatherK, xTokens,
        false,
      );
    gather(1, 2)();
    await expectCode(gather(0, 2), 'E_ARGUMENT', 'layout');
    await expectCode(gather(1, -1), 'E_SHAPE', 'x');
  });

  it('makes exactly one native call with out given', async () => {
    const r = rng(13);
    const w = placeExperts(randomExperts(r, 4, 16, 32), device);
    const layout = layoutOf([[0], [2]], 1, 4, { maxTokensPerExpert: 2 }, device);
    const x = empty([layout.rows, 32], { dtype: 'bf16', device });
    const out = empty([layout.rows, 8], { dtype: 'bf16', device });
    groupedGemmNvfp4(x, w, layout, { out, epilogue: 'swiglu' });
    const calls = nativeCalls(() => groupedGemmNvfp4(x, w, layout, { out, epilogue: 'swiglu' }));
    expect(calls).toEqual(['nvfp4GroupedGemm']);
  });
});

describe.skipIf(!hasCuda)('grouped nvfp4 gemm: CUDA against the CPU reference', () => {
  const gpu: Device = 'cuda:0';

  it('DeepSeek-V3-like widths (K = 7168 and 2048, swiglu and none), decode and prefill routings', async () => {
    const seed = freshSeed('grouped large');
    const r = rng(seed);
    let i = 0;
    for (const [T, k, E] of [[1, 8, 32], [16, 8, 32], [256, 8, 32]]) {
      const ids = randomIds(r, T, k, E, 0.1);
      for (const layout of [{ align: 128 }, { maxTokensPerExpert: Math.min(T, 32) }]) {
        await checkCase(gpu, { E, N: 512, K: 7168, ids, k, layout, epilogue: 'swiglu' }, seed + i++);
        await checkCase(gpu, { E, N: 1024, K: 2048, ids, k, layout, epilogue: 'none' }, seed + i++);
      }
    }
    // the CPU reference of these widths takes most of two minutes
  }, 300_000);

  it('a masked decode step in a CUDA graph replays with new routing (counts) and gives the new results', async () => {
    const seed = freshSeed('grouped graph');
    const r = rng(seed);
    const T = 8, k = 4, E = 16, K = 256, N = 96, M = 4;
    const s = createStream(gpu);
    const q13 = randomExperts(r, E, N, K);
    const q2 = randomExperts(r, E, K, N / 2);
    const w13 = placeExperts(q13, gpu);
    const w2 = placeExperts(q2, gpu);
    const logits = empty([T, E], { dtype: 'bf16', device: gpu, stream: s });
    const xBits = randomBf16Bits(r, T * K);
    const x = fromBytes(xBits, { dtype: 'bf16', shape: [T, K], device: gpu, stream: s });
    let layout: ExpertLayout | undefined;
    let h: Tensor<'bf16'> | undefined;
    let y: Tensor<'bf16'> | undefined;
    let xp: Tensor<'bf16'> | undefined;
    const graph = captureGraph(s, () => {
      const routed = routeTopK(logits, { k, scoring: 'softmax', stream: s });
      layout = expertLayout(routed.ids, E, { maxTokensPerExpert: M, stream: s });
      xp = permute(x, layout, { stream: s });
      h = groupedGemmNvfp4(xp, w13, layout, { epilogue: 'swiglu', stream: s });
      y = groupedGemmNvfp4(h, w2, layout, { stream: s });
    });
    let previous = '';
    for (let step = 0; step < 3; step++) {
      const rows = Array.from({ length: T }, () => Array.from({ length: E }, () => (r() - 0.5) * 8));
      convert(fromArray(rows.flat(), { shape: [T, E], device: gpu, stream: s }), 'bf16', { out: logits, stream: s });
      graph.replay(s);
      await s.synchronize();
      const counts = (await readI32(layout!.counts)).join(',');
      expect(counts, 'the routing changed between replays').not.toBe(previous);
      previous = counts;
      // the same step eagerly on the CPU, from the same logits
      const cpuRouted = routeTopK(fromArray(rows, { device: 'cpu', dtype: 'bf16' }), { k, scoring: 'softmax' });
      const cpuLayout = expertLayout(cpuRouted.ids, E, { maxTokensPerExpert: M });
      expect(await readI32(layout!.counts)).toEqual(await readI32(cpuLayout.counts));
      const cpuXp = permute(fromBytes(xBits, { dtype: 'bf16', shape: [T, K], device: 'cpu' }), cpuLayout);
      const cpuH = groupedGemmNvfp4(cpuXp, placeExperts(q13, 'cpu'), cpuLayout, { epilogue: 'swiglu' });
      const cpuY = groupedGemmNvfp4(cpuH, placeExperts(q2, 'cpu'), cpuLayout);
      const counted = await readI32(cpuLayout.counts);
      const pick = async (t: Tensor<'bf16'>, width: number) => {
        const v = Array.from(await t.toArray());
        const outRows: number[] = [];
        for (let e = 0; e < E; e++) for (let m = 0; m < counted[e]; m++) outRows.push(...v.slice((e * M + m) * width, (e * M + m + 1) * width));
        return outRows;
      };
      expectClose(`seed ${seed} step ${step}: h`, await pick(h!, N / 2), await pick(cpuH, N / 2), TOLERANCE);
      expectClose(`seed ${seed} step ${step}: y`, await pick(y!, K), await pick(cpuY, K), 2 * TOLERANCE);
    }
    graph.dispose();
    await s.synchronize();
    s.dispose();
  });

  it('tensors on different devices are refused', async () => {
    const r = rng(14);
    const w = placeExperts(randomExperts(r, 2, 16, 32), 'cpu');
    const layout = layoutOf([[0]], 1, 2, { align: 1 }, gpu);
    const x = empty([layout.rows, 32], { dtype: 'bf16', device: gpu });
    await expectCode(() => groupedGemmNvfp4(x, w, layout), 'E_DEVICE', 'w');
    const cpuLayout = layoutOf([[0]], 1, 2, { align: 1 }, 'cpu');
    await expectCode(() => groupedGemmNvfp4(x, placeExperts(randomExperts(r, 2, 16, 32), gpu), cpuLayout), 'E_DEVICE', 'layout');
  });
});
