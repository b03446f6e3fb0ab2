/**
 * The native transport's socket: a libuv TCP or pipe handle driven by the
 * pants-ts addon, shaped like the part of `net.Socket` a Stream uses
 * (write with a callback, cork, end, destroy, pause/resume, events), with
 * one extra path: frames cut by the addon, handed over in batches.
 *
 * Streams and servers use it when the addon is built, for plain TCP and
 * UNIX sockets; TLS, PROXY headers and cluster workers use node:net.
 */
import process from "node:process";
import { Buffer } from "node:buffer";
import { ADDRCONFIG, lookup } from "node:dns";
import type { LookupAddress } from "node:dns";
import { getDefaultAutoSelectFamily, getDefaultAutoSelectFamilyAttemptTimeout, isIP } from "node:net";
import { getSystemErrorMap } from "node:util";
import { Duplex } from "node:stream";
import { codedError } from "./errors.js";
import { log } from "./log.js";
import { loadNative } from "./native-binding.js";
import { joinInto, viewOf } from "./framing/view.js";
import type { NativeAddon, NativeConn, NativeServer } from "./native-binding.js";
import type { LocalAddress } from "./address.js";

/** What a NativeSocket hands its owner directly (no event dispatch on the hot path). */
export interface NativeOwner {
  /** @internal A raw chunk (framing off). */
  _onData(chunk: Buffer): void;
  /**
   * @internal A read lent for this call only ({@link NativeSocket.setLendReads}):
   * a raw chunk (`frames` null) or frames, as `_onData` / `_onNativeFrames` take them.
   */
  _onLent(block: ArrayBufferLike, base: number, length: number, frames: Int32Array | null, first: number, count: number): void;
  /**
   * @internal Frames cut by the addon from the `length` bytes of `block` at
   * `base`: `frames` holds, from index `first`, [start, end) pairs relative
   * to `base`, then the tail start; count -1 = overflow.
   */
  _onNativeFrames(block: ArrayBufferLike, base: number, length: number, frames: Int32Array, first: number, count: number): void;
}

type Listener = (...args: never[]) => void;
type Slot = Listener | Listener[] | null;
type EventName = "data" | "end" | "error" | "close" | "connect" | "drain" | "finish";

const kSocket: unique symbol = Symbol("pants-ts.nativeSocket");
/** The socket a connection belongs to (NativeConn.owner), or null. */
function socketOf(conn: NativeConn): NativeSocket | null {
  return conn.owner as NativeSocket | null;
}
type OwnedServer = NativeServer & { [kSocket]?: NativeListener };

let addon: NativeAddon | null | undefined;

/** Size of the buffer small writes are joined into ({@link NativeSocket.writeRun}); larger runs go out with writev. */
const JOIN_SCRATCH_SIZE = 64 * 1024;
/** The addon takes buffers of at most this many bytes (a uv_buf_t length is 32 bits); larger ones are passed in pieces. */
const MAX_NATIVE_BUF = 0x7fffffff;
/** `chunks`, with any buffer larger than MAX_NATIVE_BUF cut into views of at most that size. */
function splitLarge(chunks: readonly Buffer[]): readonly Buffer[] {
  let i = 0;
  while (i < chunks.length && chunks[i]!.length <= MAX_NATIVE_BUF) i++;
  if (i === chunks.length) return chunks;
  const out = chunks.slice(0, i);
  for (const c of chunks.slice(i)) {
    if (c.length <= MAX_NATIVE_BUF) out.push(c);
    else for (let at = 0; at < c.length; at += MAX_NATIVE_BUF) out.push(c.subarray(at, at + MAX_NATIVE_BUF));
  }
  return out;
}
/** That buffer (the addon copies what it queues of it: it is free again once a write returns). */
let joinScratch: Buffer | null = null;

/** What the addon frames itself (0 until it is loaded); larger delimiters and sizes are framed in JS. */
export const nativeLimits = { maxDelimiter: 0, maxFrameSize: 0 };

/** The addon, for a caller that cannot go on without it. @throws Error (`ERR_NATIVE_UNAVAILABLE`) when it is not loaded. */
function requireAddon(): NativeAddon {
  const native = nativeAddon();
  if (native === null) throw codedError("The native transport is not available.", "ERR_NATIVE_UNAVAILABLE");
  return native;
}

/** The addon, initialised once, or null when it is not built (or `PANTS_TS_TRANSPORT=js`). */
export function nativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = loadNative();
  if (addon !== null) {
    nativeLimits.maxDelimiter = addon.maxDelimiter;
    nativeLimits.maxFrameSize = addon.maxFrameSize;
    addon.init({
      onConnection(server, conn) {
        const listener = (server as OwnedServer)[kSocket];
        if (listener === undefined) return conn.close();
        listener.onConnection(new NativeSocket(conn));
      },
      onRead(conn, block, offset, length, frames, first, count) {
        const socket = socketOf(conn);
        if (socket !== null) socket._read(block, offset, length, frames, first, count);
      },
      onEnd(conn) {
        socketOf(conn)?._end();
      },
      onError(conn, code, syscall) {
        socketOf(conn)?._error(code, syscall);
      },
      onWritten(conn) {
        socketOf(conn)?._written();
      },
      onConnect(conn, code) {
        socketOf(conn)?._connected(code);
      },
      onShutdown(conn) {
        socketOf(conn)?._shutdownDone();
      },
      onClose(conn) {
        socketOf(conn)?._closed();
      },
      onAcceptError(server, code) {
        (server as OwnedServer)[kSocket]?.onAcceptError(code);
      },
      onUncaught(err) {
        log.current.error({ err }, "Exception raised in a native transport callback.");
      },
    });
  }
  return addon;
}

function emitFinish(sock: NativeSocket): void {
  sock._emitFinish();
}

/** libuv's error numbers by name (EOF and EAI_* included), as Node reports them. */
let uvErrnos: Map<string, number> | null = null;

/** A libuv error as Node reports socket errors: `errno` (libuv's negative number), `code`, `syscall`. */
function uvError(code: string, syscall: string, where = ""): NodeJS.ErrnoException {
  const err = new Error(where === "" ? `${syscall} ${code}` : `${syscall} ${code} ${where}`) as NodeJS.ErrnoException;
  uvErrnos ??= new Map([...getSystemErrorMap()].map(([errno, [name]]) => [name, errno]));
  const errno = uvErrnos.get(code);
  if (errno !== undefined) err.errno = errno;
  err.code = code;
  err.syscall = syscall;
  return err;
}

// Write callbacks of writes that completed at once run together, on the next tick (never inside write()).
let doneCallbacks: Array<(err?: Error | null) => void> = [];
let doneScheduled = false;
function runDoneCallbacks(): void {
  doneScheduled = false;
  const list = doneCallbacks;
  doneCallbacks = [];
  for (let i = 0; i < list.length; i++) list[i]!(null);
}

/** What few sockets use (client connects, cork, files, addresses): made on first use. */
interface Rare {
  connect: Slot;
  drain: Slot;
  finish: Slot;
  corkedCallback: ((err?: Error | null) => void) | null;
  peer: { address: string; port: number; family: number } | null | undefined;
  attempts: Attempts | null;
}

/**
 * A client connect's attempts. A name's addresses are tried in turn while
 * connects fail, each attempt but the last given up after node:net's
 * autoSelectFamily attempt timeout (as node:net does: a black-holed first
 * address must not hold the connect for the kernel's minutes).
 */
interface Attempts {
  /** The current attempt, as node:net names it in an error: "127.0.0.1:7", a UNIX path. */
  where: string;
  /** The earlier attempts' errors ("connect ECONNREFUSED ::1:7"). */
  failed: NodeJS.ErrnoException[];
  /** The name's addresses left to try, on `port`, from `local`. */
  next: string[];
  port: number;
  local: LocalAddress | null;
  /** The current attempt's timeout, while `next` is not empty. */
  timer: ReturnType<typeof setTimeout> | null;
}

/** The addon's connect to `host`, bound first to `local` when given ("" is any address of `host`'s family, as node:net binds). */
function connectFrom(native: NativeAddon, host: string, port: number, local: LocalAddress | null): NativeConn {
  if (local === null) return native.connectTcp(host, port);
  const from = local.host !== "" ? local.host : isIP(host) === 6 ? "::" : "0.0.0.0";
  return native.connectTcp(host, port, from, local.port);
}

/**
 * The addresses node:net tries for a name (autoSelectFamily): each once,
 * families alternating, starting with the first address's family.
 */
function attemptOrder(found: readonly LookupAddress[]): string[] {
  const groups: [string[], string[]] = [[], []];
  let firstFamily = 0;
  for (const { address, family } of found) {
    if (isIP(address) === 0 || (family !== 4 && family !== 6)) continue;
    if (firstFamily === 0) firstFamily = family;
    const group = groups[family === firstFamily ? 0 : 1];
    if (!group.includes(address)) group.push(address);
  }
  const order: string[] = [];
  for (let i = 0; i < Math.max(groups[0].length, groups[1].length); i++) {
    if (i < groups[0].length) order.push(groups[0][i]!);
    if (i < groups[1].length) order.push(groups[1][i]!);
  }
  return order;
}

function attemptTimedOut(socket: NativeSocket): void {
  socket._attemptTimedOut();
}

// NativeSocket#bits
const B_PAUSED = 1;
/** Some write is queued in the addon (cleared when it reports all written). */
const B_QUEUED = 2;
const B_ENDED = 4;
const B_FINISHED = 8;
/** Reads are lent (setLendReads). */
const B_LEND = 16;

/** A native connection, shaped like the part of net.Socket a Stream uses. */
export class NativeSocket {
  #conn: NativeConn | null = null;
  #owner: NativeOwner | null = null;
  // One slot per event (a function, or an array once a second listener
  // comes): no per-socket map or arrays for the usual one listener each.
  // Every connection's Stream listens for these four; the rest are in #rare.
  #data: Slot = null;
  #endL: Slot = null;
  #errorL: Slot = null;
  #closeL: Slot = null;
  #rare: Rare | null = null;
  #waiting: Array<(err?: Error | null) => void> | null = null;
  #corked: Buffer[] | null = null;
  #bits = B_PAUSED;
  /** Bytes ever left queued by a write (see {@link drainedBytes}). */
  #queuedTotal = 0;
  /** True once destroy() was called or the handle closed. */
  destroyed = false;
  /** True while a client connect is under way. */
  connecting = false;
  /** True once the peer's FIN has been read. */
  readableEnded = false;
  /** @internal Bytes at the end of the last framed batch that the addon keeps pending (sent again next time). */
  tail = 0;

  constructor(conn: NativeConn | null) {
    if (conn !== null) this.#attach(conn);
  }

  #attach(conn: NativeConn): void {
    this.#conn = conn;
    conn.owner = this;
    if ((this.#bits & B_LEND) !== 0) conn.lendReads(true); // set while a name resolved
  }

  /**
   * Connects to `host` (resolved first when it is a name) and `port`, or to
   * a UNIX `path`; from `local` (an address literal, or "" for any of the
   * target's family, and a port), when given.
   */
  static connect(target: { host: string; port: number; family?: number; local?: LocalAddress } | { path: string }): NativeSocket {
    const native = requireAddon();
    const socket = new NativeSocket(null);
    socket.connecting = true;
    if ("path" in target) {
      socket.#open(target.path, () => native.connectPipe(target.path), false);
      return socket;
    }
    const local = target.local ?? null;
    if (isIP(target.host) !== 0) {
      socket.#open(`${target.host}:${target.port}`, () => connectFrom(native, target.host, target.port, local), false);
      return socket;
    }
    const asked = target.family ?? 0;
    // From a literal source address, only its family's addresses can be reached: only those are asked for (each still tried in turn).
    const only = asked === 0 && local !== null ? local.family : asked;
    // As node:net asks: only the families this host has an address of (ADDRCONFIG), unless one was given.
    const hints = only !== 4 && only !== 6 && process.platform !== "win32" ? ADDRCONFIG : 0;
    lookup(target.host, { family: only, hints, all: true }, (err, found) => {
      if (socket.destroyed) return;
      if (err) {
        socket.connecting = false;
        socket.#emit("error", err);
        socket.destroy();
        return;
      }
      // "localhost" may be ::1 first with the server on 127.0.0.1 only: the
      // others follow if it fails (node:net's autoSelectFamily: on by
      // default, and only when no family was asked for).
      const family = target.family ?? 0;
      const addresses = getDefaultAutoSelectFamily() && family !== 4 && family !== 6 ? attemptOrder(found) : [];
      if (addresses.length === 0) addresses.push(found[0]!.address);
      const first = addresses.shift()!;
      socket.#extra().attempts = { where: "", failed: [], next: addresses, port: target.port, local, timer: null };
      if (socket.#open(`${first}:${target.port}`, () => connectFrom(native, first, target.port, local), true)) socket.#armAttempt();
    });
    return socket;
  }

  /**
   * Starts a connect on a new handle of the addon's. The addon throws a
   * libuv error (one with a `syscall`) when it cannot make one: no memory,
   * or no free connection id. That is this connect failing, reported as
   * any other connect error (`now`: at once, from a callback; else on the
   * next tick, never inside connect()), as node:net reports a socket it
   * could not create. False then.
   */
  #open(where: string, start: () => NativeConn, now: boolean): boolean {
    (this.#extra().attempts ??= { where, failed: [], next: [], port: 0, local: null, timer: null }).where = where;
    let conn: NativeConn;
    try {
      conn = start();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (typeof e.syscall !== "string" || typeof e.code !== "string") throw err;
      const code = e.code;
      this.#conn = null; // a failed attempt's handle is closed already: no 'close' will come from it
      const fail = () => {
        this.connecting = false;
        this.#connectFailed(code);
      };
      if (now) fail();
      else process.nextTick(fail);
      return false;
    }
    this.#attach(conn);
    return true;
  }

  /** Hands data and frames to `owner` directly instead of as 'data' events. */
  setOwner(owner: NativeOwner | null): void {
    this.#owner = owner;
    if (owner === null) this.setLendReads(false); // "data" listeners may keep what they get
  }

  /**
   * @internal Lends reads to the owner (NativeConn.lendReads): a chunk or
   * frame is valid only during the `_onLent` call that delivers it.
   */
  setLendReads(enable: boolean): void {
    if (((this.#bits & B_LEND) !== 0) === enable) return;
    if (enable) this.#bits |= B_LEND;
    else this.#bits &= ~B_LEND;
    if (this.#conn !== null && !this.destroyed) this.#conn.lendReads(enable);
  }

  /** The native handle (null once closed or before a name resolved). */
  get conn(): NativeConn | null {
    return this.#conn;
  }

  /** Bytes handed over but not yet written to the OS. */
  get writableLength(): number {
    const conn = this.#conn;
    // Nothing queued since the last "written" callback: no need to ask the addon.
    return conn === null || this.destroyed || (this.#bits & B_QUEUED) === 0 ? 0 : conn.pendingBytes();
  }

  #extra(): Rare {
    return (this.#rare ??= { connect: null, drain: null, finish: null, corkedCallback: null, peer: undefined, attempts: null });
  }

  /** For `fileno`. */
  get _handle(): { fd: number } | null {
    const conn = this.#conn;
    return conn === null || this.destroyed ? null : { fd: conn.fd };
  }

  get remoteAddress(): string | undefined {
    return this.#peer()?.address;
  }
  get remotePort(): number | undefined {
    return this.#peer()?.port;
  }
  get remoteFamily(): string | undefined {
    const peer = this.#peer();
    return peer === undefined ? undefined : peer.family === 6 ? "IPv6" : "IPv4";
  }
  #peer(): { address: string; port: number; family: number } | undefined {
    // None while connecting, even once the kernel has the peer before the
    // connect callback ran: asked again once connected, as node:net is.
    if (this.connecting) return undefined;
    const rare = this.#extra();
    if (rare.peer === undefined && this.#conn !== null && !this.destroyed) {
      const p = this.#conn.peerAddress();
      rare.peer = p !== null && "port" in p ? p : null;
    }
    return rare.peer ?? undefined;
  }

  /** Like net.Socket#address(): `{ address, port, family }`, or `{}` for UNIX sockets. */
  address(): { address: string; port: number; family: string } | Record<string, never> {
    const conn = this.#conn;
    if (conn === null || this.destroyed) return {};
    const a = conn.address();
    return a !== null && "port" in a ? { address: a.address, port: a.port, family: a.family === 6 ? "IPv6" : "IPv4" } : {};
  }

  // -- events (a minimal emitter: a Stream registers one listener per event) --

  #slot(event: EventName): Slot {
    switch (event) {
      case "data":
        return this.#data;
      case "end":
        return this.#endL;
      case "error":
        return this.#errorL;
      case "close":
        return this.#closeL;
      case "connect":
      case "drain":
      case "finish":
        return this.#rare === null ? null : this.#rare[event];
    }
  }

  #setSlot(event: EventName, value: Slot): void {
    switch (event) {
      case "data":
        this.#data = value;
        break;
      case "end":
        this.#endL = value;
        break;
      case "error":
        this.#errorL = value;
        break;
      case "close":
        this.#closeL = value;
        break;
      case "connect":
      case "drain":
      case "finish":
        if (value !== null || this.#rare !== null) this.#extra()[event] = value;
        break;
    }
  }

  on(event: EventName, fn: Listener): this {
    const slot = this.#slot(event);
    if (slot === null) this.#setSlot(event, fn);
    else if (typeof slot === "function") this.#setSlot(event, [slot, fn]);
    else slot.push(fn);
    if (event === "data" && this.#owner === null) this.resume();
    return this;
  }

  once(event: EventName, fn: Listener): this {
    const wrapper = ((...args: never[]) => {
      this.off(event, wrapper);
      fn.apply(this, args);
    }) as Listener & { listener?: Listener };
    wrapper.listener = fn;
    return this.on(event, wrapper);
  }

  off(event: EventName, fn: Listener): this {
    const slot = this.#slot(event);
    const matches = (l: Listener) => l === fn || (l as Listener & { listener?: Listener }).listener === fn;
    if (slot === null) return this;
    if (typeof slot === "function") {
      if (matches(slot)) this.#setSlot(event, null);
      return this;
    }
    const i = slot.findIndex(matches);
    if (i !== -1) slot.splice(i, 1);
    if (slot.length <= 1) this.#setSlot(event, slot.length === 0 ? null : slot[0]!);
    return this;
  }

  removeListener(event: EventName, fn: Listener): this {
    return this.off(event, fn);
  }

  #emit(event: EventName, ...args: unknown[]): void {
    const slot = this.#slot(event);
    if (slot === null) return;
    if (typeof slot === "function") (slot as (...a: unknown[]) => void).apply(this, args);
    else for (const fn of slot.slice()) (fn as (...a: unknown[]) => void).apply(this, args);
  }

  // -- reading --

  pause(): this {
    this.#bits |= B_PAUSED;
    if (this.#conn !== null && !this.destroyed) this.#conn.readStop();
    return this;
  }

  resume(): this {
    this.#bits &= ~B_PAUSED;
    if (this.#conn !== null && !this.destroyed && !this.connecting && !this.readableEnded) this.#conn.readStart();
    return this;
  }

  isPaused(): boolean {
    return (this.#bits & B_PAUSED) !== 0;
  }

  /**
   * Sets the addon's framing: 0 raw, 1 bytes delimiter, 2 fixed size. Raw
   * (0) drops the bytes the addon holds back (the caller took them from the
   * last delivery); `keepPending` keeps them, to be delivered again raw.
   */
  setFraming(kind: 0 | 1 | 2, value: Buffer | number | null, limit: number, keepPending = false): void {
    if (this.#conn === null || this.destroyed) return;
    if (kind === 0 && !keepPending) this.#conn.resetFraming();
    else this.#conn.setFraming(kind, value as Buffer & number, limit);
  }

  /** @internal The bytes the addon holds back (a partial frame), taken out of it; framing goes back to raw. */
  takePending(): Buffer | undefined {
    if (this.#conn === null || this.destroyed) return undefined;
    this.tail = 0;
    return this.#conn.takePending();
  }

  /** @internal */
  _read(block: ArrayBufferLike, offset: number, length: number, frames: Int32Array | null, first: number, count: number): void {
    const owner = this.#owner;
    if (owner !== null && (this.#bits & B_LEND) !== 0) {
      owner._onLent(block, offset, length, frames, first, count);
    } else if (frames === null) {
      const data = viewOf(block, offset, length);
      if (owner !== null) owner._onData(data);
      else this.#emit("data", data);
    } else if (owner !== null) {
      owner._onNativeFrames(block, offset, length, frames, first, count);
    } else {
      // Nobody to hand frames to: fall back to chunks.
      this.#conn?.resetFraming();
      this.#emit("data", viewOf(block, offset, length));
    }
  }

  /** @internal */
  _end(): void {
    this.readableEnded = true;
    this.#emit("end");
    this.#maybeClose();
  }

  // -- writing --

  write(chunk: Buffer, cb?: (err?: Error | null) => void): boolean {
    if (this.destroyed || (this.#bits & B_ENDED) !== 0 || this.#conn === null) {
      const err = uvError("EPIPE", "write");
      if (cb) process.nextTick(cb, err);
      return false;
    }
    if (this.#corked !== null) {
      this.#corked.push(chunk);
      if (cb) this.#extra().corkedCallback = cb;
      return true;
    }
    const left = this.writeNow(chunk);
    if (cb) this.#afterWrite(left, cb);
    return left === 0;
  }

  /**
   * @internal The Stream's fast path: writes `chunk` now (or queues what the
   * OS did not take) and returns the bytes left queued, with no callback.
   * The caller must be in a state where write() would not fail (open, not
   * ended, not corked) and registers `whenWritten` if the result is not 0.
   */
  writeNow(chunk: Buffer): number {
    if (chunk.length > MAX_NATIVE_BUF) return this.writevNow([chunk]);
    const left = this.#conn!.write(chunk);
    if (left > 0) this.#queued(left);
    return left;
  }

  /**
   * @internal Like writeNow() for the first `n` buffers of `list` (`bytes`
   * in all), in one system call: one buffer as it is; small ones joined
   * through a buffer shared by every connection, which is reused while
   * writes of it go out whole and left to the addon (which keeps it until
   * written) when one does not; many bytes with writev. `list` itself is
   * not kept.
   */
  writeRun(list: readonly unknown[], n: number, bytes: number): number {
    if (n === 1) return this.writeNow(list[0] as Buffer);
    if (bytes > JOIN_SCRATCH_SIZE) return this.writevNow((n === list.length ? list : list.slice(0, n)) as Buffer[]);
    const scratch = (joinScratch ??= Buffer.allocUnsafeSlow(JOIN_SCRATCH_SIZE));
    joinInto(scratch, list, n);
    // With a length, the addon copies what it has to queue: the scratch is free again at once.
    const left = this.#conn!.write(scratch, bytes);
    if (left > 0) this.#queued(left);
    return left;
  }

  /** @internal Like writeNow() for several buffers, in one system call. */
  writevNow(chunks: readonly Buffer[]): number {
    const left = this.#conn!.writev(splitLarge(chunks));
    if (left > 0) this.#queued(left);
    return left;
  }

  #queued(bytes: number): void {
    this.#bits |= B_QUEUED;
    this.#queuedTotal += bytes;
  }

  /**
   * Bytes the OS has taken out of this socket's write queue so far (it only
   * grows): moves while a large queued write drains, before it completes.
   */
  get drainedBytes(): number {
    return this.#queuedTotal - this.writableLength;
  }

  /**
   * TCP on Linux: the bytes the peer has acknowledged (only grows), or -1
   * when nothing written is still in the kernel or this cannot be known.
   */
  get deliveredBytes(): number {
    const conn = this.#conn;
    return conn === null || this.destroyed ? -1 : conn.deliveredBytes();
  }

  /** Every byte read so far, including a partial frame the addon keeps (0 once closed). */
  get bytesRead(): number {
    const conn = this.#conn;
    return conn === null || this.destroyed ? 0 : conn.bytesRead();
  }

  /** @internal Whether writeNow() may be used (open, not ended, not corked). */
  get writableNow(): boolean {
    return !this.destroyed && (this.#bits & B_ENDED) === 0 && this.#conn !== null && this.#corked === null;
  }

  /** @internal Calls `cb` once every write so far has reached the OS (`left`: what the last one left queued). */
  whenWritten(left: number, cb: (err?: Error | null) => void): void {
    this.#afterWrite(left, cb);
  }

  #afterWrite(left: number, cb: (err?: Error | null) => void): void {
    if (left === 0 && this.#waiting === null) {
      doneCallbacks.push(cb);
      if (!doneScheduled) {
        doneScheduled = true;
        process.nextTick(runDoneCallbacks);
      }
    } else {
      (this.#waiting ??= []).push(cb);
    }
  }

  cork(): void {
    this.#corked ??= [];
  }

  uncork(): void {
    const chunks = this.#corked;
    const rare = this.#rare;
    const cb = rare === null ? null : rare.corkedCallback;
    this.#corked = null;
    if (rare !== null) rare.corkedCallback = null;
    if (chunks === null || chunks.length === 0 || this.#conn === null || this.destroyed) return;
    const left = this.writevNow(chunks);
    if (cb) this.#afterWrite(left, cb);
  }

  /** @internal Every queued write has completed. */
  _written(): void {
    this.#bits &= ~B_QUEUED;
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting !== null) for (let i = 0; i < waiting.length; i++) waiting[i]!(null);
    this.#emit("drain");
  }

  /** FIN after the queued writes. */
  end(): this {
    if ((this.#bits & B_ENDED) !== 0 || this.destroyed) return this;
    this.#bits |= B_ENDED;
    if (this.readableEnded && (this.#bits & B_QUEUED) === 0 && this.#corked === null && this.#conn !== null) {
      // The peer has sent its FIN and nothing waits to be written: close(2)
      // sends ours just as shutdown(2) would (nothing unread can turn it
      // into a reset), one system call and one loop turn sooner.
      this.#bits |= B_FINISHED;
      process.nextTick(emitFinish, this);
      this.destroy();
      return this;
    }
    this.#conn?.shutdown();
    return this;
  }

  /** @internal */
  _emitFinish(): void {
    this.#emit("finish");
  }

  /** @internal The FIN has gone out. */
  _shutdownDone(): void {
    this.#bits |= B_FINISHED;
    this.#emit("finish");
    this.#maybeClose();
  }

  /** Both sides are done: release the handle (as net.Socket's autoDestroy does). */
  #maybeClose(): void {
    if ((this.#bits & B_FINISHED) !== 0 && this.readableEnded) this.destroy();
  }

  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.#clearAttempt();
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting !== null) {
      // Only then is an error worth making: an Error captures a stack trace.
      const failure = err ?? uvError("ECANCELED", "write");
      for (const cb of waiting) process.nextTick(cb, failure);
    }
    if (err) process.nextTick(() => this.#emit("error", err));
    if (this.#conn !== null) this.#conn.close();
    else process.nextTick(() => this.#emit("close"));
    return this;
  }

  /** @internal */
  _closed(): void {
    this.destroyed = true;
    const conn = this.#conn;
    if (conn !== null) conn.owner = null;
    this.#emit("close");
  }

  /** @internal */
  _error(code: string, syscall: string): void {
    if (this.destroyed) return;
    const err = uvError(code, syscall);
    this.#emit("error", err);
    this.destroy();
  }

  /**
   * A client connect failed with `code`: its error names the address, as
   * node:net's do ("connect ECONNREFUSED 127.0.0.1:7"). After earlier
   * addresses of a name failed too, the error is node:net's for that: an
   * AggregateError of every attempt's error, with the first one's code.
   */
  #connectFailed(code: string): void {
    if (this.destroyed) return;
    const attempts = this.#rare?.attempts ?? null;
    let err: Error = uvError(code, "connect", attempts?.where ?? "");
    if (attempts !== null && attempts.failed.length > 0) {
      const all = new AggregateError([...attempts.failed, err], "") as AggregateError & NodeJS.ErrnoException;
      all.code = attempts.failed[0]!.code;
      err = all;
    }
    this.#emit("error", err);
    this.destroy();
  }

  /** While another address is left to try, the current attempt has node:net's attempt timeout. */
  #armAttempt(): void {
    const attempts = this.#rare?.attempts ?? null;
    if (attempts === null || attempts.next.length === 0 || this.destroyed) return;
    attempts.timer = setTimeout(attemptTimedOut, getDefaultAutoSelectFamilyAttemptTimeout(), this);
  }

  /** Stops the timer of the current attempt of a name's connect, if one runs. */
  #clearAttempt(): void {
    const attempts = this.#rare?.attempts ?? null;
    if (attempts !== null && attempts.timer !== null) {
      clearTimeout(attempts.timer);
      attempts.timer = null;
    }
  }

  /** @internal The current attempt of a name's connect took too long: on to the next address. */
  _attemptTimedOut(): void {
    const attempts = this.#rare?.attempts ?? null;
    if (attempts === null) return;
    attempts.timer = null;
    if (this.connecting && !this.destroyed) this._connected("ETIMEDOUT");
  }

  /** @internal */
  _connected(code: string | null): void {
    const attempts = this.#rare?.attempts ?? null;
    if (attempts !== null) {
      this.#clearAttempt();
      if (code !== null && !this.destroyed && attempts.next.length > 0) {
        const next = attempts.next.shift()!;
        // That address failed: the next one, on a new handle (the old one closes unheard).
        const failed = this.#conn!;
        failed.owner = null;
        failed.close();
        attempts.failed.push(uvError(code, "connect", attempts.where));
        if (this.#open(`${next}:${attempts.port}`, () => connectFrom(nativeAddon()!, next, attempts.port, attempts.local), true)) this.#armAttempt();
        return;
      }
      attempts.next.length = 0;
    }
    this.connecting = false;
    if (code !== null) {
      this.#connectFailed(code);
      return;
    }
    this.#emit("connect");
  }

  /** Lets a lingering connection not keep the process alive. */
  unref(): this {
    if (this.#conn !== null && !this.destroyed) this.#conn.unref();
    return this;
  }

  ref(): this {
    if (this.#conn !== null && !this.destroyed) this.#conn.ref();
    return this;
  }

  setNoDelay(noDelay = true): this {
    if (this.#conn !== null && !this.destroyed) this.#conn.setNoDelay(noDelay);
    return this;
  }

  setKeepAlive(enable = false, initialDelayMs = 0): this {
    if (this.#conn !== null && !this.destroyed) this.#conn.setKeepAlive(enable, Math.floor(initialDelayMs / 1000));
    return this;
  }

  /**
   * A real Duplex over this socket, for what needs one (node:tls for STARTTLS
   * or a TLS server listening natively). Created only then.
   */
  toDuplex(): Duplex {
    this.setOwner(null);
    const socket = this;
    const duplex = new Duplex({
      allowHalfOpen: true,
      read() {
        socket.resume();
      },
      write(chunk: Buffer, _encoding, callback) {
        socket.write(chunk, callback);
      },
      final(callback) {
        socket.once("finish", () => callback());
        socket.end();
      },
      destroy(err, callback) {
        socket.destroy();
        callback(err);
      },
    });
    socket.on("data", (chunk: Buffer) => {
      if (!duplex.push(chunk)) socket.pause();
    });
    socket.on("end", () => duplex.push(null));
    socket.on("error", (err: Error) => duplex.destroy(err));
    socket.on("close", () => duplex.destroy());
    return duplex;
  }
}

/**
 * A bind or listen failure of the addon in the shape node:net gives it (the
 * js transport's): `syscall` "listen" whichever step failed, the message
 * `listen CODE: description ADDRESS[:PORT]`, and `address` / `port`
 * (-1 for a UNIX path; no `port` for port 0), so both transports fail alike.
 */
function asListenError(err: unknown, address: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e === null || typeof e !== "object" || typeof e.code !== "string" || typeof e.syscall !== "string") return err;
  if (e.syscall === "bind" || e.syscall === "listen") {
    const detail = port > 0 ? `${address}:${port}` : address;
    const description = typeof e.errno === "number" ? getSystemErrorMap().get(e.errno)?.[1] : undefined;
    if (description !== undefined) e.message = `listen ${e.code}: ${description} ${detail}`;
    else e.message = e.message.replace(/^bind /, "listen ");
    e.syscall = "listen";
  }
  e.address = address;
  if (port !== 0) e.port = port;
  return e;
}

/** A native listening socket, feeding accepted connections to a server. */
export class NativeListener {
  readonly handle: NativeServer;
  constructor(
    handle: NativeServer,
    readonly onConnection: (socket: NativeSocket) => void,
    readonly onAcceptError: (code: string) => void,
  ) {
    this.handle = handle;
    (handle as OwnedServer)[kSocket] = this;
  }

  /** Listens on TCP. @throws an errno-style Error (EADDRINUSE, ...). */
  static tcp(host: string, port: number, backlog: number, ipv6Only: boolean, reusePort: boolean, onConnection: (s: NativeSocket) => void, onAcceptError: (code: string) => void): NativeListener {
    const native = requireAddon();
    let handle: NativeServer;
    try {
      handle = native.listenTcp(host, port, backlog, ipv6Only, reusePort);
    } catch (err) {
      throw asListenError(err, host, port);
    }
    return new NativeListener(handle, onConnection, onAcceptError);
  }

  /**
   * A TCP socket bound with SO_REUSEPORT for node:net to listen on (Node 20's
   * node:net cannot set the option): its descriptor.
   * @throws an errno-style Error (EADDRINUSE, ...), as a listen's.
   */
  static bindReusePort(host: string, port: number, ipv6Only: boolean): number {
    const native = requireAddon();
    try {
      return native.bindTcp(host, port, ipv6Only, true);
    } catch (err) {
      throw asListenError(err, host, port);
    }
  }

  /** Listens on a UNIX socket path (or a Linux abstract name). */
  static pipe(path: string, backlog: number, onConnection: (s: NativeSocket) => void, onAcceptError: (code: string) => void): NativeListener {
    const native = requireAddon();
    let handle: NativeServer;
    try {
      handle = native.listenPipe(path, backlog);
    } catch (err) {
      throw asListenError(err, path, -1);
    }
    return new NativeListener(handle, onConnection, onAcceptError);
  }

  /** Listens on a socket this process was handed (`{ fd }`), which it then owns. */
  static fd(fd: number, backlog: number, onConnection: (s: NativeSocket) => void, onAcceptError: (code: string) => void): NativeListener {
    // Throws "listen EBADF: bad file descriptor fd 9" and the like.
    return new NativeListener(requireAddon().listenFd(fd, backlog), onConnection, onAcceptError);
  }

  /** `{ address, port, family }` like net.Server#address(), or the path. */
  address(): { address: string; port: number; family: string } | string | null {
    const a = this.handle.address();
    if (a === null) return null;
    if ("path" in a) return a.path;
    return { address: a.address, port: a.port, family: a.family === 6 ? "IPv6" : "IPv4" };
  }

  get fd(): number {
    return this.handle.fd;
  }

  close(): void {
    (this.handle as OwnedServer)[kSocket] = undefined;
    this.handle.close();
  }
}
