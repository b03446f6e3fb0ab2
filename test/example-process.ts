/**
 * Runs a repository program (an example) as a child process the way its
 * header says (`node --import tsx <file>`, PORT=0), waits for its one
 * "listening" line, and kills it when the test ends.
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { connect, sleep } from "./helpers.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));

export interface Running {
  port: number;
  proc: ChildProcess;
  /** Everything the process printed on stdout so far. */
  stdout(): string;
  /** Everything the process printed on stderr so far. */
  stderr(): string;
  /** Resolves with the exit code (or the signal's name) once the process has exited. */
  exited: Promise<number | string>;
}

/** Runs `node --import tsx <args>` in the repository; killed when `t` ends. Resolves once it printed a line. */
export async function start(t: TestContext, args: string[], env: Record<string, string> = {}): Promise<Running> {
  const proc = spawn(process.execPath, ["--import", "tsx", ...args], { cwd: ROOT, env: { ...process.env, PORT: "0", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  proc.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  proc.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
  const exited = new Promise<number | string>((resolve) => proc.once("exit", (code, signal) => resolve(code ?? signal ?? "?")));
  t.after(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  });
  const deadline = Date.now() + 30_000;
  while (!out.includes("\n")) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`${args.join(" ")} did not start.\nstdout: ${out}\nstderr: ${err}`);
    await sleep(20);
  }
  const port = Number(/:(\d+)\b/.exec(out)?.[1]);
  assert.ok(port > 0, `no port in ${JSON.stringify(out)}`);
  return { port, proc, stdout: () => out, stderr: () => err, exited };
}

/** Starts examples/<name>.ts with PORT=0 and checks its one line ("<name> listening on 127.0.0.1:<port>"). */
export async function startExample(t: TestContext, name: string, env: Record<string, string> = {}): Promise<Running> {
  const running = await start(t, [`examples/${name}.ts`], env);
  assert.match(running.stdout(), new RegExp(`^${name} listening on 127\\.0\\.0\\.1:${running.port}\\n$`));
  return running;
}

/** A process's resident memory, from /proc (0 where there is none). */
function residentBytes(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/**
 * A client of `server` that pipelines `request` (asking for `expected`
 * bytes of replies, more than a stream's 64 MiB writeBufferLimit), reads
 * nothing for a second, then reads: the server pauses reading at
 * writeHighWaterMark between the requests, so while the client stalls the
 * server holds a small part of the replies (its resident memory grows by
 * less than 32 MiB, where /proc tells), and once it reads, every reply
 * arrives and the connection stays open. What it got.
 */
export async function stalledReader(t: TestContext, server: Running, request: string | Buffer, expected: number): Promise<Buffer> {
  const stuck = await connect(server.port);
  t.after(() => stuck.destroy());
  const pid = server.proc.pid ?? 0;
  const before = residentBytes(pid);
  stuck.socket.pause(); // reads nothing
  stuck.write(request);
  let peak = before;
  for (let i = 0; i < 20; i++) {
    await sleep(50);
    peak = Math.max(peak, residentBytes(pid));
  }
  if (before > 0) assert.ok(peak - before < 32 * 1024 * 1024, `the server grew by ${peak - before} bytes while its client did not read`);
  stuck.socket.resume();
  const got = await stuck.read(expected, 20_000);
  await sleep(100);
  assert.equal(stuck.received.length, 0, "no more than the replies asked for");
  assert.equal(stuck.closed || stuck.ended, false, "a client that paused is not dropped");
  return got;
}
