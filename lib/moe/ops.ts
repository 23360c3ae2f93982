// The moe family's kernels: the router GEMM, the SwiGLU of a dense gate/up projection, and the
// elementwise sum that joins the routed and shared experts.
import { DTYPES } from '../dtype';
import { MoeError } from '../errors';
import { native } from '../native';
import { resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, type Tensor } from '../tensor';
import { checkOptions, checkOut, checkRank, checkTensor, keys } from '../validate';

/** Most experts routerLogits takes (routeTopK routes at most this many). */
export const MAX_ROUTER_EXPERTS = 512;

const BF16 = ['bf16'] as const;
const BF16_F32 = ['bf16', 'f32'] as const;
const OUT_STREAM = keys('out', 'stream');

export interface RouterLogitsOptions {
  /** f32 [tokens, experts], written in place of a new tensor. */
  out?: Tensor<'f32'>;
  stream?: Stream;
}

/**
 * The DeepSeek-V3 gate: logits f32 [tokens, experts] = x . weight^T for x bf16 [tokens, hidden]
 * and weight bf16 [experts, hidden] (up to 512 experts), the products summed in f32.
 *
 * The CPU reference sums in double and rounds once; the CUDA kernels sum in f32 in their own
 * (fixed) order, so the two differ by at most a few parts in 10^5 of sum |x_i * w_i|.
 * CUDA: up to 128 tokens the weight is streamed once per 8 tokens on CUDA cores (decode);
 * beyond, bf16 tensor-core tiles (mma.sync) of 64 tokens x 32 experts.
 */
export function routerLogits(x: Tensor<'bf16'>, weight: Tensor<'bf16'>, options?: RouterLogitsOptions): Tensor<'f32'> {
  const o = checkOptions(options, 'options', OUT_STREAM);
  const xt = checkTensor<Tensor<'bf16'>>(x, 'x', BF16);
  checkRank(xt, 'x', 2, '[tokens, hidden]');
  const wt = checkTensor<Tensor<'bf16'>>(weight, 'weight', BF16, xt.device);
  checkRank(wt, 'weight', 2, '[experts, hidden]');
  const [tokens, hidden] = xt.shape;
  const [experts, wHidden] = wt.shape;
  if (wHidden !== hidden) throw new MoeError('E_SHAPE', `weight: expected [experts, hidden = ${hidden}] to match x, got [${wt.shape}]`);
  if (experts < 1 || experts > MAX_ROUTER_EXPERTS) {
    throw new MoeError('E_SHAPE', `weight: expected 1 to ${MAX_ROUTER_EXPERTS} experts, got [${wt.shape}]`);
  }
  if (hidden < 1) throw new MoeError('E_SHAPE', `x: expected a hidden size of at least 1, got [${xt.shape}]`);
  const stream = resolveStream(o.stream, xt.device, 'options.stream');
  const out = o.out === undefined
    ? empty([tokens, experts], { dtype: 'f32', device: xt.device, stream })
    : checkOut<Tensor<'f32'>>(o.out, 'options.out', 'f32', [tokens, experts], xt.device);
  if (tokens === 0) return out;
  if (overlaps(out, xt) || overlaps(out, wt)) throw new MoeError('E_ARGUMENT', 'options.out: overlaps x or weight; pass a separate tensor');
  useOn(stream, [xt, wt, out]);
  native().routerLogits(xt.deviceIndex, stream.handle, xt.dataPtr, wt.dataPtr, out.dataPtr, tokens, experts, hidden);
  return out;
}

export interface SwigluOptions<D extends 'bf16' | 'f32' = 'bf16' | 'f32'> {
  /** [..., I], bf16 or f32 (default: a new tensor of x's dtype). */
  out?: Tensor<D>;
  stream?: Stream;
}

/**
 * SwiGLU of a gate/up projection x [..., 2I] (bf16 or f32): out[..., i] = silu(x[..., i]) *
 * x[..., I + i], i.e. the gate is the first half of the last dimension. Computed in f32 as
 * (g * sigmoid(g)) * u, each step rounded once, with an exp built from f32 operations, so both
 * backends give the same bits; rounded once to out's dtype.
 */
export function swiglu<D extends 'bf16' | 'f32' = 'bf16' | 'f32'>(x: Tensor<D>, options?: SwigluOptions<D>): Tensor<D> {
  const o = checkOptions(options, 'options', OUT_STREAM);
  const xt = checkTensor<Tensor<D>>(x, 'x', BF16_F32);
  const n = xt.shape.length;
  if (n < 1 || xt.shape[n - 1] % 2 !== 0) throw new MoeError('E_SHAPE', `x: expected [..., 2I] with an even last dimension, got [${xt.shape}]`);
  const inner = xt.shape[n - 1] / 2;
  const outShape = [...xt.shape.slice(0, -1), inner];
  const stream = resolveStream(o.stream, xt.device, 'options.stream');
  let out: Tensor<D>;
  if (o.out === undefined) {
    out = empty<D>(outShape, { dtype: xt.dtype, device: xt.device, stream });
  } else {
    out = checkTensor<Tensor<D>>(o.out, 'options.out', BF16_F32, xt.device);
    checkOut(out, 'options.out', out.dtype, outShape, xt.device);
  }
  const rows = inner === 0 ? 0 : xt.numel / (2 * inner);
  if (rows * inner === 0) return out;
  if (overlaps(out, xt)) throw new MoeError('E_ARGUMENT', 'options.out: overlaps x; pass a separate tensor');
  useOn(stream, [xt, out]);
  native().moeSwiglu(xt.deviceIndex, stream.handle, xt.dataPtr, DTYPES[xt.dtype].id, out.dataPtr, DTYPES[out.dtype].id, rows, inner);
  return out;
}

/**
 * @internal out = a + b elementwise (bf16 or f32 each), in f32, rounded once to out's dtype.
 * The caller has checked that the three have the same number of elements and one device.
 */
export function addInto(a: Tensor, b: Tensor, out: Tensor, stream: Stream): void {
  if (out.numel === 0) return;
  useOn(stream, [a, b, out]);
  native().moeAdd(
    out.deviceIndex, stream.handle, a.dataPtr, DTYPES[a.dtype].id, b.dataPtr, DTYPES[b.dtype].id, out.dataPtr, DTYPES[out.dtype].id, out.numel,
  );
}
