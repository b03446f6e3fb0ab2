/**
 * Differential lifecycle fuzz (SPEC §4, §5, §7): a seeded random script of
 * steps for one server-side stream and its raw node:net peer — writes of
 * every shape, flush, writePacked, end, close(true/false), pause/resume,
 * delimiter and bufferSize changes, writeBufferLimit, idleTimeout on the
 * server's side (from an engine timer, or inside the next onRead); bytes in
 * random splits, half-close, reset, stop reading, close on the peer's — is
 * played on a native-transport server and on a node:net one, and the two
 * traces must be equal: every handler call (with its frame, error code and
 * the state getters at the time), what each server-side call threw, the
 * bytes the peer received and whether it saw a FIN or a reset.
 *
 * Timing that may legitimately differ is normalised, not skipped: raw
 * chunks (null delimiter) are joined, consecutive onWrite calls count as
 * one.
 *
 * Seeded: a failure prints the seed and the script;
 * LIFECYCLE_FUZZ_SEED=<seed> LIFECYCLE_FUZZ_RUNS=1 plays it again, and
 * LIFECYCLE_FUZZ_RUNS=500 is a longer campaign (outside the suite), with
 * LIFECYCLE_FUZZ_KEEP_GOING=1 to print every divergence instead of failing
 * at the first, and LIFECYCLE_FUZZ_STATS=1 to print which events each run
 * reached (coverage).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createHash } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { Server, Stream, Struct } from "../src/index.js";
import type { BufferOverflowError, Engine, ReadDelimiter } from "../src/index.js";
import { nativeAddon } from "../src/native-socket.js";
import { freshEngine, listenLocal, prng, sameOnEitherTransport, sleep } from "./helpers.js";

type Rand = () => number;
type Transport = "native" | "js";

const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

const pair = new Struct("!HB");
const delimiters: Record<string, ReadDelimiter> = { line: "\n", int4: 4, struct: pair, raw: null };
type DelimiterName = keyof typeof delimiters;

/** What the server's side does, from an engine timer or inside the next onRead. */
type ServerAction =
  | { a: "write"; size: number; text: boolean; flush: boolean }
  | { a: "flush" }
  | { a: "writePacked"; flush: boolean }
  | { a: "end" }
  | { a: "close"; flush: boolean }
  | { a: "pause" }
  | { a: "resume" }
  | { a: "delimiter"; name: DelimiterName }
  | { a: "bufferSize"; n: number }
  | { a: "writeBufferLimit"; n: number }
  | { a: "idleTimeout"; ms: number };

/** What the raw peer does. */
type PeerAction =
  | { a: "send"; bytes: Buffer; pieces: number }
  | { a: "end" }
  | { a: "reset" }
  | { a: "pause" }
  | { a: "resume" }
  | { a: "destroy" };

/** Where a server action runs: from an engine timer, or inside the next onRead (framed), onWrite or onEnd. */
type Where = "timer" | "read" | "write" | "end";
type Step = { side: "server"; where: Where; act: ServerAction } | { side: "peer"; act: PeerAction };

interface Script {
  /** onRead writes every frame back (a reply written inside the handler). */
  echo: boolean;
  /** onEnd keeps the stream open (half-open: the server may still write, end or close). */
  halfOpen: boolean;
  delimiter: DelimiterName;
  steps: Step[];
}

/** Bytes a peer sends: lines, digits, now and then a long run with no newline (an overflow under a small bufferSize). */
function peerBytes(r: Rand): Buffer {
  const n = r() < 0.1 ? int(r, 100, 3000) : int(r, 0, 30);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = r() < 0.15 ? 0x0a : pick(r, [0x61, 0x62, 0x30, 0x31, 0x00, 0xff]);
  return out;
}

function serverAction(r: Rand): ServerAction {
  const x = r();
  if (x < 0.3) {
    // The largest is more than loopback's socket buffers take from a peer that stopped reading.
    const size = pick(r, [0, 1, 5, 40, 3000, 200_000, 2_000_000, 8_000_000]);
    return { a: "write", size, text: r() < 0.5, flush: r() < 0.3 };
  }
  if (x < 0.36) return { a: "flush" };
  if (x < 0.42) return { a: "writePacked", flush: r() < 0.5 };
  if (x < 0.47) return { a: "end" };
  if (x < 0.53) return { a: "close", flush: r() < 0.5 };
  if (x < 0.6) return { a: "pause" };
  if (x < 0.67) return { a: "resume" };
  if (x < 0.8) return { a: "delimiter", name: pick(r, Object.keys(delimiters)) };
  if (x < 0.88) return { a: "bufferSize", n: pick(r, [4, 8, 16, 65536]) };
  if (x < 0.94) return { a: "writeBufferLimit", n: pick(r, [1000, 100_000, 64 * 1024 * 1024]) };
  return { a: "idleTimeout", ms: pick(r, [0, 40]) };
}

function peerAction(r: Rand): PeerAction {
  const x = r();
  if (x < 0.48) return { a: "send", bytes: peerBytes(r), pieces: int(r, 1, 4) };
  if (x < 0.6) return { a: "end" };
  if (x < 0.7) return { a: "reset" };
  if (x < 0.82) return { a: "pause" };
  if (x < 0.93) return { a: "resume" };
  return { a: "destroy" };
}

/** Under pressure: large writes against a peer that stops reading, closes and ends meanwhile, resets. */
function pressureAction(r: Rand): Step {
  const x = r();
  if (x < 0.2) return { side: "server", where: "timer", act: { a: "write", size: pick(r, [40, 2_000_000, 8_000_000]), text: r() < 0.5, flush: r() < 0.5 } };
  if (x < 0.3) return { side: "server", where: "timer", act: { a: "close", flush: r() < 0.7 } };
  if (x < 0.37) return { side: "server", where: "timer", act: { a: "end" } };
  if (x < 0.45) return { side: "server", where: r() < 0.5 ? "read" : "timer", act: { a: "write", size: 5, text: true, flush: r() < 0.5 } };
  if (x < 0.52) return { side: "peer", act: { a: "reset" } };
  if (x < 0.57) return { side: "peer", act: { a: "destroy" } };
  if (x < 0.67) return { side: "peer", act: { a: "resume" } };
  if (x < 0.74) return { side: "peer", act: { a: "end" } };
  if (x < 0.82) return { side: "server", where: "timer", act: { a: "resume" } };
  return { side: "peer", act: { a: "send", bytes: peerBytes(r), pieces: int(r, 1, 3) } };
}

function makeScript(r: Rand): Script {
  const steps: Step[] = [];
  const pressure = r() < 0.35;
  if (pressure) {
    if (r() < 0.7) steps.push({ side: "peer", act: { a: "pause" } });
    if (r() < 0.5) steps.push({ side: "server", where: "timer", act: { a: "pause" } });
    if (r() < 0.4) steps.push({ side: "server", where: "timer", act: { a: "writeBufferLimit", n: pick(r, [1000, 100_000]) } });
    if (r() < 0.3) steps.push({ side: "server", where: "timer", act: { a: "bufferSize", n: 4 } });
  }
  for (let n = steps.length + int(r, 2, 10); steps.length < n; ) {
    if (pressure) steps.push(pressureAction(r));
    else if (r() < 0.5) steps.push({ side: "peer", act: peerAction(r) });
    else steps.push({ side: "server", where: r() < 0.5 ? "timer" : pick(r, ["read", "read", "write", "end"] as const), act: serverAction(r) });
  }
  return { echo: r() < 0.4, halfOpen: r() < 0.4, delimiter: pick(r, Object.keys(delimiters)), steps };
}

function describeStep(s: Step): string {
  const act = JSON.stringify(s.act, (_k, v: unknown) => (v !== null && typeof v === "object" && (v as { type?: string }).type === "Buffer" ? `${(v as { data: number[] }).data.length} bytes` : v));
  return s.side === "peer" ? `peer ${act}` : `server(${s.where}) ${act}`;
}

function describeScript(s: Script): string {
  return `echo=${s.echo} halfOpen=${s.halfOpen} delimiter=${s.delimiter}\n  ${s.steps.map(describeStep).join("\n  ")}`;
}

const payloads = new Map<number, string>();
/** The bytes a write of `size` sends (text or not, the same bytes: ASCII); made once per size, not in the middle of a step. */
function payload(size: number, text: boolean): string | Buffer {
  let s = payloads.get(size);
  if (s === undefined) payloads.set(size, (s = "0123456789abcdefghijklmnopqrstuvwxyz\n".repeat(Math.ceil(size / 37)).slice(0, size)));
  return text ? s : Buffer.from(s, "latin1");
}

function normalise(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return v.toString("hex");
  if (typeof v === "bigint") return `${v}n`;
  return v;
}

/** The code of an error, or its class when it has none. */
function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : err instanceof Error ? err.constructor.name : String(err);
}

/**
 * How many reads and onWrite calls a run of frames makes depends on how the
 * bytes moved: in a run of reads and onWrite calls with one state, raw
 * chunks are joined and the onWrite calls inside the run dropped (one is
 * kept at its end when it had any).
 */
function normaliseTrace(trace: unknown[][]): unknown[][] {
  const out: unknown[][] = [];
  const isRead = (e: unknown[] | undefined) => e !== undefined && (e[0] === "raw" || e[0] === "onRead");
  for (const e of trace) {
    let last = out.at(-1);
    if (e[0] === "raw" || e[0] === "onRead" || e[0] === "onWrite") {
      // Drop an onWrite that a read of the same run follows.
      if (e[0] !== "onWrite" && last !== undefined && last[0] === "onWrite" && isRead(out.at(-2)) && last[1] === e[2] && out.at(-2)![2] === e[2]) {
        out.pop();
        last = out.at(-1);
      }
      if (e[0] === "raw" && last !== undefined && last[0] === "raw" && last[2] === e[2]) {
        out[out.length - 1] = ["raw", String(last[1]) + String(e[1]), e[2]];
        continue;
      }
      if (e[0] === "onWrite" && last !== undefined && last[0] === "onWrite") continue;
    }
    out.push(e);
  }
  return out;
}

/** Where two traces part: a few events either side of the first difference. */
function firstDifference(a: unknown[][], b: unknown[][]): string {
  let i = 0;
  while (i < a.length && i < b.length && isDeepStrictEqual(a[i], b[i])) i++;
  const around = (x: unknown[][]) => x.slice(Math.max(0, i - 4), i + 5).map((e) => JSON.stringify(e).slice(0, 200)).join("\n      ");
  return `at event ${i}:\n    native:\n      ${around(a)}\n    js:\n      ${around(b)}`;
}

/** The state a handler sees: connected, writable, closing, closed. */
function state(s: Stream): string {
  return `${s.connected ? "C" : "-"}${s.writable ? "W" : "-"}${s.closing ? "G" : "-"}${s.closed ? "X" : "-"}`;
}

/** One run of a script on one transport: its trace. */
async function play(t: TestContext, engine: Engine, transport: Transport, script: Script): Promise<unknown[][]> {
  const trace: unknown[][] = [];
  let last = Date.now();
  const note = (...e: unknown[]) => {
    trace.push(e);
    last = Date.now();
  };
  /** Actions waiting for a handler, in order; each handler call takes the first one that waits for it. */
  const pending: Array<{ where: Where; act: ServerAction; since: number }> = [];
  const runPending = (s: Stream, where: Where) => {
    const i = pending.findIndex((p) => p.where === where);
    if (i !== -1) run(s, pending.splice(i, 1)[0]!.act, where);
  };
  let conn: Stream | null = null;
  let closed!: () => void;
  const closedP = new Promise<void>((resolve) => (closed = resolve));
  let connected!: () => void;
  const connectedP = new Promise<void>((resolve) => (connected = resolve));

  const run = (s: Stream, act: ServerAction, where: string): void => {
    try {
      switch (act.a) {
        case "write":
          s.write(payload(act.size, act.text), act.flush);
          break;
        case "flush":
          s.flush();
          break;
        case "writePacked":
          s.writePacked([258, 7], { format: "!HB", flush: act.flush });
          break;
        case "end":
          s.end();
          break;
        case "close":
          s.close(act.flush);
          break;
        case "pause":
          s.pauseReading();
          break;
        case "resume":
          s.resumeReading();
          break;
        case "delimiter":
          s.readDelimiter = delimiters[act.name]!;
          break;
        case "bufferSize":
          s.bufferSize = act.n;
          break;
        case "writeBufferLimit":
          s.writeBufferLimit = act.n;
          break;
        case "idleTimeout":
          s.idleTimeout = act.ms;
          break;
      }
      note("did", where, act.a, state(s));
    } catch (err) {
      note("threw", where, act.a, codeOf(err), state(s));
    }
  };

  class Traced extends Stream {
    override onConnect() {
      conn = this;
      this.readDelimiter = delimiters[script.delimiter]!;
      note("onConnect", state(this));
      connected();
    }
    override onRead(...args: unknown[]) {
      const d = this.readDelimiter;
      if (d === null) note("raw", normalise(args[0]), state(this));
      else note("onRead", args.map(normalise), state(this));
      if (script.echo && this.writable) {
        const first = args[0];
        // Raw chunks are echoed as they are (however they were cut, the same bytes go back).
        if (d === null) this.write(first as Buffer);
        else this.write(Buffer.isBuffer(first) ? Buffer.concat([Buffer.from("<"), first, Buffer.from(">")]) : `<${args.map(String).join(",")}>`);
      }
      // Not between raw chunks: where the peer's bytes are cut is timing.
      if (d !== null) {
        runPending(this, "read");
      }
    }
    override onWrite() {
      note("onWrite", state(this));
      runPending(this, "write");
    }
    override onEnd() {
      note("onEnd", state(this));
      runPending(this, "end");
      if (!script.halfOpen) super.onEnd();
    }
    override onOverflowError(err: BufferOverflowError) {
      note("onOverflowError", err.direction, state(this));
      super.onOverflowError(err);
    }
    override onReadError(err: Error) {
      note("onReadError", codeOf(err), state(this));
      super.onReadError(err);
    }
    override onWriteError(err: Error) {
      note("onWriteError", codeOf(err), state(this));
      super.onWriteError(err);
    }
    override onTimeout() {
      note("onTimeout", state(this));
      super.onTimeout();
    }
    override onError(err: Error) {
      note("onError", codeOf(err), err.message, state(this));
      super.onError(err);
    }
    override onClose() {
      note("onClose", state(this));
      closed();
    }
  }

  const server = new Server(Traced, { engine, transport });
  const port = await listenLocal(server, t);
  const peer = net.connect({ host: "127.0.0.1", port });
  peer.setNoDelay(true);
  const received: Buffer[] = [];
  let peerEnd = "";
  peer.on("data", (d: Buffer) => {
    received.push(d);
    last = Date.now();
  });
  peer.on("end", () => {
    peerEnd ||= "FIN";
    last = Date.now();
  });
  peer.on("error", (err: NodeJS.ErrnoException) => {
    peerEnd ||= err.code ?? "error";
    last = Date.now();
  });
  peer.on("close", () => {
    last = Date.now();
  });

  /** How long a step waits with nothing happening: an idle timeout must fire or not alike, so well past it. */
  const quietFor = () => (conn !== null && !conn.closed && conn.idleTimeout > 0 ? 200 : 25);

  /** Waits until nothing has happened for a while (bytes, handlers), bounded. */
  const settle = async (quiet: number) => {
    const deadline = Date.now() + 3000;
    // A large write to a peer that reads drains however long that takes.
    const draining = () => conn !== null && !conn.closed && conn.bufferedAmount > 0 && !peer.destroyed && !peer.isPaused();
    await sleep(quiet);
    while ((Date.now() - last < quiet || draining()) && Date.now() < deadline) await sleep(5);
  };

  try {
    await Promise.race([connectedP, sleep(3000).then(() => Promise.reject(new Error(`no onConnect on ${transport}`)))]);
    await settle(10);
    /** Runs the oldest waiting action from a timer. */
    const runLate = async () => {
      const { act } = pending.shift()!;
      const s = conn as Stream | null;
      if (s !== null) await new Promise<void>((resolve) => engine.callback(() => (run(s, act, "late"), resolve())));
      await settle(quietFor());
    };
    for (const [index, step] of script.steps.entries()) {
      if (step.side === "server") {
        const s = conn!;
        if (step.where !== "timer") pending.push({ where: step.where, act: step.act, since: index });
        else await new Promise<void>((resolve) => engine.callback(() => (run(s, step.act, "timer"), resolve())));
      } else {
        const act = step.act;
        note("peer", act.a);
        switch (act.a) {
          case "send": {
            if (peer.destroyed || peer.writableEnded) break;
            const cut = Math.ceil(act.bytes.length / act.pieces);
            for (let at = 0; at < act.bytes.length; at += cut) {
              peer.write(act.bytes.subarray(at, at + cut));
              await sleep(1);
            }
            break;
          }
          case "end":
            peer.end();
            break;
          case "reset":
            peer.resetAndDestroy();
            break;
          case "pause":
            peer.pause();
            break;
          case "resume":
            peer.resume();
            break;
          case "destroy":
            peer.destroy();
            break;
        }
      }
      await settle(quietFor());
      // What waited three steps for its handler in vain runs from a timer.
      while (pending.length > 0 && pending[0]!.since <= index - 3) await runLate();
    }
    while (pending.length > 0) await runLate();
    // The end: the peer reads everything and ends; whatever is left open is closed.
    note("finale");
    peer.resume();
    if (!peer.destroyed) peer.end();
    await settle(30);
    const s = conn as Stream | null;
    if (s !== null && !s.closed) {
      note("force close", state(s));
      s.close(false);
    }
    await Promise.race([closedP, sleep(3000).then(() => Promise.reject(new Error(`no onClose on ${transport}`)))]);
    await settle(30);
    const bytes = Buffer.concat(received);
    note("peer got", bytes.length, createHash("sha1").update(bytes).digest("hex").slice(0, 12), peerEnd || "no end");
  } finally {
    peer.destroy();
    server.close();
  }
  return normaliseTrace(trace);
}

const seed = Number(process.env.LIFECYCLE_FUZZ_SEED ?? 0x11fe);
const runs = Number(process.env.LIFECYCLE_FUZZ_RUNS ?? 50);

test(`random stream lifecycles trace alike on the native transport and on node:net (seed ${seed}, ${runs} runs)`, { skip: (sameOnEitherTransport || (nativeAddon() === null && "the native addon is not built")), timeout: 600_000 }, async (t) => {
  const engine = freshEngine(t);
  for (let run = 0; run < runs; run++) {
    const runSeed = seed + run * 7919;
    const script = makeScript(prng(runSeed));
    // One after the other: a run's large writes would stall the other's.
    const native = await play(t, engine, "native", script);
    const js = await play(t, engine, "js", script);
    const message = `seed ${runSeed} (run ${run}): native (actual) vs js (expected)\n  ${describeScript(script)}`;
    if (process.env.LIFECYCLE_FUZZ_KEEP_GOING === undefined) assert.deepEqual(native, js, message);
    else if (process.env.LIFECYCLE_FUZZ_STATS !== undefined) console.log(`STATS ${JSON.stringify(js.map((e) => (e[0] === "threw" || e[0] === "onReadError" || e[0] === "onWriteError" || e[0] === "onOverflowError" ? e.slice(0, 4).join(":") : e[0] === "peer got" ? `peer:${String(e[3])}` : e[0] === "did" && e[1] !== "timer" ? `did:${String(e[1])}:${String(e[2])}:${String(e[3])}` : e[0] === "did" && e[2] === "close" ? `did:close:${String(e[3])}` : String(e[0]))))}`);
    if (process.env.LIFECYCLE_FUZZ_KEEP_GOING !== undefined && !isDeepStrictEqual(native, js)) console.log(`DIVERGENCE ${message}\n  ${firstDifference(native, js)}`);
  }
});
