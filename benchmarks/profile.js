#!/usr/bin/env node
// One representative call of each performance target, repeated a few times, for a profiler to
// attach to (e.g. ncu --kernel-name regex:... node benchmarks/profile.js): the NVFP4 GEMM at
// M = 1, 64, 256 and 4096 on 4096 x 7168, MTP greedy and rejection at B = 256.
// Without a CUDA GPU it exits with status 3 (harness.EXIT_NO_GPU).
'use strict';
const h = require('./harness');

async function main() {
  h.parse({ usage: 'usage: node benchmarks/profile.js', out: false });
  h.requireGpu();
  const moe = h.moe();
  const device = 'cuda:0';
  const [N, K] = [4096, 7168];
  const w = moe.quantizeNvfp4(moe.fromArray(Float32Array.from({ length: N * K }, (_, i) => Math.sin(i * 0.37)), { shape: [N, K], dtype: 'bf16', device }));
  for (const M of [1, 64, 256, 4096]) {
    const a = moe.fromArray(Float32Array.from({ length: M * K }, (_, i) => Math.cos(i * 0.11)), { shape: [M, K], dtype: 'bf16', device });
    const out = moe.empty([M, N], { dtype: 'bf16', device });
    for (let r = 0; r < 3; r++) moe.gemmNvfp4(a, w, { out });
  }
  const [B, n, V] = [256, 3, 129280];
  const targetLogits = moe.convert(moe.fromArray(Float32Array.from({ length: B * (n + 1) * V }, (_, i) => Math.sin(i * 0.013) * 4), { shape: [B, n + 1, V], device }), 'bf16');
  const draftTokens = moe.fromArray(Int32Array.from({ length: B * n }, (_, i) => (i * 7919) % V), { dtype: 'i32', shape: [B, n], device });
  for (const mode of ['greedy', 'rejection']) {
    for (let r = 0; r < 3; r++) moe.verifyDrafts({ targetLogits, draftTokens, params: { mode, temperature: 0.7 } });
  }
  await moe.defaultStream(device).synchronize();
}

h.run(main, { gpu: false });
