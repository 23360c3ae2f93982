// Every check of a user-supplied argument lives here, so that each op states its rules once
// and every failure is a MoeError that names the argument, what was expected and what was
// given. This module sits below the classes it checks: it recognises a Tensor, Stream, Event or
// Nvfp4Tensor by a brand those classes carry, so no module above imports it back.
import { DTYPES, type DType } from './dtype';
import { MoeError, describe } from './errors';
import { cudaUnavailableReason, native } from './native';

/** Where a tensor lives: the host (`"cpu"`, the reference backend) or a CUDA device. */
export type Device = 'cpu' | `cuda:${number}`;

/** Kernels index elements with 32-bit integers. */
export const MAX_ELEMENTS = 2 ** 31 - 1;
/**
 * Byte tensors (u8, fp8e4m3) may be larger: they hold NVFP4 weights, whose kernels address an
 * expert's block with 64-bit strides (the packed codes of 256 DeepSeek-V3 experts are 3.8e9
 * bytes). Every op bounds the sizes it indexes with 32-bit integers itself.
 */
export const MAX_BYTE_ELEMENTS = 2 ** 40;

/** The element limit of a tensor of `dtype`. */
export function elementLimit(dtype: DType): number {
  return DTYPES[dtype].bytes === 1 ? MAX_BYTE_ELEMENTS : MAX_ELEMENTS;
}

/** @internal Brands of the classes the checks recognise. */
export const TENSOR: unique symbol = Symbol('@moe/kernels Tensor');
/** @internal */
export const STREAM: unique symbol = Symbol('@moe/kernels Stream');
/** @internal */
export const EVENT: unique symbol = Symbol('@moe/kernels Event');
/** @internal */
export const NVFP4: unique symbol = Symbol('@moe/kernels Nvfp4Tensor');
/** @internal Carried by the layouts expertLayout() returns. */
export const EXPERT_LAYOUT: unique symbol = Symbol('@moe/kernels ExpertLayout');

/** What the checks read of a tensor. @internal */
export interface TensorLike {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: Device;
  readonly disposed: boolean;
}

/** What the checks read of a stream or event. @internal */
export interface DeviceObject {
  readonly device: Device;
  readonly disposed: boolean;
}

function branded(value: unknown, brand: symbol): boolean {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[brand] === true;
}

export function isTensor(value: unknown): boolean {
  return branded(value, TENSOR);
}

export function isNvfp4Tensor(value: unknown): boolean {
  return branded(value, NVFP4);
}

// ---- options objects ---------------------------------------------------------------------

const EMPTY: Readonly<Record<string, unknown>> = Object.freeze({});

/**
 * An options object: undefined means none; anything but a plain object, or a key outside
 * `keys`, is E_ARGUMENT (a misspelt option would otherwise be ignored silently).
 */
export function checkOptions(value: unknown, argument: string, keys: ReadonlySet<string>): Readonly<Record<string, unknown>> {
  if (value === undefined) return EMPTY;
  if (value === null || typeof value !== 'object' || Array.isArray(value) || branded(value, TENSOR)) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected an options object, got ${describe(value)}`);
  }
  for (const k in value) {
    if (!keys.has(k)) {
      throw new MoeError('E_ARGUMENT', `${argument}: unknown option ${JSON.stringify(k)}; expected one of ${[...keys].join(', ')}`);
    }
  }
  return value as Record<string, unknown>;
}

/** An options object the call cannot do without: like checkOptions, but undefined is E_ARGUMENT too. */
export function checkRequiredOptions(value: unknown, argument: string, keys: ReadonlySet<string>): Readonly<Record<string, unknown>> {
  if (value === undefined) throw new MoeError('E_ARGUMENT', `${argument}: expected an options object, got undefined`);
  return checkOptions(value, argument, keys);
}

/** The keys of an options object, as checkOptions takes them. */
export function keys(...names: string[]): ReadonlySet<string> {
  return new Set(names);
}

// ---- scalars -----------------------------------------------------------------------------

export function checkInteger(value: unknown, argument: string, lo: number, hi: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < lo || value > hi) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected an integer in [${lo}, ${hi}], got ${describe(value)}`);
  }
  return value;
}

export function checkFinite(value: unknown, argument: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected a finite number, got ${describe(value)}`);
  }
  return value;
}

/** A number for which `ok` holds; `expected` says what that is, for the message. */
export function checkNumber(value: unknown, argument: string, ok: (v: number) => boolean, expected: string): number {
  if (typeof value !== 'number' || !ok(value)) throw new MoeError('E_ARGUMENT', `${argument}: expected ${expected}, got ${describe(value)}`);
  return value;
}

const U64_LIMIT = 1n << 64n;

/** An unsigned 64-bit integer: a bigint, or a number up to 2^53 - 1 (larger ones are inexact). */
export function checkUint64(value: unknown, argument: string): bigint {
  const big = typeof value === 'bigint' ? value : typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : undefined;
  if (big === undefined || big < 0n || big >= U64_LIMIT) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected an integer in [0, 2^64): a bigint, or a number up to 2^53 - 1, got ${describe(value)}`);
  }
  return big;
}

export function checkBoolean(value: unknown, argument: string): boolean {
  if (typeof value !== 'boolean') throw new MoeError('E_ARGUMENT', `${argument}: expected true or false, got ${describe(value)}`);
  return value;
}

export function checkOneOf<T extends string>(value: unknown, argument: string, allowed: readonly T[], code: 'E_ARGUMENT' | 'E_DTYPE' = 'E_ARGUMENT'): T {
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    throw new MoeError(code, `${argument}: expected ${allowed.map((a) => JSON.stringify(a)).join(' or ')}, got ${describe(value)}`);
  }
  return value as T;
}

export function checkFunction(value: unknown, argument: string): void {
  if (typeof value !== 'function') throw new MoeError('E_ARGUMENT', `${argument}: expected a function, got ${describe(value)}`);
}

/** A byte buffer: a Uint8Array (a Buffer is one). */
export function checkBytes(value: unknown, argument: string): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new MoeError('E_ARGUMENT', `${argument}: expected a Uint8Array, got ${describe(value)}`);
  return value;
}

/** A non-empty string. */
export function checkString(value: unknown, argument: string): string {
  if (typeof value !== 'string' || value === '') throw new MoeError('E_ARGUMENT', `${argument}: expected a non-empty string, got ${describe(value)}`);
  return value;
}

// ---- dtypes, shapes, devices --------------------------------------------------------------

export function checkDType(value: unknown, argument: string): DType {
  if (typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPES, value)) return value as DType;
  throw new MoeError('E_DTYPE', `${argument}: expected one of ${Object.keys(DTYPES).join(', ')}, got ${describe(value)}`);
}

/** Elements of a shape. */
export function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A shape: non-negative integers, at most `limit` elements. Returns a copy. */
export function checkShape(value: unknown, argument: string, limit: number = MAX_ELEMENTS): number[] {
  if (!Array.isArray(value)) throw new MoeError('E_SHAPE', `${argument}: expected an array of sizes, got ${describe(value)}`);
  let numel = 1;
  for (let i = 0; i < value.length; i++) {
    const d = value[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
      throw new MoeError('E_SHAPE', `${argument}[${i}]: expected a non-negative integer size, got ${describe(d)}`);
    }
    numel *= d;
  }
  if (numel > limit) {
    throw new MoeError('E_SHAPE', `${argument}: ${describe(value)} has ${numel} elements; at most ${limit === MAX_ELEMENTS ? '2^31 - 1' : '2^40'} = ${limit} are supported`);
  }
  return value.slice();
}

/** Throws E_NO_CUDA with the reason when CUDA cannot be used. */
export function requireCuda(): void {
  const reason = cudaUnavailableReason();
  if (reason !== undefined) throw new MoeError('E_NO_CUDA', `no CUDA device is usable: ${reason}`);
}

/** A device argument ("cpu", "cuda", "cuda:N"); "cuda" means cuda:0. */
export function checkDevice(value: unknown, argument: string): Device {
  if (value === 'cpu') return 'cpu';
  if (typeof value === 'string') {
    const m = /^cuda(?::(\d+))?$/.exec(value);
    if (m) {
      requireCuda();
      const index = m[1] === undefined ? 0 : Number(m[1]);
      const count = native().deviceCount();
      if (index >= count) {
        throw new MoeError('E_DEVICE', `${argument}: cuda:${index} does not exist (this machine has ${count} CUDA devices)`);
      }
      return `cuda:${index}`;
    }
  }
  throw new MoeError('E_DEVICE', `${argument}: expected "cpu", "cuda" or "cuda:N", got ${describe(value)}`);
}

/** The native device index of a device: -1 for the CPU. */
export function deviceIndex(device: Device): number {
  return device === 'cpu' ? -1 : Number(device.slice(5));
}

// ---- tensors, streams, events --------------------------------------------------------------

/** A live tensor, optionally of given dtypes and on a given device. */
export function checkTensor<T extends TensorLike = TensorLike>(
  value: unknown,
  argument: string,
  dtypes?: readonly DType[],
  device?: Device,
): T {
  if (!branded(value, TENSOR)) throw new MoeError('E_ARGUMENT', `${argument}: expected a Tensor, got ${describe(value)}`);
  const t = value as T;
  if (t.disposed) throw new MoeError('E_DISPOSED', `${argument}: the tensor was disposed`);
  if (dtypes !== undefined && !dtypes.includes(t.dtype)) {
    throw new MoeError('E_DTYPE', `${argument}: expected dtype ${dtypes.join(' or ')}, got ${t.dtype}`);
  }
  if (device !== undefined && t.device !== device) {
    throw new MoeError('E_DEVICE', `${argument}: expected a tensor on ${device}, got one on ${t.device}`);
  }
  return t;
}

/** A caller-supplied output tensor of exactly this dtype, shape and device. */
export function checkOut<T extends TensorLike = TensorLike>(value: unknown, argument: string, dtype: DType, shape: readonly number[], device: Device): T {
  const t = checkTensor<T>(value, argument, [dtype], device);
  if (!sameShape(t.shape, shape)) throw new MoeError('E_SHAPE', `${argument}: expected shape [${shape}], got [${t.shape}]`);
  return t;
}

/** A tensor of exactly `shape` (E_SHAPE otherwise); `names` label the dimensions in the message. */
export function checkShapeIs(t: TensorLike, argument: string, shape: readonly number[], names?: readonly string[]): void {
  if (!sameShape(t.shape, shape)) {
    const want = names ? `[${names.map((n, i) => `${n} = ${shape[i]}`).join(', ')}]` : `[${shape}]`;
    throw new MoeError('E_SHAPE', `${argument}: expected shape ${want}, got [${t.shape}]`);
  }
}

/** A tensor with `ndim` dimensions (E_SHAPE otherwise); `layout` names them, e.g. "[tokens, experts]". */
export function checkRank(t: TensorLike, argument: string, ndim: number, layout: string): void {
  if (t.shape.length !== ndim) throw new MoeError('E_SHAPE', `${argument}: expected ${layout}, got shape [${t.shape}]`);
}

/**
 * checkOut for the shape [...like without its last size, last], compared without building it:
 * the per-op path of an op whose output replaces the last dimension of an input.
 */
export function checkOutLastDim<T extends TensorLike = TensorLike>(
  value: unknown,
  argument: string,
  dtypes: readonly DType[],
  like: readonly number[],
  last: number,
  device: Device,
): T {
  const t = checkTensor<T>(value, argument, dtypes, device);
  const s = t.shape;
  const n = like.length;
  let ok = s.length === n && n > 0 && s[n - 1] === last;
  for (let i = 0; ok && i < n - 1; i++) ok = s[i] === like[i];
  if (!ok) throw new MoeError('E_SHAPE', `${argument}: expected shape [${[...like.slice(0, -1), last]}], got [${s}]`);
  return t;
}

/** A tensor whose data the kernels read with `bytes`-wide vector loads. */
export function checkAligned(address: number, numel: number, argument: string, bytes: number): void {
  // a number, not the bigint dataPtr: addresses are below 2^53, and bigint arithmetic allocates
  if (numel > 0 && address % bytes !== 0) {
    throw new MoeError('E_ARGUMENT', `${argument}: the data must start at a ${bytes}-byte aligned address, got 0x${address.toString(16)}`);
  }
}

/** What the checks read of an NVFP4 tensor. @internal */
export interface Nvfp4Like {
  readonly shape: readonly number[];
  readonly device: Device;
  readonly disposed: boolean;
}

/** A live Nvfp4Tensor (all three parts alive), on `device` when given. */
export function checkNvfp4<T extends Nvfp4Like = Nvfp4Like>(value: unknown, argument: string, device?: Device): T {
  if (!branded(value, NVFP4)) throw new MoeError('E_ARGUMENT', `${argument}: expected an Nvfp4Tensor, got ${describe(value)}`);
  const q = value as T;
  if (q.disposed) throw new MoeError('E_DISPOSED', `${argument}: the NVFP4 tensor (or one of its parts) was disposed`);
  if (device !== undefined && q.device !== device) {
    throw new MoeError('E_DEVICE', `${argument}: expected a tensor on ${device}, got one on ${q.device}`);
  }
  return q;
}

/** What the checks read of an expert layout. @internal */
export interface ExpertLayoutLike {
  readonly form: 'contiguous' | 'masked';
  readonly numExperts: number;
  readonly rows: number;
  readonly counts: TensorLike;
  readonly offsets: TensorLike;
}

/**
 * A layout made by expertLayout() (a copy or a hand-made object is refused: kernels trust its
 * sizes), with its counts and offsets alive on `device`.
 */
export function checkExpertLayout<T extends ExpertLayoutLike = ExpertLayoutLike>(value: unknown, argument: string, device: Device): T {
  if (!branded(value, EXPERT_LAYOUT)) throw new MoeError('E_ARGUMENT', `${argument}: expected a layout returned by expertLayout(), got ${describe(value)}`);
  const l = value as T;
  checkTensor(l.counts, `${argument}.counts`, ['i32'], device);
  checkTensor(l.offsets, `${argument}.offsets`, ['i32'], device);
  return l;
}

/** A live Stream, on `device` when given. */
export function checkStream<T extends DeviceObject = DeviceObject>(value: unknown, argument: string, device?: Device): T {
  if (!branded(value, STREAM)) throw new MoeError('E_ARGUMENT', `${argument}: expected a Stream, got ${describe(value)}`);
  const s = value as T;
  if (s.disposed) throw new MoeError('E_DISPOSED', `${argument}: the stream was disposed`);
  if (device !== undefined && s.device !== device) {
    throw new MoeError('E_DEVICE', `${argument}: expected a stream on ${device}, got one on ${s.device}`);
  }
  return s;
}

/** A live Event, on `device` when given. */
export function checkEvent<T extends DeviceObject = DeviceObject>(value: unknown, argument: string, device?: Device): T {
  if (!branded(value, EVENT)) throw new MoeError('E_ARGUMENT', `${argument}: expected an Event, got ${describe(value)}`);
  const e = value as T;
  if (e.disposed) throw new MoeError('E_DISPOSED', `${argument}: the event was disposed`);
  if (device !== undefined && e.device !== device) {
    throw new MoeError('E_DEVICE', `${argument}: expected an event on ${device}, got one on ${e.device}`);
  }
  return e;
}
