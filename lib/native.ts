import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoeError } from './errors';
import type { MtpBinding } from './mtp';
import type { Nvfp4Binding } from './nvfp4';

/** Raw binding: pointers are bigints, dtypes numeric ids, device -1 the CPU. Internal. */
export interface Binding extends Nvfp4Binding, MtpBinding {
  setErrorClass(cls: unknown): void;
  cudaCompiled: boolean;
  deviceCount(): number;
  cudaUnavailableReason(): string;
  deviceInfo(device: number): NativeDeviceInfo;
  memoryStats(device: number): MemoryStats;
  emptyCache(device: number): void;
  setMemoryLimit(device: number, bytes: number): void;
  deviceAlloc(device: number, bytes: number, stream: bigint): bigint;
  deviceFree(device: number, ptr: bigint, bytes: number, usedOn: bigint[]): void;
  hostAlloc(bytes: number, zero: boolean): bigint;
  hostFree(ptr: bigint, bytes: number): void;
  hostWrite(dst: bigint, src: ArrayBufferView): void;
  hostRead(src: bigint, dst: ArrayBufferView): void;
  hostCopy(dst: bigint, src: bigint, bytes: number): void;
  copyToDevice(device: number, dst: bigint, src: bigint | ArrayBufferView, bytes: number, stream: bigint): void;
  copyDeviceToDevice(device: number, dst: bigint, src: bigint, bytes: number, stream: bigint): void;
  copyPeer(dstDevice: number, dst: bigint, srcDevice: number, src: bigint, bytes: number, stream: bigint): void;
  copyToHostAsync(device: number, dst: bigint | ArrayBufferView, src: bigint, bytes: number, stream: bigint): Promise<void>;
  memset(device: number, ptr: bigint, value: number, bytes: number, stream: bigint): void;
  defaultStream(device: number): bigint;
  createStream(device: number): bigint;
  destroyStream(device: number, stream: bigint): void;
  streamSynchronize(device: number, stream: bigint): Promise<void>;
  streamQuery(device: number, stream: bigint): boolean;
  streamWaitEvent(device: number, stream: bigint, event: bigint): void;
  createEvent(device: number, timing: boolean): bigint;
  destroyEvent(device: number, event: bigint): void;
  recordEvent(device: number, event: bigint, stream: bigint): void;
  eventSynchronize(device: number, event: bigint): Promise<void>;
  eventQuery(device: number, event: bigint): boolean;
  eventElapsedMs(device: number, start: bigint, end: bigint): number;
  beginCapture(device: number, stream: bigint): void;
  endCapture(device: number, stream: bigint): bigint;
  abortCapture(device: number, stream: bigint): void;
  isCapturing(device: number, stream: bigint): boolean;
  launchGraph(device: number, graph: bigint, stream: bigint): void;
  destroyGraph(device: number, graph: bigint): void;
  convert(device: number, src: bigint, srcType: number, dst: bigint, dstType: number, numel: number, stream: bigint): void;
  launchEmpty(device: number, stream: bigint): void;
  launchEmptyLoop(device: number, stream: bigint, n: number): number;
}

export interface NativeDeviceInfo {
  index: number;
  name: string;
  major: number;
  minor: number;
  multiprocessors: number;
  totalMemory: number;
  l2CacheBytes: number;
  sharedMemoryPerBlockOptin: number;
}

export interface MemoryStats {
  /** Bytes held by live tensors (sizes rounded up to the allocator's blocks). */
  allocatedBytes: number;
  /** Bytes obtained from the driver: live plus cached for reuse. */
  reservedBytes: number;
  peakAllocatedBytes: number;
  allocations: number;
  frees: number;
  /** cudaMalloc calls made; flat while the cache serves every allocation. */
  driverAllocations: number;
}

const packageRoot = path.resolve(__dirname, '..');

function load(): Binding {
  const tried: string[] = [];
  const override = process.env.MOE_KERNELS_ADDON;
  const candidates = override
    ? [path.resolve(override)]
    : [
        path.join(packageRoot, 'build', 'Release', 'moe_kernels.node'),
        path.join(packageRoot, 'build', 'Debug', 'moe_kernels.node'),
      ];
  for (const file of candidates) {
    if (!fs.existsSync(file)) {
      tried.push(`${file} (not found)`);
      continue;
    }
    try {
      return require(file) as Binding;
    } catch (e) {
      tried.push(`${file} (${(e as Error).message.split('\n')[0]})`);
    }
  }
  if (!override) {
    const prebuildDir = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
    try {
      // node-gyp-build picks the prebuild matching this platform, libc and Node-API version
      return require('node-gyp-build')(packageRoot) as Binding;
    } catch (e) {
      tried.push(`${prebuildDir}/*.node (${(e as Error).message.split('\n')[0]})`);
    }
  }
  throw new MoeError(
    'E_LOAD',
    `@moe/kernels could not load its native addon (${process.platform}-${process.arch}, Node ${process.version}).\n` +
      `Tried:\n  ${tried.join('\n  ')}\n` +
      'To fix: build it from source with `npm rebuild @moe/kernels --build-from-source` ' +
      '(needs CMake >= 3.24 and a C++17 compiler; nvcc for the CUDA backend, otherwise a CPU-only build), ' +
      'or set MOE_KERNELS_ADDON to the path of a moe_kernels.node.',
  );
}

let binding: Binding | undefined;

/** The loaded addon; loaded on first use so that importing the package never throws. */
export function native(): Binding {
  if (!binding) {
    binding = load();
    binding.setErrorClass(MoeError);
  }
  return binding;
}
