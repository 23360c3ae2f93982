/** What a graph capture holds on to: the memory of every tensor the captured ops used. @internal */
export interface CapturedMemory {
  retain(): void;
  release(): void;
  /** Streams other than its own that used it: its reuse waits for their queued work. */
  readonly usedOn: Set<bigint>;
}

/**
 * Streams with an open graph capture, each with the memory its captured ops used (kept alive
 * by the graph). graph.ts opens and closes captures; ops add to them; reads refuse during one.
 * @internal
 */
export const openCaptures = new Map<bigint, Set<CapturedMemory>>();

/** @internal */
export function isCapturing(stream: { readonly device: string; readonly handle: bigint }): boolean {
  return stream.device !== 'cpu' && openCaptures.has(stream.handle);
}
