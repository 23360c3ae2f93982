// Quantize a weight to NVFP4, multiply activations by it, and compare with the unquantized product.
//   node examples/quantize_and_multiply.js
'use strict';
const moe = require('@moe/kernels');

async function main() {
  const device = moe.defaultDevice();
  const [M, N, K] = [4, 256, 512];
  const rand = (n) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
  const w = moe.fromArray(rand(N * K), { shape: [N, K], dtype: 'bf16', device });
  const x = moe.fromArray(rand(M * K), { shape: [M, K], dtype: 'bf16', device });

  const q = moe.quantizeNvfp4(w); // global scale computed on the device
  const y = moe.gemmNvfp4(x, q, { outDtype: 'f32' });

  // reference: the same product with the weight as quantized, computed here in JS
  const wq = await moe.dequantizeNvfp4(q, 'f32').toArray();
  const xs = await x.toArray();
  const got = await y.toArray();
  let err = 0, norm = 0;
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += xs[m * K + k] * wq[n * K + k];
      err += (got[m * N + n] - s) ** 2;
      norm += s * s;
    }
  }
  const rel = Math.sqrt(err / norm);
  console.log(`${device}: y = x @ nvfp4(w)^T, [${y.shape}], relative error vs fp64 ${rel.toExponential(2)}`);
  if (!(rel < 1e-5)) throw new Error(`relative error ${rel} is too large`);
  for (const t of [w, x, y]) t.dispose();
  q.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
