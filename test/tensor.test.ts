import { describe, expect, it } from 'vitest';
import { MAX_ELEMENTS, Tensor, defaultStream, empty, fromArray, fromBytes, fromPointer, zeros, type Device } from '../lib';
import { expectCode, forEachBackend, hasCuda } from './backends';

forEachBackend('Tensor', (device: Device) => {
  it('creates tensors of every dtype and reads them back', async () => {
    const f = fromArray([[1, 2, 3], [4, 5, 6]], { device });
    expect(f.shape).toEqual([2, 3]);
    expect(f.dtype).toBe('f32');
    expect(f.device).toBe(device);
    expect(f.byteLength).toBe(24);
    expect(Array.from(await f.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(await fromArray([1.5, -2], { dtype: 'bf16', device }).toArray())).toEqual([1.5, -2]);
    expect(Array.from(await fromArray([1.5, 70000], { dtype: 'f16', device }).toArray())).toEqual([1.5, Infinity]);
    expect(Array.from(await fromArray([0.3, 1000], { dtype: 'fp8e4m3', device }).toArray())).toEqual([0.3125, 448]);
    expect(Array.from(await fromArray([0, 255], { dtype: 'u8', device }).toArray())).toEqual([0, 255]);
    expect(Array.from(await fromArray([-(2 ** 31), 7], { dtype: 'i32', device }).toArray())).toEqual([-(2 ** 31), 7]);
    expect(Array.from(await fromArray([-(2n ** 62n), 9n], { dtype: 'i64', device }).toArray())).toEqual([-(2n ** 62n), 9n]);
    expect(Array.from(await fromArray(new Int32Array([5, 6]), { device }).toArray())).toEqual([5, 6]);
    const z = zeros([3, 5], { dtype: 'bf16', device });
    expect(Array.from(await z.toArray())).toEqual(new Array(15).fill(0));
    expect(await fromArray([1], { dtype: 'bf16', device }).toBytes()).toEqual(new Uint8Array([0x80, 0x3f]));
  });

  it('makes 0-d, empty and large-dimension tensors', async () => {
    const scalar = fromArray([3], { shape: [], device });
    expect(scalar.shape).toEqual([]);
    expect(scalar.numel).toBe(1);
    expect(Array.from(await scalar.toArray())).toEqual([3]);
    const none = empty([4, 0, 2], { device });
    expect(none.numel).toBe(0);
    expect((await none.toArray()).length).toBe(0);
  });

  it('views share storage and keep it alive after the base is disposed', async () => {
    const base = fromArray([0, 1, 2, 3, 4, 5, 6, 7], { device });
    const m = base.reshape([2, -1]);
    expect(m.shape).toEqual([2, 4]);
    const row = m.slice(1, 2);
    expect(row.dataPtr - base.dataPtr).toBe(16n);
    base.dispose();
    m.dispose();
    expect(base.disposed).toBe(true);
    expect(Array.from(await row.toArray())).toEqual([4, 5, 6, 7]);
    row.dispose();
    row.dispose(); // idempotent
  });

  it('supports `using` (Symbol.dispose)', () => {
    let escaped: Tensor;
    {
      using t = empty([4], { device });
      escaped = t;
      expect(t.disposed).toBe(false);
    }
    expect(escaped.disposed).toBe(true);
  });

  it('copies between devices and to itself', async () => {
    const x = fromArray([1, 2, 3], { dtype: 'f16', device });
    const c = await x.copyTo('cpu');
    expect(c.device).toBe('cpu');
    expect(Array.from(await c.toArray())).toEqual([1, 2, 3]);
    const back = await c.copyTo(device);
    expect(back.device).toBe(device);
    expect(Array.from(await back.toArray())).toEqual([1, 2, 3]);
    expect(back.dataPtr).not.toBe(x.dataPtr);
  });

  it('wraps memory it does not own with fromPointer', async () => {
    const owner = fromArray([9, 8, 7, 6], { device });
    const alias = fromPointer(owner.dataPtr + 4n, { dtype: 'f32', shape: [2], device });
    expect(Array.from(await alias.toArray())).toEqual([8, 7]);
    alias.dispose(); // frees nothing
    expect(Array.from(await owner.toArray())).toEqual([9, 8, 7, 6]);
  });

  it('rejects bad shapes, sizes, dtypes and data', async () => {
    await expectCode(() => empty([2, -1], { device }), 'E_SHAPE', 'shape[1]');
    await expectCode(() => empty([2.5], { device }), 'E_SHAPE', 'shape[0]');
    await expectCode(() => empty([NaN], { device }), 'E_SHAPE', 'shape[0]');
    await expectCode(() => empty('3' as never, { device }), 'E_SHAPE', 'shape');
    await expectCode(() => empty([65536, 32768], { device }), 'E_SHAPE', '2^31');
    await expectCode(() => empty([MAX_ELEMENTS + 1], { device }), 'E_SHAPE', '2^31');
    await expectCode(() => empty([2], { device, dtype: 'f64' as never }), 'E_DTYPE', 'dtype');
    await expectCode(() => fromArray([1, 2, 3], { shape: [2, 2], device }), 'E_SHAPE', 'shape');
    await expectCode(() => fromArray([[1, 2], [3]], { device }), 'E_SHAPE', 'data');
    await expectCode(() => fromArray([1.5], { dtype: 'i32', device }), 'E_ARGUMENT', 'data[0]');
    await expectCode(() => fromArray([256], { dtype: 'u8', device }), 'E_ARGUMENT', 'data[0]');
    await expectCode(() => fromArray(['a'] as never, { device }), 'E_ARGUMENT', 'data');
    await expectCode(() => fromBytes(new Uint8Array(3), { dtype: 'f16', shape: [2], device }), 'E_SHAPE', 'bytes');
    await expectCode(() => empty([2], { device: 'tpu' as never }), 'E_DEVICE', 'device');
    await expectCode(() => fromPointer(3n, { dtype: 'f32', shape: [1], device }), 'E_ARGUMENT', 'ptr');
    const x = fromArray([1, 2, 3, 4], { device });
    await expectCode(() => x.reshape([3]), 'E_SHAPE', 'shape');
    await expectCode(() => x.slice(3, 2), 'E_SHAPE', 'slice');
  });

  it('refuses every use of a disposed tensor', async () => {
    const x = fromArray([1, 2], { device });
    x.dispose();
    await expectCode(() => x.dataPtr, 'E_DISPOSED');
    await expectCode(() => x.toArray(), 'E_DISPOSED');
    await expectCode(() => x.toBytes(), 'E_DISPOSED');
    await expectCode(() => x.copyTo('cpu'), 'E_DISPOSED');
    await expectCode(() => x.reshape([2]), 'E_DISPOSED');
  });

  it('has a default stream whose synchronize() resolves', async () => {
    const s = defaultStream(device);
    expect(s.device).toBe(device);
    await s.synchronize();
    expect(s.query()).toBe(true);
  });
});

describe.skipIf(!hasCuda)('Tensor across devices [cuda]', () => {
  it('E_DEVICE names a cuda index that does not exist', async () => {
    await expectCode(() => empty([1], { device: 'cuda:99' }), 'E_DEVICE', 'cuda:99');
  });
});
