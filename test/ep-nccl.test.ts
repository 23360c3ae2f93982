// The nccl transport of expert-parallel dispatch and combine: NCCL loaded at run time, the
// kernels' staging moved with NCCL send/receive. Where NCCL cannot be loaded, the buffer says so
// (E_COMM naming the library); with one GPU, a rank of its own exercises the communicator and
// the data path; with two GPUs, one process per rank (as NCCL wants) runs dispatch/combine
// rounds whose result must equal the single-device path bit for bit, over NCCL's default
// transports and forced onto its socket path, and a rank that never dispatches must turn into
// E_TIMEOUT, not a hang.
import { afterEach, describe, expect, it } from 'vitest';
import {
  createEpBuffer,
  devices as cudaDevices,
  expertLayout,
  fromArray,
  initProcessGroup,
  moeForward,
  permute,
  unpermute,
  zeros,
  type Device,
  type EpPayload,
  type ProcessGroup,
  type Tensor,
  type EpCombineForm,
} from '../lib';
import { native } from '../lib/native';
import { bf16, cpuArray, decoded, launchRanks, model, rankLines, reducedSums, routingOf } from './ep-helpers';
import { cudaReason, expectCode, freshSeed, hasCuda } from './backends';

/** Why NCCL cannot be used here, or undefined where libnccl.so.2 loads. */
const ncclReason: string | undefined = (() => {
  try {
    native().ncclLoad();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
})();
const gpus = hasCuda ? cudaDevices().length : 0;

const open: ProcessGroup[] = [];
afterEach(() => {
  for (const pg of open.splice(0)) pg.destroy();
});

interface Spec {
  E: number;
  H: number;
  k: number;
}

/**
 * The single-device result of a round whose experts return their input: the ranks' tokens
 * concatenated, each row as its payload delivers it, routed with expertLayout (masked: at most M
 * rows per expert), permuted and summed back with unpermute into f32 (combine "reduced": each
 * rank's partial rounded to bf16 first, ep-helpers' reducedSums).
 */
async function roundtripWant(seed: number, spec: Spec, tokens: number[], payload: EpPayload, M?: number, combine: EpCombineForm = 'exact', ranks = tokens.length): Promise<number[]> {
  const rs = tokens.map((T, r) => routingOf(seed, spec, r, T));
  const Tall = tokens.reduce((a, b) => a + b, 0);
  const rows: number[] = [];
  tokens.forEach((T, r) => {
    const x = model.tokensOf(seed, r, T, spec.H);
    for (let t = 0; t < T; t++) rows.push(...x.slice(t * spec.H, (t + 1) * spec.H));
  });
  const xq: number[] = [];
  for (let t = 0; t < Tall; t++) xq.push(...(await decoded(payload, rows.slice(t * spec.H, (t + 1) * spec.H))));
  const layout = expertLayout(cpuArray(rs.flatMap((r) => r.ids), [Tall, spec.k], 'i32'), spec.E, M === undefined ? {} : { maxTokensPerExpert: M });
  const perm = permute(cpuArray(xq, [Tall, spec.H], 'bf16'), layout);
  const sumWith = async (w: number[]) => {
    const out = fromArray(new Float32Array(Tall * spec.H), { shape: [Tall, spec.H], device: 'cpu' }) as Tensor<'f32'>;
    return Array.from(await unpermute(perm, layout, cpuArray(w, [Tall, spec.k], 'f32'), { out }).toArray());
  };
  const weights = rs.flatMap((r) => r.weights);
  if (combine === 'exact') return sumWith(weights);
  return (await reducedSums(rs.flatMap((r) => r.ids), weights, spec.E, ranks, spec.k, spec.H, sumWith)).out;
}

// ---- without a GPU: the loader ------------------------------------------------------------

describe('nccl transport: loading NCCL', () => {
  it('a library that cannot be loaded is E_COMM naming it, before anything is made', async () => {
    const before = process.env.MOE_KERNELS_NCCL_LIBRARY;
    process.env.MOE_KERNELS_NCCL_LIBRARY = '/nonexistent/libnccl.so.2';
    try {
      const pg = await initProcessGroup({ ranks: 'all', worldSize: 1, device: 'cpu' });
      open.push(...pg);
      await expectCode(() => createEpBuffer(pg[0], { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2, transport: 'nccl' }), 'E_COMM', '/nonexistent/libnccl.so.2');
      await expectCode(() => native().ncclUniqueId(), 'E_COMM', 'could not be loaded');
    } finally {
      if (before === undefined) delete process.env.MOE_KERNELS_NCCL_LIBRARY;
      else process.env.MOE_KERNELS_NCCL_LIBRARY = before;
    }
  });

  it.skipIf(ncclReason === undefined)(`where libnccl.so.2 is absent, the nccl transport says so${ncclReason === undefined ? ' (skipped: NCCL loads here)' : ''}`, async () => {
    const pg = await initProcessGroup({ ranks: 'all', worldSize: 1, device: 'cpu' });
    open.push(...pg);
    await expectCode(() => createEpBuffer(pg[0], { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2, transport: 'nccl' }), 'E_COMM', 'libnccl.so.2');
  });

  it.skipIf(ncclReason !== undefined)(`with NCCL present: CPU ranks and in-process groups are refused${ncclReason === undefined ? '' : ' (skipped: no NCCL)'}`, async () => {
    expect(native().ncclLoad()).toMatch(/^libnccl\.so\.2 \(2\.\d+\.\d+\)$/);
    const one = await initProcessGroup({ ranks: 'all', worldSize: 1, device: 'cpu' });
    open.push(...one);
    await expectCode(() => createEpBuffer(one[0], { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2, transport: 'nccl' }), 'E_DEVICE', '"nccl" needs CUDA ranks');
    if (gpus >= 1) {
      const two = await initProcessGroup({ ranks: 'all', devices: ['cuda:0', gpus >= 2 ? 'cuda:1' : 'cuda:0'] });
      open.push(...two);
      for (const pg of two) {
        await expectCode(() => createEpBuffer(pg, { maxTokensPerRank: 2, hidden: 16, topK: 1, numExperts: 2, transport: 'nccl' }), 'E_ARGUMENT', 'one process per rank');
      }
    }
  });
});

// ---- one GPU: a rank of its own ---------------------------------------------------------------

const oneSkip = !hasCuda ? cudaReason : ncclReason;
describe.skipIf(oneSkip !== undefined)(`nccl transport, one rank on cuda:0${oneSkip === undefined ? '' : ` (skipped: ${oneSkip})`}`, () => {
  for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
    for (const form of ['contiguous', 'masked'] as const) {
      const combine: EpCombineForm = payload === 'fp8' ? 'reduced' : 'exact';
      it(`${payload}, ${form}, combine ${combine}: two rounds, the bits of the single-device path and of nvlink`, async () => {
        const [pg] = await initProcessGroup({ ranks: 'all', devices: ['cuda:0'], timeoutMs: 30_000 });
        open.push(pg);
        const spec: Spec = { E: 8, H: 272, k: 3 };
        const M = form === 'masked' ? 3 : undefined;
        const options = { maxTokensPerRank: 7, hidden: spec.H, topK: spec.k, numExperts: spec.E, payload, layout: form, combine, ...(M === undefined ? { align: 4 } : { maxTokensPerExpert: M }) };
        const viaNccl = await createEpBuffer(pg, { ...options, transport: 'nccl' });
        const viaNvlink = await createEpBuffer(pg, { ...options, transport: 'nvlink' });
        expect(viaNccl.transport).toBe('nccl');
        try {
          for (const T of [7, 4]) {
            const seed = freshSeed(`nccl one rank ${payload} ${form} ${T}`);
            const r = routingOf(seed, spec, 0, T);
            const device = 'cuda:0' as const;
            const x = fromArray(model.tokensOf(seed, 0, T, spec.H), { shape: [T, spec.H], dtype: 'bf16', device });
            const routing = { ids: fromArray(r.ids, { shape: [T, spec.k], dtype: 'i32', device }), weights: fromArray(r.weights, { shape: [T, spec.k], device }) };
            const got: number[][] = [];
            const tokens: number[][] = [];
            for (const ep of [viaNccl, viaNvlink]) {
              const d = await ep.dispatch(x, routing);
              const used = (await d.layout.usedRows.toArray())[0];
              tokens.push(Array.from(await d.tokens.toArray()).slice(0, used * spec.H));
              const out = await ep.combine(d.tokens, d.handle, { out: zeros([T, spec.H], { device }) as Tensor<'f32'> });
              got.push(Array.from(await out.toArray()));
            }
            expect(tokens[0], 'dispatched rows: nccl against nvlink').toEqual(tokens[1]);
            expect(got[0], 'combined: nccl against nvlink').toEqual(got[1]);
            expect(got[0], 'combined: nccl against the single-device path').toEqual(await roundtripWant(seed, spec, [T], payload, M, combine));
          }
        } finally {
          await viaNccl.close();
          viaNvlink.dispose();
        }
      });
    }
  }
});

// ---- two GPUs: one process per rank ---------------------------------------------------------

/**
 * Two rank processes under `moe-kernels launch`, NVLink SHARP off in every one: by default rank r
 * on cuda:r over nccl; `cpu`: CPU ranks over the host transport.
 */
function launch(env: Record<string, string>, cpu = false): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const ranks = cpu ? { MOE_KERNELS_BACKEND: 'cpu', EP_DEVICE: 'cpu', EP_TRANSPORT: '' } : { MOE_KERNELS_BACKEND: 'cuda', EP_DEVICE: 'local', EP_TRANSPORT: 'nccl' };
  return launchRanks(2, { NCCL_NVLS_ENABLE: '0', NCCL_DEBUG: process.env.NCCL_DEBUG ?? 'WARN', ...ranks, ...env }, 100_000);
}

// The oracle and the rank fixture's modes, checked where they always run: CPU rank processes over
// the host transport must give the same bits, and a stalled rank the same E_TIMEOUT.
describe('the rounds of the nccl tests, on CPU rank processes (host transport)', () => {
  const oracleCases = [['bf16', 'contiguous', [5, 3], 'exact'], ['nvfp4', 'masked', [5, 3], 'exact'], ['fp8', 'contiguous', [0, 5], 'exact'], ['bf16', 'masked', [5, 3], 'reduced']] as const;
  for (const [payload, form, tokens, combine] of oracleCases) {
    it(`${payload}, ${form}, tokens ${tokens.join('/')}, combine ${combine}: the oracle's bits`, async () => {
      const seed = freshSeed(`nccl oracle ${payload} ${form} ${combine}`);
      const spec = { E: 8, H: 272, I: 32, Is: 0, k: 3, scoring: 'softmax' as const, ...(form === 'masked' ? { M: 3 } : {}) };
      const run = await launch({ EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens), EP_MODE: 'roundtrip', EP_PAYLOAD: payload, EP_LAYOUT: form, EP_COMBINE: combine }, true);
      const report = `exit ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
      expect(run.status, report).toBe(0);
      const lines = rankLines(run.stdout);
      const want = await roundtripWant(seed, spec, [...tokens], payload, form === 'masked' ? 3 : undefined, combine);
      expect(lines.get(0)?.transport, report).toBe('host');
      expect(lines.get(0)?.out, 'rank 0').toEqual(want.slice(0, tokens[0] * spec.H));
      expect(lines.get(1)?.out, 'rank 1').toEqual(want.slice(tokens[0] * spec.H));
    });
  }

  it('a rank that never dispatches: E_TIMEOUT on the other', async () => {
    const spec = { E: 8, H: 272, I: 32, Is: 0, k: 3, scoring: 'softmax' as const };
    const timeoutMs = 2000;
    const run = await launch({ EP_SEED: '7', EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify([4, 4]), EP_MODE: 'stall', EP_TIMEOUT_MS: String(timeoutMs) }, true);
    const report = `exit ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
    const lines = rankLines(run.stdout);
    expect(lines.get(0)?.stall, report).toBe('E_TIMEOUT');
    expect(lines.get(0)?.waitedMs as number, report).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(lines.get(1)?.stall, report).toBe('waited');
  });
});

const twoSkip = !hasCuda ? cudaReason : gpus < 2 ? `${gpus} CUDA device(s); NCCL needs a GPU per rank process` : ncclReason;
describe.skipIf(twoSkip !== undefined)(`nccl transport between rank processes on cuda:0 and cuda:1${twoSkip === undefined ? '' : ` (skipped: ${twoSkip})`}`, () => {
  // the socket path: no peer-to-peer, no shared memory, no InfiniBand; NCCL's socket transport
  const socket = { NCCL_P2P_DISABLE: '1', NCCL_SHM_DISABLE: '1', NCCL_IB_DISABLE: '1' };
  const cases: { payload: EpPayload; form: 'contiguous' | 'masked'; tokens: number[]; env: Record<string, string>; path: string; combine?: EpCombineForm }[] = [];
  for (const payload of ['bf16', 'fp8', 'nvfp4'] as const) {
    for (const form of ['contiguous', 'masked'] as const) {
      cases.push({ payload, form, tokens: payload === 'bf16' && form === 'masked' ? [6, 0] : [5, 3], env: {}, path: 'NCCL default path' });
    }
  }
  cases.push({ payload: 'bf16', form: 'contiguous', tokens: [4, 6], env: socket, path: 'socket path' });
  cases.push({ payload: 'nvfp4', form: 'masked', tokens: [5, 3], env: socket, path: 'socket path' });
  cases.push({ payload: 'fp8', form: 'contiguous', tokens: [0, 5], env: socket, path: 'socket path' });
  cases.push({ payload: 'bf16', form: 'contiguous', tokens: [5, 3], env: {}, path: 'NCCL default path', combine: 'reduced' });
  cases.push({ payload: 'nvfp4', form: 'masked', tokens: [4, 6], env: socket, path: 'socket path', combine: 'reduced' });

  for (const c of cases) {
    it(`${c.payload}, ${c.form}, tokens ${c.tokens.join('/')}, ${c.path}${c.combine ? `, combine ${c.combine}` : ''}: the bits of the single-device path`, async () => {
      const seed = freshSeed(`nccl ranks ${c.payload} ${c.form} ${c.path} ${c.combine ?? ''}`);
      const spec = { E: 8, H: 272, I: 32, Is: 0, k: 3, scoring: 'softmax' as const, ...(c.form === 'masked' ? { M: 3 } : {}) };
      const run = await launch({
        ...c.env, EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(c.tokens), EP_MODE: 'roundtrip', EP_PAYLOAD: c.payload, EP_LAYOUT: c.form,
        ...(c.combine ? { EP_COMBINE: c.combine } : {}),
      });
      const report = `exit ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
      const lines = rankLines(run.stdout);
      for (const r of [0, 1]) expect(lines.get(r)?.code, `rank ${r} failed: ${String(lines.get(r)?.message)}\n${report}`).toBeUndefined();
      expect(run.status, report).toBe(0);
      const want = await roundtripWant(seed, spec, c.tokens, c.payload, c.form === 'masked' ? 3 : undefined, c.combine);
      expect(lines.get(0)?.transport, report).toBe('nccl');
      expect(lines.get(0)?.out, 'rank 0').toEqual(want.slice(0, c.tokens[0] * spec.H));
      expect(lines.get(1)?.out, 'rank 1').toEqual(want.slice(c.tokens[0] * spec.H));
    });
  }

  it('moeForwardEp against moeForward on one device (2^-8 relative L2: the expert GEMMs may split K differently)', async () => {
    const seed = freshSeed('nccl moeForwardEp');
    const spec = { E: 8, H: 256, I: 128, Is: 128, k: 2, scoring: 'sigmoid' as const };
    const tokens = [4, 6];
    const run = await launch({ EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify(tokens) });
    const report = `exit ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
    const lines = rankLines(run.stdout);
    for (const r of [0, 1]) expect(lines.get(r)?.code, `rank ${r} failed: ${String(lines.get(r)?.message)}\n${report}`).toBeUndefined();
    expect(run.status, report).toBe(0);
    expect(lines.get(0)?.transport, report).toBe('nccl');
    const pkg = await import('../lib');
    const whole = await model.layerOn(pkg, model.makeLayer(seed, spec), 0, spec.E, 'cuda:0');
    const all = [...model.tokensOf(seed, 0, tokens[0], spec.H), ...model.tokensOf(seed, 1, tokens[1], spec.H)];
    const want = await moeForward(fromArray(all, { shape: [10, spec.H], dtype: 'bf16', device: 'cuda:0' }), whole.router, whole.experts).toArray();
    const got = [...(lines.get(0)?.out as number[]), ...(lines.get(1)?.out as number[])];
    expect(got.length).toBe(want.length);
    let d2 = 0, n2 = 0;
    for (let i = 0; i < want.length; i++) {
      d2 += (got[i] - want[i]) ** 2;
      n2 += want[i] ** 2;
    }
    expect(Math.sqrt(d2 / n2)).toBeLessThanOrEqual(2 ** -8);
  });

  it('a rank that never dispatches: E_TIMEOUT on the other after the group timeout, no hang', async () => {
    const seed = freshSeed('nccl stall');
    const spec = { E: 8, H: 272, I: 32, Is: 0, k: 3, scoring: 'softmax' as const };
    const timeoutMs = 15_000;
    const run = await launch({ EP_SEED: String(seed), EP_SPEC: JSON.stringify(spec), EP_TOKENS: JSON.stringify([4, 4]), EP_MODE: 'stall', EP_TIMEOUT_MS: String(timeoutMs) });
    const report = `exit ${run.status}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
    const lines = rankLines(run.stdout);
    const r0 = lines.get(0);
    expect(r0?.code, `rank 0 failed before dispatch: ${String(r0?.message)}\n${report}`).toBeUndefined();
    expect(r0?.stall, report).toBe('E_TIMEOUT');
    expect(String(r0?.message), report).toContain('dispatch');
    expect(r0?.waitedMs as number, report).toBeGreaterThanOrEqual(timeoutMs);
    expect(r0?.waitedMs as number, report).toBeLessThan(timeoutMs + 10_000);
    expect(lines.get(1)?.stall, report).toBe('waited');
  });
});
