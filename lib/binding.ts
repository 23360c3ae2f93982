// The native addon's entry points, as types only: a leaf every module may import.
// Ops take (device, stream, ...fields): device is the native index (-1 runs the CPU reference),
// stream the cudaStream_t as a bigint (ignored on the CPU), and the fields fill the op's
// argument struct (native/common/<family>.h) in declaration order. Pointers are bigints, dtypes
// the numeric ids of dtype.ts. Hot ops are also called with no arguments, after the same
// values were written into the op argument buffer (native.ts opArgs()).

/** Raw binding: pointers are bigints, dtypes numeric ids, device -1 the CPU. Internal. */
export interface Binding extends Nvfp4Binding, MtpBinding, RoutingBinding, MoeBinding, EpBinding {
  setErrorClass(cls: unknown): void;
  /** The op argument buffer (native.ts opArgs()): ops called with no arguments read it. */
  setArgBuffer(buffer: Float64Array): void;
  buildInfo(): NativeBuildInfo;
  canAccessPeer(from: number, to: number): boolean;
  enablePeerAccess(device: number, peer: number): void;
  /** CUDA IPC: device memory other processes map, its 64-byte handle, a peer's block mapped here. */
  ipcAlloc(device: number, bytes: number): bigint;
  ipcFree(device: number, ptr: bigint, bytes: number): void;
  ipcHandle(device: number, ptr: bigint): Uint8Array;
  ipcOpen(device: number, handle: Uint8Array): bigint;
  ipcClose(device: number, ptr: bigint): void;
  deviceCount(): number;
  cudaUnavailableReason(): string;
  deviceInfo(device: number): NativeDeviceInfo;
  memoryStats(device: number): MemoryStats;
  emptyCache(device: number): void;
  setMemoryLimit(device: number, bytes: number): void;
  deviceAlloc(device: number, bytes: number, stream: bigint): bigint;
  deviceFree(device: number, ptr: bigint, bytes: number, usedOn: bigint[]): void;
  hostAlloc(bytes: number, zero: boolean): bigint;
  hostFree(ptr: bigint, bytes: number): void;
  hostWrite(dst: bigint, src: ArrayBufferView): void;
  hostRead(src: bigint, dst: ArrayBufferView): void;
  hostCopy(dst: bigint, src: bigint, bytes: number): void;
  copyToDevice(device: number, dst: bigint, src: bigint | ArrayBufferView, bytes: number, stream: bigint): void;
  copyDeviceToDevice(device: number, dst: bigint, src: bigint, bytes: number, stream: bigint): void;
  copyPeer(dstDevice: number, dst: bigint, srcDevice: number, src: bigint, bytes: number, stream: bigint): void;
  copyToHostAsync(device: number, dst: bigint | ArrayBufferView, src: bigint, bytes: number, stream: bigint): Promise<void>;
  memset(device: number, ptr: bigint, value: number, bytes: number, stream: bigint): void;
  defaultStream(device: number): bigint;
  createStream(device: number): bigint;
  destroyStream(device: number, stream: bigint): void;
  streamSynchronize(device: number, stream: bigint): Promise<void>;
  streamQuery(device: number, stream: bigint): boolean;
  streamWaitEvent(device: number, stream: bigint, event: bigint): void;
  createEvent(device: number, timing: boolean): bigint;
  destroyEvent(device: number, event: bigint): void;
  recordEvent(device: number, event: bigint, stream: bigint): void;
  eventSynchronize(device: number, event: bigint): Promise<void>;
  eventQuery(device: number, event: bigint): boolean;
  eventElapsedMs(device: number, start: bigint, end: bigint): number;
  beginCapture(device: number, stream: bigint): void;
  endCapture(device: number, stream: bigint): bigint;
  abortCapture(device: number, stream: bigint): void;
  isCapturing(device: number, stream: bigint): boolean;
  launchGraph(device: number, graph: bigint, stream: bigint): void;
  destroyGraph(device: number, graph: bigint): void;
  /** With no arguments: (device, stream, ...fields) from the op argument buffer. */
  convert(): void;
  convert(device: number, stream: bigint, src: bigint, srcType: number, dst: bigint, dstType: number, numel: number): void;
  /** With no arguments: (device, stream, ...fields) from the op argument buffer. */
  launchEmpty(): void;
  launchEmpty(device: number, stream: bigint): void;
  /** Every op `name(device, stream, ...fields)` also has `nameLaunchLoop(n, device, stream, ...fields)`. */
  [launchLoop: `${string}LaunchLoop`]: (n: number, ...args: (bigint | number | boolean)[]) => number;
}

export interface NativeBuildInfo {
  cuda: boolean;
  cudaArchs: string;
  cudaRuntimeVersion: number;
  driverVersion: number;
  ncclLibrary: string;
}

export interface NativeDeviceInfo {
  index: number;
  name: string;
  major: number;
  minor: number;
  multiprocessors: number;
  totalMemory: number;
  l2CacheBytes: number;
  sharedMemoryPerBlockOptin: number;
}

export interface MemoryStats {
  /** Bytes held by live tensors (sizes rounded up to the allocator's blocks). */
  allocatedBytes: number;
  /** Bytes obtained from the driver: live plus cached for reuse. */
  reservedBytes: number;
  peakAllocatedBytes: number;
  allocations: number;
  frees: number;
  /** cudaMalloc calls made; flat while the cache serves every allocation. */
  driverAllocations: number;
}

/**
 * Native ops of the nvfp4 family (native/common/nvfp4.h): `(device, stream, ...fields)` with
 * the fields of the op's struct in order; null pointers are 0n. @internal
 */
export interface Nvfp4Binding {
  nvfp4Amax(device: number, stream: bigint, x: bigint, xType: number, numel: number, amax: bigint): void;
  nvfp4GlobalScaleFromAmax(device: number, stream: bigint, amax: bigint, globalScale: bigint): void;
  /** With no arguments: (device, stream, ...fields) from the op argument buffer. */
  nvfp4Quantize(): void;
  nvfp4Quantize(
    device: number, stream: bigint, x: bigint, xType: number, rows: number, K: number, globalScale: bigint,
    data: bigint, scales: bigint, globalScaleOut: bigint,
  ): void;
  nvfp4Dequantize(
    device: number, stream: bigint, data: bigint, scales: bigint, globalScale: bigint, rows: number, K: number,
    out: bigint, outType: number,
  ): void;
  nvfp4SwizzleScales(device: number, stream: bigint, scales: bigint, rows: number, K: number, swizzled: bigint): void;
  nvfp4UnswizzleScales(device: number, stream: bigint, swizzled: bigint, rows: number, K: number, scales: bigint): void;
  /** With no arguments: (device, stream, ...fields) from the op argument buffer. */
  nvfp4Gemm(): void;
  nvfp4Gemm(
    device: number, stream: bigint, a: bigint, aType: number, aScales: bigint, aGlobalScale: bigint,
    wData: bigint, wScales: bigint, wGlobalScale: bigint, bias: bigint, biasType: number,
    out: bigint, outType: number, M: number, N: number, K: number, alpha: number, portable: boolean,
  ): void;
  nvfp4GroupedGemm(
    device: number, stream: bigint, x: bigint, xType: number, xScales: bigint, xGlobalScale: bigint, wData: bigint,
    wScales: bigint, wGlobalScale: bigint, counts: bigint, offsets: bigint, out: bigint, outType: number, outScales: bigint,
    outGlobalScale: bigint, outGlobalScaleOut: bigint, E: number, rows: number, N: number, K: number,
    maxRowsPerExpert: number, pairs: number, epilogue: number, xRows: bigint, gatherK: number, xTokens: number,
    portable: boolean,
  ): void;
}

/** Native entry points of the mtp family (fields of VerifyDraftsArgs, native/common/mtp.h). @internal */
export interface MtpBinding {
  /** With no arguments: (device, stream, ...fields) from the op argument buffer. */
  verifyDrafts(): void;
  verifyDrafts(
    device: number,
    stream: bigint,
    targetLogits: bigint,
    logitsDType: number,
    draftTokens: bigint,
    draftLengths: bigint,
    draftData: bigint,
    draftDType: number,
    draftKind: number,
    mode: bigint,
    temperature: bigint,
    topK: bigint,
    topP: bigint,
    seed: bigint,
    offset: bigint,
    relaxedTopK: bigint,
    relaxedDelta: bigint,
    thinkBeginId: bigint,
    thinkEndId: bigint,
    inThinking: bigint,
    outTokens: bigint,
    outNumAccepted: bigint,
    outAcceptMask: bigint,
    outInThinking: bigint,
    batch: number,
    numDrafts: number,
    vocab: number,
  ): void;
}

/** Native entry points of the routing family (native/common/routing.h). @internal */
export interface RoutingBinding {
  routeTopK(
    device: number, stream: bigint, logits: bigint, logitsType: number, bias: bigint, ids: bigint, weights: bigint,
    tokens: number, experts: number, k: number, scoring: number, groups: number, topkGroups: number,
    renormalize: boolean, scale: number,
  ): void;
  expertLayout(
    device: number, stream: bigint, ids: bigint, tokens: number, k: number, experts: number, align: number,
    maxPerExpert: number, rows: number, counts: bigint, offsets: bigint, sourceIndex: bigint, rowIndex: bigint,
    usedRows: bigint, dropped: bigint, errors: bigint,
  ): void;
  permute(
    device: number, stream: bigint, x: bigint, type: number, sourceIndex: bigint, usedRows: bigint, out: bigint,
    tokens: number, k: number, hidden: number, rows: number,
  ): void;
  permuteQuantize(
    device: number, stream: bigint, x: bigint, type: number, sourceIndex: bigint, usedRows: bigint, globalScale: bigint,
    data: bigint, scales: bigint, globalScaleOut: bigint, tokens: number, k: number, hidden: number, rows: number,
  ): void;
  unpermute(
    device: number, stream: bigint, y: bigint, yType: number, rowIndex: bigint, weights: bigint, out: bigint,
    outType: number, tokens: number, k: number, hidden: number, rows: number,
  ): void;
}

/** Native entry points of the moe family (native/common/moe.h). @internal */
export interface MoeBinding {
  routerLogits(device: number, stream: bigint, x: bigint, weight: bigint, out: bigint, tokens: number, experts: number, hidden: number): void;
  moeSwiglu(device: number, stream: bigint, x: bigint, xType: number, out: bigint, outType: number, rows: number, inner: number): void;
  moeAdd(
    device: number, stream: bigint, a: bigint, aType: number, b: bigint, bType: number, out: bigint, outType: number, numel: number,
  ): void;
}

/**
 * Native entry points of the ep family (native/common/ep.h). Each starts with the shape:
 * ranks, rank, experts, k, hidden, maxTokens, payload, combine. @internal
 */
export interface EpBinding {
  epDispatchSend(
    device: number, stream: bigint, ranks: number, rank: number, experts: number, k: number, hidden: number, maxTokens: number, payload: number, combine: number,
    x: bigint, ids: bigint, weights: bigint, tokens: number, dataDst: bigint, countDst: bigint, epoch: bigint, sync: bigint, sms: number,
    combineIndex: bigint, errors: bigint, sideStream: bigint, forkEvent: bigint, staging: bigint, sendCounts: bigint, chunkDone: bigint,
  ): void;
  epDispatchRecv(
    device: number, stream: bigint, ranks: number, rank: number, experts: number, k: number, hidden: number, maxTokens: number, payload: number, combine: number,
    regions: bigint, counts: bigint, epoch: bigint, timeoutNs: number, status: bigint, recvCounts: bigint, align: number, maxPerExpert: number,
    rows: number, gather: boolean, tokensOut: bigint, layoutCounts: bigint, offsets: bigint, sourceIndex: bigint, rowIndex: bigint, usedRows: bigint,
    dropped: bigint, errors: bigint, sideStream: bigint, joinEvent: bigint, ownRows: bigint,
  ): void;
  /** epDispatchSend's arguments after the shape, then epDispatchRecv's, then the one-launch dispatch's scratch word. */
  epDispatch(
    device: number, stream: bigint, ranks: number, rank: number, experts: number, k: number, hidden: number, maxTokens: number, payload: number, combine: number,
    x: bigint, ids: bigint, weights: bigint, tokens: number, dataDst: bigint, countDst: bigint, epoch: bigint, sync: bigint, sms: number,
    combineIndex: bigint, errors: bigint, sideStream: bigint, forkEvent: bigint, staging: bigint, sendCounts: bigint, chunkDone: bigint,
    regions: bigint, counts: bigint, recvEpoch: bigint, timeoutNs: number, status: bigint, recvCounts: bigint, align: number, maxPerExpert: number,
    rows: number, gather: boolean, tokensOut: bigint, layoutCounts: bigint, offsets: bigint, sourceIndex: bigint, rowIndex: bigint, usedRows: bigint,
    dropped: bigint, recvErrors: bigint, recvSideStream: bigint, joinEvent: bigint, ownRows: bigint, recvSync: bigint,
  ): void;
  epCombineSend(
    device: number, stream: bigint, ranks: number, rank: number, experts: number, k: number, hidden: number, maxTokens: number, payload: number, combine: number,
    y: bigint, rows: number, regions: bigint, rowIndex: bigint, recvCounts: bigint, dataDst: bigint, countDst: bigint, epoch: bigint, sync: bigint, sms: number,
    sideStream: bigint, forkEvent: bigint, chunkDone: bigint,
  ): void;
  epCombineRecv(
    device: number, stream: bigint, ranks: number, rank: number, experts: number, k: number, hidden: number, maxTokens: number, payload: number, combine: number,
    regions: bigint, counts: bigint, epoch: bigint, timeoutNs: number, status: bigint, combineIndex: bigint, weights: bigint, tokens: number,
    out: bigint, outType: number, sideStream: bigint, joinEvent: bigint, ownY: bigint, ownRows: number, ownRowIndex: bigint,
  ): void;
  /** Opens NCCL (libnccl.so.2, or MOE_KERNELS_NCCL_LIBRARY) and names it with its version; E_COMM when it cannot. */
  ncclLoad(): string;
  /** A new ncclUniqueId (128 bytes). */
  ncclUniqueId(): Uint8Array;
  /** The id of a communicator ncclCreate will make. */
  ncclReserve(): number;
  /**
   * Starts making the communicator on a thread of its own (ncclCommInitRank, then both exchange
   * plans once on `stream`, waited for). A plan: send, sendCounts, recv, recvCounts, regionBytes.
   */
  ncclCreate(
    handle: number, device: number, ranks: number, rank: number, id: Uint8Array,
    dSend: bigint, dSendCounts: bigint, dRecv: bigint, dRecvCounts: bigint, dRegionBytes: number,
    cSend: bigint, cSendCounts: bigint, cRecv: bigint, cRecvCounts: bigint, cRegionBytes: number, stream: bigint,
  ): void;
  /** True once ncclCreate's communicator is ready, false while it is being made; throws why it failed. */
  ncclCreated(handle: number): boolean;
  /** Enqueues plan 0 (dispatch) or 1 (combine) on `stream`. */
  ncclExchange(handle: number, plan: number, stream: bigint): void;
  /** NCCL's asynchronous error of the communicator, or "". */
  ncclAsyncError(handle: number): string;
  ncclAbort(handle: number): void;
  ncclDestroy(handle: number): void;
}
