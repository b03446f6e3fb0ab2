/**
 * Differential framing fuzz (SPEC §6): random protocol scripts, whose
 * connection class switches readDelimiter inside onRead (lines, sized
 * bodies, structs, regexes, decoders...), with oversized frames, bufferSize
 * and encoding changes, pauses inside onRead (its own, and a neighbour's,
 * as a relay pauses its other side) and a final FIN, give the events the
 * script says through the in-memory peer (bytes whole and split) and over
 * real loopback TCP, two connections at a time, on the native transport
 * (the addon's C framing and batching) and on node:net.
 *
 * Seeded: a failure prints the seed of its run and the scripts;
 * FRAMING_FUZZ_SEED=<that seed> FRAMING_FUZZ_RUNS=1 plays them again.
 * FRAMING_FUZZ_RUNS=2000 is a longer campaign (outside the suite).
 * FRAMING_FUZZ_LONG=<p> (default 0) adds to that share of the scripts a
 * frame of 200 KiB to 1.2 MiB and a run of frames after it (see insertLong).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { NetStruct, Server, Stream, Struct } from "../src/index.js";
import type { BufferOverflowError, Decoder, ReadDelimiter } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";
import { nativeAddon } from "../src/native-socket.js";
import { freshEngine, joinRawEvents, listenLocal, prng, sameOnEitherTransport, sleep, withDeadline } from "./helpers.js";

type Rand = () => number;
type Pause = "none" | "immediate" | "timer";

/** One frame of the script: the delimiter it is cut with, the bytes the peer sends for it, what onRead gets. */
interface Step {
  label: string;
  delimiter: ReadDelimiter;
  regexSearch: boolean;
  /** An oversized frame sent first under the same delimiter (onOverflowError), or null. */
  junk: Buffer | null;
  bytes: Buffer;
  expected: unknown[];
  /** pauseReading() after this frame, resumed on the next immediate or a timer. */
  pause: Pause;
  /** The bufferSize set before this step's bytes are framed (inside the previous onRead), or null to keep it. */
  limit: number | null;
  /** The encoding set with the delimiter. */
  encoding: "latin1" | "hex" | null;
  /** After this frame, pause another connection of the same server until the next immediate (as a relay pauses its other side). */
  nudge: boolean;
}

interface Script {
  bufferSize: number;
  reuseReadBuffer: boolean;
  steps: Step[];
  /** After the last step: raw chunks (null), or an incomplete frame the FIN discards. */
  tailDelimiter: ReadDelimiter;
  tail: Buffer;
}

const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const bytesFrom = (r: Rand, alphabet: readonly number[], n: number): Buffer => Buffer.from(Array.from({ length: n }, () => pick(r, alphabet)));

function normalise(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return `hex:${v.toString("hex")}`;
  if (Array.isArray(v)) return [...v].map(normalise); // RegExpExecArray
  if (typeof v === "bigint") return `${v}n`;
  return v;
}

const viewed: Decoder = (buf) => (buf.length >= 1 + buf[0]! ? { consumed: 1 + buf[0]!, args: [buf.subarray(1, 1 + buf[0]!)] } : null);
const atOffset: Decoder = (buf, start) =>
  buf.length - start >= 1 + buf[start]! ? { consumed: 1 + buf[start]!, args: [buf.subarray(start + 1, start + 1 + buf[start]!)] } : null;
/** A 2-byte length, then the payload: it says the frame's length as soon as the prefix is here (oversized frames skipped exactly). */
const sized: Decoder = (buf, start) => {
  if (buf.length - start < 2) return null;
  const end = 2 + buf.readUInt16BE(start);
  return buf.length - start >= end ? { consumed: end, args: [buf.subarray(start + 2, start + end)] } : end;
};
const header = new Struct("!HbQ");
const pair = new Struct("<iB");
const record = new NetStruct("!H$I");
const anchored = /k(\d+)=([a-z0-9]*)\./;
const searches: Array<[RegExp, string]> = [
  [/;/, ";"],
  [/\r?\n/, "\r\n"],
  [/\r?\n/, "\n"],
  [/END/, "END"],
];
const words = [...Buffer.from("abcdefghijklmnopqrstuvwxyz0123456789 ")];

/** Content for a bytes delimiter: built from its own bytes and a few others, never holding it, nor ending with a prefix of it. */
function contentFor(r: Rand, needle: Buffer, n: number): Buffer {
  const alphabet = [...new Set([...needle, 0x61, 0x0a, 0x00, 0xff])];
  for (let tries = 0; tries < 30; tries++) {
    const c = bytesFrom(r, alphabet, n);
    if (Buffer.concat([c, needle]).indexOf(needle) === c.length) return c;
  }
  // Bytes not in the delimiter can never make one.
  const other = [...Array(256).keys()].filter((b) => !needle.includes(b));
  return bytesFrom(r, other, n);
}

function bytesDelimiter(r: Rand): string | Buffer {
  switch (int(r, 0, 5)) {
    case 0:
      return pick(r, ["\n", "\r\n", "||", "€"]);
    case 1:
      return "--boundary--"; // longer than the addon's inline 8 bytes
    case 2:
      return Buffer.from([0xde, 0xad, 0xbe, 0xef]);
    default: {
      // Random bytes from a small alphabet: self-overlapping delimiters, some longer than 8 bytes.
      const d = bytesFrom(r, [0x00, 0x61, 0x62, 0xff], int(r, 1, 20));
      return r() < 0.5 && d.every((b) => b < 0x80) ? d.toString("latin1") : d;
    }
  }
}

/** How a step's delimiter was chosen, so a run of steps can keep it (the addon frames a run of one string or size delimiter). */
type Kind =
  | { k: "bytes"; delimiter: string | Buffer }
  | { k: "size"; n: number }
  | { k: "struct"; struct: Struct }
  | { k: "netstruct" }
  | { k: "search"; re: RegExp; match: string }
  | { k: "anchored" }
  | { k: "decoder"; decoder: Decoder };

function kind(r: Rand, bufferSize: number): Kind {
  switch (int(r, 0, 8)) {
    case 0:
    case 1:
    case 2:
      return { k: "bytes", delimiter: bytesDelimiter(r) };
    case 3:
      // Now and then larger than the limit (raised to the size), or than the addon keeps in P (64 KiB).
      return { k: "size", n: r() < 0.1 ? int(r, 100, 5000) : r() < 0.03 ? int(r, 60_000, 150_000) : int(r, 1, 40) };
    case 4:
      return { k: "struct", struct: pick(r, [header, pair]) };
    case 5:
      return { k: "netstruct" };
    case 6: {
      const [re, match] = pick(r, searches);
      return { k: "search", re, match };
    }
    case 7:
      return { k: "anchored" };
    default:
      return { k: "decoder", decoder: pick(r, [viewed, atOffset, sized]) };
  }
}

/** A step under `kind` with `bufferSize` in effect; its frame is text when `encoding` is set and it is a Buffer. */
function step(r: Rand, bufferSize: number, kind: Kind, encoding: "latin1" | "hex" | null): Step {
  const s = plainStep(r, bufferSize, kind);
  if (encoding !== null && (kind.k === "bytes" || kind.k === "size" || kind.k === "search")) {
    s.encoding = encoding;
    s.expected = [Buffer.from((s.expected[0] as string).slice(4), "hex").toString(encoding)];
  }
  return s;
}

function plainStep(r: Rand, bufferSize: number, kind: Kind): Step {
  const pause: Pause = r() < 0.1 ? pick(r, ["immediate", "timer"] as const) : "none";
  const overflow = r() < 0.12;
  const common = { pause, limit: null, encoding: null, nudge: r() < 0.15 };
  const small = Math.min(bufferSize, 40);
  const any = [...Array(256).keys()];
  switch (kind.k) {
    case "bytes": {
      const delimiter = kind.delimiter;
      const needle = typeof delimiter === "string" ? Buffer.from(delimiter) : delimiter;
      const body = contentFor(r, needle, r() < 0.1 ? bufferSize : int(r, 0, small));
      const junk = overflow ? Buffer.concat([contentFor(r, needle, bufferSize + int(r, 1, Math.min(3 * bufferSize, 5000))), needle]) : null;
      return { label: `bytes ${needle.toString("hex")}`, delimiter, regexSearch: true, junk, bytes: Buffer.concat([body, needle]), expected: [normalise(body)], ...common };
    }
    case "size": {
      const body = bytesFrom(r, any, kind.n);
      return { label: `size ${kind.n}`, delimiter: kind.n, regexSearch: true, junk: null, bytes: body, expected: [normalise(body)], ...common };
    }
    case "struct": {
      const struct = kind.struct;
      const values = struct === header ? [int(r, 0, 65535), int(r, -128, 127), BigInt(int(r, 0, 2 ** 30)) * 12345n] : [int(r, -(2 ** 31), 2 ** 31 - 1), int(r, 0, 255)];
      const bytes = struct.pack(...values);
      return { label: `struct ${struct.format}`, delimiter: struct, regexSearch: true, junk: null, bytes, expected: struct.unpack(bytes).map(normalise), ...common };
    }
    case "netstruct": {
      const body = bytesFrom(r, any, int(r, 0, Math.max(0, small - 6)));
      const bytes = record.pack(body, int(r, 0, 2 ** 32 - 1));
      const junk = overflow && bufferSize < 60_000 ? record.pack(bytesFrom(r, [0x41, 0x42], bufferSize + int(r, 0, Math.min(2 * bufferSize, 5000))), 7) : null;
      return { label: "netstruct", delimiter: record, regexSearch: true, junk, bytes, expected: record.unpack(bytes).map(normalise), ...common };
    }
    case "search": {
      const body = bytesFrom(r, words, int(r, 0, small));
      const match = Buffer.from(kind.match);
      const junk = overflow ? Buffer.concat([bytesFrom(r, words, bufferSize + int(r, 1, Math.min(3 * bufferSize, 5000))), match]) : null;
      return { label: `search ${kind.re}`, delimiter: kind.re, regexSearch: true, junk, bytes: Buffer.concat([body, match]), expected: [normalise(body)], ...common };
    }
    case "anchored": {
      const text = `k${int(r, 0, 999)}=${bytesFrom(r, words.slice(0, 36), int(r, 0, Math.max(0, small - 8))).toString("latin1")}.`;
      const m = anchored.exec(text)!;
      return { label: "anchored", delimiter: anchored, regexSearch: false, junk: null, bytes: Buffer.from(text, "latin1"), expected: [normalise(m)], ...common };
    }
    case "decoder": {
      if (kind.decoder === sized) {
        const frame = (payload: Buffer) => Buffer.concat([Buffer.from([payload.length >> 8, payload.length & 0xff]), payload]);
        const body = bytesFrom(r, any, int(r, 0, Math.max(0, small - 2)));
        const junk = overflow && bufferSize < 60_000 ? frame(bytesFrom(r, any, bufferSize + int(r, 0, Math.min(3 * bufferSize, 5000)))) : null;
        return { label: "decoder(sized)", delimiter: sized, regexSearch: true, junk, bytes: frame(body), expected: [normalise(body)], ...common };
      }
      const body = bytesFrom(r, any, int(r, 0, Math.min(small - 1, 255)));
      return { label: `decoder(${kind.decoder.length})`, delimiter: kind.decoder, regexSearch: true, junk: null, bytes: Buffer.concat([Buffer.from([body.length]), body]), expected: [normalise(body)], ...common };
    }
  }
}

function makeScript(r: Rand): Script {
  // Now and then a limit above 64 KiB, with frames that size (the addon's P grows and shrinks).
  const first = r() < 0.04 ? int(r, 66_000, 150_000) : int(r, 16, 120);
  let bufferSize = first;
  const steps: Step[] = [];
  for (let n = int(r, 1, 24); steps.length < n; ) {
    // Often a run of frames under one delimiter, as a protocol's lines or
    // records are; first, often one the addon frames (a string or a size).
    const k = steps.length === 0 && r() < 0.4 ? (r() < 0.7 ? { k: "bytes" as const, delimiter: bytesDelimiter(r) } : { k: "size" as const, n: int(r, 1, 40) }) : kind(r, bufferSize);
    // Now and then a bulk run: hundreds of small frames, many to one read.
    const length = r() < 0.05 ? int(r, 200, 1500) : r() < 0.5 ? int(r, 2, 10) : 1;
    const encoding = r() < 0.15 ? pick(r, ["latin1", "hex"] as const) : null;
    for (let i = 0; i < length; i++) {
      // The limit may change inside onRead, with the delimiter or between two frames of a run.
      const limit = steps.length > 0 && r() < 0.08 ? (first > 60_000 ? int(r, 66_000, 150_000) : int(r, 16, 120)) : null;
      const before = bufferSize;
      if (limit !== null) bufferSize = limit;
      const st = step(r, bufferSize, k, encoding);
      st.limit = limit;
      if (limit !== null && limit < before && k.k === "bytes" && r() < 0.5) {
        // A frame the old limit allowed and the new one does not (cut by the addon before the limit changed).
        const needle = typeof k.delimiter === "string" ? Buffer.from(k.delimiter) : k.delimiter;
        st.junk = Buffer.concat([contentFor(r, needle, int(r, limit + 1, before)), needle]);
      }
      if (length > 10) st.pause = "none";
      steps.push(st);
    }
  }
  if (longRate > 0 && r() < longRate) insertLong(r, steps, first);
  const reuseReadBuffer = r() < 0.3;
  if (r() < 0.5) return { bufferSize: first, reuseReadBuffer, steps, tailDelimiter: null, tail: bytesFrom(r, [...Array(256).keys()], int(r, 0, 60)) };
  // A frame the FIN cuts short: discarded.
  const delimiter = bytesDelimiter(r);
  const needle = typeof delimiter === "string" ? Buffer.from(delimiter) : delimiter;
  return { bufferSize: first, reuseReadBuffer, steps, tailDelimiter: delimiter, tail: contentFor(r, needle, int(r, 0, Math.min(30, bufferSize))) };
}

/**
 * FRAMING_FUZZ_LONG=<p>: with this probability a script also gets a long
 * frame, its limit raised for it, then a run of small frames under the same
 * delimiter (or none: the next step's delimiter at once), which the read
 * that completes it brings along: 200 KiB to 1.2 MiB under a delimiter the
 * addon frames (it waits in the addon's pending bytes; the frames after it
 * come in one block), or 1 to 200 KiB under a search RegExp or a Decoder
 * that returns null until its frame is whole (joined again per arrival: the
 * receive buffer's room, left when the frame is consumed).
 */
const longRate = Number(process.env.FRAMING_FUZZ_LONG ?? 0);

/** A 4-byte length, then the payload; null until the frame is whole. */
const viewed32: Decoder = (buf) => {
  if (buf.length < 4) return null;
  const end = 4 + buf.readUInt32BE(0);
  return buf.length >= end ? { consumed: end, args: [buf.subarray(4, end)] } : null;
};

function insertLong(r: Rand, steps: Step[], first: number): void {
  // Often first: a stream that keeps switching delimiter is framed in JS, not by the addon (F_JS_FRAMING).
  const at = r() < 0.5 ? 0 : int(r, 0, steps.length);
  let before = first;
  for (const st of steps.slice(0, at)) if (st.limit !== null) before = st.limit;
  const which = pick(r, ["bytes", "bytes", "bytes", "size", "search", "search", "decoder"] as const);
  const size = which === "bytes" || which === "size" ? int(r, 200_000, 1_200_000) : int(r, 1024, 200_000);
  const limit = size + int(r, 16, 4096);
  const delimiter = pick(r, ["\n", "\r\n", "--boundary--", Buffer.from([0xde, 0xad, 0xbe, 0xef])] as const);
  const needle = typeof delimiter === "string" ? Buffer.from(delimiter) : delimiter;
  const [re, match] = pick(r, searches);
  // Any bytes but the delimiter's (or a search's): a few KiB of them, repeated.
  const banned = which === "search" ? [...Buffer.from(match)] : needle;
  const other = [...Array(256).keys()].filter((b) => !banned.includes(b) && (which !== "search" || words.includes(b)));
  const pattern = bytesFrom(r, other, int(r, 1, 4096));
  const body = Buffer.alloc(size, pattern);
  const common = { regexSearch: true, junk: null, pause: (r() < 0.3 ? pick(r, ["immediate", "timer"] as const) : "none") as Pause, encoding: null, nudge: r() < 0.15, limit };
  let long: Step;
  let kindAfter: Kind;
  if (which === "bytes") {
    long = { label: `long bytes ${needle.toString("hex")} ${size}`, delimiter, bytes: Buffer.concat([body, needle]), expected: [normalise(body)], ...common };
    kindAfter = { k: "bytes", delimiter };
  } else if (which === "size") {
    long = { label: `long size ${size}`, delimiter: size, bytes: body, expected: [normalise(body)], ...common };
    kindAfter = { k: "size", n: int(r, 1, 40) };
  } else if (which === "search") {
    long = { label: `long search ${re} ${size}`, delimiter: re, bytes: Buffer.concat([body, Buffer.from(match)]), expected: [normalise(body)], ...common };
    kindAfter = { k: "search", re, match };
  } else {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(size);
    long = { label: `long decoder(viewed32) ${size}`, delimiter: viewed32, bytes: Buffer.concat([head, body]), expected: [normalise(body)], ...common };
    kindAfter = { k: "decoder", decoder: pick(r, [viewed, atOffset, sized]) };
  }
  const run: Step[] = [long];
  for (let n = r() < 0.3 ? 0 : int(r, 1, 60); n > 0; n--) {
    const st = step(r, 40, kindAfter, null);
    st.junk = null; // (not oversized under the raised limit)
    run.push(st);
  }
  const next = steps[at];
  if (next !== undefined && next.limit === null) next.limit = before;
  steps.splice(at, 0, ...run);
}

function scriptBytes(s: Script): Buffer {
  return Buffer.concat([...s.steps.flatMap((st) => (st.junk === null ? [st.bytes] : [st.junk, st.bytes])), s.tail]);
}

/** The events the script must give: frames (with their step), overflows, raw tail, end, close. */
function expectedEvents(s: Script): unknown[] {
  const events: unknown[] = [];
  s.steps.forEach((st, i) => {
    if (st.junk !== null) events.push(["overflow", i]);
    events.push(["frame", i, st.expected]);
  });
  if (s.tailDelimiter === null && s.tail.length > 0) events.push(["raw", s.tail.toString("hex")]);
  events.push("end", "close");
  return events;
}

/** What the next connection plays: the script, where its events go, what to call once closed. */
interface Part {
  s: Script;
  events: unknown[];
  /** Called from onConnect. */
  connected: () => void;
  done: () => void;
  /** The connections playing at the same time on the same server (this one's included once connected). */
  peers: Stream[];
}

/** A connection class whose instances play the script `cast()` gives at their making. */
function player(cast: () => Part): typeof Stream {
  return class Player extends Stream {
    #i = 0;
    /** Set by pauseReading(), cleared by resumeReading() (one flag, whoever calls them): no onRead meanwhile. */
    held = false;
    override pauseReading() {
      this.held = true;
      super.pauseReading();
    }
    override resumeReading() {
      this.held = false;
      super.resumeReading();
    }
    readonly #part = cast();
    #apply(): void {
      const s = this.#part.s;
      const st = s.steps[this.#i];
      if (st === undefined) {
        this.encoding = null;
        this.readDelimiter = s.tailDelimiter;
        return;
      }
      if (st.limit !== null) this.bufferSize = st.limit;
      this.encoding = st.encoding;
      this.regexSearch = st.regexSearch;
      this.readDelimiter = st.delimiter;
    }
    override onConnect() {
      this.#part.peers.push(this);
      this.#part.connected();
      this.bufferSize = this.#part.s.bufferSize;
      this.reuseReadBuffer = this.#part.s.reuseReadBuffer;
      this.#apply();
    }
    override onRead(...args: unknown[]) {
      const { s, events } = this.#part;
      if (this.held) events.push(["read while paused", this.#i]);
      if (this.#i >= s.steps.length) {
        events.push(["raw", (args[0] as Buffer).toString("hex")]);
        return;
      }
      events.push(["frame", this.#i, args.map(normalise)]);
      const { pause, nudge } = s.steps[this.#i]!;
      if (nudge) {
        const other = this.#part.peers.find((p) => p !== this && !p.closed);
        if (other !== undefined) {
          other.pauseReading();
          setImmediate(() => other.resumeReading());
        }
      }
      this.#i++;
      this.#apply();
      if (pause !== "none") {
        this.pauseReading();
        if (pause === "immediate") setImmediate(() => this.resumeReading());
        else setTimeout(() => this.resumeReading(), 2);
      }
    }
    override onOverflowError(_err: BufferOverflowError) {
      this.#part.events.push(["overflow", this.#i]);
    }
    override onReadError(err: Error) {
      this.#part.events.push(["readError", this.#i, err.message]);
    }
    override onError(err: Error) {
      this.#part.events.push(["error", this.#i, err.message]);
    }
    override onEnd() {
      this.#part.events.push("end");
      super.onEnd();
    }
    override onClose() {
      this.#part.events.push("close");
      this.#part.done();
    }
  };
}

async function viaMemory(s: Script, split: Rand | null): Promise<unknown[]> {
  const events: unknown[] = [];
  const part: Part = { s, events, connected: () => {}, done: () => {}, peers: [] };
  const peer = memoryPeer(player(() => part));
  const bytes = scriptBytes(s);
  const most = bytes.length > 50_000 ? 8000 : 23;
  await peer.send(bytes, split === null ? undefined : { chunkSize: Array.from({ length: 16 }, () => int(split, 1, most)) });
  // Let paused streams resume before the FIN (a TCP client's FIN comes after its bytes too).
  await sleep(5);
  peer.end();
  await withDeadline(peer.closed, "the in-memory stream to close");
  return joinRawEvents(events);
}

/** A listening server whose next connection plays the script set with `play`. */
async function scriptServer(t: TestContext, transport: "native" | "js") {
  const engine = freshEngine(t);
  let current: Part | null = null;
  const server = new Server(
    player(() => {
      if (current === null) throw new Error("a connection with no script in play");
      return current;
    }),
    { engine, transport },
  );
  const port = await listenLocal(server, t);
  return {
    /** Plays the scripts on connections at the same time, one client each (`rands[i]` says how it writes); their events. */
    async play(scripts: Script[], rands: Rand[]): Promise<unknown[][]> {
      const peers: Stream[] = [];
      const sockets: net.Socket[] = [];
      const parts: Array<Part & { closed: Promise<void> }> = [];
      try {
        // Connected one after the other, so each connection gets its script.
        for (const s of scripts) {
          let done!: () => void;
          let connected!: () => void;
          const closed = new Promise<void>((resolve) => (done = resolve));
          const onConnect = new Promise<void>((resolve) => (connected = resolve));
          const part = { s, events: [], connected, done, peers, closed };
          parts.push(part);
          current = part;
          const socket = net.connect({ host: "127.0.0.1", port });
          sockets.push(socket);
          socket.setNoDelay(true);
          socket.on("error", () => {});
          await withDeadline(onConnect, `the ${transport} connection`);
          current = null;
        }
        await Promise.all(sockets.map((socket, i) => send(socket, scriptBytes(scripts[i]!), rands[i]!)));
        for (const part of parts) await withDeadline(part.closed, `the ${transport} stream to close`);
      } finally {
        for (const socket of sockets) socket.destroy();
        current = null;
      }
      return parts.map((part) => joinRawEvents(part.events));
    },
  };
}

/** Writes `bytes` all at once (many frames to a read), or in pieces with pauses between, then ends. */
async function send(socket: net.Socket, bytes: Buffer, r: Rand): Promise<void> {
  if (r() < 0.3) {
    socket.end(bytes);
    return;
  }
  for (let at = 0; at < bytes.length; ) {
    const n = bytes.length > 50_000 ? int(r, 1, 20_000) : r() < 0.1 ? int(r, 100, 2000) : int(r, 1, 40);
    socket.write(bytes.subarray(at, at + n));
    at += n;
    const wait = r();
    if (wait < 0.3) await new Promise((resolve) => setImmediate(resolve));
    else if (wait < 0.4) await sleep(int(r, 1, 3));
  }
  socket.end();
}

function describeScript(s: Script): string {
  const steps = s.steps.slice(0, 40).map((st) => {
    const extras = [st.limit !== null ? ` bufferSize=${st.limit}` : "", st.encoding !== null ? ` ${st.encoding}` : "", st.junk !== null ? ` +overflow(${st.junk.length})` : "", st.pause !== "none" ? ` +pause(${st.pause})` : "", st.nudge ? " +nudge" : ""];
    return `${st.label}${extras.join("")} ${st.bytes.length > 40 ? `${st.bytes.length} bytes` : st.bytes.toString("hex")}`;
  });
  if (s.steps.length > 40) steps.push(`... ${s.steps.length} steps in all`);
  return `bufferSize ${s.bufferSize}${s.reuseReadBuffer ? " reuseReadBuffer" : ""}\n  ${steps.join("\n  ")}\n  tail ${String(s.tailDelimiter)} ${s.tail.toString("hex")}`;
}

const seed = Number(process.env.FRAMING_FUZZ_SEED ?? 0x5eed);
const runs = Number(process.env.FRAMING_FUZZ_RUNS ?? 60);

test(`random protocol scripts frame alike in memory, on the native transport and on node:net (seed ${seed}, ${runs} runs)`, { skip: sameOnEitherTransport, timeout: 600_000 }, async (t) => {
  const transports: Array<"native" | "js"> = nativeAddon() !== null ? ["native", "js"] : ["js"];
  const servers = await Promise.all(transports.map((tr) => scriptServer(t, tr)));
  for (let run = 0; run < runs; run++) {
    const r = prng(seed + run * 7919);
    // Two scripts played side by side on each server: their reads share the addon's batches.
    const scripts = [makeScript(r), makeScript(r)];
    const context = `seed ${seed + run * 7919} (run ${run}):\n${scripts.map((s, i) => `  script ${i}: ${describeScript(s)}`).join("\n")}`;
    const expected = scripts.map(expectedEvents);
    for (let i = 0; i < scripts.length; i++) {
      assert.deepEqual(await viaMemory(scripts[i]!, null), expected[i], `script ${i} in memory, whole, ${context}`);
      assert.deepEqual(await viaMemory(scripts[i]!, r), expected[i], `script ${i} in memory, split, ${context}`);
    }
    // Both transports at once, each client writing its own way.
    const seen = await Promise.all(servers.map((server) => server.play(scripts, scripts.map(() => prng(Math.floor(r() * 2 ** 32))))));
    seen.forEach((events, i) => assert.deepEqual(events, expected, `${transports[i]}, ${context}`));
  }
});
