import type { MemoryStats } from './binding';
import { MoeError } from './errors';
import { cudaUnavailableReason, forcedBackend, native, type Backend } from './native';
import { checkDevice, checkInteger, deviceIndex, requireCuda, type Device } from './validate';

export { checkDevice, deviceIndex, type Device };

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

export { cudaUnavailableReason, type Backend };

export function cudaAvailable(): boolean {
  return cudaUnavailableReason() === undefined;
}

/** The backends this process can run: always "cpu", and "cuda" where a GPU is usable. */
export function availableBackends(): Backend[] {
  return cudaAvailable() ? ['cpu', 'cuda'] : ['cpu'];
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
  if (bytes !== undefined) checkInteger(bytes, 'bytes', 1, Number.MAX_SAFE_INTEGER);
  native().setMemoryLimit(deviceIndex(d), bytes ?? 0);
}

function defaultCudaDevice(): Device {
  requireCuda();
  return 'cuda:0';
}

export type { MemoryStats };
