import { MoeError } from './errors';
import { native, opArgs } from './native';
import { defaultStream, resolveStream, type Stream } from './stream';
import { checkFunction, checkInteger } from './validate';

function cudaStream(stream: Stream, what: string): Stream {
  const s = resolveStream(stream, stream.device);
  if (s.device === 'cpu') throw new MoeError('E_DEVICE', `stream: ${what} needs a CUDA stream`);
  return s;
}

/**
 * Launch-overhead probes. `launchEmpty` enqueues an empty kernel through the path every op
 * takes; `launchEmptyLoop` makes n launches of it from a C++ loop and returns the host seconds.
 * `cppLaunchLoop(n, fn)` runs `fn` once with each native op call replaced by n launches of
 * that op from C++ with the same arguments: the baseline for an op's JS path.
 */
export const diagnostics = {
  launchEmpty(stream: Stream = defaultStream()): void {
    const s = cudaStream(stream, 'launchEmpty');
    const b = native();
    const A = opArgs();
    A[0] = s.deviceIndex;
    A[1] = s.address;
    b.launchEmpty();
  },
  launchEmptyLoop(n: number, stream: Stream = defaultStream()): number {
    checkInteger(n, 'n', 0, 2 ** 31 - 1);
    const s = cudaStream(stream, 'launchEmptyLoop');
    return native().launchEmptyLaunchLoop(n, s.deviceIndex, s.handle);
  },
  /** Host seconds of the C++ loops made for the native op calls `fn` makes (see above). */
  cppLaunchLoop(n: number, fn: () => void): number {
    checkInteger(n, 'n', 0, 2 ** 31 - 1);
    checkFunction(fn, 'fn');
    const b = native() as unknown as Record<string, unknown>;
    const saved = new Map<string, unknown>();
    let seconds = 0;
    for (const name of Object.keys(b)) {
      const loop = b[`${name}LaunchLoop`];
      if (typeof loop !== 'function') continue;
      saved.set(name, b[name]);
      b[name] = (...args: unknown[]) => {
        seconds += (loop as (...a: unknown[]) => number)(n, ...args);
      };
    }
    try {
      fn();
    } finally {
      for (const [name, f] of saved) b[name] = f;
    }
    return seconds;
  },
};
