// npx moe-kernels bench: the family list, usage errors, and the clean exit without a GPU.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BENCH_FAMILIES, EXIT_NO_GPU } from '../lib/bench';
import { cudaReason, hasCuda } from './backends';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');
const built = fs.existsSync(cli);

function run(args: string[], cwd = root) {
  return spawnSync(process.execPath, [cli, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
}

const noStack = /\n\s+at /;

describe.skipIf(!built)(`npx moe-kernels bench${built ? '' : ' (skipped: dist/ is not built; npm run build:ts)'}`, () => {
  it('--list names every family, one per line, and exits 0', () => {
    const r = run(['bench', '--list']);
    expect(r.status, r.stderr).toBe(0);
    const names = r.stdout.trim().split('\n').map((l) => l.split(/\s+/)[0]);
    expect(names).toEqual(BENCH_FAMILIES.map((f) => f.name));
    expect(names).toEqual(expect.arrayContaining(['nvfp4', 'mtp', 'launch']));
  });

  it('an unknown family or option is a usage error: non-zero, the usage, no stack', () => {
    for (const args of [['bench', 'no-such-family'], ['bench', 'nvfp4', 'nope'], ['bench', '--no-such-option'], ['bench', '--out']]) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toContain('Usage: moe-kernels bench');
      expect(r.stderr).not.toMatch(noStack);
    }
    const r = run(['bench', 'nvfp4', 'nope']);
    expect(r.stderr).toContain('"nope"');
    expect(r.stderr).toContain(BENCH_FAMILIES.map((f) => f.name).join(', '));
  });

  it.skipIf(hasCuda)(`without a CUDA GPU it says what it needs and exits ${EXIT_NO_GPU}, writing nothing${hasCuda ? ' (skipped: a GPU is usable)' : ''}`, () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-'));
    try {
      for (const args of [['bench'], ['bench', 'mtp', '--peers', '--out', 'out']]) {
        const r = run(args, dir);
        expect(r.status, r.stderr).toBe(EXIT_NO_GPU);
        expect(r.stderr).toContain('needs a CUDA GPU');
        expect(r.stderr).toContain(String(cudaReason));
        expect(r.stderr).toContain('nothing was measured');
        expect(r.stderr).not.toMatch(noStack);
      }
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('benchmark families', () => {
  it.each(BENCH_FAMILIES.map((f) => [f.name, f.script]))('%s: %s exists', (_, script) => {
    expect(fs.existsSync(path.join(root, script))).toBe(true);
  });

  it.skipIf(hasCuda || !built)(`run_launch.sh exits ${EXIT_NO_GPU} without a GPU${hasCuda ? ' (skipped: a GPU is usable)' : ''}`, () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-'));
    try {
      const r = spawnSync('bash', [path.join(root, 'benchmarks', 'run_launch.sh'), dir], { cwd: root, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(EXIT_NO_GPU);
      expect(r.stderr).toContain('needs a CUDA GPU');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' });
  it.skipIf(npm.status !== 0)(`the package carries the benchmarks, without their results${npm.status !== 0 ? ' (skipped: npm is not installed)' : ''}`, () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const files = (JSON.parse(r.stdout) as { files: { path: string }[] }[])[0].files.map((f) => f.path);
    for (const f of BENCH_FAMILIES) expect(files).toContain(f.script);
    expect(files).toContain('benchmarks/harness.js');
    expect(files).toContain('benchmarks/chart.js');
    expect(files.filter((p) => p.startsWith('benchmarks/results/'))).toEqual([]);
  });
});
