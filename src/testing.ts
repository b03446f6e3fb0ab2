/**
 * pants-ts/testing: run a connection class against an in-memory peer, no
 * sockets, in the manner of Twisted's StringTransport and Netty's
 * EmbeddedChannel. Node's own `stream.duplexPair()` (22.6, and a late Node 20 release) is missing from earlier Node 20s, so one is here.
 */
import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { Engine } from "./engine.js";
import { Stream, untakenSocketError } from "./stream.js";
import type { ConnectionClass } from "./stream.js";
import type { Server } from "./server.js";
import { ChannelStateError, describe, rangeError, typeError } from "./errors.js";
import { checkOptions, optionKeys } from "./options.js";

const kPeer: unique symbol = Symbol("pants-ts.memoryPeer");

/** One end of an in-memory connection; what one end writes, the other reads. */
export class MemorySocket extends Duplex {
  /** @internal The other end. */
  [kPeer]: MemorySocket | null = null;
  /** Bytes written by this end so far. */
  bytesWritten = 0;

  constructor() {
    super({ allowHalfOpen: true });
  }

  /** This end has been sent the other's FIN (a TCP socket stops polling for reads there). */
  #finReceived = false;
  /** The other end reset after this one had its FIN: a TCP socket learns of it on its next write. */
  #resetUnseen = false;

  /** @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#resetUnseen) {
      callback(Object.assign(new Error("write EPIPE"), { code: "EPIPE", errno: -32, syscall: "write" }));
      return;
    }
    this.bytesWritten += chunk.length;
    const peer = this[kPeer];
    // Flow control, as a socket's: past the other end's highWaterMark of
    // unread bytes this write completes only when it reads again, so a
    // writer that keeps going buffers on its own side (writableLength).
    if (peer !== null && !peer.destroyed && !peer.push(chunk)) {
      this.#held = callback;
      return;
    }
    callback();
  }

  /** The callback of a write the other end has not made room for yet. */
  #held: ((error?: Error | null) => void) | null = null;

  /** Completes a held write: the other end read, or went away (its bytes are then lost, as a socket's). */
  #release(): void {
    const held = this.#held;
    this.#held = null;
    if (held !== null) held();
  }

  /** @internal */
  override _final(callback: (error?: Error | null) => void): void {
    const peer = this[kPeer];
    if (peer !== null && !peer.destroyed) {
      peer.#finReceived = true;
      peer.push(null);
    }
    callback();
  }

  /** @internal The consumer wants more: the other end's held write, if any, completes. */
  override _read(): void {
    const peer = this[kPeer];
    if (peer !== null) peer.#release();
  }

  /** @internal */
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const peer = this[kPeer];
    this[kPeer] = null;
    this.#release();
    if (peer !== null && !peer.destroyed) {
      peer[kPeer] = null;
      peer.#release();
      if (error === null && !this.#reset) {
        // A plain close, as TCP's close(): the other end reads a FIN.
        peer.#finReceived = true;
        if (!peer.readableEnded) peer.push(null);
      } else if (peer.#finReceived) {
        // TCP after a FIN: the reset goes unnoticed until the other end writes (EPIPE).
        peer.#resetUnseen = true;
      } else {
        // A reset: the other end fails with ECONNRESET, as TCP peers do.
        peer.destroy(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", errno: -104, syscall: "read" }));
      }
    }
    callback(error);
  }

  #reset = false;

  /**
   * Closes this end with a reset: the other end fails with `ECONNRESET`, or,
   * as over TCP, once it has read this end's FIN, with `EPIPE` on its next write.
   */
  resetAndDestroy(): this {
    this.#reset = true;
    this.destroy();
    return this;
  }
}

/** Two connected in-memory sockets (Node's own `stream.duplexPair()` is missing from earlier Node 20 releases). */
export function duplexPair(): [MemorySocket, MemorySocket] {
  const a = new MemorySocket();
  const b = new MemorySocket();
  a[kPeer] = b;
  b[kPeer] = a;
  return [a, b];
}

/** Options of {@link memoryPeer}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface MemoryPeerOptions {
  /** The engine for the stream; default a new, separate engine. */
  engine?: Engine;
  /**
   * With no `engine` given: make the new engine's clock manual, so timers
   * and timeouts (idle, handshake) fire only on {@link MemoryPeer.advance}.
   */
  manualClock?: boolean;
  /** Set as the stream's `server` (e.g. to test code that uses `this.server`). */
  server?: Server;
}

/** Options of {@link MemoryPeer.send}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface SendOptions {
  /** Split the bytes into packets of this size, or of these sizes in turn. */
  chunkSize?: number | readonly number[];
}

const PEER_KEYS = optionKeys<MemoryPeerOptions>({ engine: true, manualClock: true, server: true });
const SEND_KEYS = optionKeys<SendOptions>({ chunkSize: true });

/** A connection class instance wired to an in-memory peer. */
export interface MemoryPeer<S extends Stream> {
  /** The connection class instance. */
  readonly stream: S;
  /** The peer's end of the connection. */
  readonly socket: MemorySocket;
  /** Settles once `onConnect` has run. */
  readonly ready: Promise<void>;
  /** Settles once the stream has closed (after its `onClose`). */
  readonly closed: Promise<void>;
  /** True once the stream has sent its FIN. */
  readonly ended: boolean;
  /**
   * Sends bytes from the peer, optionally split into packets; resolves once they have been handled.
   * Rejects with `ChannelStateError` after the peer's own `end()` or `reset()`
   * (bytes sent to a stream that has closed are dropped, as over TCP).
   * Each packet arrives on a turn of its own, as a socket's reads do (the
   * microtasks and `process.nextTick` callbacks of one run before the next).
   * Sends not awaited go out whole, one after the other, in call order.
   */
  send(data: string | Uint8Array, options?: SendOptions): Promise<void>;
  /** Everything the stream wrote since the last `read()`, after its writes of this turn have left. */
  read(): Promise<Buffer>;
  /**
   * The peer stops reading, as a slow or stuck client does: past a socket's
   * worth of unread bytes (16 KiB) the stream's writes wait, its
   * `bufferedAmount` grows, and its `writeHighWaterMark` and
   * `writeBufferLimit` apply as over TCP.
   */
  pauseReading(): void;
  /** The peer reads again: what waited is delivered (`read()` returns it). */
  resumeReading(): void;
  /** The peer closes its sending side (FIN), after the bytes of the sends still under way, as a socket's FIN follows its writes. */
  end(): void;
  /** The peer resets the connection: the stream gets `ECONNRESET`, or, after `end()`, `EPIPE` on its next write, as over TCP. */
  reset(): void;
  /** The stream's engine. */
  readonly engine: Engine;
  /**
   * Manual clock only (`manualClock: true`): moves time forward by `ms`,
   * firing the timers and timeouts that fall due, then lets the stream run.
   */
  advance(ms: number): Promise<void>;
}

function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * send()'s arguments, checked before anything is sent (a bad size never
 * leaves half a message written).
 * @param peerDone How the peer closed its sending side, if it did.
 */
function checkSend(data: unknown, options: SendOptions | undefined, peerDone: string | null): void {
  // As Stream.write(): a clear TypeError, not a property read on null.
  if (typeof data !== "string" && !(data instanceof Uint8Array)) throw typeError(`send() expects a string or a Uint8Array, got ${describe(data)}.`);
  // As a socket's write() after its end(): refused, not dropped unseen.
  if (peerDone !== null) throw new ChannelStateError(`send() after the peer's ${peerDone}(): it has no sending side left.`);
  if (options === undefined) return;
  checkOptions("send()", options, SEND_KEYS);
  const sizes = options.chunkSize;
  for (const size of sizes === undefined ? [] : typeof sizes === "number" ? [sizes] : sizes) {
    if (typeof size !== "number") throw typeError(`chunkSize must be a positive integer or an array of them, got ${describe(size)}.`);
    if (!Number.isInteger(size) || size <= 0) throw rangeError(`chunkSize must be positive integers, got ${describe(size)}.`);
  }
}

/**
 * Makes a new `ConnectionClass` instance connected to an in-memory peer.
 *
 * ```ts
 * const peer = memoryPeer(Echo);
 * await peer.send("hi\n", { chunkSize: 1 });
 * assert.equal((await peer.read()).toString(), "hi\n");
 * peer.end();
 * await peer.closed;
 * ```
 * @param ConnectionClass The connection class (Stream or a subclass); `peer.stream` is one of its instances, typed as such.
 * @param options See {@link MemoryPeerOptions}.
 * @throws TypeError if the class's constructor does not pass its options to `super()`, so its instance never takes the in-memory socket.
 */
export function memoryPeer<S extends Stream>(
  ConnectionClass: ConnectionClass<S>,
  options: MemoryPeerOptions = {},
): MemoryPeer<S> {
  if (typeof ConnectionClass !== "function") {
    throw typeError("memoryPeer() expects a connection class (a Stream subclass).");
  }
  checkOptions("memoryPeer()", options, PEER_KEYS);
  const engine = options.engine ?? new Engine({ manualClock: options.manualClock === true });
  const [local, remote] = duplexPair();
  const received: Buffer[] = [];
  let ended = false;
  remote.on("data", (chunk: Buffer) => received.push(chunk));
  remote.on("end", () => {
    ended = true;
  });
  remote.on("error", () => {});
  const stream = new ConnectionClass({ engine, socket: local });
  const untaken = untakenSocketError(stream, local);
  if (untaken !== null) throw untaken;
  if (options.server !== undefined) stream.server = options.server;
  const ready = stream.ready().then(
    () => undefined,
    () => undefined,
  );
  let closedResolve: () => void = () => {};
  const closed = new Promise<void>((resolve) => (closedResolve = resolve));
  // `closed` settles after onClose, whichever onClose runs: the wrap is on
  // the call, so a handler assigned to the instance later is covered too.
  const callOnClose = stream._callOnClose;
  stream._callOnClose = function (this: S) {
    try {
      callOnClose.call(this);
    } finally {
      setImmediate(closedResolve);
    }
  };
  /** Set once the peer has ended or reset its side: a later send() is a test's mistake. */
  let peerDone: string | null = null;
  /**
   * The peer's sends and its FIN, in the order they were called, as a
   * socket's writes and end() go out: a send() not awaited before end() or
   * another send() still arrives whole, and first.
   */
  let queue: Promise<void> = Promise.resolve();
  let queued = 0;

  /** Writes the bytes of one send(), a packet per turn. */
  async function deliver(bytes: Buffer, sizes: SendOptions["chunkSize"]): Promise<void> {
    try {
      await ready;
      let offset = 0;
      let i = 0;
      while (offset < bytes.length) {
        let size: number;
        if (sizes === undefined) size = bytes.length;
        else if (typeof sizes === "number") size = sizes;
        else size = sizes.length > 0 ? sizes[i++ % sizes.length]! : bytes.length;
        if (remote.destroyed || remote.writableEnded) break;
        // A packet after the first waits for a turn of its own: a socket
        // never reads two packets in one turn with no microtasks between
        // them (an async onRead's readDelimiter change, set after an await,
        // applies to the next packet, as over TCP).
        if (offset > 0) {
          await tick();
          if (remote.destroyed || remote.writableEnded) break;
        }
        remote.write(bytes.subarray(offset, offset + size));
        offset += size;
      }
      await tick();
    } finally {
      queued--;
    }
  }

  return {
    stream,
    socket: remote,
    ready,
    closed,
    get ended() {
      return ended;
    },
    send(data, sendOptions) {
      // Refusals reject this send() alone, before anything is queued.
      try {
        checkSend(data, sendOptions, peerDone);
      } catch (err) {
        return Promise.reject(err);
      }
      const sizes = sendOptions?.chunkSize;
      // A copy, as a socket's write() takes one into the kernel: the caller may
      // reuse its buffer once send() returns, and the stream may keep its chunks.
      const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
      queued++;
      // Each send waits for the one before, however that one ended; the
      // chain itself never rejects (a failure is its own send()'s to report).
      const run = (): Promise<void> => deliver(bytes, sizes);
      const sent = queue.then(run, run);
      queue = sent.catch(() => {});
      return sent;
    },
    async read() {
      await tick();
      const out = Buffer.concat(received);
      received.length = 0;
      return out;
    },
    pauseReading() {
      remote.pause();
    },
    resumeReading() {
      remote.resume();
    },
    end() {
      peerDone ??= "end";
      // After the sends not yet delivered, as a socket's FIN follows its writes.
      if (queued === 0) remote.end();
      else queue = queue.then(() => void remote.end());
    },
    reset() {
      peerDone ??= "reset";
      remote.resetAndDestroy();
    },
    engine,
    async advance(ms) {
      engine.advance(ms);
      await tick();
    },
  };
}
