#!/usr/bin/env node
// One speculative decode step of the demo's DeepSeek-V3-shaped slice (L MoE layers + the
// 129280 x 7168 LM head in NVFP4, MTP with 3 synthetic drafts at acceptance 0.8, the whole step
// one CUDA graph) for B = 1, 16, 64, 256 requests, against two BF16 references:
//
//   floor: the BF16 weight bytes one plain decode step (B tokens, one per request) must read,
//          over the copy bandwidth measured in the same run. Routed experts per layer: the
//          distinct experts the first position of each request selects in our step (the real
//          routing of the run); plus the shared expert, the router and the LM head.
//   peer:  benchmarks/peers/decode_step.py, the same layers and LM head in PyTorch BF16 at one
//          token per request, measured (run_decode_step.sh runs it and calls `merge`).
//
// The weights are built once for every B. Attention, norms and the draft head are outside the step.
//
//   node benchmarks/decode_step.js [--out DIR] [--batch 1,16,64,256] [--layers 4] [--steps 20]
//   node benchmarks/decode_step.js merge --ours FILE [--peer FILE] [--out DIR]
//
// Without a CUDA GPU it exits with status 3 (harness.EXIT_NO_GPU).
'use strict';
const h = require('./harness');

const DRAFTS = 3;
const ACCEPTANCE = 0.8;
const BATCHES = [1, 16, 64, 256];
const USAGE = [
  'usage: node benchmarks/decode_step.js [--out DIR] [--batch 1,16,64,256] [--layers 4] [--steps 20] [--seed 1]',
  '       node benchmarks/decode_step.js merge --ours FILE [--peer FILE] [--out DIR]',
].join('\n');

/** Expected distinct experts of B independent uniform top-k choices out of E. */
function expectedDistinct(E, k, B) {
  return E * (1 - (1 - k / E) ** B);
}

/** BF16 bytes a plain decode step reads: per layer its distinct routed experts, shared expert and router; the LM head. */
function floorBytes(shape, distinctPerLayer) {
  const { hidden: H, inner: I, sharedInner: Is, experts: E, vocab: V } = shape;
  const perLayer = distinctPerLayer.map((d) => 2 * (d * 3 * I * H + 3 * Is * H + E * H));
  return perLayer.reduce((a, b) => a + b, 0) + 2 * V * H;
}

async function measure(args) {
  const batches = h.numberList(args.batch, 'batch', (x) => Number.isInteger(x) && x >= 1);
  const L = h.intArg(args.layers, 'layers', 1);
  const steps = h.intArg(args.steps, 'steps', 1);
  const seed = h.intArg(args.seed, 'seed', 0);
  h.requireGpu();
  const moe = h.moe();
  const { buildDemoSlice, runDemoStep } = require('../dist/demo');
  const dev = moe.devices()[0];
  const stream = moe.createStream(dev.device);
  let copy;
  try {
    copy = await h.copyBandwidth(stream);
  } finally {
    stream.dispose();
  }
  console.error(`${dev.name}: device-to-device copy ${copy.tbs.toFixed(3)} TB/s`);
  const t0 = Date.now();
  const slice = await buildDemoSlice({ device: 'cuda', shape: 'full', layers: L, seed, log: (l) => console.error(l) });
  console.error(`weights built in ${((Date.now() - t0) / 1e3).toFixed(1)} s`);
  const rows = [];
  try {
    for (const B of batches) {
      const r = await runDemoStep(slice, { batch: B, drafts: DRAFTS, steps, acceptance: ACCEPTANCE, mode: 'greedy', logits: 'bf16', seed });
      const { shape } = r;
      const bytes = floorBytes(shape, r.firstPositionExperts);
      const floorMs = (bytes / (copy.gbPerS * 1e9)) * 1e3;
      const floorTps = B / (floorMs / 1e3);
      const row = {
        B,
        tokensPerStep: r.tokensPerStep,
        stepMs: r.stepMs,
        stepMsMedian: r.stepMsMedian,
        stages: r.stages,
        acceptedPerStep: r.acceptedPerStep,
        expectedAcceptedPerStep: r.expectedAcceptedPerStep,
        tokensPerSecond: r.tokensPerSecond,
        floor: {
          distinctExperts: r.firstPositionExperts,
          expectedDistinctUniform: expectedDistinct(shape.experts, shape.k, B),
          bf16Bytes: bytes,
          ms: floorMs,
          tokensPerSecond: floorTps,
        },
        oursOverFloor: r.tokensPerSecond / floorTps,
      };
      rows.push(row);
      console.error(
        `  B=${B}: step ${r.stepMs.toFixed(3)} ms, ${r.acceptedPerStep.toFixed(3)} accepted/step, ${r.tokensPerSecond.toFixed(0)} tokens/s; ` +
          `BF16 floor ${floorMs.toFixed(3)} ms (${floorTps.toFixed(0)} tokens/s), ${row.oursOverFloor.toFixed(2)}x`,
      );
    }
  } finally {
    slice.dispose();
  }
  const result = {
    benchmark: 'decode_step-ours',
    ...h.header(dev),
    settings: { layers: L, drafts: DRAFTS, acceptance: ACCEPTANCE, mode: 'greedy', logits: 'bf16', steps, seed, batches },
    shape: { ...slice.shape, layers: L },
    weights: slice.weights,
    copy,
    rows,
  };
  const { lines, title } = report(result, null);
  console.log([title, '', ...lines].join('\n'));
  h.writeResults(args.out, `decode_step-ours-${result.card}`, { result, title, lines });
}

/** The Markdown of ours (with the peer where given). */
function report(ours, peer) {
  const L = ours.settings.layers;
  const k = (x) => (x === undefined || x === null ? undefined : Math.round(x).toLocaleString('en-US'));
  const table = h.merge(ours.rows, peer ? peer.rows : [], {
    key: ['B'],
    columns: [
      { title: 'B', cell: ({ ours: r }) => r.B },
      { title: 'ours tokens/s/GPU', cell: ({ ours: r }) => k(r.tokensPerSecond) },
      { title: 'accepted/step', cell: ({ ours: r }) => r.acceptedPerStep.toFixed(2) },
      { title: 'ours step (ms)', cell: ({ ours: r }) => r.stepMs.toFixed(3) },
      { title: 'BF16 floor tokens/s', cell: ({ ours: r }) => k(r.floor.tokensPerSecond) },
      { title: 'ours / floor', cell: ({ ours: r }) => h.ratio(r.tokensPerSecond, r.floor.tokensPerSecond) },
      { title: 'PyTorch BF16 tokens/s', cell: ({ peer: p }) => p && k(p.tokensPerSecond) },
      { title: 'ours / PyTorch', cell: ({ ours: r, peer: p }) => p && h.ratio(r.tokensPerSecond, p.tokensPerSecond) },
    ],
  });
  const s = ours.shape;
  const lines = [
    `DeepSeek-V3-shaped slice: ${L} MoE layers (hidden ${s.hidden}, ${s.experts} routed experts of width ${s.inner}, top-${s.k}, ` +
      `shared expert of width ${s.sharedInner}) and the ${s.vocab} x ${s.hidden} LM head, random weights. ` +
      '**Attention, norms and the draft (MTP) head are outside the step** on both sides.',
    '',
    ...table.lines,
    '',
    `Ours: NVFP4 (W4A16), B requests x ${ours.settings.drafts + 1} positions (${ours.settings.drafts} synthetic drafts, each the target's greedy ` +
      `choice with probability ${ours.settings.acceptance}), greedy verification, the whole step one CUDA graph; mean of ` +
      `${ours.settings.steps} steps. tokens/s/GPU = B x accepted per request per step / step time.`,
    '',
    `BF16 floor: the BF16 weight bytes one plain decode step (B tokens, one per request, no speculation) reads — per layer the ` +
      'distinct routed experts selected by the first position of each request in our step (actual routing) x 3 x ' +
      `${s.inner} x ${s.hidden} x 2 B, the shared expert and the ${s.experts} x ${s.hidden} router; the LM head ${s.vocab} x ${s.hidden} x 2 B — ` +
      `over the device-to-device copy bandwidth of the same run (${ours.copy.tbs.toFixed(3)} TB/s, read + write). Floor tokens/s = B / that time. Goal: ours / floor >= 3x.`,
    '',
    `Distinct routed experts per layer (ours, first positions) against the expectation for uniform random top-${s.k} of ${s.experts}: ` +
      ours.rows.map((r) => `B=${r.B}: ${r.floor.distinctExperts.join('/')} (${r.floor.expectedDistinctUniform.toFixed(1)})`).join(', ') + '.',
  ];
  if (peer) {
    lines.push(
      '',
      `PyTorch BF16 (${peer.torch}, CUDA ${peer.cuda}): the same layers and LM head at one token per request per step, the faster of ` +
        `torch._grouped_mm${peer.grouped ? '' : ' (unavailable here)'} and a loop over experts, under a CUDA graph where it captures (the loop ` +
        `syncs with the host: eager). ${peer.layersMeasured} of ${peer.layersRequested} layers held on the card` +
        (peer.layersMeasured < peer.layersRequested
          ? `; its step time is the LM head plus the measured per-layer time x ${peer.layersRequested}.`
          : '.') +
        ` Per B: ${peer.rows.map((p) => `${p.B}: ${p.method}, ${p.timing}`).join('; ')}.`,
    );
  } else {
    lines.push('', 'PyTorch BF16 peer: not run (its columns read n/a).');
  }
  return { title: `One decode step (MoE layers + LM head), NVFP4 + MTP-3 against BF16, on ${ours.device}`, lines };
}

function merge(args) {
  if (!args.ours) throw new h.UsageError(`merge: --ours FILE is needed\n${USAGE}`);
  const ours = h.readJson(args.ours);
  const peer = args.peer ? h.readJson(args.peer) : null;
  const rows = h.join(ours.rows, peer ? peer.rows : [], ['B']).map(({ ours: r, peer: p }) => ({
    ...r,
    peer: p ?? null,
    oursOverPeer: p ? r.tokensPerSecond / p.tokensPerSecond : null,
  }));
  const { title, lines } = report(ours, peer);
  const { rows: _r, benchmark: _b, ...rest } = ours;
  const result = {
    ...rest,
    benchmark: 'decode_step',
    peer: peer ? { torch: peer.torch, cuda: peer.cuda, layersMeasured: peer.layersMeasured, layersRequested: peer.layersRequested, grouped: peer.grouped } : null,
    rows,
  };
  console.log([title, '', ...lines].join('\n'));
  h.writeResults(args.out, `decode_step-${result.card}`, { result, title, lines });
}

async function main() {
  const args = h.parse({
    usage: USAGE,
    positionals: true,
    options: {
      batch: { type: 'string', value: 'B,...', default: BATCHES.join(','), help: 'requests per step' },
      layers: { type: 'string', value: 'L', default: '4', help: 'MoE layers' },
      steps: { type: 'string', value: 'S', default: '20', help: 'timed steps per B' },
      seed: { type: 'string', value: 'N', default: '1', help: 'seed of the weights, inputs and drafts' },
      ours: { type: 'string', value: 'FILE', help: 'merge: our JSON' },
      peer: { type: 'string', value: 'FILE', help: "merge: the peer's JSON (optional)" },
    },
  });
  if (args.positionals[0] === 'merge') return merge(args);
  if (args.positionals.length) throw new h.UsageError(USAGE);
  return measure(args);
}

if (require.main === module) h.run(main, { gpu: false });

module.exports = { floorBytes, expectedDistinct };
