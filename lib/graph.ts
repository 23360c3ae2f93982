import { openCaptures, type CapturedMemory } from './capture';
import { MoeError } from './errors';
import { native } from './native';
import type { Stream } from './stream';
import { checkFunction, checkStream, deviceIndex } from './validate';

const graphRegistry = new FinalizationRegistry<{ device: number; exec: bigint; storages: Set<CapturedMemory> }>((g) => {
  try {
    native().destroyGraph(g.device, g.exec);
  } catch {
    // backstop only
  }
  for (const s of g.storages) s.release();
});

/**
 * A captured sequence of ops, replayed with one launch. It holds every tensor the captured
 * ops touched: disposing those tensors does not free their memory until the graph is disposed.
 */
export class CudaGraph {
  readonly stream: Stream;
  private _exec: bigint;
  private _storages: Set<CapturedMemory>;
  private _token = {};

  /** @internal */
  constructor(stream: Stream, exec: bigint, storages: Set<CapturedMemory>) {
    this.stream = stream;
    this._exec = exec;
    this._storages = storages;
    graphRegistry.register(this, { device: deviceIndex(stream.device), exec, storages }, this._token);
  }

  get disposed(): boolean {
    return this._exec === 0n;
  }

  /** Enqueues the whole graph on `stream` (default: the stream it was captured on). */
  replay(stream: Stream = this.stream): void {
    if (this._exec === 0n) throw new MoeError('E_DISPOSED', 'graph: the graph was disposed');
    checkStream(stream, 'stream', this.stream.device);
    // a replay elsewhere uses the captured memory on that stream: its reuse must wait for it
    if (stream !== this.stream) for (const s of this._storages) s.usedOn.add(stream.handle);
    native().launchGraph(deviceIndex(stream.device), this._exec, stream.handle);
  }

  dispose(): void {
    if (this._exec === 0n) return;
    graphRegistry.unregister(this._token);
    native().destroyGraph(deviceIndex(this.stream.device), this._exec);
    this._exec = 0n;
    for (const s of this._storages) s.release();
    this._storages = new Set();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Captures the ops that `fn` enqueues on `stream` into a CUDA graph. `fn` must be synchronous
 * and enqueue its ops on `stream`; allocate inputs and outputs before or inside it (tensors
 * the graph uses stay alive with the graph). Reading results (toArray, synchronize) inside
 * `fn` throws E_CAPTURE.
 */
export function captureGraph(stream: Stream, fn: () => void): CudaGraph {
  checkStream(stream, 'stream');
  checkFunction(fn, 'fn');
  if (stream.device === 'cpu') throw new MoeError('E_DEVICE', 'stream: graphs capture CUDA streams; got a stream on cpu');
  if (openCaptures.has(stream.handle)) throw new MoeError('E_CAPTURE', 'stream: a capture is already open on this stream');
  const b = native();
  const dev = deviceIndex(stream.device);
  const storages = new Set<CapturedMemory>();
  b.beginCapture(dev, stream.handle);
  openCaptures.set(stream.handle, storages);
  let exec: bigint;
  try {
    const result: unknown = fn();
    if (result && typeof (result as { then?: unknown }).then === 'function') {
      throw new MoeError('E_CAPTURE', 'fn: returned a promise; capture needs a synchronous function');
    }
    exec = b.endCapture(dev, stream.handle);
  } catch (e) {
    if (b.isCapturing(dev, stream.handle)) b.abortCapture(dev, stream.handle);
    openCaptures.delete(stream.handle);
    for (const s of storages) s.release();
    if (e instanceof MoeError && e.code === 'E_CUDA') {
      throw new MoeError('E_CAPTURE', `capture failed: ${e.message} (an op in fn used another stream or a call that cannot be captured)`);
    }
    throw e;
  }
  openCaptures.delete(stream.handle);
  return new CudaGraph(stream, exec, storages);
}
