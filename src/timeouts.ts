/**
 * One coarse shared timer per engine for every connection timeout (idle,
 * TLS handshake, PROXY header, draining close), instead of a `setTimeout`
 * per socket. A timeout fires between its nominal time and a quarter of it
 * later (at least 10 ms, at most 1 s late).
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
    this.#timer = null;
    this.#running = false;
    this.#tick = MAX_TICK_MS;
    this.#items.clear();
  }

  #restart(): void {
    this.#running = true;
    this.#startedAt = this.#now();
    if (this.#manual) return;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = setInterval(() => this.sweep(), this.#tick);
    // Timeouts never keep the process alive on their own: connections do.
    this.#timer.unref();
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
