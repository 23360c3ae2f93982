// Expert-parallel dispatch and combine. Each rank holds E/R experts (rank r: experts
// [r*E/R, (r+1)*E/R)). dispatch sends each token once to every rank that holds one of its
// experts, with its expert ids and weights for that rank, and hands each rank its experts' rows
// in routing's expert layouts; combine sends each expert output back to the token's rank and sums
// a token's k outputs there with unpermute's arithmetic, in slot order, so that an expert-parallel
// MoE block computes the single-device block's bits (bf16 payload).
//
// The buffer is symmetric: rank s's data for rank d lands in region s of d's buffer, one writer
// per region (native/common/ep.h has the byte layout). The host transport stages each region
// locally and moves it with the group's allToAll; it runs on CPU ranks.
import { DTYPES } from '../dtype';
import { MoeError, describe } from '../errors';
import { native } from '../native';
import { resolveStream } from '../stream';
import { empty, type Tensor } from '../tensor';
import { EXPERT_LAYOUT, checkInteger, checkOneOf, checkOptions, checkShapeIs, checkTensor, keys, checkRank, type Device } from '../validate';
import type { ExpertLayout } from '../routing';
import type { ProcessGroup } from './group';

/** How a token row travels: as bf16, fp8 e4m3 with one f32 scale per 128 elements, or NVFP4. */
export type EpPayload = 'bf16' | 'fp8' | 'nvfp4';
/** How the received rows are laid out for the experts: routing's contiguous (prefill) or masked (decode) form. */
export type EpLayoutForm = 'contiguous' | 'masked';
/** How bytes move between ranks. "host": through the process group (CPU ranks). */
export type EpTransport = 'host';

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
  /** Masked layout: rows per local expert. Default worldSize * maxTokensPerRank, which never drops a pair. */
  maxTokensPerExpert?: number;
  /** Contiguous layout: each expert's rows start at a multiple of align (1..1024). Default 1. */
  align?: number;
  /** Default "host". */
  transport?: EpTransport;
}

/** What one dispatch hands this rank. */
export interface EpDispatchResult {
  /**
   * bf16 [layout.rows, hidden]: the rows of this rank's experts, in `layout` (the payload
   * dequantized). Within an expert, rows follow (source rank, source token): the order of the
   * ranks' tokens concatenated. Padding rows are zeros; rows past layout.usedRows are not written.
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
  stream?: unknown;
}

export interface EpCombineOptions {
  /** [tokens, hidden], bf16 or f32. Default: a new bf16 tensor. */
  out?: Tensor<'bf16'> | Tensor<'f32'>;
}

const BUFFER_KEYS = keys('maxTokensPerRank', 'hidden', 'topK', 'numExperts', 'payload', 'layout', 'maxTokensPerExpert', 'align', 'transport');
const ROUTING_KEYS = keys('ids', 'weights');
const COMBINE_KEYS = keys('out');
const PAYLOADS: readonly EpPayload[] = ['bf16', 'fp8', 'nvfp4'];
const PAYLOAD_ID: Readonly<Record<EpPayload, number>> = { bf16: 0, fp8: 1, nvfp4: 2 };
const FORMS: readonly EpLayoutForm[] = ['contiguous', 'masked'];
const TRANSPORTS: readonly EpTransport[] = ['host'];
const MAX_TOP_K = 16;
const MAX_LOCAL_EXPERTS = 1024;
const I32_MAX = 2 ** 31 - 1;

// The byte layout of native/common/ep.h.
const roundUp16 = (n: number) => Math.ceil(n / 16) * 16;
function payloadBytes(payload: EpPayload, hidden: number): number {
  if (payload === 'fp8') return hidden + 4 * Math.ceil(hidden / 128);
  if (payload === 'nvfp4') return hidden / 2 + hidden / 16 + 4;
  return 2 * hidden;
}

/** The shape fields every native ep op starts with: ranks, rank, experts, k, hidden, maxTokens, payload. */
type EpShape = [number, number, number, number, number, number, number];

interface Config {
  maxTokensPerRank: number;
  hidden: number;
  topK: number;
  numExperts: number;
  payload: EpPayload;
  layout: EpLayoutForm;
  maxTokensPerExpert: number;
  align: number;
  transport: EpTransport;
}

function checkConfig(options: unknown, worldSize: number): Config {
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
  if (layout === 'contiguous' && o.maxTokensPerExpert !== undefined) {
    throw new MoeError('E_ARGUMENT', 'options.maxTokensPerExpert: only the masked layout has it (pass layout: "masked")');
  }
  if (layout === 'masked' && o.align !== undefined) throw new MoeError('E_ARGUMENT', 'options.align: the masked layout has no alignment');
  const maxTokensPerExpert = layout === 'masked'
    ? o.maxTokensPerExpert === undefined ? worldSize * maxTokensPerRank : checkInteger(o.maxTokensPerExpert, 'options.maxTokensPerExpert', 1, I32_MAX)
    : 0;
  const align = o.align === undefined ? 1 : checkInteger(o.align, 'options.align', 1, 1024);
  const transport = o.transport === undefined ? 'host' : checkOneOf(o.transport, 'options.transport', TRANSPORTS);
  return { maxTokensPerRank, hidden, topK, numExperts, payload, layout, maxTokensPerExpert, align, transport };
}

/** Byte sizes of an EpBuffer. */
export interface EpBufferBytes {
  /** One dispatch slot: payload and metadata of one token. */
  slot: number;
  /** The payload of one token row. */
  payload: number;
  /** The receive buffer of dispatch (worldSize regions of maxTokensPerRank slots). */
  dispatch: number;
  /** The receive buffer of combine (worldSize regions of maxTokensPerRank x topK rows). */
  combine: number;
  /** The experts' rows (tokens) and the layout handed out by dispatch. */
  output: number;
  /** Everything this rank holds, staging for the host transport included. */
  total: number;
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
  readonly maxTokensPerExpert: number;
  readonly align: number;
  readonly transport: EpTransport;
  /** Streaming multiprocessors the communication uses: 0 for the host transport. */
  readonly sms: number = 0;
  readonly bytes: EpBufferBytes;
  /** Rows of the layout dispatch hands out. */
  readonly rows: number;

  private readonly group: ProcessGroup;
  private readonly shape: EpShape;
  private readonly slotBytes: number;
  private readonly dispatchRegion: number;
  private readonly combineRegion: number;
  private readonly combineRowsAt: number;
  private readonly t: Record<string, Tensor>;
  private readonly out: { tokens: Tensor<'bf16'>; layout: ExpertLayout; invalidIds: Tensor<'i32'>; combineIndex: Tensor<'i32'> };
  private epoch = 0;
  private state: 'idle' | 'dispatched' | 'busy' | 'failed' = 'idle';
  private last: { handle: EpHandle; weights: Tensor<'f32'>; counts: number[] } | undefined;
  private _disposed = false;

  /** @internal use createEpBuffer() */
  constructor(group: ProcessGroup, c: Config) {
    this.group = group;
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
    this.maxTokensPerExpert = c.maxTokensPerExpert;
    this.align = c.align;
    this.transport = c.transport;
    const R = this.worldSize, K = this.topK, M = this.maxTokensPerRank, H = this.hidden, L = this.localExperts;
    this.shape = [R, this.rank, this.numExperts, K, H, M, PAYLOAD_ID[c.payload]];
    const metaAt = roundUp16(payloadBytes(c.payload, H));
    this.slotBytes = metaAt + roundUp16(4 + 8 * K);
    this.dispatchRegion = M * this.slotBytes;
    this.combineRowsAt = roundUp16(4 * M * K);
    this.combineRegion = this.combineRowsAt + M * K * 2 * H;
    const slots = R * M;
    this.rows = c.layout === 'masked' ? L * c.maxTokensPerExpert : slots * K + L * (c.align - 1);
    if (this.rows > I32_MAX || this.rows * H > Number.MAX_SAFE_INTEGER) throw new MoeError('E_ARGUMENT', `options: the layout's ${this.rows} rows exceed 2^31 - 1`);

    const device: Device = 'cpu';
    const made: Tensor[] = [];
    const make = <D extends 'u8' | 'i32' | 'i64' | 'bf16'>(shape: number[], dtype: D): Tensor<D> => {
      const x = empty<D>(shape, { dtype, device });
      made.push(x);
      return x;
    };
    try {
      this.t = {
        recvDispatch: make([R * this.dispatchRegion], 'u8'),
        recvDispatchCounts: make([R], 'i64'),
        recvCombine: make([R * this.combineRegion], 'u8'),
        recvCombineCounts: make([R], 'i64'),
        stageDispatch: make([R * this.dispatchRegion], 'u8'),
        stageDispatchCounts: make([R], 'i64'),
        stageCombine: make([R * this.combineRegion], 'u8'),
        stageCombineCounts: make([R], 'i64'),
        dispatchDst: make([R], 'i64'),
        dispatchCountDst: make([R], 'i64'),
        combineDst: make([R], 'i64'),
        combineCountDst: make([R], 'i64'),
      };
      const rowsShape = c.layout === 'masked' ? [L, c.maxTokensPerExpert] : [this.rows];
      const layout = {
        form: c.layout,
        tokens: slots,
        k: K,
        numExperts: L,
        align: c.align,
        maxTokensPerExpert: c.maxTokensPerExpert,
        rows: this.rows,
        counts: make([L], 'i32'),
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
        tokens: make([this.rows, H], 'bf16'),
        layout: Object.freeze(layout) as ExpertLayout,
        invalidIds: make([1], 'i32'),
        combineIndex: make([M, K], 'i32'),
      };
    } catch (e) {
      for (const x of made) x.dispose();
      throw e;
    }
    // the host transport stages region d for rank d locally
    const b = native();
    const table = (base: Tensor, stride: number) => BigUint64Array.from({ length: R }, (_, d) => base.dataPtr + BigInt(d * stride));
    b.hostWrite(this.t.dispatchDst.dataPtr, table(this.t.stageDispatch, this.dispatchRegion));
    b.hostWrite(this.t.dispatchCountDst.dataPtr, table(this.t.stageDispatchCounts, 8));
    b.hostWrite(this.t.combineDst.dataPtr, table(this.t.stageCombine, this.combineRegion));
    b.hostWrite(this.t.combineCountDst.dataPtr, table(this.t.stageCombineCounts, 8));
    let output = 0;
    for (const x of [this.out.tokens, this.out.invalidIds, this.out.combineIndex]) output += x.byteLength;
    const l = this.out.layout;
    for (const x of [l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) output += x.byteLength;
    let total = output;
    for (const x of Object.values(this.t)) total += x.byteLength;
    this.bytes = Object.freeze({
      slot: this.slotBytes,
      payload: payloadBytes(c.payload, H),
      dispatch: R * this.dispatchRegion,
      combine: R * this.combineRegion,
      output,
      total,
    });
    buffers.add(this);
  }

  get disposed(): boolean {
    return this._disposed;
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
    this.usable('dispatch');
    const o = checkOptions(options, 'options', keys('stream'));
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
    resolveStream(o.stream, this.device, 'options.stream');

    this.state = 'busy';
    this.last = undefined;
    try {
      const epoch = (this.epoch = (this.epoch + 1) >>> 0);
      const b = native();
      b.epDispatchSend(
        -1, 0n, ...this.shape, xt.dataPtr, ids.dataPtr, weights.dataPtr, T, this.t.dispatchDst.dataPtr, this.t.dispatchCountDst.dataPtr,
        epoch, this.out.combineIndex.dataPtr, this.out.invalidIds.dataPtr,
      );
      const sent = this.readWords(this.t.stageDispatchCounts);
      const parts = sent.map((word, d) => this.part(this.t.stageDispatch, d * this.dispatchRegion, word, [[0, Number(word & 0xffffffffn) * this.slotBytes]]));
      const got = await this.group.allToAll(parts);
      const counts = got.map((p, s) => this.place(p, s, this.t.recvDispatch, this.t.recvDispatchCounts, this.dispatchRegion, epoch, 'dispatch', (n) => [[0, n * this.slotBytes]]));
      const l = this.out.layout;
      b.epDispatchRecv(
        -1, 0n, ...this.shape, this.t.recvDispatch.dataPtr, this.t.recvDispatchCounts.dataPtr, epoch, this.align, this.maxTokensPerExpert, this.rows,
        this.out.tokens.dataPtr, l.counts.dataPtr, l.offsets.dataPtr, l.sourceIndex.dataPtr, l.rowIndex.dataPtr, l.usedRows.dataPtr, l.dropped.dataPtr,
        l.errors.dataPtr,
      );
      const handle: EpHandle = Object.freeze({ epoch, tokens: T });
      this.last = { handle, weights, counts };
      this.state = 'dispatched';
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
   * dropped or had an invalid id add nothing.
   */
  async combine(y: Tensor<'bf16'>, handle: EpHandle, options?: EpCombineOptions): Promise<Tensor<'bf16' | 'f32'>> {
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
    let out: Tensor<'bf16' | 'f32'>;
    if (o.out === undefined) {
      out = empty<'bf16'>([T, this.hidden], { dtype: 'bf16', device: this.device });
    } else {
      out = checkTensor<Tensor<'bf16' | 'f32'>>(o.out, 'options.out', ['bf16', 'f32'], this.device);
      checkShapeIs(out, 'options.out', [T, this.hidden], ['tokens', 'hidden']);
    }
    this.state = 'busy';
    try {
      const epoch = last.handle.epoch;
      const b = native();
      b.epCombineSend(
        -1, 0n, ...this.shape, yt.dataPtr, this.rows, this.out.layout.rowIndex.dataPtr, this.t.recvDispatchCounts.dataPtr,
        this.t.combineDst.dataPtr, this.t.combineCountDst.dataPtr, epoch,
      );
      const sent = this.readWords(this.t.stageCombineCounts);
      const K = this.topK, H = this.hidden;
      const pieces = (n: number): [number, number][] => [[0, 4 * n * K], [this.combineRowsAt, n * K * 2 * H]];
      const parts = sent.map((word, s) => this.part(this.t.stageCombine, s * this.combineRegion, word, pieces(Number(word & 0xffffffffn))));
      const got = await this.group.allToAll(parts);
      got.forEach((p, d) => this.place(p, d, this.t.recvCombine, this.t.recvCombineCounts, this.combineRegion, epoch, 'combine', pieces));
      b.epCombineRecv(
        -1, 0n, ...this.shape, this.t.recvCombine.dataPtr, this.t.recvCombineCounts.dataPtr, epoch, this.out.combineIndex.dataPtr,
        last.weights.dataPtr, T, out.dataPtr, DTYPES[out.dtype].id,
      );
      this.state = 'idle';
      this.last = undefined;
      return out;
    } catch (e) {
      if (o.out === undefined) out.dispose();
      this.fail();
      throw e;
    }
  }

  /** Releases the buffers (the group stays). Idempotent. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    for (const x of Object.values(this.t)) x.dispose();
    const l = this.out.layout;
    for (const x of [this.out.tokens, this.out.invalidIds, this.out.combineIndex, l.counts, l.offsets, l.sourceIndex, l.rowIndex, l.usedRows, l.dropped, l.errors]) x.dispose();
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
 * The host transport needs the group's ranks on the CPU (E_DEVICE otherwise).
 */
export async function createEpBuffer(group: ProcessGroup, options: EpBufferOptions): Promise<EpBuffer> {
  if (group === null || typeof group !== 'object' || typeof (group as ProcessGroup).allToAll !== 'function') {
    throw new MoeError('E_ARGUMENT', `group: expected a ProcessGroup from initProcessGroup(), got ${describe(group)}`);
  }
  const c = checkConfig(options, group.worldSize);
  if (group.device !== 'cpu') {
    throw new MoeError('E_DEVICE', `createEpBuffer: the host transport moves CPU tensors; this rank is on ${group.device} (make the group with device: "cpu")`);
  }
  // every rank must have made the same buffer: a mismatch would corrupt, not fail
  const mine = JSON.stringify(c);
  const all = await group.allGather(new TextEncoder().encode(mine));
  const decoder = new TextDecoder();
  for (let r = 0; r < all.length; r++) {
    const theirs = JSON.parse(decoder.decode(all[r])) as Record<string, unknown>;
    for (const [key, value] of Object.entries(c)) {
      if (theirs[key] !== value) {
        throw new MoeError('E_ARGUMENT', `options.${key}: rank ${group.rank} has ${JSON.stringify(value)}, rank ${r} has ${JSON.stringify(theirs[key])}; every rank must pass the same options`);
      }
    }
  }
  return new EpBuffer(group, c);
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
