// The host side of expert parallelism: how the ranks that share a model's experts find each
// other. A rank is a process driving one GPU (started by `moe-kernels launch`, torchrun, srun or
// mpirun), or one of n handles in a single process driving every GPU of a host.
//
// The GPU transports build on a ProcessGroup: they exchange what they need through allGather
// and broadcast (CUDA IPC handles, an NCCL unique id), and register their teardown with
// onClose, so that destroying the group, or its failure, releases them too.
import { MoeError } from '../errors';
import { cudaUnavailableReason, native } from '../native';
import { checkDevice, checkInteger, checkOneOf, checkOptions, checkString, keys, type Device } from '../validate';
import { resolveRanks, type RankOptions } from './env';
import { Group, type ProcessGroup } from './group';
import { LocalHub, LocalTransport, SingleTransport } from './local';
import { TcpHub, TcpPeer } from './tcp';

export type { ProcessGroup, GroupKind, Collective } from './group';
export type { RankSource } from './env';
export {
  EpBuffer,
  createEpBuffer,
  type EpBufferOptions,
  type EpBufferBytes,
  type EpCombineOptions,
  type EpDispatchOptions,
  type EpDispatchResult,
  type EpHandle,
  type EpLayoutForm,
  type EpCombineForm,
  type EpPayload,
  type EpTransport,
} from './buffer';

/** The bound on the rendezvous and on each collective unless timeoutMs says otherwise. */
export const DEFAULT_TIMEOUT_MS = 60_000;

/** Options of one rank of a group of processes. Each is read from the launcher's environment when not given. */
export interface ProcessGroupOptions {
  /** Default: RANK, OMPI_COMM_WORLD_RANK or SLURM_PROCID; with none of them set, a world of one. */
  rank?: number;
  /** Default: WORLD_SIZE, OMPI_COMM_WORLD_SIZE or SLURM_NTASKS. */
  worldSize?: number;
  /** Default: LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_RANK or SLURM_LOCALID. */
  localRank?: number;
  /** Default: LOCAL_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE or SLURM_NTASKS_PER_NODE; else counted at the rendezvous (ranks with this host name). */
  localWorldSize?: number;
  /** Rank 0's address. Default: MASTER_ADDR. */
  masterAddr?: string;
  /** Rank 0's port. Default: MASTER_PORT. */
  masterPort?: number;
  /** Bound on the rendezvous and on each collective, in ms. Default 60 000. */
  timeoutMs?: number;
  /** This rank's device. Default: cuda:<localRank> where CUDA is usable, else "cpu". */
  device?: Device | 'cuda';
}

/** Options of a group whose ranks all live in this process. */
export interface InProcessGroupOptions {
  /** "all": return every rank's handle. */
  ranks: 'all';
  /** Default: the number of CUDA devices; required where none is usable. */
  worldSize?: number;
  /** Bound on each collective, in ms. Default 60 000. */
  timeoutMs?: number;
  /** "cpu": every rank on the CPU reference. Default: rank i on cuda:i where CUDA is usable. */
  device?: 'cpu';
  /**
   * Rank i on devices[i] (worldSize defaults to its length). Ranks may share a device: that is
   * how multi-rank code runs on one GPU (each such rank must then use its own streams).
   */
  devices?: readonly Device[];
}

const PROCESS_KEYS = keys('rank', 'worldSize', 'localRank', 'localWorldSize', 'masterAddr', 'masterPort', 'timeoutMs', 'device', 'ranks', 'devices');
const IN_PROCESS_KEYS = keys('ranks', 'worldSize', 'timeoutMs', 'device', 'devices');
const MAX_RANKS = 65536;

/**
 * Joins (or, for `{ ranks: 'all' }`, creates) a process group.
 *
 * One rank per process: `await initProcessGroup()` under a launcher, e.g.
 * `npx moe-kernels launch -n 8 app.js`; the ranks come from the launcher's variables, rank 0
 * listens at MASTER_ADDR:MASTER_PORT and the others connect. Resolves once every rank has
 * joined; rejects with E_TIMEOUT when one has not within timeoutMs, E_COMM when a rank died,
 * or the ranks disagree on the protocol version or world size, or two claim the same rank,
 * and E_ARGUMENT naming the option or variable that is missing or inconsistent.
 *
 * Every rank in this process: `await initProcessGroup({ ranks: 'all', worldSize: n })`
 * resolves with n handles (rank i on cuda:i where CUDA is usable, else on the CPU). Their
 * collectives are called concurrently, one call per handle:
 * `await Promise.all(pgs.map((pg) => pg.allGather(bytes[pg.rank])))`.
 */
export function initProcessGroup(options: InProcessGroupOptions): Promise<ProcessGroup[]>;
export function initProcessGroup(options?: ProcessGroupOptions): Promise<ProcessGroup>;
export async function initProcessGroup(options?: ProcessGroupOptions | InProcessGroupOptions): Promise<ProcessGroup | ProcessGroup[]> {
  const o = checkOptions(options, 'initProcessGroup: options', PROCESS_KEYS);
  const timeoutMs = o.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : checkInteger(o.timeoutMs, 'initProcessGroup: timeoutMs', 1, 2 ** 31 - 1);
  if (o.ranks !== undefined) {
    checkOneOf(o.ranks, 'initProcessGroup: ranks', ['all']);
    checkOptions(options, 'initProcessGroup: options (with ranks: "all")', IN_PROCESS_KEYS);
    return inProcess(o.worldSize, timeoutMs, o.device, o.devices);
  }

  if (o.devices !== undefined) throw new MoeError('E_ARGUMENT', 'initProcessGroup: devices: only with ranks: "all" (a process rank takes the device option)');
  const given: RankOptions = {};
  if (o.rank !== undefined) given.rank = checkInteger(o.rank, 'initProcessGroup: rank', 0, MAX_RANKS - 1);
  if (o.worldSize !== undefined) given.worldSize = checkInteger(o.worldSize, 'initProcessGroup: worldSize', 1, MAX_RANKS);
  if (o.localRank !== undefined) given.localRank = checkInteger(o.localRank, 'initProcessGroup: localRank', 0, MAX_RANKS - 1);
  if (o.localWorldSize !== undefined) given.localWorldSize = checkInteger(o.localWorldSize, 'initProcessGroup: localWorldSize', 1, MAX_RANKS);
  if (o.masterAddr !== undefined) given.masterAddr = checkString(o.masterAddr, 'initProcessGroup: masterAddr');
  if (o.masterPort !== undefined) given.masterPort = checkInteger(o.masterPort, 'initProcessGroup: masterPort', 1, 65535);
  const info = resolveRanks(given, process.env);
  const device = o.device !== undefined ? checkDevice(o.device, 'initProcessGroup: device') : rankDevice(info.localRank);

  const facts = { rank: info.rank, worldSize: info.worldSize, localRank: info.localRank, device, timeoutMs };
  if (info.worldSize === 1) {
    const group = new Group({ ...facts, localWorldSize: 1, kind: 'single' });
    group.attach(new SingleTransport(group));
    return group;
  }
  const tcp = { rank: info.rank, worldSize: info.worldSize, masterAddr: info.masterAddr as string, masterPort: info.masterPort as number, timeoutMs };
  const transport = info.rank === 0 ? new TcpHub(tcp) : new TcpPeer(tcp);
  const hosts = await transport.form();
  const localWorldSize = info.localWorldSize ?? hosts.filter((h) => h === hosts[info.rank]).length;
  const group = new Group({ ...facts, localWorldSize, kind: 'tcp' });
  group.attach(transport);
  transport.sink = group;
  return group;
}

/** cuda:<localRank> where CUDA is usable, else the CPU. */
function rankDevice(localRank: number): Device {
  if (cudaUnavailableReason() !== undefined) return 'cpu';
  const count = native().deviceCount();
  if (localRank >= count) {
    throw new MoeError(
      'E_DEVICE',
      `local rank ${localRank} has no GPU: this process sees ${count} CUDA device${count === 1 ? '' : 's'}. ` +
        'Start at most that many ranks per host, or pass the device option (e.g. device: "cuda:0" when CUDA_VISIBLE_DEVICES gives each rank its own GPU)',
    );
  }
  return `cuda:${localRank}`;
}

function inProcess(worldSizeOption: unknown, timeoutMs: number, deviceOption: unknown, devicesOption: unknown): ProcessGroup[] {
  if (devicesOption !== undefined) {
    if (deviceOption !== undefined) throw new MoeError('E_ARGUMENT', 'initProcessGroup: pass device or devices, not both');
    if (!Array.isArray(devicesOption) || devicesOption.length < 1) {
      throw new MoeError('E_ARGUMENT', 'initProcessGroup: devices: expected a non-empty array of devices, one per rank');
    }
    const list = devicesOption.map((d, i) => checkDevice(d, `initProcessGroup: devices[${i}]`));
    const n = worldSizeOption === undefined ? list.length : checkInteger(worldSizeOption, 'initProcessGroup: worldSize', 1, MAX_RANKS);
    if (n !== list.length) throw new MoeError('E_ARGUMENT', `initProcessGroup: devices: ${list.length} devices for worldSize ${n}`);
    return makeLocal(list, timeoutMs);
  }
  // device: "cpu" puts every rank on the CPU reference (as where CUDA is unusable)
  if (deviceOption !== undefined && checkDevice(deviceOption, 'initProcessGroup: device') !== 'cpu') {
    throw new MoeError('E_DEVICE', 'initProcessGroup: device: with ranks: "all", rank i runs on cuda:i; only "cpu" may be given, to put every rank on the CPU');
  }
  const cuda = deviceOption === undefined && cudaUnavailableReason() === undefined;
  const count = cuda ? native().deviceCount() : 0;
  let worldSize: number;
  if (worldSizeOption !== undefined) {
    worldSize = checkInteger(worldSizeOption, 'initProcessGroup: worldSize', 1, cuda ? count : MAX_RANKS);
  } else if (cuda) {
    worldSize = count;
  } else {
    throw new MoeError('E_ARGUMENT', `initProcessGroup: worldSize is required with ranks: "all" on the CPU (${deviceOption === 'cpu' ? 'device: "cpu"' : cudaUnavailableReason()})`);
  }
  return makeLocal(Array.from({ length: worldSize }, (_, r): Device => (cuda ? `cuda:${r}` : 'cpu')), timeoutMs);
}

function makeLocal(devices: readonly Device[], timeoutMs: number): ProcessGroup[] {
  const hub = new LocalHub();
  const worldSize = devices.length;
  for (let r = 0; r < worldSize; r++) {
    const group = new Group({ rank: r, worldSize, localRank: r, localWorldSize: worldSize, device: devices[r], timeoutMs, kind: 'in-process' });
    group.attach(worldSize === 1 ? new SingleTransport(group) : new LocalTransport(hub, r));
    hub.groups.push(group);
  }
  return hub.groups;
}
