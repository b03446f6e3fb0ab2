/**
 * Framing switches mid-stream (SPEC §6), split every way: random protocol
 * scripts whose connection class changes its framing while bytes are
 * buffered (inside onRead, from a Decoder that sniffs the protocol, from
 * onOverflowError, from a timer while paused), with short self-overlapping
 * delimiters, unbounded and look-behind RegExps, anchored matches, structs,
 * Decoders, encodings (latin1, hex, utf8, utf16le, base64) and oversized
 * frames. Each script's events are computed from the whole byte stream, then
 * checked when the bytes arrive whole, a byte at a time, in random pieces
 * and cut at every frame boundary and one byte either side: through the
 * in-memory peer, and over loopback TCP on the native transport and on
 * node:net, each piece read on its own (the client waits for the server to
 * have read it).
 *
 * Some scripts mirror every event, as a length-prefixed record written
 * (flushed) from inside the handler to a second in-memory stream framed by
 * a Decoder that announces lengths; each write ends inside a record, so
 * that stream frames inside the first one's handlers and stops at a
 * partial frame there, with the first one mid-scan. Frames are kept past
 * onRead and compared again at the end (unless read memory is lent).
 * Delimiters include a NetStruct with two length prefixes and one- and
 * two-parameter Decoders that announce lengths.
 *
 * Seeded: SWITCH_FUZZ_SEED=<seed> SWITCH_FUZZ_RUNS=<n> (default 10, a few
 * seconds), SWITCH_FUZZ_TCP_RUNS=<n> (how many of them go over TCP with
 * every split; default 2, the others whole and one split); a failure
 * prints the seed and the script. A campaign (outside the suite):
 * SWITCH_FUZZ_RUNS=2000 SWITCH_FUZZ_TCP_RUNS=150.
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Engine, NetStruct, Server, Stream, Struct } from "../src/index.js";
import type { Decoder, ReadDelimiter } from "../src/index.js";
import { duplexPair, memoryPeer } from "../src/testing.js";
import { nativeAddon } from "../src/native-socket.js";
import { freshEngine, joinRawEvents, listenLocal, prng, sameOnEitherTransport, sleep, withDeadline } from "./helpers.js";

type Rand = () => number;
type Encoding = "latin1" | "hex" | "utf8" | "utf16le" | "base64";
/** What happens after a step's frame: nothing, a pause resumed on the next immediate or a timer, or the next delimiter set from a timer while paused. */
type After = "none" | "immediate" | "timer" | "timerSwitch";

interface Step {
  label: string;
  delimiter: () => ReadDelimiter;
  regexSearch: boolean;
  encoding: Encoding | null;
  /** bufferSize set with the delimiter, or null to keep it. */
  limit: number | null;
  /** Before this step's bytes, a Decoder that sniffs one byte, sets this step's delimiter and returns null. */
  sniff: boolean;
  /** An oversized frame first (onOverflowError), and whether onOverflowError sets the delimiter again. */
  junk: Buffer | null;
  resetOnOverflow: boolean;
  bytes: Buffer;
  /** Where in `bytes` the frame's own bytes end (the delimiter's start), for boundary splits. */
  bodyEnd: number;
  expected: unknown[];
  after: After;
}

interface Script {
  bufferSize: number;
  /** The native transport lends its read memory for the time of onRead. */
  reuseReadBuffer: boolean;
  /** Each event also goes to a second in-memory stream, framed by this Decoder, inside the handler; null: none. */
  mirror: Decoder | null;
  steps: Step[];
  /** Raw chunks after the last step, as bytes or (utf8) as text whose characters the reads may cut. */
  tailEncoding: "utf8" | null;
  tail: Buffer;
}

const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const bytesFrom = (r: Rand, alphabet: readonly number[], n: number): Buffer => Buffer.from(Array.from({ length: n }, () => pick(r, alphabet)));
const ascii = (s: string): number[] => [...Buffer.from(s, "latin1")];

function normalise(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return `hex:${v.toString("hex")}`;
  if (Array.isArray(v)) return [...v].map(normalise); // RegExpExecArray
  if (typeof v === "bigint") return `${v}n`;
  return v;
}

/** Bytes delimiters of 1 to 4 bytes, many overlapping themselves. */
const needles: Array<string | Buffer> = ["\n", "\r\n", "\r\n\r\n", "\n\n", "aa", "aba", "aaab", "||", Buffer.from([0, 0]), Buffer.from([0xff, 0, 0xff]), "€"];

/** Content for a bytes delimiter: its own bytes and a few others, never holding it, nor ending with a prefix of it. */
function contentFor(r: Rand, needle: Buffer, n: number, alphabet: readonly number[]): Buffer {
  const letters = [...new Set([...needle, ...alphabet])];
  for (let tries = 0; tries < 40; tries++) {
    const c = bytesFrom(r, letters, n);
    if (Buffer.concat([c, needle]).indexOf(needle) === c.length) return c;
  }
  return bytesFrom(r, alphabet.filter((b) => !needle.includes(b)), n);
}

/** Search RegExps: the text a match is made of, and letters a body may hold without making one. */
const searches: Array<{ re: RegExp; match: string; body: number[]; before?: string }> = [
  { re: /;/, match: ";", body: ascii("abcxyz0189 ") },
  { re: /\r?\n\r?\n/, match: "\r\n\r\n", body: ascii("abc: 01") },
  { re: /<[a-z]*>/, match: "<tag>", body: ascii("abc 01>") }, // unbounded
  { re: /x+y/, match: "xxy", body: ascii("abc 01y") }, // unbounded
  { re: /(?<=q)z/, match: "z", body: ascii("abc 01z"), before: "q" }, // look-behind: the frame ends with "q"
  { re: /END\r?\n/, match: "END\n", body: ascii("ENabcD \r") },
  { re: /([a-z]+)=(\d*);/, match: "ab=12;", body: ascii("0123 ;=") }, // the anchored steps' RegExp, searched: only regexSearch changes
];
const anchored = searches.at(-1)!.re; // unbounded, regexSearch false

const header = new Struct("!HbQ");
const record = new NetStruct("!H$I");
/** One-parameter Decoder: a 1-byte length, then the payload. */
const viewed: Decoder = (buf) => (buf.length >= 1 + buf[0]! ? { consumed: 1 + buf[0]!, args: [buf.subarray(1, 1 + buf[0]!)] } : null);
/** Two-parameter Decoder: a 2-byte length, then the payload; says the frame's length as soon as it knows it. */
const sized: Decoder = (buf, start) => {
  if (buf.length - start < 2) return null;
  const end = 2 + buf.readUInt16BE(start);
  return buf.length - start >= end ? { consumed: end, args: [buf.subarray(start + 2, start + end)] } : end;
};
/** Two length prefixes and a number: a record a read may cut in either prefix's bytes. */
const pair = new NetStruct("!H$B$H");
/** One-parameter Decoder: a 1-byte length, then the payload; says the frame's length as soon as it knows it. */
const told: Decoder = (buf) => (buf.length < 1 ? null : buf.length >= 1 + buf[0]! ? { consumed: 1 + buf[0]!, args: [buf.subarray(1, 1 + buf[0]!)] } : 1 + buf[0]!);
const sizedFrame = (payload: Buffer): Buffer => Buffer.concat([Buffer.from([payload.length >> 8, payload.length & 0xff]), payload]);

/** Text content (for the encodings that must see whole characters) that never holds the ASCII delimiter bytes. */
const wide = ["é", "€", "😀", "ß", "z", "0"].map((c) => Buffer.from(c, "utf8"));

function encode(body: Buffer, encoding: Encoding | null): unknown {
  return encoding === null ? normalise(body) : body.toString(encoding);
}

function makeStep(r: Rand, bufferSize: number, canEncode: boolean): Step {
  const base = { regexSearch: true, encoding: null as Encoding | null, limit: null, sniff: r() < 0.12, junk: null as Buffer | null, resetOnOverflow: false, after: "none" as After };
  const overflow = r() < 0.15;
  const small = Math.min(bufferSize, 30);
  const any = [...Array(256).keys()];
  switch (int(r, 0, 11)) {
    case 0:
    case 1:
    case 2: {
      const d = pick(r, needles);
      const needle = typeof d === "string" ? Buffer.from(d) : d;
      const asciiNeedle = needle.every((b) => b < 0x80);
      let encoding: Encoding | null = canEncode && r() < 0.35 ? pick(r, ["latin1", "hex", "utf8", "utf16le", "base64"] as const) : null;
      let body: Buffer;
      if ((encoding === "utf8" || encoding === "utf16le") && asciiNeedle) {
        // Whole UTF-8 characters; utf16le wants an even length and no 0 byte pair.
        const chars: Buffer[] = [];
        for (let n = int(r, 0, 6), length = 0; chars.length < n; ) {
          const c = pick(r, wide);
          if ((length += c.length) > small - 1) break;
          chars.push(c);
        }
        body = Buffer.concat(chars);
        if (encoding === "utf16le" && body.length % 2 === 1) body = Buffer.concat([body, Buffer.from("0")]);
        if (Buffer.concat([body, needle]).indexOf(needle) !== body.length) encoding = null;
      } else {
        if (encoding === "utf8" || encoding === "utf16le") encoding = "hex";
        body = contentFor(r, needle, r() < 0.05 ? bufferSize : int(r, 0, small), ascii("ab\n\r0 ").concat([0, 0xff]));
      }
      const junk = overflow ? Buffer.concat([contentFor(r, needle, bufferSize + int(r, 1, 2 * bufferSize + 300), ascii("ab\n\r0 ").concat([0, 0xff])), needle]) : null;
      return { ...base, encoding, junk, resetOnOverflow: r() < 0.6, label: `bytes ${needle.toString("hex")}`, delimiter: () => d, bytes: Buffer.concat([body, needle]), bodyEnd: body.length, expected: [encode(body, encoding)] };
    }
    case 3: {
      const n = r() < 0.1 ? int(r, bufferSize + 1, bufferSize + 200) : int(r, 1, 12);
      const body = bytesFrom(r, any, n);
      const encoding: Encoding | null = canEncode && r() < 0.3 ? pick(r, ["latin1", "hex", "base64"] as const) : null;
      return { ...base, encoding, label: `size ${n}`, delimiter: () => n, bytes: body, bodyEnd: n, expected: [encode(body, encoding)] };
    }
    case 4: {
      const s = pick(r, searches);
      const body = bytesFrom(r, s.body, int(r, 0, small - 1));
      const framed = Buffer.concat([body, Buffer.from(s.before ?? "")]);
      const match = Buffer.from(s.match);
      // Past the limit and the 256 bytes a match may still begin in.
      const junk = overflow ? Buffer.concat([bytesFrom(r, s.body, bufferSize + 257 + int(r, 0, 300)), Buffer.from(s.before ?? ""), match]) : null;
      return { ...base, junk, resetOnOverflow: r() < 0.6, label: `search ${s.re}`, delimiter: () => s.re, bytes: Buffer.concat([framed, match]), bodyEnd: framed.length, expected: [normalise(framed)] };
    }
    case 5: {
      // The match is the frame: no longer than the limit.
      const room = Math.min(8, Math.floor((bufferSize - 2) / 2));
      const text = `${bytesFrom(r, ascii("abcxyz"), int(r, 1, room)).toString("latin1")}=${bytesFrom(r, ascii("0123456789"), int(r, 0, room)).toString("latin1")};`;
      const m = anchored.exec(text)!;
      return { ...base, regexSearch: false, label: "anchored", delimiter: () => anchored, bytes: Buffer.from(text, "latin1"), bodyEnd: text.length - 1, expected: [normalise(m)] };
    }
    case 6: {
      const values = [int(r, 0, 65535), int(r, -128, 127), BigInt(int(r, 0, 2 ** 30)) * 4099n];
      const bytes = header.pack(...values);
      return { ...base, label: "struct", delimiter: () => header, bytes, bodyEnd: bytes.length, expected: header.unpack(bytes).map(normalise) };
    }
    case 7: {
      const bytes = record.pack(bytesFrom(r, any, int(r, 0, Math.max(0, small - 6))), int(r, 0, 2 ** 32 - 1));
      const junk = overflow ? record.pack(bytesFrom(r, any, bufferSize + int(r, 0, 200)), 7) : null;
      return { ...base, junk, resetOnOverflow: r() < 0.6, label: "netstruct", delimiter: () => record, bytes, bodyEnd: bytes.length, expected: record.unpack(bytes).map(normalise) };
    }
    case 8: {
      const body = bytesFrom(r, any, int(r, 0, Math.max(0, small - 2)));
      const junk = overflow ? sizedFrame(bytesFrom(r, any, bufferSize + int(r, 0, 200))) : null;
      return { ...base, junk, resetOnOverflow: r() < 0.6, label: "decoder(sized)", delimiter: () => sized, bytes: sizedFrame(body), bodyEnd: body.length + 2, expected: [normalise(body)] };
    }
    case 10: {
      // Within the limit: 5 bytes of prefixes and number, then the two fields.
      const first = int(r, 0, Math.max(0, small - 9));
      const bytes = pair.pack(bytesFrom(r, any, first), bytesFrom(r, any, int(r, 0, Math.min(4, small - 5 - first))), int(r, 0, 65535));
      const junk = overflow ? pair.pack(bytesFrom(r, any, int(r, 0, 4)), bytesFrom(r, any, Math.min(255, bufferSize + int(r, 0, 200))), 9) : null;
      return { ...base, junk, resetOnOverflow: r() < 0.6, label: "netstruct(pair)", delimiter: () => pair, bytes, bodyEnd: bytes.length - 2, expected: pair.unpack(bytes).map(normalise) };
    }
    case 11: {
      const body = bytesFrom(r, any, int(r, 0, Math.min(small - 1, 255)));
      const junk = overflow ? Buffer.concat([Buffer.from([Math.min(255, bufferSize + int(r, 0, 100))]), bytesFrom(r, any, Math.min(255, bufferSize + int(r, 0, 100)))]) : null;
      if (junk !== null) junk[0] = junk.length - 1;
      return { ...base, junk, resetOnOverflow: r() < 0.6, label: "decoder(told)", delimiter: () => told, bytes: Buffer.concat([Buffer.from([body.length]), body]), bodyEnd: body.length + 1, expected: [normalise(body)] };
    }
    default: {
      const body = bytesFrom(r, any, int(r, 0, Math.min(small - 1, 255)));
      return { ...base, label: "decoder(viewed)", delimiter: () => viewed, bytes: Buffer.concat([Buffer.from([body.length]), body]), bodyEnd: body.length + 1, expected: [normalise(body)] };
    }
  }
}

function makeScript(r: Rand): Script {
  let bufferSize = int(r, 8, 60);
  const first = bufferSize;
  const steps: Step[] = [];
  for (let n = int(r, 2, 16); steps.length < n; ) {
    const limit = steps.length > 0 && r() < 0.1 ? int(r, 8, 60) : null;
    if (limit !== null) bufferSize = limit;
    const st = makeStep(r, bufferSize, true);
    st.limit = limit;
    // A run of the same kind now and then, as a protocol's lines or records come.
    const run = r() < 0.3 ? int(r, 2, 5) : 1;
    st.after = r() < 0.25 ? pick(r, ["immediate", "timer", "timerSwitch"] as const) : "none";
    steps.push(st);
    for (let i = 1; i < run; i++) {
      const again = makeStep(prng(Math.floor(r() * 2 ** 32)), bufferSize, true);
      steps.push(again);
    }
  }
  const reuseReadBuffer = r() < 0.3;
  const mirror = r() < 0.4 ? pick(r, [mirrorAt, mirrorViewed]) : null;
  if (r() < 0.5) return { bufferSize: first, reuseReadBuffer, mirror, steps, tailEncoding: null, tail: bytesFrom(r, [...Array(256).keys()], int(r, 0, 20)) };
  return { bufferSize: first, reuseReadBuffer, mirror, steps, tailEncoding: "utf8", tail: Buffer.concat(Array.from({ length: int(r, 1, 8) }, () => pick(r, wide))) };
}

/** The mirror's Decoders: a 4-byte length, then JSON; each says the frame's length once it has the prefix. */
const mirrorAt: Decoder = (buf, start) => {
  if (buf.length - start < 4) return null;
  const end = start + 4 + buf.readUInt32BE(start);
  return buf.length < end ? end - start : { consumed: end - start, args: [buf.toString("utf8", start + 4, end)] };
};
const mirrorViewed: Decoder = (buf) => {
  if (buf.length < 4) return null;
  const end = 4 + buf.readUInt32BE(0);
  return buf.length < end ? end : { consumed: end, args: [buf.toString("utf8", 4, end)] };
};
const mirrorRecord = (e: unknown): Buffer => {
  const json = Buffer.from(JSON.stringify(e));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(json.length);
  return Buffer.concat([head, json]);
};

/** The stream the mirrored events arrive on, and the one that writes them. */
interface Mirror {
  from: Stream;
  frames: string[];
  /** The last bytes of the last event, sent with the next one (or at the end). */
  held: Buffer;
}

async function openMirror(engine: Engine, decoder: Decoder): Promise<Mirror> {
  const [near, far] = duplexPair();
  const frames: string[] = [];
  class Reader extends Stream {
    override onConnect() {
      this.bufferSize = 1 << 20;
      this.readDelimiter = decoder;
    }
    override onRead(json: string) {
      frames.push(json);
    }
  }
  const reader = new Reader({ engine, socket: far });
  const from = new Stream({ engine, socket: near });
  await Promise.all([reader.ready(), from.ready()]);
  return { from, frames, held: Buffer.alloc(0) };
}

/** The events as the mirror must have them (all but the end and the close). */
function mirrored(events: unknown[]): string[] {
  return events.filter((e) => Array.isArray(e)).map((e) => JSON.stringify(e));
}

function scriptBytes(s: Script): Buffer {
  return Buffer.concat([...s.steps.flatMap((st) => (st.junk === null ? [st.bytes] : [st.junk, st.bytes])), s.tail]);
}

/** Every frame boundary and delimiter start, as offsets into the script's bytes. */
function boundaries(s: Script): number[] {
  const out: number[] = [];
  let at = 0;
  for (const st of s.steps) {
    if (st.junk !== null) {
      out.push(at + st.junk.length - 1);
      at += st.junk.length;
      out.push(at);
    }
    out.push(at + st.bodyEnd, at + st.bytes.length);
    at += st.bytes.length;
  }
  return out;
}

function expectedEvents(s: Script): unknown[] {
  const events: unknown[] = [];
  s.steps.forEach((st, i) => {
    if (st.junk !== null) events.push(["overflow", i]);
    events.push(["frame", i, st.expected]);
  });
  if (s.tail.length > 0) events.push(["raw", s.tailEncoding === null ? s.tail.toString("hex") : s.tail.toString("utf8")]);
  events.push("end", "close");
  return events;
}

/** A connection class that plays the script: it sets each step's framing as the step before it ends. */
function player(s: Script, events: unknown[], done: () => void, streams?: Stream[], mirror?: Mirror, kept?: Array<[unknown[], unknown]>): typeof Stream {
  /**
   * An event, also sent to the mirror at once, with the head of the one
   * before it, and without its own last bytes (they go with the next): the
   * mirror frames one record, then stops inside the next, in its own scan.
   */
  const log = (e: unknown): void => {
    events.push(e);
    if (mirror === undefined || !Array.isArray(e)) return;
    const rec = Buffer.concat([mirror.held, mirrorRecord(e)]);
    const keep = 1 + (events.length % Math.min(8, rec.length - 1));
    mirror.from.write(rec.subarray(0, rec.length - keep), true);
    mirror.held = rec.subarray(rec.length - keep);
  };
  return class Player extends Stream {
    #i = 0;
    #held = false;
    /** Sets the framing of step `i` (a sniffing Decoder first, when the step says so). */
    #apply(i: number): void {
      const st = s.steps[i];
      if (st === undefined) {
        this.encoding = s.tailEncoding;
        this.readDelimiter = null;
        return;
      }
      if (st.limit !== null) this.bufferSize = st.limit;
      this.encoding = st.encoding;
      this.regexSearch = st.regexSearch;
      if (st.sniff) {
        const sniffer: Decoder = () => {
          // Sniffs the first byte, then hands the bytes (none consumed) to the step's delimiter.
          this.readDelimiter = st.delimiter();
          return null;
        };
        this.readDelimiter = sniffer;
      } else {
        this.readDelimiter = st.delimiter();
      }
    }
    override onConnect() {
      streams?.push(this);
      this.bufferSize = s.bufferSize;
      this.reuseReadBuffer = s.reuseReadBuffer;
      this.#apply(0);
    }
    override onRead(...args: unknown[]) {
      if (this.#held) log(["read while paused", this.#i]);
      if (this.#i >= s.steps.length) {
        const chunk = args[0] as Buffer | string;
        log(["raw", typeof chunk === "string" ? chunk : chunk.toString("hex")]);
        return;
      }
      const values = args.map(normalise);
      kept?.push([args, values]);
      log(["frame", this.#i, values]);
      const after = s.steps[this.#i]!.after;
      this.#i++;
      const next = this.#i;
      if (after === "timerSwitch") {
        // The next framing is set from a timer while paused: it frames the bytes already here on the next tick.
        this.#pause();
        setTimeout(() => {
          this.#apply(next);
          this.#resume();
        }, 2);
        return;
      }
      this.#apply(next);
      if (after === "immediate") {
        this.#pause();
        setImmediate(() => this.#resume());
      } else if (after === "timer") {
        this.#pause();
        setTimeout(() => this.#resume(), 2);
      }
    }
    #pause(): void {
      this.#held = true;
      this.pauseReading();
    }
    #resume(): void {
      this.#held = false;
      if (!this.closed) this.resumeReading();
    }
    override onOverflowError() {
      log(["overflow", this.#i]);
      const st = s.steps[this.#i];
      // As a protocol does that goes back to its command lines: the delimiter set again.
      if (st?.resetOnOverflow === true) this.readDelimiter = st.delimiter();
    }
    override onReadError(err: Error) {
      log(["readError", this.#i, err.message]);
    }
    override onError(err: Error) {
      log(["error", this.#i, err.message]);
    }
    override onEnd() {
      events.push("end");
      super.onEnd();
    }
    override onClose() {
      events.push("close");
      done();
    }
  };
}

/** Ways to cut the bytes: whole, bytes one by one, random pieces, at every boundary, a byte before, a byte after. */
function splits(s: Script, r: Rand): Array<{ name: string; cuts: number[] }> {
  const total = scriptBytes(s).length;
  const b = boundaries(s);
  const clean = (xs: number[]) => [...new Set(xs.filter((x) => x > 0 && x < total))].sort((x, y) => x - y);
  const random: number[] = [];
  for (let at = int(r, 1, 9); at < total; at += int(r, 1, 9)) random.push(at);
  const out = [
    { name: "whole", cuts: [] },
    { name: "at boundaries", cuts: clean(b) },
    { name: "a byte before boundaries", cuts: clean(b.map((x) => x - 1)) },
    { name: "a byte after boundaries", cuts: clean(b.map((x) => x + 1)) },
    { name: "random pieces", cuts: clean(random) },
  ];
  if (total < 400) out.push({ name: "bytes", cuts: clean(Array.from({ length: total }, (_, i) => i)) });
  return out;
}

function pieces(bytes: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  return out.filter((p) => p.length > 0);
}

async function viaMemory(s: Script, parts: Buffer[]): Promise<unknown[]> {
  const events: unknown[] = [];
  let done!: () => void;
  const closed = new Promise<void>((resolve) => (done = resolve));
  const engine = new Engine();
  try {
    const mirror = s.mirror === null ? undefined : await openMirror(engine, s.mirror);
    const kept: Array<[unknown[], unknown]> = [];
    const peer = memoryPeer(player(s, events, done, undefined, mirror, kept), { engine });
    for (const p of parts) await peer.send(p);
    await sleep(6); // paused streams resume before the FIN, as a TCP client's FIN follows its bytes
    peer.end();
    await withDeadline(closed, "the in-memory stream to close");
    checkAfter(s, events, mirror, kept);
  } finally {
    engine.stop();
  }
  return joinRawEvents(events);
}

/** The mirror got every event, and the frames kept past onRead still hold what onRead saw. */
function checkAfter(s: Script, events: unknown[], mirror: Mirror | undefined, kept: Array<[unknown[], unknown]>): void {
  if (mirror !== undefined) {
    mirror.from.write(mirror.held, true);
    mirror.held = Buffer.alloc(0);
    assert.deepEqual(mirror.frames, mirrored(events), "the mirror framed every event, inside the handlers");
  }
  if (s.reuseReadBuffer) return; // lent memory: valid only inside onRead
  for (const [args, values] of kept) assert.deepEqual(args.map(normalise), values, "a frame kept past onRead changed");
}

/** Plays the script over loopback TCP: each piece written once the server has read the one before (or 10 ms passed: it may be paused). */
async function viaTcp(t: TestContext, transport: "native" | "js", s: Script, parts: Buffer[]): Promise<unknown[]> {
  const engine = freshEngine(t);
  const events: unknown[] = [];
  const streams: Stream[] = [];
  let done!: () => void;
  const closed = new Promise<void>((resolve) => (done = resolve));
  const mirror = s.mirror === null ? undefined : await openMirror(engine, s.mirror);
  const kept: Array<[unknown[], unknown]> = [];
  const server = new Server(player(s, events, done, streams, mirror, kept), { engine, transport });
  const port = await listenLocal(server, t);
  const socket = net.connect({ host: "127.0.0.1", port });
  socket.setNoDelay(true);
  socket.on("error", () => {});
  try {
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    let sent = 0;
    for (const p of parts) {
      socket.write(p);
      sent += p.length;
      for (let waited = 0; waited < 10 && (streams[0]?.bytesRead ?? 0) < sent; waited++) await sleep(1);
    }
    await sleep(6);
    socket.end();
    await withDeadline(closed, `the ${transport} stream to close`);
    checkAfter(s, events, mirror, kept);
  } finally {
    socket.destroy();
    server.close();
  }
  return joinRawEvents(events);
}

function describeScript(s: Script): string {
  const steps = s.steps.map((st) => {
    const extras = [
      st.limit !== null ? ` bufferSize=${st.limit}` : "",
      st.encoding !== null ? ` ${st.encoding}` : "",
      st.sniff ? " +sniffed" : "",
      st.junk !== null ? ` +overflow(${st.junk.length}${st.resetOnOverflow ? ", delimiter set again" : ""})` : "",
      st.after !== "none" ? ` +${st.after}` : "",
    ];
    return `${st.label}${extras.join("")} ${st.bytes.length > 40 ? `${st.bytes.length} bytes` : st.bytes.toString("hex")}`;
  });
  return `bufferSize ${s.bufferSize}${s.reuseReadBuffer ? " reuseReadBuffer" : ""}${s.mirror !== null ? ` mirror(${s.mirror.name})` : ""}\n  ${steps.join("\n  ")}\n  tail ${s.tailEncoding ?? "bytes"} ${s.tail.toString("hex")}`;
}

const seed = Number(process.env.SWITCH_FUZZ_SEED ?? 0x5171c4);
const runs = Number(process.env.SWITCH_FUZZ_RUNS ?? 10);
/** Real sockets for every split of the first `tcpRuns` runs (slower), for whole and one random split after. */
const tcpRuns = Number(process.env.SWITCH_FUZZ_TCP_RUNS ?? 2);

test(`framing switched mid-stream frames alike however the bytes were split, in memory and over TCP on both transports (seed ${seed}, ${runs} runs)`, { skip: sameOnEitherTransport, timeout: 1_800_000 }, async (t) => {
  const transports: Array<"native" | "js"> = nativeAddon() !== null ? ["native", "js"] : ["js"];
  for (let run = 0; run < runs; run++) {
    const r = prng(seed + run * 7919);
    const s = makeScript(r);
    const bytes = scriptBytes(s);
    const expected = expectedEvents(s);
    const context = `seed ${seed + run * 7919} (run ${run}): ${describeScript(s)}`;
    const ways = splits(s, r);
    for (const way of ways) {
      assert.deepEqual(await viaMemory(s, pieces(bytes, way.cuts)), expected, `in memory, ${way.name}, ${context}`);
    }
    const overTcp = run < tcpRuns ? ways : [ways[0]!, pick(r, ways.slice(1))];
    for (const way of overTcp) {
      for (const transport of transports) {
        assert.deepEqual(await viaTcp(t, transport, s, pieces(bytes, way.cuts)), expected, `${transport}, ${way.name}, ${context}`);
      }
    }
  }
});
