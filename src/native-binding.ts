/**
 * Loader and types for the native transport: the `pants_native` Node-API
 * addon (C sources in native/, built by binding.gyp into
 * build/Release/pants_native.node). It drives libuv TCP and pipe handles on
 * Node's own event loop, without Node's stream layer.
 *
 * The addon is optional: {@link loadNative} returns null when it is not built,
 * fails to load, or `PANTS_TS_TRANSPORT=js` asks for the pure-JS transport,
 * and {@link nativeLoadError} says why.
 *
 * Ground rules of the raw API (the addon's contract):
 * - JS is called only from the event loop, through the callbacks given to
 *   `init()`, never from inside a method call. Errors a method discovers at
 *   once (a connect to an unreachable address, a write on a dead socket) still
 *   arrive through the callbacks, on a later loop iteration.
 * - After `close()` only `onClose` is delivered for that connection. After
 *   `onClose` the object is inert: `write`, `writev` and `shutdown` throw,
 *   everything else is a no-op (`address()` gives null, `fd` -1,
 *   `pendingBytes()` 0).
 * - The addon itself knows connections by an id (a small integer; see
 *   native/common.h): its `conn.*` functions take the id first and its
 *   callbacks pass it first. This module turns ids into the
 *   {@link NativeConn} objects below, one small JS object per connection,
 *   so the addon needs no wrapper object or reference of its own.
 * - A callback that throws does not break the addon: the exception goes to
 *   `onUncaught`.
 * @module
 */
import { Buffer } from "node:buffer";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** A TCP address as the addon reports it. */
export interface NativeTcpAddress {
  address: string;
  port: number;
  family: 4 | 6;
}

/** A UNIX socket address; an abstract name starts with "\0"; "" when unnamed. */
export interface NativePipeAddress {
  path: string;
}

export type NativeAddress = NativeTcpAddress | NativePipeAddress;

/** Framing modes of {@link NativeConn.setFraming}: raw, bytes delimiter, fixed size. */
export const NativeFraming = { RAW: 0, DELIMITER: 1, SIZE: 2 } as const;
export type NativeFramingKind = (typeof NativeFraming)[keyof typeof NativeFraming];

/** The `value` each framing kind takes. */
export interface NativeFramingValue {
  0: null;
  1: Buffer;
  2: number;
}

/** A listening socket returned by `listenTcp` / `listenPipe` / `listenFd`. */
export interface NativeServer {
  /** `{ address, port, family }` for TCP, `{ path }` for pipes; null once closed. */
  address(): NativeAddress | null;
  /** Stops listening (uv_close). Idempotent. Connections already accepted stay open. */
  close(): void;
  /** The listening socket's file descriptor, or -1 once closed. */
  readonly fd: number;
  /** Let the listener keep the process alive (the default) or not. */
  ref(): void;
  unref(): void;
}

/** A TCP or UNIX-socket connection (accepted, or from `connectTcp` / `connectPipe`). */
export interface NativeConn {
  /** Free for the binding's user: the transport keeps its socket here. Null at first. */
  owner: unknown;
  /** Starts reading (onRead / onEnd / onError). Idempotent; a no-op after EOF or close. */
  readStart(): void;
  /** Stops reading. Idempotent. */
  readStop(): void;
  /**
   * Sets how reads are cut into frames:
   * - `0` raw: every read is delivered as is (`value` ignored);
   * - `1` bytes delimiter: `value` is the delimiter (1 byte to 64 KiB), dropped from frames;
   * - `2` fixed size: `value` is the frame size (a positive integer).
   *
   * `limit` is the largest frame allowed (bytes before the delimiter; for size
   * framing max(limit, size)); it is capped at 1 GiB, so `Infinity` is fine.
   * Bytes already pending are kept and framed the new way. With no memory
   * for a delimiter the connection stops reading and fails later, through
   * onError(conn, "ENOMEM", "read"); nothing is thrown.
   */
  setFraming<K extends NativeFramingKind>(kind: K, value: NativeFramingValue[K], limit: number): void;
  /** Drops the addon's pending (not yet framed) bytes and goes back to raw. */
  resetFraming(): void;
  /** The addon's pending (not yet framed) bytes (a copy; undefined when none), then back to raw with them dropped. */
  takePending(): Buffer | undefined;
  /**
   * `true`: a read delivered alone (not batched, nothing pending before it),
   * raw or framed, is lent: its `block` is memory the addon reuses, detached
   * as soon as the onRead call returns (every view of it then reads as
   * empty). Bytes of it that a write queues, and the unframed tail the addon
   * keeps, are copied; anything else that must outlive the call copies them
   * itself. Default false.
   */
  lendReads(enable: boolean): void;
  /**
   * Writes now what the socket takes and queues the rest (keeping `data`
   * alive until written). Returns the bytes that did not go out at once and
   * were queued: 0 means all went out (no onWritten for this write);
   * otherwise onWritten follows when every queued write has completed
   * ({@link pendingBytes} is the live count: libuv may already have sent
   * part of the queued bytes). Writes keep their order.
   * @throws Error (code ERR_STREAM_DESTROYED / ERR_STREAM_WRITE_AFTER_END)
   *   after close() or shutdown(); TypeError for a non-Buffer.
   *   With `length`, only `data`'s first `length` bytes are written
   *   (RangeError unless 0 ≤ length ≤ data.length), and what is queued of
   *   them is copied: a caller that joins small writes into one buffer may
   *   reuse it as soon as the call returns.
   */
  write(data: Uint8Array, length?: number): number;
  /** Like {@link write} for several buffers in one system call. */
  writev(chunks: readonly Uint8Array[]): number;
  /** Bytes queued but not yet handed to the OS. */
  pendingBytes(): number;
  /**
   * TCP on Linux: the bytes the peer has acknowledged so far (only grows),
   * or -1 when nothing written is still in the kernel or this cannot be
   * known (a pipe, another OS).
   */
  deliveredBytes(): number;
  /** Every byte read so far, including a partial frame the addon keeps without calling JS. */
  bytesRead(): number;
  /** Sends FIN once the queued writes are out (onShutdown, or onError(…, "shutdown")). Idempotent. */
  shutdown(): void;
  /** Closes the handle (idempotent); queued writes are dropped; onClose follows. */
  close(): void;
  /** The local address, or null if closed or unknown. */
  address(): NativeAddress | null;
  /** The peer's address, or null if closed, not connected or unknown. */
  peerAddress(): NativeAddress | null;
  /** The socket's file descriptor, or -1 once closed. */
  readonly fd: number;
  /** TCP_NODELAY (on by default for accepted and connected TCP sockets; no-op for pipes). */
  setNoDelay(enable?: boolean): void;
  /** SO_KEEPALIVE; `delaySeconds` > 0 also sets the idle time before probes. */
  setKeepAlive(enable: boolean, delaySeconds?: number): void;
  /** Let the connection keep the process alive (the default) or not. */
  ref(): void;
  unref(): void;
}

/** Names of libuv errors, e.g. "ECONNRESET" (uv_err_name). */
export type NativeErrorCode = string;

/** The callbacks registered once with {@link NativeAddon.init}. */
export interface NativeCallbacks {
  /** A connection was accepted on `server`; it is not reading yet. */
  onConnection(server: NativeServer, conn: NativeConn): void;
  /**
   * Bytes arrived: the `length` bytes of `block` from `offset` (the data;
   * no Buffer is made of it, so a caller that only wants the frames makes
   * views of those alone). Raw mode: `frames` is null and `count` 0.
   * Framing mode: `frames` holds, from index `first`, `count` pairs
   * [start, end) relative to `offset` (delimiters excluded) followed by
   * `rest`, the offset just after the last complete frame; the data always
   * starts at the first byte not yet delivered as a frame, so after
   * `resetFraming()` inside this call the bytes from `rest` on are exactly
   * what the addon had pending. `count` -1: a frame exceeded the limit; the
   * data starts at that frame, the addon switched to raw and kept nothing.
   * `frames` is reused by the next call: read it now.
   */
  onRead(conn: NativeConn, block: ArrayBuffer, offset: number, length: number, frames: Int32Array | null, first: number, count: number): void;
  /** The peer sent FIN (EOF). Writing is still possible. */
  onEnd(conn: NativeConn): void;
  /** A socket error (reading stops on a read error). */
  onError(conn: NativeConn, code: NativeErrorCode, syscall: "read" | "write" | "shutdown"): void;
  /** Every write queued so far has completed (after a write that returned > 0). */
  onWritten(conn: NativeConn): void;
  /** A connectTcp / connectPipe finished: `code` null on success. Never called synchronously. */
  onConnect(conn: NativeConn, code: NativeErrorCode | null): void;
  /** The handle is closed; the object is inert from now on. Exactly once per connection. */
  onClose(conn: NativeConn): void;
  /** A callback threw. */
  onUncaught(err: unknown): void;
  /** Accepting a connection failed (optional). */
  onAcceptError?(server: NativeServer, code: NativeErrorCode): void;
  /** shutdown() completed: the FIN is out (optional). */
  onShutdown?(conn: NativeConn): void;
}

/** The addon's connection functions (`exports.conn`): each takes the connection's id first. */
interface RawConnFunctions {
  readStart(id: number): void;
  readStop(id: number): void;
  setFraming(id: number, kind: NativeFramingKind, value: Buffer | number | null, limit: number): void;
  resetFraming(id: number): void;
  takePending(id: number): Buffer | undefined;
  lendReads(id: number, enable: boolean): void;
  write(id: number, data: Uint8Array, length?: number): number;
  writev(id: number, chunks: readonly Uint8Array[]): number;
  pendingBytes(id: number): number;
  deliveredBytes(id: number): number;
  bytesRead(id: number): number;
  shutdown(id: number): void;
  close(id: number): void;
  address(id: number): NativeAddress | null;
  peerAddress(id: number): NativeAddress | null;
  fd(id: number): number;
  setNoDelay(id: number, enable?: boolean): void;
  setKeepAlive(id: number, enable: boolean, delaySeconds?: number): void;
  ref(id: number): void;
  unref(id: number): void;
}

/** The callbacks as the addon itself calls them: connection ids, and reads as entries of a table. */
interface RawNativeCallbacks {
  onConnection(server: NativeServer, id: number): void;
  /**
   * Every read, alone or with the others of a batch: from `table[2]`,
   * `count` entries [size, count, id, offset, length, pairs..., rest]
   * (native/read.c; count 0: raw, -1: overflow), their bytes in `block`.
   * The callee writes the position of the entry it is about to deliver to
   * `table[0]` and skips entries whose count is {@link STALE}.
   */
  onReadBatch(block: ArrayBuffer, table: Int32Array, count: number): void;
  onEnd(id: number): void;
  onError(id: number, code: NativeErrorCode, syscall: "read" | "write" | "shutdown"): void;
  onWritten(id: number): void;
  onConnect(id: number, code: NativeErrorCode | null): void;
  onClose(id: number): void;
  onUncaught(err: unknown): void;
  onAcceptError?(server: NativeServer, code: NativeErrorCode): void;
  onShutdown?(id: number): void;
}

/** The addon's exports, as loaded. */
interface RawNativeAddon {
  readonly maxDelimiter: number;
  readonly maxFrameSize: number;
  init(callbacks: RawNativeCallbacks): void;
  listenTcp(host: string, port: number, backlog: number, ipv6Only: boolean, reusePort?: boolean): NativeServer;
  bindTcp(host: string, port: number, ipv6Only: boolean, reusePort: boolean): number;
  listenPipe(path: string, backlog: number): NativeServer;
  listenFd(fd: number, backlog: number): NativeServer;
  /** With `localHost`, the socket is bound to it (and `localPort`) before it connects. */
  connectTcp(host: string, port: number, localHost?: string, localPort?: number): number;
  connectPipe(path: string): number;
  deliveredBytesOf(fd: number): number;
  conn: RawConnFunctions;
}

/** An entry of onReadBatch that left the batch (native/read.c PN_BT_STALE). */
const STALE = -0x80000000;
/** Where onReadBatch's entries start (table[0] is the cursor). */
const BATCH_FIRST = 2;

/** The slot part of a connection id (the rest is the slot's generation; native/common.h PN_SLOT_BITS). */
const SLOT_MASK = (1 << 22) - 1;

/**
 * The addon in the documented shape: connection ids turned into
 * {@link NativeConn} objects (one per connection, made here, found again by
 * the id's slot), and the read table's entries as onRead calls, frames
 * null in raw mode.
 */
function adapt(raw: RawNativeAddon): NativeAddon {
  const fn = raw.conn;
  /** The live connections by slot. */
  const conns: Array<Conn | undefined> = [];

  class Conn implements NativeConn {
    owner: unknown = null;
    /** The addon's id; -1 once closed (the addon treats it as a closed connection). */
    id: number;
    constructor(id: number) {
      this.id = id;
    }
    readStart(): void {
      fn.readStart(this.id);
    }
    readStop(): void {
      fn.readStop(this.id);
    }
    setFraming<K extends NativeFramingKind>(kind: K, value: NativeFramingValue[K], limit: number): void {
      fn.setFraming(this.id, kind, value, limit);
    }
    resetFraming(): void {
      fn.resetFraming(this.id);
    }
    takePending(): Buffer | undefined {
      return fn.takePending(this.id);
    }
    lendReads(enable: boolean): void {
      fn.lendReads(this.id, enable);
    }
    write(data: Uint8Array, length?: number): number {
      return fn.write(this.id, data, length);
    }
    writev(chunks: readonly Uint8Array[]): number {
      return fn.writev(this.id, chunks);
    }
    pendingBytes(): number {
      return fn.pendingBytes(this.id);
    }
    deliveredBytes(): number {
      return fn.deliveredBytes(this.id);
    }
    bytesRead(): number {
      return fn.bytesRead(this.id);
    }
    shutdown(): void {
      fn.shutdown(this.id);
    }
    close(): void {
      fn.close(this.id);
    }
    address(): NativeAddress | null {
      return fn.address(this.id);
    }
    peerAddress(): NativeAddress | null {
      return fn.peerAddress(this.id);
    }
    get fd(): number {
      return fn.fd(this.id);
    }
    setNoDelay(enable?: boolean): void {
      fn.setNoDelay(this.id, enable);
    }
    setKeepAlive(enable: boolean, delaySeconds?: number): void {
      fn.setKeepAlive(this.id, enable, delaySeconds);
    }
    ref(): void {
      fn.ref(this.id);
    }
    unref(): void {
      fn.unref(this.id);
    }
  }

  /**
   * The object for a new id. An object the slot held before needs no
   * clearing: its id has another generation, so find() and the addon both
   * treat it as a closed connection.
   */
  function track(id: number): Conn {
    const conn = new Conn(id);
    conns[id & SLOT_MASK] = conn;
    return conn;
  }

  /** The object for a live id, or null for one this module never handed out (its creation failed half-way). */
  function find(id: number): Conn | null {
    const conn = conns[id & SLOT_MASK];
    return conn !== undefined && conn.id === id ? conn : null;
  }

  return {
    maxDelimiter: raw.maxDelimiter,
    maxFrameSize: raw.maxFrameSize,
    init(callbacks: NativeCallbacks): void {
      const { onRead, onEnd, onError, onWritten, onConnect, onClose, onShutdown, onUncaught } = callbacks;
      raw.init({
        onConnection: (server, id) => callbacks.onConnection(server, track(id)),
        onReadBatch(block, table, count) {
          let pos = BATCH_FIRST;
          for (let k = 0; k < count; k++) {
            // A handler transferred a chunk's ArrayBuffer (to a worker): the
            // later entries' bytes went with it. Left undelivered, they leave
            // the batch, and the addon delivers each alone from its own copy.
            if (block.byteLength === 0) return;
            table[0] = pos;
            const n = table[pos + 1]!;
            if (n !== STALE) {
              const conn = find(table[pos + 2]!);
              // One entry failing must not cost the others their reads.
              if (conn !== null) {
                try {
                  onRead(conn, block, table[pos + 3]!, table[pos + 4]!, n === 0 ? null : table, pos + 5, n);
                } catch (err) {
                  onUncaught(err);
                }
              }
            }
            pos += table[pos]!;
          }
          table[0] = 0x7fffffff;
        },
        onEnd(id) {
          const conn = find(id);
          if (conn !== null) onEnd(conn);
        },
        onError(id, code, syscall) {
          const conn = find(id);
          if (conn !== null) onError(conn, code, syscall);
        },
        onWritten(id) {
          const conn = find(id);
          if (conn !== null) onWritten(conn);
        },
        onConnect(id, code) {
          const conn = find(id);
          if (conn !== null) onConnect(conn, code);
        },
        onClose(id) {
          const conn = find(id);
          if (conn === null) return;
          conns[id & SLOT_MASK] = undefined;
          conn.id = -1; // inert from now on, whatever JS does with it
          onClose(conn);
        },
        onUncaught: callbacks.onUncaught,
        onAcceptError: callbacks.onAcceptError,
        onShutdown:
          onShutdown === undefined
            ? undefined
            : (id) => {
                const conn = find(id);
                if (conn !== null) onShutdown(conn);
              },
      });
    },
    listenTcp: raw.listenTcp,
    bindTcp: raw.bindTcp,
    listenPipe: raw.listenPipe,
    listenFd: raw.listenFd,
    connectTcp: (host, port, localHost, localPort) => track(raw.connectTcp(host, port, localHost, localPort)),
    connectPipe: (path) => track(raw.connectPipe(path)),
    deliveredBytesOf: raw.deliveredBytesOf,
  };
}

/** The addon's exports. */
export interface NativeAddon {
  /** The longest bytes delimiter `setFraming(1, ...)` takes (64 KiB). */
  readonly maxDelimiter: number;
  /** The largest frame size and limit `setFraming` takes (1 GiB). */
  readonly maxFrameSize: number;
  /** Registers the callbacks (call again to replace them). Required before anything else. */
  init(callbacks: NativeCallbacks): void;
  /**
   * Binds (SO_REUSEADDR; SO_REUSEPORT when `reusePort`) and listens. `host`
   * must be an IP literal; `backlog` <= 0 means 511.
   * @throws Error with `.code` (EADDRINUSE, EACCES, EADDRNOTAVAIL, EINVAL, ENOTSUP...) and `.syscall` ("bind" / "listen" / "setsockopt").
   */
  listenTcp(host: string, port: number, backlog: number, ipv6Only: boolean, reusePort?: boolean): NativeServer;
  /**
   * Binds a TCP socket as listenTcp does, without listening, and returns its
   * descriptor, for node:net to listen on (`listen({ fd })`), which then owns it.
   * @throws Error with `.code` and `.syscall` ("socket" / "setsockopt" / "bind").
   */
  bindTcp(host: string, port: number, ipv6Only: boolean, reusePort: boolean): number;
  /** Listens on a UNIX socket path or a Linux abstract name ("\0name"). The path is removed on close. */
  listenPipe(path: string, backlog: number): NativeServer;
  /**
   * Listens on a stream socket this process was handed (TCP or UNIX; bound,
   * usually listening already), which the server then owns. A UNIX socket's
   * path is not removed on close.
   * @throws Error with `.code` (EBADF, ENOTSOCK, ENOTSUP for a datagram socket, EAFNOSUPPORT...) and `.syscall`.
   */
  listenFd(fd: number, backlog: number): NativeServer;
  /** Connects to an IP literal; onConnect follows. */
  /** With `localHost`, the socket is bound to it (and `localPort`) before it connects. */
  connectTcp(host: string, port: number, localHost?: string, localPort?: number): NativeConn;
  /** Connects to a UNIX socket path or abstract name; onConnect follows. */
  connectPipe(path: string): NativeConn;
  /**
   * A TCP descriptor the addon does not own (node:net's): the bytes the peer
   * has acknowledged so far, or -1 when nothing written is still in the
   * kernel or this cannot be known (not TCP, not Linux), as
   * {@link NativeConn.deliveredBytes}.
   */
  deliveredBytesOf(fd: number): number;
}

/** The addon file, relative to the package root, as the install script (or `npm run build:native`) builds it. */
const ADDON_PATH = join("build", "Release", "pants_native.node");
/** The addon prebuilt for this platform, as the package may carry it (native/prebuild.cjs, run when packed). */
const PREBUILT_PATH = join("prebuilds", `${process.platform}-${process.arch}`, "pants_native.node");

/**
 * Why the prebuilt addon cannot be used in this process, else null: on Linux
 * it is linked against glibc, so not under musl (Alpine), whose loader could
 * not resolve it.
 */
function prebuiltUnusable(): string | null {
  if (process.platform !== "linux") return null;
  // The report's header names glibc's version when it is glibc. Its network
  // section, which may look up host names, is left out where Node can (20.13+).
  const reporter = process.report as (NodeJS.ProcessReport & { excludeNetwork?: boolean }) | undefined;
  if (reporter === undefined) return null;
  const excluded = reporter.excludeNetwork;
  reporter.excludeNetwork = true;
  let report: { header?: { glibcVersionRuntime?: unknown } };
  try {
    report = reporter.getReport() as typeof report;
  } finally {
    reporter.excludeNetwork = excluded;
  }
  return typeof report.header?.glibcVersionRuntime === "string" ? null : "the prebuilt addon is linked against glibc, and this C library is another (musl?)";
}

let loaded: NativeAddon | null | undefined;
let loadError: string | null = null;

/** The package root: the nearest directory above this module holding pants-ts' package.json. */
function packageRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  let firstWithPackageJson: string | null = null;
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      firstWithPackageJson ??= dir;
      try {
        const parsed: unknown = JSON.parse(readFileSync(pkg, "utf8"));
        if (typeof parsed === "object" && parsed !== null && (parsed as { name?: unknown }).name === "pants-ts") return dir;
      } catch {
        // Not ours, or unreadable: keep walking up.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) return firstWithPackageJson;
    dir = parent;
  }
}

/**
 * The native addon, or null when it is not available (see
 * {@link nativeLoadError}). Loaded once; `PANTS_TS_TRANSPORT=js` forces null.
 */
export function loadNative(): NativeAddon | null {
  if (process.env.PANTS_TS_TRANSPORT === "js") {
    loadError = "the native addon is disabled by PANTS_TS_TRANSPORT=js";
    return null;
  }
  if (loaded !== undefined) return loaded;
  const root = packageRoot();
  if (root === null) {
    loadError = "cannot find the pants-ts package root (no package.json above this module)";
    loaded = null;
    return null;
  }
  // The addon built here first; else the one the package carries for this
  // platform, but never in a git checkout, where one left by `npm pack` may
  // be older than native/ (as the install script, which builds there).
  const built = join(root, ADDON_PATH);
  const prebuilt = join(root, PREBUILT_PATH);
  const candidates = existsSync(join(root, ".git")) ? [built] : [built, prebuilt];
  const failures: string[] = [];
  for (const file of candidates) {
    if (!existsSync(file)) continue;
    const unusable = file === prebuilt ? prebuiltUnusable() : null;
    if (unusable !== null) {
      failures.push(unusable);
      continue;
    }
    try {
      loaded = adapt(createRequire(import.meta.url)(file) as RawNativeAddon);
      loadError = null;
      return loaded;
    } catch (err) {
      failures.push(`${file} failed to load: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  loaded = null;
  // npm 12 skips a dependency's install script (the addon's build) until the
  // application approves it: the likeliest reason it is missing, so the hint says how.
  const hint = "npm 12 runs pants-ts's install script only once approved: npm install-scripts approve pants-ts, then npm rebuild pants-ts; in a checkout, npm run build:native";
  if (failures.length > 0) loadError = `the native addon failed to load (${failures.join("; ")}${existsSync(built) ? "" : `; to build it here, ${hint}`})`;
  else loadError = `the native addon is not built (${built} is missing, and the package has no prebuilt one for ${process.platform}-${process.arch}; ${hint})`;
  return null;
}

/** Why {@link loadNative} returned null (null when it loaded, or was not tried yet). */
export function nativeLoadError(): string | null {
  return loadError;
}
