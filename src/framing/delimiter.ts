/**
 * Read delimiters (SPEC §6): validation at assignment, and one small
 * framer per kind. Framers are immutable and shared; the per-stream scan
 * state lives in the ReceiveBuffer (`mark`, `discarding`).
 */
import { Buffer } from "node:buffer";
import { describe, typeError } from "../errors.js";
import { Struct } from "./struct.js";
import { NetStruct } from "./netstruct.js";
import type { ReceiveBuffer } from "./receive-buffer.js";
import { regexReach } from "./regex-reach.js";

/**
 * User framing: called with the buffered bytes (at least one); returns
 * `null` when no whole frame is buffered yet, else how many bytes the frame
 * used and the arguments `onRead` is called with.
 *
 * A decoder that knows how long the unfinished frame is (a length prefix)
 * may return that length, in bytes counted from the frame's start, instead
 * of `null`. It is then asked again only once that many bytes are here, and
 * with those bytes only (every buffered byte if they turn out not to hold a
 * frame): the rest of the read is not copied with them. A frame longer than
 * `bufferSize` is refused at once and skipped exactly, so what follows it
 * is framed the same however the bytes arrived.
 *
 * A decoder declared with one parameter gets `buf` starting at the frame.
 * One declared with two (`(buf, start) => …`, counted by the function's
 * `length`) gets the frame at `buf[start]` instead, with earlier bytes
 * before it: no view is made per call, which is what a frame costs
 * otherwise. `consumed` counts from `start` either way, and neither form
 * may look before `start`.
 */
export type Decoder = (
  buf: Buffer,
  start: number,
) => {
  /** Bytes the frame used, counted from `start`; at least 1. */
  consumed: number;
  /** The arguments `onRead` is called with. */
  args: readonly unknown[];
} | number | null;

/** Every kind of read delimiter (see the README's framing table). */
export type ReadDelimiter = null | string | Buffer | number | RegExp | Struct | NetStruct | Decoder;

/** No whole frame is buffered. */
export const NEED_MORE = 0;
/** One frame, in `out.value`: `onRead(value)`. */
export const FRAME = 1;
/** One frame as several arguments, in `out.args`: `onRead(...args)`. */
export const FRAME_ARGS = 2;
/** A frame outgrew its limit; `out.skip` tells how much was dropped. */
export const OVERFLOW = 3;
/** The framer cannot go on; `out.error` says why. */
export const FAILED = 4;

/** Where a framer leaves its result (one per stream, reused). */
export interface FrameOut {
  value: unknown;
  args: readonly unknown[] | null;
  error: Error | null;
}

/** A compiled delimiter. */
export interface Framer {
  /** The delimiter as the user set it. */
  readonly source: ReadDelimiter;
  /** The smallest frame limit this framer needs (the delimiter's own size for integers and structs). */
  readonly minLimit: number;
  /** For string and Buffer delimiters, the bytes to look for (the stream scans chunks for them directly). */
  readonly needle: Buffer | null;
  /**
   * For RegExp delimiters, the copy the stream scans chunks with directly:
   * global (searched from `lastIndex` over the whole chunk) when nothing in
   * the pattern looks before where a search starts (`^`, `\b`, `\B`,
   * lookbehind), else searched on the text from each frame's start.
   */
  readonly search: RegExp | null;
  /**
   * Takes at most one frame from `rb`; see the result codes above. Never
   * called while `rb.discarding`: the stream has `rb.skipper` finish first.
   * `limit` is already at least `minLimit`.
   */
  extract(rb: ReceiveBuffer, limit: number, out: FrameOut, regexSearch: boolean): number;
}

/** A framer that refuses an oversized frame and skips it to its end, however the bytes arrive. */
export interface Skipper {
  /**
   * Goes on skipping the frame it refused (`rb.discarding`, `rb.skipper`
   * this one, even if the delimiter changed since): FRAME once it is all
   * gone, else NEED_MORE (or FAILED).
   */
  discard(rb: ReceiveBuffer, out: FrameOut): number;
}

class NullFramer implements Framer {
  readonly source = null;
  readonly minLimit = 0;
  readonly needle = null;
  readonly search = null;
  extract(rb: ReceiveBuffer, _limit: number, out: FrameOut): number {
    out.value = rb.take(rb.length);
    return FRAME;
  }
}

class BytesFramer implements Framer, Skipper {
  readonly minLimit = 0;
  readonly search = null;
  constructor(
    readonly source: string | Buffer,
    readonly needle: Buffer,
  ) {}

  extract(rb: ReceiveBuffer, limit: number, out: FrameOut): number {
    const n = this.needle.length;
    const idx = rb.indexOf(this.needle, rb.mark);
    if (idx === -1) {
      if (rb.length - (n - 1) > limit) {
        rb.discarding = true;
        rb.skipper = this;
        const keep = Math.min(rb.length, n - 1);
        rb.skip(rb.length - keep);
        rb.mark = 0;
        return OVERFLOW;
      }
      rb.mark = rb.length >= n ? rb.length - n + 1 : 0;
      return NEED_MORE;
    }
    rb.mark = 0;
    if (idx > limit) {
      rb.skip(idx + n);
      return OVERFLOW;
    }
    out.value = rb.take(idx);
    rb.skip(n);
    return FRAME;
  }

  /** Skipping an oversized frame: drops bytes through the next delimiter. */
  discard(rb: ReceiveBuffer): number {
    const n = this.needle.length;
    const idx = rb.indexOf(this.needle, rb.mark);
    rb.mark = 0;
    if (idx === -1) {
      rb.skip(rb.length - Math.min(rb.length, n - 1));
      return NEED_MORE;
    }
    rb.skip(idx + n);
    rb.discarding = false;
    return FRAME;
  }
}

class SizeFramer implements Framer {
  readonly minLimit: number;
  readonly needle = null;
  readonly search = null;
  constructor(readonly source: number) {
    this.minLimit = source;
  }
  extract(rb: ReceiveBuffer, _limit: number, out: FrameOut): number {
    if (rb.length < this.source) return NEED_MORE;
    out.value = rb.take(this.source);
    return FRAME;
  }
}

/**
 * How many bytes past `bufferSize` a regex frame may wait for its match: a
 * match can begin in them (no RegExp can say a text may still become one),
 * so an oversized frame is declared only beyond, and an overflow keeps them
 * while it skips to the next match.
 */
const REGEX_SLACK = 256;

class RegexFramer implements Framer, Skipper {
  readonly minLimit = 0;
  readonly needle = null;
  readonly search: RegExp;
  readonly #search: RegExp;
  readonly #anchored: RegExp;
  /** A global copy, to search from `lastIndex` on the text from the frame's start. */
  readonly #resume: RegExp;
  /** How far one match attempt may look ({@link regexReach}): bounds the rescan when bytes arrive. */
  readonly #reach: number;
  /** How many characters before where a search resumes the pattern may look at. */
  readonly #lookback: number;
  constructor(readonly source: RegExp) {
    // Private copies: the user's RegExp (and its lastIndex) is never touched,
    // and a g/y flag cannot leak state between matches.
    const flags = source.flags.replace(/[gy]/g, "");
    this.#search = new RegExp(source.source, flags);
    this.#anchored = new RegExp(source.source, flags + "y");
    // A search from lastIndex finds what a search of the text from there
    // would, unless the pattern can look at what comes before (a conservative
    // test: any ^, \b, \B or lookbehind in the source).
    const contextFree = !/\^|\\[bB]|\(\?<[=!]/.test(source.source);
    this.#resume = new RegExp(source.source, flags + "g");
    this.search = contextFree ? this.#resume : this.#search;
    const { reach, back } = regexReach(source);
    this.#reach = reach;
    this.#lookback = contextFree ? 0 : back;
  }

  /**
   * The first match in the buffered bytes, searched from `rb.mark` (no
   * match starts before it), or null; then moves `rb.mark` past every start
   * whose attempt more bytes cannot change. Without it a frame arriving a
   * byte at a time was searched from its start on every arrival: quadratic,
   * seconds of CPU for one 64 KiB frame.
   */
  #find(rb: ReceiveBuffer, regexSearch: boolean): RegExpExecArray | null {
    const from = rb.mark;
    const length = rb.length;
    let m: RegExpExecArray | null;
    if (!regexSearch) {
      // Only the attempt at the frame's start counts: once it failed with room to spare, it always will.
      if (from > 0) return null;
      this.#anchored.lastIndex = 0;
      m = this.#anchored.exec(rb.latin1());
    } else if (from === 0) {
      m = this.#search.exec(rb.latin1());
    } else if (this.#lookback <= from && length - from < from) {
      // Few new bytes behind many: only the bytes the search can look at
      // are read as text (else the whole text is, once per arrival, and kept
      // for the frames after this one). A `^` (no `m` flag) cannot match at
      // `lastIndex` > 0, as it cannot at `from` in the whole text.
      const start = from - this.#lookback;
      this.#resume.lastIndex = this.#lookback;
      m = this.#resume.exec(rb.peekRange(start, length, true).toString("latin1"));
      if (m !== null) m.index += start;
    } else {
      this.#resume.lastIndex = from;
      m = this.#resume.exec(rb.latin1());
    }
    if (m === null && length - this.#reach > from) rb.mark = regexSearch ? length - this.#reach : 1;
    return m;
  }

  extract(rb: ReceiveBuffer, limit: number, out: FrameOut, regexSearch: boolean): number {
    const m = this.#find(rb, regexSearch);
    if (m === null) {
      // The last bytes may be the start of a match: only a frame that
      // cannot fit however the match ends is cut short, then skipped
      // through its match, as one seen whole would be.
      if (rb.length > limit + REGEX_SLACK) {
        rb.discarding = true;
        rb.skipper = this;
        rb.mark = 0;
        rb.skip(rb.length - REGEX_SLACK);
        return OVERFLOW;
      }
      // (The next arrival makes the text anew.)
      rb.forgetText();
      return NEED_MORE;
    }
    rb.mark = 0;
    const end = m.index + m[0].length;
    if (end === 0) {
      out.error = new InvalidDelimiterMatch(this.source);
      return FAILED;
    }
    // The frame: the bytes before the match, or (regexSearch false) the match itself.
    if ((regexSearch ? m.index : end) > limit) {
      rb.skip(end);
      return OVERFLOW;
    }
    if (regexSearch) {
      out.value = rb.take(m.index);
      rb.skip(m[0].length);
    } else {
      rb.skip(end);
      out.value = m;
    }
    return FRAME;
  }

  /** Skipping an oversized frame: drops bytes through the next match. */
  discard(rb: ReceiveBuffer): number {
    const next = this.#search.exec(rb.latin1());
    if (next === null || next[0].length === 0) {
      rb.skip(rb.length - Math.min(rb.length, REGEX_SLACK));
      rb.forgetText();
      return NEED_MORE;
    }
    rb.skip(next.index + next[0].length);
    rb.discarding = false;
    return FRAME;
  }
}

/** Raised (through onError) when a regex matched the empty string at the buffer's start. */
class InvalidDelimiterMatch extends Error {
  constructor(re: RegExp) {
    super(`The read delimiter ${String(re)} matched the empty string; a delimiter must consume at least one byte.`);
  }
}

class StructFramer implements Framer {
  readonly minLimit: number;
  readonly needle = null;
  readonly search = null;
  constructor(readonly source: Struct) {
    this.minLimit = source.size;
  }
  extract(rb: ReceiveBuffer, _limit: number, out: FrameOut): number {
    const size = this.source.size;
    if (rb.length < size) return NEED_MORE;
    if (rb.firstLength >= size) {
      // In one chunk: read in place, no copy and no view.
      out.args = this.source.readAt(rb.firstChunk(), rb.offset);
      rb.skip(size);
    } else {
      out.args = this.source.readAt(rb.take(size), 0);
    }
    return FRAME_ARGS;
  }
}

class NetStructFramer implements Framer, Skipper {
  readonly minLimit: number;
  readonly needle = null;
  readonly search = null;
  constructor(readonly source: NetStruct) {
    this.minLimit = source.minimumSize;
  }
  extract(rb: ReceiveBuffer, limit: number, out: FrameOut): number {
    // rb.mark: bytes known to be needed before parsing again can progress
    // (parsed again if the limit was lowered below them, to refuse the record now).
    if (rb.length < rb.mark && rb.mark <= limit) return NEED_MORE;
    // Parsed from the bytes it needs only: the rest of the read that
    // completed them stays where it is, not copied with them.
    let known = rb.mark;
    let result: ReturnType<NetStruct["parse"]>;
    try {
      for (;;) {
        const buf = rb.upTo(known, limit);
        result = this.source.parse(buf);
        // (A record with more length prefixes needs more than the first said.)
        if (!("needed" in result) || buf.length === rb.length || result.needed > rb.length) break;
        known = result.needed;
      }
    } catch (err) {
      out.error = err as Error;
      return FAILED;
    }
    if ("needed" in result) {
      if (result.needed > limit) {
        // The record is skipped whole, by its own length prefixes, so what
        // follows it is framed as it would be however the bytes arrived.
        rb.mark = 0;
        rb.discarding = true;
        rb.skipper = this;
        rb.skipLeft = 0;
        rb.skipSegment = 0;
        const skipped = this.discard(rb, out);
        return skipped === FAILED ? FAILED : OVERFLOW;
      }
      rb.mark = result.needed;
      return NEED_MORE;
    }
    rb.mark = 0;
    if (result.consumed > limit) {
      rb.skip(result.consumed);
      return OVERFLOW;
    }
    rb.skip(result.consumed);
    out.args = result.values;
    return FRAME_ARGS;
  }

  /** Drops what has arrived of a record being skipped: FRAME once it is all gone, else NEED_MORE (or FAILED). */
  discard(rb: ReceiveBuffer, out: FrameOut): number {
    for (;;) {
      if (!rb.dropSkipped()) return NEED_MORE;
      let scan: ReturnType<NetStruct["skipScan"]>;
      try {
        scan = this.source.skipScan(rb.all(), rb.skipSegment);
      } catch (err) {
        out.error = err as Error;
        return FAILED;
      }
      if ("wait" in scan) return NEED_MORE;
      if ("end" in scan) {
        rb.skip(scan.end);
        rb.discarding = false;
        return FRAME;
      }
      rb.skipLeft = scan.through;
      rb.skipSegment = scan.next;
    }
  }
}

class DecoderFramer implements Framer, Skipper {
  readonly minLimit = 0;
  readonly needle = null;
  readonly search = null;
  constructor(readonly source: Decoder) {}
  extract(rb: ReceiveBuffer, limit: number, out: FrameOut): number {
    // rb.mark: the length the decoder said the frame has; not asked again before.
    if (rb.length < rb.mark) {
      if (rb.mark <= limit) return NEED_MORE;
      // The limit was lowered below it (bufferSize set meanwhile): refused now, and skipped by that length.
      this.#refuse(rb, rb.mark);
      rb.mark = 0;
      return OVERFLOW;
    }
    // A length it announced: it is shown that many bytes, and the rest of the
    // read that completed the frame stays where it is, not copied with it.
    let known = rb.mark;
    rb.mark = 0;
    let buf: Buffer;
    let result: ReturnType<Decoder>;
    for (;;) {
      // (No room past the limit: more than that is refused if it has no frame.)
      buf = rb.upTo(known, limit);
      // A throwing decoder is user code failing: the stream routes it to onError.
      rb.switched = false;
      result = this.source(buf, 0);
      if (buf.length === rb.length || rb.switched) break;
      // No frame in what it was shown, and more is buffered: it is shown the
      // length it says now, or every byte.
      if (result === null || result === undefined) known = 0;
      else if (typeof result === "number" && Number.isSafeInteger(result) && result > buf.length && result <= rb.length) known = result;
      else break;
    }
    // It set a new delimiter without taking a frame (sniffing the protocol):
    // the bytes are the new one's, however many are here.
    if (rb.switched && (result === null || result === undefined || typeof result === "number")) return NEED_MORE;
    if (result === null || result === undefined) {
      if (rb.length > limit) {
        rb.skip(rb.length);
        return OVERFLOW;
      }
      return NEED_MORE;
    }
    if (typeof result === "number") {
      if (!Number.isSafeInteger(result) || result <= buf.length) {
        out.error = new DecoderResultError(
          `The Decoder ${this.source.name || "(anonymous)"} returned ${describe(result)}; a number must be the length of the unfinished frame, ` +
            `more than the ${buf.length} bytes it was given.`,
        );
        return FAILED;
      }
      if (result > limit) {
        // Refused now, and skipped by its own length: what follows is framed as if it had arrived whole.
        this.#refuse(rb, result);
        return OVERFLOW;
      }
      rb.mark = result;
      return NEED_MORE;
    }
    const consumed = (result as { consumed?: unknown }).consumed;
    const args = (result as { args?: unknown }).args;
    if (typeof consumed !== "number" || !Number.isInteger(consumed) || consumed < 1 || consumed > buf.length) {
      out.error = new DecoderResultError(
        `The Decoder ${this.source.name || "(anonymous)"} returned a frame with consumed = ${describe(consumed)}; ` +
          `it must be an integer from 1 to the ${buf.length} bytes it was given.`,
      );
      return FAILED;
    }
    if (!Array.isArray(args)) {
      out.error = new DecoderResultError(
        `The Decoder ${this.source.name || "(anonymous)"} returned args = ${describe(args)}; expected an array.`,
      );
      return FAILED;
    }
    // The frame's views stay valid: the buffer is only ever sliced, never reused.
    rb.skip(consumed);
    if (consumed > limit) return OVERFLOW;
    out.args = args;
    return FRAME_ARGS;
  }

  /** Drops the buffered start of a frame of `length` bytes, and the rest as it arrives. */
  #refuse(rb: ReceiveBuffer, length: number): void {
    rb.discarding = true;
    rb.skipper = this;
    rb.skipLeft = length - rb.length;
    rb.skip(rb.length);
  }

  /** The rest of a frame the decoder said was too long, dropped as it arrives. */
  discard(rb: ReceiveBuffer): number {
    if (!rb.dropSkipped()) return NEED_MORE;
    rb.discarding = false;
    return FRAME;
  }
}

class DecoderResultError extends Error {}

/** @internal Marks errors from framing so the stream wraps them in InvalidReadDelimiterError. */
export function isFramingError(err: unknown): boolean {
  return err instanceof DecoderResultError || err instanceof InvalidDelimiterMatch;
}

/** The framer of `readDelimiter = null`. */
export const NULL_FRAMER: Framer = new NullFramer();
const stringFramers = new Map<string, BytesFramer>();
/** Size framers for sizes below SMALL_SIZES, made on first use (they hold no state). */
const SMALL_SIZES = 4096;
const sizeFramers = new Array<SizeFramer | undefined>(SMALL_SIZES);

/**
 * Validates a delimiter and returns its framer.
 * @throws TypeError for a value that is no delimiter, or one that could never consume a byte (a regex matching "", a Struct or NetStruct of size 0).
 */
export function compileDelimiter(value: unknown): Framer {
  if (value === null) return NULL_FRAMER;
  if (typeof value === "string") {
    if (value.length === 0) throw typeError("The read delimiter cannot be an empty string.", "ERR_INVALID_DELIMITER");
    let framer = stringFramers.get(value);
    if (framer === undefined) {
      framer = new BytesFramer(value, Buffer.from(value, "utf8"));
      if (stringFramers.size < 256) stringFramers.set(value, framer);
    }
    return framer;
  }
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw typeError(
        `The read delimiter must be a positive integer when it is a number, got ${describe(value)}.`,
        "ERR_INVALID_DELIMITER",
      );
    }
    // Protocols switch to a body's size and back for every message: small sizes are made once.
    if (value >= SMALL_SIZES) return new SizeFramer(value);
    return (sizeFramers[value] ??= new SizeFramer(value));
  }
  if (value instanceof Uint8Array) {
    if (value.length === 0) throw typeError("The read delimiter cannot be an empty Buffer.", "ERR_INVALID_DELIMITER");
    // Copy, so a caller reusing its buffer cannot change the delimiter under us.
    const copy = Buffer.from(value);
    return new BytesFramer(Buffer.isBuffer(value) ? value : copy, copy);
  }
  if (value instanceof RegExp) {
    const probe = new RegExp(value.source, value.flags.replace(/[gy]/g, ""));
    if (probe.test("")) {
      throw typeError(
        `The read delimiter ${String(value)} matches the empty string, so it could never consume a byte.`,
        "ERR_INVALID_DELIMITER",
      );
    }
    return new RegexFramer(value);
  }
  // A record of no bytes would be delivered again and again without consuming any.
  if (value instanceof Struct) {
    if (value.size === 0) throw typeError(`The read delimiter Struct(${JSON.stringify(value.format)}) has size 0, so it could never consume a byte.`, "ERR_INVALID_DELIMITER");
    return new StructFramer(value);
  }
  if (value instanceof NetStruct) {
    if (value.minimumSize === 0) throw typeError(`The read delimiter NetStruct(${JSON.stringify(value.format)}) has no fixed bytes, so it could never consume a byte.`, "ERR_INVALID_DELIMITER");
    return new NetStructFramer(value);
  }
  if (typeof value === "function") return new DecoderFramer(value as Decoder);
  throw typeError(
    `Invalid read delimiter ${describe(value)}: expected null, a non-empty string or Buffer, a positive integer, ` +
      `a RegExp, a Struct, a NetStruct or a Decoder function.`,
    "ERR_INVALID_DELIMITER",
  );
}
