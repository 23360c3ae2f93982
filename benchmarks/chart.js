#!/usr/bin/env node
// Draws a benchmark's results JSON as a standalone SVG with vega-lite (compiled to a vega view
// and rendered without a canvas):
//   nvfp4_gemm (the merged JSON of `nvfp4.js merge`): % of the ceiling against M, log scale,
//     one line per shape, with the decode and prefill targets;
//   mtp: % of the copy bandwidth per case, one bar per batch size;
//   launch_overhead: microseconds per call per path.
//
//   node benchmarks/chart.js RESULTS.json [OUT.svg]     (default: RESULTS.svg)
//
// Needs the devDependencies vega and vega-lite (npm install).
'use strict';
const fs = require('node:fs');
const { pathToFileURL } = require('node:url');
const h = require('./harness');

const WIDTH = 560;

// The targets the NVFP4 issue sets, as the merged table counts them.
const DECODE_MAX_M = 64;
const DECODE_TARGET = 85;
const PREFILL_TARGET = 90;

/** An ES module by name; resolved through require first, so NODE_PATH is honoured. */
async function load(name) {
  let file;
  try {
    file = require.resolve(name);
  } catch {
    throw new Error(`chart.js needs ${name} (a devDependency: npm install)`);
  }
  return import(pathToFileURL(file).href);
}

function nvfp4Spec(result) {
  const rows = result.rows
    .filter((r) => typeof r.percentOfCeiling === 'number')
    .map((r) => ({ shape: `${r.N} x ${r.K}`, M: r.M, percent: r.percentOfCeiling, regime: r.regime }));
  if (!rows.length) throw new Error('chart.js: no rows with a % of ceiling');
  const ms = [...new Set(rows.map((r) => r.M))].sort((a, b) => a - b);
  const decode = ms.filter((m) => m <= DECODE_MAX_M);
  const prefill = ms.filter((m) => m > DECODE_MAX_M);
  const targets = [
    ...(decode.length ? [{ from: decode[0], to: decode[decode.length - 1], percent: DECODE_TARGET, label: `decode target ${DECODE_TARGET}%` }] : []),
    ...(prefill.length ? [{ from: prefill[0], to: prefill[prefill.length - 1], percent: PREFILL_TARGET, label: `prefill target ${PREFILL_TARGET}%` }] : []),
  ];
  const x = { field: 'M', type: 'quantitative', scale: { type: 'log', base: 2 }, axis: { values: ms, format: 'd', title: 'M (tokens, log scale)' } };
  return {
    title: {
      text: `NVFP4 GEMM (W4A16) on ${result.device}: % of the ceiling`,
      subtitle: [
        `M ≤ ${DECODE_MAX_M}: (weight + scale bytes) / time, over the copy bandwidth`,
        `M > ${DECODE_MAX_M}: cuBLAS BF16 time / our time`,
      ],
    },
    width: WIDTH,
    height: 320,
    layer: [
      {
        data: { values: rows },
        mark: { type: 'line', point: true },
        encoding: {
          x,
          y: { field: 'percent', type: 'quantitative', title: '% of ceiling' },
          color: { field: 'shape', type: 'nominal', title: 'N x K', sort: null },
          tooltip: [{ field: 'shape' }, { field: 'M' }, { field: 'percent', format: '.0f' }],
        },
      },
      {
        data: { values: targets },
        mark: { type: 'rule', strokeDash: [6, 4], color: '#888' },
        encoding: { x: { ...x, field: 'from' }, x2: { field: 'to' }, y: { field: 'percent', type: 'quantitative' } },
      },
      {
        data: { values: targets },
        mark: { type: 'text', align: 'left', baseline: 'bottom', dy: -3, color: '#666' },
        encoding: { x: { ...x, field: 'from' }, y: { field: 'percent', type: 'quantitative' }, text: { field: 'label' } },
      },
    ],
  };
}

function mtpSpec(result) {
  const cases = [...new Set(result.rows.map((r) => r.case))];
  const rows = result.rows.map((r) => ({
    case: r.case,
    batch: `B = ${r.B}`,
    percent: (100 * r.gbPerS) / result.copy.gbPerS,
    label: `${(r.ms * 1e3).toFixed(1)} µs`,
  }));
  const y = { field: 'case', type: 'nominal', sort: cases, title: null, axis: { labelLimit: 400 } };
  const yOffset = { field: 'batch', type: 'nominal', sort: null };
  return {
    title: {
      text: `MTP draft verification on ${result.device}: % of the copy bandwidth`,
      subtitle: `bytes of the logits given over our time; copy ${result.copy.gbPerS.toFixed(0)} GB/s (read + write)`,
    },
    width: WIDTH,
    data: { values: rows },
    encoding: { y, yOffset },
    layer: [
      {
        mark: 'bar',
        encoding: {
          x: { field: 'percent', type: 'quantitative', title: '% of copy bandwidth' },
          color: { field: 'batch', type: 'nominal', title: null, sort: null, legend: { orient: 'top' } },
        },
      },
      {
        mark: { type: 'text', align: 'left', dx: 3, fontSize: 10, color: '#333' },
        encoding: { x: { field: 'percent', type: 'quantitative' }, text: { field: 'label' } },
      },
    ],
  };
}

function launchSpec(result) {
  const rows = result.rows.map((r) => ({ path: r.label, us: r.usPerCall }));
  return {
    title: { text: `Launch overhead on ${result.device}`, subtitle: `median of ${result.bursts} bursts of ${result.burst} launches, enqueue time` },
    width: WIDTH,
    data: { values: rows },
    mark: 'bar',
    encoding: {
      y: { field: 'path', type: 'nominal', sort: null, title: null, axis: { labelLimit: 400 } },
      x: { field: 'us', type: 'quantitative', title: 'µs per call' },
    },
  };
}

function decodeStepSpec(result) {
  // tokens/s per GPU against batch size: ours, the BF16 floor and the measured PyTorch BF16 block
  const rows = [];
  for (const r of result.rows) {
    rows.push({ B: r.B, series: 'ours: NVFP4 + MTP-3', tps: r.tokensPerSecond });
    rows.push({ B: r.B, series: 'BF16 floor (weight bytes / copy bandwidth)', tps: r.floor.tokensPerSecond });
    if (r.peer && r.peer.tokensPerSecond) rows.push({ B: r.B, series: 'PyTorch BF16 (measured)', tps: r.peer.tokensPerSecond });
  }
  return {
    title: { text: `One decode step on ${result.device}`, subtitle: 'MoE layers + LM head; attention, norms and the draft head outside the step' },
    width: WIDTH,
    height: 260,
    data: { values: rows },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'B', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'requests per step (B)' },
      y: { field: 'tps', type: 'quantitative', scale: { type: 'log' }, title: 'tokens/s per GPU' },
      color: { field: 'series', type: 'nominal', title: null, legend: { orient: 'bottom', direction: 'vertical' } },
    },
  };
}

/** The vega-lite spec for a results object, by its `benchmark` field. */
function spec(result) {
  const make = { nvfp4_gemm: nvfp4Spec, mtp: mtpSpec, launch_overhead: launchSpec, decode_step: decodeStepSpec }[result.benchmark];
  if (!make) throw new Error(`chart.js: no chart for benchmark "${result.benchmark}"`);
  if (result.benchmark === 'nvfp4_gemm' && !result.rows.some((r) => 'percentOfCeiling' in r)) {
    throw new Error('chart.js: this is an unmerged nvfp4 result; chart the JSON that `nvfp4.js merge` writes');
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    background: 'white',
    padding: 12,
    config: { font: 'Helvetica, Arial, sans-serif', title: { anchor: 'start', subtitleColor: '#555' } },
    ...make(result),
  };
}

/** The chart of a results object as SVG text. */
async function chart(result) {
  const [vega, vl] = await Promise.all([load('vega'), load('vega-lite')]);
  const view = new vega.View(vega.parse(vl.compile(spec(result)).spec), { renderer: 'none' });
  try {
    return (await view.toSVG()) + '\n';
  } finally {
    view.finalize();
  }
}

async function main() {
  const usage = 'usage: node benchmarks/chart.js RESULTS.json [OUT.svg]';
  const { positionals } = h.parse({ usage, positionals: true, out: false });
  if (positionals.length < 1 || positionals.length > 2) throw new h.UsageError(usage);
  const [input, output = input.replace(/\.json$/, '') + '.svg'] = positionals;
  fs.writeFileSync(output, await chart(h.readJson(input)));
  console.log(`wrote ${output}`);
}

if (require.main === module) h.run(main, { gpu: false });
module.exports = { chart, spec };
