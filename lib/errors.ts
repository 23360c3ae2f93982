/** Stable error codes. A code names the kind of failure; the message names the argument. */
export type MoeErrorCode =
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DEVICE'
  | 'E_NO_CUDA'
  | 'E_DISPOSED'
  | 'E_CUDA'
  | 'E_OOM'
  | 'E_TIMEOUT'
  | 'E_COMM'
  | 'E_ARGUMENT'
  | 'E_RANGE'
  | 'E_CAPTURE'
  | 'E_LOAD'
  | 'E_INTERNAL';

/** The one error class of @moe/kernels: `code` is stable, `message` says what was expected and given. */
export class MoeError extends Error {
  readonly code: MoeErrorCode;
  constructor(code: MoeErrorCode, message: string) {
    super(message);
    this.name = 'MoeError';
    this.code = code;
  }
}

/** Describes a value for an error message. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (Array.isArray(value)) return `[${value.map(describe).join(', ')}]`;
  if (typeof value === 'object') {
    const name = (value as object).constructor?.name;
    if (name && name !== 'Object') return `a ${name}`;
    return 'an object';
  }
  return String(value);
}
