// One deadline per call of the ep family. A call that waits more than once (on the host and on
// the device) bounds every wait by the time left until the call's deadline, never by a fresh
// timeout of its own: otherwise a peer that never comes costs the group's timeout once per wait.

/** The end of one call: its start plus the group's timeout. @internal */
export class Deadline {
  /** When the call ends, on the clock `now`. */
  readonly at: number;

  constructor(
    readonly timeoutMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.at = now() + timeoutMs;
  }

  /** Milliseconds left, 0 once the deadline has passed. */
  remainingMs(): number {
    return Math.max(0, this.at - this.now());
  }

  /** True once the call has run longer than its timeout. */
  expired(): boolean {
    return this.now() > this.at;
  }

  /**
   * The bound in nanoseconds of a device wait enqueued now that starts only once the work before
   * it on its stream has finished: at most capMs (the wait must be short, it can begin at any
   * time before the deadline), never past the time left, at least 1 ns (the kernels want a
   * positive bound).
   */
  deviceBoundNs(capMs: number): number {
    return Math.max(1, Math.floor(Math.min(this.remainingMs(), capMs) * 1e6));
  }
}

/**
 * Polls until `done()` is true: between polls it yields (setImmediate for the first 64, then
 * 1 ms timers); once the deadline has passed, rejects with `expired()`. What `done` throws
 * rejects the poll. @internal
 */
export async function pollUntil(
  deadline: Deadline,
  done: () => boolean,
  expired: () => Error,
  pause: (polls: number) => Promise<void> = (polls) => new Promise((resolve) => (polls < 64 ? setImmediate(resolve) : setTimeout(resolve, 1))),
): Promise<void> {
  for (let polls = 0; ; polls++) {
    if (done()) return;
    if (deadline.expired()) throw expired();
    await pause(polls);
  }
}
