// moeForward: one MoE block (DeepSeek-V3 style) from the family ops, all enqueued on one stream
// with no host synchronization, so that a decode step can be captured in one CUDA graph.
//   routerLogits -> routeTopK -> expertLayout -> grouped GEMM w13 + SwiGLU (masked form: gathering
//   x's rows by the layout; contiguous: after permute) -> grouped GEMM w2 -> unpermute (gate
//   weights, f32) [+ shared expert: gemm w13, swiglu, gemm w2 (f32)] -> one add rounded to bf16.
// With NVFP4 activations a permute quantizes x's rows first (the global scale comes from the
// rows that hold pairs) and the SwiGLU epilogue writes NVFP4, so both expert GEMMs are W4A4.
import { MoeError, describe } from '../errors';
import { native } from '../native';
import { gemmNvfp4, groupedGemmNvfp4, type Nvfp4Tensor } from '../nvfp4';
import { checkGlobalScaleOption } from '../nvfp4/quantize';
import { allocateNvfp4 } from '../nvfp4/tensor';
import { expertLayout, permute, routeTopK, unpermute, MAX_TOP_K, type ExpertLayout, type RouteTopKOptions, type Scoring } from '../routing';
import { resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, zeros, type Tensor } from '../tensor';
import {
  MAX_ELEMENTS,
  checkBoolean,
  checkFinite,
  checkInteger,
  checkNvfp4,
  checkOneOf,
  checkOptions,
  checkOut,
  checkRank,
  checkShapeIs,
  checkTensor,
  keys,
  type Device,
} from '../validate';
import { MAX_ROUTER_EXPERTS, addInto, routerLogits, swiglu } from './ops';

/** The router of a MoE block: its gate weight and the routing options of routeTopK. */
/** The gate: its weight, and the routing options of routeTopK. */
export interface MoeRouter extends Omit<RouteTopKOptions, 'stream' | 'out'> {
  /** bf16 [experts, hidden]. */
  weight: Tensor<'bf16'>;
}

/** The expert weights of a MoE block in NVFP4, as nvfp4FromCheckpoint loads them. */
export interface MoeExperts {
  /** [experts, 2I, hidden], one global scale per expert; rows 0..I-1 of an expert are the gate, I..2I-1 the up projection. */
  w13: Nvfp4Tensor;
  /** [experts, hidden, I], one global scale per expert. */
  w2: Nvfp4Tensor;
  /**
   * activations 'nvfp4': the global scale of the routed experts' input x (a ModelOpt checkpoint's
   * w13 `input_scale`, one for all experts): a positive number or a device scalar f32 [1].
   * Default: x's own amax / (6 * 448), computed per call on the device.
   */
  w13InputScale?: number | Tensor<'f32'>;
  /**
   * activations 'nvfp4' (required there): the global scale of the SwiGLU output, the down
   * projection's input (ModelOpt's w2 `input_scale`), a positive number or a device scalar f32
   * [1]. The SwiGLU epilogue quantizes with it before the output exists, so there is no default.
   */
  w2InputScale?: number | Tensor<'f32'>;
  /** The shared expert, applied to every token: w13 [2Is, hidden], w2 [hidden, Is], one global scale each. */
  shared?: { w13: Nvfp4Tensor; w2: Nvfp4Tensor };
}

/** The routed experts' activations: bf16 (W4A16) or NVFP4 (W4A4). */
export type MoeActivations = 'bf16' | 'nvfp4';
const ACTIVATIONS: readonly MoeActivations[] = ['bf16', 'nvfp4'];

export interface MoeForwardOptions {
  /**
   * 'bf16' (default): the routed experts run W4A16 with bf16 intermediates. 'nvfp4': W4A4 -
   * permute quantizes x (with experts.w13InputScale, or x's amax), the w13 GEMM's SwiGLU
   * epilogue writes NVFP4 (with experts.w2InputScale) and the w2 GEMM reads it. The shared
   * expert keeps bf16 activations. A workspace must be made for the same activations.
   */
  activations?: MoeActivations;
  /**
   * The masked layout (decode, graph capture): each expert gets exactly this many rows; a pair
   * past an expert's first maxTokensPerExpert is dropped and adds nothing. maxTokensPerExpert =
   * tokens never drops (a token picks an expert at most once). Default: the contiguous layout.
   */
  maxTokensPerExpert?: number;
  /** Contiguous layout: each expert's rows start at a multiple of align (1..1024). Default 1. */
  align?: number;
  /** bf16 [tokens, hidden], written in place of a new tensor. */
  out?: Tensor<'bf16'>;
  stream?: Stream;
  /** Preallocated intermediates (see createMoeWorkspace); its layout form is used. */
  workspace?: MoeWorkspace;
}

export interface MoeWorkspaceOptions {
  /** The activations the forward will use (default 'bf16'): 'nvfp4' sizes the NVFP4 intermediates. */
  activations?: MoeActivations;
  maxTokensPerExpert?: number;
  align?: number;
  /** Orders the allocations (and the first layout); default: the device's default stream. */
  stream?: Stream;
}

const FORWARD_OPTIONS = keys('activations', 'maxTokensPerExpert', 'align', 'out', 'stream', 'workspace');
const WORKSPACE_OPTIONS = keys('activations', 'maxTokensPerExpert', 'align', 'stream');
const ROUTER_KEYS = keys('weight', 'k', 'scoring', 'renormalize', 'groups', 'correctionBias', 'scale');
const EXPERTS_KEYS = keys('w13', 'w2', 'w13InputScale', 'w2InputScale', 'shared');
const SHARED_KEYS = keys('w13', 'w2');
const GROUP_KEYS = keys('count', 'topk');
const SCORINGS: readonly Scoring[] = ['softmax', 'sigmoid'];
const BF16 = ['bf16'] as const;
const F32 = ['f32'] as const;

/** @internal */
export interface Router {
  weight: Tensor<'bf16'>;
  experts: number;
  k: number;
  scoring: Scoring;
  renormalize?: boolean;
  groups?: { count: number; topk: number };
  correctionBias?: Tensor<'f32'>;
  scale?: number;
}

/** @internal */
export interface Experts {
  w13: Nvfp4Tensor;
  w2: Nvfp4Tensor;
  inner: number;
  w13InputScale?: number | Tensor<'f32'>;
  w2InputScale?: number | Tensor<'f32'>;
  shared?: { w13: Nvfp4Tensor; w2: Nvfp4Tensor; inner: number };
}

interface Form {
  masked: boolean;
  maxTokensPerExpert: number;
  align: number;
}

/** @internal */
export function checkRouter(value: unknown, hidden: number | undefined, device: Device | undefined): Router {
  if (value === null || typeof value !== 'object') throw new MoeError('E_ARGUMENT', `router: expected { weight, k, scoring, ... }, got ${describe(value)}`);
  const r = checkOptions(value, 'router', ROUTER_KEYS);
  const weight = checkTensor<Tensor<'bf16'>>(r.weight, 'router.weight', BF16, device);
  checkRank(weight, 'router.weight', 2, '[experts, hidden]');
  const [experts, h] = weight.shape;
  if (hidden !== undefined && h !== hidden) {
    throw new MoeError('E_SHAPE', `router.weight: expected [experts, hidden = ${hidden}] to match x, got [${weight.shape}]`);
  }
  if (experts < 1 || experts > MAX_ROUTER_EXPERTS) {
    throw new MoeError('E_SHAPE', `router.weight: expected 1 to ${MAX_ROUTER_EXPERTS} experts, got [${weight.shape}]`);
  }
  const k = checkInteger(r.k, 'router.k', 1, Math.min(MAX_TOP_K, experts));
  const scoring = checkOneOf(r.scoring, 'router.scoring', SCORINGS);
  const out: Router = { weight, experts, k, scoring };
  if (r.renormalize !== undefined) out.renormalize = checkBoolean(r.renormalize, 'router.renormalize');
  if (r.scale !== undefined) out.scale = checkFinite(r.scale, 'router.scale');
  if (r.groups !== undefined) {
    const g = checkOptions(r.groups, 'router.groups', GROUP_KEYS);
    const count = checkInteger(g.count, 'router.groups.count', 1, experts);
    const topk = checkInteger(g.topk, 'router.groups.topk', 1, count);
    if (experts % count !== 0) throw new MoeError('E_SHAPE', `router.groups.count: ${experts} experts do not split into ${count} equal groups`);
    if (topk * (experts / count) < k) throw new MoeError('E_SHAPE', `router.groups.topk: ${topk} groups of ${experts / count} experts hold fewer than k = ${k}`);
    out.groups = { count, topk };
  }
  if (r.correctionBias !== undefined) {
    const bias = checkTensor<Tensor<'f32'>>(r.correctionBias, 'router.correctionBias', F32, weight.device);
    checkShapeIs(bias, 'router.correctionBias', [experts], ['experts']);
    out.correctionBias = bias;
  }
  return out;
}

function checkExpertWeight(value: unknown, name: string, shape: (number | undefined)[], dims: string[], device: Device): Nvfp4Tensor {
  const w = checkNvfp4<Nvfp4Tensor>(value, name, device);
  const s = w.shape;
  if (s.length !== shape.length || shape.some((d, i) => d !== undefined && s[i] !== d)) {
    const want = dims.map((n, i) => (shape[i] === undefined ? n : `${n} = ${shape[i]}`)).join(', ');
    throw new MoeError('E_SHAPE', `${name}: expected [${want}], got [${s}]`);
  }
  return w;
}

/** @internal */
export function checkExperts(value: unknown, experts: number, hidden: number, device: Device): Experts {
  if (value === null || typeof value !== 'object') throw new MoeError('E_ARGUMENT', `experts: expected { w13, w2, shared? }, got ${describe(value)}`);
  const x = checkOptions(value, 'experts', EXPERTS_KEYS);
  const w13 = checkExpertWeight(x.w13, 'experts.w13', [experts, undefined, hidden], ['experts', '2I', 'hidden'], device);
  const twoI = w13.shape[1];
  if (twoI % 2 !== 0 || twoI === 0) throw new MoeError('E_SHAPE', `experts.w13: expected an even, non-zero 2I, got [${w13.shape}]`);
  const inner = twoI / 2;
  const w2 = checkExpertWeight(x.w2, 'experts.w2', [experts, hidden, inner], ['experts', 'hidden', 'I'], device);
  for (const [w, name] of [[w13, 'experts.w13'], [w2, 'experts.w2']] as const) {
    if (w.globalScale.numel !== experts) {
      throw new MoeError('E_SHAPE', `${name}.globalScale: expected one scale per expert, [${experts}], got [${w.globalScale.shape}]`);
    }
  }
  const out: Experts = { w13, w2, inner };
  // checked (as a quantizing op checks its global scale) when the forward uses them
  if (x.w13InputScale !== undefined) out.w13InputScale = x.w13InputScale as number | Tensor<'f32'>;
  if (x.w2InputScale !== undefined) out.w2InputScale = x.w2InputScale as number | Tensor<'f32'>;
  if (x.shared !== undefined) {
    const s = checkOptions(x.shared, 'experts.shared', SHARED_KEYS);
    const sw13 = checkExpertWeight(s.w13, 'experts.shared.w13', [undefined, hidden], ['2Is', 'hidden'], device);
    const sTwoI = sw13.shape[0];
    if (sTwoI % 2 !== 0 || sTwoI === 0) throw new MoeError('E_SHAPE', `experts.shared.w13: expected an even, non-zero 2Is, got [${sw13.shape}]`);
    const sInner = sTwoI / 2;
    const sw2 = checkExpertWeight(s.w2, 'experts.shared.w2', [hidden, sInner], ['hidden', 'Is'], device);
    out.shared = { w13: sw13, w2: sw2, inner: sInner };
  }
  return out;
}

function checkForm(o: Readonly<Record<string, unknown>>): Form {
  const masked = o.maxTokensPerExpert !== undefined;
  if (masked && o.align !== undefined) {
    throw new MoeError('E_ARGUMENT', 'options.align: the masked form (maxTokensPerExpert) has no alignment; pass one of them');
  }
  return {
    masked,
    maxTokensPerExpert: masked ? checkInteger(o.maxTokensPerExpert, 'options.maxTokensPerExpert', 1, MAX_ELEMENTS) : 0,
    align: o.align === undefined ? 1 : checkInteger(o.align, 'options.align', 1, 1024),
  };
}

// ---- the intermediates -------------------------------------------------------------------

interface Buffers {
  logits: Tensor<'f32'>;
  ids: Tensor<'i32'>;
  weights: Tensor<'f32'>;
  /** [rows, hidden]: permuted x in the contiguous form, then (reused) the down projections */
  rows: Tensor<'bf16'>;
  /** [rows, I]: SwiGLU of the gate/up projections (bf16 activations) */
  act?: Tensor<'bf16'>;
  /** NVFP4 activations: permuted x [rows, hidden] and the SwiGLU output [rows, I], quantized */
  rowsFp4?: Nvfp4Tensor;
  actFp4?: Nvfp4Tensor;
  /** with a shared expert: the routed sum (f32), gate/up, SwiGLU and down (f32) of the shared expert */
  routed?: Tensor<'f32'>;
  sharedGateUp?: Tensor<'bf16'>;
  sharedAct?: Tensor<'bf16'>;
  sharedOut?: Tensor<'f32'>;
}

function layoutRows(tokens: number, k: number, experts: number, form: Form): number {
  return form.masked ? experts * form.maxTokensPerExpert : tokens * k + experts * (form.align - 1);
}

function allocate(
  tokens: number, hidden: number, router: Router, experts: Experts, form: Form, activations: MoeActivations, device: Device, stream: Stream,
): Buffers {
  const rows = layoutRows(tokens, router.k, router.experts, form);
  if (rows * Math.max(hidden, experts.inner) > MAX_ELEMENTS) {
    throw new MoeError('E_SHAPE', `the layout's ${rows} rows x ${Math.max(hidden, experts.inner)} exceed 2^31 - 1 elements`);
  }
  const made: { dispose(): void }[] = [];
  const make = <D extends 'f32' | 'bf16' | 'i32'>(shape: number[], dtype: D): Tensor<D> => {
    const t = empty<D>(shape, { dtype, device, stream });
    made.push(t);
    return t;
  };
  const makeFp4 = (shape: number[]): Nvfp4Tensor => {
    const q = allocateNvfp4(shape, device, stream);
    made.push(q);
    return q;
  };
  try {
    const b: Buffers = {
      logits: make([tokens, router.experts], 'f32'),
      ids: make([tokens, router.k], 'i32'),
      weights: make([tokens, router.k], 'f32'),
      rows: make([rows, hidden], 'bf16'),
    };
    if (activations === 'nvfp4') {
      b.rowsFp4 = makeFp4([rows, hidden]);
      b.actFp4 = makeFp4([rows, experts.inner]);
    } else {
      b.act = make([rows, experts.inner], 'bf16');
    }
    if (experts.shared) {
      b.routed = make([tokens, hidden], 'f32');
      b.sharedGateUp = make([tokens, 2 * experts.shared.inner], 'bf16');
      b.sharedAct = make([tokens, experts.shared.inner], 'bf16');
      b.sharedOut = make([tokens, hidden], 'f32');
    }
    return b;
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

function bufferParts(b: Buffers): (Tensor | undefined)[] {
  const fp4 = [b.rowsFp4, b.actFp4].flatMap((q) => (q ? [q.data, q.scales, q.globalScale] : []));
  return [b.logits, b.ids, b.weights, b.rows, b.act, b.routed, b.sharedGateUp, b.sharedAct, b.sharedOut, ...fp4];
}

function disposeBuffers(b: Buffers): void {
  for (const t of [b.logits, b.ids, b.weights, b.rows, b.act, b.routed, b.sharedGateUp, b.sharedAct, b.sharedOut, b.rowsFp4, b.actFp4]) t?.dispose();
}

function disposeLayout(l: ExpertLayout): void {
  for (const t of [l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) t.dispose();
}

// Recomputes a workspace's layout in place: the same native op as expertLayout, into the
// layout's own tensors, so that no shape or address changes between calls (graph replay).
function relayout(l: ExpertLayout, ids: Tensor<'i32'>, stream: Stream): void {
  useOn(stream, [ids, l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]);
  native().expertLayout(
    ids.deviceIndex, stream.handle, ids.dataPtr, l.tokens, l.k, l.numExperts, l.align, l.maxTokensPerExpert, l.rows,
    l.counts.dataPtr, l.offsets.dataPtr, l.sourceIndex.dataPtr, l.rowIndex.dataPtr, l.usedRows.dataPtr, l.dropped.dataPtr,
    l.errors.dataPtr,
  );
}

// ---- the workspace -----------------------------------------------------------------------

const workspaces = new WeakSet<object>();

/**
 * Every intermediate of moeForward for one token count, layer shape and layout form, kept
 * between calls: a decode loop allocates nothing per step, and the whole forward can be captured
 * in one CUDA graph and replayed with new inputs (the masked form has no data-dependent
 * launch). Calls that share a workspace must be ordered on one stream. `routing` and `layout`
 * hold the last call's expert choice (e.g. layout.dropped in the masked form).
 */
export class MoeWorkspace {
  readonly device: Device;
  readonly tokens: number;
  readonly hidden: number;
  readonly experts: number;
  readonly k: number;
  /** I, the routed experts' width. */
  readonly inner: number;
  /** Is, the shared expert's width; 0 without one. */
  readonly sharedInner: number;
  readonly form: 'contiguous' | 'masked';
  readonly maxTokensPerExpert: number;
  readonly align: number;
  /** The activations it holds intermediates for. */
  readonly activations: MoeActivations;
  /** The last call's routeTopK result. */
  readonly routing: { readonly ids: Tensor<'i32'>; readonly weights: Tensor<'f32'> };
  readonly layout: ExpertLayout;
  /** @internal */
  readonly buffers: Buffers;
  private _disposed = false;

  /** @internal use createMoeWorkspace() */
  constructor(
    device: Device, tokens: number, hidden: number, router: Router, experts: Experts, form: Form, activations: MoeActivations, stream: Stream,
  ) {
    this.device = device;
    this.tokens = tokens;
    this.hidden = hidden;
    this.experts = router.experts;
    this.k = router.k;
    this.inner = experts.inner;
    this.sharedInner = experts.shared?.inner ?? 0;
    this.form = form.masked ? 'masked' : 'contiguous';
    this.maxTokensPerExpert = form.maxTokensPerExpert;
    this.align = form.align;
    this.activations = activations;
    this.buffers = allocate(tokens, hidden, router, experts, form, activations, device, stream);
    try {
      // a valid layout of all-zero ids, to be recomputed by every call
      const zeroIds = zeros([tokens, router.k], { dtype: 'i32', device, stream });
      try {
        this.layout = expertLayout(zeroIds, router.experts, form.masked ? { maxTokensPerExpert: form.maxTokensPerExpert, stream } : { align: form.align, stream });
      } finally {
        zeroIds.dispose();
      }
    } catch (e) {
      disposeBuffers(this.buffers);
      throw e;
    }
    this.routing = { ids: this.buffers.ids, weights: this.buffers.weights };
    workspaces.add(this);
  }

  get disposed(): boolean {
    return this._disposed;
  }

  /** Bytes of device memory the intermediates hold. */
  get byteLength(): number {
    const b = this.buffers;
    const l = this.layout;
    let n = 0;
    // an NVFP4 buffer's parts share one allocation; byteLength counts each part once
    for (const t of bufferParts(b)) n += t ? t.byteLength : 0;
    for (const t of [l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) n += t.byteLength;
    return n;
  }

  /** Releases the intermediates (a graph that captured them keeps their memory). Idempotent. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    disposeBuffers(this.buffers);
    disposeLayout(this.layout);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The intermediates of moeForward for `tokens` tokens of this router and these experts, in the
 * given layout form (the masked form with maxTokensPerExpert = tokens is the usual decode choice).
 */
export function createMoeWorkspace(tokens: number, router: MoeRouter, experts: MoeExperts, options?: MoeWorkspaceOptions): MoeWorkspace {
  const o = checkOptions(options, 'options', WORKSPACE_OPTIONS);
  const T = checkInteger(tokens, 'tokens', 0, MAX_ELEMENTS);
  const r = checkRouter(router, undefined, undefined);
  const device = r.weight.device;
  const hidden = r.weight.shape[1];
  const ex = checkExperts(experts, r.experts, hidden, device);
  const form = checkForm(o);
  const activations = o.activations === undefined ? 'bf16' : checkOneOf(o.activations, 'options.activations', ACTIVATIONS);
  const stream = resolveStream(o.stream, device, 'options.stream');
  return new MoeWorkspace(device, T, hidden, r, ex, form, activations, stream);
}

function checkWorkspace(
  value: unknown, device: Device, tokens: number, hidden: number, r: Router, ex: Experts, activations: MoeActivations, o: Readonly<Record<string, unknown>>,
): MoeWorkspace {
  if (typeof value !== 'object' || value === null || !workspaces.has(value)) {
    throw new MoeError('E_ARGUMENT', `options.workspace: expected a workspace made by createMoeWorkspace(), got ${describe(value)}`);
  }
  const ws = value as MoeWorkspace;
  if (ws.disposed) throw new MoeError('E_DISPOSED', 'options.workspace: the workspace was disposed');
  if (ws.device !== device) throw new MoeError('E_DEVICE', `options.workspace: made for ${ws.device}, x is on ${device}`);
  const want: [string, number, number][] = [
    ['tokens', ws.tokens, tokens], ['hidden', ws.hidden, hidden], ['experts', ws.experts, r.experts], ['k', ws.k, r.k],
    ['I', ws.inner, ex.inner], ['shared Is', ws.sharedInner, ex.shared?.inner ?? 0],
  ];
  for (const [name, has, need] of want) {
    if (has !== need) throw new MoeError('E_SHAPE', `options.workspace: made for ${name} = ${has}, this call has ${name} = ${need}`);
  }
  if (ws.activations !== activations) {
    throw new MoeError('E_ARGUMENT', `options.workspace: made for activations '${ws.activations}', this call has options.activations '${activations}'`);
  }
  if (o.maxTokensPerExpert !== undefined || o.align !== undefined) {
    const f = checkForm(o);
    if (f.masked !== (ws.form === 'masked') || f.maxTokensPerExpert !== ws.maxTokensPerExpert || f.align !== ws.align) {
      throw new MoeError('E_ARGUMENT', 'options: maxTokensPerExpert / align differ from the workspace\'s layout; leave them out or pass the same');
    }
  }
  return ws;
}

// ---- the forward -------------------------------------------------------------------------

/**
 * One MoE block: out bf16 [tokens, hidden] = sum over the k routed experts of gate weight x
 * expert(x), plus the shared expert (if any), for x bf16 [tokens, hidden]. An expert is
 * w2 . SwiGLU(w13 . x) with NVFP4 weights (W4A16, fp32 accumulation, bf16 intermediates); the
 * routed sum and the shared expert's output are added in f32 and rounded once to bf16.
 *
 * activations 'nvfp4' (W4A4): x's permuted rows are quantized to NVFP4 (global scale
 * experts.w13InputScale, default x's amax / 2688), the SwiGLU output is rounded to bf16 and
 * quantized in the w13 GEMM's epilogue (global scale experts.w2InputScale, required), and the
 * w2 GEMM multiplies NVFP4 by NVFP4; its bf16 output is unpermuted as before. Next to the bf16
 * path this adds the two activation quantizations' error (each value within half an E2M1 step
 * of its block's scale).
 *
 * Everything is enqueued on `stream` without a host synchronization. Without a workspace the
 * intermediates come from the stream-ordered allocator and are released at the end of the call.
 */
export function moeForward(x: Tensor<'bf16'>, router: MoeRouter, experts: MoeExperts, options?: MoeForwardOptions): Tensor<'bf16'> {
  const o = checkOptions(options, 'options', FORWARD_OPTIONS);
  const xt = checkTensor<Tensor<'bf16'>>(x, 'x', BF16);
  checkRank(xt, 'x', 2, '[tokens, hidden]');
  const [tokens, hidden] = xt.shape;
  const device = xt.device;
  const r = checkRouter(router, hidden, device);
  const ex = checkExperts(experts, r.experts, hidden, device);
  const stream = resolveStream(o.stream, device, 'options.stream');
  const activations = o.activations === undefined ? 'bf16' : checkOneOf(o.activations, 'options.activations', ACTIVATIONS);
  if (activations === 'nvfp4' && ex.w2InputScale === undefined) {
    throw new MoeError('E_ARGUMENT', "experts.w2InputScale: activations 'nvfp4' need the down projection's input scale (a number or a device scalar f32 [1])");
  }
  if (activations === 'nvfp4') {
    ex.w13InputScale = checkGlobalScaleOption(ex.w13InputScale, 'experts.w13InputScale', device, stream);
    ex.w2InputScale = checkGlobalScaleOption(ex.w2InputScale, 'experts.w2InputScale', device, stream);
  }
  const ws = o.workspace === undefined ? undefined : checkWorkspace(o.workspace, device, tokens, hidden, r, ex, activations, o);
  const form = ws ? undefined : checkForm(o);
  const out = o.out === undefined
    ? empty<'bf16'>([tokens, hidden], { dtype: 'bf16', device, stream })
    : checkOut<Tensor<'bf16'>>(o.out, 'options.out', 'bf16', [tokens, hidden], device);
  if (o.out !== undefined && overlaps(out, xt)) throw new MoeError('E_ARGUMENT', 'options.out: overlaps x; pass a separate tensor');
  if (tokens === 0) return out;

  const b = ws ? ws.buffers : allocate(tokens, hidden, r, ex, form as Form, activations, device, stream);
  let layout: ExpertLayout | undefined;
  try {
    routerLogits(xt, r.weight, { out: b.logits, stream });
    routeTopK(b.logits, {
      k: r.k, scoring: r.scoring, stream, out: { ids: b.ids, weights: b.weights },
      ...(r.renormalize !== undefined ? { renormalize: r.renormalize } : {}),
      ...(r.groups ? { groups: r.groups } : {}),
      ...(r.correctionBias ? { correctionBias: r.correctionBias } : {}),
      ...(r.scale !== undefined ? { scale: r.scale } : {}),
    });
    if (ws) {
      layout = ws.layout;
      relayout(layout, b.ids, stream);
    } else {
      const f = form as Form;
      layout = expertLayout(b.ids, r.experts, f.masked ? { maxTokensPerExpert: f.maxTokensPerExpert, stream } : { align: f.align, stream });
    }
    if (activations === 'nvfp4') {
      const xq = b.rowsFp4 as Nvfp4Tensor;
      const act = b.actFp4 as Nvfp4Tensor;
      permute(xt, layout, { quantize: 'nvfp4', out: xq, stream, ...(ex.w13InputScale !== undefined ? { globalScale: ex.w13InputScale } : {}) });
      groupedGemmNvfp4(xq, ex.w13, layout, { epilogue: 'swiglu', out: act, outGlobalScale: ex.w2InputScale, stream });
      groupedGemmNvfp4(act, ex.w2, layout, { out: b.rows, stream });
    } else {
      if (layout.form === 'masked' && xt.address % 16 === 0) {
        // decode: w13 reads each row's token from x itself, no permuted copy of x
        groupedGemmNvfp4(xt, ex.w13, layout, { epilogue: 'swiglu', gather: true, out: b.act as Tensor<'bf16'>, stream });
      } else {
        // prefill (contiguous): the tiled GEMM over permuted rows measured faster than the
        // gathering one by more than the permute costs (benchmarks/NOTES.md); an x off 16 bytes
        // needs the copy too (the GEMM's 16-byte loads)
        permute(xt, layout, { out: b.rows, stream });
        groupedGemmNvfp4(b.rows, ex.w13, layout, { epilogue: 'swiglu', out: b.act as Tensor<'bf16'>, stream });
      }
      groupedGemmNvfp4(b.act as Tensor<'bf16'>, ex.w2, layout, { out: b.rows, stream });
    }
    if (!ex.shared) {
      unpermute(b.rows, layout, b.weights, { out, stream });
    } else {
      const s = ex.shared;
      gemmNvfp4(xt, s.w13, { out: b.sharedGateUp as Tensor<'bf16'>, stream });
      swiglu(b.sharedGateUp as Tensor<'bf16'>, { out: b.sharedAct as Tensor<'bf16'>, stream });
      gemmNvfp4(b.sharedAct as Tensor<'bf16'>, s.w2, { out: b.sharedOut as Tensor<'f32'>, stream });
      unpermute(b.rows, layout, b.weights, { out: b.routed as Tensor<'f32'>, stream });
      addInto(b.routed as Tensor<'f32'>, b.sharedOut as Tensor<'f32'>, out, stream);
    }
  } catch (e) {
    if (o.out === undefined) out.dispose();
    throw e;
  } finally {
    // stream-ordered: the memory is reused only by work queued after this call's kernels
    if (!ws) {
      disposeBuffers(b);
      if (layout) disposeLayout(layout);
    }
  }
  return out;
}
