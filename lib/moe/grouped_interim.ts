// Stands in for the nvfp4 family's groupedGemmNvfp4 (same signature) until it is available:
// one gemmNvfp4 per expert that holds rows, with the layout's offsets and counts read on the
// host, so it runs on the CPU backend only.
import { MoeError } from '../errors';
import { native } from '../native';
import { gemmNvfp4, type Nvfp4Tensor } from '../nvfp4';
import type { ExpertLayout } from '../routing';
import type { Stream } from '../stream';
import { empty, type Tensor } from '../tensor';
import { swiglu } from './ops';

export interface GroupedGemmNvfp4Options {
  epilogue?: 'none' | 'swiglu';
  out?: Tensor<'bf16'>;
  stream?: Stream;
}

export function groupedGemmNvfp4(x: Tensor<'bf16'>, w: Nvfp4Tensor, layout: ExpertLayout, options: GroupedGemmNvfp4Options = {}): Tensor<'bf16'> {
  if (x.device !== 'cpu') throw new MoeError('E_DEVICE', 'groupedGemmNvfp4: this build has the grouped GEMM on the CPU backend only');
  const E = layout.numExperts;
  const N = options.epilogue === 'swiglu' ? w.shape[1] / 2 : w.shape[1];
  const out = options.out ?? empty<'bf16'>([layout.rows, N], { dtype: 'bf16', device: 'cpu' });
  const offsets = new Int32Array(E + 1);
  const counts = new Int32Array(E);
  native().hostRead(layout.offsets.dataPtr, offsets);
  native().hostRead(layout.counts.dataPtr, counts);
  for (let e = 0; e < E; e++) {
    if (counts[e] === 0) continue;
    const rows = x.slice(offsets[e], offsets[e] + counts[e]);
    const dst = out.slice(offsets[e], offsets[e] + counts[e]);
    const we = w.select(e);
    try {
      if (options.epilogue === 'swiglu') {
        const gateUp = gemmNvfp4(rows, we);
        swiglu(gateUp, { out: dst, stream: options.stream });
        gateUp.dispose();
      } else {
        gemmNvfp4(rows, we, { out: dst });
      }
    } finally {
      rows.dispose();
      dst.dispose();
      we.dispose();
    }
  }
  return out;
}
