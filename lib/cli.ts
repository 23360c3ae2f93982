#!/usr/bin/env node
// `npx moe-kernels <command>`: what a new user runs first.
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { buildInfo, type BuildInfo } from './device';
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
