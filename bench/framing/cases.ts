/**
 * Framing micro-benchmark cases: for each kind of `readDelimiter`, one round
 * of input (about 1 MiB of frames), a pants-ts connection class that counts
 * what `onRead` gets, and a hand-written framer (indexOf / readUInt loops,
 * the way one frames by hand on raw `node:net`) that counts the same frames.
 */
import { NetStruct, Stream, Struct } from "pants-ts";
import type { Decoder, ReadDelimiter } from "pants-ts";

/** What a side saw: frames, and a checksum of their contents (equal on both sides). */
export interface Sink {
  frames: number;
  check: number;
}

export interface FramingCase {
  readonly name: string;
  readonly title: string;
  /** One round of input and the number of frames in it. */
  readonly input: () => { data: Buffer; frames: number };
  /** A pants-ts connection class counting into `sink`. */
  readonly pants: (sink: Sink) => typeof Stream;
  /** A hand-written framer fed every chunk, counting into `sink`. */
  readonly raw: (sink: Sink) => (chunk: Buffer) => void;
}

const ROUND_BYTES = 1 << 20;

/** Repeats `make(i)` (one frame's bytes) until the round is full. */
function repeatFrames(make: (i: number) => Buffer): { data: Buffer; frames: number } {
  const parts: Buffer[] = [];
  let total = 0;
  while (total < ROUND_BYTES) {
    const frame = make(parts.length);
    parts.push(frame);
    total += frame.length;
  }
  return { data: Buffer.concat(parts, total), frames: parts.length };
}

function textLine(length: number, i: number, ending: string): Buffer {
  const body = `${i}:`.padEnd(length - ending.length, "abcdefghijklmnopqrstuvwxyz0123456789");
  return Buffer.from(body + ending, "latin1");
}

/** Hand-written: frames split by a byte sequence, found with indexOf; the delimiter is dropped. */
function indexOfFramer(delimiter: number | Buffer, onFrame: (frame: Buffer) => void): (chunk: Buffer) => void {
  const skip = typeof delimiter === "number" ? 1 : delimiter.length;
  let pending: Buffer | null = null;
  return (chunk) => {
    const data = pending === null ? chunk : Buffer.concat([pending, chunk]);
    let start = 0;
    let at: number;
    while ((at = data.indexOf(delimiter, start)) !== -1) {
      onFrame(data.subarray(start, at));
      start = at + skip;
    }
    pending = start < data.length ? data.subarray(start) : null;
  };
}

/**
 * Hand-written: keeps the unframed tail of earlier chunks and calls `frame`
 * in a loop; `frame` delivers one frame at `offset` and returns its size, or
 * returns 0 when the frame there is not complete yet.
 */
function loopFramer(frame: (data: Buffer, offset: number) => number): (chunk: Buffer) => void {
  let pending: Buffer | null = null;
  return (chunk) => {
    const data = pending === null ? chunk : Buffer.concat([pending, chunk]);
    let offset = 0;
    let used: number;
    while ((used = frame(data, offset)) > 0) offset += used;
    pending = offset < data.length ? data.subarray(offset) : null;
  };
}

/** The handler both sides call per frame of bytes. */
function countBytes(sink: Sink): (frame: Buffer) => void {
  return (frame) => {
    sink.frames++;
    sink.check += frame.length;
  };
}

/** A pants-ts connection class framing by `delimiter` and counting each frame's bytes into `sink`. */
function byteCounter(sink: Sink, delimiter: ReadDelimiter): typeof Stream {
  return class extends Stream {
    override onConnect(): void {
      this.readDelimiter = delimiter;
    }
    override onRead(frame: Buffer): void {
      sink.frames++;
      sink.check += frame.length;
    }
  };
}

function lineCase(name: string, title: string, length: number): FramingCase {
  return {
    name,
    title,
    input: () => repeatFrames((i) => textLine(length, i, "\n")),
    pants: (sink) => byteCounter(sink, "\n"),
    raw: (sink) => indexOfFramer(0x0a, countBytes(sink)),
  };
}

const HEADERS_END = Buffer.from("\r\n\r\n", "latin1");
const STRUCT_HH = new Struct("!HH");
const NETSTRUCT_HS = new NetStruct("!H$");
const RECORD_SIZE = 128;

/** A length-prefixed message: a 4-byte big-endian length, then the payload. */
const lengthPrefixed: Decoder = (buf) => {
  if (buf.length < 4) return null;
  const end = 4 + buf.readUInt32BE(0);
  if (buf.length < end) return null;
  return { consumed: end, args: [buf.subarray(4, end)] };
};

/** The same, read at an offset (a two-parameter Decoder): no view per call. */
const lengthPrefixedAt: Decoder = (buf, start) => {
  if (buf.length - start < 4) return null;
  const end = start + 4 + buf.readUInt32BE(start);
  if (buf.length < end) return null;
  return { consumed: end - start, args: [buf.subarray(start + 4, end)] };
};

/** Input and hand-written framer of both Decoder cases: 4-byte length prefix, 60-byte payload. */
const decoderInput = () =>
  repeatFrames((i) => {
    const message = Buffer.alloc(64, i & 0xff);
    message.writeUInt32BE(60, 0);
    return message;
  });

/** The hand-written framer of the length-prefixed cases. */
function lengthPrefixedRaw(sink: Sink): (chunk: Buffer) => void {
  const onPayload = countBytes(sink);
  return loopFramer((data, offset) => {
    if (data.length - offset < 4) return 0;
    const end = offset + 4 + data.readUInt32BE(offset);
    if (data.length < end) return 0;
    onPayload(data.subarray(offset + 4, end));
    return end - offset;
  });
}

const NETSTRUCT_IS = new NetStruct("!I$");

/**
 * Hand-written: a loop that calls the very Decoder pants-ts is given, as
 * pants-ts calls it (a view from the frame on for a one-parameter Decoder),
 * and hands its one value on. Against it, a Decoder row measures what the
 * framework adds to the user's function, not what the function costs.
 */
function decoderLoopRaw(decoder: Decoder): (sink: Sink) => (chunk: Buffer) => void {
  const offsets = decoder.length >= 2;
  return (sink) => {
    const onPayload = countBytes(sink);
    return loopFramer((data, offset) => {
      const result = offsets ? decoder(data, offset) : decoder(offset === 0 ? data : data.subarray(offset), 0);
      if (result === null || typeof result === "number") return 0;
      onPayload(result.args[0] as Buffer);
      return result.consumed;
    });
  };
}

/** A Decoder case: against the hand-written length-prefix loop, or (`sameFunction`) against a loop calling the same Decoder. */
function decoderCase(name: string, title: string, decoder: Decoder, sameFunction = false): FramingCase {
  return {
    name,
    title,
    input: decoderInput,
    pants: (sink) => byteCounter(sink, decoder),
    raw: sameFunction ? decoderLoopRaw(decoder) : lengthPrefixedRaw,
  };
}

export const CASES: readonly FramingCase[] = [
  lineCase("line-short", 'string "\\n", 32-byte lines', 32),
  lineCase("line-long", 'string "\\n", 4 KiB lines', 4096),
  {
    name: "crlf2",
    title: 'Buffer "\\r\\n\\r\\n", ~100-byte HTTP request heads',
    input: () =>
      repeatFrames((i) =>
        Buffer.from(`GET /items/${i} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n`, "latin1"),
      ),
    pants: (sink) => byteCounter(sink, HEADERS_END),
    raw: (sink) => indexOfFramer(HEADERS_END, countBytes(sink)),
  },
  {
    name: "integer",
    title: `integer ${RECORD_SIZE}, fixed-size records`,
    input: () => repeatFrames((i) => Buffer.alloc(RECORD_SIZE, i & 0xff)),
    pants: (sink) =>
      class extends Stream {
        override onConnect(): void {
          this.readDelimiter = RECORD_SIZE;
        }
        override onRead(record: Buffer): void {
          sink.frames++;
          sink.check += record[0]!;
        }
      },
    raw: (sink) => {
      const onRecord = (record: Buffer) => {
        sink.frames++;
        sink.check += record[0]!;
      };
      return loopFramer((data, offset) => {
        if (data.length - offset < RECORD_SIZE) return 0;
        onRecord(data.subarray(offset, offset + RECORD_SIZE));
        return RECORD_SIZE;
      });
    },
  },
  {
    name: "regex",
    title: "RegExp /\\r?\\n/ search, 32-byte lines",
    input: () => repeatFrames((i) => textLine(32, i, "\r\n")),
    pants: (sink) => byteCounter(sink, /\r?\n/),
    raw: (sink) => {
      // By hand: a RegExp needs a string, so decode as latin1 (one char per byte) and search with lastIndex.
      const onLine = countBytes(sink);
      const pattern = /\r?\n/g;
      let pending: Buffer | null = null;
      return (chunk) => {
        const data = pending === null ? chunk : Buffer.concat([pending, chunk]);
        const text = data.toString("latin1");
        let start = 0;
        let match: RegExpExecArray | null;
        pattern.lastIndex = 0;
        while ((match = pattern.exec(text)) !== null) {
          onLine(data.subarray(start, match.index));
          start = match.index + match[0].length;
        }
        pending = start < data.length ? data.subarray(start) : null;
      };
    },
  },
  {
    name: "struct",
    title: 'Struct("!HH"), 4-byte records',
    input: () => repeatFrames((i) => STRUCT_HH.pack(i & 0xffff, (i * 7) & 0xffff)),
    pants: (sink) =>
      class extends Stream {
        override onConnect(): void {
          this.readDelimiter = STRUCT_HH;
        }
        override onRead(a: number, b: number): void {
          sink.frames++;
          sink.check += a + b;
        }
      },
    raw: (sink) => {
      const onValues = (a: number, b: number) => {
        sink.frames++;
        sink.check += a + b;
      };
      return loopFramer((data, offset) => {
        if (data.length - offset < 4) return 0;
        onValues(data.readUInt16BE(offset), data.readUInt16BE(offset + 2));
        return 4;
      });
    },
  },
  {
    name: "netstruct",
    title: 'NetStruct("!H$"), 2-byte length + 30-byte string',
    input: () => repeatFrames((i) => NETSTRUCT_HS.pack(textLine(30, i, ""))),
    pants: (sink) => byteCounter(sink, NETSTRUCT_HS),
    raw: (sink) => {
      const onText = countBytes(sink);
      return loopFramer((data, offset) => {
        if (data.length - offset < 2) return 0;
        const end = offset + 2 + data.readUInt16BE(offset);
        if (data.length < end) return 0;
        onText(data.subarray(offset + 2, end));
        return end - offset;
      });
    },
  },
  {
    // The bytes of the Decoder cases, framed by the built-in NetStruct: what a length prefix costs without a Decoder.
    name: "length-prefix",
    title: 'NetStruct("!I$"), 4-byte length prefix + 60-byte payload (the Decoder cases\' input)',
    input: decoderInput,
    pants: (sink) => byteCounter(sink, NETSTRUCT_IS),
    raw: lengthPrefixedRaw,
  },
  decoderCase("decoder", "Decoder (buf): 4-byte length prefix + 60-byte payload", lengthPrefixed),
  decoderCase("decoder-at", "Decoder (buf, start): the same, read at an offset", lengthPrefixedAt),
  // The same two Decoders, each against a hand loop calling that very function: the framework's own share.
  decoderCase("decoder-loop", "Decoder (buf), the raw side a hand loop calling the same function", lengthPrefixed, true),
  decoderCase("decoder-at-loop", "Decoder (buf, start), the raw side a hand loop calling the same function", lengthPrefixedAt, true),
];
