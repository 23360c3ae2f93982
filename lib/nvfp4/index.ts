// The NVFP4 family: the tensor and its checkpoint import, quantization and the scale swizzle,
// the GEMM and the grouped (expert) GEMM.
export {
  NVFP4_BLOCK,
  Nvfp4Tensor,
  nvfp4FromCheckpoint,
  type Nvfp4Checkpoint,
  type Nvfp4CheckpointEntry,
  type Nvfp4FromCheckpointOptions,
} from './tensor';
export {
  dequantizeNvfp4,
  globalScaleNvfp4,
  quantizeNvfp4,
  swizzleScales,
  unswizzleScales,
  type DequantizeNvfp4Options,
  type GlobalScaleNvfp4Options,
  type Nvfp4SourceDType,
  type QuantizeNvfp4Options,
  type SwizzleScalesOptions,
} from './quantize';
export { gemmNvfp4, type GemmNvfp4Options, type GemmNvfp4OutDType } from './gemm';
export { groupedGemmNvfp4, type GroupedEpilogue, type GroupedGemmNvfp4Options } from './grouped';
