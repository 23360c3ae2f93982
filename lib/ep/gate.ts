// Where the nvlink ranks of one process meet between the send and the receive of a call.
//
// A receive waits on the device for the count words of every rank's send. Ranks of one process
// enqueue their work from one thread, one after another, so a rank's wait can be spinning before
// the next rank's send is enqueued; any host call in between that waits for the device (a
// kernel's first launch under lazy loading, a device allocation, a synchronizing copy) then waits
// for that spinning kernel, which waits for a send the blocked host never enqueues: a deadlock
// that only the device timeout ends. Streams that share a hardware queue behave the same without
// any host call: a rank's send queued behind another rank's blocked wait never starts. So every
// rank of the process enqueues its send, then waits here until all of them have, and only then
// enqueues its receive: whatever blocks the host afterwards, every wait's sends are already queued.
import { MoeError } from '../errors';

interface Meeting {
  arrived: Set<number>;
  waiting: { resolve: () => void; timer: ReturnType<typeof setTimeout> | undefined }[];
}

/** The ranks of one process meeting per call. @internal */
export class SendGate {
  private readonly meetings = new Map<string, Meeting>();

  constructor(readonly worldSize: number) {}

  /**
   * Rank `rank` has enqueued its send of call `key` ("dispatch 3", say): resolves once every rank
   * has (at once for the last), rejects with `timeout(first missing rank)` after timeoutMs.
   */
  arrive(rank: number, key: string, timeoutMs: number, timeout: (missing: number) => Error): Promise<void> {
    let m = this.meetings.get(key);
    if (!m) {
      m = { arrived: new Set(), waiting: [] };
      this.meetings.set(key, m);
    }
    m.arrived.add(rank);
    if (m.arrived.size >= this.worldSize) {
      // complete: a rank that arrives after the others gave up passes too (their sends are queued)
      this.meetings.delete(key);
      for (const w of m.waiting) {
        if (w.timer !== undefined) clearTimeout(w.timer);
        w.resolve();
      }
      return Promise.resolve();
    }
    const meeting = m;
    return new Promise<void>((resolve, reject) => {
      const w: Meeting['waiting'][number] = { resolve, timer: undefined };
      w.timer = setTimeout(() => {
        const i = meeting.waiting.indexOf(w);
        if (i >= 0) meeting.waiting.splice(i, 1);
        let missing = 0;
        while (missing < this.worldSize && meeting.arrived.has(missing)) missing++;
        reject(timeout(missing));
      }, timeoutMs);
      meeting.waiting.push(w);
    });
  }

  /** Ranks of call `key` that have not arrived (for messages and tests). */
  missing(key: string): number[] {
    const m = this.meetings.get(key);
    const out: number[] = [];
    for (let r = 0; r < this.worldSize; r++) if (!m?.arrived.has(r)) out.push(r);
    return out;
  }
}

const gates = new Map<string, { gate: SendGate; users: number }>();

/** The gate of the in-process buffers that agreed on `id`; release it with releaseGate. @internal */
export function gateOf(id: string, worldSize: number): SendGate {
  let g = gates.get(id);
  if (!g) {
    g = { gate: new SendGate(worldSize), users: 0 };
    gates.set(id, g);
  }
  if (g.gate.worldSize !== worldSize) throw new MoeError('E_INTERNAL', `gate ${id}: ${g.gate.worldSize} ranks, not ${worldSize}`);
  g.users++;
  return g.gate;
}

/** @internal */
export function releaseGate(id: string): void {
  const g = gates.get(id);
  if (g && --g.users <= 0) gates.delete(id);
}
