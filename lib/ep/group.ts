// A ProcessGroup is one rank's view of the ranks that share experts. It carries out the three
// host-side collectives the GPU transports need to set themselves up (exchanging NCCL unique
// ids, CUDA IPC handles, readiness), bounds every one of them by a timeout, and fails as a
// whole: after any rank dies, hangs or leaves, every call on every rank rejects, so a serving
// process can destroy the group and form a new one instead of waiting forever.
import { MoeError } from '../errors';
import { checkBytes, checkFunction, checkInteger, type Device } from '../validate';
import type { Collective } from './collective';
import { joinParts } from './frames';

export type { Collective };

/** How a group moves bytes: one process of a world of one, ranks in one process, or TCP. */
export type GroupKind = 'single' | 'in-process' | 'tcp';

/** One rank's membership of a group of ranks. Collectives must be called by every rank in the same order. */
export interface ProcessGroup {
  /** This rank, in [0, worldSize). */
  readonly rank: number;
  readonly worldSize: number;
  /** This rank's index among the ranks on its host; it picks the GPU. */
  readonly localRank: number;
  /** The number of ranks on this host. */
  readonly localWorldSize: number;
  /** `cuda:<localRank>` where CUDA is usable, else "cpu" (or the device option). */
  readonly device: Device;
  /** The bound on forming the group and on each collective, in milliseconds. */
  readonly timeoutMs: number;
  readonly kind: GroupKind;
  /** True once destroy() was called. */
  readonly destroyed: boolean;
  /** The error that ended the group (a peer died, hung or left), if one did. */
  readonly error: MoeError | undefined;
  /** Every rank's bytes, in rank order (this rank's own included, as a copy). */
  allGather(bytes: Uint8Array): Promise<Uint8Array[]>;
  /** The root's bytes on every rank; the others may pass undefined (what they pass is ignored). */
  broadcast(bytes: Uint8Array | undefined, root: number): Promise<Uint8Array>;
  /** Resolves once every rank has called it. */
  barrier(): Promise<void>;
  /**
   * Personalized exchange (all-to-all-v): `parts[d]` goes to rank d (parts of any lengths, one
   * per rank, this rank's own included); resolves with the part each rank addressed to this
   * one, in rank order. Bounded by timeoutMs and failing as a whole like the other collectives.
   */
  allToAll(parts: readonly Uint8Array[]): Promise<Uint8Array[]>;
  /**
   * Runs `fn` once when the group ends: with the error when it fails, with undefined on
   * destroy(). A transport built on the group (NCCL communicator, IPC mappings) tears itself
   * down here. Returns a function that removes `fn`.
   */
  onClose(fn: (error: MoeError | undefined) => void): () => void;
  /** Closes the connections; pending calls reject with E_DISPOSED. Idempotent. */
  destroy(): void;
  [Symbol.dispose](): void;
}

/** A collective in flight on this rank. @internal */
export interface Call {
  readonly seq: number;
  readonly op: Collective;
  readonly root: number;
  /** This rank's contribution: its own copy. Empty for barrier and for broadcast off the root. */
  readonly bytes: Uint8Array;
}

/** What the group needs of the layer that moves bytes. @internal */
export interface Transport {
  /** Contribute to a collective; the transport later calls sink.complete or sink.fail. */
  start(call: Call): void;
  /** A phrase for a timeout message: who the call is still waiting for. */
  waitingFor(seq: number): string;
  /** While a call is pending the connections keep the process alive; idle, they do not. */
  setActive(active: boolean): void;
  /** Tell the others this rank leaves (error undefined) or failed, unless it learned the error from them; release everything. */
  close(error: MoeError | undefined, fromPeer: boolean): void;
}

/** What a transport reports back. @internal */
export interface Sink {
  complete(seq: number, parts: Uint8Array[]): void;
  fail(error: MoeError, fromPeer: boolean): void;
}

interface Pending {
  op: Collective;
  resolve: (parts: Uint8Array[]) => void;
  reject: (e: MoeError) => void;
  timer: NodeJS.Timeout;
}

export interface GroupFacts {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  device: Device;
  timeoutMs: number;
  kind: GroupKind;
}

/** The one implementation of ProcessGroup; the transport is what differs. @internal */
export class Group implements ProcessGroup, Sink {
  readonly rank: number;
  readonly worldSize: number;
  readonly localRank: number;
  readonly localWorldSize: number;
  readonly device: Device;
  readonly timeoutMs: number;
  readonly kind: GroupKind;
  private transport: Transport | undefined;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private ended: MoeError | undefined;
  private isDestroyed = false;
  private hooks: ((error: MoeError | undefined) => void)[] = [];

  constructor(facts: GroupFacts) {
    this.rank = facts.rank;
    this.worldSize = facts.worldSize;
    this.localRank = facts.localRank;
    this.localWorldSize = facts.localWorldSize;
    this.device = facts.device;
    this.timeoutMs = facts.timeoutMs;
    this.kind = facts.kind;
  }

  /** Set once, right after the rendezvous. */
  attach(transport: Transport): void {
    this.transport = transport;
  }

  get destroyed(): boolean {
    return this.isDestroyed;
  }

  get error(): MoeError | undefined {
    return this.ended;
  }

  allGather(bytes: Uint8Array): Promise<Uint8Array[]> {
    return this.begin(() => ({ op: 'allGather', root: 0, bytes: copyOf(bytes, 'allGather: bytes') }));
  }

  async broadcast(bytes: Uint8Array | undefined, root: number): Promise<Uint8Array> {
    const parts = await this.begin(() => {
      checkRoot(root, this.worldSize);
      return { op: 'broadcast', root, bytes: root === this.rank ? copyOf(bytes, 'broadcast: bytes (on the root)') : new Uint8Array(0) };
    });
    return parts[0];
  }

  async barrier(): Promise<void> {
    await this.begin(() => ({ op: 'barrier', root: 0, bytes: new Uint8Array(0) }));
  }

  allToAll(parts: readonly Uint8Array[]): Promise<Uint8Array[]> {
    return this.begin(() => {
      if (!Array.isArray(parts) || parts.length !== this.worldSize) {
        throw new MoeError('E_ARGUMENT', `allToAll: parts: expected an array of ${this.worldSize} Uint8Arrays (one per rank), got ${Array.isArray(parts) ? `${parts.length}` : typeof parts}`);
      }
      // one contribution: the parts joined (a copy, as for the other collectives)
      return { op: 'allToAll', root: 0, bytes: joinParts(parts.map((p, d) => checkBytes(p, `allToAll: parts[${d}]`))) };
    });
  }

  private begin(args: () => Omit<Call, 'seq'>): Promise<Uint8Array[]> {
    let call: Call;
    try {
      // argument errors reject rather than throw: every collective is uniformly async
      const a = args();
      if (this.isDestroyed) throw new MoeError('E_DISPOSED', `rank ${this.rank}: ${a.op} on a destroyed process group`);
      if (this.ended) throw new MoeError(this.ended.code, `rank ${this.rank}: ${a.op} on a process group that has failed: ${this.ended.message}`);
      call = { ...a, seq: this.seq++ };
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<Uint8Array[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(
          new MoeError('E_TIMEOUT', `rank ${this.rank}: ${call.op} (collective #${call.seq}) timed out after ${this.timeoutMs} ms, ${this.transport?.waitingFor(call.seq) ?? ''}`),
          false,
        );
      }, this.timeoutMs);
      this.pending.set(call.seq, { op: call.op, resolve, reject, timer });
      if (this.pending.size === 1) this.transport?.setActive(true);
      this.transport?.start(call);
    });
  }

  complete(seq: number, parts: Uint8Array[]): void {
    const p = this.pending.get(seq);
    if (!p) return;
    this.pending.delete(seq);
    clearTimeout(p.timer);
    if (this.pending.size === 0) this.transport?.setActive(false);
    p.resolve(parts);
  }

  /** Ends the group with `error`: pending calls reject with it, the others are told. */
  fail(error: MoeError, fromPeer: boolean): void {
    if (this.ended || this.isDestroyed) return;
    this.ended = error;
    this.end(error, error, fromPeer);
  }

  destroy(): void {
    if (this.isDestroyed) return;
    this.isDestroyed = true;
    // a group that already failed has closed its transport and run its hooks; end() knows
    this.end(undefined, new MoeError('E_DISPOSED', `rank ${this.rank}: the process group was destroyed while a collective was pending`), false);
  }

  [Symbol.dispose](): void {
    this.destroy();
  }

  onClose(fn: (error: MoeError | undefined) => void): () => void {
    checkFunction(fn, 'onClose: fn');
    this.hooks.push(fn);
    return () => {
      this.hooks = this.hooks.filter((h) => h !== fn);
    };
  }

  private closedOnce = false;

  private end(cause: MoeError | undefined, rejection: MoeError, fromPeer: boolean): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    const pending = [...this.pending.values()];
    this.pending.clear();
    if (this.closedOnce) {
      for (const p of pending) p.reject(rejection);
      return;
    }
    this.closedOnce = true;
    this.transport?.close(cause, fromPeer);
    this.transport?.setActive(false);
    for (const p of pending) p.reject(rejection);
    const hooks = this.hooks;
    this.hooks = [];
    for (const h of hooks) {
      try {
        h(cause);
      } catch {
        // a teardown hook must not keep the others from running
      }
    }
  }
}

function copyOf(bytes: unknown, argument: string): Uint8Array {
  // a copy: the caller may reuse its buffer as soon as the call returns
  return new Uint8Array(checkBytes(bytes, argument));
}

function checkRoot(root: unknown, worldSize: number): void {
  checkInteger(root, 'broadcast: root', 0, worldSize - 1);
}
