// npx moe-kernels demo: one decode step (MoE layers, LM head, verification) on the CPU backend.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT_NO_GPU } from '../lib/bench';
import type { DemoResult } from '../lib/demo';
import { hasCuda } from './backends';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');
const built = fs.existsSync(cli);

function run(args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

const noStack = /\n\s+at /;

describe.skipIf(!built)(`npx moe-kernels demo${built ? '' : ' (skipped: dist/ is not built; npm run build:ts)'}`, () => {
  it('runs the scaled-down step on the CPU and reports stages, throughput, acceptance and weight memory', () => {
    const r = run(['demo', '--device', 'cpu', '--steps', '2', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout) as DemoResult;
    expect(d.device).toBe('cpu');
    expect(d.execution).toBe('eager');
    expect(d.shape.name).toBe('scaled-down');
    expect(d.shape.layers).toBe(2);
    expect(d.steps).toBe(2);
    expect(d.stages.moe).toHaveLength(d.shape.layers);
    for (const ms of [...d.stages.moe, d.stages.lmHead, d.stages.verify, d.stepMs]) expect(ms).toBeGreaterThan(0);
    expect(d.tokensPerSecond).toBeGreaterThan(0);
    expect(d.acceptedPerStep).toBeGreaterThanOrEqual(1);
    expect(d.acceptedPerStep).toBeLessThanOrEqual(d.drafts + 1);
    expect(d.tokensPerSecond).toBeCloseTo((d.batch * d.acceptedPerStep) / (d.stepMs / 1e3), 6);
    // 4.5 bits per weight against 16, diluted a little by the bf16 router
    expect(d.weights.ratio).toBeGreaterThan(3.3);
    expect(d.weights.ratio).toBeLessThan(3.6);
    expect(d.notes.join(' ')).toContain('synthetic');
  });

  it('greedy verification accepts what the synthetic drafts promise: all of them at acceptance 1, none at 0', () => {
    for (const [p, want] of [['1', 4], ['0', 1]] as const) {
      const r = run(['demo', '--device', 'cpu', '--steps', '1', '--layers', '1', '--acceptance', p, '--json']);
      expect(r.status, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as DemoResult).acceptedPerStep).toBe(want);
    }
  });

  it('says on screen which shape runs, how, and that the drafts are synthetic', () => {
    const r = run(['demo', '--device', 'cpu', '--steps', '1', '--layers', '1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('scaled-down slice on cpu');
    expect(r.stdout).toContain('Drafts are synthetic');
    expect(r.stdout).toContain('eager');
    expect(r.stdout).toMatch(/tokens\/s/);
    expect(r.stdout).toMatch(/NVFP4 .* BF16 .*x less/);
  });

  it('argument errors print the usage, exit non-zero, no stack', () => {
    for (const args of [['demo', '--acceptance', '2'], ['demo', '--device', 'gpu'], ['demo', '--batch', '0'], ['demo', '--layers', 'x'], ['demo', '--nope']]) {
      const r = run(args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toContain('Usage: moe-kernels demo');
      expect(r.stderr).not.toMatch(noStack);
    }
  });

  it.skipIf(hasCuda)(`--device cuda without a GPU exits ${EXIT_NO_GPU} and says why${hasCuda ? ' (skipped: a GPU is usable)' : ''}`, () => {
    const r = run(['demo', '--device', 'cuda']);
    expect(r.status).toBe(EXIT_NO_GPU);
    expect(r.stderr).toContain('needs a CUDA GPU');
    expect(r.stderr).not.toMatch(noStack);
  });
});
