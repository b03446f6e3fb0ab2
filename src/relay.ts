/**
 * relay(a, b): moves the bytes of two streams to each other, both ways, as
 * a TCP proxy does (Twisted's portforward, Netty's proxy example, Node's
 * `a.pipe(b).pipe(a)`), with backpressure per direction, half-close and
 * close propagation. Built on the public Stream API only.
 */
import { Stream } from "./stream.js";
import { nameOf } from "./channel.js";
import { ChannelStateError, describe, numberError, rangeError, typeError } from "./errors.js";
import { checkOptions, optionKeys } from "./options.js";

/** Options of {@link relay}. A key it does not know is ignored and logged once (a `warn` naming the nearest known key). */
export interface RelayOptions {
  /**
   * A stream stops being read while the other one holds more than this
   * many bytes not yet handed to the operating system (its
   * `bufferedAmount`, or the bytes the relay holds for it until it has
   * connected), and is read again once that has drained. Bounds the memory
   * of a relayed connection, per direction, to about this much, whatever
   * the speeds of the two peers. Default 1 MiB, or a quarter of the lower
   * `writeBufferLimit` of the two streams when that is less than 4 MiB (a
   * read past the mark must still fit below the limit). One at or above
   * that limit throws `RangeError`.
   */
  highWaterMark?: number;
}

/** What {@link relay} resolves with once both streams have closed. */
export interface RelayResult {
  /** Bytes read from `a` and written to `b`. */
  bytesAtoB: number;
  /** Bytes read from `b` and written to `a`. */
  bytesBtoA: number;
}

const DEFAULT_HIGH_WATER_MARK = 1024 * 1024;
const RELAY_KEYS = optionKeys<RelayOptions>({ highWaterMark: true });

/** One stream of a relay, and the state of the direction that writes to it. */
class Side {
  other!: Side;
  /** Its onConnect has run: it takes writes and `end()`. */
  started = false;
  /** Its peer sent FIN and the relay passed it on. */
  ended = false;
  closed = false;
  /** Bytes the relay wrote to it. */
  written = 0;
  /** Bytes read from the other stream before this one started (copies), in order. */
  held: Buffer[] = [];
  heldBytes = 0;
  /** The other stream ended (FIN) before this one started: end this one once it has. */
  endHeld = false;
  /** The other stream closed before this one started: close this one once the held bytes are written. */
  closeHeld = false;

  constructor(
    readonly stream: Stream,
    readonly relay: RelayState,
    /** The stream's own handlers, which the relay's call. */
    readonly userOnConnect: (this: Stream) => unknown,
    readonly userOnClose: (this: Stream) => unknown,
  ) {}
}

interface RelayState {
  readonly highWaterMark: number;
  a: Side;
  b: Side;
  resolve: (result: RelayResult) => void;
}

/** Every stream being relayed, to its side. */
const sides = new WeakMap<Stream, Side>();

/**
 * Relays two open streams to each other until both have closed, as a TCP
 * proxy: what `a` reads is written to `b`, what `b` reads to `a`. Typically
 * `a` is a server's stream (call it in its `onConnect`) and `b` a client
 * stream you `connect()`ed to the upstream, connected or still connecting
 * (what `a` reads meanwhile is held, up to `highWaterMark` bytes, and
 * written to `b` once it has connected; a failed connect closes `a`).
 *
 * Both streams are switched to raw bytes (`readDelimiter` and `encoding`
 * null; bytes a stream has buffered and not yet delivered go on in order),
 * lend their reads (`reuseReadBuffer` true: `write()` copies what it
 * keeps) and get `writeHighWaterMark` Infinity (each direction is paused by
 * the relay alone, so a slow reader on one side never stops the other
 * direction). While relayed, the relay owns their `onRead`, `onWrite` and
 * `onEnd` (overriding yours), and `pauseReading()`/`resumeReading()` (a
 * stream you paused is resumed); it calls your `onConnect` and `onClose`
 * first and then does its own part; every other handler (`onConnectError`,
 * `onReadError`, `onTimeout`, `onShutdown`, `onError`, ...) stays yours and
 * works as usual.
 *
 * - Backpressure: a stream is not read while the other one has more than
 *   `highWaterMark` bytes buffered, and is read again from its `onWrite`.
 * - Half-close: a FIN from one peer becomes `end()` on the other stream,
 *   and the other direction goes on until its peer ends too; then both
 *   streams close.
 * - Close: when one stream closes (its peer reset, an error, a timeout, your
 *   `close()`), the other one is closed with `close(true)`: what was already
 *   written to it still goes out.
 *
 * @returns a promise that resolves once both streams have closed, with the
 *   bytes relayed each way; it never rejects (errors go to the streams' own
 *   handlers).
 * @throws TypeError if `a` or `b` is not a Stream, or `options` is not an object.
 * @throws RangeError if `a` and `b` are the same stream, or for a `highWaterMark` that is not a positive integer or not below either stream's `writeBufferLimit`.
 * @throws ChannelStateError if either stream is closing, closed, ended
 *   (`end()`), neither connected nor connecting, or already relayed.
 */
export function relay(a: Stream, b: Stream, options?: RelayOptions): Promise<RelayResult> {
  checkStream("a", a);
  checkStream("b", b);
  if (a === b) throw rangeError("relay() needs two different streams, got the same stream twice.", "ERR_INVALID_ARG_VALUE");
  if (options !== undefined) checkOptions("relay()", options, RELAY_KEYS);
  // Writes above a stream's writeBufferLimit close it: the pause must come first.
  const limit = Math.min(a.writeBufferLimit, b.writeBufferLimit);
  const hwm = options?.highWaterMark ?? Math.max(1, Math.min(DEFAULT_HIGH_WATER_MARK, Math.floor(limit / 4)));
  if (typeof hwm !== "number" || !Number.isSafeInteger(hwm) || hwm <= 0) {
    throw numberError(hwm, `relay() highWaterMark must be a positive integer number of bytes, got ${describe(hwm)}.`);
  }
  if (hwm >= limit) {
    throw rangeError(
      `relay() highWaterMark (${hwm}) must be below the streams' writeBufferLimit (${limit}): a stream would be closed for overflow before the relay paused. Lower it, or raise writeBufferLimit first.`,
      "ERR_OUT_OF_RANGE",
    );
  }
  return new Promise<RelayResult>((resolve) => {
    const state = { highWaterMark: hwm, resolve } as RelayState;
    state.a = attach(a, state);
    state.b = attach(b, state);
    state.a.other = state.b;
    state.b.other = state.a;
    for (const side of [state.a, state.b]) {
      // Its onConnect has run (or is running: relay() called in it); else
      // (connecting, a handshake, the onConnect tick) the relay's onConnect
      // starts it. (Not ready(): asking it would turn the default
      // onConnectError's warning into a debug line.)
      if (side.stream._opened) start(side);
    }
  });
}

function checkStream(name: string, stream: Stream): void {
  if (!(stream instanceof Stream)) throw typeError(`relay() ${name} must be a Stream, got ${describe(stream)}.`);
  if (sides.has(stream)) throw new ChannelStateError(`relay() ${name}, ${nameOf(stream)}, is already relayed.`);
  if (stream.closed || stream.closing) throw new ChannelStateError(`relay() ${name}, ${nameOf(stream)}, is closed.`);
  if (!stream.connecting && !stream.writable) {
    const why = stream.connected ? "has ended its side (end())" : "is neither connected nor connecting";
    throw new ChannelStateError(`relay() ${name}, ${nameOf(stream)}, ${why}.`);
  }
}

function attach(stream: Stream, state: RelayState): Side {
  const side = new Side(stream, state, stream.onConnect, stream.onClose);
  sides.set(stream, side);
  stream.readDelimiter = null;
  stream.encoding = null;
  stream.reuseReadBuffer = true;
  stream.writeHighWaterMark = Infinity;
  stream.onConnect = relayConnect;
  stream.onRead = relayRead;
  stream.onWrite = relayWrite;
  stream.onEnd = relayEnd;
  stream.onClose = relayClose;
  return side;
}

/** The stream connected: the user's onConnect, then the bytes held for it. */
function relayConnect(this: Stream): unknown {
  const side = sides.get(this)!;
  try {
    return side.userOnConnect.call(this);
  } finally {
    start(side);
  }
}

/** The stream can take writes: what was held for it goes out, then a held FIN or close. */
function start(side: Side): void {
  if (side.started || side.closed) return;
  side.started = true;
  const stream = side.stream;
  const held = side.held;
  side.held = [];
  side.heldBytes = 0;
  if (!stream.writable) return; // closed in its onConnect, or closing: relayClose follows
  for (const chunk of held) {
    stream.write(chunk);
    side.written += chunk.length;
  }
  if (side.closeHeld) {
    stream.close(true);
    return;
  }
  if (side.endHeld) stream.end();
  const source = side.other.stream;
  if (stream.bufferedAmount > side.relay.highWaterMark) source.pauseReading();
  else source.resumeReading();
}

/** A chunk from this stream's peer: to the other stream, or held until it has started. */
function relayRead(this: Stream, chunk: Buffer): void {
  const to = sides.get(this)!.other;
  const limit = to.relay.highWaterMark;
  if (!to.started) {
    if (to.closed) return;
    // Lent chunks are valid during this call only.
    to.held.push(Buffer.from(chunk));
    to.heldBytes += chunk.length;
    if (to.heldBytes > limit) this.pauseReading();
    return;
  }
  const target = to.stream;
  if (!target.writable) return; // closing: this stream is closed with it (relayClose)
  target.write(chunk);
  to.written += chunk.length;
  if (target.bufferedAmount > limit) this.pauseReading();
}

/** This stream drained: read the one that writes to it again. */
function relayWrite(this: Stream): void {
  const from = sides.get(this)!.other;
  if (!from.closed) from.stream.resumeReading();
}

/** This stream's peer sent FIN: end the other stream; once both have, close both. */
function relayEnd(this: Stream): void {
  const side = sides.get(this)!;
  side.ended = true;
  const to = side.other;
  if (to.closed) return;
  if (!to.started) to.endHeld = true;
  else if (to.stream.writable) to.stream.end();
  if (to.ended) {
    this.close(true);
    to.stream.close(true);
  }
}

/** This stream closed: after its own onClose, close the other one, flushing (once it has the bytes held for it). */
function relayClose(this: Stream): unknown {
  const side = sides.get(this)!;
  side.closed = true;
  side.held = [];
  side.heldBytes = 0;
  try {
    return side.userOnClose.call(this);
  } finally {
    const other = side.other;
    if (!other.closed) {
      // Still connecting with bytes held for it: they go out when it connects, then it closes.
      if (!other.started && other.heldBytes > 0 && (other.stream.connecting || other.stream.connected)) other.closeHeld = true;
      else other.stream.close(true);
    } else {
      const { a, b, resolve } = side.relay;
      resolve({ bytesAtoB: b.written, bytesBtoA: a.written });
    }
  }
}
