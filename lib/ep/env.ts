// Where a rank learns who it is. Explicit options win; otherwise the variables of the launcher
// that started the process, so that one program runs unchanged under `moe-kernels launch`,
// torchrun, srun or mpirun. Every failure names the variable (or option) it came from.
import { MoeError, describe } from '../errors';

/** Which launcher's variables were read; 'options' when none were needed. */
export type RankSource = 'options' | 'torchrun' | 'openmpi' | 'slurm' | 'single';

/** A rank's place in the world, before any connection is made. @internal */
export interface RankInfo {
  rank: number;
  worldSize: number;
  localRank: number;
  /** Undefined when no variable says it: the rendezvous counts the ranks on this host. */
  localWorldSize: number | undefined;
  masterAddr: string | undefined;
  masterPort: number | undefined;
  source: RankSource;
}

/** The options that can stand in for a variable; already type-checked by the caller. @internal */
export interface RankOptions {
  rank?: number;
  worldSize?: number;
  localRank?: number;
  localWorldSize?: number;
  masterAddr?: string;
  masterPort?: number;
}

type Env = Readonly<Record<string, string | undefined>>;

interface Launcher {
  source: Exclude<RankSource, 'options' | 'single'>;
  rank: string;
  worldSize: string;
  localRank: string;
  localWorldSize?: string;
  /** What to tell a user who has to set MASTER_ADDR/MASTER_PORT by hand. */
  masterHint: string;
}

// torchrun first: it may run inside an srun or mpirun step, whose variables then describe the
// step rather than the worker. Open MPI before Slurm for the same reason (mpirun in sbatch).
const LAUNCHERS: readonly Launcher[] = [
  { source: 'torchrun', rank: 'RANK', worldSize: 'WORLD_SIZE', localRank: 'LOCAL_RANK', localWorldSize: 'LOCAL_WORLD_SIZE', masterHint: 'torchrun and `moe-kernels launch` set both' },
  {
    source: 'openmpi',
    rank: 'OMPI_COMM_WORLD_RANK',
    worldSize: 'OMPI_COMM_WORLD_SIZE',
    localRank: 'OMPI_COMM_WORLD_LOCAL_RANK',
    localWorldSize: 'OMPI_COMM_WORLD_LOCAL_SIZE',
    masterHint: 'under mpirun, export them to every rank, e.g. mpirun -x MASTER_ADDR=<first host> -x MASTER_PORT=29500',
  },
  {
    source: 'slurm',
    rank: 'SLURM_PROCID',
    worldSize: 'SLURM_NTASKS',
    localRank: 'SLURM_LOCALID',
    localWorldSize: 'SLURM_NTASKS_PER_NODE',
    masterHint:
      'under Slurm, export them before srun, e.g. MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) MASTER_PORT=29500',
  },
];

function parseCount(env: Env, name: string, lo: number): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\s*\d+\s*$/.test(raw) || Number(raw) < lo || Number(raw) > 2 ** 31 - 1) {
    throw new MoeError('E_ARGUMENT', `${name}: expected an integer >= ${lo}, got ${describe(raw)}`);
  }
  return Number(raw);
}

/**
 * The rank, world size, local rank and master address of this process. With neither options
 * nor launcher variables it is a world of one.
 */
export function resolveRanks(options: RankOptions, env: Env): RankInfo {
  const launcher = LAUNCHERS.find((l) => env[l.rank] !== undefined && env[l.rank] !== '');
  const name = (option: keyof RankOptions, variable: string | undefined) => (variable ? `${variable} (or the ${option} option)` : `the ${option} option`);

  let rank = options.rank;
  let worldSize = options.worldSize;
  let localRank = options.localRank;
  let localWorldSize = options.localWorldSize;
  if (launcher) {
    rank ??= parseCount(env, launcher.rank, 0);
    worldSize ??= parseCount(env, launcher.worldSize, 1);
    localRank ??= parseCount(env, launcher.localRank, 0);
    if (launcher.localWorldSize) localWorldSize ??= parseCount(env, launcher.localWorldSize, 1);
  }
  const source: RankSource = launcher
    ? launcher.source
    : rank === undefined && worldSize === undefined && localRank === undefined
      ? 'single'
      : 'options';
  if (source === 'single') {
    rank = 0;
    worldSize = 1;
  }
  const v = (field: 'rank' | 'worldSize' | 'localRank' | 'localWorldSize') =>
    name(field, launcher ? (launcher[field] as string | undefined) : undefined);

  if (worldSize === undefined) throw new MoeError('E_ARGUMENT', `${v('worldSize')} is not set, but ${v('rank')} is: a rank needs the size of its world`);
  if (rank === undefined) throw new MoeError('E_ARGUMENT', `${v('rank')} is not set, but ${v('worldSize')} is: each process needs its rank`);
  if (rank >= worldSize) throw new MoeError('E_ARGUMENT', `${v('rank')} = ${rank} must be less than ${v('worldSize')} = ${worldSize}`);
  if (localRank === undefined) {
    // a world of one is its own host; anything larger must say where the rank sits on its host
    if (worldSize === 1) localRank = 0;
    else throw new MoeError('E_ARGUMENT', `${v('localRank')} is not set: a rank of a world of ${worldSize} needs its index on its host (it picks the GPU)`);
  }
  if (localWorldSize !== undefined) {
    if (localWorldSize > worldSize) throw new MoeError('E_ARGUMENT', `${v('localWorldSize')} = ${localWorldSize} cannot exceed ${v('worldSize')} = ${worldSize}`);
    if (localRank >= localWorldSize) throw new MoeError('E_ARGUMENT', `${v('localRank')} = ${localRank} must be less than ${v('localWorldSize')} = ${localWorldSize}`);
  } else if (worldSize === 1) {
    localWorldSize = 1;
  }

  let masterAddr = options.masterAddr;
  let masterPort = options.masterPort;
  if (worldSize > 1) {
    const hint = launcher ? launcher.masterHint : 'pass masterAddr and masterPort, or set MASTER_ADDR and MASTER_PORT';
    if (masterAddr === undefined) {
      const raw = env.MASTER_ADDR;
      if (raw === undefined || raw.trim() === '') throw new MoeError('E_ARGUMENT', `MASTER_ADDR (or the masterAddr option) is not set: rank 0's address is needed to form a group of ${worldSize} (${hint})`);
      masterAddr = raw.trim();
    }
    if (masterPort === undefined) {
      const raw = env.MASTER_PORT;
      if (raw === undefined || raw.trim() === '') throw new MoeError('E_ARGUMENT', `MASTER_PORT (or the masterPort option) is not set: rank 0's port is needed to form a group of ${worldSize} (${hint})`);
      masterPort = parseCount(env, 'MASTER_PORT', 1) as number;
      if (masterPort > 65535) throw new MoeError('E_ARGUMENT', `MASTER_PORT: expected a port in [1, 65535], got ${describe(raw)}`);
    }
  }
  return { rank, worldSize, localRank, localWorldSize, masterAddr, masterPort, source };
}
