// The rendezvous wire format. TCP is a byte stream, so every message is a frame: a 32-bit
// big-endian length, a type byte and the body. The hello carries a magic string and a protocol
// version, so a stray client is dropped and a rank from another release is refused by name.
import { MoeError } from '../errors';
import { COLLECTIVES, type Collective } from './collective';

/** Bumped on any change to the frames below. */
export const PROTOCOL_VERSION = 2;
export const MAGIC = '@moe/kernels process group';

export enum FrameType {
  /** peer -> rank 0: JSON { magic, version, rank, worldSize, host, pid } */
  Hello = 1,
  /** rank 0 -> peer: JSON { magic, version, worldSize, hosts }, once every rank has joined */
  Welcome = 2,
  /** either way: JSON { code, message }; the sender's group failed with that error */
  Abort = 3,
  /** either way, empty: the sender called destroy() */
  Bye = 4,
  /** peer -> rank 0: u32 seq, u8 op, u32 root, the bytes */
  Contribute = 5,
  /** rank 0 -> peer: u32 seq, u32 count, count x (u32 length, bytes) */
  Result = 6,
}


/** Before the hello, a frame larger than this is not one of ours. */
export const MAX_HELLO_BYTES = 64 * 1024;
/** A guard against a corrupt length; collectives carry handles and ids, not tensors. */
export const MAX_FRAME_BYTES = 2 ** 30;

export interface Frame {
  type: number;
  body: Buffer;
}

/** An allToAll contribution: u32 count, count x u32 length, then the parts. */
export function joinParts(parts: readonly Uint8Array[]): Uint8Array {
  let n = 4 + 4 * parts.length;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  const view = new DataView(out.buffer);
  view.setUint32(0, parts.length);
  let at = 4 + 4 * parts.length;
  parts.forEach((p, i) => {
    view.setUint32(4 + 4 * i, p.byteLength);
    out.set(p, at);
    at += p.byteLength;
  });
  return out;
}

/** The parts of an allToAll contribution (views into it); E_COMM when it is not `count` of them. */
export function splitParts(bytes: Uint8Array, count: number): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4 + 4 * count || view.getUint32(0) !== count) throw protocolError('all-to-all contribution');
  const parts: Uint8Array[] = [];
  let at = 4 + 4 * count;
  for (let i = 0; i < count; i++) {
    const len = view.getUint32(4 + 4 * i);
    if (at + len > bytes.byteLength) throw protocolError('all-to-all contribution');
    parts.push(bytes.subarray(at, at + len));
    at += len;
  }
  if (at !== bytes.byteLength) throw protocolError('all-to-all contribution');
  return parts;
}

export function frame(type: FrameType, ...parts: Uint8Array[]): Buffer {
  let n = 1;
  for (const p of parts) n += p.byteLength;
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(n, 0);
  head.writeUInt8(type, 4);
  return Buffer.concat([head, ...parts], 4 + n);
}

export function jsonFrame(type: FrameType, value: unknown): Buffer {
  return frame(type, Buffer.from(JSON.stringify(value), 'utf8'));
}

export function contributeFrame(seq: number, op: Collective, root: number, bytes: Uint8Array): Buffer {
  const head = Buffer.allocUnsafe(9);
  head.writeUInt32BE(seq >>> 0, 0);
  head.writeUInt8(COLLECTIVES.indexOf(op), 4);
  head.writeUInt32BE(root, 5);
  return frame(FrameType.Contribute, head, bytes);
}

export function resultFrame(seq: number, parts: readonly Uint8Array[]): Buffer {
  const chunks: Uint8Array[] = [];
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32BE(seq >>> 0, 0);
  head.writeUInt32BE(parts.length, 4);
  chunks.push(head);
  for (const p of parts) {
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(p.byteLength, 0);
    chunks.push(len, p);
  }
  return frame(FrameType.Result, ...chunks);
}

function protocolError(what: string): MoeError {
  return new MoeError('E_COMM', `malformed ${what} frame (a peer of another version, or a corrupt connection)`);
}

export function parseContribute(body: Buffer): { seq: number; op: Collective; root: number; bytes: Uint8Array } {
  if (body.length < 9 || body[4] >= COLLECTIVES.length) throw protocolError('contribution');
  return { seq: body.readUInt32BE(0), op: COLLECTIVES[body[4]], root: body.readUInt32BE(5), bytes: new Uint8Array(body.subarray(9)) };
}

export function parseResult(body: Buffer): { seq: number; parts: Uint8Array[] } {
  if (body.length < 8) throw protocolError('result');
  const seq = body.readUInt32BE(0);
  const count = body.readUInt32BE(4);
  const parts: Uint8Array[] = [];
  let at = 8;
  for (let i = 0; i < count; i++) {
    if (at + 4 > body.length) throw protocolError('result');
    const len = body.readUInt32BE(at);
    at += 4;
    if (at + len > body.length) throw protocolError('result');
    // a copy: the caller owns it, and it must not pin the whole frame
    parts.push(new Uint8Array(body.subarray(at, at + len)));
    at += len;
  }
  if (at !== body.length) throw protocolError('result');
  return { seq, parts };
}

export function parseJson(body: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Cuts a byte stream into frames. `limit` is the largest frame accepted at this point. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  limit = MAX_HELLO_BYTES;

  /** The complete frames in the data so far; throws E_COMM on a length over the limit. */
  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const out: Frame[] = [];
    while (this.size >= 4) {
      const head = this.chunks[0].length >= 4 ? this.chunks[0] : this.flatten();
      const n = head.readUInt32BE(0);
      if (n < 1 || n > this.limit) throw new MoeError('E_COMM', `a frame of ${n} bytes exceeds the limit of ${this.limit} (not a peer of this protocol, or a corrupt connection)`);
      if (this.size < 4 + n) break;
      const all = this.flatten();
      out.push({ type: all[4], body: all.subarray(5, 4 + n) });
      const rest = all.subarray(4 + n);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.size = rest.length;
    }
    return out;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.size)];
    return this.chunks[0];
  }
}
