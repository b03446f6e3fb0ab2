/**
 * Every error class pants-ts throws or passes to a handler, each with a
 * stable `code`. Argument mistakes use the built-in `TypeError` and
 * `RangeError` (with a `code` of their own), as Node does.
 */
import { inspect } from "node:util";

/** The stable codes of pants-ts' own errors. */
export const ErrorCode = {
  /** {@link ChannelStateError}: an operation the channel's state forbids. */
  CHANNEL_STATE: "ERR_CHANNEL_STATE",
  /** {@link InvalidAddressFormatError}: an address of no known shape. */
  INVALID_ADDRESS: "ERR_INVALID_ADDRESS",
  /** {@link BufferOverflowError}: a frame outgrew `bufferSize`, or the send buffer `writeBufferLimit`. */
  BUFFER_OVERFLOW: "ERR_BUFFER_OVERFLOW",
  /** {@link ConnectError}: a client connect failed. */
  CONNECT: "ERR_CONNECT",
  /** {@link InvalidReadDelimiterError} (or a `TypeError` when set): a delimiter framing cannot use. */
  INVALID_DELIMITER: "ERR_INVALID_DELIMITER",
  /** {@link TimeoutError}: an idle, handshake, PROXY-header or connect timeout. */
  TIMEOUT: "ERR_TIMEOUT",
  /** {@link ProxyProtocolError}: a missing or malformed PROXY header. */
  PROXY_PROTOCOL: "ERR_PROXY_PROTOCOL",
  /** {@link AbortError}: an `AbortSignal` cancelled the operation (Node's own code for its `AbortError`). */
  ABORT: "ABORT_ERR",
} as const;

/** Any of the codes in {@link ErrorCode}. */
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Base class of pants-ts' own errors. */
export class PantsError extends Error {
  /** A stable, machine-readable code (see the README's table). */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** An operation the channel's state forbids (Pants' `RuntimeError`). */
export class ChannelStateError extends PantsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.CHANNEL_STATE, message, options);
  }
}

/** An address of no known shape (see SPEC §2 and the README). */
export class InvalidAddressFormatError extends PantsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.INVALID_ADDRESS, message, options);
  }
}

/**
 * A frame outgrew `bufferSize` (Pants' `StreamBufferOverflow`), or the
 * outgoing buffer outgrew `writeBufferLimit`.
 */
export class BufferOverflowError extends PantsError {
  /** `"read"` for an incoming frame, `"write"` for the outgoing buffer. */
  readonly direction: "read" | "write";
  /** The limit that was passed, in bytes. */
  readonly limit: number;
  constructor(message: string, direction: "read" | "write", limit: number) {
    super(ErrorCode.BUFFER_OVERFLOW, message);
    this.direction = direction;
    this.limit = limit;
  }
}

/** A client connect failed (Pants' `StreamConnectError`). */
export class ConnectError extends PantsError {
  /** The cause's error code (`ECONNREFUSED`, `ENOTFOUND`, ...), if any. */
  readonly errno: string | number | undefined;
  /** The system call that failed (`connect`, `getaddrinfo`), if known. */
  readonly syscall: string | undefined;
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.CONNECT, message, options);
    let cause = options?.cause as NodeJS.ErrnoException | undefined;
    // A connect that outlived idleTimeout reads as the kernel's own connect timeout.
    const timedOut = cause instanceof TimeoutError && cause.kind === "connect";
    // node:net tried each of a name's addresses and failed on all: its
    // AggregateError carries a code but no syscall; the attempts do.
    if (cause instanceof AggregateError) {
      const all = cause as AggregateError & NodeJS.ErrnoException;
      const attempts = all.errors.filter((e): e is NodeJS.ErrnoException => e instanceof Error);
      const same = attempts.find((e) => e.code === all.code && e.syscall !== undefined) ?? attempts.find((e) => e.syscall !== undefined);
      if (all.syscall === undefined && same !== undefined) cause = { code: all.code ?? same.code, errno: same.errno, syscall: same.syscall } as NodeJS.ErrnoException;
    }
    this.errno = timedOut ? "ETIMEDOUT" : (cause?.code ?? cause?.errno);
    this.syscall = timedOut ? "connect" : cause?.syscall;
  }
}

/**
 * @internal A failed connect's message. node:net's AggregateError (it tried
 * each address of a name, and all failed) has an empty message of its own:
 * its attempts' messages are given instead ("connect ECONNREFUSED
 * 127.0.0.2:7; connect ECONNREFUSED 127.0.0.1:7").
 */
export function connectMessage(err: Error): string {
  if (err.message !== "" || !(err instanceof AggregateError)) return err.message;
  const parts = (err.errors as unknown[]).map((e) => (e instanceof Error ? e.message : String(e))).filter((m) => m !== "");
  return parts.length > 0 ? parts.join("; ") : String((err as NodeJS.ErrnoException).code ?? "AggregateError");
}

/** Framing met a delimiter it cannot use (e.g. a Decoder that consumed nothing). */
export class InvalidReadDelimiterError extends PantsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.INVALID_DELIMITER, message, options);
  }
}

/** A connection timed out (idle, TLS handshake, PROXY header, connect). */
export class TimeoutError extends PantsError {
  /** Which timer fired. */
  readonly kind: "idle" | "handshake" | "proxy-header" | "connect";
  constructor(message: string, kind: TimeoutError["kind"]) {
    super(ErrorCode.TIMEOUT, message);
    this.kind = kind;
  }
}

/** A PROXY protocol header was missing or malformed. */
export class ProxyProtocolError extends PantsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.PROXY_PROTOCOL, message, options);
  }
}

/**
 * An `AbortSignal` given to an operation aborted it before it completed
 * (a `connect()`): the shape of Node's own `AbortError` (name
 * `"AbortError"`, code `"ABORT_ERR"`), with the signal's `reason` as its
 * `cause`.
 */
export class AbortError extends PantsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.ABORT, message, options);
  }
}

/** A `TypeError` with a `code`, for wrong argument types. */
export function typeError(message: string, code = "ERR_INVALID_ARG_TYPE"): TypeError {
  const err = new TypeError(message) as TypeError & { code: string };
  err.code = code;
  return err;
}

/** A `RangeError` with a `code`, for wrong argument values. */
export function rangeError(message: string, code = "ERR_OUT_OF_RANGE"): RangeError {
  const err = new RangeError(message) as RangeError & { code: string };
  err.code = code;
  return err;
}

/**
 * The error for a wrong number argument (SPEC §10): a TypeError when it is
 * no number at all, a RangeError when it is a number out of range.
 */
export function numberError(value: unknown, message: string): TypeError | RangeError {
  return typeof value === "number" ? rangeError(message) : typeError(message);
}

/**
 * `value` when it is a non-negative finite number of milliseconds.
 * @throws TypeError for a value that is no number, RangeError for one out of range.
 */
export function checkMs(name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw numberError(value, `${name} must be a non-negative number of milliseconds, got ${describe(value)}.`);
  }
  return value;
}

/**
 * A TCP keep-alive idle time as the kernel takes it, in ms: it counts whole
 * seconds from 1 to 32 767 (Linux), so a positive delay under a second is
 * one second (Node would pass 0, leaving the system's two hours) and a
 * longer one than the kernel takes is its maximum (Node's setsockopt would
 * fail, silently). 0 stays 0: the system's idle time.
 */
export function keepAliveDelay(ms: number): number {
  if (ms <= 0) return 0;
  return Math.min(Math.max(ms, 1000), MAX_KEEPIDLE_S * 1000);
}

const MAX_KEEPIDLE_S = 32_767;

/** An `Error` with a `code`, for failures that are neither a wrong type nor a wrong value. */
export function codedError(message: string, code: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}

/**
 * What user code threw, as an Error: any other value is wrapped (as the
 * `cause`, and in the message), described without trusting it (an object
 * with no prototype, or a throwing `toString`, must not turn into a second
 * exception here). A logger shows an Error's message and stack; a bare
 * string or object thrown would be left out of the line.
 */
export function asError(err: unknown, who: string): Error {
  if (err instanceof Error) return err;
  let text: string;
  try {
    // inspect, not String(): an object thrown reads as its fields, not "[object Object]".
    text = typeof err === "string" ? err : inspect(err, { depth: 2, breakLength: Infinity });
  } catch {
    text = Object.prototype.toString.call(err);
  }
  return new Error(`${who} threw a non-Error value: ${text}`, { cause: err });
}

/**
 * How a failure is said in one line of a log or of stderr: one with a string
 * `code` (a system error, a typed pants-ts one) by its message; anything
 * else (a module or handler that threw) with its stack.
 */
export function failureText(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  return typeof (err as { code?: unknown }).code === "string" ? err.message : (err.stack ?? err.message);
}

/**
 * The TypeError for a method called on something other than its object: one
 * passed on without it, as Python's bound methods would be
 * (`engine.defer(ms, this.close)`, `process.on("SIGTERM", server.close)`),
 * which would otherwise fail on a private field, or not at all.
 */
export function unboundError(method: string, owner: string, self: unknown): TypeError {
  const name = owner.toLowerCase();
  const article = /^[AEIOU]/.test(owner) ? "an" : "a";
  // A symbol-keyed method (`[Symbol.asyncDispose]`) is called without a dot.
  const call = method.startsWith("[") ? `${name}${method}()` : `${name}.${method}()`;
  return typeError(
    `${method}() was called on ${describe(self)}, not on ${article} ${owner}: a method passed on by itself (engine.defer(ms, this.close), process.on("SIGTERM", server.close)) loses its ${name}; pass a function that calls it: () => ${call}.`,
  );
}

/**
 * What to write instead, for an argument in node:net's place where pants-ts
 * takes another: a host after the port (`listen(8080, "127.0.0.1")`), a
 * callback. `""` for anything else.
 */
export function netFormHint(method: "listen" | "connect", value: unknown): string {
  if (typeof value === "string") return ` ${method}(port, host) is node:net's form: pass [host, port].`;
  if (typeof value === "function") return ` ${method}() takes no callback: await ready(), or override ${method === "listen" ? "onListen" : "onConnect"}().`;
  return "";
}

/** The characters of a string, and the items of an array, an error message shows. */
const SHOWN_CHARS = 64;
const SHOWN_ITEMS = 8;

/**
 * Describes a value for an error message, briefly and safely: a long string
 * or array is cut short (with its length), a Buffer is its size, and a value
 * that throws when looked at (a revoked Proxy, a Proxy whose traps throw, a
 * getter) is named as such: describing never throws, or dumps 10 MB into a
 * message.
 */
export function describe(value: unknown): string {
  try {
    return describeValue(value, 0);
  } catch {
    return "a value that throws when inspected (a revoked or trapping Proxy?)";
  }
}

function describeValue(value: unknown, depth: number): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  switch (typeof value) {
    case "string":
      return quote(value);
    case "bigint":
      return `${value}n`;
    case "symbol":
      return value.description === undefined ? "Symbol()" : `Symbol(${quote(value.description)})`;
    case "function":
      return `function ${typeof value.name === "string" && value.name !== "" ? clip(value.name) : "(anonymous)"}`;
    case "number":
    case "boolean":
      return String(value);
  }
  if (Buffer.isBuffer(value)) return `<Buffer ${value.length} bytes>`;
  if (value instanceof RegExp) return clip(String(value));
  if (Array.isArray(value)) {
    if (depth > 0) return `an array of ${value.length} item${value.length === 1 ? "" : "s"}`;
    const shown: string[] = [];
    for (let i = 0; i < Math.min(value.length, SHOWN_ITEMS); i++) shown.push(describeValue(value[i], depth + 1));
    if (value.length > SHOWN_ITEMS) shown.push(`... ${value.length - SHOWN_ITEMS} more`);
    return `[${shown.join(", ")}]`;
  }
  return `an object (${Object.prototype.toString.call(value)})`;
}

/** @internal One character as a string literal's escape: `\u` and four hex digits (for a control character in a message or log line). */
export function unicodeEscape(c: string): string {
  return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

/** A string quoted and escaped (control characters, line separators), cut short past SHOWN_CHARS. */
function quote(text: string): string {
  const cut = text.length > SHOWN_CHARS;
  const json = JSON.stringify(cut ? text.slice(0, SHOWN_CHARS) : text).replace(/[\u007f-\u009f\u2028\u2029]/g, unicodeEscape);
  return cut ? `${json.slice(0, -1)}..." (${text.length} characters)` : json;
}

function clip(text: string): string {
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}... (${text.length} characters)` : text;
}
