/**
 * A long frame the native addon held, completed by a read that brings more
 * frames in the same block (the frames after the long one are cut from a
 * copy of their bytes): handlers that switch delimiter, pause, close, throw
 * or set an encoding on the long frame or a later one get the same events
 * on the native transport, on node:net and through the in-memory peer, and
 * frames kept past onRead keep their bytes.
 *
 * Seeded: LONG_BLOCK_SEED=<n> LONG_BLOCK_RUNS=<n> (default 6).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createHash } from "node:crypto";
import { Server, Stream } from "../src/index.js";
import type { Decoder, ReadDelimiter } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";
import { nativeAddon } from "../src/native-socket.js";
import { freshEngine, listenLocal, prng, sameOnEitherTransport, sleep, withDeadline } from "./helpers.js";

type Rand = () => number;
type Action = "none" | "size" | "comma" | "decoder" | "pause" | "close" | "throw" | "latin1" | "limit";
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

interface Script {
  bytes: Buffer;
  /** Frame index → what the handler does on it. */
  actions: Map<number, Action>;
  reuseReadBuffer: boolean;
  /** Where the client's writes end (the last one brings the long frame's end and the frames after it). */
  cuts: number[];
}

const viewed: Decoder = (buf) => (buf.length >= 1 + buf[0]! ? { consumed: 1 + buf[0]!, args: [buf.subarray(1, 1 + buf[0]!)] } : null);

function show(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return v.length > 64 ? `${v.length}:${createHash("sha1").update(v).digest("hex")}` : `hex:${v.toString("hex")}`;
  if (typeof v === "string") return v.length > 64 ? `s${v.length}:${createHash("sha1").update(v).digest("hex")}` : `s:${v}`;
  return v;
}

function makeScript(r: Rand): Script {
  const long = Buffer.alloc(int(r, 270_000, 1_100_000), Buffer.from(`x${int(r, 0, 999)}yz`));
  const small: Buffer[] = [];
  for (let n = int(r, 1, 30); n > 0; n--) {
    const body = Buffer.from(Array.from({ length: int(r, 0, 30) }, () => pick(r, [0x61, 0x62, 0x2c, 0x03, 0x0d, 0x30])));
    small.push(Buffer.concat([body, Buffer.from("\n")]));
  }
  const tail = Buffer.from("abc".slice(0, int(r, 0, 3)));
  const bytes = Buffer.concat([long, Buffer.from("\n"), ...small, tail]);
  const actions = new Map<number, Action>();
  const all: Action[] = ["size", "comma", "decoder", "pause", "close", "throw", "latin1", "limit", "none"];
  for (let n = int(r, 1, 3); n > 0; n--) actions.set(pick(r, [0, 0, 1, 1, 2, int(r, 0, small.length)]), pick(r, all));
  // Writes of 64 KiB, then the long frame's last bytes and everything after it in one write.
  const cuts: number[] = [];
  const end = long.length - int(r, 1, 30_000);
  for (let at = 65_536; at < end; at += 65_536) cuts.push(at);
  cuts.push(end);
  return { bytes, actions, reuseReadBuffer: r() < 0.3, cuts };
}

function player(s: Script, events: unknown[], kept: Array<[unknown, unknown]>, done: () => void): typeof Stream {
  return class Player extends Stream {
    #i = 0;
    override onConnect() {
      this.bufferSize = 2 << 20;
      this.reuseReadBuffer = s.reuseReadBuffer;
      this.readDelimiter = "\n";
    }
    override onRead(frame: unknown) {
      const i = this.#i++;
      events.push(["frame", i, show(frame)]);
      if (!s.reuseReadBuffer) kept.push([frame, show(frame)]);
      const action = s.actions.get(i) ?? "none";
      let d: ReadDelimiter | undefined;
      switch (action) {
        case "size":
          d = 7;
          break;
        case "comma":
          d = ",";
          break;
        case "decoder":
          d = viewed;
          break;
        case "latin1":
          this.encoding = "latin1";
          break;
        case "limit":
          this.bufferSize = (2 << 20) + 1;
          break;
        case "pause":
          this.pauseReading();
          setImmediate(() => this.resumeReading());
          break;
        case "close":
          this.close();
          break;
        case "throw":
          throw new Error(`thrown at ${i}`);
      }
      if (d !== undefined) this.readDelimiter = d;
    }
    override onError(err: Error) {
      events.push(["error", err.message]);
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

function check(events: unknown[], kept: Array<[unknown, unknown]>): unknown[] {
  for (const [frame, seen] of kept) assert.equal(show(frame), seen, "a frame kept past onRead changed");
  return events;
}

async function viaMemory(s: Script): Promise<unknown[]> {
  const events: unknown[] = [];
  const kept: Array<[unknown, unknown]> = [];
  let done!: () => void;
  const closed = new Promise<void>((resolve) => (done = resolve));
  const peer = memoryPeer(player(s, events, kept, done));
  await peer.send(s.bytes);
  await sleep(5);
  peer.end();
  await withDeadline(closed, "the in-memory stream to close");
  return check(events, kept);
}

async function viaTcp(t: TestContext, transport: "native" | "js", s: Script): Promise<unknown[]> {
  const engine = freshEngine(t);
  const events: unknown[] = [];
  const kept: Array<[unknown, unknown]> = [];
  let done!: () => void;
  const closed = new Promise<void>((resolve) => (done = resolve));
  const server = new Server(player(s, events, kept, done), { engine, transport });
  const port = await listenLocal(server, t);
  const socket = net.connect({ host: "127.0.0.1", port });
  socket.on("error", () => {});
  try {
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    let from = 0;
    for (const at of [...s.cuts, s.bytes.length]) {
      socket.write(s.bytes.subarray(from, at));
      from = at;
      await new Promise((resolve) => setImmediate(resolve));
      await sleep(1);
    }
    await sleep(10);
    socket.end();
    await withDeadline(closed, `the ${transport} stream to close`);
  } finally {
    socket.destroy();
  }
  return check(events, kept);
}

const seed = Number(process.env.LONG_BLOCK_SEED ?? 0x10b10c);
const runs = Number(process.env.LONG_BLOCK_RUNS ?? 6);

test(`frames after a long frame the addon held: handlers that switch, pause, close or throw get the same events on either transport and in memory (seed ${seed}, ${runs} runs)`, { skip: sameOnEitherTransport, timeout: 600_000 }, async (t) => {
  const transports: Array<"native" | "js"> = nativeAddon() !== null ? ["native", "js"] : ["js"];
  for (let run = 0; run < runs; run++) {
    const s = makeScript(prng(seed + run * 7919));
    const context = `seed ${seed + run * 7919}: ${s.bytes.length} bytes, actions ${JSON.stringify([...s.actions])}${s.reuseReadBuffer ? " reuseReadBuffer" : ""}`;
    const expected = await viaMemory(s);
    for (const transport of transports) assert.deepEqual(await viaTcp(t, transport, s), expected, `${transport}, ${context}`);
  }
});
