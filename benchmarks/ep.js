#!/usr/bin/env node
// Expert-parallel dispatch and combine (createEpBuffer, nvlink transport) on two GPUs of one
// host, at DeepSeek-V3's shape: hidden 7168, top-8 of 256 experts (128 per rank), random routing
// (seeded, each token's 8 experts distinct and uniform, weights summing to 1). Two ranks of one
// process (an in-process group, rank r on cuda:r), each with a stream of its own.
//
//   throughput: 4096 tokens per rank, contiguous layout, payloads bf16, fp8 and nvfp4
//   decode:     128 tokens per rank, masked layout, payloads bf16 and nvfp4
// each with the buffer's exact combine (a bf16 row per pair back to the token's rank), and bf16
// and nvfp4 also with combine "reduced" (each rank's partial sum, one bf16 row per token and rank);
// and every payload with the buffer's gather option (dispatch lands one row per received token;
// the expert GEMM gathers), where the combine's y is those rows expanded on the host, outside the
// timing.
//
// Each rank's dispatch and its combine are captured in CUDA graphs of their own (a capture skips
// the host gate that eager in-process ranks meet on between send and receive; the receive waits
// for the other rank's count words on the device). Timed: warm-up, then ITERS rounds queued back
// to back, each round both ranks' dispatch graph then both ranks' combine graph, with CUDA events
// on each rank's stream around each; a round's dispatch (combine) time is the longer of the two
// ranks', the result the median over rounds. Where a capture fails the case is timed eagerly
// (events around the calls, the host's wait for completion included) and the table says so.
// Bytes: tokens actually sent to the other GPU x the payload's row bytes (dispatch), pairs whose
// expert is on the other GPU x bf16 row bytes (exact combine) or tokens with an expert on the
// other GPU x bf16 row bytes (reduced combine), per direction; the totals add the rows a rank
// sends to itself. GB/s is per direction, against the one-way GPU0 -> GPU1 copy
// bandwidth measured in the same run (tensor.copyTo between the devices, 1 GiB).
//
//   node benchmarks/ep.js [--out DIR] [--peer FILE] [--seed N] [--iters N] [--sms N]
//
// --peer names the JSON of benchmarks/peers/ep.py (NCCL all_to_all_single on the same bytes);
// benchmarks/run_ep.sh runs both. Without a CUDA GPU it exits with status 3
// (harness.EXIT_NO_GPU), and also with one GPU only.
'use strict';
const fs = require('node:fs');
const h = require('./harness');

const HIDDEN = 7168;
const EXPERTS = 256;
const TOP_K = 8;
const RANKS = 2;
const ITERS = 20;
const WARMUP = 5;
const TIMEOUT_MS = 8000; // bounds every device wait: a hang fails the case in seconds
const COPY_BYTES = 1 << 30;
// the targets: throughput at >= 85% of the one-way copy bandwidth; decode latency bounds (µs)
const TARGET_PCT = 85;
const TARGET_DECODE_US = { dispatch: 20, combine: 25 };
const CASES = [
  { mode: 'throughput', payload: 'bf16', tokens: 4096, layout: 'contiguous', combine: 'exact' },
  { mode: 'throughput', payload: 'fp8', tokens: 4096, layout: 'contiguous', combine: 'exact' },
  { mode: 'throughput', payload: 'nvfp4', tokens: 4096, layout: 'contiguous', combine: 'exact' },
  { mode: 'throughput', payload: 'bf16', tokens: 4096, layout: 'contiguous', combine: 'reduced' },
  { mode: 'throughput', payload: 'nvfp4', tokens: 4096, layout: 'contiguous', combine: 'reduced' },
  { mode: 'decode', payload: 'bf16', tokens: 128, layout: 'masked', combine: 'exact' },
  { mode: 'decode', payload: 'nvfp4', tokens: 128, layout: 'masked', combine: 'exact' },
  { mode: 'decode', payload: 'bf16', tokens: 128, layout: 'masked', combine: 'reduced' },
  { mode: 'decode', payload: 'nvfp4', tokens: 128, layout: 'masked', combine: 'reduced' },
  { mode: 'throughput', payload: 'bf16', tokens: 4096, layout: 'contiguous', combine: 'reduced', gather: true },
  { mode: 'throughput', payload: 'fp8', tokens: 4096, layout: 'contiguous', combine: 'reduced', gather: true },
  { mode: 'throughput', payload: 'nvfp4', tokens: 4096, layout: 'contiguous', combine: 'reduced', gather: true },
  { mode: 'decode', payload: 'bf16', tokens: 128, layout: 'masked', combine: 'reduced', gather: true },
  { mode: 'decode', payload: 'nvfp4', tokens: 128, layout: 'masked', combine: 'reduced', gather: true },
].map((c) => ({ gather: false, ...c }));

/** Row bytes of a payload (native/common/ep.h): what one token costs on the wire. */
function payloadBytes(payload, hidden) {
  if (payload === 'fp8') return hidden + 4 * Math.ceil(hidden / 128);
  if (payload === 'nvfp4') return hidden / 2 + hidden / 16 + 4;
  return 2 * hidden;
}

/** One rank's routing: T tokens, k distinct experts each, uniform; weights > 0 summing to 1. */
function routing(rng, T) {
  const ids = new Int32Array(T * TOP_K);
  const weights = new Float32Array(T * TOP_K);
  for (let t = 0; t < T; t++) {
    const chosen = new Set();
    while (chosen.size < TOP_K) chosen.add(rng.int(EXPERTS));
    const w = Array.from({ length: TOP_K }, () => rng.float());
    const sum = w.reduce((a, b) => a + b, 0);
    let i = 0;
    for (const e of chosen) {
      ids[t * TOP_K + i] = e;
      weights[t * TOP_K + i] = w[i] / sum;
      i++;
    }
  }
  return { ids, weights };
}

/** What the routing sends: per source rank, tokens and pairs to each rank. */
function traffic(routes, T) {
  const local = EXPERTS / RANKS;
  return routes.map(({ ids }) => {
    const tokens = new Array(RANKS).fill(0);
    const pairs = new Array(RANKS).fill(0);
    for (let t = 0; t < T; t++) {
      const to = new Set();
      for (let i = 0; i < TOP_K; i++) {
        const d = Math.floor(ids[t * TOP_K + i] / local);
        to.add(d);
        pairs[d]++;
      }
      for (const d of to) tokens[d]++;
    }
    return { tokens, pairs };
  });
}

/** The bytes of a case, from the routing's traffic (see the header). */
function bytesOf(c, sent) {
  const row = payloadBytes(c.payload, HIDDEN);
  const bf16Row = 2 * HIDDEN;
  const d = { cross: [], total: 0 };
  const k = { cross: [], total: 0 };
  sent.forEach(({ tokens, pairs }, s) => {
    // direction s -> other: dispatch carries s's tokens; combine brings s's pairs (exact) or
    // s's tokens (reduced: one partial sum per token and rank) back from the other rank
    const back = c.combine === 'reduced' ? tokens : pairs;
    d.cross.push(tokens[1 - s] * row);
    k.cross.push(back[1 - s] * bf16Row);
    d.total += (tokens[0] + tokens[1]) * row;
    k.total += (back[0] + back[1]) * bf16Row;
  });
  return { rowBytes: row, dispatch: d, combine: k };
}

/**
 * The GPU0 -> GPU1 copy bandwidth: 1 GiB tensor.copyTo, `copies` per event pair, median of
 * `trials`. both: GPU1 -> GPU0 at the same time (each copy issued beside the other's), the
 * bandwidth per direction that all-to-all traffic, which loads both directions, meets; the time
 * is the longer direction's.
 */
async function peerCopy(moe, { bytes = COPY_BYTES, copies = 5, trials = 10, warmup = 3, both = false } = {}) {
  const dirs = (both ? [['cuda:0', 'cuda:1'], ['cuda:1', 'cuda:0']] : [['cuda:0', 'cuda:1']]).map(([from, to]) => {
    const s = moe.createStream(from);
    return {
      s,
      to,
      // a peer copy runs on the target's default stream; copyTo orders it after s and s after it
      dst: moe.defaultStream(to),
      src: moe.empty([bytes], { dtype: 'u8', device: from, stream: s }),
      start: new moe.Event(to, { timing: true }),
      end: new moe.Event(to, { timing: true }),
    };
  });
  const once = () => Promise.all(dirs.map(async (d) => (await d.src.copyTo(d.to, { stream: d.s })).dispose()));
  try {
    for (let i = 0; i < warmup; i++) await once();
    for (const d of dirs) await d.dst.synchronize();
    const times = [];
    for (let r = 0; r < trials; r++) {
      for (const d of dirs) d.start.record(d.dst);
      for (let i = 0; i < copies; i++) await once();
      for (const d of dirs) d.end.record(d.dst);
      for (const d of dirs) await d.end.wait();
      times.push(Math.max(...dirs.map((d) => d.start.elapsedMs(d.end))) / copies);
    }
    const ms = h.median(times);
    const method = both
      ? 'tensor.copyTo cuda:0 -> cuda:1 and cuda:1 -> cuda:0 at once (cudaMemcpyPeerAsync), bytes per direction'
      : 'tensor.copyTo cuda:0 -> cuda:1 (cudaMemcpyPeerAsync), one-way bytes';
    return { bytes, ms, gbPerS: bytes / (ms * 1e-3) / 1e9, method };
  } finally {
    for (const d of dirs) {
      await d.s.synchronize();
      d.src.dispose();
      d.start.dispose();
      d.end.dispose();
      d.s.dispose();
    }
  }
}

/** The inputs of one mode on both ranks (the same for every payload of the mode). */
function inputsOf(moe, seed, mode, T, devices = ['cuda:0', 'cuda:1']) {
  const ranks = [];
  for (let r = 0; r < RANKS; r++) {
    const rng = new h.Rng(seed * 65536 + (mode === 'decode' ? 1000 : 0) + r);
    const device = devices[r];
    const bits = rng.bf16Bits(T * HIDDEN, { minExp: -6, maxExp: 2 });
    const route = routing(rng, T);
    ranks.push({
      device,
      bits,
      route,
      x: moe.fromBytes(bits, { dtype: 'bf16', shape: [T, HIDDEN], device }),
      ids: moe.fromArray(route.ids, { dtype: 'i32', shape: [T, TOP_K], device }),
      weights: moe.fromArray(route.weights, { shape: [T, TOP_K], device }),
    });
  }
  return ranks;
}

function bf16ToF32(bits) {
  const u = new Uint32Array(1);
  const f = new Float32Array(u.buffer);
  u[0] = bits << 16;
  return f[0];
}

/**
 * The check of a round: each expert returns its input rows (y = the dispatched tokens), so
 * combine gives sum_k w_k x = x (weights sum to 1) up to the payload's rounding. Relative L2 of
 * the first rows of each rank; the contiguous layout's row count against the routing's pairs.
 */
async function checkRound(c, bs, inputs, outs, streams, sent) {
  const notes = [];
  const errs = [];
  const rows = Math.min(c.tokens, 64);
  for (let r = 0; r < RANKS; r++) {
    const got = await outs[r].slice(0, rows).toArray({ stream: streams[r] });
    let d2 = 0, n2 = 0;
    for (let i = 0; i < rows * HIDDEN; i++) {
      const want = bf16ToF32(inputs[r].bits[i]);
      d2 += (got[i] - want) ** 2;
      n2 += want * want;
    }
    errs.push(Math.sqrt(d2 / n2));
    const l = bs[r].expertLayout;
    const [dropped] = await l.dropped.toArray({ stream: streams[r] });
    const [errors] = await l.errors.toArray({ stream: streams[r] });
    if (dropped !== 0) notes.push(`rank ${r}: ${dropped} pairs dropped`);
    if (errors !== 0) notes.push(`rank ${r}: ${errors} malformed ids received`);
    if (c.layout === 'contiguous') {
      const [used] = await l.usedRows.toArray({ stream: streams[r] });
      const want = sent[0].pairs[r] + sent[1].pairs[r];
      if (used !== want) notes.push(`rank ${r}: ${used} rows received, the routing sends ${want} pairs`);
    }
  }
  // bound per payload: bf16 exact up to the f32 sum (and the partials' bf16 rounding, reduced);
  // fp8 e4m3 (2^-4 relative); nvfp4 (block amax / 6)
  const bound = { bf16: 2 ** -7, fp8: 2 ** -4, nvfp4: 0.25 }[c.payload];
  const worst = Math.max(...errs);
  if (!(worst <= bound)) notes.push(`combine(dispatch(x)) differs from x by ${worst.toExponential(2)} relative L2 (expected <= ${bound})`);
  return { relL2: errs, ok: notes.length === 0, notes };
}

class CaptureFailed extends Error {}

/**
 * One case on a fresh group and fresh buffers. Graph timing unless `eager`; a capture that fails
 * throws CaptureFailed (the buffers are then unusable: the caller runs the case again, eagerly).
 */
async function runCase(moe, c, inputs, sent, { iters, sms, eager }) {
  const devices = inputs.map((i) => i.device);
  // the inputs were uploaded on the devices' default streams: done before other streams read them
  await Promise.all(devices.filter((d) => d !== 'cpu').map((d) => moe.defaultStream(d).synchronize()));
  const pgs = await moe.initProcessGroup({ ranks: 'all', devices, timeoutMs: TIMEOUT_MS });
  const made = [];
  const streams = devices.map((d) => moe.createStream(d));
  let bs = [];
  const dispatch = (r) => bs[r].dispatch(inputs[r].x, { ids: inputs[r].ids, weights: inputs[r].weights }, { stream: streams[r] });
  try {
    const options = { maxTokensPerRank: c.tokens, hidden: HIDDEN, topK: TOP_K, numExperts: EXPERTS, payload: c.payload, layout: c.layout, combine: c.combine, gather: c.gather };
    if (sms !== undefined) options.sms = sms;
    bs = await Promise.all(pgs.map((pg) => moe.createEpBuffer(pg, options)));
    const outs = devices.map((d, r) => moe.empty([c.tokens, HIDDEN], { dtype: 'bf16', device: d, stream: streams[r] }));
    made.push(...outs);
    // the experts' outputs: the dispatched rows themselves; with gather, the received tokens
    // expanded into the layout's rows on the host in the untimed rounds (the timed ones reuse them)
    const ys = bs.map((b) => b.tokens);
    const expand = async (r, res) => {
      const rowBytes = 2 * HIDDEN;
      const tokens = await res.tokens.toBytes({ stream: streams[r] });
      const pairs = await res.layout.sourceIndex.toArray({ stream: streams[r] });
      const y = new Uint8Array(bs[r].rows * rowBytes);
      for (let row = 0; row < pairs.length; row++) {
        const slot = pairs[row] >= 0 ? Math.floor(pairs[row] / TOP_K) : -1;
        if (slot >= 0) y.set(tokens.subarray(slot * rowBytes, (slot + 1) * rowBytes), row * rowBytes);
      }
      ys[r] = moe.fromBytes(y, { dtype: 'bf16', shape: [bs[r].rows, HIDDEN], device: devices[r] });
      made.push(ys[r]);
      await moe.defaultStream(devices[r]).synchronize();
    };
    const events = () => devices.map((d) => [0, 1, 2].map(() => new moe.Event(d, { timing: true })));
    // one eager round on both ranks; e: events to record around dispatch and combine
    const round = async (e) => {
      if (e) for (let r = 0; r < RANKS; r++) e[r][0].record(streams[r]);
      const rs = await Promise.all(bs.map((_, r) => dispatch(r)));
      if (e) for (let r = 0; r < RANKS; r++) e[r][1].record(streams[r]);
      if (c.gather && !e) for (let r = 0; r < RANKS; r++) await expand(r, rs[r]);
      await Promise.all(bs.map((b, r) => b.combine(ys[r], rs[r].handle, { out: outs[r], stream: streams[r] })));
      if (e) for (let r = 0; r < RANKS; r++) e[r][2].record(streams[r]);
    };
    // eager rounds first: lazy kernel loading and first-touch costs stay out of the capture
    for (let i = 0; i < 2; i++) await round();

    const samples = [];
    if (eager) {
      for (let i = 0; i < WARMUP; i++) await round();
      for (let i = 0; i < iters; i++) {
        const e = events();
        await round(e);
        await Promise.all(e.map((x) => x[2].wait()));
        samples.push(sample(e));
        for (const x of e.flat()) x.dispose();
      }
    } else {
      const graphs = { dispatch: [], combine: [] };
      try {
        for (const op of ['dispatch', 'combine']) {
          for (let r = 0; r < RANKS; r++) {
            let p;
            const g = moe.captureGraph(streams[r], () => {
              p = op === 'dispatch' ? dispatch(r) : bs[r].combine(ys[r], bs[r].lastHandle, { out: outs[r], stream: streams[r] });
              p.catch(() => {}); // awaited below
            });
            made.push(g);
            graphs[op].push(g);
            await p;
          }
        }
      } catch (e) {
        throw new CaptureFailed(`${e && e.code ? `${e.code}: ` : ''}${String(e && e.message).split('\n')[0].slice(0, 160)}`);
      }
      const replay = (e) => {
        for (let r = 0; r < RANKS; r++) {
          if (e) e[r][0].record(streams[r]);
          graphs.dispatch[r].replay(streams[r]);
          if (e) e[r][1].record(streams[r]);
        }
        for (let r = 0; r < RANKS; r++) {
          graphs.combine[r].replay(streams[r]);
          if (e) e[r][2].record(streams[r]);
        }
      };
      for (let i = 0; i < WARMUP; i++) replay();
      await Promise.all(bs.map((b, r) => b.check(streams[r])));
      // rounds queued back to back, as a model's layers run them
      const ev = Array.from({ length: iters }, events);
      for (const e of ev) replay(e);
      await Promise.all(bs.map((b, r) => b.check(streams[r])));
      for (const e of ev) {
        samples.push(sample(e));
        for (const x of e.flat()) x.dispose();
      }
    }
    const check = await checkRound(c, bs, inputs, outs, streams, sent);
    for (const n of check.notes) console.error(`  ${c.mode} ${c.payload} ${c.combine}${c.gather ? ' gather' : ''}: check: ${n}`);
    return {
      timing: eager ? 'eager' : 'cuda-graph',
      sms: bs[0].sms,
      dispatchMs: h.median(samples.map((s) => s.dispatch)),
      combineMs: h.median(samples.map((s) => s.combine)),
      perRank: {
        dispatchMs: [0, 1].map((r) => h.median(samples.map((s) => s.ranks[r].dispatch))),
        combineMs: [0, 1].map((r) => h.median(samples.map((s) => s.ranks[r].combine))),
      },
      check,
    };
  } finally {
    await Promise.all(streams.map((s) => s.synchronize()));
    for (const x of made) x.dispose();
    for (const b of bs) b.dispose();
    for (const pg of pgs) pg.destroy();
    for (const s of streams) s.dispose();
  }
}

/** One round's times from its events (recorded and completed): the longer rank's, and each rank's. */
function sample(e) {
  const ranks = e.map(([a, b, c]) => ({ dispatch: a.elapsedMs(b), combine: b.elapsedMs(c) }));
  return { dispatch: Math.max(...ranks.map((x) => x.dispatch)), combine: Math.max(...ranks.map((x) => x.combine)), ranks };
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * The peer's rows by (mode, payload, tokens, combine): its exact-combine rows as measured; a
 * reduced combine moves one bf16 row per token and rank, the bytes of the peer's bf16 dispatch,
 * so its row takes that figure for combine (the dispatch figure stays the payload's).
 */
function peerCases(peer) {
  if (!peer) return [];
  const cases = peer.cases.map((p) => ({ ...p, combine: 'exact' }));
  for (const p of peer.cases) {
    const bf16 = peer.cases.find((q) => q.mode === p.mode && q.tokens === p.tokens && q.payload === 'bf16');
    if (bf16) cases.push({ ...p, combine: 'reduced', combineMs: bf16.dispatchMs });
  }
  // gather moves the same bytes
  return [...cases.map((p) => ({ ...p, gather: false })), ...cases.map((p) => ({ ...p, gather: true }))];
}

/** The merged rows: ours, their GB/s and % of the copy, the peer's NCCL times on the same bytes. */
function report(rows, copy, peer, copyBoth) {
  const us = (ms) => (ms === null || ms === undefined ? undefined : (ms * 1e3).toFixed(1));
  const copyGbs = copy ? copy.gbPerS : peer && peer.copy ? peer.copy.gbPerS : undefined;
  const copySource = copy ? 'ours' : peer && peer.copy ? 'PyTorch peer' : null;
  const rate = (bytes, ms) => (ms > 0 ? mean(bytes) / (ms * 1e-3) / 1e9 : undefined);
  const pct = (gbs) => (gbs !== undefined && copyGbs ? (100 * gbs) / copyGbs : undefined);
  const both = (a, b, f) => (a === undefined && b === undefined ? undefined : `${a === undefined ? '-' : f(a)} / ${b === undefined ? '-' : f(b)}`);
  const met = { met: 0, of: 0 };
  for (const r of rows) {
    if (r.error) continue;
    r.dispatchGbPerS = rate(r.bytes.dispatch.cross, r.dispatchMs);
    r.combineGbPerS = rate(r.bytes.combine.cross, r.combineMs);
    r.dispatchPctCopy = pct(r.dispatchGbPerS);
    r.combinePctCopy = pct(r.combineGbPerS);
    if (r.mode === 'throughput') {
      r.targets = { dispatch: r.dispatchPctCopy !== undefined ? r.dispatchPctCopy >= TARGET_PCT : null, combine: r.combinePctCopy !== undefined ? r.combinePctCopy >= TARGET_PCT : null };
    } else {
      r.targets = { dispatch: r.dispatchMs * 1e3 <= TARGET_DECODE_US.dispatch, combine: r.combineMs * 1e3 <= TARGET_DECODE_US.combine };
    }
    for (const v of Object.values(r.targets)) {
      if (v === null) continue;
      met.of++;
      if (v) met.met++;
    }
  }
  const table = h.merge(rows, peerCases(peer), {
    key: ['mode', 'payload', 'tokens', 'combine', 'gather'],
    missing: '-',
    columns: [
      { title: 'case', cell: ({ ours }) => `${ours.mode} ${ours.payload}${ours.gather ? ' gather' : ''}${ours.timing && ours.timing.startsWith('eager') ? ' (eager)' : ''}` },
      { title: 'combine', cell: ({ ours }) => ours.combine },
      { title: 'mode', cell: ({ ours }) => `${ours.mode} (${ours.layout})` },
      { title: 'payload', cell: ({ ours }) => `${ours.payload} (${ours.bytes.rowBytes} B/row)` },
      { title: 'tokens/rank', cell: ({ ours }) => ours.tokens },
      { title: 'ours dispatch (µs)', cell: ({ ours }) => (ours.error ? `failed: ${ours.error}` : us(ours.dispatchMs)) },
      { title: 'ours combine (µs)', cell: ({ ours }) => us(ours.combineMs) },
      {
        title: 'MB per direction (all, local included), dispatch / combine',
        cell: ({ ours }) => {
          const mb = (x) => (x / 1e6).toFixed(x < 1e7 ? 2 : 1);
          return `${mb(mean(ours.bytes.dispatch.cross))} (${mb(ours.bytes.dispatch.total)}) / ${mb(mean(ours.bytes.combine.cross))} (${mb(ours.bytes.combine.total)})`;
        },
      },
      { title: 'GB/s per direction, dispatch / combine', cell: ({ ours }) => both(ours.dispatchGbPerS, ours.combineGbPerS, (x) => x.toFixed(0)) },
      { title: '% of one-way copy, dispatch / combine', cell: ({ ours }) => both(ours.dispatchPctCopy, ours.combinePctCopy, (x) => `${x.toFixed(0)}%`) },
      { title: 'NCCL all_to_all_single (µs), dispatch / combine bytes', cell: ({ peer: p }) => p && both(p.dispatchMs, p.combineMs, us) },
      {
        title: 'speedup over NCCL, dispatch / combine',
        cell: ({ ours, peer: p }) => (p && !ours.error ? both(h.ratio(p.dispatchMs, ours.dispatchMs), h.ratio(p.combineMs, ours.combineMs), (x) => x) : undefined),
      },
    ],
  });
  const timings = [...new Set(rows.filter((r) => !r.error).map((r) => r.timing.split(' ')[0]))];
  const copyLine = copyGbs
    ? `One-way GPU0 -> GPU1 copy bandwidth ${copyGbs.toFixed(0)} GB/s (${copySource}: ${copySource === 'ours' ? 'tensor.copyTo between the devices' : 'torch copy between the devices'}, 1 GiB, median of 10 x 5 copies)` +
      (copy && peer && peer.copy ? `; the PyTorch peer measured ${peer.copy.gbPerS.toFixed(0)} GB/s.` : '.')
    : 'One-way copy bandwidth: not measured (the % column is empty).';
  const bothLine = copyBoth
    ? ` Both directions at once (each GPU copying to the other, as all-to-all traffic does): ${copyBoth.gbPerS.toFixed(0)} GB/s per direction` +
      (copyGbs ? ` (${((100 * copyBoth.gbPerS) / copyGbs).toFixed(0)}% of the one-way figure).` : '.')
    : '';
  return {
    met,
    lines: [
      `${RANKS} ranks (cuda:0, cuda:1) of one process, nvlink transport; hidden ${HIDDEN}, top-${TOP_K} of ${EXPERTS} experts ` +
        `(${EXPERTS / RANKS} per rank), random routing (seeded, uniform, weights summing to 1).` +
        (peer ? ` NCCL: PyTorch ${peer.torch}, ${peer.timing}.` : ''),
      '',
      ...table.lines,
      '',
      `Targets: throughput dispatch and combine >= ${TARGET_PCT}% of the one-way copy bandwidth; decode dispatch <= ` +
        `${TARGET_DECODE_US.dispatch} µs, combine <= ${TARGET_DECODE_US.combine} µs: ${met.met} of ${met.of} met.`,
      '',
      `${copyLine}${bothLine} Timing: ${timings.join(' / ') || 'none'}. ` +
        'Ours: each rank\'s dispatch and its combine captured in CUDA graphs of their own (a capture leaves out the host gate that ' +
        'eager in-process ranks meet on between send and receive; the receive kernels wait for the other rank on the device), ' +
        'rounds queued back to back, CUDA events on each rank\'s stream; a round\'s time is the longer rank\'s, then the median ' +
        'over rounds (eager, where a case says so: events around the awaited calls, the host\'s wait included). Dispatch ' +
        'includes the payload encode, the send, the wait and the layout with the rows dequantized to bf16 (one per pair; ' +
        'gather: one per received token, which the expert GEMM reads through the layout); combine the send ' +
        'of the bf16 expert rows (exact) or of each rank\'s bf16 partial sums (reduced) and the sum. GB/s: bytes sent to the ' +
        'other GPU per direction (dispatch: tokens with an expert there x the payload row; exact combine: pairs with their ' +
        'expert there x the bf16 row, 2 x hidden bytes; reduced combine: tokens with an expert there x the bf16 row) over ' +
        'the time (MB: the mean of the two directions, and in brackets everything all ranks send, to themselves included). NCCL: all_to_all_single between 2 processes on a uint8 tensor of the same row bytes, each rank sending ' +
        `every token to each rank (dispatch; with ${EXPERTS / RANKS} of ${EXPERTS} experts per rank a token reaches the ` +
        'other rank with probability 0.996) or tokens x k / 2 bf16 rows to each rank (exact combine); a reduced combine ' +
        'moves the bytes of the bf16 dispatch (every token\'s bf16 row to each rank), so its NCCL figure is that case\'s; ' +
        'speedup = NCCL / ours.',
    ],
  };
}

async function main() {
  const args = h.parse({
    usage: 'usage: node benchmarks/ep.js [--out DIR] [--peer FILE] [--seed N] [--iters N] [--sms N] [--eager]',
    options: {
      peer: { type: 'string', value: 'FILE', help: 'JSON of benchmarks/peers/ep.py, joined into the table' },
      seed: { type: 'string', value: 'N', default: '1', help: 'seed of the tokens and the routing' },
      iters: { type: 'string', value: 'N', default: String(ITERS), help: 'timed rounds per case' },
      sms: { type: 'string', value: 'N', help: 'CTAs of the copy kernels (default: the buffer\'s)' },
      eager: { type: 'boolean', help: 'time the awaited calls instead of CUDA graphs' },
    },
  });
  const seed = h.intArg(args.seed, 'seed');
  const iters = h.intArg(args.iters, 'iters', 1);
  const sms = args.sms === undefined ? undefined : h.intArg(args.sms, 'sms', 1);
  h.requireGpu();
  const moe = h.moe();
  const devs = moe.devices();
  if (devs.length < RANKS) {
    console.error(`benchmarks/ep.js: needs ${RANKS} CUDA GPUs of one host; ${devs.length} is usable (${devs.map((d) => `${d.device} ${d.name}`).join(', ')}); nothing was measured.`);
    process.exit(h.EXIT_NO_GPU);
  }
  const dev = devs[0];
  console.error(`${devs.slice(0, RANKS).map((d) => `${d.device} ${d.name}`).join(', ')}`);

  const rows = [];
  const byMode = new Map();
  for (const c of CASES) {
    if (!byMode.has(c.mode)) {
      for (const old of byMode.values()) for (const i of old.inputs) for (const t of [i.x, i.ids, i.weights]) t.dispose();
      byMode.clear();
      const inputs = inputsOf(moe, seed, c.mode, c.tokens);
      byMode.set(c.mode, { inputs, sent: traffic(inputs.map((i) => i.route), c.tokens) });
    }
    const { inputs, sent } = byMode.get(c.mode);
    const row = { mode: c.mode, payload: c.payload, tokens: c.tokens, layout: c.layout, combine: c.combine, gather: c.gather, bytes: bytesOf(c, sent), sent };
    try {
      const opts = { iters, sms, eager: !!args.eager };
      try {
        Object.assign(row, await runCase(moe, c, inputs, sent, opts));
      } catch (e) {
        if (!(e instanceof CaptureFailed)) throw e;
        console.error(`  ${c.mode} ${c.payload} ${c.combine}${c.gather ? ' gather' : ''}: the capture failed (${e.message}); timed eagerly`);
        Object.assign(row, await runCase(moe, c, inputs, sent, { ...opts, eager: true }), { timing: `eager (capture failed: ${e.message})` });
      }
      console.error(`  ${c.mode} ${c.payload} ${c.combine}${c.gather ? ' gather' : ''} T=${c.tokens}: dispatch ${(row.dispatchMs * 1e3).toFixed(1)} us, combine ${(row.combineMs * 1e3).toFixed(1)} us (${row.timing})`);
    } catch (e) {
      row.error = `${e && e.code ? `${e.code}: ` : ''}${String(e && e.message).split('\n')[0]}`;
      console.error(`  ${c.mode} ${c.payload} ${c.combine}${c.gather ? ' gather' : ''} T=${c.tokens}: failed: ${row.error}`);
    }
    rows.push(row);
  }
  for (const old of byMode.values()) for (const i of old.inputs) for (const t of [i.x, i.ids, i.weights]) t.dispose();

  let copy = null;
  try {
    copy = await peerCopy(moe);
    console.error(`  one-way copy cuda:0 -> cuda:1: ${copy.gbPerS.toFixed(0)} GB/s`);
  } catch (e) {
    console.error(`  one-way copy cuda:0 -> cuda:1 failed: ${e && e.message}`);
  }
  let copyBoth = null;
  try {
    copyBoth = await peerCopy(moe, { both: true });
    console.error(`  two-way copy, both directions at once: ${copyBoth.gbPerS.toFixed(0)} GB/s per direction`);
  } catch (e) {
    console.error(`  two-way copy failed: ${e && e.message}`);
  }

  let peer;
  if (args.peer && fs.existsSync(args.peer)) peer = h.readJson(args.peer);
  else if (args.peer) console.error(`(no PyTorch results at ${args.peer}: the NCCL columns stay empty)`);
  const { lines, met } = report(rows, copy, peer, copyBoth);
  const title = `Expert-parallel dispatch and combine (2 GPUs, hidden ${HIDDEN}, top-${TOP_K} of ${EXPERTS}) on ${dev.name}`;
  console.log([title, '', ...lines].join('\n'));
  const result = {
    benchmark: 'ep',
    ...h.header(dev),
    devices: devs.slice(0, RANKS).map((d) => d.name),
    settings: { ranks: RANKS, hidden: HIDDEN, experts: EXPERTS, k: TOP_K, warmup: WARMUP, iters, seed, sms: sms ?? null, timeoutMs: TIMEOUT_MS, eager: !!args.eager },
    copy,
    copyBoth,
    targets: { throughputPctCopy: TARGET_PCT, decodeUs: TARGET_DECODE_US, met: met.met, of: met.of },
    rows,
    peer: peer ?? null,
  };
  h.writeResults(args.out, `ep-${result.card}`, { result, title, lines });
  if (rows.every((r) => r.error)) process.exit(1);
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { report, payloadBytes, routing, traffic, bytesOf, inputsOf, runCase, peerCases, CASES };
