// Process groups on the CPU with real processes: the launchers' variables, the TCP rendezvous,
// the in-process group, and what every rank sees when a peer exits, hangs or dies. Timeouts are
// generous for a loaded two-core machine but bounded, and every process a test starts is killed
// when it ends.
import { type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MoeError, initProcessGroup, type ProcessGroup } from '../lib';
import { resolveRanks } from '../lib/ep/env';
import { FrameReader, FrameType, MAGIC, jsonFrame, parseJson } from '../lib/ep/frames';
import { expectCode } from './backends';
import { runNode as runChild, type Run } from './ep-helpers';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');
const rankScript = path.join(__dirname, 'fixtures', 'ep-rank.js');

// ---- launchers' variables ------------------------------------------------------------------

describe('ranks from the environment', () => {
  const master = { MASTER_ADDR: 'node-a', MASTER_PORT: '29500' };

  it('torchrun', () => {
    expect(resolveRanks({}, { RANK: '5', WORLD_SIZE: '8', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '4', ...master })).toEqual({
      rank: 5,
      worldSize: 8,
      localRank: 1,
      localWorldSize: 4,
      masterAddr: 'node-a',
      masterPort: 29500,
      source: 'torchrun',
    });
  });

  it('Slurm, which needs MASTER_ADDR and MASTER_PORT exported', () => {
    const slurm = { SLURM_PROCID: '3', SLURM_NTASKS: '4', SLURM_LOCALID: '1' };
    expect(resolveRanks({}, { ...slurm, ...master })).toMatchObject({ rank: 3, worldSize: 4, localRank: 1, localWorldSize: undefined, source: 'slurm' });
    expect(resolveRanks({}, { ...slurm, SLURM_NTASKS_PER_NODE: '2', ...master }).localWorldSize).toBe(2);
    expect(() => resolveRanks({}, slurm)).toThrow(/MASTER_ADDR.*is not set.*Slurm/);
    expect(() => resolveRanks({}, { ...slurm, MASTER_ADDR: 'node-a' })).toThrow(/MASTER_PORT/);
  });

  it('Open MPI', () => {
    const env = { OMPI_COMM_WORLD_RANK: '6', OMPI_COMM_WORLD_SIZE: '8', OMPI_COMM_WORLD_LOCAL_RANK: '2', OMPI_COMM_WORLD_LOCAL_SIZE: '4', ...master };
    expect(resolveRanks({}, env)).toMatchObject({ rank: 6, worldSize: 8, localRank: 2, localWorldSize: 4, source: 'openmpi' });
    expect(() => resolveRanks({}, { ...env, MASTER_ADDR: undefined })).toThrow(/MASTER_ADDR.*mpirun/);
  });

  it('torchrun wins over the Slurm step it runs in; options win over variables', () => {
    const env = { RANK: '1', WORLD_SIZE: '2', LOCAL_RANK: '1', SLURM_PROCID: '0', SLURM_NTASKS: '1', SLURM_LOCALID: '0', ...master };
    expect(resolveRanks({}, env)).toMatchObject({ rank: 1, worldSize: 2, source: 'torchrun' });
    expect(resolveRanks({ rank: 0, masterPort: 1234 }, env)).toMatchObject({ rank: 0, worldSize: 2, masterPort: 1234 });
  });

  it('no variables and no options: a world of one', () => {
    expect(resolveRanks({}, {})).toMatchObject({ rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1, source: 'single' });
  });

  it('missing or inconsistent values name the variable', () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ RANK: '1' }, /WORLD_SIZE .*is not set/],
      [{ WORLD_SIZE: '2', LOCAL_RANK: '0', SLURM_PROCID: '0' }, /SLURM_NTASKS .*is not set/],
      [{ RANK: '4', WORLD_SIZE: '4', LOCAL_RANK: '0', ...master }, /RANK .*= 4 must be less than WORLD_SIZE .*= 4/],
      [{ RANK: 'one', WORLD_SIZE: '4' }, /^RANK: expected an integer/],
      [{ RANK: '1', WORLD_SIZE: '0' }, /^WORLD_SIZE: expected an integer >= 1/],
      [{ RANK: '1', WORLD_SIZE: '4', ...master }, /LOCAL_RANK .*is not set/],
      [{ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '2', LOCAL_WORLD_SIZE: '2', ...master }, /LOCAL_RANK .*= 2 must be less than LOCAL_WORLD_SIZE/],
      [{ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '0', LOCAL_WORLD_SIZE: '8', ...master }, /LOCAL_WORLD_SIZE .*cannot exceed WORLD_SIZE/],
      [{ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '1', MASTER_ADDR: 'a' }, /MASTER_PORT .*is not set/],
      [{ RANK: '1', WORLD_SIZE: '4', LOCAL_RANK: '1', MASTER_ADDR: 'a', MASTER_PORT: '70000' }, /MASTER_PORT: expected a port/],
      [{ OMPI_COMM_WORLD_RANK: '1', OMPI_COMM_WORLD_SIZE: '2', ...master }, /OMPI_COMM_WORLD_LOCAL_RANK .*is not set/],
    ];
    for (const [env, message] of bad) {
      let caught: unknown;
      try {
        resolveRanks({}, env);
      } catch (e) {
        caught = e;
      }
      expect(caught, JSON.stringify(env)).toBeInstanceOf(MoeError);
      expect((caught as MoeError).code).toBe('E_ARGUMENT');
      expect((caught as MoeError).message).toMatch(message);
    }
    expect(() => resolveRanks({ worldSize: 2 }, {})).toThrow(/the rank option is not set/);
  });

  it('initProcessGroup checks its options', async () => {
    await expectCode(() => initProcessGroup({ worldsize: 2 } as never), 'E_ARGUMENT', 'worldsize');
    await expectCode(() => initProcessGroup({ timeoutMs: 0 }), 'E_ARGUMENT', 'timeoutMs');
    await expectCode(() => initProcessGroup({ masterPort: 65536, rank: 0, worldSize: 2, localRank: 0 }), 'E_ARGUMENT', 'masterPort');
    await expectCode(() => initProcessGroup({ device: 'cpu', rank: -1 }), 'E_ARGUMENT', 'rank');
    await expectCode(() => initProcessGroup({ device: 'cpu', ranks: 'some' } as never), 'E_ARGUMENT', 'ranks');
    await expectCode(() => initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 2, rank: 0 } as never), 'E_ARGUMENT', '"rank"');
    await expectCode(() => initProcessGroup({ device: 'gpu' } as never), 'E_DEVICE', 'device');
  });

  it('a world of one needs no network', async () => {
    const pg = await initProcessGroup({ device: 'cpu', rank: 0, worldSize: 1 });
    expect(pg).toMatchObject({ rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1, kind: 'single' });
    expect((await pg.allGather(Uint8Array.of(4))).map((b) => [...b])).toEqual([[4]]);
    expect([...(await pg.broadcast(Uint8Array.of(5), 0))]).toEqual([5]);
    await pg.barrier();
    pg.destroy();
    await expectCode(() => pg.barrier(), 'E_DISPOSED');
  });
});

// ---- TCP groups inside the test process ------------------------------------------------------

/** A TCP port nothing listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

const open: ProcessGroup[] = [];
const children: ChildProcess[] = [];

afterEach(() => {
  for (const pg of open.splice(0)) pg.destroy();
  // every process a test started (a launcher leads its own process group, ranks included)
  for (const c of children.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined) continue;
    try {
      process.kill(-c.pid, 'SIGKILL');
    } catch {
      c.kill('SIGKILL');
    }
  }
});

async function tcpGroup(worldSize: number, port: number, timeoutMs = 10_000): Promise<ProcessGroup[]> {
  const groups = await Promise.all(
    Array.from({ length: worldSize }, (_, rank) => initProcessGroup({ device: 'cpu', rank, worldSize, localRank: rank, masterAddr: '127.0.0.1', masterPort: port, timeoutMs })),
  );
  open.push(...groups);
  return groups;
}

/** Settles every promise, as [code or 'ok', value]. */
async function outcomes<T>(promises: Promise<T>[]): Promise<[string, T | MoeError][]> {
  return Promise.all(promises.map((p) => p.then((v): [string, T] => ['ok', v], (e: MoeError): [string, MoeError] => [e.code, e])));
}

describe('TCP rendezvous', () => {
  it('allGather, broadcast and barrier, in order and concurrently, with large parts', async () => {
    const pgs = await tcpGroup(3, await freePort());
    expect(pgs.map((pg) => [pg.rank, pg.worldSize, pg.localRank, pg.localWorldSize, pg.kind, pg.device])).toEqual([
      [0, 3, 0, 3, 'tcp', 'cpu'],
      [1, 3, 1, 3, 'tcp', 'cpu'],
      [2, 3, 2, 3, 'tcp', 'cpu'],
    ]);
    for (let round = 0; round < 5; round++) {
      const got = await Promise.all(pgs.map((pg) => pg.allGather(Uint8Array.of(pg.rank, round))));
      for (const g of got) expect(g.map((b) => [...b])).toEqual([[0, round], [1, round], [2, round]]);
      const b = await Promise.all(pgs.map((pg) => pg.broadcast(pg.rank === round % 3 ? Uint8Array.of(round + 100) : undefined, round % 3)));
      expect(b.map((x) => [...x])).toEqual([[round + 100], [round + 100], [round + 100]]);
      await Promise.all(pgs.map((pg) => pg.barrier()));
    }
    // several collectives in flight at once: each matched by its order, not by arrival
    const big = (rank: number) => new Uint8Array(3 << 20).fill(rank + 1);
    const all = await Promise.all(pgs.map((pg) => Promise.all([pg.allGather(big(pg.rank)), pg.barrier(), pg.allGather(Uint8Array.of(pg.rank * 2))])));
    for (const [g, , small] of all) {
      expect(g.map((x) => [x.length, x[0], x[x.length - 1]])).toEqual([0, 1, 2].map((r) => [3 << 20, r + 1, r + 1]));
      expect(small.map((x) => x[0])).toEqual([0, 2, 4]);
    }
    await expectCode(() => pgs[0].broadcast(Uint8Array.of(1), 3), 'E_ARGUMENT', 'root');
    await expectCode(() => pgs[0].allGather([1, 2] as never), 'E_ARGUMENT', 'Uint8Array');
  });

  it('allToAll: each rank gets the parts addressed to it, of any length, empty ones included', async () => {
    const pgs = await tcpGroup(3, await freePort());
    const part = (from: number, to: number) => new Uint8Array(from === to ? 0 : (from + 1) * 1000 + to).fill(10 * from + to);
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all(pgs.map((pg) => pg.allToAll([0, 1, 2].map((to) => part(pg.rank, to)))));
      got.forEach((parts, to) => expect(parts.map((p) => [p.length, p[0]])).toEqual([0, 1, 2].map((from) => [part(from, to).length, part(from, to)[0]])));
    }
    // interleaved with the other collectives
    const mixed = await Promise.all(pgs.map((pg) => Promise.all([pg.allToAll([0, 1, 2].map((to) => Uint8Array.of(pg.rank, to))), pg.allGather(Uint8Array.of(pg.rank))])));
    expect(mixed[2][0].map((p) => [...p])).toEqual([[0, 2], [1, 2], [2, 2]]);
    expect(mixed[1][1].map((p) => p[0])).toEqual([0, 1, 2]);
    await expectCode(() => pgs[0].allToAll([Uint8Array.of(1)]), 'E_ARGUMENT', 'one per rank');
    await expectCode(() => pgs[0].allToAll([Uint8Array.of(1), [2] as never, Uint8Array.of(3)]), 'E_ARGUMENT', 'parts[1]');
  });

  it('allToAll: a rank that does not call it: the others get E_TIMEOUT', async () => {
    const pgs = await tcpGroup(3, await freePort(), 1500);
    const t0 = Date.now();
    const parts = [Uint8Array.of(1), Uint8Array.of(2), Uint8Array.of(3)];
    const r = await outcomes([pgs[0].allToAll(parts), pgs[2].allToAll(parts)]);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(r.map(([code]) => code)).toEqual(['E_TIMEOUT', 'E_TIMEOUT']);
    expect((r[0][1] as MoeError).message).toMatch(/no contribution yet from rank 1/);
  });

  it('a world-size mismatch, a duplicate rank and a protocol version mismatch are E_COMM naming both sides', async () => {
    let port = await freePort();
    const opts = { masterAddr: '127.0.0.1', masterPort: port, timeoutMs: 10_000 };
    const sizes = await outcomes([initProcessGroup({ device: 'cpu', ...opts, rank: 0, worldSize: 2, localRank: 0 }), initProcessGroup({ device: 'cpu', ...opts, rank: 1, worldSize: 3, localRank: 1 })]);
    for (const [code, e] of sizes) {
      expect(code).toBe('E_COMM');
      expect((e as MoeError).message).toMatch(/world size mismatch: rank 1 has worldSize 3, rank 0 has worldSize 2/);
    }

    port = await freePort();
    const dup = await outcomes(
      [0, 1, 1].map((rank) => initProcessGroup({ device: 'cpu', ...opts, masterPort: port, rank, worldSize: 3, localRank: rank })),
    );
    expect(dup.map(([code]) => code)).toEqual(['E_COMM', 'E_COMM', 'E_COMM']);
    for (const [, e] of dup) expect((e as MoeError).message).toMatch(/duplicate rank: rank 1 joined twice/);

    // a rank of another release: its hello has another version; rank 0 refuses it and says why
    port = await freePort();
    const zero = outcomes([initProcessGroup({ device: 'cpu', ...opts, masterPort: port, rank: 0, worldSize: 2, localRank: 0 })]);
    const sock = net.connect({ host: '127.0.0.1', port });
    await new Promise((resolve) => sock.once('connect', resolve));
    sock.write(jsonFrame(FrameType.Hello, { magic: MAGIC, version: 99, rank: 1, worldSize: 2 }));
    const reply = await new Promise<Record<string, unknown> | undefined>((resolve) => {
      const reader = new FrameReader();
      sock.on('data', (chunk: Buffer) => {
        for (const f of reader.push(chunk)) if (f.type === FrameType.Abort) resolve(parseJson(f.body));
      });
    });
    sock.destroy();
    expect(reply?.code).toBe('E_COMM');
    expect(reply?.message).toMatch(/protocol version mismatch: rank 1 speaks version 99, rank 0 speaks version 2/);
    const [[code, e]] = await zero;
    expect(code).toBe('E_COMM');
    expect((e as MoeError).message).toContain('version 99');
  });

  it('a stray connection is dropped without failing the group', async () => {
    const port = await freePort();
    const pending = Promise.all([0, 1].map((rank) => initProcessGroup({ device: 'cpu', rank, worldSize: 2, localRank: rank, masterAddr: '127.0.0.1', masterPort: port, timeoutMs: 10_000 })));
    await new Promise((r) => setTimeout(r, 50));
    const stray = net.connect({ host: '127.0.0.1', port });
    stray.on('error', () => {});
    stray.write('GET / HTTP/1.1\r\n\r\n');
    const pgs = await pending;
    open.push(...pgs);
    stray.destroy();
    expect((await Promise.all(pgs.map((pg) => pg.allGather(Uint8Array.of(pg.rank)))))[1].map((b) => b[0])).toEqual([0, 1]);
  });

  it('a port already taken, and a rank 0 that never comes, fail within the timeout', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      await expectCode(() => initProcessGroup({ device: 'cpu', rank: 0, worldSize: 2, localRank: 0, masterAddr: '127.0.0.1', masterPort: port }), 'E_COMM', 'EADDRINUSE');
    } finally {
      blocker.close();
    }
    const nobody = await freePort();
    const t0 = Date.now();
    await expectCode(
      () => initProcessGroup({ device: 'cpu', rank: 1, worldSize: 2, localRank: 1, masterAddr: '127.0.0.1', masterPort: nobody, timeoutMs: 1500 }),
      'E_TIMEOUT',
      'could not reach rank 0',
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('ranks that call different collectives fail with E_COMM', async () => {
    const pgs = await tcpGroup(2, await freePort());
    const r = await outcomes<unknown>([pgs[0].allGather(Uint8Array.of(0)), pgs[1].broadcast(Uint8Array.of(1), 1)]);
    expect(r.map(([code]) => code)).toEqual(['E_COMM', 'E_COMM']);
    expect((r[0][1] as MoeError).message).toMatch(/collective #0 differs between ranks/);
    // and the group stays failed
    await expectCode(() => pgs[1].barrier(), 'E_COMM', 'has failed');
    expect(pgs[0].error?.code).toBe('E_COMM');
  });

  it('a rank that does not call a collective: the others get E_TIMEOUT, rank 0 names it', async () => {
    const pgs = await tcpGroup(3, await freePort(), 1500);
    const t0 = Date.now();
    const r = await outcomes([pgs[0].allGather(Uint8Array.of(0)), pgs[1].allGather(Uint8Array.of(1))]);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(r.map(([code]) => code)).toEqual(['E_TIMEOUT', 'E_TIMEOUT']);
    // rank 0 sees who is missing; a rank whose own deadline passed first says what it waited for
    expect((r[0][1] as MoeError).message).toMatch(/no contribution yet from rank 2/);
    expect((r[1][1] as MoeError).message).toMatch(/rank 2|waiting for rank 0/);
  });

  it('destroy: its own pending calls are E_DISPOSED, the others learn that it left, hooks run once', async () => {
    const pgs = await tcpGroup(3, await freePort());
    const closed: (string | undefined)[][] = [[], [], []];
    pgs.forEach((pg, i) => pg.onClose((e) => closed[i].push(e?.code)));
    const pending = outcomes([pgs[0].barrier(), pgs[2].barrier()]);
    pgs[2].destroy();
    pgs[2].destroy();
    const [zero, two] = await pending;
    expect(two[0]).toBe('E_DISPOSED');
    expect(zero[0]).toBe('E_COMM');
    expect((zero[1] as MoeError).message).toBe('rank 2 left the group (destroy() was called)');
    await expectCode(() => pgs[1].allGather(Uint8Array.of(1)), 'E_COMM', 'rank 2 left the group');
    expect(pgs[2].destroyed).toBe(true);
    pgs[0].destroy();
    pgs[1].destroy();
    expect(closed).toEqual([['E_COMM'], ['E_COMM'], [undefined]]);
  });

  it('after destroy nothing keeps the process alive, and it can form a new group', async () => {
    const r = await runNode([path.join(__dirname, 'fixtures', 'ep-handles.js'), String(await freePort())], {}, 30_000);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ failed: 'E_COMM', again: [9, 9] });
    expect(out.active).not.toContain('TCPServerWrap');
    expect(r.ms).toBeLessThan(10_000);
  });
});

// ---- one process, every rank -------------------------------------------------------------

describe('in-process group', () => {
  it('n handles whose collectives meet, with copies per rank', async () => {
    const pgs = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 4, timeoutMs: 10_000 });
    open.push(...pgs);
    expect(pgs.map((pg) => [pg.rank, pg.worldSize, pg.localRank, pg.localWorldSize, pg.kind])).toEqual([0, 1, 2, 3].map((r) => [r, 4, r, 4, 'in-process']));
    const got = await Promise.all(pgs.map((pg) => pg.allGather(Uint8Array.of(pg.rank * 10))));
    for (const g of got) expect(g.map((b) => b[0])).toEqual([0, 10, 20, 30]);
    got[0][1][0] = 99;
    expect(got[1][1][0]).toBe(10);
    const b = await Promise.all(pgs.map((pg) => pg.broadcast(pg.rank === 3 ? Uint8Array.of(7) : undefined, 3)));
    expect(b.map((x) => x[0])).toEqual([7, 7, 7, 7]);
    await Promise.all(pgs.map((pg) => pg.barrier()));
  });

  it('allToAll between in-process handles: copies per rank; a missing handle times out', async () => {
    const pgs = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 4, timeoutMs: 10_000 });
    open.push(...pgs);
    const got = await Promise.all(pgs.map((pg) => pg.allToAll([0, 1, 2, 3].map((to) => new Uint8Array(to).fill(pg.rank * 4 + to)))));
    got.forEach((parts, to) => expect(parts.map((p) => [...p])).toEqual([0, 1, 2, 3].map((from) => new Array(to).fill(from * 4 + to))));
    got[3][0][0] = 99;
    expect(got[3][1][0]).toBe(7);
    const one = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 1 });
    open.push(...one);
    expect((await one[0].allToAll([Uint8Array.of(5, 6)])).map((p) => [...p])).toEqual([[5, 6]]);
    const slow = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 2, timeoutMs: 300 });
    open.push(...slow);
    await expectCode(() => slow[0].allToAll([Uint8Array.of(1), Uint8Array.of(2)]), 'E_TIMEOUT', 'waiting for rank 1');
  });

  it('a handle that never calls: the others get E_TIMEOUT naming it; the group stays failed', async () => {
    const pgs = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 3, timeoutMs: 300 });
    open.push(...pgs);
    const r = await outcomes([pgs[0].barrier(), pgs[1].barrier()]);
    expect(r.map(([code]) => code)).toEqual(['E_TIMEOUT', 'E_TIMEOUT']);
    expect((r[0][1] as MoeError).message).toMatch(/waiting for rank 2 of this process/);
    await expectCode(() => pgs[2].barrier(), 'E_TIMEOUT', 'has failed');
  });

  it('destroying one handle fails the others; a new group can be made', async () => {
    const pgs = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 2 });
    open.push(...pgs);
    const pending = pgs[0].allGather(Uint8Array.of(0));
    pgs[1].destroy();
    await expectCode(() => pending, 'E_COMM', 'rank 1 left the group');
    const again = await initProcessGroup({ device: 'cpu', ranks: 'all', worldSize: 2 });
    open.push(...again);
    expect((await Promise.all(again.map((pg) => pg.allGather(Uint8Array.of(pg.rank)))))[0].map((x) => x[0])).toEqual([0, 1]);
  });

  it('devices: rank i on devices[i], a device may repeat', async () => {
    const pgs = await initProcessGroup({ ranks: 'all', devices: ['cpu', 'cpu', 'cpu'], timeoutMs: 10_000 });
    open.push(...pgs);
    expect(pgs.map((pg) => [pg.rank, pg.worldSize, pg.device, pg.kind])).toEqual([0, 1, 2].map((r) => [r, 3, 'cpu', 'in-process']));
    expect((await Promise.all(pgs.map((pg) => pg.allGather(Uint8Array.of(pg.rank)))))[2].map((b) => b[0])).toEqual([0, 1, 2]);
    await expectCode(() => initProcessGroup({ ranks: 'all', devices: ['cpu', 'cpu'], worldSize: 3 }), 'E_ARGUMENT', '2 devices for worldSize 3');
    await expectCode(() => initProcessGroup({ ranks: 'all', devices: ['cpu'], device: 'cpu' }), 'E_ARGUMENT', 'not both');
    await expectCode(() => initProcessGroup({ ranks: 'all', devices: [] }), 'E_ARGUMENT', 'non-empty');
    await expectCode(() => initProcessGroup({ ranks: 'all', devices: ['gpu'] as never }), 'E_DEVICE', 'devices[0]');
    await expectCode(() => initProcessGroup({ rank: 0, worldSize: 1, devices: ['cpu'] } as never), 'E_ARGUMENT', 'only with ranks');
  });

  it('without CUDA, worldSize is required', async () => {
    const { cudaAvailable } = await import('../lib');
    if (cudaAvailable()) return;
    await expectCode(() => initProcessGroup({ device: 'cpu', ranks: 'all' }), 'E_ARGUMENT', 'worldSize is required');
  });
});

// ---- processes -------------------------------------------------------------------------------

/** runNode on the CPU backend, the child tracked in `children`. */
function runNode(args: string[], env: Record<string, string>, limitMs: number, started?: (child: ChildProcess) => void): Promise<Run> {
  return runChild(args, { MOE_KERNELS_BACKEND: 'cpu', ...env }, limitMs, (child) => {
    children.push(child);
    started?.(child);
  });
}

function launcher(n: number, env: Record<string, string>, extra: string[] = [], limitMs = 60_000, started?: (c: ChildProcess) => void): Promise<Run> {
  return runNode([cli, 'launch', '-n', String(n), rankScript, ...extra], env, limitMs, started);
}

/** The JSON lines of each rank's output, from a launcher's `[rank i] ` prefixed lines. */
function byRank(stdout: string): Map<number, Record<string, unknown>[]> {
  const out = new Map<number, Record<string, unknown>[]>();
  for (const line of stdout.split('\n')) {
    const m = /^\[rank (\d+)\] (\{.*\})$/.exec(line);
    if (!m) continue;
    const rank = Number(m[1]);
    if (!out.has(rank)) out.set(rank, []);
    out.get(rank)?.push(JSON.parse(m[2]));
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every rank's pid, from its 'started' line: after the launcher has ended, none may be left. */
function startedPids(ranks: Map<number, Record<string, unknown>[]>): number[] {
  return [...ranks.values()].flatMap((lines) => lines.filter((l) => l.started).map((l) => l.pid as number));
}

describe('moe-kernels launch', () => {
  for (const n of [4, 8]) {
    it(`${n} ranks form a group: every rank gathers [0..${n - 1}]; output is prefixed by rank; arguments pass through`, async () => {
      const r = await launcher(n, {}, ['--flag', 'x']);
      expect(r.status, r.stderr).toBe(0);
      const ranks = byRank(r.stdout);
      expect([...ranks.keys()].sort((a, b) => a - b)).toEqual([...Array(n).keys()]);
      for (const [rank, lines] of ranks) {
        const result = lines.find((l) => 'gathered' in l);
        expect(result, `rank ${rank}: ${r.stdout}`).toMatchObject({
          rank,
          worldSize: n,
          localRank: rank,
          localWorldSize: n,
          gathered: [...Array(n).keys()],
          broadcast: 'from root',
          args: ['--flag', 'x'],
        });
      }
    });
  }

  it('one rank: a world of one, output not prefixed', async () => {
    const r = await launcher(1, {});
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).not.toContain('[rank');
    expect(JSON.parse(r.stdout.trim().split('\n').at(-1) as string)).toMatchObject({ rank: 0, worldSize: 1, gathered: [0] });
  });

  it('a rank that exits before the rendezvous: the launcher exits with its status and the others are stopped', async () => {
    const r = await launcher(4, { EP_MODE: 'exit-early', EP_BAD_RANK: '2' });
    expect(r.status).toBe(7);
    expect(r.stderr).toContain('rank 2 exited with status 7; stopping the other ranks');
    const pids = startedPids(byRank(r.stdout));
    expect(pids.length).toBeGreaterThanOrEqual(1);
    expect(pids.filter(alive)).toEqual([]);
  });

  it('a rank that hangs before joining: the others get E_TIMEOUT within the timeout; all end', async () => {
    const r = await launcher(4, { EP_MODE: 'hang', EP_BAD_RANK: '2', EP_TIMEOUT_MS: '1500' });
    expect(r.status).toBe(3);
    expect(r.ms).toBeLessThan(20_000);
    const ranks = byRank(r.stdout);
    // the first rank to give up ends the launch; the others may be stopped before they report
    const errors = [...ranks.values()].flat().filter((l) => l.code !== undefined);
    expect(errors.length).toBeGreaterThanOrEqual(1);
    for (const e of errors) expect(e.code).toBe('E_TIMEOUT');
    expect(startedPids(ranks).filter(alive)).toEqual([]);
  });

  it('SIGTERM to the launcher ends every rank', async () => {
    let launched: ChildProcess | undefined;
    let seen = '';
    const r = await launcher(3, { EP_MODE: 'sleep' }, [], 30_000, (c) => {
      launched = c;
      c.stdout?.on('data', (d: Buffer) => {
        seen += d;
        // every rank has started: stop them through the launcher
        if ((seen.match(/"started":true/g) ?? []).length === 3) c.kill('SIGTERM');
      });
    });
    expect(launched).toBeDefined();
    expect(r.status).toBe(128 + 15);
    const pids = startedPids(byRank(r.stdout));
    expect(pids).toHaveLength(3);
    expect(pids.filter(alive)).toEqual([]);
  });

  it('argument errors print usage and exit non-zero, without a stack trace', async () => {
    for (const args of [['launch', rankScript], ['launch', '-n', '0', rankScript], ['launch', '-n', 'two', rankScript], ['launch', '-n', '2']]) {
      const r = await runNode([cli, ...args], {}, 30_000);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr).toContain('Usage: moe-kernels launch');
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});

// Ranks started directly with the launcher's variables, without the launcher: here no one stops
// the survivors, so each can be seen reporting its own error.
describe('ranks without a launcher', () => {
  function ranks(ids: number[], n: number, env: Record<string, string>): Promise<Run[]> {
    return freePort().then((port) =>
      Promise.all(
        ids.map((rank) =>
          runNode(
            [rankScript],
            { RANK: String(rank), WORLD_SIZE: String(n), LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: String(n), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), ...env },
            30_000,
          ),
        ),
      ),
    );
  }
  const last = (r: Run) => JSON.parse(r.stdout.trim().split('\n').at(-1) as string);

  it('a rank that never starts: every other rank gets E_TIMEOUT within the timeout', async () => {
    const runs = await ranks([0, 1, 3], 4, { EP_TIMEOUT_MS: '1500' });
    for (const r of runs) {
      expect(r.status, r.stdout + r.stderr).toBe(3);
      expect(last(r)).toMatchObject({ code: 'E_TIMEOUT' });
      expect(r.ms).toBeLessThan(15_000);
    }
    // rank 0 knows who is missing, whichever rank's deadline passed first
    expect(last(runs[0]).message).toMatch(/rank 2 (did|had) not join/);
  });

  it('a rank killed during an allGather: the survivors get E_COMM naming it, well within the timeout', async () => {
    const runs = await ranks([0, 1, 2, 3], 4, { EP_MODE: 'die-in-gather', EP_BAD_RANK: '2', EP_TIMEOUT_MS: '20000' });
    expect(runs[2].signal).toBe('SIGKILL');
    for (const r of [runs[0], runs[1], runs[3]]) {
      const out = last(r);
      expect(out.code, out.message).toBe('E_COMM');
      expect(out.message).toMatch(/rank 2 disconnected/);
      expect(out.ms).toBeLessThan(20_000);
      expect(r.status).toBe(0);
    }
  });
});
