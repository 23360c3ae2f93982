// The routing family: gating (which experts each token goes to, with what weight), the expert
// layout (where each (token, slot) pair sits in the grouped GEMM's rows), and the row movements
// around the expert GEMMs (permute into expert order, unpermute back with the gate weights).
import { DTYPES, FLOAT_DTYPES, type DType } from './dtype';
import { MoeError, describe } from './errors';
import { native } from './native';
import { checkGlobalScaleOption, stageGlobalScale } from './nvfp4/quantize';
import { NVFP4_BLOCK, allocateNvfp4, type Nvfp4Tensor } from './nvfp4/tensor';
import { resolveStream, type Stream } from './stream';
import { empty, overlaps, useOn, type Tensor } from './tensor';
import {
  MAX_ELEMENTS,
  checkAligned,
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
  EXPERT_LAYOUT,
  keys,
  type Device,
} from './validate';

/** Most experts routeTopK takes (its selection key holds the index in 16 bits). */
export const MAX_ROUTED_EXPERTS = 512;
/** Largest k of routeTopK and expertLayout. */
export const MAX_TOP_K = 16;
/** Most experts expertLayout takes (its per-tile counters live in shared memory). */
export const MAX_LAYOUT_EXPERTS = 1024;
/** Largest `align` of expertLayout. */
export const MAX_LAYOUT_ALIGN = 1024;

/** How logits become scores: softmax over the experts (Mixtral, Qwen3-MoE) or a sigmoid each (DeepSeek-V3). */
export type Scoring = 'softmax' | 'sigmoid';

export interface RouteTopKOptions {
  /** Experts per token, 1..16 and at most the number of experts. */
  k: number;
  scoring: Scoring;
  /**
   * Divide the chosen scores by their sum (plus 1e-20): w = s * scale / (sum + 1e-20).
   * Default: true for sigmoid (DeepSeek-V3), false for softmax (the probabilities as they are).
   */
  renormalize?: boolean;
  /**
   * Group-limited selection (DeepSeek-V3 "noaux_tc"): the experts split into `count` equal groups,
   * each scored by the sum of its two best selection scores (its only one for groups of one);
   * only the experts of the `topk` best groups can be chosen. `topk` groups must hold >= k experts.
   */
  groups?: { count: number; topk: number };
  /** f32 [experts], added to the scores for selection only; the weights use the scores without it. */
  correctionBias?: Tensor<'f32'>;
  /** Multiplies every weight (DeepSeek-V3: 2.5). Default 1. */
  scale?: number;
  stream?: Stream;
  out?: Partial<RouteTopKResult>;
}

export interface RouteTopKResult {
  /** i32 [tokens, k]: chosen experts, best first (equal scores: lower index first). */
  ids: Tensor<'i32'>;
  /** f32 [tokens, k]: their weights, in the order of `ids`. */
  weights: Tensor<'f32'>;
}

const ROUTE_OPTIONS = keys('k', 'scoring', 'renormalize', 'groups', 'correctionBias', 'scale', 'stream', 'out');
const GROUP_KEYS = keys('count', 'topk');
const ROUTE_OUT_KEYS = keys('ids', 'weights');
const SCORINGS: readonly Scoring[] = ['softmax', 'sigmoid'];
const SCORING_ID: Readonly<Record<Scoring, number>> = { softmax: 0, sigmoid: 1 };

/**
 * Top-k gating of logits [tokens, experts] (f32 or bf16, up to 512 experts).
 *
 * Scores are computed in f32: softmax over each row, or sigmoid of each logit. Selection ranks
 * score + correctionBias (restricted to the kept groups when `groups` is given) by one 64-bit key
 * per expert, so ties go to the lower index and both backends choose the same ids. A NaN logit
 * ranks below every number and gets weight 0 (a row of NaN chooses experts 0..k-1, weights 0);
 * softmax treats +inf as the limit (the +inf experts share the mass). Ids are never repeated nor
 * out of range.
 *
 * The CUDA and CPU backends compute ids identically, and weights with the same f32 operations
 * in the same order (the same bits; the tests allow 2 ulp).
 */
export function routeTopK(logits: Tensor, options: RouteTopKOptions): RouteTopKResult {
  const o = checkOptions(options, 'options', ROUTE_OPTIONS);
  const x = checkTensor<Tensor>(logits, 'logits', ['f32', 'bf16']);
  checkRank(x, 'logits', 2, '[tokens, experts]');
  const [tokens, experts] = x.shape;
  const k = checkInteger(o.k, 'options.k', 1, MAX_TOP_K);
  const scoring = checkOneOf(o.scoring, 'options.scoring', SCORINGS);
  const renormalize = o.renormalize === undefined ? scoring === 'sigmoid' : checkBoolean(o.renormalize, 'options.renormalize');
  const scale = o.scale === undefined ? 1 : checkFinite(o.scale, 'options.scale');
  let groups = 1;
  let topkGroups = 1;
  if (o.groups !== undefined) {
    const g = checkOptions(o.groups, 'options.groups', GROUP_KEYS);
    groups = checkInteger(g.count, 'options.groups.count', 1, MAX_ROUTED_EXPERTS);
    topkGroups = checkInteger(g.topk, 'options.groups.topk', 1, MAX_ROUTED_EXPERTS);
  }
  let bias: Tensor | undefined;
  if (o.correctionBias !== undefined) {
    bias = checkTensor<Tensor>(o.correctionBias, 'options.correctionBias', ['f32'], x.device);
    checkShapeIs(bias, 'options.correctionBias', [experts], ['experts']);
  }
  const stream = resolveStream(o.stream, x.device, 'options.stream');
  const out = checkOptions(o.out, 'options.out', ROUTE_OUT_KEYS);
  const ids = out.ids === undefined
    ? empty([tokens, k], { dtype: 'i32', device: x.device, stream })
    : checkOut<Tensor<'i32'>>(out.ids, 'options.out.ids', 'i32', [tokens, k], x.device);
  const weights = out.weights === undefined
    ? empty([tokens, k], { dtype: 'f32', device: x.device, stream })
    : checkOut<Tensor<'f32'>>(out.weights, 'options.out.weights', 'f32', [tokens, k], x.device);
  refuseOverlap(ids, 'options.out.ids', [[x, 'logits'], [weights, 'options.out.weights']]);
  refuseOverlap(weights, 'options.out.weights', [[x, 'logits']]);
  useOn(stream, bias ? [x, ids, weights, bias] : [x, ids, weights]);
  native().routeTopK(
    x.deviceIndex, stream.handle, x.dataPtr, DTYPES[x.dtype].id, bias ? bias.dataPtr : 0n, ids.dataPtr, weights.dataPtr,
    tokens, experts, k, SCORING_ID[scoring], groups, topkGroups, renormalize, scale,
  );
  return { ids, weights };
}

function refuseOverlap(out: Tensor, argument: string, inputs: readonly [Tensor, string][]): void {
  for (const [t, name] of inputs) {
    if (t.numel > 0 && out.numel > 0 && overlaps(out, t)) throw new MoeError('E_ARGUMENT', `${argument}: overlaps ${name}; pass a separate tensor`);
  }
}

// ---- expert layout ---------------------------------------------------------------------------

export interface ExpertLayoutOptions {
  /** Contiguous form: each expert's block of rows starts at a multiple of `align` (1..1024). Default 1. */
  align?: number;
  /**
   * Masked form (decode): each expert gets exactly this many rows; pairs past the first
   * `maxTokensPerExpert` of an expert are dropped and counted in `dropped`.
   */
  maxTokensPerExpert?: number;
  stream?: Stream;
}

/**
 * Where each (token, slot) pair of `ids` goes. Pair p = token * k + slot. Within an expert, pairs
 * keep (token, slot) order. No shape depends on the data, so the op can be captured in a graph.
 */
export interface ExpertLayout {
  readonly form: 'contiguous' | 'masked';
  readonly tokens: number;
  readonly k: number;
  readonly numExperts: number;
  readonly align: number;
  /** 0 in the contiguous form. */
  readonly maxTokensPerExpert: number;
  /** Rows of the permuted tensor: tokens*k + experts*(align-1) (contiguous), experts*maxTokensPerExpert (masked). */
  readonly rows: number;
  /** i32 [experts]: pairs placed in each expert's rows (masked: at most maxTokensPerExpert). */
  readonly counts: Tensor<'i32'>;
  /**
   * i32 [experts + 1]: expert e owns rows offsets[e] .. offsets[e+1]-1, its pairs first, then
   * padding (contiguous: blocks are multiples of align; masked: offsets[e] = e * maxTokensPerExpert).
   */
  readonly offsets: Tensor<'i32'>;
  /**
   * i32 [rows] (masked: [experts, maxTokensPerExpert]): the pair each row holds, -1 for padding
   * rows and rows past usedRows.
   */
  readonly sourceIndex: Tensor<'i32'>;
  /** i32 [tokens, k]: the row each pair went to, -1 where it was dropped (or, on CUDA, its id was out of range). */
  readonly rowIndex: Tensor<'i32'>;
  /** i32 [1]: rows in use, offsets[experts]. */
  readonly usedRows: Tensor<'i32'>;
  /** i32 [1]: pairs dropped because their expert already had maxTokensPerExpert (0 in the contiguous form). */
  readonly dropped: Tensor<'i32'>;
  /**
   * i32 [1]: ids outside [0, numExperts). The CPU backend throws E_RANGE instead; the CUDA kernels
   * cannot throw, so they count them here and place those pairs nowhere (rowIndex -1).
   */
  readonly errors: Tensor<'i32'>;
}

const LAYOUT_OPTIONS = keys('align', 'maxTokensPerExpert', 'stream');
// Layouts this module made: permute and unpermute trust their shapes.
const layouts = new WeakSet<object>();

/** Groups the (token, slot) pairs of `ids` (i32 [tokens, k]) by expert. */
export function expertLayout(ids: Tensor<'i32'>, numExperts: number, options?: ExpertLayoutOptions): ExpertLayout {
  const o = checkOptions(options, 'options', LAYOUT_OPTIONS);
  const t = checkTensor<Tensor<'i32'>>(ids, 'ids', ['i32']);
  checkRank(t, 'ids', 2, '[tokens, k]');
  const [tokens, k] = t.shape;
  if (k < 1 || k > MAX_TOP_K) throw new MoeError('E_SHAPE', `ids: expected [tokens, k] with 1 <= k <= ${MAX_TOP_K}, got [${t.shape}]`);
  const experts = checkInteger(numExperts, 'numExperts', 1, MAX_LAYOUT_EXPERTS);
  const masked = o.maxTokensPerExpert !== undefined;
  const maxPerExpert = masked ? checkInteger(o.maxTokensPerExpert, 'options.maxTokensPerExpert', 1, MAX_ELEMENTS) : 0;
  if (masked && o.align !== undefined) {
    throw new MoeError('E_ARGUMENT', 'options.align: the masked form (maxTokensPerExpert) has no alignment; pass one of them');
  }
  const align = o.align === undefined ? 1 : checkInteger(o.align, 'options.align', 1, MAX_LAYOUT_ALIGN);
  const rows = masked ? experts * maxPerExpert : tokens * k + experts * (align - 1);
  if (rows > MAX_ELEMENTS) throw new MoeError('E_SHAPE', `layout: ${rows} rows exceed 2^31 - 1`);
  const stream = resolveStream(o.stream, t.device, 'options.stream');
  const make = (shape: number[]): Tensor<'i32'> => empty(shape, { dtype: 'i32', device: t.device, stream });
  const layout: ExpertLayout = {
    form: masked ? 'masked' : 'contiguous',
    tokens,
    k,
    numExperts: experts,
    align,
    maxTokensPerExpert: maxPerExpert,
    rows,
    counts: make([experts]),
    offsets: make([experts + 1]),
    sourceIndex: make(masked ? [experts, maxPerExpert] : [rows]),
    rowIndex: make([tokens, k]),
    usedRows: make([1]),
    dropped: make([1]),
    errors: make([1]),
  };
  const L = layout;
  useOn(stream, [t, L.counts, L.offsets, L.sourceIndex, L.rowIndex, L.usedRows, L.dropped, L.errors]);
  native().expertLayout(
    t.deviceIndex, stream.handle, t.dataPtr, tokens, k, experts, align, maxPerExpert, rows, L.counts.dataPtr, L.offsets.dataPtr,
    L.sourceIndex.dataPtr, L.rowIndex.dataPtr, L.usedRows.dataPtr, L.dropped.dataPtr, L.errors.dataPtr,
  );
  layouts.add(layout);
  Object.defineProperty(layout, EXPERT_LAYOUT, { value: true });
  return layout;
}

function checkLayout(value: unknown, device: Device): ExpertLayout {
  if (typeof value !== 'object' || value === null || !layouts.has(value)) {
    throw new MoeError('E_ARGUMENT', `layout: expected a layout returned by expertLayout(), got ${describe(value)}`);
  }
  const l = value as ExpertLayout;
  for (const name of ['sourceIndex', 'rowIndex', 'usedRows'] as const) checkTensor(l[name], `layout.${name}`, ['i32'], device);
  return l;
}

// ---- permute / unpermute ---------------------------------------------------------------------

export interface PermuteOptions<D extends DType = DType> {
  /** [layout.rows, hidden], x's dtype. */
  out?: Tensor<D>;
  stream?: Stream;
}

const PERMUTE_OPTIONS = keys('out', 'stream');
const PERMUTE_NVFP4_OPTIONS = keys('quantize', 'globalScale', 'out', 'stream');
const NVFP4_SOURCES = ['bf16', 'f16', 'f32'] as const;

/** permute that quantizes the gathered rows to NVFP4 (the activations of a W4A4 expert GEMM). */
export interface PermuteNvfp4Options {
  quantize: 'nvfp4';
  /**
   * The activations' global scale: a positive finite number (as f32) or a device scalar f32 [1],
   * e.g. a ModelOpt checkpoint's calibrated `input_scale` (copied into the result, so later
   * writes to it do not change it). Default: x's own, amax(|x|) / (6 * 448) over every token
   * of x (1 where that is 0), computed on the device without a host sync, as quantizeNvfp4
   * computes it; per call, so it follows the batch (a calibrated scale does not).
   */
  globalScale?: number | Tensor<'f32'>;
  /** Written in place of a new tensor: an NVFP4 tensor [layout.rows, hidden] with one global scale. */
  out?: Nvfp4Tensor;
  stream?: Stream;
}

/**
 * Gathers the rows of x ([tokens, hidden], any float dtype, moved as bytes) into expert order:
 * row r of the result is x[sourceIndex[r] / k], zeros for padding rows. Rows at or past
 * usedRows are not written (the grouped GEMM reads only offsets[0] .. offsets[experts]).
 * Both backends give the same bytes.
 *
 * With `{ quantize: 'nvfp4' }` (x bf16, f16 or f32, hidden a multiple of 16) the gathered rows
 * are quantized on the way, in one kernel, with quantizeNvfp4's rules and the global scale of
 * `globalScale`: an Nvfp4Tensor [layout.rows, hidden] whose rows are bit for bit those of
 * quantizeNvfp4(permute(x), { globalScale }) on either backend. Padding rows hold the
 * quantized zero row (codes 0, block scales e4m3(1.0) = 0x38); rows at or past usedRows are
 * not written.
 */
export function permute(x: Tensor, layout: ExpertLayout, options: PermuteNvfp4Options): Nvfp4Tensor;
export function permute<D extends DType>(x: Tensor<D>, layout: ExpertLayout, options?: PermuteOptions<D>): Tensor<D>;
export function permute<D extends DType>(x: Tensor<D>, layout: ExpertLayout, options?: PermuteOptions<D> | PermuteNvfp4Options): Tensor<D> | Nvfp4Tensor {
  if (options !== null && typeof options === 'object' && 'quantize' in options) return permuteNvfp4(x, layout, options as PermuteNvfp4Options);
  const o = checkOptions(options, 'options', PERMUTE_OPTIONS);
  const t = checkTensor<Tensor<D>>(x, 'x', FLOAT_DTYPES);
  const l = checkLayout(layout, t.device);
  checkRank(t, 'x', 2, '[tokens, hidden]');
  const hidden = t.shape[1];
  checkShapeIs(t, 'x', [l.tokens, hidden], ['tokens', 'hidden']);
  if (l.rows * hidden > MAX_ELEMENTS) throw new MoeError('E_SHAPE', `x: the permuted [${l.rows}, ${hidden}] has more than 2^31 - 1 elements`);
  const stream = resolveStream(o.stream, t.device, 'options.stream');
  const out = o.out === undefined
    ? empty<D>([l.rows, hidden], { dtype: t.dtype, device: t.device, stream })
    : checkOut<Tensor<D>>(o.out, 'options.out', t.dtype, [l.rows, hidden], t.device);
  refuseOverlap(out, 'options.out', [[t, 'x']]);
  useOn(stream, [t, l.sourceIndex, l.usedRows, out]);
  native().permute(
    t.deviceIndex, stream.handle, t.dataPtr, DTYPES[t.dtype].id, l.sourceIndex.dataPtr, l.usedRows.dataPtr, out.dataPtr,
    l.tokens, l.k, hidden, l.rows,
  );
  return out;
}

function permuteNvfp4(x: Tensor, layout: ExpertLayout, options: PermuteNvfp4Options): Nvfp4Tensor {
  const o = checkOptions(options, 'options', PERMUTE_NVFP4_OPTIONS);
  checkOneOf(o.quantize, 'options.quantize', ['nvfp4'] as const);
  const t = checkTensor<Tensor>(x, 'x', NVFP4_SOURCES);
  const l = checkLayout(layout, t.device);
  checkRank(t, 'x', 2, '[tokens, hidden]');
  const hidden = t.shape[1];
  checkShapeIs(t, 'x', [l.tokens, hidden], ['tokens', 'hidden']);
  if (hidden % NVFP4_BLOCK !== 0) throw new MoeError('E_SHAPE', `x: NVFP4 needs hidden a multiple of ${NVFP4_BLOCK}, got [${t.shape}]`);
  if (l.rows * hidden > MAX_ELEMENTS) throw new MoeError('E_SHAPE', `x: the permuted [${l.rows}, ${hidden}] has more than 2^31 - 1 elements`);
  checkAligned(t.address, t.numel, 'x', 16);
  const stream = resolveStream(o.stream, t.device, 'options.stream');
  const g = checkGlobalScaleOption(o.globalScale, 'options.globalScale', t.device, stream);
  const shape = [l.rows, hidden];
  const outGiven = o.out !== undefined;
  let q: Nvfp4Tensor;
  if (outGiven) {
    q = checkNvfp4<Nvfp4Tensor>(o.out, 'options.out', t.device);
    if (q.shape.length !== 2 || q.shape[0] !== l.rows || q.shape[1] !== hidden) {
      throw new MoeError('E_SHAPE', `options.out: expected an NVFP4 tensor of shape [layout.rows = ${l.rows}, hidden = ${hidden}], got [${q.shape}]`);
    }
    if (q.globalScale.numel !== 1) throw new MoeError('E_SHAPE', `options.out: expected one global scale, got [${q.globalScale.shape}]`);
    checkAligned(q.data.address, q.data.numel, 'options.out.data', 8);
    const parts = [q.data, q.scales, q.globalScale];
    if (parts.some((p) => overlaps(p, t) || (typeof g === 'object' && p !== q.globalScale && overlaps(p, g)))) {
      throw new MoeError('E_ARGUMENT', 'options.out: overlaps x or options.globalScale; pass a separate NVFP4 tensor');
    }
  } else {
    q = allocateNvfp4(shape, t.device, stream);
  }
  try {
    const gs = q.globalScale;
    const uses: Tensor[] = [t, l.sourceIndex, l.usedRows, q.data, q.scales, gs];
    if (typeof g === 'object') uses.push(g);
    useOn(stream, uses);
    const from = stageGlobalScale(g, gs, t, stream);
    native().permuteQuantize(
      t.deviceIndex, stream.handle, t.dataPtr, DTYPES[t.dtype].id, l.sourceIndex.dataPtr, l.usedRows.dataPtr, from.dataPtr,
      q.data.dataPtr, q.scales.dataPtr, from === gs ? 0n : gs.dataPtr, l.tokens, l.k, hidden, l.rows,
    );
  } catch (e) {
    if (!outGiven) q.dispose();
    throw e;
  }
  return q;
}

export interface UnpermuteOptions {
  /** [tokens, hidden], bf16 or f32. Default: a new tensor of y's dtype. */
  out?: Tensor<'bf16'> | Tensor<'f32'>;
  stream?: Stream;
}

/**
 * Scatters expert outputs y ([layout.rows, hidden], bf16 or f32) back to tokens:
 * out[t] = sum over slots s = 0..k-1, in that order, of weights[t, s] * y[rowIndex[t, s]], each
 * step an f32 fused multiply-add, rounded once to out's dtype. Dropped pairs add nothing.
 * Both backends compute the same bits.
 */
export function unpermute(y: Tensor, layout: ExpertLayout, weights: Tensor<'f32'>, options?: UnpermuteOptions): Tensor<'bf16' | 'f32'> {
  const o = checkOptions(options, 'options', PERMUTE_OPTIONS);
  const t = checkTensor<Tensor>(y, 'y', ['bf16', 'f32']);
  const l = checkLayout(layout, t.device);
  checkRank(t, 'y', 2, '[rows, hidden]');
  const hidden = t.shape[1];
  checkShapeIs(t, 'y', [l.rows, hidden], ['rows', 'hidden']);
  const w = checkTensor<Tensor<'f32'>>(weights, 'weights', ['f32'], t.device);
  checkShapeIs(w, 'weights', [l.tokens, l.k], ['tokens', 'k']);
  const stream = resolveStream(o.stream, t.device, 'options.stream');
  let out: Tensor<'bf16' | 'f32'>;
  if (o.out === undefined) {
    out = empty<'bf16' | 'f32'>([l.tokens, hidden], { dtype: t.dtype as 'bf16' | 'f32', device: t.device, stream });
  } else {
    out = checkTensor<Tensor<'bf16' | 'f32'>>(o.out, 'options.out', ['bf16', 'f32'], t.device);
    checkShapeIs(out, 'options.out', [l.tokens, hidden], ['tokens', 'hidden']);
  }
  refuseOverlap(out, 'options.out', [[t, 'y'], [w, 'weights']]);
  useOn(stream, [t, l.rowIndex, w, out]);
  native().unpermute(
    t.deviceIndex, stream.handle, t.dataPtr, DTYPES[t.dtype].id, l.rowIndex.dataPtr, w.dataPtr, out.dataPtr,
    DTYPES[out.dtype].id, l.tokens, l.k, hidden, l.rows,
  );
  return out;
}
