/**
 * Channel: the base of Stream and Server. It owns the one guard through
 * which every user handler is called, so nothing a handler throws can reach
 * another channel or the process.
 */
import { channel as diagnosticsChannel } from "node:diagnostics_channel";
import { Engine, countError } from "./engine.js";
import { log, nameOf } from "./log.js";

export { nameOf };
import { asError, typeError } from "./errors.js";
import type { Stats } from "./engine.js";

/** Named `diagnostics_channel` channels pants-ts publishes on. */
export const diagnostics = {
  /** `{ stream }` when a connection is established (after TLS and PROXY). */
  connectionOpen: diagnosticsChannel("pants-ts:connection:open"),
  /**
   * `{ stream }` when a stream has closed, also one that never opened
   * (a failed connect, a connection cut during its TLS handshake, one closed
   * by its own constructor), which had no `connection:open`: pair the two
   * by the stream object.
   */
  connectionClose: diagnosticsChannel("pants-ts:connection:close"),
  /**
   * `{ channel, error, kind }` for every error counted: on a connection (the
   * channel is its Stream), or before there is one (the Server: a bad PROXY
   * header, a failed TLS wrap, an accept failure).
   */
  connectionError: diagnosticsChannel("pants-ts:connection:error"),
  /** `{ server }` once a server is listening. */
  serverListen: diagnosticsChannel("pants-ts:server:listen"),
  /** `{ server }` once a server has closed. */
  serverClose: diagnosticsChannel("pants-ts:server:close"),
} as const;

/** @internal Brands channel classes across copies of the package (see the CLI). */
const kBrand: unique symbol = Symbol.for("pants-ts.channel") as never;

/**
 * Channels a handler of which has failed already. A Stream's that fails
 * again once the stream has closed is logged at `debug`: the promises of an async
 * `onRead` for each frame of one read (10 000 pipelined lines) all reject
 * after the first one's `onError` closed the stream, and were 10 000
 * `error` lines from one client.
 */
const failedBefore = new WeakSet<object>();

/** Options common to every channel. */
export interface ChannelOptions {
  /** The engine this channel belongs to; default `Engine.instance()`. */
  engine?: Engine;
}

/** Error codes that mean "the peer went away": ordinary, logged at debug only. */
const PEER_GONE = new Set([
  "ECONNRESET",
  "EPIPE",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTCONN",
  "ERR_STREAM_DESTROYED",
  "ERR_STREAM_WRITE_AFTER_END",
  "ERR_SSL_UNEXPECTED_EOF_WHILE_READING",
  // Bad input from the peer: its doing, not a bug here.
  "ERR_MALFORMED_FRAME",
  "ERR_ENCODING_INVALID_ENCODED_DATA",
  "ERR_BUFFER_OVERFLOW",
  "ERR_TIMEOUT",
]);

/** @internal True for errors caused by the peer or the network, not by a bug. */
export function isPeerError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && (PEER_GONE.has(code) || code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_"));
}

/** @internal */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && typeof value === "object" && typeof (value as PromiseLike<unknown>).then === "function";
}

/**
 * The base of {@link Stream} and {@link Server}: engine, descriptor,
 * closed state and the handler guard.
 */
export abstract class Channel {
  /** @internal */
  static readonly [kBrand] = true;

  /** The engine this channel belongs to. */
  readonly engine: Engine;

  constructor(options?: ChannelOptions) {
    const engine = options?.engine;
    if (engine !== undefined && !(engine instanceof Engine)) {
      throw typeError(`The engine option must be an Engine, got ${typeof engine}.`);
    }
    this.engine = engine ?? Engine.instance();
  }

  /** The operating-system descriptor where Node exposes it, else `null`. */
  abstract get fileno(): number | null;

  /** True once the channel has closed; it cannot be reopened. */
  abstract get closed(): boolean;

  /** Closes the channel (see {@link Stream.close} and {@link Server.close}). */
  abstract close(flush?: boolean): void;

  /** Placeholder: called after the channel has closed. */
  onClose(): void {}

  /**
   * Called with an exception thrown by a handler (or a promise an `async`
   * handler returned that rejected), and with internal errors that have no
   * handler of their own. Default: log it at `error` (the record's fields:
   * `err`, `channel`, the channel's name, and on a stream `peer`, the
   * peer's address) and close the channel without flushing.
   */
  onError(err: Error): void {
    log.current.error({ err, ...this._logFields() }, `Exception raised in a handler of ${nameOf(this)}.`);
    this.close(false);
  }

  /**
   * @internal Stats objects to count into (the channel's own, the server's).
   * A channel of your own counts into its engine's.
   */
  protected _statsTargets(): [Stats, Stats | null] {
    return [this.engine.stats, null];
  }

  /**
   * @internal Calls a user handler through the guard: a throw or a rejected
   * promise goes to `onError`.
   */
  _call0(fn: (this: this) => unknown): void {
    try {
      const result = fn.call(this);
      if (result !== undefined && isThenable(result)) result.then(undefined, (err: unknown) => this._handlerFailed(err));
    } catch (err) {
      this._handlerFailed(err);
    }
  }

  /** @internal As {@link _call0}, with one argument. */
  _call1<A>(fn: (this: this, a: A) => unknown, a: A): void {
    try {
      const result = fn.call(this, a);
      if (result !== undefined && isThenable(result)) result.then(undefined, (err: unknown) => this._handlerFailed(err));
    } catch (err) {
      this._handlerFailed(err);
    }
  }

  /** @internal As {@link _call0}, with any number of arguments. */
  _callN(fn: (this: this, ...args: never[]) => unknown, args: readonly unknown[]): void {
    try {
      const result = (fn as (...a: unknown[]) => unknown).apply(this, args as unknown[]);
      if (result !== undefined && isThenable(result)) result.then(undefined, (err: unknown) => this._handlerFailed(err));
    } catch (err) {
      this._handlerFailed(err);
    }
  }

  /**
   * @internal Calls `onClose`, the last handler a channel gets: what it
   * throws (or its promise rejects with) is counted and logged, not passed
   * to `onError`, which would come after the last event.
   */
  _callOnClose(): void {
    const failed = (err: unknown): void => {
      const error = asError(err, "onClose");
      this._countError("handler", error);
      log.current.error({ err: error, ...this._logFields() }, `onClose of ${nameOf(this)} threw.`);
    };
    try {
      const result: unknown = this.onClose();
      if (result !== undefined && isThenable(result)) result.then(undefined, failed);
    } catch (err) {
      failed(err);
    }
  }

  /**
   * @internal A handler failed: count it and hand it to `onError`; once the
   * channel has closed (an async handler rejecting late), `onClose` was the
   * last event, so it is logged instead: at `error` if it is the channel's
   * first failure (or the channel is a Server), else at `debug` (see
   * failedBefore).
   */
  _handlerFailed(err: unknown): void {
    const error = asError(err, "A handler");
    this._countError("handler", error);
    const first = !failedBefore.has(this);
    if (first) failedBefore.add(this);
    if (!this.closed) this._callOnError(error);
    else if (first || !this._quietRepeatedFailures()) log.current.error({ err: error, ...this._logFields() }, `A handler of ${nameOf(this)} failed after it closed.`);
    else if (log.debugOn()) log.current.debug({ err: error, ...this._logFields() }, `A handler of ${nameOf(this)} failed again after it closed.`);
  }

  /** @internal Calls `onError`; an exception from `onError` itself is logged. */
  _callOnError(error: Error): void {
    try {
      const result = this.onError(error);
      if (isThenable(result)) {
        result.then(undefined, (err2: unknown) => log.current.error({ err: asError(err2, "onError"), original: error, ...this._logFields() }, `onError of ${nameOf(this)} rejected.`));
      }
    } catch (err2) {
      log.current.error({ err: asError(err2, "onError"), original: error, ...this._logFields() }, `onError of ${nameOf(this)} threw.`);
    }
  }

  /**
   * @internal Whether a handler failing again once the channel has closed is
   * logged at `debug` (see failedBefore): a Stream's are its own frames'; a
   * Server's are each for another connection (an async onAccept), and stay
   * at `error`.
   */
  _quietRepeatedFailures(): boolean {
    return false;
  }

  /**
   * @internal The fields that name this channel in a log record: its name
   * (a Stream adds its peer's address, which outlives the descriptor number
   * in the name).
   */
  _logFields(): { channel: string; peer?: string } {
    return { channel: nameOf(this) };
  }

  /** @internal Counts an error of `kind` in the stats and publishes it. */
  _countError(kind: string, error: Error): void {
    const [own, other] = this._statsTargets();
    countError(kind, own, other);
    if (diagnostics.connectionError.hasSubscribers) {
      diagnostics.connectionError.publish({ channel: this, error, kind });
    }
  }

  /** `"<ClassName> #<fileno>"`, as Pants prints channels (`"<ClassName> (no fd)"` while there is no descriptor). */
  toString(): string {
    const fd = this.fileno;
    return fd === null ? `${this.constructor.name} (no fd)` : `${this.constructor.name} #${fd}`;
  }
}

