#!/usr/bin/env node
// `npx moe-kernels <command>`: what a new user runs first.
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { BenchUsageError, EXIT_NO_GPU, bench } from './bench';
import { formatDemo, runDemo } from './demo';
import { buildInfo, cudaAvailable, cudaUnavailableReason, type BuildInfo } from './device';
import { launch, MAX_LOCAL_RANKS } from './ep/launch';
import { MoeError } from './errors';

function formatBytes(n: number): string {
  return `${(n / 2 ** 30).toFixed(1)} GiB`;
}

function printInfo(info: BuildInfo): void {
  const lines: string[] = [];
  lines.push(`@moe/kernels ${info.version}`);
  lines.push(`backend      ${info.backend} (available: ${info.backends.join(', ')})`);
  lines.push(`addon        ${info.addon.file} (${info.addon.kind})`);
  if (info.cuda.compiled) {
    lines.push(`CUDA build   runtime ${info.cuda.runtime ?? '?'}, targets ${info.cuda.archs.join(', ') || '?'}`);
    lines.push(`CUDA driver  ${info.cuda.driver ?? 'none found'}`);
  } else {
    lines.push('CUDA build   none: this addon is the CPU reference only');
  }
  if (info.cuda.unavailableReason) lines.push(`CUDA use     off: ${info.cuda.unavailableReason}`);
  if (info.devices.length === 0) lines.push('devices      none');
  for (const d of info.devices) {
    lines.push(`${d.device.padEnd(12)} ${d.name}, compute ${d.computeCapability}, ${d.multiprocessors} SMs, ${formatBytes(d.totalMemory)}`);
  }
  if (info.devices.length > 1) {
    const peers = info.peerAccess.map((row, i) => `cuda:${i} -> ${row.map((ok, j) => (i === j ? '-' : ok ? `cuda:${j}` : `(no cuda:${j})`)).join(' ')}`);
    lines.push(`peer access  ${peers.join('; ')}`);
  }
  lines.push(`NCCL         ${info.nccl ?? 'not found (needed only for expert parallelism without peer access)'}`);
  console.log(lines.join('\n'));
}

function integerIn(lo: number, hi: number): (value: string) => number {
  return (value) => {
    if (!/^\d+$/.test(value) || Number(value) < lo || Number(value) > hi) throw new InvalidArgumentError(`expected an integer in [${lo}, ${hi}]`);
    return Number(value);
  };
}

function numberIn(lo: number, hi: number): (value: string) => number {
  return (value) => {
    const x = Number(value);
    if (value.trim() === '' || !Number.isFinite(x) || x < lo || x > hi) throw new InvalidArgumentError(`expected a number in [${lo}, ${hi}]`);
    return x;
  };
}

interface DemoFlags {
  layers?: number;
  batch?: number;
  drafts: number;
  steps?: number;
  acceptance: number;
  device?: 'cpu' | 'cuda';
  shape?: 'full' | 'small';
  mode: 'greedy' | 'rejection';
  logits: 'bf16' | 'f32';
  seed: number;
  json?: boolean;
  progress: boolean;
}

export async function main(argv: string[]): Promise<number> {
  let status = 0;
  const program = new Command('moe-kernels')
    .description('CUDA kernels for serving Mixture-of-Experts models in NVFP4, with a CPU reference backend')
    .exitOverride()
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .enablePositionalOptions();
  program
    .command('info')
    .description('the package, the addon loaded, its CUDA build, the devices and what links them')
    .option('--json', 'print the report as JSON')
    .action((opts: { json?: boolean }) => {
      const info = buildInfo();
      if (opts.json) console.log(JSON.stringify(info, null, 2));
      else printInfo(info);
    });
  program
    .command('launch')
    .description("start N ranks of a Node program on this host with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); when one rank dies the others are stopped")
    .requiredOption('-n, --nproc-per-node <N>', 'ranks to start', integerIn(1, MAX_LOCAL_RANKS))
    .option('--master-port <port>', "rank 0's port (default: a free one)", integerIn(1, 65535))
    .argument('<script>', 'the program each rank runs with node')
    .argument('[args...]', "the program's arguments")
    .passThroughOptions()
    .action(async (script: string, args: string[], opts: { nprocPerNode: number; masterPort?: number }) => {
      status = await launch({ nproc: opts.nprocPerNode, script, args, masterPort: opts.masterPort });
    });
  program
    .command('demo')
    .description('one speculative-decoding step of a DeepSeek-V3-shaped slice with random NVFP4 weights (MoE layers, LM head, draft verification), timed per stage; the CPU runs a scaled-down shape')
    .addOption(new Option('--device <device>', 'where it runs (default: cuda where a GPU is usable, else cpu)').choices(['cpu', 'cuda']))
    .addOption(new Option('--shape <shape>', 'full: DeepSeek-V3 (default on cuda); small: scaled down (default on cpu)').choices(['full', 'small']))
    .option('--layers <L>', 'MoE layers (default 4 full, 2 small)', integerIn(1, 64))
    .option('--batch <B>', 'requests (default 64 on cuda, 4 on cpu)', integerIn(1, 4096))
    .option('--drafts <n>', 'MTP drafts per request', integerIn(1, 16), 3)
    .option('--steps <S>', 'timed decode steps (default 20 on cuda, 3 on cpu)', integerIn(1, 100000))
    .option('--acceptance <p>', "probability that a synthetic draft equals the target's choice", numberIn(0, 1), 0.8)
    .addOption(new Option('--mode <mode>', 'verification').choices(['greedy', 'rejection']).default('greedy'))
    .addOption(new Option('--logits <dtype>', 'dtype of the LM head output').choices(['bf16', 'f32']).default('bf16'))
    .option('--seed <n>', 'seed of the weights, inputs and drafts', integerIn(0, 2 ** 31 - 1), 1)
    .option('--no-progress', 'no progress bars (they show only on a terminal)')
    .option('--json', 'print the result as JSON')
    .action(async (f: DemoFlags) => {
      const device = f.device ?? (cudaAvailable() ? 'cuda' : 'cpu');
      if (device === 'cuda' && !cudaAvailable()) {
        process.stderr.write(`moe-kernels demo: --device cuda needs a CUDA GPU (${cudaUnavailableReason()}); --device cpu runs the scaled-down shape.\n`);
        status = EXIT_NO_GPU;
        return;
      }
      const full = (f.shape ?? (device === 'cuda' ? 'full' : 'small')) === 'full';
      const result = await runDemo({
        device,
        shape: full ? 'full' : 'small',
        layers: f.layers ?? (full ? 4 : 2),
        batch: f.batch ?? (device === 'cuda' ? 64 : 4),
        drafts: f.drafts,
        steps: f.steps ?? (device === 'cuda' ? 20 : 3),
        acceptance: f.acceptance,
        mode: f.mode,
        logits: f.logits,
        seed: f.seed,
        progress: f.progress && !f.json,
        log: f.json ? undefined : (line) => console.log(line),
      });
      if (f.json) console.log(JSON.stringify(result, null, 2));
      else console.log(formatDemo(result).join('\n'));
    });
  const benchCommand = program
    .command('bench')
    .description('run the benchmarks of the kernel families on cuda:0 (results: JSON, Markdown, SVG); exits 3 without a CUDA GPU')
    .argument('[family...]', 'the families to run (default: all; see --list)')
    .option('--list', 'list the families')
    .option('--peers', 'also run the PyTorch peers (python3 with torch; PYTHON picks another)')
    .option('--out <dir>', 'folder for the results', 'bench-results')
    .action((families: string[], opts: { list?: boolean; peers?: boolean; out: string }) => {
      try {
        status = bench(families, opts);
      } catch (e) {
        if (e instanceof BenchUsageError) benchCommand.error(`error: ${e.message}`);
        throw e;
      }
    });
  try {
    await program.parseAsync(argv, { from: 'node' });
    return status;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    // a library error is reported as its code and message, never as a stack trace
    if (e instanceof MoeError) process.stderr.write(`error: ${e.code}: ${e.message}\n`);
    else process.stderr.write(`error: ${(e as Error).message ?? String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
