// The NVFP4 block-scaled GEMM. Its per-call path is kept lean (one native call when `out` is
// given): checks read each value once, and nothing is allocated that the call can do without.
import { DTYPES } from '../dtype';
import { MoeError, describe } from '../errors';
import { native, opArgs } from '../native';
import { resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, type Tensor } from '../tensor';
import {
  checkAligned,
  checkFinite,
  checkNvfp4,
  checkOneOf,
  checkOptions,
  checkOutLastDim,
  checkTensor,
  isNvfp4Tensor,
  isTensor,
  keys,
} from '../validate';
import { NVFP4_BLOCK, type Nvfp4Tensor } from './tensor';

/** Output dtypes of gemmNvfp4. */
export type GemmNvfp4OutDType = 'bf16' | 'f32';
const GEMM_OUT_DTYPES: readonly GemmNvfp4OutDType[] = ['bf16', 'f32'];
const GEMM_PATHS = ['auto', 'portable'] as const;
const BF16_ONLY = ['bf16'] as const;
const BIAS_DTYPES = ['bf16', 'f32'] as const;
const OUT_DTYPE_LISTS = { bf16: ['bf16'], f32: ['f32'] } as const;
const GEMM_OPTIONS = keys('out', 'outDtype', 'alpha', 'bias', 'stream', 'path');

// dtype ids, read once
const ID_BF16 = DTYPES.bf16.id;
const ID_F32 = DTYPES.f32.id;
const ID_U8 = DTYPES.u8.id;

export interface GemmNvfp4Options<D extends GemmNvfp4OutDType = GemmNvfp4OutDType> {
  /** Written in place of a new tensor: [..., N] of dtype `outDtype` on the operands' device. */
  out?: Tensor<D>;
  /** bf16 (default; or out's dtype when out is given) or f32. */
  outDtype?: D;
  /** Multiplies the product before the bias is added. Default 1. */
  alpha?: number;
  /** [N], bf16 or f32, added to every row. */
  bias?: Tensor<'bf16' | 'f32'>;
  stream?: Stream;
  /**
   * 'auto' (default) lets the library pick the kernel for the device; 'portable' forces the
   * sm_80-compatible kernel. The environment variable MOE_KERNELS_GEMM_PATH=portable (read once
   * per process) forces it for every call.
   */
  path?: 'auto' | 'portable';
}

// MOE_KERNELS_GEMM_PATH is read once, like MOE_KERNELS_BACKEND: a process-wide setting, and
// process.env reads are slow on the per-op path.
let gemmPathEnv: { portable: boolean } | { error: string } | undefined;

/** @internal Whether `path` (an option's value) or MOE_KERNELS_GEMM_PATH asks for the portable kernels; refuses bad values. */
export function forcedPortable(path: unknown): boolean {
  if (path !== undefined) checkOneOf(path, 'path', GEMM_PATHS);
  if (gemmPathEnv === undefined) {
    const env = process.env.MOE_KERNELS_GEMM_PATH;
    gemmPathEnv =
      env === undefined || env === '' || env === 'auto' || env === 'portable'
        ? { portable: env === 'portable' }
        : { error: `MOE_KERNELS_GEMM_PATH: expected "auto" or "portable", got ${describe(env)}` };
  }
  if ('error' in gemmPathEnv) throw new MoeError('E_ARGUMENT', gemmPathEnv.error);
  return path === 'portable' || gemmPathEnv.portable;
}

/**
 * out[..., N] = alpha * (a . w^T) (+ bias): the NVFP4 block-scaled GEMM, fp32 accumulation.
 *   w: Nvfp4Tensor [N, K] (take one expert of an [E, N, K] weight with w.select(e)).
 *   a: bf16 [..., K] (W4A16) or an Nvfp4Tensor [..., K] (W4A4), each with one global scale.
 * K must be a multiple of 16; any M and N. The result is bf16 (default) or f32.
 */
export function gemmNvfp4<D extends GemmNvfp4OutDType = 'bf16'>(
  a: Tensor | Nvfp4Tensor,
  w: Nvfp4Tensor,
  options?: GemmNvfp4Options<D>,
): Tensor<D> {
  const o = checkOptions(options, 'options', GEMM_OPTIONS);
  checkNvfp4(w, 'w');
  const wShape = w.shape;
  if (wShape.length !== 2) {
    throw new MoeError('E_SHAPE', `w: expected an NVFP4 weight [N, K], got [${wShape}]${wShape.length === 3 ? '; take one expert with w.select(e)' : ''}`);
  }
  if (w.globalScale.numel !== 1) throw new MoeError('E_SHAPE', `w: expected one global scale, got [${w.globalScale.shape}]`);
  const N = wShape[0];
  const K = wShape[1];

  // `at` holds a's values (W4A16) or codes (W4A4); `aq` is the NVFP4 activation, if any.
  let aq: Nvfp4Tensor | undefined;
  let at: Tensor;
  let aShape: readonly number[];
  if (isNvfp4Tensor(a)) {
    aq = checkNvfp4<Nvfp4Tensor>(a, 'a');
    if (aq.globalScale.numel !== 1) {
      throw new MoeError('E_SHAPE', `a: expected one global scale for the activations, got [${aq.globalScale.shape}]`);
    }
    at = aq.data;
    aShape = aq.shape;
  } else {
    if (isTensor(a) && !(a as Tensor).disposed && (a as Tensor).dtype !== 'bf16') {
      throw new MoeError('E_DTYPE', `a: expected dtype bf16 (W4A16) or an Nvfp4Tensor (W4A4), got ${(a as Tensor).dtype}`);
    }
    at = checkTensor<Tensor>(a, 'a', BF16_ONLY);
    aShape = at.shape;
  }
  const rank = aShape.length;
  if (rank < 1) throw new MoeError('E_SHAPE', 'a: expected shape [..., K], got a 0-d tensor');
  const Ka = aShape[rank - 1];
  if (Ka % NVFP4_BLOCK !== 0) {
    throw new MoeError('E_SHAPE', `a: the last dimension K must be a multiple of ${NVFP4_BLOCK}, got [${aShape}] (K = ${Ka})`);
  }
  if (Ka !== K) throw new MoeError('E_SHAPE', `a: expected K = ${K} to match w [${wShape}], got [${aShape}]`);
  const device = at.device;
  if (w.device !== device) throw new MoeError('E_DEVICE', `w: expected a tensor on ${device} (where a is), got one on ${w.device}`);
  const stream = resolveStream(o.stream, device);

  let M = 1;
  for (let i = 0; i < rank - 1; i++) M *= aShape[i];

  let dtype: GemmNvfp4OutDType;
  if (o.outDtype !== undefined) dtype = checkOneOf(o.outDtype, 'outDtype', GEMM_OUT_DTYPES, 'E_DTYPE');
  else if (isTensor(o.out) && ((o.out as Tensor).dtype === 'bf16' || (o.out as Tensor).dtype === 'f32')) dtype = (o.out as Tensor).dtype as GemmNvfp4OutDType;
  else dtype = 'bf16';

  const alpha = o.alpha === undefined ? 1 : checkFinite(o.alpha, 'alpha');
  let bias: Tensor | undefined;
  if (o.bias !== undefined) {
    bias = checkTensor<Tensor>(o.bias, 'bias', BIAS_DTYPES, device);
    if (bias.shape.length !== 1 || bias.shape[0] !== N) throw new MoeError('E_SHAPE', `bias: expected shape [${N}], got [${bias.shape}]`);
  }
  const portable = forcedPortable(o.path);

  const wData = w.data;
  checkAligned(at.address, at.numel, aq ? 'a.data' : 'a', aq ? 8 : 16);
  checkAligned(wData.address, wData.numel, 'w.data', 8);

  let out: Tensor<D>;
  const given = o.out !== undefined;
  if (given) {
    out = checkOutLastDim<Tensor<D>>(o.out, 'out', OUT_DTYPE_LISTS[dtype], aShape, N, device);
    // the kernels would read what they overwrite
    if (
      overlaps(out, at) ||
      (aq !== undefined && (overlaps(out, aq.scales) || overlaps(out, aq.globalScale))) ||
      overlaps(out, wData) ||
      overlaps(out, w.scales) ||
      overlaps(out, w.globalScale) ||
      (bias !== undefined && overlaps(out, bias))
    ) {
      throw new MoeError('E_ARGUMENT', 'out: overlaps an input (a, w or bias); pass a separate tensor');
    }
  } else {
    const outShape = aShape.slice();
    outShape[rank - 1] = N;
    out = empty(outShape, { dtype: dtype as D, device, stream });
  }
  if (M === 0 || N === 0) return out;

  try {
    if (device !== 'cpu') {
      const used = aq ? [at, aq.scales, aq.globalScale, wData, w.scales, w.globalScale, out] : [at, wData, w.scales, w.globalScale, out];
      if (bias !== undefined) used.push(bias);
      useOn(stream, used);
    }
    const b = native();
    const A = opArgs();
    A[0] = at.deviceIndex;
    A[1] = stream.address;
    A[2] = at.address;
    A[3] = aq ? ID_U8 : ID_BF16;
    A[4] = aq ? aq.scales.address : 0;
    A[5] = aq ? aq.globalScale.address : 0;
    A[6] = wData.address;
    A[7] = w.scales.address;
    A[8] = w.globalScale.address;
    A[9] = bias ? bias.address : 0;
    A[10] = bias ? DTYPES[bias.dtype].id : ID_F32;
    A[11] = out.address;
    A[12] = dtype === 'f32' ? ID_F32 : ID_BF16;
    A[13] = M;
    A[14] = N;
    A[15] = K;
    A[16] = alpha;
    A[17] = portable ? 1 : 0;
    b.nvfp4Gemm();
  } catch (e) {
    if (!given) out.dispose();
    throw e;
  }
  return out;
}
