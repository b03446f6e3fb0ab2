/**
 * runCluster: every core on node:cluster (Node 20 has no reusePort). The
 * primary forks workers that share the listening sockets, restarts crashed
 * ones with back-off, shuts all down gracefully on SIGTERM/SIGINT, and
 * replaces them one at a time on SIGHUP with no refused connection.
 */
import cluster from "node:cluster";
import type { Worker } from "node:cluster";
import { availableParallelism } from "node:os";
import { relative as relativePath, resolve as resolvePath } from "node:path";
import { liveServers, removeStaleSocket, retiredTotals, reusePortZero, staleSocketRemover } from "./server.js";
import type { PortClaim } from "./server.js";
import type { Server } from "./server.js";
import type { Address } from "./address.js";
import { addStats, globalEngineRunning, longTimeout, newStats } from "./engine.js";
import type { Stats } from "./engine.js";
import { log } from "./log.js";
import { lingeringClosed } from "./stream.js";
import { asError, codedError, describe, failureText, numberError, typeError } from "./errors.js";
import { isThenable } from "./channel.js";
import { checkOptionKeys, optionKeys } from "./options.js";

/** Options of {@link runCluster}. A key it does not know is ignored and logged once by the primary (a `warn` naming the nearest known key). */
export interface ClusterOptions {
  /** Worker processes to run (default: the number of cores). */
  workers?: number;
  /** Graceful shutdown deadline per worker, ms (default 10 000; 0: no deadline). A worker still running 5 s past it is killed. Kept whole however long (Node's own timers hold 2^31-1 ms, about 24.8 days). */
  shutdownTimeoutMs?: number;
  /** First restart delay after a crash, ms (at least 1; default 100); doubles, up to 30 s (or this delay, when longer), for each replacement that crashes within 10 s of its start (per worker slot). */
  restartDelayMs?: number;
  /** Called in the primary with the aggregated stats each time a worker reports (each does about once a second). What it throws or rejects with is logged; the primary carries on. */
  onStats?: (stats: ClusterStats) => void;
  /**
   * Descriptors every worker is forked with, at the same numbers: listening
   * sockets handed to the primary (systemd's socket activation), which each
   * worker serves itself with `new Server(C, { socket: { fd } })`, on the
   * native transport, while the primary keeps them open across restarts.
   * Sets the workers' `stdio` (cluster.setupPrimary). Default: none.
   */
  inheritFds?: readonly number[];
}

const CLUSTER_KEYS = optionKeys<ClusterOptions>({ workers: true, shutdownTimeoutMs: true, restartDelayMs: true, onStats: true, inheritFds: true });

/** Stats of every worker, summed, plus per-worker figures. */
export interface ClusterStats extends Stats {
  /** Worker processes alive now. */
  workers: number;
  /** Worker restarts after crashes so far. */
  restarts: number;
  /** The latest stats of each worker, by worker id. */
  perWorker: Record<number, Stats>;
}

/** What {@link runCluster} resolves with, in the primary and in each worker. */
export interface ClusterHandle {
  /** True in the primary process. */
  readonly isPrimary: boolean;
  /** The current stats: summed over every worker in the primary, this process's in a worker. */
  stats(): ClusterStats;
  /** Settles once the cluster (or, in a worker, this worker) has shut down. */
  readonly closed: Promise<void>;
  /** Primary only: graceful shutdown of every worker, as SIGTERM does; every call settles once they have exited. */
  shutdown(): Promise<void>;
  /**
   * Primary only: replace the workers one at a time, as SIGHUP does. Called
   * while a restart runs, it runs one more pass after it; settles when its pass is done.
   */
  restart(): Promise<void>;
}

type Message =
  | { pantsTs: "hello" }
  | { pantsTs: "clear-stale"; id: number; path: string }
  | { pantsTs: "stale-cleared"; id: number }
  | { pantsTs: "port-query"; id: number; key: string }
  | { pantsTs: "port-answer"; id: number; port: number }
  | { pantsTs: "port-bound"; key: string; port: number }
  | { pantsTs: "stats"; stats: Stats }
  | { pantsTs: "listening"; tls?: boolean; own?: Address[] }
  | { pantsTs: "shutdown"; timeoutMs: number }
  | { pantsTs: "drained" }
  | { pantsTs: "exit" }
  | { pantsTs: "failed"; message: string; code?: string; port?: number; stack?: string; started: boolean };

function isMessage(value: unknown): value is Message {
  return typeof value === "object" && value !== null && typeof (value as { pantsTs?: unknown }).pantsTs === "string";
}

/**
 * What a worker's message says of its servers when it is the one saying it
 * listens, else null (for the CLI's banner): whether one serves TLS, and the
 * addresses node:cluster's own event does not report (reusePort sockets).
 */
export function workerListening(message: unknown): { tls: boolean; own: Address[] } | null {
  if (!isMessage(message) || message.pantsTs !== "listening") return null;
  return { tls: message.tls === true, own: Array.isArray(message.own) ? message.own : [] };
}

/** The stats of every server in this process, summed (closed ones included). */
export function processStats(): Stats {
  const total = newStats();
  addStats(total, retiredTotals);
  for (const server of liveServers) addStats(total, server.stats);
  return total;
}

/**
 * Gracefully shuts down every server in this process, and waits for the
 * connections closed gracefully to finish lingering (until their peers
 * have read everything, 3 s at most, however long a linger may last): the
 * process exits next, and an exit under them would reset them and lose what
 * was still in flight.
 */
export async function shutdownAll(timeoutMs: number): Promise<void> {
  await Promise.all([...liveServers].map((s: Server) => s.shutdown({ timeoutMs })));
  await lingeringClosed();
}

/**
 * Calls the application's onStats. What it throws (or rejects with) is
 * logged: it runs in the primary, from a worker's message, where an
 * exception would end the primary and with it every worker.
 */
function reportStats(onStats: (stats: ClusterStats) => void, current: ClusterStats): void {
  const failed = (err: unknown): void => log.current.error({ err: asError(err, "onStats") }, "runCluster's onStats threw.");
  try {
    const result: unknown = onStats(current);
    if (result !== undefined && isThenable(result)) result.then(undefined, failed);
  } catch (err) {
    failed(err);
  }
}

/**
 * Runs `main` in `workers` processes sharing the listening sockets.
 * In a worker: runs `main` (which creates and listens its servers) and
 * resolves once they listen; the worker serves until the primary tells it
 * to shut down. In the primary: forks and supervises, resolves once every
 * worker listens; `handle.closed` settles after SIGTERM/SIGINT have shut
 * every worker down, and the primary then exits 0. The primary serves no
 * connection itself.
 * @throws Error (in the primary) with code `ERR_WORKER_START` when a worker
 * fails before it listens; its `cause` is that worker's error (message,
 * code and stack), and the other workers are stopped.
 */
export async function runCluster(main: () => unknown, options: ClusterOptions = {}): Promise<ClusterHandle> {
  if (typeof main !== "function") throw typeError(`runCluster() expects a function, got ${describe(main)}.`);
  if (options === null || typeof options !== "object") throw typeError(`runCluster() options must be an object, got ${describe(options)}.`);
  // Once, by the primary: its workers run the same call.
  if (cluster.isPrimary) checkOptionKeys("runCluster()", options, CLUSTER_KEYS);
  const workers = options.workers ?? availableParallelism();
  if (!Number.isSafeInteger(workers) || workers < 1) throw numberError(workers, `workers must be a positive integer, got ${describe(workers)}.`);
  const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 10_000;
  if (!Number.isSafeInteger(shutdownTimeoutMs) || shutdownTimeoutMs < 0) {
    throw numberError(shutdownTimeoutMs, `shutdownTimeoutMs must be a non-negative integer, got ${describe(shutdownTimeoutMs)}.`);
  }
  const restartDelayMs = options.restartDelayMs ?? 100;
  if (!Number.isSafeInteger(restartDelayMs) || restartDelayMs < 1) {
    throw numberError(restartDelayMs, `restartDelayMs must be a positive integer, got ${describe(restartDelayMs)}.`);
  }
  const inherit = options.inheritFds ?? [];
  if (!Array.isArray(inherit) || !inherit.every((fd) => Number.isSafeInteger(fd) && fd >= 0 && fd <= 2 ** 31 - 1)) {
    throw typeError(`inheritFds must be an array of descriptors (integers from 0), got ${describe(options.inheritFds)}.`);
  }
  if (cluster.isWorker) return runWorker(main);
  if (inherit.length > 0) {
    // Node forks a worker with stdio[i] at its descriptor i; the channel to
    // the primary goes after the highest one.
    const stdio: Array<number | "ignore" | "ipc"> = [];
    const top = Math.max(2, ...inherit);
    for (let fd = 0; fd <= top; fd++) stdio.push(fd <= 2 || inherit.includes(fd) ? fd : "ignore");
    stdio.push("ipc");
    cluster.setupPrimary({ stdio });
  }
  return runPrimary(workers, shutdownTimeoutMs, options);
}

/** A claim outside runCluster, or with the primary gone: this worker picks its own port. */
const pickOwn: PortClaim = { port: 0, settle: () => {} };

/** Set by the primary in its workers' environment (its pid): the parent speaks this module's messages. */
const PRIMARY_ENV = "PANTS_TS_CLUSTER_PRIMARY";

async function runWorker(main: () => unknown): Promise<ClusterHandle> {
  const send = (m: Message) => {
    if (process.connected) process.send?.(m);
  };
  const ourPrimary = process.env[PRIMARY_ENV] === String(process.ppid);
  delete process.env[PRIMARY_ENV]; // not for processes this worker starts
  // A stale UNIX socket is cleared by the primary, once, however many
  // workers find it: the primary binds the live one, so only there can the
  // check and the unlink not fall between another worker's and that bind.
  const clearing = new Map<number, () => void>();
  let nextClear = 0;
  const claiming = new Map<number, (port: number) => void>();
  let nextClaim = 0;
  /** The first worker to ask for `key` picks the port, and tells the primary which (0: it bound none). */
  const pickFirst = (key: string): PortClaim => {
    let settled = false;
    return {
      port: 0,
      settle: (port) => {
        if (settled) return;
        settled = true;
        send({ pantsTs: "port-bound", key, port });
      },
    };
  };
  if (ourPrimary) {
    staleSocketRemover.current = (path) => {
      if (path.startsWith("\0") || !process.connected) return removeStaleSocket(path);
      const id = nextClear++;
      return new Promise<void>((resolve) => {
        clearing.set(id, resolve);
        send({ pantsTs: "clear-stale", id, path: resolvePath(path) });
      });
    };
    // A reusePort server's port 0: the port the workers share, from the primary.
    reusePortZero.current = (key) => {
      if (!process.connected) return Promise.resolve(pickOwn);
      const id = nextClaim++;
      return new Promise<PortClaim>((resolve) => {
        claiming.set(id, (port) => resolve(port === 0 ? pickFirst(key) : { port, settle: () => {} }));
        send({ pantsTs: "port-query", id, key });
      });
    };
    // A primary that is gone answers nobody: listening then fails, or the worker exits anyway.
    process.once("disconnect", () => {
      for (const resolve of clearing.values()) resolve();
      clearing.clear();
      for (const resolve of claiming.values()) resolve(0);
      claiming.clear();
    });
  }
  let closedResolve: () => void = () => {};
  const closed = new Promise<void>((r) => (closedResolve = r));
  // Settles once main() has started this worker's servers (or failed).
  let startedResolve: () => void = () => {};
  const started = new Promise<void>((r) => (startedResolve = r));
  process.on("message", (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.pantsTs === "stale-cleared") {
      clearing.get(m.id)?.();
      clearing.delete(m.id);
    } else if (m.pantsTs === "port-answer") {
      claiming.get(m.id)?.(m.port);
      claiming.delete(m.id);
    } else if (m.pantsTs === "shutdown") {
      // A shutdown that comes while main() still runs waits for it (within the
      // deadline), so that servers it has yet to create are drained too. The
      // drain gets what is left of the deadline: the primary kills a worker
      // that is not done 5 s after it (0: no deadline; 1 ms: it has passed).
      // Durations by the monotonic clock: a wall-clock step (NTP, a VM resumed) moves neither deadline.
      const told = performance.now();
      const wait = m.timeoutMs > 0 ? Promise.race([started, new Promise<void>((r) => longTimeout(r, m.timeoutMs, true))]) : started;
      const left = () => (m.timeoutMs > 0 ? Math.max(1, m.timeoutMs - (performance.now() - told)) : 0);
      void wait.then(() => shutdownAll(left())).then(() => {
        send({ pantsTs: "stats", stats: processStats() });
        send({ pantsTs: "drained" });
      });
    } else if (m.pantsTs === "exit") {
      // The primary answers "drained" only after it has processed our servers'
      // close messages (one ordered channel), so every connection it handed us
      // before has been acknowledged (and handed to another worker) by now.
      closedResolve();
      process.disconnect?.();
      setTimeout(() => process.exit(0), 50).unref();
    }
  });
  // Node drops a message that arrives before anyone listens: until now (the
  // worker was loading), the primary has held its messages back.
  send({ pantsTs: "hello" });
  // The primary handles the signals; a worker ignores them and waits for its message.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => {});
  // The primary reports a failure (its log, or the start's rejection), once
  // for all its workers; a worker with no pants-ts primary logs its own.
  let listening = false;
  const failed = (err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    const { code, port } = e as { code?: unknown; port?: unknown };
    // port: -1 for a UNIX path (the CLI's hint tells a path from a port by it).
    send({ pantsTs: "failed", message: e.message, code: typeof code === "string" ? code : undefined, port: typeof port === "number" ? port : undefined, stack: e.stack, started: listening });
    if (!ourPrimary || !process.connected) log.current.error({ err }, "The worker's main function failed.");
    process.exit(1);
  };
  const running = (async () => main())();
  // A main that ends by awaiting Engine.instance().start() (SPEC's own
  // example; a CLI module that does so at its top level) settles only when the
  // engine stops: once the engine runs and main() has created its servers, the
  // worker has started and serves. (An engine started before main() has made
  // any server, while it still loads, is not a start: the worker would say it
  // listens before it does, and a failing listen would be a crash to restart.)
  let poll: ReturnType<typeof setInterval> | undefined;
  const engineStarted = new Promise<void>((resolve) => {
    poll = setInterval(() => globalEngineRunning() && liveServers.size > 0 && resolve(), 20);
    poll.unref();
  });
  try {
    await Promise.race([running, engineStarted]);
    await Promise.all([...liveServers].map((s) => s.ready()));
  } catch (err) {
    failed(err);
  } finally {
    clearInterval(poll);
  }
  startedResolve();
  running.catch(failed); // failing later (the engine started first) is a crash: the primary restarts the worker
  listening = true;
  // The addresses node:cluster does not tell the primary of: its event covers no reusePort socket.
  const own = [...liveServers].flatMap((s) => s._ownListenAddresses());
  send({ pantsTs: "listening", tls: [...liveServers].some((s) => s.sslEnabled), own });
  const timer = setInterval(() => send({ pantsTs: "stats", stats: processStats() }), 1000);
  timer.unref();
  const stats = (): ClusterStats => ({ ...processStats(), workers: 1, restarts: 0, perWorker: {} });
  const primaryOnly = () => Promise.reject(codedError("Only the primary process can do that (this is a worker).", "ERR_NOT_PRIMARY"));
  return { isPrimary: false, stats, closed, shutdown: primaryOnly, restart: primaryOnly };
}

/**
 * A worker's UNIX socket path (absolute) as node:cluster's primary binds it:
 * relative to the primary's cwd when that is shorter, since a socket
 * address holds 107 bytes (a longer one is cut, and a probe of it fails).
 */
function asPrimaryBinds(path: string): string {
  const relative = relativePath(process.cwd(), path);
  return path.length < relative.length ? path : relative;
}

function runPrimary(count: number, shutdownTimeoutMs: number, options: ClusterOptions): Promise<ClusterHandle> {
  const perWorker = new Map<number, Stats>();
  const retired = newStats();
  let restarts = 0;
  // The shutdown, once asked for (see stop()).
  let stopped: Promise<void> | null = null;
  let replacing: Promise<void> | null = null;
  let again: Promise<void> | null = null;
  const baseDelay = options.restartDelayMs ?? 100;
  // Back-off per worker slot: a crash-looping worker's replacements wait
  // longer each time, and no other worker's crash resets or inherits it.
  // A worker not in this map (a first one, a rolling restart's) starts at baseDelay.
  const slotDelay = new WeakMap<Worker, number>();
  // Restarts waiting out their delay: a shutdown cancels them, or one (up to
  // 30 s away) would hold the primary's exit after its workers are gone.
  const pendingRestarts = new Set<() => void>();
  // Workers whose rolling-restart replacement is starting: true once one of them crashed meanwhile.
  const beingReplaced = new Map<Worker, boolean>();
  // Exits the crash handler leaves alone: ones we asked for, and workers
  // that have not listened yet (a start that fails is reported, not retried).
  const expected = new Set<Worker>();
  // Weak: a crash-looping worker's entries go with the Worker object.
  const lastFork = new WeakMap<Worker, number>();
  // Why a worker failed to start, for the rejection of the cluster's start.
  const failures = new WeakMap<Worker, Error>();
  // Until the start settles, a worker's failure is the start's rejection, not a log line.
  let starting = true;
  // Messages for workers that have not said hello yet (still loading, so not
  // listening for messages: one sent now would be dropped, a lost "shutdown"
  // leaving the worker serving until the SIGKILL deadline, or forever).
  const unheard = new Map<Worker, Message[]>();
  // The stale UNIX socket check, once per path for the primary's life: the
  // socket found there later is the live one this primary bound for its
  // workers (a probe of it would be a stray connection to a worker; a
  // restarted worker's listen needs no check).
  const clearedStale = new Map<string, Promise<void>>();
  // reusePort servers' port 0, by key (a host, and the order of the workers'
  // listens on it): the first worker to ask picks (its OS does), the others
  // wait for that port and bind it too. Kept for the primary's life, so that
  // a replacement worker binds the port its predecessor served.
  const zeroPorts = new Map<string, { port: number; picker: Worker | null; waiting: Array<{ worker: Worker; id: number }> }>();

  const stats = (): ClusterStats => {
    const total = newStats();
    addStats(total, retired);
    for (const s of perWorker.values()) addStats(total, s);
    total.open = 0;
    total.pending = 0;
    total.lingering = 0;
    for (const s of perWorker.values()) {
      total.open += s.open;
      total.pending += s.pending;
      total.lingering += s.lingering ?? 0; // (a worker of an older pants-ts reports none)
    }
    const alive = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined && !w.isDead()).length;
    return { ...total, workers: alive, restarts, perWorker: Object.fromEntries(perWorker) };
  };
  let closedResolve: () => void = () => {};
  const closed = new Promise<void>((r) => (closedResolve = r));

  /**
   * A message to a worker that may be dying: one that has closed its channel
   * (it failed, or crashed, and its exit is not reaped yet) is about to exit,
   * and a send racing its exit fails with EPIPE. Neither may crash the primary.
   */
  const tell = (worker: Worker, message: Message) => {
    if (worker.isDead() || !worker.isConnected()) return;
    const held = unheard.get(worker);
    if (held !== undefined) {
      held.push(message);
      return;
    }
    worker.send(message, undefined, (err) => {
      if (err !== null && err !== undefined && log.debugOn()) log.current.debug(`Worker ${worker.process.pid} missed a message: ${err.message}`);
    });
  };

  const claimPort = (worker: Worker, id: number, key: string) => {
    const entry = zeroPorts.get(key);
    if (entry === undefined) {
      zeroPorts.set(key, { port: 0, picker: worker, waiting: [] });
      tell(worker, { pantsTs: "port-answer", id, port: 0 });
    } else if (entry.port !== 0) tell(worker, { pantsTs: "port-answer", id, port: entry.port });
    else entry.waiting.push({ worker, id });
  };
  /** The picker bound nothing (it failed, closed its server, or died): the next waiting worker picks. */
  const nextPicker = (key: string) => {
    const entry = zeroPorts.get(key)!;
    entry.picker = null;
    for (let next = entry.waiting.shift(); next !== undefined; next = entry.waiting.shift()) {
      if (next.worker.isDead()) continue;
      entry.picker = next.worker;
      tell(next.worker, { pantsTs: "port-answer", id: next.id, port: 0 });
      return;
    }
    zeroPorts.delete(key);
  };
  const portBound = (worker: Worker, key: string, port: number) => {
    const entry = zeroPorts.get(key);
    if (entry === undefined || entry.picker !== worker) return;
    if (!(Number.isSafeInteger(port) && port > 0 && port < 65536)) return nextPicker(key);
    entry.picker = null;
    entry.port = port;
    for (const { worker: waiter, id } of entry.waiting) tell(waiter, { pantsTs: "port-answer", id, port });
    entry.waiting = [];
  };

  const fork = (): Worker => {
    const worker = cluster.fork({ [PRIMARY_ENV]: String(process.pid) });
    lastFork.set(worker, performance.now());
    unheard.set(worker, []);
    // IPC errors are the send races above, or a channel failing as the worker
    // dies; its exit is handled below. Unlistened, one would kill the primary.
    worker.on("error", (err: Error) => {
      if (log.debugOn()) log.current.debug(`Worker ${worker.process.pid}: ${err.message}`);
    });
    worker.on("message", (m: unknown) => {
      if (!isMessage(m)) return;
      // Its first message (hello, or any from a worker of an older version)
      // says it listens for ours: send what was held back.
      const held = unheard.get(worker);
      if (held !== undefined) {
        unheard.delete(worker);
        for (const message of held) tell(worker, message);
      }
      if (m.pantsTs === "stats") {
        perWorker.set(worker.id, m.stats);
        if (options.onStats !== undefined) reportStats(options.onStats, stats());
      } else if (m.pantsTs === "drained") {
        tell(worker, { pantsTs: "exit" });
      } else if (m.pantsTs === "clear-stale" && typeof m.path === "string") {
        const { id, path } = m;
        let done = clearedStale.get(path);
        if (done === undefined) {
          done = removeStaleSocket(asPrimaryBinds(path)).catch(() => {});
          clearedStale.set(path, done);
        }
        void done.then(() => tell(worker, { pantsTs: "stale-cleared", id }));
      } else if (m.pantsTs === "port-query" && typeof m.key === "string") {
        claimPort(worker, m.id, m.key);
      } else if (m.pantsTs === "port-bound" && typeof m.key === "string") {
        portBound(worker, m.key, m.port);
      } else if (m.pantsTs === "failed") {
        // As the worker saw it: its message, code, port and stack.
        const err = Object.assign(new Error(m.message), m.code === undefined ? {} : { code: m.code }, m.port === undefined ? {} : { port: m.port });
        if (m.stack !== undefined) err.stack = m.stack;
        failures.set(worker, err);
        if (starting || stopped !== null) return; // the start's rejection says why; a stopping cluster has nothing to add
        log.current.error(`Worker ${worker.process.pid} ${m.started ? "failed" : "failed to start"}: ${failureText(err)}`);
      }
    });
    return worker;
  };

  /** A new worker, watched until it listens (true) or dies first (false; no restart). */
  const whenListening = (worker: Worker): Promise<boolean> =>
    new Promise((resolve) => {
      expected.add(worker);
      const onMessage = (m: unknown) => {
        if (isMessage(m) && m.pantsTs === "listening") {
          expected.delete(worker);
          done(true);
        }
      };
      const onExit = () => done(false);
      const done = (ok: boolean) => {
        worker.off("message", onMessage);
        worker.off("exit", onExit);
        resolve(ok);
      };
      worker.on("message", onMessage);
      worker.on("exit", onExit);
    });

  const retire = (worker: Worker): Promise<void> =>
    new Promise((resolve) => {
      expected.add(worker);
      if (worker.isDead()) return resolve();
      worker.once("exit", () => resolve());
      tell(worker, { pantsTs: "shutdown", timeoutMs: shutdownTimeoutMs });
      // A worker that does not finish in time is killed (0: no deadline, as in shutdown()).
      if (shutdownTimeoutMs > 0) {
        // Whole, however long: a deadline past Node's 2^31-1 ms timer is not cut to 24.8 days.
        longTimeout(
          () => {
            if (worker.isDead()) return;
            log.current.warn(`Worker ${worker.process.pid} was still draining ${shutdownTimeoutMs + 5000} ms after it was told to shut down; killing it.`);
            worker.process.kill("SIGKILL");
          },
          shutdownTimeoutMs + 5000,
          true,
        );
      }
    });

  return new Promise<ClusterHandle>((resolveReady, rejectReady) => {
    cluster.on("exit", (worker, code, signal) => {
      unheard.delete(worker);
      for (const [key, entry] of zeroPorts) if (entry.picker === worker) nextPicker(key);
      const last = perWorker.get(worker.id);
      if (last !== undefined) {
        // The connections it had open died with it (a crash): they count as closed.
        addStats(retired, { ...last, closed: last.closed + last.open, open: 0, pending: 0, lingering: 0 });
        perWorker.delete(worker.id);
      }
      if (expected.delete(worker)) return;
      if (stopped !== null) return;
      // A rolling restart is starting its replacement: that one takes its
      // place (a restart too would leave one worker more than asked for),
      // unless it fails to start; then replaceAll() restarts this one.
      if (beingReplaced.has(worker)) {
        log.current.warn(`Worker ${worker.process.pid} exited (${signal ?? code}) while its replacement was starting.`);
        beingReplaced.set(worker, true);
        return;
      }
      restartLater(worker, `exited (${signal ?? code})`);
    });

    /** A crashed worker's slot gets a new worker, after its back-off delay. */
    const restartLater = (worker: Worker, why: string) => {
      // One that ran for 10 s was healthy: its slot's back-off starts over.
      const livedMs = performance.now() - (lastFork.get(worker) ?? 0);
      const delay = livedMs > 10_000 ? baseDelay : (slotDelay.get(worker) ?? baseDelay);
      log.current.warn(`Worker ${worker.process.pid} ${why}; restarting in ${delay} ms.`);
      restarts++;
      const cancel = longTimeout(
        () => {
          pendingRestarts.delete(cancel);
          // Doubled up to 30 s, and never below restartDelayMs (which may be longer than that).
          if (stopped === null) slotDelay.set(fork(), Math.max(baseDelay, Math.min(delay * 2, 30_000)));
        },
        delay,
        false,
      );
      pendingRestarts.add(cancel);
    };

    // Called again (a second signal, shutdown() from code), it is the same
    // shutdown: every caller's promise settles once the workers are gone.
    const stop = (): Promise<void> =>
      (stopped ??= (async () => {
        log.current.info("Shutting down the cluster.");
        for (const cancel of pendingRestarts) cancel();
        pendingRestarts.clear();
        const all = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
        await Promise.all(all.map(retire));
        closedResolve();
      })());
    const replaceAll = async () => {
      log.current.info("Replacing workers one at a time.");
      // A worker that crashed already is being restarted by the crash handler.
      const old = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
      for (const worker of old) {
        if (stopped !== null) break;
        if (worker.isDead()) continue;
        // Start the replacement first, so capacity never drops to zero.
        const fresh = fork();
        beingReplaced.set(worker, false);
        const started = await whenListening(fresh);
        const crashed = beingReplaced.get(worker) === true;
        beingReplaced.delete(worker);
        if (!started) {
          if (stopped !== null) break;
          log.current.error("A replacement worker failed to start; keeping the old ones.");
          // The old one crashed meanwhile: it is restarted as any crashed worker.
          if (crashed) restartLater(worker, "had crashed while its replacement failed to start");
          break;
        }
        await retire(worker);
      }
    };
    // A restart asked for while one runs (a second deploy and reload) is one
    // more pass after it: the workers it replaced already may run older code.
    // Every caller's promise settles once its pass is done.
    const rollingRestart = (): Promise<void> => {
      if (stopped !== null) return Promise.resolve();
      if (replacing === null) {
        replacing = replaceAll().finally(() => (replacing = null));
        return replacing;
      }
      again ??= replacing.then(() => {
        again = null;
        return rollingRestart();
      });
      return again;
    };
    const handle: ClusterHandle = { isPrimary: true, stats, closed, shutdown: stop, restart: rollingRestart };
    process.on("SIGTERM", () => void stop());
    process.on("SIGINT", () => void stop());
    process.on("SIGHUP", () => void rollingRestart());
    const initial: Worker[] = [];
    for (let i = 0; i < count; i++) initial.push(fork());
    // Ready once every first worker listens. One that dies first fails the
    // start, as it would in one process: the others are stopped.
    let failed = false;
    void Promise.all(
      initial.map(async (worker) => {
        if ((await whenListening(worker)) || stopped !== null) return;
        failed = true;
        const cause = failures.get(worker);
        const message = cause?.message ?? `worker ${worker.process.pid} exited before it listened`;
        await stop();
        starting = false;
        rejectReady(Object.assign(new Error(`A worker failed to start: ${message}`, cause === undefined ? {} : { cause }), { code: "ERR_WORKER_START" }));
      }),
    ).then(() => {
      starting = false;
      if (!failed) resolveReady(handle);
    });
  });
}
