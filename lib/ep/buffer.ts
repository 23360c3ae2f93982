// Expert-parallel dispatch and combine. Each rank holds E/R experts (rank r: experts
// [r*E/R, (r+1)*E/R)). dispatch sends each token once to every rank that holds one of its
// experts, with its expert ids and weights for that rank, and hands each rank its experts' rows
// in routing's expert layouts. combine (exact, the default) sends each expert output back to the
// token's rank and sums a token's k outputs there with unpermute's arithmetic, in slot order, so
// that an expert-parallel MoE block computes the single-device block's bits (bf16 payload);
// combine "reduced" sums a token's outputs on each expert rank first and sends one bf16 row per
// (token, rank): k / (ranks reached) times fewer bytes, one bf16 rounding more.
//
// The buffer is symmetric: rank s's data for rank d lands in region s of d's buffer, one writer
// per region (native/common/ep.h has the byte layout). The host transport stages each region
// locally and moves it with the group's allToAll (CPU ranks). The nvlink transport's kernels
// write the rows straight into the peers' regions (ranks of one process through peer access or a
// shared device, rank processes of one host through CUDA IPC) and wait for their count words on
// the device, bounded by the group's timeout. The nccl transport runs the same kernels on local
// staging and moves every staged region to its peer with NCCL send/receive (rank processes on any
// hosts, devices without peer access), waited for from the host with the same bound.
import { randomUUID } from 'node:crypto';
import { DTYPES } from '../dtype';
import { MoeError, describe } from '../errors';
import { isCapturing } from '../capture';
import { native } from '../native';
import { resolveStream, type Stream } from '../stream';
import { empty, fromBytes, fromPointer, useOn, zeros, type Tensor } from '../tensor';
import { EXPERT_LAYOUT, checkBoolean, checkInteger, checkOneOf, checkOptions, checkShapeIs, checkTensor, deviceIndex as deviceIndexOf, keys, checkRank, type Device } from '../validate';
import type { ExpertLayout } from '../routing';
import type { ProcessGroup } from './group';
import { Deadline, pollUntil } from './deadline';
import { devices } from '../device';
import { gateOf, releaseGate, type SendGate } from './gate';

/** How a token row travels: as bf16, fp8 e4m3 with one f32 scale per 128 elements, or NVFP4. */
export type EpPayload = 'bf16' | 'fp8' | 'nvfp4';
/**
 * What combine sends back. "exact": each pair's expert output, summed on the token's rank in slot
 * order (the single-device block's bits). "reduced": each rank sums its pairs of a token first
 * (weight x output, f32 fused multiply-adds in slot order) and sends that sum as one bf16 row;
 * the token's rank adds the rows in f32 in the order of each rank's first pair. Fewer bytes
 * (topK / ranks reached per token: 4x for top-8 on 2 ranks), and each partial sum is rounded to
 * bf16: against exact, |error| <= 2^-8 x the sum over the ranks of |partial| + 2^-19 x the sum
 * over the pairs of |weight x output| (f32 sums in another order), before out's own rounding.
 */
export type EpCombineForm = 'exact' | 'reduced';
/** How the received rows are laid out for the experts: routing's contiguous (prefill) or masked (decode) form. */
export type EpLayoutForm = 'contiguous' | 'masked';
/**
 * How bytes move between ranks. "host": through the process group (CPU ranks). "nvlink": the
 * device kernels write into the peers' buffers (CUDA ranks of one host). "nccl": the kernels
 * stage each peer's region and NCCL sends it (CUDA ranks, one process each, on one host or
 * several; libnccl.so.2 is loaded at run time).
 */
export type EpTransport = 'host' | 'nvlink' | 'nccl';

export interface EpBufferOptions {
  /** Most tokens a rank dispatches per call. */
  maxTokensPerRank: number;
  hidden: number;
  /** Experts per token (1..16). */
  topK: number;
  /** Experts of all ranks together; a multiple of the world size. */
  numExperts: number;
  /** Default "bf16" (exact). */
  payload?: EpPayload;
  /** Default "contiguous". */
  layout?: EpLayoutForm;
  /** Default "exact" (see EpCombineForm). */
  combine?: EpCombineForm;
  /** Masked layout: rows per local expert. Default worldSize * maxTokensPerRank, which never drops a pair. */
  maxTokensPerExpert?: number;
  /** Contiguous layout: each expert's rows start at a multiple of align (1..1024). Default 1. */
  align?: number;
  /**
   * true: dispatch hands out one row per received token ([worldSize * maxTokensPerRank, hidden],
   * row i = receive slot i) instead of one per (token, local expert) pair, for groupedGemmNvfp4
   * with `gather: true`, which reads each layout row from its token's row. A token then lands
   * once however many of its experts live here: on 2 ranks with top-8 of 256 experts, about 4x
   * fewer bytes written by the receive. Measured on 2 x H200 (benchmarks/NOTES.md): a 4096-token
   * bf16 dispatch 354 -> 264 µs, but over that many rows the gathering w13 GEMM runs the mma.sync
   * kernel, about half as fast as the wgmma kernel permuted rows get on Hopper, so it pays off at
   * decode sizes. Default false.
   */
  gather?: boolean;
  /**
   * Default: "nvlink" for CUDA ranks, "host" for CPU ranks. "nccl" needs one process per rank
   * (`moe-kernels launch`; a group of one rank may be in-process) and NCCL 2 at run time:
   * libnccl.so.2 on the library path, or the file MOE_KERNELS_NCCL_LIBRARY names (E_COMM when
   * it cannot be loaded). It sets NCCL_NVLS_ENABLE=0 where the environment does not set it.
   */
  transport?: EpTransport;
  /**
   * nvlink and nccl: CTAs (streaming multiprocessors) of the copy kernels, 1..1024. Default: the
   * device's SM count, since dispatch and combine run between the expert GEMMs, not beside them
   * (on 2 x H200 the bf16 throughput dispatch took 950 µs with 16 and 458 µs with 132). Pass
   * fewer to leave SMs to work overlapped on other streams. A dispatch of more than 1024 tokens
   * sends its payloads on at most 48 of them (the link is about as busy, and the receive keeps the
   * other SMs).
   */
  sms?: number;
}

/** What one dispatch hands this rank. */
export interface EpDispatchResult {
  /**
   * bf16 [layout.rows, hidden]: the rows of this rank's experts, in `layout` (the payload
   * dequantized). Within an expert, rows follow (source rank, source token): the order of the
   * ranks' tokens concatenated. Padding rows are zeros; rows past layout.usedRows are not written.
   * The buffer's own tensor, rewritten by each dispatch: in the masked layout a dispatch writes
   * only the rows of its counts and of the last call's (clearing those), so the capacity beyond
   * stays zero without being rewritten; write nothing into it (or into `layout`).
   * With the buffer's `gather` option: bf16 [layout.tokens, hidden] instead, row i the token in
   * receive slot i (rows of slots that received nothing are not written); layout row r holds
   * tokens[layout.sourceIndex[r] / topK] (groupedGemmNvfp4's `gather`).
   */
  tokens: Tensor<'bf16'>;
  /**
   * The local experts' layout, as routing's expertLayout makes it (groupedGemmNvfp4 takes it):
   * numExperts = localExperts; its "tokens" are the receive slots, slot i = sourceRank *
   * maxTokensPerRank + j for the j-th token that rank sent here, and a pair is slot * k + i.
   * layout.dropped counts pairs past maxTokensPerExpert (masked form); layout.errors counts
   * malformed ids received (0 between ranks of this package).
   */
  layout: ExpertLayout;
  /** i32 [1]: ids of this rank's routing outside [0, numExperts): sent nowhere, they add nothing in combine. */
  invalidIds: Tensor<'i32'>;
  /** What combine needs: pass it back with the experts' outputs. */
  handle: EpHandle;
}

/** One dispatch's state, for its combine. */
export interface EpHandle {
  /** The dispatch's call number. */
  readonly epoch: number;
  /** Tokens this rank dispatched. */
  readonly tokens: number;
}

export interface EpDispatchOptions {
  /** Default: the device's default stream. Ranks that share a device need a stream each. */
  stream?: Stream;
}

export interface EpCombineOptions {
  /** [tokens, hidden], bf16 or f32. Default: a new bf16 tensor. */
  out?: Tensor<'bf16'> | Tensor<'f32'>;
  /** Default: the device's default stream. */
  stream?: Stream;
}

/** Every SM of a CUDA device (at most 1024, the option's bound). */
function defaultSms(device: Device): number {
  const info = devices().find((d) => d.device === device);
  return Math.min(1024, Math.max(1, info?.multiprocessors ?? 1));
}

const BUFFER_KEYS = keys('maxTokensPerRank', 'hidden', 'topK', 'numExperts', 'payload', 'layout', 'combine', 'maxTokensPerExpert', 'align', 'gather', 'transport', 'sms');
const ROUTING_KEYS = keys('ids', 'weights');
const COMBINE_KEYS = keys('out', 'stream');
const DISPATCH_KEYS = keys('stream');
const PAYLOADS: readonly EpPayload[] = ['bf16', 'fp8', 'nvfp4'];
const PAYLOAD_ID: Readonly<Record<EpPayload, number>> = { bf16: 0, fp8: 1, nvfp4: 2 };
const FORMS: readonly EpLayoutForm[] = ['contiguous', 'masked'];
const COMBINES: readonly EpCombineForm[] = ['exact', 'reduced'];
const COMBINE_ID: Readonly<Record<EpCombineForm, number>> = { exact: 0, reduced: 1 };
const TRANSPORTS: readonly EpTransport[] = ['host', 'nvlink', 'nccl'];
const STATUS_TIMEOUT: Readonly<Record<number, string>> = { 1: 'dispatch', 2: 'combine' };
/** nccl: the most the receive's device wait waits for a count word NCCL has already delivered. */
const NCCL_RECV_WAIT_MS = 10;
const MAX_TOP_K = 16;
const MAX_LOCAL_EXPERTS = 1024;
const I32_MAX = 2 ** 31 - 1;

// The byte layout of native/common/ep.h.
const roundUp16 = (n: number) => Math.ceil(n / 16) * 16;
/** Slots per chunk flag of a dispatch or combine region (common/ep.h kChunkSlots). */
const CHUNK_SLOTS = 64;
/**
 * nvlink: a dispatch of more tokens than this sends its payloads on a side stream, overlapped
 * with the receive's layout and rows, and its combine sends the rows there, overlapped with the
 * sums (common/ep.h, "Overlapped sends"). At or below it the send is one launch (the dispatch's
 * scans its own slots: the decode path), where the launches are the cost.
 */
const OVERLAP_TOKENS = 1024;
function payloadBytes(payload: EpPayload, hidden: number): number {
  if (payload === 'fp8') return hidden + 4 * Math.ceil(hidden / 128);
  if (payload === 'nvfp4') return hidden / 2 + hidden / 16 + 4;
  return 2 * hidden;
}

/** The shape fields every native ep op starts with: ranks, rank, experts, k, hidden, maxTokens, payload, combine. */
type EpShape = [number, number, number, number, number, number, number, number];

interface Config {
  maxTokensPerRank: number;
  hidden: number;
  topK: number;
  numExperts: number;
  payload: EpPayload;
  layout: EpLayoutForm;
  combine: EpCombineForm;
  maxTokensPerExpert: number;
  align: number;
  gather: boolean;
  transport: EpTransport;
  sms: number;
}

function checkConfig(options: unknown, worldSize: number, device: Device): Config {
  if (options === null || typeof options !== 'object') {
    throw new MoeError('E_ARGUMENT', `options: expected { maxTokensPerRank, hidden, topK, numExperts, ... }, got ${describe(options)}`);
  }
  const o = checkOptions(options, 'options', BUFFER_KEYS);
  const numExperts = checkInteger(o.numExperts, 'options.numExperts', 1, worldSize * MAX_LOCAL_EXPERTS);
  if (numExperts % worldSize !== 0) {
    throw new MoeError('E_ARGUMENT', `options.numExperts: ${numExperts} experts do not split evenly over ${worldSize} ranks`);
  }
  const topK = checkInteger(o.topK, 'options.topK', 1, Math.min(MAX_TOP_K, numExperts));
  const hidden = checkInteger(o.hidden, 'options.hidden', 1, I32_MAX);
  const maxTokensPerRank = checkInteger(o.maxTokensPerRank, 'options.maxTokensPerRank', 1, Math.floor(I32_MAX / (worldSize * topK)));
  const payload = o.payload === undefined ? 'bf16' : checkOneOf(o.payload, 'options.payload', PAYLOADS);
  if (payload === 'nvfp4' && hidden % 16 !== 0) throw new MoeError('E_ARGUMENT', `options.payload: nvfp4 needs hidden to be a multiple of 16, got ${hidden}`);
  const layout = o.layout === undefined ? 'contiguous' : checkOneOf(o.layout, 'options.layout', FORMS);
  const combine = o.combine === undefined ? 'exact' : checkOneOf(o.combine, 'options.combine', COMBINES);
  if (layout === 'contiguous' && o.maxTokensPerExpert !== undefined) {
    throw new MoeError('E_ARGUMENT', 'options.maxTokensPerExpert: only the masked layout has it (pass layout: "masked")');
  }
  if (layout === 'masked' && o.align !== undefined) throw new MoeError('E_ARGUMENT', 'options.align: the masked layout has no alignment');
  const maxTokensPerExpert = layout === 'masked'
    ? o.maxTokensPerExpert === undefined ? worldSize * maxTokensPerRank : checkInteger(o.maxTokensPerExpert, 'options.maxTokensPerExpert', 1, I32_MAX)
    : 0;
  const align = o.align === undefined ? 1 : checkInteger(o.align, 'options.align', 1, 1024);
  const gather = o.gather === undefined ? false : checkBoolean(o.gather, 'options.gather');
  const transport = o.transport === undefined ? (device === 'cpu' ? 'host' : 'nvlink') : checkOneOf(o.transport, 'options.transport', TRANSPORTS);
  if (transport === 'host' && device !== 'cpu') {
    throw new MoeError('E_DEVICE', `options.transport: "host" moves CPU tensors; this rank is on ${device} (use "nvlink", or a group made with device: "cpu")`);
  }
  if (transport === 'nvlink' && device === 'cpu') throw new MoeError('E_DEVICE', 'options.transport: "nvlink" needs CUDA ranks; this rank is on the CPU (use "host")');
  if (transport === 'nccl') {
    // E_COMM naming the library when NCCL cannot be loaded, before anything else is made
    native().ncclLoad();
    if (device === 'cpu') throw new MoeError('E_DEVICE', 'options.transport: "nccl" needs CUDA ranks; this rank is on the CPU (use "host")');
  }
  const sms = transport === 'host' ? 0 : o.sms === undefined ? defaultSms(device) : checkInteger(o.sms, 'options.sms', 1, 1024);
  if (transport === 'host' && o.sms !== undefined) throw new MoeError('E_ARGUMENT', 'options.sms: the host transport runs no kernels');
  return { maxTokensPerRank, hidden, topK, numExperts, payload, layout, combine, maxTokensPerExpert, align, gather, transport, sms };
}

/** Byte sizes of an EpBuffer. */
export interface EpBufferBytes {
  /** One dispatch slot: payload and metadata of one token. */
  slot: number;
  /** The payload of one token row. */
  payload: number;
  /** The receive buffer of dispatch (worldSize regions of maxTokensPerRank slots, and a 4-byte flag per 64 slots on 16 bytes). */
  dispatch: number;
  /** The receive buffer of combine (worldSize regions of maxTokensPerRank x topK rows, x 1 row with combine "reduced", each with a valid flag, and a 4-byte flag per 64 slots on 16 bytes). */
  combine: number;
  /** The experts' rows (tokens) and the layout handed out by dispatch. */
  output: number;
  /** Everything this rank holds, staging (host and nccl transports, and nvlink's overlapped send of an encoded payload) and address tables included. */
  total: number;
}

/** One rank's memory that the others write (nvlink: exchanged as addresses). */
interface Receive {
  recvDispatch: Tensor<'u8'>;
  recvDispatchCounts: Tensor<'i64'>;
  recvCombine: Tensor<'u8'>;
  recvCombineCounts: Tensor<'i64'>;
}

const buffers = new WeakSet<object>();

/**
 * One rank's expert-parallel buffers for a fixed shape. Calls alternate: dispatch, then combine
 * with that dispatch's handle, and every rank makes the same calls in the same order. The
 * tokens and layout of a dispatch stay valid until the next dispatch.
 */
export class EpBuffer {
  readonly rank: number;
  readonly worldSize: number;
  readonly device: Device;
  readonly maxTokensPerRank: number;
  readonly hidden: number;
  readonly topK: number;
  readonly numExperts: number;
  /** Experts on each rank: numExperts / worldSize. */
  readonly localExperts: number;
  /** This rank's first expert: rank * localExperts. */
  readonly firstExpert: number;
  readonly payload: EpPayload;
  readonly layout: EpLayoutForm;
  /** What combine sends back: the options' `combine` (EpCombineForm). */
  readonly combineForm: EpCombineForm;
  readonly maxTokensPerExpert: number;
  readonly align: number;
  /** Whether dispatch hands out one row per received token (the options' `gather`). */
  readonly gather: boolean;
  readonly transport: EpTransport;
  /** CTAs of the copy kernels (nvlink); 0 for the host transport. */
  readonly sms: number;
  readonly bytes: EpBufferBytes;
  /** Rows of the layout dispatch hands out. */
  readonly rows: number;

  private readonly group: ProcessGroup;
  private readonly shape: EpShape;
  private readonly slotBytes: number;
  private readonly dispatchRegion: number;
  private readonly combineRegion: number;
  private readonly combineRowsAt: number;
  /** Entries per slot in a combine region: topK (exact) or 1 (reduced). */
  private readonly combineEntries: number;
  private readonly t: Record<string, Tensor>;
  private readonly out: { tokens: Tensor<'bf16'>; layout: ExpertLayout; invalidIds: Tensor<'i32'>; combineIndex: Tensor<'i32'> };
  private readonly timeoutNs: number;
  /** Ranks of this group on the same device as this one (they need streams of their own). */
  private readonly sharesDevice: boolean;
  private epoch = 0;
  private state: 'idle' | 'dispatched' | 'busy' | 'failed' = 'idle';
  private last: { handle: EpHandle; weights: Tensor<'f32'> } | undefined;
  private _disposed = false;

  /** nvlink between processes: the block (ipcAlloc) that holds the receive buffers, and the peers' blocks mapped here. */
  private ipc: { base: bigint; bytes: number; opened: bigint[] } | undefined;
  /** nvlink ranks of one process: where they meet between each call's send and receive (gate.ts). */
  private gate: { id: string; gate: SendGate } | undefined;
  /** nvlink, one rank per device: the stream of an overlapped send's payloads (dispatch) or rows (combine), and the events that fork it from and join it to the call's stream. */
  private side: { stream: bigint; fork: bigint; join: bigint } | undefined;
  /** nccl: the communicator (native ncclReserve), the event that marks a call's end, and the group's close hook. */
  private nccl: { handle: number; event: bigint; live: boolean; unhook: () => void } | undefined;

  /**
   * @internal use createEpBuffer(); `ipc`: the receive buffers in memory other processes map;
   * `gateId`: the id the in-process ranks agreed on for their SendGate
   */
  constructor(group: ProcessGroup, c: Config, sharesDevice: boolean, ipc = false, gateId?: string) {
    this.group = group;
    this.sms = c.sms;
    this.sharesDevice = sharesDevice;
    this.timeoutNs = group.timeoutMs * 1e6;
    this.rank = group.rank;
    this.worldSize = group.worldSize;
    this.device = group.device;
    this.maxTokensPerRank = c.maxTokensPerRank;
    this.hidden = c.hidden;
    this.topK = c.topK;
    this.numExperts = c.numExperts;
    this.localExperts = c.numExperts / group.worldSize;
    this.firstExpert = group.rank * this.localExperts;
    this.payload = c.payload;
    this.layout = c.layout;
    this.combineForm = c.combine;
    this.maxTokensPerExpert = c.maxTokensPerExpert;
    this.align = c.align;
    this.gather = c.gather;
    this.transport = c.transport;
    const R = this.worldSize, K = this.topK, M = this.maxTokensPerRank, H = this.hidden, L = this.localExperts;
    this.shape = [R, this.rank, this.numExperts, K, H, M, PAYLOAD_ID[c.payload], COMBINE_ID[c.combine]];
    const metaAt = roundUp16(payloadBytes(c.payload, H));
    this.slotBytes = metaAt + roundUp16(4 + 8 * K);
    // the slots, then a u32 flag per chunk of slots
    this.dispatchRegion = M * this.slotBytes + roundUp16(4 * Math.ceil(M / CHUNK_SLOTS));
    this.combineEntries = c.combine === 'reduced' ? 1 : K;
    this.combineRowsAt = roundUp16(4 * M * this.combineEntries);
    this.combineRegion = roundUp16(this.combineRowsAt + M * this.combineEntries * 2 * H) + roundUp16(4 * Math.ceil(M / CHUNK_SLOTS));
    const slots = R * M;
    this.rows = c.layout === 'masked' ? L * c.maxTokensPerExpert : slots * K + L * (c.align - 1);
    if (this.rows > I32_MAX || this.rows * H > Number.MAX_SAFE_INTEGER) throw new MoeError('E_ARGUMENT', `options: the layout's ${this.rows} rows exceed 2^31 - 1`);

    const device = this.device;
    const made: Tensor[] = [];
    const make = <D extends 'u8' | 'i32' | 'i64' | 'bf16'>(shape: number[], dtype: D, zero = false): Tensor<D> => {
      const x = (zero ? zeros : empty)<D>(shape, { dtype, device });
      made.push(x);
      return x;
    };
    try {
      let receive: Receive;
      if (ipc) {
        // one block for the four receive buffers, each on 256 bytes; zeroed, so that the count
        // words start at call 0 (the first call waits for words of call 1)
        const at = [0];
        for (const n of [R * this.dispatchRegion, 8 * R, R * this.combineRegion, 8 * R]) at.push(at[at.length - 1] + Math.ceil(n / 256) * 256);
        const bytes = at[4];
        const b = native();
        const base = b.ipcAlloc(deviceIndexOf(device), bytes);
        this.ipc = { base, bytes, opened: [] };
        b.memset(deviceIndexOf(device), base, 0, bytes, resolveStream(undefined, device).handle);
        const view = <D extends 'u8' | 'i64'>(i: number, shape: number[], dtype: D) => fromPointer<D>(base + BigInt(at[i]), { shape, dtype, device });
        receive = {
          recvDispatch: view(0, [R * this.dispatchRegion], 'u8'),
          recvDispatchCounts: view(1, [R], 'i64'),
          recvCombine: view(2, [R * this.combineRegion], 'u8'),
          recvCombineCounts: view(3, [R], 'i64'),
        };
        made.push(...Object.values(receive));
      } else {
        receive = {
          // zeroed: a chunk flag from an earlier buffer at this address must not pass for this one's
          recvDispatch: make([R * this.dispatchRegion], 'u8', true),
          // count words start at call 0: the first call waits for words of call 1
          recvDispatchCounts: make([R], 'i64', true),
          recvCombine: make([R * this.combineRegion], 'u8', true),
          recvCombineCounts: make([R], 'i64', true),
        };
      }
      this.t = {
        ...receive,
        // [0] the call number, [1] [2] the send kernels' counters, [3] a one-launch dispatch's
        // receive counter, [4] [5] the status words
        state: make([8], 'i32', true),
        recvCounts: make([R], 'i32'),
      };
      if (c.transport === 'nvlink' && !sharesDevice && M > OVERLAP_TOKENS) {
        // an overlapped send's memory (outside the stream's workspace, which the receive reuses
        // while the payloads travel): the slots per destination and the call number, a counter
        // per chunk (dispatch and combine: zeros between sends), and the encoded rows unless x
        // is sent as it is; none for a buffer whose sends never overlap
        Object.assign(this.t, {
          sendCounts: make([R + 1], 'i32'),
          chunkDone: make([R * Math.ceil(M / CHUNK_SLOTS)], 'i32', true),
        });
        if (c.payload !== 'bf16' || metaAt !== 2 * H) this.t.staging = make([M * metaAt], 'u8');
        const b = native(), dev = deviceIndexOf(device);
        this.side = { stream: b.createStream(dev), fork: 0n, join: 0n };
        this.side.fork = b.createEvent(dev, false);
        this.side.join = b.createEvent(dev, false);
      }
      if (c.transport === 'host' || c.transport === 'nccl') {
        // nccl sends whole regions: zeroed, so that no byte it moves was never written
        const zero = c.transport === 'nccl';
        Object.assign(this.t, {
          stageDispatch: make([R * this.dispatchRegion], 'u8', zero),
          stageDispatchCounts: make([R], 'i64', zero),
          stageCombine: make([R * this.combineRegion], 'u8', zero),
          stageCombineCounts: make([R], 'i64', zero),
        });
      }
      const rowsShape = c.layout === 'masked' ? [L, c.maxTokensPerExpert] : [this.rows];
      const layout = {
        form: c.layout,
        tokens: slots,
        k: K,
        numExperts: L,
        align: c.align,
        maxTokensPerExpert: c.maxTokensPerExpert,
        rows: this.rows,
        // zeros: a masked dispatch clears the rows of the last call's counts (see tokens)
        counts: make([L], 'i32', true),
        offsets: make([L + 1], 'i32'),
        sourceIndex: make(rowsShape, 'i32'),
        rowIndex: make([slots, K], 'i32'),
        usedRows: make([1], 'i32'),
        dropped: make([1], 'i32'),
        errors: make([1], 'i32'),
      };
      // groupedGemmNvfp4 takes it as one of routing's layouts: the same fields and meaning
      Object.defineProperty(layout, EXPERT_LAYOUT, { value: true });
      this.out = {
        tokens: c.gather ? make([slots, H], 'bf16') : make([this.rows, H], 'bf16', c.layout === 'masked'),
        layout: Object.freeze(layout) as ExpertLayout,
        invalidIds: make([1], 'i32'),
        combineIndex: make([M, K], 'i32'),
      };
    } catch (e) {
      for (const x of made) x.dispose();
      if (this.ipc) native().ipcFree(deviceIndexOf(device), this.ipc.base, this.ipc.bytes);
      if (this.side) {
        const b = native(), dev = deviceIndexOf(device);
        for (const ev of [this.side.fork, this.side.join]) if (ev !== 0n) b.destroyEvent(dev, ev);
        b.destroyStream(dev, this.side.stream);
      }
      throw e;
    }
    let output = 0;
    for (const x of [this.out.tokens, this.out.invalidIds, this.out.combineIndex]) output += x.byteLength;
    const l = this.out.layout;
    for (const x of [l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) output += x.byteLength;
    let total = output + 4 * 8 * R;
    for (const x of Object.values(this.t)) total += x.byteLength;
    this.bytes = Object.freeze({
      slot: this.slotBytes,
      payload: payloadBytes(c.payload, H),
      dispatch: R * this.dispatchRegion,
      combine: R * this.combineRegion,
      output,
      total,
    });
    if (gateId !== undefined) this.gate = { id: gateId, gate: gateOf(gateId, this.worldSize) };
    buffers.add(this);
  }

  get disposed(): boolean {
    return this._disposed;
  }

  /** bf16 [rows, hidden]: where dispatch writes the experts' rows (the result's `tokens`). */
  get tokens(): Tensor<'bf16'> {
    return this.out.tokens;
  }

  /** The layout dispatch writes (the result's `layout`). */
  get expertLayout(): ExpertLayout {
    return this.out.layout;
  }

  /**
   * The handle of the last dispatch until it is combined. In a graph capture, dispatch and
   * combine enqueue their work before they return, and the graph replays them with whatever the
   * captured inputs hold; take tokens, expertLayout and lastHandle from the buffer there (the
   * promises resolve at once, and `out` can be passed to combine).
   */
  get lastHandle(): EpHandle | undefined {
    return this.last?.handle;
  }

  /** @internal the memory the other ranks write */
  get receive(): Receive {
    return this.t as unknown as Receive;
  }

  /**
   * @internal The destination tables: for the host and nccl transports this rank's staging
   * (region d for rank d); for nvlink, the address of this rank's region in each rank's receive buffers.
   */
  setDestinations(peers: readonly { recvDispatch: bigint; recvDispatchCounts: bigint; recvCombine: bigint; recvCombineCounts: bigint }[]): void {
    const R = this.worldSize, me = BigInt(this.rank);
    const table = (name: string, f: (d: number) => bigint) => {
      const t = fromBytes(BigUint64Array.from({ length: R }, (_, d) => f(d)), { dtype: 'i64', shape: [R], device: this.device });
      this.t[name] = t;
      return t;
    };
    const t = this.t;
    this.tables = this.transport !== 'nvlink'
      ? {
        dispatch: table('dispatchDst', (d) => t.stageDispatch.dataPtr + BigInt(d * this.dispatchRegion)),
        dispatchCounts: table('dispatchCountDst', (d) => t.stageDispatchCounts.dataPtr + BigInt(8 * d)),
        combine: table('combineDst', (d) => t.stageCombine.dataPtr + BigInt(d * this.combineRegion)),
        combineCounts: table('combineCountDst', (d) => t.stageCombineCounts.dataPtr + BigInt(8 * d)),
      }
      : {
        dispatch: table('dispatchDst', (d) => peers[d].recvDispatch + me * BigInt(this.dispatchRegion)),
        dispatchCounts: table('dispatchCountDst', (d) => peers[d].recvDispatchCounts + 8n * me),
        combine: table('combineDst', (d) => peers[d].recvCombine + me * BigInt(this.combineRegion)),
        combineCounts: table('combineCountDst', (d) => peers[d].recvCombineCounts + 8n * me),
      };
  }

  private tables: { dispatch: Tensor; dispatchCounts: Tensor; combine: Tensor; combineCounts: Tensor } | undefined;

  /**
   * Resolves once this buffer's device work queued on `stream` has finished, and rejects with
   * E_TIMEOUT when one of its waits ran out (a rank that did not make the same call in time): the
   * buffer is then unusable. Outside a graph capture, dispatch and combine check this before
   * they resolve; after replaying a captured graph, call check().
   */
  async check(stream?: Stream): Promise<void> {
    if (this._disposed) throw new MoeError('E_DISPOSED', 'check: the EpBuffer was disposed');
    await this.readStatus(resolveStream(stream, this.device, 'stream'));
  }

  /** Reads the status words after the work queued on `stream`; E_TIMEOUT if a wait ran out. */
  private async readStatus(stream: Stream): Promise<void> {
    if (this.transport === 'host') return;
    const words = new Int32Array(2);
    // the status words are [4] and [5] of the state tensor
    await native().copyToHostAsync(this.t.state.deviceIndex, words, this.t.state.dataPtr + 16n, 8, stream.handle);
    if (words[0] !== 0) {
      this.fail();
      throw this.timeoutError(STATUS_TIMEOUT[words[0]] ?? `op ${words[0]}`, words[1]);
    }
  }

  private timeoutError(op: string, missing: number): MoeError {
    return new MoeError(
      'E_TIMEOUT',
      `rank ${this.rank}: ${op} waited ${this.group.timeoutMs} ms for rank ${missing}, which did not send its part (it did not call ${op}, or called it much later); the EpBuffer is unusable`,
    );
  }

  /**
   * nvlink ranks of one process: resolves once every rank has enqueued its send of this call, so
   * that no rank's receive (a kernel that waits for the sends) is queued before all sends are.
   * Not in a graph capture: captured work runs only when the graphs are replayed.
   */
  private async sendsQueued(op: 'dispatch' | 'combine', epoch: number, stream: Stream): Promise<void> {
    const g = this.gate;
    if (!g || isCapturing(stream)) return;
    await g.gate.arrive(this.rank, `${op} ${epoch}`, this.group.timeoutMs, (missing) => this.timeoutError(op, missing));
  }

  /**
   * Sends this rank's tokens x (bf16 [tokens <= maxTokensPerRank, hidden]) to the ranks of their
   * experts (routing.ids i32 [tokens, topK], global ids; routing.weights f32 [tokens, topK], as
   * routeTopK returns them) and resolves with this rank's experts' rows. Every rank must call it,
   * one with no tokens included. Rejects with E_TIMEOUT or E_COMM when the group fails (the
   * buffer is then unusable), E_SHAPE / E_DTYPE / E_ARGUMENT on bad arguments before anything
   * is sent.
   */
  async dispatch(x: Tensor<'bf16'>, routing: { ids: Tensor<'i32'>; weights: Tensor<'f32'> }, options?: EpDispatchOptions): Promise<EpDispatchResult> {
    const deadline = new Deadline(this.group.timeoutMs);
    this.usable('dispatch');
    const o = checkOptions(options, 'options', DISPATCH_KEYS);
    const xt = checkTensor<Tensor<'bf16'>>(x, 'x', ['bf16'], this.device);
    checkRank(xt, 'x', 2, '[tokens, hidden]');
    const T = xt.shape[0];
    checkShapeIs(xt, 'x', [T, this.hidden], ['tokens', 'hidden']);
    if (T > this.maxTokensPerRank) throw new MoeError('E_SHAPE', `x: ${T} tokens exceed maxTokensPerRank = ${this.maxTokensPerRank}`);
    if (routing === null || typeof routing !== 'object') throw new MoeError('E_ARGUMENT', `routing: expected { ids, weights }, got ${describe(routing)}`);
    const r = checkOptions(routing, 'routing', ROUTING_KEYS);
    const ids = checkTensor<Tensor<'i32'>>(r.ids, 'routing.ids', ['i32'], this.device);
    checkShapeIs(ids, 'routing.ids', [T, this.topK], ['tokens', 'topK']);
    const weights = checkTensor<Tensor<'f32'>>(r.weights, 'routing.weights', ['f32'], this.device);
    checkShapeIs(weights, 'routing.weights', [T, this.topK], ['tokens', 'topK']);
    const stream = this.streamOf(o.stream);

    this.state = 'busy';
    this.last = undefined;
    try {
      const epoch = (this.epoch = (this.epoch + 1) >>> 0);
      const b = native();
      const t = this.t, l = this.out.layout, tb = this.tables as NonNullable<EpBuffer['tables']>;
      const dev = t.state.deviceIndex, st = t.state.dataPtr;
      useOn(stream, [xt, ids, weights, ...this.tensors()]);
      // the side stream's work ends before the call's (dispatchRecv joins it)
      const side = this.side && T > OVERLAP_TOKENS && (t.staging || xt.dataPtr % 16n === 0n) ? this.side : undefined;
      const sendArgs = [
        xt.dataPtr, ids.dataPtr, weights.dataPtr, T, tb.dispatch.dataPtr, tb.dispatchCounts.dataPtr, st, st + 4n, Math.max(1, this.sms),
        this.out.combineIndex.dataPtr, this.out.invalidIds.dataPtr,
        side?.stream ?? 0n, side?.fork ?? 0n, side ? t.staging?.dataPtr ?? 0n : 0n, side ? t.sendCounts.dataPtr : 0n, side ? t.chunkDone.dataPtr : 0n,
      ] as const;
      const recvArgs = () => [
        t.recvDispatch.dataPtr, t.recvDispatchCounts.dataPtr, st, this.recvBoundNs(deadline), st + 16n, t.recvCounts.dataPtr,
        this.align, this.maxTokensPerExpert, this.rows, this.gather, this.out.tokens.dataPtr, l.counts.dataPtr, l.offsets.dataPtr, l.sourceIndex.dataPtr,
        l.rowIndex.dataPtr, l.usedRows.dataPtr, l.dropped.dataPtr, l.errors.dataPtr, side?.stream ?? 0n, side?.join ?? 0n,
        // an overlapped send of x as it is leaves this rank's own slots' rows in x
        side && !t.staging ? xt.dataPtr : 0n,
      ] as const;
      // nvlink, a rank alone on its device, no side stream: send and receive in one call (a decode
      // step's with gather is one launch), unless ranks of this process enqueue eagerly, whose
      // receives must wait for every rank's send to be queued (gate.ts)
      if (this.transport === 'nvlink' && !this.sharesDevice && !side && (!this.gate || isCapturing(stream))) {
        b.epDispatch(dev, stream.handle, ...this.shape, ...sendArgs, ...recvArgs(), st + 12n);
      } else {
        b.epDispatchSend(dev, stream.handle, ...this.shape, ...sendArgs);
        if (this.transport === 'host') {
          const sent = this.readWords(t.stageDispatchCounts);
          const parts = sent.map((word, d) => this.part(t.stageDispatch, d * this.dispatchRegion, word, [[0, Number(word & 0xffffffffn) * this.slotBytes]]));
          const got = await this.group.allToAll(parts);
          got.forEach((p, s) => this.place(p, s, t.recvDispatch, t.recvDispatchCounts, this.dispatchRegion, epoch, 'dispatch', (n) => [[0, n * this.slotBytes]]));
        } else if (this.nccl) {
          b.ncclExchange(this.nccl.handle, 0, stream.handle);
        } else if (this.gate && !isCapturing(stream)) {
          await this.sendsQueued('dispatch', epoch, stream);
        }
        b.epDispatchRecv(dev, stream.handle, ...this.shape, ...recvArgs());
      }
      const handle: EpHandle = Object.freeze({ epoch, tokens: T });
      this.last = { handle, weights };
      if (this.nccl) await this.ncclWait('dispatch', stream, deadline);
      this.state = 'dispatched';
      if (!isCapturing(stream)) await this.readStatus(stream);
      return { tokens: this.out.tokens, layout: l, invalidIds: this.out.invalidIds, handle };
    } catch (e) {
      this.fail();
      throw e;
    }
  }

  /**
   * Sends the experts' outputs y (bf16 [layout.rows, hidden], rows of the last dispatch's layout)
   * back to the tokens' ranks and resolves with out [tokens, hidden]: for each token of this
   * rank's dispatch, the sum over its k slots, in order, of weight x expert output, each step an
   * f32 fused multiply-add, rounded once to out's dtype (unpermute's arithmetic). Pairs that were
   * dropped or had an invalid id add nothing. Every rank must call it.
   */
  async combine(y: Tensor<'bf16'>, handle: EpHandle, options?: EpCombineOptions): Promise<Tensor<'bf16' | 'f32'>> {
    const deadline = new Deadline(this.group.timeoutMs);
    this.usable('combine');
    const o = checkOptions(options, 'options', COMBINE_KEYS);
    const last = this.last;
    if (!last || handle !== last.handle || this.state !== 'dispatched') {
      throw new MoeError('E_ARGUMENT', 'handle: expected the handle of this buffer\'s last dispatch, not yet combined');
    }
    const yt = checkTensor<Tensor<'bf16'>>(y, 'y', ['bf16'], this.device);
    checkShapeIs(yt, 'y', [this.rows, this.hidden], ['layout.rows', 'hidden']);
    const T = last.handle.tokens;
    checkTensor(last.weights, 'routing.weights (of the dispatch)', ['f32'], this.device);
    const stream = this.streamOf(o.stream);
    let out: Tensor<'bf16' | 'f32'>;
    if (o.out === undefined) {
      out = empty<'bf16'>([T, this.hidden], { dtype: 'bf16', device: this.device, stream });
    } else {
      out = checkTensor<Tensor<'bf16' | 'f32'>>(o.out, 'options.out', ['bf16', 'f32'], this.device);
      checkShapeIs(out, 'options.out', [T, this.hidden], ['tokens', 'hidden']);
    }
    this.state = 'busy';
    try {
      const epoch = last.handle.epoch;
      const b = native();
      const t = this.t, tb = this.tables as NonNullable<EpBuffer['tables']>;
      const dev = t.state.deviceIndex, st = t.state.dataPtr;
      useOn(stream, [yt, last.weights, out, ...this.tensors()]);
      // the side stream's work ends before the call's (combineRecv joins it)
      const side = this.side && T > OVERLAP_TOKENS ? this.side : undefined;
      // an overlapped exact send leaves this rank's own pairs to the receive, which reads them from y
      const ownY = side && this.combineForm === 'exact' && this.hidden % 8 === 0 && yt.dataPtr % 16n === 0n ? yt.dataPtr : 0n;
      b.epCombineSend(
        dev, stream.handle, ...this.shape, yt.dataPtr, this.rows, t.recvDispatch.dataPtr, this.out.layout.rowIndex.dataPtr, t.recvCounts.dataPtr, tb.combine.dataPtr,
        tb.combineCounts.dataPtr, st, st + 8n, Math.max(1, this.sms), side?.stream ?? 0n, side?.fork ?? 0n, side ? t.chunkDone.dataPtr : 0n,
      );
      if (this.transport === 'host') {
        const sent = this.readWords(t.stageCombineCounts);
        const K = this.combineEntries, H = this.hidden;
        const pieces = (n: number): [number, number][] => [[0, 4 * n * K], [this.combineRowsAt, n * K * 2 * H]];
        const parts = sent.map((word, s) => this.part(t.stageCombine, s * this.combineRegion, word, pieces(Number(word & 0xffffffffn))));
        const got = await this.group.allToAll(parts);
        got.forEach((p, d) => this.place(p, d, t.recvCombine, t.recvCombineCounts, this.combineRegion, epoch, 'combine', pieces));
      } else if (this.nccl) {
        b.ncclExchange(this.nccl.handle, 1, stream.handle);
      } else if (this.gate && !isCapturing(stream)) {
        await this.sendsQueued('combine', epoch, stream);
      }
      b.epCombineRecv(
        dev, stream.handle, ...this.shape, t.recvCombine.dataPtr, t.recvCombineCounts.dataPtr, st, this.recvBoundNs(deadline), st + 16n,
        this.out.combineIndex.dataPtr, last.weights.dataPtr, T, out.dataPtr, DTYPES[out.dtype].id, side?.stream ?? 0n, side?.join ?? 0n,
        ownY, this.rows, ownY ? this.out.layout.rowIndex.dataPtr : 0n,
      );
      if (this.nccl) await this.ncclWait('combine', stream, deadline);
      this.state = 'idle';
      this.last = undefined;
      if (!isCapturing(stream)) await this.readStatus(stream);
      return out;
    } catch (e) {
      if (o.out === undefined) out.dispose();
      this.fail();
      throw e;
    }
  }

  /** The stream of a call; ranks that share a device must not share a stream (their waits would queue behind each other). */
  private streamOf(stream: unknown): Stream {
    const s = resolveStream(stream, this.device, 'options.stream');
    if (this.transport === 'nvlink' && this.sharesDevice && s.isDefault) {
      throw new MoeError('E_ARGUMENT', `options.stream: rank ${this.rank} shares ${this.device} with another rank; pass each rank a stream of its own (createStream)`);
    }
    // its waits are bounded from the host, which a replayed graph would bypass
    if (this.transport === 'nccl' && isCapturing(s)) throw new MoeError('E_CAPTURE', 'options.stream: the nccl transport cannot be captured into a graph (use nvlink)');
    return s;
  }

  /** Every tensor of this buffer and its outputs. */
  private tensors(): Tensor[] {
    const l = this.out.layout;
    return [...Object.values(this.t), this.out.tokens, this.out.invalidIds, this.out.combineIndex, l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors];
  }

  /**
   * Releases the buffers (the group stays). Idempotent. With nvlink the other ranks write into
   * them: call it once every rank's last combine has finished; between rank processes prefer
   * close(), which unmaps everywhere before anything is freed.
   */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    if (this.gate) releaseGate(this.gate.id);
    this.endNccl('abort');
    // cudaEventDestroy of an event still pending lets it complete first
    if (this.nccl) native().destroyEvent(deviceIndexOf(this.device), this.nccl.event);
    if (this.side) {
      const b = native(), dev = deviceIndexOf(this.device);
      b.destroyEvent(dev, this.side.fork);
      b.destroyEvent(dev, this.side.join);
      // work still queued on a destroyed stream completes first
      b.destroyStream(dev, this.side.stream);
      this.side = undefined;
    }
    for (const x of Object.values(this.t)) x.dispose();
    const l = this.out.layout;
    for (const x of [this.out.tokens, this.out.invalidIds, this.out.combineIndex, l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) x.dispose();
    const ipc = this.ipc;
    if (ipc) {
      this.ipc = undefined;
      const b = native(), dev = deviceIndexOf(this.device);
      for (const p of ipc.opened) b.ipcClose(dev, p);
      // cudaFree waits for the device's work, this rank's kernels included
      b.ipcFree(dev, ipc.base, ipc.bytes);
    }
  }

  /**
   * Releases the buffers on every rank together (a collective: every rank calls it once its
   * last combine has finished): each rank unmaps the others' buffers, the ranks meet, then each
   * frees its own. Rank processes (CUDA IPC) need this order; dispose() alone frees at once.
   * nccl: the ranks destroy their communicators after they meet (dispose() aborts it instead).
   */
  async close(): Promise<void> {
    if (this._disposed) return;
    const ipc = this.ipc;
    if (ipc) {
      const b = native(), dev = deviceIndexOf(this.device);
      for (const p of ipc.opened.splice(0)) b.ipcClose(dev, p);
    }
    await this.group.barrier();
    try {
      // every rank's last combine has finished: the communicator has no work left anywhere
      this.endNccl(this.state === 'failed' ? 'abort' : 'destroy');
    } finally {
      this.dispose();
    }
  }

  /** @internal nvlink between processes: this rank's receive block as others map it. */
  ipcHandle(): Uint8Array {
    if (!this.ipc) throw new MoeError('E_INTERNAL', 'ipcHandle: this buffer was not made for CUDA IPC');
    return native().ipcHandle(deviceIndexOf(this.device), this.ipc.base);
  }

  /** @internal maps another rank's receive block; returns the address of its buffers here. */
  ipcOpen(handle: Uint8Array): { recvDispatch: bigint; recvDispatchCounts: bigint; recvCombine: bigint; recvCombineCounts: bigint } {
    if (!this.ipc) throw new MoeError('E_INTERNAL', 'ipcOpen: this buffer was not made for CUDA IPC');
    const base = native().ipcOpen(deviceIndexOf(this.device), handle);
    this.ipc.opened.push(base);
    // the same options on every rank: the same offsets in every block
    const t = this.t;
    const off = (x: Tensor) => x.dataPtr - (this.ipc as { base: bigint }).base;
    return {
      recvDispatch: base + off(t.recvDispatch),
      recvDispatchCounts: base + off(t.recvDispatchCounts),
      recvCombine: base + off(t.recvCombine),
      recvCombineCounts: base + off(t.recvCombineCounts),
    };
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private usable(op: string): void {
    if (this._disposed) throw new MoeError('E_DISPOSED', `${op}: the EpBuffer was disposed`);
    if (this.state === 'busy') throw new MoeError('E_ARGUMENT', `${op}: a dispatch or combine of this buffer is in flight; await it first`);
    if (this.state === 'failed') throw new MoeError('E_COMM', `${op}: an earlier call of this buffer failed; make a new group and buffer`);
  }

  private fail(): void {
    // the ranks' calls are no longer in step: this buffer cannot be used again
    this.state = 'failed';
    this.last = undefined;
    this.endNccl('abort');
  }

  /** @internal nccl: makes the communicator (in createEpBuffer, on every rank together) and its teardown hooks. */
  async connectNccl(): Promise<void> {
    const b = native(), g = this.group, dev = deviceIndexOf(this.device), t = this.t;
    const event = b.createEvent(dev, false);
    // handle -1 until the communicator is being made
    const nccl = { handle: -1, event, live: true, unhook: () => {} };
    this.nccl = nccl;
    // a group that fails ends the communicator, and with it any NCCL work this rank waits for
    nccl.unhook = g.onClose((error) => {
      if (error) this.fail();
    });
    const id = await g.broadcast(g.rank === 0 ? b.ncclUniqueId() : undefined, 0);
    const stream = resolveStream(undefined, this.device);
    // the zeroed buffers are in place before the first exchange reads or writes them
    await stream.synchronize();
    if (!nccl.live) throw new MoeError('E_COMM', `rank ${this.rank}: the process group failed while the NCCL communicator was being set up`);
    nccl.handle = b.ncclReserve();
    b.ncclCreate(
      nccl.handle, dev, this.worldSize, this.rank, id,
      t.stageDispatch.dataPtr, t.stageDispatchCounts.dataPtr, t.recvDispatch.dataPtr, t.recvDispatchCounts.dataPtr, this.dispatchRegion,
      t.stageCombine.dataPtr, t.stageCombineCounts.dataPtr, t.recvCombine.dataPtr, t.recvCombineCounts.dataPtr, this.combineRegion,
      stream.handle,
    );
    const started = performance.now();
    try {
      for (;;) {
        if (!nccl.live) throw new MoeError('E_COMM', 'the process group failed while the NCCL communicator was being made');
        if (b.ncclCreated(nccl.handle)) return;
        if (performance.now() - started > g.timeoutMs) {
          throw new MoeError(
            'E_TIMEOUT',
            `rank ${this.rank}: the NCCL communicator was not made within ${g.timeoutMs} ms (a rank did not call createEpBuffer, or NCCL could not connect the ranks; NCCL_DEBUG=WARN tells more)`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    } catch (e) {
      // a communicator still being made is aborted by its thread once that is safe
      this.fail();
      throw e instanceof MoeError && e.code !== 'E_TIMEOUT' ? new MoeError(e.code, `rank ${this.rank}: making the NCCL communicator: ${e.message}`) : e;
    }
  }

  /**
   * The bound of the receive's device wait. nvlink: the group's timeout (the wait starts once the
   * kernels before it have run, which the host does not wait for). nccl: the wait is queued behind
   * NCCL's exchange, so when it starts every count word is in place, or the exchange was aborted
   * and none will come: it gets a few milliseconds at most, within the call's deadline. With the
   * group's timeout it would start its own full timeout when the abort at the deadline ends
   * NCCL's kernel, and ncclCommAbort, which frees device memory (cudaFree waits for the device),
   * would block the thread that called it until that wait ran out too.
   */
  private recvBoundNs(deadline: Deadline): number {
    return this.nccl ? deadline.deviceBoundNs(NCCL_RECV_WAIT_MS) : this.timeoutNs;
  }

  /**
   * nccl: resolves once this call's work queued on `stream` has finished; NCCL's asynchronous
   * error (E_COMM) or the call's deadline (E_TIMEOUT) aborts the communicator instead, which ends
   * NCCL's kernels, and the buffer is unusable.
   */
  private async ncclWait(op: 'dispatch' | 'combine', stream: Stream, deadline: Deadline): Promise<void> {
    const n = this.nccl as NonNullable<EpBuffer['nccl']>;
    const b = native(), dev = deviceIndexOf(this.device);
    b.recordEvent(dev, n.event, stream.handle);
    // a short call finishes within a few event-loop turns; past that, it polls every millisecond
    await pollUntil(
      deadline,
      () => {
        if (b.eventQuery(dev, n.event)) return true;
        const error = b.ncclAsyncError(n.handle);
        if (error) {
          this.fail();
          throw new MoeError('E_COMM', `rank ${this.rank}: ${op}: NCCL failed: ${error}; the EpBuffer is unusable`);
        }
        return false;
      },
      () => {
        this.fail();
        return new MoeError(
          'E_TIMEOUT',
          `rank ${this.rank}: ${op}: NCCL's exchange did not finish within ${deadline.timeoutMs} ms (a rank did not call ${op}, or called it much later); the EpBuffer is unusable`,
        );
      },
    );
  }

  /** nccl: ends the communicator once (abort: at any time; destroy: once no rank has work left on it). */
  private endNccl(how: 'abort' | 'destroy'): void {
    const n = this.nccl;
    if (!n || !n.live) return;
    n.live = false;
    n.unhook();
    if (n.handle < 0) return;
    const b = native();
    if (how === 'destroy') b.ncclDestroy(n.handle);
    else b.ncclAbort(n.handle);
  }

  private readWords(t: Tensor): bigint[] {
    const w = new BigUint64Array(this.worldSize);
    native().hostRead(t.dataPtr, w);
    return Array.from(w);
  }

  /** The bytes for one rank: its count word, then the used pieces of its staged region. */
  private part(stage: Tensor, at: number, word: bigint, pieces: [number, number][]): Uint8Array {
    let n = 8;
    for (const [, len] of pieces) n += len;
    const out = new Uint8Array(n);
    new DataView(out.buffer).setBigUint64(0, word, true);
    let o = 8;
    for (const [off, len] of pieces) {
      if (len > 0) native().hostRead(stage.dataPtr + BigInt(at + off), out.subarray(o, o + len));
      o += len;
    }
    return out;
  }

  /** Writes what rank `from` sent into its region; returns its count. */
  private place(p: Uint8Array, from: number, recv: Tensor, counts: Tensor, region: number, epoch: number, op: string, pieces: (n: number) => [number, number][]): number {
    const bad = (why: string) => new MoeError('E_COMM', `${op}: rank ${from} sent ${why} (the ranks' buffers differ, or their calls are out of step)`);
    if (p.byteLength < 8) throw bad(`${p.byteLength} bytes`);
    const word = new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
    if (Number(word >> 32n) !== epoch) throw bad(`the data of call ${word >> 32n} during call ${epoch}`);
    const n = Number(word & 0xffffffffn);
    if (n > this.maxTokensPerRank) throw bad(`${n} rows, more than maxTokensPerRank = ${this.maxTokensPerRank}`);
    const want = pieces(n);
    let o = 8;
    for (const [, len] of want) o += len;
    if (o !== p.byteLength) throw bad(`${p.byteLength} bytes for ${n} rows (expected ${o})`);
    o = 8;
    const b = native();
    for (const [off, len] of want) {
      if (len > 0) b.hostWrite(recv.dataPtr + BigInt(from * region + off), p.subarray(o, o + len));
      o += len;
    }
    b.hostWrite(counts.dataPtr + BigInt(8 * from), BigUint64Array.of(word));
    return n;
  }
}

/**
 * Creates this rank's expert-parallel buffer over `group`; every rank calls it with the same
 * options (checked: the ranks exchange them, E_ARGUMENT naming the first that differs).
 * The host transport needs CPU ranks; nvlink needs CUDA ranks on one host whose devices reach
 * each other: ranks of one process (peer access) or one process per rank (CUDA IPC handles
 * exchanged through the group). nccl needs CUDA ranks, one process each, on any hosts: rank 0
 * makes an NCCL unique id, the group broadcasts it, and every rank makes its communicator
 * (bounded by the group's timeout: E_TIMEOUT; NCCL's errors: E_COMM). nvlink and nccl ranks
 * write each other's buffers: dispose every rank's buffer only after the last combine of every
 * rank has finished, or close() them all together.
 */
export async function createEpBuffer(group: ProcessGroup, options: EpBufferOptions): Promise<EpBuffer> {
  if (group === null || typeof group !== 'object' || typeof (group as ProcessGroup).allToAll !== 'function') {
    throw new MoeError('E_ARGUMENT', `group: expected a ProcessGroup from initProcessGroup(), got ${describe(group)}`);
  }
  const c = checkConfig(options, group.worldSize, group.device);
  // ranks in separate processes map each other's buffers with CUDA IPC: one host only
  const ipc = c.transport === 'nvlink' && group.kind === 'tcp';
  if (ipc && group.localWorldSize !== group.worldSize) {
    throw new MoeError(
      'E_ARGUMENT',
      `options.transport: "nvlink" needs every rank on one host (${group.localWorldSize} of ${group.worldSize} ranks are on this one); there is no transport across hosts yet`,
    );
  }
  // NCCL wants one process per rank (it refuses two ranks of one communicator on one device, and
  // an in-process rank's NCCL call could wait for another rank of the same thread)
  if (c.transport === 'nccl' && group.kind !== 'tcp' && group.worldSize > 1) {
    throw new MoeError(
      'E_ARGUMENT',
      `options.transport: "nccl" needs one process per rank (moe-kernels launch); this group's ${group.worldSize} ranks share a process (use "nvlink")`,
    );
  }
  // every rank must have made the same buffer: a mismatch would corrupt, not fail
  // nvlink ranks of one process meet between each call's send and receive: on rank 0's gate id
  const gate = c.transport === 'nvlink' && group.kind === 'in-process' && group.worldSize > 1 ? randomUUID() : undefined;
  const all = await group.allGather(new TextEncoder().encode(JSON.stringify({ config: c, device: group.device, gate })));
  const decoder = new TextDecoder();
  const devices: Device[] = [];
  let gateId: string | undefined;
  for (let r = 0; r < all.length; r++) {
    const theirs = JSON.parse(decoder.decode(all[r])) as { config: Record<string, unknown>; device: Device; gate?: string };
    if (r === 0 && gate !== undefined) gateId = `ep-gate-${String(theirs.gate)}`;
    for (const [key, value] of Object.entries(c)) {
      if (theirs.config[key] !== value) {
        throw new MoeError('E_ARGUMENT', `options.${key}: rank ${group.rank} has ${JSON.stringify(value)}, rank ${r} has ${JSON.stringify(theirs.config[key])}; every rank must pass the same options`);
      }
    }
    devices.push(theirs.device);
  }
  // in one process, ranks on one device would queue behind each other on one stream
  const sharesDevice = group.kind === 'in-process' && devices.filter((d) => d === group.device).length > 1;
  const buffer = new EpBuffer(group, c, sharesDevice, ipc, gateId);
  try {
    if (c.transport === 'host') {
      buffer.setDestinations([]);
      return buffer;
    }
    if (c.transport === 'nccl') {
      // the kernels write this rank's staging; the communicator moves it to the peers
      buffer.setDestinations([]);
      await buffer.connectNccl();
      // no rank sends before every rank's communicator is ready
      await group.barrier();
      return buffer;
    }
    const b = native();
    const me = Number(group.device.slice(5));
    // in one process, peer access between the devices; CUDA IPC enables it on demand
    for (const d of ipc ? [] : new Set(devices)) {
      const peer = Number(d.slice(5));
      if (peer === me) continue;
      if (!b.canAccessPeer(me, peer)) throw new MoeError('E_DEVICE', `createEpBuffer: ${group.device} cannot access ${d} directly (no NVLink or PCIe peer access); the nvlink transport needs it`);
      b.enablePeerAccess(me, peer);
    }
    // the zeroed count words must be in place before any rank can write them
    const stream = resolveStream(undefined, group.device);
    await stream.synchronize();
    const rv = buffer.receive;
    const own = { recvDispatch: rv.recvDispatch.dataPtr, recvDispatchCounts: rv.recvDispatchCounts.dataPtr, recvCombine: rv.recvCombine.dataPtr, recvCombineCounts: rv.recvCombineCounts.dataPtr };
    if (ipc) {
      const handles = await group.allGather(buffer.ipcHandle());
      buffer.setDestinations(handles.map((h, r) => (r === group.rank ? own : buffer.ipcOpen(h))));
    } else {
      const mine = BigUint64Array.of(own.recvDispatch, own.recvDispatchCounts, own.recvCombine, own.recvCombineCounts);
      const addresses = await group.allGather(new Uint8Array(mine.buffer));
      buffer.setDestinations(addresses.map((a) => {
        const v = new BigUint64Array(a.buffer.slice(a.byteOffset, a.byteOffset + 32));
        return { recvDispatch: v[0], recvDispatchCounts: v[1], recvCombine: v[2], recvCombineCounts: v[3] };
      }));
    }
    await stream.synchronize();
    // no rank writes into another before every rank's tables are in place
    await group.barrier();
    return buffer;
  } catch (e) {
    buffer.dispose();
    throw e;
  }
}

/** @internal an EpBuffer made by createEpBuffer */
export function checkEpBuffer(value: unknown, argument: string): EpBuffer {
  if (typeof value !== 'object' || value === null || !buffers.has(value)) {
    throw new MoeError('E_ARGUMENT', `${argument}: expected an EpBuffer from createEpBuffer(), got ${describe(value)}`);
  }
  const b = value as EpBuffer;
  if (b.disposed) throw new MoeError('E_DISPOSED', `${argument}: the EpBuffer was disposed`);
  return b;
}
