#!/usr/bin/env node
// Draws a benchmark's speedup over cuBLAS BF16 against M (log scale), one line per shape, as a
// standalone SVG. Input: the merged JSON that `node benchmarks/nvfp4.js merge` writes (rows with
// shape, M and speedupVsBf16). No dependencies.
//
//   node benchmarks/chart.js RESULTS.json [OUT.svg]     (default: RESULTS.svg)
'use strict';
const fs = require('node:fs');

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

function escapeXml(s) {
  return String(s).replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]);
}

/** Tick values for a linear axis from 0 to about max: 1, 2 or 5 times a power of ten apart. */
function linearTicks(max) {
  const raw = max / 6;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v <= max + 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function chart(result) {
  const rows = result.rows.filter((r) => typeof r.speedupVsBf16 === 'number' && r.speedupVsBf16 > 0);
  if (rows.length === 0) throw new Error('chart.js: no rows with a speedup over cuBLAS BF16 (were the peers run?)');
  const shapes = [...new Set(rows.map((r) => r.shape))];
  const ms = [...new Set(rows.map((r) => r.M))].sort((a, b) => a - b);

  const W = 760, H = 460;
  const left = 64, right = 190, top = 48, bottom = 56;
  const pw = W - left - right, ph = H - top - bottom;
  const lx0 = Math.log2(ms[0]), lx1 = Math.log2(ms[ms.length - 1]);
  const x = (m) => left + (lx1 === lx0 ? pw / 2 : ((Math.log2(m) - lx0) / (lx1 - lx0)) * pw);
  const ymax = Math.max(4.5, ...rows.map((r) => r.speedupVsBf16)) * 1.08;
  const y = (v) => top + ph - (v / ymax) * ph;

  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">${escapeXml(`NVFP4 GEMM (W4A16) speedup over cuBLAS BF16 — ${result.device}`)}</text>`);
  out.push(`<text x="${left}" y="38" fill="#555">${escapeXml('cuBLAS BF16 time / our time; higher is better')}</text>`);

  // grid and axes
  for (const t of linearTicks(ymax)) {
    out.push(`<line x1="${left}" x2="${left + pw}" y1="${y(t)}" y2="${y(t)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${left - 8}" y="${y(t) + 4}" text-anchor="end">${t}x</text>`);
  }
  for (const m of ms) {
    out.push(`<line x1="${x(m)}" x2="${x(m)}" y1="${top}" y2="${top + ph}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${x(m)}" y="${top + ph + 18}" text-anchor="middle">${m}</text>`);
  }
  out.push(`<line x1="${left}" x2="${left + pw}" y1="${top + ph}" y2="${top + ph}" stroke="#333"/>`);
  out.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + ph}" stroke="#333"/>`);
  out.push(`<text x="${left + pw / 2}" y="${H - 14}" text-anchor="middle">M (tokens, log scale)</text>`);
  out.push(`<text transform="translate(18 ${top + ph / 2}) rotate(-90)" text-anchor="middle">speedup over cuBLAS BF16</text>`);
  // parity and the decode target
  out.push(`<line x1="${left}" x2="${left + pw}" y1="${y(1)}" y2="${y(1)}" stroke="#333" stroke-dasharray="2 3"/>`);
  out.push(`<text x="${left + pw - 4}" y="${y(1) - 4}" text-anchor="end" fill="#333">1x</text>`);
  out.push(`<line x1="${left}" x2="${left + pw}" y1="${y(4)}" y2="${y(4)}" stroke="#888" stroke-dasharray="6 4"/>`);
  out.push(`<text x="${left + pw - 4}" y="${y(4) - 4}" text-anchor="end" fill="#888">4x decode target</text>`);

  shapes.forEach((shape, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = rows.filter((r) => r.shape === shape).sort((a, b) => a.M - b.M);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((r) => `${x(r.M).toFixed(1)},${y(r.speedupVsBf16).toFixed(1)}`).join(' ')}"/>`);
    for (const r of pts) {
      out.push(`<circle cx="${x(r.M).toFixed(1)}" cy="${y(r.speedupVsBf16).toFixed(1)}" r="3" fill="${color}"><title>${escapeXml(`${shape}, M=${r.M}: ${r.speedupVsBf16.toFixed(2)}x`)}</title></circle>`);
    }
    const ly = top + 8 + i * 20;
    out.push(`<line x1="${left + pw + 16}" x2="${left + pw + 40}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    const [N, K] = shape.split('x');
    out.push(`<text x="${left + pw + 46}" y="${ly + 4}">${escapeXml(`N ${N} x K ${K}`)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function main() {
  const input = process.argv[2];
  if (!input) {
    console.error('usage: node benchmarks/chart.js RESULTS.json [OUT.svg]');
    process.exit(2);
  }
  const output = process.argv[3] || input.replace(/\.json$/, '') + '.svg';
  fs.writeFileSync(output, chart(JSON.parse(fs.readFileSync(input, 'utf8'))));
  console.log(`wrote ${output}`);
}

if (require.main === module) main();
module.exports = { chart };
