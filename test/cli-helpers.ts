/**
 * What the tests of the pants-ts command share: running it, serving with it
 * until its banner, and the clients and files they drive it with.
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import tls from "node:tls";
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { connect, waitFor } from "./helpers.js";

export const root = new URL("..", import.meta.url).pathname;
export const bin = join(root, "bin", "pants-ts.js");
export const fixture = (name: string) => join(root, "test", "fixtures", name);

export function run(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: "utf8", timeout: 20000, env: { ...process.env, ...env } });
}

export interface Served {
  child: ChildProcess;
  out: () => string;
  exited: Promise<number | null>;
  /** The address the banner announced (the first "host:port" or unix path). */
  addresses: string[];
}

/** Runs `pants-ts serve ARGS` until its banner; killed after the test, even if this fails. */
export async function serve(t: TestContext, args: string[], expectLines = 1, cwd = root, env: Record<string, string> = {}): Promise<Served> {
  const child = spawn(process.execPath, [bin, "serve", ...args], { cwd, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  await waitFor(() => out.split("\n").filter((l) => l.startsWith("pants-ts: serving") || / workers serving /.test(l)).length >= expectLines || child.exitCode !== null, 20000, `the banner; output: ${out}`);
  const addresses = [...out.matchAll(/ on ((?:unix:)?[^\s(]+)/g)].map((m) => m[1]!);
  return { child, out: () => out, exited, addresses };
}

/** A port on 127.0.0.1 another listener holds for the rest of the test. */
export async function portInUse(t: TestContext): Promise<number> {
  const net = await import("node:net");
  const busy = net.createServer().listen(0, "127.0.0.1");
  t.after(() => busy.close());
  await new Promise((resolve) => busy.once("listening", resolve));
  return (busy.address() as import("node:net").AddressInfo).port;
}

/**
 * One TLS connection to an echo server on 127.0.0.1 (as localhost): whether
 * it resumed `session`, and the session (ticket) the server sent on it.
 */
export async function visitTls(t: TestContext, port: number, options: tls.ConnectionOptions, session?: Buffer): Promise<{ reused: boolean; session: Buffer }> {
  const socket = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ...options, ...(session ? { session } : {}) });
  t.after(() => socket.destroy());
  const sent = new Promise<Buffer>((resolve) => socket.once("session", resolve));
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  const reused = socket.isSessionReused();
  // An echo round trip: the tickets of TLS 1.3 come right after the handshake.
  socket.write("x\n");
  await new Promise<void>((resolve) => socket.once("data", () => resolve()));
  const next = reused ? (session as Buffer) : await sent;
  socket.destroy();
  return { reused, session: next };
}

export function portFrom(address: string): number {
  return Number(address.slice(address.lastIndexOf(":") + 1));
}

/** A stale UNIX socket at `path` (relative to `cwd`): what a killed server leaves behind. */
export function staleSocket(path: string, cwd?: string): void {
  spawnSync(process.execPath, ["-e", `require("net").createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, "SIGKILL"))`], { cwd });
  assert.ok(existsSync(join(cwd ?? "", path)), "the stale socket");
}

/** One line to `target` comes back; then SIGTERM, and the program exits 0. */
export async function echoesThenStops(s: Served, target: number | string): Promise<void> {
  const c = await connect(target);
  c.write("hi\n");
  assert.equal(await c.readText(3), "hi\n");
  c.destroy();
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
}

/** A client of `address` that sends `kib` KiB of 1 KiB lines and reads nothing yet (paused), half a second on. */
export async function flood(address: string, kib: number): Promise<import("node:net").Socket> {
  const net = await import("node:net");
  const client = net.connect(portFrom(address), "127.0.0.1");
  client.on("error", () => {});
  await new Promise<void>((resolve) => client.once("connect", () => resolve()));
  client.pause();
  const line = "x".repeat(1023) + "\n";
  for (let i = 0; i < kib; i++) client.write(line);
  await new Promise((resolve) => setTimeout(resolve, 500));
  return client;
}
