// The grouped (expert) NVFP4 GEMM of a Mixture-of-Experts layer: every expert's rows of the
// permuted activations times that expert's weights, in one native call.
import { DTYPES } from '../dtype';
import { MoeError } from '../errors';
import { native } from '../native';
import type { ExpertLayout } from '../routing';
import { resolveStream, type Stream } from '../stream';
import { empty, overlaps, useOn, type Tensor } from '../tensor';
import { checkAligned, checkBoolean, checkExpertLayout, checkNvfp4, checkOneOf, checkOptions, checkOut, checkTensor, isNvfp4Tensor, keys } from '../validate';
import { forcedPortable } from './gemm';
import { checkGlobalScaleOption, stageGlobalScale } from './quantize';
import { NVFP4_BLOCK, type Nvfp4Tensor } from './tensor';

/** What follows the expert GEMM inside the kernel. */
export type GroupedEpilogue = 'none' | 'swiglu';
const EPILOGUES: readonly GroupedEpilogue[] = ['none', 'swiglu'];
const EPILOGUE_ID: Readonly<Record<GroupedEpilogue, number>> = { none: 0, swiglu: 1 };
const GROUPED_OPTIONS = keys('epilogue', 'gather', 'out', 'outGlobalScale', 'path', 'stream');
const BF16_ONLY = ['bf16'] as const;
const ID_BF16 = DTYPES.bf16.id;
const ID_U8 = DTYPES.u8.id;

export interface GroupedGemmNvfp4Options {
  /**
   * 'none' (default): out [rows, N]. 'swiglu': w holds w13 = concat(gate_proj, up_proj) along N
   * (the ModelOpt MoE layout: the gate is the first N/2 rows of each expert), and
   * out [rows, N/2] = silu(gate) * up, computed in f32 from the f32 accumulators and rounded
   * once to bf16.
   */
  epilogue?: GroupedEpilogue;
  /**
   * true: x holds one row per token of the layout, [layout.tokens, K], not the permuted rows, and
   * layout row r reads x[layout.sourceIndex[r] / layout.k] (the token of its pair) inside the
   * kernel, so the activations are never permuted (no permute call, no [rows, K] copy). The
   * result is the same as without it on permute(x, layout), bit for bit wherever both run the
   * same kernel; at prefill sizes on Hopper (see below) the permuted form runs the wgmma kernel
   * and the gathering one the mma.sync kernel, which agree to the f32 accumulation's rounding. A
   * row whose sourceIndex names no token of x reads zeros. Default false.
   */
  gather?: boolean;
  /**
   * Written in place of a new tensor: bf16 [layout.rows, N or N/2]; or, with the swiglu epilogue,
   * an Nvfp4Tensor [layout.rows, N/2] (N/2 a multiple of 16, one global scale): the activations
   * of the down projection, quantized in the kernel's epilogue (see outGlobalScale).
   */
  out?: Tensor<'bf16'> | Nvfp4Tensor;
  /**
   * The global scale of an NVFP4 `out` (required with one, refused without): a positive finite
   * number (as f32) or a device scalar f32 [1], e.g. the down projection's calibrated
   * `input_scale`; copied into out.globalScale. It has no default, since the output's amax is
   * known only once the output exists.
   */
  outGlobalScale?: number | Tensor<'f32'>;
  stream?: Stream;
  /**
   * 'auto' (default) lets the library pick the kernel; 'portable' keeps to the mma.sync kernels
   * where the Hopper wgmma kernel would run (prefill sizes), as gemmNvfp4's `path` does, and
   * MOE_KERNELS_GEMM_PATH=portable does so for every call.
   */
  path?: 'auto' | 'portable';
}

/**
 * The expert GEMM over an expert layout (routing's expertLayout, either form):
 *   x: bf16 [layout.rows, K], the permuted activations (permute(x, layout)) - W4A16; or an
 *      Nvfp4Tensor [layout.rows, K] with one global scale (permute(x, layout, { quantize:
 *      'nvfp4' })) - W4A4, both operands NVFP4 with their block and global scales;
 *      With options.gather, x is instead the unpermuted [layout.tokens, K] of either kind.
 *   w: Nvfp4Tensor [E, N, K] with one global scale per expert (globalScale [E], the MoE form
 *      nvfp4FromCheckpoint builds), E = layout.numExperts.
 * Row r of the result, for the expert e whose rows hold r (offsets[e] <= r < offsets[e] + counts[e]),
 * is x[r] . w[e]^T times e's global scale (and x's), accumulated in f32 and rounded once to bf16:
 * the error of gemmNvfp4 on that expert's rows (W4A4: of gemmNvfp4 with an NVFP4 `a`).
 *
 * NVFP4 output (swiglu, `out` an Nvfp4Tensor): each swiglu value is rounded to bf16 first and
 * that bf16 row is quantized with quantizeNvfp4's rules and outGlobalScale, so the result is bit
 * for bit quantizeNvfp4(the bf16 swiglu output, { globalScale: outGlobalScale }) on the same
 * backend and kernel; a bf16 intermediate would hold the same values.
 *
 * Rows that hold no pair (alignment padding, masked rows past counts[e], rows past usedRows) are
 * not written: a new `out` has undefined values there. unpermute reads only rows that hold pairs.
 *
 * counts and offsets are read on the device, and nothing about the launch depends on them: the
 * call can be captured in a CUDA graph and replayed with new routing. Experts without rows
 * cost no weight traffic. The kernel is chosen from the layout's form, tokens * k / E (or the
 * masked capacity), N and K; any `align` runs at full speed (tiles never straddle experts).
 * NVFP4 activations or output always run on the tiled kernels (the streaming decode kernel is
 * W4A16 with bf16 output). On a Hopper GPU (compute capability 9.0), W4A16 with bf16 output and
 * more than 64 expected rows per expert (prefill), permuted rather than gathered, K a multiple
 * of 32 and at most 1024 experts, runs on the wgmma kernel that gemmNvfp4 uses at large M: one
 * persistent launch over every expert's tiles.
 */
export function groupedGemmNvfp4(
  x: Tensor<'bf16'> | Nvfp4Tensor,
  w: Nvfp4Tensor,
  layout: ExpertLayout,
  options: GroupedGemmNvfp4Options & { out: Nvfp4Tensor },
): Nvfp4Tensor;
export function groupedGemmNvfp4(x: Tensor<'bf16'> | Nvfp4Tensor, w: Nvfp4Tensor, layout: ExpertLayout, options?: GroupedGemmNvfp4Options): Tensor<'bf16'>;
export function groupedGemmNvfp4(
  x: Tensor<'bf16'> | Nvfp4Tensor,
  w: Nvfp4Tensor,
  layout: ExpertLayout,
  options?: GroupedGemmNvfp4Options,
): Tensor<'bf16'> | Nvfp4Tensor {
  const o = checkOptions(options, 'options', GROUPED_OPTIONS);
  const xq = isNvfp4Tensor(x) ? checkNvfp4<Nvfp4Tensor>(x, 'x') : undefined;
  const xt = xq ? xq.data : checkTensor<Tensor>(x, 'x', BF16_ONLY);
  const device = xt.device;
  const xShape = xq ? xq.shape : xt.shape;
  checkNvfp4(w, 'w', device);
  const wShape = w.shape;
  if (wShape.length !== 3) throw new MoeError('E_SHAPE', `w: expected the experts' NVFP4 weights [E, N, K], got [${wShape}]`);
  const [E, N, K] = wShape;
  if (w.globalScale.numel !== E) {
    throw new MoeError('E_SHAPE', `w: expected one global scale per expert, [${E}], got [${w.globalScale.shape}]`);
  }
  const l = checkExpertLayout<ExpertLayout>(layout, 'layout', device);
  if (E !== l.numExperts) throw new MoeError('E_SHAPE', `w: expected E = layout.numExperts = ${l.numExperts} experts, got [${wShape}]`);
  if (xShape.length !== 2) throw new MoeError('E_SHAPE', `x: expected [rows, K], got [${xShape}]`);
  const gather = o.gather === undefined ? false : checkBoolean(o.gather, 'options.gather');
  const portable = forcedPortable(o.path);
  if (gather && (xShape[0] !== l.tokens || xShape[1] !== K)) {
    throw new MoeError('E_SHAPE', `x: with gather, expected one row per token, [layout.tokens = ${l.tokens}, K = ${K}] (w [${wShape}]), got [${xShape}]`);
  }
  if (!gather && (xShape[0] !== l.rows || xShape[1] !== K)) {
    throw new MoeError('E_SHAPE', `x: expected [layout.rows = ${l.rows}, K = ${K}] (w [${wShape}]), got [${xShape}]`);
  }
  if (xq && xq.globalScale.numel !== 1) {
    throw new MoeError('E_SHAPE', `x.globalScale: expected one global scale for the activations, got [${xq.globalScale.shape}]`);
  }
  const epilogue = o.epilogue === undefined ? 'none' : checkOneOf(o.epilogue, 'options.epilogue', EPILOGUES);
  if (epilogue === 'swiglu' && N % 2 !== 0) {
    throw new MoeError('E_SHAPE', `w: the swiglu epilogue needs N = 2 * I (gate rows, then up rows), got [${wShape}]`);
  }
  const outN = epilogue === 'swiglu' ? N / 2 : N;
  const stream = resolveStream(o.stream, device, 'options.stream');
  const wData = w.data;
  if (xq) checkAligned(xt.address, xt.numel, 'x.data', 8);
  else checkAligned(xt.address, xt.numel, 'x', 16);
  checkAligned(wData.address, wData.numel, 'w.data', 8);
  const inputs: Tensor[] = xq ? [xq.data, xq.scales, xq.globalScale] : [xt];
  inputs.push(wData, w.scales, w.globalScale, l.counts, l.offsets);
  if (gather) inputs.push(l.sourceIndex);
  // the native call's last fields: the gather's (xRows, gatherK, xTokens), then portable
  const tailArgs = [gather ? l.sourceIndex.dataPtr : 0n, gather ? l.k : 0, gather ? l.tokens : 0, portable] as const;

  const outFp4 = isNvfp4Tensor(o.out);
  if (!outFp4 && o.outGlobalScale !== undefined) {
    throw new MoeError('E_ARGUMENT', 'options.outGlobalScale: applies to an NVFP4 out only (options.out an Nvfp4Tensor)');
  }
  if (outFp4) return groupedIntoNvfp4(o, xq, xt, w, l, epilogue, [E, N, K], outN, inputs, stream, tailArgs);

  let out: Tensor<'bf16'>;
  const given = o.out !== undefined;
  if (given) {
    out = checkOut<Tensor<'bf16'>>(o.out, 'options.out', 'bf16', [l.rows, outN], device);
    if (out.numel > 0 && inputs.some((t) => overlaps(out, t))) {
      throw new MoeError('E_ARGUMENT', 'options.out: overlaps an input (x, w or the layout); pass a separate tensor');
    }
  } else {
    out = empty([l.rows, outN], { dtype: 'bf16', device, stream });
  }
  if (l.rows === 0 || outN === 0) return out;

  try {
    if (device !== 'cpu') useOn(stream, [...inputs, out]);
    native().nvfp4GroupedGemm(
      xt.deviceIndex,
      stream.handle,
      xt.dataPtr,
      xq ? ID_U8 : ID_BF16,
      xq ? xq.scales.dataPtr : 0n,
      xq ? xq.globalScale.dataPtr : 0n,
      wData.dataPtr,
      w.scales.dataPtr,
      w.globalScale.dataPtr,
      l.counts.dataPtr,
      l.offsets.dataPtr,
      out.dataPtr,
      ID_BF16,
      0n,
      0n,
      0n,
      E,
      l.rows,
      N,
      K,
      l.form === 'masked' ? l.maxTokensPerExpert : 0,
      l.tokens * l.k,
      EPILOGUE_ID[epilogue],
      ...tailArgs,
    );
  } catch (e) {
    if (!given) out.dispose();
    throw e;
  }
  return out;
}

// The swiglu epilogue writing NVFP4 into options.out.
function groupedIntoNvfp4(
  o: Readonly<Record<string, unknown>>,
  xq: Nvfp4Tensor | undefined,
  xt: Tensor,
  w: Nvfp4Tensor,
  l: ExpertLayout,
  epilogue: GroupedEpilogue,
  [E, N, K]: number[],
  outN: number,
  inputs: Tensor[],
  stream: Stream,
  tailArgs: readonly [bigint, number, number, boolean],
): Nvfp4Tensor {
  const device = xt.device;
  const q = checkNvfp4<Nvfp4Tensor>(o.out, 'options.out', device);
  if (epilogue !== 'swiglu') {
    throw new MoeError('E_ARGUMENT', "options.out: an NVFP4 output is written by the 'swiglu' epilogue only; pass a bf16 out");
  }
  if (q.shape.length !== 2 || q.shape[0] !== l.rows || q.shape[1] !== outN) {
    throw new MoeError('E_SHAPE', `options.out: expected an NVFP4 tensor of shape [layout.rows = ${l.rows}, N/2 = ${outN}], got [${q.shape}]`);
  }
  if (outN % NVFP4_BLOCK !== 0) {
    throw new MoeError('E_SHAPE', `options.out: an NVFP4 output needs I = N/2 a multiple of ${NVFP4_BLOCK}, got I = ${outN} (w [${E}, ${N}, ${K}])`);
  }
  if (q.globalScale.numel !== 1) throw new MoeError('E_SHAPE', `options.out: expected one global scale, got [${q.globalScale.shape}]`);
  checkAligned(q.data.address, q.data.numel, 'options.out.data', 8);
  if (o.outGlobalScale === undefined) {
    throw new MoeError('E_ARGUMENT', 'options.outGlobalScale: an NVFP4 out needs its global scale (a number or a device scalar f32 [1])');
  }
  const g = checkGlobalScaleOption(o.outGlobalScale, 'options.outGlobalScale', device, stream);
  const parts = [q.data, q.scales, q.globalScale];
  if (parts.some((p) => inputs.some((t) => overlaps(p, t)) || (typeof g === 'object' && p !== q.globalScale && overlaps(p, g)))) {
    throw new MoeError('E_ARGUMENT', 'options.out: overlaps an input (x, w, the layout or options.outGlobalScale); pass a separate NVFP4 tensor');
  }
  const uses = [...inputs, ...parts];
  if (typeof g === 'object') uses.push(g);
  useOn(stream, uses);
  const from = stageGlobalScale(g, q.globalScale, xt, stream);
  native().nvfp4GroupedGemm(
    xt.deviceIndex,
    stream.handle,
    xt.dataPtr,
    xq ? ID_U8 : ID_BF16,
    xq ? xq.scales.dataPtr : 0n,
    xq ? xq.globalScale.dataPtr : 0n,
    w.data.dataPtr,
    w.scales.dataPtr,
    w.globalScale.dataPtr,
    l.counts.dataPtr,
    l.offsets.dataPtr,
    q.data.dataPtr,
    ID_U8,
    q.scales.dataPtr,
    from.dataPtr,
    from === q.globalScale ? 0n : q.globalScale.dataPtr,
    E,
    l.rows,
    N,
    K,
    l.form === 'masked' ? l.maxTokensPerExpert : 0,
    l.tokens * l.k,
    EPILOGUE_ID[epilogue],
    ...tailArgs,
  );
  return q;
}
