/**
 * Test helpers: a raw loopback client with bounded reads, waiting with a
 * deadline, temp dirs. Tests use real sockets, port 0 and always clean up.
 */
import net from "node:net";
import tls from "node:tls";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Engine, Server, Stream, setLogger } from "../src/index.js";
import { childrenOf } from "./reap.js";
import type { Address, Logger } from "../src/index.js";

/** A raw client socket that collects everything it receives. */
export class RawClient {
  readonly socket: net.Socket;
  // Chunks are joined when `received` is read, not on every arrival (a
  // join per chunk made reading 16 MiB quadratic).
  #chunks: Buffer[] = [];
  #length = 0;
  ended = false;
  closed = false;
  error: Error | null = null;
  #waiters: Array<() => void> = [];

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on("data", (d: Buffer) => {
      this.#chunks.push(d);
      this.#length += d.length;
      this.#wake();
    });
    socket.on("end", () => {
      this.ended = true;
      this.#wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.#wake();
    });
    socket.on("error", (err) => {
      this.error = err;
      this.#wake();
    });
  }

  /** Everything received and not yet consumed. */
  get received(): Buffer {
    if (this.#chunks.length !== 1) this.#chunks = [Buffer.concat(this.#chunks, this.#length)];
    return this.#chunks[0]!;
  }
  set received(value: Buffer) {
    this.#chunks = [value];
    this.#length = value.length;
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Resolves once `pred()` holds, or rejects after `timeoutMs`. */
  async until(pred: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`Timed out waiting for ${what}; received ${JSON.stringify(this.received.toString("latin1").slice(0, 200))} (${this.received.length} bytes), ended=${this.ended}, closed=${this.closed}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 50));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits for at least `n` bytes in total and returns (and consumes) exactly `n`. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    await this.until(() => this.#length >= n, timeoutMs, `${n} bytes`);
    const out = this.received.subarray(0, n);
    this.received = this.received.subarray(n);
    return Buffer.from(out);
  }

  /** Reads exactly the bytes of `text` and returns them as a string. */
  async readText(length: number, timeoutMs = 5000): Promise<string> {
    return (await this.read(length, timeoutMs)).toString("utf8");
  }

  /** Waits until the peer has closed (FIN or reset); returns everything not yet read. */
  async readToEnd(timeoutMs = 5000): Promise<Buffer> {
    await this.until(() => this.ended || this.closed, timeoutMs, "end of stream");
    const out = this.received;
    this.received = Buffer.alloc(0);
    return out;
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  end(data?: string | Buffer): void {
    if (data !== undefined) this.socket.end(data);
    else this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * Makes `client` a peer whose closed connection lingers on the server: it
 * keeps sending a line every `everyMs` (until the test ends), asks with
 * "quit\n" for a reply of `reply` bytes and the server's close, and reads
 * both. The client must be half-open (`allowHalfOpen`), or its FIN would
 * end the linger.
 */
export async function lingerWhileSending(t: { after: (fn: () => void) => void }, client: RawClient, reply: number, everyMs = 100): Promise<void> {
  const keepSending = setInterval(() => client.socket.writable && client.write("still here\n"), everyMs);
  t.after(() => {
    clearInterval(keepSending);
    client.destroy();
  });
  client.write("quit\n");
  await client.read(reply);
  await client.until(() => client.ended, 5000, "the server's FIN");
}

/**
 * Connects a raw client to `address` (a port on 127.0.0.1, [host, port], or
 * a UNIX path), from `localAddress` if given (any of 127.0.0.0/8 is this
 * host's on Linux).
 */
export async function connect(address: Address | null, options: { host?: string; localAddress?: string; allowHalfOpen?: boolean } = {}): Promise<RawClient> {
  const opts: net.NetConnectOpts = { ...toConnect(address, options.host), allowHalfOpen: options.allowHalfOpen === true };
  const socket = net.connect(options.localAddress === undefined ? opts : { ...opts, localAddress: options.localAddress });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return new RawClient(socket);
}

/** Connects a TLS client (no verification unless `ca` is given). */
export async function connectTls(address: Address | null, options: tls.ConnectionOptions & { allowHalfOpen?: boolean } = {}): Promise<RawClient & { tlsSocket: tls.TLSSocket }> {
  const base = toConnect(address);
  const socket = tls.connect({ rejectUnauthorized: false, ...base, ...options } as tls.ConnectionOptions);
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  const client = new RawClient(socket) as RawClient & { tlsSocket: tls.TLSSocket };
  client.tlsSocket = socket;
  return client;
}

function toConnect(address: Address | null, host?: string): net.NetConnectOpts {
  if (address === null) throw new Error("no address");
  if (typeof address === "string") return { path: address };
  if (typeof address === "number") return { host: host ?? "127.0.0.1", port: address };
  const [h, port] = address;
  const target = host ?? (h === "" || h === "0.0.0.0" ? "127.0.0.1" : h === "::" ? "::1" : h);
  return { host: target, port };
}

/**
 * A connection class that writes `total` bytes in one write when it
 * connects (nothing completes until the last byte leaves) and records each
 * onTimeout, with what was still buffered, in `events`.
 */
export function oneLargeWrite(total: number, events: string[]): typeof Stream {
  return class Download extends Stream {
    override onConnect() {
      this.write(Buffer.alloc(total, 7));
    }
    override onTimeout() {
      events.push(`timeout:${this.bufferedAmount}`);
      super.onTimeout();
    }
  };
}

/**
 * Reads from `c` in paced sips (about `perSip` bytes every 10 ms), so a
 * large write drains slowly but steadily. Resolves with the bytes it got
 * once the server closes (or `ms` passes), and destroys `c`.
 */
export async function sipReader(c: net.Socket, perSip: number, ms: number): Promise<number> {
  c.on("error", () => {});
  let got = 0;
  let sip = 0;
  c.pause();
  c.on("data", (d: Buffer) => {
    got += d.length;
    sip += d.length;
    if (sip >= perSip) c.pause();
  });
  const timer = setInterval(() => {
    sip = 0;
    c.resume();
  }, 10);
  await new Promise<void>((resolve) => {
    c.once("close", () => resolve());
    setTimeout(resolve, ms).unref();
  });
  clearInterval(timer);
  c.destroy();
  return got;
}

/** The port of a listening server. */
export function portOf(server: Server): number {
  const a = server.localAddress;
  if (!Array.isArray(a)) throw new Error(`not a TCP server: ${String(a)}`);
  return a[1];
}

/** A fresh engine stopped (closing every channel) when the test ends. */
export function freshEngine(t: TestContext): Engine {
  const engine = new Engine();
  t.after(() => engine.stop());
  return engine;
}

/** Listens on 127.0.0.1 port 0 and waits until listening. */
export async function listenLocal(server: Server, t?: TestContext): Promise<number> {
  server.listen(["127.0.0.1", 0]);
  await server.ready();
  if (t) t.after(() => server.close());
  return portOf(server);
}

/** Resolves once `pred()` holds, polling; rejects after `timeoutMs`. */
export async function waitFor(pred: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A seeded PRNG (mulberry32) in [0, 1): the same sequence on every run. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

/** Sleeps `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The first port of the kernel's ephemeral range (port 0 binds and outgoing connections get theirs from it). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) ? low : 32768;
  } catch {
    return 32768;
  }
}

async function canListen(port: number): Promise<boolean> {
  const s = net.createServer();
  const ok = await new Promise<boolean>((resolve) => {
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => resolve(true));
  });
  if (ok) await new Promise<void>((resolve) => s.close(() => resolve()));
  return ok;
}

/**
 * A TCP port on 127.0.0.1 that nobody listens on, for a program that must be
 * told its port (HAProxy's configuration, a command's --listen) or a connect
 * that must be refused. Taken below the kernel's ephemeral range: the port 0
 * listeners and the outgoing connections of the test files running at the
 * same time get their ports from that range, so none of them can take this
 * one between the check and its use (a port 0 listener closed and handed on
 * was taken by another file's connection, now and then).
 */
export async function freePort(): Promise<number> {
  const high = ephemeralLow();
  const low = high > 12_000 ? 10_000 : 1024;
  if (high - low > 1000) {
    for (let attempt = 0; attempt < 200; attempt++) {
      const port = low + Math.floor(Math.random() * (high - low));
      if (await canListen(port)) return port;
    }
  }
  // No room below the range: the kernel's pick, released.
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/**
 * Skip reason for `npm test`'s second pass (PANTS_TS_TRANSPORT=js) on a test
 * it would repeat exactly: every server and client stream the test runs is
 * on node:net whichever transport is chosen (cluster workers share the
 * primary's socket; TLS and PROXY-protocol servers; no server at all), so
 * the first pass ran the same code. False otherwise.
 */
export const sameOnEitherTransport: string | false =
  process.env.PANTS_TS_TRANSPORT === "js" && "the same on either transport: run once, in npm test's first pass";

/** Whether node:net of Node `version` ("22.12.0") takes `reusePort` in listen() (22.12+, 23.1+), worked out here apart from src/. */
export function setsReusePort(version: string): boolean {
  const [major = 0, minor = 0] = version.split(".").map(Number);
  return major >= 24 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/** Whether this Node's node:net takes `reusePort` (see {@link setsReusePort}). */
export const netReusePort: boolean = setsReusePort(process.versions.node);

/** The transport a plain server uses in this pass: PANTS_TS_TRANSPORT=js disables the addon. */
export const passTransport: "native" | "js" = process.env.PANTS_TS_TRANSPORT === "js" ? "js" : "native";

/**
 * Skip reason for a test of the option reusePort where it cannot work: off
 * Linux, or on node:net (the js pass disables the addon) before Node 22.12.
 */
export const noReusePort: string | false =
  process.platform !== "linux" ? "SO_REUSEPORT spreads connections on Linux" : passTransport === "js" && !netReusePort && `node:net sets SO_REUSEPORT from Node 22.12 and 23.1 (this is ${process.version}); the addon does in the native pass`;

/** Sends `line` to `target` on a new connection; the reply line. */
export async function ask(target: Address, line: string): Promise<string> {
  const c = await connect(target);
  try {
    c.write(`${line}\n`);
    await c.until(() => c.received.includes(0x0a), 5000, `a reply to ${line}`);
    return c.received.toString().split("\n")[0]!;
  } finally {
    c.destroy();
  }
}

/** The child processes of `pid` (Linux: /proc), in ascending order. */
export function childPids(pid: number): number[] {
  return childrenOf(pid).sort((a, b) => a - b);
}

/** A temp dir removed when the test ends. */
export function tempDir(t: TestContext, prefix = "pants-ts-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A logger that records every line, installed for the test and removed after. */
export function captureLogs(t: TestContext): Array<{ level: string; msg: string; obj: unknown }> {
  const lines: Array<{ level: string; msg: string; obj: unknown }> = [];
  const make = (level: string) => (objOrMsg: unknown, msg?: string) => {
    lines.push({ level, msg: typeof objOrMsg === "string" ? objOrMsg : (msg ?? ""), obj: objOrMsg });
  };
  const logger: Logger = { error: make("error"), warn: make("warn"), info: make("info"), debug: make("debug") };
  setLogger(logger);
  t.after(() => setLogger(undefined));
  return lines;
}

/**
 * The default logger, installed for the test, with what it writes to stderr
 * recorded (and kept off the test's output): `text()` so far, `clear()`.
 */
export function captureStderr(t: TestContext): { text: () => string; clear: () => void } {
  setLogger(undefined);
  let written = "";
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string | Uint8Array) => {
    written += chunk.toString();
    return true;
  }) as typeof process.stderr.write;
  t.after(() => {
    process.stderr.write = write;
    setLogger(undefined);
  });
  return { text: () => written, clear: () => (written = "") };
}

/** True if this machine can bind IPv6 loopback. */
export async function hasIPv6(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(0, "::1", () => s.close(() => resolve(true)));
  });
}

/**
 * A connection class that records which of its handlers ran (`sslHandshake`,
 * `connect`, `write`, `close`) in `events`; and a server whose every new
 * connection is written "hello\n" to and closed with close(true) right after
 * it is made, before its onConnect (or, under TLS, while its handshake runs),
 * as another handler of the application might.
 */
export function closedBeforeConnect(events: string[]): { Conn: typeof Stream; ClosingServer: typeof Server<Stream> } {
  class Conn extends Stream {
    override onSslHandshake() {
      events.push("sslHandshake");
    }
    override onConnect() {
      events.push("connect");
    }
    override onWrite() {
      events.push("write");
    }
    override onClose() {
      events.push("close");
    }
  }
  class ClosingServer extends Server {
    override onAccept(socket: Parameters<Server["onAccept"]>[0], address: Parameters<Server["onAccept"]>[1]) {
      super.onAccept(socket, address);
      const conn = [...this.channels.values()].at(-1)!;
      conn.write("hello\n");
      conn.close(true);
    }
  }
  return { Conn, ClosingServer };
}

/** A socket's TCP options as the kernel has them. */
export interface TcpOptions {
  noDelay: boolean;
  keepAlive: boolean;
  /** TCP_KEEPIDLE: seconds of silence before the first probe. */
  keepIdle: number;
}

// Node has no getsockopt: python3 takes a duplicate of the descriptor from
// this process (pidfd_getfd, Linux 5.6+; syscall 438 on every architecture)
// and asks the kernel.
const TCP_OPTIONS_PY = `
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
fd = libc.syscall(438, pidfd, int(sys.argv[2]), 0)
if fd < 0:
    sys.exit("pidfd_getfd: " + os.strerror(ctypes.get_errno()))
s = socket.socket(fileno=fd)
print(json.dumps({
    "noDelay": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
    "keepAlive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
    "keepIdle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
}))
s.close()
`;

/**
 * The TCP options of descriptor `fd` of this process; throws with the
 * reason when they cannot be read here (see {@link canReadTcpOptions}).
 */
export function tcpOptionsOf(fd: number): TcpOptions {
  const r = spawnSync("python3", ["-c", TCP_OPTIONS_PY, String(process.pid), String(fd)], { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0) throw new Error(`cannot read the TCP options of fd ${fd}: ${r.error?.message ?? r.stderr.trim()}`);
  return JSON.parse(r.stdout) as TcpOptions;
}

/** Why {@link tcpOptionsOf} cannot run here (no python3, an old kernel, no right to take this process's descriptors), or false. */
export function cannotReadTcpOptions(): string | false {
  const probe = "import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.syscall(438, os.pidfd_open(int(sys.argv[1])), 1, 0)\nsys.exit(0 if fd >= 0 else os.strerror(ctypes.get_errno()))";
  const r = spawnSync("python3", ["-c", probe, String(process.pid)], { encoding: "utf8", timeout: 10_000 });
  if (r.status === 0) return false;
  return `reading socket options needs python3 and pidfd_getfd on this process (${r.error?.message ?? r.stderr.trim()})`;
}

/**
 * Makes node:tls's TLSSocket.setServername throw ("late check") until the
 * returned function is called or the test ends: a check node:tls makes only
 * once its TLSSocket has the socket, to fail a client's TLS as it starts.
 */
export function failSetServername(t: TestContext): () => void {
  const proto = tls.TLSSocket.prototype as unknown as { setServername: (name: string) => void };
  const setServername = proto.setServername;
  proto.setServername = () => {
    throw new Error("late check");
  };
  const restore = () => {
    proto.setServername = setServername;
  };
  t.after(restore);
  return restore;
}

/**
 * Framing differentials record `["raw", text]` for each raw chunk; chunks
 * are cut however the bytes arrived, so consecutive ones are joined.
 */
export function joinRawEvents(events: unknown[]): unknown[] {
  const out: unknown[] = [];
  for (const e of events) {
    const last = out.at(-1);
    if (Array.isArray(e) && e[0] === "raw" && Array.isArray(last) && last[0] === "raw") out[out.length - 1] = ["raw", String(last[1]) + String(e[1])];
    else out.push(e);
  }
  return out;
}

/** Waits for `p`, failing with "timed out waiting for `what`" after 5 s. */
export async function withDeadline(p: Promise<void>, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 5000)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** What a {@link borrower} saw: chunks read, and the previous ones that read as empty by the next read. */
export interface LendTally {
  chunks: number;
  emptied: number;
  bytes: number;
}

/**
 * A connection class that borrows its chunks (reuseReadBuffer) and looks at
 * each previous chunk again at the next read, counting in `tally` those
 * that read as empty by then (a lent chunk, taken back).
 */
export function borrower(tally: LendTally): typeof Stream {
  return class Borrower extends Stream {
    #last: Buffer | null = null;
    override onConnect(): void {
      this.reuseReadBuffer = true;
    }
    override onRead(chunk: Buffer): void {
      if (this.#last !== null && this.#last.length === 0) tally.emptied++;
      tally.chunks++;
      tally.bytes += chunk.length;
      this.#last = chunk;
    }
  };
}
