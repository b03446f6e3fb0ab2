/**
 * Server: listens, accepts, and wraps every connection in an instance of
 * its connection class. Also the production features that live at accept
 * time: connection limits, PROXY headers, TLS wrapping, graceful shutdown.
 */
import { Buffer } from "node:buffer";
import cluster from "node:cluster";
import * as net from "node:net";
import tls from "node:tls";
import { lookup } from "node:dns/promises";
import { fstatSync, lstatSync, readlinkSync, unlinkSync } from "node:fs";
import { lstat } from "node:fs/promises";
import { relative as relativePath, resolve as resolvePath } from "node:path";
import type { BigIntStats } from "node:fs";
import type { Duplex } from "node:stream";
import { Channel, diagnostics, isThenable, nameOf } from "./channel.js";
import type { ChannelOptions } from "./channel.js";
import { addStats, newStats } from "./engine.js";
import type { Stats, Timer } from "./engine.js";
import { addressOverride, parseAddress, fromAddressInfo, fromNodeAddress, formatAddress, copyAddress, readsAsPort, withScope } from "./address.js";
import type { Address, ParsedAddress } from "./address.js";
import { ChannelStateError, InvalidAddressFormatError, ProxyProtocolError, TimeoutError, asError, checkMs, codedError, describe, keepAliveDelay, netFormHint, numberError, rangeError, typeError, unboundError } from "./errors.js";
import { log } from "./log.js";
import { Stream, accepting, endLinger, kAcceptedAt, kHeldFailure, kProxyHeader, kRawSocket, kStream, kTlsPending, kTlsSecured, peerLeftHandshakeError, untakenSocketError } from "./stream.js";
import type { ConnectionClass } from "./stream.js";
import { compileServerTls, wrapServerSocket } from "./tls.js";
import type { ServerTls, SslOptions } from "./tls.js";
import { PROXY_V2_HEADER_LENGTH, formatIPv6, parseIPv6Text, parseProxyHeader, proxiedAddress } from "./proxy-protocol.js";
import type { ProxyHeader } from "./proxy-protocol.js";
import { NativeListener, NativeSocket, nativeAddon } from "./native-socket.js";
import { nativeLoadError } from "./native-binding.js";
import { checkTransport, netListensReusePort, useNative } from "./transport.js";
import type { Transport } from "./transport.js";
import type { Timed } from "./timeouts.js";
import { adoptAccessorFields, checkOptionKeys, checkOptions, optionKeys } from "./options.js";
import { checkSignal, onAbort } from "./abort.js";

/**
 * Options of the {@link Server} constructor. A key it does not know is
 * ignored and logged once (a `warn` naming the nearest known key), not
 * refused: a wider configuration object may be passed.
 */
export interface ServerOptions extends ChannelOptions {
  /**
   * A listening `net.Server`, or the descriptor of a listening TCP or UNIX
   * socket (systemd's socket activation, a parent's), to serve on instead
   * of calling `listen`. The server owns the descriptor from then on (its
   * close closes it) and serves it on the native transport when it can, in
   * a cluster worker too: the socket is this process's own. (On node:net a
   * handed UNIX socket's path cannot be learnt: `localAddress` is null.)
   */
  socket?:
    | net.Server
    | {
        /** The descriptor of a socket that is already listening. */
        fd: number;
      };
  /** TLS options: `startSSL(sslOptions)` is called by the constructor. */
  sslOptions?: SslOptions;
  /**
   * Connections above this many are closed at accept and counted as
   * rejected (default: no limit). Closed connections still lingering (see
   * the guide, "Closing") count too, but never refuse anyone: at the limit
   * the oldest linger ends at once to make room.
   */
  maxConnections?: number;
  /**
   * At most this many open connections from one client IP address; more
   * are closed at accept, before any TLS handshake, and counted as
   * rejected (default: no limit). An IPv4-mapped IPv6 address (or one in
   * the NAT64 prefix 64:ff9b::/96) counts as its IPv4 address, other IPv6
   * addresses by their network (see {@link peerIPv6Prefix}); behind
   * `proxyProtocol` the address is the PROXY header's source. UNIX-socket
   * peers are not limited. Each process counts its own.
   */
  maxConnectionsPerPeer?: number;
  /**
   * For `maxConnectionsPerPeer`: IPv6 clients are counted by this many
   * leading bits of their address (default 64: one network, as one IPv4
   * address is one client, since a single host usually holds a whole /64;
   * 128: each address apart). Loopback and link-local addresses are always
   * counted each apart, and IPv4-mapped and NAT64 ones as their IPv4 address.
   */
  peerIPv6Prefix?: number;
  /** Default `idleTimeout` of accepted streams, in ms (default 0: off). */
  idleTimeoutMs?: number;
  /** TLS handshakes (and PROXY headers) must complete within this many ms (default 10 000; 0: off). */
  handshakeTimeoutMs?: number;
  /** Expect a HAProxy PROXY protocol v1/v2 header on every connection (default false). */
  proxyProtocol?: boolean;
  /** TCP_NODELAY on accepted sockets (default true: writes are already coalesced per turn). */
  noDelay?: boolean;
  /**
   * TCP keep-alive probes after this many ms idle (default 0: off). The
   * kernel counts whole seconds, 1 to 32 767: less than a second is one.
   */
  keepAliveMs?: number;
  /**
   * `"native"`: the libuv addon (fails if it is not built); `"js"`: node:net.
   * Default: native when built (or as `PANTS_TS_TRANSPORT` says), except for
   * TLS and PROXY-protocol servers and in cluster workers (unless `reusePort`
   * or a `socket` descriptor gives the worker a socket of its own), which
   * use node:net.
   */
  transport?: Transport;
  /**
   * SO_REUSEPORT on the TCP listening sockets (default false): several
   * servers, in this process or others, listen on one address and port, and
   * the kernel spreads new connections among them (Linux). node:net sets it
   * on Node 22.12+ and 23.1+; on older releases it needs the native addon,
   * and a cluster worker's server then runs on the native transport. In a
   * cluster worker each server listens on a socket of its own; under
   * {@link runCluster} a port 0 is one port the first worker's OS picked,
   * shared by every worker (the n-th such listen of a connection class on a
   * host in each worker shares the n-th worker-wide port of that class and
   * host). Not for UNIX socket paths.
   */
  reusePort?: boolean;
}

const SERVER_KEYS = optionKeys<ServerOptions>({
  engine: true,
  socket: true,
  sslOptions: true,
  maxConnections: true,
  maxConnectionsPerPeer: true,
  peerIPv6Prefix: true,
  idleTimeoutMs: true,
  handshakeTimeoutMs: true,
  proxyProtocol: true,
  noDelay: true,
  keepAliveMs: true,
  transport: true,
  reusePort: true,
});
const SHUTDOWN_KEYS = optionKeys<ShutdownOptions>({ timeoutMs: true, signal: true });

/** Options of {@link Server.shutdown}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface ShutdownOptions {
  /** Connections still open this many ms after the call are closed without flushing (default 10 000; 0: no deadline). */
  timeoutMs?: number;
  /**
   * Ends the wait: once it aborts (already aborted: at once), the
   * connections still open are closed without flushing, as at the
   * deadline, and the promise resolves. Its listener is removed when the
   * shutdown completes.
   * @throws TypeError (from `shutdown()`) unless an `AbortSignal`.
   */
  signal?: AbortSignal;
}

const ST_INIT = 0;
const ST_BINDING = 1;
const ST_LISTENING = 2;
const ST_CLOSED = 3;

const kServer: unique symbol = Symbol("pants-ts.server");
type OwnedNetServer = net.Server & { [kServer]?: Server };

function onNetConnection(this: OwnedNetServer, socket: net.Socket): void {
  const server = this[kServer];
  if (server) server._onConnection(socket);
  else socket.destroy();
}

function onNetError(this: OwnedNetServer, err: NodeJS.ErrnoException): void {
  this[kServer]?._onNetError(err);
}

/** Errors on accepted sockets before (or without) a stream: logged at debug. */
function onRawError(err: Error): void {
  if (log.debugOn()) log.current.debug({ err }, `Socket error on an accepted connection: ${err.message}`);
}

/** A server-side TLS handshake is done (see kTlsSecured). */
function onTlsSecured(this: tls.TLSSocket & { [kTlsSecured]?: boolean }): void {
  this[kTlsSecured] = true;
}

/** listen()'s backlog, and that of a socket handed over ({ socket: { fd } }). */
const DEFAULT_BACKLOG = 1024;

/** node:net's listen options; `reusePort` from Node 22.12 and 23.1 (which @types/node 20 does not know). */
type NetListenOptions = net.ListenOptions & { reusePort?: boolean };

function listenOn(netServer: net.Server, options: NetListenOptions | { fd: number; backlog: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      netServer.off("listening", onListening);
      reject(err);
    };
    const onListening = () => {
      netServer.off("error", onError);
      resolve();
    };
    netServer.once("error", onError);
    netServer.once("listening", onListening);
    // A descriptor's backlog is listen()'s second argument (node:net ignores it in the object).
    if ("fd" in options) netServer.listen({ fd: options.fd }, options.backlog);
    else netServer.listen(options);
  });
}

/** Why a descriptor cannot be listened on, where fstat tells: " (not open)", " (not a socket)", else "". */
function fdTrouble(fd: number): string {
  try {
    return fstatSync(fd).isSocket() ? "" : " (not a socket)";
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EBADF" ? " (not open)" : "";
  }
}

function closeNet(netServer: net.Server): void {
  // A listen({ host }) still looking its host up: node:net on Node 20 (20.10
  // at least; fixed by 20.20) refuses the close (ERR_SERVER_NOT_RUNNING),
  // then listens anyway, holding the port and the process open.
  if (!netServer.listening) netServer.once("listening", () => netServer.close());
  try {
    netServer.close();
  } catch {
    // Not listening: nothing to close.
  }
}

/**
 * A UNIX socket file nobody listens on (what a killed server leaves) is
 * removed before listening on its path; anything else there stays, and
 * listen fails with EADDRINUSE. Only a refused probe means nobody listens:
 * EAGAIN is a live server with a full accept queue, EACCES one this user
 * may not connect to. The file is unlinked only if it is still the very one
 * found dead (same device, inode and ctime), checked and unlinked in one
 * synchronous step: a process that also binds the path (a cluster primary)
 * cannot bind a live socket there in between.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  if (path.startsWith("\0")) return;
  let found: BigIntStats;
  try {
    found = await lstat(path, { bigint: true });
  } catch {
    return; // nothing there
  }
  if (!found.isSocket()) return; // a regular file is never deleted
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", (err: NodeJS.ErrnoException) => resolve(err.code !== "ECONNREFUSED"));
  });
  if (alive) return;
  try {
    const now = lstatSync(path, { bigint: true });
    if (now.dev === found.dev && now.ino === found.ino && now.ctimeNs === found.ctimeNs) {
      if (log.debugOn()) log.current.debug(`Removing stale UNIX socket ${path}.`);
      unlinkSync(path);
    }
  } catch {
    // gone already
  }
}

/**
 * @internal How a server clears a stale socket before listening on a path.
 * A runCluster worker asks its primary instead (cluster.ts): the primary
 * binds every worker's listening sockets, so only there can the check and
 * the unlink never fall between another worker's and the live bind.
 */
export const staleSocketRemover: { current: (path: string) => Promise<void> } = { current: removeStaleSocket };

/**
 * @internal The port a runCluster worker's reusePort server binds for a
 * requested port 0: `port` is the one another worker bound for the same
 * `key`, or 0 when this worker is the first, which then reports the port its
 * OS picked with `settle` (0: none; the next worker picks). Set by runCluster
 * (cluster.ts); null elsewhere, where each worker picks its own.
 */
export interface PortClaim {
  readonly port: number;
  settle(bound: number): void;
}
/** @internal See {@link PortClaim}. */
export const reusePortZero: { current: ((key: string) => Promise<PortClaim>) | null } = { current: null };
/** How many reusePort listens on port 0 this process made per connection class and host, for their keys. */
const zeroListens = new Map<string, number>();

/** @internal Every server of this process that is listening (for runCluster and the CLI). */
export const liveServers = new Set<Server>();
/** @internal The counters of servers that have closed, summed, so process totals never go backwards. */
export const retiredTotals: Stats = newStats();

/**
 * A cluster worker's node:net listens on a UNIX path through its primary:
 * the worker makes the path absolute (from its own working directory), and
 * the primary binds it by its shortest name, relative to the primary's
 * working directory. For a file there named like a number ("8080"), node:net
 * then takes the name for a port and throws in the primary, ending it.
 * @throws InvalidAddressFormatError for such a path.
 */
function checkClusterPath(path: string): void {
  if (path.charCodeAt(0) === 0) return;
  const name = relativePath(primaryCwd(), resolvePath(path));
  if (readsAsPort(name)) {
    throw new InvalidAddressFormatError(
      `Invalid address ${describe(path)} in a cluster worker: node:cluster's primary binds it as ${describe(name)}, which node:net reads as a port; name the socket file otherwise ("${name}.sock"), or put it in another directory.`,
    );
  }
}

/**
 * The working directory of this worker's primary (its parent, which forked
 * it): not always this process's own, as cluster.setupPrimary({ cwd }) or a
 * primary's chdir() after the fork make them differ. Linux shows it in
 * /proc; where it cannot be read, this process's is the best guess.
 */
function primaryCwd(): string {
  try {
    return readlinkSync(`/proc/${process.ppid}/cwd`);
  } catch {
    return process.cwd();
  }
}

/** A connection waiting for its PROXY header. */
class ProxyWait implements Timed {
  chunks: Buffer[] = [];
  length = 0;
  /** Bytes the parser needs before it can say more (a v2 header's whole block); fewer are not parsed again. */
  needed = 0;
  deadline: number;
  /** Engine time of the accept: a TLS handshake after the header has what is left of its deadline. */
  readonly acceptedAt: number;
  constructor(
    readonly server: Server,
    readonly socket: net.Socket,
    timeoutMs: number,
  ) {
    this.acceptedAt = server.engine.time();
    this.deadline = timeoutMs > 0 ? this.acceptedAt + timeoutMs : Infinity;
  }
  _onSweep(now: number): void {
    if (now >= this.deadline) {
      this.server._proxyFailed(this, new TimeoutError("No PROXY header arrived in time.", "proxy-header"));
    }
  }
}

function onProxyData(this: net.Socket & { [kProxyWait]?: ProxyWait }, chunk: Buffer): void {
  const wait = this[kProxyWait];
  if (wait) wait.server._proxyData(wait, chunk);
}
function onProxyEnd(this: net.Socket & { [kProxyWait]?: ProxyWait }): void {
  const wait = this[kProxyWait];
  if (wait) wait.server._proxyFailed(wait, new ProxyProtocolError("The connection closed before a whole PROXY header arrived."));
}
/**
 * The socket closed while its header was awaited: a peer's reset (an
 * 'error', then 'close', and no 'end'). Without this the wait, and its
 * maxConnections slot, were held until handshakeTimeoutMs, for ever with 0.
 */
function onProxyClose(this: net.Socket & { [kProxyWait]?: ProxyWait }): void {
  const wait = this[kProxyWait];
  if (wait) wait.server._proxyFailed(wait, new ProxyProtocolError("The connection was reset before a whole PROXY header arrived."));
}
const kProxyWait: unique symbol = Symbol("pants-ts.proxyWait");

/** A TLS socket whose handshake an async onAccept's hold still waits on. */
type HeldTlsSocket = tls.TLSSocket & {
  [kTlsSecured]?: boolean;
  [kAcceptedAt]?: number;
  [kStream]?: Stream;
  [kHeldHandshake]?: HeldHandshake;
  [kHeldFailure]?: Error;
};

/**
 * A TLS socket an async onAccept override holds before its handshake is
 * done: the handshake's deadline runs from the accept while no stream has
 * the socket (a stream made over it arms what is left), and a peer that
 * half-closes meanwhile can never finish it.
 */
class HeldHandshake implements Timed {
  constructor(
    readonly server: Server,
    readonly socket: HeldTlsSocket,
    readonly raw: net.Socket | NativeSocket,
    readonly deadline: number,
  ) {}
  _onSweep(now: number): void {
    if (now >= this.deadline) this.server._heldHandshakeFailed(this, new TimeoutError("The TLS handshake did not complete in time while onAccept held the connection.", "handshake"));
  }
}

function onHeldSecure(this: HeldTlsSocket): void {
  const wait = this[kHeldHandshake];
  if (wait) wait.server._heldHandshakeDone(wait);
}
function onHeldEnd(this: HeldTlsSocket): void {
  const wait = this[kHeldHandshake];
  if (wait) wait.server._heldHandshakeFailed(wait, peerLeftHandshakeError());
}
const kHeldHandshake: unique symbol = Symbol("pants-ts.heldHandshake");

/**
 * A listening channel. Give it a connection class (a {@link Stream}
 * subclass); every accepted connection becomes an instance of it.
 *
 * `new Server(Chat)` is a `Server<Chat>`: its {@link channels} are `Chat`s,
 * with no cast. A subclass names its connection type as the type argument
 * and its class as the static `ConnectionClass`
 * (`class ChatServer extends Server<Chat> { static override ConnectionClass = Chat }`):
 * the compiler cannot check that the two agree, so keep them the same class.
 * A variable that holds such subclasses is typed `typeof Server<Chat>`
 * (`typeof Server` is the generic constructor, which they are not).
 * @typeParam S The connection type: the instances of {@link ConnectionClass} (default {@link Stream}).
 */
export class Server<S extends Stream = Stream> extends Channel {
  /**
   * The connection class used when none is given to the constructor
   * (default {@link Stream}). A subclass of `Server<S>` that sets it sets
   * it to S's class.
   */
  static ConnectionClass: ConnectionClass = Stream;

  #ConnectionClass: ConnectionClass<S>;
  #state = ST_INIT;
  #netServers: net.Server[] = [];
  #nativeListeners: NativeListener[] = [];
  #native = false;
  #transport: Transport | undefined;
  #channels = new Map<number, S>();
  #nextId = 1;
  #tls: ServerTls | null = null;
  #ready: Promise<Server> | null = null;
  #readyResolve: ((s: Server) => void) | null = null;
  #readyReject: ((e: Error) => void) | null = null;
  #bindError: Error | null = null;
  #shutdown: Promise<void> | null = null;
  #shutdownDone: (() => void) | null = null;
  /** When (engine time) the drain forces what is left: the earliest deadline any shutdown() call gave. */
  #shutdownDeadline = Infinity;
  #shutdownTimer: Timer | null = null;
  #proxyWaits = new Set<ProxyWait>();
  /**
   * Sockets an async onAccept override still holds, with the per-peer id
   * (negative, beside the streams' ids) and the address they are counted
   * under: each holds its place under both limits until a stream takes it,
   * the override settles, or the socket closes. A TLS socket's handshake
   * deadline (from the accept) runs meanwhile.
   */
  #held = new Map<Duplex, { id: number; address: Address; raw: net.Socket | NativeSocket }>();
  #heldIds = 0;
  /** The figures this server added to the process totals when it retired (then since); null until it retires. */
  #retiredAs: Stats | null = null;
  #lastAcceptWarning = -Infinity; // engine.time() starts near 0: the first failure is warned too
  #unixPath: string | null = null;
  /** What localAddress and remoteAddress report instead, once assigned (undefined: the real ones). */
  #localOverride: Address | null | undefined = undefined;
  #remoteOverride: Address | null | undefined = undefined;

  #maxConnections: number;
  /**
   * Sockets of this server's closed connections that still linger (oldest
   * first): each holds a descriptor, and so a place under maxConnections.
   */
  #lingering = new Set<Duplex>();
  #maxPerPeer = Infinity;
  #peerPrefix6 = 64;
  /** With a per-peer limit: open connections per client address, and each tracked connection's address. */
  #perPeer: PerPeer | null = null;
  #idleTimeoutMs: number;
  /** @internal */ readonly _handshakeTimeoutMs: number;
  #proxyProtocol: boolean;
  #noDelay: boolean;
  #keepAliveMs: number;
  #reusePort: boolean;

  /** Counters of this server's connections. */
  readonly stats: Stats = newStats();

  /**
   * @param ConnectionClass The connection class (Stream or a subclass); its
   *   instance type is the server's `S`. Default: the class attribute
   *   `ConnectionClass` (and `S` is then the type argument, default Stream).
   * @param options See {@link ServerOptions}.
   * @throws TypeError if `ConnectionClass` is not Stream or a subclass of it.
   * @throws TypeError / RangeError for a bad option.
   * @throws Error `ERR_NATIVE_UNAVAILABLE` for a `socket: { fd }` with `transport: "native"` where the addon is not available.
   */
  constructor(ConnectionClass?: ConnectionClass<S> | null, options?: ServerOptions) {
    super(options);
    // The class attribute's type cannot name S (statics see no type
    // parameter): a subclass of Server<S> promises it is S's class.
    const given: unknown = ConnectionClass ?? (this.constructor as typeof Server).ConnectionClass;
    if (typeof given !== "function" || !(given.prototype instanceof Stream || given === Stream)) {
      const where = ConnectionClass == null ? `${this.constructor.name}.ConnectionClass` : "The connection class";
      throw typeError(`${where} must be Stream or a subclass of it, got ${describe(given)}.`);
    }
    this.#ConnectionClass = given as ConnectionClass<S>;
    const o = options ?? {};
    if (typeof o !== "object") throw typeError(`The Server options must be an object, got ${describe(o)}.`);
    checkOptionKeys(`new ${this.constructor.name || "Server"}()`, o, SERVER_KEYS);
    this.#maxConnections = optionalCount("maxConnections", o.maxConnections, Infinity);
    if (o.peerIPv6Prefix !== undefined) this.#peerPrefix6 = checkPrefix6(o.peerIPv6Prefix);
    this.#setMaxPerPeer(o.maxConnectionsPerPeer);
    this.#idleTimeoutMs = optionalMs("idleTimeoutMs", o.idleTimeoutMs, 0);
    this._handshakeTimeoutMs = optionalMs("handshakeTimeoutMs", o.handshakeTimeoutMs, 10_000);
    this.#keepAliveMs = keepAliveDelay(optionalMs("keepAliveMs", o.keepAliveMs, 0));
    if (o.proxyProtocol !== undefined && typeof o.proxyProtocol !== "boolean") {
      throw typeError(`The proxyProtocol option must be a boolean, got ${describe(o.proxyProtocol)}.`);
    }
    this.#proxyProtocol = o.proxyProtocol ?? false;
    if (o.noDelay !== undefined && typeof o.noDelay !== "boolean") {
      throw typeError(`The noDelay option must be a boolean, got ${describe(o.noDelay)}.`);
    }
    this.#noDelay = o.noDelay ?? true;
    if (o.reusePort !== undefined && typeof o.reusePort !== "boolean") {
      throw typeError(`The reusePort option must be a boolean, got ${describe(o.reusePort)}.`);
    }
    this.#reusePort = o.reusePort ?? false;
    this.#transport = checkTransport(o.transport);
    if (o.sslOptions !== undefined && o.sslOptions !== null) this.startSSL(o.sslOptions);
    if (o.socket !== undefined) this.#adoptSocket(o.socket);
  }

  /** The connection class: the constructor argument, else the class attribute. It makes the `S`s of {@link channels}. */
  get ConnectionClass(): ConnectionClass<S> {
    return this.#ConnectionClass;
  }

  /** True once listening, until closed. */
  get listening(): boolean {
    return this.#state === ST_LISTENING && this.#shutdown === null;
  }

  /** True once closed; a closed server cannot listen again. */
  get closed(): boolean {
    return this.#state === ST_CLOSED;
  }

  /** True once `startSSL` has been called: every connection accepted from then on is TLS. */
  get sslEnabled(): boolean {
    return this.#tls !== null;
  }

  /**
   * Open connections of this server, by connection id, typed by the
   * connection class (a `Server<Chat>`'s are `Chat`s). A connection leaves
   * when it closes.
   */
  get channels(): ReadonlyMap<number, S> {
    return this.#channels;
  }

  /**
   * The address listened on (with the real port when 0 was asked for), else
   * `null`. Assign to override what it reports (the socket is unchanged),
   * `undefined` to restore.
   * @throws InvalidAddressFormatError when assigned a value of no address shape.
   */
  get localAddress(): Address | null {
    if (this.#localOverride !== undefined) return copyAddress(this.#localOverride);
    return this.#listenedOn();
  }
  set localAddress(value: Address | null | undefined) {
    this.#localOverride = addressOverride(value);
  }

  #listenedOn(): Address | null {
    if (this.#unixPath !== null) return this.#state === ST_LISTENING ? this.#unixPath : null;
    const native = this.#nativeListeners[0];
    if (native !== undefined) return this.#state === ST_LISTENING ? copyAddress(fromAddressInfo(native.address())) : null;
    const main = this.#netServers[0];
    if (main === undefined || !main.listening) return null;
    return copyAddress(fromAddressInfo(main.address()));
  }

  /** The transport this server's connections use (decided when it listens). */
  get transport(): Transport {
    return this.#native ? "native" : "js";
  }

  /** @internal True from listen() or an adopted socket until listening (or closed): onListen is on its way. */
  get _binding(): boolean {
    return this.#state === ST_BINDING;
  }

  /** @internal The UNIX socket path listened on, kept after close for the connections still open. */
  get _unixPath(): string | null {
    return this.#unixPath;
  }

  /** The TCP port listened on (the real one when 0 was asked for, whatever `localAddress` was assigned), else `null` (UNIX sockets, not listening). */
  get port(): number | null {
    const address = this.#listenedOn();
    return Array.isArray(address) ? address[1] : null;
  }

  /**
   * `null`: a server has no peer. Assign to override, `undefined` to restore.
   * @throws InvalidAddressFormatError when assigned a value of no address shape.
   */
  get remoteAddress(): Address | null {
    return copyAddress(this.#remoteOverride ?? null);
  }
  set remoteAddress(value: Address | null | undefined) {
    this.#remoteOverride = addressOverride(value);
  }

  /**
   * @internal The addresses of a cluster worker's own listening sockets, for
   * the CLI's banner: node:cluster's 'listening' event reports neither the
   * addon's nor (Node 26) node:net's reusePort ones.
   */
  _ownListenAddresses(): Address[] {
    return this.#reusePort && this.#state === ST_LISTENING ? this.localAddresses : [];
  }

  /** Every address listened on (the IPv6 slave too). */
  get localAddresses(): Address[] {
    const out: Address[] = [];
    for (const l of this.#nativeListeners) {
      const a = fromAddressInfo(l.address());
      if (a !== null) out.push(a);
    }
    for (const s of this.#netServers) {
      if (!s.listening) continue;
      const a = fromAddressInfo(s.address());
      if (a !== null) out.push(a);
    }
    return out;
  }

  /** The listening descriptor, where Node exposes it. */
  get fileno(): number | null {
    const native = this.#nativeListeners[0];
    if (native !== undefined) return native.fd >= 0 ? native.fd : null;
    const main = this.#netServers[0] as (net.Server & { _handle?: { fd?: number } }) | undefined;
    const fd = main?._handle?.fd;
    return typeof fd === "number" && fd >= 0 ? fd : null;
  }

  /** Default idle timeout of accepted streams (ms). */
  get idleTimeoutMs(): number {
    return this.#idleTimeoutMs;
  }

  /** The connection limit (Infinity: none). */
  get maxConnections(): number {
    return this.#maxConnections;
  }
  set maxConnections(value: number) {
    this.#maxConnections = optionalCount("maxConnections", value, Infinity);
  }

  /**
   * The limit of open connections per client IP address (Infinity: none).
   * Set on a live server, it counts the connections already open; it closes
   * none of them, and refuses new ones from an address at or above it.
   */
  get maxConnectionsPerPeer(): number {
    return this.#maxPerPeer;
  }
  set maxConnectionsPerPeer(value: number) {
    this.#setMaxPerPeer(value);
  }

  /**
   * How many leading bits of an IPv6 client's address name it for
   * `maxConnectionsPerPeer` (default 64). Set on a live server, the open
   * connections are counted again by the new prefix.
   * @throws TypeError for a non-number; RangeError unless an integer from 1 to 128.
   */
  get peerIPv6Prefix(): number {
    return this.#peerPrefix6;
  }
  set peerIPv6Prefix(value: number) {
    this.#peerPrefix6 = checkPrefix6(value);
    if (this.#perPeer !== null) this.#countPeers();
  }

  #setMaxPerPeer(value: unknown): void {
    this.#maxPerPeer = optionalCount("maxConnectionsPerPeer", value, Infinity);
    if (this.#maxPerPeer === Infinity) this.#perPeer = null;
    else if (this.#perPeer === null) this.#countPeers();
  }

  /** Counts the open connections, and the places async onAccept overrides hold, by peer afresh. */
  #countPeers(): void {
    const perPeer = (this.#perPeer = { counts: new Map<string, number>(), keys: new Map<number, string>() });
    for (const [id, conn] of this.#channels) countPeer(perPeer, id, peerKey(conn.remoteAddress, this.#peerPrefix6));
    for (const { id, address } of this.#held.values()) countPeer(perPeer, id, peerKey(address, this.#peerPrefix6));
  }

  /**
   * Binds and listens. Validation is synchronous; binding is not: `onListen`
   * follows, or `onError` (the server is closed) and `ready()` rejects.
   * @param backlog The accept queue length (default 1024; the kernel caps it at `net.core.somaxconn`).
   * @param slave With `["", port]` (or a bare port), also serve IPv6 on the same port (default true).
   * @throws ChannelStateError if closed or already listening.
   * @throws TypeError or RangeError for a class field of a subclass (`maxConnections = -1`) its setter refuses.
   * @throws InvalidAddressFormatError for an address of no known shape, or (in a cluster worker on node:net) a socket file in the working directory named like a number.
   * @throws RangeError (`ERR_INVALID_ARG_VALUE`) for `reusePort` with a UNIX path; Error `ERR_REUSEPORT_UNAVAILABLE` for `reusePort` on a Node release before 22.12 (23.0 too) without the native addon, or there on node:net in a cluster worker.
   * @throws Error `ERR_NATIVE_UNAVAILABLE` for `transport: "native"` (or `PANTS_TS_TRANSPORT=native`) where the addon is not available.
   */
  listen(address: Address, backlog = DEFAULT_BACKLOG, slave = true): this {
    if (this.#state === ST_CLOSED || this.#shutdown !== null) {
      throw new ChannelStateError(`listen() called on closed ${nameOf(this)}.`);
    }
    if (this.#state !== ST_INIT) throw new ChannelStateError(`listen() called on active ${nameOf(this)}.`);
    // A subclass's class fields over Server's setters (`maxConnections = 100`): set through them now.
    adoptAccessorFields(this, Server.prototype, "Server");
    const parsed = parseAddress(address);
    if (!Number.isSafeInteger(backlog) || backlog <= 0) {
      throw numberError(backlog, `The backlog must be a positive integer, got ${describe(backlog)}.${netFormHint("listen", backlog)}`);
    }
    if (typeof slave !== "boolean") throw typeError(`slave must be a boolean, got ${describe(slave)}.`);
    // listen(2) takes an int; the kernel caps it at net.core.somaxconn anyway.
    backlog = Math.min(backlog, 2 ** 31 - 1);
    this.#native = this.#choosesNative(this.#reusePort);
    if (this.#reusePort) this.#checkReusePort(parsed);
    if (parsed.kind === "unix" && !this.#native && cluster.isWorker) checkClusterPath(parsed.path);
    // A runCluster worker's port 0: the key under which the workers share one
    // port, by connection class and host, in the order of this worker's
    // listens (as node:cluster's own): servers of two classes never share a
    // port, whichever of them a worker starts first.
    let claimKey: string | null = null;
    if (this.#reusePort && parsed.kind === "tcp" && parsed.port === 0 && cluster.isWorker && reusePortZero.current !== null) {
      const base = `${this.#ConnectionClass.name}|${parsed.host}|${parsed.v6tuple ? "v6" : parsed.family}`;
      const n = zeroListens.get(base) ?? 0;
      zeroListens.set(base, n + 1);
      claimKey = `${base}|${n}`;
    }
    this.#state = ST_BINDING;
    this.engine._channels.add(this);
    this.#bind(parsed, backlog, slave, claimKey).then(
      () => this.#listening(),
      (err: Error) => this.#bindFailed(err, parsed),
    );
    return this;
  }

  /**
   * reusePort's conditions, checked when listening starts.
   * @throws RangeError `ERR_INVALID_ARG_VALUE` for a UNIX path; Error `ERR_REUSEPORT_UNAVAILABLE` where neither node:net (before Node 22.12, 23.0) nor the addon can set it, or in a cluster worker on such a node:net.
   */
  #checkReusePort(parsed: ParsedAddress): void {
    if (parsed.kind === "unix") throw rangeError(`reusePort is for TCP addresses, not the UNIX socket ${parsed.path}.`, "ERR_INVALID_ARG_VALUE");
    if (this.#native || netListensReusePort) return;
    if (nativeAddon() === null) {
      throw codedError(
        `reusePort needs Node 22.12+ or 23.1+ (whose node:net sets SO_REUSEPORT; this is ${process.version}) or the native addon, and ${nativeLoadError() ?? "it is not available"}.`,
        "ERR_REUSEPORT_UNAVAILABLE",
      );
    }
    if (cluster.isWorker) {
      throw codedError(
        `reusePort in a cluster worker needs Node 22.12+ or 23.1+ (this is ${process.version}) or the native transport (a plain TCP server): this node:net hands its listening socket to the primary.`,
        "ERR_REUSEPORT_UNAVAILABLE",
      );
    }
  }

  /** Settles when listening; rejects with the bind error. Never an unhandled rejection if unused. */
  ready(): Promise<this> {
    return this.#readyPromise() as Promise<this>;
  }

  #readyPromise(): Promise<Server> {
    if (this.#ready === null) {
      if (this.#state === ST_LISTENING) this.#ready = Promise.resolve(this);
      else if (this.#bindError !== null) this.#ready = Promise.reject(this.#bindError);
      else if (this.#state === ST_CLOSED) this.#ready = Promise.reject(new ChannelStateError(`${nameOf(this)} is closed.`));
      else {
        this.#ready = new Promise<Server>((resolve, reject) => {
          this.#readyResolve = resolve;
          this.#readyReject = reject;
        });
      }
    }
    return this.#ready;
  }

  /**
   * Makes every connection accepted from now on TLS. Files are read and
   * the secure context built here, once.
   * @throws ChannelStateError if TLS is already enabled or the server is closed.
   * @throws RangeError if `server_side` is not true or `do_handshake_on_connect` not false.
   * @throws Error naming a certificate or key file that cannot be read (`path`); with OpenSSL's code (`ERR_OSSL_*`) for a certificate, key or setting that cannot be used.
   */
  startSSL(sslOptions: SslOptions = {}): this {
    if (this.#state === ST_CLOSED) throw new ChannelStateError(`startSSL() called on closed ${nameOf(this)}.`);
    if (this.#tls !== null) throw new ChannelStateError(`startSSL() called on SSL-enabled ${nameOf(this)}.`);
    this.#tls = compileServerTls(sslOptions);
    return this;
  }

  /**
   * Replaces the certificates (and other TLS options) for connections
   * accepted from now on; open connections are not touched.
   * @throws ChannelStateError unless TLS is enabled.
   */
  setSslOptions(sslOptions: SslOptions): this {
    if (this.#tls === null) throw new ChannelStateError(`setSslOptions() called on ${nameOf(this)} without SSL enabled.`);
    this.#tls = compileServerTls(sslOptions);
    return this;
  }

  /**
   * Stops accepting at once, closes the IPv6 slave, then calls `onClose`,
   * whose default closes every open connection without flushing; sockets
   * an async `onAccept` still holds are closed too. A closed server cannot
   * listen again; closing twice is a no-op.
   * @param flush Ignored: a server has nothing to send (`engine.stop()` passes `false`).
   * @throws TypeError for anything but a boolean, such as node:net's callback (`server.close(cb)`): override `onClose`, or await `shutdown()`.
   */
  close(flush?: boolean): void {
    if (!(this instanceof Server)) throw unboundError("close", "Server", this);
    if (flush !== undefined && flush !== true && flush !== false) {
      throw typeError(`Server.close() takes no argument (node:net's callback included), got ${describe(flush)}: to act once it has closed, override onClose() or await server.shutdown().`);
    }
    if (this.#state === ST_CLOSED) return;
    this.#state = ST_CLOSED;
    this.#stopAccepting();
    // Connections an onClose override keeps open stay the engine's: listed
    // in engine.channels and closed by engine.stop(), through this server.
    const reject = this.#readyReject;
    this.#readyResolve = null;
    this.#readyReject = null;
    if (reject !== null) reject(this.#bindError ?? new ChannelStateError(`${nameOf(this)} closed before it was listening.`));
    this._callOnClose();
    // Sockets an async onAccept still holds are no connections yet: they go
    // with the listener (engine.stop() too), and a stream the override makes
    // over one later closes at once.
    this.#dropHeld();
    if (this.#channels.size === 0) this.engine._channels.delete(this);
    if (diagnostics.serverClose.hasSubscribers) diagnostics.serverClose.publish({ server: this });
    this.#retire();
    this.#checkShutdownDone();
  }

  /**
   * A closed server whose connections have all closed: its figures join the
   * process totals. (Not at close(): the connections it closes then, or that
   * outlive it, still count into its stats.) What it counts after that (a
   * stream or an error of an async onAccept that settles late) joins them
   * as the difference, the next time this runs.
   */
  #retire(): void {
    if (this.#state !== ST_CLOSED || this.#channels.size > 0) return;
    if (liveServers.delete(this)) addStats(retiredTotals, { ...this.stats, open: 0, pending: 0, lingering: 0 });
    else if (this.#retiredAs !== null) addStats(retiredTotals, statsSince(this.stats, this.#retiredAs));
    else return; // never listened: never counted
    this.#retiredAs = { ...this.stats, open: 0, pending: 0, lingering: 0, errorsByKind: { ...this.stats.errorsByKind } };
  }

  /**
   * Graceful shutdown: stops accepting at once, calls every connection's
   * `onShutdown()` (default `close(true)`), and resolves once all have
   * closed; connections still open after `timeoutMs` (default 10 000; 0:
   * no deadline), or once `signal` aborts, are closed without flushing
   * (so is everything at `close()` or `engine.stop()`).
   * A connection an async `onAccept` still holds is waited for too: a
   * stream it makes is asked to shut down as the others were; the deadline
   * closes one still held.
   * The server ends closed.
   * Called again while it drains, it returns the same promise, and a
   * deadline earlier than the one running replaces it.
   */
  shutdown(options?: ShutdownOptions): Promise<void> {
    if (!(this instanceof Server)) throw unboundError("shutdown", "Server", this);
    if (options !== undefined) checkOptions("shutdown()", options, SHUTDOWN_KEYS);
    const timeoutMs = optionalMs("timeoutMs", options?.timeoutMs, 10_000);
    const signal = checkSignal("shutdown()'s", options?.signal);
    if (this.#shutdown === null) {
      this.#shutdown = new Promise<void>((resolve) => {
        this.#shutdownDone = resolve;
      });
      this.#stopAccepting();
      for (const conn of [...this.#channels.values()]) {
        if (!conn.closed) conn._shutdownRequested();
      }
      void this.#shutdown.then(() => this.#shutdownTimer?.cancel());
    }
    // A call while the drain runs (a second SIGTERM, say) may bring the
    // deadline forward, never push it back: the earliest one applies.
    if (timeoutMs > 0 && this.#shutdownDone !== null && this.#draining()) {
      const deadline = this.engine.time() + timeoutMs;
      if (deadline < this.#shutdownDeadline) {
        this.#shutdownDeadline = deadline;
        this.#shutdownTimer?.cancel();
        // An engine timer: on the engine's clock (a manual one in tests),
        // and whole however long (engine timers wait past Node's 2^31-1 ms).
        this.#shutdownTimer = this.engine.defer(timeoutMs, () => this.#forceShutdown());
      }
    }
    if (signal !== undefined && this.#shutdownDone !== null && this.#draining()) {
      if (signal.aborted) this.#forceShutdown();
      else void this.#shutdown.then(onAbort(signal, () => this.#forceShutdown()));
    }
    this.#checkShutdownDone();
    return this.#shutdown;
  }

  /** The drain's end (its deadline, or its signal): what is still open closes without flushing. */
  #forceShutdown(): void {
    if (this.#shutdownDone === null) return;
    for (const conn of [...this.#channels.values()]) conn.close(false);
    this.#dropHeld();
    this.#checkShutdownDone();
  }

  /** Destroys the sockets async onAccept overrides hold: a stream an override makes over one later is closed at once. */
  #dropHeld(): void {
    for (const [socket, { raw }] of [...this.#held]) dropSocket(socket, raw);
  }

  /** Connections a shutdown waits for: streams, and sockets async onAccept overrides hold. */
  #draining(): boolean {
    return this.#channels.size > 0 || this.#held.size > 0;
  }

  /**
   * What `await using server = ...` does when the block ends: a graceful
   * {@link shutdown} with its default deadline (10 s), so it never waits
   * for ever on a connection that does not close (node:net's waits for
   * every connection to end). Fine on a server that never listened or has
   * closed; calling it again returns the same promise.
   */
  [Symbol.asyncDispose](): Promise<void> {
    if (!(this instanceof Server)) throw unboundError("[Symbol.asyncDispose]", "Server", this);
    return this.shutdown();
  }

  // -------------------------------------------------------------------------
  // Handlers

  /**
   * Called for every accepted connection (after TLS wrapping and the PROXY
   * header). The default makes a `ConnectionClass` instance, sets its
   * `server`, adds it to `channels`, and starts its connect event. An
   * override that does not call it owns the socket: `socket.destroy()` refuses
   * the connection; one left alone stays open (the server no longer tracks it,
   * so neither `close()` nor `shutdown()` closes it). A stream an override
   * makes over the socket itself is tracked in `channels` as an `S`: make it
   * an instance of `ConnectionClass` (or of a subclass). An async override
   * may make it (or call `super.onAccept`) after awaiting: until it does,
   * settles, or destroys the socket, the connection holds its place under
   * `maxConnections` and `maxConnectionsPerPeer` (in `stats.pending`, not `stats.open`), and
   * on a TLS server the handshake's deadline runs from the accept: a socket
   * whose handshake is not done by then, or whose peer half-closes before
   * it is, is closed (a stream made over it later gets
   * `onSslHandshakeError`, then `onClose`). A stream made once the
   * server has closed is closed at once; one made while `shutdown()` drains
   * gets its `onShutdown()` too. A connection class whose constructor
   * does not pass its options to `super()` never takes the socket: that is
   * logged as an error (counted under `handler`) and the connection closed.
   * @param socket The accepted socket (a TLSSocket once `startSSL` was called).
   * @param address The peer's address (the PROXY header's source behind a proxy); `""` for a UNIX peer. A TCP peer that reset the connection before it could be handed over has no address left: it is closed and counted in `stats.rejected`, never given to an override. The default ignores it and is not given it.
   */
  onAccept(socket: Duplex, address: Address): void {
    const owned = socket as Duplex & { [kStream]?: Stream };
    const before = owned[kStream];
    let conn: S;
    try {
      conn = new this.#ConnectionClass({ engine: this.engine, socket });
    } catch (err) {
      // A broken connection class must not take the server down: drop this
      // one, and never run a handler of the half-built instance (not one
      // the socket had already: that one closes with the socket).
      if (owned[kStream] !== before) owned[kStream]?._abandon();
      socket.destroy();
      const error = asError(err, `The constructor of ${this.#ConnectionClass.name}`);
      this._countError("handler", error);
      log.current.error({ err: error, ...this.#fieldsFor(formatAddress(address)) }, `The connection class ${this.#ConnectionClass.name} threw in its constructor; connection dropped.`);
      return;
    }
    const untaken = untakenSocketError(conn, socket);
    if (untaken !== null) {
      if (before === undefined) socket.destroy();
      this._countError("handler", untaken);
      log.current.error({ err: untaken, ...this.#fieldsFor(formatAddress(address)) }, `The connection class ${this.#ConnectionClass.name} did not take the accepted socket; connection dropped.`);
      return;
    }
    this.#track(conn);
    if (this.#held.size > 0) this.#release(socket);
  }

  /** The log record's fields for a connection that has no stream (yet): this server's name and the peer. */
  #fieldsFor(peer: string): { channel: string; peer: string } {
    return { ...this._logFields(), peer };
  }

  /**
   * A TCP peer that reset its connection before a handler could be given it
   * (its address is gone with it): closed here, counted as rejected, so an
   * onAccept override never sees a TCP connection without an address.
   */
  #dropReset(raw: net.Socket | NativeSocket): void {
    this.stats.rejected++;
    this.engine.stats.rejected++;
    if (log.debugOn()) log.current.debug(this._logFields(), `${nameOf(this)}: a connection reset by its peer before it was accepted; closed.`);
    raw.destroy();
  }

  #track(conn: S): void {
    // A stream closed before the server had it (by its constructor) will
    // never tell the server it closed: it was accepted and is closed already
    // (the engine's counts too), and is not kept. (Its `server` is set, so
    // #accept does not take it for an override's stream and count it again.)
    if (conn.closed) {
      if (conn.server === null) {
        conn._closedBeforeServer(this);
        this.stats.accepted++;
        this.stats.closed++;
        this.#retire();
      }
      return;
    }
    const id = this.#nextId++;
    this.#channels.set(id, conn);
    // Keyed by the stream's address (the PROXY source behind a proxy), as
    // #accept checked it: whenever the stream is made, after an async onAccept too.
    if (this.#perPeer !== null) countPeer(this.#perPeer, id, peerKey(conn.remoteAddress, this.#peerPrefix6));
    this.stats.accepted++;
    this.stats.open = this.#channels.size;
    conn._attachToServer(this, id, this.#idleTimeoutMs);
    // Made after an async onAccept awaited a close() or shutdown(): it ends as the others did.
    if (this.#state === ST_CLOSED) conn.close(false);
    else if (this.#shutdown !== null) conn._shutdownRequested();
  }

  /** Placeholder: the server is listening. */
  onListen(): void {}

  /**
   * The server closed. Default: close every open connection without
   * flushing (use {@link shutdown} for a graceful stop). Connections an
   * override leaves open stay in `engine.channels`; `engine.stop()` closes them.
   */
  override onClose(): void {
    for (const conn of [...this.#channels.values()]) conn.close(false);
  }

  /**
   * A handler of this server threw (or its promise rejected), or the
   * listening socket failed. Default: log it. Unlike a stream's, the
   * server's default does not close it: nothing a handler throws stops the
   * server (SPEC §4). A listening socket that fails (a bind error, say) has
   * already closed the server when this is called.
   */
  override onError(err: Error): void {
    if (this.closed) log.current.error({ err, ...this._logFields() }, `${nameOf(this)} failed and closed: ${err.message}`);
    else log.current.error({ err, ...this._logFields() }, `Exception raised in a handler of ${nameOf(this)}; the server keeps serving.`);
  }

  /** A new connection could not be wrapped in TLS. Default: log and close that connection. */
  onSslWrapError(socket: Duplex, address: Address, err: Error): void {
    log.current.warn({ err, ...this.#fieldsFor(formatAddress(address)) }, `Could not wrap a connection in TLS: ${err.message}`);
    socket.destroy();
  }

  // -------------------------------------------------------------------------
  // Internals

  /** @internal */
  protected override _statsTargets(): [Stats, Stats | null] {
    return [this.stats, this.engine.stats];
  }

  async #bind(parsed: ParsedAddress, backlog: number, slave: boolean, claimKey: string | null): Promise<void> {
    if (parsed.kind === "unix") {
      await staleSocketRemover.current(parsed.path);
      if (this.#state !== ST_BINDING) return;
      await this.#listenOne({ path: parsed.path, backlog });
      this.#unixPath = parsed.path;
      return;
    }
    if (claimKey === null || reusePortZero.current === null) {
      await this.#bindTcp(parsed, parsed.port, backlog, slave);
      return;
    }
    const claim = await reusePortZero.current(claimKey);
    let bound = 0;
    try {
      if (this.#state === ST_BINDING) bound = await this.#bindTcp(parsed, claim.port, backlog, slave);
    } finally {
      claim.settle(bound);
    }
  }

  /** Binds a TCP address on `port` (0: the OS picks); resolves with the port bound, 0 if closed meanwhile. */
  async #bindTcp(parsed: ParsedAddress & { kind: "tcp" }, port: number, backlog: number, slave: boolean): Promise<number> {
    let host = parsed.host;
    if (parsed.family === 0) {
      const resolved = await lookup(host, { family: parsed.v6tuple ? 6 : 0 });
      host = resolved.address;
    }
    if (this.#state !== ST_BINDING) return 0;
    if (host !== "") return this.#listenOne({ host: withScope(host, parsed.scopeid), port, backlog, ipv6Only: false });
    if (parsed.v6tuple) return this.#listenOne({ host: "::", port, backlog, ipv6Only: false });
    // ["", port]: IPv4 on the master socket, IPv6 on a slave on the same port.
    for (let attempt = 0; ; attempt++) {
      const bound = await this.#listenOne({ host: "0.0.0.0", port, backlog, ipv6Only: false });
      if (!slave || this.#state !== ST_BINDING) return bound;
      try {
        await this.#listenOne({ host: "::", port: bound, backlog, ipv6Only: true });
        return bound;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "EADDRINUSE" && port === 0 && attempt < 8) {
          // The port the OS picked for IPv4 is taken on IPv6: pick another.
          this.#dropLastListener();
          continue;
        }
        // A port asked for by number that another program holds on IPv6: its
        // IPv6 clients would reach that program, so the listen fails, as
        // node:net's listen(port) would. (A host without IPv6 serves IPv4 alone.)
        if (code === "EADDRINUSE") throw err;
        if (log.debugOn()) log.current.debug({ err, ...this._logFields() }, `No IPv6 slave for ${nameOf(this)}: ${(err as Error).message}`);
        return bound;
      }
    }
  }

  /** Listens on one socket (native or node:net); resolves with its port (0 for UNIX). */
  async #listenOne(options: { host: string; port: number; backlog: number; ipv6Only: boolean } | { path: string; backlog: number }): Promise<number> {
    if (this.#native) {
      const onConnection = (socket: NativeSocket) => this._onNativeConnection(socket);
      const onAcceptError = (code: string) => this.#onNativeAcceptError(code);
      const listener =
        "path" in options
          ? NativeListener.pipe(options.path, options.backlog, onConnection, onAcceptError)
          : NativeListener.tcp(options.host, options.port, options.backlog, options.ipv6Only, this.#reusePort, onConnection, onAcceptError);
      this.#nativeListeners.push(listener);
      const address = listener.address();
      return typeof address === "object" && address !== null ? address.port : 0;
    }
    const s = this.#newNetServer();
    try {
      // reusePort: node:net sets it (Node 22.12+, 23.1+), else the addon binds
      // the socket with SO_REUSEPORT, and node:net listens on it and owns it.
      if (!this.#reusePort || !("host" in options)) await listenOn(s, options);
      else if (netListensReusePort) await listenOn(s, { ...options, reusePort: true });
      else await listenOn(s, { fd: NativeListener.bindReusePort(options.host, options.port, options.ipv6Only), backlog: options.backlog });
    } catch (err) {
      this.#netServers.pop();
      throw err;
    }
    const address = s.address();
    return typeof address === "object" && address !== null ? address.port : 0;
  }

  /**
   * Whether this server runs on the addon: never with TLS or PROXY headers
   * (node:tls and the header parser need node:net); `ownSocket` as useNative.
   */
  #choosesNative(ownSocket: boolean): boolean {
    return !this.#proxyProtocol && this.#tls === null && useNative(this.#transport, ownSocket);
  }

  #onNativeAcceptError(code: string): void {
    this._onNetError(Object.assign(new Error(`accept ${code}`), { code, syscall: "accept" }));
  }

  /** Closes and forgets the listener made last (the port-0 retry of the slave). */
  #dropLastListener(): void {
    if (this.#native) this.#nativeListeners.pop()?.close();
    else {
      const s = this.#netServers.pop();
      if (s !== undefined) closeNet(s);
    }
  }

  #newNetServer(): net.Server {
    const s = net.createServer({
      allowHalfOpen: true,
      noDelay: this.#noDelay,
      keepAlive: this.#keepAliveMs > 0,
      keepAliveInitialDelay: this.#keepAliveMs,
    }) as OwnedNetServer;
    s[kServer] = this;
    s.on("connection", onNetConnection);
    s.on("error", onNetError);
    this.#netServers.push(s);
    return s;
  }

  #adoptSocket(socket: net.Server | { fd: number }): void {
    if (socket instanceof net.Server) {
      const s = socket as OwnedNetServer;
      s[kServer] = this;
      s.on("connection", onNetConnection);
      s.on("error", onNetError);
      this.#netServers.push(s);
      this.#state = ST_BINDING;
      this.engine._channels.add(this);
      if (s.listening) process.nextTick(() => this.#state === ST_BINDING && this.#listening());
      else s.once("listening", () => this.#state === ST_BINDING && this.#listening());
      return;
    }
    const fd = (socket as { fd?: unknown } | null)?.fd;
    if (socket === null || typeof socket !== "object" || typeof fd !== "number" || !Number.isInteger(fd) || fd < 0) {
      throw typeError(`The socket option must be a net.Server or { fd }, got ${describe(socket)}.`);
    }
    // A descriptor handed to this process is its own, in a cluster worker
    // too (node:net there would ask the primary to listen on its namesake).
    // Decided first: it throws when "native" is asked for and not available.
    this.#native = this.#choosesNative(true);
    this.#state = ST_BINDING;
    this.engine._channels.add(this);
    if (this.#native) {
      try {
        this.#nativeListeners.push(NativeListener.fd(fd, DEFAULT_BACKLOG, (socket) => this._onNativeConnection(socket), (code) => this.#onNativeAcceptError(code)));
        process.nextTick(() => this.#listening());
      } catch (err) {
        process.nextTick(() => this.#bindFailed(err as Error, null));
      }
      return;
    }
    const s = this.#newNetServer();
    // node:net says only "listen EINVAL": name the descriptor, and why, as the addon does.
    const why = fdTrouble(fd);
    listenOn(s, { fd, backlog: DEFAULT_BACKLOG }).then(
      () => this.#listening(),
      (err: Error) => {
        err.message = `${err.message} fd ${fd}${why}`;
        this.#bindFailed(err, null);
      },
    );
  }

  #listening(): void {
    if (this.#state !== ST_BINDING) return;
    this.#state = ST_LISTENING;
    // A listening UNIX socket handed over ({ socket }, { fd }) names its path only here.
    const handed = this.#unixPath === null ? (this.#nativeListeners[0]?.address() ?? this.#netServers[0]?.address()) : null;
    if (typeof handed === "string") this.#unixPath = handed;
    liveServers.add(this);
    if (diagnostics.serverListen.hasSubscribers) diagnostics.serverListen.publish({ server: this });
    if (log.debugOn()) log.current.debug(this._logFields(), `${nameOf(this)} listening on ${this.localAddresses.map(formatAddress).join(", ")}.`);
    const resolve = this.#readyResolve;
    this.#readyResolve = null;
    this.#readyReject = null;
    this._call0(this.onListen);
    if (resolve !== null) resolve(this);
  }

  #bindFailed(err: Error, parsed: ParsedAddress | null): void {
    if (this.#state === ST_CLOSED) return;
    if (parsed !== null) err.message = bindMessage(err, parsed);
    this.#bindError = err;
    this.close();
    this._countError("listen", err);
    this._callOnError(err);
  }

  #stopAccepting(): void {
    for (const l of this.#nativeListeners) l.close();
    for (const s of this.#netServers) {
      closeNet(s);
      (s as OwnedNetServer)[kServer] = undefined;
    }
    for (const wait of [...this.#proxyWaits]) {
      this.#endProxyWait(wait);
      wait.socket.destroy();
    }
  }

  #checkShutdownDone(): void {
    if (this.#shutdown === null || this.#draining()) return;
    if (this.#state !== ST_CLOSED) this.close();
    const done = this.#shutdownDone;
    this.#shutdownDone = null;
    if (done !== null) done();
  }

  /** @internal A net.Server error: accept failures (EMFILE) keep the server up. */
  _onNetError(err: NodeJS.ErrnoException): void {
    if (this.#state === ST_LISTENING && (err.syscall === "accept" || err.code === "EMFILE" || err.code === "ENFILE")) {
      this._countError("accept", err);
      const now = this.engine.time();
      if (now - this.#lastAcceptWarning > 5000) {
        this.#lastAcceptWarning = now;
        log.current.warn({ err, ...this._logFields() }, `accept() failed on ${nameOf(this)} (${err.code}); the server keeps listening.`);
      }
      return;
    }
    if (this.#state === ST_BINDING) return; // listenOn() reports it
    // Anything else breaks the listening socket: the server closes, then is told.
    this._countError("listen", err);
    if (this.#state !== ST_CLOSED) this.close();
    this._callOnError(err);
  }

  /** @internal A connection arrived. */
  _onConnection(raw: net.Socket): void {
    // In a cluster worker the first connection can arrive in the same IPC
    // read as the primary's listen reply, before 'listening' is emitted.
    if (this.#state === ST_BINDING && this.#shutdown === null) this.#listening();
    if (this.#state !== ST_LISTENING || this.#shutdown !== null) {
      if (log.debugOn()) log.current.debug(this._logFields(), `${nameOf(this)} is not accepting (state ${this.#state}, shutting down ${this.#shutdown !== null}); connection closed.`);
      raw.destroy();
      return;
    }
    const used = this.#placesUsed();
    if (used >= this.#maxConnections) {
      raw.destroy();
      this.stats.rejected++;
      this.engine.stats.rejected++;
      return;
    }
    if (this.#proxyProtocol) {
      // The wait holds a place: a linger makes room for it now.
      this.#makeRoom(used);
      raw.on("error", onRawError);
      const wait = new ProxyWait(this, raw, this._handshakeTimeoutMs);
      (raw as net.Socket & { [kProxyWait]?: ProxyWait })[kProxyWait] = wait;
      this.#proxyWaits.add(wait);
      this.#countPending();
      if (this._handshakeTimeoutMs > 0) this.engine._sweeper.add(wait, this._handshakeTimeoutMs);
      raw.on("data", onProxyData);
      raw.on("end", onProxyEnd);
      raw.on("close", onProxyClose);
      return;
    }
    this.#accept(raw, null);
  }

  /**
   * A new connection takes a place beside `used` (open, pending; fewer
   * than maxConnections): under maxConnections, the sockets still lingering
   * after a close count too, and the oldest of them closes now to make
   * room. A live client is never refused for a courtesy wait; descriptors
   * stay within the limit. Called once the connection is sure to be served
   * (past maxConnectionsPerPeer), so a refused one ends no linger.
   */
  #makeRoom(used: number): void {
    const max = this.#maxConnections;
    // (More than one only after maxConnections was lowered on a live server.)
    while (this.#lingering.size > 0 && used + this.#lingering.size >= max) {
      const oldest = this.#lingering.values().next().value as Duplex;
      if (log.debugOn()) log.current.debug(this._logFields(), `${nameOf(this)} is at maxConnections (${max}): the oldest lingering connection closes to make room.`);
      this.#lingering.delete(oldest);
      endLinger(oldest);
    }
  }

  /** @internal A closed connection's socket lingers (see Stream's close). */
  _lingerStarted(sock: Duplex): void {
    this.#lingering.add(sock);
    this.stats.lingering = this.#lingering.size;
  }

  /** @internal Its linger has ended. */
  _lingerEnded(sock: Duplex): void {
    this.#lingering.delete(sock);
    this.stats.lingering = this.#lingering.size;
  }

  /** @internal A connection accepted by a native listener. */
  _onNativeConnection(socket: NativeSocket): void {
    if (this.#state === ST_BINDING && this.#shutdown === null) this.#listening();
    if (this.#state !== ST_LISTENING || this.#shutdown !== null || this.#placesUsed() >= this.#maxConnections) {
      if (this.#state === ST_LISTENING && this.#shutdown === null) {
        this.stats.rejected++;
        this.engine.stats.rejected++;
      }
      socket.destroy();
      return;
    }
    if (!this.#noDelay) socket.setNoDelay(false);
    if (this.#keepAliveMs > 0) socket.setKeepAlive(true, this.#keepAliveMs);
    this.#accept(socket, null);
  }

  /** @internal Bytes of a PROXY header arrived. */
  _proxyData(wait: ProxyWait, chunk: Buffer): void {
    wait.chunks.push(chunk);
    wait.length += chunk.length;
    // Joining and parsing up to 64 KiB again per read was quadratic in a v2 header's block.
    if (wait.length < wait.needed) return;
    const buf = wait.chunks.length === 1 ? chunk : Buffer.concat(wait.chunks, wait.length);
    wait.chunks = [buf];
    let result: ReturnType<typeof parseProxyHeader>;
    try {
      result = parseProxyHeader(buf);
    } catch (err) {
      this._proxyFailed(wait, err as Error);
      return;
    }
    if ("needed" in result) {
      // Only a v2 block is waited for whole: the first 16 bytes are checked as they come, so
      // a connection that is no PROXY header is still refused at its first wrong byte.
      if (buf.length >= PROXY_V2_HEADER_LENGTH) wait.needed = result.needed;
      return;
    }
    const raw = wait.socket;
    this.#endProxyWait(wait);
    raw.off("data", onProxyData);
    raw.off("end", onProxyEnd);
    raw.off("close", onProxyClose);
    raw.pause();
    const rest = buf.subarray(result.consumed);
    if (rest.length > 0) raw.unshift(rest);
    this.#accept(raw, result.header, wait.acceptedAt);
  }

  /** @internal A PROXY header was malformed, missing or late: only that connection closes. */
  _proxyFailed(wait: ProxyWait, err: Error): void {
    if (!this.#proxyWaits.has(wait)) return;
    this.#endProxyWait(wait);
    this._countError("proxy", err);
    this.stats.rejected++;
    this.engine.stats.rejected++;
    if (log.debugOn()) log.current.debug({ err, ...this.#fieldsFor(rawPeer(wait.socket)) }, `Connection dropped: ${err.message}`);
    wait.socket.destroy();
  }

  #endProxyWait(wait: ProxyWait): void {
    this.#proxyWaits.delete(wait);
    this.#countPending();
    this.engine._sweeper.delete(wait);
    (wait.socket as net.Socket & { [kProxyWait]?: ProxyWait })[kProxyWait] = undefined;
  }

  #accept(raw: net.Socket | NativeSocket, proxyHeader: ProxyHeader | null, acceptedAt: number | null = null): void {
    if (this.#state !== ST_LISTENING || this.#shutdown !== null) {
      raw.destroy();
      return;
    }
    const proxiedRemote = proxyHeader === null ? null : proxiedAddress(proxyHeader);
    // The peer's address costs a system call; only an onAccept override, a
    // per-peer limit (or a TLS wrap error) needs it here.
    const custom = this.onAccept !== Server.prototype.onAccept;
    // (The default onAccept does not read it: it is given null.)
    let address = null as unknown as Address;
    if (custom || this.#perPeer !== null) {
      const peer = peerOf(raw, proxiedRemote);
      if (peer === null) {
        this.#dropReset(raw);
        return;
      }
      address = peer;
      if (this.#perPeer !== null && this.#atPeerLimit(this.#perPeer, peer)) {
        raw.destroy();
        return;
      }
    }
    this.#makeRoom(this.#placesUsed());
    // An onAccept override is promised a Duplex: give it one over a native socket.
    let socket: Duplex = raw instanceof NativeSocket ? (custom ? raw.toDuplex() : (raw as unknown as Duplex)) : raw;
    // A stream made over that Duplex (super.onAccept) reads its addresses and fileno from the socket under it, as on node:net.
    if (socket !== (raw as unknown as Duplex)) (socket as Duplex & { [kRawSocket]?: NativeSocket })[kRawSocket] = raw as NativeSocket;
    const tlsConfig = this.#tls;
    if (tlsConfig !== null) {
      try {
        // startSSL after a native listen: node:tls needs a real Duplex under it.
        const under = raw instanceof NativeSocket ? (socket instanceof NativeSocket ? raw.toDuplex() : socket) : raw;
        const t = wrapServerSocket(under, tlsConfig) as tls.TLSSocket & {
          [kTlsPending]?: boolean;
          [kAcceptedAt]?: number;
          [kRawSocket]?: net.Socket | NativeSocket;
        };
        t[kTlsPending] = true;
        // The handshake deadline counts from the accept: behind a PROXY header
        // (acceptedAt), and under an override, which may hand the socket on late.
        if (acceptedAt !== null) t[kAcceptedAt] = acceptedAt;
        else if (custom) t[kAcceptedAt] = this.engine.time();
        // An override may make the stream once the handshake is done: it is told so.
        if (custom) t.once("secure", onTlsSecured);
        if (raw instanceof net.Socket || raw instanceof NativeSocket) t[kRawSocket] = raw;
        if (!this.#proxyProtocol) raw.on("error", onRawError);
        socket = t;
      } catch (err) {
        this._countError("tls", err as Error);
        this.stats.rejected++;
        this.engine.stats.rejected++;
        const peer = custom ? address : peerOf(raw, proxiedRemote);
        if (peer === null) {
          this.#dropReset(raw);
          return;
        }
        this._callN(this.onSslWrapError, [raw, peer, err]);
        if (!raw.destroyed) raw.destroy();
        return;
      }
    }
    const owned = socket as Duplex & { [kProxyHeader]?: ProxyHeader; [kStream]?: Stream };
    if (proxyHeader !== null) owned[kProxyHeader] = proxyHeader;
    // An onAccept override may keep the socket without a stream: never leave it without an error listener,
    // nor what it is given over it (the Duplex over a native socket re-emits the socket's errors: a peer's
    // reset while an async onAccept awaited was an unhandled 'error' event on the native transport).
    if (custom) {
      raw.on("error", onRawError);
      if (socket !== raw) socket.on("error", onRawError);
    }
    accepting.socket = socket;
    let threw = false;
    let pending: PromiseLike<unknown> | null = null;
    try {
      const result: unknown = this.onAccept(socket, address);
      // (As a promise: a thenable whose then() throws rejects it, never escapes from here.)
      if (isThenable(result)) pending = Promise.resolve(result);
    } catch (err) {
      threw = true;
      this._handlerFailed(err);
    } finally {
      accepting.socket = null;
    }
    // An onAccept override that made its own stream: the server still tracks it (as an S: see onAccept).
    const made = owned[kStream];
    if (made !== undefined && made.server === null) this.#track(made as S);
    // One that threw before a stream took the socket: nobody will close it.
    else if (threw && made === undefined) dropSocket(socket, raw);
    if (pending !== null) this.#awaitAccept(pending, owned, raw, address);
  }

  /**
   * An async onAccept override: the connection holds its place under
   * `maxConnections` and `maxConnectionsPerPeer` while the override awaits
   * (else a burst of connections from one client would all pass the checks
   * before any is tracked), and a stream it makes after awaiting is tracked
   * as one made at once is.
   */
  #awaitAccept(pending: PromiseLike<unknown>, owned: Duplex & { [kStream]?: Stream }, raw: net.Socket | NativeSocket, address: Address): void {
    if (owned[kStream] === undefined && !raw.destroyed) {
      const id = -++this.#heldIds;
      this.#held.set(owned, { id, address, raw });
      this.#holdHandshake(owned, raw);
      this.#countPending();
      if (this.#perPeer !== null && address !== null) countPeer(this.#perPeer, id, peerKey(address, this.#peerPrefix6));
      raw.once("close", () => this.#release(owned));
    }
    pending.then(
      () => {
        const made = owned[kStream];
        if (made !== undefined && made.server === null) this.#track(made as S);
        this.#release(owned);
      },
      (err: unknown) => {
        this._handlerFailed(err);
        // Rejected before a stream took the socket: nobody will close it.
        if (owned[kStream] === undefined) dropSocket(owned, raw);
        this.#release(owned);
      },
    );
  }

  /**
   * The places maxConnections counts, lingering sockets aside: open streams,
   * PROXY headers awaited (none on a native listener: PROXY servers use
   * node:net) and sockets an async onAccept holds.
   */
  #placesUsed(): number {
    return this.#channels.size + this.#proxyWaits.size + this.#held.size;
  }

  /** `stats.pending` (and the engine's) follows the sockets that hold a place without a stream. */
  #countPending(): void {
    const n = this.#proxyWaits.size + this.#held.size;
    this.engine.stats.pending += n - this.stats.pending;
    this.stats.pending = n;
  }

  /** The place `socket` held while an async onAccept awaited is free (a stream took it, or the override is done). */
  #release(socket: Duplex): void {
    const held = this.#held.get(socket);
    if (held !== undefined) {
      this.#held.delete(socket);
      this.#countPending();
      if (this.#perPeer !== null) uncountPeer(this.#perPeer, held.id);
      const handshake = (socket as HeldTlsSocket)[kHeldHandshake];
      if (handshake !== undefined) this._heldHandshakeDone(handshake);
      this.#checkShutdownDone();
    }
    this.#retire(); // (the override may have counted something since the server retired)
  }

  /**
   * A TLS socket held while its handshake runs keeps the deadline it had
   * from the accept (else a silent client stayed as long as the override
   * held it), and is closed once its peer half-closes (else it stayed until
   * that deadline). Nothing for a plain socket or a finished handshake.
   */
  #holdHandshake(socket: Duplex, raw: net.Socket | NativeSocket): void {
    const t = socket as HeldTlsSocket;
    if (!(t instanceof tls.TLSSocket) || t[kTlsSecured] === true) return;
    const ms = this._handshakeTimeoutMs;
    const now = this.engine.time();
    const wait = new HeldHandshake(this, t, raw, ms > 0 ? (t[kAcceptedAt] ?? now) + ms : Infinity);
    t[kHeldHandshake] = wait;
    t.once("secure", onHeldSecure);
    t.once("end", onHeldEnd);
    if (ms > 0) this.engine._sweeper.add(wait, Math.max(1, wait.deadline - now));
  }

  /** @internal A held socket's handshake is done, or it is no longer held: its deadline is the stream's now, if any. */
  _heldHandshakeDone(wait: HeldHandshake): void {
    const socket = wait.socket;
    if (socket[kHeldHandshake] !== wait) return;
    socket[kHeldHandshake] = undefined;
    socket.off("secure", onHeldSecure);
    socket.off("end", onHeldEnd);
    this.engine._sweeper.delete(wait);
  }

  /**
   * @internal A held socket's handshake is late, or its peer left: closed
   * and counted, unless a stream has it. A stream the override makes later
   * fails its handshake with `err` (onSslHandshakeError, onClose) without
   * counting it again.
   */
  _heldHandshakeFailed(wait: HeldHandshake, err: Error): void {
    const socket = wait.socket;
    if (socket[kHeldHandshake] !== wait) return;
    this._heldHandshakeDone(wait);
    if (socket[kStream] !== undefined || socket.destroyed) return; // a stream's own deadline runs
    this._countError("tls", err);
    if (log.debugOn()) log.current.debug({ err, ...this.#fieldsFor(rawPeer(wait.raw)) }, `${nameOf(this)}: connection dropped: ${err.message}`);
    socket[kHeldFailure] = err;
    dropSocket(socket, wait.raw);
  }

  /** Whether `peer` has as many connections open as the per-peer limit allows: then this one is counted as rejected. */
  #atPeerLimit(perPeer: PerPeer, peer: Address): boolean {
    const key = peerKey(peer, this.#peerPrefix6);
    if (key === null || (perPeer.counts.get(key) ?? 0) < this.#maxPerPeer) return false;
    this.stats.rejected++;
    this.engine.stats.rejected++;
    if (log.debugOn()) log.current.debug(this.#fieldsFor(formatAddress(peer)), `${nameOf(this)}: ${key} already has ${this.#maxPerPeer} connections open (maxConnectionsPerPeer); connection closed.`);
    return true;
  }

  /** @internal A connection of this server closed. */
  _connectionClosed(_stream: Stream, id: number): void {
    if (!this.#channels.delete(id)) return;
    if (this.#state === ST_CLOSED && this.#channels.size === 0) this.engine._channels.delete(this);
    if (this.#perPeer !== null) uncountPeer(this.#perPeer, id);
    this.stats.open = this.#channels.size;
    this.stats.closed++;
    this.#retire();
    this.#checkShutdownDone();
  }
}

/** What `now` counted since `then` (both a server's stats; the gauges 0). */
function statsSince(now: Stats, then: Stats): Stats {
  const errorsByKind: Record<string, number> = {};
  for (const [kind, n] of Object.entries(now.errorsByKind)) {
    const more = n - (then.errorsByKind[kind] ?? 0);
    if (more !== 0) errorsByKind[kind] = more;
  }
  return {
    open: 0,
    pending: 0,
    lingering: 0,
    accepted: now.accepted - then.accepted,
    rejected: now.rejected - then.rejected,
    closed: now.closed - then.closed,
    bytesIn: now.bytesIn - then.bytesIn,
    bytesOut: now.bytesOut - then.bytesOut,
    errors: now.errors - then.errors,
    errorsByKind,
  };
}

/** Closes an accepted socket no stream took (and the one under it). */
function dropSocket(socket: Duplex, raw: net.Socket | NativeSocket): void {
  socket.destroy();
  if (!raw.destroyed) raw.destroy();
}

/**
 * The address a server handler is given for a new connection: the PROXY
 * header's source, else the peer's; "" for a UNIX peer (unnamed). null for a
 * TCP peer that reset the connection before it was handled: its socket still
 * has a local address, but the peer's can no longer be read.
 */
function peerOf(raw: net.Socket | NativeSocket, proxiedRemote: Address | null): Address | null {
  if (proxiedRemote !== null) return proxiedRemote;
  const peer = fromNodeAddress(raw.remoteAddress, raw.remotePort, raw.remoteFamily);
  if (peer !== null) return peer;
  return "port" in raw.address() ? null : "";
}

/** The peer's address of a socket no stream has, for a log record ("(none)" once the socket lost it). */
function rawPeer(raw: net.Socket | NativeSocket): string {
  return formatAddress(fromNodeAddress(raw.remoteAddress, raw.remotePort, raw.remoteFamily));
}

/** A per-peer limit's counts: open connections per client address, and each tracked connection's address. */
interface PerPeer {
  readonly counts: Map<string, number>;
  readonly keys: Map<number, string>;
}

/** Counts connection `id` for its peer (`key` null: a UNIX peer, not counted). */
function countPeer(perPeer: PerPeer, id: number, key: string | null): void {
  if (key === null) return;
  perPeer.keys.set(id, key);
  perPeer.counts.set(key, (perPeer.counts.get(key) ?? 0) + 1);
}

/** Gives connection `id`'s place back, if it was counted. */
function uncountPeer(perPeer: PerPeer, id: number): void {
  const key = perPeer.keys.get(id);
  if (key === undefined) return;
  perPeer.keys.delete(id);
  const left = (perPeer.counts.get(key) ?? 1) - 1;
  if (left > 0) perPeer.counts.set(key, left);
  else perPeer.counts.delete(key);
}

/**
 * What a per-peer limit counts a peer by: its IPv4 address (an IPv4-mapped
 * IPv6 address, or one in 64:ff9b::/96, as the IPv4 one), its IPv6 network of `prefix6` bits
 * ("2001:db8:0:1::/64"; loopback and link-local addresses whole, the latter
 * with their scope), null for a UNIX peer.
 */
function peerKey(address: Address | null, prefix6: number): string | null {
  if (!Array.isArray(address)) return null;
  const host = address[0].toLowerCase();
  const zone = host.indexOf("%");
  const words = parseIPv6Text(zone === -1 ? host : host.slice(0, zone));
  if (words === null) return host; // IPv4 (or an override's own text)
  // An IPv4 client in IPv6 form, IPv4-mapped (::ffff:a.b.c.d) or in RFC 6052's
  // well-known NAT64 prefix (64:ff9b::a.b.c.d): one client per IPv4 address, not per /64.
  const zeros = (from: number, to: number): boolean => words.slice(from, to).every((w) => w === 0);
  const mapped = zeros(0, 5) && words[5] === 0xffff;
  const nat64 = words[0] === 0x64 && words[1] === 0xff9b && zeros(2, 6);
  if (mapped || nat64) {
    return `${words[6]! >> 8}.${words[6]! & 0xff}.${words[7]! >> 8}.${words[7]! & 0xff}`;
  }
  const scope = address.length === 4 ? address[3] : 0;
  const whole = prefix6 === 128 || (words[0]! & 0xffc0) === 0xfe80 || (zeros(0, 7) && words[7] === 1);
  if (whole) return scope !== 0 ? `${formatIPv6(words, false)}%${scope}` : formatIPv6(words, false);
  for (let i = 0; i < 8; i++) {
    const keep = Math.min(16, Math.max(0, prefix6 - i * 16));
    words[i] = keep === 0 ? 0 : words[i]! & ((0xffff << (16 - keep)) & 0xffff);
  }
  return `${formatIPv6(words, false)}/${prefix6}`;
}

function checkPrefix6(value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 128) {
    throw numberError(value, `peerIPv6Prefix must be an integer from 1 to 128, got ${describe(value)}.`);
  }
  return value;
}

/**
 * A bind failure's message naming its address once, and readably: node:net's
 * "in use ::1:4040" as "[::1]:4040", a UNIX abstract name's NUL byte as "@".
 * Where it names another address (a host name's), the one asked for follows.
 */
function bindMessage(err: Error, parsed: ParsedAddress): string {
  const { address, port } = err as Error & { address?: unknown; port?: unknown };
  let message = err.message;
  if (typeof address === "string") {
    const said = typeof port === "number" && port > 0 ? `${address}:${port}` : address;
    if (message.endsWith(` ${said}`)) {
      const clear = said === address ? address.replace(/\0/g, "@") : net.isIPv6(address) ? `[${address}]:${port as number}` : said;
      message = message.slice(0, message.length - said.length) + clear;
    }
  }
  const asked = formatAddress(addressOf(parsed));
  if (message.includes(asked) || (parsed.kind === "unix" && message.endsWith(` ${parsed.path.replace(/\0/g, "@")}`))) return message;
  return `${message} (listening on ${asked})`;
}

function addressOf(parsed: ParsedAddress): Address {
  if (parsed.kind === "unix") return parsed.path;
  return parsed.v6tuple ? [parsed.host, parsed.port, parsed.flowinfo, parsed.scopeid] : [parsed.host, parsed.port];
}

function optionalMs(name: string, value: unknown, fallback: number): number {
  return value === undefined ? fallback : checkMs(name, value);
}

function optionalCount(name: string, value: unknown, fallback: number): number {
  if (value === undefined || value === Infinity) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    throw numberError(value, `${name} must be a positive integer, got ${describe(value)}.`);
  }
  return value;
}
