import { deviceIndex } from './device';
import { MoeError } from './errors';
import { native } from './native';
import { defaultStream, resolveStream, type Stream } from './stream';

/**
 * Launch-overhead probes. `launchEmpty` enqueues an empty kernel through the same path an op
 * takes; `launchEmptyLoop` makes n launches from a C++ loop and returns its host seconds.
 */
export const diagnostics = {
  launchEmpty(stream: Stream = defaultStream()): void {
    const s = resolveStream(stream, stream.device);
    if (s.device === 'cpu') throw new MoeError('E_DEVICE', 'stream: launchEmpty needs a CUDA stream');
    native().launchEmpty(deviceIndex(s.device), s.handle);
  },
  launchEmptyLoop(n: number, stream: Stream = defaultStream()): number {
    const s = resolveStream(stream, stream.device);
    if (s.device === 'cpu') throw new MoeError('E_DEVICE', 'stream: launchEmptyLoop needs a CUDA stream');
    if (!Number.isInteger(n) || n < 0) throw new MoeError('E_ARGUMENT', `n: expected a non-negative integer, got ${n}`);
    return native().launchEmptyLoop(deviceIndex(s.device), s.handle, n);
  },
};
