/**
 * One coarse shared timer per engine for every connection timeout (idle,
 * TLS handshake, PROXY header, draining close), instead of a `setTimeout`
 * per socket. A timeout fires between its nominal time and a quarter of it
 * later (at least 10 ms, at most 1 s late).
 *
 * Each tick judges at its own time but sweeps on the next turn of the loop,
 * once the loop has polled: timers run before I/O, so a sweep at the tick
 * itself sees only what the last poll read, and a callback that held the
 * loop (a long synchronous handler, a heap snapshot) since that poll would
 * leave a connection whose bytes arrived meanwhile judged idle, however
 * short the stall and however late or not the tick comes. Everything that
 * arrived before the tick has been read when its sweep runs.
 */

/** Something with timeouts: called on every tick with the monotonic time. */
export interface Timed {
  /** @internal */
  _onSweep(now: number): void;
}

const MIN_TICK_MS = 10;
const MAX_TICK_MS = 1000;

/** The shared ticker. Items register while they have a timeout armed. */
export class TimeoutSweeper {
  #items = new Set<Timed>();
  #tick = MAX_TICK_MS;
  #timer: ReturnType<typeof setInterval> | null = null;
  /** True while the ticker runs (a manual one has no timer: its owner sweeps). */
  #running = false;
  /** When the ticker last (re)started: ticks fall at this plus whole ticks. */
  #startedAt = 0;
  /** The last tick's sweep, put off until the loop has polled. */
  #deferred: ReturnType<typeof setTimeout> | null = null;
  /** When that tick fired: the time its sweep judges at. */
  #tickedAt = 0;
  readonly #now: () => number;
  /** Manual: no real timer runs; the owner calls {@link sweep}. */
  readonly #manual: boolean;

  constructor(now: () => number, manual = false) {
    this.#now = now;
    this.#manual = manual;
  }

  /** Current tick in ms (the precision of every timeout). */
  get tickMs(): number {
    return this.#tick;
  }

  /** When the ticker last (re)started, on the owner's clock. */
  get startedAt(): number {
    return this.#startedAt;
  }

  /** Registers `item` for a timeout of `timeoutMs` (sets the precision). */
  add(item: Timed, timeoutMs: number): void {
    this.#items.add(item);
    const wanted = Math.min(MAX_TICK_MS, Math.max(MIN_TICK_MS, Math.floor(timeoutMs / 4)));
    if (!this.#running || wanted < this.#tick) {
      this.#tick = this.#running ? Math.min(this.#tick, wanted) : wanted;
      this.#restart();
    }
  }

  /** Unregisters `item`. */
  delete(item: Timed): void {
    this.#items.delete(item);
    if (this.#items.size === 0) this.stop();
  }

  /** Stops the ticker and forgets every item. */
  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    if (this.#deferred !== null) clearTimeout(this.#deferred);
    this.#timer = null;
    this.#deferred = null;
    this.#running = false;
    this.#tick = MAX_TICK_MS;
    this.#items.clear();
  }

  #restart(): void {
    this.#running = true;
    this.#startedAt = this.#now();
    if (this.#manual) return;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = setInterval(() => this.#onTick(), this.#tick);
    // Timeouts never keep the process alive on their own: connections do.
    this.#timer.unref();
  }

  /** The real timer fired: sweep, as of now, once the loop has polled. */
  #onTick(): void {
    // A sweep still waiting keeps its earlier time: the poll it waits for
    // comes after that time, not necessarily after this one.
    if (this.#deferred !== null) return;
    this.#tickedAt = this.#now();
    // Made from a timer callback, it runs in the next turn's timers phase:
    // after that turn's poll has read what arrived before this tick.
    this.#deferred = setTimeout(() => {
      this.#deferred = null;
      this.#sweepAt(this.#tickedAt);
    }, 0);
    this.#deferred.unref();
  }

  /** Runs every registered item's timeout check now. */
  sweep(): void {
    this.#sweepAt(this.#now());
  }

  #sweepAt(now: number): void {
    for (const item of this.#items) item._onSweep(now);
  }

  /** True while some item has a timeout armed. */
  get busy(): boolean {
    return this.#items.size > 0;
  }
}
