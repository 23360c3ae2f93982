// The TCP rendezvous: rank 0 listens at MASTER_ADDR:MASTER_PORT, the other ranks connect to
// it (retrying while rank 0 starts) and say hello. Once all have joined, rank 0 stops listening
// and the star of connections carries the collectives: each rank sends its part to rank 0,
// which answers every rank when it has all of them. A star keeps the failure rules simple (rank
// 0 sees every death and tells the others) and costs nothing at the sizes exchanged here (ids
// and handles of a few hundred bytes per rank).
//
// There is no authentication: anything that can reach the port and speaks the protocol can
// join. Use a port on a trusted network, as with torchrun's store.
import * as net from 'node:net';
import * as os from 'node:os';
import { MoeError, type MoeErrorCode } from '../errors';
import {
  FrameReader,
  FrameType,
  MAGIC,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  contributeFrame,
  frame,
  jsonFrame,
  parseContribute,
  parseJson,
  parseResult,
  resultFrame,
  type Frame,
} from './frames';
import type { Collective } from './collective';
import type { Call, Sink, Transport } from './group';
import { mismatch, resultsOf } from './local';

/** Where and how to meet. @internal */
export interface TcpOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  timeoutMs: number;
}

const CODES: ReadonlySet<string> = new Set<MoeErrorCode>(['E_TIMEOUT', 'E_COMM', 'E_DISPOSED', 'E_ARGUMENT', 'E_INTERNAL']);

function abortFrame(error: MoeError | undefined): Buffer {
  return error ? jsonFrame(FrameType.Abort, { code: error.code, message: error.message }) : frame(FrameType.Bye);
}

/** The error a peer's Abort frame carries. */
function abortError(body: Buffer): MoeError {
  const v = parseJson(body);
  const code = typeof v?.code === 'string' && CODES.has(v.code) ? (v.code as MoeErrorCode) : 'E_COMM';
  const message = typeof v?.message === 'string' ? v.message : 'a peer aborted the group';
  return new MoeError(code, message);
}

/** Ends a socket: the frames written so far go out, and nothing waits on it afterwards. */
function release(sock: net.Socket, last?: Buffer): void {
  if (!sock.destroyed && sock.writable) {
    if (last) sock.write(last);
    sock.end();
  }
  sock.unref();
  // a peer that never closes its side must not keep the socket (or this process) around
  const t = setTimeout(() => sock.destroy(), 2000);
  t.unref();
  sock.once('close', () => clearTimeout(t));
}

/** Rank 0 listens on a loopback address only when told one; otherwise on every interface. */
function bindHost(addr: string): string | undefined {
  return /^127\.\d+\.\d+\.\d+$/.test(addr) || addr === '::1' ? addr : undefined;
}

function ranksList(ranks: number[]): string {
  return `rank${ranks.length === 1 ? '' : 's'} ${ranks.join(', ')}`;
}

interface Round {
  op: Collective;
  root: number;
  first: number;
  parts: (Uint8Array | undefined)[];
  count: number;
}

interface Formation {
  resolve: (hosts: string[]) => void;
  reject: (e: MoeError) => void;
  timer: NodeJS.Timeout;
}

/** Rank 0: the listener during the rendezvous, then the hub of every collective. @internal */
export class TcpHub implements Transport {
  sink: Sink | undefined;
  private server: net.Server | undefined;
  private readonly peers: (net.Socket | undefined)[];
  private readonly hosts: string[];
  private readonly pids: number[];
  private joined = 0;
  private formed = false;
  private closed = false;
  private formation: Formation | undefined;
  private readonly rounds = new Map<number, Round>();

  constructor(private readonly o: TcpOptions) {
    this.peers = new Array(o.worldSize).fill(undefined);
    this.hosts = new Array(o.worldSize).fill('');
    this.pids = new Array(o.worldSize).fill(0);
    this.hosts[0] = os.hostname();
    this.pids[0] = process.pid;
  }

  private get where(): string {
    return `${this.o.masterAddr}:${this.o.masterPort}`;
  }

  /** Resolves with every rank's host name once all have joined. */
  form(): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        const missing: number[] = [];
        for (let r = 1; r < this.o.worldSize; r++) if (!this.peers[r]) missing.push(r);
        this.abortFormation(
          new MoeError('E_TIMEOUT', `rank 0: ${ranksList(missing)} did not join within ${this.o.timeoutMs} ms (${this.joined + 1} of ${this.o.worldSize} ranks joined at ${this.where})`),
        );
      }, this.o.timeoutMs);
      this.formation = { resolve, reject, timer };
      const server = net.createServer((sock) => this.accept(sock));
      this.server = server;
      server.on('error', (e: NodeJS.ErrnoException) => {
        this.abortFormation(new MoeError('E_COMM', `rank 0 could not listen on ${this.where}: ${e.code ?? e.message}${e.code === 'EADDRINUSE' ? ' (the port is taken: pick another MASTER_PORT)' : ''}`));
      });
      server.listen({ port: this.o.masterPort, host: bindHost(this.o.masterAddr), exclusive: true });
    });
  }

  private accept(sock: net.Socket): void {
    if (this.formed || this.closed) {
      sock.destroy();
      return;
    }
    sock.setNoDelay(true);
    const reader = new FrameReader();
    const state = { rank: -1 };
    sock.on('error', () => {
      // 'close' follows; it is what ends the group
    });
    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (e) {
        if (state.rank < 0) sock.destroy(); // not one of ours
        else this.failed(e as MoeError);
        return;
      }
      for (const f of frames) {
        if (this.closed) return;
        if (state.rank < 0) {
          state.rank = this.hello(sock, f);
          if (state.rank < 0) return;
          reader.limit = MAX_FRAME_BYTES;
        } else {
          this.onFrame(state.rank, f);
        }
      }
    });
    sock.on('close', () => {
      if (state.rank < 0 || this.closed || this.peers[state.rank] !== sock) return;
      const e = new MoeError('E_COMM', `rank ${state.rank} disconnected${this.formed ? '' : ' before the group formed'} (its process died or closed the connection)`);
      this.failed(e);
    });
  }

  /** Checks a hello; returns the rank it registered, or -1. */
  private hello(sock: net.Socket, f: Frame): number {
    const h = f.type === FrameType.Hello ? parseJson(f.body) : undefined;
    if (!h || h.magic !== MAGIC) {
      sock.destroy(); // a stray connection: not a rank, not a reason to fail the group
      return -1;
    }
    const rank = h.rank;
    const who = typeof rank === 'number' ? `rank ${rank}` : 'a rank';
    let error: MoeError | undefined;
    if (h.version !== PROTOCOL_VERSION) {
      error = new MoeError('E_COMM', `protocol version mismatch: ${who} speaks version ${String(h.version)}, rank 0 speaks version ${PROTOCOL_VERSION} (different releases of @moe/kernels)`);
    } else if (h.worldSize !== this.o.worldSize) {
      error = new MoeError('E_COMM', `world size mismatch: ${who} has worldSize ${String(h.worldSize)}, rank 0 has worldSize ${this.o.worldSize}`);
    } else if (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 1 || rank >= this.o.worldSize) {
      error = new MoeError('E_COMM', `${who} cannot join: a second rank 0, or a rank outside [0, ${this.o.worldSize - 1}]`);
    } else if (this.peers[rank]) {
      error = new MoeError(
        'E_COMM',
        `duplicate rank: rank ${rank} joined twice (pid ${this.pids[rank]} on ${this.hosts[rank]} and pid ${String(h.pid)} on ${String(h.host)}); each process needs its own rank`,
      );
    }
    if (error) {
      release(sock, abortFrame(error));
      this.failed(error);
      return -1;
    }
    const r = rank as number;
    this.peers[r] = sock;
    this.hosts[r] = typeof h.host === 'string' ? h.host : '';
    this.pids[r] = typeof h.pid === 'number' ? h.pid : 0;
    this.joined++;
    if (this.joined === this.o.worldSize - 1) this.complete();
    return r;
  }

  private complete(): void {
    const formation = this.formation;
    if (!formation) return;
    this.formation = undefined;
    clearTimeout(formation.timer);
    this.formed = true;
    // everyone is here: stop listening (frees the port; late connections are refused)
    this.server?.close();
    this.server = undefined;
    const welcome = jsonFrame(FrameType.Welcome, { magic: MAGIC, version: PROTOCOL_VERSION, worldSize: this.o.worldSize, hosts: this.hosts });
    for (const s of this.peers) s?.write(welcome);
    this.setActive(false);
    formation.resolve(this.hosts.slice());
  }

  /** Any failure: during the rendezvous it rejects it, afterwards it ends the group. */
  private failed(error: MoeError): void {
    if (this.closed) return;
    if (!this.formed) this.abortFormation(error);
    else this.sink?.fail(error, true);
  }

  private abortFormation(error: MoeError): void {
    const formation = this.formation;
    if (!formation) return;
    this.formation = undefined;
    clearTimeout(formation.timer);
    this.close(error);
    formation.reject(error);
  }

  private onFrame(rank: number, f: Frame): void {
    try {
      if (!this.formed) {
        // before the welcome a peer speaks only to give up (its own deadline passed)
        if (f.type === FrameType.Abort) this.failed(this.explain(abortError(f.body)));
        else this.failed(new MoeError('E_COMM', `rank ${rank} sent frame type ${f.type} before the group formed`));
      } else if (f.type === FrameType.Contribute) {
        this.contribute(rank, parseContribute(f.body));
      } else if (f.type === FrameType.Abort) {
        this.failed(this.explain(abortError(f.body)));
      } else if (f.type === FrameType.Bye) {
        this.failed(new MoeError('E_COMM', `rank ${rank} left the group (destroy() was called)`));
      } else {
        this.failed(new MoeError('E_COMM', `rank ${rank} sent an unexpected frame type ${f.type}`));
      }
    } catch (e) {
      this.failed(e instanceof MoeError ? e : new MoeError('E_COMM', `rank ${rank}: ${(e as Error).message}`));
    }
  }

  /** A peer's timeout knows only that it waited; rank 0 knows for whom, and adds it. */
  private explain(error: MoeError): MoeError {
    if (error.code !== 'E_TIMEOUT') return error;
    const missing: number[] = [];
    if (!this.formed) {
      for (let r = 1; r < this.o.worldSize; r++) if (!this.peers[r]) missing.push(r);
      if (missing.length === 0) return error;
      return new MoeError('E_TIMEOUT', `${error.message}; rank 0: ${ranksList(missing)} had not joined`);
    }
    const first = [...this.rounds.keys()].sort((a, b) => a - b)[0];
    if (first === undefined) return new MoeError('E_TIMEOUT', `${error.message}; rank 0: rank 0 had not called it`);
    return new MoeError('E_TIMEOUT', `${error.message}; rank 0: collective #${first} had ${this.waitingFor(first, true)}`);
  }

  start(call: Call): void {
    this.contribute(0, call);
  }

  private contribute(rank: number, c: { seq: number; op: Collective; root: number; bytes: Uint8Array }): void {
    if (this.closed) return;
    let round = this.rounds.get(c.seq);
    if (!round) {
      round = { op: c.op, root: c.root, first: rank, parts: new Array(this.o.worldSize).fill(undefined), count: 0 };
      this.rounds.set(c.seq, round);
    } else if (round.op !== c.op || round.root !== c.root) {
      this.failed(mismatch(c.seq, round, rank, c));
      return;
    }
    if (round.parts[rank] !== undefined) {
      this.failed(new MoeError('E_COMM', `rank ${rank} contributed twice to collective #${c.seq}`));
      return;
    }
    round.parts[rank] = c.bytes;
    if (++round.count < this.o.worldSize) return;
    this.rounds.delete(c.seq);
    let results: Uint8Array[][];
    try {
      results = resultsOf(round.op, round.root, round.parts as Uint8Array[]);
    } catch (e) {
      this.failed(e as MoeError);
      return;
    }
    if (round.op === 'allToAll') {
      for (let r = 1; r < this.peers.length; r++) this.peers[r]?.write(resultFrame(c.seq, results[r]));
    } else {
      const out = resultFrame(c.seq, results[0]);
      for (const s of this.peers) s?.write(out);
    }
    this.sink?.complete(c.seq, results[0]);
  }

  waitingFor(seq: number, withRankZero = false): string {
    const round = this.rounds.get(seq);
    const missing: number[] = [];
    for (let r = withRankZero ? 0 : 1; r < this.o.worldSize; r++) if (!round || round.parts[r] === undefined) missing.push(r);
    return missing.length > 0 ? `no contribution yet from ${ranksList(missing)}` : 'all ranks contributed';
  }

  setActive(active: boolean): void {
    for (const s of this.peers) {
      if (!s || s.destroyed) continue;
      if (active) s.ref();
      else s.unref();
    }
  }

  close(error: MoeError | undefined): void {
    if (this.closed) return;
    this.closed = true;
    this.rounds.clear();
    this.server?.close();
    this.server = undefined;
    // rank 0 tells every other rank why the group ended, whoever the cause was
    const last = abortFrame(error);
    for (let r = 1; r < this.peers.length; r++) {
      const s = this.peers[r];
      if (s) release(s, last);
      this.peers[r] = undefined;
    }
  }
}

/** Every rank but 0: connects to rank 0 and sends its parts there. @internal */
export class TcpPeer implements Transport {
  sink: Sink | undefined;
  private sock: net.Socket | undefined;
  private formed = false;
  private closed = false;
  private formation: (Formation & { retry: NodeJS.Timeout | undefined }) | undefined;

  constructor(private readonly o: TcpOptions) {}

  private get where(): string {
    return `${this.o.masterAddr}:${this.o.masterPort}`;
  }

  /** Resolves with every rank's host name once rank 0 has welcomed all. */
  form(): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      let lastError = 'no attempt finished';
      let connected = false;
      let delay = 25;
      const timer = setTimeout(() => {
        const e = connected
          ? new MoeError('E_TIMEOUT', `rank ${this.o.rank}: the group did not form within ${this.o.timeoutMs} ms (joined rank 0 at ${this.where}; other ranks have not joined)`)
          : new MoeError('E_TIMEOUT', `rank ${this.o.rank}: could not reach rank 0 at ${this.where} within ${this.o.timeoutMs} ms (last error: ${lastError})`);
        this.abortFormation(e, false);
      }, this.o.timeoutMs);
      this.formation = { resolve, reject, timer, retry: undefined };

      const attempt = () => {
        if (!this.formation) return;
        this.formation.retry = undefined;
        const sock = net.connect({ host: this.o.masterAddr, port: this.o.masterPort });
        this.sock = sock;
        sock.setNoDelay(true);
        const reader = new FrameReader();
        sock.on('connect', () => {
          connected = true;
          reader.limit = MAX_FRAME_BYTES;
          sock.write(jsonFrame(FrameType.Hello, { magic: MAGIC, version: PROTOCOL_VERSION, rank: this.o.rank, worldSize: this.o.worldSize, host: os.hostname(), pid: process.pid }));
        });
        sock.on('error', (e: NodeJS.ErrnoException) => {
          lastError = e.code ?? e.message;
        });
        sock.on('data', (chunk: Buffer) => {
          let frames: Frame[];
          try {
            frames = reader.push(chunk);
          } catch (e) {
            this.failed(e as MoeError);
            return;
          }
          for (const f of frames) {
            if (this.closed) return;
            this.onFrame(f);
          }
        });
        sock.on('close', () => {
          if (this.closed || this.sock !== sock) return;
          if (this.formed) {
            this.failed(new MoeError('E_COMM', `rank 0 disconnected (its process died or closed the connection)`), true);
          } else if (connected) {
            this.abortFormation(new MoeError('E_COMM', `rank ${this.o.rank}: rank 0 at ${this.where} closed the connection before the group formed`), true);
          } else if (this.formation) {
            // rank 0 is not listening yet: try again, until the deadline
            this.formation.retry = setTimeout(attempt, delay);
            delay = Math.min(delay * 2, 500);
          }
        });
      };
      attempt();
    });
  }

  private onFrame(f: Frame): void {
    try {
      if (f.type === FrameType.Abort) {
        this.failed(abortError(f.body), true);
      } else if (!this.formed) {
        const w = f.type === FrameType.Welcome ? parseJson(f.body) : undefined;
        if (!w || w.magic !== MAGIC || w.version !== PROTOCOL_VERSION || w.worldSize !== this.o.worldSize || !Array.isArray(w.hosts)) {
          this.failed(new MoeError('E_COMM', `rank ${this.o.rank}: rank 0 at ${this.where} did not answer with a welcome of protocol version ${PROTOCOL_VERSION} and worldSize ${this.o.worldSize}`));
          return;
        }
        const formation = this.formation;
        if (!formation) return;
        this.formation = undefined;
        clearTimeout(formation.timer);
        this.formed = true;
        this.setActive(false);
        formation.resolve((w.hosts as unknown[]).map(String));
      } else if (f.type === FrameType.Result) {
        const { seq, parts } = parseResult(f.body);
        this.sink?.complete(seq, parts);
      } else if (f.type === FrameType.Bye) {
        this.failed(new MoeError('E_COMM', 'rank 0 left the group (destroy() was called)'), true);
      } else {
        this.failed(new MoeError('E_COMM', `rank 0 sent an unexpected frame type ${f.type}`));
      }
    } catch (e) {
      this.failed(e instanceof MoeError ? e : new MoeError('E_COMM', (e as Error).message));
    }
  }

  private failed(error: MoeError, fromRankZero = false): void {
    if (this.closed) return;
    if (!this.formed) this.abortFormation(error, fromRankZero);
    else this.sink?.fail(error, fromRankZero);
  }

  private abortFormation(error: MoeError, fromRankZero: boolean): void {
    const formation = this.formation;
    if (!formation) return;
    this.formation = undefined;
    clearTimeout(formation.timer);
    if (formation.retry) clearTimeout(formation.retry);
    this.close(error, fromRankZero);
    formation.reject(error);
  }

  start(call: Call): void {
    if (this.closed || !this.sock) return;
    this.sock.write(contributeFrame(call.seq, call.op, call.root, call.bytes));
  }

  waitingFor(): string {
    return 'waiting for rank 0 to hand out the result (another rank has not called it yet, or rank 0 is not responding)';
  }

  setActive(active: boolean): void {
    if (!this.sock || this.sock.destroyed) return;
    if (active) this.sock.ref();
    else this.sock.unref();
  }

  close(error: MoeError | undefined, fromRankZero: boolean): void {
    if (this.closed) return;
    this.closed = true;
    const sock = this.sock;
    if (!sock) return;
    // what ended the group here goes to rank 0, which tells the others; not back to its source
    if (sock.connecting) sock.destroy();
    else release(sock, fromRankZero ? undefined : abortFrame(error));
  }
}
