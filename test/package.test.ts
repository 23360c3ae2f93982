// What a user of the published package meets first: the CLI and the type declarations.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildInfo, devices } from '../lib';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');

function run(args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8' });
}

describe('npx moe-kernels', () => {
  it('info reports the package, the addon and the devices', () => {
    const r = run(['info', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(info.version).toBe(pkg.version);
    expect(fs.existsSync(info.addon.file)).toBe(true);
    expect(info.devices).toEqual(JSON.parse(JSON.stringify(devices())));
    expect(info.backends).toEqual(buildInfo().backends);
    if (info.cuda.compiled) expect(info.cuda.archs.length).toBeGreaterThan(0);
    expect(info.peerAccess.length).toBe(info.devices.length);
    const text = run(['info']);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain(`@moe/kernels ${pkg.version}`);
    expect(text.stdout).toContain(info.addon.file);
  });

  it('argument errors print usage and exit non-zero, without a stack trace', () => {
    for (const args of [['no-such-command'], ['info', '--no-such-option']]) {
      const r = run(args);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('Usage: moe-kernels');
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});

// The declarations must typecheck for a consumer who sets no compiler options at all (the
// package references the libs they need). MOE_KERNELS_EXTRA_TSC names more compilers to try,
// e.g. a TypeScript 7 tsc.
const compilers: [string, string][] = [['TypeScript', path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')]];
for (const tsc of (process.env.MOE_KERNELS_EXTRA_TSC ?? '').split(path.delimiter).filter((p) => p)) compilers.push([tsc, tsc]);

describe('type declarations', () => {
  for (const [name, tsc] of compilers) {
    it.skipIf(!fs.existsSync(tsc) || !fs.existsSync(path.join(root, 'dist', 'index.d.ts')))(
      `a consumer typechecks with plain tsc --noEmit (${name})`,
      () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-consumer-'));
        try {
          fs.mkdirSync(path.join(dir, 'node_modules', '@moe'), { recursive: true });
          fs.symlinkSync(root, path.join(dir, 'node_modules', '@moe', 'kernels'), 'dir');
          fs.writeFileSync(
            path.join(dir, 'consumer.ts'),
            [
              "import { zeros, convert, createStream, quantizeNvfp4, Tensor, MoeError, type Device } from '@moe/kernels';",
              "const d: Device = 'cpu';",
              "const x: Tensor<'f32'> = zeros([2, 32], { device: d });",
              "const y: Tensor<'bf16'> = convert(x, 'bf16');",
              'const s = createStream(d);',
              'const q = quantizeNvfp4(y);',
              'q.dispose();',
              's.dispose();',
              'y[Symbol.dispose]();',
              "const e: MoeError['code'] = 'E_SHAPE';",
              'console.log(e);',
            ].join('\n'),
          );
          const r = spawnSync(process.execPath, [tsc, '--noEmit', 'consumer.ts'], { cwd: dir, encoding: 'utf8' });
          expect(r.stdout + r.stderr).toBe('');
          expect(r.status).toBe(0);
        } finally {
          fs.rmSync(dir, { recursive: true, force: true });
        }
      },
    );
  }
});
