/**
 * Network partitions: a peer that vanishes without a FIN or a reset (a
 * pulled cable, an expired NAT entry, a frozen VM). Loopback cannot do that,
 * so each test puts the peer in a network namespace of its own, joined to
 * this one by a veth pair, and makes it vanish with a blackhole route in its
 * namespace back to us: nothing it sends (ACKs, a FIN, a reset) reaches us
 * any more, and no ICMP error comes back either. (Setting the link down is
 * not silent: the neighbour entry is flushed and ARP then fails, which the
 * kernel reports as EHOSTUNREACH.) Needs root and `ip netns`; skipped
 * otherwise. Every namespace is deleted when its test ends.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import type { TestContext } from "node:test";
import { BufferOverflowError, ConnectError, Server, Stream, TimeoutError } from "../src/index.js";
import { loadNative } from "../src/native-binding.js";
import { freshEngine, waitFor } from "./helpers.js";

let made = 0;

/** Why these tests cannot run here, or false when they can. */
function unavailable(): string | false {
  if (process.platform !== "linux") return "network namespaces are Linux only";
  if (process.getuid?.() !== 0) return "making network namespaces needs root";
  const probe = `pt${process.pid}probe`;
  try {
    execFileSync("ip", ["netns", "add", probe], { stdio: "ignore" });
  } catch {
    return "`ip netns add` failed (no iproute2, or no permission in this container)";
  }
  execFileSync("ip", ["netns", "del", probe], { stdio: "ignore" });
  return false;
}
const skip = unavailable();

/** Without the addon (PANTS_TS_TRANSPORT=js turns it off) node:net cannot read TCP_INFO. */
const noAcks = skip || (loadNative() === null && "node:net alone cannot see the peer's acknowledgements (TCP_INFO needs the addon)");

/** A peer's namespace: `near` is our end's address, `far` the peer's. */
class Partition {
  readonly ns: string;
  readonly near: string;
  readonly far: string;
  readonly #outer: string;
  #children: ChildProcess[] = [];

  constructor(t: TestContext) {
    const n = made++;
    this.ns = `pt${process.pid}n${n}`;
    this.#outer = `pt${process.pid}o${n}`;
    const inner = `pt${process.pid}i${n}`;
    // A /30 no route or address here uses yet.
    const used = ip("-4", "-o", "addr") + ip("-4", "route");
    let net24 = "";
    for (let i = 0; i < 100 && net24 === ""; i++) {
      const candidate = `10.${100 + Math.floor(Math.random() * 100)}.${Math.floor(Math.random() * 256)}`;
      if (!used.includes(`${candidate}.`)) net24 = candidate;
    }
    this.near = `${net24}.1`;
    this.far = `${net24}.2`;
    t.after(() => this.destroy());
    ip("netns", "add", this.ns);
    ip("link", "add", this.#outer, "type", "veth", "peer", "name", inner);
    ip("link", "set", inner, "netns", this.ns);
    ip("addr", "add", `${this.near}/30`, "dev", this.#outer);
    ip("link", "set", this.#outer, "up");
    ip("-n", this.ns, "addr", "add", `${this.far}/30`, "dev", inner);
    ip("-n", this.ns, "link", "set", inner, "up");
    ip("-n", this.ns, "link", "set", "lo", "up");
  }

  /** Runs `script` (CommonJS) with node in the namespace; resolves once it prints a line, with every line it prints (the array grows). */
  async run(script: string): Promise<string[]> {
    const child = spawn("ip", ["netns", "exec", this.ns, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    this.#children.push(child);
    const lines: string[] = [];
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (d: string) => lines.push(...d.split("\n").filter((l) => l !== "")));
    await new Promise<void>((resolve, reject) => {
      child.stdout!.once("data", () => resolve());
      child.once("exit", (code) => reject(new Error(`the peer exited (${code}) before it was ready`)));
    });
    return lines;
  }

  /** A client in the namespace that connects to us, resumes reading, and writes "p" every 100 ms. */
  client(port: number, first = ""): Promise<string[]> {
    return this.run(
      `const s = require("net").connect(${port}, "${this.near}"); s.on("error", () => {}); s.resume();` +
        `s.on("connect", () => { s.write(${JSON.stringify(first)}); console.log("up"); setInterval(() => s.write("p"), 100); });`,
    );
  }

  /** Listens `server` on our end, connects a {@link client} to it, and returns the server's stream for it. */
  async serve<S extends Stream>(server: Server<S>): Promise<S> {
    server.listen([this.near, 0]);
    await server.ready();
    await this.client(server.port!);
    await waitFor(() => streamOf(server, this) !== undefined, 5000, "the peer's connection");
    return streamOf(server, this)!;
  }

  /** The peer vanishes: nothing from its namespace reaches us again, and its processes are gone. */
  vanish(): number {
    ip("-n", this.ns, "route", "add", "blackhole", `${this.near}/32`);
    for (const c of this.#children) c.kill("SIGKILL");
    return Date.now();
  }

  destroy(): void {
    for (const c of this.#children) c.kill("SIGKILL");
    // Deleting the namespace deletes the veth pair (both ends) with it.
    try {
      execFileSync("ip", ["netns", "del", this.ns], { stdio: "ignore" });
    } catch {
      // Never made.
    }
    try {
      execFileSync("ip", ["link", "del", this.#outer], { stdio: "ignore" });
    } catch {
      // Gone with the namespace.
    }
  }
}

function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** The server's stream for the peer in `part`'s namespace. */
function streamOf<S extends Stream>(server: Server<S>, part: Partition): S | undefined {
  return [...server.channels.values()].find((s) => Array.isArray(s.remoteAddress) && s.remoteAddress[0] === part.far);
}

/** A stream that records its events, with the time since `t0`. */
class Recording extends Stream {
  static t0 = 0;
  readonly events: Array<[string, number]> = [];
  errors: Error[] = [];
  record(what: string): void {
    this.events.push([what, Date.now() - Recording.t0]);
  }
  override onTimeout() {
    this.record("timeout");
    super.onTimeout();
  }
  override onReadError(err: Error) {
    this.errors.push(err);
    this.record(`readError:${(err as NodeJS.ErrnoException).code}`);
    super.onReadError(err);
  }
  override onWriteError(err: Error) {
    this.errors.push(err);
    this.record(`writeError:${(err as NodeJS.ErrnoException).code}`);
    super.onWriteError(err);
  }
  override onOverflowError(err: BufferOverflowError) {
    this.errors.push(err);
    this.record("overflow");
    super.onOverflowError(err);
  }
  override onClose() {
    this.record("close");
  }
  /** When `what` happened (ms after t0), or -1. */
  at(what: string): number {
    return this.events.find(([e]) => e === what)?.[1] ?? -1;
  }
  get names(): string[] {
    return this.events.map(([e]) => e);
  }
}

const CHUNK = Buffer.alloc(64 * 1024, 120);

/** Streams chunks as fast as the peer takes them (4 more at every onWrite) to a peer that sent "stream". */
class Streamer extends Recording {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(line: Buffer) {
    if (line.toString().endsWith("stream")) this.onWrite();
    else this.write(`${line}\n`);
  }
  override onWrite() {
    if (this.closed || this.closing) return;
    for (let i = 0; i < 4; i++) this.write(CHUNK);
  }
}

/** Writes 100 bytes every 100 ms, as a feed of small messages does. */
class Trickle extends Recording {
  #timer: NodeJS.Timeout | null = null;
  override onConnect() {
    this.#timer = setInterval(() => this.write(Buffer.alloc(100, 97)), 100);
  }
  override onClose() {
    if (this.#timer !== null) clearInterval(this.#timer);
    super.onClose();
  }
}

test("idleTimeoutMs: a peer that vanished silently gets onTimeout on time, then onClose, and no error", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  const server = new Server(Recording, { engine, idleTimeoutMs: 500 });
  const s = await part.serve(server);
  Recording.t0 = part.vanish();
  await waitFor(() => s.closed, 5000, "the close");
  assert.deepEqual(s.names, ["timeout", "close"]);
  assert.ok(s.at("timeout") >= 490 && s.at("timeout") < 1500, `onTimeout ${s.at("timeout")} ms after the peer vanished (timeout 500)`);
});

test("a server streaming to a peer that vanishes mid-write: backpressure bounds what it holds, idleTimeoutMs closes it, another connection goes on", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  const server = new Server(Streamer, { engine, idleTimeoutMs: 500 }).listen([part.near, 0]);
  await server.ready();
  await part.client(server.port!, "stream\n");
  await waitFor(() => (streamOf(server, part)?.events.length ?? 1) === 0 && server.stats.bytesOut > 4 * CHUNK.length, 5000, "the stream");
  const s = streamOf(server, part)!;
  // Another connection, on loopback: an echo that must keep answering.
  const canary = net.connect(server.port!, part.near);
  t.after(() => canary.destroy());
  let echoed = 0;
  canary.on("data", (d) => (echoed += d.length));
  const ping = setInterval(() => canary.write("ping\n"), 50);
  t.after(() => clearInterval(ping));
  let held = 0;
  const sample = setInterval(() => (held = Math.max(held, s.bufferedAmount)), 10);
  t.after(() => clearInterval(sample));
  Recording.t0 = part.vanish();
  await waitFor(() => s.closed, 10_000, "the close");
  const echoedAtClose = echoed;
  await waitFor(() => echoed > echoedAtClose, 2000, "the other connection's echo");
  assert.deepEqual(s.names, ["timeout", "close"]);
  assert.ok(s.at("timeout") >= 490 && s.at("timeout") < 2000, `onTimeout ${s.at("timeout")} ms after the peer vanished (timeout 500)`);
  assert.ok(held <= 4 * CHUNK.length, `held ${held} bytes at most`);
});

test("a server writing blindly to a peer that vanished: writeBufferLimit stops it with a BufferOverflowError", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  class Blind extends Recording {
    #timer: NodeJS.Timeout | null = null;
    override onConnect() {
      this.writeBufferLimit = 1 << 20;
      this.#timer = setInterval(() => this.write(CHUNK), 5);
    }
    override onClose() {
      if (this.#timer !== null) clearInterval(this.#timer);
      super.onClose();
    }
  }
  const server = new Server(Blind, { engine });
  const s = await part.serve(server);
  Recording.t0 = part.vanish();
  await waitFor(() => s.closed, 10_000, "the close");
  assert.deepEqual(s.names, ["overflow", "close"]);
  const err = s.errors[0] as BufferOverflowError;
  assert.ok(err instanceof BufferOverflowError);
  assert.equal(err.direction, "write");
});

test("idleTimeoutMs: small writes the kernel still takes do not keep a peer that vanished from being idle", { skip: noAcks }, async (t) => {
  for (const transport of ["native", "js"] as const) {
    const engine = freshEngine(t);
    const part = new Partition(t);
    const server = new Server(Trickle, { engine, idleTimeoutMs: 500, transport });
    const s = await part.serve(server);
    Recording.t0 = part.vanish();
    await waitFor(() => s.closed, 5000, `the close (${transport} transport)`);
    assert.deepEqual(s.names, ["timeout", "close"], transport);
    assert.ok(s.at("timeout") >= 490 && s.at("timeout") < 2000, `${transport}: onTimeout ${s.at("timeout")} ms after the peer vanished (timeout 500)`);
    server.close();
  }
});

test("close(true) to a peer that vanished gives up after idleTimeoutMs without progress, not 30 s", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  const server = new Server(Recording, { engine, idleTimeoutMs: 500 });
  const s = await part.serve(server);
  Recording.t0 = part.vanish();
  s.write(Buffer.alloc(8 << 20));
  s.close(true);
  assert.equal(s.closing, true, "still flushing");
  await waitFor(() => s.closed, 5000, "the close");
  assert.deepEqual(s.names, ["close"]);
  assert.ok(s.at("close") < 2000, `closed ${s.at("close")} ms after the peer vanished`);
  assert.equal(s.fileno, null, "the descriptor is gone");
});

test("shutdown({ timeoutMs }) with peers that vanished holding queued writes resolves by its deadline", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  const server = new Server(Recording, { engine }).listen([part.near, 0]);
  await server.ready();
  await part.client(server.port!);
  await part.client(server.port!);
  await waitFor(() => server.channels.size === 2, 5000, "the peers' connections");
  part.vanish();
  for (const s of server.channels.values()) s.write(Buffer.alloc(8 << 20));
  const streams = [...server.channels.values()];
  const started = Date.now();
  await server.shutdown({ timeoutMs: 1000 });
  const took = Date.now() - started;
  assert.ok(took >= 900 && took < 2500, `shutdown took ${took} ms (timeoutMs 1000)`);
  for (const s of streams) assert.equal(s.closed, true);
});

test("keepAliveMs: a peer that vanished while idle is found by the probes (delay + 10 s): onReadError ETIMEDOUT, then onClose", { skip, timeout: 30_000 }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  const server = new Server(Recording, { engine, keepAliveMs: 1000 });
  const s = await part.serve(server);
  Recording.t0 = part.vanish();
  await waitFor(() => s.closed, 20_000, "the close");
  assert.deepEqual(s.names, ["readError:ETIMEDOUT", "close"]);
  assert.ok(s.at("close") >= 9000 && s.at("close") < 15_000, `closed ${s.at("close")} ms after the peer vanished (1 s idle, 10 probes 1 s apart)`);
});

test("a client connect() to a black-holed address: idleTimeout fails it with ConnectError ETIMEDOUT", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  part.vanish(); // the SYN arrives; the SYN-ACK (or reset) never comes back
  const errors: ConnectError[] = [];
  class Client extends Stream {
    override onConnectError(err: ConnectError) {
      errors.push(err);
    }
  }
  const c = new Client({ engine });
  c.idleTimeout = 500;
  const started = Date.now();
  c.connect([part.far, 4444]);
  await waitFor(() => c.closed, 5000, "the failed connect");
  const took = Date.now() - started;
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.errno, "ETIMEDOUT");
  assert.ok(errors[0]!.cause instanceof TimeoutError && errors[0]!.cause.kind === "connect");
  assert.ok(took >= 490 && took < 2000, `failed after ${took} ms (idleTimeout 500)`);
});

test("a TLS client whose server vanishes mid-handshake: handshakeTimeout fails it with a ConnectError caused by a TimeoutError", { skip }, async (t) => {
  const engine = freshEngine(t);
  const part = new Partition(t);
  // A server that takes the ClientHello and says it did: then it vanishes.
  const lines = await part.run(
    `const srv = require("net").createServer((s) => { s.on("error", () => {}); s.once("data", () => console.log("hello")); });` +
      `srv.listen(4443, "${part.far}", () => console.log("listening"));`,
  );
  const errors: ConnectError[] = [];
  class Client extends Stream {
    override onConnectError(err: ConnectError) {
      errors.push(err);
    }
  }
  const client = new Client({ engine, sslOptions: { servername: "example" } });
  client.handshakeTimeout = 500;
  const connected = Date.now();
  client.connect([part.far, 4443]);
  await waitFor(() => lines.includes("hello"), 5000, "the ClientHello");
  const started = part.vanish();
  await waitFor(() => client.closed, 5000, "the failed handshake");
  const took = Date.now() - started;
  assert.ok(Date.now() - connected >= 490, "not before the timeout");
  assert.equal(errors.length, 1);
  assert.ok(errors[0]!.cause instanceof TimeoutError && errors[0]!.cause.kind === "handshake", String(errors[0]!.cause));
  assert.ok(took < 2000, `failed ${took} ms after the server vanished (handshakeTimeout 500)`);
});
