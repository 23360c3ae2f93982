import { openCaptures, isCapturing, type CapturedMemory } from './capture';
import { defaultDevice } from './device';
import { DTYPES, type ArrayFor, type DType } from './dtype';
import { MoeError, describe } from './errors';
import { native } from './native';
import { Event, resolveStream, type Stream } from './stream';
import {
  MAX_ELEMENTS,
  TENSOR,
  checkDType,
  checkDevice,
  checkOptions,
  checkShape,
  elementLimit,
  deviceIndex,
  keys,
  product,
  type Device,
} from './validate';

export { MAX_ELEMENTS };

/**
 * Memory behind one or more tensors (views share it). Freed when the last tensor using it is
 * disposed or collected, and not before a graph that captured work on it is disposed.
 * @internal
 */
export class Storage implements CapturedMemory {
  readonly device: Device;
  readonly ptr: bigint;
  readonly bytes: number;
  readonly owned: boolean;
  /** The stream it was allocated on: its reuse is ordered on that stream. */
  readonly stream: Stream | undefined;
  /** Other streams that used it; its reuse waits for the work queued on them. */
  readonly usedOn = new Set<bigint>();
  private _refs = 1;

  constructor(device: Device, ptr: bigint, bytes: number, owned: boolean, stream: Stream | undefined) {
    this.device = device;
    this.ptr = ptr;
    this.bytes = bytes;
    this.owned = owned;
    this.stream = stream;
  }

  get alive(): boolean {
    return this._refs > 0;
  }

  retain(): void {
    this._refs++;
  }

  release(): void {
    if (this._refs <= 0) return;
    if (--this._refs > 0 || !this.owned) return;
    if (this.device === 'cpu') native().hostFree(this.ptr, this.bytes);
    else if (this.ptr !== 0n) native().deviceFree(deviceIndex(this.device), this.ptr, this.bytes, [...this.usedOn]);
  }

  static allocate(device: Device, bytes: number, stream: Stream, zero: boolean): Storage {
    if (device === 'cpu') return new Storage(device, native().hostAlloc(bytes, zero), bytes, true, stream);
    const b = native();
    const ptr = b.deviceAlloc(deviceIndex(device), bytes, stream.handle);
    const s = new Storage(device, ptr, bytes, true, stream);
    if (zero) b.memset(deviceIndex(device), ptr, 0, bytes, stream.handle);
    return s;
  }
}

const registry = new FinalizationRegistry<Storage>((storage) => {
  try {
    storage.release();
  } catch {
    // a backstop only: failures here have no one to report to
  }
});

export interface CreateOptions<D extends DType = DType> {
  dtype?: D;
  device?: Device | 'cuda';
  /** Stream whose order the allocation (and, for zeros/fromArray, the fill) follows. */
  stream?: Stream;
}

/** A dense, row-major (contiguous) n-dimensional array on the CPU or a CUDA device. */
export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly device: Device;
  /** Offset of element 0 in the underlying storage, in bytes. */
  readonly byteOffset: number;
  /** @internal native device index (-1 for the CPU), cached for the per-op path */
  readonly deviceIndex: number;
  /** Number of elements. */
  readonly numel: number;
  /** Bytes of the elements. */
  readonly byteLength: number;
  /** @internal dataPtr as a number (exact: addresses are below 2^53), for the op argument buffer */
  readonly address: number;
  private _storage: Storage | null;
  private _ptr: bigint;

  /** @internal use empty(), zeros(), fromArray(), fromPointer() */
  constructor(storage: Storage, dtype: D, shape: readonly number[], byteOffset: number) {
    this._storage = storage;
    this.dtype = dtype;
    this.shape = Object.freeze(shape.slice());
    this.device = storage.device;
    this.byteOffset = byteOffset;
    this.deviceIndex = deviceIndex(storage.device);
    // the shape is frozen: what the per-op path reads is computed once
    this.numel = product(this.shape);
    this.byteLength = this.numel * DTYPES[dtype].bytes;
    this._ptr = storage.ptr + BigInt(byteOffset);
    this.address = Number(this._ptr);
    registry.register(this, storage, this);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get disposed(): boolean {
    return this._storage === null;
  }

  /** Address of element 0 (device or host), for interop; throws E_DISPOSED after dispose(). */
  get dataPtr(): bigint {
    this.storage('tensor');
    return this._ptr;
  }

  /** @internal the storage, or E_DISPOSED naming `argument`. */
  storage(argument: string): Storage {
    if (this._storage === null) throw new MoeError('E_DISPOSED', `${argument}: the tensor was disposed`);
    return this._storage;
  }

  /** A tensor of another shape over the same elements; -1 stands for the size that fits. */
  reshape(shape: readonly number[]): Tensor<D> {
    const storage = this.storage('tensor');
    const dims = Array.isArray(shape) ? shape.slice() : shape;
    if (Array.isArray(dims)) {
      const free = dims.indexOf(-1);
      if (free >= 0 && dims.indexOf(-1, free + 1) < 0) {
        const rest = product(dims.filter((_, i) => i !== free));
        if (rest > 0 && this.numel % rest === 0) dims[free] = this.numel / rest;
      }
    }
    const s = checkShape(dims, 'shape', elementLimit(this.dtype));
    if (product(s) !== this.numel) {
      throw new MoeError('E_SHAPE', `shape: ${describe(shape)} does not hold the ${this.numel} elements of [${this.shape}]`);
    }
    storage.retain();
    return new Tensor(storage, this.dtype, s, this.byteOffset);
  }

  /** Rows start..end (exclusive) along the first dimension, as a view. */
  slice(start: number, end: number = this.shape[0] ?? 0): Tensor<D> {
    const storage = this.storage('tensor');
    if (this.ndim === 0) throw new MoeError('E_SHAPE', 'slice: a 0-d tensor has no rows');
    const rows = this.shape[0];
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > rows || start > end) {
      throw new MoeError('E_SHAPE', `slice: expected 0 <= start <= end <= ${rows}, got start=${describe(start)}, end=${describe(end)}`);
    }
    const rowBytes = (this.numel / Math.max(rows, 1)) * DTYPES[this.dtype].bytes;
    storage.retain();
    return new Tensor(storage, this.dtype, [end - start, ...this.shape.slice(1)], this.byteOffset + start * rowBytes);
  }

  /** Copies the elements to a new JS array: f16, bf16 and fp8e4m3 decode (exactly) to f32. */
  async toArray(options: { stream?: Stream } = {}): Promise<ArrayFor<D>> {
    const storage = this.storage('tensor');
    checkOptions(options, 'options', STREAM_OPTION);
    if (this.device !== 'cpu') {
      const host = await this.copyTo('cpu', options);
      try {
        return await host.toArray();
      } finally {
        host.dispose();
      }
    }
    const b = native();
    const n = this.numel;
    switch (this.dtype) {
      case 'f32': {
        const out = new Float32Array(n);
        b.hostRead(this.dataPtr, out);
        return out as ArrayFor<D>;
      }
      case 'i32': {
        const out = new Int32Array(n);
        b.hostRead(this.dataPtr, out);
        return out as ArrayFor<D>;
      }
      case 'i64': {
        const out = new BigInt64Array(n);
        b.hostRead(this.dataPtr, out);
        return out as ArrayFor<D>;
      }
      case 'u8': {
        const out = new Uint8Array(n);
        b.hostRead(this.dataPtr, out);
        return out as ArrayFor<D>;
      }
      default: {
        const tmp = Storage.allocate('cpu', n * 4, resolveStream(undefined, 'cpu'), false);
        try {
          b.convert(-1, 0n, storage.ptr + BigInt(this.byteOffset), DTYPES[this.dtype].id, tmp.ptr, DTYPES.f32.id, n);
          const out = new Float32Array(n);
          b.hostRead(tmp.ptr, out);
          return out as ArrayFor<D>;
        } finally {
          tmp.release();
        }
      }
    }
  }

  /** The raw bytes of the elements (f16/bf16 bit patterns, e4m3 codes, ...). */
  async toBytes(options: { stream?: Stream } = {}): Promise<Uint8Array> {
    this.storage('tensor');
    checkOptions(options, 'options', STREAM_OPTION);
    const out = new Uint8Array(this.byteLength);
    if (this.device === 'cpu') {
      native().hostRead(this.dataPtr, out);
      return out;
    }
    const stream = resolveStream(options.stream, this.device);
    refuseDuringCapture(stream, 'toBytes');
    useOn(stream, [this]);
    await native().copyToHostAsync(deviceIndex(this.device), out, this.dataPtr, out.byteLength, stream.handle);
    return out;
  }

  /**
   * A copy on `device`. `stream` (on the source device for device-to-host and peer copies,
   * else on the target) orders the copy; the promise resolves when the copy can be used.
   */
  async copyTo(device: Device | 'cuda', options: { stream?: Stream } = {}): Promise<Tensor<D>> {
    const src = this.storage('tensor');
    checkOptions(options, 'options', STREAM_OPTION);
    const target = checkDevice(device, 'device');
    const bytes = this.byteLength;
    const b = native();
    if (target === 'cpu') {
      const stream = this.device === 'cpu' ? undefined : resolveStream(options.stream, this.device);
      if (stream) refuseDuringCapture(stream, 'copyTo("cpu")');
      const t = new Tensor(Storage.allocate('cpu', bytes, resolveStream(undefined, 'cpu'), false), this.dtype, this.shape, 0);
      if (!stream) {
        b.hostCopy(t.dataPtr, this.dataPtr, bytes);
        return t;
      }
      useOn(stream, [this]);
      try {
        await b.copyToHostAsync(deviceIndex(this.device), t.dataPtr, this.dataPtr, bytes, stream.handle);
      } catch (e) {
        t.dispose();
        throw e;
      }
      return t;
    }
    if (this.device === 'cpu') {
      const stream = resolveStream(options.stream, target);
      refuseDuringCapture(stream, 'copyTo');
      const out = empty(this.shape, { dtype: this.dtype, device: target, stream });
      b.copyToDevice(deviceIndex(target), out.dataPtr, this.dataPtr, bytes, stream.handle);
      return out;
    }
    if (this.device === target) {
      const stream = resolveStream(options.stream, target);
      const out = empty(this.shape, { dtype: this.dtype, device: target, stream });
      useOn(stream, [this, out]);
      b.copyDeviceToDevice(deviceIndex(target), out.dataPtr, this.dataPtr, bytes, stream.handle);
      return out;
    }
    // Peer copy: issued on the target's stream after the source stream's queued work, and the
    // source stream then waits for the copy, so neither side reuses memory the copy touches.
    const srcStream = resolveStream(options.stream, this.device);
    const dstStream = resolveStream(undefined, target);
    const out = empty(this.shape, { dtype: this.dtype, device: target, stream: dstStream });
    refuseDuringCapture(srcStream, 'copyTo');
    refuseDuringCapture(dstStream, 'copyTo');
    const before = new Event(this.device).record(srcStream);
    b.streamWaitEvent(deviceIndex(target), dstStream.handle, before.handle);
    b.copyPeer(deviceIndex(target), out.dataPtr, deviceIndex(this.device), src.ptr + BigInt(this.byteOffset), bytes, dstStream.handle);
    const after = new Event(target).record(dstStream);
    b.streamWaitEvent(deviceIndex(this.device), srcStream.handle, after.handle);
    before.dispose();
    after.dispose();
    return out;
  }

  /** Releases this tensor's hold on its memory (views keep it alive). Idempotent. */
  dispose(): void {
    const s = this._storage;
    if (s === null) return;
    this._storage = null;
    registry.unregister(this);
    s.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(', ')}] on ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

Object.defineProperty(Tensor.prototype, TENSOR, { value: true });

function refuseDuringCapture(stream: Stream, what: string): void {
  if (isCapturing(stream)) {
    throw new MoeError('E_CAPTURE', `${what}: the stream is being captured into a graph; read results after replaying it`);
  }
}

/**
 * Records that `tensors` are used by work queued on `stream`: their memory is not reused
 * before that work finishes, and a graph being captured on `stream` keeps them alive.
 * Every op calls this before it enqueues. @internal
 */
export function useOn(stream: Stream, tensors: readonly Tensor[]): void {
  if (stream.device === 'cpu') return;
  const capture = openCaptures.size === 0 ? undefined : openCaptures.get(stream.handle);
  for (const t of tensors) {
    const s = t.storage('tensor');
    // by object: a new stream may reuse the handle of a destroyed one
    if (s.stream !== stream) s.usedOn.add(stream.handle);
    if (capture && !capture.has(s)) {
      s.retain();
      capture.add(s);
    }
  }
}

/** An uninitialized tensor. */
export function empty<D extends DType = 'f32'>(shape: readonly number[], options: CreateOptions<D> = {}): Tensor<D> {
  return create(shape, options, false);
}

/** A tensor of zeros (all bits zero). */
export function zeros<D extends DType = 'f32'>(shape: readonly number[], options: CreateOptions<D> = {}): Tensor<D> {
  return create(shape, options, true);
}

const CREATE_OPTIONS = keys('dtype', 'device', 'stream');
const FROM_OPTIONS = keys('dtype', 'device', 'stream', 'shape');
const STREAM_OPTION = keys('stream');

function create<D extends DType>(shape: readonly number[], options: CreateOptions<D>, zero: boolean): Tensor<D> {
  checkOptions(options, 'options', CREATE_OPTIONS);
  const dtype = checkDType(options.dtype ?? 'f32', 'dtype') as D;
  const s = checkShape(shape, 'shape', elementLimit(dtype));
  const device = options.device === undefined ? defaultDevice() : checkDevice(options.device, 'device');
  const stream = resolveStream(options.stream, device);
  const bytes = product(s) * DTYPES[dtype].bytes;
  return new Tensor(Storage.allocate(device, bytes, stream, zero), dtype, s, 0);
}

type NestedNumbers = number | bigint | readonly NestedNumbers[];

function flatten(data: unknown, argument: string): { values: ArrayLike<number | bigint>; shape: number[] } {
  if (ArrayBuffer.isView(data) && !(data instanceof DataView)) {
    return { values: data as unknown as ArrayLike<number | bigint>, shape: [(data as unknown as ArrayLike<number>).length] };
  }
  if (!Array.isArray(data)) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected an array, a nested array or a TypedArray of numbers, got ${describe(data)}`);
  }
  const shape: number[] = [];
  let level: unknown = data;
  while (Array.isArray(level)) {
    shape.push(level.length);
    level = level[0];
  }
  const values: (number | bigint)[] = [];
  const walk = (node: unknown, depth: number): void => {
    if (depth === shape.length) {
      if (typeof node !== 'number' && typeof node !== 'bigint') {
        throw new MoeError('E_ARGUMENT', `${argument}: expected numbers, got ${describe(node)}`);
      }
      values.push(node);
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) {
      throw new MoeError('E_SHAPE', `${argument}: ragged nested array (expected length ${shape[depth]} at depth ${depth})`);
    }
    for (const child of node) walk(child, depth + 1);
  };
  walk(data, 0);
  return { values, shape };
}

const INT_RANGE: Partial<Record<DType, [number, number]>> = {
  u8: [0, 255],
  i32: [-(2 ** 31), 2 ** 31 - 1],
  i64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

/** Host bytes of `values` in `dtype`, converted with the reference backend's rounding. */
function encode(values: ArrayLike<number | bigint>, dtype: DType, argument: string): ArrayBufferView {
  const n = values.length;
  const range = INT_RANGE[dtype];
  if (range) {
    const out = dtype === 'u8' ? new Uint8Array(n) : dtype === 'i32' ? new Int32Array(n) : new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (typeof v === 'bigint') {
        const fits = dtype === 'i64' ? BigInt.asIntN(64, v) === v : v >= BigInt(range[0]) && v <= BigInt(range[1]);
        if (!fits) throw new MoeError('E_ARGUMENT', `${argument}[${i}]: ${v}n does not fit ${dtype}`);
        if (dtype === 'i64') (out as BigInt64Array)[i] = v;
        else (out as Int32Array | Uint8Array)[i] = Number(v);
        continue;
      }
      if (!Number.isInteger(v) || v < range[0] || v > range[1]) {
        throw new MoeError('E_ARGUMENT', `${argument}[${i}]: expected an integer in [${range[0]}, ${range[1]}] for ${dtype}, got ${describe(v)}`);
      }
      if (dtype === 'i64') (out as BigInt64Array)[i] = BigInt(v);
      else (out as Int32Array | Uint8Array)[i] = v;
    }
    return out;
  }
  const f32 = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (typeof v !== 'number') throw new MoeError('E_ARGUMENT', `${argument}[${i}]: expected a number for ${dtype}, got ${describe(v)}`);
    f32[i] = v;
  }
  if (dtype === 'f32') return f32;
  const bytes = new Uint8Array(n * DTYPES[dtype].bytes);
  const b = native();
  const src = Storage.allocate('cpu', n * 4, resolveStream(undefined, 'cpu'), false);
  const dst = Storage.allocate('cpu', bytes.byteLength, resolveStream(undefined, 'cpu'), false);
  try {
    b.hostWrite(src.ptr, f32);
    b.convert(-1, 0n, src.ptr, DTYPES.f32.id, dst.ptr, DTYPES[dtype].id, n);
    b.hostRead(dst.ptr, bytes);
  } finally {
    src.release();
    dst.release();
  }
  return bytes;
}

export interface FromArrayOptions<D extends DType = DType> extends CreateOptions<D> {
  /** The shape; defaults to the nesting of `data` (or its length for a flat array). */
  shape?: readonly number[];
}

/**
 * A tensor holding `data` (numbers, nested arrays or a TypedArray). Floats are rounded to
 * `dtype` to nearest even (e4m3 saturating at 448); integers must fit `dtype` exactly.
 */
export function fromArray<D extends DType = 'f32'>(
  data: NestedNumbers | ArrayLike<number> | ArrayLike<bigint>,
  options: FromArrayOptions<D> = {},
): Tensor<D> {
  checkOptions(options, 'options', FROM_OPTIONS);
  const flat = flatten(data, 'data');
  const inferred = data instanceof Int32Array ? 'i32' : data instanceof BigInt64Array ? 'i64' : data instanceof Uint8Array ? 'u8' : 'f32';
  const dtype = checkDType(options.dtype ?? inferred, 'dtype') as D;
  const shape = checkShape(options.shape ?? flat.shape, 'shape', elementLimit(dtype));
  if (product(shape) !== flat.values.length) {
    throw new MoeError('E_SHAPE', `shape: ${describe(shape)} holds ${product(shape)} elements but data has ${flat.values.length}`);
  }
  return fromBytes(encode(flat.values, dtype, 'data'), { ...options, dtype, shape });
}

/** A tensor whose bytes are `bytes` as they are (bit patterns of `dtype`, little-endian). */
export function fromBytes<D extends DType = 'u8'>(
  bytes: ArrayBufferView,
  options: CreateOptions<D> & { shape: readonly number[] },
): Tensor<D> {
  checkOptions(options, 'options', FROM_OPTIONS);
  if (!ArrayBuffer.isView(bytes)) throw new MoeError('E_ARGUMENT', `bytes: expected a TypedArray or DataView, got ${describe(bytes)}`);
  const dtype = checkDType(options.dtype ?? 'u8', 'dtype') as D;
  const shape = checkShape(options.shape, 'shape', elementLimit(dtype));
  const need = product(shape) * DTYPES[dtype].bytes;
  if (bytes.byteLength !== need) {
    throw new MoeError('E_SHAPE', `bytes: ${dtype}[${shape}] takes ${need} bytes, got ${bytes.byteLength}`);
  }
  const device = options.device === undefined ? defaultDevice() : checkDevice(options.device, 'device');
  const stream = resolveStream(options.stream, device);
  refuseDuringCapture(stream, 'fromBytes');
  const t = empty(shape, { dtype, device, stream });
  const b = native();
  if (t.device === 'cpu') b.hostWrite(t.dataPtr, bytes);
  else b.copyToDevice(deviceIndex(t.device), t.dataPtr, bytes, need, stream.handle);
  return t;
}

/**
 * A tensor over memory someone else owns (a CUDA pointer from another library, say): it is
 * never freed here, and must outlive every use of the tensor.
 */
export function fromPointer<D extends DType = 'f32'>(ptr: bigint, options: CreateOptions<D> & { shape: readonly number[] }): Tensor<D> {
  checkOptions(options, 'options', FROM_OPTIONS);
  if (typeof ptr !== 'bigint' || ptr < 0n || ptr > 2n ** 53n) {
    throw new MoeError('E_ARGUMENT', `ptr: expected a non-negative bigint address below 2^53, got ${describe(ptr)}`);
  }
  const dtype = checkDType(options.dtype ?? 'f32', 'dtype') as D;
  const shape = checkShape(options.shape, 'shape', elementLimit(dtype));
  const device = options.device === undefined ? defaultDevice() : checkDevice(options.device, 'device');
  const bytes = product(shape) * DTYPES[dtype].bytes;
  if (ptr === 0n && bytes > 0) throw new MoeError('E_ARGUMENT', 'ptr: a null pointer cannot hold elements');
  if (ptr % BigInt(DTYPES[dtype].bytes) !== 0n) {
    throw new MoeError('E_ARGUMENT', `ptr: ${ptr}n is not aligned to ${DTYPES[dtype].bytes} bytes for ${dtype}`);
  }
  const stream = options.stream === undefined ? undefined : resolveStream(options.stream, device);
  return new Tensor(new Storage(device, ptr, bytes, false, stream), dtype, shape, 0);
}

/** True when the byte ranges of two tensors overlap. @internal */
export function overlaps(a: Tensor, b: Tensor): boolean {
  if (a.storage('a') !== b.storage('b')) return false;
  const a0 = a.byteOffset, a1 = a0 + a.byteLength, b0 = b.byteOffset, b1 = b0 + b.byteLength;
  return a0 < b1 && b0 < a1;
}
