/** Element types of a Tensor. */
export type DType = 'f32' | 'f16' | 'bf16' | 'fp8e4m3' | 'u8' | 'i32' | 'i64';

export interface DTypeInfo {
  /** Numeric id shared with native/common/dtype.h. */
  readonly id: number;
  readonly bytes: number;
  readonly isFloat: boolean;
}

export const DTYPES: Readonly<Record<DType, DTypeInfo>> = Object.freeze({
  f32: { id: 0, bytes: 4, isFloat: true },
  f16: { id: 1, bytes: 2, isFloat: true },
  bf16: { id: 2, bytes: 2, isFloat: true },
  fp8e4m3: { id: 3, bytes: 1, isFloat: true },
  u8: { id: 4, bytes: 1, isFloat: false },
  i32: { id: 5, bytes: 4, isFloat: false },
  i64: { id: 6, bytes: 8, isFloat: false },
});

/** The floating-point dtypes that `convert` takes and produces. */
export const FLOAT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'fp8e4m3'];

/** What `toArray()` returns for each dtype: f16/bf16/fp8e4m3 decode to exact f32 values. */
export type ArrayFor<D extends DType> = D extends 'i32'
  ? Int32Array
  : D extends 'i64'
    ? BigInt64Array
    : D extends 'u8'
      ? Uint8Array
      : Float32Array;
