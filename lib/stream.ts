import { checkDevice, defaultDevice, deviceIndex, type Device } from './device';
import { MoeError, describe } from './errors';
import { native } from './native';

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
  #disposed = false;

  /** @internal use createStream() or defaultStream() */
  constructor(device: Device, handle: bigint, isDefault: boolean) {
    this.device = device;
    this.handle = handle;
    this.isDefault = isDefault;
    this.deviceIndex = deviceIndex(device);
    if (device !== 'cpu' && !isDefault) streamRegistry.register(this, { device: deviceIndex(device), handle }, this);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Resolves once all work queued so far has finished; rejects with E_CUDA if any failed. */
  async synchronize(): Promise<void> {
    this.check('stream');
    if (this.device === 'cpu') return;
    if (isCapturing(this)) {
      throw new MoeError('E_CAPTURE', 'stream.synchronize(): the stream is being captured into a graph');
    }
    await native().streamSynchronize(this.deviceIndex, this.handle);
  }

  /** True when all queued work has finished. */
  query(): boolean {
    this.check('stream');
    if (this.device === 'cpu') return true;
    return native().streamQuery(this.deviceIndex, this.handle);
  }

  /** Makes later work on this stream wait until `event` has completed. */
  waitEvent(event: Event): void {
    this.check('stream');
    if (!(event instanceof Event)) throw new MoeError('E_ARGUMENT', `event: expected an Event, got ${describe(event)}`);
    event.check('event');
    if (event.device !== this.device) {
      throw new MoeError('E_DEVICE', `event: expected an event on ${this.device}, got one on ${event.device}`);
    }
    if (this.device === 'cpu') return;
    native().streamWaitEvent(this.deviceIndex, this.handle, event.handle);
  }

  /**
   * Destroys a created stream after its queued work has finished (this waits for it; tensors
   * allocated or used on the stream stay valid). The default stream is never destroyed.
   */
  dispose(): void {
    if (this.#disposed || this.isDefault) return;
    this.#disposed = true;
    if (this.device !== 'cpu') {
      streamRegistry.unregister(this);
      native().destroyStream(this.deviceIndex, this.handle);
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  check(argument: string): void {
    if (this.#disposed) throw new MoeError('E_DISPOSED', `${argument}: the stream was disposed`);
  }
}

const defaults = new Map<Device, Stream>();

/** The default stream of a device (created on first use, never destroyed). */
export function defaultStream(device: Device | 'cuda' = defaultDevice()): Stream {
  const d = checkDevice(device, 'device');
  let s = defaults.get(d);
  if (!s) {
    s = new Stream(d, d === 'cpu' ? 0n : native().defaultStream(deviceIndex(d)), true);
    defaults.set(d, s);
  }
  return s;
}

/** A new stream on a device; dispose() it when done. */
export function createStream(device: Device | 'cuda' = defaultDevice()): Stream {
  const d = checkDevice(device, 'device');
  return new Stream(d, d === 'cpu' ? 0n : native().createStream(deviceIndex(d)), false);
}

/** Validates an optional `stream` option against the device an op runs on. */
export function resolveStream(stream: unknown, device: Device, argument = 'stream'): Stream {
  if (stream === undefined) return defaultStream(device);
  if (!(stream instanceof Stream)) throw new MoeError('E_ARGUMENT', `${argument}: expected a Stream, got ${describe(stream)}`);
  stream.check(argument);
  if (stream.device !== device) {
    throw new MoeError('E_DEVICE', `${argument}: expected a stream on ${device}, got one on ${stream.device}`);
  }
  return stream;
}

const eventRegistry = new FinalizationRegistry<{ device: number; handle: bigint }>((h) => {
  try {
    native().destroyEvent(h.device, h.handle);
  } catch {
    // see streamRegistry
  }
});

/** A marker in a stream: record it, wait for it, order other streams after it, time between two. */
export class Event {
  readonly device: Device;
  readonly handle: bigint;
  readonly timing: boolean;
  #disposed = false;
  #hostTime: number | undefined;

  constructor(device: Device | 'cuda' = defaultDevice(), options: { timing?: boolean } = {}) {
    this.device = checkDevice(device, 'device');
    this.timing = options.timing ?? false;
    if (this.device === 'cpu') {
      this.handle = 0n;
    } else {
      this.handle = native().createEvent(deviceIndex(this.device), this.timing);
      eventRegistry.register(this, { device: deviceIndex(this.device), handle: this.handle }, this);
    }
  }

  /** Records the event at the current end of `stream` (default: the device's default stream). */
  record(stream?: Stream): this {
    this.check('event');
    const s = resolveStream(stream, this.device);
    if (this.device === 'cpu') this.#hostTime = performance.now();
    else native().recordEvent(deviceIndex(this.device), this.handle, s.handle);
    return this;
  }

  /** Resolves once the work before the last record() has finished. */
  async wait(): Promise<void> {
    this.check('event');
    if (this.device === 'cpu') return;
    await native().eventSynchronize(deviceIndex(this.device), this.handle);
  }

  query(): boolean {
    this.check('event');
    if (this.device === 'cpu') return true;
    return native().eventQuery(deviceIndex(this.device), this.handle);
  }

  /** Milliseconds from this event to `end`; both recorded, completed and created with { timing: true }. */
  elapsedMs(end: Event): number {
    this.check('event');
    end.check('end');
    if (!this.timing || !end.timing) {
      throw new MoeError('E_ARGUMENT', 'elapsedMs: both events must be created with { timing: true }');
    }
    if (end.device !== this.device) throw new MoeError('E_DEVICE', `end: expected an event on ${this.device}, got ${end.device}`);
    if (this.device === 'cpu') {
      if (this.#hostTime === undefined || end.#hostTime === undefined) {
        throw new MoeError('E_ARGUMENT', 'elapsedMs: both events must be recorded first');
      }
      return end.#hostTime - this.#hostTime;
    }
    return native().eventElapsedMs(deviceIndex(this.device), this.handle, end.handle);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.device !== 'cpu') {
      eventRegistry.unregister(this);
      native().destroyEvent(deviceIndex(this.device), this.handle);
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  check(argument: string): void {
    if (this.#disposed) throw new MoeError('E_DISPOSED', `${argument}: the event was disposed`);
  }
}

// Streams with an open graph capture, and the storages the capture touched (kept alive by
// the graph). Filled by graph.ts; read here so that synchronize() can refuse during capture.
export const openCaptures = new Map<bigint, Set<unknown>>();

export function isCapturing(stream: Stream): boolean {
  return stream.device !== 'cpu' && openCaptures.has(stream.handle);
}
