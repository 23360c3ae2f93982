/// <reference lib="es2022" preserve="true" />
/// <reference lib="esnext.disposable" preserve="true" />
export { MoeError, type MoeErrorCode } from './errors';
export { DTYPES, FLOAT_DTYPES, type DType, type ArrayFor } from './dtype';
export {
  availableBackends,
  backendDevice,
  buildInfo,
  type BuildInfo,
  cudaAvailable,
  cudaUnavailableReason,
  defaultDevice,
  devices,
  emptyCache,
  memoryStats,
  setMemoryLimit,
  type Backend,
  type Device,
  type DeviceInfo,
  type MemoryStats,
} from './device';
export { Stream, Event, createStream, defaultStream } from './stream';
export {
  Tensor,
  MAX_ELEMENTS,
  empty,
  zeros,
  fromArray,
  fromBytes,
  fromPointer,
  type CreateOptions,
  type FromArrayOptions,
} from './tensor';
export { CudaGraph, captureGraph } from './graph';
export { convert, type ConvertOptions } from './convert';
export { diagnostics } from './diagnostics';
export * from './nvfp4';
export * from './mtp';
export {
  routeTopK,
  expertLayout,
  permute,
  unpermute,
  MAX_ROUTED_EXPERTS,
  MAX_TOP_K,
  MAX_LAYOUT_EXPERTS,
  MAX_LAYOUT_ALIGN,
  type Scoring,
  type RouteTopKOptions,
  type RouteTopKResult,
  type ExpertLayout,
  type ExpertLayoutOptions,
  type PermuteOptions,
  type PermuteNvfp4Options,
  type UnpermuteOptions,
} from './routing';
export * from './moe';
export {
  initProcessGroup,
  createEpBuffer,
  EpBuffer,
  type ProcessGroup,
  type ProcessGroupOptions,
  type InProcessGroupOptions,
  type GroupKind,
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
} from './ep';
