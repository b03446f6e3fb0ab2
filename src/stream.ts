/**
 * Stream: one TCP/TLS/UNIX connection, server side or client side.
 *
 * Data flows one way: socket → receive buffer → framer → onRead, and
 * write → write queue → socket. Socket events reach the stream through
 * module-level listeners (no closure per connection). State a connection
 * rarely needs (TLS options, overrides, timeouts, the ready promise) lives
 * in a side object made on first use, so an idle connection stays small.
 */
import net from "node:net";
import tls from "node:tls";
import process from "node:process";
import { Buffer, isUtf8 } from "node:buffer";
import type { Duplex } from "node:stream";
import type { FileHandle } from "node:fs/promises";
import type { CipherNameAndProtocol, PeerCertificate } from "node:tls";
import { Channel, diagnostics, isPeerError, isThenable, nameOf } from "./channel.js";
import type { ChannelOptions } from "./channel.js";
import type { Stats } from "./engine.js";
import { addressOverride, parseAddress, parseLocalAddress, fromNodeAddress, copyAddress, formatAddress, withScope, dialHost } from "./address.js";
import type { Address, LocalAddress, ParsedAddress } from "./address.js";
import { checkSignal, onAbort } from "./abort.js";
import {
  AbortError,
  BufferOverflowError,
  ChannelStateError,
  ConnectError,
  InvalidReadDelimiterError,
  TimeoutError,
  asError,
  checkMs,
  connectMessage,
  describe,
  keepAliveDelay,
  netFormHint,
  numberError,
  rangeError,
  typeError,
  unboundError,
} from "./errors.js";
import { log } from "./log.js";
import { ReceiveBuffer } from "./framing/receive-buffer.js";
import { allocBytes, joinInto, viewOf } from "./framing/view.js";
import { FAILED, FRAME, FRAME_ARGS, NEED_MORE, NULL_FRAMER, OVERFLOW, compileDelimiter, isFramingError } from "./framing/delimiter.js";
import type { Decoder, FrameOut, Framer, ReadDelimiter } from "./framing/delimiter.js";
import { Struct } from "./framing/struct.js";
import { NetStruct } from "./framing/netstruct.js";
import type { NetStructHeld } from "./framing/netstruct.js";
import { checkPantsFlags, compileTls, secureServerSide, wrapClientSocket, wrapServerSocket } from "./tls.js";
import type { CompiledTls } from "./tls.js";
import type { SslOptions } from "./tls.js";
import { sendFile } from "./write-file.js";
import { proxiedAddress } from "./proxy-protocol.js";
import type { ProxyHeader } from "./proxy-protocol.js";
import { NativeSocket, nativeAddon, nativeLimits } from "./native-socket.js";
import { useNative } from "./transport.js";
import { lendReads, pauseFlow, releaseReads, takeReads } from "./node-reads.js";
import type { FileJob, FileSink } from "./write-file.js";
import type { Server } from "./server.js";
import { adoptAccessorFields, checkOptionKeys, checkOptions, optionKeys } from "./options.js";

/** Options of {@link Stream.connect}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface ConnectOptions {
  /**
   * The local address to connect from, its source address and port, as
   * node:net's `localAddress` and `localPort`, Twisted's `bindAddress` and
   * Netty's `connect(remote, local)`: an IP address literal and a port
   * (`["10.0.0.5", 0]`, `["::1", 0, 0, 0]`; port 0: any), or a port alone.
   * A host name, a UNIX path, or an address of the other family than the
   * target's throws {@link InvalidAddressFormatError}; an address this host
   * does not have (`EADDRNOTAVAIL`) or a port in use (`EADDRINUSE`) fails
   * the connect (`onConnectError`).
   */
  localAddress?: Address;
  /**
   * Cancels the connect: aborted before `onConnect` (the DNS lookup, the
   * TCP connect, the TLS handshake), the stream closes at once, `ready()`
   * rejects with an {@link AbortError} whose `cause` is `signal.reason`,
   * and `onClose` follows; `onConnectError` is not called (nothing failed:
   * it was cancelled, as a `close()` before `onConnect` is). An
   * already-aborted signal opens no socket: the stream closes on a later
   * tick, the same way. Once `onConnect` has run the signal no longer
   * applies (unlike node:net's, which destroys the socket whenever it
   * aborts): its listener is removed then, or when the stream closes. One
   * signal may serve any number of connects (an application's shutdown
   * signal): it has one listener of pants-ts's while any is pending.
   * @throws TypeError (from `connect()`) unless an `AbortSignal`.
   */
  signal?: AbortSignal;
}

/** connect()'s options, checked: the local address to bind (or null), and the signal (if any). */
function connectOptionsOf(options: ConnectOptions | undefined, target: ParsedAddress): { local: LocalAddress | null; signal: AbortSignal | undefined } {
  if (options === undefined) return { local: null, signal: undefined };
  checkOptions("connect()", options, CONNECT_KEYS, netFormHint("connect", options));
  const signal = checkSignal("connect()'s", options.signal);
  return { local: options.localAddress === undefined ? null : parseLocalAddress(options.localAddress, target), signal };
}

/** connect() was given an already-aborted signal: the stream closes on this later tick. */
function abortLater(stream: Stream, signal: AbortSignal): void {
  stream._connectAborted(signal);
}

/** The family a host name's lookup asks for: IPv6 for a 4-tuple, else any (0). */
function lookupFamily(target: ParsedAddress & { kind: "tcp" }): 0 | 6 {
  return target.family === 0 && target.v6tuple ? 6 : 0;
}


/**
 * Options of the {@link Stream} constructor. A key it does not know is
 * ignored and logged once (a `warn` naming the nearest known key); a
 * subclass that takes options of its own should pass only these to
 * `super()`. A server's accepted connections are not checked.
 */
export interface StreamOptions extends ChannelOptions {
  /** An already-connected socket (or any Duplex) to wrap. */
  socket?: Duplex;
  /** TLS options: the stream starts TLS as soon as it is connected. */
  sslOptions?: SslOptions;
}

const CONNECT_KEYS = optionKeys<ConnectOptions>({ localAddress: true, signal: true });
const STREAM_KEYS = optionKeys<StreamOptions>({ engine: true, socket: true, sslOptions: true });
const PACKED_KEYS = optionKeys<WritePackedOptions>({ format: true, flush: true });

/** Options of {@link Stream.writePacked}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface WritePackedOptions {
  /** A Struct format string, a Struct or a NetStruct (default: the Struct or NetStruct read delimiter). */
  format?: string | Struct | NetStruct;
  /** Send now, as `write(data, true)` (default false). */
  flush?: boolean;
}

/**
 * A connection class: {@link Stream} or a subclass of it. A {@link Server}
 * makes one instance per accepted connection, constructing it with
 * `{ engine, socket }`.
 * @typeParam S The connection type its instances have.
 */
export type ConnectionClass<S extends Stream = Stream> = new (options: StreamOptions) => S;

// ---------------------------------------------------------------------------
// Internal symbols shared with the server.

/** @internal The stream that owns a socket. */
export const kStream: unique symbol = Symbol("pants-ts.stream");
/** @internal Set by the server on a TLSSocket whose server-side handshake has not run yet. */
export const kTlsPending: unique symbol = Symbol("pants-ts.tlsPending");
/** @internal Set by the server on such a TLSSocket once its handshake is done (before a stream took it: an async onAccept awaited). */
export const kTlsSecured: unique symbol = Symbol("pants-ts.tlsSecured");
/** @internal Set by the server: the connection's PROXY header. */
export const kProxyHeader: unique symbol = Symbol("pants-ts.proxyHeader");
/**
 * @internal Set by the server on a TLS socket accepted behind a PROXY header
 * or handed to an onAccept override: the engine time of the accept, from
 * which the handshake's deadline counts.
 */
export const kAcceptedAt: unique symbol = Symbol("pants-ts.acceptedAt");
/**
 * @internal Set by the server on a TLS socket it closed while an async
 * onAccept held it (its handshake's deadline passed, or its peer left):
 * why, counted in the stats already. A stream made over it later fails its
 * handshake with it.
 */
export const kHeldFailure: unique symbol = Symbol("pants-ts.heldFailure");
/** @internal Set by the server: the TCP (or native) socket under a TLSSocket. */
export const kRawSocket: unique symbol = Symbol("pants-ts.rawSocket");
/**
 * @internal The socket a server is handing to its onAccept right now: a
 * stream made for it is tracked by the server, not in the engine's set.
 */
export const accepting: { socket: Duplex | null } = { socket: null };
/**
 * @internal A connection class made over `socket` an instance that did not
 * take it: its constructor did not pass its options to `super()`
 * (`constructor() { super(); }`), so the peer would wait unanswered.
 */
export function untakenSocketError(stream: Stream, socket: Duplex): TypeError | null {
  if ((socket as Duplex & { [kStream]?: Stream })[kStream] === stream) return null;
  const name = stream.constructor.name || "the connection class";
  return typeError(`The constructor of ${name} did not pass its options to super(), so the socket was never given to it: write constructor(options) { super(options); ... }.`);
}
const kLinger: unique symbol = Symbol("pants-ts.linger");
/** Sockets lingering after a graceful close (see Stream's #releaseSocket), oldest first. */
const lingering = new Map<Duplex, Linger>();
let lingerWaiters: Array<() => void> = [];

function lingerEnded(sock: Duplex): void {
  const linger = lingering.get(sock);
  if (linger === undefined) return;
  lingering.delete(sock);
  linger.stream.engine.stats.lingering--;
  linger.stream.server?._lingerEnded(sock);
  if (lingering.size > 0) return;
  const waiters = lingerWaiters;
  lingerWaiters = [];
  for (const wake of waiters) wake();
}

/**
 * @internal Settles once no socket lingers after a graceful close: the peer
 * has read our last bytes and closed, or the linger expired. A process that
 * exits before would close them with unread input, and the kernel would
 * turn that into a reset that destroys the tail the peer has not read yet.
 */
export function lingeringClosed(): Promise<void> {
  if (lingering.size === 0) return Promise.resolve();
  return new Promise((resolve) => {
    const wake = () => {
      clearTimeout(keep);
      resolve();
    };
    // Lingering sockets are unref'd: this keeps the process alive meanwhile.
    const keep = setTimeout(() => {
      lingerWaiters = lingerWaiters.filter((w) => w !== wake);
      resolve();
    }, LINGER_MS + 1000);
    lingerWaiters.push(wake);
  });
}

interface OwnedSocket extends Duplex {
  [kStream]?: Stream | undefined;
  [kTlsPending]?: boolean;
  [kTlsSecured]?: boolean;
  [kProxyHeader]?: ProxyHeader;
  [kAcceptedAt]?: number;
  [kHeldFailure]?: Error;
  [kRawSocket]?: net.Socket | NativeSocket;
  [kLinger]?: ReturnType<typeof setTimeout>;
}

// States.
const S_INIT = 0; // no socket yet
const S_CONNECTING = 1; // client connect under way
const S_PENDING = 2; // connected; TLS handshake or the onConnect tick pending
const S_OPEN = 3;
const S_CLOSING = 4; // close(true): flushing
const S_CLOSED = 5;
/** An empty write: its callback runs once every earlier write has reached the OS (see #barrier). */
const EMPTY = Buffer.alloc(0);

// Flags (one bit field instead of a dozen booleans per connection).
const F_SERVER_SIDE = 1 << 0;
const F_PEER_ENDED = 1 << 1;
const F_EVER_CONNECTED = 1 << 2;
const F_TLS_DONE = 1 << 3;
const F_TLS_UPGRADING = 1 << 4;
const F_FLOWING = 1 << 5;
const F_IN_DISPATCH = 1 << 6;
const F_PROCESS_SCHEDULED = 1 << 7;
const F_FILE_ACTIVE = 1 << 8;
const F_FLUSH_QUEUED = 1 << 9;
const F_WRITE_OVERFLOWED = 1 << 10;
const F_ACTIVE = 1 << 11;
const F_TIMED = 1 << 12;
const F_REGEX_ANCHORED = 1 << 13;
const F_ADDRESSES = 1 << 14;
const F_END_DELIVERED = 1 << 17;
const F_NATIVE = 1 << 18; // the socket is the native addon's
const F_NATIVE_FRAMING = 1 << 19; // and the addon cuts the frames
/** Set by anything that must stop a frame loop in progress (a new delimiter, a pause, a close...). */
const F_STOP = 1 << 20;
/** The delimiter changed inside a batch of frames the addon cut (once: F_SWITCHED; again: F_JS_FRAMING). */
const F_SWITCHED = 1 << 21;
/**
 * A protocol that keeps switching delimiter (RESP, memcached: a line, then a
 * byte count, then a line...) is framed here, over raw native reads: handing
 * the framing back and forth with the addon at every switch costs more than
 * it saves.
 */
const F_JS_FRAMING = 1 << 22;
/** reuseReadBuffer: the native transport lends reads. */
const F_LEND = 1 << 23;
/** In lentHolders: the write queue may hold views of the lent read. */
const F_HOLDS_LENT = 1 << 24;
/** Counted in engine.stats.accepted (at accept for a server's, at onConnect otherwise): its close counts too. */
const F_COUNTED = 1 << 25;
/** server.shutdown() began before onConnect ran (TLS handshake or the onConnect tick pending): onShutdown follows onConnect (see #event). */
const F_SHUTDOWN_DUE = 1 << 26;
/** A drain's onWrite waits: for onConnect (#event), or for a STARTTLS handshake (#drained stopped at its job). */
const F_WRITE_OWED = 1 << 27;
/** end() was called: no more writes; a FIN once what was written has gone. */
const F_WRITE_ENDED = 1 << 28;
/** The FIN that end() asked for has been handed to the socket. */
const F_FIN_SENT = 1 << 29;
/** An idle timeout came due before onConnect ran (a manual clock): onTimeout follows onConnect (see #event). */
const F_TIMEOUT_DUE = 1 << 30;
/** node:net hands this socket's reads to onNetRead (node-reads.ts), not to 'data' listeners. */
const F_TAKEN = 1 << 31;

// Reasons reading is paused (flag bits too).
const P_USER = 1 << 15;
const P_BACKPRESSURE = 1 << 16;
const P_ANY = P_USER | P_BACKPRESSURE;

/**
 * Delimiter changes in a row that take no frame (Decoders sniffing the
 * protocol hand the bytes on; two that hand over to each other for ever
 * would spin): past this many, the bytes wait for more to arrive.
 */
const MAX_IDLE_SWITCHES = 16;
/** Bytes still arriving after close are read and discarded until none came for this long... */
const LINGER_MS = 2000;
/** ...or this long in all (nginx's lingering_timeout and lingering_time)... */
const LINGER_MAX_MS = 30_000;
/**
 * ...or one wait of LINGER_MS per this many bytes written (a peer reading
 * at 64 KiB/s): a peer that cannot have much left to read (a short reply,
 * an idle or overflow close) gets no more than the first wait.
 */
const LINGER_BYTES_PER_WAIT = 128 * 1024;
/** A close(true) that cannot hand its data to the OS for this long is forced (or for idleTimeout, when shorter). */
const DRAIN_TIMEOUT_MS = 30_000;
/** node:net: below this, queued chunks are joined into one new buffer; above, written corked. */
const JOIN_LIMIT = 64 * 1024;
/** The first `n` buffers of `list` (`bytes` in all) in one new buffer: Buffer.concat without its argument checks. */
function join(list: readonly QueueItem[], n: number, bytes: number): Buffer {
  return joinInto(allocBytes(bytes), list, n);
}

/** Held short buffers are joined this many at a time. */
const HELD_JOIN = 64;

/**
 * The leading `n` buffers of `wq` wait for the socket; those from `from` on
 * are not grouped yet. Each HELD_JOIN of them that are short (JOIN_LIMIT in
 * all) become one buffer, so a queue of short writes costs about its bytes;
 * each byte is copied once, and each item looked at once. Leaves the new
 * count in `x.held` and where grouping stopped in `x.heldJoined`.
 */
function joinHeld(x: Extras, wq: QueueItem[], from: number, n: number): void {
  let at = from;
  while (n - at >= HELD_JOIN) {
    let bytes = 0;
    for (let i = at; i < at + HELD_JOIN; i++) bytes += (wq[i] as Buffer).length;
    if (bytes <= JOIN_LIMIT) {
      wq.splice(at, HELD_JOIN, joinInto(allocBytes(bytes), wq, HELD_JOIN, at));
      n -= HELD_JOIN - 1;
      at += 1;
    } else {
      at += HELD_JOIN; // long writes: few of them for their bytes
    }
  }
  x.held = n;
  x.heldJoined = at;
}

/** A run longer than JOIN_LIMIT whose buffers average fewer bytes than this is joined before it leaves (compactRun). */
const SHORT_WRITE = 512;

/**
 * Joins the first `n` buffers of `wq` (a run of more than JOIN_LIMIT bytes
 * of short writes) into pieces of at most JOIN_LIMIT bytes, in place (a
 * buffer longer than that stays as it is); returns how many items the run
 * now is. What a socket cannot take at once it keeps, by reference, until
 * written: left as it was, a peer that stops reading would hold every
 * write of the run, about a hundred bytes of heap each (a 2-byte line echo
 * stalled at writeHighWaterMark: some 60 MiB for 1 MiB of replies), and the
 * native addon a reference per write on top. Joined, it costs about its
 * bytes, and the OS gets a few iovecs instead of one per write.
 */
function compactRun(wq: QueueItem[], n: number): number {
  const pieces: Buffer[] = [];
  let from = 0;
  let bytes = 0;
  for (let i = 0; i <= n; i++) {
    const len = i < n ? (wq[i] as Buffer).length : Infinity;
    if (bytes + len > JOIN_LIMIT && i > from) {
      pieces.push(i - from === 1 ? (wq[from] as Buffer) : joinInto(allocBytes(bytes), wq, i - from, from));
      from = i;
      bytes = 0;
    }
    bytes += len;
  }
  wq.splice(0, n, ...pieces);
  return pieces.length;
}

/**
 * Drained write queues, kept for the next stream that writes: a stream
 * holds a queue only while it has something queued (an idle connection
 * keeps no array), and a busy one does not allocate and grow a new array
 * every turn. Bounded: past SPARE_QUEUES a drained queue is left to the GC.
 */
const spareQueues: QueueItem[][] = [];
const SPARE_QUEUES = 64;
/** Queues that held more items than this are left to the GC, not kept (a long queue keeps a large backing store). */
const SPARE_QUEUE_ITEMS = 16;
const DEFAULT_HWM = 1024 * 1024;
const DEFAULT_HANDSHAKE_MS = 10_000;
const DEFAULT_WRITE_LIMIT = 64 * 1024 * 1024;

/** A queued STARTTLS upgrade. */
interface TlsJob {
  readonly tls: SslOptions;
  /** The options compiled by startSSL(), for the side the upgrade takes. */
  readonly compiled: CompiledTls;
}

type QueueItem = Buffer | FileJob | TlsJob;

/** What most connections never need, made on first use. */
class Extras {
  readyPromise: Promise<Stream> | null = null;
  readyResolve: ((s: Stream) => void) | null = null;
  readyReject: ((e: Error) => void) | null = null;
  connectError: Error | null = null;
  /** A failed TLS connect's onConnectError, due after its TLS handler (or before onClose, should that handler close). */
  connectErrorOwed: ConnectError | null = null;
  /** Set as a TLS handshake fails (or TLS cannot start): why writes are refused from its handler on. */
  tlsFailed: string | null = null;
  connectTarget: ParsedAddress | null = null;
  sslOptions: SslOptions | null = null;
  /** sslOptions compiled when given (for the side they said then). */
  sslCompiled: CompiledTls | null = null;
  remote: Address | null = null;
  local: Address | null = null;
  /** The PROXY header this connection came with (a server's, with proxyProtocol). */
  proxyHeader: ProxyHeader | null = null;
  /** Engine time of a server's accept that waited for a PROXY header; cleared once the first handshake is done. */
  acceptedAt: number | null = null;
  /** The TCP (or native) socket under a TLS socket (else null: the stream's socket is it). */
  raw: net.Socket | NativeSocket | null = null;
  remoteOverride: Address | null | undefined = undefined;
  localOverride: Address | null | undefined = undefined;
  /** Set by the user; else the default of the stream's side (see the getter). */
  writeHighWaterMark: number | null = null;
  writeBufferLimit = DEFAULT_WRITE_LIMIT;
  idleTimeout = 0;
  idleSince = 0;
  deadline = 0;
  deadlineKind: "handshake" | "drain" | null = null;
  /** {@link bytesDrained} at the last sweep. */
  drained = 0;
  /** The OS took a write since the last sweep. */
  wrote = false;
  /** The peer's acknowledged bytes at the last sweep that asked; -1: nothing was out (ask after activity); -2: ask. */
  delivered = -2;
  /** Native framing: the addon's bytesRead at the last sweep that asked. */
  read = 0;
  /** onRead calls whose promises have not settled yet. */
  pendingReads = 0;
  /**
   * The queue whose leading `held` buffers (`heldBytes` in all) wait for
   * the socket to drain: counted already, and grouped (joinHeld) up to
   * `heldJoined`.
   */
  heldQueue: QueueItem[] | null = null;
  held = 0;
  heldBytes = 0;
  heldJoined = 0;
  /** Set by the user (ms); else the server's handshakeTimeoutMs, or 10 s for a client. */
  handshakeTimeout: number | null = null;
  /** setNoDelay's last word (null: never called), applied again at a client's connect. */
  noDelay: boolean | null = null;
  /** setKeepAlive's last word: the delay in ms, -1 off, null never called. */
  keepAlive: number | null = null;
  /** A client's TLS session to resume next time (see the sslSession getter). */
  session: Buffer | null = null;
  /** The TLS handshake resumed a session. */
  sessionReused = false;
  /** Removes the listener of connect()'s signal (null: none, or removed). */
  dropSignal: (() => void) | null = null;
  /** Resolves the promise of `[Symbol.asyncDispose]()` once onClose has run. */
  disposed: (() => void) | null = null;
  disposePromise: Promise<void> | null = null;
  /** What the TLS handshake agreed, kept from its end (sslProtocol, sslCipher read it after the close too). */
  sslProtocol: string | null = null;
  sslCipher: CipherNameAndProtocol | null = null;
  /**
   * The socket is a user's Duplex (no net.Socket, no native socket): every
   * write asks for its callback, the one place a write failure shows as
   * such (see {@link writeFailures}).
   */
  foreign = false;
  /**
   * The socket closed once both sides had ended while the peer's last frames
   * or its end still waited for the handler (paused, or an async onRead):
   * the stream delivers them, then closes.
   */
  socketGone = false;
}

/**
 * Errors a user's Duplex passed to a write callback while it was still
 * alive: its 'error' event, which follows with the same error, reports a
 * write failure (onWriteError) though the error names no system call, as a
 * socket's `write`/`writev` does. A Duplex destroyed by a read failure fails
 * the writes still queued with that error only once it is destroyed, so
 * that error is not one of these.
 */
const writeFailures = new WeakSet<object>();

/** One FrameOut for every stream: read and cleared before any handler runs. */
const frameOut: FrameOut = { value: undefined, args: null, error: null };

// ---------------------------------------------------------------------------
// Module-level socket listeners: `this` is the socket.

function onSocketData(this: OwnedSocket, chunk: Buffer): void {
  const stream = this[kStream];
  if (stream === undefined) return;
  // A user's Duplex may read strings (setEncoding, objectMode) or objects.
  if (Buffer.isBuffer(chunk)) stream._onData(chunk);
  else stream._onForeignChunk(chunk, this.readableEncoding);
}
/** A read node:net handed over (node-reads.ts): the stream's own chunk, or one `lent` for the call. */
function onNetRead(this: OwnedSocket, chunk: Buffer, lent: boolean): void {
  this[kStream]?._onNetRead(chunk, lent);
}
/** Bytes node:net read before its reads were taken (see #listenReads). */
function heldReads(stream: Stream, sock: OwnedSocket): void {
  stream._onHeldReads(sock);
}
function onSocketEnd(this: OwnedSocket): void {
  this[kStream]?._onEnd();
}
function onSocketError(this: OwnedSocket, err: Error): void {
  const stream = this[kStream];
  if (stream) stream._onSocketError(err);
  else if (log.debugOn()) log.current.debug({ err }, "Socket error after its stream closed.");
}
function onSocketClose(this: OwnedSocket): void {
  const stream = this[kStream];
  if (stream) stream._onSocketClose();
  const linger = this[kLinger];
  if (linger !== undefined) {
    clearTimeout(linger);
    lingerEnded(this);
  }
}
function endedEarlier(sock: OwnedSocket): void {
  sock[kStream]?._onEnd();
}
function adoptedClosed(stream: Stream): void {
  stream._onSocketClose();
}
function onSocketConnect(this: OwnedSocket): void {
  this[kStream]?._onTcpConnect();
}
function onSocketSecure(this: OwnedSocket): void {
  this[kStream]?._onSecure();
}
function securedTick(stream: Stream): void {
  stream._onSecure();
}
function onHandshakeEnd(this: OwnedSocket): void {
  this[kStream]?._onHandshakeEnd();
}
function onSocketSession(this: OwnedSocket, session: Buffer): void {
  this[kStream]?._onSession(session);
}
/** @internal The error of a peer that left before (`before`: a STARTTLS upgrade began) or during a TLS handshake. */
export function peerLeftHandshakeError(before = false): Error {
  const message = before ? "The peer had closed its side of the connection before the TLS upgrade began." : "The peer closed the connection during the TLS handshake.";
  return Object.assign(new Error(message), { code: "ECONNRESET" });
}
function handshakeEndedEarlier(stream: Stream): void {
  stream._onHandshakeEnd();
}
function peerLeftHandshake(stream: Stream): void {
  stream._peerLeftHandshake();
}
function peerEndedBeforeUpgrade(stream: Stream): void {
  stream._peerLeftHandshake(true);
}
function ignoreError(): void {}
function checkWriteLimit(stream: Stream): void {
  stream._checkWriteLimit();
}
/** A socket lingering after a graceful close (see Stream's #releaseSocket). */
interface Linger {
  readonly sock: OwnedSocket;
  /** The TCP (or native) socket under a TLS socket, else null. */
  readonly under: OwnedSocket | null;
  readonly stream: Stream;
  /** The stream's bytesRead when the current wait began. */
  read: number;
  /** Waits of LINGER_MS left before the linger ends whatever arrives. */
  rounds: number;
}

function armLinger(linger: Linger): void {
  const timer = setTimeout(lingerExpired, LINGER_MS, linger);
  timer.unref();
  linger.sock[kLinger] = timer;
  if (linger.under !== null) linger.under[kLinger] = timer;
}

/**
 * @internal Ends a socket's linger now: it closes at once (its server needs
 * the place under maxConnections). Bytes the peer sends later are answered
 * with a reset, which the linger was there to avoid: the oldest goes first.
 */
export function endLinger(sock: Duplex): void {
  const timer = (sock as OwnedSocket)[kLinger];
  if (timer !== undefined) clearTimeout(timer);
  sock.destroy();
  lingerEnded(sock);
}

function lingerExpired(linger: Linger): void {
  const { sock, stream } = linger;
  // A peer still sending is still there, reading our last bytes (a client
  // that pipelines while it reads a large reply slowly): closing now would
  // answer its next bytes with a reset that destroys what it has not read.
  if (!sock.destroyed && stream.bytesRead > linger.read && --linger.rounds > 0) {
    linger.read = stream.bytesRead;
    armLinger(linger);
    return;
  }
  sock.destroy();
  lingerEnded(sock); // a Duplex that emits no 'close' lingers no longer either
}
function establishTick(stream: Stream): void {
  stream._establishTick();
}
function processTick(stream: Stream): void {
  stream._processTick();
}

/** The most the addon reads at once (PN_READ_BUF_SIZE): what a frame may pin, as the guide says. */
const NATIVE_READ_SIZE = 256 * 1024;

/**
 * A read the native transport lends (reuseReadBuffer): the ArrayBuffer of
 * the chunk being delivered, detached by the addon as soon as the delivery
 * returns, and the native streams whose write queues took views of it
 * meanwhile (their bytes are copied before it ends). A lend never nests:
 * the addon calls into JS only from the event loop.
 */
let lentBlock: ArrayBufferLike | null = null;
const lentHolders: Stream[] = [];

/** The lend of `block` ends: the write queues that took views of it copy them. */
function endLend(block: ArrayBufferLike): void {
  lentBlock = null;
  for (let i = 0; i < lentHolders.length; i++) lentHolders[i]!._keepLent(block);
  lentHolders.length = 0;
}

// Writes made outside a read dispatch are flushed together at the end of the turn.
const dirty: Stream[] = [];
let flushScheduled = false;
function flushDirty(): void {
  flushScheduled = false;
  for (let i = 0; i < dirty.length; i++) dirty[i]!._flushQueued();
  dirty.length = 0;
}

const structCache = new Map<string, Struct>();

function isNative(socket: unknown): socket is NativeSocket {
  return socket instanceof NativeSocket;
}

/**
 * A connection. Subclass it and override the `on*` handlers; a
 * {@link Server} makes one instance per accepted connection, or call
 * {@link connect} for a client.
 */
export class Stream extends Channel {
  /**
   * The server that accepted this connection, else `null`. Typed `Server`
   * (its connections as Streams); a connection class that is only served
   * by a `Server<Chat>` can say so with `declare server: Server<Chat> | null;`.
   */
  server: Server | null = null;

  #state = S_INIT;
  #flags = 0;
  #sock: OwnedSocket | null = null;
  #tls: tls.TLSSocket | null = null;
  #framer: Framer = NULL_FRAMER;
  #bufferSize = 65536;
  #encoding: BufferEncoding | null = null;
  #rb: ReceiveBuffer | null = null;
  #wq: QueueItem[] | null = null;
  #wqBytes = 0;
  /** File and STARTTLS jobs in #wq: while there are none, every item is a Buffer, #wqBytes bytes in all. */
  #jobs = 0;
  #inflight = 0;
  #afterWrite: ((err?: Error | null) => void) | null = null;
  #connId = 0;
  #x: Extras | null = null;
  #bytesRead = 0;
  #bytesWritten = 0;

  /**
   * @param options `socket` wraps an already-connected socket or Duplex;
   *   `sslOptions` starts TLS once connected; `engine` picks the engine.
   */
  constructor(options?: StreamOptions) {
    super(options);
    if (options !== undefined && options !== null) {
      if (typeof options !== "object") throw typeError(`The Stream options must be an object, got ${describe(options)}.`);
      // Not for a server's accept (its own { engine, socket }): that path stays as cheap as it was.
      if (options.socket !== accepting.socket) checkOptionKeys(`new ${this.constructor.name || "Stream"}()`, options, STREAM_KEYS);
    }
    const socket = options?.socket;
    if (options?.sslOptions !== undefined) {
      checkPantsFlags(options.sslOptions, undefined);
      const x = this.#extras();
      x.sslCompiled = compileTls(options.sslOptions, options.sslOptions.server_side === true);
      x.sslOptions = options.sslOptions;
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

  #extras(): Extras {
    return this.#x ?? (this.#x = new Extras());
  }

  // -------------------------------------------------------------------------
  // Public state

  /** True from the moment the connection exists until it has closed; still true while `close(true)` drains (see {@link closing}). */
  get connected(): boolean {
    return this.#state === S_PENDING || this.#state === S_OPEN || this.#state === S_CLOSING;
  }

  /** True while a client connect is under way (false from its `onConnectError` on, as node:net's in its 'error'). */
  get connecting(): boolean {
    return this.#state === S_CONNECTING && (this.#x === null || this.#x.connectError === null);
  }

  /** True once the stream has closed (after which `onClose` has run or is running). */
  get closed(): boolean {
    return this.#state === S_CLOSED;
  }

  /** True while `close(true)` waits for the outgoing buffer to drain. */
  get closing(): boolean {
    return this.#state === S_CLOSING;
  }

  /**
   * True when `write` (and `writeFile`, `writePacked`, `flush`) would take
   * bytes rather than throw {@link ChannelStateError}: connected, not ended
   * ({@link end}), closing or closed, and TLS has not failed (false in
   * `onSslHandshakeError` and `onSslError`). The test for a broadcast loop
   * over other streams.
   */
  get writable(): boolean {
    return (this.#state === S_OPEN || this.#state === S_PENDING) && (this.#flags & F_WRITE_ENDED) === 0;
  }

  /** True when TLS is enabled (being negotiated or established). */
  get sslEnabled(): boolean {
    return this.#tls !== null || (this.#flags & F_TLS_UPGRADING) !== 0 || (this.#x?.sslOptions != null && this.#state <= S_CONNECTING);
  }

  /**
   * The OS file descriptor, where Node exposes it; null before the stream
   * has a socket and once it has closed (in `onClose` too, on either
   * transport, as in Pants: a closing socket's descriptor is no longer the
   * stream's to use).
   */
  get fileno(): number | null {
    if (this.#state === S_CLOSED) return null;
    const raw = (this.#x?.raw ?? this.#sock) as (Duplex & { _handle?: { fd?: number } | null }) | null;
    const fd = raw?._handle?.fd;
    return typeof fd === "number" && fd >= 0 ? fd : null;
  }

  /** The peer's address (or the PROXY header's client); assign to override, `undefined` to restore. */
  get remoteAddress(): Address | null {
    const x = this.#x;
    if (x !== null && x.remoteOverride !== undefined) return copyAddress(x.remoteOverride);
    return copyAddress(this.#addresses().remote);
  }
  set remoteAddress(value: Address | null | undefined) {
    this.#extras().remoteOverride = addressOverride(value);
  }

  /** @internal A stream's handlers failing again after its close are its own frames' (an async onRead each): logged at debug. */
  override _quietRepeatedFailures(): boolean {
    return true;
  }

  /** @internal The log record's fields: the name, and the peer's address (a getter a subclass broke does not stop the record). */
  override _logFields(): { channel: string; peer?: string } {
    let peer: string;
    try {
      peer = formatAddress(this.remoteAddress);
    } catch {
      peer = "(remoteAddress threw)";
    }
    return { channel: nameOf(this), peer };
  }

  /**
   * The PROXY protocol header this connection came with, on a server with
   * `proxyProtocol`: the proxy's view of the connection (its `destination`,
   * the address the client connected to, and the v2 TLVs: ALPN, authority,
   * SSL, unique ID, ...), from `onConnect` on. `null` otherwise. Read only.
   */
  get proxyHeader(): Readonly<ProxyHeader> | null {
    return this.#x?.proxyHeader ?? null;
  }

  /** This end's address; assign to override, `undefined` to restore. */
  get localAddress(): Address | null {
    const x = this.#x;
    if (x !== null && x.localOverride !== undefined) return copyAddress(x.localOverride);
    return copyAddress(this.#addresses().local);
  }
  set localAddress(value: Address | null | undefined) {
    this.#extras().localOverride = addressOverride(value);
  }

  /**
   * How incoming bytes are cut into frames for `onRead` (see the README's
   * table). May be changed inside `onRead`: the rest of the buffer is framed
   * by the new delimiter in the same turn.
   * @throws TypeError for a value that is no delimiter (`""`, `0`, `-1`, `[]`, `{}`, a regex matching "", a Struct or NetStruct of size 0).
   */
  get readDelimiter(): ReadDelimiter {
    return this.#framer.source;
  }
  set readDelimiter(value: ReadDelimiter) {
    this.#framer = compileDelimiter(value);
    if (this.#rb !== null) this.#rb.switched = true;
    this.#framingChanged();
    // Inside a dispatch the batch in hand is reframed first (see _onNativeFrames).
    this.#nativeReframe();
  }

  /**
   * Regex delimiters: true (default) delivers the bytes before the first
   * match; false delivers the match object of a match anchored at the start.
   */
  get regexSearch(): boolean {
    return (this.#flags & F_REGEX_ANCHORED) === 0;
  }
  set regexSearch(value: boolean) {
    if (value === this.regexSearch) return;
    if (value) this.#flags &= ~F_REGEX_ANCHORED;
    else this.#flags |= F_REGEX_ANCHORED;
    this.#framingChanged();
  }

  /** The framing changed: a scan in progress stops, and what is buffered is framed the new way. */
  #framingChanged(): void {
    this.#flags |= F_STOP;
    const rb = this.#rb;
    if (rb !== null) {
      rb.mark = 0;
      if ((this.#flags & F_IN_DISPATCH) === 0) this.#scheduleProcess();
    }
  }

  /**
   * The largest frame, in bytes, a delimiter may deliver (default 65536).
   * Reads back the value set: an integer or Struct delimiter larger than it
   * is framed at its own size (framing uses the larger of the two).
   * @throws TypeError for a value that is no number; RangeError unless a positive integer.
   */
  get bufferSize(): number {
    return this.#bufferSize;
  }
  set bufferSize(value: number) {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
      throw numberError(value, `bufferSize must be a positive integer, got ${describe(value)}.`);
    }
    this.#bufferSize = value;
    // A scan in progress stops, so the rest of the chunk is framed under the new limit.
    this.#flags |= F_STOP;
    // Outside onRead, bytes already buffered meet the new limit on the next tick (as a new delimiter frames them).
    if (this.#rb !== null && this.#rb.length > 0 && (this.#flags & F_IN_DISPATCH) === 0) this.#scheduleProcess();
    if ((this.#flags & F_NATIVE_FRAMING) !== 0) this.#nativeReframe();
  }

  /**
   * Opt-in (beyond Pants), for a handler that uses each chunk or frame only
   * inside `onRead` (an echo, a proxy, a checksum): the chunks may live in
   * memory the transport reads into again after `onRead` returns, so they
   * need no Buffer of their own per read. A chunk, and any frame or view
   * cut from it, is then valid only until `onRead` returns; afterwards it
   * may read as empty. `write()` copies what it has to keep; copy anything
   * else you keep or hand on (`Buffer.from(chunk)`). On the native
   * transport, reads of bulk size that find nothing pending are lent this
   * way (raw chunks, or the frames cut from them); on node:net, the reads
   * that land in its shared read buffer; under TLS it changes nothing.
   * Default false.
   * @throws TypeError unless a boolean.
   */
  get reuseReadBuffer(): boolean {
    return (this.#flags & F_LEND) !== 0;
  }
  set reuseReadBuffer(value: boolean) {
    if (typeof value !== "boolean") throw typeError(`reuseReadBuffer must be a boolean, got ${describe(value)}.`);
    if (value) this.#flags |= F_LEND;
    else this.#flags &= ~F_LEND;
    const sock = this.#sock;
    if (isNative(sock)) sock.setLendReads(value);
    else if ((this.#flags & F_TAKEN) !== 0 && sock !== null) lendReads(sock, value);
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
    this.#flags |= F_STOP;
    // Outside onRead, bytes already buffered (the start of a character cut by the read) meet it on the next tick.
    if (this.#rb !== null && this.#rb.length > 0 && (this.#flags & F_IN_DISPATCH) === 0) this.#scheduleProcess();
    this.#nativeReframe();
  }

  /**
   * Bytes received on this connection so far, as `stats.bytesIn` counts
   * them: the application's (the plaintext under TLS), never a PROXY header.
   */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /**
   * Bytes of this connection's writes handed to its socket so far (the
   * plaintext under TLS), as `stats.bytesOut` counts them; some may still
   * wait in the socket (see `bufferedAmount`).
   */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /**
   * Bytes written but not yet handed to the operating system (queued files
   * not counted); 0 once closed, when whatever was left has been dropped.
   */
  get bufferedAmount(): number {
    // A destroyed node:net socket still counts the writes it dropped (the
    // native one does not): what is left of a closed stream will never go out.
    if (this.#state === S_CLOSED) return 0;
    return this.#wqBytes + (this.#sock !== null ? this.#sock.writableLength : 0);
  }

  /**
   * Above this many buffered bytes the stream stops reading until `onWrite`.
   * Default 1 MiB on a stream a server accepted (or made over a socket you
   * gave), whose writes answer what it reads (a lower `writeBufferLimit`
   * then comes first: a peer that does not read is dropped, not waited
   * for); `Infinity` (never) on one that `connect()`ed, whose writes
   * are its own requests: were it to stop reading too, a client and a
   * server each waiting for the other to read would wait forever.
   * `Infinity` turns the pause off on any stream. Lowered below what
   * already waits, reading pauses at once.
   * @throws RangeError (`ERR_OUT_OF_RANGE`) for a finite value not below
   *   `writeBufferLimit`: the stream would never pause before the limit
   *   closed it (set `writeBufferLimit` first, or `Infinity` for no pause).
   */
  get writeHighWaterMark(): number {
    const x = this.#x;
    if (x === null) return DEFAULT_HWM;
    return x.writeHighWaterMark ?? (x.connectTarget !== null ? Infinity : DEFAULT_HWM);
  }
  set writeHighWaterMark(value: number) {
    if (value !== Infinity) {
      checkSize("writeHighWaterMark", value);
      const limit = this.writeBufferLimit;
      if (value >= limit) {
        throw rangeError(
          `writeHighWaterMark (${value}) must be below writeBufferLimit (${limit}): the stream would never pause reading before the limit closed it. ` +
            "Raise writeBufferLimit first, or set writeHighWaterMark to Infinity to never pause.",
        );
      }
    }
    this.#extras().writeHighWaterMark = value;
    // Lowered below what already waits (outside a write): reading pauses now,
    // as after a write, until the drain (onWrite). Writes still queued (held
    // behind a slow peer, behind a file, or until the end of the delivery)
    // are flushed as before, and that flush or its drain resumes reading.
    if (this.#state === S_OPEN && this.bufferedAmount > value) {
      if (this.#wq === null || this.#wq.length === 0) this.#flush();
      else this.#pause(P_BACKPRESSURE);
    }
  }

  /**
   * Above this many buffered bytes `onOverflowError` is called (default 64 MiB).
   * Lowered below what already waits, it is called on the next tick.
   * @throws RangeError (`ERR_OUT_OF_RANGE`) for a value not above a finite
   *   `writeHighWaterMark` that was set (lower that first).
   */
  get writeBufferLimit(): number {
    return this.#x?.writeBufferLimit ?? DEFAULT_WRITE_LIMIT;
  }
  set writeBufferLimit(value: number) {
    checkSize("writeBufferLimit", value);
    const hwm = this.#x?.writeHighWaterMark ?? null;
    if (hwm !== null && hwm !== Infinity && hwm >= value) {
      throw rangeError(
        `writeBufferLimit (${value}) must be above writeHighWaterMark (${hwm}): the stream would never pause reading before the limit closed it. ` +
          "Lower writeHighWaterMark first, or set it to Infinity to never pause.",
      );
    }
    this.#extras().writeBufferLimit = value;
    // Lowered below what already waits: onOverflowError on the next tick (as
    // a lowered bufferSize's), not inside the setter, nor only at the next write.
    if (this.#state !== S_CLOSED && this.bufferedAmount > value) process.nextTick(checkWriteLimit, this);
  }

  /** @internal The writes waiting are checked against writeBufferLimit (after it was lowered). */
  _checkWriteLimit(): void {
    this.#checkLimit(this.bufferedAmount);
  }

  /**
   * No bytes either way for this many ms (none read, none of what was written
   * leaving, a large write still draining counts; where TCP_INFO shows the
   * peer's acknowledgements, only they count for writes, so a peer that
   * vanished times out however much is still written to it) calls
   * `onTimeout()` (0 = off; default from the server; not during a first
   * TLS handshake, which has its own `handshakeTimeout`: the idle time
   * counts from `onConnect`). A `close(true)` that makes no progress for
   * this long (30 s at most) closes without flushing.
   * On a client it bounds the connect too (the DNS lookup and the TCP
   * connect; a TLS handshake has its own 10 s deadline): a connect still
   * under way that long after `connect()`, or after the timeout was set
   * during it, fails with `onConnectError` (a {@link ConnectError}, errno
   * `ETIMEDOUT`, caused by a {@link TimeoutError} of kind `"connect"`).
   */
  get idleTimeout(): number {
    return this.#x?.idleTimeout ?? 0;
  }
  set idleTimeout(value: number) {
    const x = this.#extras();
    x.idleTimeout = checkMs("idleTimeout", value);
    // A connect in progress ignores activity, so the new bound starts here.
    if (this.#state === S_CONNECTING) x.idleSince = this.engine.time();
    this.#flags |= F_ACTIVE;
    this.#updateTimed();
  }

  /**
   * Milliseconds a TLS handshake of this stream (the first, or a STARTTLS
   * upgrade's) may take; past it the handshake fails with a
   * {@link TimeoutError} (`onSslHandshakeError`, for a client also
   * `onConnectError`, then `onClose`). 0: no limit. Default: the server's
   * `handshakeTimeoutMs` for its streams, 10 000 for clients. Set during a
   * handshake, it bounds that handshake from then.
   * @throws RangeError (TypeError for a non-number) unless a non-negative number.
   */
  get handshakeTimeout(): number {
    return this.#x?.handshakeTimeout ?? this.server?._handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
  }
  set handshakeTimeout(value: number) {
    this.#extras().handshakeTimeout = checkMs("handshakeTimeout", value);
    if (this.#handshaking() && this.#state !== S_CLOSED) this.#armHandshakeTimeout();
  }

  /**
   * TCP_NODELAY on this connection. On (the default of every pants-ts
   * socket: the writes of a turn are joined already), small writes leave at
   * once; off, the kernel may hold one back while an earlier one is
   * unacknowledged, to join them (Nagle's algorithm). No effect on a UNIX
   * socket or a Duplex of your own; a client's call before it has connected
   * applies from the connect; a no-op once closed.
   * @throws TypeError unless a boolean.
   */
  setNoDelay(noDelay = true): this {
    if (typeof noDelay !== "boolean") throw typeError(`setNoDelay() wants a boolean, got ${describe(noDelay)}.`);
    this.#extras().noDelay = noDelay;
    this.#applyTcpOptions();
    return this;
  }

  /**
   * TCP keep-alive on this connection: once it has been silent for
   * `initialDelayMs`, the kernel probes the peer and fails the connection if
   * it has vanished without a FIN or reset (a crashed host, a dropped NAT
   * entry). The kernel counts the delay in whole seconds, from 1 to 32 767:
   * a delay under a second is one (Node's would be the system's two hours),
   * a longer one the most it takes. 0 leaves it as it is, as in Node: the
   * system's idle time (two hours on Linux) unless set before on this
   * connection (an earlier call, the server's `keepAliveMs`). `false` turns
   * the probes off. The server's
   * `keepAliveMs` option does this for every connection it accepts; this is
   * per connection, clients included. Applies as {@link setNoDelay} does.
   * @throws TypeError unless `enable` is a boolean; RangeError (TypeError for a non-number) unless `initialDelayMs` is a non-negative number.
   */
  setKeepAlive(enable: boolean, initialDelayMs = 0): this {
    if (typeof enable !== "boolean") throw typeError(`setKeepAlive() wants a boolean, got ${describe(enable)}.`);
    const delay = checkMs("setKeepAlive()'s initialDelayMs", initialDelayMs);
    this.#extras().keepAlive = enable ? keepAliveDelay(delay) : -1;
    this.#applyTcpOptions();
    return this;
  }

  /** Hands setNoDelay/setKeepAlive's settings to the TCP socket (under TLS: the one under it), once connected. */
  #applyTcpOptions(): void {
    const x = this.#x;
    if (x === null || this.#state < S_PENDING || this.#state === S_CLOSED) return;
    const tcp = x.raw ?? this.#sock;
    if (!(tcp instanceof net.Socket) && !isNative(tcp)) return;
    if (x.noDelay !== null) tcp.setNoDelay(x.noDelay);
    if (x.keepAlive !== null) tcp.setKeepAlive(x.keepAlive >= 0, Math.max(x.keepAlive, 0));
  }

  /** The peer's certificate once the TLS handshake is done (empty object if none), else `null`. */
  get peerCertificate(): PeerCertificate | null {
    if (this.#tls === null || (this.#flags & F_TLS_DONE) === 0) return null;
    return this.#tls.getPeerCertificate(true) as PeerCertificate;
  }

  /**
   * The TLS version the handshake agreed (`"TLSv1.3"`, `"TLSv1.2"`), as
   * node:tls's `getProtocol()`; `null` on plain TCP and until the handshake
   * is done, still readable once the stream has closed (in `onClose`, to log).
   */
  get sslProtocol(): string | null {
    return this.#x?.sslProtocol ?? null;
  }

  /**
   * The cipher suite the handshake agreed (`name`, IETF `standardName`,
   * `version`), as node:tls's `getCipher()`; `null` when {@link sslProtocol} is.
   */
  get sslCipher(): CipherNameAndProtocol | null {
    const cipher = this.#x?.sslCipher ?? null;
    return cipher === null ? null : { ...cipher };
  }

  /**
   * Why the peer's certificate was not verified (`authorized` false), as
   * node:tls's `authorizationError`: the OpenSSL code, such as
   * `"DEPTH_ZERO_SELF_SIGNED_CERT"` or `"UNABLE_TO_VERIFY_LEAF_SIGNATURE"`
   * (a server with `requestCert` whose client sent no certificate gets one
   * too). `null` when verified, on plain TCP and until the handshake is
   * done; still readable once the stream has closed. What a peer accepted with
   * `rejectUnauthorized: false` reads to decide for itself.
   */
  get authorizationError(): string | null {
    if (this.#tls === null || (this.#flags & F_TLS_DONE) === 0 || this.#tls.authorized) return null;
    const reason = this.#tls.authorizationError as Error | string | null | undefined;
    if (reason == null) return null;
    return typeof reason === "string" ? reason : ((reason as Error & { code?: string }).code ?? reason.message);
  }

  /** The ALPN protocol agreed in the handshake, or `false`; `null` before TLS. */
  get alpnProtocol(): string | false | null {
    if (this.#tls === null || (this.#flags & F_TLS_DONE) === 0) return null;
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
    return this.#tls !== null && (this.#flags & F_TLS_DONE) !== 0 && this.#tls.authorized;
  }

  /**
   * True when this connection's TLS handshake resumed an earlier session
   * (on either side: a client given `sslOptions.session`, a server that
   * accepted it) rather than doing a full one. False on plain TCP and until
   * the handshake is done; still readable once the stream has closed.
   */
  get sslSessionReused(): boolean {
    return this.#x?.sessionReused === true;
  }

  /**
   * Client side: the TLS session to resume on the next connection to the
   * same server (give it as `sslOptions.session`): the latest one the
   * server sent (see {@link onSslSession}), or, after a resumed handshake
   * that brought none, the session resumed. Under TLS 1.2 it is there from
   * `onConnect` on; under TLS 1.3 from the first `onSslSession` (the server
   * sends its tickets after the handshake). `null` before any, on plain TCP
   * and on a server's stream; still readable once the stream has closed.
   */
  get sslSession(): Buffer | null {
    return this.#x?.session ?? null;
  }

  // -------------------------------------------------------------------------
  // Client side

  /**
   * Connects to `address`; `onConnect` (or `onConnectError`, then
   * `onClose`) follows on a later tick. Host names resolve asynchronously.
   * `options.localAddress` binds the source address and port first.
   * @throws InvalidAddressFormatError synchronously for a bad address or `localAddress`; the stream stays unconnected.
   * @throws TypeError if `options` is not an object.
   * @throws ChannelStateError if connected, connecting, closing or closed.
   * @throws Error `ERR_NATIVE_UNAVAILABLE` when `PANTS_TS_TRANSPORT=native` asks for the addon and it is not available; the stream stays unconnected.
   */
  connect(address: Address, options?: ConnectOptions): this {
    if (this.#state === S_CLOSED || this.#state === S_CLOSING) {
      throw new ChannelStateError(`connect() called on closed ${nameOf(this)}.`);
    }
    if (this.#state !== S_INIT) throw new ChannelStateError(`connect() called on active ${nameOf(this)}.`);
    // Class fields over Stream's setters, before anything reads them (a refused value throws here, the stream unconnected).
    adoptAccessorFields(this, Stream.prototype, "Stream");
    const target = parseAddress(address);
    const { local, signal } = connectOptionsOf(options, target);
    // Before the state changes: a transport that cannot be had throws, as a bad address does, and leaves the stream unconnected.
    const native = this.#x?.sslOptions == null && useNative(undefined);
    this.#extras().connectTarget = target;
    this.#state = S_CONNECTING;
    if (signal?.aborted === true) {
      // No socket: the stream closes on a later tick, as one aborted while connecting does now.
      this.engine._channels.add(this);
      process.nextTick(abortLater, this, signal);
      return this;
    }
    if (signal !== undefined) this.#x!.dropSignal = onAbort(signal, () => this._connectAborted(signal));
    let sock: net.Socket | NativeSocket;
    const host = target.kind !== "tcp" ? "" : target.host === "" ? dialHost(target) : withScope(target.host, target.scopeid);
    if (native) {
      this.#flags |= F_NATIVE;
      sock = NativeSocket.connect(
        target.kind === "unix"
          ? { path: target.path }
          : { host, port: target.port, family: lookupFamily(target), ...(local !== null && { local }) },
      );
      sock.setOwner(this);
      if ((this.#flags & F_LEND) !== 0) sock.setLendReads(true);
    } else if (target.kind === "unix") {
      sock = net.connect({ path: target.path, allowHalfOpen: true });
    } else {
      const opts: net.TcpNetConnectOpts = { host, port: target.port, allowHalfOpen: true, noDelay: true };
      const family = lookupFamily(target);
      if (family !== 0) opts.family = family;
      // A literal source address: its family's address (node:net tries only a name's first address when it binds one).
      else if (local !== null && local.family !== 0 && target.family === 0) opts.family = local.family;
      if (local !== null) {
        // node:net binds "" to any address of the family it connects over, as the addon does.
        if (local.host !== "") opts.localAddress = local.host;
        opts.localPort = local.port;
      }
      sock = net.connect(opts);
    }
    const owned = sock as unknown as OwnedSocket;
    owned[kStream] = this;
    this.#sock = owned;
    owned.on("error", onSocketError);
    owned.on("close", onSocketClose);
    owned.once("connect", onSocketConnect);
    this.engine._channels.add(this);
    this.engine.stats.open++;
    this.#updateTimed(); // an idleTimeout set before connect() bounds the connect
    return this;
  }

  /**
   * @internal connect()'s signal aborted: a stream that has not connected
   * yet closes now (no `onConnectError`), and `ready()` rejects with an
   * {@link AbortError}; a no-op once connected or closed.
   */
  _connectAborted(signal: AbortSignal): void {
    if (this.#state === S_CLOSED || (this.#flags & F_EVER_CONNECTED) !== 0) return;
    const x = this.#extras();
    if (x.connectError === null) {
      x.connectError = new AbortError(`The connect of ${nameOf(this)} to ${formatAddress(this.#targetAddress())} was aborted.`, { cause: signal.reason });
    }
    this.#finishClose(false, true);
  }

  #dropSignal(): void {
    const x = this.#x;
    if (x === null || x.dropSignal === null) return;
    const drop = x.dropSignal;
    x.dropSignal = null;
    drop();
  }

  /**
   * What `await using stream = ...` does when the block ends: `close()`
   * (flushing what was written; bounded as `close(true)` is, 30 s without
   * progress at most), resolving once `onClose` has run. Resolves at once
   * on a closed stream; calling it again returns the same promise.
   */
  [Symbol.asyncDispose](): Promise<void> {
    if (!(this instanceof Stream)) throw unboundError("[Symbol.asyncDispose]", "Stream", this);
    if (this.#state === S_CLOSED) return this.#x?.disposePromise ?? Promise.resolve();
    const x = this.#extras();
    if (x.disposePromise === null) {
      x.disposePromise = new Promise<void>((resolve) => {
        x.disposed = resolve;
      });
    }
    const done = x.disposePromise;
    this.close();
    return done;
  }

  /**
   * Settles when the stream is connected (at `onConnect`, after TLS), or
   * rejects with the connect error ({@link ChannelStateError} if the stream
   * was closed before it connected). Never an unhandled rejection if unused.
   */
  ready(): Promise<this> {
    return this.#ready() as Promise<this>;
  }

  #ready(): Promise<Stream> {
    const x = this.#extras();
    if (x.readyPromise === null) {
      const ever = (this.#flags & F_EVER_CONNECTED) !== 0;
      if (ever && this.#state !== S_CLOSED) x.readyPromise = Promise.resolve(this);
      else if (x.connectError !== null) x.readyPromise = Promise.reject(x.connectError);
      else if (this.#state === S_CLOSED) {
        x.readyPromise = ever ? Promise.resolve(this) : Promise.reject(new ChannelStateError(`${nameOf(this)} closed before it connected.`));
      } else {
        x.readyPromise = new Promise<Stream>((resolve, reject) => {
          x.readyResolve = resolve;
          x.readyReject = reject;
        });
      }
    }
    return x.readyPromise;
  }

  // -------------------------------------------------------------------------
  // TLS

  /**
   * Enables TLS. Before `connect`: the connection is TLS from the start.
   * On a connected stream (STARTTLS): the upgrade starts once everything
   * already written has been sent; later writes are sent encrypted, and
   * bytes the peer sent right behind its command go to the handshake.
   * `server_side` defaults to true on a stream a server accepted. The
   * options (and their files) are read and checked now, once. A peer
   * that has ended (its FIN read) can never complete the handshake: the
   * upgrade fails on a later turn (`onSslHandshakeError` with an `Error`
   * of code `ECONNRESET`), then the stream closes.
   * @throws ChannelStateError if TLS is already enabled, or the stream is ended ({@link end}), closing or closed.
   * @throws RangeError if `do_handshake_on_connect` is not false.
   */
  startSSL(sslOptions: SslOptions = {}): this {
    if (this.#state === S_CLOSED || this.#state === S_CLOSING) {
      throw new ChannelStateError(`startSSL() called on closed ${nameOf(this)}.`);
    }
    // The handshake writes: after our FIN (or with one queued) it could only fail, or be cut by it.
    if ((this.#flags & F_WRITE_ENDED) !== 0) this.#writeStateError("startSSL");
    if (this.sslEnabled) throw new ChannelStateError(`startSSL() called on SSL-enabled ${nameOf(this)}.`);
    checkPantsFlags(sslOptions, undefined);
    if (this.#state === S_INIT || this.#state === S_CONNECTING) {
      const x = this.#extras();
      x.sslCompiled = compileTls(sslOptions, sslOptions.server_side === true);
      x.sslOptions = sslOptions;
      return this;
    }
    // STARTTLS: queue the upgrade behind the data already written.
    const serverSide = sslOptions.server_side ?? (this.#flags & F_SERVER_SIDE) !== 0;
    const compiled = compileTls(sslOptions, serverSide);
    this.#flags |= F_TLS_UPGRADING | F_STOP;
    (this.#wq ??= []).push({ tls: { ...sslOptions, server_side: serverSide }, compiled });
    this.#jobs++;
    // Not now: inside onRead the rest of the chunk (maybe the peer's
    // ClientHello) must reach the receive buffer before the upgrade takes it.
    this.#afterQueue(false);
    return this;
  }

  // -------------------------------------------------------------------------
  // Writing

  /**
   * Queues `data`; bytes written in one turn leave in as few system calls
   * as possible. `flush` sends now.
   * @throws ChannelStateError if the stream is not connected (a client still connecting too), ended ({@link end}), closing or closed.
   * @throws TypeError unless `data` is a string or a Uint8Array, or if `flush` is given and is not a boolean (`ERR_INVALID_ARG_TYPE`).
   */
  write(data: string | Uint8Array, flush = false): void {
    checkFlush("write()", flush);
    if (!this.writable) this.#writeStateError("write");
    let buf: Buffer;
    if (typeof data === "string") buf = Buffer.from(data, "utf8");
    else if (Buffer.isBuffer(data)) buf = data;
    else if (data instanceof Uint8Array) buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    else throw typeError(`write() expects a string or a Uint8Array, got ${describe(data)}.`);
    if (buf.length === 0) {
      // Nothing to queue, but write("", true) still sends what is queued, as flush() does.
      if (flush) this.#flush();
      return;
    }
    if (lentBlock !== null && buf.buffer === lentBlock) buf = this.#borrow(buf);
    // The queue exists only while it holds something (see spareQueues).
    let wq = this.#wq;
    if (wq === null) wq = this.#wq = spareQueues.pop() ?? [];
    wq.push(buf);
    this.#wqBytes += buf.length;
    this.#afterQueue(flush);
  }

  /**
   * Sends `nbytes` bytes (0: to the end) of a file from `offset`, in order
   * with other writes, streamed in chunks (never read whole into memory).
   * A path is opened and closed by the stream; a descriptor or FileHandle
   * stays the caller's to close (after `onWrite`). If the stream closes
   * first, the read in progress still completes: a FileHandle's `close()`
   * waits for it, a bare descriptor closed meanwhile could have its number
   * reused and read from, so prefer a FileHandle when you may close early.
   * A pipe, FIFO or socket
   * is read from where it is (`offset` must be 0). A file that cannot be
   * read is reported to `onWriteError`, whose default closes; a stream
   * kept open goes on with the writes queued after the file.
   * @throws ChannelStateError as {@link write} does.
   * @throws TypeError unless `file` is a non-empty path, a descriptor or a FileHandle, or if `flush` is given and is not a boolean; RangeError (TypeError for a non-number) unless `nbytes` and `offset` are non-negative integers.
   */
  writeFile(file: string | number | FileHandle, nbytes = 0, offset = 0, flush = false): void {
    checkFlush("writeFile()", flush);
    if (!this.writable) this.#writeStateError("writeFile");
    const isHandle = typeof file === "object" && file !== null && typeof (file as FileHandle).read === "function";
    if (!(typeof file === "string" && file.length > 0) && !(typeof file === "number" && Number.isInteger(file) && file >= 0) && !isHandle) {
      throw typeError(`writeFile() expects a path, a file descriptor or a FileHandle, got ${describe(file)}.`);
    }
    if (!Number.isSafeInteger(nbytes) || nbytes < 0) throw numberError(nbytes, `writeFile() nbytes must be a non-negative integer, got ${describe(nbytes)}.`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw numberError(offset, `writeFile() offset must be a non-negative integer, got ${describe(offset)}.`);
    (this.#wq ??= []).push({ file, nbytes, offset });
    this.#jobs++;
    this.#afterQueue(flush);
  }

  /**
   * Packs `values` with `options.format` (a Struct format string or a
   * Struct/NetStruct), or with the current Struct/NetStruct read delimiter,
   * and writes the bytes.
   * @throws ChannelStateError as {@link write} does.
   * @throws RangeError if there is no format to use, or for a malformed format string (`ERR_INVALID_ARG_VALUE`).
   * @throws TypeError / RangeError for values the format cannot pack (as {@link Struct.pack}).
   * @throws TypeError unless `values` is an array, or if `options` is not an object, `options.format` not a format string, Struct or NetStruct, or `options.flush` not a boolean.
   */
  writePacked(values: readonly unknown[], options?: WritePackedOptions): void {
    if (options !== undefined) checkPackedOptions(options);
    if (!this.writable) this.#writeStateError("writePacked");
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
   * @throws ChannelStateError as {@link write} does.
   */
  flush(): void {
    if (!(this instanceof Stream)) throw unboundError("flush", "Stream", this);
    if (!this.writable) this.#writeStateError("flush");
    this.#flush();
  }

  /** Stops delivering `onRead` and reading from the peer until {@link resumeReading}. */
  pauseReading(): void {
    this.#pause(P_USER);
  }

  /** Undoes {@link pauseReading}; the frames buffered meanwhile are delivered on the next tick (`process.nextTick`). */
  resumeReading(): void {
    this.#resume(P_USER);
  }

  // -------------------------------------------------------------------------
  // Closing

  /**
   * Half-close: a FIN once everything written so far has gone (under TLS,
   * close_notify first), while the stream goes on reading: frames still
   * arrive, then `onEnd` when the peer ends too (its default closes the
   * stream). As Node's `socket.end()`, asyncio's `write_eof()` and Netty's
   * `shutdownOutput()`. Afterwards `write` and the other writes (and
   * `startSSL`) throw {@link ChannelStateError} and `writable` is false; a
   * second call does nothing. `end(data)` writes `data` first, as
   * `socket.end(data)` does.
   * @throws ChannelStateError unless the stream is open (from `onConnect` on; not closing or closed); with `data`, also once ended.
   * @throws TypeError as {@link write} does for `data`.
   */
  end(data?: string | Uint8Array): void {
    if (!(this instanceof Stream)) throw unboundError("end", "Stream", this);
    // Before the write: an end() that throws has sent nothing.
    if (this.#state !== S_OPEN) this.#writeStateError("end");
    if (data !== undefined) this.write(data);
    if ((this.#flags & F_WRITE_ENDED) !== 0) return;
    this.#flags |= F_WRITE_ENDED;
    this.#flush();
    this.#finAfterWrites();
  }

  /** end()'s FIN, once nothing waits in the stream's own queue (the socket sends it after what it holds). */
  #finAfterWrites(): void {
    if ((this.#flags & (F_WRITE_ENDED | F_FIN_SENT)) !== F_WRITE_ENDED || this.#state === S_CLOSED || this.#sock === null) return;
    if ((this.#wq !== null && this.#wq.length > 0) || (this.#flags & F_FILE_ACTIVE) !== 0 || this.#handshaking()) return;
    this.#flags |= F_FIN_SENT;
    this.#sock.end();
  }

  /**
   * Closes the stream. `flush` true (default): no more `onRead`, everything
   * already written is sent, then the connection closes with a FIN (bytes
   * still arriving are read and discarded while they keep coming, until
   * none came for 2 s, or 30 s in all, or 2 s per 128 KiB the stream wrote,
   * so no reset destroys data the peer has not read). `flush` false: unsent data is
   * dropped and the connection closes now (when the OS already took
   * everything, it still ends with a FIN and the linger, not a reset).
   * A flushing close that makes no progress for 30 s (or `idleTimeout`,
   * when shorter: a peer that vanished) closes without flushing.
   * `onClose` runs exactly once.
   * @throws TypeError if `flush` is given and is not a boolean (`close("bye")`, a callback: `ERR_INVALID_ARG_TYPE`).
   */
  close(flush = true): void {
    if (!(this instanceof Stream)) throw unboundError("close", "Stream", this);
    checkFlush("close()", flush);
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CLOSING) {
      if (!flush) this.#finishClose(false, true);
      return;
    }
    if (flush && (state === S_OPEN || state === S_PENDING) && this.#hasPendingWrites()) {
      this.#state = S_CLOSING;
      this.#flags |= F_STOP;
      // During a TLS handshake its own deadline stays (the drain's comes once it is done).
      if (!this.#handshaking() || this.#x?.deadlineKind !== "handshake") this.#setDeadline("drain", drainTimeout(this.#x));
      this.#flush();
      return;
    }
    this.#finishClose(flush, true);
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
  /**
   * A client connect failed; `onClose` follows. Default: log it, at `warn`,
   * or at `debug` when `ready()` was called (its rejection reports it).
   */
  onConnectError(err: ConnectError): void {
    if (this.#x !== null && this.#x.readyPromise !== null) {
      if (log.debugOn()) log.current.debug({ err, ...this._logFields() }, `Connect failed: ${err.message}`);
    } else log.current.warn({ err, ...this._logFields() }, `Connect failed: ${err.message}`);
  }
  /**
   * Reading failed: the socket (a reset: the stream closes), or the peer's
   * bytes (not valid in `encoding`, a malformed frame). Default: log it
   * (debug for the peer's doing) and close — flushing the replies already
   * written for bad input, at once for a socket error.
   */
  onReadError(err: Error): void {
    logPeerError(err, "Read error", this);
    const code = (err as { code?: unknown }).code;
    this.close(code === "ERR_MALFORMED_FRAME" || code === "ERR_ENCODING_INVALID_ENCODED_DATA");
  }
  /**
   * Writing failed (a reset, a file that cannot be read, or a write a user's
   * Duplex failed: its `_write` called back with an error). Default: log it
   * and close.
   */
  onWriteError(err: Error): void {
    logPeerError(err, "Write error", this);
    this.close(false);
  }
  /**
   * A frame outgrew `bufferSize` (`direction` "read"), or the outgoing
   * buffer `writeBufferLimit` ("write"). Default: close — after sending the
   * replies already written for an oversized frame (so the outcome does not
   * depend on how the bytes were split into packets), at once when the
   * peer is not reading.
   */
  onOverflowError(err: BufferOverflowError): void {
    if (log.debugOn()) log.current.debug({ err, ...this._logFields() }, err.message);
    this.close(err.direction === "read");
  }
  /** No bytes either way for `idleTimeout` ms. Default: close without flushing. */
  onTimeout(): void {
    if (log.debugOn()) log.current.debug(this._logFields(), "Idle timeout.");
    this.close(false);
  }
  /**
   * The peer closed its sending side (FIN), and every frame it sent has been
   * handled (the promises of `async` onRead handlers included). Default:
   * `close(true)`, so the replies already written still go out, then a FIN.
   * Override it to keep writing (a reply still being produced, e.g. from
   * `onWrite`) and call `close()` when done.
   */
  onEnd(): void {
    this.close(true);
  }
  /** `server.shutdown()` is draining this connection. Default: `close(true)`. */
  onShutdown(): void {
    this.close(true);
  }
  /** Placeholder: the TLS handshake completed (before `onConnect`). */
  onSslHandshake(): void {}
  /**
   * Placeholder, client side: the server sent a session this client can
   * resume on a later connection (give it as `sslOptions.session`; the
   * latest is also {@link sslSession}). Comes after `onConnect` (after a
   * STARTTLS upgrade's `onSslHandshake`), each time the server sends one:
   * under TLS 1.3 after the handshake, often twice; a handshake that
   * resumed a session may bring none.
   */
  onSslSession(_session: Buffer): void {}
  /**
   * The TLS handshake failed (or timed out); the stream closes after this
   * returns (for a client's first handshake, `onConnectError` follows it,
   * then `onClose`, even when this handler closed the stream or threw).
   * Nothing can be sent any more: `writable` is false here and the writes
   * throw {@link ChannelStateError}. Default: log at debug.
   */
  onSslHandshakeError(err: Error): void {
    if (log.debugOn()) log.current.debug({ err, ...this._logFields() }, `TLS handshake failed: ${err.message.trimEnd()}`);
  }
  /**
   * TLS could not be set up (node:tls refused the options); the stream
   * closes after this returns (for a client's first handshake,
   * `onConnectError` follows it, then `onClose`, even when this handler
   * closed the stream or threw). As in `onSslHandshakeError`, the writes
   * throw here. Default: log it.
   */
  onSslError(err: Error): void {
    logPeerError(err, "TLS error", this);
  }

  // -------------------------------------------------------------------------
  // Internals: attaching sockets

  /** Wraps an already-connected socket (accepted by a server, or given by the user). */
  #adopt(sock: OwnedSocket): void {
    sock[kStream] = this;
    this.#sock = sock;
    const raw = sock[kRawSocket];
    if (raw !== undefined) this.#extras().raw = raw;
    const proxyHeader = sock[kProxyHeader];
    if (proxyHeader !== undefined) this.#extras().proxyHeader = proxyHeader;
    const acceptedAt = sock[kAcceptedAt];
    if (acceptedAt !== undefined) this.#extras().acceptedAt = acceptedAt;
    if (isNative(sock)) {
      this.#flags |= F_NATIVE;
      sock.setOwner(this);
      if ((this.#flags & F_LEND) !== 0) sock.setLendReads(true);
    }
    // (A server's stream: once it knows its server. A socket still connecting
    // has no addresses yet: _onTcpConnect reads them.)
    if (sock !== accepting.socket && (sock as net.Socket).connecting !== true) this.#keepAddresses();
    if (!(sock instanceof net.Socket) && !isNative(sock)) this.#extras().foreign = true;
    sock.on("error", onSocketError);
    sock.on("close", onSocketClose);
    if (sock !== accepting.socket) this.engine._channels.add(this);
    else {
      // Accepted by a server: counted now, as the server counts it; and the
      // server's side of TLS already (a startSSL() in the constructor).
      this.engine.stats.accepted++;
      this.#flags |= F_COUNTED | F_SERVER_SIDE;
    }
    this.engine.stats.open++;
    this.#state = S_PENDING;
    if (sock.destroyed === true && (sock as Duplex & { closed?: boolean }).closed !== false) {
      // Dead already, its 'close' emitted (the peer reset while an async onAccept
      // awaited): no event will ever close this stream. It closes as if that
      // reset had come now: onClose, no onConnect (queued before the onConnect tick).
      process.nextTick(adoptedClosed, this);
    }
    if (sock[kTlsPending] === true) {
      // Server side: the handshake runs now; onConnect follows onSslHandshake.
      this.#flags |= F_SERVER_SIDE;
      this.#tls = sock as unknown as tls.TLSSocket;
      // Done while an async onAccept awaited: its 'secure' came before this stream listened.
      if (sock[kTlsSecured] === true) process.nextTick(securedTick, this);
      else sock.once("secure", onSocketSecure);
      // A peer that half-closed while an onAccept override kept the socket: its 'end' came already.
      if (sock[kTlsSecured] !== true && sock.readableEnded) process.nextTick(handshakeEndedEarlier, this);
      else sock.once("end", onHandshakeEnd);
      this.#armHandshakeTimeout();
      return;
    }
    if (sock instanceof tls.TLSSocket) {
      this.#tls = sock;
      this.#flags |= F_TLS_DONE;
    }
    const sslOptions = this.#x?.sslOptions;
    if (sslOptions != null) {
      // The user gave a plain socket and sslOptions: TLS starts on the next tick.
      if (sslOptions.server_side === true) this.#flags |= F_SERVER_SIDE;
      process.nextTick(() => this.#wrapTls(sslOptions, true, this.#x?.sslCompiled ?? null));
      return;
    }
    if ((sock as net.Socket).connecting === true) {
      this.#state = S_CONNECTING;
      sock.once("connect", onSocketConnect);
      return;
    }
    process.nextTick(establishTick, this);
  }

  /**
   * Whether anything that runs after a reset may ask for the addresses (a
   * reset socket can no longer tell them): the handlers called then, or a
   * diagnostics subscriber.
   */
  #asksAddressesLate(): boolean {
    return (
      this.onClose !== Stream.prototype.onClose ||
      this.onReadError !== Stream.prototype.onReadError ||
      this.onWriteError !== Stream.prototype.onWriteError ||
      this.onSslHandshakeError !== Stream.prototype.onSslHandshakeError ||
      diagnostics.connectionClose.hasSubscribers ||
      diagnostics.connectionError.hasSubscribers
    );
  }

  /**
   * A node:net socket (or any under TLS) can no longer tell its addresses
   * once an error has destroyed it (a peer's reset): read them now if
   * anyone may ask after that. The native transport keeps the peer's in C.
   * Two system calls: only then.
   */
  #keepAddresses(): void {
    if (((this.#flags & F_NATIVE) === 0 || this.#x?.raw != null) && this.#asksAddressesLate()) this.#addresses();
  }

  /** The peer's and our addresses, read from the socket on first use. */
  #addresses(): Extras {
    const x = this.#extras();
    if ((this.#flags & F_ADDRESSES) !== 0) return x;
    const raw = (x.raw ?? this.#sock) as net.Socket | null;
    if (raw === null || !(raw instanceof net.Socket || isNative(raw))) return x;
    // While a client connects, each ask reads afresh; once connected, for good.
    if (this.#state !== S_CONNECTING) this.#flags |= F_ADDRESSES;
    x.remote = fromNodeAddress(raw.remoteAddress, raw.remotePort, raw.remoteFamily);
    const local = raw.address();
    x.local = typeof local === "object" && local !== null && "port" in local ? fromNodeAddress(local.address, local.port, local.family) : null;
    const target = x.connectTarget;
    if (x.remote === null && target?.kind === "tcp") {
      // A TCP client not connected (yet, or ever): where it connects to.
      x.remote = this.#targetAddress();
    } else if (x.remote === null && x.local === null) {
      // No IP addresses: a UNIX socket (Node reports none for one), named by
      // the path connected to or the server's, the other side unnamed ("").
      const path = this.server?._unixPath;
      if (target?.kind === "unix") {
        x.remote = target.path;
        x.local = "";
      } else if (typeof path === "string") {
        x.remote = "";
        x.local = path;
      } else if (!raw.destroyed && this.#state !== S_CONNECTING) {
        x.remote = ""; // a connected UNIX socket handed to a Stream
        x.local = "";
      }
    }
    const proxied = x.proxyHeader === null ? null : proxiedAddress(x.proxyHeader);
    if (proxied !== null) x.remote = proxied;
    return x;
  }

  /** @internal The TCP connection of a client connect is up. */
  _onTcpConnect(): void {
    if (this.#state !== S_CONNECTING) return;
    this.#addresses();
    this.#state = S_PENDING;
    if (this.#x !== null) this.#applyTcpOptions();
    this.#flags |= F_ACTIVE; // the idle time starts now, not at connect()
    const sslOptions = this.#x?.sslOptions;
    if (sslOptions != null) {
      this.#wrapTls(sslOptions, true, this.#x?.sslCompiled ?? null);
      return;
    }
    this.#establish();
  }

  /**
   * Puts TLS on the current socket. `initial`: the handshake precedes
   * onConnect; otherwise it is a STARTTLS upgrade of an open stream.
   * `compiled`: the options as compiled when given, used when they were
   * compiled for the side this stream takes (the options are compiled again
   * only when not: options given to a stream before a server adopted it).
   */
  #wrapTls(options: SslOptions, initial: boolean, compiled: CompiledTls | null): void {
    if (this.#state === S_CLOSED) return;
    // A native client given startSSL() while connecting: node:tls needs a Duplex.
    const plain = initial ? this.#duplexOverNative() : (this.#sock as OwnedSocket);
    const serverSide = options.server_side ?? (this.#flags & F_SERVER_SIDE) !== 0;
    let tlsSock: tls.TLSSocket;
    try {
      const side = compiled !== null && compiled.serverSide === serverSide ? compiled : compileTls(options, serverSide);
      if (side.serverSide) {
        tlsSock = wrapServerSocket(plain, side.config);
      } else {
        const target = this.#x?.connectTarget;
        tlsSock = wrapClientSocket(plain, side.config, target?.kind === "tcp" ? target.host : undefined);
      }
    } catch (err) {
      this._countError("tls", err as Error);
      // A client's first TLS that cannot start is its connect failing, as a failed handshake is (#handshakeFailed).
      let connectErr: ConnectError | null = null;
      if (initial && (this.#flags & F_EVER_CONNECTED) === 0) {
        if ((this.#flags & F_SERVER_SIDE) === 0) {
          connectErr = this.#connectFailed("TLS could not start: ", err as Error);
        }
        this.#extras().connectError = connectErr ?? (err as Error);
        this.#extras().connectErrorOwed = connectErr;
      }
      this.#tlsFailed("TLS could not start");
      this._call1(this.onSslError, err as Error);
      this.#payConnectError();
      this.#finishClose(false);
      return;
    }
    // The TLS socket owns the connection now; the plain one keeps only its close listener.
    plain.off("data", onSocketData);
    plain.off("end", onSocketEnd);
    plain.off("error", onSocketError);
    plain.on("error", ignoreError);
    if ((this.#flags & F_TAKEN) !== 0) releaseReads(plain);
    const x = this.#extras();
    if (x.raw === null && (plain instanceof net.Socket || isNative(plain))) x.raw = plain;
    const owned = tlsSock as unknown as OwnedSocket;
    owned[kStream] = this;
    this.#sock = owned;
    this.#tls = tlsSock;
    this.#flags &= ~(F_TLS_DONE | F_FLOWING | F_TAKEN);
    if (initial) this.#flags &= ~F_TLS_UPGRADING;
    tlsSock.on("error", onSocketError);
    tlsSock.on("close", onSocketClose);
    tlsSock.once(serverSide ? "secure" : "secureConnect", onSocketSecure);
    tlsSock.once("end", onHandshakeEnd);
    if (!serverSide) tlsSock.on("session", onSocketSession);
    this.#armHandshakeTimeout();
    // STARTTLS after the peer's FIN was read (its onEnd delivered, or waiting
    // for the frames before it): the handshake needs the peer's answer, which
    // cannot come, and the TLS socket will never see that FIN itself.
    if (!initial && (this.#flags & F_PEER_ENDED) !== 0) setImmediate(peerEndedBeforeUpgrade, this);
  }

  /** @internal The TLS handshake completed. */
  _onSecure(): void {
    if (this.#state === S_CLOSED || this.#tls === null) return;
    const refused = secureServerSide(this.#tls);
    if (refused !== null) {
      this.#handshakeFailed(refused);
      return;
    }
    this.#flags |= F_TLS_DONE;
    const x = this.#extras();
    x.acceptedAt = null;
    x.sslProtocol = this.#tls.getProtocol();
    const cipher = this.#tls.getCipher() as CipherNameAndProtocol | null | undefined;
    x.sslCipher = cipher != null && typeof cipher.name === "string" ? cipher : null;
    this.#clearDeadline("handshake");
    if (this.#tls.isSessionReused()) this.#sessionResumed(this.#tls);
    // Under TLS 1.2 a client's session is known now, as node:tls' getSession()
    // says; its 'session' event comes only after onConnect (TLS 1.3's tickets
    // come later still, and only they resume, so none is kept for 1.3 here).
    else if (x.sslProtocol !== "TLSv1.3" && this.#tls.listenerCount("session") > 0) x.session = this.#tls.getSession() ?? null;
    // The handshake was bytes both ways: the idle time starts now, not when
    // its deadline was armed (a native socket under STARTTLS counts none of
    // the writes the OS took at once, so the sweep would see only silence).
    this.#flags |= F_ACTIVE;
    const upgrade = (this.#flags & F_TLS_UPGRADING) !== 0;
    this.#flags &= ~F_TLS_UPGRADING;
    // STARTTLS done: its job leaves the head of the write queue before the
    // handler runs, so that writes it flushes (flush(), close(true)) go out
    // encrypted after it, rather than meeting the job and upgrading again.
    if (upgrade && this.#wq !== null && this.#wq.length > 0) {
      this.#wq.shift();
      this.#jobs--;
    }
    // The first handshake's event comes before onConnect (which follows it), unless the stream began closing.
    if (upgrade) this.#event(this.onSslHandshake, 0);
    else if (this.#state === S_PENDING) this._call0(this.onSslHandshake);
    if (this.#state === S_CLOSED) return;
    if (!upgrade && this.#state !== S_CLOSING) {
      this.#establish();
      return;
    }
    if (upgrade) this.#startFlowing(); // reading resumes on the TLS socket; queued writes go out encrypted
    this.#flush();
    if (this.#state === S_CLOSING) {
      // close(true) came during the handshake (a server's shutdown, say): what
      // was written goes out, then the close; a first handshake never opens
      // the stream. The handshake's deadline kept the drain's from being set.
      if (!this.#hasPendingWrites()) this.#finishClose(true);
      else if (this.#x?.deadlineKind !== "drain") this.#setDeadline("drain", drainTimeout(this.#x));
      return;
    }
    if (upgrade) {
      // What was written before startSSL() drained while the upgrade job held
      // the queue; with nothing written since, no later drain would report it.
      if ((this.#flags & F_WRITE_OWED) !== 0 && !this.#hasPendingWrites()) this.#drained();
      this.#finAfterWrites(); // end() after startSSL(): its FIN waited behind the upgrade
      this.#scheduleProcess();
    }
  }

  /**
   * The handshake resumed a session. A client keeps it as the one to resume
   * next time, until the server sends a new one: a resumed handshake often
   * brings none, and the session stays resumable.
   */
  #sessionResumed(sock: tls.TLSSocket): void {
    const x = this.#extras();
    x.sessionReused = true;
    // Only a client's socket is listened to for sessions.
    if (sock.listenerCount("session") > 0) x.session = sock.getSession() ?? null;
  }

  /** @internal A client's node:tls 'session': the server sent a session it can resume. */
  _onSession(session: Buffer): void {
    // Kept even once closed (sslSession is read after the close): under
    // TLS 1.2 the session comes in the turn the handshake ended, after an
    // onConnect that may have closed the stream already.
    this.#extras().session = session;
    if (this.#state === S_CLOSED) return;
    // node:tls emits it once the server is verified, after 'secureConnect':
    // onConnect (or a STARTTLS onSslHandshake) has run, unless the stream
    // began closing before its onConnect (in onSslHandshake), which gets
    // onClose only.
    if (this.#eventNow(0)) this._call1(this.onSslSession, session);
  }

  /**
   * @internal The TLS socket ended. During the handshake nobody reads it yet,
   * and the raw socket is half-open, so this is the only sign of a peer that
   * hung up mid-handshake: fail it now rather than at the handshake timeout.
   */
  _onHandshakeEnd(): void {
    // A TLS error on its way (our own verification failed, say, and the
    // socket under TLS closed first) says more: it gets a turn to arrive.
    setImmediate(peerLeftHandshake, this);
  }

  /** A TLS handshake (first or STARTTLS) is under way. (A method: V8 reads a private getter through a runtime call, once per flush.) */
  #handshaking(): boolean {
    return this.#tls !== null && (this.#flags & F_TLS_DONE) === 0;
  }

  /**
   * @internal The peer left during the handshake (`before`: it had ended
   * before a STARTTLS upgrade began) and no TLS error said why. As node:tls
   * says it: ECONNRESET, the code of a connection lost mid-handshake.
   */
  _peerLeftHandshake(before = false): void {
    if (this.#state === S_CLOSED || !this.#handshaking()) return;
    // Closed by the server while an async onAccept held it: that says why (and was counted).
    const held = (this.#sock as OwnedSocket | null)?.[kHeldFailure];
    if (held !== undefined) {
      this.#handshakeFailed(held, false);
      return;
    }
    this._onSocketError(peerLeftHandshakeError(before));
  }

  /** @internal Its onConnect has run, or is running (relay() starts writing then). */
  get _opened(): boolean {
    return (this.#flags & F_EVER_CONNECTED) !== 0;
  }

  /** @internal onConnect, on a tick after the call that caused it. */
  _establishTick(): void {
    if (this.#state === S_PENDING) this.#establish();
  }

  /**
   * Calls an event handler, keeping SPEC §5's rule in this one place:
   * onConnect is a stream's first event (under TLS, after onSslHandshake),
   * and a stream closed before its onConnect gets onClose only. Before
   * onConnect an event waits: its `owed` flag has #establish call it right
   * after onConnect (0: it is dropped); on a stream that began closing
   * before its onConnect it never comes. (onRead needs an open stream; the
   * error handlers say why a stream did not connect, so they are not held.)
   */
  #event(fn: (this: this) => unknown, owed: number): void {
    if (this.#eventNow(owed)) this._call0(fn);
  }

  /** #event's rule, for a handler that takes an argument: true if it is called now (else owed or dropped, as there). */
  #eventNow(owed: number): boolean {
    if ((this.#flags & F_EVER_CONNECTED) !== 0) return true;
    if (this.#state === S_PENDING) this.#flags |= owed;
    return false;
  }

  #establish(): void {
    // A stream over a socket of the user's own: its class fields are first seen here (a server's at _attachToServer, a client's at connect()).
    if (this.server === null && (this.#x === null || this.#x.connectTarget === null)) {
      if (!this.#adoptFields()) return;
      // Handlers given as class fields (onClose = () => ...) were not there yet when the constructor asked.
      if ((this.#flags & F_ADDRESSES) === 0) this.#keepAddresses();
    }
    this.#state = S_OPEN;
    this.#flags |= F_EVER_CONNECTED;
    this.#dropSignal(); // the connect is done: its signal no longer applies
    if ((this.#flags & F_COUNTED) === 0) {
      this.#flags |= F_COUNTED;
      this.engine.stats.accepted++;
    }
    if (this.#x !== null && this.#x.idleTimeout > 0) this.#updateTimed();
    if (diagnostics.connectionOpen.hasSubscribers) diagnostics.connectionOpen.publish({ stream: this });
    this._call0(this.onConnect);
    // Connected, even if onConnect closed it already (ready() on a closed stream that connected resolves too).
    const x = this.#x;
    if (x !== null && x.readyResolve !== null) {
      const resolve = x.readyResolve;
      x.readyResolve = null;
      x.readyReject = null;
      resolve(this);
    }
    if (this.#state === S_CLOSED) return;
    if ((this.#flags & F_NATIVE) !== 0) this.#syncNativeFraming();
    this.#startFlowing();
    if (this.#wq !== null && this.#wq.length > 0) this.#flush();
    if ((this.#flags & (F_WRITE_OWED | F_TIMEOUT_DUE | F_SHUTDOWN_DUE)) !== 0) this.#owedEvents();
  }

  /** Calls the events that came due before onConnect (see #event), now that it has run. */
  #owedEvents(): void {
    const owed = this.#flags;
    this.#flags &= ~(F_TIMEOUT_DUE | F_SHUTDOWN_DUE);
    // Writes made since (in onConnect) are reported by their own drain, with these.
    if ((owed & F_WRITE_OWED) !== 0 && !this.#hasPendingWrites()) this.#drained();
    if ((owed & F_TIMEOUT_DUE) !== 0 && this.#state === S_OPEN) this._call0(this.onTimeout);
    if ((owed & F_SHUTDOWN_DUE) !== 0 && this.#state === S_OPEN) this._call0(this.onShutdown);
  }

  /**
   * Native transport: lets the addon cut the frames when it can (a string
   * or Buffer delimiter, or a size; no encoding; nothing buffered here),
   * else turns its framing off and frames here.
   */
  #syncNativeFraming(): void {
    const sock = this.#sock;
    if (!isNative(sock) || this.#state === S_CLOSED) return;
    const framer = this.#framer;
    const rb = this.#rb;
    const free =
      this.#encoding === null &&
      (rb === null || (rb.length === 0 && !rb.discarding)) &&
      (this.#flags & (F_TLS_UPGRADING | F_JS_FRAMING)) === 0;
    if (free && framer.needle !== null && framer.needle.length <= nativeLimits.maxDelimiter) {
      sock.setFraming(1, framer.needle, this.#bufferSize);
      this.#flags |= F_NATIVE_FRAMING;
    } else if (free && typeof framer.source === "number" && framer.source <= nativeLimits.maxFrameSize) {
      sock.setFraming(2, framer.source, Math.max(this.#bufferSize, framer.source));
      this.#flags |= F_NATIVE_FRAMING;
    } else if ((this.#flags & F_NATIVE_FRAMING) !== 0) {
      // Outside a delivery: the bytes the addon holds back (a partial frame)
      // have not been framed yet, so they come back raw, to be framed here.
      // `tail` stays: those of them already counted in bytesIn are not counted again.
      sock.setFraming(0, null, 0, true);
      this.#flags &= ~F_NATIVE_FRAMING;
    }
  }

  /**
   * Native transport, outside a delivery, a framing setting changed (after
   * an await, from a timer) or the stream resumed: the bytes the addon
   * holds (a partial frame, reads made while paused) are taken here and
   * framed on the next tick, as node:net's buffered bytes are. Left to the
   * addon, they would be framed only on the loop's next iteration, after
   * immediates, timers or I/O callbacks had run and perhaps changed the
   * framing again: the two transports cut different frames. The addon
   * frames again from the next read on (#syncNativeFraming). Paused, they
   * stay in the addon (which holds at most 16 KiB read ahead) until the
   * resume takes them. Inside a delivery (or once not open) there is
   * nothing to do here: _onNativeFrames reframes the batch in hand.
   */
  #nativeReframe(): void {
    const sock = this.#sock;
    if (!isNative(sock) || (this.#flags & F_IN_DISPATCH) !== 0 || this.#state !== S_OPEN) return;
    if ((this.#flags & P_ANY) === 0) {
      this.#flags &= ~F_NATIVE_FRAMING;
      const held = this.#takeHeld(sock);
      if (held !== undefined) {
        this.#keep(held);
        this.#scheduleProcess();
      }
    }
    this.#syncNativeFraming();
  }

  /**
   * @internal Native transport: frames the addon cut from the `length`
   * bytes of `block` at `base`, as [start, end) pairs relative to `base`
   * from `frames[first]` on, then the offset after the last one; count -1:
   * a frame outgrew its limit (the addon went raw; the buffer's framer
   * reports it). Views are made of the frames only: the whole read becomes
   * a Buffer only when some of it must be buffered here.
   */
  _onNativeFrames(block: ArrayBufferLike, base: number, length: number, frames: Int32Array, first: number, count: number): void {
    const sock = this.#sock as unknown as NativeSocket;
    const fresh = length - sock.tail;
    this.#flags |= F_ACTIVE;
    this.#countIn(fresh);
    if (this.#state !== S_OPEN) return;
    if (count < 0) {
      sock.tail = 0;
      this.#flags &= ~F_NATIVE_FRAMING;
      this.#flags |= F_IN_DISPATCH;
      this.#push(viewOf(block, base, length));
      this.#flags &= ~F_IN_DISPATCH;
      if (this.#wq !== null && this.#wq.length > 0) this.#flush();
      return;
    }
    const framer = this.#framer;
    const limit = this.#bufferSize;
    this.#flags |= F_IN_DISPATCH;
    let i = 0;
    let changed = this.#reframing(framer, limit);
    // The frames' memory: `mem`, with frame offsets shifted by `at`.
    let mem = block;
    let at = base;
    if (count > 1 && !changed && block.byteLength > NATIVE_READ_SIZE && 2 * (frames[first + 1]! - frames[first]!) > block.byteLength && block !== lentBlock) {
      // A long frame the addon held (its pending bytes) comes in one block
      // with the read that completed it: the frames after it are views of a
      // copy of their own bytes, so that keeping one pins at most the read,
      // not the long frame too (a 4-byte line after a 1 MiB one pinned 1 MiB).
      const from = frames[first + 2]!;
      const rest = Buffer.allocUnsafeSlow(frames[first + 2 * count - 1]! - from);
      rest.set(new Uint8Array(block, base + from, rest.length));
      this.#deliver(viewOf(block, base + frames[first]!, frames[first + 1]! - frames[first]!));
      changed = this.#reframing(framer, limit);
      i = 1;
      mem = rest.buffer;
      at = -from;
    }
    for (; i < count && !changed; i++) {
      const start = frames[first + 2 * i]!;
      this.#deliver(viewOf(mem, at + start, frames[first + 2 * i + 1]! - start));
      changed = this.#reframing(framer, limit);
    }
    if (changed) {
      // Something changed inside onRead (framing, limit, pause, encoding...):
      // the rest of the bytes (from the first frame not delivered, the
      // addon's pending tail included) is framed here.
      if (this.#framer !== framer) this.#flags |= (this.#flags & F_SWITCHED) !== 0 ? F_JS_FRAMING : F_SWITCHED;
      if (this.#state === S_OPEN || this.#state === S_CLOSING) {
        sock.setFraming(0, null, 0);
        this.#flags &= ~F_NATIVE_FRAMING;
        sock.tail = 0;
        const from = frames[first + 2 * i]!; // a frame's start, or `rest` (i = count)
        if (this.#state === S_OPEN && from < length) this.#push(viewOf(block, base + from, length - from));
        if (this.#state === S_OPEN) this.#syncNativeFraming();
      }
    } else {
      sock.tail = length - frames[first + 2 * count]!;
    }
    this.#flags &= ~F_IN_DISPATCH;
    if (this.#wq !== null && this.#wq.length > 0) this.#flush();
  }

  /** Whether a handler changed what the addon's frames were cut for (framer, limit, pause, encoding) or closed. */
  #reframing(framer: Framer, limit: number): boolean {
    return (
      this.#state !== S_OPEN ||
      this.#framer !== framer ||
      this.#bufferSize !== limit ||
      (this.#flags & (P_ANY | F_TLS_UPGRADING)) !== 0 ||
      this.#encoding !== null
    );
  }

  #startFlowing(): void {
    const sock = this.#sock;
    if (sock === null || (this.#flags & F_FLOWING) !== 0) return;
    this.#flags |= F_FLOWING;
    sock.on("end", onSocketEnd);
    this.#listenReads(sock);
    // A socket paused explicitly (after a PROXY header, or a STARTTLS
    // upgrade) does not resume when a 'data' listener is added, and one
    // whose reads node:net hands over has no such listener (its Readable
    // side flows for its end only).
    if ((this.#flags & P_ANY) !== 0) this.#pauseSocket(sock);
    else if (sock.readableFlowing !== true) sock.resume();
    // A user's Duplex whose readable side ended before it was handed over
    // emitted its 'end' already: it would never come.
    if ((sock as Duplex).readableEnded === true) process.nextTick(endedEarlier, sock);
  }

  /**
   * Reads from `sock` reach this stream: from node:net's onread mode where
   * it takes them (a node:net or node:tls socket: no Buffer per read, no
   * Readable side), else as 'data' events.
   */
  #listenReads(sock: OwnedSocket): void {
    if (!takeReads(sock, onNetRead)) {
      sock.on("data", onSocketData);
      return;
    }
    this.#flags |= F_TAKEN;
    if ((this.#flags & F_LEND) !== 0) lendReads(sock, true);
    // What it read before (the onConnect tick, a PROXY header's rest, a TLS
    // client's first request) comes first, on the tick 'data' would bring it.
    if (sock.readableLength > 0) process.nextTick(heldReads, this, sock);
  }

  // -------------------------------------------------------------------------
  // Internals: the read path

  /** @internal A read node:net handed over (see #listenReads): the stream's own chunk, or one `lent` for the call (reuseReadBuffer). */
  _onNetRead(chunk: Buffer, lent: boolean): void {
    if (lent) {
      // The chunk as it is (a view node-reads.ts made of the lent memory), not another view of its parts.
      const block = chunk.buffer;
      lentBlock = block;
      try {
        this._onData(chunk);
      } finally {
        endLend(block);
      }
    } else {
      this._onData(chunk);
    }
    this.#stopIfFull();
  }

  /** Paused: a socket whose reads node:net hands over reads on until highWaterMark bytes wait, then stops (see #pauseSocket). */
  #stopIfFull(): void {
    if ((this.#flags & P_ANY) !== 0 && this.#rb !== null && this.#sock !== null && this.#rb.length >= this.#sock.readableHighWaterMark) {
      this.#sock.pause();
    }
  }

  /**
   * Pauses the socket's reads: one whose reads node:net hands over reads on
   * until highWaterMark bytes wait, as a node:net socket that emits 'data'
   * does, so that a paused stream still notices the peer's reset.
   */
  #pauseSocket(sock: OwnedSocket): void {
    if ((this.#flags & F_TAKEN) !== 0) pauseFlow(sock);
    else sock.pause();
  }

  /** @internal Delivers what `sock` read before its reads were taken (see #listenReads). */
  _onHeldReads(sock: OwnedSocket): void {
    if (this.#sock !== sock) return;
    let chunk: unknown;
    while ((chunk = sock.read()) !== null) onSocketData.call(sock, chunk as Buffer);
    // read() starts a taken socket's reads again: a stream paused meanwhile
    // stays paused, and reads no further once highWaterMark bytes wait.
    if ((this.#flags & P_ANY) !== 0 && this.#sock === sock) {
      this.#pauseSocket(sock);
      this.#stopIfFull();
    }
  }

  /** @internal A chunk (`frames` null) or frames lent by the native transport for this call only (reuseReadBuffer). */
  _onLent(block: ArrayBufferLike, base: number, length: number, frames: Int32Array | null, first: number, count: number): void {
    lentBlock = block;
    try {
      if (frames === null) this._onData(viewOf(block, base, length));
      else this._onNativeFrames(block, base, length, frames, first, count);
    } finally {
      endLend(block);
    }
  }

  /** @internal A chunk arrived. */
  _onData(chunk: Buffer): void {
    this.#flags |= F_ACTIVE;
    let fresh = chunk.length;
    if ((this.#flags & F_NATIVE) !== 0) {
      // The partial frame the addon held, handed back raw: its counted part (`tail`) comes again.
      const sock = this.#sock as unknown as NativeSocket;
      fresh -= sock.tail;
      sock.tail = 0;
    }
    this.#countIn(fresh);
    if (this.#state !== S_OPEN) return; // closing: read and discarded
    this.#flags |= F_IN_DISPATCH;
    if (this.#directOk()) {
      let framer = this.#framer;
      if (framer === NULL_FRAMER) this.#deliver(chunk);
      else {
        let used = this.#scanDirect(chunk, 0, framer);
        // A handler that switched delimiters (a header line, then a sized
        // body, then lines again) has the rest of the chunk cut straight
        // out of it too, as long as nothing else changed.
        let idleSwitches = 0;
        while (used < chunk.length && this.#framer !== framer && this.#directOk()) {
          framer = this.#framer;
          if (framer === NULL_FRAMER) {
            this.#deliver(chunk.subarray(used));
            used = chunk.length;
          } else {
            const from = used;
            used = this.#scanDirect(chunk, from, framer);
            // A partial frame: the buffer keeps it (also after Decoders that only handed over to each other).
            if (used === from && (this.#framer === framer || ++idleSwitches > MAX_IDLE_SWITCHES)) break;
          }
        }
        if (used < chunk.length && this.#state === S_OPEN) this.#push(used === 0 ? chunk : chunk.subarray(used));
      }
    } else {
      this.#push(chunk);
    }
    this.#flags &= ~F_IN_DISPATCH;
    if ((this.#flags & (F_NATIVE | F_NATIVE_FRAMING | F_JS_FRAMING)) === F_NATIVE && this.#state === S_OPEN) this.#syncNativeFraming();
    if (this.#wq !== null && this.#wq.length > 0) this.#flush();
  }

  /**
   * @internal A chunk that is not a Buffer, from a user's Duplex: a string
   * (setEncoding, objectMode) goes back to the bytes it was decoded from, a
   * Uint8Array is viewed as a Buffer; anything else is no byte stream, and
   * onReadError gets a TypeError.
   */
  _onForeignChunk(chunk: unknown, encoding: BufferEncoding | null): void {
    if (typeof chunk === "string") this._onData(Buffer.from(chunk, encoding ?? "utf8"));
    else if (chunk instanceof Uint8Array) this._onData(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    else if (this.#state === S_OPEN) {
      const err = typeError(`${nameOf(this)} read ${describe(chunk)} from its socket: a Stream reads bytes (Buffers or strings), not objects.`);
      this._countError("read", err);
      this._call1(this.onReadError, err);
    }
  }

  /** Nothing buffered, paused, decoded or upgrading: frames may be cut straight from a chunk. */
  #directOk(): boolean {
    const rb = this.#rb;
    return (
      this.#state === S_OPEN &&
      (rb === null || (rb.length === 0 && !rb.discarding)) &&
      (this.#flags & (P_ANY | F_TLS_UPGRADING)) === 0 &&
      this.#encoding === null
    );
  }

  #push(chunk: Buffer): void {
    this.#keep(chunk);
    this.#process();
  }

  /** Adds `chunk` to the read buffer: a copy when it is lent (the buffer keeps it past the lend). */
  #keep(chunk: Buffer): void {
    (this.#rb ??= new ReceiveBuffer()).push(chunk, lentBlock !== null && chunk.buffer === lentBlock);
  }

  /**
   * The common case, delimited frames with nothing buffered: cut them
   * straight out of the chunk as views. Anything unusual (a partial frame,
   * a new delimiter, an oversized frame, a pause) falls back to the buffer.
   */
  #scanChunk(chunk: Buffer, from: number, needle: Buffer): number {
    const n = needle.length;
    const limit = this.#bufferSize;
    // One-byte delimiters (lines) search for the byte itself: memchr, not a substring search.
    const byte = n === 1 ? needle[0]! : -1;
    // Frames are views of the chunk's memory (read once: the getters are not free).
    const ab = chunk.buffer;
    const base = chunk.byteOffset;
    let start = from;
    this.#flags &= ~F_STOP;
    for (;;) {
      const idx = byte >= 0 ? chunk.indexOf(byte, start) : chunk.indexOf(needle, start);
      if (idx === -1 || idx - start > limit) break;
      const frame = viewOf(ab, base + start, idx - start);
      start = idx + n;
      this.#deliver(frame);
      // One test for everything that ends the loop: a new delimiter, a pause, a close, TLS, an encoding.
      if ((this.#flags & F_STOP) !== 0 || start >= chunk.length) break;
    }
    return start;
  }

  /**
   * Frames cut straight out of a chunk that arrived with nothing buffered,
   * from offset `from`, for the delimiters that allow it; returns the offset
   * after the last frame taken (`from`: none, the buffered path takes the
   * rest, as it does for anchored RegExp matches). `buffered`: the chunk is
   * what the receive buffer holds, so a Decoder's partial frame stays there
   * (its length, if announced, as the buffer's mark), and the offset comes
   * back complemented (`~offset`, negative): wait for more bytes.
   */
  #scanDirect(chunk: Buffer, from: number, framer: Framer, buffered: ReceiveBuffer | null = null): number {
    const source = framer.source;
    if (framer.needle !== null) return this.#scanChunk(chunk, from, framer.needle);
    if (typeof source === "number") return this.#scanSized(chunk, from, source);
    if (framer.search !== null) return (this.#flags & F_REGEX_ANCHORED) === 0 ? this.#scanRegex(chunk, from, framer.search) : from;
    if (typeof source === "function") return this.#scanDecoder(chunk, from, source, buffered);
    if (source instanceof Struct) return this.#scanStruct(chunk, from, source);
    if (source instanceof NetStruct) return this.#scanNetStruct(chunk, from, source, framer.minLimit);
    return from;
  }

  /**
   * As {@link #scanChunk}, for a RegExp in search mode: the chunk read as
   * latin1 once, then each frame found from where the last one ended (with
   * `lastIndex` for a global `search`, else on the text from the frame's
   * start, as the buffered path does, so `^` and lookbehinds mean the same).
   * No match, an empty match and an oversized frame stop the scan: the
   * buffered path keeps or reports them.
   */
  #scanRegex(chunk: Buffer, from: number, search: RegExp): number {
    const limit = this.#bufferSize;
    const text = chunk.toString("latin1", from);
    const global = search.global;
    const ab = chunk.buffer;
    const base = chunk.byteOffset + from;
    let pos = 0;
    this.#flags &= ~F_STOP;
    while (pos < text.length) {
      let m: RegExpExecArray | null;
      let at: number;
      if (global) {
        search.lastIndex = pos;
        m = search.exec(text);
        at = m === null ? 0 : m.index - pos;
      } else {
        m = search.exec(pos === 0 ? text : text.slice(pos));
        at = m === null ? 0 : m.index;
      }
      if (m === null) break;
      const end = at + m[0].length;
      if (end === 0 || at > limit) break;
      this.#deliver(viewOf(ab, base + pos, at));
      pos += end;
      if ((this.#flags & F_STOP) !== 0) break;
    }
    return from + pos;
  }

  /** As {@link #scanSized}, for a Struct: each record unpacked in place, straight from the chunk. */
  #scanStruct(chunk: Buffer, from: number, struct: Struct): number {
    const size = struct.size;
    let start = from;
    this.#flags &= ~F_STOP;
    const call = struct.callerAt();
    if (call !== null) {
      // Numbers only: each record's values go straight into onRead's arguments.
      while (chunk.length - start >= size) {
        const at = start;
        start += size;
        let result: unknown;
        try {
          result = call(chunk, at, this.onRead, this);
        } catch (err) {
          this._handlerFailed(err);
        }
        if (result !== undefined && isThenable(result)) this.#trackRead(result);
        if ((this.#flags & F_STOP) !== 0) break;
      }
      return start;
    }
    while (chunk.length - start >= size) {
      let args: unknown[];
      try {
        args = struct.readAt(chunk, start);
      } catch (err) {
        // As in the buffered path: the rest of the bytes cannot be framed.
        this._handlerFailed(err);
        return chunk.length;
      }
      start += size;
      this.#deliverArgs(args);
      if ((this.#flags & F_STOP) !== 0) break;
    }
    return start;
  }

  /**
   * As {@link #scanStruct}, for a NetStruct whose fields compile: whole
   * records straight from the chunk. Stops at the first record it cannot
   * take (partial, malformed, oversized): the buffered path gets the rest.
   */
  #scanNetStruct(chunk: Buffer, from: number, ns: NetStruct, minLimit: number): number {
    const call = ns.callerAt();
    if (call === null) return from;
    const limit = this.#bufferSize > minLimit ? this.#bufferSize : minLimit;
    const held: NetStructHeld = { used: 0, result: undefined, ab: chunk.buffer, base: chunk.byteOffset }; // per chunk: a handler may feed another stream
    let start = from;
    this.#flags &= ~F_STOP;
    while (start < chunk.length) {
      let used: number;
      try {
        used = call(chunk, start, chunk.length, limit, this.onRead, this, held);
      } catch (err) {
        used = held.used;
        held.result = undefined;
        this._handlerFailed(err);
      }
      if (used < 0) break;
      start += used;
      const result = held.result;
      held.result = undefined;
      if (result !== undefined && isThenable(result)) this.#trackRead(result);
      if ((this.#flags & F_STOP) !== 0) break;
    }
    return start;
  }

  /**
   * A Decoder over the chunk itself, frame after frame. Whatever is not a
   * plain frame (a result to reject, an oversized frame) stops the scan, and
   * the buffered path, asking again, reports it; a partial frame is kept
   * without asking the Decoder again until more bytes arrive.
   */
  #scanDecoder(chunk: Buffer, from: number, decoder: Decoder, buffered: ReceiveBuffer | null): number {
    // One try around the loop, not one per call: a Decoder inlined inside a
    // try gets an exception edge on every call it makes, which cost a third
    // of the framing rate (bench framing decoder-at-loop: 0.75 of a hand
    // loop calling the same function, 1.0 this way). The handlers' errors
    // are caught by #deliver, so what reaches this catch is the Decoder's.
    try {
      return this.#scanDecoded(chunk, from, decoder, buffered);
    } catch (err) {
      // As in the buffered path: the bytes cannot be framed; the stream is told.
      this._handlerFailed(err);
      return chunk.length;
    }
  }

  #scanDecoded(chunk: Buffer, from: number, decoder: Decoder, buffered: ReceiveBuffer | null): number {
    const limit = this.#bufferSize;
    // A two-parameter decoder reads at an offset; a one-parameter one gets a view from the frame on.
    const offsets = decoder.length >= 2;
    const ab = chunk.buffer;
    const base = chunk.byteOffset;
    let start = from;
    this.#flags &= ~F_STOP;
    while (start < chunk.length) {
      const left = chunk.length - start;
      const result = offsets ? decoder(chunk, start) : decoder(start === 0 ? chunk : viewOf(ab, base + start, left), 0);
      if (result === null || result === undefined || typeof result === "number") {
        // (A length: the frame's, not yet here; anything else about it the buffered path reports.)
        if (typeof result === "number" ? !Number.isSafeInteger(result) || result <= left || result > limit : left > limit) break;
        // A Decoder that set a new delimiter (one sniffing the protocol) hands these bytes to it: the caller frames them now.
        if (this.#framer.source !== decoder) return start;
        if (buffered !== null) {
          // The bytes are buffered already: the caller skips what was taken and waits.
          if (typeof result === "number") buffered.mark = result; // (skipping leaves the mark as it is)
          return ~start;
        }
        this.#keep(start === 0 ? chunk : viewOf(ab, base + start, left));
        const rb = this.#rb!;
        if (typeof result === "number") rb.mark = result; // not asked again before that many bytes are here
        rb.compact();
        return chunk.length;
      }
      const consumed = (result as { consumed?: unknown }).consumed;
      const args = (result as { args?: unknown }).args;
      if (typeof consumed !== "number" || !Number.isInteger(consumed) || consumed < 1 || consumed > left || consumed > limit || !Array.isArray(args)) break;
      start += consumed;
      this.#deliverArgs(args);
      if ((this.#flags & F_STOP) !== 0) break;
    }
    return start;
  }

  /** As {@link #scanChunk}, for fixed-size frames. Returns the bytes used. */
  #scanSized(chunk: Buffer, from: number, size: number): number {
    const ab = chunk.buffer;
    const base = chunk.byteOffset;
    let start = from;
    this.#flags &= ~F_STOP;
    while (chunk.length - start >= size) {
      const frame = viewOf(ab, base + start, size);
      start += size;
      this.#deliver(frame);
      if ((this.#flags & F_STOP) !== 0) break;
    }
    return start;
  }

  /**
   * After a frame taken through the buffer: when what is left is one chunk
   * and nothing unusual is going on, cut frames straight out of it, as from
   * a chunk that arrived with nothing buffered (no recursion: the buffer's
   * loop goes on with whatever is left). Reads rarely end on a frame's end,
   * so this is how most frames of a stream are taken, not only the first
   * after a partial one. True when a Decoder said the rest is a partial
   * frame: the caller waits for more bytes without asking it again.
   */
  #scanBuffered(rb: ReceiveBuffer): boolean {
    const state = this.#state; // (read again after the scan: a handler may close)
    if (state !== S_OPEN || rb.length === 0 || !rb.contiguous || rb.discarding || this.#encoding !== null || (this.#flags & (P_ANY | F_TLS_UPGRADING)) !== 0) return false;
    const framer = this.#framer;
    if (framer === NULL_FRAMER) return false;
    let used = this.#scanDirect(rb.all(), 0, framer, rb);
    if (this.#state === S_CLOSED) return true;
    const waits = used < 0;
    if (waits) used = ~used;
    if (used > 0) rb.skip(used);
    // Waiting for more bytes: hold what is buffered, not the read it came in.
    if (waits) rb.compact();
    return waits;
  }

  /** Delivers every whole frame in the buffer, re-reading the delimiter each time. */
  #process(): void {
    const rb = this.#rb;
    if (rb === null) return;
    const out = frameOut;
    const outer = this.#flags & F_IN_DISPATCH;
    this.#flags |= F_IN_DISPATCH;
    let idleSwitches = 0;
    try {
      while (rb.length > 0) {
        if (this.#state !== S_OPEN || (this.#flags & P_ANY) !== 0 || (this.#flags & F_TLS_UPGRADING) !== 0) return;
        const framer = this.#framer;
        // An oversized frame being skipped: the framer that refused it skips
        // it to its end (even if the delimiter changed since, in
        // onOverflowError), as it would had the frame arrived whole.
        const skipper = rb.discarding ? rb.skipper : null;
        if (skipper === null && framer === NULL_FRAMER && this.#encoding !== null) {
          // Raw chunks as text: the whole characters now, the start of a cut one stays buffered.
          if (!this.#deliverTextChunk(rb, this.#encoding)) return;
          continue;
        }
        const limit = this.#bufferSize > framer.minLimit ? this.#bufferSize : framer.minLimit;
        let code: number;
        try {
          if (skipper !== null) {
            code = skipper.discard(rb, out);
            if (code === FRAME) continue;
          } else {
            code = framer.extract(rb, limit, out, (this.#flags & F_REGEX_ANCHORED) === 0);
            // A Decoder that set a new delimiter: the mark it left (a length to wait for) would make the new one skip bytes.
            if (this.#framer !== framer) rb.mark = 0;
          }
        } catch (err) {
          // A Decoder threw, or a Struct could not unpack: user code or bad input.
          rb.clear();
          this._handlerFailed(err);
          return;
        }
        if (code === NEED_MORE && this.#framer !== framer) {
          // A Decoder that set a new delimiter without taking a frame (one sniffing the protocol): the new one frames the bytes now.
          if (++idleSwitches <= MAX_IDLE_SWITCHES) continue;
          // Decoders that only hand over to each other: past the limit, what they never take is refused as one Decoder's is.
          if (rb.length > limit) {
            rb.skip(rb.length);
            code = OVERFLOW;
          }
        }
        if (code === FRAME) {
          const value = out.value;
          out.value = undefined;
          if (this.#encoding === null || !Buffer.isBuffer(value)) this.#deliver(value);
          else this.#deliverText(value);
          if (this.#scanBuffered(rb)) return;
        } else if (code === FRAME_ARGS) {
          const args = out.args ?? [];
          out.args = null;
          this.#deliverArgs(args);
          if (this.#scanBuffered(rb)) return;
        } else if (code === NEED_MORE) {
          rb.compact(); // (as in #scanBuffered)
          return;
        } else if (code === OVERFLOW) {
          const err = new BufferOverflowError(`A frame on ${nameOf(this)} outgrew the ${limit}-byte buffer limit (bufferSize).`, "read", limit);
          this._countError("overflow", err);
          this._call1(this.onOverflowError, err);
        } else {
          const cause = out.error as Error;
          out.error = null;
          rb.clear();
          if (code === FAILED && isFramingError(cause)) {
            // A delimiter of the application's that cannot frame is a bug in its code, as a Decoder that throws is: counted alike.
            const err = new InvalidReadDelimiterError(cause.message, { cause });
            this._countError("handler", err);
            this._callOnError(err);
          } else {
            // Bytes the peer sent that cannot be framed (e.g. a negative NetStruct length).
            const err = cause as Error & { code?: string };
            if (err.code === undefined) err.code = "ERR_MALFORMED_FRAME";
            this._countError("read", err);
            this._call1(this.onReadError, err);
          }
          return;
        }
      }
    } finally {
      this.#flags = (this.#flags & ~F_IN_DISPATCH) | outer;
    }
  }

  #deliverText(buf: Buffer): void {
    const encoding = this.#encoding as BufferEncoding;
    if ((encoding === "utf8" || encoding === "utf-8") && !isUtf8(buf)) {
      this.#invalidText();
      return;
    }
    this.#deliver(buf.toString(encoding));
  }

  /**
   * Raw chunks with an encoding: delivers the whole characters buffered, and
   * leaves the start of a character cut by the read in the buffer, where a
   * new encoding or delimiter finds it. False when nothing whole is there.
   */
  #deliverTextChunk(rb: ReceiveBuffer, encoding: BufferEncoding): boolean {
    const whole = wholeCharacters(rb.all(), encoding);
    if (whole === 0) return false;
    this.#deliverText(rb.take(whole));
    return true;
  }

  #invalidText(): void {
    const err = typeError(`${nameOf(this)} received bytes that are not valid ${this.#encoding}.`, "ERR_ENCODING_INVALID_ENCODED_DATA");
    this._countError("read", err);
    this._call1(this.onReadError, err);
  }

  /** Calls onRead through the guard, and keeps count of the promises async handlers return. */
  #deliver(value: unknown): void {
    let result: unknown;
    try {
      result = this.onRead(value);
    } catch (err) {
      this._handlerFailed(err);
      return;
    }
    if (result !== undefined && isThenable(result)) this.#trackRead(result);
  }

  #deliverArgs(args: readonly unknown[]): void {
    let result: unknown;
    try {
      // One value (a Decoder's usual frame): a plain call, no spread.
      result = args.length === 1 ? this.onRead(args[0]) : (this.onRead as (...a: unknown[]) => unknown).apply(this, args as unknown[]);
    } catch (err) {
      this._handlerFailed(err);
      return;
    }
    if (result !== undefined && isThenable(result)) this.#trackRead(result);
  }

  #trackRead(promise: PromiseLike<unknown>): void {
    const x = this.#extras();
    x.pendingReads++;
    const failed = (err: unknown): void => {
      this._handlerFailed(err);
      this.#readSettled(x);
    };
    try {
      promise.then(() => this.#readSettled(x), failed);
    } catch (err) {
      // A thenable whose then() throws: a rejection, on a later turn as a promise's would be.
      queueMicrotask(() => failed(err));
    }
  }

  #readSettled(x: Extras): void {
    if (--x.pendingReads !== 0 || (this.#flags & F_PEER_ENDED) === 0) return;
    // The handler may have changed the framing of bytes still buffered (a
    // readDelimiter set after an await) or paused: their frames go first,
    // as for an end that came while paused (_processTick ends after them).
    const rb = this.#rb;
    if (rb !== null && rb.length > 0) {
      if ((this.#flags & P_ANY) === 0) this.#scheduleProcess();
      return;
    }
    if ((this.#flags & P_ANY) !== 0) return; // paused: the end comes at the resume (_processTick)
    this.#deliverEnd();
  }

  /** The peer's FIN, once every frame it sent has been handled (async handlers included). */
  #deliverEnd(): void {
    if ((this.#flags & F_END_DELIVERED) !== 0 || this.#state !== S_OPEN) return;
    this.#flags |= F_END_DELIVERED;
    this.#event(this.onEnd, 0);
    // Nothing more can come or go: an onEnd that kept the stream open closes it now.
    if (this.#x?.socketGone === true && !this.closed) this.#finishClose(true);
  }

  #scheduleProcess(): void {
    if ((this.#flags & F_PROCESS_SCHEDULED) !== 0) return;
    // Nothing buffered: only an end that waited for the frames (paused) needs the tick.
    if ((this.#rb === null || this.#rb.length === 0) && (this.#flags & (F_PEER_ENDED | F_END_DELIVERED)) !== F_PEER_ENDED) return;
    this.#flags |= F_PROCESS_SCHEDULED;
    process.nextTick(processTick, this);
  }

  /** @internal */
  _processTick(): void {
    this.#flags &= ~F_PROCESS_SCHEDULED;
    if (this.#state !== S_OPEN) return;
    this.#process();
    // An end that waited for the buffered frames (_onEnd while paused).
    if ((this.#flags & (F_PEER_ENDED | F_END_DELIVERED | P_ANY)) === F_PEER_ENDED && this.#state === S_OPEN) this.#endAfterFrames();
    if (this.#wq !== null && this.#wq.length > 0) this.#flush();
  }

  #pause(reason: number): void {
    const was = this.#flags & P_ANY;
    this.#flags |= reason | F_STOP;
    if (was === 0 && (this.#flags & F_FLOWING) !== 0 && this.#sock !== null) this.#pauseSocket(this.#sock);
  }

  #resume(reason: number): void {
    if ((this.#flags & reason) === 0) return;
    this.#flags &= ~reason;
    if ((this.#flags & P_ANY) !== 0) return;
    if ((this.#flags & F_FLOWING) !== 0 && this.#sock !== null && this.#state !== S_CLOSED) {
      // Inside a delivery, the addon's frames in hand are reframed by _onNativeFrames.
      if ((this.#flags & F_TLS_UPGRADING) === 0) this.#nativeReframe();
      this.#sock.resume();
    }
    this.#scheduleProcess();
  }

  /** @internal The peer sent FIN. */
  _onEnd(): void {
    this.#flags |= F_PEER_ENDED;
    const state = this.#state;
    if (state === S_CLOSED) {
      // Lingering after our own close: the peer is done too.
      this.#sock?.destroy();
      return;
    }
    if (state === S_OPEN) {
      // Native framing: the addon holds back a partial frame, which it
      // would not deliver now that it no longer reads. Frame it here, as
      // node:net's bytes are (a delimiter set before onEnd, after an await,
      // cuts its frames).
      if ((this.#flags & F_NATIVE_FRAMING) !== 0 && isNative(this.#sock)) {
        this.#flags &= ~F_NATIVE_FRAMING;
        const pending = this.#takeHeld(this.#sock);
        if (pending !== undefined) this.#keep(pending);
      }
      // Paused (pauseReading(), or above writeHighWaterMark): either
      // transport still reads a little ahead (node:net up to its
      // highWaterMark, the addon up to 16 KiB), so a FIN may come now, or
      // only once resumed. The end waits for the resume either way
      // (_processTick delivers it), after any frames still buffered.
      if ((this.#flags & P_ANY) !== 0) return;
      this.#endAfterFrames();
    } else if (state === S_PENDING) {
      this.close(true);
    }
  }

  /** The peer ended and every whole frame it sent was delivered: what is left is an incomplete frame. */
  #endAfterFrames(): void {
    const rb = this.#rb;
    const encoding = this.#encoding;
    if (rb !== null && rb.length > 0 && this.#framer === NULL_FRAMER && (encoding === "base64" || encoding === "base64url")) {
      // base64 text of the last bytes, short of a 3-byte group: padded, as a whole.
      this.#deliver(rb.take(rb.length).toString(encoding));
      if (this.#state !== S_OPEN) return;
    }
    if (rb !== null && rb.length > 0 && (this.#flags & F_TLS_UPGRADING) === 0) {
      if (log.debugOn()) log.current.debug({ ...this._logFields(), bytes: rb.length }, "Peer closed with an incomplete frame buffered; discarded.");
    }
    if ((this.#x?.pendingReads ?? 0) === 0) this.#deliverEnd();
  }

  /** @internal */
  _onSocketError(err: Error): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CONNECTING) {
      const connectErr = this.#connectFailed("", err);
      this.#extras().connectError = connectErr;
      this._countError("connect", connectErr);
      this._call1(this.onConnectError, connectErr);
      this.#finishClose(false);
      return;
    }
    if (this.#handshaking()) {
      this.#handshakeFailed(err);
      return;
    }
    const syscall = (err as NodeJS.ErrnoException).syscall;
    const isWrite = syscall === "write" || syscall === "writev" || syscall === "shutdown" || writeFailures.has(err);
    this._countError(isWrite ? "write" : "read", err);
    this._call1(isWrite ? this.onWriteError : this.onReadError, err);
    this.#finishClose(false);
  }

  /** The ConnectError of a client's failed connect, naming the target, `stage` and `err`'s message; `err` is its cause. */
  #connectFailed(stage: string, err: Error): ConnectError {
    // trimEnd: OpenSSL's messages (a failed handshake's) end with a newline.
    return new ConnectError(`Could not connect ${nameOf(this)} to ${formatAddress(this.#targetAddress())}: ${stage}${connectMessage(err).trimEnd()}`, { cause: err });
  }

  /**
   * The TLS handshake failed: onSslHandshakeError, and for a client's first
   * handshake also onConnectError (the connect failed), then the close.
   */
  #handshakeFailed(err: Error, count = true): void {
    if (count) this._countError("tls", err);
    let connectErr: ConnectError | null = null;
    if ((this.#flags & (F_EVER_CONNECTED | F_SERVER_SIDE)) === 0) {
      connectErr = this.#connectFailed("TLS handshake failed: ", err);
      this.#extras().connectError = connectErr;
      this.#extras().connectErrorOwed = connectErr;
    }
    this.#tlsFailed("its TLS handshake failed");
    this._call1(this.onSslHandshakeError, err);
    this.#payConnectError();
    this.#finishClose(false);
  }

  /**
   * TLS failed and the stream closes once its handler returns: nothing
   * written from here on could be sent (the TLS socket is dead), so the
   * writes throw, naming why, and `writable` is false.
   */
  #tlsFailed(why: string): void {
    this.#extras().tlsFailed = why;
    this.#flags |= F_WRITE_ENDED | F_FIN_SENT;
  }

  /**
   * Calls the onConnectError a failed TLS connect owes, once: after its TLS
   * handler, or from #finishClose when that handler closed the stream (or
   * threw, and onError closed it), so a failed connect still ends in
   * onConnectError, then onClose.
   */
  #payConnectError(): void {
    const x = this.#x;
    const err = x?.connectErrorOwed ?? null;
    if (err === null) return;
    x!.connectErrorOwed = null;
    this._call1(this.onConnectError, err);
  }

  /** @internal The socket is gone. */
  _onSocketClose(): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    if (state === S_CONNECTING) {
      // Closed before connecting without an error.
      this._onSocketError(Object.assign(new Error("The connection closed before it was established."), { code: "ECONNRESET" }));
      return;
    }
    if (this.#handshaking()) {
      setImmediate(peerLeftHandshake, this);
      return;
    }
    if (this.#state === S_OPEN && (this.#flags & (F_WRITE_ENDED | F_PEER_ENDED | F_END_DELIVERED)) === (F_WRITE_ENDED | F_PEER_ENDED)) {
      // end(), then the peer's FIN, whose end (and frames before it) wait for
      // a paused stream's resume or an async onRead: the socket closes as
      // both sides are done, and what the peer sent is still delivered.
      this.#extras().socketGone = true;
      return;
    }
    this.#finishClose(false);
  }

  #targetAddress(): Address | null {
    const t = this.#x?.connectTarget;
    if (t == null) return null;
    if (t.kind === "unix") return t.path;
    const host = dialHost(t);
    return t.v6tuple ? [host, t.port, t.flowinfo, t.scopeid] : [host, t.port];
  }

  // -------------------------------------------------------------------------
  // Internals: the write path

  #writeStateError(op: string): never {
    const state = this.#state;
    if (state === S_CLOSED || state === S_CLOSING) throw new ChannelStateError(`${op}() called on closed ${nameOf(this)}.`);
    const failed = this.#x?.tlsFailed ?? null;
    if (failed !== null) throw new ChannelStateError(`${op}() called after ${failed} on ${nameOf(this)}: it closes once its handler returns.`);
    if ((this.#flags & F_WRITE_ENDED) !== 0) throw new ChannelStateError(`${op}() called after end() on ${nameOf(this)}.`);
    // (Only end() refuses this state: writes queue until onConnect.)
    if (state === S_PENDING) throw new ChannelStateError(`${op}() called before onConnect on ${nameOf(this)}: it works from onConnect on (its TLS handshake or connect event is still pending).`);
    if (state === S_CONNECTING) {
      if (this.#x?.connectError != null) throw new ChannelStateError(`${op}() called on ${nameOf(this)}, whose connect failed.`);
      throw new ChannelStateError(`${op}() called on ${nameOf(this)} while it is still connecting: it works from onConnect on (or once ready() has resolved).`);
    }
    throw new ChannelStateError(`${op}() called on disconnected ${nameOf(this)}.`);
  }

  /**
   * A write of lent bytes (reuseReadBuffer): a native stream queues them as
   * they are, to be sent before the lend ends (the addon copies what it has
   * to queue; _keepLent copies what is still here then); any other copies
   * them now.
   */
  #borrow(buf: Buffer): Buffer {
    if ((this.#flags & F_NATIVE) === 0) return Buffer.from(buf);
    if ((this.#flags & F_HOLDS_LENT) === 0) {
      this.#flags |= F_HOLDS_LENT;
      lentHolders.push(this);
    }
    return buf;
  }

  /** @internal The lend of `block` ends: queued views of it become copies. */
  _keepLent(block: ArrayBufferLike): void {
    this.#flags &= ~F_HOLDS_LENT;
    const wq = this.#wq;
    if (wq === null) return;
    for (let i = 0; i < wq.length; i++) {
      const item = wq[i];
      if (Buffer.isBuffer(item) && item.buffer === block) wq[i] = Buffer.from(item);
    }
  }

  #afterQueue(flush: boolean): void {
    if (flush) {
      this.#flush();
    } else if ((this.#flags & (F_IN_DISPATCH | F_FLUSH_QUEUED)) === 0) {
      this.#flags |= F_FLUSH_QUEUED;
      dirty.push(this);
      if (!flushScheduled) {
        flushScheduled = true;
        process.nextTick(flushDirty);
      }
    }
    if (this.#wqBytes > DEFAULT_HWM || this.#x !== null) this.#checkQueued();
  }

  /**
   * Inside a delivery the writes queue until its end: replies to many
   * frames of one read (a pipelined batch of GETs of a large value) could
   * outgrow writeBufferLimit before the end-of-delivery flush paused
   * reading, and a client reading every byte would be dropped as "not
   * reading". Past writeHighWaterMark, the frames left wait for the drain,
   * as they would behind a pauseReading().
   */
  #checkQueued(): void {
    const buffered = this.bufferedAmount;
    if ((this.#flags & F_IN_DISPATCH) !== 0 && buffered > this.writeHighWaterMark) this.#pause(P_BACKPRESSURE);
    this.#checkLimit(buffered);
  }

  /** `buffered` bytes wait: past writeBufferLimit, onOverflowError (once; not on a closed stream). */
  #checkLimit(buffered: number): void {
    const limit = this.writeBufferLimit;
    if (buffered > limit) this.#writeOverflow(limit);
  }

  #writeOverflow(limit: number): void {
    if ((this.#flags & F_WRITE_OVERFLOWED) !== 0 || this.#state === S_CLOSED) return;
    this.#flags |= F_WRITE_OVERFLOWED;
    const err = new BufferOverflowError(
      `The outgoing buffer of ${nameOf(this)} outgrew writeBufferLimit (${limit} bytes): the peer is not reading.`,
      "write",
      limit,
    );
    this._countError("overflow", err);
    this._call1(this.onOverflowError, err);
  }

  /** @internal Called by the end-of-turn flush. */
  _flushQueued(): void {
    this.#flags &= ~F_FLUSH_QUEUED;
    if (this.#wq !== null && this.#wq.length > 0) this.#flush();
  }

  #hasPendingWrites(): boolean {
    return (
      (this.#wq !== null && this.#wq.length > 0) ||
      this.#inflight > 0 ||
      (this.#flags & F_FILE_ACTIVE) !== 0 ||
      (this.#sock !== null && this.#sock.writableLength > 0)
    );
  }

  #writeCallback(): (err?: Error | null) => void {
    return this.#afterWrite ?? (this.#afterWrite = (err?: Error | null) => this.#onWritten(err));
  }

  /**
   * Native framing: takes the partial frame the addon holds and counts in
   * bytesIn those of its bytes no delivery counted yet (the addon reads the
   * start of a frame without calling JS).
   */
  #takeHeld(sock: NativeSocket): Buffer | undefined {
    const counted = sock.tail;
    const pending = sock.takePending();
    const fresh = (pending?.length ?? 0) - counted;
    if (fresh > 0) this.#countIn(fresh);
    return pending;
  }

  #countIn(bytes: number): void {
    this.#bytesRead += bytes;
    const server = this.server;
    if (server !== null) server.stats.bytesIn += bytes;
    this.engine.stats.bytesIn += bytes;
  }

  #countOut(bytes: number): void {
    this.#bytesWritten += bytes;
    const server = this.server;
    if (server !== null) server.stats.bytesOut += bytes;
    this.engine.stats.bytesOut += bytes;
  }

  /** Hands queued buffers to the socket; starts files and TLS upgrades in order. */
  #flush(): void {
    const sock = this.#sock;
    const state = this.#state;
    if (sock === null || state === S_CLOSED || state === S_CONNECTING) return;
    if ((this.#flags & F_FILE_ACTIVE) !== 0) {
      this.#pauseBehindFile();
      return;
    }
    if (this.#handshaking()) return; // the handshake first; writes wait
    // #dropRun drops the array once it is drained (and a write made from a
    // callback below starts a new one): read #wq again on every round.
    for (let wq = this.#wq; wq !== null && wq.length > 0; wq = this.#wq) {
      // The leading run of plain buffers leaves in one write. (A run held
      // for the socket was counted already: only what came since is.)
      const x = this.#x;
      const held = x !== null && x.heldQueue === wq;
      let n: number;
      let bytes: number;
      if (this.#jobs === 0) {
        // Buffers only: the run is the whole queue.
        n = wq.length;
        bytes = this.#wqBytes;
      } else {
        n = held ? x.held : 0;
        bytes = held ? x.heldBytes : 0;
        while (n < wq.length && Buffer.isBuffer(wq[n])) {
          bytes += (wq[n] as Buffer).length;
          n++;
        }
      }
      if (n > 0) {
        if (bytes < JOIN_LIMIT && this.#holdRun(sock)) {
          // The socket still holds earlier bytes (the peer reads slowly): short
          // writes wait here, joined, and leave in one write when it drains or
          // they reach JOIN_LIMIT — not one write per turn, whose request and
          // callback would cost many times a short line's bytes, outside
          // writeBufferLimit's count. (Long runs go at once: that cost is
          // small beside them, and a bulk stream keeps the socket fed.)
          const h = this.#extras();
          joinHeld(h, wq, held ? x.heldJoined : 0, n);
          h.heldBytes = bytes;
          h.heldQueue = wq;
          break; // (on to the backpressure check below)
        }
        if (held) x.heldQueue = null; // the run leaves now
        if (bytes > JOIN_LIMIT && n * SHORT_WRITE > bytes) n = compactRun(wq, n);
        if ((this.#flags & F_NATIVE) !== 0 && (sock as unknown as NativeSocket).writableNow) {
          // The addon writes the run now, in one system call; it does not keep the array.
          const native = sock as unknown as NativeSocket;
          const left = native.writeRun(wq, n, bytes);
          this.#dropRun(wq, n, bytes, false);
          this.#nativeWritten(native, left);
        } else {
          const run = this.#takeRun(wq, n, bytes);
          // No callback when nothing waits for this write (as on the native
          // transport): node:stream then completes a write the OS took at
          // once without a nextTick. Whoever starts waiting later asks with #barrier.
          const cb = (this.#flags & F_NATIVE) === 0 && this.#nobodyWaits() ? undefined : this.#writeCallback();
          if (cb === undefined) this.#wrote();
          else this.#inflight++;
          writeRun(sock, run, cb);
        }
        if (this.#state === S_CLOSED) return; // a synchronous error closed us
        continue;
      }
      const head = wq[0] as FileJob | TlsJob;
      if ("tls" in head) {
        // STARTTLS: wait until every earlier byte has been handed to the OS.
        if (this.#inflight > 0 || sock.writableLength > 0) {
          this.#barrier();
          return;
        }
        this.#upgradeNow(head);
        return;
      }
      wq.shift();
      this.#jobs--;
      this.#flags |= F_FILE_ACTIVE;
      sendFile(head, this.#fileSink(sock));
      this.#pauseBehindFile();
      return;
    }
    // bufferedAmount, with the socket at hand (open: each path above that may close returns).
    const buffered = this.#wqBytes + sock.writableLength;
    if (buffered > this.writeHighWaterMark) this.#pause(P_BACKPRESSURE);
    if (buffered > 0) {
      // Most of what waits is in the socket now, not in the queue #afterQueue checks.
      this.#checkLimit(buffered);
      if (this.#state === S_CLOSED) return;
    }
    if ((this.#flags & P_BACKPRESSURE) !== 0 || this.#state === S_CLOSING) this.#barrier(); // someone waits for the drain
  }

  /**
   * A file is being sent: the writes queued behind it wait, but count, so
   * past writeHighWaterMark reading pauses until the drain after them (onWrite).
   */
  #pauseBehindFile(): void {
    if (this.bufferedAmount > this.writeHighWaterMark) this.#pause(P_BACKPRESSURE);
  }

  /**
   * Nothing needs to hear when the writes made now reach the OS: no onWrite
   * handler, not paused by backpressure, no overflow to clear, not closing,
   * and not a user's Duplex (its write callback is the one place a failed
   * write shows: see {@link writeFailures}).
   */
  #nobodyWaits(): boolean {
    return (
      (this.#flags & (P_BACKPRESSURE | F_WRITE_OVERFLOWED | F_WRITE_ENDED)) === 0 &&
      this.#state === S_OPEN &&
      this.onWrite === defaultOnWrite &&
      this.#x?.foreign !== true
    );
  }

  /**
   * Whether queued buffers should wait for the socket to drain: it still
   * holds bytes from earlier writes, and will say when they have gone (a
   * write in flight calls back; on node:net, a barrier is asked for).
   */
  #holdRun(sock: OwnedSocket): boolean {
    // (Not "a write is in flight": one the OS took at once calls back on the
    // next tick, and a flush in between must still send.)
    if (sock.writableLength === 0) return false;
    // Under TLS the count includes node:tls's own pipeline: while the OS has
    // taken every byte, the run goes on, as it would leave a plain socket.
    if (this.#tlsLeavesNow(sock)) return false;
    this.#barrier(); // node:net: be told when it drains (native: the write left queued already asked)
    return true;
  }

  /**
   * node:net/node:tls: bytes written without a callback are still in the
   * socket and nothing in flight will report the drain: an empty write with
   * a callback does (node:stream calls write callbacks in order).
   */
  #barrier(): void {
    const sock = this.#sock;
    if (sock === null || this.#inflight > 0 || (this.#flags & F_NATIVE) !== 0 || sock.writableLength === 0) return;
    this.#inflight++;
    sock.write(EMPTY, this.#writeCallback());
  }

  /**
   * node:net/node:tls: removes the first `n` queued buffers (`bytes` in all)
   * from the queue and counts them out: one buffer (joined when small), or the list to write
   * together when large. A queue taken whole leaves the stream (#wq =
   * null; an idle stream holds no array): short ones go to spareQueues,
   * and a long run is written from the queue itself.
   */
  #takeRun(wq: QueueItem[], n: number, bytes: number): Buffer | Buffer[] {
    let run: Buffer | Buffer[];
    if (n === 1) run = wq[0] as Buffer;
    else if (bytes <= JOIN_LIMIT) run = join(wq, n, bytes);
    else run = (n === wq.length ? wq : wq.slice(0, n)) as Buffer[];
    this.#dropRun(wq, n, bytes, run === wq);
    return run;
  }

  /** The first `n` items of the queue (`bytes` in all) have been taken: off the queue, counted as sent. `kept`: the array itself went out as the run. */
  #dropRun(wq: QueueItem[], n: number, bytes: number, kept: boolean): void {
    if (n < wq.length) wq.splice(0, n);
    else {
      this.#wq = null;
      if (!kept && n <= SPARE_QUEUE_ITEMS && spareQueues.length < SPARE_QUEUES) {
        // pop() stays in optimised code; setting length calls into the runtime.
        for (let i = 0; i < n; i++) wq.pop();
        spareQueues.push(wq);
      }
    }
    this.#wqBytes -= bytes;
    this.#countOut(bytes);
  }

  /**
   * After a native write that left `left` bytes queued: no callback when the
   * OS took it all and {@link #nobodyWaits}.
   */
  #nativeWritten(sock: NativeSocket, left: number): void {
    if (left === 0 && this.#nobodyWaits()) {
      this.#wrote();
      return;
    }
    this.#inflight++;
    sock.whenWritten(left, this.#writeCallback());
  }

  /** The OS took a write: activity for the idle and drain timeouts, unless the peer's acknowledgements say otherwise (see {@link outgoingMoved}). */
  #wrote(): void {
    const x = this.#x;
    if (x !== null) x.wrote = true;
  }

  #onWritten(err?: Error | null): void {
    this.#inflight--;
    if (err) {
      // The socket's 'error' event reports it; a user's Duplex's says only here that a write failed.
      const sock = this.#sock;
      if (this.#x?.foreign === true && sock !== null && !sock.destroyed && typeof err === "object") writeFailures.add(err);
      return;
    }
    this.#wrote();
    if (this.#inflight === 0) this.#drained();
  }

  /** Everything handed to the socket so far has reached the OS. */
  #drained(): void {
    if (this.#state === S_CLOSED) return;
    if ((this.#wq !== null && this.#wq.length > 0) || (this.#flags & F_FILE_ACTIVE) !== 0) {
      this.#flush();
      if ((this.#wq !== null && this.#wq.length > 0) || this.#inflight > 0 || (this.#flags & F_FILE_ACTIVE) !== 0) {
        if ((this.#flags & F_TLS_UPGRADING) !== 0) this.#flags |= F_WRITE_OWED;
        return;
      }
    }
    if (this.#sock !== null && this.#sock.writableLength > 0) {
      this.#barrier(); // written quietly since: wait for those too
      return;
    }
    this.#flags &= ~(F_WRITE_OVERFLOWED | F_WRITE_OWED);
    this.#resume(P_BACKPRESSURE);
    if (this.onWrite !== defaultOnWrite) this.#event(this.onWrite, F_WRITE_OWED);
    this.#finAfterWrites();
    if (this.#state === S_CLOSING && !this.#hasPendingWrites()) this.#finishClose(true);
  }

  #fileSink(sock: OwnedSocket): FileSink {
    const stream = this;
    return {
      writeChunk: (chunk) => {
        this.#inflight++;
        this.#countOut(chunk.length);
        return sock.write(chunk, this.#writeCallback());
      },
      get backlog() {
        return sock.writableLength;
      },
      // A socket that closes instead of draining wakes the pump too: it
      // sees `gone`, and closes a file it opened.
      onDrain: (fn) => {
        const wake = (): void => {
          sock.removeListener("drain", wake);
          sock.removeListener("close", wake);
          fn();
        };
        sock.on("drain", wake);
        sock.on("close", wake);
      },
      get gone() {
        return stream.#state === S_CLOSED || sock.destroyed;
      },
      done: (err) => {
        this.#flags &= ~F_FILE_ACTIVE;
        if (this.#state === S_CLOSED) return;
        if (err !== null) {
          this._countError("write", err);
          // The socket is fine: onWriteError decides (its default closes);
          // kept open, the writes queued after the file go on.
          this._call1(this.onWriteError, err);
          if (this.#state === S_CLOSED) return;
        }
        if (this.#inflight === 0) this.#drained();
      },
    };
  }

  /**
   * node:tls needs a real Duplex: put one over a native socket from now on
   * (a STARTTLS upgrade, or a client whose startSSL() came while its native
   * connect was under way). Bytes the addon still holds back follow, raw.
   */
  #duplexOverNative(): OwnedSocket {
    const sock = this.#sock as OwnedSocket;
    if (!isNative(sock)) return sock;
    sock.setFraming(0, null, 0, true);
    sock.off("data", onSocketData as never);
    sock.off("end", onSocketEnd as never);
    sock.off("error", onSocketError as never);
    sock.on("error", ignoreError);
    const duplex = sock.toDuplex() as OwnedSocket;
    if (this.#x?.raw == null) this.#extras().raw = sock;
    duplex[kStream] = this;
    duplex.on("error", onSocketError);
    duplex.on("close", onSocketClose);
    this.#flags &= ~(F_NATIVE | F_NATIVE_FRAMING);
    this.#sock = duplex;
    return duplex;
  }

  #upgradeNow(job: TlsJob): void {
    const sock = this.#duplexOverNative();
    // Bytes already read past the STARTTLS point belong to the TLS layer:
    // hand them back to the socket so the handshake sees them (uvloop#707).
    const rb = this.#rb;
    const rest = rb !== null && rb.length > 0 ? rb.all() : null;
    rb?.clear();
    sock.pause();
    if (rest !== null) sock.unshift(rest);
    this.#wrapTls(job.tls, false, job.compiled);
  }

  // -------------------------------------------------------------------------
  // Internals: closing

  /**
   * `graceful`: what was written still goes out (close(true), the peer's
   * end). `asked`: the handler closed (not a socket error or a timeout), so
   * a close(false) with everything already taken by the OS lingers too.
   */
  #finishClose(graceful: boolean, asked = graceful): void {
    const state = this.#state;
    if (state === S_CLOSED) return;
    const everConnected = (this.#flags & F_EVER_CONNECTED) !== 0;
    // Read the addresses before the socket goes, for whoever may ask after it.
    if ((this.#flags & F_ADDRESSES) === 0 && this.#asksAddressesLate()) this.#addresses();
    this.#state = S_CLOSED;
    this.#flags |= F_STOP;
    const sock = this.#sock;
    this.#rb?.clear();
    this.#wq = null;
    this.#wqBytes = 0;
    this.#jobs = 0;
    if ((this.#flags & F_TIMED) !== 0) {
      this.#flags &= ~F_TIMED;
      this.engine._sweeper.delete(this);
    }
    this.engine._channels.delete(this);
    const engineStats = this.engine.stats;
    // A partial frame the addon held was received all the same: count it.
    if ((this.#flags & F_NATIVE_FRAMING) !== 0 && isNative(sock)) this.#takeHeld(sock);
    if (sock !== null) {
      engineStats.open--;
      // Closes match accepts: a connect that failed was never counted.
      if ((this.#flags & F_COUNTED) !== 0) engineStats.closed++;
      this.#releaseSocket(sock, graceful && state >= S_PENDING, asked && state >= S_PENDING);
    }
    this.server?._connectionClosed(this, this.#connId);
    if (!everConnected) {
      const x = this.#extras();
      const err = x.connectError ?? new ChannelStateError(`${nameOf(this)} closed before it connected.`);
      const reject = x.readyReject;
      x.readyResolve = null;
      x.readyReject = null;
      if (reject !== null) reject(err);
      else if (x.readyPromise === null && x.connectError === null) x.connectError = err;
      this.#payConnectError();
    }
    this.#dropSignal();
    this._callOnClose();
    const disposed = this.#x?.disposed ?? null;
    if (disposed !== null) {
      this.#x!.disposed = null;
      disposed();
    }
    if (diagnostics.connectionClose.hasSubscribers) diagnostics.connectionClose.publish({ stream: this });
  }

  #releaseSocket(sock: OwnedSocket, graceful: boolean, asked: boolean): void {
    if (sock.destroyed) {
      sock[kStream] = undefined;
      return;
    }
    // close(false) drops what the OS has not taken yet. When it has taken
    // everything, the FIN and the linger below still apply: a reset would
    // destroy what the peer has not read of it (an error reply, say).
    if (!graceful && (!asked || this.#handshaking() || (sock.writableLength > 0 && !this.#tlsLeavesNow(sock)))) {
      sock.destroy();
      sock[kStream] = undefined;
      return;
    }
    if ((this.#flags & F_PEER_ENDED) !== 0) {
      // Both sides are done: our FIN (TLS: close_notify first); the socket
      // destroys itself once it has been sent.
      sock.end();
      return;
    }
    // FIN after everything written; keep reading (and discarding) until the
    // peer closes too, so unread bytes do not turn our close into a reset.
    if ((this.#flags & F_FLOWING) === 0) {
      this.#flags |= F_FLOWING;
      sock.on("end", onSocketEnd);
      this.#listenReads(sock);
    }
    sock.resume();
    sock.end();
    // A lingering socket never keeps the process alive.
    const under = this.#x?.raw ?? null;
    const raw = (under ?? sock) as Duplex & { unref?: () => void };
    raw.unref?.();
    const rounds = Math.min(LINGER_MAX_MS / LINGER_MS, Math.ceil(this.#bytesWritten / LINGER_BYTES_PER_WAIT));
    const linger: Linger = { sock, under: under as OwnedSocket | null, stream: this, read: this.#bytesRead, rounds };
    armLinger(linger);
    lingering.set(sock, linger);
    this.engine.stats.lingering++;
    this.server?._lingerStarted(sock);
  }

  /**
   * Under TLS, bytes already handed to the TLS socket that wait only for
   * its previous write's callback (one write at a time: the first reply
   * after a TLS 1.3 handshake waits for the session tickets), while the OS
   * has taken everything before them: they leave next turn, as a plain
   * socket's would have left at once: a run is not held behind them, and
   * close(false) keeps them. (Native STARTTLS: node:tls writes through a
   * Duplex over the addon's socket, which writes what it is given at once;
   * the addon's queue says the rest.)
   */
  #tlsLeavesNow(sock: OwnedSocket): boolean {
    if (this.#tls === null || (sock as unknown) !== this.#tls) return false;
    const raw = this.#x?.raw;
    if (raw instanceof net.Socket) return uvWriteState(raw)?.writeQueueSize === 0;
    return raw != null && isNative(raw) && raw.writableLength === 0;
  }

  // -------------------------------------------------------------------------
  // Internals: timeouts (driven by the engine's shared sweeper)

  #armHandshakeTimeout(): void {
    let ms = this.handshakeTimeout;
    // Behind a PROXY header the one deadline runs from the accept: the time
    // the header took is not given again to the handshake after it.
    const acceptedAt = this.#x?.acceptedAt ?? null;
    if (ms > 0 && acceptedAt !== null) ms = Math.max(1, acceptedAt + ms - this.engine.time());
    if (ms > 0) this.#setDeadline("handshake", ms);
    else if (this.#x?.deadlineKind === "handshake") this.#clearDeadline("handshake");
    else this.#updateTimed(); // a first handshake stops the idle clock (see #updateTimed)
  }

  #setDeadline(kind: "handshake" | "drain", ms: number): void {
    const x = this.#extras();
    const now = this.engine.time();
    x.deadline = now + ms;
    x.deadlineKind = kind;
    x.idleSince = now;
    x.wrote = false;
    this.#flags = (this.#flags & ~F_ACTIVE) | F_TIMED;
    this.engine._sweeper.add(this, ms);
  }

  #clearDeadline(kind: "handshake" | "drain"): void {
    const x = this.#x;
    if (x === null || x.deadlineKind !== kind) return;
    x.deadlineKind = null;
    this.#updateTimed();
  }

  /**
   * Registers this stream with the sweeper while it has a deadline or an
   * idle clock to run. The idle clock runs from `connect()` (it bounds the
   * connect), and from onConnect on; not during a first TLS handshake,
   * which has its own deadline: a slow ClientHello under handshakeTimeout 0
   * is not idle time, and an onTimeout then could only wait for onConnect.
   */
  #updateTimed(): void {
    const x = this.#x;
    const state = this.#state;
    const idle = x !== null && x.idleTimeout > 0 && state >= S_CONNECTING && !(state === S_PENDING && this.#handshaking());
    const want = state !== S_CLOSED && x !== null && (x.deadlineKind !== null || idle);
    if (want) {
      if ((this.#flags & F_TIMED) === 0) x.idleSince = this.engine.time();
      this.#flags |= F_TIMED;
      this.engine._sweeper.add(this, x.deadlineKind !== null ? 1000 : x.idleTimeout);
    } else if ((this.#flags & F_TIMED) !== 0) {
      this.#flags &= ~F_TIMED;
      this.engine._sweeper.delete(this);
    }
  }

  /** @internal Called by the engine's sweeper on every tick. */
  _onSweep(now: number): void {
    const x = this.#x;
    if (this.#state === S_CLOSED || x === null) return;
    let active = (this.#flags & F_ACTIVE) !== 0;
    const wrote = x.wrote;
    x.wrote = false;
    this.#flags &= ~F_ACTIVE;
    const kind = x.deadlineKind;
    if (kind === "handshake") {
      if (now >= x.deadline) this.#handshakeFailed(new TimeoutError(`The TLS handshake of ${nameOf(this)} did not complete in time.`, "handshake"));
      return;
    }
    if (kind === null && x.idleTimeout <= 0) return;
    if (this.#state === S_CONNECTING) {
      if (now - x.idleSince >= x.idleTimeout) {
        this._onSocketError(new TimeoutError(`The connect did not complete in ${x.idleTimeout} ms.`, "connect"));
      }
      return;
    }
    if (!active && (this.#flags & F_NATIVE_FRAMING) !== 0 && incomingHeld(x, this.#sock as unknown as NativeSocket)) active = true;
    const sock = x.raw ?? this.#sock;
    if (sock !== null && outgoingMoved(x, sock, active, wrote)) active = true;
    if (kind === "drain") {
      // A draining close that makes progress is given more time.
      if (active) x.deadline = now + drainTimeout(x);
      else if (now >= x.deadline) {
        this._countError("timeout", new TimeoutError("A draining close made no progress.", "idle"));
        this.#finishClose(false);
      }
      return;
    }
    if (active) {
      x.idleSince = now;
    } else if (now - x.idleSince >= x.idleTimeout) {
      x.idleSince = now;
      this._countError("timeout", new TimeoutError("idle timeout", "idle"));
      this.#event(this.onTimeout, F_TIMEOUT_DUE);
    }
  }

  // -------------------------------------------------------------------------
  // Internals: server plumbing

  /** @internal server.shutdown() asks this connection to wind down. */
  _shutdownRequested(): void {
    if (this.#state !== S_CLOSED) this.#event(this.onShutdown, F_SHUTDOWN_DUE);
  }

  /** @internal Called by the server right after construction. */
  _attachToServer(server: Server, connId: number, idleTimeout: number): void {
    this.server = server;
    this.#connId = connId;
    this.#flags |= F_SERVER_SIDE;
    if ((this.#flags & F_COUNTED) === 0) {
      // Made after an async onAccept awaited: the server counts it now, so
      // does the engine (its close too), even if it never reaches onConnect.
      this.#flags |= F_COUNTED;
      this.engine.stats.accepted++;
    }
    this.#keepAddresses();
    if (!this.#adoptFields()) return;
    if (this.#x?.deadlineKind === "handshake") this.#armHandshakeTimeout();
    if (idleTimeout > 0 && this.idleTimeout === 0) this.idleTimeout = idleTimeout;
  }

  /**
   * Class fields over Stream's setters (`readDelimiter = "\n"` in a subclass
   * body) are set through them, before the framework reads them (see
   * adoptAccessorFields). A value a setter refuses is the class's mistake,
   * as a constructor that throws: logged, counted as a handler error, and
   * the stream closed (false then).
   */
  #adoptFields(): boolean {
    try {
      adoptAccessorFields(this, Stream.prototype, "Stream");
      return true;
    } catch (err) {
      const error = asError(err, "A class field");
      this._countError("handler", error);
      log.current.error({ err: error, ...this._logFields() }, `A class field of ${nameOf(this)} was refused (${error.message}); connection closed.`);
      this.close(false);
      return false;
    }
  }

  /**
   * @internal Closed by its own constructor before its server had it: it
   * was accepted all the same. Its server is set, and the engine counts it
   * accepted and closed if it did not yet (a stream made after an async
   * onAccept awaited is counted once the server has it).
   */
  _closedBeforeServer(server: Server): void {
    this.server = server;
    if ((this.#flags & F_COUNTED) === 0) {
      this.#flags |= F_COUNTED;
      this.engine.stats.accepted++;
      this.engine.stats.closed++;
    }
  }

  /**
   * @internal The subclass constructor threw after this base constructor
   * adopted the socket: forget it silently (no handler runs on a half-built
   * instance); the server destroys the socket.
   */
  _abandon(): void {
    if (this.#state === S_CLOSED) return;
    this.#state = S_CLOSED;
    this.#flags |= F_STOP;
    const sock = this.#sock;
    if (sock !== null) {
      sock[kStream] = undefined;
      this.engine.stats.open--;
      // Never a connection, for the engine's counts as for the server's.
      if ((this.#flags & F_COUNTED) !== 0) this.engine.stats.accepted--;
    }
    this.engine._channels.delete(this);
    if ((this.#flags & F_TIMED) !== 0) this.engine._sweeper.delete(this);
  }

  /** @internal */
  protected override _statsTargets(): [Stats, Stats | null] {
    return [this.engine.stats, this.server !== null ? this.server.stats : null];
  }
}

/**
 * The default onWrite, which does nothing: a stream that keeps it has nobody
 * to tell when its writes drain. (A constant: inside the class, TypeScript
 * reads `Stream.prototype` through a mutable alias, which costs a lookup per write.)
 */
const defaultOnWrite = Stream.prototype.onWrite;

/**
 * Whether what was written made progress since the last sweep. Without the
 * peer's acknowledgements in sight (node:net without the addon, a pipe, not
 * Linux) that is a write the OS took, or bytes of a large write leaving the
 * process. Where TCP_INFO shows them (Linux, the addon loaded: either
 * transport), a tick without reads that wrote or had bytes out asks it, and
 * only bytes the peer acknowledged count: a peer that vanished without a FIN
 * or reset acknowledges nothing, however much the kernel still takes (until
 * its send buffer fills). The first look after a quiet spell gives the
 * writes the benefit of the doubt.
 */
function outgoingMoved(x: Extras, sock: Duplex | NativeSocket, active: boolean, wrote: boolean): boolean {
  const drained = bytesDrained(sock);
  const moved = wrote || drained > x.drained;
  x.drained = drained;
  if (active) {
    if (x.delivered === -1) x.delivered = -2;
    return moved;
  }
  if (!moved && x.delivered === -1) return false;
  const delivered = deliveredBytes(sock);
  let progress: boolean;
  if (delivered < 0) progress = moved || x.delivered >= 0; // all acknowledged (or not knowable: the writes count)
  else progress = x.delivered >= 0 ? delivered > x.delivered : moved;
  x.delivered = delivered;
  return progress;
}

/**
 * How long a draining close may go without progress: 30 s, or the stream's
 * idleTimeout when that is shorter (a close(true) to a peer that vanished is
 * as idle as the stream was before it).
 */
function drainTimeout(x: Extras | null): number {
  const idle = x?.idleTimeout ?? 0;
  return idle > 0 && idle < DRAIN_TIMEOUT_MS ? idle : DRAIN_TIMEOUT_MS;
}

/**
 * The bytes of `sock`'s TCP connection the peer has acknowledged so far, or
 * -1 when nothing written is still in the kernel or this cannot be known: a
 * node:net socket is asked through the addon when it is loaded.
 */
function deliveredBytes(sock: Duplex | NativeSocket): number {
  if (isNative(sock)) return sock.deliveredBytes;
  if (!(sock instanceof net.Socket)) return -1;
  const fd = (sock as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return -1;
  const addon = nativeAddon();
  return addon === null ? -1 : addon.deliveredBytesOf(fd);
}

/**
 * Whether the addon read bytes since the last sweep that no handler saw yet:
 * native framing keeps a partial frame in C without calling JS, so a large
 * frame arriving slowly reads as silence otherwise. Asked only on a tick
 * without other activity.
 */
function incomingHeld(x: Extras, sock: NativeSocket): boolean {
  const read = sock.bytesRead;
  const moved = read > x.read;
  x.read = read;
  return moved;
}

/**
 * Bytes the OS has taken from `sock`'s write queue so far (it only grows), or
 * -1 where that cannot be seen. It moves while a large write drains, before
 * the write completes; Node's own socket timeout reads the same libuv figure
 * (`writeQueueSize`) for the same reason.
 */
function bytesDrained(sock: Duplex | NativeSocket): number {
  if (isNative(sock)) return sock.drainedBytes;
  const state = uvWriteState(sock);
  return state === null ? -1 : state.bytesWritten - state.writeQueueSize;
}

/** Writes a run taken off the queue: one buffer, or a list corked into one writev; `cb` after the last. */
function writeRun(sock: OwnedSocket, run: Buffer | Buffer[], cb: ((err?: Error | null) => void) | undefined): void {
  if (!Array.isArray(run)) {
    sock.write(run, cb);
    return;
  }
  sock.cork();
  for (let i = 0; i < run.length - 1; i++) sock.write(run[i]!);
  sock.write(run[run.length - 1]!, cb);
  sock.uncork();
}

/**
 * A node:net socket's libuv handle (Node's private `_handle`), read for its
 * write figures: bytes written in all, and bytes still queued in libuv; null
 * where there is no such handle (a user's Duplex, a closed socket).
 */
function uvWriteState(sock: Duplex): { bytesWritten: number; writeQueueSize: number } | null {
  const handle = (sock as { _handle?: { bytesWritten?: unknown; writeQueueSize?: unknown } | null })._handle;
  if (handle == null || typeof handle.bytesWritten !== "number" || typeof handle.writeQueueSize !== "number") return null;
  return handle as { bytesWritten: number; writeQueueSize: number };
}

/**
 * How many of the bytes of `buf` make whole characters in `encoding`: all
 * but the start of a character the read cut (UTF-8: an unfinished sequence;
 * UTF-16: an odd byte, or a lone high surrogate; base64: bytes short of a
 * 3-byte group, whose text depends on what follows).
 */
function wholeCharacters(buf: Buffer, encoding: BufferEncoding): number {
  const n = buf.length;
  switch (encoding) {
    case "utf8":
    case "utf-8": {
      // Back over at most three continuation bytes to the lead byte.
      let lead = n - 1;
      while (lead >= 0 && lead > n - 4 && (buf[lead]! & 0xc0) === 0x80) lead--;
      if (lead < 0) return n;
      const b = buf[lead]!;
      const need = b >= 0xf0 && b < 0xf8 ? 4 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xc0 && b < 0xe0 ? 2 : 1;
      return n - lead < need ? lead : n; // an invalid byte is left for the check
    }
    case "utf16le":
    case "utf-16le":
    case "ucs2":
    case "ucs-2": {
      let end = n - (n % 2);
      if (end >= 2 && (buf[end - 1]! & 0xfc) === 0xd8) end -= 2; // a high surrogate waits for its pair
      return end;
    }
    case "base64":
    case "base64url":
      return n - (n % 3);
    default:
      return n;
  }
}

/** Refuses a `flush` argument that is not a boolean (SPEC §10): a truthy string must not flush by accident. */
function checkFlush(method: string, flush: unknown): void {
  if (flush !== false && flush !== true) throw flushTypeError(method, flush);
}

/** The TypeError for a `flush` argument that is not a boolean. */
function flushTypeError(method: string, flush: unknown): TypeError {
  // node:net's write(data, encoding), end(data, encoding).
  const hint = typeof flush === "string" && Buffer.isEncoding(flush) ? ` It takes no encoding: encode the data first (Buffer.from(data, ${JSON.stringify(flush)})).` : "";
  return typeError(`${method} expects flush to be a boolean, got ${describe(flush)}.${hint}`);
}

/** writePacked()'s options: an object whose `format` is a format string, a Struct or a NetStruct, and whose `flush` is a boolean. */
function checkPackedOptions(options: unknown): void {
  checkOptions("writePacked()", options, PACKED_KEYS);
  const { format, flush } = options as { format?: unknown; flush?: unknown };
  if (format !== undefined && typeof format !== "string" && !(format instanceof Struct) && !(format instanceof NetStruct)) {
    throw typeError(`writePacked() expects options.format to be a format string, a Struct or a NetStruct, got ${describe(format)}.`);
  }
  if (flush !== undefined && typeof flush !== "boolean") throw flushTypeError("writePacked()", flush);
}

function checkSize(name: string, value: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    throw numberError(value, `${name} must be a positive integer number of bytes, got ${describe(value)}.`);
  }
  return value;
}

/** Logs a stream's read, write or TLS error (`what`: "Read error"): at debug when the peer caused it, else at warn. */
function logPeerError(err: Error, what: string, stream: Stream): void {
  if (!isPeerError(err)) log.current.warn({ err, ...stream._logFields() }, `${what} on ${nameOf(stream)}: ${err.message}`);
  else if (log.debugOn()) log.current.debug({ err, ...stream._logFields() }, `${what} on ${nameOf(stream)}: ${err.message}`);
}
