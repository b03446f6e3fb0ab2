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
 * - in one buffer shared by every socket (64 KiB), from which it is copied
 *   into a Buffer of its own size, or lent for the call (`lendReads`);
 * - after a read of bulk size (32 KiB or more), in a new 64 KiB Buffer per
 *   read, handed over as it is (no copy), as node:net's own reads are, until
 *   a few reads in a row are small again. Lent or not: a bulk chunk is
 *   usually written on (an echo, a proxy), and a lent one would be copied then.
 */
import net from "node:net";
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
/** A read at least this large moves the socket's next reads to Buffers of their own. */
const BULK_READ = READ_SIZE / 2;
/** Small reads in a row after which a socket's reads go back to the shared memory. */
const SMALL_READS_BACK = 4;

/**
 * The memory shared by every such socket. Each read is handed on (copied,
 * or lent for the call) before the next can land in it: libuv calls the
 * callbacks one at a time from the event loop, and node:tls copies its
 * cleartext into it one record at a time, each delivered before the next
 * is copied.
 */
let shared: Buffer = Buffer.allocUnsafeSlow(READ_SIZE);

/**
 * Ends a lend: views of the shared memory handed out so far read as empty
 * from now on, never as later reads (as the native transport's lent reads
 * do). The memory itself moves to a new ArrayBuffer (no copy), so libuv and
 * node:tls, which write to it by address, go on filling it.
 */
function retireShared(): void {
  const old = shared.buffer as ArrayBuffer & { transfer?: () => ArrayBuffer };
  const moved = typeof old.transfer === "function" ? old.transfer() : structuredClone(old, { transfer: [old] });
  shared = Buffer.from(moved);
}

/**
 * Every socket taken, while its handle may read into the shared memory:
 * what `reclaimShared` must point elsewhere. A socket leaves it at its
 * 'close', or when node:tls wraps its handle (`releaseReads`).
 */
const takenSockets = new Set<TakenSocket>();
function forget(this: TakenSocket): void {
  takenSockets.delete(this);
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
  const old = shared;
  shared = Buffer.allocUnsafeSlow(READ_SIZE);
  for (const sock of takenSockets) {
    const buf = sock[k.buffer] as Buffer;
    // A Buffer of its own (bulk reads): its generator names the shared memory only by `shared`.
    if (buf !== old && buf.length !== 0) continue;
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

const kDeliver = Symbol("pantsDeliver");
const kLend = Symbol("pantsLend");
/** Small reads in a row into a Buffer of the socket's own. */
const kSmall = Symbol("pantsSmallReads");

interface TakenSocket extends net.Socket {
  [key: symbol]: unknown;
  [kDeliver]: ReadCallback;
  [kLend]: boolean;
  [kSmall]: number;
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

/** node:net's callback (`kBufferCb`): `nread` bytes, in `buf`: a Buffer of the socket's own, or the shared memory. */
function onNodeRead(this: TakenSocket, nread: number, buf: Buffer): void {
  const k = keys!;
  // The shared memory: `shared`, or a Buffer it has since moved out of (empty now). A Buffer
  // of the socket's own is never empty: one that a chunk was handed out of is never read into again.
  if (buf !== shared && buf.length !== 0) {
    if (nread >= BULK_READ) {
      this[k.generator] = ownBuffer; // the chunk keeps this Buffer: the next read gets a new one
      this[kSmall] = 0;
      this[kDeliver](viewOf(buf.buffer, buf.byteOffset, nread), false);
      return;
    }
    // A small read between bulk ones (the rest of a write): a copy of its size, not 64 KiB pinned
    // by a few bytes. The Buffer, which no chunk holds, takes the next read, until a few
    // small reads in a row send the socket back to the shared memory.
    this[k.generator] = ++this[kSmall] >= SMALL_READS_BACK ? sharedBuffer : null;
    this[kDeliver](copyOf(buf, nread), false);
    return;
  }
  // Bulk: the next reads land in Buffers of their own, lent or not (a lent
  // chunk that is written is copied, as bulk echoes and proxies do).
  if (nread >= BULK_READ) {
    this[k.generator] = ownBuffer;
    this[kSmall] = 0;
  } else if (this[k.generator] !== null) {
    this[k.generator] = null; // sharedBuffer() has pointed node:net back at the shared memory
  }
  if (this[kLend]) {
    try {
      this[kDeliver](viewOf(shared.buffer, shared.byteOffset, nread), true);
    } finally {
      if (shared.buffer.byteLength !== 0) retireShared();
      else {
        // Emptied by the handler: it transferred the chunk's ArrayBuffer, and with it the memory.
        reclaimShared();
        // This socket's handle reads into the new memory from now on: a Buffer its generator
        // gave now (a bulk read's) would be taken by the handle's former reader, not that one.
        this[k.generator] = null;
      }
    }
    return;
  }
  this[kDeliver](copyOf(shared, nread), false);
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
 * Has node:net hand `sock`'s reads to `deliver` instead of to its Readable
 * side; false, changing nothing, where it cannot. Bytes the socket had read
 * already stay in its Readable buffer (`sock.read()` takes them).
 */
export function takeReads(sock: Duplex, deliver: ReadCallback): boolean {
  if (disabled || !(sock instanceof net.Socket) || sock.destroyed || sock.connecting) return false;
  const handle = (sock as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (handle == null || typeof handle.useUserBuffer !== "function") return false;
  if (sock.listenerCount("data") > 0 || sock.listenerCount("readable") > 0) return false;
  if (keys === undefined) keys = findKeys(sock);
  if (keys === null) return false;
  const taken = sock as unknown as TakenSocket;
  // Own fields set to null by net.Socket's constructor: a socket not in that mode yet.
  if (taken[keys.buffer] !== null || taken[keys.callback] !== null || taken[keys.generator] !== null) return false;
  try {
    handle.useUserBuffer(shared);
  } catch {
    return false;
  }
  taken[kDeliver] = deliver;
  taken[kLend] = false;
  taken[kSmall] = 0;
  taken[keys.buffer] = shared;
  taken[keys.callback] = onNodeRead;
  takenSockets.add(taken);
  sock.on("close", forget);
  return true;
}

/**
 * `sock`'s handle now reads for node:tls (a STARTTLS upgrade wraps it):
 * its reads no longer land in the shared memory, and it must not be
 * pointed anywhere by `reclaimShared` (that would take its reads from TLS).
 */
export function releaseReads(sock: Duplex): void {
  takenSockets.delete(sock as unknown as TakenSocket);
}

/**
 * Lends `sock`'s reads (a handler that keeps no chunk), or hands each over
 * as its own; the setting takes effect from the next read that lands in
 * the shared memory. Only for a socket `takeReads` took.
 */
export function lendReads(sock: Duplex, lend: boolean): void {
  (sock as unknown as TakenSocket)[kLend] = lend;
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
