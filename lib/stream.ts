import { isCapturing } from './capture';
import { MoeError } from './errors';
import { native } from './native';
import { EVENT, STREAM, checkDevice, checkEvent, checkOptions, checkStream, deviceIndex, keys, type Device } from './validate';
import { defaultDevice } from './device';

// A collected Stream is destroyed without waiting: its queued work still runs, and the
// allocator reuses the memory it touched only after that work has finished.
const streamRegistry = new FinalizationRegistry<{ device: number; handle: bigint }>((h) => {
  try {
    native().destroyStream(h.device, h.handle);
  } catch {
    // the process is shutting down or the context is gone: nothing left to release
  }
});

/**
 * An ordered queue of work on one device. Ops enqueue and return at once; `synchronize()`
 * waits without blocking the event loop. On the CPU backend ops run when called, so a CPU
 * stream is always idle.
 */
export class Stream {
  readonly device: Device;
  /** cudaStream_t as a bigint (0n on the CPU), for interop with other CUDA libraries. */
  readonly handle: bigint;
  readonly isDefault: boolean;
  /** @internal native device index (-1 for the CPU) */
  readonly deviceIndex: number;
  /** @internal handle as a number, for the op argument buffer */
  readonly address: number;
  private _disposed = false;

  /** @internal use createStream() or defaultStream() */
  constructor(device: Device, handle: bigint, isDefault: boolean) {
    this.device = device;
    this.handle = handle;
    this.isDefault = isDefault;
    this.deviceIndex = deviceIndex(device);
    this.address = Number(handle);
    if (device !== 'cpu' && !isDefault) streamRegistry.register(this, { device: this.deviceIndex, handle }, this);
  }

  get disposed(): boolean {
    return this._disposed;
  }

  /** Resolves once all work queued so far has finished; rejects with E_CUDA if any failed. */
  async synchronize(): Promise<void> {
    checkStream(this, 'stream');
    if (this.device === 'cpu') return;
    if (isCapturing(this)) {
      throw new MoeError('E_CAPTURE', 'stream.synchronize(): the stream is being captured into a graph');
    }
    await native().streamSynchronize(this.deviceIndex, this.handle);
  }

  /** True when all queued work has finished. */
  query(): boolean {
    checkStream(this, 'stream');
    if (this.device === 'cpu') return true;
    return native().streamQuery(this.deviceIndex, this.handle);
  }

  /** Makes later work on this stream wait until `event` has completed. */
  waitEvent(event: Event): void {
    checkStream(this, 'stream');
    checkEvent(event, 'event', this.device);
    if (this.device === 'cpu') return;
    native().streamWaitEvent(this.deviceIndex, this.handle, event.handle);
  }

  /**
   * Destroys a created stream without waiting: work already queued on it still runs, tensors
   * allocated or used on it stay valid (their memory is reused only after that work), and work
   * enqueued later on the device's default stream runs after it. Other streams that read what
   * it wrote must wait for it themselves (an Event recorded before dispose, or `await using`).
   * The default stream is never destroyed.
   */
  dispose(): void {
    if (this._disposed || this.isDefault) return;
    this._disposed = true;
    if (this.device !== 'cpu') {
      streamRegistry.unregister(this);
      native().destroyStream(this.deviceIndex, this.handle);
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Disposes the stream and resolves once the work queued on it has finished. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this._disposed || this.isDefault || this.device === 'cpu') {
      this.dispose();
      return;
    }
    const done = new Event(this.device).record(this);
    this.dispose();
    try {
      await done.wait();
    } finally {
      done.dispose();
    }
  }
}
Object.defineProperty(Stream.prototype, STREAM, { value: true });

// Indexed by native device index + 1 (the CPU is -1): the per-op path looks defaults up here.
const defaults: (Stream | undefined)[] = [];

/** @internal The default stream of an already validated device. */
export function defaultStreamOf(device: Device): Stream {
  const i = deviceIndex(device);
  let s = defaults[i + 1];
  if (!s) {
    s = new Stream(device, device === 'cpu' ? 0n : native().defaultStream(i), true);
    defaults[i + 1] = s;
  }
  return s;
}

/** The default stream of a device (created on first use, never destroyed). */
export function defaultStream(device: Device | 'cuda' = defaultDevice()): Stream {
  return defaultStreamOf(checkDevice(device, 'device'));
}

/** A new stream on a device; dispose() it when done. */
export function createStream(device: Device | 'cuda' = defaultDevice()): Stream {
  const d = checkDevice(device, 'device');
  return new Stream(d, d === 'cpu' ? 0n : native().createStream(deviceIndex(d)), false);
}

/** @internal An optional `stream` option of an op on `device`: the device's default when absent. */
export function resolveStream(stream: unknown, device: Device, argument = 'stream'): Stream {
  if (stream === undefined) return defaultStreamOf(device);
  return checkStream<Stream>(stream, argument, device);
}

const eventRegistry = new FinalizationRegistry<{ device: number; handle: bigint }>((h) => {
  try {
    native().destroyEvent(h.device, h.handle);
  } catch {
    // see streamRegistry
  }
});

const EVENT_OPTIONS = keys('timing');

/** A marker in a stream: record it, wait for it, order other streams after it, time between two. */
export class Event {
  readonly device: Device;
  readonly handle: bigint;
  readonly timing: boolean;
  private _disposed = false;
  private _hostTime: number | undefined;

  constructor(device: Device | 'cuda' = defaultDevice(), options: { timing?: boolean } = {}) {
    this.device = checkDevice(device, 'device');
    const o = checkOptions(options, 'options', EVENT_OPTIONS);
    if (o.timing !== undefined && typeof o.timing !== 'boolean') {
      throw new MoeError('E_ARGUMENT', `options.timing: expected true or false, got ${String(o.timing)}`);
    }
    this.timing = (o.timing as boolean | undefined) ?? false;
    if (this.device === 'cpu') {
      this.handle = 0n;
    } else {
      this.handle = native().createEvent(deviceIndex(this.device), this.timing);
      eventRegistry.register(this, { device: deviceIndex(this.device), handle: this.handle }, this);
    }
  }

  get disposed(): boolean {
    return this._disposed;
  }

  /** Records the event at the current end of `stream` (default: the device's default stream). */
  record(stream?: Stream): this {
    checkEvent(this, 'event');
    const s = resolveStream(stream, this.device);
    if (this.device === 'cpu') this._hostTime = performance.now();
    else native().recordEvent(deviceIndex(this.device), this.handle, s.handle);
    return this;
  }

  /** Resolves once the work before the last record() has finished. */
  async wait(): Promise<void> {
    checkEvent(this, 'event');
    if (this.device === 'cpu') return;
    await native().eventSynchronize(deviceIndex(this.device), this.handle);
  }

  query(): boolean {
    checkEvent(this, 'event');
    if (this.device === 'cpu') return true;
    return native().eventQuery(deviceIndex(this.device), this.handle);
  }

  /** Milliseconds from this event to `end`; both recorded, completed and created with { timing: true }. */
  elapsedMs(end: Event): number {
    checkEvent(this, 'event');
    checkEvent(end, 'end', this.device);
    if (!this.timing || !end.timing) {
      throw new MoeError('E_ARGUMENT', 'elapsedMs: both events must be created with { timing: true }');
    }
    if (this.device === 'cpu') {
      if (this._hostTime === undefined || end._hostTime === undefined) {
        throw new MoeError('E_ARGUMENT', 'elapsedMs: both events must be recorded first');
      }
      return end._hostTime - this._hostTime;
    }
    return native().eventElapsedMs(deviceIndex(this.device), this.handle, end.handle);
  }

  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    if (this.device !== 'cpu') {
      eventRegistry.unregister(this);
      native().destroyEvent(deviceIndex(this.device), this.handle);
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
Object.defineProperty(Event.prototype, EVENT, { value: true });

export { isCapturing };
