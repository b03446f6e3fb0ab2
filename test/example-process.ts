/**
 * Runs a repository program (an example) as a child process the way its
 * header says (`node --import tsx <file>`, PORT=0), waits for its one
 * "listening" line, and kills it when the test ends.
 */
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
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

/**
 * A client of `port` that sends `request` and reads nothing for a second,
 * then reads what is left: what it got. Asks for more replies than a
 * stream's 64 MiB writeBufferLimit, so a server must drop it, and checks
 * that less than that reached it.
 */
export async function stalledReader(t: TestContext, port: number, request: string | Buffer): Promise<Buffer> {
  const stuck = await connect(port);
  t.after(() => stuck.destroy());
  stuck.socket.pause(); // reads nothing
  stuck.write(request);
  await sleep(1000);
  stuck.socket.resume();
  const got = await stuck.readToEnd(10_000);
  assert.ok(got.length < 64 * 1024 * 1024, `${got.length} bytes were still sent to a client that stopped reading`);
  return got;
}
