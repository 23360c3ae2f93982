import { describe, expect, it } from 'vitest';
import {
  captureGraph,
  convert,
  createStream,
  defaultStream,
  empty,
  expertLayout,
  fromArray,
  permute,
  routeTopK,
  unpermute,
  zeros,
  type Device,
  type ExpertLayout,
  type RouteTopKResult,
  type RouteTopKOptions,
  type Tensor,
} from '../lib';
import { native } from '../lib/native';
import { expectCode, forEachBackend, freshSeed, hasCuda, rng, nativeCalls } from './backends';

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

async function route(device: Device, rows: number[][], options: RouteTopKOptions, dtype: 'f32' | 'bf16' = 'f32') {
  const x = fromArray(rows, { device, dtype });
  const r = routeTopK(x, options);
  const k = options.k;
  const ids = Array.from(await r.ids.toArray());
  const w = Array.from(await r.weights.toArray());
  return {
    ids: rows.map((_, t) => ids.slice(t * k, (t + 1) * k)),
    weights: rows.map((_, t) => w.slice(t * k, (t + 1) * k)),
  };
}

function expectClose(got: number[], want: number[], digits = 6): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) expect(got[i], `[${i}] of [${got}] vs [${want}]`).toBeCloseTo(want[i], digits);
}

/** Distance in units in the last place between two f32 values (0 for equal, large across signs). */
function ulps(a: number, b: number): number {
  if (Object.is(a, b) || a === b) return 0;
  if (Number.isNaN(a) || Number.isNaN(b)) return Infinity;
  const bits = new Int32Array(new Float32Array([a, b]).buffer);
  const ord = (u: number) => (u < 0 ? -(u & 0x7fffffff) : u);
  return Math.abs(ord(bits[0]) - ord(bits[1]));
}

// The layout as a stable counting sort, written from its definition.
function layoutOracle(ids: number[], k: number, E: number, align: number, maxPer: number) {
  const n = ids.length;
  const total = new Array(E).fill(0);
  for (const id of ids) total[id]++;
  const counts = total.map((c) => (maxPer > 0 ? Math.min(c, maxPer) : c));
  const offsets = [0];
  for (let e = 0; e < E; e++) offsets.push(maxPer > 0 ? (e + 1) * maxPer : offsets[e] + Math.ceil(total[e] / align) * align);
  const rows = maxPer > 0 ? E * maxPer : (n / k) * k + E * (align - 1);
  const sourceIndex = new Array(rows).fill(-1);
  const rowIndex = new Array(n).fill(-1);
  const next = new Array(E).fill(0);
  for (let i = 0; i < n; i++) {
    const e = ids[i];
    const r = next[e]++;
    if (maxPer > 0 && r >= maxPer) continue;
    sourceIndex[offsets[e] + r] = i;
    rowIndex[i] = offsets[e] + r;
  }
  const dropped = total.reduce((s, c) => s + Math.max(0, c - (maxPer > 0 ? maxPer : c)), 0);
  return { counts, offsets, sourceIndex, rowIndex, usedRows: [offsets[E]], dropped: [dropped], errors: [0] };
}

async function readLayout(l: ExpertLayout) {
  const get = async (t: Tensor<'i32'>) => Array.from(await t.toArray());
  return {
    counts: await get(l.counts),
    offsets: await get(l.offsets),
    sourceIndex: await get(l.sourceIndex),
    rowIndex: await get(l.rowIndex),
    usedRows: await get(l.usedRows),
    dropped: await get(l.dropped),
    errors: await get(l.errors),
  };
}

function idsTensor(ids: number[], k: number, device: Device): Tensor<'i32'> {
  return fromArray(new Int32Array(ids), { shape: [ids.length / k, k], device });
}

// Random logits with NaN, +-inf and exact ties sprinkled in.
function fuzzRows(r: () => number, T: number, E: number, specials: boolean): number[][] {
  const rows: number[][] = [];
  for (let t = 0; t < T; t++) {
    const row: number[] = [];
    for (let e = 0; e < E; e++) row.push((r() - 0.5) * 8);
    if (specials) {
      const n = Math.floor(r() * 6);
      for (let i = 0; i < n; i++) {
        const e = Math.floor(r() * E);
        const c = r();
        row[e] = c < 0.4 ? NaN : c < 0.6 ? Infinity : c < 0.8 ? -Infinity : row[Math.floor(r() * E)];
      }
      if (t % 17 === 0) row.fill(NaN);
    }
    rows.push(row);
  }
  return rows;
}

const NOAUX = (bias?: Tensor<'f32'>): RouteTopKOptions => ({
  k: 8, scoring: 'sigmoid', groups: { count: 8, topk: 4 }, scale: 2.5, ...(bias ? { correctionBias: bias } : {}),
});

forEachBackend('routeTopK', (device: Device) => {
  it('softmax top-k on a small row: ids best first, probabilities, renormalized weights', async () => {
    const rows = [[1, 3, 2, 0.5]];
    const p = [1, Math.exp(-1), Math.exp(-2), Math.exp(-2.5)];
    const S = p.reduce((a, b) => a + b);
    const plain = await route(device, rows, { k: 2, scoring: 'softmax' });
    expect(plain.ids).toEqual([[1, 2]]);
    expectClose(plain.weights[0], [1 / S, Math.exp(-1) / S]);
    const renorm = await route(device, rows, { k: 2, scoring: 'softmax', renormalize: true });
    expect(renorm.ids).toEqual([[1, 2]]);
    expectClose(renorm.weights[0], [1 / (1 + Math.exp(-1)), Math.exp(-1) / (1 + Math.exp(-1))]);
    const scaled = await route(device, rows, { k: 1, scoring: 'softmax', scale: 2 });
    expectClose(scaled.weights[0], [2 / S]);
    // bf16 logits: these values are exact in bf16
    expect((await route(device, rows, { k: 3, scoring: 'softmax' }, 'bf16')).ids).toEqual([[1, 2, 0]]);
  });

  it('noaux_tc: the correction bias changes the chosen group, is used for selection only, 2.5 scale, renormalized', async () => {
    const logits = [[3, 2.5, 0, -0.5, -3, -3, -3, -3]];
    const s = logits[0].map(sigmoid);
    const opts = (bias: number[]): RouteTopKOptions => ({
      k: 2, scoring: 'sigmoid', groups: { count: 4, topk: 1 }, scale: 2.5, correctionBias: fromArray(bias, { device }),
    });
    // without bias group 0 (experts 0, 1) has the best two-score sum
    const none = await route(device, logits, { ...opts([0, 0, 0, 0, 0, 0, 0, 0]) });
    expect(none.ids).toEqual([[0, 1]]);
    expectClose(none.weights[0], [(2.5 * s[0]) / (s[0] + s[1]), (2.5 * s[1]) / (s[0] + s[1])], 5);
    // +1 on experts 2 and 3 moves the selection to group 1
    const moved = await route(device, logits, opts([0, 0, 1, 1, 0, 0, 0, 0]));
    expect(moved.ids).toEqual([[2, 3]]);
    const w2 = (2.5 * s[2]) / (s[2] + s[3]);
    const w3 = (2.5 * s[3]) / (s[2] + s[3]);
    expectClose(moved.weights[0], [w2, w3], 5);
    // a larger bias on expert 3 ranks it first, but its weight stays that of its own score
    const reordered = await route(device, logits, opts([0, 0, 1, 1.2, 0, 0, 0, 0]));
    expect(reordered.ids).toEqual([[3, 2]]);
    expectClose(reordered.weights[0], [w3, w2], 5);
    // without renormalization the weights are the scaled scores
    const raw = await route(device, logits, { ...opts([0, 0, 1, 1, 0, 0, 0, 0]), renormalize: false });
    expectClose(raw.weights[0], [2.5 * s[2], 2.5 * s[3]], 5);
  });

  it('noaux_tc: groups are scored by their two best experts; dropped groups rank below negative scores', async () => {
    // group 0 has the single best expert and the larger total, group 1 the better top two
    const twoBest = await route(device, [[2, 1, 1, 1.5, 1.5, -5]], { k: 1, scoring: 'sigmoid', groups: { count: 2, topk: 1 } });
    expect(twoBest.ids).toEqual([[3]]);
    expectClose(twoBest.weights[0], [sigmoid(1.5) / (sigmoid(1.5) + 1e-20)]);
    // the kept group's biased scores are all negative; experts of the dropped group never come back as 0
    const bias = fromArray([-10, -10, -20, -20], { device });
    const neg = await route(device, [[0, 0, 5, 5]], { k: 2, scoring: 'sigmoid', groups: { count: 2, topk: 1 }, correctionBias: bias, scale: 2.5 });
    expect(neg.ids).toEqual([[0, 1]]);
    expectClose(neg.weights[0], [1.25, 1.25]);
    // equal group scores keep the lower group; one group is plain top-k
    expect((await route(device, [[0, 0, 0, 0]], { k: 2, scoring: 'sigmoid', groups: { count: 2, topk: 1 } })).ids).toEqual([[0, 1]]);
    const rows = [[0.3, -1, 2, 0.7, 0.7, 5, -2, 1]];
    const one = await route(device, rows, { k: 3, scoring: 'sigmoid', groups: { count: 1, topk: 1 } });
    const flat = await route(device, rows, { k: 3, scoring: 'sigmoid' });
    expect(one).toEqual(flat);
    expect(flat.ids).toEqual([[5, 2, 7]]);
    // groups of one expert: each group's score is its expert's
    expect((await route(device, rows, { k: 2, scoring: 'sigmoid', groups: { count: 8, topk: 3 } })).ids).toEqual([[5, 2]]);
  });

  it('ties go to the lower index, ids in descending score order', async () => {
    const tie = await route(device, [[1, 5, 3, 5, 5, 0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], { k: 3, scoring: 'softmax' });
    expect(tie.ids).toEqual([[1, 3, 4], [0, 1, 2]]);
    expectClose(tie.weights[1], [1 / 6, 1 / 6, 1 / 6]);
    const sig = await route(device, [[-0, 0, 2, 2]], { k: 4, scoring: 'sigmoid' });
    expect(sig.ids).toEqual([[2, 3, 0, 1]]); // -0 and +0 are equal
  });

  it('NaN ranks below every number, +-inf are ordered, an all-NaN row picks 0..k-1 with weight 0', async () => {
    for (const scoring of ['softmax', 'sigmoid'] as const) {
      const r = await route(device, [[NaN, 1, 2, NaN], [NaN, NaN, NaN, NaN], [NaN, -Infinity, -5, NaN]], { k: 4, scoring });
      expect(r.ids).toEqual([[2, 1, 0, 3], [0, 1, 2, 3], [2, 1, 0, 3]]);
      expect(r.weights[0].slice(2)).toEqual([0, 0]);
      expect(r.weights[1]).toEqual([0, 0, 0, 0]);
      const g = await route(device, [[NaN, NaN, NaN, NaN]], { k: 2, scoring, groups: { count: 2, topk: 1 }, scale: 2.5 });
      expect(g.ids).toEqual([[0, 1]]);
      expect(g.weights).toEqual([[0, 0]]);
    }
    const sig = await route(device, [[Infinity, 0, -Infinity, NaN]], { k: 4, scoring: 'sigmoid', scale: 2.5 });
    expect(sig.ids).toEqual([[0, 1, 2, 3]]);
    expectClose(sig.weights[0], [2.5 / 1.5, 1.25 / 1.5, 0, 0]);
    // softmax: +inf experts share the mass; a row of -inf is uniform over them
    const inf = await route(device, [[1, Infinity, Infinity, 0], [-Infinity, 0, -Infinity, NaN], [-Infinity, -Infinity, -Infinity, -Infinity]], {
      k: 3, scoring: 'softmax',
    });
    expect(inf.ids).toEqual([[1, 2, 0], [1, 0, 2], [0, 1, 2]]);
    expect(inf.weights).toEqual([[0.5, 0.5, 0], [1, 0, 0], [0.25, 0.25, 0.25]]);
  });

  it('fuzzed rows (NaN, +-inf, ties): ids in range, distinct, from at most groups.topk groups; weights finite', async () => {
    const r = rng(freshSeed(`routeTopK fuzz ${device}`));
    const T = 300, E = 256;
    const rows = fuzzRows(r, T, E, true);
    const bias = Array.from({ length: E }, () => (r() - 0.5) * 0.2);
    for (const opts of [NOAUX(fromArray(bias, { device })), { k: 8, scoring: 'softmax' } as RouteTopKOptions, { k: 16, scoring: 'sigmoid' } as RouteTopKOptions]) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const got = await route(device, rows, opts, dtype);
        for (let t = 0; t < T; t++) {
          const ids = got.ids[t];
          expect(new Set(ids).size, `row ${t}: ${ids}`).toBe(opts.k);
          for (const id of ids) expect(id >= 0 && id < E, `row ${t}: ${ids}`).toBe(true);
          if (opts.groups) expect(new Set(ids.map((e) => Math.floor(e / 32))).size).toBeLessThanOrEqual(4);
          for (const w of got.weights[t]) expect(Number.isFinite(w) && w >= 0, `row ${t}: ${got.weights[t]}`).toBe(true);
          if (rows[t].every(Number.isNaN)) expect(ids).toEqual(Array.from({ length: opts.k }, (_, i) => i));
        }
      }
    }
  });

  it('selection agrees with a float64 oracle where scores are well separated', async () => {
    const r = rng(freshSeed(`routeTopK oracle ${device}`));
    const T = 64, E = 64, k = 6;
    const rows = fuzzRows(r, T, E, false);
    const bias = Array.from({ length: E }, () => (r() - 0.5) * 0.5);
    const got = await route(device, rows, { k, scoring: 'sigmoid', groups: { count: 8, topk: 3 }, correctionBias: fromArray(bias, { device }) });
    for (let t = 0; t < T; t++) {
      const sel = rows[t].map((x, e) => sigmoid(Math.fround(x)) + bias[e]);
      const groupScore = Array.from({ length: 8 }, (_, g) => {
        const s = sel.slice(g * 8, g * 8 + 8).sort((a, b) => b - a);
        return s[0] + s[1];
      });
      const kept = groupScore.map((v, g) => ({ v, g })).sort((a, b) => b.v - a.v || a.g - b.g).slice(0, 3).map((x) => x.g);
      const order = sel.map((v, e) => ({ v, e })).filter((x) => kept.includes(Math.floor(x.e / 8))).sort((a, b) => b.v - a.v || a.e - b.e);
      const gaps = order.slice(0, k + 1).every((x, i, a) => i === 0 || a[i - 1].v - x.v > 1e-5);
      const groupGaps = [...groupScore].sort((a, b) => b - a).every((v, i, a) => i === 0 || a[i - 1] - v > 1e-5);
      if (gaps && groupGaps) expect(got.ids[t], `row ${t}`).toEqual(order.slice(0, k).map((x) => x.e));
      const s = got.ids[t].map((e) => sigmoid(Math.fround(rows[t][e])));
      const sum = s.reduce((a, b) => a + b);
      expectClose(got.weights[t], s.map((v) => v / sum), 5);
    }
  });

  it('handles zero tokens and writes into out', async () => {
    const r = routeTopK(empty([0, 16], { device }), { k: 4, scoring: 'softmax' });
    expect(r.ids.shape).toEqual([0, 4]);
    const ids = empty([2, 2], { dtype: 'i32', device });
    const weights = empty([2, 2], { dtype: 'f32', device });
    const got = routeTopK(fromArray([[1, 2, 3], [3, 2, 1]], { device }), { k: 2, scoring: 'softmax', out: { ids, weights } });
    expect(got.ids).toBe(ids);
    expect(got.weights).toBe(weights);
    expect(Array.from(await ids.toArray())).toEqual([2, 1, 0, 1]);
  });

  it('rejects bad input with codes that name the argument', async () => {
    const x = fromArray([[1, 2, 3, 4]], { device });
    await expectCode(() => routeTopK(x, { k: 5, scoring: 'softmax' }), 'E_SHAPE', 'k');
    await expectCode(() => routeTopK(x, { k: 0, scoring: 'softmax' }), 'E_ARGUMENT', 'options.k');
    await expectCode(() => routeTopK(x, { k: 17, scoring: 'softmax' }), 'E_ARGUMENT', 'options.k');
    await expectCode(() => routeTopK(x, { k: 2, scoring: 'relu' as never }), 'E_ARGUMENT', 'options.scoring');
    await expectCode(() => routeTopK(x, { k: 2, scoring: 'sigmoid', groups: { count: 3, topk: 1 } }), 'E_SHAPE', 'groups.count');
    await expectCode(() => routeTopK(x, { k: 3, scoring: 'sigmoid', groups: { count: 2, topk: 1 } }), 'E_SHAPE', 'groups.topk');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'sigmoid', groups: { count: 2, topk: 3 } }), 'E_SHAPE', 'groups.topk');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'sigmoid', groups: { count: 2 } as never }), 'E_ARGUMENT', 'options.groups.topk');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'sigmoid', groups: { count: 2, topk: 1, size: 2 } as never }), 'E_ARGUMENT', 'options.groups');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'sigmoid', topk: 2 } as never), 'E_ARGUMENT', 'unknown option');
    await expectCode(() => routeTopK(x, null as never), 'E_ARGUMENT', 'options');
    await expectCode(() => routeTopK(x, undefined as never), 'E_ARGUMENT', 'options.k');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'softmax', scale: NaN }), 'E_ARGUMENT', 'options.scale');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'softmax', renormalize: 1 as never }), 'E_ARGUMENT', 'options.renormalize');
    await expectCode(() => routeTopK(fromArray([1, 2, 3, 4], { device }), { k: 1, scoring: 'softmax' }), 'E_SHAPE', 'logits');
    await expectCode(() => routeTopK(fromArray([[1, 2]], { dtype: 'i32', device }), { k: 1, scoring: 'softmax' }), 'E_DTYPE', 'logits');
    await expectCode(() => routeTopK(fromArray([[1, 2]], { dtype: 'f16', device }), { k: 1, scoring: 'softmax' }), 'E_DTYPE', 'logits');
    await expectCode(() => routeTopK(zeros([1, 513], { device }), { k: 1, scoring: 'softmax' }), 'E_SHAPE', 'logits');
    await expectCode(() => routeTopK(x, { k: 1, scoring: 'sigmoid', correctionBias: fromArray([0, 0, 0], { device }) }), 'E_SHAPE', 'correctionBias');
    await expectCode(
      () => routeTopK(x, { k: 1, scoring: 'sigmoid', correctionBias: fromArray([0, 0, 0, 0], { dtype: 'bf16', device }) as never }),
      'E_DTYPE', 'correctionBias',
    );
    await expectCode(() => routeTopK(x, { k: 2, scoring: 'softmax', out: { ids: empty([1, 3], { dtype: 'i32', device }) } }), 'E_SHAPE', 'out.ids');
    await expectCode(() => routeTopK(x, { k: 2, scoring: 'softmax', out: { idz: x } as never }), 'E_ARGUMENT', 'options.out');
    const gone = fromArray([[1, 2]], { device });
    gone.dispose();
    await expectCode(() => routeTopK(gone, { k: 1, scoring: 'softmax' }), 'E_DISPOSED', 'logits');
  });
});

forEachBackend('expertLayout', (device: Device) => {
  const cases: { name: string; ids: number[]; k: number; E: number }[] = [
    { name: 'experts with no tokens', ids: [3, 1, 1, 3, 3, 1, 7, 3], k: 2, E: 8 },
    { name: 'every token to one expert', ids: new Array(40).fill(2), k: 1, E: 4 },
    { name: 'T = 0', ids: [], k: 4, E: 6 },
    { name: 'T = 1', ids: [5, 0, 2], k: 3, E: 6 },
    { name: 'k = 1', ids: [0, 1, 2, 0, 1, 2, 2], k: 1, E: 3 },
  ];
  for (const c of cases) {
    for (const align of [1, 16, 128]) {
      it(`contiguous, ${c.name}, align ${align}`, async () => {
        const l = expertLayout(idsTensor(c.ids, c.k, device), c.E, { align });
        expect(l.form).toBe('contiguous');
        expect(l.sourceIndex.shape).toEqual([c.ids.length + c.E * (align - 1)]);
        expect(l.rowIndex.shape).toEqual([c.ids.length / c.k, c.k]);
        expect(await readLayout(l)).toEqual(layoutOracle(c.ids, c.k, c.E, align, 0));
      });
    }
  }

  it('contiguous, random ids of many tiles (T = 4096, top-8 of 256, align 128)', async () => {
    const r = rng(freshSeed(`expertLayout random ${device}`));
    const ids: number[] = [];
    for (let t = 0; t < 4096; t++) {
      const row = new Set<number>();
      // skewed: a few hot experts
      while (row.size < 8) row.add(r() < 0.3 ? Math.floor(r() * 8) : Math.floor(r() * 256));
      ids.push(...row);
    }
    for (const align of [1, 128]) {
      const l = expertLayout(idsTensor(ids, 8, device), 256, { align });
      expect(await readLayout(l)).toEqual(layoutOracle(ids, 8, 256, align, 0));
    }
  });

  it('masked form: fixed [E, M] rows, overflow dropped in (token, slot) order and counted', async () => {
    const ids = [2, 0, 2, 1, 2, 0, 2, 2, 1, 0];
    const l = expertLayout(idsTensor(ids, 2, device), 4, { maxTokensPerExpert: 3 });
    expect(l.form).toBe('masked');
    expect(l.sourceIndex.shape).toEqual([4, 3]);
    const got = await readLayout(l);
    expect(got).toEqual(layoutOracle(ids, 2, 4, 1, 3));
    expect(got.dropped).toEqual([2]);
    expect(got.counts).toEqual([3, 2, 3, 0]);
    expect(got.sourceIndex.slice(6, 9)).toEqual([0, 2, 4]);
    expect(got.rowIndex[6]).toBe(-1);
    const empty0 = await readLayout(expertLayout(idsTensor([], 2, device), 3, { maxTokensPerExpert: 2 }));
    expect(empty0).toEqual(layoutOracle([], 2, 3, 1, 2));
  });

  it('rejects bad input; ids out of range are E_RANGE on the CPU and counted on CUDA', async () => {
    const ids = idsTensor([0, 1, 2, 3], 2, device);
    await expectCode(() => expertLayout(ids, 0), 'E_ARGUMENT', 'numExperts');
    await expectCode(() => expertLayout(ids, 1025), 'E_ARGUMENT', 'numExperts');
    await expectCode(() => expertLayout(ids, 4, { align: 0 }), 'E_ARGUMENT', 'options.align');
    await expectCode(() => expertLayout(ids, 4, { align: 16, maxTokensPerExpert: 4 }), 'E_ARGUMENT', 'options.align');
    await expectCode(() => expertLayout(ids, 4, { maxTokensPerExpert: 0 }), 'E_ARGUMENT', 'maxTokensPerExpert');
    await expectCode(() => expertLayout(ids, 4, { alignment: 16 } as never), 'E_ARGUMENT', 'unknown option');
    await expectCode(() => expertLayout(ids, 4, null as never), 'E_ARGUMENT', 'options');
    await expectCode(() => expertLayout(fromArray([0, 1], { dtype: 'i32', device }), 4), 'E_SHAPE', 'ids');
    await expectCode(() => expertLayout(fromArray([[0, 1]], { device }) as never, 4), 'E_DTYPE', 'ids');
    const bad = idsTensor([0, 1, 7, 3, -1, 2], 2, device);
    if (device === 'cpu') {
      await expectCode(() => expertLayout(bad, 4), 'E_RANGE', 'ids[1, 0] = 7');
    } else {
      const got = await readLayout(expertLayout(bad, 4, { align: 4 }));
      expect(got.errors).toEqual([2]);
      expect(got.rowIndex[2]).toBe(-1);
      expect(got.rowIndex[4]).toBe(-1);
      expect(got.counts).toEqual([1, 1, 1, 1]);
      const placed = got.sourceIndex.filter((s) => s >= 0).sort((a, b) => a - b);
      expect(placed).toEqual([0, 1, 3, 5]);
    }
  });
});

forEachBackend('permute / unpermute', (device: Device) => {
  it('permute -> unpermute with k = 1 and weights 1 gives x back exactly', async () => {
    const r = rng(freshSeed(`permute round trip ${device}`));
    const T = 37, H = 20, E = 5;
    const xs = Array.from({ length: T * H }, () => (r() - 0.5) * 100 || 1);
    const ids = Array.from({ length: T }, () => Math.floor(r() * E));
    for (const dtype of ['bf16', 'f32'] as const) {
      const x = fromArray(xs, { shape: [T, H], dtype, device });
      const want = Array.from(await x.toArray());
      for (const opts of [{ align: 16 }, { maxTokensPerExpert: T }]) {
        const l = expertLayout(idsTensor(ids, 1, device), E, opts);
        const p = permute(x, l);
        expect(p.shape).toEqual([l.rows, H]);
        const back = unpermute(p, l, fromArray(new Array(T).fill(1), { shape: [T, 1], device }));
        expect(back.dtype).toBe(dtype);
        expect(Array.from(await back.toArray())).toEqual(want);
      }
    }
  });

  it('permute gathers rows into expert order with zero padding; unpermute sums slots in order', async () => {
    const T = 3, H = 3, k = 2;
    const x = fromArray([[1, 2, 3], [4, 5, 6], [7, 8, 9]], { dtype: 'bf16', device });
    const ids = [1, 0, 1, 2, 0, 1];
    const l = expertLayout(idsTensor(ids, k, device), 3, { align: 2 });
    // expert 0: pairs 1, 4 (rows 0, 1); expert 1: pairs 0, 2, 5 (rows 2..4, padding 5); expert 2: pair 3 (row 6, padding 7)
    const p = Array.from(await permute(x, l).toArray());
    const used = (await l.usedRows.toArray())[0];
    expect(used).toBe(8);
    expect(p.slice(0, used * H)).toEqual([1, 2, 3, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 4, 5, 6, 0, 0, 0]);
    // y = the permuted rows times a row-dependent factor; weights powers of two keep sums exact
    const y = fromArray(Array.from({ length: l.rows * H }, (_, i) => (Math.floor(i / H) + 1) * 0.5 + (i % H)), { shape: [l.rows, H], device });
    const yv = Array.from(await y.toArray());
    const w = [0.5, 0.25, 1, 2, -1, 0.125];
    const rows = Array.from(await l.rowIndex.toArray());
    const want: number[] = [];
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) want.push(w[t * k] * yv[rows[t * k] * H + h] + w[t * k + 1] * yv[rows[t * k + 1] * H + h]);
    const out = unpermute(y, l, fromArray(w, { shape: [T, k], device }), { out: empty([T, H], { dtype: 'f32', device }) });
    expect(Array.from(await out.toArray())).toEqual(want);
    const bf = unpermute(y, l, fromArray(w, { shape: [T, k], device }), { out: empty([T, H], { dtype: 'bf16', device }) });
    expect(bf.dtype).toBe('bf16');
    expect(Array.from(await bf.toArray())).toEqual(want); // small values, exact in bf16
  });

  it('dropped pairs contribute nothing', async () => {
    const x = fromArray([[1, 1], [2, 2], [3, 3]], { device });
    const l = expertLayout(idsTensor([0, 0, 0], 1, device), 2, { maxTokensPerExpert: 2 });
    const p = permute(x, l);
    expect(Array.from(await p.toArray())).toEqual([1, 1, 2, 2, 0, 0, 0, 0]);
    const back = unpermute(p, l, fromArray([[1], [1], [1]], { device }));
    expect(Array.from(await back.toArray())).toEqual([1, 1, 2, 2, 0, 0]);
  });

  it('rejects bad input with codes that name the argument', async () => {
    const l = expertLayout(idsTensor([0, 1], 1, device), 2);
    const x = fromArray([[1, 2], [3, 4]], { dtype: 'bf16', device });
    await expectCode(() => permute(fromArray([[1, 2]], { device }), l), 'E_SHAPE', 'x');
    await expectCode(() => permute(fromArray([[1, 2], [3, 4]], { dtype: 'i32', device }) as never, l), 'E_DTYPE', 'x');
    await expectCode(() => permute(x, { ...l }), 'E_ARGUMENT', 'layout');
    await expectCode(() => permute(x, l, { out: empty([3, 2], { dtype: 'bf16', device }) }), 'E_SHAPE', 'out');
    await expectCode(() => permute(x, l, { out: x }), 'E_ARGUMENT', 'overlaps');
    await expectCode(() => permute(x, l, { quantize: 'fp8' } as never), 'E_ARGUMENT', 'options.quantize');
    await expectCode(() => permute(x, l, { quantize: 'nvfp4' }), 'E_SHAPE', 'multiple of 16');
    const w = fromArray([[1], [1]], { device });
    await expectCode(() => unpermute(x, l, fromArray([[1, 1]], { device })), 'E_SHAPE', 'weights');
    await expectCode(() => unpermute(fromArray([[1, 2], [3, 4]], { dtype: 'f16', device }), l, w), 'E_DTYPE', 'y');
    await expectCode(() => unpermute(x, l, w, { out: empty([2, 2], { dtype: 'f16', device }) as never }), 'E_DTYPE', 'out');
    await expectCode(() => unpermute(x, l, w, { out: empty([2, 3], { dtype: 'f32', device }) }), 'E_SHAPE', 'out');
  });
});

forEachBackend('routing op path', (device: Device) => {
  it('the native side names the argument of a precondition it refuses (not E_CUDA)', async () => {
    const b = native();
    const dev = device === 'cpu' ? -1 : 0;
    const s = defaultStream(device).handle;
    const x = fromArray([[1, 2, 3, 4]], { device });
    const ids = empty([1, 2], { dtype: 'i32', device });
    const w = empty([1, 2], { device });
    const route = (E: number, k: number, groups: number, topk: number, dtype = 0, scale = 1) => () =>
      b.routeTopK(dev, s, x.dataPtr, dtype, 0n, ids.dataPtr, w.dataPtr, 1, E, k, 1, groups, topk, true, scale);
    route(4, 2, 2, 1)(); // a valid call runs
    await expectCode(route(4, 5, 1, 1), 'E_SHAPE', 'k');
    await expectCode(route(4, 2, 3, 1), 'E_SHAPE', 'groups.count');
    await expectCode(route(4, 2, 4, 1), 'E_SHAPE', 'groups.topk');
    await expectCode(route(600, 2, 1, 1), 'E_SHAPE', 'logits');
    await expectCode(route(4, 2, 1, 1, 1), 'E_DTYPE', 'logits');
    await expectCode(route(4, 2, 1, 1, 0, Infinity), 'E_ARGUMENT', 'scale');
    const counts = empty([4], { dtype: 'i32', device });
    await expectCode(
      () => b.expertLayout(dev, s, ids.dataPtr, 1, 2, 4, 1, 0, 5, counts.dataPtr, counts.dataPtr, counts.dataPtr, counts.dataPtr, counts.dataPtr, counts.dataPtr, counts.dataPtr),
      'E_SHAPE', 'layout',
    );
    await expectCode(() => b.unpermute(dev, s, x.dataPtr, 1, ids.dataPtr, w.dataPtr, x.dataPtr, 0, 1, 2, 4, 1), 'E_DTYPE', 'y');
  });

  it('routeTopK with out given makes exactly one native call', () => {
    const x = fromArray([[1, 2, 3, 4]], { device });
    const out = { ids: empty([1, 2], { dtype: 'i32', device }), weights: empty([1, 2], { device }) };
    routeTopK(x, { k: 2, scoring: 'softmax', out }); // warm: the default stream
    expect(nativeCalls(() => routeTopK(x, { k: 2, scoring: 'softmax', out }))).toEqual(['routeTopK']);
  });
});

describe.skipIf(!hasCuda)('routing: CUDA and CPU agree [cuda]', () => {
  async function both(rows: number[][], opts: (device: Device) => RouteTopKOptions, dtype: 'f32' | 'bf16') {
    return [await route('cpu', rows, opts('cpu'), dtype), await route('cuda:0', rows, opts('cuda:0'), dtype)];
  }

  const configs: { E: number; k: number; scoring: 'softmax' | 'sigmoid'; groups?: [number, number]; bias?: boolean; renormalize?: boolean }[] = [
    { E: 256, k: 8, scoring: 'sigmoid', groups: [8, 4], bias: true },
    { E: 256, k: 8, scoring: 'sigmoid', groups: [1, 1], bias: true },
    { E: 8, k: 2, scoring: 'softmax', renormalize: true },
    { E: 64, k: 6, scoring: 'softmax' },
    { E: 128, k: 8, scoring: 'softmax', renormalize: true },
    { E: 160, k: 16, scoring: 'sigmoid', groups: [160, 16] },
    { E: 512, k: 16, scoring: 'sigmoid', groups: [16, 4], bias: true },
    { E: 384, k: 8, scoring: 'softmax', groups: [8, 2] },
    { E: 7, k: 7, scoring: 'softmax' },
  ];
  for (const c of configs) {
    for (const dtype of ['f32', 'bf16'] as const) {
      it(`routeTopK ${c.scoring} E=${c.E} k=${c.k}${c.groups ? ` groups ${c.groups}` : ''}${c.bias ? ' bias' : ''} ${dtype}: ids equal, weights within 2 ulp`, async () => {
        const r = rng(freshSeed(`routeTopK cuda ${c.E} ${c.k} ${c.scoring}`));
        const T = 517;
        const rows = fuzzRows(r, T, c.E, true);
        const bias = Array.from({ length: c.E }, () => (r() - 0.5) * 0.3);
        const opts = (device: Device): RouteTopKOptions => ({
          k: c.k, scoring: c.scoring, scale: 2.5,
          ...(c.groups ? { groups: { count: c.groups[0], topk: c.groups[1] } } : {}),
          ...(c.bias ? { correctionBias: fromArray(bias, { device }) } : {}),
          ...(c.renormalize !== undefined ? { renormalize: c.renormalize } : {}),
        });
        const [cpu, gpu] = await both(rows, opts, dtype);
        expect(gpu.ids).toEqual(cpu.ids);
        let worst = 0;
        for (let t = 0; t < T; t++) for (let i = 0; i < c.k; i++) worst = Math.max(worst, ulps(cpu.weights[t][i], gpu.weights[t][i]));
        expect(worst).toBeLessThanOrEqual(2);
      });
    }
  }

  it('routeTopK at decode sizes (T = 1..128, noaux_tc 256 top-8)', async () => {
    const r = rng(freshSeed('routeTopK cuda decode'));
    const bias = Array.from({ length: 256 }, () => (r() - 0.5) * 0.1);
    for (const T of [1, 2, 3, 16, 127, 128]) {
      const rows = fuzzRows(r, T, 256, false);
      const [cpu, gpu] = await both(rows, (device) => NOAUX(fromArray(bias, { device })), 'bf16');
      expect(gpu.ids).toEqual(cpu.ids);
    }
  });

  it('expertLayout: every output equal, contiguous and masked, T up to 16384', async () => {
    const r = rng(freshSeed('expertLayout cuda'));
    for (const [T, k, E] of [[0, 8, 256], [1, 8, 256], [33, 1, 3], [4096, 8, 256], [16384, 8, 256], [1000, 6, 1024], [700, 2, 5]]) {
      const ids: number[] = [];
      for (let t = 0; t < T; t++) {
        const row = new Set<number>();
        while (row.size < k) row.add(r() < 0.4 ? Math.floor(r() * Math.min(4, E)) : Math.floor(r() * E));
        ids.push(...row);
      }
      for (const opts of [{ align: 1 }, { align: 16 }, { align: 128 }, { maxTokensPerExpert: 4 }, { maxTokensPerExpert: Math.max(1, T) }]) {
        const cpu = await readLayout(expertLayout(idsTensor(ids, k, 'cpu'), E, opts));
        const gpu = await readLayout(expertLayout(idsTensor(ids, k, 'cuda:0'), E, opts));
        expect(gpu, `T=${T} k=${k} E=${E} ${JSON.stringify(opts)}`).toEqual(cpu);
      }
    }
  });

  it('a decode step in a CUDA graph (routeTopK, masked expertLayout, permute) follows new logits on replay', async () => {
    const r = rng(freshSeed('routing graph'));
    const T = 16, E = 256, H = 64, M = 4;
    const s = createStream('cuda:0');
    const opts = { device: 'cuda:0' as Device, stream: s };
    const bias = Array.from({ length: E }, () => (r() - 0.5) * 0.1);
    const xs = Array.from({ length: T * H }, () => r() - 0.5);
    const logits = empty([T, E], { ...opts, dtype: 'bf16' });
    const x = fromArray(xs, { ...opts, shape: [T, H], dtype: 'bf16' });
    const biasT = fromArray(bias, opts);
    let routed: RouteTopKResult | undefined;
    let layout: ExpertLayout | undefined;
    let permuted: Tensor | undefined;
    const graph = captureGraph(s, () => {
      routed = routeTopK(logits, { ...NOAUX(biasT), stream: s });
      layout = expertLayout(routed.ids, E, { maxTokensPerExpert: M, stream: s });
      permuted = permute(x, layout, { stream: s });
    });
    for (let step = 0; step < 3; step++) {
      const rows = fuzzRows(r, T, E, false);
      convert(fromArray(rows.flat(), { ...opts, shape: [T, E] }), 'bf16', { out: logits, stream: s });
      graph.replay(s);
      await s.synchronize();
      const cpu = routeTopK(fromArray(rows, { device: 'cpu', dtype: 'bf16' }), NOAUX(fromArray(bias, { device: 'cpu' })));
      expect(Array.from(await routed!.ids.toArray())).toEqual(Array.from(await cpu.ids.toArray()));
      const cpuLayout = expertLayout(cpu.ids, E, { maxTokensPerExpert: M });
      expect(await readLayout(layout!)).toEqual(await readLayout(cpuLayout));
      const cpuPermuted = permute(fromArray(xs, { shape: [T, H], dtype: 'bf16', device: 'cpu' }), cpuLayout);
      expect(Buffer.compare(Buffer.from(await permuted!.toBytes()), Buffer.from(await cpuPermuted.toBytes()))).toBe(0);
    }
    graph.dispose();
    await s.synchronize();
    s.dispose();
  });

  it('permute and unpermute: the same bytes', async () => {
    const r = rng(freshSeed('permute cuda'));
    for (const [T, k, E, H] of [[300, 8, 64, 7168], [5, 2, 4, 13], [64, 4, 16, 256]]) {
      const ids: number[] = [];
      for (let t = 0; t < T; t++) {
        const row = new Set<number>();
        while (row.size < k) row.add(Math.floor(r() * E));
        ids.push(...row);
      }
      const xs = Array.from({ length: T * H }, () => (r() - 0.5) * 4);
      const ws = Array.from({ length: T * k }, () => r());
      for (const opts of [{ align: 16 }, { maxTokensPerExpert: Math.ceil((T * k) / E) }]) {
        const run = async (device: Device) => {
          const l = expertLayout(idsTensor(ids, k, device), E, opts);
          const used = (await l.usedRows.toArray())[0];
          const p = permute(fromArray(xs, { shape: [T, H], dtype: 'bf16', device }), l);
          const pb = (await p.toBytes()).slice(0, used * H * 2);
          const w = fromArray(ws, { shape: [T, k], device });
          const ub = await unpermute(p, l, w).toBytes();
          const uf = await unpermute(p, l, w, { out: empty([T, H], { dtype: 'f32', device }) }).toBytes();
          return [pb, ub, uf];
        };
        const [a, b] = [await run('cpu'), await run('cuda:0')];
        for (let i = 0; i < 3; i++) expect(Buffer.compare(Buffer.from(a[i]), Buffer.from(b[i])), `output ${i}`).toBe(0);
      }
    }
  });
});
