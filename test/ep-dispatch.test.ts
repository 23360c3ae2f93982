// Expert-parallel dispatch and combine on CPU ranks (the host transport): in-process groups for
// the cases, rank processes under `moe-kernels launch` for moeForwardEp. The oracle of a round
// is the single-device path over the ranks' tokens concatenated: routing's expertLayout, permute
// and unpermute, whose rows and sums dispatch and combine must reproduce bit for bit.
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  MoeError,
  captureGraph,
  convert,
  createEpBuffer,
  createStream,
  defaultStream,
  devices as cudaDevices,
  expertLayout,
  fromArray,
  groupedGemmNvfp4,
  initProcessGroup,
  moeForward,
  permute,
  routeTopK,
  routerLogits,
  unpermute,
  type EpBuffer,
  type EpBufferOptions,
  type EpCombineForm,
  type EpPayload,
  type Device,
  type ProcessGroup,
  type Stream,
  type Tensor,
} from '../lib';
import { native } from '../lib/native';
import { SendGate } from '../lib/ep/gate';
import { bf16, cpuArray, decoded, launchRanks, model, rankLines, reducedSums, routingOf } from './ep-helpers';
import { cudaReason, expectCode, freshSeed, hasCuda, rng } from './backends';

interface Spec {
  E: number;
  H: number;
  I: number;
  Is: number;
  k: number;
  scoring: 'softmax' | 'sigmoid';
}

const open: ProcessGroup[] = [];
const made: { dispose(): void }[] = [];
afterEach(() => {
  for (const b of made.splice(0)) b.dispose();
  for (const pg of open.splice(0)) pg.destroy();
});

async function group(n: number, timeoutMs = 20_000): Promise<ProcessGroup[]> {
  const pgs = await initProcessGroup({ ranks: 'all', worldSize: n, device: 'cpu', timeoutMs });
  open.push(...pgs);
  return pgs;
}

/** CUDA ranks of one process: rank r on devs[r]. */
async function groupOn(devs: Device[], timeoutMs = 20_000): Promise<ProcessGroup[]> {
  const pgs = await initProcessGroup({ ranks: 'all', devices: devs, timeoutMs });
  open.push(...pgs);
  return pgs;
}

function keep<T extends { dispose(): void }>(x: T): T {
  made.push(x);
  return x;
}

async function buffers(pgs: ProcessGroup[], options: EpBufferOptions): Promise<EpBuffer[]> {
  const bs = await Promise.all(pgs.map((pg) => createEpBuffer(pg, options)));
  made.push(...bs);
  return bs;
}




/** A row-local, expert-dependent stand-in for an expert: y = bf16(x * (1 + g/8) - g/16). */
const expertFn = (g: number, v: number) => bf16(Math.fround(Math.fround(v * (1 + g / 8)) - g / 16));

interface RankInput {
  x: number[];
  ids: number[];
  weights: number[];
}

interface Case {
  R: number;
  E: number;
  H: number;
  K: number;
  maxT: number;
  payload: EpPayload;
  form: 'contiguous' | 'masked';
  M?: number;
  align?: number;
  /** combine's output dtype (f32 shows any change of summation order; bf16 mostly hides it) */
  out?: 'bf16' | 'f32';
  /** the buffer's combine form (default exact) */
  combine?: EpCombineForm;
  /** the buffer's gather option: one row per received slot */
  gather?: boolean;
  /** x at an address off 16 bytes (a view one element into a larger tensor): the encode's scalar loads */
  unaligned?: boolean;
  inputs: RankInput[];
  /** CUDA ranks of one process (the nvlink transport), rank r on devices[r]; default: CPU ranks */
  devices?: Device[];
  /** with devices: each rank's stream (default: new ones) */
  streams?: Stream[];
}

async function settle(devs: readonly Device[] | undefined): Promise<void> {
  // inputs copied on the default streams are in place before the ranks' streams read them
  if (devs) for (const d of new Set(devs)) await defaultStream(d).synchronize();
}

/**
 * One dispatch/combine round on every rank, checked against the single-device oracle: the
 * layout, the rows (tokens), the dropped and invalid counts, and combine's sums, bit for bit.
 */
async function round(c: Case, bufs?: EpBuffer[]): Promise<{ out: number[][]; dropped: number[] }> {
  const { R, E, H, K, maxT } = c;
  const L = E / R;
  const devs = c.devices;
  const pgs = bufs ? undefined : await (devs ? groupOn(devs) : group(R));
  const bs = bufs ?? (await buffers(pgs as ProcessGroup[], {
    maxTokensPerRank: maxT, hidden: H, topK: K, numExperts: E, payload: c.payload, layout: c.form,
    ...(c.combine !== undefined ? { combine: c.combine } : {}), ...(c.gather ? { gather: true } : {}),
    ...(c.M !== undefined ? { maxTokensPerExpert: c.M } : {}), ...(c.align !== undefined ? { align: c.align } : {}),
  }));
  const streams = c.streams ?? (devs ? devs.map((d) => keep(createStream(d))) : undefined);
  const on = <D extends 'bf16' | 'f32' | 'i32'>(values: ArrayLike<number>, shape: number[], dtype: D, r: number) =>
    fromArray(Array.from(values), { shape, dtype, device: devs ? devs[r] : 'cpu' }) as unknown as Tensor<D>;
  const withStream = (r: number) => (streams ? { stream: streams[r] } : {});
  const T = c.inputs.map((i) => i.x.length / H);
  const xs = c.inputs.map((inp, r) =>
    c.unaligned ? on([0, ...inp.x], [1 + T[r] * H], 'bf16', r).slice(1).reshape([T[r], H]) : on(inp.x, [T[r], H], 'bf16', r));
  const ids = c.inputs.map((inp, r) => on(inp.ids, [T[r], K], 'i32', r));
  const ws = c.inputs.map((inp, r) => on(inp.weights, [T[r], K], 'f32', r));
  await settle(devs);
  const results = await Promise.all(bs.map((b, r) => b.dispatch(xs[r], { ids: ids[r], weights: ws[r] }, withStream(r))));

  // the oracle: the ranks' tokens concatenated; an invalid id goes to an extra expert E with
  // weight 0, which adds nothing to a sum (w * y = +-0)
  const invalid = (id: number) => id < 0 || id >= E;
  const allIds = c.inputs.flatMap((i) => i.ids.map((id) => (invalid(id) ? E : id)));
  const allW = c.inputs.flatMap((i) => i.weights.map((w, p) => (invalid(i.ids[p]) ? 0 : w)));
  const allX: number[] = [];
  for (const inp of c.inputs) for (let t = 0; t < inp.x.length / H; t++) allX.push(...(await decoded(c.payload, inp.x.slice(t * H, (t + 1) * H))));
  const Tall = allIds.length / K;
  const gl = expertLayout(cpuArray(allIds, [Tall, K], 'i32'), E + 1, c.form === 'masked' ? { maxTokensPerExpert: c.M ?? R * maxT } : {});
  const gRows = Array.from(await permute(cpuArray(allX, [Tall, H], 'bf16'), gl).toArray());
  const gCounts = Array.from(await gl.counts.toArray());
  const gOffsets = Array.from(await gl.offsets.toArray());
  const gSource = Array.from(await gl.sourceIndex.toArray());
  const rowExpert = (offsets: number[], row: number) => offsets.findIndex((o, e) => row >= o && row < offsets[e + 1]);
  const gY = gRows.map((v, i) => {
    const g = rowExpert(gOffsets, Math.floor(i / H));
    return g < 0 ? 0 : expertFn(g, v);
  });
  const outType = c.out ?? 'bf16';
  const gOut = fromArray(new Float32Array(Tall * H), { shape: [Tall, H], dtype: outType, device: 'cpu' }) as Tensor<'bf16'> | Tensor<'f32'>;
  const sumOf = async (rows: number[], w: number[], dtype: 'bf16' | 'f32') => {
    const o = fromArray(new Float32Array(Tall * H), { shape: [Tall, H], dtype, device: 'cpu' }) as Tensor<'bf16'> | Tensor<'f32'>;
    return Array.from(await unpermute(cpuArray(rows, [gl.rows, H], 'bf16'), gl, cpuArray(w, [Tall, K], 'f32'), { out: o }).toArray());
  };
  let want = Array.from(await unpermute(cpuArray(gY, [gl.rows, H], 'bf16'), gl, cpuArray(allW, [Tall, K], 'f32'), { out: gOut }).toArray());
  if (c.combine === 'reduced') {
    const { out: reduced, partials } = await reducedSums(allIds, allW, E, R, K, H, (w) => sumOf(gY, w, 'f32'));
    if (outType === 'f32') {
      // the stated error against the exact sum: 2^-8 x sum |partial| + 2^-19 x sum |weight x output|
      const mags = await sumOf(gY.map(Math.abs), allW.map(Math.abs), 'f32');
      for (let i = 0; i < reduced.length; i++) {
        const bound = 2 ** -8 * partials.reduce((a, p) => a + Math.abs(p[i]), 0) * (1 + 2 ** -7) + 2 ** -19 * mags[i];
        expect(Math.abs(reduced[i] - want[i]), `reduced element ${i}`).toBeLessThanOrEqual(bound);
      }
    }
    want = outType === 'bf16' ? reduced.map(bf16) : reduced;
  }

  // the token a global pair came from: (source rank, token), and slot j of it at destination d
  const firstToken = T.map((_, r) => T.slice(0, r).reduce((a, b) => a + b, 0));
  const sent = c.inputs.map((inp, s) =>
    Array.from({ length: R }, (_, d) => {
      const list: number[] = [];
      for (let t = 0; t < T[s]; t++) if (inp.ids.slice(t * K, (t + 1) * K).some((id) => !invalid(id) && Math.floor(id / L) === d)) list.push(t);
      return list;
    }),
  );
  const out: number[][] = [];
  const dropped: number[] = [];
  for (let d = 0; d < R; d++) {
    const res = results[d];
    const l = res.layout;
    expect([l.form, l.numExperts, l.k, l.tokens]).toEqual([c.form, L, K, R * maxT]);
    expect(res.tokens.shape).toEqual([c.gather ? R * maxT : l.rows, H]);
    const counts = Array.from(await l.counts.toArray());
    const offsets = Array.from(await l.offsets.toArray());
    const source = Array.from(await l.sourceIndex.toArray());
    const rowIndex = Array.from(await l.rowIndex.toArray());
    const tokens = Array.from(await res.tokens.toArray());
    expect((await l.errors.toArray())[0]).toBe(0);
    expect((await res.invalidIds.toArray())[0]).toBe(c.inputs[d].ids.filter(invalid).length);
    dropped.push((await l.dropped.toArray())[0]);
    // expert e here is global expert d*L + e: the same pairs, in the same order
    const align = c.align ?? 1;
    const wantOffsets = [0];
    for (let e = 0; e < L; e++) {
      expect(counts[e], `rank ${d} expert ${e}`).toBe(gCounts[d * L + e]);
      wantOffsets.push(c.form === 'masked' ? (e + 1) * (c.M ?? R * maxT) : wantOffsets[e] + Math.ceil(counts[e] / align) * align);
    }
    expect(offsets).toEqual(wantOffsets);
    expect((await l.usedRows.toArray())[0]).toBe(offsets[L]);
    const y = new Array<number>(l.rows * H).fill(0);
    for (let e = 0; e < L; e++) {
      const g = d * L + e;
      for (let n = 0; n < counts[e]; n++) {
        const gp = gSource[gOffsets[g] + n];
        const gt = Math.floor(gp / K), kk = gp % K;
        let s = 0;
        for (let r = 0; r < R; r++) if (T[r] > 0 && gt >= firstToken[r]) s = r;
        const j = sent[s][d].indexOf(gt - firstToken[s]);
        const row = offsets[e] + n;
        const pair = (s * maxT + j) * K + kk;
        expect(source[row], `rank ${d} row ${row}`).toBe(pair);
        expect(rowIndex[pair]).toBe(row);
        // gather: the row of the pair's slot
        const at = c.gather ? s * maxT + j : row;
        const got = tokens.slice(at * H, (at + 1) * H);
        const ref = gRows.slice((gOffsets[g] + n) * H, (gOffsets[g] + n + 1) * H);
        expect(got, `rank ${d} row ${row}: the payload's row`).toEqual(ref);
        for (let h = 0; h < H; h++) y[row * H + h] = expertFn(g, got[h]);
      }
      // padding rows are zeros (masked: also those an earlier round on the buffer wrote), and the
      // pairs placed are exactly counted
      for (let row = offsets[e] + counts[e]; row < offsets[e + 1]; row++) {
        expect(source[row]).toBe(-1);
        if (!c.gather) expect(tokens.slice(row * H, (row + 1) * H).every((v) => v === 0)).toBe(true);
      }
    }
    expect(rowIndex.filter((r) => r >= 0).length).toBe(counts.reduce((a, b) => a + b, 0));
    out.push(y);
  }
  const ys = bs.map((b, r) => on(out[r], [b.rows, H], 'bf16', r));
  const outs0 = bs.map((_, r) => fromArray(new Float32Array(T[r] * H), { shape: [T[r], H], dtype: outType, device: devs ? devs[r] : 'cpu' }) as Tensor<'bf16'> | Tensor<'f32'>);
  await settle(devs);
  const combined = await Promise.all(bs.map((b, r) => b.combine(ys[r], results[r].handle, { out: outs0[r], ...withStream(r) })));
  const outs: number[][] = [];
  for (let r = 0; r < R; r++) {
    const got = Array.from(await combined[r].toArray());
    expect(got, `rank ${r}: combine`).toEqual(want.slice(firstToken[r] * H, (firstToken[r] + T[r]) * H));
    outs.push(got);
  }
  expect(dropped.reduce((a, b) => a + b, 0)).toBe((await gl.dropped.toArray())[0]);
  return { out: outs, dropped };
}

/** Random tokens and routing: each token's k distinct experts drawn from `pick`. */
function inputs(seed: number, T: number[], H: number, E: number, K: number, pick: (r: () => number) => number = (r) => Math.floor(r() * E)): RankInput[] {
  const r = rng(seed);
  return T.map((n) => {
    const ids: number[] = [];
    for (let t = 0; t < n; t++) {
      const chosen: number[] = [];
      while (chosen.length < K) {
        const e = pick(r);
        if (!chosen.includes(e)) chosen.push(e);
      }
      ids.push(...chosen);
    }
    return {
      x: Array.from({ length: n * H }, () => (r() - 0.5) * 8),
      ids,
      weights: Array.from({ length: n * K }, () => r() * 2 - 0.25),
    };
  });
}

describe('dispatch and combine: hand-computed', () => {
  it('2 ranks, 4 experts, k = 2: the layout, the rows and the sums', async () => {
    const H = 4;
    const bs = await buffers(await group(2), { maxTokensPerRank: 3, hidden: H, topK: 2, numExperts: 4 });
    expect(bs.map((b) => [b.localExperts, b.firstExpert, b.rows, b.sms, b.transport])).toEqual([[2, 0, 12, 0, 'host'], [2, 2, 12, 0, 'host']]);
    // rank 0: token 0 -> experts 0, 3; token 1 -> 1, 0. rank 1: token 0 -> 2, 3; token 1 -> 3, 1; token 2 -> 0, 2
    const x0 = [1, 2, 3, 4, 5, 6, 7, 8];
    const x1 = [-1, -2, -3, -4, 10, 20, 30, 40, 0.5, 1.5, 2.5, 3.5];
    const d = await Promise.all([
      bs[0].dispatch(cpuArray(x0, [2, H], 'bf16'), { ids: cpuArray([0, 3, 1, 0], [2, 2], 'i32'), weights: cpuArray([0.5, 0.25, 1, 2], [2, 2], 'f32') }),
      bs[1].dispatch(cpuArray(x1, [3, H], 'bf16'), { ids: cpuArray([2, 3, 3, 1, 0, 2], [3, 2], 'i32'), weights: cpuArray([1, 4, 0.5, 0.125, 2, 8], [3, 2], 'f32') }),
    ]);
    // rank 0 (experts 0, 1) receives: from rank 0 tokens 0, 1 (slots 0, 1); from rank 1 tokens 1, 2 (slots 3, 4)
    //   expert 0: (slot 0, k 0), (slot 1, k 1), (slot 4, k 0); expert 1: (slot 1, k 0), (slot 3, k 1)
    expect(Array.from(await d[0].layout.counts.toArray())).toEqual([3, 2]);
    expect(Array.from(await d[0].layout.offsets.toArray())).toEqual([0, 3, 5]);
    expect(Array.from(await d[0].layout.sourceIndex.toArray()).slice(0, 6)).toEqual([0, 3, 8, 2, 7, -1]);
    expect(Array.from(await d[0].tokens.toArray()).slice(0, 5 * H)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5, 5, 6, 7, 8, 10, 20, 30, 40]);
    // rank 1 (experts 2, 3) receives: from rank 0 token 0 (slot 0); from rank 1 tokens 0, 1, 2 (slots 3, 4, 5)
    //   expert 2: (slot 3, k 0), (slot 5, k 1); expert 3: (slot 0, k 1), (slot 3, k 1), (slot 4, k 0)
    expect(Array.from(await d[1].layout.counts.toArray())).toEqual([2, 3]);
    expect(Array.from(await d[1].layout.sourceIndex.toArray()).slice(0, 5)).toEqual([6, 11, 1, 7, 8]);
    expect(Array.from(await d[1].tokens.toArray()).slice(0, 5 * H)).toEqual([-1, -2, -3, -4, 0.5, 1.5, 2.5, 3.5, 1, 2, 3, 4, -1, -2, -3, -4, 10, 20, 30, 40]);
    // experts that multiply by (1 + global id): y row = tokens row * (1 + expert)
    const scaled = async (r: number, factors: number[]) => {
      const tok = Array.from(await d[r].tokens.toArray());
      const offsets = Array.from(await d[r].layout.offsets.toArray());
      return cpuArray(tok.map((v, i) => {
        const row = Math.floor(i / H);
        const e = offsets.findIndex((o, j) => row >= o && row < offsets[j + 1]);
        return e < 0 ? 0 : v * factors[e];
      }), [12, H], 'bf16');
    };
    const out = await Promise.all([bs[0].combine(await scaled(0, [1, 2]), d[0].handle), bs[1].combine(await scaled(1, [3, 4]), d[1].handle)]);
    // rank 0 token 0: 0.5 * 1 * x + 0.25 * 4 * x = 1.5 x; token 1: 1 * 2 * x + 2 * 1 * x = 4 x
    expect(Array.from(await out[0].toArray())).toEqual([1.5, 3, 4.5, 6, 20, 24, 28, 32]);
    // rank 1 token 0: 1*3x + 4*4x = 19x; token 1: 0.5*4x + 0.125*2x = 2.25x; token 2: 2*1x + 8*3x = 26x
    expect(Array.from(await out[1].toArray())).toEqual([-19, -38, -57, -76, 22.5, 45, 67.5, 90, 13, 39, 65, 91]);
  });
});

describe('combine "reduced": hand-computed', () => {
  it('each rank sums its pairs first and sends one bf16 row; the rounding of a partial shows', async () => {
    const bs = await buffers(await group(2), { maxTokensPerRank: 2, hidden: 2, topK: 3, numExperts: 4, combine: 'reduced' });
    // a combine region: 2 valid flags (16 bytes), 2 rows of 2 bf16 (8 bytes), to 16 bytes, then one
    // chunk flag on 16 bytes: 48 per rank
    expect(bs.map((b) => [b.combineForm, b.bytes.combine])).toEqual([['reduced', 2 * 48], ['reduced', 2 * 48]]);
    // rank 0's token 0 -> experts 0, 1 (rank 0) and 2 (rank 1), weights 1; rank 1 sends nothing
    const d = await Promise.all([
      bs[0].dispatch(cpuArray([1, 2], [1, 2], 'bf16'), { ids: cpuArray([0, 1, 2], [1, 3], 'i32'), weights: cpuArray([1, 1, 1], [1, 3], 'f32') }),
      bs[1].dispatch(cpuArray([], [0, 2], 'bf16'), { ids: cpuArray([], [0, 3], 'i32'), weights: cpuArray([], [0, 3], 'f32') }),
    ]);
    // expert outputs x * factor: expert 0 by 1, expert 1 by 2^-8, expert 2 by -1
    const scaled = async (r: number, factors: number[]) => {
      const tok = Array.from(await d[r].tokens.toArray());
      const offsets = Array.from(await d[r].layout.offsets.toArray());
      return cpuArray(tok.map((v, i) => {
        const row = Math.floor(i / 2);
        const e = offsets.findIndex((o, j) => row >= o && row < offsets[j + 1]);
        return e < 0 ? 0 : v * factors[e];
      }), [bs[r].rows, 2], 'bf16');
    };
    const f32 = () => fromArray(new Float32Array(2), { shape: [1, 2], dtype: 'f32', device: 'cpu' }) as Tensor<'f32'>;
    const out = await Promise.all([
      bs[0].combine(await scaled(0, [1, 2 ** -8]), d[0].handle, { out: f32() }),
      bs[1].combine(await scaled(1, [-1, 0]), d[1].handle, { out: fromArray(new Float32Array(0), { shape: [0, 2], dtype: 'f32', device: 'cpu' }) as Tensor<'f32'> }),
    ]);
    // rank 0's partial: bf16(x + 2^-8 x) = x for x = 1 and 2 (ties, to even); rank 1's: -x.
    // Exact would give 2^-8 x = [2^-8, 2^-7].
    expect(Array.from(await out[0].toArray())).toEqual([0, 0]);
    expect(await out[1].toArray()).toHaveLength(0);
  });
});

describe('dispatch and combine against the single-device path', () => {
  for (const R of [2, 4, 8]) {
    for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
      for (const form of ['contiguous', 'masked'] as const) {
        it(`${R} ranks, ${payload}, ${form}: random routing`, async () => {
          const seed = freshSeed(`ep ${R} ${payload} ${form}`);
          const T = Array.from({ length: R }, (_, r) => 3 + ((seed >>> r) % 5));
          const E = 4 * R, K = 3, H = 160;
          await round({ R, E, H, K, maxT: 8, payload, form, out: 'f32', ...(form === 'contiguous' ? { align: 4 } : {}), inputs: inputs(seed, T, H, E, K) });
          await round({ R, E, H, K, maxT: 8, payload, form, out: 'bf16', inputs: inputs(seed + 1, T, H, E, K) });
        });
      }
    }
  }

  for (const R of [2, 4]) {
    it(`${R} ranks, gather (a row per received slot): every payload, both layouts, both combine forms`, async () => {
      const seed = freshSeed(`ep gather ${R}`);
      const T = Array.from({ length: R }, (_, r) => 3 + ((seed >>> r) % 5));
      const E = 4 * R, K = 3, H = 160;
      let i = 0;
      for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
        await round({ R, E, H, K, maxT: 8, payload, form: 'contiguous', align: 4, gather: true, out: 'f32', inputs: inputs(seed + i++, T, H, E, K) });
        await round({ R, E, H, K, maxT: 8, payload, form: 'masked', M: 3, gather: true, combine: 'reduced', out: 'bf16', inputs: inputs(seed + i++, T, H, E, K) });
      }
    });

    it(`${R} ranks, combine "reduced": random routing, both layouts, the stated error against exact`, async () => {
      const seed = freshSeed(`ep reduced ${R}`);
      const T = Array.from({ length: R }, (_, r) => 3 + ((seed >>> r) % 5));
      const E = 4 * R, K = 5, H = 96;
      await round({ R, E, H, K, maxT: 8, payload: 'bf16', form: 'contiguous', align: 4, combine: 'reduced', out: 'f32', inputs: inputs(seed, T, H, E, K) });
      await round({ R, E, H, K, maxT: 8, payload: 'nvfp4', form: 'masked', M: 6, combine: 'reduced', out: 'bf16', inputs: inputs(seed + 1, T, H, E, K) });
    });
  }

  it('skewed: every token to rank 0\'s experts; masked overflow is dropped and counted', async () => {
    const seed = freshSeed('ep skewed');
    const R = 4, E = 8, K = 2, H = 32;
    const inp = inputs(seed, [6, 5, 6, 4], H, E, K, (r) => Math.floor(r() * 2));
    const { dropped } = await round({ R, E, H, K, maxT: 6, payload: 'bf16', form: 'masked', M: 5, out: 'f32', inputs: inp });
    // 21 tokens each pick both of experts 0 and 1: 21 - 5 dropped from each
    expect(dropped).toEqual([32, 0, 0, 0]);
    await round({ R, E, H, K, maxT: 6, payload: 'bf16', form: 'contiguous', inputs: inp });
  });

  it('a rank that sends nothing, and a rank that receives nothing', async () => {
    const seed = freshSeed('ep empty');
    const R = 3, E = 6, K = 2, H = 16;
    // rank 1 has no tokens; nobody picks rank 2's experts (4, 5)
    const inp = inputs(seed, [4, 0, 5], H, E, K, (r) => Math.floor(r() * 4));
    await round({ R, E, H, K, maxT: 5, payload: 'bf16', form: 'contiguous', out: 'f32', inputs: inp });
    await round({ R, E, H, K, maxT: 5, payload: 'nvfp4', form: 'masked', M: 3, inputs: inp });
    await round({ R, E, H, K, maxT: 5, payload: 'bf16', form: 'masked', M: 3, combine: 'reduced', out: 'f32', inputs: inp });
  });

  it('ids outside [0, numExperts) are counted, sent nowhere, and add nothing', async () => {
    const seed = freshSeed('ep invalid ids');
    const R = 2, E = 4, K = 2, H = 16;
    const inp = inputs(seed, [4, 3], H, E, K);
    inp[0].ids[1] = -1;
    inp[0].ids[4] = 4;
    inp[1].ids[5] = 1000;
    await round({ R, E, H, K, maxT: 4, payload: 'bf16', form: 'contiguous', out: 'f32', inputs: inp });
    await round({ R, E, H, K, maxT: 4, payload: 'bf16', form: 'contiguous', combine: 'reduced', out: 'f32', inputs: inp });
  });

  it('many rounds on one buffer, with changing routing and token counts', async () => {
    const seed = freshSeed('ep rounds');
    const R = 2, E = 6, K = 2, H = 48;
    const bs = await buffers(await group(R), { maxTokensPerRank: 5, hidden: H, topK: K, numExperts: E, payload: 'fp8', layout: 'masked', maxTokensPerExpert: 4 });
    for (let i = 0; i < 4; i++) {
      const inp = inputs(seed + i, [1 + ((seed + i) % 5), (seed >>> i) % 6], H, E, K);
      await round({ R, E, H, K, maxT: 5, payload: 'fp8', form: 'masked', M: 4, inputs: inp }, bs);
    }
  });
});

/**
 * A receive of host memory whose region (count word `count`, two chunk flags at `flags`) holds
 * call 1's T slots: then the same result with bit 31 of the count ("the rest follows behind chunk
 * flags") once both flags carry call 1, and E_COMM naming chunk 1 while its flag does not.
 */
async function expectChunkFlags(count: Tensor, flags: bigint, T: number, recv: () => number[], missing: string): Promise<void> {
  const b = native();
  const want = recv();
  expect(want.some((v) => v !== 0)).toBe(true);
  const word = new BigUint64Array(1);
  b.hostRead(count.dataPtr, word);
  expect(word[0]).toBe((1n << 32n) | BigInt(T));
  b.hostWrite(count.dataPtr, new BigUint64Array([word[0] | 0x80000000n]));
  b.hostWrite(flags, new Uint32Array([1, 1]));
  expect(recv()).toEqual(want);
  b.hostWrite(flags, new Uint32Array([1, 0]));
  await expectCode(() => recv(), 'E_COMM', missing);
}

describe('the CPU reference of an overlapped send', () => {
  it('a count word with "payloads follow": the rows once every used chunk flag carries the call; E_COMM naming a chunk that does not', async () => {
    // one rank, 2 experts, k = 1, hidden 16, 70 slots: two chunks of 64, the second partly used;
    // host memory throughout (the ops read these pointers on the CPU)
    const seed = freshSeed('cpu chunk flags');
    const r = rng(seed);
    const T = 70, H = 16, K = 1, E = 2, M = 70;
    const b = native();
    const x = fromArray(Array.from({ length: T * H }, () => r() * 4 - 2), { shape: [T, H], dtype: 'bf16', device: 'cpu' });
    const ids = fromArray(Array.from({ length: T }, () => Math.floor(r() * E)), { shape: [T, K], dtype: 'i32', device: 'cpu' });
    const w = fromArray(Array.from({ length: T }, () => r()), { shape: [T, K], device: 'cpu' });
    const slot = 32 + 16, flagsAt = M * slot, regionBytes = flagsAt + 16;
    const u8 = (n: number) => fromArray(new Uint8Array(n), { shape: [n], dtype: 'u8', device: 'cpu' });
    const region = u8(regionBytes), count = u8(8), state = u8(32), combineIndex = u8(4 * T), errors = u8(4);
    const table = (p: bigint) => fromArray(new BigUint64Array([p]), { shape: [1], dtype: 'i64', device: 'cpu' });
    const dataDst = table(region.dataPtr), countDst = table(count.dataPtr);
    const shape = [1, 0, E, K, H, M, 0, 0] as const;
    b.epDispatchSend(-1, 0n, ...shape, x.dataPtr, ids.dataPtr, w.dataPtr, T, dataDst.dataPtr, countDst.dataPtr, state.dataPtr, state.dataPtr + 4n, 1,
      combineIndex.dataPtr, errors.dataPtr, 0n, 0n, 0n, 0n, 0n);
    const rows = M * K;  // contiguous, align 1: slots x k
    const recv = () => {
      const out = { tokens: u8(2 * rows * H), counts: u8(4 * E), offsets: u8(4 * (E + 1)), source: u8(4 * rows), rowIndex: u8(4 * M * K), one: [u8(4), u8(4), u8(4)], recvCounts: u8(4), status: u8(8) };
      b.hostWrite(state.dataPtr, new Uint32Array([0]));  // the call number before this call
      b.epDispatchRecv(-1, 0n, ...shape, region.dataPtr, count.dataPtr, state.dataPtr, 1e9, out.status.dataPtr, out.recvCounts.dataPtr, 1, 0, rows, false,
        out.tokens.dataPtr, out.counts.dataPtr, out.offsets.dataPtr, out.source.dataPtr, out.rowIndex.dataPtr, out.one[0].dataPtr, out.one[1].dataPtr,
        out.one[2].dataPtr, 0n, 0n, 0n);
      const bytes = new Uint8Array(2 * rows * H);
      b.hostRead(out.tokens.dataPtr, bytes);
      return Array.from(bytes);
    };
    // the same bytes with bit 31 of the count set: the rows need both chunks' flags at call 1
    await expectChunkFlags(count, region.dataPtr + BigInt(flagsAt), T, recv, "rank 0's payloads of chunk 1 have not arrived");
    for (const t of [x, ids, w, region, count, state, combineIndex, errors, dataDst, countDst]) t.dispose();
  });

  it('epDispatch: the send then the receive, with one shape (one rank on the CPU)', async () => {
    const seed = freshSeed('cpu epDispatch');
    const r = rng(seed);
    const T = 9, H = 16, K = 2, E = 4, M = 12, rows = M * K;
    const b = native();
    const x = fromArray(Array.from({ length: T * H }, () => r() * 4 - 2), { shape: [T, H], dtype: 'bf16', device: 'cpu' });
    const ids = fromArray(Array.from({ length: T * K }, (_, p) => (Math.floor(p / K) + (p % K)) % E), { shape: [T, K], dtype: 'i32', device: 'cpu' });
    const w = fromArray(Array.from({ length: T * K }, () => r()), { shape: [T, K], device: 'cpu' });
    const slot = 32 + 32, regionBytes = M * slot + 16;
    const u8 = (n: number) => fromArray(new Uint8Array(n), { shape: [n], dtype: 'u8', device: 'cpu' });
    const table = (p: bigint) => fromArray(new BigUint64Array([p]), { shape: [1], dtype: 'i64', device: 'cpu' });
    const shape = [1, 0, E, K, H, M, 0, 0] as const;
    const run = (fused: boolean) => {
      const region = u8(regionBytes), count = u8(8), state = u8(32), combineIndex = u8(4 * T * K), errors = u8(4);
      const out = { tokens: u8(2 * rows * H), counts: u8(4 * E), offsets: u8(4 * (E + 1)), source: u8(4 * rows), rowIndex: u8(4 * M * K), one: [u8(4), u8(4), u8(4)], recvCounts: u8(4), status: u8(8) };
      const dataDst = table(region.dataPtr), countDst = table(count.dataPtr);
      const send = [x.dataPtr, ids.dataPtr, w.dataPtr, T, dataDst.dataPtr, countDst.dataPtr, state.dataPtr, state.dataPtr + 4n, 1, combineIndex.dataPtr, errors.dataPtr,
        0n, 0n, 0n, 0n, 0n] as const;
      const recv = [region.dataPtr, count.dataPtr, state.dataPtr, 1e9, out.status.dataPtr, out.recvCounts.dataPtr, 1, 0, rows, false, out.tokens.dataPtr,
        out.counts.dataPtr, out.offsets.dataPtr, out.source.dataPtr, out.rowIndex.dataPtr, out.one[0].dataPtr, out.one[1].dataPtr, out.one[2].dataPtr, 0n, 0n, 0n] as const;
      if (fused) {
        b.epDispatch(-1, 0n, ...shape, ...send, ...recv, state.dataPtr + 12n);
      } else {
        b.epDispatchSend(-1, 0n, ...shape, ...send);
        b.epDispatchRecv(-1, 0n, ...shape, ...recv);
      }
      const bytes = (t: Tensor) => {
        const a = new Uint8Array(t.byteLength);
        b.hostRead(t.dataPtr, a);
        return Array.from(a);
      };
      const got = [out.tokens, out.counts, out.offsets, out.source, out.rowIndex, ...out.one, out.recvCounts, combineIndex, state].map(bytes);
      for (const t of [region, count, state, combineIndex, errors, dataDst, countDst, ...Object.values(out).flat()]) t.dispose();
      return got;
    };
    const want = run(false);
    expect(want[0].some((v) => v !== 0)).toBe(true);
    expect(run(true)).toEqual(want);
    // the send and the receive must name one call-number word
    const state = u8(32), other = u8(8);
    await expectCode(
      () => b.epDispatch(-1, 0n, ...shape, x.dataPtr, ids.dataPtr, w.dataPtr, T, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr + 4n, 1,
        state.dataPtr, state.dataPtr, 0n, 0n, 0n, 0n, 0n, state.dataPtr, state.dataPtr, other.dataPtr, 1e9, state.dataPtr, state.dataPtr, 1, 0, rows, false,
        state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, 0n, 0n, 0n, state.dataPtr + 12n),
      'E_ARGUMENT', 'share the call number',
    );
    // a receive's own rows come only from an overlapped send of x (a device's side stream)
    await expectCode(
      () => b.epDispatchRecv(-1, 0n, ...shape, state.dataPtr, state.dataPtr, state.dataPtr, 1e9, state.dataPtr, state.dataPtr, 1, 0, rows, false,
        state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, state.dataPtr, 0n, 0n, x.dataPtr),
      'E_ARGUMENT', 'own rows',
    );
    for (const t of [x, ids, w, state, other]) t.dispose();
  });

  it('a combine count word with "rows follow": the sums once every used chunk flag carries the call; E_COMM naming a chunk that does not', async () => {
    // one rank, exact combine, k = 2, hidden 16, 70 slots (two chunks of 64, the second partly
    // used): combineSend fills the region, combineRecv sums it; host memory throughout
    const seed = freshSeed('cpu combine chunk flags');
    const r = rng(seed);
    const T = 70, H = 16, K = 2, E = 2, M = 70, rows = M * K;
    const b = native();
    const u8 = (n: number) => fromArray(new Uint8Array(n), { shape: [n], dtype: 'u8', device: 'cpu' });
    const i32 = (v: number[]) => fromArray(v, { shape: [v.length], dtype: 'i32', device: 'cpu' });
    const y = fromArray(Array.from({ length: rows * H }, () => r() * 4 - 2), { shape: [rows, H], dtype: 'bf16', device: 'cpu' });
    // slot j's pair kk: row 2j + kk, or none for a few pairs; token t sits in slot t
    const rowIndex = i32(Array.from({ length: rows }, (_, p) => (p % 7 === 3 ? -1 : p)));
    const combineIndex = i32(Array.from({ length: T * K }, (_, p) => p));
    const w = fromArray(Array.from({ length: T * K }, () => r()), { shape: [T * K], device: 'cpu' });
    const rowsAt = Math.ceil((4 * M * K) / 16) * 16, flagsAt = Math.ceil((rowsAt + rows * 2 * H) / 16) * 16;
    const region = u8(flagsAt + 16), count = u8(8), state = u8(32), recvCounts = i32([T]), dispatchRegion = u8(16);
    const table = (p: bigint) => fromArray(new BigUint64Array([p]), { shape: [1], dtype: 'i64', device: 'cpu' });
    const dataDst = table(region.dataPtr), countDst = table(count.dataPtr);
    const shape = [1, 0, E, K, H, M, 0, 0] as const;
    b.hostWrite(state.dataPtr, new Uint32Array([1]));  // the call number
    b.epCombineSend(-1, 0n, ...shape, y.dataPtr, rows, dispatchRegion.dataPtr, rowIndex.dataPtr, recvCounts.dataPtr, dataDst.dataPtr, countDst.dataPtr,
      state.dataPtr, state.dataPtr + 4n, 1, 0n, 0n, 0n);
    const recv = () => {
      const out = u8(4 * T * H), status = u8(8);
      b.epCombineRecv(-1, 0n, ...shape, region.dataPtr, count.dataPtr, state.dataPtr, 1e9, status.dataPtr, combineIndex.dataPtr, w.dataPtr, T, out.dataPtr, 0, 0n, 0n, 0n, 0, 0n);
      const bytes = new Uint8Array(4 * T * H);
      b.hostRead(out.dataPtr, bytes);
      return Array.from(bytes);
    };
    await expectChunkFlags(count, region.dataPtr + BigInt(flagsAt), T, recv, "rank 0's rows of chunk 1 have not arrived");
    // a receive reads its own rows from y only behind an overlapped send (a device's side stream)
    await expectCode(
      () => b.epCombineRecv(-1, 0n, ...shape, region.dataPtr, count.dataPtr, state.dataPtr, 1e9, state.dataPtr + 16n, combineIndex.dataPtr, w.dataPtr, T,
        region.dataPtr, 0, 0n, 0n, y.dataPtr, rows, rowIndex.dataPtr),
      'E_ARGUMENT', 'own rows of a combine',
    );
    for (const t of [y, rowIndex, combineIndex, w, region, count, state, recvCounts, dispatchRegion, dataDst, countDst]) t.dispose();
  });
});

describe('payload error', () => {
  it('fp8 and nvfp4 rows are within the stated bounds; nvfp4 moves about 3.55x fewer bytes than bf16', async () => {
    const seed = freshSeed('ep payload error');
    const r = rng(seed);
    const H = 512;
    // rows of mixed magnitudes, so that block scales differ
    const row = Array.from({ length: H }, (_, i) => bf16((r() - 0.5) * (i % 128 < 64 ? 1 : 300)));
    const fp8 = await decoded('fp8', row);
    const fp4 = await decoded('nvfp4', row);
    for (let b = 0; b < H / 128; b++) {
      const blk = row.slice(b * 128, (b + 1) * 128);
      const s = Math.max(...blk.map(Math.abs)) / 448;
      for (let i = b * 128; i < (b + 1) * 128; i++) {
        expect(Math.abs(fp8[i] - row[i]), `fp8 ${i}`).toBeLessThanOrEqual(2 ** -4 * Math.abs(row[i]) + 2 ** -10 * s + 2 ** -9 * Math.abs(fp8[i]));
      }
    }
    for (let b = 0; b < H / 16; b++) {
      const amax = Math.max(...row.slice(b * 16, (b + 1) * 16).map(Math.abs));
      for (let i = b * 16; i < (b + 1) * 16; i++) {
        expect(Math.abs(fp4[i] - row[i]), `nvfp4 ${i}`).toBeLessThanOrEqual((amax / 6) * (1 + 2 ** -4) + 2 ** -9 * Math.abs(fp4[i]));
      }
    }
    const [pg] = await group(1);
    const sizes: Record<string, number> = {};
    for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
      const [b] = await buffers([pg], { maxTokensPerRank: 2, hidden: 7168, topK: 8, numExperts: 8, payload });
      sizes[payload] = b.bytes.payload;
      expect(b.bytes.slot).toBe(Math.ceil(b.bytes.payload / 16) * 16 + 80);
      // two slots, then one chunk flag on 16 bytes
      expect(b.bytes.dispatch).toBe(2 * b.bytes.slot + 16);
      // 16 valid flags, 16 rows, one chunk flag on 16 bytes
      expect(b.bytes.combine).toBe(64 + 2 * 8 * 7168 * 2 + 16);
      expect(b.bytes.total).toBeGreaterThan(2 * (b.bytes.dispatch + b.bytes.combine));
    }
    expect(sizes).toEqual({ bf16: 14336, fp8: 7168 + 4 * 56, nvfp4: 3584 + 448 + 4 });
    expect(sizes.bf16 / sizes.nvfp4).toBeGreaterThan(3.5);
  });
});

// nvlink ranks of one process enqueue their work from one thread: a rank's receive (a kernel that
// waits for every rank's send) must not be queued before the other ranks' sends, or any host call
// that waits for the device in between (a kernel's first load, an allocation) deadlocks.
describe('the send gate of nvlink ranks in one process', () => {
  it('no rank passes before every rank has arrived; the last passes at once; calls are separate', async () => {
    const gate = new SendGate(3);
    const passed: string[] = [];
    const never = () => new Error('timeout');
    const p0 = gate.arrive(0, 'dispatch 1', 10_000, never).then(() => passed.push('r0'));
    const p2 = gate.arrive(2, 'dispatch 1', 10_000, never).then(() => passed.push('r2'));
    const other = gate.arrive(0, 'combine 1', 10_000, never).then(() => passed.push('combine r0'));
    await new Promise((r) => setTimeout(r, 20));
    expect(passed).toEqual([]);
    expect(gate.missing('dispatch 1')).toEqual([1]);
    await gate.arrive(1, 'dispatch 1', 10_000, never);
    await Promise.all([p0, p2]);
    expect(passed.sort()).toEqual(['r0', 'r2']);
    expect(gate.missing('dispatch 1')).toEqual([0, 1, 2]);
    await Promise.all([gate.arrive(1, 'combine 1', 10_000, never), gate.arrive(2, 'combine 1', 10_000, never), other]);
    expect(passed).toContain('combine r0');
  });

  it('a rank that never arrives: the others fail after the timeout, naming it; a late arrival passes', async () => {
    const gate = new SendGate(3);
    const t0 = Date.now();
    const r = await Promise.allSettled([0, 2].map((rank) => gate.arrive(rank, 'dispatch 4', 150, (missing) => new MoeError('E_TIMEOUT', `waited for rank ${missing}`))));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    for (const s of r) expect(((s as PromiseRejectedResult).reason as MoeError).message).toBe('waited for rank 1');
    // its send follows the others': nothing is left to wait for
    await gate.arrive(1, 'dispatch 4', 150, () => new Error('unexpected'));
  });
});

describe('errors', () => {
  it('bad options and arguments name the argument; nothing is sent', async () => {
    const pgs = await group(2);
    const base = { maxTokensPerRank: 4, hidden: 16, topK: 2, numExperts: 4 };
    await expectCode(() => createEpBuffer(pgs[0], { ...base, numExperts: 5 }), 'E_ARGUMENT', 'numExperts');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, topK: 5 }), 'E_ARGUMENT', 'topK');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, hidden: 24, payload: 'nvfp4' }), 'E_ARGUMENT', 'multiple of 16');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, payload: 'fp4' as never }), 'E_ARGUMENT', 'payload');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, transport: 'rdma' as never }), 'E_ARGUMENT', 'transport');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, combine: 'sum' as never }), 'E_ARGUMENT', 'options.combine');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, gather: 'yes' as never }), 'E_ARGUMENT', 'options.gather');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, transport: 'nvlink' }), 'E_DEVICE', 'CUDA ranks');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, sms: 8 }), 'E_ARGUMENT', 'sms');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, maxTokensPerExpert: 2 }), 'E_ARGUMENT', 'masked');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, layout: 'masked', align: 4 }), 'E_ARGUMENT', 'align');
    await expectCode(() => createEpBuffer(pgs[0], { ...base, extra: 1 } as never), 'E_ARGUMENT', 'extra');
    await expectCode(() => createEpBuffer({} as never, base), 'E_ARGUMENT', 'group');

    const bs = await buffers(pgs, base);
    const x = cpuArray(new Array(5 * 16).fill(1), [5, 16], 'bf16');
    const ids = cpuArray(new Array(10).fill(0), [5, 2], 'i32');
    const w = cpuArray(new Array(10).fill(1), [5, 2], 'f32');
    await expectCode(() => bs[0].dispatch(x, { ids, weights: w }), 'E_SHAPE', 'maxTokensPerRank');
    const x2 = cpuArray(new Array(2 * 16).fill(1), [2, 16], 'bf16');
    await expectCode(() => bs[0].dispatch(x2, { ids, weights: w }), 'E_SHAPE', 'routing.ids');
    await expectCode(() => bs[0].dispatch(x2, { ids: cpuArray([0, 1, 2, 3], [2, 2], 'f32') as never, weights: w }), 'E_DTYPE', 'routing.ids');
    await expectCode(() => bs[0].dispatch(cpuArray(new Array(32).fill(1), [2, 16], 'f32') as never, { ids, weights: w }), 'E_DTYPE', 'x');
    await expectCode(() => bs[0].dispatch(cpuArray(new Array(30).fill(1), [2, 15], 'bf16'), { ids, weights: w }), 'E_SHAPE', 'hidden');
    await expectCode(() => bs[0].combine(cpuArray([1], [1, 1], 'bf16'), { epoch: 1, tokens: 1 }), 'E_ARGUMENT', 'handle');
    // a working round after the refusals: nothing was sent
    const ok = inputs(7, [2, 3], 16, 4, 2);
    await round({ R: 2, E: 4, H: 16, K: 2, maxT: 4, payload: 'bf16', form: 'contiguous', inputs: ok }, bs);
  });

  it('moeForwardEp checks its arguments before anything is sent', async () => {
    const pgs = await group(2);
    const spec: Spec = { E: 4, H: 32, I: 16, Is: 0, k: 2, scoring: 'softmax' };
    const bs = await buffers(pgs, { maxTokensPerRank: 3, hidden: 32, topK: 2, numExperts: 4 });
    const pkg = await import('../lib');
    const layer = model.makeLayer(5, spec);
    const mine = await model.layerOn(pkg, layer, 0, 2);
    const all = await model.layerOn(pkg, layer, 0, 4);
    const x = cpuArray(new Array(2 * 32).fill(0.5), [2, 32], 'bf16');
    await expectCode(() => pkg.moeForwardEp(x, mine.router, mine.experts, {} as never), 'E_ARGUMENT', 'options.ep');
    await expectCode(() => pkg.moeForwardEp(x, mine.router, all.experts, { ep: bs[0] }), 'E_SHAPE', 'experts.w13');
    await expectCode(() => pkg.moeForwardEp(x, { ...(mine.router as object), k: 1 } as never, mine.experts, { ep: bs[0] }), 'E_ARGUMENT', 'router.k');
    await expectCode(() => pkg.moeForwardEp(cpuArray(new Array(4 * 32).fill(0.5), [4, 32], 'bf16'), mine.router, mine.experts, { ep: bs[0] }), 'E_SHAPE', 'maxTokensPerRank');
    await expectCode(() => pkg.moeForwardEp(cpuArray(new Array(2 * 16).fill(0.5), [2, 16], 'bf16'), mine.router, mine.experts, { ep: bs[0] }), 'E_SHAPE', 'hidden');
    bs[1].dispose();
    await expectCode(() => pkg.moeForwardEp(x, mine.router, mine.experts, { ep: bs[1] }), 'E_DISPOSED', 'EpBuffer');
  });

  it('ranks with different options: E_ARGUMENT naming the option', async () => {
    const pgs = await group(2);
    const r = await Promise.allSettled([
      createEpBuffer(pgs[0], { maxTokensPerRank: 4, hidden: 16, topK: 2, numExperts: 4 }),
      createEpBuffer(pgs[1], { maxTokensPerRank: 4, hidden: 16, topK: 2, numExperts: 4, payload: 'fp8' }),
    ]);
    for (const s of r) {
      expect(s.status).toBe('rejected');
      const e = (s as PromiseRejectedResult).reason as MoeError;
      expect(e.code).toBe('E_ARGUMENT');
      expect(e.message).toMatch(/options\.payload: rank [01] has "(bf16|fp8)", rank [01] has "(bf16|fp8)"/);
    }
  });

  it('ranks with different combine forms: E_ARGUMENT naming options.combine (the regions would be read as the other form)', async () => {
    const pgs = await group(2);
    const r = await Promise.allSettled([
      createEpBuffer(pgs[0], { maxTokensPerRank: 4, hidden: 16, topK: 2, numExperts: 4, combine: 'reduced' }),
      createEpBuffer(pgs[1], { maxTokensPerRank: 4, hidden: 16, topK: 2, numExperts: 4 }),
    ]);
    for (const s of r) {
      expect(s.status).toBe('rejected');
      const e = (s as PromiseRejectedResult).reason as MoeError;
      expect(e.code).toBe('E_ARGUMENT');
      expect(e.message).toMatch(/options\.combine: rank [01] has "(exact|reduced)", rank [01] has "(exact|reduced)"/);
    }
  });

  it('a combine with a stale handle, a call in flight, y of the wrong shape', async () => {
    const R = 2, H = 16;
    const bs = await buffers(await group(R), { maxTokensPerRank: 4, hidden: H, topK: 2, numExperts: 4 });
    const inp = inputs(11, [2, 2], H, 4, 2);
    const args = (r: number) => [cpuArray(inp[r].x, [2, H], 'bf16'), { ids: cpuArray(inp[r].ids, [2, 2], 'i32'), weights: cpuArray(inp[r].weights, [2, 2], 'f32') }] as const;
    const first = bs[0].dispatch(...args(0));
    await expectCode(() => bs[0].dispatch(...args(0)), 'E_ARGUMENT', 'in flight');
    const d = await Promise.all([first, bs[1].dispatch(...args(1))]);
    await expectCode(() => bs[0].combine(cpuArray(new Array(16).fill(0), [1, H], 'bf16'), d[0].handle), 'E_SHAPE', 'y');
    await Promise.all(bs.map((b, r) => b.combine(d[r].tokens, d[r].handle)));
    await expectCode(() => bs[0].combine(d[0].tokens, d[0].handle), 'E_ARGUMENT', 'handle');
  });

  it('a rank that never dispatches: the others get E_TIMEOUT within the timeout; the buffer is then refused', async () => {
    const pgs = await group(3, 400);
    const bs = await buffers(pgs, { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 3 });
    const inp = inputs(5, [2, 2, 2], 16, 3, 1);
    const t0 = Date.now();
    const r = await Promise.allSettled([0, 1].map((i) => bs[i].dispatch(cpuArray(inp[i].x, [2, 16], 'bf16'), { ids: cpuArray(inp[i].ids, [2, 1], 'i32'), weights: cpuArray(inp[i].weights, [2, 1], 'f32') })));
    expect(Date.now() - t0).toBeLessThan(5000);
    for (const s of r) expect(((s as PromiseRejectedResult).reason as MoeError).code).toBe('E_TIMEOUT');
    await expectCode(() => bs[0].dispatch(cpuArray(inp[0].x, [2, 16], 'bf16'), { ids: cpuArray(inp[0].ids, [2, 1], 'i32'), weights: cpuArray(inp[0].weights, [2, 1], 'f32') }), 'E_COMM', 'earlier call');
  });
});

// ---- moeForwardEp on rank processes ------------------------------------------------------

function launch(n: number, env: Record<string, string>, backend: 'cpu' | 'cuda' = 'cpu'): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return launchRanks(n, { MOE_KERNELS_BACKEND: backend, ...env }, 90_000);
}

/** Each rank's printed output is its tokens' slice of `want` (the ranks' tokens concatenated). */
function expectRankOutputs(lines: ReturnType<typeof rankLines>, want: number[], tokens: number[], H: number): void {
  let at = 0;
  tokens.forEach((T, r) => {
    const line = lines.get(r);
    expect(line?.code, String(line?.message)).toBeUndefined();
    expect(line?.out, `rank ${r}`).toEqual(want.slice(at, at + T * H));
    at += T * H;
  });
}

describe('moeForwardEp on rank processes', () => {
  const cases = [[2, 'bf16', 'contiguous', false], [4, 'bf16', 'masked', false], [2, 'nvfp4', 'contiguous', false], [4, 'fp8', 'masked', false],
    [8, 'nvfp4', 'masked', false], [2, 'bf16', 'contiguous', true], [4, 'fp8', 'masked', true]] as const;
  for (const [R, payload, form, gather] of cases) {
    it(`${R} ranks, ${payload} payload, ${form}${gather ? ', gather' : ''}: the single-device block's bits`, async () => {
      const seed = freshSeed(`moeForwardEp ${R} ${payload}${gather ? ' gather' : ''}`);
      const spec: Spec & { M?: number } = { E: 2 * R, H: 64, I: 32, Is: R === 2 && payload === 'bf16' ? 32 : 0, k: 2, scoring: R === 2 ? 'softmax' : 'sigmoid', ...(form === 'masked' ? { M: 3 } : {}) };
      const tokens = Array.from({ length: R }, (_, r) => (r === 1 ? 0 : 2 + ((seed >>> r) % 3)));
      const run = await launch(R, { EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens), EP_PAYLOAD: payload, EP_LAYOUT: form, EP_GATHER: gather ? '1' : '0' });
      expect(run.status, run.stdout + run.stderr).toBe(0);
      const lines = rankLines(run.stdout);

      const pkg = await import('../lib');
      const layer = model.makeLayer(seed, spec);
      const { router, experts } = await model.layerOn(pkg, layer, 0, spec.E);
      const xs: number[] = [];
      for (let r = 0; r < R; r++) xs.push(...model.tokensOf(seed, r, tokens[r], spec.H));
      const Tall = xs.length / spec.H;
      const x = cpuArray(xs, [Tall, spec.H], 'bf16');
      let want: number[];
      const maskedOptions = form === 'masked' ? { maxTokensPerExpert: spec.M as number } : {};
      if (payload === 'bf16') {
        want = Array.from(await moeForward(x, router, experts, maskedOptions).toArray());
      } else {
        // the block with the experts' inputs as the payload delivers them: routing from x itself
        const r0 = router as unknown as { weight: Tensor<'bf16'>; k: number; scoring: 'softmax' | 'sigmoid'; correctionBias?: Tensor<'f32'>; scale?: number };
        const ids = routeTopK(routerLogits(x, r0.weight), { k: r0.k, scoring: r0.scoring, ...(r0.correctionBias ? { correctionBias: r0.correctionBias, scale: r0.scale } : {}) });
        const xq: number[] = [];
        for (let t = 0; t < Tall; t++) xq.push(...(await decoded(payload, xs.slice(t * spec.H, (t + 1) * spec.H))));
        const layout = expertLayout(ids.ids, spec.E, maskedOptions);
        const ex = experts as unknown as { w13: never; w2: never };
        const act = groupedGemmNvfp4(permute(cpuArray(xq, [Tall, spec.H], 'bf16'), layout), ex.w13, layout, { epilogue: 'swiglu' });
        want = Array.from(await unpermute(groupedGemmNvfp4(act, ex.w2, layout), layout, ids.weights).toArray());
      }
      expectRankOutputs(lines, want, tokens, spec.H);
    });
  }

  it('4 ranks, combine "reduced": the single-device block with each rank\'s partial sum rounded to bf16', async () => {
    const R = 4;
    const seed = freshSeed('moeForwardEp reduced');
    const spec: Spec = { E: 2 * R, H: 64, I: 32, Is: 0, k: 3, scoring: 'softmax' };
    const tokens = Array.from({ length: R }, (_, r) => (r === 2 ? 0 : 2 + ((seed >>> r) % 3)));
    const run = await launch(R, { EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens), EP_COMBINE: 'reduced' });
    expect(run.status, run.stdout + run.stderr).toBe(0);
    const lines = rankLines(run.stdout);
    const pkg = await import('../lib');
    const { router, experts } = await model.layerOn(pkg, model.makeLayer(seed, spec), 0, spec.E);
    const xs: number[] = [];
    for (let r = 0; r < R; r++) xs.push(...model.tokensOf(seed, r, tokens[r], spec.H));
    const Tall = xs.length / spec.H;
    const x = cpuArray(xs, [Tall, spec.H], 'bf16');
    const r0 = router as unknown as { weight: Tensor<'bf16'>; k: number; scoring: 'softmax' | 'sigmoid' };
    const routing = routeTopK(routerLogits(x, r0.weight), { k: r0.k, scoring: r0.scoring });
    const layout = expertLayout(routing.ids, spec.E);
    const ex = experts as unknown as { w13: never; w2: never };
    const down = groupedGemmNvfp4(groupedGemmNvfp4(permute(x, layout), ex.w13, layout, { epilogue: 'swiglu' }), ex.w2, layout);
    const sumWith = async (w: number[]) => {
      const out = fromArray(new Float32Array(Tall * spec.H), { shape: [Tall, spec.H], device: 'cpu' }) as Tensor<'f32'>;
      return Array.from(await unpermute(down, layout, cpuArray(w, [Tall, spec.k], 'f32'), { out }).toArray());
    };
    const ids = Array.from(await routing.ids.toArray());
    const { out } = await reducedSums(ids, Array.from(await routing.weights.toArray()), spec.E, R, spec.k, spec.H, sumWith);
    expectRankOutputs(lines, out.map(bf16), tokens, spec.H);
  });
});

// ---- the nvlink transport: CUDA ranks of one process ----------------------------------------
// Ranks on one device test the kernels on a one-GPU host (each rank with its own stream); with
// two GPUs, ranks on cuda:0 and cuda:1 write each other's memory through peer access. The oracle
// is the same single-device path on the CPU: dispatch and combine move and sum bytes exactly.

describe.skipIf(!hasCuda)(`nvlink transport${hasCuda ? '' : ` (skipped: ${cudaReason})`}`, () => {
  /** Rank layouts to run: two ranks on cuda:0, and on cuda:0 / cuda:1 where there are two GPUs. */
  const pairs = (): Device[][] => (cudaDevices().length >= 2 ? [['cuda:0', 'cuda:0'], ['cuda:0', 'cuda:1']] : [['cuda:0', 'cuda:0']]);

  for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
    for (const form of ['contiguous', 'masked'] as const) {
      it(`${payload}, ${form}: random routing, bit for bit against the CPU oracle`, async () => {
        for (const devs of pairs()) {
          const seed = freshSeed(`nvlink ${payload} ${form} ${devs.join(',')}`);
          const E = 8, K = 3, H = 4096 + 64;
          const T = [5 + (seed % 4), 3 + ((seed >>> 3) % 6)];
          await round({ R: 2, E, H, K, maxT: 9, payload, form, out: 'f32', devices: devs, ...(form === 'contiguous' ? { align: 8 } : { M: 4 }), inputs: inputs(seed, T, H, E, K) });
          // a hidden size off the 16-byte copies (and, for fp8, a partial 128-block); nvfp4 needs 16 | hidden
          await round({ R: 2, E, H: 36, K: 2, maxT: 9, payload: payload === 'nvfp4' ? 'bf16' : payload, form, out: 'bf16', devices: devs, inputs: inputs(seed + 1, T, 36, E, 2) });
        }
      });
    }
  }

  it('combine "reduced": bit for bit against the CPU oracle, with 16-byte rows and without, both layouts, large receives', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink reduced ${devs.join(',')}`);
      const E = 8, K = 5;
      const T = [5 + (seed % 4), 3 + ((seed >>> 3) % 6)];
      await round({ R: 2, E, H: 4096 + 64, K, maxT: 9, payload: 'bf16', form: 'contiguous', combine: 'reduced', out: 'f32', devices: devs, inputs: inputs(seed, T, 4096 + 64, E, K) });
      await round({ R: 2, E, H: 4096 + 64, K, maxT: 9, payload: 'nvfp4', form: 'masked', M: 4, combine: 'reduced', out: 'bf16', devices: devs, inputs: inputs(seed + 1, T, 4096 + 64, E, K) });
      await round({ R: 2, E, H: 36, K: 3, maxT: 9, payload: 'fp8', form: 'masked', M: 5, combine: 'reduced', out: 'f32', devices: devs, inputs: inputs(seed + 2, T, 36, E, 3) });
      const big = [100 + (seed % 30), 70 + ((seed >>> 4) % 60)];
      await round({ R: 2, E: 6, H: 64, K: 3, maxT: 700, payload: 'bf16', form: 'contiguous', combine: 'reduced', out: 'f32', devices: devs, inputs: inputs(seed + 3, big, 64, 6, 3) });
    }
  });

  it('a send over 1024 tokens (slots scanned by a launch of their own) beside one of 1024 (scanned by the send itself), and one over 4096', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink scan ${devs.join(',')}`);
      const E = 6, K = 3, H = 64;
      await round({ R: 2, E, H, K, maxT: 1025, payload: 'bf16', form: 'contiguous', out: 'f32', devices: devs, inputs: inputs(seed, [1025, 1024], H, E, K) });
      await round({ R: 2, E, H, K, maxT: 1025, payload: 'nvfp4', form: 'contiguous', combine: 'reduced', out: 'bf16', devices: devs, inputs: inputs(seed + 1, [1024, 1025], H, E, K) });
      // over 4096 tokens: the slots kernel's second round; 200 local experts: the layout scan's
      // groups of tiles (5 groups of 201 experts)
      const many = [4097 + (seed % 200), 4096];
      await round({ R: 2, E: 400, H: 32, K, maxT: 4300, payload: 'bf16', form: 'contiguous', align: 8, out: 'f32', devices: devs, inputs: inputs(seed + 2, many, 32, 400, K) });
    }
  });

  it('overlapped sends (over 1024 tokens, one rank per device): payloads and combine rows behind chunk flags, every payload, rows of two parts, partial chunks', async () => {
    // which sends took the side stream: the send's side-stream argument, fifth from its end
    const send = vi.spyOn(native(), 'epDispatchSend');
    const overlapped = () => send.mock.calls.map((a) => a[a.length - 5] !== 0n);
    // and which combine sends did: their side-stream argument, third from the end
    const combine = vi.spyOn(native(), 'epCombineSend');
    const combined = () => combine.mock.calls.map((a) => a[a.length - 3] !== 0n);
    // and which combine receives read the rank's own pairs from y: their ownY, third from the end
    const receive = vi.spyOn(native(), 'epCombineRecv');
    const ownRead = () => receive.mock.calls.map((a) => a[a.length - 3] !== 0n);
    try {
      for (const devs of pairs()) {
        const seed = freshSeed(`nvlink overlap ${devs.join(',')}`);
        const E = 8;
        const alone = devs[0] !== devs[1];
        // 1025..1087 tokens: the last chunk of 64 slots partly filled on both ranks
        const T = [1025 + (seed % 63), 1025 + ((seed >>> 6) % 63)];
        send.mockClear();
        combine.mockClear();
        receive.mockClear();
        // a bf16 row of 4224 bytes: two 4 KB parts per slot, each counted on its chunk
        await round({ R: 2, E, H: 2112, K: 1, maxT: 1100, payload: 'bf16', form: 'contiguous', align: 8, out: 'f32', devices: devs, inputs: inputs(seed, T, 2112, E, 1) });
        await round({ R: 2, E, H: 64, K: 3, maxT: 1100, payload: 'fp8', form: 'masked', M: 300, out: 'bf16', devices: devs, inputs: inputs(seed + 1, T, 64, E, 3) });
        await round({ R: 2, E, H: 64, K: 3, maxT: 1100, payload: 'nvfp4', form: 'contiguous', combine: 'reduced', out: 'f32', devices: devs, inputs: inputs(seed + 2, T, 64, E, 3) });
        // a bf16 row off the 16-byte copies: encoded into the buffer's staging
        await round({ R: 2, E, H: 36, K: 2, maxT: 1100, payload: 'bf16', form: 'contiguous', out: 'bf16', devices: devs, inputs: inputs(seed + 3, T, 36, E, 2) });
        expect(overlapped(), `${devs.join(',')}: every send of over 1024 tokens overlaps when its rank is alone on its device`).toEqual(new Array(8).fill(alone));
        expect(combined(), `${devs.join(',')}: combine`).toEqual(new Array(8).fill(alone));
        // an exact combine reads y's own rows in place where they are 16-byte pieces (not hidden 36)
        expect(ownRead(), `${devs.join(',')}: own pairs from y`).toEqual([...new Array(4).fill(alone), false, false, false, false]);
        // at most 1024 tokens, or a buffer sized for at most 1024, never overlaps
        send.mockClear();
        combine.mockClear();
        await round({ R: 2, E, H: 64, K: 3, maxT: 1100, payload: 'bf16', form: 'contiguous', out: 'f32', devices: devs, inputs: inputs(seed + 4, [1024, 1000], 64, E, 3) });
        await round({ R: 2, E, H: 64, K: 3, maxT: 1024, payload: 'fp8', form: 'contiguous', out: 'f32', devices: devs, inputs: inputs(seed + 5, [1024, 1024], 64, E, 3) });
        expect(overlapped(), devs.join(',')).toEqual(new Array(4).fill(false));
        expect(combined(), `${devs.join(',')}: combine`).toEqual(new Array(4).fill(false));
      }
    } finally {
      send.mockRestore();
      combine.mockRestore();
      receive.mockRestore();
    }
  });

  it('gather (a row per received slot): bit for bit against the CPU oracle, decode-size, overlapped and tiled receives, rows off 16 bytes', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink gather ${devs.join(',')}`);
      const E = 8, K = 3;
      const T = [5 + (seed % 4), 3 + ((seed >>> 3) % 6)];
      await round({ R: 2, E, H: 4096 + 64, K, maxT: 9, payload: 'bf16', form: 'contiguous', align: 8, gather: true, out: 'f32', devices: devs, inputs: inputs(seed, T, 4096 + 64, E, K) });
      await round({ R: 2, E, H: 4096 + 64, K, maxT: 9, payload: 'nvfp4', form: 'masked', M: 4, gather: true, combine: 'reduced', out: 'bf16', devices: devs, inputs: inputs(seed + 1, T, 4096 + 64, E, K) });
      await round({ R: 2, E, H: 36, K: 2, maxT: 9, payload: 'fp8', form: 'contiguous', gather: true, out: 'f32', devices: devs, inputs: inputs(seed + 2, T, 36, E, 2) });
      // x off 16 bytes: the payload encodes read element by element, with the same bytes
      for (const payload of ['fp8', 'nvfp4'] as const) {
        await round({ R: 2, E, H: 256, K, maxT: 9, payload, form: 'contiguous', unaligned: true, out: 'f32', devices: devs, inputs: inputs(seed + 5, T, 256, E, K) });
      }
      // over 1024 tokens (overlapped where a rank is alone on its device), and the tiled layout
      const big = [1025 + (seed % 63), 1025 + ((seed >>> 6) % 63)];
      await round({ R: 2, E, H: 2112, K: 1, maxT: 1100, payload: 'bf16', form: 'contiguous', gather: true, out: 'f32', devices: devs, inputs: inputs(seed + 3, big, 2112, E, 1) });
      await round({ R: 2, E, H: 64, K: 3, maxT: 1100, payload: 'fp8', form: 'masked', M: 300, gather: true, out: 'bf16', devices: devs, inputs: inputs(seed + 4, big, 64, E, 3) });
    }
  });

  it('larger receives: the one-launch layout over many warps, and the tiled one (over 4096 pairs) across tiles', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink tiles ${devs.join(',')}`);
      const E = 6, K = 3, H = 64;
      const T = [100 + (seed % 30), 70 + ((seed >>> 4) % 60)];
      // maxT 130: 780 pairs, the one-launch layout; maxT 700: 4200 pairs, tiles of 64 slots
      for (const maxT of [130, 700]) {
        await round({ R: 2, E, H, K, maxT, payload: 'bf16', form: 'contiguous', align: 4, out: 'f32', devices: devs, inputs: inputs(seed, T, H, E, K) });
        // about 85 pairs per expert against 60 rows: drops, in the later warps' ranges and tiles
        await round({ R: 2, E, H, K, maxT, payload: 'fp8', form: 'masked', M: 60, out: 'bf16', devices: devs, inputs: inputs(seed + 1, T, H, E, K) });
      }
    }
  });

  it('4 ranks on one device; skewed routing with masked overflow; a rank that sends nothing; invalid ids', async () => {
    const seed = freshSeed('nvlink 4 ranks');
    const devs: Device[] = ['cuda:0', 'cuda:0', 'cuda:0', 'cuda:0'];
    const E = 8, K = 2, H = 256;
    await round({ R: 4, E, H, K, maxT: 6, payload: 'bf16', form: 'contiguous', out: 'f32', devices: devs, inputs: inputs(seed, [6, 0, 5, 3], H, E, K) });
    const skewed = inputs(seed + 1, [6, 5, 6, 4], H, E, K, (r) => Math.floor(r() * 2));
    const { dropped } = await round({ R: 4, E, H, K, maxT: 6, payload: 'nvfp4', form: 'masked', M: 5, out: 'f32', devices: devs, inputs: skewed });
    expect(dropped).toEqual([32, 0, 0, 0]);
    const bad = inputs(seed + 2, [4, 3, 2, 1], H, E, K);
    bad[0].ids[1] = -1;
    bad[2].ids[2] = 99;
    await round({ R: 4, E, H, K, maxT: 4, payload: 'fp8', form: 'contiguous', out: 'f32', devices: devs, inputs: bad });
  });

  it('many rounds on one buffer: the call numbers advance without a host barrier', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink rounds ${devs.join(',')}`);
      const E = 4, K = 2, H = 128;
      const pgs = await groupOn(devs);
      const bs = await buffers(pgs, { maxTokensPerRank: 6, hidden: H, topK: K, numExperts: E, layout: 'masked', maxTokensPerExpert: 5, sms: 3 });
      const streams = devs.map((d) => keep(createStream(d)));
      for (let i = 0; i < 6; i++) {
        const T = [(seed + i) % 7, (seed + 3 * i + 1) % 7];
        await round({ R: 2, E, H, K, maxT: 6, payload: 'bf16', form: 'masked', M: 5, out: 'f32', devices: devs, streams, inputs: inputs(seed + i, T, H, E, K) }, bs);
      }
    }
  });

  it('every rank\'s send is enqueued before any rank\'s receive, in dispatch and in combine', async () => {
    for (const devs of [['cuda:0', 'cuda:0', 'cuda:0'] as Device[], ...pairs()]) {
      const seed = freshSeed(`nvlink order ${devs.join(',')}`);
      const R = devs.length, E = 2 * R, K = 2, H = 64;
      const b = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
      const calls: string[] = [];
      const names = ['epDispatchSend', 'epDispatchRecv', 'epCombineSend', 'epCombineRecv'];
      const saved = names.map((n) => b[n]);
      names.forEach((n, i) => {
        b[n] = (...a: unknown[]) => {
          calls.push(n);
          return saved[i](...a);
        };
      });
      try {
        await round({ R, E, H, K, maxT: 4, payload: 'bf16', form: 'contiguous', devices: devs, inputs: inputs(seed, Array.from({ length: R }, (_, r) => 1 + r), H, E, K) });
      } finally {
        names.forEach((n, i) => (b[n] = saved[i]));
      }
      const sends = (op: string) => calls.map((c, i) => (c === op ? i : -1)).filter((i) => i >= 0);
      expect(sends('epDispatchSend').length).toBe(R);
      expect(Math.max(...sends('epDispatchSend'))).toBeLessThan(Math.min(...sends('epDispatchRecv')));
      expect(Math.max(...sends('epCombineSend'))).toBeLessThan(Math.min(...sends('epCombineRecv')));
    }
  });

  it('combine\'s sums wait for the chunk flags of a region whose rows follow; a chunk that never comes is a timeout in status, its tokens add nothing', async () => {
    // one rank, exact combine, k = 2, hidden 64, 70 slots (two chunks of 64), token t in slot t;
    // the region filled by a combine send that does not overlap, then its count word and flags
    // set by hand
    const seed = freshSeed('nvlink combine chunk flags');
    const r = rng(seed);
    const T = 70, H = 64, K = 2, E = 2, M = 70, rows = M * K;
    const dev: Device = 'cuda:0', s = keep(createStream(dev)), b = native(), d = 0;
    const on = <D extends 'u8' | 'i32' | 'i64'>(v: ArrayLike<number> | BigUint64Array, dtype: D, n = v.length) =>
      fromArray(v as never, { shape: [n], dtype, device: dev }) as Tensor<D>;
    const y = fromArray(Array.from({ length: rows * H }, () => r() * 4 - 2), { shape: [rows, H], dtype: 'bf16', device: dev });
    const rowIndex = on(Array.from({ length: rows }, (_, p) => (p % 7 === 3 ? -1 : p)), 'i32');
    const combineIndex = on(Array.from({ length: T * K }, (_, p) => p), 'i32');
    const w = fromArray(Array.from({ length: T * K }, () => r()), { shape: [T * K], device: dev });
    const rowsAt = Math.ceil((4 * M * K) / 16) * 16, flagsAt = Math.ceil((rowsAt + rows * 2 * H) / 16) * 16;
    const region = on(new Uint8Array(flagsAt + 16), 'u8'), count = on(new Uint8Array(8), 'u8'), state = on(new Uint8Array(32), 'u8');
    const recvCounts = on([T], 'i32'), dispatchRegion = on(new Uint8Array(16), 'u8');
    const dataDst = on(new BigUint64Array([region.dataPtr]), 'i64'), countDst = on(new BigUint64Array([count.dataPtr]), 'i64');
    const shape = [1, 0, E, K, H, M, 0, 0] as const;
    b.copyToDevice(d, state.dataPtr, new Uint32Array([1]), 4, s.handle);  // the call number
    b.epCombineSend(d, s.handle, ...shape, y.dataPtr, rows, dispatchRegion.dataPtr, rowIndex.dataPtr, recvCounts.dataPtr, dataDst.dataPtr, countDst.dataPtr,
      state.dataPtr, state.dataPtr + 4n, 4, 0n, 0n, 0n);
    const recv = async (timeoutNs: number) => {
      const out = fromArray(new Float32Array(T * H), { shape: [T, H], device: dev }), status = on(new Int32Array(2), 'i32');
      b.epCombineRecv(d, s.handle, ...shape, region.dataPtr, count.dataPtr, state.dataPtr, timeoutNs, status.dataPtr, combineIndex.dataPtr, w.dataPtr, T,
        out.dataPtr, 0, 0n, 0n, 0n, 0, 0n);
      const got = { out: Array.from(await out.toArray({ stream: s })), status: Array.from(await status.toArray({ stream: s })) };
      out.dispose();
      status.dispose();
      return got;
    };
    const want = await recv(1e9);
    expect(want.status).toEqual([0, 0]);
    expect(want.out.some((v) => v !== 0)).toBe(true);
    const word = (1n << 32n) | BigInt(T);
    expect(Array.from(await count.toArray({ stream: s }))).toEqual(Array.from(new Uint8Array(new BigUint64Array([word]).buffer)));
    b.copyToDevice(d, count.dataPtr, new BigUint64Array([word | 0x80000000n]), 8, s.handle);
    b.copyToDevice(d, region.dataPtr + BigInt(flagsAt), new Uint32Array([1, 1]), 8, s.handle);
    expect(await recv(1e9)).toEqual(want);
    // chunk 1 (slots 64..69) never comes: status names the combine's wait and rank 0
    b.copyToDevice(d, region.dataPtr + BigInt(flagsAt), new Uint32Array([1, 0]), 8, s.handle);
    const t0 = Date.now();
    const late = await recv(2e7);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(late.status).toEqual([2, 0]);
    expect(late.out.slice(0, 64 * H)).toEqual(want.out.slice(0, 64 * H));
    expect(late.out.slice(64 * H)).toEqual(new Array(6 * H).fill(0));
    for (const t of [y, rowIndex, combineIndex, w, region, count, state, recvCounts, dispatchRegion, dataDst, countDst]) t.dispose();
  });

  it('ranks that share a device and a stream are refused', async () => {
    const pgs = await groupOn(['cuda:0', 'cuda:0']);
    const bs = await buffers(pgs, { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2 });
    // the copy kernels default to every SM of the device
    const sms = cudaDevices().find((d) => d.device === 'cuda:0')?.multiprocessors;
    expect(bs.map((b) => [b.transport, b.sms])).toEqual([['nvlink', sms], ['nvlink', sms]]);
    const x = fromArray(new Array(32).fill(1), { shape: [2, 16], dtype: 'bf16', device: 'cuda:0' });
    const ids = fromArray([0, 1], { shape: [2, 1], dtype: 'i32', device: 'cuda:0' });
    const w = fromArray([1, 1], { shape: [2, 1], device: 'cuda:0' });
    await expectCode(() => bs[0].dispatch(x, { ids, weights: w }), 'E_ARGUMENT', 'stream of its own');
    await expectCode(() => createEpBuffer(pgs[0], { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2, transport: 'host' }), 'E_DEVICE', 'host');
  });

  it('a rank that never dispatches: the other gets E_TIMEOUT within the timeout; its device stays usable', async () => {
    const timeoutMs = 1500;
    const pgs = await groupOn(['cuda:0', 'cuda:0'], timeoutMs);
    const bs = await buffers(pgs, { maxTokensPerRank: 2, hidden: 64, topK: 1, numExperts: 2 });
    const s = keep(createStream('cuda:0'));
    const inp = inputs(3, [2], 64, 2, 1)[0];
    const x = fromArray(inp.x, { shape: [2, 64], dtype: 'bf16', device: 'cuda:0' });
    const ids = fromArray(inp.ids, { shape: [2, 1], dtype: 'i32', device: 'cuda:0' });
    const w = fromArray(inp.weights, { shape: [2, 1], device: 'cuda:0' });
    await settle(['cuda:0']);
    const t0 = Date.now();
    await expectCode(() => bs[0].dispatch(x, { ids, weights: w }, { stream: s }), 'E_TIMEOUT', 'waited 1500 ms for rank 1');
    const ms = Date.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(ms).toBeLessThan(timeoutMs + 8000);
    await expectCode(() => bs[0].dispatch(x, { ids, weights: w }, { stream: s }), 'E_COMM', 'earlier call');
    // the stream and the device work on: an op on the same stream, and a new pair of ranks
    const y = convert(x, 'f32', { stream: s });
    expect(Array.from(await y.toArray({ stream: s }))).toEqual(inp.x.map(bf16));
    await round({ R: 2, E: 2, H: 64, K: 1, maxT: 2, payload: 'bf16', form: 'contiguous', devices: ['cuda:0', 'cuda:0'], inputs: inputs(4, [2, 1], 64, 2, 1) });
  });

  it('a decode-size dispatch and combine captured in a CUDA graph, replayed with changing routing', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink graph ${devs.join(',')}`);
      const R = 2, E = 8, K = 2, H = 512, T = 4;
      const pgs = await groupOn(devs);
      const bs = await buffers(pgs, { maxTokensPerRank: T, hidden: H, topK: K, numExperts: E, layout: 'masked', maxTokensPerExpert: R * T, sms: 4 });
      const streams = devs.map((d) => keep(createStream(d)));
      const xs = devs.map((d) => fromArray(new Float32Array(T * H), { shape: [T, H], dtype: 'bf16', device: d }));
      const ids = devs.map((d) => fromArray(new Int32Array(T * K), { shape: [T, K], dtype: 'i32', device: d }));
      const ws = devs.map((d) => fromArray(new Float32Array(T * K), { shape: [T, K], device: d }));
      const outs = devs.map((d) => fromArray(new Float32Array(T * H), { shape: [T, H], device: d }));
      await settle(devs);
      // the experts return their input: combine gives sum_k w_k * bf16 row, in slot order
      const graphs = bs.map((b, r) => captureGraph(streams[r], () => {
        void b.dispatch(xs[r], { ids: ids[r], weights: ws[r] }, { stream: streams[r] });
        void b.combine(b.tokens, b.lastHandle as never, { out: outs[r], stream: streams[r] });
      }));
      const seen = new Set<string>();
      for (let step = 0; step < 4; step++) {
        const inp = inputs(seed + step, [T, T], H, E, K);
        const b = native();
        for (let r = 0; r < R; r++) {
          const xb = fromArray(inp[r].x, { shape: [T, H], dtype: 'bf16', device: devs[r] });
          await settle(devs);
          b.copyDeviceToDevice(xs[r].deviceIndex, xs[r].dataPtr, xb.dataPtr, xs[r].byteLength, streams[r].handle);
          b.copyToDevice(ids[r].deviceIndex, ids[r].dataPtr, Int32Array.from(inp[r].ids), ids[r].byteLength, streams[r].handle);
          b.copyToDevice(ws[r].deviceIndex, ws[r].dataPtr, Float32Array.from(inp[r].weights), ws[r].byteLength, streams[r].handle);
          await streams[r].synchronize();
          xb.dispose();
        }
        seen.add(JSON.stringify(inp.map((i) => i.ids)));
        for (let r = 0; r < R; r++) graphs[r].replay(streams[r]);
        await Promise.all(bs.map((buf, r) => buf.check(streams[r])));
        // the oracle: unpermute of the bf16 rows over the ranks' tokens concatenated
        const allIds = inp.flatMap((i) => i.ids);
        const gl = expertLayout(cpuArray(allIds, [R * T, K], 'i32'), E);
        const rows = permute(cpuArray(inp.flatMap((i) => i.x), [R * T, H], 'bf16'), gl);
        const want = Array.from(await unpermute(rows, gl, cpuArray(inp.flatMap((i) => i.weights), [R * T, K], 'f32'), { out: fromArray(new Float32Array(R * T * H), { shape: [R * T, H], device: 'cpu' }) as Tensor<'f32'> }).toArray());
        for (let r = 0; r < R; r++) {
          expect(Array.from(await outs[r].toArray({ stream: streams[r] })), `step ${step} rank ${r}`).toEqual(want.slice(r * T * H, (r + 1) * T * H));
        }
      }
      expect(seen.size).toBe(4);
      for (const g of graphs) g.dispose();
    }
  });

  it.skipIf(cudaDevices().length < 2)('a decode step\'s dispatch through epDispatch (graph capture, a rank per device; one launch with gather) gives the bytes of the separate launches', async () => {
    const devs: Device[] = ['cuda:0', 'cuda:1'];
    const seed = freshSeed('nvlink one-launch dispatch');
    const R = 2, E = 8, K = 3, H = 256, maxT = 8;
    const spy = vi.spyOn(native(), 'epDispatch');
    try {
      const forms: { layout: 'masked' | 'contiguous'; M?: number; align?: number; gather?: boolean }[] = [
        { layout: 'masked', M: 6 },  // fewer rows than some experts get: drops
        { layout: 'contiguous', align: 4 },
        { layout: 'masked', M: 16, gather: true },
        { layout: 'contiguous', gather: true },
      ];
      let n = 0;
      for (const f of forms) {
        // one CTA (gather: it lays out and copies), three, and every SM's
        for (const sms of [1, 3, undefined]) {
          const pgs = await groupOn(devs);
          const bs = await buffers(pgs, {
            maxTokensPerRank: maxT, hidden: H, topK: K, numExperts: E, layout: f.layout, ...(f.M ? { maxTokensPerExpert: f.M } : {}),
            ...(f.align ? { align: f.align } : {}), ...(f.gather ? { gather: true } : {}), ...(sms ? { sms } : {}),
          });
          const streams = devs.map((d) => keep(createStream(d)));
          const inp = inputs(seed + n++, [1 + (seed % maxT), maxT], H, E, K);
          const xs = devs.map((d, r) => keep(fromArray(inp[r].x, { shape: [inp[r].x.length / H, H], dtype: 'bf16', device: d })));
          const ids = devs.map((d, r) => keep(fromArray(inp[r].ids, { shape: [inp[r].ids.length / K, K], dtype: 'i32', device: d })));
          const ws = devs.map((d, r) => keep(fromArray(inp[r].weights, { shape: [inp[r].weights.length / K, K], device: d })));
          const ys = devs.map((d, r) => keep(fromArray(new Float32Array(bs[r].rows * H), { shape: [bs[r].rows, H], dtype: 'bf16', device: d })));
          await settle(devs);
          const snapshot = async () => Promise.all(bs.map(async (b, r) => {
            const l = b.expertLayout, s = streams[r];
            const read = async (t: Tensor) => Array.from(await t.toArray({ stream: s }) as ArrayLike<number>);
            return {
              tokens: await read(b.tokens), counts: await read(l.counts), offsets: await read(l.offsets), sourceIndex: await read(l.sourceIndex),
              rowIndex: await read(l.rowIndex), usedRows: await read(l.usedRows), dropped: await read(l.dropped),
            };
          }));
          // eager ranks of one process: the send and the receive apart, through the gate
          spy.mockClear();
          const got = await Promise.all(bs.map((b, r) => b.dispatch(xs[r], { ids: ids[r], weights: ws[r] }, { stream: streams[r] })));
          expect(spy).not.toHaveBeenCalled();
          const want = await snapshot();
          await Promise.all(bs.map((b, r) => b.combine(ys[r], got[r].handle, { stream: streams[r] })));
          // captured: one call each
          const graphs = bs.map((b, r) => keep(captureGraph(streams[r], () => {
            void b.dispatch(xs[r], { ids: ids[r], weights: ws[r] }, { stream: streams[r] });
            void b.combine(ys[r], b.lastHandle as never, { stream: streams[r] });
          })));
          expect(spy).toHaveBeenCalledTimes(2);
          for (let r = 0; r < R; r++) graphs[r].replay(streams[r]);
          await Promise.all(bs.map((b, r) => b.check(streams[r])));
          expect(await snapshot(), `${JSON.stringify(f)} sms ${sms ?? 'all'}`).toEqual(want);
          expect(want[1].tokens.some((v) => v !== 0)).toBe(true);
        }
      }
    } finally {
      spy.mockRestore();
    }
  });

  it.skipIf(cudaDevices().length < 2)('a one-launch dispatch whose peer never sends: E_TIMEOUT within the timeout; the device stays usable', async () => {
    const devs: Device[] = ['cuda:0', 'cuda:1'];
    const timeoutMs = 1500, H = 64;
    const pgs = await groupOn(devs, timeoutMs);
    const bs = await buffers(pgs, { maxTokensPerRank: 2, hidden: H, topK: 1, numExperts: 2, layout: 'masked', maxTokensPerExpert: 4 });
    const s = keep(createStream('cuda:0'));
    const inp = inputs(5, [2], H, 2, 1)[0];
    const x = keep(fromArray(inp.x, { shape: [2, H], dtype: 'bf16', device: 'cuda:0' }));
    const ids = keep(fromArray(inp.ids, { shape: [2, 1], dtype: 'i32', device: 'cuda:0' }));
    const w = keep(fromArray(inp.weights, { shape: [2, 1], device: 'cuda:0' }));
    await settle(devs);
    // rank 0 captures and replays its step; rank 1 never calls
    const g = keep(captureGraph(s, () => void bs[0].dispatch(x, { ids, weights: w }, { stream: s })));
    const t0 = Date.now();
    g.replay(s);
    await expectCode(() => bs[0].check(s), 'E_TIMEOUT', 'rank 1');
    const ms = Date.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(ms).toBeLessThan(timeoutMs + 8000);
    const y = convert(x, 'f32', { stream: s });
    expect(Array.from(await y.toArray({ stream: s }))).toEqual(inp.x.map(bf16));
  });

  it('moeForwardEp on two ranks against moeForward on one device (the expert GEMMs may split K differently: 2^-8 relative L2)', async () => {
    for (const devs of pairs()) {
      const seed = freshSeed(`nvlink moeForwardEp ${devs.join(',')}`);
      const spec: Spec = { E: 8, H: 256, I: 128, Is: 128, k: 2, scoring: 'sigmoid' };
      const pkg = await import('../lib');
      const layer = model.makeLayer(seed, spec);
      const T = [5, 3];
      const whole = await model.layerOn(pkg, layer, 0, spec.E, 'cuda:0');
      const all = [...model.tokensOf(seed, 0, T[0], spec.H), ...model.tokensOf(seed, 1, T[1], spec.H)];
      const want = await moeForward(fromArray(all, { shape: [8, spec.H], dtype: 'bf16', device: 'cuda:0' }), whole.router, whole.experts).toArray();
      const parts = await Promise.all(devs.map((d, r) => model.layerOn(pkg, layer, r * 4, 4, d)));
      const xs = devs.map((d, r) => fromArray(model.tokensOf(seed, r, T[r], spec.H), { shape: [T[r], spec.H], dtype: 'bf16', device: d }));
      const streams = devs.map((d) => keep(createStream(d)));
      // with the buffer's gather option the w13 GEMM reads the received tokens in place: the same result
      const results: number[][] = [];
      for (const gather of [false, true]) {
        const pgs = await groupOn(devs);
        const bs = await buffers(pgs, { maxTokensPerRank: 5, hidden: spec.H, topK: spec.k, numExperts: spec.E, gather });
        await settle(devs);
        const outs = await Promise.all(bs.map((ep, r) => pkg.moeForwardEp(xs[r], parts[r].router, parts[r].experts, { ep, stream: streams[r] })));
        const got = [...(await outs[0].toArray({ stream: streams[0] })), ...(await outs[1].toArray({ stream: streams[1] }))];
        let d2 = 0, n2 = 0;
        for (let i = 0; i < want.length; i++) {
          d2 += (got[i] - want[i]) ** 2;
          n2 += want[i] ** 2;
        }
        expect(Math.sqrt(d2 / n2), `gather ${gather}`).toBeLessThanOrEqual(2 ** -8);
        results.push(got);
      }
      expect(results[1], 'gather and not: the same bits').toEqual(results[0]);
    }
  });
});

// One process per rank on GPUs: the ranks map each other's buffers with CUDA IPC. Two ranks on
// cuda:0 run on a one-GPU host (the processes share the GPU by time slices).
describe.skipIf(!hasCuda)(`nvlink transport between rank processes (CUDA IPC)${hasCuda ? '' : ` (skipped: ${cudaReason})`}`, () => {
  const rankDevices = (): string[][] => (cudaDevices().length >= 2 ? [['cuda:0', 'cuda:0'], ['cuda:0', 'cuda:1']] : [['cuda:0', 'cuda:0']]);

  it('a dispatch/combine round: the bits of the single-device path (over 1024 tokens: the overlapped send)', async () => {
    for (const [devs, many] of rankDevices().flatMap((d) => [[d, false], [d, true]] as const)) {
      const seed = freshSeed(`ipc roundtrip ${devs.join(',')} ${many}`);
      const spec = { E: 8, H: 272, I: 32, Is: 0, k: 3, scoring: 'softmax' as const };
      const tokens = many ? [1025 + (seed % 100), 1030] : [5, 3];
      // both ranks on cuda:0, or rank r on cuda:<r> (its LOCAL_RANK)
      const run = await launch(2, {
        EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens), EP_MODE: 'roundtrip',
        EP_DEVICE: devs[1] === 'cuda:0' ? 'cuda:0' : 'local',
      }, 'cuda');
      const lines = rankLines(run.stdout);
      expect(run.status, run.stdout + run.stderr).toBe(0);
      const rs = tokens.map((T, r) => routingOf(seed, spec, r, T));
      const xs = tokens.flatMap((T, r) => model.tokensOf(seed, r, T, spec.H));
      const Tall = tokens[0] + tokens[1];
      const gl = expertLayout(cpuArray(rs.flatMap((r) => r.ids), [Tall, spec.k], 'i32'), spec.E);
      const want = Array.from(await unpermute(permute(cpuArray(xs, [Tall, spec.H], 'bf16'), gl), gl, cpuArray(rs.flatMap((r) => r.weights), [Tall, spec.k], 'f32'), {
        out: fromArray(new Float32Array(Tall * spec.H), { shape: [Tall, spec.H], device: 'cpu' }) as Tensor<'f32'>,
      }).toArray());
      expect(lines.get(0)?.transport).toBe('nvlink');
      expect(lines.get(0)?.out).toEqual(want.slice(0, tokens[0] * spec.H));
      expect(lines.get(1)?.out).toEqual(want.slice(tokens[0] * spec.H));
    }
  });

  it('moeForwardEp against moeForward on one device (2^-8 relative L2: the expert GEMMs may split K differently)', async () => {
    const seed = freshSeed('ipc moeForwardEp');
    const spec: Spec = { E: 8, H: 256, I: 128, Is: 128, k: 2, scoring: 'sigmoid' };
    const tokens = [4, 6];
    const run = await launch(2, { EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens), EP_DEVICE: 'cuda:0' }, 'cuda');
    expect(run.status, run.stdout + run.stderr).toBe(0);
    const lines = rankLines(run.stdout);
    const pkg = await import('../lib');
    const whole = await model.layerOn(pkg, model.makeLayer(seed, spec), 0, spec.E, 'cuda:0');
    const all = [...model.tokensOf(seed, 0, tokens[0], spec.H), ...model.tokensOf(seed, 1, tokens[1], spec.H)];
    const want = await moeForward(fromArray(all, { shape: [10, spec.H], dtype: 'bf16', device: 'cuda:0' }), whole.router, whole.experts).toArray();
    const got = [...(lines.get(0)?.out as number[]), ...(lines.get(1)?.out as number[])];
    let d2 = 0, n2 = 0;
    for (let i = 0; i < want.length; i++) {
      d2 += (got[i] - want[i]) ** 2;
      n2 += want[i] ** 2;
    }
    expect(Math.sqrt(d2 / n2)).toBeLessThanOrEqual(2 ** -8);
  });
});
