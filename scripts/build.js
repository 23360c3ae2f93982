#!/usr/bin/env node
// Builds build/Release/moe_kernels.node with cmake-js, offline (Node-API headers come from the
// node-api-headers package because package.json declares binary.napi_versions).
//
//   node scripts/build.js [--out DIR]
//
// Environment:
//   MOE_KERNELS_CUDA_ARCHS  CUDA targets, e.g. "90a;80" (default) or "86"; "off" builds the CPU-only addon
//   CUDACXX                 the nvcc to use (otherwise PATH, then /usr/local/cuda/bin/nvcc)
//   MOE_KERNELS_BUILD_DIR   the CMake build tree (default .cmake-build)
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const outIndex = args.indexOf('--out');
const outDir = path.resolve(outIndex >= 0 ? args[outIndex + 1] : path.join(root, 'build', 'Release'));
// outside build/, which node-gyp (driven by prebuildify) wipes: a later build stays incremental
const buildDir = path.resolve(root, process.env.MOE_KERNELS_BUILD_DIR || '.cmake-build');

function findNvcc() {
  const candidates = [];
  if (process.env.CUDACXX) candidates.push(process.env.CUDACXX);
  for (const dir of (process.env.PATH || '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.realpathSync(c);
    } catch {}
  }
  return null;
}

const archEnv = (process.env.MOE_KERNELS_CUDA_ARCHS || '').trim();
const cudaOff = /^(off|none|cpu|0)$/i.test(archEnv);
const nvcc = cudaOff ? null : findNvcc();
const defines = [`--CDMOE_KERNELS_OUTPUT_DIR=${outDir}`];
if (nvcc) {
  defines.push('--CDMOE_KERNELS_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`);
  if (archEnv) defines.push(`--CDMOE_KERNELS_CUDA_ARCHS=${archEnv.replace(/,/g, ';')}`);
  console.log(`@moe/kernels: building the CUDA and CPU backends with ${nvcc} for ${archEnv || '90a;80'}`);
} else {
  defines.push('--CDMOE_KERNELS_WITH_CUDA=OFF');
  console.log(
    cudaOff
      ? '@moe/kernels: MOE_KERNELS_CUDA_ARCHS=off, building the CPU-only addon'
      : '@moe/kernels: nvcc not found (CUDACXX, PATH, /usr/local/cuda/bin); building the CPU-only addon',
  );
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const env = { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: process.env.CMAKE_BUILD_PARALLEL_LEVEL || String(os.cpus().length) };
const r = spawnSync(process.execPath, [cmakeJs, 'compile', '--out', buildDir, ...defines], { cwd: root, stdio: 'inherit', env });
if (r.status !== 0) {
  console.error('@moe/kernels: the native build failed (see above). A CPU-only build: MOE_KERNELS_CUDA_ARCHS=off npm rebuild @moe/kernels');
  process.exit(r.status || 1);
}
