/**
 * The `pants-ts` command: `pants-ts serve <module> --listen ADDR ...`.
 * Loads a module whose default export is a connection class (or a
 * configured Server), listens, prints where, drains on SIGTERM/SIGINT,
 * prints a stats line on SIGUSR2, and runs on every core with --workers.
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { existsSync, fstatSync, readFileSync, statSync } from "node:fs";
import { randomBytes } from "node:crypto";
import cluster from "node:cluster";
import type { Address as ClusterAddress } from "node:cluster";
import { Server, liveServers } from "./server.js";
import { Engine } from "./engine.js";
import { codedError, failureText } from "./errors.js";
import { Stream } from "./stream.js";
import { formatAddress, hostWithZone, readsAsHostPort, readsAsPort } from "./address.js";
import type { Address } from "./address.js";
import { workerListening, runCluster, processStats, shutdownAll } from "./cluster.js";
import type { ClusterHandle } from "./cluster.js";
import type { ClusterStats } from "./cluster.js";
import type { ServerOptions } from "./server.js";
import type { SslOptions } from "./tls.js";
import type { Stats } from "./engine.js";
import { compileServerTls, readFile as readSslFile } from "./tls.js";
import { nativeLoadError } from "./native-binding.js";
import { useNative } from "./transport.js";

const HELP = `Usage: pants-ts serve <module> --listen ADDR [--listen ADDR ...] [options]

Serve the connection class (or configured Server) that <module> exports by
default. <module> is a path to a .js/.mjs file (or .ts, when tsx is installed).
For a configured Server, --max-connections, --max-per-peer and
--peer-ipv6-prefix replace its own settings and --tls-cert starts its TLS;
--idle-timeout, --proxy-protocol and --reuse-port are usage errors (give them
as its options: idleTimeoutMs, proxyProtocol, reusePort).

Addresses (ADDR):
  4040                 every interface, port 4040 (IPv4, and IPv6 on the same port); also *:4040
  HOST:PORT            an IPv4 address or a host name, e.g. 127.0.0.1:4040, localhost:4040
  [IPV6]:PORT          an IPv6 address, e.g. [::1]:4040; [::]:4040 is dual-stack
  unix:/PATH           a UNIX socket (unix:@NAME is a Linux abstract name)
  fd:N                 the listening socket (TCP or UNIX) at descriptor N, handed over by the parent
  systemd              every socket systemd passed (socket activation); systemd:NAME, those named NAME

Options:
  -l, --listen ADDR          listen here (repeatable; required unless the module's Server already listens)
      --tls-cert FILE        serve TLS with this certificate chain (PEM)
      --tls-key FILE         ... and this private key (PEM; default: the cert file)
      --tls-reload S         check both files every S seconds, and serve new connections with them
                             once they change (default 60; 0: never)
  -w, --workers N            run N worker processes sharing the sockets (default 1: no cluster;
                             at most 1024)
      --proxy-protocol       expect a HAProxy PROXY v1/v2 header on every connection
      --reuse-port           SO_REUSEPORT (Linux): share the port with other processes;
                             with --workers, each worker accepts for itself (plain TCP;
                             TLS and PROXY too on Node 22.12+); a port 0 is one port for all
      --max-connections N    close connections above N at accept
      --max-per-peer N       close connections above N open from one client IP address (IPv6: one /64)
      --peer-ipv6-prefix N   count an IPv6 client by its /N network instead (1-128; 128: each address)
      --idle-timeout MS      close connections idle for MS milliseconds
      --shutdown-timeout MS  on SIGTERM/SIGINT, drain for at most MS ms (default 10000; 0: no deadline)
  -q, --quiet                print nothing but errors
  -h, --help                 show this help
  -v, --version              show the version

Signals: SIGTERM/SIGINT drain every connection (onShutdown) and exit 0;
SIGUSR2 prints a stats line; with --workers, SIGHUP replaces the workers one
at a time without refusing a connection (in one process, SIGHUP drains and
exits as SIGTERM does).`;

/** A command-line mistake: one line on stderr, exit code 2. */
class UsageError extends Error {
  /** How a worker tells its primary that its start failed on a usage error (see main()). */
  readonly code = "ERR_USAGE";
}

/** A listening socket the process was handed: its descriptor, and how to name it (fd:3, systemd:web). */
interface Handed {
  fd: number;
  label: string;
}

/** What one server listens on: an address it binds, or a socket it was handed. */
type Listen = Address | Handed;

function isHanded(listen: Listen): listen is Handed {
  return typeof listen === "object" && !Array.isArray(listen);
}

interface ServeArgs {
  module: string;
  listen: Listen[];
  tlsCert?: string;
  tlsKey?: string;
  /** Seconds between checks of the certificate files; 0: never. */
  tlsReloadS: number;
  workers: number;
  proxyProtocol: boolean;
  reusePort: boolean;
  maxConnections?: number;
  maxConnectionsPerPeer?: number;
  peerIPv6Prefix?: number;
  idleTimeoutMs?: number;
  shutdownTimeoutMs: number;
  quiet: boolean;
}

/** Parses a command-line address. @throws UsageError */
export function parseListenAddress(text: string): Address {
  if (/^\d+$/.test(text)) return checkPort(text, text);
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (path.length === 0) throw new UsageError(`invalid address "${text}": unix: needs a path`);
    if (path.startsWith("@")) return "\0" + path.slice(1);
    // unix: says it is a path: "8080" or "host:8080" alone would read as a port (parseAddress refuses them).
    return readsAsPort(path) || readsAsHostPort(path) !== null ? `./${path}` : path;
  }
  const v6 = /^\[([^\]]*)\]:(\d+)$/.exec(text);
  if (v6) {
    const host = v6[1]!;
    const port = checkPort(v6[2]!, text);
    return host === "::" || host === "" ? ["", port, 0, 0] : [host, port];
  }
  const hostPort = /^([^:[\]]*):(\d+)$/.exec(text);
  if (hostPort) {
    const host = hostPort[1]!;
    return [host === "*" ? "" : host, checkPort(hostPort[2]!, text)];
  }
  throw new UsageError(`invalid address "${text}": expected PORT, HOST:PORT, [IPV6]:PORT, unix:/PATH, fd:N or systemd[:NAME]`);
}

/**
 * How the primary of `serve --workers` hands its workers the sockets systemd
 * passed it: it forks them with those descriptors at the same numbers, and
 * this variable holds [LISTEN_FDS, LISTEN_FDNAMES] as JSON (read once, then removed).
 */
const WORKER_SYSTEMD = "PANTS_TS_WORKER_SYSTEMD";

/** The systemd sockets' count and names, as the workers are to get them (set by parseListens in the primary). */
let systemdForWorkers: string | null = null;

function forwardedSystemd(): [string, string] | undefined {
  try {
    const value: unknown = JSON.parse(process.env[WORKER_SYSTEMD] ?? "null");
    if (Array.isArray(value) && value.length === 2 && typeof value[0] === "string" && typeof value[1] === "string") return [value[0], value[1]];
  } catch {
    // not ours: as if absent
  }
  return undefined;
}

/**
 * The sockets systemd passed this process (sd_listen_fds(3)): descriptors 3
 * to 3 + LISTEN_FDS - 1, named by LISTEN_FDNAMES, when LISTEN_PID is this
 * process; in a worker of `serve --workers`, those its primary was passed.
 */
function systemdSockets(): Handed[] {
  const forwarded = cluster.isWorker ? forwardedSystemd() : undefined;
  const pid = forwarded !== undefined ? String(process.pid) : process.env.LISTEN_PID;
  const count = forwarded !== undefined ? forwarded[0] : process.env.LISTEN_FDS;
  const names = (forwarded !== undefined ? forwarded[1] : process.env.LISTEN_FDNAMES) ?? "";
  if (!pid || !count) {
    throw new UsageError("--listen systemd: no sockets were passed (LISTEN_PID and LISTEN_FDS are not set: is the service started by a .socket unit?)");
  }
  if (pid !== String(process.pid)) {
    throw new UsageError(
      `--listen systemd: the sockets were passed to process ${pid}, not to this one (${process.pid}): run node itself in ExecStart=, not through npm, npx or a shell that forks`,
    );
  }
  if (!/^[1-9]\d{0,5}$/.test(count)) throw new UsageError(`--listen systemd: LISTEN_FDS is "${count}", not a count of sockets`);
  systemdForWorkers = JSON.stringify([count, names]);
  const each = names.split(":");
  return Array.from({ length: Number(count) }, (_, i) => ({ fd: 3 + i, label: `systemd:${each[i] || "unknown"}` }));
}

/** The --listen values: addresses to bind, and sockets handed over (fd:N, systemd[:NAME]). @throws UsageError */
function parseListens(texts: string[]): Listen[] {
  let passed: Handed[] | null = null;
  const out: Listen[] = [];
  for (const text of texts) {
    const fd = /^fd:(\d+)$/.exec(text);
    if (fd) {
      const n = Number(fd[1]);
      if (!Number.isSafeInteger(n) || n > 2 ** 31 - 1) throw new UsageError(`invalid address "${text}": not a descriptor`);
      out.push({ fd: n, label: text });
    } else if (text === "systemd" || text.startsWith("systemd:")) {
      passed ??= systemdSockets();
      const name = text.slice("systemd:".length);
      const chosen = text === "systemd" ? passed : passed.filter((h) => h.label === text);
      if (chosen.length === 0) {
        throw new UsageError(`--listen ${text}: systemd passed no socket named "${name}" (it passed ${passed.map((h) => h.label).join(", ")}; FileDescriptorName= names them)`);
      }
      out.push(...chosen);
    } else {
      out.push(parseListenAddress(text));
    }
  }
  const fds = out.filter(isHanded).map((h) => h.fd);
  const twice = fds.find((fd, i) => fds.indexOf(fd) !== i);
  if (twice !== undefined) throw new UsageError(`--listen names descriptor ${twice} twice`);
  // As sd_listen_fds(1): the module's own child processes must not take them for theirs.
  if (passed !== null) for (const name of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", WORKER_SYSTEMD]) delete process.env[name];
  return out;
}

function checkPort(text: string, whole: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`invalid address "${whole}": port must be 0-65535`);
  return port;
}

/**
 * The most workers --workers takes: a sanity bound that turns a typo (an
 * extra digit or two) into a usage line, not thousands of processes forked
 * before the machine runs out of memory. A fixed number, not one from the
 * CPU count, so a command line copied to a smaller machine still parses;
 * 1024 is well above the cores of any one host today.
 */
const MAX_WORKERS = 1024;

/**
 * An integer flag's value, from `min` (1 or 0) up to `max`: plain decimal
 * digits only (no sign, exponent, hex, spaces or separators), and never
 * beyond what a number holds exactly.
 */
function intFlag(name: string, text: string | undefined, min: 0 | 1 = 1, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  const digits = /^\d+$/.test(text);
  if (!digits || value < min || value > max) {
    const kind = min === 0 ? "a non-negative integer" : "a positive integer";
    const range = max !== Number.MAX_SAFE_INTEGER ? `an integer from ${min} to ${max}` : digits ? `${kind} up to ${max}` : kind;
    throw new UsageError(`--${name} must be ${range}, got "${text}"`);
  }
  return value;
}

const SERVE_OPTIONS = {
  listen: { type: "string", short: "l", multiple: true },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "tls-reload": { type: "string" },
  workers: { type: "string", short: "w" },
  "proxy-protocol": { type: "boolean" },
  "reuse-port": { type: "boolean" },
  "max-connections": { type: "string" },
  "max-per-peer": { type: "string" },
  "peer-ipv6-prefix": { type: "string" },
  "idle-timeout": { type: "string" },
  "shutdown-timeout": { type: "string" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
} as const;

/**
 * The arguments with a negative number after an option that takes a value
 * joined to it ("--workers=-1"): parseArgs would take "-1" for an option and
 * call the value ambiguous, where the option's own check says what is wrong.
 */
function joinNegativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") return out.concat(argv.slice(i));
    const name = Object.entries(SERVE_OPTIONS).find(([long, o]) => o.type === "string" && (arg === `--${long}` || ("short" in o && arg === `-${o.short}`)))?.[0];
    const value = argv[i + 1];
    if (name === undefined || value === undefined) out.push(arg);
    else {
      // The value is taken as is, whatever it looks like: skipped here too.
      out.push(...(/^-\d/.test(value) ? [`--${name}=${value}`] : [arg, value]));
      i++;
    }
  }
  return out;
}

function parseServe(argv: string[]): ServeArgs {
  let parsed;
  try {
    parsed = parseArgs({ args: joinNegativeValues(argv), allowPositionals: true, strict: true, options: SERVE_OPTIONS });
  } catch (err) {
    throw new UsageError((err as Error).message.split("\n")[0]!.split(". To specify")[0]!);
  }
  const v = parsed.values;
  if (v.help) throw new HelpRequested();
  if (v.version) throw new VersionRequested();
  if (parsed.positionals.length !== 1) {
    throw new UsageError(parsed.positionals.length === 0 ? "serve needs a module" : `unexpected argument "${parsed.positionals[1]}"`);
  }
  if (v["tls-key"] !== undefined && v["tls-cert"] === undefined) throw new UsageError("--tls-key needs --tls-cert");
  if (v["tls-reload"] !== undefined && v["tls-cert"] === undefined) throw new UsageError("--tls-reload needs --tls-cert");
  const args: ServeArgs = {
    module: parsed.positionals[0]!,
    listen: parseListens(v.listen ?? []),
    tlsReloadS: intFlag("tls-reload", v["tls-reload"], 0) ?? 60,
    workers: intFlag("workers", v.workers, 1, MAX_WORKERS) ?? 1,
    proxyProtocol: v["proxy-protocol"] ?? false,
    reusePort: v["reuse-port"] ?? false,
    shutdownTimeoutMs: intFlag("shutdown-timeout", v["shutdown-timeout"], 0) ?? 10_000,
    quiet: v.quiet ?? false,
  };
  const handed = args.listen.find(isHanded);
  if (handed !== undefined && args.reusePort) throw new UsageError(`--reuse-port binds the sockets it listens on; --listen ${handed.label} is bound already`);
  if (v["tls-cert"] !== undefined) args.tlsCert = v["tls-cert"];
  if (v["tls-key"] !== undefined) args.tlsKey = v["tls-key"];
  const max = intFlag("max-connections", v["max-connections"]);
  if (max !== undefined) args.maxConnections = max;
  const perPeer = intFlag("max-per-peer", v["max-per-peer"]);
  if (perPeer !== undefined) args.maxConnectionsPerPeer = perPeer;
  const prefix = intFlag("peer-ipv6-prefix", v["peer-ipv6-prefix"], 1, 128);
  if (prefix !== undefined) args.peerIPv6Prefix = prefix;
  const idle = intFlag("idle-timeout", v["idle-timeout"]);
  if (idle !== undefined) args.idleTimeoutMs = idle;
  return args;
}

class HelpRequested extends Error {}
class VersionRequested extends Error {}

async function loadModule(path: string): Promise<unknown> {
  const url = pathToFileURL(resolve(path)).href;
  let noTsx = false;
  if (/\.[cm]?ts$/.test(path)) {
    try {
      const api = (await import("tsx/esm/api" as string)) as { register?: () => void };
      api.register?.();
    } catch (err) {
      noTsx = (err as { code?: unknown }).code === "ERR_MODULE_NOT_FOUND";
    }
  }
  // A top-level await that nothing is left to settle: the event loop empties
  // while the import waits. Node says nothing of whose await it was (or, on
  // 24, names the command's own line); the command names the module, and
  // exits with Node's code for it (13).
  const stuck = (): void => {
    process.stderr.write(`pants-ts: ${path} never finished loading: its top-level await waits for something nothing is left to settle\n`);
    process.exit(13);
  };
  process.once("beforeExit", stuck);
  try {
    const mod = (await import(url)) as { default?: unknown };
    return mod.default;
  } catch (err) {
    // (A module may throw anything, null included.)
    const code = (err as { code?: unknown } | null)?.code;
    // Node's own message ('Unknown file extension ".ts"') does not say what is missing.
    if (noTsx && code === "ERR_UNKNOWN_FILE_EXTENSION") {
      throw codedError(`${path} is TypeScript and tsx is not installed: install it (npm install -D tsx), or serve the compiled .js.`, code);
    }
    // A Node that strips types runs the file itself, but not syntax that
    // needs compiling (an enum, parameter properties): tsx would run it.
    if (noTsx && code === "ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX") {
      const why = String((err as Error).message).split("\n")[0];
      throw codedError(`${path}: ${why}; Node strips types only, and tsx, which compiles it, is not installed: install it (npm install -D tsx), or serve the compiled .js.`, code);
    }
    // Node's message names the command's own file as the importer: "Cannot
    // find module '/srv/app.mjs' imported from .../pants-ts/dist/src/cli.js".
    if (code === "ERR_MODULE_NOT_FOUND" && !existsSync(resolve(path))) {
      throw new UsageError(`serve ${path}: no such file (${resolve(path)})`);
    }
    if (code === "ERR_UNSUPPORTED_DIR_IMPORT") {
      throw new UsageError(`serve ${path}: a directory; give the module file in it (a .js or .mjs file)`);
    }
    throw err;
  } finally {
    process.off("beforeExit", stuck);
  }
}

function isConnectionClass(value: unknown): value is typeof Stream {
  return typeof value === "function" && (value === Stream || value.prototype instanceof Stream);
}

/** A class or server from another copy of pants-ts than the one running the command. */
function isForeignCopy(value: unknown): boolean {
  const brand = Symbol.for("pants-ts.channel");
  const target = typeof value === "function" ? value : typeof value === "object" && value !== null ? value.constructor : null;
  return typeof target === "function" && brand in target;
}

/**
 * The session ticket keys the primary of `serve --workers` makes once and
 * hands every worker it forks (replacements too), in this environment
 * variable: a client's TLS session then resumes on whichever worker its next
 * connection reaches, and across a SIGHUP's rolling restart.
 */
const WORKER_TICKET_KEYS = "PANTS_TS_WORKER_TICKET_KEYS";

/** A worker's share of {@link WORKER_TICKET_KEYS}, read once (and kept from the module's code and child processes). */
const workerTicketKeys: Buffer | undefined = (() => {
  const hex = cluster.isWorker ? process.env[WORKER_TICKET_KEYS] : undefined;
  delete process.env[WORKER_TICKET_KEYS];
  return hex !== undefined && /^[0-9a-f]{96}$/.test(hex) ? Buffer.from(hex, "hex") : undefined;
})();

/**
 * The session ticket keys of this process's --tls-cert servers: a worker's
 * share, else made here once, so that a session outlives a --tls-reload
 * (each secure context would make keys of its own).
 */
let ticketKeys: Buffer | undefined = workerTicketKeys;

/** This process's session ticket keys (see ticketKeys), made on first use. */
function sessionTicketKeys(): Buffer {
  return (ticketKeys ??= randomBytes(48));
}

/** The TLS options of --tls-cert/--tls-key, if given. */
function tlsOptions(args: ServeArgs): SslOptions | undefined {
  if (args.tlsCert === undefined) return undefined;
  return { certfile: args.tlsCert, keyfile: args.tlsKey ?? args.tlsCert, ticketKeys: sessionTicketKeys() };
}

/**
 * A server the command line made for a connection class. A failure to
 * listen (a port in use, a bad descriptor) rejects `ready()`, and main()
 * prints it in one line; the server's default onError would log it first,
 * with a stack. Later failures are logged as usual.
 */
class CommandServer extends Server {
  static {
    // Log lines name a server by its class: this one is the Server the user asked for.
    Object.defineProperty(this, "name", { value: "Server" });
  }
  #listened = false;
  override onListen(): void {
    this.#listened = true;
  }
  override onError(err: Error): void {
    if (this.#listened) super.onError(err);
  }
}

/** What a file is now, as far as a renewal can change it (stat follows a symlink, as certbot's live/ links are); null if it cannot be read. */
function fileVersion(path: string): string | null {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  } catch {
    return null;
  }
}

/** What --tls-cert and --tls-key are now (see fileVersion). */
function certificateVersion(args: ServeArgs): string {
  return [...new Set([args.tlsCert!, args.tlsKey ?? args.tlsCert!])].map(fileVersion).join("|");
}

/**
 * Keeps --tls-cert and --tls-key current (--tls-reload): every few seconds
 * the files are looked at, and once they have changed since `loaded` (their
 * version taken before the servers read them, so that a renewal while they
 * started is not missed) they are loaded again for the connections
 * accepted from then on (open ones keep theirs), with the same session
 * ticket keys. A pair that does not load (a key written
 * after its certificate, a file half written) is said in one line and the
 * servers keep the certificate they have; the files are tried again when
 * they change again. No timer is left to hold the process open.
 */
function reloadCertificates(servers: Server[], args: ServeArgs, loaded: string): void {
  if (args.tlsReloadS === 0) return;
  let tried = loaded;
  const who = cluster.isWorker ? ` (worker ${cluster.worker!.id})` : "";
  const timer = setInterval(() => {
    const open = servers.filter((s) => !s.closed);
    if (open.length === 0) {
      clearInterval(timer);
      return;
    }
    const now = certificateVersion(args);
    if (now === loaded || now === tried) return;
    tried = now;
    try {
      // Read once for every server, so that a file changing again part-way cannot leave two on different certificates.
      const cert = readSslFile("certfile", args.tlsCert);
      const key = args.tlsKey === undefined || args.tlsKey === args.tlsCert ? cert : readSslFile("keyfile", args.tlsKey);
      const options: SslOptions = { cert, key, ticketKeys: sessionTicketKeys() };
      for (const server of open) server.setSslOptions(options);
    } catch (err) {
      process.stderr.write(`pants-ts: ${args.tlsCert} changed but did not load (${err instanceof Error ? err.message : String(err)}); still serving the certificate loaded before${who}\n`);
      return;
    }
    loaded = now;
    if (!args.quiet) process.stdout.write(`pants-ts: reloaded the TLS certificate ${args.tlsCert}; new connections use it${who}\n`);
  }, Math.min(args.tlsReloadS * 1000, 2 ** 31 - 1)); // (a longer delay would fire at once)
  timer.unref();
}

/** A module's Server's onError while the command binds it: a bind error is the command's to say (see CommandServer). */
function quietUntilListening(this: Server, err: Error): void {
  if (this.listening) Server.prototype.onError.call(this, err);
}

/** Loads the module and starts its servers in this process. */
async function startServers(args: ServeArgs): Promise<Server[]> {
  const exported = await loadModule(args.module);
  // Before the servers read the files (--tls-reload compares with it).
  const version = args.tlsCert !== undefined ? certificateVersion(args) : "";
  const options: ServerOptions = { proxyProtocol: args.proxyProtocol };
  if (args.reusePort) options.reusePort = true;
  if (args.maxConnections !== undefined) options.maxConnections = args.maxConnections;
  if (args.maxConnectionsPerPeer !== undefined) options.maxConnectionsPerPeer = args.maxConnectionsPerPeer;
  if (args.peerIPv6Prefix !== undefined) options.peerIPv6Prefix = args.peerIPv6Prefix;
  if (args.idleTimeoutMs !== undefined) options.idleTimeoutMs = args.idleTimeoutMs;
  const sslOptions = tlsOptions(args);
  if (sslOptions !== undefined) options.sslOptions = sslOptions;
  if (isConnectionClass(exported)) {
    if (args.listen.length === 0) throw new UsageError("--listen is required");
    // (A module's Server may set its own limit; a class has only the flag's.)
    if (args.peerIPv6Prefix !== undefined && args.maxConnectionsPerPeer === undefined) throw new UsageError("--peer-ipv6-prefix sets how --max-per-peer counts IPv6 clients; give --max-per-peer too");
    // A worker serves its own copy of a handed socket, on the addon: node:net
    // would ask the primary to listen on it (see serve()).
    const handedOptions: ServerOptions = cluster.isWorker ? { ...options, transport: "native" } : options;
    const servers = args.listen.map((listen) =>
      isHanded(listen) ? new CommandServer(exported, { ...handedOptions, socket: { fd: listen.fd } }) : new CommandServer(exported, options).listen(listen),
    );
    await Promise.all(servers.map((s) => s.ready()));
    if (sslOptions !== undefined) reloadCertificates(servers, args, version);
    return servers;
  }
  if (exported instanceof Server) {
    if (args.listen.length > 1) throw new UsageError("a Server instance listens on one address; export a connection class to listen on several");
    const [listen] = args.listen;
    if (listen !== undefined && isHanded(listen)) {
      throw new UsageError(`--listen ${listen.label}: a Server instance takes a handed socket in its own options ({ socket: { fd } }); export a connection class to serve it`);
    }
    if (args.tlsCert !== undefined) {
      // Its own certificate would win silently: say so rather than serve another.
      if (exported.sslEnabled) throw new UsageError("--tls-cert: the module's Server already serves TLS with the certificate its code gave it");
      exported.startSSL(options.sslOptions!);
    }
    const watch = args.tlsCert !== undefined;
    if (args.maxConnections !== undefined) exported.maxConnections = args.maxConnections;
    if (args.maxConnectionsPerPeer !== undefined) exported.maxConnectionsPerPeer = args.maxConnectionsPerPeer;
    if (args.peerIPv6Prefix !== undefined) exported.peerIPv6Prefix = args.peerIPv6Prefix;
    if (args.proxyProtocol || args.reusePort || args.idleTimeoutMs !== undefined) {
      throw new UsageError("--proxy-protocol, --reuse-port and --idle-timeout apply to a connection class; set them in the Server's options");
    }
    if (listen === undefined) {
      // A Server given a socket ({ socket }) or told to listen, at its module's
      // top level, may not be listening yet: ready() below waits for it.
      if (!exported.listening && !exported._binding && !liveServers.has(exported)) throw new UsageError("--listen is required");
      await exported.ready();
      if (watch) reloadCertificates([exported], args, version);
      return [exported];
    }
    // The command says a failed bind in one line: the default onError would
    // log it first, with its stack. (An onError of the module's own is its to keep.)
    const quiet = exported.onError === Server.prototype.onError;
    if (quiet) exported.onError = quietUntilListening;
    try {
      exported.listen(listen);
      await exported.ready();
    } finally {
      if (quiet) delete (exported as { onError?: unknown }).onError;
    }
    if (watch) reloadCertificates([exported], args, version);
    return [exported];
  }
  if (isForeignCopy(exported)) {
    throw new UsageError(`${args.module} imports a different copy of pants-ts than this command; import "pants-ts" so both use one copy`);
  }
  throw new UsageError(`${args.module} must export by default a Stream subclass or a Server, got ${exported === undefined ? "nothing" : typeof exported}`);
}

/** One line of stats, for SIGUSR2. */
export function statsLine(stats: Stats | ClusterStats): string {
  const parts = [
    `open=${stats.open}`,
    `pending=${stats.pending}`,
    `lingering=${stats.lingering}`,
    `accepted=${stats.accepted}`,
    `rejected=${stats.rejected}`,
    `closed=${stats.closed}`,
    `bytesIn=${stats.bytesIn}`,
    `bytesOut=${stats.bytesOut}`,
    `errors=${stats.errors}`,
  ];
  if ("workers" in stats) parts.unshift(`workers=${stats.workers}`, `restarts=${stats.restarts}`);
  return `pants-ts stats: ${parts.join(" ")}`;
}

/** How to talk to a server from a shell: nc for plain TCP, openssl s_client for TLS. */
function connectHint(address: Address | null, tls: boolean): string {
  if (typeof address === "string") {
    if (address.startsWith("\0")) return "";
    return tls ? ` (connect: openssl s_client -unix ${address})` : ` (connect: nc -U ${address})`;
  }
  if (!Array.isArray(address)) return "";
  const [host, port] = address;
  const target = host === "" || host === "0.0.0.0" || host === "::" ? "localhost" : hostWithZone(address);
  if (!tls) return ` (connect: nc ${target} ${port})`;
  return ` (connect: openssl s_client -connect ${target.includes(":") ? `[${target}]` : target}:${port})`;
}

/** In a cluster, the first worker says the exposure note (the primary has no servers to read; the others would repeat it). */
function noteOnce(servers: Server[], args: ServeArgs): Server[] {
  if (!args.quiet && cluster.worker?.id === 1) writeExposureNote(servers);
  return servers;
}

function banner(servers: Server[], name: string): string {
  return servers
    // node:net cannot name a UNIX socket it was handed by descriptor.
    .map((s) => `pants-ts: serving ${name} on ${s.localAddresses.map(formatAddress).join(" and ") || `fd ${s.fileno ?? "?"}`}${connectHint(s.localAddress, s.sslEnabled)}, ${transportNote(s)}`)
    .join("\n");
}

/**
 * Writes, under the banner, the note for servers other hosts can reach
 * without an idle timeout or a connection limit (SECURITY.md: a server on
 * the internet should set both, as HAProxy warns of missing timeouts):
 * nothing for loopback and UNIX servers, and ones that set both.
 */
function writeExposureNote(servers: readonly Server[]): void {
  const exposed = servers.filter((s) => s.localAddresses.some(reachableFromOtherHosts));
  const lines: string[] = [];
  if (exposed.some((s) => s.idleTimeoutMs === 0)) {
    lines.push("no --idle-timeout: a client that connects and sends nothing holds its connection for ever (unless your streams set idleTimeout)");
  }
  if (exposed.some((s) => s.maxConnections === Infinity)) {
    lines.push("no --max-connections: past the descriptor limit (ulimit -n) new clients are dropped unseen");
  }
  if (lines.length === 0) return;
  process.stdout.write(`pants-ts: note: ${lines.join("; ")}. A server other hosts can reach should set both (SECURITY.md, "Defaults"); -q hides this note\n`);
}

/** A TCP address that is not loopback (a wildcard address is reachable). */
function reachableFromOtherHosts(address: Address): boolean {
  if (!Array.isArray(address)) return false;
  const host = address[0].toLowerCase();
  return !(host.startsWith("127.") || host === "::1" || host.startsWith("::ffff:127.") || host === "localhost");
}

/**
 * Which transport a server runs on, for the banner: and why node:net, when
 * the native addon did not build or load (npm hides the install script's
 * own warning), so a deployment that lost it is noticed.
 */
function transportNote(server: Server): string {
  if (server.transport === "native") return "native transport";
  const why = server.sslEnabled ? "TLS" : nativeLoadError();
  return why === null ? "node:net" : `node:net (${why})`;
}

/**
 * Whether this host's kernel hands the connections queued on a closing
 * SO_REUSEPORT socket to another socket of its group (net.ipv4.tcp_migrate_req,
 * read in this process's network namespace). True where it cannot be read:
 * nothing to say then (another system, a kernel before 5.14 that has no such
 * setting, or a sandbox hiding /proc).
 */
function migratesQueuedConnections(): boolean {
  try {
    return readFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "latin1").trim() !== "0";
  } catch {
    return true;
  }
}

/** The address a cluster worker's server listens on, as the primary hears of it. */
function fromClusterAddress(info: ClusterAddress): Address | null {
  if (info.addressType === -1) {
    // A UNIX socket: the path. node:cluster made it absolute in the worker,
    // which turns a Linux abstract name "\0name" into "/cwd/\0name".
    const nul = info.address.indexOf("\0");
    return nul > 0 ? info.address.slice(nul) : info.address;
  }
  if (info.addressType !== 4 && info.addressType !== 6) return null; // UDP: not ours
  return [info.address ?? "", info.port];
}

/**
 * `serve --workers` with sockets handed over (fd:N, systemd): every worker is
 * forked with them at the same descriptors (runCluster's inheritFds, which
 * this returns) and accepts on its own copy, on the native transport. (On node:net a worker has its primary listen
 * instead, which closes the socket when the last worker using it exits: a
 * crash would lose it for good.) @throws UsageError where that cannot be.
 */
function handOnSockets(args: ServeArgs): number[] {
  const handed = args.listen.filter(isHanded);
  if (handed.length === 0) return [];
  const what = `--listen ${handed[0]!.label} with --workers`;
  if (args.tlsCert !== undefined || args.proxyProtocol) {
    throw new UsageError(`${what} serves plain TCP and UNIX sockets only (each worker accepts on its own copy of the socket, on the native transport; TLS and PROXY-protocol servers use node:net)`);
  }
  if (!useNative(undefined, true)) throw new UsageError(`${what} needs the native transport (each worker accepts on its own copy of the socket), and ${nativeLoadError() ?? "it is not available"}`);
  if (systemdForWorkers !== null) process.env[WORKER_SYSTEMD] = systemdForWorkers;
  // As one process's listen says it: forking with a descriptor that is not
  // open failed as a bare "spawn EBADF", and one not a socket in each worker.
  for (const { fd } of handed) {
    let socket: boolean;
    try {
      socket = fstatSync(fd).isSocket();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EBADF") continue; // the workers' listen says why
      throw Object.assign(new Error(`listen EBADF: bad file descriptor fd ${fd} (not open)`, { cause: err }), { code: "EBADF", syscall: "listen" });
    }
    if (!socket) throw Object.assign(new Error(`listen ENOTSOCK: socket operation on non-socket fd ${fd} (not a socket)`), { code: "ENOTSOCK", syscall: "listen" });
  }
  return handed.map((h) => h.fd);
}

async function serve(args: ServeArgs): Promise<number> {
  // A closed terminal (SIGHUP) or a gone log reader makes writes to stdout
  // fail (EIO, EPIPE): that must not kill a server that is draining.
  for (const out of [process.stdout, process.stderr]) out.on("error", () => {});
  if (args.workers > 1 || cluster.isWorker) {
    // A certificate or key that cannot be used fails every worker alike: say
    // so once, in one line (as in one process), before forking any.
    if (cluster.isPrimary && args.tlsCert !== undefined) {
      compileServerTls(tlsOptions(args)!);
      process.env[WORKER_TICKET_KEYS] = randomBytes(48).toString("hex");
    }
    const inheritFds = cluster.isPrimary ? handOnSockets(args) : [];
    // In the primary, before the workers listen: SIGUSR2 must not kill it,
    // and a SIGTERM while starting (runCluster drains) prints no banner.
    let current: ClusterHandle | null = null;
    let signalled = false;
    // The addresses the workers really listen on (a requested port 0 is
    // one port the OS picked, shared by every worker), in the order heard.
    const bound = new Map<string, Address>();
    // TLS from --tls-cert, or set up by a Server the module exports.
    let tls = args.tlsCert !== undefined;
    if (cluster.isPrimary) {
      cluster.on("listening", (_worker, info) => {
        const address = fromClusterAddress(info);
        if (address !== null) bound.set(formatAddress(address), address);
      });
      cluster.on("message", (_worker, message: unknown) => {
        const listening = workerListening(message);
        if (listening === null) return;
        if (listening.tls) tls = true;
        for (const address of listening.own) bound.set(formatAddress(address), address);
      });
      process.on("SIGUSR2", () => process.stdout.write((current === null ? "pants-ts: workers starting" : statsLine(current.stats())) + "\n"));
      for (const signal of ["SIGTERM", "SIGINT"] as const) {
        process.on(signal, () => {
          // As in one process: a second signal ends a drain that takes too
          // long (the workers exit as their channel to the primary closes).
          if (signalled) {
            process.stderr.write(`pants-ts: second ${signal}; exiting now\n`);
            process.exit(1);
          }
          signalled = true;
          const deadline = args.shutdownTimeoutMs === 0 ? "no deadline" : `at most ${args.shutdownTimeoutMs} ms`;
          if (!args.quiet) process.stdout.write(`pants-ts: ${signal}: draining connections in every worker (${deadline})\n`);
        });
      }
    } else {
      // The primary prints the stats; a SIGUSR2 sent to the whole group
      // (kill -USR2 -PGID, systemctl kill -s USR2) must not kill the workers.
      process.on("SIGUSR2", () => {});
    }
    const handle = await runCluster(() => startServers(args).then((servers) => noteOnce(servers, args)), { workers: args.workers, shutdownTimeoutMs: args.shutdownTimeoutMs, inheritFds });
    if (!handle.isPrimary) return -1; // a worker serves until the primary says otherwise
    current = handle;
    if (!args.quiet && !signalled) {
      const addresses = bound.size > 0 ? [...bound.values()] : args.listen.filter((l): l is Address => !isHanded(l));
      const handed = args.listen.filter(isHanded).map((h) => (h.label.startsWith("fd:") ? h.label : `${h.label} (fd ${h.fd})`));
      const where = [...addresses.map((a) => formatAddress(a) + connectHint(a, tls)), ...handed].join(", ");
      process.stdout.write(`pants-ts: ${args.workers} workers serving ${args.module} on ${where}\n`);
      if (args.reusePort && !migratesQueuedConnections()) {
        process.stdout.write(
          "pants-ts: note: net.ipv4.tcp_migrate_req is 0, so a SIGHUP (rolling restart) resets connections still queued on a retiring worker's socket; " +
            "`sysctl -w net.ipv4.tcp_migrate_req=1` (Linux 5.14+) has the kernel move them to another worker\n",
        );
      }
    }
    await handle.closed;
    return 0;
  }
  // Signal handlers first: a SIGTERM right after the banner must drain, not kill.
  let stopping = false;
  const stopped = new Promise<void>((resolveStop) => {
    const stop = (signal: string) => {
      if (stopping) {
        process.stderr.write(`pants-ts: second ${signal}; exiting now\n`);
        process.exit(1);
      }
      stopping = true;
      const deadline = args.shutdownTimeoutMs === 0 ? "no deadline" : `at most ${args.shutdownTimeoutMs} ms`;
      if (!args.quiet) process.stdout.write(`pants-ts: ${signal}: draining connections (${deadline})\n`);
      void shutdownAll(args.shutdownTimeoutMs).then(() => {
        // A module that awaits Engine.instance().start() at its top level
        // (SPEC's own example) finishes loading only once the engine stops.
        const engine = Engine.instance();
        if (engine.running) engine.stop();
        resolveStop();
      });
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    // One process has nothing to replace: a hangup (a closed terminal) drains
    // as SIGTERM does, rather than killing connections mid-write.
    process.on("SIGHUP", () => stop("SIGHUP"));
  });
  process.on("SIGUSR2", () => process.stdout.write(statsLine(processStats()) + "\n"));
  let servers: Server[] = [];
  let failure: { err: unknown } | null = null;
  try {
    servers = await startServers(args);
  } catch (err) {
    if (!stopping) throw err;
    // A module still loading when the signal came may fail to finish: it is
    // stopping anyway. A system call that failed (a listen) is said all the same.
    if (isSystemError(err)) failure = { err };
  }
  if (stopping) await shutdownAll(args.shutdownTimeoutMs); // a signal came while starting
  if (!args.quiet && !stopping) {
    process.stdout.write(banner(servers, servers[0]!.ConnectionClass.name || "connection class") + "\n");
    writeExposureNote(servers);
  }
  // Nothing left to wait for, no signal: the module's own code closed every server.
  process.once("beforeExit", () => {
    if (!stopping && !args.quiet) process.stdout.write("pants-ts: every server has closed; nothing left to serve, exiting\n");
  });
  await stopped;
  if (failure !== null) throw failure.err;
  return 0;
}

/** An error a system call reported (code and syscall: EADDRINUSE from listen, ENOENT from open). */
function isSystemError(err: unknown): boolean {
  const e = err as { code?: unknown; syscall?: unknown } | null;
  return err instanceof Error && typeof e?.code === "string" && typeof e.syscall === "string";
}

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: string };
    return pkg.version ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** Runs the command line; resolves with the exit code (-1: keep running). */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === "-h" || command === "--help" || command === "help") {
      process.stdout.write(HELP + "\n");
      return command === undefined ? 2 : 0;
    }
    if (command === "-v" || command === "--version") {
      process.stdout.write(version() + "\n");
      return 0;
    }
    if (command !== "serve") throw new UsageError(`unknown command "${command}"`);
    return await serve(parseServe(rest));
  } catch (err) {
    if (err instanceof HelpRequested) {
      process.stdout.write(HELP + "\n");
      return 0;
    }
    if (err instanceof VersionRequested) {
      process.stdout.write(version() + "\n");
      return 0;
    }
    // Under --workers, a start that failed in a worker (cause: the worker's
    // error) is reported as that error would be in one process.
    // (A module may throw anything, null included.)
    const e = err instanceof Error ? (err as Error & { code?: unknown }) : null;
    const workerError = e?.code === "ERR_WORKER_START" && e.cause instanceof Error ? (e.cause as Error & { code?: unknown }) : null;
    if (err instanceof UsageError || workerError?.code === "ERR_USAGE") {
      process.stderr.write(`pants-ts: ${(workerError ?? (err as Error)).message} (see pants-ts --help)\n`);
      return 2;
    }
    if (workerError !== null) {
      process.stderr.write(`pants-ts: a worker failed to start: ${failureText(workerError)}${hintFor(workerError)}\n`);
      return 1;
    }
    process.stderr.write(`pants-ts: ${failureText(err)}${hintFor(err)}\n`);
    return 1;
  }
}

/**
 * What usually causes a listen failure, for the one line main() prints (a
 * worker's error comes without its syscall: its message starts with it).
 */
function hintFor(err: unknown): string {
  if (!(err instanceof Error)) return "";
  const { code, syscall, port } = err as Error & { code?: unknown; syscall?: unknown; port?: unknown };
  if (syscall !== "listen" && syscall !== "bind" && !/^(listen|bind) /.test(err.message)) return "";
  if (code === "EADDRINUSE") return " (another process listens there: stop it, or pick another address)";
  // A UNIX path's error has port -1, a worker's too (runCluster passes it on). No port, one
  // process and --workers alike: a TCP listen on port 0 (node:net and the addon leave port 0
  // off), whose message Server ends with "(listening on HOST:0)", which the regex reads; and
  // a listen on a handed descriptor (--listen fd:N, systemd), whose message ends "fd N".
  const tcp = typeof port === "number" ? port >= 0 : /:\d+\)?$/.test(err.message);
  if (code === "EACCES" && !tcp) return " (this user may not create a file in that directory: run as a user who may, or let systemd hand the socket over: --listen systemd)";
  if (code === "EACCES") return " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or let systemd hand the socket over: --listen systemd)";
  return "";
}
