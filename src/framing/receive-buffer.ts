/**
 * The receive buffer: a list of chunks, consumed through an offset into the
 * first one. Bytes are never concatenated on arrival; a frame that spans
 * chunks is joined once, when it is taken. Searches resume where the last
 * one stopped, so a long frame arriving in many small pieces costs linear
 * time (twisted#3803 and #6358 are the quadratic buffers this avoids), and
 * consuming a frame allocates nothing but the frame's own view.
 *
 * A framer that reads every buffered byte at once (a Decoder, a Struct)
 * joins them with {@link ReceiveBuffer.all}. Joined again before anything
 * was consumed (the frame is still unfinished), the join reserves room (as
 * much again, never past the frame limit), and the bytes that arrive next
 * are copied in after it: the unfinished frame is then copied about twice
 * in all, not once per arrival.
 */
import { Buffer } from "node:buffer";
import type { Skipper } from "./delimiter.js";

const EMPTY = Buffer.alloc(0);

/**
 * A chunk this small is joined to a small chunk before it rather than kept
 * on its own: a peer dribbling a frame byte by byte would otherwise cost a
 * Buffer object (some 200 bytes) per byte, and a walk over every one of them
 * per arrival. No two neighbours are then both small, so there are at most
 * about length / (MERGE_BELOW / 2) chunks, and a merge copies under
 * 2 × MERGE_BELOW bytes.
 */
const MERGE_BELOW = 512;

/**
 * Bytes left waiting in a chunk whose memory is more than this many times
 * their size are copied out ({@link ReceiveBuffer.compact}): the copy costs
 * at most a quarter of what it frees.
 */
const COMPACT_RATIO = 4;

/**
 * The bytes of `chunk` from `from` in memory of their own: not from Node's
 * pool, where a copy kept would pin a whole slab (8 KiB; 64 KiB from Node
 * 24.22 on).
 */
function ownCopy(chunk: Buffer, from: number): Buffer {
  const copy = Buffer.allocUnsafeSlow(chunk.length - from);
  chunk.copy(copy, 0, from);
  return copy;
}

export class ReceiveBuffer {
  /** Live chunks from `#head`; the first is consumed up to `#off`. */
  #chunks: Buffer[] = [];
  #head = 0;
  #off = 0;
  /** Total bytes buffered. */
  length = 0;
  /**
   * Scan state owned by the framer in use: where the next delimiter search
   * may start (bytes before it are known to hold no match), or how many
   * bytes a NetStruct needs before it is worth parsing again.
   */
  mark = 0;
  /** Set when the stream's readDelimiter is assigned (a Decoder's framer clears it, to see whether the decoder handed over). */
  switched = false;
  /** True while an oversized delimited frame is being skipped. */
  discarding = false;
  /**
   * The framer that refused the frame being skipped (`discarding`): it skips
   * it to its end even if the delimiter changed meanwhile (in onOverflowError).
   */
  skipper: Skipper | null = null;
  /**
   * While a NetStruct record is skipped (`discarding`): bytes of it still to
   * drop as they arrive, then the segment its parsing resumes at.
   */
  skipLeft = 0;
  skipSegment = 0;
  /** Every buffered byte as latin1, from `#latin1Base` on (bytes consumed since are skipped by offset). */
  #latin1: string | null = null;
  #latin1Base = 0;
  /**
   * Where the last search found its start: chunk `#cursor` begins at logical
   * offset `#cursorBase` (-1: unknown). Searches resume from a later offset
   * until bytes are consumed, so they start here instead of walking from the
   * first chunk.
   */
  #cursor = -1;
  #cursorBase = 0;
  /** True once all() joined chunks, until bytes are consumed: a second join reserves room. */
  #joined = false;
  /**
   * The room a join reserved: the last chunk is `#room.subarray(0, #roomUsed)`
   * (that very view, `#roomView`) and arriving bytes are copied in after it.
   * Bytes already in it are never written again, so views handed out stay
   * as they were.
   */
  #room: Buffer | null = null;
  #roomUsed = 0;
  #roomView: Buffer = EMPTY;

  /**
   * Appends a chunk: kept by reference, unless it is small and joined to a
   * small last chunk, or copied into a join's room. A `lent` chunk (its
   * memory is reused once the handler returns) is copied where it would be
   * kept by reference.
   */
  push(chunk: Buffer, lent = false): void {
    if (chunk.length === 0) return;
    this.length += chunk.length;
    this.#latin1 = null;
    const chunks = this.#chunks;
    const last = chunks.length - 1;
    const room = this.#room;
    if (room !== null) {
      if (last >= this.#head && chunks[last] === this.#roomView && this.#roomUsed + chunk.length <= room.length) {
        chunk.copy(room, this.#roomUsed);
        this.#roomUsed += chunk.length;
        chunks[last] = this.#roomView = room.subarray(0, this.#roomUsed);
        return;
      }
      this.#room = null;
      this.#roomView = EMPTY;
    }
    if (chunk.length < MERGE_BELOW && last >= this.#head) {
      const first = last === this.#head;
      const prev = first ? chunks[last]!.subarray(this.#off) : chunks[last]!;
      if (prev.length < MERGE_BELOW) {
        // A copy, never a write into `prev`: frames already taken from it stay as they were.
        // Not from Node's pool: a small slice kept there would pin a whole 8 KiB slab.
        const merged = Buffer.allocUnsafeSlow(prev.length + chunk.length);
        prev.copy(merged, 0);
        chunk.copy(merged, prev.length);
        chunks[last] = merged;
        if (first) {
          this.#off = 0;
          if (this.#cursor === last) this.#cursorBase = 0;
        }
        return;
      }
    }
    chunks.push(lent ? ownCopy(chunk, 0) : chunk);
  }

  /**
   * Drops what has arrived of the `skipLeft` bytes still to skip (the rest of
   * a refused frame): true once none are left, false while more must arrive.
   */
  dropSkipped(): boolean {
    if (this.skipLeft === 0) return true;
    const n = Math.min(this.skipLeft, this.length);
    this.skip(n);
    this.skipLeft -= n;
    return this.skipLeft === 0;
  }

  /** Forgets everything, including the scan state. */
  clear(): void {
    this.#reset();
    this.mark = 0;
    this.discarding = false;
    this.skipper = null;
    this.skipLeft = 0;
    this.skipSegment = 0;
  }

  #reset(): void {
    if (this.#chunks.length > 0) this.#chunks = [];
    this.#head = 0;
    this.#off = 0;
    this.length = 0;
    this.#latin1 = null;
    this.#cursor = -1;
    this.#joined = false;
    this.#room = null;
    this.#roomView = EMPTY;
  }

  /** The first chunk and the offset of the first buffered byte in it (only valid while length > 0). */
  firstChunk(): Buffer {
    return this.#chunks[this.#head] ?? EMPTY;
  }

  /** Where the buffered bytes start in {@link firstChunk}. */
  get offset(): number {
    return this.#off;
  }

  /** Bytes of the first chunk still buffered. */
  get firstLength(): number {
    const first = this.#chunks[this.#head];
    return first === undefined ? 0 : first.length - this.#off;
  }

  /** True when every buffered byte is in one chunk. */
  get contiguous(): boolean {
    return this.#chunks.length - this.#head <= 1;
  }

  /**
   * The offset (from the first buffered byte) of the first occurrence of
   * `needle` at or after `from`, or -1. Matches that straddle chunk
   * boundaries are found.
   */
  indexOf(needle: Buffer, from: number): number {
    const n = needle.length;
    if (this.length - from < n) return -1;
    const chunks = this.#chunks;
    let i = this.#head;
    let base = -this.#off; // logical offset of the current chunk's byte 0
    if (this.#cursor >= 0 && this.#cursorBase <= from) {
      i = this.#cursor;
      base = this.#cursorBase;
    }
    let found = false;
    for (; i < chunks.length; i++) {
      const chunk = chunks[i]!;
      const end = base + chunk.length;
      if (end > from) {
        if (!found) {
          // The next search starts at or after `from`: it can begin here.
          found = true;
          this.#cursor = i;
          this.#cursorBase = base;
        }
        const start = Math.max(from - base, i === this.#head ? this.#off : 0);
        const idx = n === 1 ? chunk.indexOf(needle[0]!, start) : chunk.indexOf(needle, start);
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
    const window = this.peekRange(lo, Math.min(this.length, hi + needle.length - 1), true);
    const idx = window.indexOf(needle);
    return idx !== -1 && lo + idx < hi ? lo + idx : -1;
  }

  /**
   * The bytes in [start, end) (a view when they lie in one chunk, else a
   * copy), without consuming them. The copy is from Node's pool only when
   * `transient` (read, then dropped): a frame joined from the pool and kept
   * would pin a whole slab (8 KiB, 64 KiB from Node 24.22 on).
   */
  peekRange(start: number, end: number, transient = false): Buffer {
    const chunks = this.#chunks;
    let i = this.#head;
    let base = -this.#off;
    if (this.#cursor >= 0 && this.#cursorBase <= start) {
      i = this.#cursor;
      base = this.#cursorBase;
    }
    let out: Buffer | null = null;
    let written = 0;
    for (; i < chunks.length && base < end; i++) {
      const chunk = chunks[i]!;
      const cEnd = base + chunk.length;
      if (cEnd > start) {
        const s = Math.max(start, base) - base;
        const e = Math.min(end, cEnd) - base;
        if (out === null) {
          if (e - s === end - start) return chunk.subarray(s, e);
          out = transient ? Buffer.allocUnsafe(end - start) : Buffer.allocUnsafeSlow(end - start);
        }
        chunk.copy(out, written, s, e);
        written += e - s;
      }
      base = cEnd;
    }
    return out ?? EMPTY;
  }

  /**
   * The first `n` bytes (fewer than are buffered) in one buffer, the rest
   * left as it is: a view when they lie in one chunk, else joined into a new
   * first chunk, with the rest of the chunk they end in kept as a view. For
   * a frame of known length that a read cut: only the frame is copied, not
   * the whole read after it.
   */
  head(n: number): Buffer {
    const chunks = this.#chunks;
    const off = this.#off;
    const first = chunks[this.#head]!;
    if (off + n <= first.length) return first.subarray(off, off + n);
    const joined = this.peekRange(0, n);
    // The chunk holding byte n (n < length, so there is one), and where that chunk starts.
    let i = this.#head;
    let base = -off;
    while (base + chunks[i]!.length <= n) base += chunks[i++]!.length;
    const rest = chunks[i]!.subarray(n - base);
    this.#chunks = [joined, rest];
    for (let k = i + 1; k < chunks.length; k++) this.#chunks.push(chunks[k]!);
    this.#head = 0;
    this.#off = 0;
    this.#cursor = -1;
    // (Arriving bytes go after `rest` now, not into a join's room.)
    this.#room = null;
    this.#roomView = EMPTY;
    return joined;
  }

  /**
   * The first `n` bytes in one buffer ({@link head}) when fewer than are
   * buffered, else every byte ({@link all}, reserving room up to `cap`):
   * what a framer that knows its frame's length (`n`; 0: not known) parses.
   */
  upTo(n: number, cap: number): Buffer {
    return n > 0 && n < this.length ? this.head(n) : this.all(cap);
  }

  /** The byte at offset `i` (which must be < length). */
  byteAt(i: number): number {
    const chunks = this.#chunks;
    i += this.#off;
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
    const off = this.#off;
    const out = off + n <= first.length ? first.subarray(off, off + n) : this.peekRange(0, n);
    this.skip(n);
    return out;
  }

  /** Discards the first `n` bytes. */
  skip(n: number): void {
    if (n >= this.length) {
      this.#reset();
      return;
    }
    this.length -= n;
    this.#cursor = -1;
    this.#joined = false;
    if (this.#latin1 !== null) this.#latin1Base += n;
    const chunks = this.#chunks;
    let off = this.#off + n;
    let head = this.#head;
    while (off >= chunks[head]!.length) {
      off -= chunks[head]!.length;
      chunks[head] = EMPTY;
      head++;
    }
    this.#head = head;
    this.#off = off;
    // Compact the consumed head now and then, so the array does not grow forever.
    if (head > 64 && head * 2 > chunks.length) {
      this.#chunks = chunks.slice(head);
      this.#head = 0;
    }
    if (this.#room !== null) this.#leaveRoom();
  }

  /**
   * Called when the framer waits for more bytes: buffered bytes that are a
   * small part of one chunk's memory (the start of a frame at the end of a
   * read, up to 256 KiB on the native transport) are copied out, so a
   * stream that goes idle there holds about what it buffered, not the read.
   */
  compact(): void {
    const n = this.length;
    if (n === 0 || this.#room !== null || this.#chunks.length - this.#head !== 1) return;
    if (this.#chunks[this.#head]!.buffer.byteLength > COMPACT_RATIO * n) this.#copyOut(this.#head);
  }

  /**
   * The unfinished frame a join's room was reserved for has been consumed:
   * the bytes left in the room (the rest of the read that completed it) are
   * copied out, so the room, up to the frame limit, is freed with that
   * frame, not held by an idle connection for a few bytes or pinned by the
   * small frames cut from them.
   */
  #leaveRoom(): void {
    const last = this.#chunks.length - 1;
    if (this.#chunks[last] === this.#roomView) this.#copyOut(last);
    this.#room = null;
    this.#roomView = EMPTY;
  }

  /** Chunk `i` (the head: from `#off`) becomes a copy of its unconsumed bytes, in memory of its own. */
  #copyOut(i: number): void {
    const head = i === this.#head;
    this.#chunks[i] = ownCopy(this.#chunks[i]!, head ? this.#off : 0);
    if (head) this.#off = 0;
    this.#cursor = -1;
  }

  /**
   * Every buffered byte in one buffer (joined once, and kept joined; a
   * second join before anything is consumed reserves as much room again,
   * up to `cap` bytes in all: the most the framer will wait for).
   */
  all(cap = Infinity): Buffer {
    const length = this.length;
    if (length === 0) return EMPTY;
    const first = this.#chunks[this.#head]!;
    if (this.contiguous) return this.#off === 0 ? first : first.subarray(this.#off);
    let joined: Buffer;
    const size = Math.min(2 * length, cap);
    if (this.#joined && size > length) {
      // Not from Node's pool, as in push(): the room is ours alone.
      const room = Buffer.allocUnsafeSlow(size);
      let at = 0;
      for (let i = this.#head; i < this.#chunks.length; i++) {
        const chunk = this.#chunks[i]!;
        at += chunk.copy(room, at, i === this.#head ? this.#off : 0);
      }
      this.#room = room;
      this.#roomUsed = length;
      joined = this.#roomView = room.subarray(0, length);
    } else {
      joined = this.peekRange(0, length);
      this.#joined = true;
    }
    this.#chunks = [joined];
    this.#head = 0;
    this.#off = 0;
    this.#cursor = -1;
    return joined;
  }

  /**
   * Drops the latin1 text of the buffered bytes (a framer waiting for more
   * bytes, which build it anew): an idle stream does not hold a copy of its
   * partial frame, or of a long frame taken before it, as a string.
   */
  forgetText(): void {
    this.#latin1 = null;
  }

  /**
   * Every buffered byte read as latin1 (one character per byte). The string
   * is built once per arrival of data; consuming frames only moves an
   * offset into it (a sliced string costs O(1) in V8).
   */
  latin1(): string {
    let text = this.#latin1;
    if (text === null) {
      text = this.#latin1 = this.all().toString("latin1");
      this.#latin1Base = 0;
    }
    return this.#latin1Base === 0 ? text : text.slice(this.#latin1Base);
  }
}
