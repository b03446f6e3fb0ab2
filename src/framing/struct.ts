/**
 * Python's `struct` format language: conversions between JavaScript values
 * and C structs packed into bytes.
 *
 * The behaviour follows CPython 3 (`Modules/_struct.c`) for an x86_64 LP64
 * host, with these JavaScript-specific choices:
 *
 * - Integers of 1 to 4 bytes unpack as `number`; 8-byte integers (`q Q n N P`,
 *   and `l L` under `@`, where they are C `long`s) unpack as `bigint`, since a
 *   `number` cannot hold them exactly. Packing accepts either a `bigint` or an
 *   integral `number` for every integer code.
 * - `?` packs JavaScript truthiness (`Boolean(value)`), so `NaN` and `""` pack
 *   as false and an empty array as true.
 * - `c`, `s` and `p` also accept strings (`c`: one latin1 character; `s`, `p`:
 *   UTF-8 encoded) besides `Buffer`/`Uint8Array`.
 * - `f` overflow follows CPython 3.11: a RangeError with `<`, `>`, `!` and
 *   `=`, but infinity under `@` (CPython casts to C float there, unchecked).
 * - `0p` packs nothing and unpacks to an empty buffer (CPython writes a stray
 *   byte and fails to unpack it).
 * - Python's `struct.error` becomes `RangeError` for values out of range,
 *   malformed formats and wrong buffer sizes, and `TypeError` for values of
 *   the wrong type and wrong numbers of values.
 * - `packInto` is atomic: on error the target buffer is left untouched.
 */

import { Buffer } from "node:buffer";
import { endianness } from "node:os";
import { rangeError, typeError } from "../errors.js";

/** A byte order, size and alignment prefix. */
export type ByteOrderChar = "@" | "=" | "<" | ">" | "!";

const BYTE_ORDER_CHARS = "@=<>!";
const HOST_LITTLE_ENDIAN = endianness() === "LE";
const MAX_SIZE = Number.MAX_SAFE_INTEGER;

/** What a format code does with its bytes. */
type Kind = "pad" | "int" | "pointer" | "bool" | "char" | "string" | "pascal" | "half" | "float" | "double";

interface CodeSpec {
  readonly kind: Kind;
  /** Bytes per item (for `s` and `p`: per repeat, i.e. the count is the length). */
  readonly size: number;
  /** Alignment under `@` (C `alignof` on x86_64); 1 means none. */
  readonly align: number;
  readonly signed?: boolean;
}

const spec = (kind: Kind, size: number, signed?: boolean): CodeSpec => ({
  kind,
  size,
  // Every scalar on x86_64 is aligned to its own size; bytes need none.
  align: kind === "pad" || kind === "char" || kind === "string" || kind === "pascal" ? 1 : size,
  signed,
});

/** Codes available with every prefix, with standard sizes. */
const STANDARD_CODES: Readonly<Record<string, CodeSpec>> = {
  x: spec("pad", 1),
  c: spec("char", 1),
  b: spec("int", 1, true),
  B: spec("int", 1, false),
  "?": spec("bool", 1),
  h: spec("int", 2, true),
  H: spec("int", 2, false),
  i: spec("int", 4, true),
  I: spec("int", 4, false),
  l: spec("int", 4, true),
  L: spec("int", 4, false),
  q: spec("int", 8, true),
  Q: spec("int", 8, false),
  e: spec("half", 2),
  f: spec("float", 4),
  d: spec("double", 8),
  s: spec("string", 1),
  p: spec("pascal", 1),
};

/** Codes under `@`: C `long` is 8 bytes on LP64, plus `ssize_t`, `size_t` and `void *`. */
const NATIVE_CODES: Readonly<Record<string, CodeSpec>> = {
  ...STANDARD_CODES,
  l: spec("int", 8, true),
  L: spec("int", 8, false),
  n: spec("int", 8, true),
  N: spec("int", 8, false),
  P: spec("pointer", 8),
};

/** One format code with its repeat count, laid out at a fixed offset. */
/** A compiled `(buf, offset, fn, self) => fn.call(self, ...values at offset)`. */
type StructCaller = (buf: Buffer, offset: number, fn: (...values: never[]) => unknown, self: unknown) => unknown;

interface Run {
  readonly code: string;
  readonly kind: Kind;
  /** Repeat count as written (for `s`/`p`: the byte length). */
  readonly count: number;
  /** Offset of the first item from the start of the layout. */
  readonly offset: number;
  /** Bytes per item; for `s`/`p` the whole field is one item of `count` bytes. */
  readonly itemSize: number;
  /** Values consumed by pack / produced by unpack. */
  readonly values: number;
  readonly signed: boolean;
  /** True under `@` (matters for `f` overflow). */
  readonly native: boolean;
  /** Inclusive integer range, for `int` and `pointer` runs. */
  readonly min: bigint;
  readonly max: bigint;
}

/** The parsed byte-order prefix of a format. */
export interface ByteOrderPrefix {
  readonly order: ByteOrderChar;
  /** Index of the first character after the prefix (0 when there is none). */
  readonly start: number;
}

/**
 * Reads the optional byte-order prefix of `format`.
 * @internal Shared with {@link NetStruct}, which has a different default.
 */
export function parseByteOrder(format: string, fallback: ByteOrderChar): ByteOrderPrefix {
  const first = format.charAt(0);
  if (first !== "" && BYTE_ORDER_CHARS.includes(first)) return { order: first as ByteOrderChar, start: 1 };
  return { order: fallback, start: 0 };
}

const isDigit = (c: string): boolean => c >= "0" && c <= "9";

/** Python skips C `isspace` characters between codes: space, \t, \n, \v, \f, \r. */
const isSpace = (c: string): boolean =>
  c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r";

function formatError(message: string, format: string, index: number): RangeError {
  return rangeError(`${message} at index ${index} in struct format ${JSON.stringify(format)}`, "ERR_INVALID_ARG_VALUE");
}

/**
 * A compiled run of format codes: sizes, offsets and the code that moves
 * values in and out of bytes.
 * @internal Use {@link Struct}; exported for {@link NetStruct}.
 */
export class Layout {
  /** Total bytes, like `struct.calcsize` (no trailing padding). */
  readonly size: number;
  /** Values taken by pack and returned by unpack. */
  readonly valueCount: number;
  readonly #runs: readonly Run[];
  readonly #little: boolean;

  private constructor(runs: readonly Run[], size: number, valueCount: number, little: boolean) {
    this.#runs = runs;
    this.size = size;
    this.valueCount = valueCount;
    this.#little = little;
  }

  /**
   * Compiles `format.slice(start, end)` (which must not contain the prefix)
   * with the given byte order. Error messages give indexes into `format`.
   */
  static compile(format: string, start: number, end: number, order: ByteOrderChar): Layout {
    const native = order === "@";
    const little = order === "<" || ((order === "@" || order === "=") && HOST_LITTLE_ENDIAN);
    const table = native ? NATIVE_CODES : STANDARD_CODES;
    const runs: Run[] = [];
    let size = 0;
    let valueCount = 0;
    let pos = start;
    while (pos < end) {
      let c = format.charAt(pos);
      if (isSpace(c)) {
        pos++;
        continue;
      }
      const tokenStart = pos;
      let count = 1;
      if (isDigit(c)) {
        count = 0;
        while (pos < end && isDigit(format.charAt(pos))) {
          count = count * 10 + (format.charCodeAt(pos) - 48);
          if (count > MAX_SIZE) throw formatError("total struct size too long: repeat count overflows", format, tokenStart);
          pos++;
        }
        if (pos === end) throw formatError("repeat count given without format specifier", format, tokenStart);
        // Python does not allow whitespace between a count and its code: it is a bad char.
        c = format.charAt(pos);
      }
      const codeSpec = Object.hasOwn(table, c) ? table[c] : undefined;
      if (codeSpec === undefined) throw badChar(format, pos, c, native);

      // Under '@' each item is aligned to its own size, even with a count of 0
      // (Python's documented trick: "llh0l" ends padded to a multiple of 8).
      if (native && codeSpec.align > 1) size = Math.ceil(size / codeSpec.align) * codeSpec.align;

      const bytesField = codeSpec.kind === "string" || codeSpec.kind === "pascal";
      const values = bytesField ? 1 : codeSpec.kind === "pad" ? 0 : count;
      const itemSize = bytesField ? count : codeSpec.size;
      const signed = codeSpec.signed === true;
      const bits = BigInt(codeSpec.size * 8);
      let min = 0n;
      let max = 0n;
      if (codeSpec.kind === "int") {
        min = signed ? -(1n << (bits - 1n)) : 0n;
        max = signed ? (1n << (bits - 1n)) - 1n : (1n << bits) - 1n;
      } else if (codeSpec.kind === "pointer") {
        // CPython converts negative pointers as signed and wraps them.
        min = -(1n << (bits - 1n));
        max = (1n << bits) - 1n;
      }
      runs.push({ code: c, kind: codeSpec.kind, count, offset: size, itemSize, values, signed, native, min, max });
      size += bytesField ? count : count * codeSpec.size;
      if (size > MAX_SIZE) throw formatError("total struct size too long", format, tokenStart);
      valueCount += values;
      pos++;
    }
    return new Layout(runs, size, valueCount, little);
  }

  /**
   * Writes `values[start .. start + valueCount)` at `base`. The target bytes
   * must already be zero (padding is never written).
   */
  write(values: readonly unknown[], start: number, view: DataView, bytes: Uint8Array, base: number): void {
    const little = this.#little;
    let vi = start;
    for (const run of this.#runs) {
      let pos = base + run.offset;
      switch (run.kind) {
        case "pad":
          break;
        case "string": {
          const src = toBytes(values[vi++], run.code);
          bytes.set(src.length > run.count ? src.subarray(0, run.count) : src, pos);
          break;
        }
        case "pascal": {
          const src = toBytes(values[vi++], run.code);
          if (run.count === 0) break;
          // The data is truncated to count-1 bytes; the length byte is then capped at 255.
          const n = Math.min(src.length, run.count - 1);
          bytes.set(src.subarray(0, n), pos + 1);
          bytes[pos] = Math.min(n, 255);
          break;
        }
        default:
          for (let k = 0; k < run.count; k++, pos += run.itemSize) {
            writeScalar(run, values[vi++], view, bytes, pos, little);
          }
      }
    }
  }

  /**
   * The source expressions reading each value of `b` at `base` (a variable
   * name); null when a code has no compiled form (strings, chars, halves).
   */
  valueExprs(base = "o"): string[] | null {
    const little = this.#little;
    const end = little ? "LE" : "BE";
    const exprs: string[] = [];
    for (const run of this.#runs) {
      // A string gives one value even with a count of 0 (an empty buffer), so check it before the loop.
      if (run.kind === "string" || run.kind === "pascal") return null;
      for (let k = 0; k < (run.kind === "pad" ? 0 : run.count); k++) {
        const at = `${base} + ${run.offset + k * run.itemSize}`;
        switch (run.kind) {
          case "int":
            if (run.itemSize === 1) exprs.push(run.signed ? `((b[${at}] << 24) >> 24)` : `b[${at}]`);
            else if (run.itemSize === 2 || run.itemSize === 4) exprs.push(intExpr(base, run.offset + k * run.itemSize, run.itemSize, run.signed, little));
            else exprs.push(`b.readBig${run.signed ? "Int" : "UInt"}64${end}(${at})`);
            break;
          case "pointer":
            exprs.push(`b.readBigUInt64${end}(${at})`);
            break;
          case "bool":
            exprs.push(`b[${at}] !== 0`);
            break;
          case "float":
            exprs.push(`b.readFloat${end}(${at})`);
            break;
          case "double":
            exprs.push(`b.readDouble${end}(${at})`);
            break;
          default:
            return null;
        }
      }
    }
    return exprs;
  }

  /**
   * A reader compiled for this layout when it holds only numbers and
   * booleans (the common binary header): `(buf, offset) => values`, with no
   * DataView and no per-code dispatch. Null for layouts with strings, chars
   * or halves (they use {@link read}).
   */
  compileReader(): ((buf: Buffer, offset: number) => unknown[]) | null {
    const exprs = this.valueExprs();
    // Generated from the validated layout only (codes and offsets): no user text reaches the source.
    return exprs === null ? null : (new Function("b", "o", `return [${exprs.join(", ")}];`) as (buf: Buffer, offset: number) => unknown[]);
  }

  /**
   * Like {@link compileReader}, but the values go straight to a call,
   * `f.call(self, v1, v2, ...)`: no array per record, no `apply`.
   */
  compileCaller(): StructCaller | null {
    const exprs = this.valueExprs();
    if (exprs === null) return null;
    const args = exprs.length === 0 ? "" : `, ${exprs.join(", ")}`;
    return new Function("b", "o", "f", "s", `return f.call(s${args});`) as StructCaller;
  }

  /** Reads `valueCount` values from `base`, appending them to `out`. */
  read(bytes: Uint8Array, view: DataView, base: number, out: unknown[]): void {
    const little = this.#little;
    for (const run of this.#runs) {
      let pos = base + run.offset;
      switch (run.kind) {
        case "pad":
          break;
        case "string":
          out.push(Buffer.from(bytes.subarray(pos, pos + run.count)));
          break;
        case "pascal": {
          if (run.count === 0) {
            out.push(Buffer.alloc(0));
            break;
          }
          // A length byte larger than the field is capped, as in CPython.
          const n = Math.min(bytes[pos]!, run.count - 1);
          out.push(Buffer.from(bytes.subarray(pos + 1, pos + 1 + n)));
          break;
        }
        default:
          for (let k = 0; k < run.count; k++, pos += run.itemSize) {
            out.push(readScalar(run, view, bytes, pos, little));
          }
      }
    }
  }
}

/**
 * Source for a 2- or 4-byte integer at `base + offset` of `b`, from its
 * bytes (the caller has checked they are there): cheaper than
 * `b.readUInt16BE()` and friends, which test every byte for `undefined`.
 */
function intExpr(base: string, offset: number, size: 2 | 4, signed: boolean, little: boolean): string {
  const byte = (i: number) => `b[${base} + ${offset + (little ? size - 1 - i : i)}]`; // i-th most significant
  if (size === 2) return signed ? `(((${byte(0)} << 24) >> 16) | ${byte(1)})` : `((${byte(0)} << 8) | ${byte(1)})`;
  const low = `(${byte(1)} << 16) | (${byte(2)} << 8) | ${byte(3)}`;
  return signed ? `((${byte(0)} << 24) | ${low})` : `(${byte(0)} * 0x1000000 + (${low}))`;
}

function badChar(format: string, index: number, c: string, native: boolean): RangeError {
  let hint = "";
  if (BYTE_ORDER_CHARS.includes(c)) hint = " (a byte order character is only allowed as the first character)";
  else if (!native && Object.hasOwn(NATIVE_CODES, c)) hint = ` ('${c}' is only available in native '@' mode)`;
  return formatError(`bad char ${JSON.stringify(c)}${hint}`, format, index);
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Buffer.isBuffer(value)) return "Buffer";
  if (value instanceof Uint8Array) return "Uint8Array";
  if (typeof value === "number" && !Number.isInteger(value)) return `non-integral number ${value}`;
  return typeof value;
}

/** The bytes of an `s`, `p` or `c` argument. */
function toBytes(value: unknown, code: string): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return Buffer.from(value, "utf8");
  throw typeError(`argument for '${code}' must be a Buffer, Uint8Array or string (got ${typeName(value)})`);
}

/** Checks an integer argument against the run's range; returns it unchanged. */
function checkInteger(run: Run, value: unknown): number | bigint {
  let inRange: boolean;
  if (typeof value === "number") {
    if (!Number.isInteger(value)) {
      throw typeError(`required argument is not an integer: '${run.code}' got ${typeName(value)}`);
    }
    inRange = value >= Number(run.min) && value <= Number(run.max);
    // Above 2**53 the Number() limits are rounded; compare exactly instead.
    if (inRange && run.itemSize === 8) inRange = BigInt(value) >= run.min && BigInt(value) <= run.max;
  } else if (typeof value === "bigint") {
    inRange = value >= run.min && value <= run.max;
  } else {
    throw typeError(`required argument is not an integer: '${run.code}' got ${typeName(value)}`);
  }
  if (!inRange) {
    throw rangeError(
      `argument out of range: '${run.code}' format requires ${run.min} <= number <= ${run.max} (got ${value})`,
    );
  }
  return value;
}

/** Converts a float argument like CPython's `PyFloat_AsDouble`. */
function toDouble(run: Run, value: unknown): number {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") {
    const x = Number(value);
    if (!Number.isFinite(x)) throw rangeError(`int too large to convert to float for '${run.code}' format`);
    return x;
  }
  throw typeError(`required argument is not a float: '${run.code}' got ${typeName(value)}`);
}

function writeScalar(run: Run, value: unknown, view: DataView, bytes: Uint8Array, pos: number, little: boolean): void {
  switch (run.kind) {
    case "int": {
      const v = checkInteger(run, value);
      switch (run.itemSize) {
        case 1:
          bytes[pos] = Number(v) & 0xff;
          return;
        case 2:
          view.setUint16(pos, Number(v) & 0xffff, little);
          return;
        case 4:
          view.setUint32(pos, Number(v) >>> 0, little);
          return;
        default:
          view.setBigUint64(pos, BigInt.asUintN(64, BigInt(v)), little);
          return;
      }
    }
    case "pointer":
      view.setBigUint64(pos, BigInt.asUintN(64, BigInt(checkInteger(run, value))), little);
      return;
    case "bool":
      bytes[pos] = value ? 1 : 0;
      return;
    case "char": {
      let byte = -1;
      if (value instanceof Uint8Array) {
        if (value.length === 1) byte = value[0]!;
      } else if (typeof value === "string") {
        if (value.length === 1 && value.charCodeAt(0) <= 0xff) byte = value.charCodeAt(0);
      }
      if (byte < 0) {
        throw typeError(
          `char format requires a Buffer of length 1 or a one-character latin1 string (got ${describeChar(value)})`,
        );
      }
      bytes[pos] = byte;
      return;
    }
    case "half":
      view.setUint16(pos, halfBits(toDouble(run, value)), little);
      return;
    case "float": {
      const x = toDouble(run, value);
      // With standard sizes CPython's PyFloat_Pack4 rejects a finite double
      // that rounds to infinity in binary32; under '@' it is a plain C cast
      // to float, which yields infinity.
      if (!run.native && Number.isFinite(x) && !Number.isFinite(Math.fround(x))) {
        throw rangeError(`float too large to pack with f format (got ${x})`);
      }
      view.setFloat32(pos, x, little);
      return;
    }
    case "double":
      view.setFloat64(pos, toDouble(run, value), little);
      return;
    default:
      throw new Error(`unreachable: '${run.code}' is not a scalar code`);
  }
}

function describeChar(value: unknown): string {
  if (value instanceof Uint8Array) return `${typeName(value)} of length ${value.length}`;
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  return typeName(value);
}

function readScalar(run: Run, view: DataView, bytes: Uint8Array, pos: number, little: boolean): unknown {
  switch (run.kind) {
    case "int":
      switch (run.itemSize) {
        case 1:
          return run.signed ? view.getInt8(pos) : bytes[pos]!;
        case 2:
          return run.signed ? view.getInt16(pos, little) : view.getUint16(pos, little);
        case 4:
          return run.signed ? view.getInt32(pos, little) : view.getUint32(pos, little);
        default:
          return run.signed ? view.getBigInt64(pos, little) : view.getBigUint64(pos, little);
      }
    case "pointer":
      return view.getBigUint64(pos, little);
    case "bool":
      // Any non-zero byte is true.
      return bytes[pos] !== 0;
    case "char":
      return Buffer.from(bytes.subarray(pos, pos + 1));
    case "half":
      return halfValue(view.getUint16(pos, little));
    case "float":
      return view.getFloat32(pos, little);
    case "double":
      return view.getFloat64(pos, little);
    default:
      throw new Error(`unreachable: '${run.code}' is not a scalar code`);
  }
}

const scratch = new DataView(new ArrayBuffer(8));

/**
 * IEEE 754 binary16 bits of `x`, rounded to nearest with ties to even, as
 * CPython's `PyFloat_Pack2`: NaN becomes the quiet NaN 0x7e00 with the
 * NaN's sign (read from its float64 bits; the payload is dropped, as
 * CPython drops it), and a finite value whose rounding overflows
 * (|x| >= 65520) is a RangeError.
 */
function halfBits(x: number): number {
  if (Number.isNaN(x)) {
    scratch.setFloat64(0, x);
    return (scratch.getUint8(0) & 0x80) !== 0 ? 0xfe00 : 0x7e00;
  }
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  // 65504 is the largest half; 65520 is the midpoint to 65536 and ties to even (upwards).
  if (a >= 65520) throw rangeError(`float too large to pack with e format (got ${x})`);
  if (a === 0) return sign;
  // The unbiased binary exponent of `a`, read exactly from its float64 bits
  // (Math.log2 can be off by one next to powers of two).
  scratch.setFloat64(0, a);
  const exponent = ((scratch.getUint16(0) >>> 4) & 0x7ff) - 1023;
  // The spacing of halves around `a`: 2**-24 for subnormals, else 2**(exponent-10).
  const quantumExp = exponent < -14 ? -24 : exponent - 10;
  const scaled = a * 2 ** -quantumExp; // exact: a power-of-two scaling
  let n = Math.floor(scaled);
  const rest = scaled - n;
  if (rest > 0.5 || (rest === 0.5 && n % 2 === 1)) n++;
  if (quantumExp === -24) {
    // Subnormal (or zero after rounding). A carry to 1024 is exactly the
    // smallest normal, whose bit pattern is also 0x0400.
    return sign | n;
  }
  // n is in [1024, 2048]; adding the biased exponent above the implicit bit
  // lets a carry to 2048 move into the next exponent.
  return sign | (((exponent + 14) << 10) + n);
}

/**
 * The quiet NaN with the given sign, read from its bits: a NaN constant
 * would lose its sign (V8's optimizer folds any value it knows to be NaN
 * into the canonical positive one).
 */
function quietNaN(negative: boolean): number {
  scratch.setUint32(0, negative ? 0xfff80000 : 0x7ff80000);
  scratch.setUint32(4, 0);
  return scratch.getFloat64(0);
}

/**
 * An empty array for unpacked values that V8 keeps as tagged elements. One
 * that had held only numbers would be made (from its allocation site's
 * feedback, after a few calls) as an array of doubles, where V8 stores any
 * NaN as the canonical one: a negative NaN came out positive.
 */
function valuesArray(): unknown[] {
  const out: unknown[] = [undefined];
  out.pop();
  return out;
}

/**
 * The value of binary16 bits. A NaN keeps its sign and drops its payload,
 * as CPython's `PyFloat_Unpack2` does.
 */
function halfValue(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : quietNaN(sign < 0);
  return sign * (1024 + fraction) * 2 ** (exponent - 25);
}

function checkOffset(offset: unknown, name: string): number {
  if (typeof offset !== "number" || !Number.isInteger(offset)) {
    throw typeError(`${name} offset must be an integer (got ${typeName(offset)})`);
  }
  return offset;
}

function checkBuffer(buf: unknown, name: string): Uint8Array {
  if (!(buf instanceof Uint8Array)) throw typeError(`${name} requires a Buffer or Uint8Array (got ${typeName(buf)})`);
  return buf;
}

const viewOf = (buf: Uint8Array): DataView => new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

/**
 * A compiled Python `struct` format.
 *
 * ```ts
 * const header = new Struct("!HHi");
 * header.pack(1, 2, -3);             // <Buffer 00 01 00 02 ff ff ff fd>
 * header.unpack(bytes);              // [1, 2, -3]
 * ```
 *
 * The format starts with an optional prefix: `@` (default; native byte
 * order, sizes and alignment of x86_64 Linux), `=` (native order, standard
 * sizes, no alignment), `<` (little-endian), `>` or `!` (big-endian). Codes:
 * `x` pad byte, `c` char, `b`/`B` 8-bit, `h`/`H` 16-bit, `i`/`I` 32-bit,
 * `l`/`L` 32-bit (64-bit under `@`), `q`/`Q` 64-bit integers, `n`/`N`
 * `ssize_t`/`size_t` and `P` pointer (only under `@`), `?` bool, `e`/`f`/`d`
 * binary16/32/64 floats, `s` fixed-length bytes and `p` Pascal string. A
 * decimal repeat count may precede a code; for `s` and `p` it is the length.
 * Whitespace between codes is ignored.
 */
export class Struct {
  /** The format string, as given. */
  readonly format: string;
  /** The number of bytes packed by this format, like Python's `struct.calcsize`. */
  readonly size: number;
  readonly #layout: Layout;

  /**
   * Compiles `format`.
   * @throws TypeError if `format` is not a string.
   * @throws RangeError if the format is malformed; the message names the
   *   offending character and its index.
   */
  constructor(format: string) {
    if (typeof format !== "string") {
      throw typeError(`Struct() format must be a string (got ${typeName(format)})`);
    }
    const { order, start } = parseByteOrder(format, "@");
    this.format = format;
    this.#layout = Layout.compile(format, start, format.length, order);
    this.size = this.#layout.size;
  }

  /** The number of values that {@link pack} takes and {@link unpack} returns. */
  get valueCount(): number {
    return this.#layout.valueCount;
  }

  /**
   * Packs `values` into a new buffer of {@link size} bytes, like `struct.pack`.
   * @throws TypeError for a wrong number of values or a value of the wrong type.
   * @throws RangeError for an integer out of range or a float too large.
   */
  pack(...values: unknown[]): Buffer {
    this.#checkCount("pack", values.length);
    const out = Buffer.alloc(this.size);
    this.#layout.write(values, 0, viewOf(out), out, 0);
    return out;
  }

  /**
   * Packs `values` into `buf` at `offset`, like `struct.pack_into`. A negative
   * offset counts from the end of `buf`. On error `buf` is left unchanged.
   */
  packInto(buf: Uint8Array, offset: number, ...values: unknown[]): void {
    checkBuffer(buf, "packInto");
    let at = checkOffset(offset, "packInto");
    this.#checkCount("pack_into", values.length);
    if (at < 0) {
      if (at + this.size > 0) throw rangeError(`no space to pack ${this.size} bytes at offset ${at}`);
      if (at + buf.length < 0) throw rangeError(`offset ${at} out of range for ${buf.length}-byte buffer`);
      at += buf.length;
    }
    if (buf.length - at < this.size) {
      throw rangeError(
        `packInto requires a buffer of at least ${this.size + at} bytes for packing ${this.size} bytes ` +
          `at offset ${at} (actual buffer size is ${buf.length})`,
      );
    }
    buf.set(this.pack(...values), at);
  }

  #reader: ((buf: Buffer, offset: number) => unknown[]) | null | undefined;
  #caller: StructCaller | null | undefined;

  /**
   * @internal Calls `fn` on `self` with the values of the {@link size} bytes
   * of a Buffer at `offset`, with no checks (the caller guarantees the
   * bytes), and returns its result; null when this format has no compiled
   * form (then use {@link readAt}). Only `fn` can throw.
   */
  callerAt(): StructCaller | null {
    let caller = this.#caller;
    if (caller === undefined) caller = this.#caller = this.#layout.compileCaller();
    return caller;
  }

  /**
   * @internal Unpacks {@link size} bytes of a Buffer at `offset`, with no
   * checks (the caller guarantees the bytes): the framing hot path.
   */
  readAt(buf: Buffer, offset: number): unknown[] {
    let reader = this.#reader;
    if (reader === undefined) reader = this.#reader = this.#layout.compileReader();
    if (reader !== null) return reader(buf, offset);
    const out = valuesArray();
    this.#layout.read(buf, viewOf(buf), offset, out);
    return out;
  }

  /**
   * Unpacks exactly {@link size} bytes, like `struct.unpack`.
   * @throws RangeError if `buf.length` is not {@link size}.
   */
  unpack(buf: Uint8Array): unknown[] {
    checkBuffer(buf, "unpack");
    if (buf.length !== this.size) {
      throw rangeError(`unpack requires a buffer of ${this.size} bytes (got ${buf.length})`);
    }
    const out = valuesArray();
    this.#layout.read(buf, viewOf(buf), 0, out);
    return out;
  }

  /**
   * Unpacks {@link size} bytes starting at `offset` (default 0), like
   * `struct.unpack_from`; later bytes are ignored. A negative offset counts
   * from the end of `buf`.
   * @throws RangeError if fewer than {@link size} bytes follow the offset.
   */
  unpackFrom(buf: Uint8Array, offset = 0): unknown[] {
    checkBuffer(buf, "unpackFrom");
    let at = checkOffset(offset, "unpackFrom");
    if (at < 0) {
      if (at + buf.length < 0) throw rangeError(`offset ${at} out of range for ${buf.length}-byte buffer`);
      at += buf.length;
    }
    if (buf.length - at < this.size) {
      throw rangeError(
        `unpackFrom requires a buffer of at least ${this.size + at} bytes for unpacking ${this.size} bytes ` +
          `at offset ${at} (actual buffer size is ${buf.length})`,
      );
    }
    const out = valuesArray();
    this.#layout.read(buf, viewOf(buf), at, out);
    return out;
  }

  #checkCount(fn: string, got: number): void {
    const want = this.#layout.valueCount;
    if (got !== want) throw typeError(`${fn} expected ${want} items for packing (got ${got})`);
  }
}
