// Transports that never leave the process: a world of one, and n ranks in one process (one
// process driving every GPU of a host, as a notebook does). The in-process hub matches the
// ranks' calls by sequence number exactly as rank 0 does over TCP, so a program written against
// one kind of group runs against the other, including its failures.
import { MoeError } from '../errors';
import { splitParts } from './frames';
import type { Call, Collective, Group, Transport } from './group';

/** Rank 0 of a world of one: every collective completes at once. @internal */
export class SingleTransport implements Transport {
  constructor(private readonly group: Group) {}
  start(call: Call): void {
    // settle after the caller has its promise, as a transport that waits would
    queueMicrotask(() => this.group.complete(call.seq, resultsOf(call.op, call.root, [call.bytes])[0]));
  }
  waitingFor(): string {
    return 'in a world of one';
  }
  setActive(): void {}
  close(): void {}
}

/** The parts a collective hands each rank (result[r] for rank r), given all ranks' contributions. @internal */
export function resultsOf(op: Collective, root: number, parts: Uint8Array[]): Uint8Array[][] {
  const n = parts.length;
  if (op === 'allToAll') {
    // rank s's contribution holds one part per destination
    const split = parts.map((p) => splitParts(p, n));
    return Array.from({ length: n }, (_, r) => split.map((s) => s[r]));
  }
  const same = op === 'allGather' ? parts : op === 'broadcast' ? [parts[root]] : [];
  return new Array<Uint8Array[]>(n).fill(same);
}

interface Round {
  op: Collective;
  root: number;
  /** The rank whose call fixed op and root, for a mismatch message. */
  first: number;
  parts: (Uint8Array | undefined)[];
  count: number;
}

/** Meets the calls of n in-process ranks. @internal */
export class LocalHub {
  private readonly rounds = new Map<number, Round>();
  private ended = false;
  readonly groups: Group[] = [];

  contribute(rank: number, call: Call): void {
    if (this.ended) return;
    const n = this.groups.length;
    let round = this.rounds.get(call.seq);
    if (!round) {
      round = { op: call.op, root: call.root, first: rank, parts: new Array(n).fill(undefined), count: 0 };
      this.rounds.set(call.seq, round);
    } else if (round.op !== call.op || round.root !== call.root) {
      this.fail(mismatch(call.seq, round, rank, call), -1);
      return;
    }
    round.parts[rank] = call.bytes;
    round.count++;
    if (round.count < n) return;
    this.rounds.delete(call.seq);
    let results: Uint8Array[][];
    try {
      results = resultsOf(round.op, round.root, round.parts as Uint8Array[]);
    } catch (e) {
      this.fail(e as MoeError, -1);
      return;
    }
    for (let r = 0; r < n; r++) {
      // each rank its own copies: in one process they would otherwise share memory
      this.groups[r].complete(call.seq, results[r].map((p) => new Uint8Array(p)));
    }
  }

  missing(seq: number): number[] {
    const round = this.rounds.get(seq);
    const out: number[] = [];
    for (let r = 0; r < this.groups.length; r++) if (!round || round.parts[r] === undefined) out.push(r);
    return out;
  }

  /** One rank failed or left: the others fail with the same cause. */
  fail(error: MoeError, from: number): void {
    if (this.ended) return;
    this.ended = true;
    this.rounds.clear();
    for (let r = 0; r < this.groups.length; r++) if (r !== from) this.groups[r].fail(error, true);
  }
}

/** A rank's end of the in-process hub. @internal */
export class LocalTransport implements Transport {
  constructor(
    private readonly hub: LocalHub,
    private readonly rank: number,
  ) {}
  start(call: Call): void {
    // asynchronously, like a network: no rank's call completes inside another rank's call
    queueMicrotask(() => this.hub.contribute(this.rank, call));
  }
  waitingFor(seq: number): string {
    const missing = this.hub.missing(seq).filter((r) => r !== this.rank);
    return missing.length > 0 ? `waiting for rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')} of this process to call it` : 'waiting for the others';
  }
  setActive(): void {}
  close(error: MoeError | undefined, fromPeer: boolean): void {
    if (fromPeer) return;
    this.hub.fail(error ?? new MoeError('E_COMM', `rank ${this.rank} left the group (destroy() was called)`), this.rank);
  }
}

/** @internal */
export function mismatch(seq: number, round: { op: Collective; root: number; first: number }, rank: number, call: { op: Collective; root: number }): MoeError {
  const show = (op: Collective, root: number) => (op === 'broadcast' ? `broadcast(root ${root})` : op);
  return new MoeError(
    'E_COMM',
    `collective #${seq} differs between ranks: rank ${round.first} called ${show(round.op, round.root)}, rank ${rank} called ${show(call.op, call.root)} (every rank must call the same collectives in the same order)`,
  );
}
