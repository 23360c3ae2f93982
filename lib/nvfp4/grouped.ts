// The grouped (expert) NVFP4 GEMM of a Mixture-of-Experts layer: every expert's rows of the
// permuted activations times that expert's weights, in one native call.
import { DTYPES } from '../dtype';
import { MoeError } from '../errors';
import { native } from '../native';
import type { ExpertLayout } from '../routing';
import { resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, type Tensor } from '../tensor';
import { checkAligned, checkExpertLayout, checkNvfp4, checkOneOf, checkOptions, checkOut, checkRank, checkTensor, keys } from '../validate';
import type { Nvfp4Tensor } from './tensor';

/** What follows the expert GEMM inside the kernel. */
export type GroupedEpilogue = 'none' | 'swiglu';
const EPILOGUES: readonly GroupedEpilogue[] = ['none', 'swiglu'];
const EPILOGUE_ID: Readonly<Record<GroupedEpilogue, number>> = { none: 0, swiglu: 1 };
const GROUPED_OPTIONS = keys('epilogue', 'out', 'stream');
const BF16_ONLY = ['bf16'] as const;
const ID_BF16 = DTYPES.bf16.id;

export interface GroupedGemmNvfp4Options {
  /**
   * 'none' (default): out [rows, N]. 'swiglu': w holds w13 = concat(gate_proj, up_proj) along N
   * (the ModelOpt MoE layout: the gate is the first N/2 rows of each expert), and
   * out [rows, N/2] = silu(gate) * up, computed in f32 from the f32 accumulators and rounded
   * once to bf16.
   */
  epilogue?: GroupedEpilogue;
  /** Written in place of a new tensor: bf16 [layout.rows, N or N/2]. */
  out?: Tensor<'bf16'>;
  stream?: Stream;
}

/**
 * The expert GEMM over an expert layout (routing's expertLayout, either form):
 *   x: bf16 [layout.rows, K], the permuted activations (permute(x, layout));
 *   w: Nvfp4Tensor [E, N, K] with one global scale per expert (globalScale [E], the MoE form
 *      nvfp4FromCheckpoint builds), E = layout.numExperts.
 * Row r of the result, for the expert e whose rows hold r (offsets[e] <= r < offsets[e] + counts[e]),
 * is x[r] . w[e]^T times e's global scale, accumulated in f32 and rounded once to bf16: the
 * error of gemmNvfp4 on that expert's rows.
 *
 * Rows that hold no pair (alignment padding, masked rows past counts[e], rows past usedRows) are
 * not written: a new `out` has undefined values there. unpermute reads only rows that hold pairs.
 *
 * counts and offsets are read on the device, and nothing about the launch depends on them: the
 * call can be captured in a CUDA graph and replayed with new routing. Experts without rows
 * cost no weight traffic. The kernel is chosen from the layout's form, tokens * k / E (or the
 * masked capacity), N and K; any `align` runs at full speed (tiles never straddle experts).
 */
export function groupedGemmNvfp4(x: Tensor<'bf16'>, w: Nvfp4Tensor, layout: ExpertLayout, options?: GroupedGemmNvfp4Options): Tensor<'bf16'> {
  const o = checkOptions(options, 'options', GROUPED_OPTIONS);
  const xt = checkTensor<Tensor>(x, 'x', BF16_ONLY);
  const device = xt.device;
  checkNvfp4(w, 'w', device);
  const wShape = w.shape;
  if (wShape.length !== 3) throw new MoeError('E_SHAPE', `w: expected the experts' NVFP4 weights [E, N, K], got [${wShape}]`);
  const [E, N, K] = wShape;
  if (w.globalScale.numel !== E) {
    throw new MoeError('E_SHAPE', `w: expected one global scale per expert, [${E}], got [${w.globalScale.shape}]`);
  }
  const l = checkExpertLayout<ExpertLayout>(layout, 'layout', device);
  if (E !== l.numExperts) throw new MoeError('E_SHAPE', `w: expected E = layout.numExperts = ${l.numExperts} experts, got [${wShape}]`);
  checkRank(xt, 'x', 2, '[rows, K]');
  if (xt.shape[0] !== l.rows || xt.shape[1] !== K) {
    throw new MoeError('E_SHAPE', `x: expected [layout.rows = ${l.rows}, K = ${K}] (w [${wShape}]), got [${xt.shape}]`);
  }
  const epilogue = o.epilogue === undefined ? 'none' : checkOneOf(o.epilogue, 'options.epilogue', EPILOGUES);
  if (epilogue === 'swiglu' && N % 2 !== 0) {
    throw new MoeError('E_SHAPE', `w: the swiglu epilogue needs N = 2 * I (gate rows, then up rows), got [${wShape}]`);
  }
  const outN = epilogue === 'swiglu' ? N / 2 : N;
  const stream = resolveStream(o.stream, device, 'options.stream');
  const wData = w.data;
  checkAligned(xt.address, xt.numel, 'x', 16);
  checkAligned(wData.address, wData.numel, 'w.data', 8);

  let out: Tensor<'bf16'>;
  const given = o.out !== undefined;
  if (given) {
    out = checkOut<Tensor<'bf16'>>(o.out, 'options.out', 'bf16', [l.rows, outN], device);
    if (
      out.numel > 0 &&
      (overlaps(out, xt) || overlaps(out, wData) || overlaps(out, w.scales) || overlaps(out, w.globalScale) ||
        overlaps(out, l.counts) || overlaps(out, l.offsets))
    ) {
      throw new MoeError('E_ARGUMENT', 'options.out: overlaps an input (x, w or the layout); pass a separate tensor');
    }
  } else {
    out = empty([l.rows, outN], { dtype: 'bf16', device, stream });
  }
  if (l.rows === 0 || outN === 0) return out;

  try {
    if (device !== 'cpu') useOn(stream, [xt, wData, w.scales, w.globalScale, l.counts, l.offsets, out]);
    native().nvfp4GroupedGemm(
      xt.deviceIndex,
      stream.handle,
      xt.dataPtr,
      ID_BF16,
      wData.dataPtr,
      w.scales.dataPtr,
      w.globalScale.dataPtr,
      l.counts.dataPtr,
      l.offsets.dataPtr,
      out.dataPtr,
      ID_BF16,
      E,
      l.rows,
      N,
      K,
      l.form === 'masked' ? l.maxTokensPerExpert : 0,
      l.tokens * l.k,
      EPILOGUE_ID[epilogue],
    );
  } catch (e) {
    if (!given) out.dispose();
    throw e;
  }
  return out;
}
