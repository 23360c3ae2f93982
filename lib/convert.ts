import { DTYPES, FLOAT_DTYPES, type DType } from './dtype';
import { MoeError } from './errors';
import { native, opArgs } from './native';
import { resolveStream, type Stream } from './stream';
import { empty, overlaps, useOn, type Tensor } from './tensor';
import { checkDType, checkOptions, checkOut, checkTensor, keys } from './validate';

export interface ConvertOptions<D extends DType = DType> {
  /** Written in place of a new tensor: same shape, dtype `dtype`, same device. */
  out?: Tensor<D>;
  stream?: Stream;
}

const OPTIONS = keys('out', 'stream');

/**
 * Converts a floating-point tensor to another floating-point dtype (f32, f16, bf16, fp8e4m3)
 * elementwise: round to nearest even; fp8e4m3 saturates to +-448 (infinities too); f16
 * overflows to +-inf; NaN stays NaN. The CPU and CUDA backends agree bit for bit.
 */
export function convert<D extends DType>(x: Tensor, dtype: D, options?: ConvertOptions<D>): Tensor<D> {
  const o = checkOptions(options, 'options', OPTIONS);
  checkTensor(x, 'x', FLOAT_DTYPES);
  const to = checkDType(dtype, 'dtype') as D;
  if (!FLOAT_DTYPES.includes(to)) {
    throw new MoeError('E_DTYPE', `dtype: expected one of ${FLOAT_DTYPES.join(', ')}, got ${to}`);
  }
  const stream = resolveStream(o.stream, x.device);
  let out: Tensor<D>;
  if (o.out !== undefined) {
    out = checkOut<Tensor<D>>(o.out, 'out', to, x.shape, x.device);
    // Elementwise in place is safe only when each element overwrites itself.
    if (overlaps(x, out) && !(x.byteOffset === out.byteOffset && DTYPES[x.dtype].bytes === DTYPES[to].bytes)) {
      throw new MoeError('E_ARGUMENT', 'out: overlaps x partially; pass a separate tensor or x itself with an equal-size dtype');
    }
  } else {
    out = empty(x.shape, { dtype: to, device: x.device, stream });
  }
  useOn(stream, [x, out]);
  const b = native();
  const A = opArgs();
  A[0] = x.deviceIndex;
  A[1] = stream.address;
  A[2] = x.address;
  A[3] = DTYPES[x.dtype].id;
  A[4] = out.address;
  A[5] = DTYPES[to].id;
  A[6] = x.numel;
  b.convert();
  return out;
}
