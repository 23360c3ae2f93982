import { defaultDevice, checkDevice, type Device } from './device';
import { DTYPES, type DType } from './dtype';
import { MoeError, describe } from './errors';
import { native } from './native';
import { isCapturing, resolveStream, type Stream } from './stream';
import { Tensor, empty, fromArray, fromBytes, overlaps, useOn } from './tensor';
import { checkOut, checkShape, checkTensor, product, sameShape } from './validate';


/** Elements per NVFP4 scale block (along the last dimension). */
export const NVFP4_BLOCK = 16;

/** What quantizeNvfp4 takes and dequantizeNvfp4 produces. */
export type Nvfp4SourceDType = 'bf16' | 'f16' | 'f32';
const SOURCE_DTYPES: readonly Nvfp4SourceDType[] = ['bf16', 'f16', 'f32'];

/** Output dtypes of gemmNvfp4. */
export type GemmNvfp4OutDType = 'bf16' | 'f32';
const GEMM_OUT_DTYPES: readonly GemmNvfp4OutDType[] = ['bf16', 'f32'];

function roundUp(x: number, m: number): number {
  return Math.ceil(x / m) * m;
}

/** The kernels read with vector loads: refuse pointers they would reject (views, fromPointer). */
function checkAligned(t: Tensor, argument: string, bytes: number): void {
  if (t.numel > 0 && t.dataPtr % BigInt(bytes) !== 0n) {
    throw new MoeError('E_ARGUMENT', `${argument}: the data must start at a ${bytes}-byte aligned address, got 0x${t.dataPtr.toString(16)}`);
  }
}

function checkOptions(value: unknown, argument = 'options'): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object') throw new MoeError('E_ARGUMENT', `${argument}: expected an object, got ${describe(value)}`);
  return value as Record<string, unknown>;
}

/**
 * An NVFP4 tensor of logical shape [..., K] (ModelOpt layout): E2M1 codes two per byte (the
 * even element in the low nibble), one positive E4M3 scale per 16 consecutive elements in the
 * linear layout, and an FP32 global scale on the device. Element value =
 * e2m1 * scales[..., k / 16] * globalScale.
 *
 * `globalScale` is [1] for the whole tensor, or [shape[0]] with one scale per leading index
 * (the MoE form: one weight_scale_2 per expert). Disposing it disposes the three parts.
 */
export class Nvfp4Tensor {
  /** E2M1 codes, u8 [..., K/2]. */
  readonly data: Tensor<'u8'>;
  /** Block scales, fp8e4m3 [..., K/16], linear (row-major) layout. */
  readonly scales: Tensor<'fp8e4m3'>;
  /** f32 [1], or [shape[0]] with one scale per leading index. */
  readonly globalScale: Tensor<'f32'>;
  /** The logical shape [..., K]. */
  readonly shape: readonly number[];
  readonly device: Device;

  /**
   * Assembles the three parts (taking ownership of them); quantizeNvfp4 and nvfp4FromCheckpoint
   * are the usual ways in. Every part is checked against `shape`, since kernels size their
   * reads from it.
   */
  constructor(data: Tensor<'u8'>, scales: Tensor<'fp8e4m3'>, globalScale: Tensor<'f32'>, shape: readonly number[]) {
    const s = checkShape(shape, 'shape');
    const K = s[s.length - 1];
    if (s.length === 0 || K % NVFP4_BLOCK !== 0) {
      throw new MoeError('E_SHAPE', `shape: expected [..., K] with K a multiple of ${NVFP4_BLOCK}, got ${describe(shape)}`);
    }
    checkTensor(data, 'data', ['u8']);
    checkTensor(scales, 'scales', ['fp8e4m3'], data.device);
    checkTensor(globalScale, 'globalScale', ['f32'], data.device);
    const lead = s.slice(0, -1);
    if (!sameShape(data.shape, [...lead, K / 2])) throw new MoeError('E_SHAPE', `data: expected [${[...lead, K / 2]}], got [${data.shape}]`);
    if (!sameShape(scales.shape, [...lead, K / NVFP4_BLOCK])) {
      throw new MoeError('E_SHAPE', `scales: expected [${[...lead, K / NVFP4_BLOCK]}], got [${scales.shape}]`);
    }
    if (globalScale.numel !== 1 && !(s.length > 1 && globalScale.numel === s[0])) {
      throw new MoeError('E_SHAPE', `globalScale: expected 1 element or shape[0] = ${s[0]}, got [${globalScale.shape}]`);
    }
    this.data = data;
    this.scales = scales;
    this.globalScale = globalScale;
    this.shape = Object.freeze(shape.slice());
    this.device = data.device;
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** Logical elements. */
  get numel(): number {
    return product(this.shape);
  }

  /** Bytes of the codes and block scales (what a GEMM streams), global scales excluded. */
  get byteLength(): number {
    return this.data.byteLength + this.scales.byteLength;
  }

  /** True once this tensor, or any of its parts, was disposed. */
  get disposed(): boolean {
    return this.data.disposed || this.scales.disposed || this.globalScale.disposed;
  }

  /**
   * Index `index` along the first dimension, as a view: expert `index` of an [E, N, K] weight
   * becomes an [N, K] tensor with its own global scale, ready for gemmNvfp4.
   */
  select(index: number): Nvfp4Tensor {
    this.check('tensor');
    if (this.ndim < 2) throw new MoeError('E_SHAPE', `select: expected a tensor of at least 2 dimensions, got [${this.shape}]`);
    const rows = this.shape[0];
    if (!Number.isInteger(index) || index < 0 || index >= rows) {
      throw new MoeError('E_SHAPE', `index: expected an integer in [0, ${rows}), got ${describe(index)}`);
    }
    const rest = this.shape.slice(1);
    const K = rest[rest.length - 1];
    const lead = rest.slice(0, -1);
    const view = <D extends DType>(t: Tensor<D>, shape: number[]): Tensor<D> => {
      const row = t.slice(index, index + 1);
      try {
        return row.reshape(shape);
      } finally {
        row.dispose();
      }
    };
    const data = view(this.data, [...lead, K / 2]);
    const scales = view(this.scales, [...lead, K / NVFP4_BLOCK]);
    const gs = this.globalScale.numel === 1 ? this.globalScale.reshape([1]) : view(this.globalScale, [1]);
    return new Nvfp4Tensor(data, scales, gs, rest);
  }

  /** Releases the three parts (views made by select() keep their memory alive). Idempotent. */
  dispose(): void {
    this.data.dispose();
    this.scales.dispose();
    this.globalScale.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Nvfp4Tensor([${this.shape.join(', ')}] on ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal throws E_DISPOSED naming `argument` when a part is gone. */
  check(argument: string): void {
    if (this.disposed) throw new MoeError('E_DISPOSED', `${argument}: the NVFP4 tensor (or one of its parts) was disposed`);
  }
}

function checkNvfp4(value: unknown, argument: string): Nvfp4Tensor {
  if (!(value instanceof Nvfp4Tensor)) throw new MoeError('E_ARGUMENT', `${argument}: expected an Nvfp4Tensor, got ${describe(value)}`);
  value.check(argument);
  return value;
}

function parts(q: Nvfp4Tensor): Tensor[] {
  return [q.data, q.scales, q.globalScale];
}

function checkSource(x: unknown, argument: string): { x: Tensor; K: number; rows: number } {
  const t = checkTensor<Tensor>(x, argument, SOURCE_DTYPES);
  if (t.ndim < 1) throw new MoeError('E_SHAPE', `${argument}: expected shape [..., K], got a 0-d tensor`);
  const K = t.shape[t.ndim - 1];
  if (K % NVFP4_BLOCK !== 0) {
    throw new MoeError('E_SHAPE', `${argument}: the last dimension K must be a multiple of ${NVFP4_BLOCK}, got [${t.shape}] (K = ${K})`);
  }
  checkAligned(t, argument, 16);
  return { x: t, K, rows: K === 0 ? product(t.shape.slice(0, -1)) : t.numel / K };
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

export interface GlobalScaleNvfp4Options {
  stream?: Stream;
}

/**
 * The global scale ModelOpt would give `x` (bf16, f16 or f32, any shape): a device scalar
 * f32 [1] = amax(|x|) / (6 * 448), or 1 where that is 0. Computed on the device without a
 * host sync; NaN in x makes it NaN. Use it to calibrate an activation's input scale.
 */
export function globalScaleNvfp4(x: Tensor, options: GlobalScaleNvfp4Options = {}): Tensor<'f32'> {
  const o = checkOptions(options);
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
  stream?: Stream;
}

/**
 * Quantizes x (bf16, f16 or f32 [..., K], K a multiple of 16) to NVFP4 with ModelOpt's rules:
 * per 16-block scale = blockAmax / (6 * globalScale) cast to E4M3 (0 becomes 1; clamped to
 * [2^-9, 448]), elements x / (scale * globalScale) rounded to nearest even on the E2M1 grid,
 * saturating at 6; -0 keeps its sign. The CPU and CUDA backends agree bit for bit.
 */
export function quantizeNvfp4(x: Tensor, options: QuantizeNvfp4Options = {}): Nvfp4Tensor {
  const o = checkOptions(options);
  const { x: t, K, rows } = checkSource(x, 'x');
  const device = t.device;
  const stream = resolveStream(o.stream, device);
  let given: Tensor<'f32'> | undefined;
  let givenNumber: number | undefined;
  if (typeof o.globalScale === 'number') {
    givenNumber = Math.fround(o.globalScale);
    if (!Number.isFinite(givenNumber) || givenNumber <= 0) {
      throw new MoeError('E_ARGUMENT', `globalScale: expected a positive finite number (as f32), got ${describe(o.globalScale)}`);
    }
    if (isCapturing(stream)) {
      throw new MoeError('E_CAPTURE', 'globalScale: a number is copied from the host, which a graph cannot replay; pass a device tensor');
    }
  } else if (o.globalScale !== undefined) {
    given = checkTensor<Tensor<'f32'>>(o.globalScale, 'globalScale', ['f32'], device);
    if (given.numel !== 1) throw new MoeError('E_SHAPE', `globalScale: expected one element, got shape [${given.shape}]`);
  }

  const lead = t.shape.slice(0, -1);
  const created: Tensor[] = [];
  try {
    const data = empty([...lead, K / 2], { dtype: 'u8', device, stream });
    created.push(data);
    const scales = empty([...lead, K / NVFP4_BLOCK], { dtype: 'fp8e4m3', device, stream });
    created.push(scales);
    let gs: Tensor<'f32'>;
    if (givenNumber !== undefined) {
      gs = fromArray([givenNumber], { dtype: 'f32', device, stream });
      created.push(gs);
    } else {
      gs = empty([1], { dtype: 'f32', device, stream });
      created.push(gs);
      if (given) {
        const b = native();
        useOn(stream, [given, gs]);
        if (device === 'cpu') b.hostCopy(gs.dataPtr, given.dataPtr, 4);
        else b.copyDeviceToDevice(t.deviceIndex, gs.dataPtr, given.dataPtr, 4, stream.handle);
      } else {
        enqueueGlobalScale(t, gs, stream);
      }
    }
    useOn(stream, [t, data, scales, gs]);
    native().nvfp4Quantize(t.deviceIndex, stream.handle, t.dataPtr, DTYPES[t.dtype].id, rows, K, gs.dataPtr, data.dataPtr, scales.dataPtr, 0n);
    return new Nvfp4Tensor(data, scales, gs, t.shape);
  } catch (e) {
    for (const c of created) c.dispose();
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
  options: DequantizeNvfp4Options<D> = {},
): Tensor<D> {
  const o = checkOptions(options);
  checkNvfp4(q, 'q');
  if (!SOURCE_DTYPES.includes(dtype)) {
    throw new MoeError('E_DTYPE', `dtype: expected one of ${SOURCE_DTYPES.join(', ')}, got ${describe(dtype)}`);
  }
  const device = q.device;
  const stream = resolveStream(o.stream, device);
  checkAligned(q.data, 'q.data', 8);
  let out: Tensor<D>;
  if (o.out !== undefined) {
    out = checkOut<Tensor<D>>(o.out, 'out', dtype, q.shape, device);
    checkAligned(out, 'out', 16);
    for (const p of parts(q)) {
      if (overlaps(out, p)) throw new MoeError('E_ARGUMENT', 'out: overlaps the NVFP4 tensor q; pass a separate tensor');
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
    useOn(stream, [...parts(q), out]);
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

/** Bytes of one matrix's swizzled scales: the layout pads rows to 128 and blocks to 4. */
function swizzledBytes(rows: number, kBlocks: number): number {
  return roundUp(rows, 128) * roundUp(kBlocks, 4);
}

function checkScales(value: unknown, argument: string): Tensor<'fp8e4m3' | 'u8'> {
  const t = checkTensor<Tensor<'fp8e4m3' | 'u8'>>(value, argument, ['fp8e4m3', 'u8']);
  if (t.ndim < 2) throw new MoeError('E_SHAPE', `${argument}: expected shape [..., rows, K/16], got [${t.shape}]`);
  return t;
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
export function swizzleScales<D extends 'fp8e4m3' | 'u8'>(scales: Tensor<D>, options: SwizzleScalesOptions = {}): Tensor<D> {
  const o = checkOptions(options);
  const t = checkScales(scales, 'scales') as Tensor<D>;
  const stream = resolveStream(o.stream, t.device);
  const rows = t.shape[t.ndim - 2];
  const kBlocks = t.shape[t.ndim - 1];
  const lead = t.shape.slice(0, -2);
  const b = native();
  const per = swizzledBytes(rows, kBlocks);
  const out = empty([...lead, roundUp(rows, 128), roundUp(kBlocks, 4)], { dtype: t.dtype, device: t.device, stream });
  try {
    useOn(stream, [t, out]);
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
  options: SwizzleScalesOptions = {},
): Tensor<D> {
  const o = checkOptions(options);
  const t = checkTensor<Tensor<D>>(swizzled, 'swizzled', ['fp8e4m3', 'u8']);
  const s = checkShape(shape, 'shape');
  if (s.length < 2) throw new MoeError('E_SHAPE', `shape: expected the linear scale shape [..., rows, K/16], got [${s}]`);
  const rows = s[s.length - 2];
  const kBlocks = s[s.length - 1];
  const lead = s.slice(0, -2);
  const b = native();
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

function forcedPortable(path: unknown): boolean {
  if (path !== undefined && path !== 'auto' && path !== 'portable') {
    throw new MoeError('E_ARGUMENT', `path: expected "auto" or "portable", got ${describe(path)}`);
  }
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
  options: GemmNvfp4Options<D> = {},
): Tensor<D> {
  const o = checkOptions(options);
  checkNvfp4(w, 'w');
  if (w.ndim !== 2) {
    throw new MoeError('E_SHAPE', `w: expected an NVFP4 weight [N, K], got [${w.shape}]${w.ndim === 3 ? '; take one expert with w.select(e)' : ''}`);
  }
  if (w.globalScale.numel !== 1) throw new MoeError('E_SHAPE', `w: expected one global scale, got [${w.globalScale.shape}]`);
  const [N, K] = w.shape;

  const aFp4 = a instanceof Nvfp4Tensor;
  let aShape: readonly number[];
  let aTensors: Tensor[];
  if (aFp4) {
    checkNvfp4(a, 'a');
    if (a.globalScale.numel !== 1) {
      throw new MoeError('E_SHAPE', `a: expected one global scale for the activations, got [${a.globalScale.shape}]`);
    }
    aShape = a.shape;
    aTensors = parts(a);
  } else {
    if (a instanceof Tensor && !a.disposed && a.dtype !== 'bf16') {
      throw new MoeError('E_DTYPE', `a: expected dtype bf16 (W4A16) or an Nvfp4Tensor (W4A4), got ${a.dtype}`);
    }
    const t = checkTensor<Tensor>(a, 'a', ['bf16']);
    aShape = t.shape;
    aTensors = [t];
  }
  if (aShape.length < 1) throw new MoeError('E_SHAPE', 'a: expected shape [..., K], got a 0-d tensor');
  const Ka = aShape[aShape.length - 1];
  if (Ka % NVFP4_BLOCK !== 0) {
    throw new MoeError('E_SHAPE', `a: the last dimension K must be a multiple of ${NVFP4_BLOCK}, got [${aShape}] (K = ${Ka})`);
  }
  if (Ka !== K) throw new MoeError('E_SHAPE', `a: expected K = ${K} to match w [${w.shape}], got [${aShape}]`);
  const device = aTensors[0].device;
  if (w.device !== device) throw new MoeError('E_DEVICE', `w: expected a tensor on ${device} (where a is), got one on ${w.device}`);
  const stream = resolveStream(o.stream, device);

  const lead = aShape.slice(0, -1);
  const M = product(lead);
  const outShape = [...lead, N];
  let dtype: GemmNvfp4OutDType;
  if (o.outDtype !== undefined) {
    if (!GEMM_OUT_DTYPES.includes(o.outDtype as GemmNvfp4OutDType)) {
      throw new MoeError('E_DTYPE', `outDtype: expected bf16 or f32, got ${describe(o.outDtype)}`);
    }
    dtype = o.outDtype as GemmNvfp4OutDType;
  } else if (o.out instanceof Tensor && GEMM_OUT_DTYPES.includes(o.out.dtype as GemmNvfp4OutDType)) {
    dtype = o.out.dtype as GemmNvfp4OutDType;
  } else {
    dtype = 'bf16';
  }

  let alpha = 1;
  if (o.alpha !== undefined) {
    if (typeof o.alpha !== 'number' || !Number.isFinite(o.alpha)) {
      throw new MoeError('E_ARGUMENT', `alpha: expected a finite number, got ${describe(o.alpha)}`);
    }
    alpha = o.alpha;
  }
  let bias: Tensor | undefined;
  if (o.bias !== undefined) {
    bias = checkTensor<Tensor>(o.bias, 'bias', ['bf16', 'f32'], device);
    if (!sameShape(bias.shape, [N])) throw new MoeError('E_SHAPE', `bias: expected shape [${N}], got [${bias.shape}]`);
  }
  const forcePortable = forcedPortable(o.path);

  if (aFp4) checkAligned((a as Nvfp4Tensor).data, 'a.data', 8);
  else checkAligned(a as Tensor, 'a', 16);
  checkAligned(w.data, 'w.data', 8);

  let out: Tensor<D>;
  const given = o.out !== undefined;
  if (given) {
    out = checkOut<Tensor<D>>(o.out, 'out', dtype as D, outShape, device);
    for (const t of [...aTensors, ...parts(w), ...(bias ? [bias] : [])]) {
      if (overlaps(out, t)) throw new MoeError('E_ARGUMENT', 'out: overlaps an input (a, w or bias); pass a separate tensor');
    }
  } else {
    out = empty(outShape, { dtype: dtype as D, device, stream });
  }
  if (M === 0 || N === 0) return out;

  const b = native();
  const dev = w.data.deviceIndex;
  const aType = aFp4 ? DTYPES.u8.id : DTYPES.bf16.id;
  try {
    useOn(stream, [...aTensors, ...parts(w), out, ...(bias ? [bias] : [])]);
    const aq = aFp4 ? (a as Nvfp4Tensor) : undefined;
    b.nvfp4Gemm(
      dev,
      stream.handle,
      aTensors[0].dataPtr,
      aType,
      aq ? aq.scales.dataPtr : 0n,
      aq ? aq.globalScale.dataPtr : 0n,
      w.data.dataPtr,
      w.scales.dataPtr,
      w.globalScale.dataPtr,
      bias ? bias.dataPtr : 0n,
      bias ? DTYPES[bias.dtype].id : DTYPES.f32.id,
      out.dataPtr,
      DTYPES[dtype].id,
      M,
      N,
      K,
      alpha,
      forcePortable,
    );
  } catch (e) {
    if (!given) out.dispose();
    throw e;
  }
  return out;
}

/** One checkpoint tensor as raw little-endian bytes, the way a safetensors file stores it. */
export interface Nvfp4CheckpointEntry {
  data: ArrayBufferView;
  shape: readonly number[];
  /** safetensors ('U8', 'F8_E4M3', 'F32') or package ('u8', 'fp8e4m3', 'f32') name; checked when given. */
  dtype?: string;
}

/**
 * A ModelOpt NVFP4 linear layer's tensors, by their checkpoint names. Dense: weight u8 [N, K/2],
 * weight_scale e4m3 [N, K/16], weight_scale_2 f32 scalar. MoE (experts stacked): weight
 * [E, N, K/2], weight_scale [E, N, K/16], weight_scale_2 [E] (one per expert). Each is raw
 * bytes with a shape, or a Tensor already on the target device (used without a copy), and
 * weight_scale_2 may also be given as numbers.
 */
export interface Nvfp4Checkpoint {
  weight: Nvfp4CheckpointEntry | Tensor<'u8'>;
  weight_scale: Nvfp4CheckpointEntry | Tensor<'fp8e4m3'>;
  weight_scale_2: Nvfp4CheckpointEntry | Tensor<'f32'> | number | readonly number[];
}

export interface Nvfp4FromCheckpointOptions {
  /** Where the tensor goes; default: the device of a Tensor entry, else the default device. */
  device?: Device | 'cuda';
  stream?: Stream;
}

const CHECKPOINT_DTYPES: Record<string, DType> = {
  U8: 'u8', u8: 'u8', F8_E4M3: 'fp8e4m3', fp8e4m3: 'fp8e4m3', F32: 'f32', f32: 'f32',
};

/**
 * Builds an Nvfp4Tensor of logical shape [N, K] or [E, N, K] from a ModelOpt checkpoint's
 * tensors (see Nvfp4Checkpoint), validating their dtypes, shapes and sizes against each other.
 */
export function nvfp4FromCheckpoint(tensors: Nvfp4Checkpoint, options: Nvfp4FromCheckpointOptions = {}): Nvfp4Tensor {
  const o = checkOptions(options);
  if (tensors === null || typeof tensors !== 'object') {
    throw new MoeError('E_ARGUMENT', `tensors: expected { weight, weight_scale, weight_scale_2 }, got ${describe(tensors)}`);
  }
  const entries = tensors as unknown as Record<string, unknown>;
  for (const name of ['weight', 'weight_scale', 'weight_scale_2']) {
    if (entries[name] === undefined) throw new MoeError('E_ARGUMENT', `tensors.${name}: missing`);
  }
  const tensorEntries = [entries.weight, entries.weight_scale, entries.weight_scale_2].filter((v): v is Tensor => v instanceof Tensor);
  const device: Device =
    o.device !== undefined ? checkDevice(o.device, 'device') : tensorEntries.length > 0 ? tensorEntries[0].device : defaultDevice();
  const stream = resolveStream(o.stream, device);

  // Shapes and host bytes (or tensors) of the three entries, validated one by one.
  type Part = { shape: number[]; tensor?: Tensor; bytes?: ArrayBufferView };
  const read = (name: string, dtypes: readonly DType[]): Part => {
    const v = entries[name];
    if (v instanceof Tensor) {
      const t = checkTensor<Tensor>(v, name, dtypes, device);
      return { shape: t.shape.slice(), tensor: t };
    }
    if (v === null || typeof v !== 'object') {
      throw new MoeError('E_ARGUMENT', `${name}: expected { data, shape, dtype? } or a Tensor, got ${describe(v)}`);
    }
    const e = v as Partial<Nvfp4CheckpointEntry>;
    if (!ArrayBuffer.isView(e.data)) throw new MoeError('E_ARGUMENT', `${name}.data: expected a TypedArray or DataView, got ${describe(e.data)}`);
    const shape = checkShape(e.shape, `${name}.shape`);
    if (e.dtype !== undefined) {
      const d = typeof e.dtype === 'string' ? CHECKPOINT_DTYPES[e.dtype] : undefined;
      if (d === undefined || !dtypes.includes(d)) {
        throw new MoeError('E_DTYPE', `${name}.dtype: expected ${dtypes.join(' or ')}, got ${describe(e.dtype)}`);
      }
    }
    const need = product(shape) * DTYPES[dtypes[0]].bytes;
    if (e.data.byteLength !== need) {
      throw new MoeError('E_SHAPE', `${name}.data: [${shape}] of ${dtypes[0]} takes ${need} bytes, got ${e.data.byteLength}`);
    }
    return { shape, bytes: e.data };
  };

  const weight = read('weight', ['u8']);
  if (weight.shape.length !== 2 && weight.shape.length !== 3) {
    throw new MoeError('E_SHAPE', `weight: expected [N, K/2] or [E, N, K/2], got [${weight.shape}]`);
  }
  const half = weight.shape[weight.shape.length - 1];
  if (half % 8 !== 0) {
    throw new MoeError('E_SHAPE', `weight: the last dimension K/2 must be a multiple of 8 (K a multiple of 16), got [${weight.shape}]`);
  }
  const K = half * 2;
  const lead = weight.shape.slice(0, -1);
  const moe = weight.shape.length === 3;

  const scale = read('weight_scale', ['fp8e4m3', 'u8']);
  const wantScale = [...lead, K / NVFP4_BLOCK];
  if (!sameShape(scale.shape, wantScale)) {
    throw new MoeError('E_SHAPE', `weight_scale: expected [${wantScale}] for weight [${weight.shape}] (K = ${K}), got [${scale.shape}]`);
  }
  if (scale.tensor && scale.tensor.dtype !== 'fp8e4m3') {
    throw new MoeError('E_DTYPE', `weight_scale: expected a tensor of dtype fp8e4m3, got ${scale.tensor.dtype}`);
  }

  // weight_scale_2: numbers, bytes or a tensor; one scale, or one per expert.
  const gsRaw = entries.weight_scale_2;
  let gs: Part;
  if (typeof gsRaw === 'number' || Array.isArray(gsRaw)) {
    const values = typeof gsRaw === 'number' ? [gsRaw] : (gsRaw as unknown[]);
    values.forEach((v, i) => {
      if (typeof v !== 'number') throw new MoeError('E_ARGUMENT', `weight_scale_2[${i}]: expected a number, got ${describe(v)}`);
    });
    gs = { shape: typeof gsRaw === 'number' ? [] : [values.length], bytes: new Float32Array(values as number[]) };
  } else {
    gs = read('weight_scale_2', ['f32']);
  }
  const gsCount = product(gs.shape);
  if (moe) {
    if (!sameShape(gs.shape, [lead[0]])) {
      throw new MoeError('E_SHAPE', `weight_scale_2: expected one scale per expert, shape [${lead[0]}] for weight [${weight.shape}], got [${gs.shape}]`);
    }
  } else if (gsCount !== 1 || gs.shape.length > 1) {
    throw new MoeError('E_SHAPE', `weight_scale_2: expected a scalar (shape [] or [1]) for weight [${weight.shape}], got [${gs.shape}]`);
  }
  if (gs.bytes) {
    const f = new Float32Array(gsCount);
    new Uint8Array(f.buffer).set(new Uint8Array(gs.bytes.buffer, gs.bytes.byteOffset, gs.bytes.byteLength));
    f.forEach((v, i) => {
      if (!Number.isFinite(v) || v <= 0) {
        throw new MoeError('E_ARGUMENT', `weight_scale_2${moe ? `[${i}]` : ''}: expected a positive finite scale, got ${v}`);
      }
    });
  }

  const created: Tensor[] = [];
  const place = <D extends DType>(p: Part, dtype: D, shape: number[]): Tensor<D> => {
    const t = p.tensor ? (p.tensor.reshape(shape) as Tensor<D>) : fromBytes(p.bytes as ArrayBufferView, { dtype, shape, device, stream });
    created.push(t);
    return t;
  };
  try {
    const data = place(weight, 'u8', weight.shape);
    const scales = place(scale, 'fp8e4m3', wantScale);
    const global = place(gs, 'f32', [gsCount]);
    return new Nvfp4Tensor(data, scales, global, [...lead, K]);
  } catch (e) {
    for (const t of created) t.dispose();
    throw e;
  }
}
