/**
 * Engine: the registry of channels and timers, the owner of start/stop.
 * Node's own event loop does the polling.
 */
import { performance } from "node:perf_hooks";
import { log, nameOf } from "./log.js";
import { asError, describe, numberError, rangeError, typeError, unboundError } from "./errors.js";
import { TimeoutSweeper } from "./timeouts.js";
import { checkOptionKeys, optionKeys } from "./options.js";
import type { Channel } from "./channel.js";

/** A scheduled function; cancel it by calling `cancel()` on this very object. */
export interface Timer {
  /** Stops the timer; a no-op once it has run or been cancelled. */
  cancel(): void;
  /** True until the timer has run (once-timers) or has been cancelled. */
  readonly active: boolean;
}

/**
 * Counters of an engine or a server. A server's count its own connections;
 * an engine's count every stream of that engine, client streams included,
 * and what its servers refused. Bytes are the application's: over TLS the
 * plaintext (not records or handshakes), and never a PROXY header.
 */
export interface Stats {
  /** Connections open now (an engine's: client streams from `connect()` on, before they are established). */
  open: number;
  /**
   * Connections a server has taken from the listen queue that have no
   * stream yet: waiting for their PROXY header, or held by an async
   * `onAccept` override. They hold their places under `maxConnections`
   * (an engine's: the sum over its servers).
   */
  pending: number;
  /**
   * Closed connections whose sockets still linger (reading and discarding
   * until the peer is done, so the close is not a reset: see the guide,
   * "Closing"). Each holds a descriptor; a server's count under its
   * `maxConnections` (an engine's: client streams' too).
   */
  lingering: number;
  /** Connections accepted (servers: at accept, before a TLS handshake) or established (clients) so far. */
  accepted: number;
  /** Connections refused at accept (`maxConnections`, a bad, missing or late PROXY header, TLS wrap failure, a TCP peer that reset before an `onAccept` override could be given it). */
  rejected: number;
  /** Connections closed so far, of those counted in `accepted` (a failed client connect is in neither). */
  closed: number;
  /** Bytes received, once each (native transport: the start of a frame the addon holds counts once the frame completes, or the connection ends). */
  bytesIn: number;
  /** Bytes written and handed to the socket (some may still wait in its queue, or be lost to a reset). */
  bytesOut: number;
  /** Errors of every kind (handler exceptions, socket errors, overflows, timeouts), each counted once. */
  errors: number;
  /** Errors by kind: `handler`, `read`, `write`, `connect`, `overflow`, `timeout` (idle), `tls` (a handshake that failed or timed out), `accept`, `proxy` (a header refused), `listen`; an engine's also `timer` (a timer function that threw or rejected). */
  errorsByKind: Record<string, number>;
}

/** A fresh, zeroed {@link Stats} object. */
export function newStats(): Stats {
  return { open: 0, pending: 0, lingering: 0, accepted: 0, rejected: 0, closed: 0, bytesIn: 0, bytesOut: 0, errors: 0, errorsByKind: {} };
}

/** Adds one error of `kind` to every stats object given. */
export function countError(kind: string, a: Stats, b?: Stats | null): void {
  a.errors++;
  a.errorsByKind[kind] = (a.errorsByKind[kind] ?? 0) + 1;
  if (b) {
    b.errors++;
    b.errorsByKind[kind] = (b.errorsByKind[kind] ?? 0) + 1;
  }
}

/** Adds the counters of `add` into `into`. */
export function addStats(into: Stats, add: Stats): void {
  into.open += add.open;
  into.pending += add.pending;
  into.lingering += add.lingering;
  into.accepted += add.accepted;
  into.rejected += add.rejected;
  into.closed += add.closed;
  into.bytesIn += add.bytesIn;
  into.bytesOut += add.bytesOut;
  into.errors += add.errors;
  for (const [k, v] of Object.entries(add.errorsByKind)) into.errorsByKind[k] = (into.errorsByKind[k] ?? 0) + v;
}

/** A function a timer calls with its arguments; it may return a promise. */
export type TimerFn<A extends unknown[]> = (...args: A) => unknown;

let timerSeq = 0;

/**
 * The manual clock's due timers: a binary min-heap by due time, then by
 * creation, so advance() finds the next one without looking at them all.
 * Cancelled timers leave it lazily, when they reach the top.
 */
class DueQueue {
  #heap: EngineTimer[] = [];
  /** Cancelled timers still in the heap. */
  #stale = 0;

  /** A timer in the heap was cancelled: past half the heap, the stale ones are dropped at once (no growth under cancel churn). */
  cancelled(): void {
    if (++this.#stale <= 64 || this.#stale * 2 <= this.#heap.length) return;
    const live = this.#heap.filter((timer) => timer.active);
    this.#heap = [];
    this.#stale = 0;
    for (const timer of live) this.push(timer);
  }

  push(timer: EngineTimer): void {
    const heap = this.#heap;
    let i = heap.push(timer) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(timer, heap[parent]!)) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = timer;
  }

  /** The next active timer, left in place; null when none is left. */
  peek(): EngineTimer | null {
    const heap = this.#heap;
    while (heap.length > 0 && !heap[0]!.active) {
      this.pop();
      if (this.#stale > 0) this.#stale--;
    }
    return heap.length > 0 ? heap[0]! : null;
  }

  pop(): EngineTimer | null {
    const heap = this.#heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined) return null;
    if (heap.length > 0) {
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= heap.length) break;
        const right = left + 1;
        const child = right < heap.length && before(heap[right]!, heap[left]!) ? right : left;
        if (!before(heap[child]!, last)) break;
        heap[i] = heap[child]!;
        i = child;
      }
      heap[i] = last;
    }
    return top;
  }
}

function before(a: EngineTimer, b: EngineTimer): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}

const ONCE_IMMEDIATE = 0;
const LOOP = 1;
const ONCE_DELAY = 2;
const CYCLE = 3;

class EngineTimer implements Timer {
  #engine: Engine | null;
  #fn: (...args: unknown[]) => unknown;
  #args: unknown[];
  #kind: number;
  #handle: ReturnType<typeof setTimeout> | ReturnType<typeof setImmediate> | null = null;
  #runBound: () => void;
  /** Real clock, a delay longer than one Node timer holds: cancels the legs in flight (longTimeout). */
  #cancelLong: (() => void) | null = null;

  /** Manual clock: when (engine time) this timer is next due, and its period. */
  due = 0;
  readonly period: number;
  /** Manual clock: creation order, which breaks ties between equal due times. */
  readonly seq: number;

  constructor(engine: Engine, kind: number, delay: number, fn: (...args: unknown[]) => unknown, args: unknown[]) {
    this.#engine = engine;
    this.#fn = fn;
    this.#args = args;
    this.#kind = kind;
    // Node runs a timer of under 1 ms after 1 ms; the manual clock does too,
    // so a tiny cycle period cannot stall advance() on a due that never moves.
    this.period = Math.max(1, delay);
    this.seq = timerSeq++;
    const run = (this.#runBound = () => this.#run());
    if (kind === ONCE_IMMEDIATE || kind === LOOP) this.#handle = setImmediate(run);
    else if (engine.manualClock) {
      this.due = engine.time() + this.period;
      engine._due.push(this);
    } else if (delay > MAX_TIMER_MS) this.#armLong();
    else if (kind === ONCE_DELAY) this.#handle = setTimeout(run, delay);
    else this.#handle = setInterval(run, delay);
  }

  /** A delay longer than one Node timer holds (Node fires it after 1 ms): waited in legs. */
  #armLong(): void {
    this.#cancelLong = longTimeout(
      () => {
        if (this.#engine === null) return;
        // A cycle's next period is armed first, so the function may cancel it.
        if (this.#kind === CYCLE) this.#armLong();
        this.#run();
      },
      this.period,
      false,
    );
  }

  /** @internal Manual clock: runs the timer now (it is due and has been taken off the queue). */
  _fire(engine: Engine): void {
    if (this.#kind === CYCLE) {
      this.due += this.period;
      engine._due.push(this);
    }
    this.#run();
  }

  get active(): boolean {
    return this.#engine !== null;
  }

  cancel(): void {
    const engine = this.#engine;
    if (engine === null) return;
    this.#engine = null;
    this.#cancelLong?.();
    this.#cancelLong = null;
    const handle = this.#handle;
    this.#handle = null;
    if (handle !== null) {
      if (this.#kind === ONCE_IMMEDIATE || this.#kind === LOOP) clearImmediate(handle as ReturnType<typeof setImmediate>);
      else clearTimeout(handle as ReturnType<typeof setTimeout>);
    }
    engine._timers.delete(this);
    if (engine.manualClock && (this.#kind === ONCE_DELAY || this.#kind === CYCLE)) engine._due.cancelled();
  }

  #run(): void {
    const engine = this.#engine;
    if (engine === null) return;
    const once = this.#kind === ONCE_IMMEDIATE || this.#kind === ONCE_DELAY;
    if (once) {
      this.#engine = null;
      this.#handle = null;
      engine._timers.delete(this);
    }
    try {
      // A plain call: `this` is undefined, not the timer (a method passed on by itself then says so).
      const fn = this.#fn;
      const result = fn(...this.#args);
      if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
        (result as PromiseLike<unknown>).then(undefined, (err: unknown) => timerFailed(engine, err));
      }
    } catch (err) {
      timerFailed(engine, err);
    }
    // A loop re-arms only if it was not cancelled from inside its own function.
    if (this.#kind === LOOP && this.#engine !== null) this.#handle = setImmediate(this.#runBound);
  }
}

function timerFailed(engine: Engine, err: unknown): void {
  countError("timer", engine.stats);
  log.current.error({ err: asError(err, "A timer") }, "Exception raised while executing a timer.");
}

/** @internal The longest delay a Node timer keeps: a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2147483647;

/**
 * @internal `setTimeout` for a delay of any length: Node fires one longer
 * than {@link MAX_TIMER_MS} after 1 ms, so a longer one waits in legs, as
 * engine timers do. `unref`: it does not keep the process alive.
 * @returns Its cancel.
 */
export function longTimeout(fn: () => void, ms: number, unref: boolean): () => void {
  let left = ms;
  let handle: ReturnType<typeof setTimeout>;
  const arm = (): void => {
    const leg = Math.min(left, MAX_TIMER_MS);
    left -= leg;
    handle = setTimeout(left > 0 ? arm : fn, leg);
    if (unref) handle.unref();
  };
  arm();
  return () => clearTimeout(handle);
}

function checkDelay(name: string, delay: unknown): number {
  if (typeof delay !== "number" || !Number.isFinite(delay) || delay <= 0) {
    // SPEC §3: RangeError for any delay that is not a positive finite number, a string too.
    throw rangeError(`${name} must be a positive finite number of milliseconds, got ${describe(delay)}.`);
  }
  return delay;
}

function checkFn(fn: unknown): void {
  if (typeof fn !== "function") throw typeError(`The timer function must be a function, got ${typeof fn}.`);
}

/** How many times stop() closes what the closes before opened, before it gives up and warns. */
const STOP_ROUNDS = 16;

let globalEngine: Engine | null = null;

/** @internal True when the global engine exists and runs (it is not made for the asking). */
export function globalEngineRunning(): boolean {
  return globalEngine?.running ?? false;
}

/** Options of the {@link Engine} constructor. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface EngineOptions {
  /**
   * A manual clock, for tests: `time()` stands still, and `defer`/`cycle`
   * timers and connection timeouts fire only when `advance(ms)` is called
   * (`pants-ts/testing` uses it). Default false: real time.
   */
  manualClock?: boolean;
}

const ENGINE_KEYS = optionKeys<EngineOptions>({ manualClock: true });

/**
 * The registry of channels and timers. `Engine.instance()` is the global
 * engine that channels use by default; `new Engine()` makes an isolated one.
 */
export class Engine {
  /** @internal */ readonly _timers = new Set<EngineTimer>();
  /** @internal */ readonly _channels = new Set<Channel>();
  /** @internal */ readonly _sweeper: TimeoutSweeper;
  /** @internal Manual clock: the defer and cycle timers by due time. */ readonly _due = new DueQueue();
  /** True when this engine runs on a manual clock (see {@link EngineOptions}). */
  readonly manualClock: boolean;
  #now = 0;
  /** Manual clock: when advance() last swept (-Infinity: never). */
  #lastSweep = Number.NEGATIVE_INFINITY;
  #running = false;
  #keepAlive: ReturnType<typeof setInterval> | null = null;
  #settle: (() => void) | null = null;
  #started: Promise<void> | null = null;

  /** Counters over every channel of this engine. */
  readonly stats: Stats = newStats();

  /**
   * @param options `manualClock` for deterministic tests.
   * @throws TypeError if `options` is not an object or `manualClock` not a boolean.
   */
  constructor(options?: EngineOptions) {
    if (options !== undefined) {
      if (options === null || typeof options !== "object") throw typeError(`The Engine options must be an object, got ${describe(options)}.`);
      if (options.manualClock !== undefined && typeof options.manualClock !== "boolean") {
        throw typeError(`The manualClock option must be a boolean, got ${describe(options.manualClock)}.`);
      }
      checkOptionKeys("new Engine()", options, ENGINE_KEYS);
    }
    this.manualClock = options?.manualClock === true;
    this._sweeper = new TimeoutSweeper(() => this.time(), this.manualClock);
  }

  /**
   * Manual clock only: moves time forward by `ms`, firing every `defer` and
   * `cycle` timer and connection timeout that falls due, in order.
   * @throws RangeError on a real-time engine, or for a negative `ms`; TypeError if `ms` is no number.
   */
  advance(ms: number): void {
    if (!this.manualClock) throw rangeError("advance() needs an Engine created with { manualClock: true }.");
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) throw numberError(ms, `advance() needs a non-negative number of ms, got ${describe(ms)}.`);
    const target = this.#now + ms;
    const sweeper = this._sweeper;
    // Sweeps fall where the real ticker's would: a whole tick after the last
    // sweep or after the ticker (re)started, whichever is later (a shorter
    // timeout armed meanwhile restarts it with a finer tick). The schedule
    // carries over from one call to the next: many short advances reach a
    // timeout as one long one does.
    const nextSweepAt = () => Math.max(this.#lastSweep, sweeper.startedAt) + Math.max(1, sweeper.tickMs);
    const due = this._due;
    for (;;) {
      const next = due.peek();
      const timerDue = next !== null && next.due <= target ? next.due : Infinity;
      const nextSweep = sweeper.busy ? nextSweepAt() : Infinity;
      const sweepDue = nextSweep <= target ? nextSweep : Infinity;
      if (timerDue === Infinity && sweepDue === Infinity) break;
      if (timerDue <= sweepDue) {
        this.#now = Math.max(this.#now, timerDue);
        due.pop();
        next!._fire(this);
      } else {
        this.#now = Math.max(this.#now, sweepDue);
        sweeper.sweep();
        this.#lastSweep = this.#now;
      }
    }
    // A timer that advanced the clock itself (a nested advance) may have
    // taken it past this call's target: time never goes back.
    this.#now = Math.max(this.#now, target);
  }

  /** The global engine; channels default to it. */
  static instance(): Engine {
    if (globalEngine === null) globalEngine = new Engine();
    return globalEngine;
  }

  /** True between `start()` and `stop()`. */
  get running(): boolean {
    return this.#running;
  }

  /**
   * Every open channel of this engine: its servers, their connections
   * (also those a closed server's `onClose` override kept open), and its
   * client streams (a snapshot, made on each access).
   */
  get channels(): ReadonlySet<Channel> {
    const all = new Set<Channel>();
    for (const channel of this._channels) {
      // A closed server stays registered while connections it kept are open.
      if (!channel.closed) all.add(channel);
      const connections = (channel as Channel & { channels?: ReadonlyMap<number, Channel> }).channels;
      if (connections instanceof Map) for (const conn of connections.values()) all.add(conn);
    }
    return all;
  }

  /**
   * Keeps the process alive until {@link stop} is called, and settles then.
   * Calling it again while running returns the same promise.
   */
  start(): Promise<void> {
    if (this.#started !== null) return this.#started;
    this.#running = true;
    // A long ref'd interval is what keeps Node's loop (and so the process) alive.
    this.#keepAlive = setInterval(() => {}, 1 << 30);
    this.#started = new Promise<void>((resolve) => {
      this.#settle = resolve;
    });
    if (log.debugOn()) log.current.debug("Starting engine.");
    return this.#started;
  }

  /**
   * Cancels this engine's timers, closes its channels without flushing, and
   * settles `start()`. `running` is false from its start, so an `onClose`
   * can tell a shutdown from a lost connection. Timers that handlers make
   * while it closes the channels (a reconnect scheduled in `onClose`) are
   * cancelled too, and channels they open at once are closed in turn; ones
   * made after it returns run. Safe to call at any time, any number of times.
   */
  stop(): void {
    if (!(this instanceof Engine)) throw unboundError("stop", "Engine", this);
    // Not running from here on: an onClose that would reconnect can ask.
    const wasRunning = this.#running;
    this.#running = false;
    if (wasRunning && log.debugOn()) log.current.debug("Stopping engine.");
    for (const timer of [...this._timers]) timer.cancel();
    // Servers first (their connections with them, even if an onClose override
    // keeps them), then the rest; then whatever those closes opened (a client
    // that reconnects in onClose), a bounded number of rounds.
    for (let round = 0; ; round++) {
      const open = [...this.channels].filter((channel) => !channel.closed);
      if (open.length === 0) break;
      if (round === STOP_ROUNDS) {
        log.current.warn(
          { channels: open.map(nameOf) },
          `Engine.stop(): handlers kept opening channels while it closed them (${STOP_ROUNDS} rounds); these stay open. An onClose that reconnects should check engine.running.`,
        );
        break;
      }
      for (const channel of open) {
        try {
          channel.close(false);
        } catch (err) {
          log.current.error({ err: asError(err, "close()"), ...channel._logFields() }, "Exception raised while closing a channel in Engine.stop().");
        }
      }
    }
    // And the timers those closes made (an onClose that schedules a reconnect): none outlives stop().
    for (const timer of [...this._timers]) timer.cancel();
    this._sweeper.stop();
    if (this.#keepAlive !== null) clearInterval(this.#keepAlive);
    this.#keepAlive = null;
    const settle = this.#settle;
    this.#settle = null;
    this.#started = null;
    if (settle) settle();
  }

  /** Calls `fn(...args)` once, on the next turn of the loop. */
  callback<A extends unknown[]>(fn: TimerFn<A>, ...args: A): Timer {
    checkFn(fn);
    return this.#add(ONCE_IMMEDIATE, 0, fn as (...a: unknown[]) => unknown, args);
  }

  /**
   * Calls `fn(...args)` on every turn of the loop until cancelled. A loop
   * keeps the event loop turning (a busy core); prefer {@link cycle} for
   * periodic work.
   */
  loop<A extends unknown[]>(fn: TimerFn<A>, ...args: A): Timer {
    checkFn(fn);
    return this.#add(LOOP, 0, fn as (...a: unknown[]) => unknown, args);
  }

  /**
   * Calls `fn(...args)` once, after `delayMs` milliseconds (under 1 ms is
   * 1 ms, as with Node's timers, on a manual clock too; beyond Node's
   * 2^31-1 ms limit it still waits the whole delay).
   * @throws RangeError unless `delayMs` is a positive finite number.
   */
  defer<A extends unknown[]>(delayMs: number, fn: TimerFn<A>, ...args: A): Timer {
    checkDelay("The delay", delayMs);
    checkFn(fn);
    return this.#add(ONCE_DELAY, delayMs, fn as (...a: unknown[]) => unknown, args);
  }

  /**
   * Calls `fn(...args)` every `intervalMs` milliseconds until cancelled
   * (under 1 ms is 1 ms, as with Node's timers, on a manual clock too; any
   * finite interval, beyond Node's 2^31-1 ms limit too).
   * @throws RangeError unless `intervalMs` is a positive finite number.
   */
  cycle<A extends unknown[]>(intervalMs: number, fn: TimerFn<A>, ...args: A): Timer {
    checkDelay("The interval", intervalMs);
    checkFn(fn);
    return this.#add(CYCLE, intervalMs, fn as (...a: unknown[]) => unknown, args);
  }

  /** Monotonic time in milliseconds (the manual clock's, on a manual engine). */
  time(): number {
    return this.manualClock ? this.#now : performance.now();
  }

  #add(kind: number, delay: number, fn: (...a: unknown[]) => unknown, args: unknown[]): Timer {
    const timer = new EngineTimer(this, kind, delay, fn, args);
    this._timers.add(timer);
    return timer;
  }
}
