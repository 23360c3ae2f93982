import type { MemoryStats } from './binding';
import { MoeError } from './errors';
import { addonSource, cudaUnavailableReason, forcedBackend, native, type AddonSource, type Backend } from './native';
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

/** CUDA devices with their properties: empty where CUDA is unusable (see cudaUnavailableReason). */
export function devices(): DeviceInfo[] {
  if (cudaUnavailableReason() !== undefined) return [];
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

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

/** What this installation is and runs on: what `npx moe-kernels info` prints. */
export interface BuildInfo {
  /** The package version. */
  version: string;
  /** The backend ops use by default here. */
  backend: Backend;
  backends: Backend[];
  /** The native addon file loaded, and whether it is a prebuild or a local build. */
  addon: AddonSource;
  cuda: {
    /** The addon was compiled with the CUDA backend. */
    compiled: boolean;
    /** Targets it was compiled for, e.g. ["90a", "80"]. */
    archs: string[];
    /** CUDA runtime version it was built with, e.g. "13.0". */
    runtime: string | null;
    /** Newest CUDA version the installed driver supports. */
    driver: string | null;
    /** Why CUDA is not used, when it is not. */
    unavailableReason: string | null;
  };
  devices: DeviceInfo[];
  /** peerAccess[i][j]: kernels on cuda:i can access memory of cuda:j directly. */
  peerAccess: boolean[][];
  /** The NCCL library found at run time (used for expert parallelism across hosts), or null. */
  nccl: string | null;
}

export function buildInfo(): BuildInfo {
  const b = native();
  const n = b.buildInfo();
  const list = devices();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const pkg = require('../package.json') as { version: string };
  return {
    version: pkg.version,
    backend: defaultDevice() === 'cpu' ? 'cpu' : 'cuda',
    backends: availableBackends(),
    addon: addonSource(),
    cuda: {
      compiled: n.cuda,
      archs: n.cudaArchs ? n.cudaArchs.split(',').filter((a) => a) : [],
      runtime: cudaVersion(n.cudaRuntimeVersion),
      driver: cudaVersion(n.driverVersion),
      unavailableReason: cudaUnavailableReason() ?? null,
    },
    devices: list,
    peerAccess: list.map((_, i) => list.map((__, j) => b.canAccessPeer(i, j))),
    nccl: n.ncclLibrary || null,
  };
}
