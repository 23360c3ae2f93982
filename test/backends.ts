// Runs a suite once per backend; the CUDA one is skipped, with its reason in the title,
// where no GPU is usable.
import { describe, expect } from 'vitest';
import { MoeError, cudaUnavailableReason, type Backend, type Device } from '../lib';
import { native } from '../lib/native';

export const cudaReason = cudaUnavailableReason();
export const hasCuda = cudaReason === undefined;

export function forEachBackend(name: string, fn: (device: Device, backend: Backend) => void): void {
  for (const backend of ['cpu', 'cuda'] as const) {
    const skip = backend === 'cuda' && !hasCuda;
    const title = `${name} [${backend}]${skip ? ` (skipped: ${cudaReason})` : ''}`;
    describe.skipIf(skip)(title, () => fn(backend === 'cpu' ? 'cpu' : 'cuda:0', backend));
  }
}

/** Asserts that fn throws (or rejects with) a MoeError with `code` whose message mentions `mentions`. */
export async function expectCode(fn: () => unknown, code: string, mentions?: string): Promise<void> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(MoeError);
  expect((caught as MoeError).code).toBe(code);
  if (mentions) expect((caught as MoeError).message).toContain(mentions);
}

/** A seeded generator, so a failure can be replayed; seeds differ per run and are printed. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

export function freshSeed(label: string): number {
  const seed = (Date.now() ^ (Math.random() * 2 ** 31)) >>> 0;
  console.log(`[seed] ${label}: ${seed}`);
  return seed;
}

/** Runs fn with every native entry point counted; returns the names called, in order. */
export function nativeCalls(fn: () => void): string[] {
  const b = native() as unknown as Record<string, unknown>;
  const calls: string[] = [];
  const saved = new Map<string, unknown>();
  for (const name of Object.keys(b)) {
    const f = b[name];
    if (typeof f !== 'function') continue;
    saved.set(name, f);
    b[name] = (...args: unknown[]) => {
      calls.push(name);
      return (f as (...a: unknown[]) => unknown)(...args);
    };
  }
  try {
    fn();
  } finally {
    for (const [name, f] of saved) b[name] = f;
  }
  return calls;
}

/** Relative Frobenius error of got vs want, with the worst element in the message. */
export function expectClose(label: string, got: ArrayLike<number>, want: ArrayLike<number>, tolerance: number): void {
  expect(got.length, `${label}: length`).toBe(want.length);
  let num = 0, den = 0, worst = 0, worstAt = -1, firstBad = -1;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    if (!Number.isFinite(got[i]) && firstBad < 0) firstBad = i;
    num += d * d;
    den += want[i] * want[i];
    if (Math.abs(d) > worst || Number.isNaN(d)) {
      worst = Math.abs(d);
      worstAt = i;
    }
  }
  const rel = den === 0 ? Math.sqrt(num) : Math.sqrt(num) / Math.sqrt(den);
  if (!(Number.isFinite(rel) && rel <= tolerance && firstBad < 0)) {
    throw new Error(
      `${label}: relative Frobenius error ${rel.toExponential(3)} > ${tolerance} (max |error| ${worst.toExponential(3)} at ` +
        `${worstAt}: got ${got[worstAt]}, want ${want[worstAt]}${firstBad >= 0 ? `; first non-finite at ${firstBad}` : ''})`,
    );
  }
}
