// `npx moe-kernels bench`: the family benchmarks of benchmarks/, each through its run script,
// which writes the JSON, the Markdown table and the SVG chart of one family.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cudaAvailable, cudaUnavailableReason } from './device';

/** Exit status when nothing was measured because no CUDA GPU is usable (as in benchmarks/). */
export const EXIT_NO_GPU = 3;

export interface BenchFamily {
  name: string;
  description: string;
  /** `bash <script> OUT_DIR`, from the package root; PYTHON picks the peers' interpreter. */
  script: string;
  /** Whether the script also runs PyTorch peers (benchmarks/peers/). */
  peers: boolean;
}

// One line per family.
export const BENCH_FAMILIES: readonly BenchFamily[] = [
  { name: 'nvfp4', script: 'benchmarks/run_nvfp4.sh', peers: true, description: 'NVFP4 GEMM (W4A16), DeepSeek-V3 shapes, M = 1 to 16384; peers cuBLAS BF16 and FP8' },
  { name: 'mtp', script: 'benchmarks/run_mtp.sh', peers: true, description: 'MTP draft verification (verifyDrafts), greedy and rejection, B = 1 and 256; peer PyTorch' },
  { name: 'routing', script: 'benchmarks/run_routing.sh', peers: true, description: 'MoE routing: routeTopK alone and with the contiguous or masked layout, T = 1 to 16384; peer PyTorch' },
  { name: 'grouped', script: 'benchmarks/run_grouped.sh', peers: true, description: 'grouped expert GEMM (W4A16), DeepSeek-V3 w13+swiglu and w2, decode T = 1 to 128 and prefill T = 4096, 16384; peers torch._grouped_mm and a cuBLAS loop' },
  { name: 'moe', script: 'benchmarks/run_moe.sh', peers: true, description: 'MoE block (moeForward, NVFP4), DeepSeek-V3 shape, T = 1 to 4096, with a stage breakdown; peer PyTorch BF16' },
  { name: 'decode-step', script: 'benchmarks/run_decode_step.sh', peers: true, description: 'one decode step of the demo slice (L MoE layers + LM head, NVFP4, MTP-3), B = 1 to 256, against the BF16 floor; peer PyTorch BF16' },
  { name: 'launch', script: 'benchmarks/run_launch.sh', peers: false, description: 'launch overhead: each op from JS against the same launcher looped in C++' },
];

const ROOT = path.resolve(__dirname, '..');

export interface BenchOptions {
  list?: boolean;
  peers?: boolean;
  out: string;
}

/** The families named, in the table's order; all of them when none is. Throws on an unknown name. */
export function selectFamilies(names: readonly string[]): BenchFamily[] {
  const unknown = names.filter((n) => !BENCH_FAMILIES.some((f) => f.name === n));
  if (unknown.length) {
    throw new BenchUsageError(`unknown benchmark family ${unknown.map((n) => `"${n}"`).join(', ')}; the families: ${BENCH_FAMILIES.map((f) => f.name).join(', ')}`);
  }
  return names.length ? BENCH_FAMILIES.filter((f) => names.includes(f.name)) : [...BENCH_FAMILIES];
}

export class BenchUsageError extends Error {}

function listing(): string {
  const width = Math.max(...BENCH_FAMILIES.map((f) => f.name.length));
  return BENCH_FAMILIES.map((f) => `${f.name.padEnd(width)}  ${f.description}${f.peers ? '' : ' (no peers)'}`).join('\n');
}

function canImport(python: string, module: string): boolean {
  const r = spawnSync(python, ['-c', `import ${module}`], { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

/** Runs the benchmarks; returns the exit status. Output goes to stdout and stderr. */
export function bench(names: readonly string[], options: BenchOptions): number {
  const families = selectFamilies(names);
  if (options.list) {
    console.log(listing());
    return 0;
  }
  if (!fs.existsSync(path.join(ROOT, families[0].script))) {
    process.stderr.write(`moe-kernels bench: ${families[0].script} is missing from ${ROOT}; nothing was measured.\n`);
    return 1;
  }
  if (!cudaAvailable()) {
    process.stderr.write(
      `moe-kernels bench: needs a CUDA GPU (${cudaUnavailableReason()}); nothing was measured.\n` +
        'It needs an addon built with CUDA (nvcc at install time) on a machine with an NVIDIA GPU and driver: see `npx moe-kernels info`.\n',
    );
    return EXIT_NO_GPU;
  }
  const out = path.resolve(options.out);
  fs.mkdirSync(out, { recursive: true });
  // the run scripts run the peers with $PYTHON; `false` makes them skip the peers
  const python = process.env.PYTHON || 'python3';
  let peerPython = 'false';
  if (options.peers) {
    if (canImport(python, 'torch')) peerPython = python;
    else process.stderr.write(`moe-kernels bench: --peers: ${python} cannot import torch (PYTHON picks the interpreter); the peer columns will read n/a\n`);
  }
  try {
    require.resolve('vega-lite', { paths: [ROOT] });
    require.resolve('vega', { paths: [ROOT] });
  } catch {
    process.stderr.write('moe-kernels bench: the charts need the packages vega and vega-lite (npm install vega vega-lite); tables and JSON are written without them\n');
  }
  for (const f of families) {
    console.log(`== ${f.name}: ${f.description}${f.peers && peerPython === 'false' ? ' (peers off)' : ''}`);
    const r = spawnSync('bash', [path.join(ROOT, f.script), out], { cwd: ROOT, stdio: 'inherit', env: { ...process.env, PYTHON: peerPython } });
    if (r.error) throw r.error;
    if (r.status !== 0) {
      process.stderr.write(`moe-kernels bench: ${f.name} failed (${r.status === null ? `signal ${r.signal}` : `status ${r.status}`})\n`);
      return r.status === EXIT_NO_GPU ? EXIT_NO_GPU : 1;
    }
  }
  console.log(`results (JSON, Markdown, and SVG charts where a family draws one) in ${out}`);
  return 0;
}
