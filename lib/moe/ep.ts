// The MoE block over expert parallelism: each rank routes its own tokens over all experts,
// dispatch brings every rank the rows of its experts, the grouped GEMMs run there, and combine
// brings the outputs back and sums them in slot order. With the bf16 payload every operation is
// the single-device block's, on the same values in the same order: the result has the same bits
// as moeForward over the ranks' tokens concatenated (in the masked layout, with the same
// maxTokensPerExpert, the same pairs are dropped). A buffer with combine "reduced" adds the
// rounding of each rank's partial sum to bf16 (EpCombineForm).
import { checkEpBuffer } from '../ep/buffer';
import { MoeError } from '../errors';
import { gemmNvfp4, groupedGemmNvfp4 } from '../nvfp4';
import { routeTopK } from '../routing';
import { resolveStream, type Stream } from '../stream';
import { empty, type Tensor } from '../tensor';
import { checkOptions, checkRank, checkShapeIs, checkTensor, keys } from '../validate';
import { checkExperts, checkRouter, type MoeExperts, type MoeRouter } from './forward';
import { addInto, routerLogits, swiglu } from './ops';
import type { EpBuffer } from '../ep/buffer';

export interface MoeForwardEpOptions {
  /** The rank's expert-parallel buffer (createEpBuffer); its topK, numExperts and hidden must match the router's. */
  ep: EpBuffer;
  /** Default: the device's default stream (ranks that share a device need a stream each). */
  stream?: Stream;
}

const EP_OPTIONS = keys('ep', 'stream');

/**
 * One MoE block with the experts spread over the ranks of `options.ep`: x bf16 [tokens, hidden]
 * (tokens <= maxTokensPerRank) are this rank's tokens, `router` the full gate (all experts),
 * `experts` this rank's experts only: w13 [localExperts, 2I, hidden], w2 [localExperts, hidden, I]
 * (experts firstExpert .. firstExpert + localExperts - 1), and the shared expert, if any, whole
 * (it runs on each rank's own tokens). Resolves with out bf16 [tokens, hidden]. Every rank calls
 * it (with no tokens, too). The bf16 payload gives the bits of moeForward over the ranks' tokens
 * concatenated; fp8 and nvfp4 add their quantization error (native/common/ep.h) to the expert inputs,
 * and a buffer with combine "reduced" the bf16 rounding of each rank's partial sum (EpCombineForm).
 */
export async function moeForwardEp(x: Tensor<'bf16'>, router: MoeRouter, experts: MoeExperts, options: MoeForwardEpOptions): Promise<Tensor<'bf16'>> {
  const o = checkOptions(options, 'options', EP_OPTIONS);
  const ep = checkEpBuffer(o.ep, 'options.ep');
  const xt = checkTensor<Tensor<'bf16'>>(x, 'x', ['bf16'], ep.device);
  checkRank(xt, 'x', 2, '[tokens, hidden]');
  const [tokens, hidden] = xt.shape;
  checkShapeIs(xt, 'x', [tokens, ep.hidden], ['tokens', 'ep.hidden']);
  if (tokens > ep.maxTokensPerRank) throw new MoeError('E_SHAPE', `x: ${tokens} tokens exceed the EpBuffer's maxTokensPerRank = ${ep.maxTokensPerRank}`);
  const r = checkRouter(router, hidden, ep.device);
  if (r.experts !== ep.numExperts) throw new MoeError('E_SHAPE', `router.weight: ${r.experts} experts, the EpBuffer has numExperts = ${ep.numExperts}`);
  if (r.k !== ep.topK) throw new MoeError('E_ARGUMENT', `router.k: ${r.k}, the EpBuffer has topK = ${ep.topK}`);
  const ex = checkExperts(experts, ep.localExperts, hidden, ep.device);
  const stream = resolveStream(o.stream, ep.device, 'options.stream');

  const logits = routerLogits(xt, r.weight, { stream });
  const routing = routeTopK(logits, {
    k: r.k, scoring: r.scoring, stream,
    ...(r.renormalize !== undefined ? { renormalize: r.renormalize } : {}),
    ...(r.groups ? { groups: r.groups } : {}),
    ...(r.correctionBias ? { correctionBias: r.correctionBias } : {}),
    ...(r.scale !== undefined ? { scale: r.scale } : {}),
  });
  logits.dispose();
  const temps: Tensor[] = [routing.ids, routing.weights];
  try {
    const d = await ep.dispatch(xt, routing, { stream });
    const act = groupedGemmNvfp4(d.tokens, ex.w13, d.layout, { epilogue: 'swiglu', gather: ep.gather, stream });
    temps.push(act);
    const down = groupedGemmNvfp4(act, ex.w2, d.layout, { stream });
    temps.push(down);
    if (!ex.shared) return (await ep.combine(down, d.handle, { stream })) as Tensor<'bf16'>;
    // as moeForward: the routed sum in f32, the shared expert's down projection in f32, one add
    const s = ex.shared;
    const gateUp = gemmNvfp4(xt, s.w13, { stream }) as Tensor<'bf16'>;
    temps.push(gateUp);
    const sharedAct = swiglu(gateUp, { stream });
    temps.push(sharedAct);
    const sharedOut = empty<'f32'>([tokens, hidden], { dtype: 'f32', device: ep.device, stream });
    temps.push(sharedOut);
    gemmNvfp4(sharedAct, s.w2, { out: sharedOut, stream });
    const routed = empty<'f32'>([tokens, hidden], { dtype: 'f32', device: ep.device, stream });
    temps.push(routed);
    await ep.combine(down, d.handle, { out: routed, stream });
    const out = empty<'bf16'>([tokens, hidden], { dtype: 'bf16', device: ep.device, stream });
    addInto(routed, sharedOut, out, stream);
    return out;
  } finally {
    for (const t of temps) t.dispose();
  }
}
