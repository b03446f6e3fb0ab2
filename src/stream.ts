/**
 * Stream: one TCP/TLS/UNIX connection, server side or client side.
 *
 * Data flows one way: socket → receive buffer → framer → onRead, and
 * write → write queue → socket. Socket events reach the stream through
 * module-level listeners (no closure per connection).
 */
import net from "node:net";
import tls from "node:tls";
import { open as fsOpen, read as fsRead, close as fsClose } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import { TextDecoder } from "node:util";
import { isUtf8 } from "node:buffer";
import type { Duplex } from "node:stream";
import type { FileHandle } from "node:fs/promises";
import type { PeerCertificate } from "node:tls";
import { Channel, diagnostics, isPeerError } from "./channel.js";
import type { ChannelOptions } from "./channel.js";
import type { Stats } from "./engine.js";
import { parseAddress, fromNodeAddress, copyAddress, formatAddress } from "./address.js";
import type { Address, ParsedAddress } from "./address.js";
import {
  BufferOverflowError,
  ChannelStateError,
  ConnectError,
  InvalidReadDelimiterError,
  TimeoutError,
  describe,
  rangeError,
  typeError,
} from "./errors.js";
import { log } from "./log.js";
import { ReceiveBuffer } from "./framing/receive-buffer.js";
import {
  FAILED,
  FRAME,
  FRAME_ARGS,
  NEED_MORE,
  OVERFLOW,
  compileDelimiter,
  isFramingError,
} from "./framing/delimiter.js";
import type { FrameOut, Framer, ReadDelimiter } from "./framing/delimiter.js";
import { Struct } from "./framing/struct.js";
import { NetStruct } from "./framing/netstruct.js";
import { compileClientTls, sniName, checkPantsFlags, compileServerTls } from "./tls.js";
import type { SslOptions } from "./tls.js";
import type { Server } from "./server.js";

/** Options of the {@link Stream} constructor. */
export interface StreamOptions extends ChannelOptions {
  /** An already-connected socket (or any Duplex) to wrap. */
  socket?: Duplex;
  /** TLS options: the stream starts TLS as soon as it is connected. */
  sslOptions?: SslOptions;
}

// ---------------------------------------------------------------------------
// Internal symbols shared with the server.

/** @internal The stream that owns a socket. */
export const kStream: unique symbol = Symbol("pants-ts.stream");
/** @internal Set by the server on a TLSSocket whose server-side handshake has not run yet. */
export const kTlsPending: unique symbol = Symbol("pants-ts.tlsPending");
/** @internal Set by the server: the client's address from a PROXY header. */
export const kProxyRemote: unique symbol = Symbol("pants-ts.proxyRemote");
/** @internal Set by the server: the underlying TCP socket under a TLSSocket. */
export const kRawSocket: unique symbol = Symbol("pants-ts.rawSocket");

interface OwnedSocket extends Duplex {
  [kStream]?: Stream;
  [kTlsPending]?: boolean;
  [kProxyRemote]?: Address | null;
  [kRawSocket]?: net.Socket;
}

// States.
const S_INIT = 0; // no socket yet
const S_CONNECTING = 1; // client connect (or TLS client handshake) under way
const S_PENDING = 2; // connected; TLS handshake or the onConnect tick pending
const S_OPEN = 3;
const S_CLOSING = 4; // close(true): flushing
const S_CLOSED = 5;

// Reasons reading is paused (a bit mask).
const P_USER = 1;
const P_BACKPRESSURE = 2;

/** Bytes still arriving after close are read and discarded this long at most. */
const LINGER_MS = 2000;
/** A close(true) that cannot hand its data to the OS for this long is forced. */
const DRAIN_TIMEOUT_MS = 30_000;
/** Below this, queued chunks are joined into one buffer; above, written with writev. */
const JOIN_LIMIT = 64 * 1024;
/** File reads per chunk for writeFile. */
const FILE_CHUNK = 64 * 1024;

const EMPTY_ARGS: readonly unknown[] = [];

/** A queued writeFile. */
interface FileJob {
  readonly file: string | number | FileHandle;
  readonly nbytes: number;
  readonly offset: number;
}

/** A queued STARTTLS upgrade. */
interface TlsJob {
  readonly tls: true;
  readonly options: SslOptions;
}

type QueueItem = Buffer | FileJob | TlsJob;

// ---------------------------------------------------------------------------
// Module-level socket listeners: `this` is the socket.

function onSocketData(this: OwnedSocket, chunk: Buffer): void {
  this[kStream]?._onData(chunk);
}
function onSocketEnd(this: OwnedSocket): void {
  this[kStream]?._onEnd();
}
function onSocketError(this: OwnedSocket, err: Error): void {
  const stream = this[kStream];
  if (stream) stream._onSocketError(err);
  else log.current.debug({ err }, "Socket error after its stream closed.");
}
function onSocketClose(this: OwnedSocket): void {
  const stream = this[kStream];
  if (stream) stream._onSocketClose();
  const linger = (this as OwnedSocket & { [kLinger]?: ReturnType<typeof setTimeout> })[kLinger];
  if (linger !== undefined) clearTimeout(linger);
}
function onSocketConnect(this: OwnedSocket): void {
  this[kStream]?._onTcpConnect();
}
function onSocketSecure(this: OwnedSocket): void {
  this[kStream]?._onSecure();
}
function discardData(): void {}
function lingerExpired(sock: Duplex): void {
  sock.destroy();
}
const kLinger: unique symbol = Symbol("pants-ts.linger");

// Writes made outside a read dispatch are flushed together at the end of the turn.
const dirty: Stream[] = [];
let flushScheduled = false;
function flushDirty(): void {
  flushScheduled = false;
  for (let i = 0; i < dirty.length; i++) dirty[i]!._flushQueued();
  dirty.length = 0;
}

const structCache = new Map<string, Struct>();

/**
 * A connection. Subclass it and override the `on*` handlers; a
 * {@link Server} makes one instance per accepted connection, or call
 * {@link connect} for a client.
 */
export class Stream extends Channel {
  /** The server that accepted this connection, else `null`. */
  server: Server | null = null;

  /**
   * Regex delimiters: true (default) delivers the bytes before the first
   * match; false delivers the match object of a match anchored at the start.
   */
  regexSearch = true;

  // Connection state.
  #state = S_INIT;
  #sock: OwnedSocket | null = null;
  #raw: net.Socket | null = null;
  #connId = 0;
  #serverSide = false;
  #peerEnded = false;
  #readyPromise: Promise<Stream> | null = null;
  #readyResolve: ((s: Stream) => void) | null = null;
  #readyReject: ((e: Error) => void) | null = null;
  #connectError: Error | null = null;
  #everConnected = false;
  #remoteOverride: Address | null | undefined = undefined;
  #localOverride: Address | null | undefined = undefined;
  #remote: Address | null = null;
  #local: Address | null = null;
  #connectTarget: ParsedAddress | null = null;

  // TLS.
  #sslOptions: SslOptions | null = null;
  #tls: tls.TLSSocket | null = null;
  #tlsDone = false;
  #tlsUpgrading = false;

  // Read path.
  #rb = new ReceiveBuffer();
  #out: FrameOut = { value: undefined, args: null, error: null };
  #framer: Framer = compileDelimiter(null);
  #bufferSize = 65536;
  #encoding: BufferEncoding | null = null;
  #textDecoder: StringDecoder | TextDecoder | null = null;
  #paused = 0;
  #flowing = false;
  #inDispatch = false;
  #processScheduled = false;

  // Write path.
  #wq: QueueItem[] = [];
  #wqBytes = 0;
  #inflight = 0;
  #fileActive = false;
  #flushQueued = false;
  #afterWrite: ((err?: Error | null) => void) | null = null;
  #writeHighWaterMark = 1024 * 1024;
  #writeBufferLimit = 64 * 1024 * 1024;
  #writeOverflowed = false;

  // Timeouts.
  #idleTimeout = 0;
  #active = false;
  #idleSince = 0;
  #deadline = 0;
  #deadlineKind: "handshake" | "drain" | null = null;
  #timed = false;

  #statsServer: Stats | null = null;

  /**
   * @param options `socket` wraps an already-connected socket or Duplex;
   *   `sslOptions` starts TLS once connected; `engine` picks the engine.
   */
  constructor(options?: StreamOptions) {
    super(options);
    const socket = options?.socket;
    if (options?.sslOptions !== undefined) {
      checkPantsFlags(options.sslOptions, undefined);
      this.#sslOptions = options.sslOptions;
    }
    if (socket !== undefined) {
      if (socket === null || typeof (socket as Duplex).write !== "function" || typeof (socket as Duplex).on !== "function") {
        throw typeError(`The socket option must be a net.Socket or another Duplex stream, got ${describe(socket)}.`);
      }
      if ((socket as OwnedSocket)[kStream] !== undefined) {
        throw new ChannelStateError("This socket already belongs to another stream.");
      }
      this.#adopt(socket as OwnedSocket);
    }
  }

  // -------------------------------------------------------------------------
  // Public state

  /** True from the moment the connection exists until it closes (or starts closing). */
  get connected(): boolean {
    return this.#state === S_PENDING || this.#state === S_OPEN || this.#state === S_CLOSING;
  }

  /** True while a client connect (including its TLS handshake) is under way. */
  get connecting(): boolean {
    return this.#state === S_CONNECTING;
  }

  /** True once the stream has closed (after which `onClose` has run or is running). */
  get closed(): boolean {
    return this.#state === S_CLOSED;
  }

  /** True while `close(true)` waits for the outgoing buffer to drain. */
  get closing(): boolean {
    return this.#state === S_CLOSING;
  }

  /** True when TLS is enabled (being negotiated or established). */
  get sslEnabled(): boolean {
    return this.#tls !== null || this.#tlsUpgrading || (this.#sslOptions !== null && this.#state <= S_CONNECTING);
  }

  /** The OS file descriptor, where Node exposes it. */
  get fileno(): number | null {
    const raw = this.#raw as (net.Socket & { _handle?: { fd?: number } }) | null;
    const fd = raw?._handle?.fd;
    return typeof fd === "number" && fd >= 0 ? fd : null;
  }

  /** The peer's address (or the PROXY header's client); assign to override, `undefined` to restore. */
  get remoteAddress(): Address | null {
    return copyAddress(this.#remoteOverride !== undefined ? this.#remoteOverride : this.#remote);
  }
  set remoteAddress(value: Address | null | undefined) {
    if (value !== undefined && value !== null) parseAddress(value);
    this.#remoteOverride = value === undefined ? undefined : copyAddress(value);
  }

  /** This end's address; assign to override, `undefined` to restore. */
  get localAddress(): Address | null {
    return copyAddress(this.#localOverride !== undefined ? this.#localOverride : this.#local);
  }
  set localAddress(value: Address | null | undefined) {
    if (value !== undefined && value !== null) parseAddress(value);
    this.#localOverride = value === undefined ? undefined : copyAddress(value);
  }

  /**
   * How incoming bytes are cut into frames for `onRead` (see the README's
   * table). May be changed inside `onRead`: the rest of the buffer is framed
   * by the new delimiter in the same turn.
   * @throws TypeError for a value that is no delimiter (`""`, `0`, `-1`, `[]`, `{}`, a regex matching "").
   */
  get readDelimiter(): ReadDelimiter {
    return this.#framer.source;
  }
  set readDelimiter(value: ReadDelimiter) {
    this.#framer = compileDelimiter(value);
    this.#rb.mark = 0;
    this.#rb.discarding = false;
    if (!this.#inDispatch) this.#scheduleProcess();
  }

  /**
   * The largest frame, in bytes, a delimiter may deliver (default 65536).
   * Raised to the delimiter's own size for integers and structs.
   * @throws TypeError unless a positive integer.
   */
  get bufferSize(): number {
    return this.#bufferSize;
  }
  set bufferSize(value: number) {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
      throw typeError(`bufferSize must be a positive integer, got ${describe(value)}.`);
    }
    this.#bufferSize = value;
  }

  /** `null` (default): `onRead` gets Buffers; an encoding: it gets strings. */
  get encoding(): BufferEncoding | null {
    return this.#encoding;
  }
  set encoding(value: BufferEncoding | null) {
    if (value !== null && (typeof value !== "string" || !Buffer.isEncoding(value))) {
      throw typeError(`encoding must be null or a Buffer encoding such as "utf8", got ${describe(value)}.`);
    }
    this.#encoding = value;
    this.#textDecoder = null;
  }

  /** Bytes written but not yet handed to the operating system (queued files not counted). */
  get bufferedAmount(): number {
    return this.#wqBytes + (this.#sock !== null ? this.#sock.writableLength : 0);
  }

  /** Above this many buffered bytes the stream stops reading until `onWrite` (default 1 MiB). */
  get writeHighWaterMark(): number {
    return this.#writeHighWaterMark;
  }
  set writeHighWaterMark(value: number) {
    this.#writeHighWaterMark = checkSize("writeHighWaterMark", value);
  }

  /** Above this many buffered bytes `onOverflowError` is called (default 64 MiB). */
  get writeBufferLimit(): number {
    return this.#writeBufferLimit;
  }
  set writeBufferLimit(value: number) {
    this.#writeBufferLimit = checkSize("writeBufferLimit", value);
  }

  /** No bytes either way for this many ms calls `onTimeout()` (0 = off; default from the server). */
  get idleTimeout(): number {
    return this.#idleTimeout;
  }
  set idleTimeout(value: number) {
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw rangeError(`idleTimeout must be a non-negative number of milliseconds, got ${describe(value)}.`);
    }
    this.#idleTimeout = value;
    this.#active = true;
    this.#updateTimed();
  }

  /** The peer's certificate once the TLS handshake is done (empty object if none), else `null`. */
  get peerCertificate(): PeerCertificate | null {
    if (this.#tls === null || !this.#tlsDone) return null;
    return this.#tls.getPeerCertificate(true) as PeerCertificate;
  }

  /** The ALPN protocol agreed in the handshake, or `false`/`null`. */
  get alpnProtocol(): string | false | null {
    if (this.#tls === null || !this.#tlsDone) return null;
    return this.#tls.alpnProtocol ?? false;
  }

  /** The SNI host name: sent (client) or received (server), else `null`. */
  get servername(): string | null {
    if (this.#tls === null) return null;
    const name = (this.#tls as tls.TLSSocket & { servername?: string | false }).servername;
    return typeof name === "string" ? name : null;
  }

  /** True if the peer's certificate was verified against the trusted CAs. */
  get authorized(): boolean {
    return this.#tls !== null && this.#tlsDone && this.#tls.authorized;
  }

  // -------------------------------------------------------------------------
  // Client side

  /**
   * Connects to `address`; `onConnect` (or `onConnectError`, then
   * `onClose`) follows on a later tick. Host names resolve asynchronously.
   * @throws InvalidAddressFormatError synchronously for a bad address.
   * @throws ChannelStateError if connected, connecting, closing or closed.
   */
  connect(address: Address): this {
    if (this.#state === S_CLOSED || this.#state === S_CLOSING) {
      throw new ChannelStateError(`connect() called on closed ${String(this)}.`);
    }
    if (this.#state !== S_INIT) throw new ChannelStateError(`connect() called on active ${String(this)}.`);
    const target = parseAddress(address);
    this.#connectTarget = target;
    this.#state = S_CONNECTING;
    let sock: net.Socket;
    if (target.kind === "unix") {
      sock = net.connect({ path: target.path, allowHalfOpen: true });
    } else {
      const host = target.host === "" ? (target.v6tuple ? "::1" : "127.0.0.1") : target.host;
      const opts: net.TcpNetConnectOpts = { host, port: target.port, allowHalfOpen: true, noDelay: true };
      if (target.family === 0 && target.v6tuple) opts.family = 6;
      sock = net.connect(opts);
    }
    const owned = sock as OwnedSocket;
    owned[kStream] = this;
    this.#sock = owned;
    this.#raw = sock;
    sock.on("error", onSocketError);
    sock.on("close", onSocketClose);
    sock.once("connect", onSocketConnect);
    this.engine._channels.add(this);
    this.engine.stats.open++;
    return this;
  }

  /**
   * Settles when the stream is connected (at `onConnect`, after TLS), or
   * rejects with the connect error. Never an unhandled rejection if unused.
   */
  ready(): Promise<this> {
    return this.#ready() as Promise<this>;
  }

  #ready(): Promise<Stream> {
    if (this.#readyPromise === null) {
      if (this.#everConnected && this.#state !== S_CLOSED) this.#readyPromise = Promise.resolve(this);
      else if (this.#connectError !== null) this.#readyPromise = Promise.reject(this.#connectError);
      else if (this.#state === S_CLOSED) {
        this.#readyPromise = this.#everConnected
          ? Promise.resolve(this)
          : Promise.reject(new ChannelStateError(`${String(this)} closed before it connected.`));
      } else {
        this.#readyPromise = new Promise<Stream>((resolve, reject) => {
          this.#readyResolve = resolve;
          this.#readyReject = reject;
        });
      }
    }
    return this.#readyPromise;
  }

  // -------------------------------------------------------------------------
  // TLS

  /**
   * Enables TLS. Before `connect`: the connection is TLS from the start.
   * On a connected stream (STARTTLS): the upgrade starts once everything
   * already written has been sent; later writes are sent encrypted.
   * `server_side` defaults to true on a stream a server accepted.
   * @throws ChannelStateError if TLS is already enabled, or the stream is closing or closed.
   * @throws RangeError if `do_handshake_on_connect` is not false.
   */
  startSSL(sslOptions: SslOptions = {}): this {
    if (this.#state === S_CLOSED || this.#state === S_CLOSING) {
      throw new ChannelStateError(`startSSL() called on closed ${String(this)}.`);
    }
    if (this.#tls !== null || this.#tlsUpgrading || (this.#sslOptions !== null && this.#state <= S_CONNECTING)) {
      throw new ChannelStateError(`startSSL() called on SSL-enabled ${String(this)}.`);
    }
    checkPantsFlags(sslOptions, undefined);
    if (this.#state === S_INIT || this.#state === S_CONNECTING) {
      this.#sslOptions = sslOptions;
      return this;
    }
    // STARTTLS: queue the upgrade behind the data already written.
    const serverSide = sslOptions.server_side ?? this.#serverSide;
    // Validate (and read files) now, so a bad option throws here, not later.
    if (serverSide) compileServerTls(sslOptions);
    this.#tlsUpgrading = true;
    this.#wq.push({ tls: true, options: { ...sslOptions, server_side: serverSide } });
    this.#flush();
    return this;
  }

  // -------------------------------------------------------------------------
  // Writing

  /**
   * Queues `data`; bytes written in one turn leave in as few system calls
   * as possible. `flush` sends now.
   * @throws ChannelStateError if the stream is not connected, closing or closed.
   * @throws TypeError unless `data` is a string or a Uint8Array.
   */
  write(data: string | Uint8Array, flush = false): void {
    const state = this.#state;
    if (state !== S_OPEN && state !== S_PENDING) this.#writeStateError("write");
    let buf: Buffer;
    if (typeof data === "string") buf = Buffer.from(data, "utf8");
    else if (Buffer.isBuffer(data)) buf = data;
    else if (data instanceof Uint8Array) buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    else throw typeError(`write() expects a string or a Uint8Array, got ${describe(data)}.`);
    if (buf.length === 0) return;
    this.#wq.push(buf);
    this.#wqBytes += buf.length;
    this.#afterQueue(flush);
  }

  /**
   * Sends `nbytes` bytes (0: to the end) of a file from `offset`, in order
   * with other writes, streamed in chunks (never read whole into memory).
   * A path is opened and closed by the stream; a descriptor or FileHandle
   * stays the caller's to close (after `onWrite`). A file that cannot be
   * read is reported to `onWriteError`.
   */
  writeFile(file: string | number | FileHandle, nbytes = 0, offset = 0, flush = false): void {
    const state = this.#state;
    if (state !== S_OPEN && state !== S_PENDING) this.#writeStateError("writeFile");
    const isHandle = typeof file === "object" && file !== null && typeof (file as FileHandle).read === "function";
    if (!(typeof file === "string" && file.length > 0) && !(typeof file === "number" && Number.isInteger(file) && file >= 0) && !isHandle) {
      throw typeError(`writeFile() expects a path, a file descriptor or a FileHandle, got ${describe(file)}.`);
    }
    if (!Number.isSafeInteger(nbytes) || nbytes < 0) throw rangeError(`writeFile() nbytes must be a non-negative integer, got ${describe(nbytes)}.`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw rangeError(`writeFile() offset must be a non-negative integer, got ${describe(offset)}.`);
    this.#wq.push({ file, nbytes, offset });
    this.#afterQueue(flush);
  }

  /**
   * Packs `values` with `options.format` (a Struct format string or a
   * Struct/NetStruct), or with the current Struct/NetStruct read delimiter,
   * and writes the bytes.
   * @throws RangeError if there is no format to use.
   */
  writePacked(values: readonly unknown[], options?: { format?: string | Struct | NetStruct; flush?: boolean }): void {
    const state = this.#state;
    if (state !== S_OPEN && state !== S_PENDING) this.#writeStateError("writePacked");
    if (!Array.isArray(values)) throw typeError(`writePacked() expects an array of values, got ${describe(values)}.`);
    let format = options?.format;
    if (typeof format === "string") {
      let cached = structCache.get(format);
      if (cached === undefined) {
        cached = new Struct(format);
        if (structCache.size < 256) structCache.set(format, cached);
      }
      format = cached;
    }
    if (format === undefined) {
      const delimiter = this.#framer.source;
      if (delimiter instanceof Struct || delimiter instanceof NetStruct) format = delimiter;
    }
    if (!(format instanceof Struct) && !(format instanceof NetStruct)) {
      throw rangeError("No format is available for writing packed data: pass options.format or set a Struct/NetStruct readDelimiter.", "ERR_INVALID_ARG_VALUE");
    }
    this.write(format.pack(...values), options?.flush ?? false);
  }

  /**
   * Sends everything queued now instead of at the end of the turn.
   * @throws ChannelStateError if the stream is not connected, closing or closed.
   */
  flush(): void {
    const state = this.#state;
    if (state !== S_OPEN && state !== S_PENDING) this.#writeStateError("flush");
    this.#flush();
  }

  /** Stops delivering `onRead` and reading from the peer until {@link resumeReading}. */
  pauseReading(): void {
    this.#pause(P_USER);
  }

  /** Undoes {@link pauseReading}; buffered frames are delivered on a later tick. */
  resumeReading(): void {
    this.#resume(P_USER);
  }

  // -------------------------------------------------------------------------
  // Closing

  /**
   * Closes the stream. `flush` true (default): no more `onRead`, everything
   * already written is sent, then the connection closes with a FIN (bytes
   * still arriving are read and discarded for a short linger, so no reset
   * destroys data the peer has not read). `flush` false: unsent data is
   * dropped and the connection closes now. `onClose` runs exactly once.
   */
  close(flush = true): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CLOSING) {
      if (!flush) this.#finishClose(false);
      return;
    }
    if (flush && (state === S_OPEN || state === S_PENDING) && this.#hasPendingWrites()) {
      this.#state = S_CLOSING;
      this.#setDeadline("drain", DRAIN_TIMEOUT_MS);
      this.#flush();
      return;
    }
    this.#finishClose(flush);
  }

  // -------------------------------------------------------------------------
  // Handlers (placeholders)

  /** Placeholder: the connection is established (after TLS, after the PROXY header). */
  onConnect(): void {}
  /**
   * Placeholder: a frame arrived. Its shape depends on `readDelimiter`: a
   * Buffer (a string with `encoding`), a RegExpExecArray (`regexSearch`
   * false), or a Struct's values as separate arguments. Declare the
   * parameters your delimiter delivers, e.g. `onRead(line: Buffer)` or
   * `onRead(kind: number, size: number)`.
   */
  onRead(_data: unknown, ..._more: unknown[]): void {}
  /** Placeholder: the whole outgoing buffer has been handed to the OS. */
  onWrite(): void {}
  /** Placeholder: the stream closed. Called exactly once, last. */
  override onClose(): void {}
  /** A client connect failed; `onClose` follows. Default: log it. */
  onConnectError(err: ConnectError): void {
    log.current.warn({ err, stream: String(this) }, `Connect failed: ${err.message}`);
  }
  /** Reading failed (e.g. a reset); the stream closes. Default: log it (debug for peer errors). */
  onReadError(err: Error): void {
    logPeerError(err, `Read error on ${String(this)}`);
    this.close(false);
  }
  /** Writing failed (e.g. a reset, or a file that cannot be read); the stream closes. Default: log it. */
  onWriteError(err: Error): void {
    logPeerError(err, `Write error on ${String(this)}`);
    this.close(false);
  }
  /** A frame outgrew `bufferSize`, or the outgoing buffer `writeBufferLimit`. Default: close without flushing. */
  onOverflowError(err: BufferOverflowError): void {
    log.current.debug({ err, stream: String(this) }, err.message);
    this.close(false);
  }
  /** No bytes either way for `idleTimeout` ms. Default: close without flushing. */
  onTimeout(): void {
    log.current.debug({ stream: String(this) }, "Idle timeout.");
    this.close(false);
  }
  /** `server.shutdown()` is draining this connection. Default: `close(true)`. */
  onShutdown(): void {
    this.close(true);
  }
  /** Placeholder: the TLS handshake completed (before `onConnect`). */
  onSslHandshake(): void {}
  /**
   * The TLS handshake failed (or timed out); the stream closes after this
   * returns (for a client, `onConnectError` comes first). Default: log at debug.
   */
  onSslHandshakeError(err: Error): void {
    log.current.debug({ err, stream: String(this) }, `TLS handshake failed: ${err.message}`);
  }
  /** TLS could not be set up (bad options at upgrade time); the stream closes. Default: log it. */
  onSslError(err: Error): void {
    logPeerError(err, `TLS error on ${String(this)}`);
    this.close(false);
  }

  // -------------------------------------------------------------------------
  // Internals: attaching sockets

  /** Wraps an already-connected socket (accepted by a server, or given by the user). */
  #adopt(sock: OwnedSocket): void {
    sock[kStream] = this;
    this.#sock = sock;
    const raw = sock[kRawSocket] ?? (sock instanceof net.Socket ? (sock as net.Socket) : null);
    this.#raw = raw;
    const proxied = sock[kProxyRemote];
    this.#captureAddresses(proxied);
    sock.on("error", onSocketError);
    sock.on("close", onSocketClose);
    this.engine._channels.add(this);
    this.engine.stats.open++;
    this.#state = S_PENDING;
    if (sock[kTlsPending] === true) {
      // Server side: the handshake runs now; onConnect follows onSslHandshake.
      this.#serverSide = true;
      this.#tls = sock as unknown as tls.TLSSocket;
      sock.once("secure", onSocketSecure);
      this.#armHandshakeTimeout();
      return;
    }
    if (sock instanceof tls.TLSSocket) {
      this.#tls = sock;
      this.#tlsDone = true;
    }
    if (this.#sslOptions !== null) {
      // The user gave a plain socket and sslOptions: TLS starts now.
      this.#serverSide = this.#sslOptions.server_side ?? false;
      process.nextTick(() => this.#wrapTls(this.#sslOptions ?? {}, true));
      return;
    }
    if ((sock as net.Socket).connecting === true) {
      this.#state = S_CONNECTING;
      sock.once("connect", onSocketConnect);
      return;
    }
    process.nextTick(establishTick, this);
  }

  #captureAddresses(proxied?: Address | null): void {
    const raw = this.#raw;
    if (raw !== null) {
      this.#remote = fromNodeAddress(raw.remoteAddress, raw.remotePort, raw.remoteFamily);
      const local = raw.address();
      this.#local = typeof local === "object" && local !== null && "port" in local ? fromNodeAddress(local.address, local.port, local.family) : null;
      if (this.#remote === null && this.#local === null) {
        // A UNIX socket: Node reports no peer; the path is the server's.
        const target = this.#connectTarget;
        const path = target?.kind === "unix" ? target.path : ((this.server?.localAddress as string | null | undefined) ?? "");
        if (target?.kind === "unix") {
          this.#remote = path;
          this.#local = "";
        } else {
          this.#remote = "";
          this.#local = typeof path === "string" ? path : "";
        }
      }
    }
    if (proxied !== undefined && proxied !== null) this.#remote = proxied;
  }

  /** @internal The TCP connection of a client connect is up. */
  _onTcpConnect(): void {
    if (this.#state !== S_CONNECTING) return;
    this.#captureAddresses();
    this.#state = S_PENDING;
    if (this.#sslOptions !== null) {
      this.#wrapTls(this.#sslOptions, true);
      return;
    }
    this.#establish();
  }

  /**
   * Puts TLS on the current socket. `initial`: the handshake precedes
   * onConnect; otherwise it is a STARTTLS upgrade of an open stream.
   */
  #wrapTls(options: SslOptions, initial: boolean): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    const raw = this.#sock as OwnedSocket;
    const serverSide = options.server_side ?? this.#serverSide;
    let tlsSock: tls.TLSSocket;
    try {
      if (serverSide) {
        const compiled = compileServerTls(options);
        tlsSock = new tls.TLSSocket(raw as unknown as net.Socket, compiled.socketOptions);
      } else {
        const compiled = compileClientTls(options);
        const target = this.#connectTarget;
        const host = target?.kind === "tcp" ? target.host : undefined;
        const connectOptions: tls.ConnectionOptions = { ...compiled.options, socket: raw };
        if (connectOptions.servername === undefined) {
          const sni = sniName(host);
          if (sni !== undefined) connectOptions.servername = sni;
        }
        if (host !== undefined && host !== "") connectOptions.host = host;
        tlsSock = tls.connect(connectOptions);
      }
    } catch (err) {
      this._countError("tls", err as Error);
      if (initial && state === S_CONNECTING) this.#connectError = err as Error;
      this._call1(this.onSslError, err as Error);
      this.#finishClose(false);
      return;
    }
    // Move ownership to the TLS socket; the raw socket keeps only its close listener.
    raw.off("data", onSocketData);
    raw.off("end", onSocketEnd);
    raw.off("error", onSocketError);
    raw.on("error", discardData);
    const owned = tlsSock as unknown as OwnedSocket;
    owned[kStream] = this;
    this.#sock = owned;
    this.#tls = tlsSock;
    this.#tlsDone = false;
    this.#tlsUpgrading = !initial;
    this.#flowing = false;
    tlsSock.on("error", onSocketError);
    tlsSock.on("close", onSocketClose);
    tlsSock.once(serverSide ? "secure" : "secureConnect", onSocketSecure);
    this.#armHandshakeTimeout();
  }

  /** @internal The TLS handshake completed. */
  _onSecure(): void {
    if (this.#state === S_CLOSED || this.#tls === null) return;
    this.#tlsDone = true;
    this.#clearDeadline("handshake");
    const upgrade = this.#tlsUpgrading;
    this.#tlsUpgrading = false;
    this._call0(this.onSslHandshake);
    if (this.#state === S_CLOSED) return;
    if (upgrade) {
      // STARTTLS done: reading resumes on the TLS socket; queued writes go out encrypted.
      this.#wq.shift();
      this.#startFlowing();
      this.#flush();
      this.#scheduleProcess();
      return;
    }
    this.#establish();
  }

  /** @internal onConnect, on a tick after the call that caused it. */
  _establishTick(): void {
    if (this.#state === S_PENDING) this.#establish();
  }

  #establish(): void {
    this.#state = S_OPEN;
    this.#everConnected = true;
    this.engine.stats.accepted++;
    if (this.#idleTimeout > 0) this.#updateTimed();
    if (diagnostics.connectionOpen.hasSubscribers) diagnostics.connectionOpen.publish({ stream: this });
    this._call0(this.onConnect);
    if (this.#state === S_CLOSED) return;
    const resolve = this.#readyResolve;
    this.#readyResolve = null;
    this.#readyReject = null;
    if (resolve !== null) resolve(this);
    if (this.#state === S_OPEN || this.#state === S_CLOSING) {
      this.#startFlowing();
      if (this.#wq.length > 0) this.#flush();
    }
  }

  #startFlowing(): void {
    const sock = this.#sock;
    if (sock === null || this.#flowing) return;
    this.#flowing = true;
    sock.on("end", onSocketEnd);
    sock.on("data", onSocketData);
    // A socket paused explicitly (after a PROXY header, or a STARTTLS
    // upgrade) does not resume when a 'data' listener is added.
    if (this.#paused !== 0) sock.pause();
    else if (sock.isPaused()) sock.resume();
  }

  // -------------------------------------------------------------------------
  // Internals: the read path

  /** @internal A chunk arrived. */
  _onData(chunk: Buffer): void {
    this.#active = true;
    const statsServer = this.#statsServer;
    if (statsServer !== null) statsServer.bytesIn += chunk.length;
    this.engine.stats.bytesIn += chunk.length;
    if (this.#state !== S_OPEN) return; // closing: read and discarded
    const rb = this.#rb;
    this.#inDispatch = true;
    if (rb.length === 0 && this.#framer.source === null && this.#paused === 0 && this.#encoding === null && !this.#tlsUpgrading) {
      this._call1(this.onRead, chunk);
    } else {
      rb.push(chunk);
      this.#process();
    }
    this.#inDispatch = false;
    if (this.#wq.length > 0) this.#flush();
  }

  /** Delivers every whole frame in the buffer, re-reading the delimiter each time. */
  #process(): void {
    const rb = this.#rb;
    const out = this.#out;
    const wasDispatching = this.#inDispatch;
    this.#inDispatch = true;
    try {
      while (rb.length > 0) {
        if (this.#state !== S_OPEN || this.#paused !== 0 || this.#tlsUpgrading) return;
        const framer = this.#framer;
        const limit = this.#bufferSize > framer.minLimit ? this.#bufferSize : framer.minLimit;
        let code: number;
        try {
          code = framer.extract(rb, limit, out, this.regexSearch);
        } catch (err) {
          // A Decoder threw, or a Struct could not unpack: user code or bad input.
          rb.clear();
          this._handlerFailed(err);
          return;
        }
        if (code === FRAME) {
          const value = out.value;
          out.value = undefined;
          if (this.#encoding === null || !Buffer.isBuffer(value)) this._call1(this.onRead, value as Buffer);
          else this.#deliverText(value, framer.source === null);
        } else if (code === FRAME_ARGS) {
          const args = out.args ?? EMPTY_ARGS;
          out.args = null;
          this._callN(this.onRead, args);
        } else if (code === NEED_MORE) {
          return;
        } else if (code === OVERFLOW) {
          this._countError("overflow", new Error("read overflow"));
          const err = new BufferOverflowError(
            `A frame on ${String(this)} outgrew the ${limit}-byte buffer limit (bufferSize).`,
            "read",
            limit,
          );
          this._call1(this.onOverflowError, err);
        } else {
          const cause = out.error;
          out.error = null;
          rb.clear();
          if (code === FAILED && isFramingError(cause)) {
            this._callOnError(new InvalidReadDelimiterError((cause as Error).message, { cause }));
          } else {
            this._countError("read", cause as Error);
            this._call1(this.onReadError, cause as Error);
          }
          return;
        }
      }
    } finally {
      this.#inDispatch = wasDispatching;
    }
  }

  #deliverText(buf: Buffer, streaming: boolean): void {
    const encoding = this.#encoding as BufferEncoding;
    const utf8 = encoding === "utf8" || encoding === "utf-8";
    let text: string;
    if (streaming) {
      // Raw chunks may split a character: decode statefully.
      let decoder = this.#textDecoder;
      if (decoder === null) {
        decoder = this.#textDecoder = utf8 ? new TextDecoder("utf-8", { fatal: true }) : new StringDecoder(encoding);
      }
      try {
        text = decoder instanceof TextDecoder ? decoder.decode(buf, { stream: true }) : decoder.write(buf);
      } catch (cause) {
        this.#textDecoder = null;
        this.#invalidText(cause);
        return;
      }
      if (text.length === 0) return;
    } else {
      if (utf8 && !isUtf8(buf)) {
        this.#invalidText(undefined);
        return;
      }
      text = buf.toString(encoding);
    }
    this._call1(this.onRead, text);
  }

  #invalidText(cause: unknown): void {
    const err = typeError(`${String(this)} received bytes that are not valid ${this.#encoding}.`, "ERR_ENCODING_INVALID_ENCODED_DATA");
    if (cause !== undefined) (err as Error & { cause?: unknown }).cause = cause;
    this._countError("read", err);
    this._call1(this.onReadError, err);
  }

  #scheduleProcess(): void {
    if (this.#processScheduled || this.#rb.length === 0) return;
    this.#processScheduled = true;
    process.nextTick(processTick, this);
  }

  /** @internal */
  _processTick(): void {
    this.#processScheduled = false;
    if (this.#state !== S_OPEN) return;
    this.#process();
    if (this.#wq.length > 0) this.#flush();
  }

  #pause(reason: number): void {
    const was = this.#paused;
    this.#paused |= reason;
    if (was === 0 && this.#flowing && this.#sock !== null) this.#sock.pause();
  }

  #resume(reason: number): void {
    if ((this.#paused & reason) === 0) return;
    this.#paused &= ~reason;
    if (this.#paused !== 0) return;
    if (this.#flowing && this.#sock !== null && this.#state !== S_CLOSED) this.#sock.resume();
    this.#scheduleProcess();
  }

  /** @internal The peer sent FIN. */
  _onEnd(): void {
    this.#peerEnded = true;
    const state = this.#state;
    if (state === S_CLOSED) {
      // Lingering after our own close: the peer is done too.
      this.#sock?.destroy();
      return;
    }
    if (state === S_OPEN || state === S_PENDING) {
      if (this.#rb.length > 0 && !this.#tlsUpgrading) {
        log.current.debug({ stream: String(this), bytes: this.#rb.length }, "Peer closed with an incomplete frame buffered; discarded.");
      }
      this.close(true);
    }
  }

  /** @internal */
  _onSocketError(err: Error): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CONNECTING) {
      const connectErr = new ConnectError(
        `Could not connect ${String(this)} to ${formatAddress(this.#targetAddress())}: ${err.message}`,
        { cause: err },
      );
      this.#connectError = connectErr;
      this._countError("connect", connectErr);
      this._call1(this.onConnectError, connectErr);
      this.#finishClose(false);
      return;
    }
    if (this.#tls !== null && !this.#tlsDone) {
      this.#handshakeFailed(err);
      return;
    }
    const syscall = (err as NodeJS.ErrnoException).syscall;
    const isWrite = syscall === "write" || syscall === "writev" || syscall === "shutdown";
    this._countError(isWrite ? "write" : "read", err);
    this._call1(isWrite ? this.onWriteError : this.onReadError, err);
    this.#finishClose(false);
  }

  /**
   * The TLS handshake failed: onSslHandshakeError, and for a client's first
   * handshake also onConnectError (the connect failed), then the close.
   */
  #handshakeFailed(err: Error): void {
    this._countError("tls", err);
    const clientConnect = !this.#everConnected && !this.#serverSide;
    let connectErr: ConnectError | null = null;
    if (clientConnect) {
      connectErr = new ConnectError(
        `Could not connect ${String(this)} to ${formatAddress(this.#targetAddress())}: TLS handshake failed: ${err.message}`,
        { cause: err },
      );
      this.#connectError = connectErr;
    }
    this._call1(this.onSslHandshakeError, err);
    if (connectErr !== null && this.#state !== S_CLOSED) this._call1(this.onConnectError, connectErr);
    this.#finishClose(false);
  }

  /** @internal The socket is gone. */
  _onSocketClose(): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CONNECTING) {
      // Closed before connecting without an error (e.g. TLS peer hung up).
      this._onSocketError(Object.assign(new Error("The connection closed before it was established."), { code: "ECONNRESET" }));
      return;
    }
    if (this.#tls !== null && !this.#tlsDone) {
      this._onSocketError(Object.assign(new Error("The peer closed the connection during the TLS handshake."), { code: "ECONNRESET" }));
      return;
    }
    this.#finishClose(false);
  }

  #targetAddress(): Address | null {
    const t = this.#connectTarget;
    if (t === null) return null;
    if (t.kind === "unix") return t.path;
    return t.v6tuple ? [t.host, t.port, t.flowinfo, t.scopeid] : [t.host, t.port];
  }

  // -------------------------------------------------------------------------
  // Internals: the write path

  #writeStateError(op: string): never {
    const state = this.#state;
    if (state === S_CLOSED || state === S_CLOSING) throw new ChannelStateError(`${op}() called on closed ${String(this)}.`);
    throw new ChannelStateError(`${op}() called on disconnected ${String(this)}.`);
  }

  #afterQueue(flush: boolean): void {
    if (flush) {
      this.#flush();
    } else if (!this.#inDispatch && !this.#flushQueued) {
      this.#flushQueued = true;
      dirty.push(this);
      if (!flushScheduled) {
        flushScheduled = true;
        process.nextTick(flushDirty);
      }
    }
    const limit = this.#writeBufferLimit;
    if (this.#wqBytes > limit || this.bufferedAmount > limit) this.#writeOverflow();
  }

  #writeOverflow(): void {
    if (this.#writeOverflowed || this.#state === S_CLOSED) return;
    this.#writeOverflowed = true;
    const err = new BufferOverflowError(
      `The outgoing buffer of ${String(this)} outgrew writeBufferLimit (${this.#writeBufferLimit} bytes): the peer is not reading.`,
      "write",
      this.#writeBufferLimit,
    );
    this._countError("overflow", err);
    this._call1(this.onOverflowError, err);
  }

  /** @internal Called by the end-of-turn flush. */
  _flushQueued(): void {
    this.#flushQueued = false;
    if (this.#wq.length > 0) this.#flush();
  }

  #hasPendingWrites(): boolean {
    return this.#wq.length > 0 || this.#inflight > 0 || this.#fileActive || (this.#sock !== null && this.#sock.writableLength > 0);
  }

  /** Hands queued buffers to the socket; starts files and TLS upgrades in order. */
  #flush(): void {
    const sock = this.#sock;
    const state = this.#state;
    if (sock === null || state === S_CLOSED || state === S_CONNECTING || this.#fileActive) return;
    if (this.#tls !== null && !this.#tlsDone) return; // handshake first; writes wait
    const wq = this.#wq;
    while (wq.length > 0) {
      // Count the leading run of plain buffers.
      let n = 0;
      let bytes = 0;
      while (n < wq.length && Buffer.isBuffer(wq[n])) {
        bytes += (wq[n] as Buffer).length;
        n++;
      }
      if (n > 0) {
        const cb = this.#afterWrite ?? (this.#afterWrite = (err?: Error | null) => this.#onWritten(err));
        this.#inflight++;
        if (n === 1) {
          sock.write(wq[0] as Buffer, cb);
        } else if (bytes <= JOIN_LIMIT) {
          sock.write(Buffer.concat(wq.slice(0, n) as Buffer[], bytes), cb);
        } else {
          sock.cork();
          for (let i = 0; i < n - 1; i++) sock.write(wq[i] as Buffer);
          sock.write(wq[n - 1] as Buffer, cb);
          sock.uncork();
        }
        if (n === wq.length) wq.length = 0;
        else wq.splice(0, n);
        this.#wqBytes -= bytes;
        const statsServer = this.#statsServer;
        if (statsServer !== null) statsServer.bytesOut += bytes;
        this.engine.stats.bytesOut += bytes;
        if (this.#state === S_CLOSED) return; // a synchronous error closed us
        continue;
      }
      const head = wq[0] as FileJob | TlsJob;
      if ("tls" in head) {
        // STARTTLS: wait until every earlier byte has been handed to the OS.
        if (this.#inflight > 0 || sock.writableLength > 0) return;
        this.#upgradeNow(head.options);
        return;
      }
      wq.shift();
      this.#fileActive = true;
      this.#sendFile(head);
      return;
    }
    if (this.bufferedAmount > this.#writeHighWaterMark) this.#pause(P_BACKPRESSURE);
  }

  #onWritten(err?: Error | null): void {
    this.#inflight--;
    if (err) return; // the socket's 'error' event reports it
    this.#active = true;
    if (this.#inflight === 0) this.#drained();
  }

  /** Everything handed to the socket so far has reached the OS. */
  #drained(): void {
    if (this.#state === S_CLOSED) return;
    if (this.#wq.length > 0 || this.#fileActive) {
      this.#flush();
      if (this.#wq.length > 0 || this.#inflight > 0 || this.#fileActive) return;
    }
    if (this.#sock !== null && this.#sock.writableLength > 0) return;
    this.#writeOverflowed = false;
    this.#resume(P_BACKPRESSURE);
    if (this.onWrite !== Stream.prototype.onWrite) this._call0(this.onWrite);
    if (this.#state === S_CLOSING && !this.#hasPendingWrites()) this.#finishClose(true);
  }

  #upgradeNow(options: SslOptions): void {
    const sock = this.#sock as OwnedSocket;
    // Bytes already read past the STARTTLS point belong to the TLS layer:
    // hand them back to the socket so the handshake sees them (uvloop#707).
    const rest = this.#rb.length > 0 ? this.#rb.all() : null;
    this.#rb.clear();
    sock.pause();
    if (rest !== null) sock.unshift(rest);
    this.#wrapTls(options, false);
  }

  #sendFile(job: FileJob): void {
    const sock = this.#sock as OwnedSocket;
    const isPath = typeof job.file === "string";
    const handle = typeof job.file === "object" ? (job.file as FileHandle) : null;
    let fd = typeof job.file === "number" ? job.file : -1;
    let position = job.offset;
    let remaining = job.nbytes === 0 ? Infinity : job.nbytes;
    const finish = (err: Error | null): void => {
      if (isPath && fd >= 0) fsClose(fd, () => {});
      this.#fileActive = false;
      if (this.#state === S_CLOSED) return;
      if (err !== null) {
        this._countError("write", err);
        this._call1(this.onWriteError, err);
        this.#finishClose(false);
        return;
      }
      if (this.#inflight === 0) this.#drained();
    };
    const readNext = (): void => {
      if (this.#state === S_CLOSED) return finish(null);
      if (remaining <= 0) return finish(null);
      const size = Math.min(FILE_CHUNK, remaining);
      const buf = Buffer.allocUnsafe(size);
      const onRead = (err: Error | null, bytesRead: number): void => {
        if (err) return finish(err);
        if (this.#state === S_CLOSED) return finish(null);
        if (bytesRead === 0) {
          if (job.nbytes !== 0 && remaining > 0 && remaining !== Infinity) {
            return finish(rangeError(`writeFile(): the file ended ${remaining} bytes before the ${job.nbytes} bytes asked for.`));
          }
          return finish(null);
        }
        position += bytesRead;
        remaining -= bytesRead;
        const chunk = bytesRead === size ? buf : buf.subarray(0, bytesRead);
        const cb = this.#afterWrite ?? (this.#afterWrite = (e?: Error | null) => this.#onWritten(e));
        this.#inflight++;
        const statsServer = this.#statsServer;
        if (statsServer !== null) statsServer.bytesOut += bytesRead;
        this.engine.stats.bytesOut += bytesRead;
        // Keep a little in flight, then wait for the socket to drain before reading on.
        if (sock.write(chunk, cb) || sock.writableLength < 4 * FILE_CHUNK) readNext();
        else sock.once("drain", readNext);
      };
      if (handle !== null) {
        handle.read(buf, 0, size, position).then(
          (r) => onRead(null, r.bytesRead),
          (e: Error) => onRead(e, 0),
        );
      } else {
        fsRead(fd, buf, 0, size, position, (e, n) => onRead(e, n));
      }
    };
    if (isPath) {
      fsOpen(job.file as string, "r", (err, opened) => {
        if (err) return finish(err);
        fd = opened;
        if (this.#state === S_CLOSED) return finish(null);
        readNext();
      });
    } else {
      readNext();
    }
  }

  // -------------------------------------------------------------------------
  // Internals: closing

  #finishClose(graceful: boolean): void {
    if (this.#state === S_CLOSED) return;
    const wasConnecting = this.#state === S_CONNECTING || (!this.#everConnected && this.#state !== S_INIT);
    this.#state = S_CLOSED;
    const sock = this.#sock;
    this.#rb.clear();
    this.#wq.length = 0;
    this.#wqBytes = 0;
    if (this.#timed) {
      this.#timed = false;
      this.engine._sweeper.delete(this);
    }
    this.engine._channels.delete(this);
    const engineStats = this.engine.stats;
    if (sock !== null) {
      engineStats.open--;
      engineStats.closed++;
      this.#releaseSocket(sock, graceful);
    }
    this.server?._connectionClosed(this, this.#connId);
    if (wasConnecting || !this.#everConnected) {
      const err = this.#connectError ?? new ChannelStateError(`${String(this)} closed before it connected.`);
      const reject = this.#readyReject;
      this.#readyResolve = null;
      this.#readyReject = null;
      if (reject !== null) reject(err);
      else if (this.#readyPromise === null && this.#connectError === null) this.#connectError = err;
    }
    this._call0(this.onClose);
    if (diagnostics.connectionClose.hasSubscribers) diagnostics.connectionClose.publish({ stream: this });
  }

  #releaseSocket(sock: OwnedSocket, graceful: boolean): void {
    if (sock.destroyed) {
      sock[kStream] = undefined;
      return;
    }
    if (!graceful) {
      sock.destroy();
      sock[kStream] = undefined;
      return;
    }
    if (this.#peerEnded) {
      // Both sides are done: our FIN (TLS: close_notify first); the socket
      // destroys itself once it has been sent.
      sock.end();
      return;
    }
    // FIN after everything written; keep reading (and discarding) until the
    // peer closes too, so unread bytes do not turn our close into a reset.
    if (!this.#flowing) {
      this.#flowing = true;
      sock.on("end", onSocketEnd);
      sock.on("data", onSocketData);
    }
    sock.resume();
    sock.end();
    const raw = this.#raw;
    if (raw !== null) raw.unref();
    const timer = setTimeout(lingerExpired, LINGER_MS, sock);
    timer.unref();
    (sock as OwnedSocket & { [kLinger]?: ReturnType<typeof setTimeout> })[kLinger] = timer;
    if (raw !== null && raw !== (sock as Duplex)) (raw as OwnedSocket & { [kLinger]?: ReturnType<typeof setTimeout> })[kLinger] = timer;
  }

  // -------------------------------------------------------------------------
  // Internals: timeouts (driven by the engine's shared sweeper)

  #armHandshakeTimeout(): void {
    const ms = this.server?._handshakeTimeoutMs ?? 10_000;
    if (ms > 0) this.#setDeadline("handshake", ms);
    else this.#clearDeadline("handshake");
  }

  #setDeadline(kind: "handshake" | "drain", ms: number): void {
    this.#deadline = this.engine.time() + ms;
    this.#deadlineKind = kind;
    this.#active = false;
    this.#idleSince = this.engine.time();
    if (!this.#timed) {
      this.#timed = true;
    }
    this.engine._sweeper.add(this, ms);
  }

  #clearDeadline(kind: "handshake" | "drain"): void {
    if (this.#deadlineKind !== kind) return;
    this.#deadlineKind = null;
    this.#updateTimed();
  }

  #updateTimed(): void {
    const want = this.#state !== S_CLOSED && (this.#deadlineKind !== null || (this.#idleTimeout > 0 && this.#state >= S_PENDING));
    if (want) {
      if (!this.#timed) this.#idleSince = this.engine.time();
      this.#timed = true;
      this.engine._sweeper.add(this, this.#deadlineKind !== null ? 1000 : this.#idleTimeout);
    } else if (this.#timed) {
      this.#timed = false;
      this.engine._sweeper.delete(this);
    }
  }

  /** @internal Called by the engine's sweeper on every tick. */
  _onSweep(now: number): void {
    if (this.#state === S_CLOSED) return;
    const kind = this.#deadlineKind;
    if (kind === "drain") {
      // A draining close that makes progress is given more time.
      if (this.#active) {
        this.#active = false;
        this.#deadline = now + DRAIN_TIMEOUT_MS;
      } else if (now >= this.#deadline) {
        this._countError("timeout", new TimeoutError("drain timeout", "idle"));
        this.#finishClose(false);
      }
      return;
    }
    if (kind === "handshake") {
      if (now >= this.#deadline) {
        this.#handshakeFailed(new TimeoutError(`The TLS handshake of ${String(this)} did not complete in time.`, "handshake"));
      }
      return;
    }
    if (this.#idleTimeout <= 0) return;
    if (this.#active) {
      this.#active = false;
      this.#idleSince = now;
    } else if (now - this.#idleSince >= this.#idleTimeout) {
      this.#idleSince = now;
      this._countError("timeout", new TimeoutError("idle timeout", "idle"));
      this._call0(this.onTimeout);
    }
  }

  // -------------------------------------------------------------------------
  // Internals: server plumbing

  /** @internal Called by the server right after construction. */
  _attachToServer(server: Server, connId: number, stats: Stats, idleTimeout: number): void {
    this.server = server;
    this.#connId = connId;
    this.#statsServer = stats;
    this.#serverSide = true;
    if (this.#deadlineKind === "handshake") this.#armHandshakeTimeout();
    if (idleTimeout > 0 && this.#idleTimeout === 0) this.idleTimeout = idleTimeout;
    // UNIX peers have no address of their own: report the server's path.
    if (this.#remote === "" && this.#local === "") {
      const path = server.localAddress;
      if (typeof path === "string") this.#local = path;
    }
  }

  /** @internal */
  protected _statsTargets(): [Stats, Stats | null] {
    return [this.engine.stats, this.#statsServer];
  }
}

function establishTick(stream: Stream): void {
  stream._establishTick();
}

function processTick(stream: Stream): void {
  stream._processTick();
}

function checkSize(name: string, value: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    throw rangeError(`${name} must be a positive integer number of bytes, got ${describe(value)}.`);
  }
  return value;
}

function logPeerError(err: Error, message: string): void {
  if (isPeerError(err)) log.current.debug({ err }, `${message}: ${err.message}`);
  else log.current.warn({ err }, `${message}: ${err.message}`);
}

