/**
 * node:net's own `onread` mode, for the sockets pants-ts holds.
 *
 * net.Socket's `onread` option (Node 12+) has libuv read into a buffer of
 * the caller's and hands each read to a callback: no Buffer allocated by
 * Node per read, and none of the Readable side's work (push, its buffer,
 * the 'data' event). On 50-connection line ping-pong that is about a
 * quarter of the instructions per message. The option is taken only where
 * a socket is constructed (`net.connect`), not for the sockets a server
 * accepts or node:tls makes. So this takes up the same mode on a socket
 * that already exists, as the constructor would have: it sets the three
 * fields of the socket's that the option sets (found once, by their
 * symbols' names) and calls its handle's `useUserBuffer()`. From then on
 * node:net itself calls the callback, pauses with `readStop()`, and ends,
 * errs and closes the socket as before (the Readable side gets the end of
 * the stream).
 *
 * These are Node's internals. Where any of them is not as expected (another
 * Node release, a socket already in that mode or with 'data' listeners, a
 * user's Duplex), `takeReads` changes nothing and says so, and the caller
 * listens for 'data' as before. `PANTS_TS_NET_ONREAD=0` turns it off.
 *
 * Where a read lands:
 * - in 64 KiB of memory shared by every plain socket, from which it is
 *   copied into a Buffer of its own size, or lent for the call
 *   (`lendReads`); TLS sockets share 64 KiB of their own, never lent (see
 *   `tlsShared`);
 * - after a read that filled the shared memory (more is waiting: bulk
 *   transfer), in a new 64 KiB Buffer per read, handed over as it is (no
 *   copy), as node:net's own reads are, until a read leaves room (the
 *   peer's bytes ran out for now: an idle connection holds no Buffer). Lent
 *   or not: a bulk chunk is usually written on (an echo, a proxy), and a
 *   lent one would be copied then. At most MAX_OWN sockets read so at once;
 *   the others copy.
 */
import net from "node:net";
import tls from "node:tls";
import process from "node:process";
import { Buffer } from "node:buffer";
import { Readable } from "node:stream";
import type { Duplex } from "node:stream";
import { viewOf } from "./framing/view.js";

/**
 * Called for each read, with `this` the socket: `chunk` is the caller's
 * own (a Buffer of its own), or, `lent`, valid only during the call (it
 * reads as empty afterwards).
 */
export type ReadCallback = (this: Duplex, chunk: Buffer, lent: boolean) => void;

const READ_SIZE = 64 * 1024;
/** A short read into a Buffer of the socket's own at least this large is handed over in it; a smaller one is copied out. */
const BULK_READ = READ_SIZE / 2;
/**
 * Sockets reading into Buffers of their own at once, each holding one
 * (64 KiB) for its next read: at most 4 MiB, whatever peers do (one that
 * sends exactly 64 KiB and then idles leaves its socket holding one).
 */
const MAX_OWN = 64;
let owning = 0;

/**
 * The memory shared by every plain socket. Each read is handed on (copied,
 * or lent for the call) before the next can land in it: libuv calls the
 * callbacks one at a time, from the event loop only.
 */
let shared: Buffer = Buffer.allocUnsafeSlow(READ_SIZE);

/**
 * The memory TLS sockets read into: node:tls copies its cleartext records
 * into it from inside node:tls calls, which may come while a plain read is
 * lent (a TLS stream over a Duplex of the user's, fed from an onRead), so
 * it is not the lent memory. Its reads are copied before anything else runs.
 */
const tlsShared: Buffer = Buffer.allocUnsafeSlow(READ_SIZE);

/**
 * Ends a lend: views of the shared memory handed out so far read as empty
 * from now on, never as later reads (as the native transport's lent reads
 * do). The memory itself moves to a new ArrayBuffer (no copy), so libuv,
 * which writes to it by address, goes on filling it.
 */
function retireShared(): void {
  const old = shared.buffer as ArrayBuffer & { transfer?: () => ArrayBuffer };
  const moved = typeof old.transfer === "function" ? old.transfer() : structuredClone(old, { transfer: [old] });
  shared = Buffer.from(moved);
}

/**
 * Every plain socket taken, while its handle may read into the shared
 * memory: what `reclaimShared` must point elsewhere. A socket leaves it at
 * its 'close', or when node:tls wraps its handle (`releaseReads`).
 */
const takenSockets = new Set<TakenSocket>();
function forget(this: TakenSocket): void {
  takenSockets.delete(this);
  stopOwning(this);
}

/** `sock` no longer reads into Buffers of its own (its generator is the caller's to set). */
function stopOwning(sock: TakenSocket): void {
  if (sock[kOwn]) {
    sock[kOwn] = false;
    owning--;
  }
}

/**
 * A handler transferred a lent chunk's ArrayBuffer (to a worker, or with
 * structuredClone): the shared memory is its new owner's now, which may
 * free it, and libuv writes to it by address. So every socket whose reads
 * land there is pointed at new memory before any other read can land, and
 * the old memory is left to its owner, as it was when it was handed over.
 */
function reclaimShared(): void {
  const k = keys!;
  shared = Buffer.allocUnsafeSlow(READ_SIZE);
  for (const sock of takenSockets) {
    // A Buffer of its own (bulk reads): its generator names the shared memory only by `shared`.
    if (sock[kOwn]) continue;
    const handle = (sock as unknown as { _handle?: UserBufferHandle | null })._handle;
    if (handle == null) continue;
    handle.useUserBuffer(shared);
    sock[k.buffer] = shared;
  }
}

/** Read generators (node:net calls them with no `this`, after each read, for the next read's buffer). */
function ownBuffer(): Buffer {
  return Buffer.allocUnsafeSlow(READ_SIZE);
}
function sharedBuffer(): Buffer {
  return shared;
}

interface OnreadKeys {
  /** The buffer reads land in (null: the socket reads as a Readable). */
  readonly buffer: symbol;
  readonly callback: symbol;
  /** Gives the buffer for the next read (null: the same one again). */
  readonly generator: symbol;
}

/** undefined: not looked for yet; null: this Node has no such fields. */
let keys: OnreadKeys | null | undefined;

const disabled = process.env.PANTS_TS_NET_ONREAD === "0";

/** Where every taken socket's reads go (pants-ts has one reader: stream.ts's; see takeReads). */
let deliver: ReadCallback | null = null;

const kLend = Symbol("pantsLend");
/** A TLS socket: reads into tlsShared, never lent, never into Buffers of its own. */
const kTls = Symbol("pantsTlsReads");
/** Its next read goes to a Buffer of its own (counted in `owning`). */
const kOwn = Symbol("pantsOwnReads");

interface TakenSocket extends net.Socket {
  [key: symbol]: unknown;
  [kLend]: boolean;
  [kTls]: boolean;
  [kOwn]: boolean;
}

function findKeys(sock: net.Socket): OnreadKeys | null {
  const named = new Map<string | undefined, symbol[]>();
  for (const sym of Object.getOwnPropertySymbols(sock)) {
    const list = named.get(sym.description);
    if (list === undefined) named.set(sym.description, [sym]);
    else list.push(sym);
  }
  const one = (name: string): symbol | null => {
    const list = named.get(name);
    return list !== undefined && list.length === 1 ? list[0]! : null;
  };
  const buffer = one("kBuffer");
  const callback = one("kBufferCb");
  const generator = one("kBufferGen");
  return buffer !== null && callback !== null && generator !== null ? { buffer, callback, generator } : null;
}

/** node:net's callback (`kBufferCb`): `nread` bytes, in `buf` (a Buffer of the socket's own) or in the shared memory. */
function onNodeRead(this: TakenSocket, nread: number, buf: Buffer): void {
  const k = keys!;
  if (this[kOwn]) {
    // Full: more is waiting; the generator gives the next read a new Buffer (the chunk keeps this one).
    if (nread === buf.length) {
      deliver!.call(this, viewOf(buf.buffer, buf.byteOffset, nread), false);
      return;
    }
    // The peer's bytes ran out for now: the next read goes to the shared memory. A small
    // read is copied out, not left pinning 64 KiB.
    stopOwning(this);
    this[k.generator] = sharedBuffer;
    deliver!.call(this, nread >= BULK_READ ? viewOf(buf.buffer, buf.byteOffset, nread) : copyOf(buf, nread), false);
    return;
  }
  if (this[k.generator] !== null) this[k.generator] = null; // sharedBuffer() has pointed node:net back at the shared memory
  if (this[kTls]) {
    deliver!.call(this, copyOf(tlsShared, nread), false);
    return;
  }
  let reclaimed = false;
  if (this[kLend]) {
    try {
      deliver!.call(this, viewOf(shared.buffer, shared.byteOffset, nread), true);
    } finally {
      if (shared.buffer.byteLength !== 0) retireShared();
      else {
        // Emptied by the handler: it transferred the chunk's ArrayBuffer, and with it the memory.
        reclaimShared();
        reclaimed = true;
      }
    }
  } else {
    deliver!.call(this, copyOf(shared, nread), false);
  }
  // A read that filled the memory: bulk transfer, whose next reads go to Buffers of their own (lent or not:
  // a bulk chunk is usually written on, and a lent one would be copied then). Not after a reclaim: this
  // socket's handle reads into the new memory, and a Buffer the generator gave now would go to its former reader.
  if (nread === READ_SIZE && !reclaimed && owning < MAX_OWN && !this.destroyed) {
    this[kOwn] = true;
    owning++;
    this[k.generator] = ownBuffer;
  }
}

/** The first `nread` bytes of `from` in a Buffer of their own (not pooled: its memory may be transferred). */
function copyOf(from: Buffer, nread: number): Buffer {
  const chunk = Buffer.allocUnsafeSlow(nread);
  from.copy(chunk, 0, 0, nread);
  return chunk;
}

interface UserBufferHandle {
  useUserBuffer(buffer: Buffer): void;
}

/**
 * Has node:net hand `sock`'s reads to `reader` instead of to its Readable
 * side; false, changing nothing, where it cannot (also for a `reader` other
 * than the one every socket taken so far reports to). Bytes the socket had read
 * already stay in its Readable buffer (`sock.read()` takes them).
 */
export function takeReads(sock: Duplex, reader: ReadCallback): boolean {
  // One reader for every socket: a second would need a field per socket.
  if (disabled || (deliver !== null && deliver !== reader)) return false;
  if (!(sock instanceof net.Socket) || sock.destroyed || sock.connecting) return false;
  const handle = (sock as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (handle == null || typeof handle.useUserBuffer !== "function") return false;
  if (sock.listenerCount("data") > 0 || sock.listenerCount("readable") > 0) return false;
  if (keys === undefined) keys = findKeys(sock);
  if (keys === null) return false;
  const taken = sock as unknown as TakenSocket;
  // Own fields set to null by net.Socket's constructor: a socket not in that mode yet.
  if (taken[keys.buffer] !== null || taken[keys.callback] !== null || taken[keys.generator] !== null) return false;
  const isTls = sock instanceof tls.TLSSocket;
  const memory = isTls ? tlsShared : shared;
  try {
    handle.useUserBuffer(memory);
  } catch {
    return false;
  }
  deliver = reader;
  taken[kLend] = false;
  taken[kTls] = isTls;
  taken[kOwn] = false;
  taken[keys.buffer] = memory;
  taken[keys.callback] = onNodeRead;
  if (!isTls) {
    takenSockets.add(taken);
    sock.on("close", forget);
  }
  return true;
}

/**
 * `sock`'s handle now reads for node:tls (a STARTTLS upgrade wraps it):
 * its reads no longer land in the shared memory, and it must not be
 * pointed anywhere by `reclaimShared` (that would take its reads from TLS).
 */
export function releaseReads(sock: Duplex): void {
  const taken = sock as unknown as TakenSocket;
  takenSockets.delete(taken);
  stopOwning(taken);
}

/**
 * Lends `sock`'s reads (a handler that keeps no chunk), or hands each over
 * as its own; the setting takes effect from the next read that lands in
 * the shared memory. A TLS socket's reads are never lent. Only for a
 * socket `takeReads` took.
 */
export function lendReads(sock: Duplex, lend: boolean): void {
  const taken = sock as unknown as TakenSocket;
  taken[kLend] = lend && !taken[kTls];
}

/**
 * Pauses a socket whose reads were taken as node:net pauses one that emits
 * 'data': its Readable side stops flowing (its end waits), but it still
 * reads, so that a paused connection still notices a reset; the caller
 * stops the reads (`sock.pause()`) once highWaterMark bytes wait.
 */
export function pauseFlow(sock: Duplex): void {
  Readable.prototype.pause.call(sock);
}
