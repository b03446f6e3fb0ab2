/**
 * Sockets handed to the process: systemd's socket activation
 * (`--listen systemd`, `systemd:NAME`), a parent's descriptor (`--listen
 * fd:N`), and the `{ socket: { fd } }` option under them. The sockets are
 * made by test/fixtures/socket-activate.py, which does what systemd does
 * (listen, put them at descriptors 3..., exec with LISTEN_PID/LISTEN_FDS/
 * LISTEN_FDNAMES); it needs python3 (.ci/run installs it).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import type { ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { createSocket } from "node:dgram";
import { join } from "node:path";
import { Server, Stream, runCluster } from "../src/index.js";
import { nativeAddon } from "../src/native-socket.js";
import { ask, childPids, connect, freshEngine, tempDir, waitFor } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;
const bin = join(root, "bin", "pants-ts.js");
const activate = join(root, "test", "fixtures", "socket-activate.py");
const echo = join(root, "test", "fixtures", "cli-echo.ts");
const noPython = spawnSync("python3", ["--version"]).status === 0 ? false : "python3 is not installed (apt-get install python3)";
/** Where a server that may use the addon runs in this pass. */
const expected = process.env.PANTS_TS_TRANSPORT !== "js" && nativeAddon() !== null ? "native" : "js";

interface Activated {
  child: ChildProcess;
  /** Where each socket listens, as the fixture printed it (in descriptor order: 3, 4, ...). */
  sockets: Array<{ name: string; port?: number; path?: string }>;
  out: () => string;
  exited: Promise<number | null>;
}

/** Runs `pants-ts serve <args>` under the fixture, with `specs` (NAME=tcp, NAME=unix:PATH) passed as systemd passes sockets. */
async function activated(t: TestContext, specs: string[], args: string[], banners = 1): Promise<Activated> {
  const child = spawn("python3", [activate, ...specs, "--", process.execPath, bin, "serve", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const served = () => out.split("\n").filter((l) => l.startsWith("pants-ts: serving") || / workers serving /.test(l)).length >= banners;
  await waitFor(() => served() || child.exitCode !== null, 20000, `the banner; output: ${out}`);
  const sockets = JSON.parse(out.split("\n")[0]!) as Activated["sockets"];
  return { child, sockets, out: () => out, exited };
}

const targetOf = (s: { port?: number; path?: string }): number | string => s.port ?? s.path!;

/**
 * A bound UDP socket's descriptor. node:dgram has no public way to it: its
 * `_handle` (DEP0112) is gone in Node 26, so this finds the internal state
 * that holds the handle (its only own symbol-keyed object with one).
 */
function udpFd(udp: object): number {
  for (const key of Object.getOwnPropertySymbols(udp)) {
    const fd = ((udp as Record<symbol, unknown>)[key] as { handle?: { fd?: unknown } } | null)?.handle?.fd;
    if (typeof fd === "number" && fd >= 0) return fd;
  }
  throw new Error("no descriptor found on this node:dgram socket");
}

test("--listen systemd serves every socket systemd passed (TCP and UNIX), in this process (LISTEN_PID), on the native transport when built; SIGTERM exits 0", { skip: noPython, timeout: 60_000 }, async (t) => {
  const sock = join(tempDir(t), "admin.sock");
  const s = await activated(t, ["web=tcp", `admin=unix:${sock}`], [echo, "--listen", "systemd"], 2);
  assert.equal(s.sockets.length, 2);
  assert.match(s.out(), new RegExp(`pants-ts: serving CliEcho on 127\\.0\\.0\\.1:${s.sockets[0]!.port} .*, ${expected === "native" ? "native transport" : "node:net"}`));
  // node:net cannot learn the path of a UNIX socket it gets by descriptor: the banner names the descriptor.
  assert.match(s.out(), new RegExp(`pants-ts: serving CliEcho on ${expected === "native" ? `unix:${sock.replace(/[.]/g, "\\.")}` : "fd 4"}`));
  for (const socket of s.sockets) {
    assert.equal(await ask(targetOf(socket), "transport"), expected);
    assert.equal(await ask(targetOf(socket), "pid"), String(s.child.pid), "the process systemd started (exec kept its pid) serves");
    assert.equal(await ask(targetOf(socket), "hello"), "hello");
  }
  // Read, then removed (as sd_listen_fds(3) with unset_environment): a child process the module starts takes no socket for its own.
  assert.equal(await ask(s.sockets[0]!.port!, "env"), "");
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--listen systemd with a Linux abstract name (NUL bytes inside and at its end): the native server reads the name back exactly, as bound", { skip: process.platform !== "linux" ? "Linux only" : noPython || (expected === "js" && "node:net cannot learn the path of a UNIX socket it gets by descriptor"), timeout: 60_000 }, async (t) => {
  const name = `@pants@ts-${process.pid}@`;
  const s = await activated(t, [`admin=unix:${name}`], [echo, "--listen", "systemd"]);
  // The banner shows each NUL as "@": all three, the last one too.
  assert.match(s.out(), new RegExp(`pants-ts: serving CliEcho on unix:${name},`));
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--listen systemd:NAME serves the sockets of that FileDescriptorName= only; a name systemd did not pass is a usage error naming those it did", { skip: noPython, timeout: 60_000 }, async (t) => {
  const sock = join(tempDir(t), "admin.sock");
  const s = await activated(t, ["web=tcp", `admin=unix:${sock}`], [echo, "--listen", "systemd:admin"]);
  assert.match(s.out(), expected === "native" ? /pants-ts: serving CliEcho on unix:/ : /pants-ts: serving CliEcho on fd 4,/);
  assert.doesNotMatch(s.out(), /127\.0\.0\.1/);
  assert.equal(await ask(sock, "hello"), "hello");
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);

  const bad = await activated(t, ["web=tcp"], [echo, "--listen", "systemd:api"]);
  assert.equal(await bad.exited, 2);
  assert.match(bad.out(), /--listen systemd:api: systemd passed no socket named "api" \(it passed systemd:web; FileDescriptorName= names them\)/);
});

test("--listen systemd when the sockets were passed to another process (npm, npx or a shell in ExecStart=), or none were: a usage error saying so, exit 2", { skip: noPython, timeout: 60_000 }, async (t) => {
  const other = await activated(t, ["--pid", "1", "web=tcp"], [echo, "--listen", "systemd"]);
  assert.equal(await other.exited, 2);
  assert.match(other.out(), /the sockets were passed to process 1, not to this one \(\d+\): run node itself in ExecStart=/);
  const env = { ...process.env };
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  const none = spawnSync(process.execPath, [bin, "serve", echo, "--listen", "systemd"], { cwd: root, encoding: "utf8", env, timeout: 20_000 });
  assert.equal(none.status, 2);
  assert.match(none.stderr, /--listen systemd: no sockets were passed \(LISTEN_PID and LISTEN_FDS are not set: is the service started by a \.socket unit\?\)/);
});

test("--listen fd:N serves a listening socket the parent handed over at descriptor N; --reuse-port beside it is a usage error", { skip: noPython, timeout: 60_000 }, async (t) => {
  const s = await activated(t, ["--no-env", "a=tcp", "b=tcp"], [echo, "--listen", "fd:4"]);
  assert.match(s.out(), new RegExp(`pants-ts: serving CliEcho on 127\\.0\\.0\\.1:${s.sockets[1]!.port} `));
  assert.equal(await ask(s.sockets[1]!.port!, "transport"), expected);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);

  const reuse = spawnSync(process.execPath, [bin, "serve", echo, "--listen", "fd:3", "--reuse-port"], { cwd: root, encoding: "utf8", timeout: 20_000 });
  assert.equal(reuse.status, 2);
  assert.match(reuse.stderr, /--reuse-port binds the sockets it listens on; --listen fd:3 is bound already/);
});

test("a module that exports a Server on a handed descriptor ({ socket: { fd } }) is served as it is; --listen fd:N beside it is a usage error pointing there", { skip: noPython, timeout: 60_000 }, async (t) => {
  const module = join(root, "test", "fixtures", "cli-fd-server.ts");
  const s = await activated(t, ["--no-env", "web=tcp"], [module]);
  assert.match(s.out(), new RegExp(`pants-ts: serving CliEcho on 127\\.0\\.0\\.1:${s.sockets[0]!.port} .*, ${expected === "native" ? "native transport" : "node:net"}`));
  assert.equal(await ask(s.sockets[0]!.port!, "hello"), "hello");
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);

  const both = await activated(t, ["--no-env", "web=tcp"], [module, "--listen", "fd:3"]);
  assert.equal(await both.exited, 2);
  assert.match(both.out(), /--listen fd:3: a Server instance takes a handed socket in its own options \(\{ socket: \{ fd \} \}\)/);
});

/** Waits until `pid` has two children none of which is in `old`; returns them. */
async function twoNewWorkers(pid: number, old: number[], out: () => string): Promise<number[]> {
  let now: number[] = [];
  await waitFor(() => (now = childPids(pid)).length === 2 && now.every((p) => !old.includes(p)), 30000, `two new workers (before: ${old.join(", ")}; now: ${now.join(", ")}); output: ${out()}`);
  return now;
}

test("--workers with --listen systemd: every worker accepts on its own copy, on the native transport; after a SIGHUP, and after every worker is killed, the replacements still serve (the primary keeps the sockets)", { skip: noPython || (process.platform !== "linux" && "reads /proc"), timeout: 90_000 }, async (t) => {
  const s = await activated(t, ["web=tcp"], [echo, "--listen", "systemd", "--workers", "2"]);
  const port = s.sockets[0]!.port!;
  if (expected === "js") {
    // On node:net each worker would have its primary listen instead, which closes the socket when its last worker exits.
    assert.equal(await s.exited, 2);
    assert.match(s.out(), /--listen systemd:web with --workers needs the native transport \(each worker accepts on its own copy of the socket\)/);
    return;
  }
  assert.match(s.out(), /pants-ts: 2 workers serving .* on systemd:web \(fd 3\)/);
  const primary = s.child.pid!;
  let workers = await twoNewWorkers(primary, [], s.out);
  assert.equal(await ask(port, "transport"), "native");
  assert.ok(workers.includes(Number(await ask(port, "pid"))), "a worker answers");
  assert.equal(await ask(port, "env"), "", "a worker has no LISTEN_* variable, nor its primary's forwarding one");
  s.child.kill("SIGHUP");
  workers = await twoNewWorkers(primary, workers, s.out);
  assert.ok(workers.includes(Number(await ask(port, "pid"))), "a replacement answers");
  for (const pid of workers) process.kill(pid, "SIGKILL");
  workers = await twoNewWorkers(primary, workers, s.out);
  assert.ok(workers.includes(Number(await ask(port, "pid"))), "a worker restarted after the crash answers");
  assert.equal(await ask(port, "hello"), "hello");
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("runCluster({ inheritFds }): every worker is forked with the primary's socket and serves it itself ({ socket: { fd } }, native); killed, its replacement does too", { skip: noPython || (process.platform !== "linux" && "reads /proc") || (expected === "js" && "a worker serves a handed socket itself on the native transport only"), timeout: 90_000 }, async (t) => {
  const child = spawn("python3", [activate, "--no-env", "web=tcp", "--", process.execPath, "--import", "tsx", join(root, "test", "fixtures", "cluster-main.ts")], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, LISTEN_FD: "3", WORKERS: "2" },
  });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  await waitFor(() => out.split("\n").filter((l) => l.startsWith("listening ")).length >= 2 || child.exitCode !== null, 30000, `two workers listening; output: ${out}`);
  const port = (JSON.parse(out.split("\n")[0]!) as Activated["sockets"])[0]!.port!;
  assert.match(out, new RegExp(`listening ${port} \\d+\n[\\s\\S]*listening ${port} \\d+`), "each worker serves the handed socket's port");
  let workers = await twoNewWorkers(child.pid!, [], () => out);
  assert.equal(await ask(port, "transport"), "native");
  assert.ok(workers.includes(Number(await ask(port, "pid"))));
  for (const pid of workers) process.kill(pid, "SIGKILL");
  workers = await twoNewWorkers(child.pid!, workers, () => out);
  assert.ok(workers.includes(Number(await ask(port, "pid"))), `a replacement serves; output: ${out}`);
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
  await assert.rejects(runCluster(() => {}, { inheritFds: [-1] }), TypeError);
});

test("{ socket: { fd } } with a descriptor that is not a listening stream socket: ready() rejects and onError gets the listen error (ENOTSOCK, ENOTSUP natively; node:net says EINVAL)", async (t) => {
  const engine = freshEngine(t);
  const file = openSync(join(tempDir(t), "plain"), "w");
  t.after(() => closeSync(file));
  const udp = createSocket("udp4");
  await new Promise<void>((r) => udp.bind(0, "127.0.0.1", () => r()));
  t.after(() => udp.close());
  const errors: string[] = [];
  class Watched extends Server {
    override onError(err: Error): void {
      errors.push(`${(err as NodeJS.ErrnoException).syscall} ${(err as NodeJS.ErrnoException).code}`);
    }
  }
  for (const [fd, native] of [
    [file, "ENOTSOCK"],
    [udpFd(udp), "ENOTSUP"],
  ] as const) {
    const server = new Watched(Stream, { engine, socket: { fd } });
    const code = expected === "native" ? native : "EINVAL";
    await assert.rejects(server.ready(), (err: NodeJS.ErrnoException) => err.code === code && err.syscall === "listen");
    assert.equal(server.closed, true);
  }
  assert.deepEqual(errors, expected === "native" ? ["listen ENOTSOCK", "listen ENOTSUP"] : ["listen EINVAL", "listen EINVAL"]);
  if (expected === "native") {
    // A connected socket (systemd's Accept=yes passes those) is refused, and
    // left open: node:net's listen fails on it with EINVAL and closes it.
    const peer = net.createServer((c) => c.pipe(c));
    await new Promise<void>((r) => peer.listen(0, "127.0.0.1", () => r()));
    t.after(() => peer.close());
    const c = await connect((peer.address() as net.AddressInfo).port);
    t.after(() => c.destroy());
    const server = new Watched(Stream, { engine, socket: { fd: (c.socket as unknown as { _handle: { fd: number } })._handle.fd } });
    await assert.rejects(server.ready(), (err: NodeJS.ErrnoException) => err.code === "EISCONN" && err.syscall === "listen");
    c.write("still open\n");
    assert.equal(await c.readText(11), "still open\n");
  }
});

test('{ socket: { fd } } with transport: "native" where the addon is not loaded (here: PANTS_TS_TRANSPORT=js): ERR_NATIVE_UNAVAILABLE from the constructor, and the engine keeps no half-made server', { skip: expected === "native" && "the addon is loaded" }, (t) => {
  const engine = freshEngine(t);
  const file = openSync(join(tempDir(t), "plain"), "w");
  t.after(() => closeSync(file));
  assert.throws(
    () => new Server(Stream, { engine, transport: "native", socket: { fd: file } }),
    (err: Error & { code?: string }) => err.code === "ERR_NATIVE_UNAVAILABLE",
  );
  assert.equal(engine.channels.size, 0, "the server the constructor threw for is not among the engine's channels");
});
