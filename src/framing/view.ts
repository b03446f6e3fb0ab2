/**
 * Byte helpers of the hot paths: Buffer views without `subarray`'s cost,
 * and joining small writes.
 *
 * `buf.subarray(a, b)` goes through the TypedArray species protocol (a
 * constructor lookup, argument clamping) and costs about twice what
 * constructing the view directly does; a frame cut from a chunk is the
 * hottest allocation of the read path. `Buffer[Symbol.species]` is the
 * constructor Node itself uses for Buffer views (Buffer.prototype, no
 * copy); where it does not make Buffers, `Buffer.from(arrayBuffer, …)`
 * does the same job.
 *
 * Callers read `buf.buffer` and `buf.byteOffset` once per chunk, not per
 * frame: those getters cost as much as the view itself.
 */
import { Buffer } from "node:buffer";
import { markAsUntransferable } from "node:worker_threads";

type ViewConstructor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => Buffer;

function pickConstructor(): ViewConstructor | null {
  const species = (Buffer as unknown as { [Symbol.species]?: unknown })[Symbol.species];
  if (typeof species !== "function") return null;
  try {
    const probe = new (species as ViewConstructor)(new ArrayBuffer(4), 1, 2);
    return Buffer.isBuffer(probe) && probe.byteOffset === 1 && probe.length === 2 ? (species as ViewConstructor) : null;
  } catch {
    return null;
  }
}

const View = pickConstructor();

/** A Buffer over `length` bytes of `buffer` from `byteOffset` (no copy; throws RangeError out of bounds). */
export const viewOf: (buffer: ArrayBufferLike, byteOffset: number, length: number) => Buffer =
  View !== null ? (buffer, byteOffset, length) => new View(buffer, byteOffset, length) : (buffer, byteOffset, length) => Buffer.from(buffer, byteOffset, length);

/** Allocations below half this size are cut from a shared slab of it, as Node's Buffer pool does. */
const SLAB_SIZE = 8 * 1024;
let slab: ArrayBuffer | null = null;
let slabUsed = 0;

/**
 * `Buffer.allocUnsafe(size)` for the write path's joins: the same pooling
 * (a small buffer is a view of a shared 8 KiB slab, which lives while any
 * view of it does), without the argument checks and the wrapper Node puts
 * around them, which cost more than a short join's copy (the slab is
 * untransferable, as Node's pool is). `size` is a
 * non-negative integer the caller computed.
 */
export function allocBytes(size: number): Buffer {
  if (size >= SLAB_SIZE >>> 1) return Buffer.allocUnsafeSlow(size);
  if (slab === null || SLAB_SIZE - slabUsed < size) {
    slab = Buffer.allocUnsafeSlow(SLAB_SIZE).buffer;
    // A user's Duplex (or whoever it hands a join to) that transfers a
    // join's ArrayBuffer to another thread would detach the slab under every
    // other view of it: Node keeps its own pool untransferable for the same reason.
    markAsUntransferable(slab);
    slabUsed = 0;
  }
  const out = viewOf(slab, slabUsed, size);
  slabUsed = (slabUsed + size + 7) & ~7; // 8-byte aligned, as Node aligns its pool
  return out;
}

/**
 * Copies `n` buffers of `list`, from index `from`, one after another into
 * `out` (which has room for them). A few bytes (a line's "\n") are copied
 * by hand: TypedArray#set costs more than that in calling alone.
 */
export function joinInto(out: Buffer, list: readonly unknown[], n: number, from = 0): Buffer {
  let at = 0;
  for (let i = from; i < from + n; i++) {
    const b = list[i] as Buffer;
    const len = b.length;
    if (len < 8) for (let j = 0; j < len; j++) out[at + j] = b[j]!;
    else out.set(b, at);
    at += len;
  }
  return out;
}
