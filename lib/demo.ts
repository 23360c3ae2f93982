// `npx moe-kernels demo`: one speculative-decoding step of a DeepSeek-V3-shaped model slice with
// random NVFP4 weights: L MoE layers, the LM head, MTP draft verification. Attention, norms and
// the draft head are outside the step.
import { SingleBar } from 'cli-progress';
import { cudaUnavailableReason, devices } from './device';
import { MoeError } from './errors';
import { captureGraph, type CudaGraph } from './graph';
import { createMoeWorkspace, moeForward, type MoeExperts, type MoeRouter, type MoeWorkspace } from './moe';
import { native } from './native';
import { gemmNvfp4, globalScaleNvfp4, nvfp4FromCheckpoint, quantizeNvfp4, type Nvfp4Tensor } from './nvfp4';
import { verifyDrafts, VERIFY_MODES, type VerifyDraftsParams } from './mtp';
import { Event, createStream, type Stream } from './stream';
import { empty, fromArray, type Tensor } from './tensor';
import { deviceIndex, type Device } from './validate';

export interface DemoShape {
  name: string;
  hidden: number;
  experts: number;
  inner: number;
  sharedInner: number;
  k: number;
  groups: number;
  topkGroups: number;
  scale: number;
  vocab: number;
}

export const DEEPSEEK_V3_SHAPE: Readonly<DemoShape> = Object.freeze({
  name: 'DeepSeek-V3', hidden: 7168, experts: 256, inner: 2048, sharedInner: 2048, k: 8, groups: 8, topkGroups: 4, scale: 2.5, vocab: 129280,
});

// The CPU reference is written for clarity, not speed: a smaller model of the same structure.
export const SCALED_DOWN_SHAPE: Readonly<DemoShape> = Object.freeze({
  name: 'scaled-down', hidden: 256, experts: 32, inner: 64, sharedInner: 64, k: 8, groups: 8, topkGroups: 4, scale: 2.5, vocab: 4096,
});

export type DemoMode = 'greedy' | 'rejection';

export interface DemoOptions {
  device: 'cpu' | 'cuda';
  /** Default: DeepSeek-V3 on CUDA, scaled-down on the CPU. */
  shape?: 'full' | 'small';
  layers: number;
  batch: number;
  drafts: number;
  steps: number;
  acceptance: number;
  mode: DemoMode;
  logits: 'bf16' | 'f32';
  seed: number;
  /** Show progress bars (on stderr, only where it is a terminal). */
  progress?: boolean;
  log?: (line: string) => void;
}

export interface DemoResult {
  device: string;
  deviceName: string;
  shape: DemoShape & { layers: number };
  batch: number;
  drafts: number;
  /** B x (n + 1): the rows each layer and the LM head process per step. */
  tokensPerStep: number;
  acceptance: number;
  mode: DemoMode;
  logitsDtype: 'bf16' | 'f32';
  steps: number;
  execution: 'cuda-graph' | 'eager';
  /** Milliseconds per stage: one entry per MoE layer, the LM head, the verification. */
  stages: { moe: number[]; lmHead: number; verify: number };
  stageMethod: string;
  /** Mean and median milliseconds of one whole step. */
  stepMs: number;
  stepMsMedian: number;
  /** Tokens each request emits per step (accepted drafts + 1), mean over requests and steps. */
  acceptedPerStep: number;
  /** What the synthetic drafts give under greedy verification: 1 + p + p^2 + ... + p^n. */
  expectedAcceptedPerStep: number;
  /** batch x acceptedPerStep / step time. */
  tokensPerSecond: number;
  weights: { nvfp4Bytes: number; bf16Bytes: number; ratio: number };
  /** Per MoE layer: the distinct routed experts the first positions of the B requests select. */
  firstPositionExperts: number[];
  notes: string[];
}

/** xorshift32: seeded, so a run can be repeated. */
function generator(seed: number): () => number {
  let s = (seed >>> 0) || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** Uniform values of standard deviation `std`, as bf16 [rows, cols]. */
function uniformBf16(rand: () => number, rows: number, cols: number, std: number, device: Device, stream: Stream): Tensor<'bf16'> {
  const a = std * Math.sqrt(3);
  const v = new Float32Array(rows * cols);
  for (let i = 0; i < v.length; i++) v[i] = (2 * rand() - 1) * a;
  return fromArray(v, { shape: [rows, cols], dtype: 'bf16', device, stream });
}

/** Writes host values into a tensor on `stream` (between graph replays). */
function writeInto(t: Tensor, values: Int32Array | BigInt64Array, stream: Stream): void {
  const b = native();
  if (t.device === 'cpu') b.hostWrite(t.dataPtr, values);
  else b.copyToDevice(deviceIndex(t.device), t.dataPtr, values, values.byteLength, stream.handle);
}

const WEIGHT_STD = 0.02;

interface Layer {
  router: MoeRouter;
  experts: MoeExperts;
}

interface Model {
  layers: Layer[];
  lmHead: Nvfp4Tensor;
  nvfp4Bytes: number;
  bf16Bytes: number;
  dispose(): void;
}

/**
 * NVFP4 weights quantized on the device from windows of two random pools (one [2N, K] window
 * source per matrix shape), each expert on its own global scale: distinct weights without
 * drawing 10^10 random numbers on the host.
 */
async function buildModel(shape: DemoShape, L: number, device: Device, stream: Stream, rand: () => number, tick: () => void): Promise<Model> {
  const { hidden: H, experts: E, inner: I, sharedInner: Is, vocab: V } = shape;
  const owned: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(t: T): T => {
    owned.push(t);
    return t;
  };
  const pool13 = uniformBf16(rand, 2 * Math.max(2 * I, 2 * Is), H, WEIGHT_STD, device, stream);
  const pool2 = uniformBf16(rand, 2 * H, Math.max(I, Is), WEIGHT_STD, device, stream);
  let nvfp4Bytes = 0;
  let bf16Bytes = 0;
  const window = (pool: Tensor<'bf16'>, N: number, K: number): Tensor<'bf16'> => {
    const off = Math.floor(rand() * (pool.shape[0] - N + 1));
    const rows = pool.slice(off, off + N);
    if (K === pool.shape[1]) return rows;
    throw new Error(`internal: window of width ${K} from a pool of width ${pool.shape[1]}`);
  };
  // [count, N, K] (or [N, K] for count 0), uninitialized, one global scale per leading index
  const allocate = (count: number, N: number, K: number): Nvfp4Tensor => {
    const lead = count ? [count, N] : [N];
    const data = empty(lead.concat(K / 2), { dtype: 'u8', device, stream });
    const scales = empty(lead.concat(K / 16), { dtype: 'fp8e4m3', device, stream });
    const gs = empty([count || 1], { dtype: 'f32', device, stream });
    try {
      return nvfp4FromCheckpoint({ weight: data, weight_scale: scales, weight_scale_2: gs }, { device, stream });
    } finally {
      data.dispose();
      scales.dispose();
      gs.dispose();
    }
  };
  const count = (w: Nvfp4Tensor) => {
    nvfp4Bytes += w.byteLength + w.globalScale.byteLength;
    bf16Bytes += 2 * w.numel;
  };
  const stacked = (pool: Tensor<'bf16'>, N: number, K: number): Nvfp4Tensor => {
    const w = keep(allocate(E, N, K));
    for (let e = 0; e < E; e++) {
      const view = w.select(e);
      const src = window(pool, N, K);
      quantizeNvfp4(src, { out: view, stream });
      src.dispose();
      view.dispose();
      tick();
    }
    count(w);
    return w;
  };
  const dense = (pool: Tensor<'bf16'>, N: number, K: number): Nvfp4Tensor => {
    const w = keep(allocate(0, N, K));
    const src = window(pool, N, K);
    quantizeNvfp4(src, { out: w, stream });
    src.dispose();
    count(w);
    return w;
  };
  try {
    const layers: Layer[] = [];
    for (let l = 0; l < L; l++) {
      const weight = keep(uniformBf16(rand, E, H, WEIGHT_STD, device, stream));
      const bias = new Float32Array(E);
      for (let i = 0; i < E; i++) bias[i] = (2 * rand() - 1) * 0.01;
      const correctionBias = keep(fromArray(bias, { dtype: 'f32', device, stream }));
      nvfp4Bytes += weight.byteLength + correctionBias.byteLength;
      bf16Bytes += weight.byteLength + correctionBias.byteLength;
      const router: MoeRouter = {
        weight, k: shape.k, scoring: 'sigmoid', groups: { count: shape.groups, topk: shape.topkGroups }, correctionBias, scale: shape.scale,
      };
      const experts: MoeExperts = {
        w13: stacked(pool13, 2 * I, H),
        w2: stacked(pool2, H, I),
        shared: { w13: dense(pool13, 2 * Is, H), w2: dense(pool2, H, Is) },
      };
      layers.push({ router, experts });
    }
    // the LM head: row chunks of pool13 windows, one global scale for the whole matrix
    const lmHead = keep(allocate(0, V, H));
    const gs = globalScaleNvfp4(pool13, { stream });
    let R = Math.min(V, Math.floor(pool13.shape[0] / 2));
    while (V % R !== 0) R--;
    try {
      for (let c = 0; c < V / R; c++) {
        const data = lmHead.data.slice(c * R, (c + 1) * R);
        const scales = lmHead.scales.slice(c * R, (c + 1) * R);
        // every chunk gets the same global scale, written into the matrix's own
        const view = nvfp4FromCheckpoint({ weight: data, weight_scale: scales, weight_scale_2: lmHead.globalScale }, { device, stream });
        const src = window(pool13, R, H);
        quantizeNvfp4(src, { globalScale: gs, out: view, stream });
        for (const t of [src, view, data, scales]) t.dispose();
      }
    } finally {
      gs.dispose();
    }
    count(lmHead);
    tick();
    await stream.synchronize();
    return {
      layers, lmHead, nvfp4Bytes, bf16Bytes,
      dispose() {
        for (const t of owned) t.dispose();
      },
    };
  } catch (e) {
    for (const t of owned) t.dispose();
    throw e;
  } finally {
    pool13.dispose();
    pool2.dispose();
  }
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

function bar(enabled: boolean, label: string, total: number): { tick(): void; stop(): void } {
  if (!enabled || !process.stderr.isTTY) return { tick() {}, stop() {} };
  const b = new SingleBar({ format: `${label.padEnd(16)} [{bar}] {value}/{total} {duration_formatted}`, stream: process.stderr, hideCursor: true, clearOnComplete: false });
  b.start(total, 0);
  return { tick: () => b.increment(), stop: () => b.stop() };
}

/** Greedy argmax of each row of logits [rows, V], read back to the host. */
async function argmaxRows(logits: Tensor, rows: number, V: number, stream: Stream): Promise<Int32Array> {
  const out = new Int32Array(rows);
  const per = Math.max(1, Math.floor((64 << 20) / (V * 4)));
  for (let r0 = 0; r0 < rows; r0 += per) {
    const part = logits.slice(r0, Math.min(rows, r0 + per));
    const v = (await part.toArray({ stream })) as Float32Array;
    part.dispose();
    for (let r = 0; r < part.shape[0]; r++) {
      let best = 0;
      let bv = -Infinity;
      const base = r * V;
      for (let j = 0; j < V; j++) if (v[base + j] > bv) { bv = v[base + j]; best = j; }
      out[r0 + r] = best;
    }
  }
  return out;
}

/** What buildDemoSlice takes: where, which shape, how many layers, the seed. */
export interface DemoSliceOptions {
  device: 'cpu' | 'cuda';
  shape?: 'full' | 'small';
  layers: number;
  seed: number;
  progress?: boolean;
  log?: (line: string) => void;
}

/** The weights of the slice, built once; steps of any batch size run on them (runDemoStep). */
export interface DemoSlice {
  readonly device: Device;
  readonly deviceName: string;
  readonly shape: DemoShape;
  readonly layers: number;
  readonly weights: { nvfp4Bytes: number; bf16Bytes: number; ratio: number };
  dispose(): void;
  /** @internal */
  readonly model: Model;
  /** @internal */
  readonly stream: Stream;
  /** @internal the seeded generator, shared by the weights and every step's inputs and drafts */
  readonly rand: () => number;
}

/** What runDemoStep takes: the step's batch, drafts and verification, and how many to time. */
export type DemoStepOptions = Pick<DemoOptions, 'batch' | 'drafts' | 'steps' | 'acceptance' | 'mode' | 'logits' | 'seed' | 'progress' | 'log'>;

/** Builds the slice's random NVFP4 weights on `o.device`. */
export async function buildDemoSlice(o: DemoSliceOptions): Promise<DemoSlice> {
  const log = o.log ?? (() => {});
  let device: Device;
  let deviceName: string;
  if (o.device === 'cuda') {
    const reason = cudaUnavailableReason();
    if (reason !== undefined) throw new MoeError('E_DEVICE', `--device cuda: no usable CUDA GPU (${reason})`);
    device = 'cuda:0';
    deviceName = devices()[0].name;
  } else {
    device = 'cpu';
    deviceName = 'CPU reference backend';
  }
  const base = (o.shape ?? (device !== 'cpu' ? 'full' : 'small')) === 'full' ? DEEPSEEK_V3_SHAPE : SCALED_DOWN_SHAPE;
  const shape: DemoShape = { ...base };
  const L = o.layers;
  const { hidden: H, vocab: V } = shape;
  log(`${shape.name} slice on ${device} (${deviceName}): ${L} MoE layer${L === 1 ? '' : 's'} (hidden ${H}, ${shape.experts} routed experts of width ${shape.inner}, top-${shape.k} in ${shape.groups} groups keeping ${shape.topkGroups}, sigmoid + bias, scale ${shape.scale}, shared expert of width ${shape.sharedInner}), LM head ${V} x ${H}, NVFP4 (W4A16)`);
  const stream = createStream(device);
  const rand = generator(o.seed);
  const building = bar(o.progress ?? false, 'building weights', L * 2 * shape.experts + 1);
  let model: Model;
  try {
    model = await buildModel(shape, L, device, stream, rand, building.tick);
  } catch (e) {
    stream.dispose();
    throw e;
  } finally {
    building.stop();
  }
  return {
    device, deviceName, shape, layers: L, model, stream, rand,
    weights: { nvfp4Bytes: model.nvfp4Bytes, bf16Bytes: model.bf16Bytes, ratio: model.bf16Bytes / model.nvfp4Bytes },
    dispose() {
      model.dispose();
      stream.dispose();
    },
  };
}

/** Runs the demo; returns what it measured. Lines for the screen go to options.log. */
export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const slice = await buildDemoSlice(o);
  try {
    return await runDemoStep(slice, o);
  } finally {
    slice.dispose();
  }
}

/** Times `o.steps` decode steps of `o.batch` requests on the slice's weights. */
export async function runDemoStep(slice: DemoSlice, o: DemoStepOptions): Promise<DemoResult> {
  const log = o.log ?? (() => {});
  const { device, deviceName, model, stream, rand, shape, layers: L } = slice;
  const cuda = device !== 'cpu';
  const { batch: B, drafts: n } = o;
  const P = n + 1;
  const T = B * P;
  const { hidden: H, vocab: V } = shape;
  const notes = [
    'Random weights; attention, norms, residuals and the draft (MTP) head are outside the step: each layer is x = moe(x).',
    `Drafts are synthetic: each equals the target's greedy choice with probability ${o.acceptance}, else another token.`,
  ];
  if (o.mode === 'rejection') notes.push('Rejection sampling (temperature 1): a draft is accepted with the target\'s probability of it, so with random weights few are.');

  log(`step: B = ${B} requests x ${P} positions (${n} drafts + 1) = ${T} tokens through every layer, LM head (${o.logits} logits), ${o.mode} verification`);
  for (const note of notes) log(note);

  const made: { dispose(): void }[] = [];
  const keep = <X extends { dispose(): void }>(t: X): X => {
    made.push(t);
    return t;
  };
  let graphs: CudaGraph[] = [];
  try {
    const first = model.layers[0];
    // one workspace for every layer: same shapes, calls ordered on one stream; masked with
    // maxTokensPerExpert = T never drops a pair
    const ws: MoeWorkspace = keep(createMoeWorkspace(T, first.router, first.experts, { maxTokensPerExpert: T, stream }));
    const xs: Tensor<'bf16'>[] = [keep(uniformBf16(rand, T, H, 1, device, stream))];
    for (let l = 0; l < L; l++) xs.push(keep(empty([T, H], { dtype: 'bf16', device, stream })));
    const logits = keep(empty([T, V], { dtype: o.logits, device, stream }));
    const logits3 = keep(logits.reshape([B, P, V]));
    const draftTokens = keep(empty([B, n], { dtype: 'i32', device, stream }));
    const out = {
      tokens: keep(empty([B, P], { dtype: 'i32', device, stream })),
      numAccepted: keep(empty([B], { dtype: 'i32', device, stream })),
      inThinking: keep(empty([B], { dtype: 'i32', device, stream })),
    };
    const offset = keep(empty([B], { dtype: 'i64', device, stream }));
    let params: VerifyDraftsParams | undefined;
    if (o.mode === 'rejection') {
      const seeds = BigInt64Array.from({ length: B }, (_, i) => BigInt(o.seed * 1000 + i));
      params = {
        mode: keep(fromArray(new Int32Array(B).fill(VERIFY_MODES.rejection), { dtype: 'i32', device, stream })),
        temperature: keep(fromArray(new Float32Array(B).fill(1), { dtype: 'f32', device, stream })),
        seed: keep(fromArray(seeds, { dtype: 'i64', device, stream })),
        offset,
      };
    }
    writeInto(draftTokens, new Int32Array(B * n), stream);
    writeInto(offset, new BigInt64Array(B), stream);

    const moeStage = (l: number) => () => {
      const { router, experts } = model.layers[l];
      moeForward(xs[l], router, experts, { workspace: ws, out: xs[l + 1], stream });
    };
    const lmStage = () => {
      gemmNvfp4(xs[L], model.lmHead, { out: logits, stream });
    };
    const verifyStage = () => {
      verifyDrafts({ targetLogits: logits3, draftTokens, ...(params ? { params } : {}), out, stream });
    };
    const stages = [...model.layers.map((_, l) => moeStage(l)), lmStage, verifyStage];
    const step = () => {
      for (const s of stages) s();
    };

    // one step for the target's choices: the inputs do not depend on the drafts, so neither do they
    // one step for the target's choices, stage by stage so that each layer's routing can be read:
    // the distinct experts of the first position of each request, what a plain decode step would touch
    const firstPositionExperts: number[] = [];
    for (let i = 0; i < stages.length; i++) {
      stages[i]();
      if (i < L) {
        const ids = (await ws.routing.ids.toArray({ stream })) as Int32Array;
        const k = ws.k;
        const seen = new Set<number>();
        for (let b = 0; b < B; b++) for (let j = 0; j < k; j++) seen.add(ids[b * P * k + j]);
        firstPositionExperts.push(seen.size);
      }
    }
    const target = await argmaxRows(logits, T, V, stream);
    const drawDrafts = (): Int32Array => {
      const d = new Int32Array(B * n);
      for (let b = 0; b < B; b++) {
        for (let i = 0; i < n; i++) {
          const t = target[b * P + i];
          d[b * n + i] = rand() < o.acceptance ? t : (t + 1 + Math.floor(rand() * (V - 1))) % V;
        }
      }
      return d;
    };

    const stageMs: number[][] = stages.map(() => []);
    const stepTimes: number[] = [];
    const accepted: number[] = [];
    let stageMethod: string;
    let stepGraph: CudaGraph | undefined;
    if (cuda) {
      await stream.synchronize();
      stepGraph = captureGraph(stream, step);
      graphs.push(stepGraph);
      // each stage in a graph of its own, timed apart: events inside one graph do not time
      const stageGraphs = stages.map((s) => captureGraph(stream, s));
      graphs = graphs.concat(stageGraphs);
      const start = new Event(device, { timing: true });
      const end = new Event(device, { timing: true });
      try {
        for (let i = 0; i < stageGraphs.length; i++) {
          stageGraphs[i].replay();
          for (let t = 0; t < 5; t++) {
            start.record(stream);
            for (let r = 0; r < 5; r++) stageGraphs[i].replay();
            end.record(stream);
            await end.wait();
            stageMs[i].push(start.elapsedMs(end) / 5);
          }
        }
        stepGraph.replay();
        const steps = bar(o.progress ?? false, 'decode steps', o.steps);
        try {
          for (let s = 0; s < o.steps; s++) {
            writeInto(draftTokens, drawDrafts(), stream);
            writeInto(offset, new BigInt64Array(B).fill(BigInt(s + 1)), stream);
            start.record(stream);
            stepGraph.replay();
            end.record(stream);
            await end.wait();
            stepTimes.push(start.elapsedMs(end));
            accepted.push(mean(Array.from(await out.numAccepted.toArray({ stream }))));
            steps.tick();
          }
        } finally {
          steps.stop();
        }
      } finally {
        start.dispose();
        end.dispose();
      }
      stageMethod = 'CUDA events around replays of each stage captured in a graph of its own (median of 5 x 5 replays)';
    } else {
      const steps = bar(o.progress ?? false, 'decode steps', o.steps);
      try {
        for (let s = 0; s < o.steps; s++) {
          writeInto(draftTokens, drawDrafts(), stream);
          writeInto(offset, new BigInt64Array(B).fill(BigInt(s + 1)), stream);
          const t0 = performance.now();
          let t = t0;
          for (let i = 0; i < stages.length; i++) {
            stages[i]();
            const now = performance.now();
            stageMs[i].push(now - t);
            t = now;
          }
          stepTimes.push(t - t0);
          accepted.push(mean(Array.from(await out.numAccepted.toArray({ stream }))));
          steps.tick();
        }
      } finally {
        steps.stop();
      }
      stageMethod = 'performance.now around each stage (the CPU backend runs each op as it is called), median over steps';
    }

    const stepMs = mean(stepTimes);
    const acceptedPerStep = mean(accepted);
    let expected = 1;
    for (let i = 1; i <= n; i++) expected += o.acceptance ** i;
    const med = stageMs.map(median);
    const result: DemoResult = {
      device,
      deviceName,
      shape: { ...shape, layers: L },
      batch: B,
      drafts: n,
      tokensPerStep: T,
      acceptance: o.acceptance,
      mode: o.mode,
      logitsDtype: o.logits,
      steps: o.steps,
      execution: cuda ? 'cuda-graph' : 'eager',
      stages: { moe: med.slice(0, L), lmHead: med[L], verify: med[L + 1] },
      stageMethod,
      stepMs,
      stepMsMedian: median(stepTimes),
      acceptedPerStep,
      expectedAcceptedPerStep: expected,
      tokensPerSecond: (B * acceptedPerStep) / (stepMs / 1e3),
      weights: { ...slice.weights },
      firstPositionExperts,
      notes,
    };
    return result;
  } finally {
    for (const g of graphs) g.dispose();
    for (const t of made.reverse()) t.dispose();
  }
}

function fmtMs(ms: number): string {
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 1 ? `${ms.toFixed(2)} ms` : `${(ms * 1e3).toFixed(1)} µs`;
}

function fmtBytes(b: number): string {
  return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(2)} MiB`;
}

/** The result as lines for the screen. */
export function formatDemo(r: DemoResult): string[] {
  const lines: string[] = [];
  lines.push(`execution: ${r.execution === 'cuda-graph' ? 'the whole step as one CUDA graph, replayed once per step' : 'eager (the CPU backend has no graphs)'}; ${r.steps} step${r.steps === 1 ? '' : 's'}`);
  lines.push(`stages (${r.stageMethod}):`);
  r.stages.moe.forEach((ms, l) => lines.push(`  MoE layer ${l}`.padEnd(22) + fmtMs(ms)));
  lines.push('  LM head'.padEnd(22) + fmtMs(r.stages.lmHead));
  lines.push(`  verify (${r.mode})`.padEnd(22) + fmtMs(r.stages.verify));
  lines.push(`step: ${fmtMs(r.stepMs)} mean, ${fmtMs(r.stepMsMedian)} median`);
  lines.push(`accepted tokens per request per step: ${r.acceptedPerStep.toFixed(3)} of at most ${r.drafts + 1} (greedy expectation ${r.expectedAcceptedPerStep.toFixed(3)})`);
  lines.push(`tokens/s per ${r.execution === 'cuda-graph' ? 'GPU' : 'process'}: ${r.tokensPerSecond.toFixed(1)} (B = ${r.batch} x ${r.acceptedPerStep.toFixed(3)} / step time)`);
  lines.push(`weights: NVFP4 ${fmtBytes(r.weights.nvfp4Bytes)}, the same in BF16 ${fmtBytes(r.weights.bf16Bytes)} (${r.weights.ratio.toFixed(2)}x less)`);
  return lines;
}
