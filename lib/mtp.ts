import { DTYPES, type DType } from './dtype';
import { MoeError } from './errors';
import { native, opArgs } from './native';
import { isCapturing, resolveStream, type Stream } from './stream';
import { empty, fromArray, overlaps, useOn, type Tensor } from './tensor';
import {
  checkBoolean,
  checkInteger,
  checkNumber,
  checkOneOf,
  checkOptions,
  checkOut,
  checkRequiredOptions,
  checkShapeIs,
  checkTensor,
  checkUint64,
  keys,
  type Device,
} from './validate';

/**
 * How a request verifies its drafts:
 * - `greedy`: accept the longest prefix equal to the target's argmax, then emit the argmax.
 * - `rejection`: speculative sampling (accept with probability min(1, p/q), resample the
 *   residual max(0, p - q)); emitted tokens follow the target distribution exactly.
 * - `relaxed`: greedy, but inside the thinking phase a draft is also accepted when fewer than
 *   `relaxedTopK` tokens have a larger logit and its probability is within `relaxedDelta` of the
 *   top token's (DeepSeek-R1 style relaxed acceptance).
 */
export type VerifyMode = 'greedy' | 'rejection' | 'relaxed';

/** The kernel's id of each mode, for a per-request i32 `mode` tensor. */
export const VERIFY_MODES: Readonly<Record<VerifyMode, number>> = Object.freeze({ greedy: 0, rejection: 1, relaxed: 2 });

/**
 * A per-request parameter: a tensor of shape [B] on the op's device (capturable in a CUDA
 * graph), or a plain value for every request, or a JS array of B values. Plain values are
 * uploaded on each call, so they cannot be used while the stream is captured (E_CAPTURE).
 */
export type PerRequest<T, D extends DType> = T | readonly T[] | Tensor<D>;

/** Per-request verification parameters; each absent one takes its default for every request. */
export interface VerifyDraftsParams {
  /**
   * Default 'greedy'. A tensor holds VERIFY_MODES ids (any other id verifies greedily). Plain
   * values that are all 'greedy' mean the default: nothing is uploaded, even under capture.
   */
  mode?: VerifyMode | readonly VerifyMode[] | Tensor<'i32'>;
  /** Rejection only. Default 1; 0 makes that request greedy. */
  temperature?: PerRequest<number, 'f32'>;
  /** Rejection only: keep the k largest logits (ties at the k-th all kept). Default 0 = off. */
  topK?: PerRequest<number, 'i32'>;
  /** Rejection only: keep the smallest top set with mass >= topP (after top-k). Default 1 = off. */
  topP?: PerRequest<number, 'f32'>;
  /** Philox key of each request. Default 0. Tensors are i64, read as unsigned 64-bit. */
  seed?: PerRequest<number | bigint, 'i64'>;
  /** Philox counter base: advance it by 1 per call for fresh draws. Default 0. */
  offset?: PerRequest<number | bigint, 'i64'>;
  /** Relaxed only. Default 1 (accept only the argmax). */
  relaxedTopK?: PerRequest<number, 'i32'>;
  /** Relaxed only. Default 0. */
  relaxedDelta?: PerRequest<number, 'f32'>;
  /** Token that switches the thinking phase on; default -1 (none). */
  thinkBeginId?: PerRequest<number, 'i32'>;
  /** Token that switches the thinking phase off; default -1 (none). */
  thinkEndId?: PerRequest<number, 'i32'>;
  /** Thinking state at the first draft (nonzero = in the phase). Default true. */
  inThinking?: PerRequest<number | boolean, 'i32'>;
}

/** Outputs of verifyDrafts. */
export interface VerifyDraftsResult {
  /** i32 [B, n+1]: accepted drafts, then the emitted token, then -1. */
  tokens: Tensor<'i32'>;
  /** i32 [B]: accepted drafts + 1, the number of tokens written to `tokens`. */
  numAccepted: Tensor<'i32'>;
  /** i32 [B]: thinking state after the emitted tokens (pass it as the next call's `inThinking`). */
  inThinking: Tensor<'i32'>;
  /** u8 [B, n]: 1 where the draft was accepted; present when asked for. */
  acceptMask?: Tensor<'u8'>;
}

export interface VerifyDraftsOptions {
  /** [B, n+1, V], f32, f16 or bf16: row i scores position i, the last needed row the bonus token. */
  targetLogits: Tensor;
  /** i32 [B, n]: the proposed tokens; an id outside [0, V) is always rejected. */
  draftTokens: Tensor<'i32'>;
  /**
   * Drafts to verify per request (default n). JS values must lie in [0, n]; values in a tensor
   * (which stay on the device) are clamped to [0, n].
   */
  draftLengths?: number | readonly number[] | Tensor<'i32'>;
  /** [B, n, V] f32/f16/bf16: the draft model's probabilities, used as given (rejection only). */
  draftProbs?: Tensor;
  /** [B, n, V] f32/f16/bf16: the draft model's logits, filtered like the target (rejection only). */
  draftLogits?: Tensor;
  params?: VerifyDraftsParams;
  /** Also return the per-position accept mask (default false; implied by out.acceptMask). */
  acceptMask?: boolean;
  /** Preallocated outputs (all of them under a CUDA graph); missing ones are allocated. */
  out?: Partial<VerifyDraftsResult>;
  stream?: Stream;
}

const LOGIT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
const I32: readonly DType[] = ['i32'];
// draftKind of the native op (common/mtp.h)
const DRAFT_NONE = 0;
const DRAFT_PROBS = 1;
const DRAFT_LOGITS = 2;
const I32_MAX = 2 ** 31 - 1;
// dimension names for shape messages: B, n, V of targetLogits [B, n+1, V]
const BATCH = ['B'];
const DRAFT_DIMS = ['B', 'n'];
const DRAFT_DATA_DIMS = ['B', 'n', 'V'];
const MODE_NAMES = Object.keys(VERIFY_MODES) as VerifyMode[];

const OPTIONS = keys('targetLogits', 'draftTokens', 'draftLengths', 'draftProbs', 'draftLogits', 'params', 'acceptMask', 'out', 'stream');
const OUT_KEYS = keys('tokens', 'numAccepted', 'inThinking', 'acceptMask');

interface ParamSpec {
  key: keyof VerifyDraftsParams;
  /** Spelled out once, so that the per-call path builds no strings. */
  argument: string;
  dtype: 'i32' | 'f32' | 'i64';
  dtypes: readonly DType[];
  /** Turns one plain value into what the tensor stores, or throws naming `argument`. */
  encode(value: unknown, argument: string): number | bigint;
}

function param(key: keyof VerifyDraftsParams, dtype: 'i32' | 'f32' | 'i64', encode: ParamSpec['encode']): ParamSpec {
  return { key, argument: `params.${key}`, dtype, dtypes: [dtype], encode };
}

const int32In = (lo: number) => (v: unknown, argument: string) => checkInteger(v, argument, lo, I32_MAX);
// i64 tensors hold the unsigned 64-bit values the kernels read, in two's complement
const uint64 = (v: unknown, argument: string) => BigInt.asIntN(64, checkUint64(v, argument));

// In the order of VerifyDraftsArgs. The kernels' defaults are what an absent parameter means;
// these only check plain values.
const PARAMS: readonly ParamSpec[] = [
  param('mode', 'i32', (v, argument) => VERIFY_MODES[checkOneOf(v, argument, MODE_NAMES)]),
  // the kernels divide by it in f32: its reciprocal must stay finite
  param('temperature', 'f32', (v, argument) =>
    checkNumber(v, argument, (t) => t === 0 || (t > 0 && Number.isFinite(Math.fround(1 / Math.fround(t)))), 'a finite number >= 0 (0 = greedy) with a finite f32 reciprocal'),
  ),
  param('topK', 'i32', int32In(0)),
  param('topP', 'f32', (v, argument) => checkNumber(v, argument, (p) => p > 0 && p <= 1, 'a number in (0, 1] (1 = off)')),
  param('seed', 'i64', uint64),
  param('offset', 'i64', uint64),
  param('relaxedTopK', 'i32', int32In(0)),
  param('relaxedDelta', 'f32', (v, argument) => checkNumber(v, argument, (d) => d >= 0 && d <= 1, 'a number in [0, 1]')),
  param('thinkBeginId', 'i32', int32In(-1)),
  param('thinkEndId', 'i32', int32In(-1)),
  param('inThinking', 'i32', (v, argument) => (typeof v === 'boolean' ? (v ? 1 : 0) : checkInteger(v, argument, 0, 1))),
];
const PARAM_KEYS = keys(...PARAMS.map((p) => p.key));

/** A per-request tensor argument: one value per request, on the op's device. */
function perRequestTensor(value: unknown, argument: string, dtypes: readonly DType[], batch: number, device: Device): Tensor {
  const t = checkTensor<Tensor>(value, argument, dtypes, device);
  checkShapeIs(t, argument, [batch], BATCH);
  return t;
}

/** Plain per-request values (one for all, or an array of B), checked and uploaded for this call. */
function uploadPerRequest(
  value: unknown,
  argument: string,
  dtype: 'i32' | 'f32' | 'i64',
  encode: (v: unknown, argument: string) => number | bigint,
  batch: number,
  device: Device,
  stream: Stream,
): Tensor {
  let encoded: (number | bigint)[];
  if (Array.isArray(value)) {
    if (value.length !== batch) {
      throw new MoeError('E_SHAPE', `${argument}: expected ${batch} values (one per request), got ${value.length}`);
    }
    encoded = value.map((v, i) => encode(v, `${argument}[${i}]`));
  } else {
    encoded = new Array(batch).fill(encode(value, argument));
  }
  if (isCapturing(stream)) {
    throw new MoeError(
      'E_CAPTURE',
      `${argument}: a plain value is uploaded on each call and cannot be captured in a graph; pass a ${dtype} tensor of shape [${batch}]`,
    );
  }
  const data =
    dtype === 'i64'
      ? BigInt64Array.from(encoded as bigint[])
      : dtype === 'i32'
        ? Int32Array.from(encoded as number[])
        : Float32Array.from(encoded as number[]);
  return fromArray(data, { dtype, device, stream, shape: [batch] });
}

/** Plain modes that make every request greedy: 'greedy', or B of them. */
function allGreedy(mode: unknown, batch: number): boolean {
  return mode === 'greedy' || (Array.isArray(mode) && mode.length === batch && mode.every((m) => m === 'greedy'));
}

/** A tensor given where plain values are also accepted: any object that is not an array. */
function isObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * A given output, checked against the tensors the op already uses and added to them: the
 * kernels read inputs while writing outputs, from many CTAs, so no output may share bytes with
 * an input or another output.
 */
function claimOutput(t: Tensor, name: string, used: Tensor[], o: VerifyDraftsOptions): void {
  for (let k = 0; k < used.length; k++) {
    if (overlaps(t, used[k])) throw new MoeError('E_ARGUMENT', `${name}: overlaps ${usedNames(o)[k]}; outputs need memory of their own`);
  }
  used.push(t);
}

/** The names of what verifyDrafts puts in `used`, in its order; built only for a message. */
function usedNames(o: VerifyDraftsOptions): string[] {
  const names = ['targetLogits', 'draftTokens'];
  if (o.draftProbs !== undefined) names.push('draftProbs');
  else if (o.draftLogits !== undefined) names.push('draftLogits');
  if (o.draftLengths !== undefined) names.push('draftLengths');
  for (const spec of PARAMS) if (o.params?.[spec.key] !== undefined) names.push(spec.argument);
  for (const key of ['tokens', 'numAccepted', 'inThinking', 'acceptMask'] as const) if (o.out?.[key] !== undefined) names.push(`out.${key}`);
  return names;
}

/** A missing output, allocated on `stream` and added to `used`. */
function allocate<D extends DType>(shape: number[], dtype: D, device: Device, stream: Stream, used: Tensor[]): Tensor<D> {
  const t = empty(shape, { dtype, device, stream });
  used.push(t);
  return t;
}

/** The address the native op reads; 0 (null) for an absent tensor. */
function ptr(t: Tensor | undefined): number {
  return t === undefined ? 0 : t.address;
}

/**
 * Verifies multi-token-prediction drafts against the target model's logits, for speculative
 * decoding: per request, accepts a prefix of its drafts and emits one more token (the first
 * correction, or a bonus token after a full accept). Modes mix freely within a batch. One
 * launch sequence whose shape depends only on (B, n, V): with tensor parameters and `out`, a
 * decode step can be captured in a CUDA graph.
 *
 * Randomness is Philox4x32-10 keyed by each request's `seed` and `offset`; the same inputs, seed
 * and offset give the same tokens, and the CPU backend draws the same numbers as CUDA.
 *
 * ```ts
 * const { tokens, numAccepted } = verifyDrafts({
 *   targetLogits,                    // bf16 [B, n+1, V]
 *   draftTokens,                     // i32 [B, n]
 *   draftProbs,                      // optional f32 [B, n, V]
 *   params: { mode: 'rejection', temperature: 0.7, topP: 0.95, seed: seeds, offset: step },
 * });
 * ```
 */
export function verifyDrafts(options: VerifyDraftsOptions): VerifyDraftsResult {
  checkRequiredOptions(options, 'options', OPTIONS);
  const o = options;
  const target = checkTensor<Tensor>(o.targetLogits, 'targetLogits', LOGIT_DTYPES);
  const shape = target.shape;
  if (shape.length !== 3 || shape[1] < 1 || shape[2] < 1) {
    throw new MoeError('E_SHAPE', `targetLogits: expected shape [B, n+1, V] with n+1 >= 1 and V >= 1, got [${shape}]`);
  }
  const device = target.device;
  const batch = shape[0], n = shape[1] - 1, vocab = shape[2];
  const drafts = checkTensor<Tensor<'i32'>>(o.draftTokens, 'draftTokens', I32, device);
  checkShapeIs(drafts, 'draftTokens', [batch, n], DRAFT_DIMS);
  if (o.draftProbs !== undefined && o.draftLogits !== undefined) {
    throw new MoeError('E_ARGUMENT', 'draftProbs, draftLogits: expected at most one of them, got both');
  }
  let draftKind = DRAFT_NONE;
  let draft: Tensor | undefined;
  if (o.draftProbs !== undefined) {
    draft = checkTensor<Tensor>(o.draftProbs, 'draftProbs', LOGIT_DTYPES, device);
    checkShapeIs(draft, 'draftProbs', [batch, n, vocab], DRAFT_DATA_DIMS);
    draftKind = DRAFT_PROBS;
  } else if (o.draftLogits !== undefined) {
    draft = checkTensor<Tensor>(o.draftLogits, 'draftLogits', LOGIT_DTYPES, device);
    checkShapeIs(draft, 'draftLogits', [batch, n, vocab], DRAFT_DATA_DIMS);
    draftKind = DRAFT_LOGITS;
  }
  const params = checkOptions(o.params, 'params', PARAM_KEYS) as VerifyDraftsParams;
  const out = checkOptions(o.out, 'out', OUT_KEYS) as Partial<VerifyDraftsResult>;
  const outTokens = out.tokens === undefined ? undefined : checkOut<Tensor<'i32'>>(out.tokens, 'out.tokens', 'i32', [batch, n + 1], device);
  const outNum = out.numAccepted === undefined ? undefined : checkOut<Tensor<'i32'>>(out.numAccepted, 'out.numAccepted', 'i32', [batch], device);
  const outThinking = out.inThinking === undefined ? undefined : checkOut<Tensor<'i32'>>(out.inThinking, 'out.inThinking', 'i32', [batch], device);
  const outMask = out.acceptMask === undefined ? undefined : checkOut<Tensor<'u8'>>(out.acceptMask, 'out.acceptMask', 'u8', [batch, n], device);
  const wantMask = outMask !== undefined || (o.acceptMask !== undefined && checkBoolean(o.acceptMask, 'acceptMask'));
  const stream = resolveStream(o.stream, device);

  // Inputs the op reads (in the order usedNames gives): checked against the outputs, then
  // marked used on the stream.
  const used: Tensor[] = [target, drafts];
  if (draft) used.push(draft);
  // Plain values are uploaded, and missing outputs allocated, only once every argument above
  // has passed; what this call made is released below.
  let uploaded: Tensor[] | undefined;
  let allocatedFrom = Infinity; // used[allocatedFrom..] were allocated here; kept once launched
  try {
    let lengths: Tensor | undefined;
    if (o.draftLengths !== undefined) {
      if (isObject(o.draftLengths)) {
        lengths = perRequestTensor(o.draftLengths, 'draftLengths', I32, batch, device);
      } else {
        lengths = uploadPerRequest(o.draftLengths, 'draftLengths', 'i32', (v, a) => checkInteger(v, a, 0, n), batch, device, stream);
        (uploaded ??= []).push(lengths);
      }
      used.push(lengths);
    }
    // The values in PARAMS order, each read by name (one load site per name stays fast where a
    // loop over names would not), then replaced by the pointers the native op reads.
    const p: unknown[] = [
      params.mode, params.temperature, params.topK, params.topP, params.seed, params.offset,
      params.relaxedTopK, params.relaxedDelta, params.thinkBeginId, params.thinkEndId, params.inThinking,
    ];
    if (allGreedy(p[0], batch)) p[0] = undefined; // the native op's default
    for (let i = 0; i < PARAMS.length; i++) {
      const v = p[i];
      if (v === undefined) {
        p[i] = 0;
        continue;
      }
      const spec = PARAMS[i];
      let t: Tensor;
      if (isObject(v)) {
        t = perRequestTensor(v, spec.argument, spec.dtypes, batch, device);
      } else {
        t = uploadPerRequest(v, spec.argument, spec.dtype, spec.encode, batch, device, stream);
        (uploaded ??= []).push(t);
      }
      p[i] = t.address;
      used.push(t);
    }

    // Outputs allocated here share memory with nothing.
    if (outTokens) claimOutput(outTokens, 'out.tokens', used, o);
    if (outNum) claimOutput(outNum, 'out.numAccepted', used, o);
    if (outThinking) claimOutput(outThinking, 'out.inThinking', used, o);
    if (outMask) claimOutput(outMask, 'out.acceptMask', used, o);

    allocatedFrom = used.length;
    const result: VerifyDraftsResult = {
      tokens: outTokens ?? allocate([batch, n + 1], 'i32', device, stream, used),
      numAccepted: outNum ?? allocate([batch], 'i32', device, stream, used),
      inThinking: outThinking ?? allocate([batch], 'i32', device, stream, used),
    };
    if (wantMask) result.acceptMask = outMask ?? allocate([batch, n], 'u8', device, stream, used);
    useOn(stream, used);

    const b = native();
    const A = opArgs();
    A[0] = target.deviceIndex;
    A[1] = stream.address;
    A[2] = target.address;
    A[3] = DTYPES[target.dtype].id;
    A[4] = ptr(drafts);
    A[5] = ptr(lengths);
    A[6] = ptr(draft);
    A[7] = DTYPES[(draft ?? target).dtype].id;
    A[8] = draftKind;
    for (let i = 0; i < 11; i++) A[9 + i] = p[i] as number;
    A[20] = ptr(result.tokens);
    A[21] = ptr(result.numAccepted);
    A[22] = ptr(result.acceptMask);
    A[23] = ptr(result.inThinking);
    A[24] = batch;
    A[25] = n;
    A[26] = vocab;
    b.verifyDrafts();
    allocatedFrom = used.length;
    return result;
  } finally {
    if (uploaded) for (const t of uploaded) t.dispose();
    for (let k = allocatedFrom; k < used.length; k++) used[k].dispose();
  }
}
