// `moe-kernels launch -n N app.js`: N ranks of a Node program on this host, with torchrun's
// variables, so a program that calls initProcessGroup() runs the same under this launcher,
// torchrun --no-python, srun or mpirun. The launcher's job beyond starting the ranks is that no
// rank outlives a failure: when one rank dies, the others are stopped, and the launcher exits
// with the status of the rank that died first.
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as os from 'node:os';
import { MoeError } from '../errors';
import { checkInteger, checkOptions, checkString, keys } from '../validate';

export interface LaunchOptions {
  /** Ranks to start (torchrun's --nproc-per-node). */
  nproc: number;
  /** The program each rank runs with this Node (`node <script> ...args`). */
  script: string;
  args?: string[];
  /** MASTER_PORT for rank 0; default: a port that is free now. */
  masterPort?: number;
  /** How long a rank that is being stopped has between SIGTERM and SIGKILL. Default 5000. */
  killGraceMs?: number;
}

const LAUNCH_KEYS = keys('nproc', 'script', 'args', 'masterPort', 'killGraceMs');
export const MAX_LOCAL_RANKS = 1024;

/** A TCP port that nothing listens on now (the usual launcher race: it could be taken before rank 0 binds it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** The exit status of a process, the way a shell reports it: 128 + the signal number for a signal. */
function statusOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0);
}

/** Copies a rank's output line by line, each line prefixed, so that ranks' lines never interleave mid-line. */
function prefixLines(from: NodeJS.ReadableStream, to: NodeJS.WritableStream, prefix: string): void {
  let rest = '';
  from.setEncoding('utf8');
  from.on('data', (chunk: string) => {
    const text = rest + chunk;
    const end = text.lastIndexOf('\n');
    if (end < 0) {
      rest = text;
      return;
    }
    rest = text.slice(end + 1);
    to.write(
      text
        .slice(0, end)
        .split('\n')
        .map((line) => `${prefix}${line}\n`)
        .join(''),
    );
  });
  from.on('end', () => {
    if (rest !== '') to.write(`${prefix}${rest}\n`);
    rest = '';
  });
}

/**
 * Runs `nproc` ranks of `script` and resolves with the launcher's exit status: 0 when every rank
 * exits 0; else the status of the first rank that failed (128 + signal for a signal); 128 + the
 * signal when the launcher itself got SIGINT or SIGTERM, which it forwards to the ranks (a second
 * one kills them).
 */
export async function launch(options: LaunchOptions): Promise<number> {
  const o = checkOptions(options, 'launch: options', LAUNCH_KEYS);
  const nproc = checkInteger(o.nproc, 'launch: nproc', 1, MAX_LOCAL_RANKS);
  const script = checkString(o.script, 'launch: script');
  const args = o.args === undefined ? [] : (o.args as unknown[]);
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new MoeError('E_ARGUMENT', 'launch: args: expected an array of strings');
  const grace = o.killGraceMs === undefined ? 5000 : checkInteger(o.killGraceMs, 'launch: killGraceMs', 0, 2 ** 31 - 1);
  const port = o.masterPort === undefined ? await freePort() : checkInteger(o.masterPort, 'launch: masterPort', 1, 65535);

  const prefixed = nproc > 1;
  const ranks: { child: ChildProcess; exited: boolean; closed: boolean }[] = [];
  let failure: { rank: number; status: number } | undefined;
  let received: NodeJS.Signals | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const note = (line: string) => process.stderr.write(`moe-kernels launch: ${line}\n`);

  const signalAll = (signal: NodeJS.Signals) => {
    for (const r of ranks) if (!r.exited) r.child.kill(signal);
  };
  // ranks get SIGTERM first, then SIGKILL: a rank stuck in native code must not outlive us
  const stopAll = (signal: NodeJS.Signals) => {
    signalAll(signal);
    if (!killTimer) {
      killTimer = setTimeout(() => signalAll('SIGKILL'), grace);
      killTimer.unref();
    }
  };

  const onSignal = (signal: NodeJS.Signals) => {
    if (received) {
      signalAll('SIGKILL');
      return;
    }
    received = signal;
    stopAll(signal);
  };
  const onSigint = () => onSignal('SIGINT');
  const onSigterm = () => onSignal('SIGTERM');
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);

  try {
    return await new Promise<number>((resolve) => {
      const finishIfDone = () => {
        if (!ranks.every((r) => r.closed)) return;
        if (failure) resolve(failure.status);
        else if (received) resolve(128 + os.constants.signals[received]);
        else resolve(0);
      };
      for (let i = 0; i < nproc; i++) {
        const child = spawn(process.execPath, [script, ...(args as string[])], {
          env: {
            ...process.env,
            RANK: String(i),
            WORLD_SIZE: String(nproc),
            LOCAL_RANK: String(i),
            LOCAL_WORLD_SIZE: String(nproc),
            MASTER_ADDR: '127.0.0.1',
            MASTER_PORT: String(port),
          },
          stdio: prefixed ? ['ignore', 'pipe', 'pipe'] : 'inherit',
        });
        const r = { child, exited: false, closed: false };
        ranks.push(r);
        if (prefixed) {
          prefixLines(child.stdout as NodeJS.ReadableStream, process.stdout, `[rank ${i}] `);
          prefixLines(child.stderr as NodeJS.ReadableStream, process.stderr, `[rank ${i}] `);
        }
        const exited = (status: number, how: string) => {
          if (r.exited) return;
          r.exited = true;
          if (status !== 0 && !failure && !received) {
            failure = { rank: i, status };
            if (nproc > 1) note(`rank ${i} ${how}; stopping the other ranks`);
            stopAll('SIGTERM');
          }
          // output still held by a grandchild of the rank must not keep the launcher waiting
          const t = setTimeout(() => {
            child.stdout?.destroy();
            child.stderr?.destroy();
          }, 2000);
          t.unref();
        };
        child.on('exit', (code, signal) => exited(statusOf(code, signal), code !== null ? `exited with status ${code}` : `was killed by ${signal}`));
        child.on('error', (e) => {
          // the rank could not be started (or signalled); if it never ran, it is over
          if (child.pid === undefined) {
            note(`rank ${i} could not be started: ${e.message}`);
            exited(1, 'could not be started');
            r.closed = true;
            finishIfDone();
          }
        });
        child.on('close', () => {
          r.closed = true;
          finishIfDone();
        });
      }
    });
  } finally {
    if (killTimer) clearTimeout(killTimer);
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigterm);
  }
}
