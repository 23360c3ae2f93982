import { deviceIndex, type Device } from './device';
import { DTYPES, type DType } from './dtype';
import { MoeError, describe } from './errors';
import { native } from './native';
import { isCapturing, resolveStream, type Stream } from './stream';
import { empty, fromArray, overlaps, useOn, Tensor } from './tensor';
import { checkOut, checkTensor } from './validate';


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
  /** Default 'greedy'. A tensor holds VERIFY_MODES ids (any other id verifies greedily). */
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
const DRAFT_NONE = 0;
const DRAFT_PROBS = 1;
const DRAFT_LOGITS = 2;
const I32_MAX = 2 ** 31 - 1;
const U64_LIMIT = 1n << 64n;

interface ParamSpec {
  name: keyof VerifyDraftsParams;
  dtype: 'i32' | 'f32' | 'i64';
  /** Turns one plain value into what the tensor stores, or throws naming `argument`. */
  encode(value: unknown, argument: string): number | bigint;
}

function fail(argument: string, expected: string, value: unknown): never {
  throw new MoeError('E_ARGUMENT', `${argument}: expected ${expected}, got ${describe(value)}`);
}

function integerIn(lo: number, hi: number, what: string) {
  return (v: unknown, argument: string): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) fail(argument, what, v);
    return v;
  };
}

function floatWhere(ok: (v: number) => boolean, what: string) {
  return (v: unknown, argument: string): number => {
    if (typeof v !== 'number' || !ok(v)) fail(argument, what, v);
    return v;
  };
}

function uint64(v: unknown, argument: string): bigint {
  const big = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isSafeInteger(v) ? BigInt(v) : undefined;
  if (big === undefined || big < 0n || big >= U64_LIMIT) fail(argument, 'an integer in [0, 2^64): a bigint, or a number up to 2^53 - 1', v);
  return BigInt.asIntN(64, big);
}

// The kernel's defaults are what an absent parameter means; these only check plain values.
const PARAMS: readonly ParamSpec[] = [
  {
    name: 'mode',
    dtype: 'i32',
    encode: (v, argument) => {
      if (typeof v !== 'string' || !Object.prototype.hasOwnProperty.call(VERIFY_MODES, v)) {
        fail(argument, `one of ${Object.keys(VERIFY_MODES).map((m) => `"${m}"`).join(', ')}`, v);
      }
      return VERIFY_MODES[v as VerifyMode];
    },
  },
  {
    name: 'temperature',
    dtype: 'f32',
    // the kernels divide by it in f32: its reciprocal must stay finite
    encode: floatWhere((v) => v === 0 || (v > 0 && Number.isFinite(Math.fround(1 / Math.fround(v)))), 'a finite number >= 0 (0 = greedy) with a finite f32 reciprocal'),
  },
  { name: 'topK', dtype: 'i32', encode: integerIn(0, I32_MAX, 'an integer >= 0 (0 = off)') },
  { name: 'topP', dtype: 'f32', encode: floatWhere((v) => v > 0 && v <= 1, 'a number in (0, 1] (1 = off)') },
  { name: 'seed', dtype: 'i64', encode: uint64 },
  { name: 'offset', dtype: 'i64', encode: uint64 },
  { name: 'relaxedTopK', dtype: 'i32', encode: integerIn(0, I32_MAX, 'an integer >= 0') },
  { name: 'relaxedDelta', dtype: 'f32', encode: floatWhere((v) => v >= 0 && v <= 1, 'a number in [0, 1]') },
  { name: 'thinkBeginId', dtype: 'i32', encode: integerIn(-1, I32_MAX, 'a token id or -1 (none)') },
  { name: 'thinkEndId', dtype: 'i32', encode: integerIn(-1, I32_MAX, 'a token id or -1 (none)') },
  {
    name: 'inThinking',
    dtype: 'i32',
    encode: (v, argument) => {
      if (typeof v === 'boolean') return v ? 1 : 0;
      if (v === 0 || v === 1) return v;
      return fail(argument, 'a boolean, 0 or 1', v);
    },
  },
];

/** A per-request array: the given tensor, or plain values uploaded for this call (`owned`). */
interface Resolved {
  tensor: Tensor | undefined;
  owned: boolean;
}

function resolvePerRequest(
  value: unknown,
  argument: string,
  dtype: 'i32' | 'f32' | 'i64',
  encode: (v: unknown, argument: string) => number | bigint,
  batch: number,
  device: Device,
  stream: Stream,
): Resolved {
  if (value === undefined) return { tensor: undefined, owned: false };
  if (value instanceof Tensor) {
    const t = checkTensor<Tensor>(value, argument, [dtype], device);
    if (t.ndim !== 1 || t.shape[0] !== batch) {
      throw new MoeError('E_SHAPE', `${argument}: expected shape [${batch}] (one value per request), got [${t.shape}]`);
    }
    return { tensor: t, owned: false };
  }
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
  return { tensor: fromArray(data, { dtype, device, stream, shape: [batch] }), owned: true };
}

function checkLogits(value: unknown, argument: string, shape: readonly number[], device: Device): Tensor {
  const t = checkTensor<Tensor>(value, argument, LOGIT_DTYPES, device);
  if (t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new MoeError('E_SHAPE', `${argument}: expected shape [${shape}] (B, n, V of targetLogits), got [${t.shape}]`);
  }
  return t;
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
  if (typeof options !== 'object' || options === null) {
    throw new MoeError('E_ARGUMENT', `options: expected an object with targetLogits and draftTokens, got ${describe(options)}`);
  }
  const target = checkTensor<Tensor>(options.targetLogits, 'targetLogits', LOGIT_DTYPES);
  if (target.ndim !== 3 || target.shape[1] < 1 || target.shape[2] < 1) {
    throw new MoeError('E_SHAPE', `targetLogits: expected shape [B, n+1, V] with n+1 >= 1 and V >= 1, got [${target.shape}]`);
  }
  const device = target.device;
  const [batch, rows, vocab] = target.shape;
  const n = rows - 1;
  const drafts = checkTensor<Tensor<'i32'>>(options.draftTokens, 'draftTokens', ['i32'], device);
  if (drafts.ndim !== 2 || drafts.shape[0] !== batch || drafts.shape[1] !== n) {
    throw new MoeError('E_SHAPE', `draftTokens: expected shape [${batch}, ${n}] (B, n of targetLogits [B, n+1, V]), got [${drafts.shape}]`);
  }
  if (options.draftProbs !== undefined && options.draftLogits !== undefined) {
    throw new MoeError('E_ARGUMENT', 'draftProbs, draftLogits: expected at most one of them, got both');
  }
  let draftKind = DRAFT_NONE;
  let draft: Tensor | undefined;
  if (options.draftProbs !== undefined) {
    draft = checkLogits(options.draftProbs, 'draftProbs', [batch, n, vocab], device);
    draftKind = DRAFT_PROBS;
  } else if (options.draftLogits !== undefined) {
    draft = checkLogits(options.draftLogits, 'draftLogits', [batch, n, vocab], device);
    draftKind = DRAFT_LOGITS;
  }
  const params = options.params ?? {};
  if (typeof params !== 'object' || params === null) {
    throw new MoeError('E_ARGUMENT', `params: expected an object, got ${describe(params)}`);
  }
  for (const key of Object.keys(params)) {
    if (!PARAMS.some((p) => p.name === key)) {
      throw new MoeError('E_ARGUMENT', `params.${key}: unknown parameter (expected one of ${PARAMS.map((p) => p.name).join(', ')})`);
    }
  }
  const stream = resolveStream(options.stream, device);

  const out = options.out ?? {};
  if (typeof out !== 'object' || out === null) throw new MoeError('E_ARGUMENT', `out: expected an object, got ${describe(out)}`);
  const given = {
    tokens: out.tokens === undefined ? undefined : checkOut<Tensor<'i32'>>(out.tokens, 'out.tokens', 'i32', [batch, n + 1], device),
    numAccepted: out.numAccepted === undefined ? undefined : checkOut<Tensor<'i32'>>(out.numAccepted, 'out.numAccepted', 'i32', [batch], device),
    inThinking: out.inThinking === undefined ? undefined : checkOut<Tensor<'i32'>>(out.inThinking, 'out.inThinking', 'i32', [batch], device),
    acceptMask: out.acceptMask === undefined ? undefined : checkOut<Tensor<'u8'>>(out.acceptMask, 'out.acceptMask', 'u8', [batch, n], device),
  };
  if (options.acceptMask !== undefined && typeof options.acceptMask !== 'boolean') {
    throw new MoeError('E_ARGUMENT', `acceptMask: expected a boolean, got ${describe(options.acceptMask)}`);
  }

  // Everything that allocates or uploads comes after the checks above, and is released below.
  const uploaded: Tensor[] = [];
  const allocated: Tensor[] = [];
  try {
    let lengths: Tensor | undefined;
    if (options.draftLengths !== undefined) {
      const r = resolvePerRequest(options.draftLengths, 'draftLengths', 'i32', integerIn(0, n, `an integer in [0, ${n}] (n)`), batch, device, stream);
      lengths = r.tensor;
      if (r.owned) uploaded.push(r.tensor!);
    }
    const resolved = new Map<string, Tensor | undefined>();
    for (const spec of PARAMS) {
      const r = resolvePerRequest(params[spec.name], `params.${spec.name}`, spec.dtype, spec.encode, batch, device, stream);
      resolved.set(spec.name, r.tensor);
      if (r.owned) uploaded.push(r.tensor!);
    }

    const inputs: [string, Tensor][] = [
      ['targetLogits', target],
      ['draftTokens', drafts],
      ...(draft ? [[draftKind === DRAFT_PROBS ? 'draftProbs' : 'draftLogits', draft] as [string, Tensor]] : []),
      ...(lengths ? [['draftLengths', lengths] as [string, Tensor]] : []),
      ...[...resolved].filter((e): e is [string, Tensor] => e[1] !== undefined).map(([k, t]) => [`params.${k}`, t] as [string, Tensor]),
    ];
    const outputs: [string, Tensor][] = [];
    for (const [name, t] of Object.entries(given)) if (t) outputs.push([`out.${name}`, t]);
    // The kernels read inputs while writing outputs, from many CTAs: no output may share bytes
    // with an input or another output.
    for (let i = 0; i < outputs.length; i++) {
      for (const [other, t] of [...inputs, ...outputs.slice(0, i)]) {
        if (overlaps(outputs[i][1], t)) {
          throw new MoeError('E_ARGUMENT', `${outputs[i][0]}: overlaps ${other}; outputs need memory of their own`);
        }
      }
    }

    const alloc = <D extends DType>(shape: number[], dtype: D): Tensor<D> => {
      const t = empty(shape, { dtype, device, stream });
      allocated.push(t);
      return t;
    };
    const result: VerifyDraftsResult = {
      tokens: given.tokens ?? alloc([batch, n + 1], 'i32'),
      numAccepted: given.numAccepted ?? alloc([batch], 'i32'),
      inThinking: given.inThinking ?? alloc([batch], 'i32'),
    };
    if (given.acceptMask || options.acceptMask) result.acceptMask = given.acceptMask ?? alloc([batch, n], 'u8');

    const used = [...inputs.map((e) => e[1]), result.tokens, result.numAccepted, result.inThinking];
    if (result.acceptMask) used.push(result.acceptMask);
    useOn(stream, used);

    const p = (t: Tensor | undefined): bigint => (t === undefined || t.numel === 0 ? 0n : t.dataPtr);
    const param = (name: keyof VerifyDraftsParams): bigint => p(resolved.get(name));
    // The kernels' scratch comes from the stream's workspace arena, inside the native op.
    native().verifyDrafts(
      deviceIndex(device),
      stream.handle,
      target.dataPtr,
      DTYPES[target.dtype].id,
      p(drafts),
      p(lengths),
      p(draft),
      draft ? DTYPES[draft.dtype].id : DTYPES[target.dtype].id,
      draftKind,
      param('mode'),
      param('temperature'),
      param('topK'),
      param('topP'),
      param('seed'),
      param('offset'),
      param('relaxedTopK'),
      param('relaxedDelta'),
      param('thinkBeginId'),
      param('thinkEndId'),
      param('inThinking'),
      p(result.tokens),
      p(result.numAccepted),
      p(result.acceptMask),
      p(result.inThinking),
      batch,
      n,
      vocab,
    );
    allocated.length = 0;
    return result;
  } finally {
    for (const t of uploaded) t.dispose();
    for (const t of allocated) t.dispose();
  }
}
