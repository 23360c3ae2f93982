// The NVFP4 tensor (three parts and a logical shape) and its import from a ModelOpt checkpoint.
import { defaultDevice } from '../device';
import { DTYPES, type DType } from '../dtype';
import { MoeError, describe } from '../errors';
import { resolveStream, type Stream } from '../stream';
import { Storage, Tensor, fromBytes } from '../tensor';
import {
  NVFP4,
  checkDevice,
  checkNvfp4,
  checkOptions,
  checkShape,
  MAX_BYTE_ELEMENTS,
  checkTensor,
  isTensor,
  keys,
  product,
  sameShape,
  type Device,
} from '../validate';

/** Elements per NVFP4 scale block (along the last dimension). */
export const NVFP4_BLOCK = 16;

// Set only while this package assembles parts it made to fit the shape (see assembleNvfp4).
let trusted = false;

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
    if (!trusted) checkParts(data, scales, globalScale, shape);
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
    checkNvfp4(this, 'tensor');
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
    return assembleNvfp4(data, scales, gs, rest);
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
}
Object.defineProperty(Nvfp4Tensor.prototype, NVFP4, { value: true });

function checkParts(data: Tensor<'u8'>, scales: Tensor<'fp8e4m3'>, globalScale: Tensor<'f32'>, shape: readonly number[]): void {
  // the logical shape counts 4-bit elements: twice the codes' bytes
  const s = checkShape(shape, 'shape', 2 * MAX_BYTE_ELEMENTS);
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
}

/** @internal An Nvfp4Tensor of parts this package made to fit `shape`, without re-checking them. */
export function assembleNvfp4(data: Tensor<'u8'>, scales: Tensor<'fp8e4m3'>, globalScale: Tensor<'f32'>, shape: readonly number[]): Nvfp4Tensor {
  trusted = true;
  try {
    return new Nvfp4Tensor(data, scales, globalScale, shape);
  } finally {
    trusted = false;
  }
}

const roundUp16 = (n: number): number => Math.ceil(n / 16) * 16;

/**
 * @internal Uninitialized parts for an NVFP4 tensor of shape [...shape[:-1], K] with one global
 * scale, in one allocation: an op that makes a quantized tensor pays for one allocation, not
 * three. Each part starts 16-byte aligned (the kernels' vector loads).
 */
export function allocateNvfp4(shape: readonly number[], device: Device, stream: Stream): Nvfp4Tensor {
  const n = shape.length;
  const K = shape[n - 1];
  const numel = product(shape);
  const dataBytes = numel / 2;
  const scalesAt = roundUp16(dataBytes);
  const gsAt = roundUp16(scalesAt + numel / NVFP4_BLOCK);
  const storage = Storage.allocate(device, gsAt + 4, stream, false);
  const dataShape = shape.slice();
  dataShape[n - 1] = K / 2;
  const scalesShape = shape.slice();
  scalesShape[n - 1] = K / NVFP4_BLOCK;
  const data = new Tensor<'u8'>(storage, 'u8', dataShape, 0);
  storage.retain();
  const scales = new Tensor<'fp8e4m3'>(storage, 'fp8e4m3', scalesShape, scalesAt);
  storage.retain();
  const gs = new Tensor<'f32'>(storage, 'f32', [1], gsAt);
  return assembleNvfp4(data, scales, gs, shape);
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

const FROM_CHECKPOINT_OPTIONS = keys('device', 'stream');

const CHECKPOINT_DTYPES: Record<string, DType> = {
  U8: 'u8', u8: 'u8', F8_E4M3: 'fp8e4m3', fp8e4m3: 'fp8e4m3', F32: 'f32', f32: 'f32',
};

/**
 * Builds an Nvfp4Tensor of logical shape [N, K] or [E, N, K] from a ModelOpt checkpoint's
 * tensors (see Nvfp4Checkpoint), validating their dtypes, shapes and sizes against each other.
 */
export function nvfp4FromCheckpoint(tensors: Nvfp4Checkpoint, options?: Nvfp4FromCheckpointOptions): Nvfp4Tensor {
  const o = checkOptions(options, 'options', FROM_CHECKPOINT_OPTIONS);
  if (tensors === null || typeof tensors !== 'object') {
    throw new MoeError('E_ARGUMENT', `tensors: expected { weight, weight_scale, weight_scale_2 }, got ${describe(tensors)}`);
  }
  const entries = tensors as unknown as Record<string, unknown>;
  for (const name of ['weight', 'weight_scale', 'weight_scale_2']) {
    if (entries[name] === undefined) throw new MoeError('E_ARGUMENT', `tensors.${name}: missing`);
  }
  const tensorEntries = [entries.weight, entries.weight_scale, entries.weight_scale_2].filter((v): v is Tensor => isTensor(v));
  const device: Device =
    o.device !== undefined ? checkDevice(o.device, 'device') : tensorEntries.length > 0 ? tensorEntries[0].device : defaultDevice();
  const stream = resolveStream(o.stream, device);

  // Shapes and host bytes (or tensors) of the three entries, validated one by one.
  type Part = { shape: number[]; tensor?: Tensor; bytes?: ArrayBufferView };
  const read = (name: string, dtypes: readonly DType[]): Part => {
    const v = entries[name];
    if (isTensor(v)) {
      const t = checkTensor<Tensor>(v, name, dtypes, device);
      return { shape: t.shape.slice(), tensor: t };
    }
    if (v === null || typeof v !== 'object') {
      throw new MoeError('E_ARGUMENT', `${name}: expected { data, shape, dtype? } or a Tensor, got ${describe(v)}`);
    }
    const e = v as Partial<Nvfp4CheckpointEntry>;
    if (!ArrayBuffer.isView(e.data)) throw new MoeError('E_ARGUMENT', `${name}.data: expected a TypedArray or DataView, got ${describe(e.data)}`);
    // codes and scales are byte tensors, which may pass 2^31 elements (all experts of a layer)
    const shape = checkShape(e.shape, `${name}.shape`, MAX_BYTE_ELEMENTS);
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
