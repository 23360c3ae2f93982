/** Native entry points of the nvfp4 family. @internal */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface Nvfp4Binding {}
