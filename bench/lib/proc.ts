/**
 * Processes for the benchmark: spawning with CPU pinning and a raised
 * descriptor limit, waiting for a server's READY line, running a client to
 * its end with a deadline, and reading CPU time and RSS from /proc.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { accessSync, constants, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { availableParallelism } from "node:os";
import { delimiter, join, sep } from "node:path";

const CLOCK_TICKS = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux

/** utime + stime of a process in seconds, or null if it is gone. */
export function cpuSeconds(pid: number): number | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  } catch {
    return null;
  }
  // The command name can hold spaces: count fields from after its closing parenthesis (field 3 on).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[14 - 3]);
  const stime = Number(fields[15 - 3]);
  return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) / CLOCK_TICKS : null;
}

/** Machine-wide CPU seconds (all CPUs): time spent running tasks, and time stolen by the hypervisor. */
export interface MachineCpu {
  /** user + nice + system: processes, ours and others (not interrupts or softirqs). */
  readonly tasks: number;
  readonly steal: number;
}

export function machineCpu(): MachineCpu | null {
  try {
    const line = readFileSync("/proc/stat", "latin1").split("\n", 1)[0]!;
    const [user, nice, system, , , , , steal] = line.trim().split(/\s+/).slice(1).map(Number);
    if (user === undefined || nice === undefined || system === undefined) return null;
    return { tasks: (user + nice + system) / CLOCK_TICKS, steal: (steal ?? 0) / CLOCK_TICKS };
  } catch {
    return null;
  }
}

/** Resident set size of a process in KiB, or null if it is gone. */
export function rssKiB(pid: number): number | null {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** Variables every process the benchmark starts inherits; nothing else is passed. */
const KEPT_VARIABLES = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"];

/**
 * The environment of every server and client the benchmark starts: the few
 * variables above (PATH without npm's node_modules/.bin entries), plus
 * `extra`. Not the caller's whole environment: its size moves the initial
 * stack, and so the layout of a process's memory, and a figure must not
 * depend on how the benchmark was started (uvloop's bulk echo ran at half
 * speed under `npm run bench` and at full speed under `node
 * dist/bench/run.js`, from the ~2 KB of npm_* variables alone). It also
 * keeps NODE_OPTIONS, PANTS_TS_* and the like of the caller's shell out.
 */
export function benchEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const name of KEPT_VARIABLES) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  if (env["PATH"] !== undefined) {
    env["PATH"] = env["PATH"]
      .split(delimiter)
      .filter((dir) => !dir.includes(`${sep}node_modules${sep}`) && !dir.endsWith(`${sep}node-gyp-bin`))
      .join(delimiter);
  }
  return { ...env, ...extra };
}

/** The full path of a program on PATH, or null. */
export function which(program: string): string | null {
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, program);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** How processes are placed on CPUs: the server on one core, the load generator on another. */
export interface Placement {
  readonly serverCpu: number | null;
  readonly clientCpu: number | null;
}

/** Pins with taskset when it exists and there are at least two CPUs. */
export function choosePlacement(pin: boolean): Placement {
  if (!pin || which("taskset") === null || availableParallelism() < 2) return { serverCpu: null, clientCpu: null };
  return { serverCpu: 1, clientCpu: 0 };
}

/** Maximum descriptors asked for in child processes (capped by the hard limit). */
export const NOFILE = 65536;

/**
 * argv wrapped so that it runs with the descriptor limit raised and pinned
 * to `cpu`. bash execs, so the child's pid is the program's own.
 */
export function wrapCommand(argv: readonly string[], cpu: number | null): string[] {
  const pinned = cpu === null ? [...argv] : ["taskset", "-c", String(cpu), ...argv];
  const script = `ulimit -n ${NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"`;
  return ["bash", "-c", script, "bench", ...pinned];
}

function spawnWrapped(argv: readonly string[], cpu: number | null, env: NodeJS.ProcessEnv): ChildProcess {
  const [command, ...args] = wrapCommand(argv, cpu);
  return spawn(command!, args, { env, stdio: ["pipe", "pipe", "pipe"] });
}

/** Keeps the last `limit` characters of a stream. */
function tail(limit: number): { add(chunk: Buffer): void; text(): string } {
  let text = "";
  return {
    add(chunk) {
      text = (text + chunk.toString("utf8")).slice(-limit);
    },
    text: () => text,
  };
}

export interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly seconds: number;
}

export interface RunOptions {
  readonly cpu: number | null;
  readonly timeoutMs: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** Runs a client to its end; kills it (and reports code null) at the deadline. */
export function runToEnd(argv: readonly string[], options: RunOptions): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawnWrapped(argv, options.cpu, options.env ?? benchEnv());
    child.stdin!.end();
    let stdout = "";
    const stderr = tail(4000);
    child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr!.on("data", (chunk: Buffer) => stderr.add(chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr: stderr.text(), seconds: (performance.now() - started) / 1000 });
    });
  });
}

/** A long-running child (a server, or the idle load generator) read line by line. */
export class LiveProcess {
  readonly child: ChildProcess;
  readonly #stderr = tail(4000);
  #lines: string[] = [];
  #partial = "";
  #waiter: (() => void) | null = null;
  #exited: Promise<void>;
  #exitCode: number | null | undefined = undefined;

  constructor(argv: readonly string[], cpu: number | null, env: NodeJS.ProcessEnv) {
    this.child = spawnWrapped(argv, cpu, env);
    this.child.stdout!.on("data", (chunk: Buffer) => {
      const parts = (this.#partial + chunk.toString("utf8")).split("\n");
      this.#partial = parts.pop()!;
      this.#lines.push(...parts);
      this.#wake();
    });
    this.child.stderr!.on("data", (chunk: Buffer) => this.#stderr.add(chunk));
    this.#exited = new Promise((resolve) => {
      this.child.on("close", (code) => {
        this.#exitCode = code;
        this.#wake();
        resolve();
      });
      this.child.on("error", () => {
        this.#exitCode = null;
        this.#wake();
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get stderr(): string {
    return this.#stderr.text();
  }

  get exited(): boolean {
    return this.#exitCode !== undefined;
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  /** The next stdout line starting with `prefix`, or matching it (earlier lines are dropped). */
  async waitForLine(prefix: string | RegExp, timeoutMs: number, what: string): Promise<string> {
    const deadline = performance.now() + timeoutMs;
    const wanted = typeof prefix === "string" ? (line: string) => line.startsWith(prefix) : (line: string) => prefix.test(line);
    const shown = typeof prefix === "string" ? `a ${prefix}line` : `a line matching ${String(prefix)}`;
    for (;;) {
      while (this.#lines.length > 0) {
        const line = this.#lines.shift()!;
        if (wanted(line)) return line;
      }
      if (this.exited) {
        throw new Error(`${what} exited (code ${String(this.#exitCode)}) before printing ${shown}: ${this.stderr.trim().slice(-600)}`);
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`${what} printed no such line (${shown}) within ${timeoutMs} ms: ${this.stderr.trim().slice(-600)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Everything printed on stdout so far that was not consumed by waitForLine. */
  drainOutput(): string {
    const out = [...this.#lines, this.#partial].join("\n");
    this.#lines = [];
    this.#partial = "";
    return out;
  }

  closeStdin(): void {
    this.child.stdin?.end();
  }

  /** Resolves when it exited; SIGKILL after `graceMs` if it has not. */
  async waitExit(graceMs: number): Promise<number | null> {
    if (!this.exited) {
      const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    return this.#exitCode ?? null;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 2000): Promise<void> {
    if (!this.exited) this.child.kill("SIGTERM");
    await this.waitExit(graceMs);
  }
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago, for a server that
 * cannot pick its own (redis-server): the OS picks it, then it is released.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen({ host: "127.0.0.1", port: 0 }, () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => (port > 0 ? resolve(port) : reject(new Error("could not find a free port"))));
    });
  });
}

/** The key=value pairs of the "RESULT ..." line in a load generator's output. */
export function parseResultLine(output: string): Record<string, number | string> {
  const line = output.split("\n").find((l) => l.startsWith("RESULT "));
  if (line === undefined) throw new Error(`no RESULT line in: ${output.trim().slice(-400) || "(no output)"}`);
  const result: Record<string, number | string> = {};
  for (const pair of line.slice("RESULT ".length).trim().split(/\s+/)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) continue;
    const raw = pair.slice(eq + 1);
    const value = Number(raw);
    result[pair.slice(0, eq)] = raw !== "" && Number.isFinite(value) ? value : raw;
  }
  return result;
}
