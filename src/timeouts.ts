/**
 * One coarse shared timer per engine for every connection timeout (idle,
 * TLS handshake, PROXY header, draining close), instead of a `setTimeout`
 * per socket. A timeout fires between its nominal time and a quarter of it
 * later (at least 10 ms, at most 1 s late).
 *
 * A tick that comes late because the event loop was blocked (a long
 * synchronous handler, a heap snapshot) is put off until the loop has polled
 * once: timers run before I/O in each turn of the loop, so without that a
 * connection whose bytes arrived during the stall, and wait to be read,
 * would be judged idle.
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
  /** When the real timer last fired (a stalled loop shows as a late tick). */
  #lastTick = 0;
  /** A late tick's sweep, put off until the loop has polled. */
  #deferred: ReturnType<typeof setTimeout> | null = null;
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
    this.#lastTick = this.#startedAt;
    if (this.#manual) return;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = setInterval(() => this.#onTick(), this.#tick);
    // Timeouts never keep the process alive on their own: connections do.
    this.#timer.unref();
  }

  /** The real timer fired: sweep now, or after the loop has polled if the loop was blocked meanwhile. */
  #onTick(): void {
    const now = this.#now();
    const late = now - this.#lastTick >= 2 * this.#tick;
    this.#lastTick = now;
    if (!late) {
      this.sweep();
    } else if (this.#deferred === null) {
      // The next turn's timers run after this turn's poll has read what arrived during the stall.
      this.#deferred = setTimeout(() => {
        this.#deferred = null;
        this.sweep();
      }, 0);
      this.#deferred.unref();
    }
  }

  /** Runs every registered item's timeout check now. */
  sweep(): void {
    const now = this.#now();
    for (const item of this.#items) item._onSweep(now);
  }

  /** True while some item has a timeout armed. */
  get busy(): boolean {
    return this.#items.size > 0;
  }
}
