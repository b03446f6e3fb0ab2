/**
 * The `netstruct` extension of Python's `struct` format language
 * (github.com/stendec/netstruct, `netstruct.py` 1.1.0), which adds
 * length-prefixed strings.
 *
 * Semantics, as read from netstruct's source:
 *
 * - Without a prefix the byte order is network order (`!`), not native `@`.
 * - `$` must directly follow an integer code. The format is split at each
 *   `$` into segments, every segment is compiled as its own struct, and the
 *   last value of a segment ending in `$` is the byte length of a string that
 *   follows that segment's bytes. On pack the string takes that value's place
 *   in the argument list; on unpack the string replaces the length.
 * - A repeat count belongs to the integer code, not to the `$`: in `3H$` the
 *   first two `H` are ordinary values and only the last is the length of one
 *   string. A count between the code and `$` (`H3$`), `$$`, and a leading `$`
 *   are errors. (A count of 0 before `$`, which breaks netstruct, is an error
 *   here too.)
 * - Because each segment is a separate struct, `@` alignment restarts after
 *   every string: offsets are aligned relative to the start of their segment.
 *
 * Deviations from netstruct: pad bytes (`x`) take no value (netstruct counts
 * them as values by mistake); `unpack` requires exactly one whole record
 * (netstruct ignores trailing bytes); every code of {@link Struct} is allowed
 * (netstruct 1.1.0 predates `e`, `n` and `N`); and returned `$` strings are
 * views into the parsed buffer rather than copies.
 */

import { Buffer } from "node:buffer";
import { rangeError, typeError } from "../errors.js";
import { Layout, parseByteOrder, type ByteOrderChar } from "./struct.js";
import { viewOf } from "./view.js";

/** Integer codes that may carry a `$` string. */
const LENGTH_CODES = "bBhHiIlLqQnN";

/** The largest length each prefix code can hold (8-byte codes are never the limit). */
function maxLength(code: string, order: ByteOrderChar): number {
  switch (code) {
    case "b":
      return 0x7f;
    case "B":
      return 0xff;
    case "h":
      return 0x7fff;
    case "H":
      return 0xffff;
    case "i":
      return 0x7fffffff;
    case "I":
      return 0xffffffff;
    case "l":
      return order === "@" ? Infinity : 0x7fffffff;
    case "L":
      return order === "@" ? Infinity : 0xffffffff;
    default:
      return Infinity;
  }
}

/** Where a {@link NetStruct.callerAt} function leaves what it did. */
export interface NetStructHeld {
  /** The record's length, set before the handler runs (so it is known if the handler throws). */
  used: number;
  /** What the handler returned. */
  result: unknown;
  /** The buffer's memory and offset in it (`b.buffer`, `b.byteOffset`: read once per buffer, not per string). */
  ab: ArrayBufferLike;
  base: number;
}

/** A compiled record reader and dispatcher; see {@link NetStruct.callerAt}. */
export type NetStructCaller = (
  buf: Buffer,
  offset: number,
  end: number,
  limit: number,
  fn: (...values: never[]) => unknown,
  self: unknown,
  held: NetStructHeld,
) => number;

interface Segment {
  readonly layout: Layout;
  /** The code of the length prefix when the segment ends with `$`, else null. */
  readonly lengthCode: string | null;
  /** Longest string the length prefix can describe. */
  readonly maxLength: number;
}

/** The outcome of {@link NetStruct.parse}. */
export type NetStructParseResult =
  | {
      /** The record's values, each `$` string in place of its length. */
      values: unknown[];
      /** Bytes the record occupied. */
      consumed: number;
    }
  | {
      /** Bytes (from the start of the buffer) to wait for before parsing again. */
      needed: number;
    };

const isDigit = (c: string): boolean => c >= "0" && c <= "9";

function typeName(value: unknown): string {
  if (value === null) return "null";
  return typeof value;
}

/**
 * A compiled netstruct format: Python `struct` codes plus `$` for strings
 * prefixed by their length.
 *
 * ```ts
 * const login = new NetStruct("ih$5b");
 * login.pack(1298, "default", 0, 0, 1, 0, 8);
 * // <Buffer 00 00 05 12 00 07 64 65 66 61 75 6c 74 00 00 01 00 08>
 * ```
 */
export class NetStruct {
  /** The format string, as given. */
  readonly format: string;
  /** Bytes in a record whose `$` strings are all empty. */
  readonly minimumSize: number;
  /** The number of values that {@link pack} takes and {@link unpack} returns. */
  readonly valueCount: number;
  readonly #segments: readonly Segment[];
  /** `#minimumFrom[i]`: minimum bytes of segments i and later. */
  readonly #minimumFrom: readonly number[];

  /**
   * Compiles `format`. Without a byte-order prefix, network order (`!`) is used.
   * @throws TypeError if `format` is not a string.
   * @throws RangeError if the format is malformed; the message names the
   *   offending character and its index.
   */
  constructor(format: string) {
    if (typeof format !== "string") {
      throw typeError(`NetStruct() format must be a string (got ${typeName(format)})`);
    }
    const { order, start } = parseByteOrder(format, "!");
    const segments: Segment[] = [];
    let segmentStart = start;
    for (let i = start; i < format.length; i++) {
      if (format.charAt(i) !== "$") continue;
      const code = i > segmentStart ? format.charAt(i - 1) : "";
      if (code === "" || !LENGTH_CODES.includes(code)) {
        throw rangeError(
          `'$' at index ${i} in netstruct format ${JSON.stringify(format)} must directly follow ` +
            `an integer format code (one of ${LENGTH_CODES})`,
          "ERR_INVALID_ARG_VALUE",
        );
      }
      // The repeat count, if any, written in front of the length code.
      let digits = i - 1;
      while (digits > segmentStart && isDigit(format.charAt(digits - 1))) digits--;
      if (digits < i - 1 && Number(format.slice(digits, i - 1)) === 0) {
        throw rangeError(
          `'$' at index ${i} in netstruct format ${JSON.stringify(format)} follows a repeat count of 0, ` +
            `so there is no length value`,
          "ERR_INVALID_ARG_VALUE",
        );
      }
      const layout = Layout.compile(format, segmentStart, i, order);
      segments.push({ layout, lengthCode: code, maxLength: maxLength(code, order) });
      segmentStart = i + 1;
    }
    if (segmentStart < format.length) {
      segments.push({ layout: Layout.compile(format, segmentStart, format.length, order), lengthCode: null, maxLength: 0 });
    }

    const minimumFrom = new Array<number>(segments.length + 1).fill(0);
    for (let i = segments.length - 1; i >= 0; i--) minimumFrom[i] = minimumFrom[i + 1]! + segments[i]!.layout.size;

    this.format = format;
    this.#segments = segments;
    this.#minimumFrom = minimumFrom;
    this.minimumSize = minimumFrom[0]!;
    this.valueCount = segments.reduce((n, s) => n + s.layout.valueCount, 0);
  }

  /**
   * Packs `values`; each `$` string (a Buffer, Uint8Array or UTF-8 string)
   * is given in place of its length, which is computed.
   * @throws TypeError for a wrong number of values or a value of the wrong type.
   * @throws RangeError for a value out of range, or a string too long for its length prefix.
   */
  pack(...values: unknown[]): Buffer {
    if (values.length !== this.valueCount) {
      throw typeError(`pack expected ${this.valueCount} items for packing (got ${values.length})`);
    }
    // First pass: encode the strings, so the total size is known.
    const strings: Uint8Array[] = [];
    let total = 0;
    let vi = 0;
    for (const segment of this.#segments) {
      vi += segment.layout.valueCount;
      total += segment.layout.size;
      if (segment.lengthCode === null) continue;
      const value = values[vi - 1];
      let bytes: Uint8Array;
      if (value instanceof Uint8Array) bytes = value;
      else if (typeof value === "string") bytes = Buffer.from(value, "utf8");
      else {
        throw typeError(
          `argument ${vi - 1} for '${segment.lengthCode}$' must be a Buffer, Uint8Array or string (got ${typeName(value)})`,
        );
      }
      if (bytes.length > segment.maxLength) {
        throw rangeError(
          `string of ${bytes.length} bytes is too long for its '${segment.lengthCode}' length prefix ` +
            `(at most ${segment.maxLength})`,
        );
      }
      strings.push(bytes);
      total += bytes.length;
    }

    const out = Buffer.alloc(total);
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    let pos = 0;
    let si = 0;
    vi = 0;
    for (const segment of this.#segments) {
      const { layout } = segment;
      if (segment.lengthCode === null) {
        layout.write(values, vi, view, out, pos);
        pos += layout.size;
      } else {
        const bytes = strings[si++]!;
        const args = values.slice(vi, vi + layout.valueCount);
        args[args.length - 1] = bytes.length;
        layout.write(args, 0, view, out, pos);
        pos += layout.size;
        out.set(bytes, pos);
        pos += bytes.length;
      }
      vi += layout.valueCount;
    }
    return out;
  }

  /**
   * Unpacks exactly one whole record.
   * @throws RangeError if `buf` holds less or more than one record, or a length prefix is negative.
   */
  unpack(buf: Uint8Array): unknown[] {
    const result = this.parse(buf);
    if ("needed" in result) {
      throw rangeError(`unpack requires at least ${result.needed} bytes (got ${buf.length})`);
    }
    if (result.consumed !== buf.length) {
      throw rangeError(`unpack requires a buffer of ${result.consumed} bytes (got ${buf.length})`);
    }
    return result.values;
  }

  #readers: Array<((buf: Buffer, offset: number) => unknown[]) | null> | null = null;
  #caller: NetStructCaller | null | undefined;

  /**
   * @internal The framing hot path, for formats whose fields are all
   * numbers (plus the `$` strings): a function that reads the record at
   * `offset` of `buf` (bytes up to `end`), and when it is whole and at most
   * `limit` bytes long, sets `held.used` to its length, calls
   * `fn.call(self, ...values)` (strings as views of `held.ab` from
   * `held.base`, which must be `buf`'s memory and offset), puts the result in
   * `held.result` and returns the length. It returns -1 when the record is
   * not whole, or cannot be taken here (a negative or huge prefix, over the
   * limit): the general path ({@link parse}) then handles those bytes. Only
   * `fn` can throw. Null when some field has no compiled reader.
   */
  callerAt(): NetStructCaller | null {
    if (this.#caller !== undefined) return this.#caller;
    const lines: string[] = ["let p = o;"];
    const args: string[] = [];
    let v = 0;
    for (const segment of this.#segments) {
      const { layout } = segment;
      const exprs = layout.valueExprs("p");
      if (exprs === null) return (this.#caller = null);
      lines.push(`if (end - p < ${layout.size}) return -1;`);
      const names = exprs.map(() => `v${v++}`);
      exprs.forEach((expr, i) => lines.push(`const ${names[i]} = ${expr};`));
      lines.push(`p += ${layout.size};`);
      if (segment.lengthCode === null) {
        args.push(...names);
        continue;
      }
      // The last value is the string's length: the string takes its place.
      const prefix = names.pop()!;
      args.push(...names);
      const n = `n${v}`;
      lines.push(`const ${n} = Number(${prefix});`);
      lines.push(`if (!(${n} >= 0) || ${n} > end - p) return -1;`);
      const str = `s${v}`;
      lines.push(`const ${str} = view(held.ab, held.base + p, ${n});`);
      lines.push(`p += ${n};`);
      args.push(str);
    }
    lines.push("if (p - o > limit) return -1;");
    lines.push("held.used = p - o;");
    lines.push(`held.result = f.call(self${args.length > 0 ? ", " : ""}${args.join(", ")});`);
    lines.push("return p - o;");
    // Generated from the validated segments only (codes and offsets): no user text reaches the source.
    // Strings are views made by view.ts's viewOf(), handed in by a factory (subarray costs twice as much).
    const body = `return function (b, o, end, limit, f, self, held) {\n${lines.join("\n")}\n};`;
    return (this.#caller = (new Function("view", body) as (v: typeof viewOf) => NetStructCaller)(viewOf));
  }

  /** Compiled readers of the segments (null entries: segments with strings). */
  #compiledReaders(): Array<((buf: Buffer, offset: number) => unknown[]) | null> {
    return (this.#readers ??= this.#segments.map((segment) => segment.layout.compileReader()));
  }

  /**
   * @internal Skipping an oversized record without buffering it: reads the
   * record's length prefixes from `buf`, which starts at segment `from`.
   * Returns `{ end }` when the rest of the record is in `buf`; `{ through,
   * next }` when a string runs past it (drop `through` bytes, then go on at
   * segment `next`); `{ wait: true }` when a length prefix has not arrived yet.
   * @throws RangeError for a negative or impossible length prefix, as {@link parse} does.
   */
  skipScan(buf: Buffer, from: number): { end: number } | { through: number; next: number } | { wait: true } {
    const segments = this.#segments;
    const readers = this.#compiledReaders();
    let view: DataView | null = null;
    let pos = 0;
    for (let i = from; i < segments.length; i++) {
      const segment = segments[i]!;
      const { layout } = segment;
      if (buf.length - pos < layout.size) return { wait: true };
      pos += layout.size;
      if (segment.lengthCode === null) continue;
      let values: unknown[];
      const reader = readers[i];
      if (reader != null) values = reader(buf, pos - layout.size);
      else {
        values = [];
        view ??= new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
        layout.read(buf, view, pos - layout.size, values);
      }
      const prefix = values[values.length - 1] as number | bigint;
      if (prefix < 0) throw rangeError(`negative length prefix ${prefix} for the '${segment.lengthCode}$' string ending at offset ${pos}`, "ERR_MALFORMED_FRAME");
      const length = Number(prefix);
      if (!Number.isSafeInteger(pos + length)) {
        throw rangeError(`length prefix ${prefix} for the '${segment.lengthCode}$' string is too large`, "ERR_MALFORMED_FRAME");
      }
      if (buf.length - pos < length) return { through: pos + length, next: i + 1 };
      pos += length;
    }
    return { end: pos };
  }

  /**
   * Incremental parsing: looks at the start of `buf` (which may hold a
   * partial record or more than one record).
   *
   * Returns `{ values, consumed }` when a whole record is present, else
   * `{ needed }`, the total number of bytes (from `buf[0]`) that must be
   * available before calling again can make progress: the exact record
   * length once all its length prefixes are readable, a lower bound before
   * that. `needed` is always greater than `buf.length`.
   *
   * Costs O(number of fields); `$` strings are returned as views into `buf`.
   * @throws TypeError when `buf` is not a Buffer or Uint8Array.
   * @throws RangeError (`ERR_MALFORMED_FRAME`) if a length prefix is
   *   negative, or so large that the record would exceed 2**53 - 1 bytes.
   */
  parse(buf: Uint8Array): NetStructParseResult {
    if (!(buf instanceof Uint8Array)) {
      throw typeError(`parse requires a Buffer or Uint8Array (got ${typeName(buf)})`);
    }
    let view: DataView | null = null;
    const values: unknown[] = [];
    const segments = this.#segments;
    const readers = Buffer.isBuffer(buf) ? this.#compiledReaders() : null;
    let pos = 0;
    for (let i = 0; i < segments.length; i++) {
      const segment = segments[i]!;
      const { layout } = segment;
      if (buf.length - pos < layout.size) return { needed: pos + this.#minimumFrom[i]! };
      const reader = readers !== null ? readers[i]! : null;
      if (reader !== null) {
        const got = reader(buf as Buffer, pos);
        for (let k = 0; k < got.length; k++) values.push(got[k]);
      } else {
        view ??= new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
        layout.read(buf, view, pos, values);
      }
      pos += layout.size;
      if (segment.lengthCode === null) continue;

      const prefix = values.pop() as number | bigint;
      if (prefix < 0) {
        throw rangeError(`negative length prefix ${prefix} for the '${segment.lengthCode}$' string ending at offset ${pos}`, "ERR_MALFORMED_FRAME");
      }
      // Keep `needed` an exact integer: no buffer can reach 2**53 bytes anyway.
      const length = Number(prefix);
      const end = pos + length + this.#minimumFrom[i + 1]!;
      if (!Number.isSafeInteger(end)) {
        throw rangeError(`length prefix ${prefix} for the '${segment.lengthCode}$' string is too large`, "ERR_MALFORMED_FRAME");
      }
      if (buf.length - pos < length) return { needed: end };
      values.push(Buffer.from(buf.buffer, buf.byteOffset + pos, length));
      pos += length;
    }
    return { values, consumed: pos };
  }
}
