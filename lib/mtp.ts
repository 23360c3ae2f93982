/** Native entry points of the mtp family. @internal */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface MtpBinding {}
