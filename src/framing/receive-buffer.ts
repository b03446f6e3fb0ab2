/**
 * The receive buffer: a list of chunks with views into them. Bytes are
 * never concatenated on arrival; a frame that spans chunks is joined once,
 * when it is taken. Searches resume where the last one stopped, so a long
 * frame arriving in many small pieces costs linear time (twisted#3803 and
 * #6358 are the quadratic buffers this avoids).
 */

const EMPTY = Buffer.alloc(0);

export class ReceiveBuffer {
  /** Live chunks; `chunks[head]` is the first, possibly a view. */
  #chunks: Buffer[] = [];
  #head = 0;
  /** Total bytes buffered. */
  length = 0;
  /**
   * Scan state owned by the framer in use: where the next delimiter search
   * may start (bytes before it are known to hold no match), or how many
   * bytes a NetStruct needs before it is worth parsing again.
   */
  mark = 0;
  /** True while an oversized delimited frame is being skipped. */
  discarding = false;
  #latin1: string | null = null;

  /** Appends a chunk (kept by reference). */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.length += chunk.length;
    this.#latin1 = null;
  }

  /** Forgets everything, including the scan state. */
  clear(): void {
    this.#chunks = [];
    this.#head = 0;
    this.length = 0;
    this.mark = 0;
    this.discarding = false;
    this.#latin1 = null;
  }

  /** The first chunk, or an empty buffer. */
  first(): Buffer {
    return this.length === 0 ? EMPTY : this.#chunks[this.#head]!;
  }

  /** True when every buffered byte is in one chunk. */
  get contiguous(): boolean {
    return this.#chunks.length - this.#head <= 1;
  }

  /**
   * The absolute offset of the first occurrence of `needle` at or after
   * `from`, or -1. Matches that straddle chunk boundaries are found.
   */
  indexOf(needle: Buffer, from: number): number {
    const n = needle.length;
    if (this.length - from < n) return -1;
    const chunks = this.#chunks;
    let base = 0;
    for (let i = this.#head; i < chunks.length; i++) {
      const chunk = chunks[i]!;
      const end = base + chunk.length;
      if (end > from) {
        const start = from > base ? from - base : 0;
        const idx = chunk.indexOf(needle, start);
        if (idx !== -1) return base + idx;
        // A match may start in this chunk's last n-1 bytes and end in the next ones.
        if (n > 1 && i + 1 < chunks.length) {
          const tailStart = Math.max(start, chunk.length - (n - 1));
          if (tailStart < chunk.length) {
            const hit = this.#straddle(needle, base + tailStart, end);
            if (hit !== -1) return hit;
          }
        }
      }
      base = end;
    }
    return -1;
  }

  /** Looks for a match starting in [lo, hi) that runs past `hi` into later chunks. */
  #straddle(needle: Buffer, lo: number, hi: number): number {
    const window = this.peekRange(lo, Math.min(this.length, hi + needle.length - 1));
    const idx = window.indexOf(needle);
    return idx !== -1 && lo + idx < hi ? lo + idx : -1;
  }

  /** A copy (or view) of the bytes in [start, end), without consuming them. */
  peekRange(start: number, end: number): Buffer {
    const out = Buffer.allocUnsafe(end - start);
    let written = 0;
    let base = 0;
    const chunks = this.#chunks;
    for (let i = this.#head; i < chunks.length && base < end; i++) {
      const chunk = chunks[i]!;
      const cEnd = base + chunk.length;
      if (cEnd > start) {
        const s = Math.max(start, base) - base;
        const e = Math.min(end, cEnd) - base;
        if (written === 0 && s === 0 && e === chunk.length && e - s === out.length) return chunk;
        chunk.copy(out, written, s, e);
        written += e - s;
      }
      base = cEnd;
    }
    return out;
  }

  /** The byte at absolute offset `i` (which must be < length). */
  byteAt(i: number): number {
    const chunks = this.#chunks;
    for (let c = this.#head; c < chunks.length; c++) {
      const chunk = chunks[c]!;
      if (i < chunk.length) return chunk[i]!;
      i -= chunk.length;
    }
    return -1;
  }

  /** Removes and returns the first `n` bytes (a view when they lie in one chunk). */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.#chunks[this.#head]!;
    let out: Buffer;
    if (n <= first.length) {
      out = n === first.length ? first : first.subarray(0, n);
    } else {
      out = this.peekRange(0, n);
    }
    this.skip(n);
    return out;
  }

  /** Discards the first `n` bytes. */
  skip(n: number): void {
    if (n >= this.length) {
      this.#chunks = [];
      this.#head = 0;
      this.length = 0;
      this.#latin1 = null;
      return;
    }
    this.length -= n;
    this.#latin1 = null;
    const chunks = this.#chunks;
    while (n > 0) {
      const chunk = chunks[this.#head]!;
      if (n < chunk.length) {
        chunks[this.#head] = chunk.subarray(n);
        break;
      }
      n -= chunk.length;
      chunks[this.#head] = EMPTY;
      this.#head++;
    }
    // Compact the consumed head now and then, so the array does not grow forever.
    if (this.#head > 64 && this.#head * 2 > chunks.length) {
      this.#chunks = chunks.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Every buffered byte in one buffer (joined once, and kept joined). */
  all(): Buffer {
    if (this.length === 0) return EMPTY;
    if (this.contiguous) return this.#chunks[this.#head]!;
    const joined = this.peekRange(0, this.length);
    this.#chunks = [joined];
    this.#head = 0;
    return joined;
  }

  /** Every buffered byte read as latin1 (one character per byte), cached until the buffer changes. */
  latin1(): string {
    if (this.#latin1 === null) this.#latin1 = this.all().toString("latin1");
    return this.#latin1;
  }
}
