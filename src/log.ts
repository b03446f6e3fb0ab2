/**
 * The pluggable logger. pino-shaped: each method takes either a message, or
 * an object of fields followed by a message.
 */
import { debuglog, inspect } from "node:util";
import { describe, typeError, unicodeEscape } from "./errors.js";

/** A pino-shaped logger: `logger.warn({ err }, "message")` or `logger.warn("message")`. */
export interface Logger {
  /** Handler exceptions and broken listening sockets: something in your code or your deployment needs attention. */
  error(objOrMsg: unknown, msg?: string): void;
  /** Trouble the server survives that an operator should know of (accept failures, a failed connect nobody watched). */
  warn(objOrMsg: unknown, msg?: string): void;
  /** Lifecycle: listening, shutting down. */
  info(objOrMsg: unknown, msg?: string): void;
  /** Ordinary client misbehaviour (resets, TLS garbage, bad frames, timeouts) and transport details. */
  debug(objOrMsg: unknown, msg?: string): void;
  /**
   * Optional, as pino's: whether records of `level` are kept. When it says
   * `false` for `"debug"`, pants-ts skips building its debug records (a
   * peer's reset, a timeout) instead of handing over what would be dropped.
   */
  isLevelEnabled?(level: "error" | "warn" | "info" | "debug"): boolean;
}

const nodeDebug = debuglog("pants-ts");

function render(level: string, objOrMsg: unknown, msg?: string): string {
  if (typeof objOrMsg === "string") return `pants-ts ${level}: ${oneLine(objOrMsg)}`;
  const fields = objOrMsg as Record<string, unknown> | null;
  const err = fields && fields.err instanceof Error ? fields.err : objOrMsg instanceof Error ? objOrMsg : null;
  let line = `pants-ts ${level}: ${oneLine(msg ?? (err ? err.message : ""))}`;
  if (fields && !(objOrMsg instanceof Error)) {
    const rest: Record<string, unknown> = {};
    // An err that is no Error (a thrown string) has no stack line below: it stays among the fields.
    for (const key of Object.keys(fields)) if (key !== "err" || err === null) rest[key] = fields[key];
    if (Object.keys(rest).length > 0) line += " " + inspect(rest, { breakLength: Infinity, depth: 3 });
  }
  if (err) line += "\n" + stackText(err);
  return line;
}

/**
 * Control characters (but tab), DEL, the C1 controls and the Unicode line
 * separators, which a message can carry from a peer (`throw new
 * Error("bad command " + line)`): on stderr a newline in one would forge a
 * log line of its own, and an ANSI escape would rewrite the terminal.
 */
const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]/g;

/** `text` on one line: each control character escaped as in a string literal. */
function oneLine(text: string): string {
  return text.replace(CONTROL, (c) => (c === "\n" ? "\\n" : c === "\r" ? "\\r" : unicodeEscape(c)));
}

/**
 * An error's stack with its message on one line, as `oneLine` has it; the
 * stack frames ("    at ...") keep their lines. The message is found by
 * its text, so a message holding a line like a frame cannot end it early.
 */
function stackText(err: Error): string {
  const stack = typeof err.stack === "string" ? err.stack : `${err.name}: ${err.message}`;
  const message = typeof err.message === "string" ? err.message : "";
  const at = message === "" ? -1 : stack.indexOf(message);
  let headerEnd: number;
  if (at >= 0) {
    headerEnd = at + message.length;
  } else {
    const frame = /\n\s+at /.exec(stack);
    headerEnd = frame === null ? stack.length : frame.index;
  }
  return oneLine(stack.slice(0, headerEnd)) + stack.slice(headerEnd).split("\n").map(oneLine).join("\n");
}

/**
 * The default logger: `warn` and `error` go to stderr; `info` and `debug` go
 * to `util.debuglog("pants-ts")`, i.e. appear with `NODE_DEBUG=pants-ts`.
 */
export const defaultLogger: Logger = {
  error(objOrMsg, msg) {
    process.stderr.write(render("error", objOrMsg, msg) + "\n");
  },
  warn(objOrMsg, msg) {
    process.stderr.write(render("warn", objOrMsg, msg) + "\n");
  },
  info(objOrMsg, msg) {
    if (nodeDebug.enabled) nodeDebug("%s", render("info", objOrMsg, msg));
  },
  debug(objOrMsg, msg) {
    if (nodeDebug.enabled) nodeDebug("%s", render("debug", objOrMsg, msg));
  },
};

const silentLogger: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
};

/**
 * The logger in use; internal modules read it through this object.
 * `debugOn()` says whether a debug record would be kept: the sites that log
 * a peer's misbehaviour at debug build their fields only when it is true.
 */
export const log: { current: Logger; debugOn: () => boolean } = { current: defaultLogger, debugOn: () => nodeDebug.enabled };

/**
 * Replaces the logger for the whole library. `null` silences it; `undefined`
 * restores the default (stderr for `warn` and above, `NODE_DEBUG=pants-ts`
 * for the rest). A record the logger throws on (or rejects) goes to stderr
 * instead, and the logger's failure is reported there once: a broken logger
 * never takes the process down.
 * @throws TypeError if `logger` lacks one of the four methods.
 */
export function setLogger(logger: Logger | null | undefined): void {
  if (logger === null) {
    log.current = silentLogger;
    log.debugOn = () => false;
    return;
  }
  if (logger === undefined) {
    log.current = defaultLogger;
    log.debugOn = () => nodeDebug.enabled;
    return;
  }
  for (const level of LEVELS) {
    if (typeof logger[level] !== "function") {
      throw typeError(`setLogger() expects a logger with an ${level}() method, got ${describe(logger)}.`);
    }
  }
  log.current = guarded(logger);
  log.debugOn = debugCheck(logger);
}

/**
 * Whether `logger` keeps debug records: its `isLevelEnabled("debug")`, asked
 * each time (pino's level can change at run time), or `true` for a logger
 * without one. A check that throws counts as `true`: the record is built and
 * the guard deals with the logger.
 */
function debugCheck(logger: Logger): () => boolean {
  if (typeof logger.isLevelEnabled !== "function") return () => true;
  return () => {
    try {
      return logger.isLevelEnabled!("debug") !== false;
    } catch {
      return true;
    }
  };
}

const LEVELS = ["error", "warn", "info", "debug"] as const;
type Level = (typeof LEVELS)[number];

/**
 * `logger` behind a guard: pants-ts logs from its error paths (a handler
 * that threw, a timer, a failed accept), where an exception from the
 * logger itself would escape to the event loop and end the process. A
 * logger that throws, or whose method returns a promise that rejects, has
 * that record written by the default logger instead, and its own failure
 * reported once to stderr.
 */
function guarded(logger: Logger): Logger {
  let reported = false;
  const failed = (level: Level, err: unknown, args: readonly unknown[]): void => {
    try {
      (defaultLogger[level] as (...a: unknown[]) => void)(...args);
      if (reported) return;
      reported = true;
      defaultLogger.error({ err }, `The logger given to setLogger() failed in ${level}(); pants-ts writes its records to stderr when it does (reported once).`);
    } catch {
      // stderr itself is gone: nothing is left to tell.
    }
  };
  const call = (level: Level, args: unknown[]): void => {
    try {
      const result: unknown = (logger[level] as (...a: unknown[]) => unknown).apply(logger, args);
      if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
        (result as PromiseLike<unknown>).then(undefined, (err: unknown) => failed(level, err, args));
      }
    } catch (err) {
      failed(level, err, args);
    }
  };
  // Rest parameters keep the caller's argument count: pino formats a
  // second argument, even an undefined one, into the message.
  return {
    error: (...args: [unknown, string?]) => call("error", args),
    warn: (...args: [unknown, string?]) => call("warn", args),
    info: (...args: [unknown, string?]) => call("info", args),
    debug: (...args: [unknown, string?]) => call("debug", args),
  };
}

/**
 * A channel's name for errors and log lines: its `toString()`, or, when an
 * override throws (or returns what cannot be a string), its class name. A
 * broken toString() must not turn a logged error into an uncaught one.
 */
export function nameOf(channel: object): string {
  try {
    return String(channel);
  } catch {
    return `${channel.constructor.name} (its toString() threw)`;
  }
}
