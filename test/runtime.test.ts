import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import {
  Event,
  availableBackends,
  captureGraph,
  convert,
  createStream,
  cudaUnavailableReason,
  defaultStream,
  devices,
  empty,
  emptyCache,
  fromArray,
  memoryStats,
  setMemoryLimit,
  zeros,
  type Tensor,
} from '../lib';
import { cudaReason, expectCode, hasCuda } from './backends';

describe('backends', () => {
  it('MOE_KERNELS_BACKEND forces the backend, and a bad value is refused', () => {
    // a child process: the setting is read once per process
    const run = (value: string) =>
      spawnSync(
        process.execPath,
        ['-e', "const m = require('./dist'); try { console.log(JSON.stringify([m.availableBackends(), m.defaultDevice(), m.empty([2]).device])) } catch (e) { console.log(e.code) }"],
        { cwd: path.resolve(__dirname, '..'), env: { ...process.env, MOE_KERNELS_BACKEND: value }, encoding: 'utf8' },
      ).stdout.trim();
    expect(run('cpu')).toBe(JSON.stringify([['cpu'], 'cpu', 'cpu']));
    expect(run('gpu')).toBe('E_ARGUMENT');
    expect(run('cuda')).toBe(hasCuda ? JSON.stringify([['cpu', 'cuda'], 'cuda:0', 'cuda:0']) : 'E_NO_CUDA');
  });

  it('options objects refuse unknown keys and null', async () => {
    await expectCode(() => zeros([2], { devcie: 'cpu' } as never), 'E_ARGUMENT', 'devcie');
    const x = zeros([2], { device: 'cpu' });
    const s = createStream('cpu');
    await expectCode(() => convert(x, 'bf16', { stram: s } as never), 'E_ARGUMENT', 'stram');
    await expectCode(() => convert(x, 'bf16', null as never), 'E_ARGUMENT', 'options');
    await expectCode(() => fromArray([1, 2], { dtype: 'f32', shapes: [2] } as never), 'E_ARGUMENT', 'shapes');
    await expectCode(() => x.toArray({ steam: s } as never), 'E_ARGUMENT', 'steam');
    await expectCode(() => new Event('cpu', { timed: true } as never), 'E_ARGUMENT', 'timed');
    // the accepted keys still work
    expect(Array.from(await convert(x, 'bf16', { stream: s }).toArray())).toEqual([0, 0]);
  });

  it.skipIf(hasCuda)(`devices() is empty without a GPU, and CUDA uses say why (${cudaReason})`, async () => {
    expect(devices()).toEqual([]);
    await expectCode(() => empty([1], { device: 'cuda' }), 'E_NO_CUDA');
    await expectCode(() => memoryStats(), 'E_NO_CUDA');
  });

  it('a failed load throws E_LOAD naming the files tried and the fix', async () => {
    const saved = process.env.MOE_KERNELS_ADDON;
    process.env.MOE_KERNELS_ADDON = '/nonexistent/moe_kernels.node';
    try {
      vi.resetModules(); // a fresh loader: this module instance has not loaded the addon
      const fresh = await import('../lib/native');
      const { MoeError: FreshMoeError } = await import('../lib/errors');
      let caught: unknown;
      try {
        fresh.native();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(FreshMoeError);
      expect((caught as { code: string }).code).toBe('E_LOAD');
      expect((caught as Error).message).toContain('/nonexistent/moe_kernels.node (not found)');
      expect((caught as Error).message).toContain('npm rebuild @moe/kernels --build-from-source');
    } finally {
      if (saved === undefined) delete process.env.MOE_KERNELS_ADDON;
      else process.env.MOE_KERNELS_ADDON = saved;
      vi.resetModules();
    }
  });

  it('CPU streams and events are immediate, and events time host work', async () => {
    const s = createStream('cpu');
    const a = new Event('cpu', { timing: true }).record(s);
    const until = performance.now() + 20;
    while (performance.now() < until) {
      // busy: CPU ops run when called, so this is the work between the two records
    }
    const b = new Event('cpu', { timing: true }).record(s);
    await b.wait();
    expect(b.query()).toBe(true);
    expect(a.elapsedMs(b)).toBeGreaterThanOrEqual(19);
    expect(a.elapsedMs(b)).toBeLessThan(1000);
    await expectCode(() => captureGraph(s, () => {}), 'E_DEVICE', 'stream');
    s.dispose();
    await expectCode(() => s.synchronize(), 'E_DISPOSED', 'stream');
  });
});

describe.skipIf(!hasCuda)('CUDA runtime [cuda]', () => {
  it('lists devices with their properties', () => {
    const list = devices();
    expect(list.length).toBeGreaterThan(0);
    const d = list[0];
    expect(d.device).toBe('cuda:0');
    expect(d.name.length).toBeGreaterThan(0);
    expect(d.computeCapability).toMatch(/^\d+\.\d+$/);
    expect(d.multiprocessors).toBeGreaterThan(0);
    expect(d.totalMemory).toBeGreaterThan(2 ** 30);
  });

  it('orders work across streams with events, and times it', async () => {
    const s1 = createStream('cuda:0');
    const s2 = createStream('cuda:0');
    const x = fromArray(new Float32Array(1 << 20).map((_, i) => i % 256), { device: 'cuda:0', stream: s1 });
    const start = new Event('cuda:0', { timing: true }).record(s1);
    const y = convert(x, 'bf16', { stream: s1 });
    const done = new Event('cuda:0', { timing: true }).record(s1);
    s2.waitEvent(done);
    const z = convert(y, 'f32', { stream: s2 });
    await s2.synchronize();
    await done.wait();
    expect(done.query()).toBe(true);
    // two conversions of 4 MiB take microseconds, not zero and not seconds
    expect(start.elapsedMs(done)).toBeGreaterThan(0);
    expect(start.elapsedMs(done)).toBeLessThan(1000);
    const back = await z.toArray({ stream: s2 });
    expect(back[255]).toBe(255);
    expect(back[256]).toBe(0);
    expect(back[(1 << 20) - 1]).toBe(255);
    s1.dispose();
    s2.dispose();
  });

  it('tensors outlive the streams they were allocated and used on', async () => {
    const a = createStream('cuda:0');
    const b = createStream('cuda:0');
    const x = fromArray(new Float32Array(4096).fill(1.5), { device: 'cuda:0', stream: a });
    const y = convert(x, 'bf16', { stream: b }); // x used on b, y allocated on b
    a.dispose();
    b.dispose();
    expect(Array.from((await y.toArray()).slice(0, 2))).toEqual([1.5, 1.5]);
    x.dispose(); // its cross-stream wait no longer names the destroyed stream
    y.dispose();
    // their blocks are reusable from any stream now
    const before = memoryStats('cuda:0').driverAllocations;
    const z = fromArray(new Float32Array(4096).fill(2), { device: 'cuda:0' });
    expect(memoryStats('cuda:0').driverAllocations).toBe(before);
    expect((await z.toArray())[4095]).toBe(2);
  });

  // Enqueues about `ms` of GPU work on `stream` (64 Mi-element conversions into a preallocated
  // output: no allocation, so no implicit device synchronization, between the launches).
  function queueGpuWork(stream: ReturnType<typeof createStream>, ms: number): () => void {
    const x = zeros([1 << 26], { device: 'cuda:0', stream });
    const y = empty([1 << 26], { dtype: 'bf16', device: 'cuda:0', stream });
    // one conversion reads 256 MiB and writes 128 MiB: at least 0.05 ms on any current GPU
    for (let i = 0; i < ms * 20; i++) convert(x, 'bf16', { out: y, stream });
    return () => {
      x.dispose();
      y.dispose();
    };
  }

  it('synchronize() does not block the event loop', async () => {
    // queue tens of ms of GPU work, then count event-loop turns taken while waiting for it:
    // a synchronize that blocked the JS thread would leave none
    const stream = defaultStream('cuda:0');
    await stream.synchronize();
    const start = new Event('cuda:0', { timing: true }).record(stream);
    const release = queueGpuWork(stream, 40);
    const end = new Event('cuda:0', { timing: true }).record(stream);
    let turns = 0;
    let spinning = true;
    const spin = () => {
      if (!spinning) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    await stream.synchronize();
    spinning = false;
    expect(start.elapsedMs(end)).toBeGreaterThan(5);
    expect(turns).toBeGreaterThan(0);
    release();
  });

  it('dispose() of a busy stream returns at once, and its memory is reused only after its work', async () => {
    const s = createStream('cuda:0');
    const x = fromArray(new Float32Array(1 << 22).fill(3), { device: 'cuda:0', stream: s });
    const y = empty([1 << 22], { dtype: 'bf16', device: 'cuda:0', stream: s });
    await s.synchronize();
    const release = queueGpuWork(s, 40);
    convert(x, 'bf16', { out: y, stream: s }); // reads x after that work
    const busy = !s.query();
    const t0 = performance.now();
    s.dispose();
    const disposeMs = performance.now() - t0;
    expect(busy).toBe(true);
    expect(disposeMs).toBeLessThan(5);
    // x's block must not serve a new allocation while the destroyed stream may still read it
    x.dispose();
    const z = fromArray(new Float32Array(1 << 22).fill(-7), { device: 'cuda:0' });
    const back = await y.toArray();
    expect(back[0]).toBe(3);
    expect(back[(1 << 22) - 1]).toBe(3);
    expect((await z.toArray())[0]).toBe(-7);
    release();
  });

  it('memory a disposed stream still uses is not handed to another stream until that work ends', async () => {
    // y belongs to stream a; a late write to it is queued on s, then s is disposed and y freed.
    // A new allocation on a must not get y's block while s's write is pending.
    const a = createStream('cuda:0');
    const s = createStream('cuda:0');
    const x = fromArray(new Float32Array(1 << 22).fill(3), { device: 'cuda:0', stream: s });
    const y = empty([1 << 22], { dtype: 'bf16', device: 'cuda:0', stream: a });
    await a.synchronize();
    await s.synchronize();
    const release = queueGpuWork(s, 40);
    convert(x, 'bf16', { out: y, stream: s });
    s.dispose();
    y.dispose();
    const z = fromArray(new Float32Array(1 << 21).fill(-7), { device: 'cuda:0', stream: a }); // y's byte size
    const back = await z.toArray({ stream: a });
    expect(back[0]).toBe(-7);
    expect(back[(1 << 21) - 1]).toBe(-7);
    release();
    x.dispose();
    z.dispose();
    a.dispose();
  });

  it('await using a stream waits for its work', async () => {
    const x = zeros([1 << 24], { device: 'cuda:0' });
    let marker: Event;
    {
      await using s = createStream('cuda:0');
      for (let i = 0; i < 8; i++) convert(x, 'bf16', { stream: s }).dispose();
      marker = new Event('cuda:0').record(s);
    }
    expect(marker.query()).toBe(true);
    marker.dispose();
    x.dispose();
  });

  it('10,000 allocate/free cycles leave device memory flat', () => {
    emptyCache('cuda:0');
    const before = memoryStats('cuda:0');
    for (let i = 0; i < 10_000; i++) {
      const t = empty([1 + (i % 7) * 1000], { device: 'cuda:0' });
      t.dispose();
    }
    const after = memoryStats('cuda:0');
    expect(after.allocatedBytes).toBe(before.allocatedBytes);
    expect(after.allocations - before.allocations).toBe(10_000);
    expect(after.frees - before.frees).toBe(10_000);
    // seven sizes, seven blocks (512-byte steps): the cache serves the rest
    let blocks = 0;
    for (let k = 0; k < 7; k++) blocks += Math.ceil((4 * (1 + k * 1000)) / 512) * 512;
    expect(after.driverAllocations - before.driverAllocations).toBeLessThanOrEqual(7);
    expect(after.reservedBytes - before.reservedBytes).toBeLessThanOrEqual(blocks);
  });

  it('reports out-of-memory as E_OOM and stays usable', async () => {
    // A cap on this process's reservation stands in for a full device, so that the test does
    // not starve other processes sharing the GPU.
    emptyCache('cuda:0');
    const base = memoryStats('cuda:0').reservedBytes;
    setMemoryLimit('cuda:0', base + 256 * 2 ** 20);
    const held: Tensor[] = [];
    try {
      held.push(empty([100 * 2 ** 20], { dtype: 'u8', device: 'cuda:0' }));
      await expectCode(() => empty([200 * 2 ** 20], { dtype: 'u8', device: 'cuda:0' }), 'E_OOM', 'setMemoryLimit');
      // freed and cached memory is given back before failing: this one fits after the dispose
      held.pop()?.dispose();
      held.push(empty([200 * 2 ** 20], { dtype: 'u8', device: 'cuda:0' }));
    } finally {
      for (const t of held) t.dispose();
      setMemoryLimit('cuda:0', undefined);
    }
    await expectCode(() => setMemoryLimit('cuda:0', -1), 'E_ARGUMENT', 'bytes');
    const ok = fromArray([1, 2], { device: 'cuda:0' });
    expect(Array.from(await ok.toArray())).toEqual([1, 2]);
  });

  it('captures ops into a graph and replays them', async () => {
    const s = createStream('cuda:0');
    const x = fromArray([1.25, -3, 448.5, 1000], { device: 'cuda:0', stream: s });
    const q = empty([4], { dtype: 'fp8e4m3', device: 'cuda:0', stream: s });
    const y = empty([4], { dtype: 'f32', device: 'cuda:0', stream: s });
    const graph = captureGraph(s, () => {
      convert(x, 'fp8e4m3', { out: q, stream: s });
      convert(q, 'f32', { out: y, stream: s });
    });
    graph.replay();
    expect(Array.from(await y.toArray({ stream: s }))).toEqual([1.25, -3, 448, 448]);
    // new inputs in place, replay again
    const x2 = fromArray([2, 3, 5, 7], { device: 'cuda:0', stream: s });
    convert(x2, 'f32', { out: x, stream: s });
    graph.replay();
    expect(Array.from(await y.toArray({ stream: s }))).toEqual([2, 3, 5, 7]);
    // disposing captured tensors does not free what the graph still uses
    const bytesHeld = memoryStats('cuda:0').allocatedBytes;
    q.dispose();
    expect(memoryStats('cuda:0').allocatedBytes).toBe(bytesHeld);
    graph.replay();
    await s.synchronize();
    graph.dispose();
    expect(memoryStats('cuda:0').allocatedBytes).toBeLessThan(bytesHeld);
    await expectCode(() => graph.replay(), 'E_DISPOSED', 'graph');
  });

  it('a capture that allocates while freed blocks still wait on another stream', async () => {
    const [s1, s2, s3] = [createStream('cuda:0'), createStream('cuda:0'), createStream('cuda:0')];
    const y = fromArray([0.5, -2, 3], { device: 'cuda:0', stream: s3 });
    // x, used on s2 and then freed, waits on an event of s2 before the allocator reuses it
    const x = fromArray(Float32Array.from({ length: 1 << 16 }, (_, i) => i), { device: 'cuda:0', stream: s1 });
    convert(x, 'bf16', { stream: s2 }).dispose();
    x.dispose();
    await s3.synchronize();
    // the allocation inside the capture looks at that event first: it must not break the capture
    let out!: Tensor<'bf16'>;
    const graph = captureGraph(s3, () => {
      out = convert(y, 'bf16', { stream: s3 });
    });
    graph.replay(s3);
    expect(Array.from(await out.toArray({ stream: s3 }))).toEqual([0.5, -2, 3]);
    graph.dispose();
    for (const s of [s1, s2, s3]) await s[Symbol.asyncDispose]();
  });

  it('refuses reads and async callbacks during capture, and recovers', async () => {
    const s = createStream('cuda:0');
    const x = fromArray([1, 2], { device: 'cuda:0', stream: s });
    let read: Promise<unknown> | undefined;
    const g = captureGraph(s, () => {
      read = x.toArray({ stream: s });
    });
    await expectCode(() => read, 'E_CAPTURE', 'captured');
    g.dispose();
    // uploads from the host are refused up front too
    const g3 = captureGraph(s, () => {
      expect(() => fromArray([1], { device: 'cuda:0', stream: s })).toThrow(/E_CAPTURE|captured/);
    });
    g3.dispose();
    let sync: Promise<void> | undefined;
    const g2 = captureGraph(s, () => {
      sync = s.synchronize();
    });
    await expectCode(() => sync, 'E_CAPTURE', 'captured');
    g2.dispose();
    await expectCode(() => captureGraph(s, (async () => {}) as never), 'E_CAPTURE', 'promise');
    expect(() =>
      captureGraph(s, () => {
        convert(x, 'bf16', { stream: s });
        throw new Error('boom');
      }),
    ).toThrow('boom');
    // the stream works normally afterwards
    const y = convert(x, 'bf16', { stream: s });
    expect(Array.from(await y.toArray({ stream: s }))).toEqual([1, 2]);
  });
});
