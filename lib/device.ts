import { MoeError, describe } from './errors';
import { native, type MemoryStats } from './native';

/** Where a tensor lives: the host (`"cpu"`, the reference backend) or a CUDA device. */
export type Device = 'cpu' | `cuda:${number}`;
export type Backend = 'cpu' | 'cuda';

export interface DeviceInfo {
  device: Device;
  name: string;
  /** Compute capability, e.g. "9.0". */
  computeCapability: string;
  multiprocessors: number;
  totalMemory: number;
  l2CacheBytes: number;
  sharedMemoryPerBlockOptin: number;
}

/** The native device index of a device: -1 for the CPU. */
export function deviceIndex(device: Device): number {
  return device === 'cpu' ? -1 : Number(device.slice(5));
}

// Read once: the backend choice is a process-wide setting, and process.env reads are slow
// on the per-op path.
let forced: { value: Backend | undefined } | undefined;

function forcedBackend(): Backend | undefined {
  if (forced) return forced.value;
  const v = process.env.MOE_KERNELS_BACKEND;
  if (v === undefined || v === '') forced = { value: undefined };
  else if (v === 'cpu' || v === 'cuda') forced = { value: v };
  else throw new MoeError('E_ARGUMENT', `MOE_KERNELS_BACKEND: expected "cpu" or "cuda", got ${describe(v)}`);
  return forced.value;
}

let cudaReason: { value: string | undefined } | undefined;

/** Why CUDA cannot be used in this process, or undefined when it can. */
export function cudaUnavailableReason(): string | undefined {
  if (!cudaReason) {
    const b = native();
    cudaReason = {
      value: forcedBackend() === 'cpu' ? 'MOE_KERNELS_BACKEND=cpu' : b.deviceCount() > 0 ? undefined : b.cudaUnavailableReason(),
    };
  }
  return cudaReason.value;
}

export function cudaAvailable(): boolean {
  return cudaUnavailableReason() === undefined;
}

/** The backends this process can run: always "cpu", and "cuda" where a GPU is usable. */
export function availableBackends(): Backend[] {
  return cudaAvailable() ? ['cpu', 'cuda'] : ['cpu'];
}

function requireCuda(): void {
  const reason = cudaUnavailableReason();
  if (reason !== undefined) throw new MoeError('E_NO_CUDA', `no CUDA device is usable: ${reason}`);
}

/** CUDA devices with their properties; throws E_NO_CUDA where there are none. */
export function devices(): DeviceInfo[] {
  requireCuda();
  const b = native();
  const out: DeviceInfo[] = [];
  for (let i = 0; i < b.deviceCount(); i++) {
    const d = b.deviceInfo(i);
    out.push({
      device: `cuda:${i}`,
      name: d.name,
      computeCapability: `${d.major}.${d.minor}`,
      multiprocessors: d.multiprocessors,
      totalMemory: d.totalMemory,
      l2CacheBytes: d.l2CacheBytes,
      sharedMemoryPerBlockOptin: d.sharedMemoryPerBlockOptin,
    });
  }
  return out;
}

/**
 * The device new tensors go to when none is named: cuda:0 where CUDA is usable, else the CPU.
 * MOE_KERNELS_BACKEND=cpu|cuda forces one (cuda then throws E_NO_CUDA where there is no GPU).
 */
export function defaultDevice(): Device {
  const forced = forcedBackend();
  if (forced === 'cpu') return 'cpu';
  if (forced === 'cuda') {
    requireCuda();
    return 'cuda:0';
  }
  return cudaAvailable() ? 'cuda:0' : 'cpu';
}

/** The default device of a backend. */
export function backendDevice(backend: Backend): Device {
  if (backend === 'cpu') return 'cpu';
  requireCuda();
  return 'cuda:0';
}

/** Validates a device argument ("cpu", "cuda", "cuda:N"); "cuda" means cuda:0. */
export function checkDevice(value: unknown, argument: string): Device {
  if (value === 'cpu') return 'cpu';
  if (typeof value === 'string') {
    const m = /^cuda(?::(\d+))?$/.exec(value);
    if (m) {
      requireCuda();
      const index = m[1] === undefined ? 0 : Number(m[1]);
      const count = native().deviceCount();
      if (index >= count) {
        throw new MoeError('E_DEVICE', `${argument}: cuda:${index} does not exist (this machine has ${count} CUDA devices)`);
      }
      return `cuda:${index}`;
    }
  }
  throw new MoeError('E_DEVICE', `${argument}: expected "cpu", "cuda" or "cuda:N", got ${describe(value)}`);
}

/** Allocator statistics of a CUDA device. */
export function memoryStats(device: Device | 'cuda' = defaultCudaDevice()): MemoryStats {
  const d = checkDevice(device, 'device');
  if (d === 'cpu') throw new MoeError('E_DEVICE', 'memoryStats: device must be a CUDA device, got "cpu"');
  return native().memoryStats(deviceIndex(d));
}

/** Returns the cached, unused device memory of a device to the driver. */
export function emptyCache(device: Device | 'cuda' = defaultCudaDevice()): void {
  const d = checkDevice(device, 'device');
  if (d === 'cpu') return;
  native().emptyCache(deviceIndex(d));
}

/**
 * Caps the device memory this process reserves on `device` (tensors plus the allocator's cache);
 * `undefined` removes the cap. Past it, allocations fail with E_OOM as on a full device. Useful
 * where several processes share a GPU.
 */
export function setMemoryLimit(device: Device | 'cuda', bytes: number | undefined): void {
  const d = checkDevice(device, 'device');
  if (d === 'cpu') throw new MoeError('E_DEVICE', 'device: setMemoryLimit takes a CUDA device, got "cpu"');
  if (bytes !== undefined && (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes <= 0)) {
    throw new MoeError('E_ARGUMENT', `bytes: expected a positive integer or undefined, got ${describe(bytes)}`);
  }
  native().setMemoryLimit(deviceIndex(d), bytes ?? 0);
}

function defaultCudaDevice(): Device {
  requireCuda();
  return 'cuda:0';
}

export type { MemoryStats };
