import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Binding } from './binding';
import { MoeError, describe } from './errors';

const packageRoot = path.resolve(__dirname, '..');

/** The addon file that was loaded, and how it was found. */
export interface AddonSource {
  file: string;
  kind: 'override' | 'local build' | 'prebuild';
}

let source: AddonSource | undefined;

function load(): Binding {
  const tried: string[] = [];
  const override = process.env.MOE_KERNELS_ADDON;
  const candidates: [string, AddonSource['kind']][] = override
    ? [[path.resolve(override), 'override']]
    : [
        [path.join(packageRoot, 'build', 'Release', 'moe_kernels.node'), 'local build'],
        [path.join(packageRoot, 'build', 'Debug', 'moe_kernels.node'), 'local build'],
      ];
  for (const [file, kind] of candidates) {
    if (!fs.existsSync(file)) {
      tried.push(`${file} (not found)`);
      continue;
    }
    try {
      const b = require(file) as Binding;
      source = { file, kind };
      return b;
    } catch (e) {
      tried.push(`${file} (${(e as Error).message.split('\n')[0]})`);
    }
  }
  if (!override) {
    const prebuildDir = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
    try {
      // node-gyp-build picks the prebuild matching this platform, libc and Node-API version
      const loader = require('node-gyp-build') as ((dir: string) => Binding) & { resolve?: (dir: string) => string };
      const b = loader(packageRoot);
      source = { file: loader.resolve ? loader.resolve(packageRoot) : prebuildDir, kind: 'prebuild' };
      return b;
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

// Shared with the addon: an op's hot path writes (device, stream, ...fields) here and calls the
// op with no arguments, so the crossing reads plain memory instead of one Node-API value per
// field. Pointers go in as numbers: addresses are below 2^53, so a double holds them exactly.
const args = new Float64Array(64);

/** The loaded addon; loaded on first use so that importing the package never throws. @internal */
export function native(): Binding {
  if (!binding) {
    binding = load();
    binding.setErrorClass(MoeError);
    binding.setArgBuffer(args);
  }
  return binding;
}

/** The op argument buffer (see above); fill it, then call the op with no arguments. @internal */
export function opArgs(): Float64Array {
  return args;
}

/** Which addon file was loaded (loading it if needed). @internal */
export function addonSource(): AddonSource {
  native();
  return source as AddonSource;
}

export type Backend = 'cpu' | 'cuda';

// Read once: the backend choice is a process-wide setting, and process.env reads are slow on
// the per-op path.
let forced: { value: Backend | undefined } | undefined;

/** MOE_KERNELS_BACKEND, validated. @internal */
export function forcedBackend(): Backend | undefined {
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
