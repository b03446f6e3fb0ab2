/**
 * Child processes of the stress campaign: the server (server.ts) and the
 * load generator (load.ts), each started through bash so its descriptor
 * limit can be set (`ulimit -n`) before `exec node`, with an IPC channel
 * (the channel's descriptor survives the exec). Every child started here is
 * remembered and killed by {@link killAll} when the campaign ends, however
 * it ends.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Health, LoadJob, LoadReport, LoadRequest, Scenario, ServerConfig, ServerReply, ServerRequest } from "./protocol.js";

/** The descriptor limit asked for in children (capped at the hard limit when it is lower). */
export const WANT_NOFILE = 65536;

const SERVER_JS = fileURLToPath(new URL("../server.js", import.meta.url));
const LOAD_JS = fileURLToPath(new URL("../load.js", import.meta.url));

const children = new Set<ChildProcess>();

/** Kills every child still running (SIGKILL): the campaign's last word. */
export function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  children.clear();
}

/**
 * `ulimit -n` for the child: a number sets it (soft and hard; lowering is
 * always allowed), "max" raises it to WANT_NOFILE or, if the hard limit is
 * lower and cannot be raised, to the hard limit.
 */
export type Nofile = number | "max";

function launch(script: string, args: readonly string[], nofile: Nofile): ChildProcess {
  const ulimit = nofile === "max" ? `ulimit -n ${WANT_NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"` : `ulimit -n ${nofile}`;
  const child = spawn("bash", ["-c", `${ulimit} || exit 97; exec "$@"`, "stress", process.execPath, "--expose-gc", script, ...args], {
    stdio: ["ignore", "pipe", "pipe", "ipc"],
  });
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function exitText(child: ChildProcess): string | null {
  if (child.exitCode !== null) return `exited with code ${child.exitCode}`;
  if (child.signalCode !== null) return `killed by ${child.signalCode}`;
  return null;
}

/** A running server child. */
export class ServerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly auxPort: number | null;
  #stderr = "";
  #nextId = 1;
  #pending = new Map<number, { resolve: (h: Health) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  /** Set when the process ended without being asked to. */
  exitInfo: string | null = null;
  #stopping = false;

  private constructor(child: ChildProcess, port: number, auxPort: number | null, stderr: string) {
    this.child = child;
    this.port = port;
    this.auxPort = auxPort;
    this.#stderr = stderr;
    child.stderr?.on("data", (d: Buffer) => {
      if (this.#stderr.length < 20_000) this.#stderr += d.toString("utf8");
    });
    child.on("message", (m: ServerReply) => {
      if (m.op !== "health") return;
      const waiter = this.#pending.get(m.id);
      if (waiter === undefined) return;
      this.#pending.delete(m.id);
      clearTimeout(waiter.timer);
      waiter.resolve(m.health);
    });
    child.once("exit", () => {
      if (!this.#stopping) this.exitInfo = exitText(child) ?? "exited";
      for (const [, w] of this.#pending) {
        clearTimeout(w.timer);
        w.reject(new Error(`the server process ${this.exitInfo ?? "exited"}`));
      }
      this.#pending.clear();
    });
  }

  /** Starts a server child and waits for it to listen. */
  static async start(scenario: Scenario, config: ServerConfig, nofile: Nofile = "max", timeoutMs = 30_000): Promise<ServerProcess> {
    const child = launch(SERVER_JS, ["--scenario", scenario, "--options", JSON.stringify(config)], nofile);
    let stderr = "";
    const onErr = (d: Buffer): void => {
      stderr += d.toString("utf8");
    };
    child.stderr?.on("data", onErr);
    child.stdout?.resume();
    try {
      const ready = await new Promise<{ port: number; auxPort: number | null }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the server did not start within ${timeoutMs} ms`)), timeoutMs);
        child.on("message", (m: ServerReply) => {
          if (m.op === "ready") {
            clearTimeout(timer);
            resolve({ port: m.port, auxPort: m.auxPort });
          }
        });
        child.once("exit", () => {
          clearTimeout(timer);
          reject(new Error(`the server ${exitText(child) ?? "exited"} before listening: ${stderr.trim().slice(0, 2000)}`));
        });
      });
      child.stderr?.off("data", onErr);
      return new ServerProcess(child, ready.port, ready.auxPort, stderr);
    } catch (err) {
      if (child.exitCode === null) child.kill("SIGKILL");
      throw err;
    }
  }

  /** True while the process runs. */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything the child wrote to stderr. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Asks for a health report (after a forced GC if `gc`). */
  health(options: { gc?: boolean; resetPeak?: boolean } = {}, timeoutMs = 30_000): Promise<Health> {
    if (!this.alive || !this.child.connected) return Promise.reject(new Error(`the server process ${this.exitInfo ?? "is gone"}`));
    const id = this.#nextId++;
    return new Promise<Health>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`no health report within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      const request: ServerRequest = { op: "health", id, gc: options.gc ?? false, resetPeak: options.resetPeak ?? false };
      this.child.send(request);
    });
  }

  /** Polls health until `pred` holds; returns the last report (which may not satisfy it after `timeoutMs`). */
  async waitFor(pred: (h: Health) => boolean, timeoutMs: number, intervalMs = 50): Promise<Health> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const h = await this.health();
      if (pred(h) || Date.now() >= deadline) return h;
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  /** Asks the child to exit; kills it if it has not after `timeoutMs`. */
  async stop(timeoutMs = 5000): Promise<void> {
    this.#stopping = true;
    if (!this.alive) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    if (this.child.connected) this.child.send({ op: "exit" } satisfies ServerRequest);
    else this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}

/** A load child running one job; reports come as they happen. */
export class LoadProcess {
  readonly child: ChildProcess;
  #reports: LoadReport[] = [];
  #waiters: Array<() => void> = [];
  #stderr = "";

  constructor(job: LoadJob) {
    this.child = launch(LOAD_JS, ["--job", JSON.stringify(job)], "max");
    this.child.stdout?.resume();
    this.child.stderr?.on("data", (d: Buffer) => {
      if (this.#stderr.length < 20_000) this.#stderr += d.toString("utf8");
    });
    this.child.on("message", (m: LoadReport) => {
      this.#reports.push(m);
      this.#wake();
    });
    this.child.once("exit", () => this.#wake());
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Resolves with the first report of `phase`; rejects if the child exits first or after `timeoutMs`. */
  async next(phase: LoadReport["phase"], timeoutMs: number): Promise<LoadReport> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.#reports.find((r) => r.phase === phase);
      if (found !== undefined) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`the load process ${exitText(this.child) ?? "exited"} before reporting "${phase}": ${this.#stderr.trim().slice(0, 2000)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the load process did not report "${phase}" within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Tells a holding "concurrent" job to close its connections. */
  release(): void {
    if (this.child.connected) this.child.send({ op: "release" } satisfies LoadRequest);
  }

  /** Waits for the child to exit (killing it after `timeoutMs`). */
  async stop(timeoutMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}
