// Helpers the ep test files share: bf16 rounding, CPU tensors, what a payload makes of a row (the
// oracle's side of native/common/ep.h), and rank processes of the fixture with their output lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { convert, dequantizeNvfp4, fromArray, quantizeNvfp4, type Device, type EpPayload, type Tensor } from '../lib';

/** The MoE layer model the rank fixture and the tests share (fixtures/ep-model.js). */
export const model = createRequire(__filename)('./fixtures/ep-model.js') as {
  makeLayer(seed: number, spec: unknown): unknown;
  layerOn(m: unknown, layer: unknown, first: number, count: number, device?: Device): Promise<{ router: never; experts: never }>;
  tokensOf(seed: number, rank: number, T: number, H: number): number[];
  rng(seed: number): () => number;
};

/** x rounded to bf16 (nearest even), NaN kept. */
export function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  if (Number.isNaN(f[0])) return NaN;
  u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
}

export const cpuArray = <D extends 'bf16' | 'f32' | 'i32'>(values: ArrayLike<number>, shape: number[], dtype: D) =>
  fromArray(Array.from(values), { shape, dtype, device: 'cpu' }) as unknown as Tensor<D>;

/** What the payload makes of one row (native/common/ep.h), through the package's own converters. */
export async function decoded(payload: EpPayload, row: number[]): Promise<number[]> {
  const H = row.length;
  if (payload === 'bf16') return row.map(bf16);
  if (payload === 'nvfp4') {
    const q = quantizeNvfp4(cpuArray(row, [1, H], 'bf16'));
    const d = Array.from(await dequantizeNvfp4(q, 'bf16').toArray());
    q.dispose();
    return d;
  }
  const out: number[] = [];
  for (let b0 = 0; b0 < H; b0 += 128) {
    const block = row.slice(b0, b0 + 128).map(bf16);
    const amax = Math.max(...block.map(Math.abs));
    const s = amax === 0 ? 1 : Math.fround(amax / 448);
    const q = await convert(cpuArray(block.map((v) => Math.fround(v / s)), [block.length], 'f32'), 'fp8e4m3').toArray();
    for (const v of q) out.push(bf16(Math.fround(v * s)));
  }
  return out;
}

/** The rank fixture's lines, `[rank r] {json}`, by rank. */
export function rankLines(stdout: string): Map<number, Record<string, unknown>> {
  const out = new Map<number, Record<string, unknown>>();
  for (const line of stdout.split('\n')) {
    const m = /^\[rank (\d+)\] (\{.*\})$/.exec(line);
    if (m) out.set(Number(m[1]), JSON.parse(m[2]));
  }
  return out;
}

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');
const rankScript = path.join(__dirname, 'fixtures', 'ep-dispatch-rank.js');

export interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs node with `args` from the package root, `env` over this process's environment, in its own
 * process group; the group is killed after limitMs, so that a hung child fails the test, not the
 * run. `started` sees the child as soon as it exists.
 */
export function runNode(args: string[], env: Record<string, string>, limitMs: number, started?: (child: ChildProcess) => void): Promise<Run> {
  const t0 = Date.now();
  const child = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const limit = setTimeout(() => {
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {
      // already gone
    }
  }, limitMs);
  started?.(child);
  return new Promise((resolve) => child.on('close', (status, signal) => {
    clearTimeout(limit);
    resolve({ status, signal, stdout, stderr, ms: Date.now() - t0 });
  }));
}

/** `moe-kernels launch -n n` of the dispatch rank fixture (runNode). */
export function launchRanks(n: number, env: Record<string, string>, limitMs: number): Promise<Run> {
  return runNode([cli, 'launch', '-n', String(n), rankScript], env, limitMs);
}

/** Rank r's routing, as the rank fixture makes it: k distinct experts per token, weights in [-0.25, 1.75). */
export function routingOf(seed: number, spec: { E: number; k: number }, r: number, T: number): { ids: number[]; weights: number[] } {
  const next = model.rng((seed * 31 + r + 7) >>> 0);
  const ids: number[] = [];
  for (let t = 0; t < T; t++) {
    const chosen: number[] = [];
    while (chosen.length < spec.k) {
      const e = Math.floor(next() * spec.E);
      if (!chosen.includes(e)) chosen.push(e);
    }
    ids.push(...chosen);
  }
  return { ids, weights: Array.from({ length: T * spec.k }, () => next() * 2 - 0.25) };
}

/**
 * combine "reduced"'s arithmetic (native/common/ep.h) on the CPU, in f32: for each token, the
 * ranks its valid ids reach, in the order of their first pair, each adding its partial sum
 * rounded to bf16. `sumWith(w)` is the single-device weighted sum (unpermute into f32) with the
 * pairs' weights replaced by w; `partials` are the ranks' bf16 partial sums.
 */
export async function reducedSums(ids: readonly number[], weights: readonly number[], E: number, R: number, K: number, H: number,
  sumWith: (w: number[]) => Promise<number[]>): Promise<{ out: number[]; partials: number[][] }> {
  const L = E / R;
  const rankOf = ids.map((id) => (id >= 0 && id < E ? Math.floor(id / L) : -1));
  const partials: number[][] = [];
  for (let d = 0; d < R; d++) partials.push((await sumWith(weights.map((w, p) => (rankOf[p] === d ? w : 0)))).map(bf16));
  const out: number[] = [];
  for (let t = 0; t < ids.length / K; t++) {
    const order = [...new Set(rankOf.slice(t * K, (t + 1) * K).filter((d) => d >= 0))];
    for (let h = 0; h < H; h++) {
      let acc = 0;
      for (const d of order) acc = Math.fround(acc + partials[d][t * H + h]);
      out.push(acc);
    }
  }
  return { out, partials };
}
