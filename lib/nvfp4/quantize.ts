// NVFP4 quantization, dequantization, the calibration global scale and the scale swizzle.
import { DTYPES } from '../dtype';
import { MoeError, describe } from '../errors';
import { native, opArgs } from '../native';
import { isCapturing, resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, type Tensor } from '../tensor';
import {
  checkAligned,
  checkNvfp4,
  checkOneOf,
  checkOptions,
  checkOut,
  checkShape,
  checkTensor,
  keys,
  product,
  sameShape,
  type Device,
} from '../validate';
import { NVFP4_BLOCK, Nvfp4Tensor, allocateNvfp4 } from './tensor';

/** What quantizeNvfp4 takes and dequantizeNvfp4 produces. */
export type Nvfp4SourceDType = 'bf16' | 'f16' | 'f32';
const SOURCE_DTYPES: readonly Nvfp4SourceDType[] = ['bf16', 'f16', 'f32'];
const F32_ONLY = ['f32'] as const;

const STREAM_OPTIONS = keys('stream');
const QUANTIZE_OPTIONS = keys('globalScale', 'out', 'stream');
const DEQUANTIZE_OPTIONS = keys('out', 'stream');

function roundUp(x: number, m: number): number {
  return Math.ceil(x / m) * m;
}

/** x as quantizeNvfp4 takes it: [..., K] with K a multiple of 16, 16-byte aligned. */
function checkSource(x: unknown, argument: string): Tensor {
  const t = checkTensor<Tensor>(x, argument, SOURCE_DTYPES);
  const n = t.shape.length;
  if (n < 1) throw new MoeError('E_SHAPE', `${argument}: expected shape [..., K], got a 0-d tensor`);
  const K = t.shape[n - 1];
  if (K % NVFP4_BLOCK !== 0) {
    throw new MoeError('E_SHAPE', `${argument}: the last dimension K must be a multiple of ${NVFP4_BLOCK}, got [${t.shape}] (K = ${K})`);
  }
  checkAligned(t.address, t.numel, argument, 16);
  return t;
}

/** ModelOpt's global scale of `x`, amax(|x|) / (6 * 448) (1 where that is 0), enqueued into `out`. */
function enqueueGlobalScale(x: Tensor, out: Tensor<'f32'>, stream: Stream): void {
  const b = native();
  const dev = x.deviceIndex;
  const amax = empty([1], { dtype: 'f32', device: x.device, stream });
  try {
    useOn(stream, [x, out, amax]);
    b.nvfp4Amax(dev, stream.handle, x.dataPtr, DTYPES[x.dtype].id, x.numel, amax.dataPtr);
    b.nvfp4GlobalScaleFromAmax(dev, stream.handle, amax.dataPtr, out.dataPtr);
  } finally {
    // stream-ordered: the memory is reused only by work queued after these kernels
    amax.dispose();
  }
}

/**
 * @internal The global scale option of an op that quantizes: a positive finite number (taken as
 * f32; copied from the host, so refused while a graph is being captured) or a device scalar f32
 * (one element on `device`); undefined when not given.
 */
export function checkGlobalScaleOption(g: unknown, argument: string, device: Device, stream: Stream): number | Tensor<'f32'> | undefined {
  if (g === undefined) return undefined;
  if (typeof g === 'number') {
    const v = Math.fround(g);
    if (!Number.isFinite(v) || v <= 0) {
      throw new MoeError('E_ARGUMENT', `${argument}: expected a positive finite number (as f32), got ${describe(g)}`);
    }
    if (isCapturing(stream)) {
      throw new MoeError('E_CAPTURE', `${argument}: a number is copied from the host, which a graph cannot replay; pass a device tensor`);
    }
    return v;
  }
  const t = checkTensor<Tensor<'f32'>>(g, argument, F32_ONLY, device);
  if (t.numel !== 1) throw new MoeError('E_SHAPE', `${argument}: expected one element, got shape [${t.shape}]`);
  return t;
}

/**
 * @internal Enqueues what puts a quantizing op's global scale in place and returns the tensor
 * the op reads it from: a given tensor as it is (the op copies it into `gs`), a number written
 * into `gs`, or (undefined) amax(|x|) / (6 * 448) computed into `gs`. The caller has recorded
 * the uses of `gs` (and of x) on the stream.
 */
export function stageGlobalScale(g: number | Tensor<'f32'> | undefined, gs: Tensor<'f32'>, x: Tensor, stream: Stream): Tensor<'f32'> {
  if (typeof g === 'object') return g;
  if (typeof g === 'number') {
    const b = native();
    const value = new Float32Array([g]);
    if (gs.deviceIndex < 0) b.hostWrite(gs.dataPtr, value);
    else b.copyToDevice(gs.deviceIndex, gs.dataPtr, value, 4, stream.handle);
  } else {
    enqueueGlobalScale(x, gs, stream);
  }
  return gs;
}

export interface GlobalScaleNvfp4Options {
  stream?: Stream;
}

/**
 * The global scale ModelOpt would give `x` (bf16, f16 or f32, any shape): a device scalar
 * f32 [1] = amax(|x|) / (6 * 448), or 1 where that is 0. Computed on the device without a
 * host sync; NaN in x makes it NaN. Use it to calibrate an activation's input scale.
 */
export function globalScaleNvfp4(x: Tensor, options?: GlobalScaleNvfp4Options): Tensor<'f32'> {
  const o = checkOptions(options, 'options', STREAM_OPTIONS);
  const t = checkTensor<Tensor>(x, 'x', SOURCE_DTYPES);
  const stream = resolveStream(o.stream, t.device);
  const out = empty([1], { dtype: 'f32', device: t.device, stream });
  try {
    enqueueGlobalScale(t, out, stream);
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

export interface QuantizeNvfp4Options {
  /**
   * The global scale to quantize with: a positive finite number, or a device scalar f32 (one
   * element, same device; copied, so later writes to it do not change the result). Default:
   * amax(|x|) / (6 * 448) computed on the device (no host sync).
   */
  globalScale?: number | Tensor<'f32'>;
  /**
   * Written in place of a new NVFP4 tensor (for a decode loop or a graph): same shape as x, on
   * x's device, one global scale; it receives the codes, the scales and the global scale used.
   */
  out?: Nvfp4Tensor;
  stream?: Stream;
}

/**
 * Quantizes x (bf16, f16 or f32 [..., K], K a multiple of 16) to NVFP4 with ModelOpt's rules:
 * per 16-block scale = blockAmax / (6 * globalScale) cast to E4M3 (0 becomes 1; clamped to
 * [2^-9, 448]), elements x / (scale * globalScale) rounded to nearest even on the E2M1 grid,
 * saturating at 6; -0 keeps its sign. The CPU and CUDA backends agree bit for bit.
 */
export function quantizeNvfp4(x: Tensor, options?: QuantizeNvfp4Options): Nvfp4Tensor {
  const o = checkOptions(options, 'options', QUANTIZE_OPTIONS);
  const t = checkSource(x, 'x');
  const device = t.device;
  const stream = resolveStream(o.stream, device);
  const g = checkGlobalScaleOption(o.globalScale, 'globalScale', device, stream);
  const given = typeof g === 'object' ? g : undefined;

  const shape = t.shape;
  const K = shape[shape.length - 1];
  const rows = K === 0 ? 0 : t.numel / K;
  let q: Nvfp4Tensor;
  const outGiven = o.out !== undefined;
  if (outGiven) {
    q = checkNvfp4<Nvfp4Tensor>(o.out, 'out', device);
    if (!sameShape(q.shape, shape)) throw new MoeError('E_SHAPE', `out: expected an NVFP4 tensor of shape [${shape}], got [${q.shape}]`);
    if (q.globalScale.numel !== 1) throw new MoeError('E_SHAPE', `out: expected one global scale, got [${q.globalScale.shape}]`);
    checkAligned(q.data.address, q.data.numel, 'out.data', 8);
    if (overlaps(t, q.data) || overlaps(t, q.scales) || overlaps(t, q.globalScale) || (given !== undefined && (overlaps(given, q.data) || overlaps(given, q.scales)))) {
      throw new MoeError('E_ARGUMENT', 'out: overlaps x or globalScale; pass a separate NVFP4 tensor');
    }
  } else {
    q = allocateNvfp4(shape, device, stream);
  }
  const b = native();
  const dev = t.deviceIndex;
  try {
    const gs = q.globalScale;
    // The op copies a given device scale into the result itself; a number or a computed scale
    // is put there first.
    if (given !== undefined) useOn(stream, outGiven ? [t, q.data, q.scales, gs, given] : [t, q.data, given]);
    else useOn(stream, outGiven ? [t, q.data, q.scales, gs] : [t, q.data]);
    const scaleFrom = stageGlobalScale(g, gs, t, stream);
    const A = opArgs();
    A[0] = dev;
    A[1] = stream.address;
    A[2] = t.address;
    A[3] = DTYPES[t.dtype].id;
    A[4] = rows;
    A[5] = K;
    A[6] = scaleFrom.address;
    A[7] = q.data.address;
    A[8] = q.scales.address;
    A[9] = scaleFrom === gs ? 0 : gs.address;
    b.nvfp4Quantize();
    return q;
  } catch (e) {
    if (!outGiven) q.dispose();
    throw e;
  }
}

export interface DequantizeNvfp4Options<D extends Nvfp4SourceDType = Nvfp4SourceDType> {
  /** Written in place of a new tensor: shape q.shape, dtype `dtype`, same device, 16-byte aligned. */
  out?: Tensor<D>;
  stream?: Stream;
}

/**
 * Decodes q to bf16 (default), f16 or f32: e2m1 * scale * globalScale computed in f32 and
 * rounded once to `dtype` (f16 overflows to inf). Bit-identical on both backends.
 */
export function dequantizeNvfp4<D extends Nvfp4SourceDType = 'bf16'>(
  q: Nvfp4Tensor,
  dtype: D = 'bf16' as D,
  options?: DequantizeNvfp4Options<D>,
): Tensor<D> {
  const o = checkOptions(options, 'options', DEQUANTIZE_OPTIONS);
  checkNvfp4(q, 'q');
  checkOneOf(dtype, 'dtype', SOURCE_DTYPES, 'E_DTYPE');
  const device = q.device;
  const stream = resolveStream(o.stream, device);
  checkAligned(q.data.address, q.data.numel, 'q.data', 8);
  let out: Tensor<D>;
  if (o.out !== undefined) {
    out = checkOut<Tensor<D>>(o.out, 'out', dtype, q.shape, device);
    checkAligned(out.address, out.numel, 'out', 16);
    if (overlaps(out, q.data) || overlaps(out, q.scales) || overlaps(out, q.globalScale)) {
      throw new MoeError('E_ARGUMENT', 'out: overlaps the NVFP4 tensor q; pass a separate tensor');
    }
  } else {
    out = empty(q.shape, { dtype, device, stream });
  }
  const K = q.shape[q.ndim - 1];
  const slices = q.globalScale.numel;
  const rows = K === 0 ? 0 : q.numel / K / slices;
  const elem = DTYPES[dtype].bytes;
  const b = native();
  const dev = q.data.deviceIndex;
  try {
    useOn(stream, [q.data, q.scales, q.globalScale, out]);
    // One launch per global scale: the kernel takes one scale for all its rows.
    for (let s = 0; s < slices; s++) {
      const r0 = s * rows;
      b.nvfp4Dequantize(
        dev,
        stream.handle,
        q.data.dataPtr + BigInt(r0 * (K / 2)),
        q.scales.dataPtr + BigInt(r0 * (K / NVFP4_BLOCK)),
        q.globalScale.dataPtr + BigInt(4 * s),
        rows,
        K,
        out.dataPtr + BigInt(r0 * K * elem),
        DTYPES[dtype].id,
      );
    }
  } catch (e) {
    if (o.out === undefined) out.dispose();
    throw e;
  }
  return out;
}

function checkScales(value: unknown, argument: string): Tensor<'fp8e4m3' | 'u8'> {
  const t = checkTensor<Tensor<'fp8e4m3' | 'u8'>>(value, argument, ['fp8e4m3', 'u8']);
  if (t.ndim < 2) throw new MoeError('E_SHAPE', `${argument}: expected shape [..., rows, K/16], got [${t.shape}]`);
  return t;
}

/** Bytes of one matrix's swizzled scales: the layout pads rows to 128 and blocks to 4. */
function swizzledBytes(rows: number, kBlocks: number): number {
  return roundUp(rows, 128) * roundUp(kBlocks, 4);
}

export interface SwizzleScalesOptions {
  stream?: Stream;
}

/**
 * Linear block scales [..., rows, K/16] (fp8e4m3 or u8) to Blackwell's 128x4 swizzled layout
 * that TensorRT-LLM, CUTLASS and FlashInfer kernels take: one tensor of shape
 * [..., roundUp(rows, 128), roundUp(K/16, 4)] per matrix (each leading index is swizzled on
 * its own, as for the experts of an MoE weight), whose bytes are in swizzled order; the padding
 * is zero. Byte offset of (row m, block k):
 * ((m / 128) * ceil(K/64) + k / 4) * 512 + (m % 32) * 16 + ((m / 32) % 4) * 4 + k % 4.
 */
export function swizzleScales<D extends 'fp8e4m3' | 'u8'>(scales: Tensor<D>, options?: SwizzleScalesOptions): Tensor<D> {
  const o = checkOptions(options, 'options', STREAM_OPTIONS);
  const t = checkScales(scales, 'scales') as Tensor<D>;
  const stream = resolveStream(o.stream, t.device);
  const rows = t.shape[t.ndim - 2];
  const kBlocks = t.shape[t.ndim - 1];
  const lead = t.shape.slice(0, -2);
  const per = swizzledBytes(rows, kBlocks);
  const out = empty([...lead, roundUp(rows, 128), roundUp(kBlocks, 4)], { dtype: t.dtype, device: t.device, stream });
  try {
    useOn(stream, [t, out]);
    const b = native();
    const dev = t.deviceIndex;
    for (let i = 0, n = product(lead); i < n; i++) {
      b.nvfp4SwizzleScales(dev, stream.handle, t.dataPtr + BigInt(i * rows * kBlocks), rows, kBlocks * NVFP4_BLOCK, out.dataPtr + BigInt(i * per));
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/**
 * The inverse of swizzleScales: swizzled scales (shape [..., roundUp(rows, 128),
 * roundUp(K/16, 4)], or flat with that many bytes) back to linear scales of `shape`
 * [..., rows, K/16]; the padding is dropped.
 */
export function unswizzleScales<D extends 'fp8e4m3' | 'u8'>(
  swizzled: Tensor<D>,
  shape: readonly number[],
  options?: SwizzleScalesOptions,
): Tensor<D> {
  const o = checkOptions(options, 'options', STREAM_OPTIONS);
  const t = checkTensor<Tensor<D>>(swizzled, 'swizzled', ['fp8e4m3', 'u8']);
  const s = checkShape(shape, 'shape');
  if (s.length < 2) throw new MoeError('E_SHAPE', `shape: expected the linear scale shape [..., rows, K/16], got [${s}]`);
  const rows = s[s.length - 2];
  const kBlocks = s[s.length - 1];
  const lead = s.slice(0, -2);
  const per = swizzledBytes(rows, kBlocks);
  const padded = [...lead, roundUp(rows, 128), roundUp(kBlocks, 4)];
  if (!sameShape(t.shape, padded) && !(t.ndim === 1 && t.numel === per * product(lead))) {
    throw new MoeError(
      'E_SHAPE',
      `swizzled: scales of shape [${s}] swizzle to [${padded}] (${per * product(lead)} bytes), got [${t.shape}]`,
    );
  }
  const stream = resolveStream(o.stream, t.device);
  const out = empty(s, { dtype: t.dtype, device: t.device, stream });
  try {
    useOn(stream, [t, out]);
    const b = native();
    const dev = t.deviceIndex;
    for (let i = 0, n = product(lead); i < n; i++) {
      b.nvfp4UnswizzleScales(dev, stream.handle, t.dataPtr + BigInt(i * per), rows, kBlocks * NVFP4_BLOCK, out.dataPtr + BigInt(i * rows * kBlocks));
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}
