// The deadline of one ep call (lib/ep/deadline.ts), on a clock the tests move: every wait of a
// call is bounded by the time left until the call's start plus the timeout, a later wait by less
// than an earlier one, and a device wait queued behind other work by a short cap within it.
import { describe, expect, it } from 'vitest';
import { MoeError } from '../lib/errors';
import { Deadline, pollUntil } from '../lib/ep/deadline';

function clock(start = 1000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

const timeout = () => new MoeError('E_TIMEOUT', 'ran out');

describe('ep: the deadline of a call', () => {
  it('counts down from the start of the call and expires only past it', () => {
    const c = clock();
    const d = new Deadline(15_000, c.now);
    expect(d.at).toBe(16_000);
    expect(d.remainingMs()).toBe(15_000);
    c.advance(10_000);
    expect(d.remainingMs()).toBe(5_000);
    expect(d.expired()).toBe(false);
    c.advance(5_000);
    expect(d.remainingMs()).toBe(0);
    expect(d.expired()).toBe(false);
    c.advance(1);
    expect(d.remainingMs()).toBe(0);
    expect(d.expired()).toBe(true);
  });

  it('a device wait gets the cap, less when less time is left, never 0 ns', () => {
    const c = clock();
    const d = new Deadline(15_000, c.now);
    expect(d.deviceBoundNs(10)).toBe(10_000_000);
    expect(d.deviceBoundNs(1e9)).toBe(15_000 * 1e6);
    c.advance(14_997);
    expect(d.deviceBoundNs(10)).toBe(3_000_000);
    c.advance(100);
    expect(d.deviceBoundNs(10)).toBe(1);
  });

  it('a poll that starts late in the call gives up at the call\'s deadline, not a timeout after its own start', async () => {
    const c = clock();
    const d = new Deadline(15_000, c.now);
    // an earlier wait of the same call took 10 s
    c.advance(10_000);
    const pollStart = c.now();
    let polls = 0;
    const error = await pollUntil(d, () => {
      polls++;
      return false;
    }, timeout, async () => c.advance(1)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((error as MoeError).code).toBe('E_TIMEOUT');
    // the whole call: just past 15 s from its start; the poll: 5 s of it
    expect(c.now() - d.at).toBe(1);
    expect(c.now() - pollStart).toBe(5_001);
    expect(polls).toBe(5_002);
  });

  it('a poll started past the deadline looks once, then gives up', async () => {
    const c = clock();
    const d = new Deadline(100, c.now);
    c.advance(500);
    let polls = 0;
    await expect(pollUntil(d, () => {
      polls++;
      return false;
    }, timeout, async () => c.advance(1))).rejects.toThrow('ran out');
    expect(polls).toBe(1);
    // done at that one look: it resolves (the work had finished)
    await expect(pollUntil(d, () => true, timeout)).resolves.toBeUndefined();
  });

  it('resolves once done, pausing between polls; what done throws rejects it', async () => {
    const c = clock();
    const d = new Deadline(1_000, c.now);
    const pauses: number[] = [];
    let n = 0;
    await pollUntil(d, () => ++n === 4, timeout, async (polls) => {
      pauses.push(polls);
      c.advance(1);
    });
    expect(pauses).toEqual([0, 1, 2]);
    await expect(
      pollUntil(d, () => {
        throw new MoeError('E_COMM', 'NCCL failed');
      }, timeout),
    ).rejects.toMatchObject({ code: 'E_COMM' });
  });

  it('the default pause polls on the real clock until done', async () => {
    const d = new Deadline(5_000);
    let n = 0;
    await pollUntil(d, () => ++n > 80, timeout);
    expect(n).toBe(81);
    const short = new Deadline(20);
    const t0 = performance.now();
    await expect(pollUntil(short, () => false, timeout)).rejects.toThrow('ran out');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(20);
    expect(performance.now() - t0).toBeLessThan(2_000);
  });
});
