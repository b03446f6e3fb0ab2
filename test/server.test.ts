/**
 * Server: every address shape of SPEC §2 (IPv4, IPv6, "" with and without
 * the slave, dual-stack, UNIX paths, abstract names, host names), bind
 * failures, state errors, ConnectionClass, channels and close().
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { ChannelStateError, InvalidAddressFormatError, Server, Stream } from "../src/index.js";
import type { Address } from "../src/index.js";
import { captureLogs, connect, freePort, freshEngine, hasIPv6, listenLocal, portOf, tempDir, waitFor, sleep } from "./helpers.js";
import type { Duplex } from "node:stream";

class Who extends Stream {
  override onConnect() {
    this.write(`${JSON.stringify(this.remoteAddress)} ${JSON.stringify(this.localAddress)}\n`);
    this.close();
  }
}

async function hello(address: Address, host?: string): Promise<[unknown, unknown]> {
  const c = await connect(address, host !== undefined ? { host } : {});
  const text = (await c.readToEnd()).toString().trim();
  const [remote, local] = text.split(" ");
  return [JSON.parse(remote!), JSON.parse(local!)];
}

const ipv6 = await hasIPv6();

test("listen on an IPv4 literal with port 0: localAddress tells the port", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine }).listen(["127.0.0.1", 0]);
  assert.equal(server.localAddress, null, "not bound yet");
  await server.ready();
  t.after(() => server.close());
  const addr = server.localAddress as unknown as [string, number];
  assert.equal(addr.length, 2);
  assert.equal(addr[0], "127.0.0.1");
  assert.ok(addr[1] > 0);
  assert.equal(server.remoteAddress, null);
  assert.equal(typeof server.fileno, "number");
  const [remote, local] = await hello(addr);
  assert.equal((remote as unknown[]).length, 2);
  assert.equal((remote as unknown[])[0], "127.0.0.1");
  assert.deepEqual(local, addr);
});

test("listen on IPv6 ::1 (2-tuple and 4-tuple): addresses are 4-tuples", { skip: !ipv6 && "no IPv6" }, async (t) => {
  const engine = freshEngine(t);
  for (const address of [["::1", 0], ["::1", 0, 0, 0]] as Address[]) {
    const server = new Server(Who, { engine }).listen(address);
    await server.ready();
    const addr = server.localAddress as unknown[];
    assert.equal(addr.length, 4);
    assert.equal(addr[0], "::1");
    const [remote] = await hello(["::1", portOf(server)]);
    assert.equal((remote as unknown[]).length, 4);
    assert.equal((remote as unknown[])[0], "::1");
    server.close();
  }
});

test('["", port] serves IPv4 and, with the slave, IPv6 on the same port', { skip: !ipv6 && "no IPv6" }, async (t) => {
  const engine = freshEngine(t);
  let listens = 0;
  class S extends Server {
    override onListen() {
      listens++;
    }
  }
  const server = new S(Who, { engine }).listen(["", 0]);
  await server.ready();
  const port = portOf(server);
  assert.deepEqual(server.localAddress, ["0.0.0.0", port]);
  const [r4] = await hello(port, "127.0.0.1");
  assert.deepEqual((r4 as unknown[]).length, 2, "IPv4 peers are plain 2-tuples");
  const [r6] = await hello(port, "::1");
  assert.equal((r6 as unknown[])[0], "::1");
  assert.equal(listens, 1, "onListen once, not for the slave");
  server.close();
  await sleep(10);
  await assert.rejects(connect(port, { host: "::1" }), /ECONNREFUSED/, "close() closes the slave too");
  await assert.rejects(connect(port, { host: "127.0.0.1" }), /ECONNREFUSED/);
});

test("a bare port number means [\"\", port]; slave false serves IPv4 only", { skip: !ipv6 && "no IPv6" }, async (t) => {
  const engine = freshEngine(t);
  const a = new Server(Who, { engine }).listen(0);
  await a.ready();
  t.after(() => a.close());
  await hello(portOf(a), "::1");
  const b = new Server(Who, { engine }).listen(["", 0], 1024, false);
  await b.ready();
  t.after(() => b.close());
  await hello(portOf(b), "127.0.0.1");
  await assert.rejects(connect(portOf(b), { host: "::1" }), /ECONNREFUSED/);
});

test('["", port, 0, 0] is one dual-stack socket: IPv4 peers appear IPv4-mapped', { skip: !ipv6 && "no IPv6" }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine }).listen(["", 0, 0, 0]);
  await server.ready();
  t.after(() => server.close());
  const local = server.localAddress as unknown[];
  assert.equal(local[0], "::");
  assert.equal(local.length, 4);
  const [r4] = await hello(portOf(server), "127.0.0.1");
  assert.equal((r4 as unknown[])[0], "::ffff:127.0.0.1");
  assert.equal((r4 as unknown[]).length, 4);
  await hello(portOf(server), "::1");
});

/** A link-local IPv6 address of this host and its interface's name and index, if any. */
const linkLocal = Object.entries(networkInterfaces())
  .flatMap(([name, list]) => (list ?? []).map((a) => ({ name, address: a.address, scopeid: a.family === "IPv6" ? (a.scopeid ?? 0) : 0 })))
  .find((a) => a.address.startsWith("fe80:") && a.scopeid > 0);

test("link-local IPv6: a 4-tuple's scopeid is used, and reported addresses carry it", { skip: linkLocal === undefined && "no link-local IPv6 address" }, async (t) => {
  const engine = freshEngine(t);
  const { name, address, scopeid } = linkLocal!;
  let accepted: Stream | null = null;
  class Keep extends Stream {
    override onConnect() {
      accepted = this;
    }
  }
  // The zone as a scope id (Pants' 4-tuple), or in the host (node:net's form): the same socket.
  for (const listenOn of [[address, 0, 0, scopeid], [`${address}%${name}`, 0]] as Address[]) {
    const server = new Server(Keep, { engine }).listen(listenOn);
    await server.ready();
    t.after(() => server.close());
    assert.deepEqual(server.localAddress, [address, portOf(server), 0, scopeid], `listening on ${JSON.stringify(listenOn)}`);
    // What the server reports is an address one can connect to.
    const client = new Stream({ engine }).connect(server.localAddress!);
    await client.ready();
    t.after(() => client.close(false));
    assert.deepEqual(client.remoteAddress, server.localAddress);
    assert.deepEqual((client.localAddress as unknown[]).slice(2), [0, scopeid]);
    await waitFor(() => accepted !== null, 5000, "the accept");
    assert.deepEqual(accepted!.remoteAddress, client.localAddress);
    assert.deepEqual(accepted!.localAddress, server.localAddress);
    accepted = null;
  }
});

test("host names are resolved asynchronously for listen as for connect", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine }).listen(["localhost", 0]);
  await server.ready();
  t.after(() => server.close());
  const [host] = server.localAddress as [string, number];
  assert.ok(host === "127.0.0.1" || host === "::1", host);
  const client = new Stream({ engine }).connect(["localhost", portOf(server)]);
  await client.ready();
  client.close();
});

test("UNIX sockets: listen, connect, the file is removed on close; stale files are replaced", async (t) => {
  const engine = freshEngine(t);
  const dir = tempDir(t);
  const path = join(dir, "app.sock");
  // A stale socket file, as a crashed process leaves it.
  spawnSync(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, "SIGKILL"))`]);
  assert.ok(existsSync(path), "the stale socket file exists");
  const server = new Server(Who, { engine }).listen(path);
  await server.ready();
  assert.equal(server.localAddress, path);
  const [remote, local] = await hello(path);
  assert.equal(typeof remote, "string");
  assert.equal(local, path);
  server.close();
  assert.equal(server.localAddress, null, "a closed server listens nowhere");
  await waitFor(() => !existsSync(path), 2000, "the socket file to be removed");
});

test("addresses outlive the socket: onClose after a peer's reset, a client closed while connecting, a UNIX stream after its server closed", async (t) => {
  const engine = freshEngine(t);
  const seen = new Map<Server | null, Array<[unknown, unknown]>>();
  class Logger extends Stream {
    override onClose() {
      seen.set(this.server, [...(seen.get(this.server) ?? []), [this.remoteAddress, this.localAddress]]);
    }
  }
  const closed = (by: Server | null) => seen.get(by) ?? [];
  const server = new Server(Logger, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  const c = net.connect(portOf(server), "127.0.0.1");
  c.on("error", () => {});
  await new Promise<void>((resolve) => c.once("connect", () => resolve()));
  await waitFor(() => server.channels.size === 1, 2000, "accepted");
  const clientPort = c.localPort!;
  c.resetAndDestroy();
  await waitFor(() => closed(server).length === 1, 2000, "onClose after the reset");
  assert.deepEqual(closed(server)[0], [["127.0.0.1", clientPort], ["127.0.0.1", portOf(server)]], "read first in onClose, after the reset");

  const client = new Logger({ engine }).connect(["127.0.0.1", portOf(server)]);
  client.close();
  await waitFor(() => closed(null).length === 1, 2000, "the client's onClose");
  assert.deepEqual(closed(null)[0]![0], ["127.0.0.1", portOf(server)], "a TCP client closed while connecting names its target, not a UNIX \"\"");

  const path = join(tempDir(t), "gone.sock");
  const unix = new Server(Logger, { engine }).listen(path);
  await unix.ready();
  const u = await connect(path);
  await waitFor(() => unix.channels.size === 1, 2000, "accepted");
  unix.close();
  u.end();
  await waitFor(() => closed(unix).length === 1, 2000, "the UNIX stream's onClose");
  assert.deepEqual(closed(unix)[0], ["", path], "the server's path, though the server closed first");
});

test("a live UNIX server whose accept queue is full is not taken for stale: EADDRINUSE, its file kept", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const path = join(tempDir(t), "busy.sock");
  // A live server that stops accepting (its loop blocked): connects beyond its backlog fail with EAGAIN.
  const busy = spawn(process.execPath, ["-e", `require("net").createServer().listen({ path: ${JSON.stringify(path)}, backlog: 1 }, () => {
    console.log("ready");
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 25000);
  })`], { stdio: ["ignore", "pipe", "inherit"] });
  t.after(() => busy.kill("SIGKILL"));
  await new Promise<void>((resolve) => busy.stdout!.once("data", () => resolve()));
  const queued: net.Socket[] = [];
  t.after(() => queued.forEach((c) => c.destroy()));
  let refusedWith = "";
  for (let i = 0; i < 16 && refusedWith === ""; i++) {
    const c = net.connect({ path });
    queued.push(c);
    refusedWith = await new Promise<string>((resolve) => {
      c.once("connect", () => resolve(""));
      c.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    });
  }
  assert.equal(refusedWith, "EAGAIN", "the live server's queue is full");
  const inode = statSync(path).ino;
  const server = new Server(Who, { engine }).listen(path);
  await assert.rejects(server.ready(), /EADDRINUSE/);
  assert.equal(statSync(path).ino, inode, "the live server's socket file is still its own");
});

test("a UNIX path held by a live server or a regular file is EADDRINUSE, never deleted", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const dir = tempDir(t);
  const live = join(dir, "live.sock");
  const a = new Server(Who, { engine }).listen(live);
  await a.ready();
  t.after(() => a.close());
  const b = new Server(Who, { engine }).listen(live);
  await assert.rejects(b.ready(), /EADDRINUSE/);
  const file = join(dir, "regular");
  writeFileSync(file, "keep me");
  const c = new Server(Who, { engine }).listen(file);
  await assert.rejects(c.ready(), /EADDRINUSE/);
  assert.ok(existsSync(file));
  await hello(live);
});

test("Linux abstract UNIX names", { skip: process.platform !== "linux" && "Linux only" }, async (t) => {
  const engine = freshEngine(t);
  const name = `\0pants-ts-test-${process.pid}-${Date.now()}`;
  const server = new Server(Who, { engine }).listen(name);
  await server.ready();
  t.after(() => server.close());
  await hello(name);
});

test("an abstract name is the one node:net uses on this Node: a python3 peer, binding by exact bytes, reaches it on libuv 1.48+ (Node 22) and not on Node 20's padded form", { skip: process.platform !== "linux" ? "Linux only" : spawnSync("python3", ["--version"]).status !== 0 && "python3 is not installed" }, async (t) => {
  const engine = freshEngine(t);
  const name = `\0pants-ts-py-${process.pid}-${Date.now()}`;
  const server = new Server(Who, { engine }).listen(name);
  await server.ready();
  t.after(() => server.close());
  await hello(name); // node:net agrees, on either transport
  const script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect(bytes.fromhex(sys.argv[1]))\n  print('reached')\nexcept ConnectionRefusedError:\n  print('refused')";
  const run = spawnSync("python3", ["-c", script, Buffer.from(name).toString("hex")], { encoding: "utf8", timeout: 10_000 });
  const [major = 0, minor = 0] = process.versions.uv.split(".").map(Number);
  const exact = major > 1 || (major === 1 && minor >= 48);
  assert.equal(run.stdout.trim(), exact ? "reached" : "refused", `libuv ${process.versions.uv}: ${run.stderr}`);
});

test("bind failure (EADDRINUSE): server closed, onError called, ready() rejects, nothing unhandled", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const first = new Server(Who, { engine }).listen(["127.0.0.1", 0]);
  await first.ready();
  t.after(() => first.close());
  const errors: Error[] = [];
  let closes = 0;
  class S extends Server {
    override onError(err: Error) {
      errors.push(err);
    }
    override onClose() {
      closes++;
    }
  }
  const escaped: unknown[] = [];
  const onUnhandled = (e: unknown) => escaped.push(e);
  process.on("unhandledRejection", onUnhandled);
  t.after(() => process.off("unhandledRejection", onUnhandled));
  const second = new S(Who, { engine }).listen(["127.0.0.1", portOf(first)]);
  // A third never asks for ready(): its failure must not be an unhandled rejection.
  new Server(Who, { engine }).listen(["127.0.0.1", portOf(first)]);
  await assert.rejects(second.ready(), (err: NodeJS.ErrnoException) => err.code === "EADDRINUSE");
  assert.equal(second.closed, true);
  assert.equal(closes, 1);
  // The third's default onError says it failed and closed, not that it keeps serving.
  await waitFor(() => logs.some((l) => /failed and closed/.test(l.msg)), 3000, "the default onError's line");
  assert.ok(!logs.some((l) => /keeps serving/.test(l.msg)));
  assert.equal(errors.length, 1);
  assert.equal((errors[0] as NodeJS.ErrnoException).code, "EADDRINUSE");
  await sleep(20);
  assert.deepEqual(escaped, []);
  assert.throws(() => second.listen(["127.0.0.1", 0]), ChannelStateError, "a closed server cannot listen again");
});

test("listen(port) when another program holds that port on IPv6 only: the listen fails (EADDRINUSE), as node:net's would, not IPv4 alone with IPv6 clients reaching the other program", { skip: !ipv6 && "no IPv6" }, async (t) => {
  const engine = freshEngine(t);
  const holder = net.createServer((c) => c.destroy());
  await new Promise<void>((resolve) => holder.listen({ host: "::", port: 0, ipv6Only: true }, () => resolve()));
  t.after(() => holder.close());
  const port = (holder.address() as net.AddressInfo).port;
  const errors: NodeJS.ErrnoException[] = [];
  class S extends Server {
    override onError(err: Error) {
      errors.push(err);
    }
  }
  const server = new S(Who, { engine }).listen(port);
  await assert.rejects(server.ready(), (err: NodeJS.ErrnoException) => err.code === "EADDRINUSE");
  assert.equal(server.closed, true);
  assert.deepEqual(errors.map((e) => e.code), ["EADDRINUSE"]);
  // Nothing is left listening on IPv4 either: the port is free there.
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => probe.once("error", reject).listen({ host: "0.0.0.0", port }, () => resolve()));
  await new Promise<void>((resolve) => probe.close(() => resolve()));
});

test("close() in the turn of listen(): nothing is left listening, for an IP literal, a host name, [\"\", port] and a UNIX path (node:net on Node 20 up to 20.10 at least listened after a refused close)", async (t) => {
  const engine = freshEngine(t);
  const dir = tempDir(t);
  for (const host of ["127.0.0.1", "localhost", ""]) {
    const port = await freePort();
    const server = new Server(Who, { engine }).listen([host, port]);
    server.close();
    await assert.rejects(server.ready(), ChannelStateError);
    await sleep(100);
    // The port is free: nothing holds it (nor keeps the process alive).
    const probe = net.createServer();
    await new Promise<void>((resolve, reject) => probe.once("error", reject).listen({ host: "127.0.0.1", port }, () => resolve()));
    await new Promise<void>((resolve) => probe.close(() => resolve()));
  }
  const path = join(dir, "soon.sock");
  new Server(Who, { engine }).listen(path).close();
  await sleep(100);
  assert.equal(existsSync(path), false, "no socket file is left");
});

test("a string that reads as host:port or as an IP address (node:net's and the CLI's form) is refused, not made a socket file of that name; \"./\" or a directory makes it one", async (t) => {
  const engine = freshEngine(t);
  const cases: Array<[string, RegExp]> = [
    ["127.0.0.1:0", /reads as host:port; pass \["127\.0\.0\.1", 0\], or "\.\/127\.0\.0\.1:0"/],
    ["localhost:8080", /pass \["localhost", 8080\]/],
    ["[::1]:8080", /pass \["::1", 8080\]/],
    [":8080", /pass \["", 8080\]/],
    ["0.0.0.0", /reads as an IP address; pass \["0\.0\.0\.0", port\]/],
    ["::1", /reads as an IP address/],
  ];
  for (const [address, message] of cases) {
    assert.throws(() => new Server(Who, { engine }).listen(address), (err: Error) => err instanceof InvalidAddressFormatError && message.test(err.message), address);
    assert.throws(() => new Stream({ engine }).connect(address), InvalidAddressFormatError, address);
    assert.equal(existsSync(address), false, `no socket file ${address} in the working directory`);
  }
  const path = join(tempDir(t), "127.0.0.1:8080");
  const server = new Server(Who, { engine }).listen(path);
  t.after(() => server.close());
  await server.ready();
  assert.equal(server.localAddress, path);
  const client = await connect(path);
  client.socket.destroy();
});

test("node:net's argument shapes get a TypeError naming the pants-ts form: listen(port, host), listen(port, cb), connect(port, host), connect(port, cb), write(data, encoding)", async (t) => {
  const engine = freshEngine(t);
  const hostForm = / is node:net's form: pass \[host, port\]\.$/;
  assert.throws(() => new Server(Who, { engine }).listen(0, "127.0.0.1" as never), (e: Error) => e instanceof TypeError && /^The backlog must be a positive integer, got "127\.0\.0\.1"\. listen\(port, host\)/.test(e.message) && hostForm.test(e.message));
  assert.throws(() => new Server(Who, { engine }).listen(0, (() => {}) as never), /listen\(\) takes no callback: await ready\(\), or override onListen\(\)\.$/);
  assert.throws(() => new Stream({ engine }).connect(1, "127.0.0.1" as never), (e: Error) => e instanceof TypeError && /^connect\(\) options must be an object, got "127\.0\.0\.1"\. connect\(port, host\)/.test(e.message) && hostForm.test(e.message));
  assert.throws(() => new Stream({ engine }).connect(1, (() => {}) as never), /connect\(\) takes no callback: await ready\(\), or override onConnect\(\)\.$/);
  let writeError: Error | null = null;
  class Hex extends Stream {
    override onConnect() {
      try {
        this.write("41", "hex" as never);
      } catch (err) {
        writeError = err as Error;
      }
      this.close();
    }
  }
  const port = await listenLocal(new Server(Hex, { engine }), t);
  const client = await connect(port);
  t.after(() => client.socket.destroy());
  await client.readToEnd();
  assert.match(String(writeError), /^TypeError: write\(\) expects flush to be a boolean, got "hex"\. It takes no encoding: encode the data first \(Buffer\.from\(data, "hex"\)\)\.$/);
});

test("listen() validates synchronously: bad addresses, twice, after close", (t) => {
  const engine = freshEngine(t);
  const bad: unknown[] = [null, undefined, {}, [], [1, 2], ["127.0.0.1"], ["127.0.0.1", 1, 2], ["127.0.0.1", 70000], ["127.0.0.1", -1], ["127.0.0.1", 1.5], ["127.0.0.1", NaN], 65536, -1, 2.5, "", true, ["::1", 1, -1, 0], ["127.0.0.1", 80, 0, 0], ["[::1]", 80], ["[::1]", 80, 0, 0], `/tmp/${"x".repeat(120)}.sock`, `\0${"y".repeat(110)}`, "4040", "0", " 8080", "0x50"];
  for (const address of bad) {
    const s = new Server(Who, { engine });
    assert.throws(() => s.listen(address as Address), InvalidAddressFormatError, `listen(${JSON.stringify(address)})`);
    assert.equal(s.listening, false);
    assert.throws(() => new Stream({ engine }).connect(address as Address), InvalidAddressFormatError);
  }
  const s = new Server(Who, { engine }).listen(["127.0.0.1", 0]);
  assert.throws(() => s.listen(["127.0.0.1", 0]), ChannelStateError);
  s.close();
  s.close(); // twice is a no-op
  assert.throws(() => s.listen(["127.0.0.1", 0]), ChannelStateError);
  assert.throws(() => s.listen(["127.0.0.1", 0], 0), ChannelStateError);
  assert.throws(() => new Server(Who, { engine }).listen(["127.0.0.1", 0], -5), RangeError);
});

test("a backlog beyond what listen(2) takes is capped, as the kernel caps it anyway", async (t) => {
  const engine = freshEngine(t);
  for (const backlog of [2 ** 31, 2 ** 40]) {
    const server = new Server(Who, { engine }).listen(["127.0.0.1", 0], backlog);
    await server.ready();
    await hello(["127.0.0.1", portOf(server)]);
    server.close();
  }
});

test("an invalid connect address leaves the stream usable (Pants B27)", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  const s = new Stream({ engine });
  assert.throws(() => s.connect(["127.0.0.1", 99999]), InvalidAddressFormatError);
  assert.equal(s.connecting, false);
  s.connect(["127.0.0.1", portOf(server)]);
  await s.ready();
  s.close();
});

test("ConnectionClass: constructor argument, else the class attribute", async (t) => {
  const engine = freshEngine(t);
  class Hi extends Stream {
    override onConnect() {
      this.write("hi");
      this.close();
    }
  }
  class HiServer extends Server {
    static override ConnectionClass = Hi;
  }
  const a = new HiServer(null, { engine });
  assert.equal(a.ConnectionClass, Hi);
  a.listen(["127.0.0.1", 0]);
  await a.ready();
  t.after(() => a.close());
  assert.equal((await (await connect(portOf(a))).readToEnd()).toString(), "hi");
  assert.equal(new Server(undefined, { engine }).ConnectionClass, Stream);
  assert.equal(new HiServer(Who, { engine }).ConnectionClass, Who);
  assert.throws(() => new Server(Object as unknown as typeof Stream, { engine }), TypeError);
});

test("server.channels holds open connections by id; close() closes them (onClose default)", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  const a = await connect(portOf(server));
  const b = await connect(portOf(server));
  await waitFor(() => server.channels.size === 2);
  const ids = [...server.channels.keys()];
  assert.ok(ids.every((id) => typeof id === "number"));
  for (const conn of server.channels.values()) assert.equal(conn.server, server);
  a.destroy();
  await waitFor(() => server.channels.size === 1, 5000, "a closed connection to leave channels");
  server.close();
  assert.equal(server.channels.size, 0);
  assert.equal(server.listening, false);
  await b.readToEnd();
  assert.equal(engine.channels.size, 0);
});

test("stream addresses can be overridden and restored", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  const s = new Stream({ engine }).connect(["127.0.0.1", portOf(server)]);
  await s.ready();
  assert.deepEqual(s.remoteAddress, ["127.0.0.1", portOf(server)]);
  const real = s.localAddress;
  s.remoteAddress = ["203.0.113.7", 1234];
  assert.deepEqual(s.remoteAddress, ["203.0.113.7", 1234]);
  s.localAddress = "/fake";
  assert.equal(s.localAddress, "/fake");
  s.remoteAddress = undefined;
  s.localAddress = undefined;
  assert.deepEqual(s.remoteAddress, ["127.0.0.1", portOf(server)]);
  assert.deepEqual(s.localAddress, real);
  assert.throws(() => (s.remoteAddress = [1, 2] as unknown as Address), InvalidAddressFormatError);
  assert.equal(typeof s.fileno, "number");
  s.close();
});

test("server addresses can be overridden by assignment and restored with undefined, as a stream's (TCP and UNIX)", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  const real = server.localAddress;
  const port = server.port;
  server.localAddress = ["203.0.113.7", 443];
  assert.deepEqual(server.localAddress, ["203.0.113.7", 443]);
  server.remoteAddress = ["198.51.100.1", 1234];
  assert.deepEqual(server.remoteAddress, ["198.51.100.1", 1234]);
  assert.equal(server.port, port, "port is the real one, as localAddresses are");
  assert.deepEqual(server.localAddresses, [real]);
  server.localAddress = null;
  assert.equal(server.localAddress, null);
  server.localAddress = undefined;
  server.remoteAddress = undefined;
  assert.deepEqual(server.localAddress, real);
  assert.equal(server.remoteAddress, null);
  assert.throws(() => (server.localAddress = [1, 2] as unknown as Address), InvalidAddressFormatError);
  assert.throws(() => (server.remoteAddress = {} as unknown as Address), InvalidAddressFormatError);
  assert.deepEqual(server.localAddress, real, "a rejected value changes nothing");
  // The override is what is reported; connections still go to the real port.
  server.localAddress = ["203.0.113.7", 443];
  const [, accepted] = await hello(real!);
  assert.deepEqual(accepted, real, "an accepted stream reports its own socket's address");

  const path = join(tempDir(t), "o.sock");
  const unix = new Server(Stream, { engine }).listen(path);
  await unix.ready();
  unix.localAddress = "/run/public.sock";
  assert.equal(unix.localAddress, "/run/public.sock");
  unix.localAddress = undefined;
  assert.equal(unix.localAddress, path);
  unix.close();
  await waitFor(() => !existsSync(path), 2000, "the real socket file (not the override) to be removed");
});

test("a Server can serve on a net.Server given as its socket option (listening or not yet)", async (t) => {
  const engine = freshEngine(t);
  const { default: netModule } = await import("node:net");
  const listening = netModule.createServer();
  await new Promise<void>((r) => listening.listen(0, "127.0.0.1", r));
  let listens = 0;
  class S extends Server {
    override onListen() {
      listens++;
    }
  }
  const a = new S(Who, { engine, socket: listening });
  await a.ready();
  t.after(() => a.close());
  assert.equal(listens, 1);
  assert.equal(a.listening, true);
  assert.throws(() => a.listen(["127.0.0.1", 0]), ChannelStateError, "already serving its socket");
  await hello(portOf(a));
  const later = netModule.createServer();
  const b = new Server(Who, { engine, socket: later });
  later.listen(0, "127.0.0.1");
  await b.ready();
  t.after(() => b.close());
  await hello(portOf(b));
  assert.throws(() => new Server(Who, { engine, socket: { fd: -1 } as never }), TypeError);
  // A listening UNIX socket handed over: its streams name the path as those of listen(path) do.
  const path = join(tempDir(t), "handed.sock");
  const unix = netModule.createServer();
  await new Promise<void>((r) => unix.listen(path, r));
  const c = new Server(Who, { engine, socket: unix });
  await c.ready();
  t.after(() => c.close());
  assert.equal(c.localAddress, path);
  assert.deepEqual(await hello(path), ["", path]);
});

test("a bind failure has the same shape on both transports (node:net's): syscall listen, address, port, the message naming the address", async (t) => {
  const engine = freshEngine(t);
  const dir = tempDir(t);
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
  t.after(() => blocker.close());
  const port = (blocker.address() as net.AddressInfo).port;
  const file = join(dir, "file");
  writeFileSync(file, "not a socket");
  const cases: Array<[Address, string, Record<string, unknown>]> = [
    [["127.0.0.1", port], `listen EADDRINUSE: address already in use 127.0.0.1:${port}`, { code: "EADDRINUSE", syscall: "listen", address: "127.0.0.1", port }],
    [file, `listen EADDRINUSE: address already in use ${file}`, { code: "EADDRINUSE", syscall: "listen", address: file, port: -1 }],
    [join(dir, "missing", "x.sock"), `listen EACCES: permission denied ${join(dir, "missing", "x.sock")}`, { code: "EACCES", syscall: "listen", address: join(dir, "missing", "x.sock"), port: -1 }],
  ];
  for (const [address, message, fields] of cases) {
    const server = new Server(Stream, { engine });
    server.onError = () => {};
    server.listen(address);
    const err = (await server.ready().then(
      () => assert.fail(`listening on ${String(address)} succeeded`),
      (e: unknown) => e,
    )) as NodeJS.ErrnoException & Record<string, unknown>;
    assert.ok(err.message.startsWith(message), `${err.message} (expected it to start with ${message})`);
    for (const [k, v] of Object.entries(fields)) assert.equal(err[k], v, `${k} of ${err.message}`);
    assert.equal(typeof err.errno, "number");
  }
});

test("an onAccept override that calls super.onAccept: the stream knows its addresses and fileno, as with the default onAccept", async (t) => {
  const engine = freshEngine(t);
  let seen: unknown[] = [];
  class Line extends Stream {
    override onConnect() {
      seen = [this.remoteAddress, this.localAddress, this.fileno !== null];
      this.close();
    }
  }
  let given: Address | null = null;
  // The guide's AuditedServer: log, then the default stream.
  class AuditedServer extends Server {
    override onAccept(socket: Duplex, address: Address): void {
      given = address;
      super.onAccept(socket, address);
    }
  }
  const port = await listenLocal(new AuditedServer(Line, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await c.readToEnd();
  const client = ["127.0.0.1", c.socket.localPort];
  assert.deepEqual(given, client);
  assert.deepEqual(seen, [client, ["127.0.0.1", port], true]);
});

test("onAccept of a TCP server is never given a UNIX-shaped address: a peer that reset before its connection was handled is closed at accept and counted as rejected; one that sent its request and a FIN is served", async (t) => {
  const engine = freshEngine(t);
  const given: Address[] = [];
  const events: string[] = [];
  class Conn extends Stream {
    override onConnect() {
      events.push("connect");
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      events.push(`read ${line}`);
    }
  }
  class Auditing extends Server {
    override onAccept(socket: Duplex, address: Address): void {
      given.push(address);
      super.onAccept(socket, address);
    }
  }
  const server = new Auditing(Conn, { engine });
  const port = await listenLocal(server, t);
  // Two peers that are done before this process can accept (its event loop
  // is blocked here): one reset its connection, one sent a line and its FIN.
  const reset = `const s = require("node:net").connect(${port}, "127.0.0.1", () => s.resetAndDestroy());`;
  const request = `const s = require("node:net").connect(${port}, "127.0.0.1", () => { process.stdout.write(String(s.localPort)); s.end("hi\\n", () => setTimeout(() => process.exit(0), 50)); });`;
  execFileSync(process.execPath, ["-e", reset], { timeout: 10_000 });
  const requestPort = Number(execFileSync(process.execPath, ["-e", request], { encoding: "utf8", timeout: 10_000 }));
  await waitFor(() => events.includes("read hi"), 5000, "the request to be read");
  assert.deepEqual(given, [["127.0.0.1", requestPort]], "only the live connection reached onAccept, with its address");
  assert.deepEqual(events, ["connect", "read hi"]);
  assert.equal(server.stats.rejected, 1, "the reset connection is counted as rejected");
  assert.equal(server.stats.accepted, 1);
});

test("an async onAccept whose peer reset while it awaited: the stream it makes closes at once (onClose, no onConnect) and frees its maxConnections slot", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Conn extends Stream {
    override onConnect() {
      events.push("connect");
      this.write("hello\n");
    }
    override onClose() {
      events.push("close");
    }
  }
  let accepted = 0;
  class Checking extends Server {
    // An async allow-list lookup, then the default stream.
    override async onAccept(socket: Duplex, address: Address) {
      const n = ++accepted;
      if (n === 1) await waitFor(() => (socket as Duplex & { destroyed: boolean }).destroyed, 5000, "the reset to reach the socket");
      super.onAccept(socket, address);
    }
  }
  const server = new Checking(Conn, { engine, maxConnections: 1 });
  const port = await listenLocal(server);
  const dead = await connect(port);
  await waitFor(() => accepted === 1, 5000, "the first accept");
  dead.socket.resetAndDestroy();
  await waitFor(() => events.length > 0, 5000, "an event of the dead connection");
  await sleep(50);
  assert.deepEqual(events, ["close"]);
  assert.equal(server.channels.size, 0);
  assert.equal(server.stats.open, 0);
  // Its slot is free: the next client is served, not rejected.
  const live = await connect(port);
  t.after(() => live.destroy());
  assert.equal(await live.readText(6), "hello\n");
  assert.equal(server.stats.rejected, 0);
});

test("close(): the default onClose closes every connection without flushing (megabytes queued for a peer that does not read are dropped)", async (t) => {
  const engine = freshEngine(t);
  const streams: Stream[] = [];
  class Flooder extends Stream {
    override onConnect() {
      streams.push(this);
      this.write(Buffer.alloc(64 << 20, 0x61));
    }
  }
  const server = new Server(Flooder, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  const c = await connect(portOf(server));
  c.socket.pause(); // reads nothing: a flushing close would wait for it
  await waitFor(() => streams.length === 1);
  await sleep(50);
  assert.ok(streams[0]!.bufferedAmount > 0, "bytes still queued");
  server.close();
  assert.equal(streams[0]!.closed, true, "closed by the server's close(), not left closing");
  assert.equal(server.channels.size, 0);
  c.socket.resume();
  const got = await c.readToEnd(10000);
  assert.ok(got.length < 64 << 20, `received ${got.length} bytes of 64 MiB`);
});

test('transport: "native" where the addon is not loaded (here: PANTS_TS_TRANSPORT=js) is an Error with code ERR_NATIVE_UNAVAILABLE', { skip: process.env.PANTS_TS_TRANSPORT !== "js" && "the addon is loaded" }, async (t) => {
  const engine = freshEngine(t);
  assert.throws(
    () => {
      const server = new Server(Stream, { engine, transport: "native" });
      t.after(() => server.close());
      server.listen(["127.0.0.1", 0]);
    },
    (err: Error & { code?: string }) => err.code === "ERR_NATIVE_UNAVAILABLE" && /native transport was asked for/.test(err.message),
  );
});
