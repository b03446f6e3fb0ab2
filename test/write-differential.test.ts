/**
 * Write-side fuzz against a model (SPEC §5, §10): a seeded random script of
 * what a handler does — write (string, Buffer, Uint8Array view, empty; with
 * or without flush), bursts of short writes, writePacked, flush, writeFile
 * (path, descriptor, FileHandle, offset/nbytes, a missing file, a file
 * shorter than nbytes), end(data?), close(true/false), pauseReading,
 * resumeReading, writeHighWaterMark and writeBufferLimit — from onConnect,
 * the next tick, setImmediate, a timer, onWrite or onRead, against a raw
 * node:net or node:tls peer that reads late or in sips, sends, half-closes
 * or resets, over TCP or a UNIX socket. The model says which calls throw
 * ChannelStateError, the exact bytes the peer gets and that a FIN follows
 * (only a prefix after close(false), an overflow or the peer's reset), and
 * checks the handler events: onClose once and last, onWrite with nothing
 * buffered, no onRead while paused or after close(), or above
 * writeHighWaterMark, no unexpected onError/onWriteError.
 *
 * Seeded: a failure prints the seed and the script;
 * WRITE_FUZZ_SEED=<seed> WRITE_FUZZ_RUNS=1 plays it again, and
 * WRITE_FUZZ_RUNS=500 WRITE_FUZZ_BIG=1 is a longer campaign (several-MB
 * payloads, outside the suite).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { closeSync, openSync, writeFileSync } from "node:fs";
import { open as openHandle } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Server, Stream, Struct } from "../src/index.js";
import type { BufferOverflowError } from "../src/index.js";
import { freshEngine, prng, tempDir } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

type Rand = () => number;
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
/** Log-uniform in [1, max]: many small sizes, some large. */
const logSize = (r: Rand, max: number): number => Math.max(1, Math.floor(Math.exp(r() * Math.log(max))));

const SEED = Number(process.env.WRITE_FUZZ_SEED ?? 1);
const RUNS = Number(process.env.WRITE_FUZZ_RUNS ?? 8);
const BIG = process.env.WRITE_FUZZ_BIG === "1";
const FILE_SIZE = BIG ? 3 << 20 : 256 << 10;
const packer = new Struct("!IHB");
const alphabet = ["a", "\n", "é", "€", "😀", "0"];

type Op =
  | { k: "write"; form: "str" | "buf" | "u8" | "empty"; size: number; flush: boolean }
  | { k: "burst"; count: number; max: number; flushEvery: number }
  | { k: "packed"; flush: boolean }
  | { k: "flush" }
  | { k: "file"; via: "path" | "fd" | "handle" | "missing" | "short"; offset: number; nbytes: number; flush: boolean }
  | { k: "end"; data: number }
  | { k: "close"; flush: boolean }
  | { k: "pause" }
  | { k: "resume" }
  | { k: "hwm"; n: number }
  | { k: "limit"; n: number };
type When = "sync" | "tick" | "immediate" | "timer" | "onWrite" | "onRead";
interface Step { when: When; ms: number; op: Op }
interface Script {
  steps: Step[];
  peerPauseMs: number;
  peerSips: boolean;
  peerEndAt: number;
  peerResetAt: number;
  peerSends: Array<[at: number, bytes: number]>;
  keepOnEnd: boolean;
  keepOnWriteError: boolean;
  echo: boolean;
}

function genScript(r: Rand): Script {
  const n = int(r, 1, 10);
  const steps: Step[] = [];
  const whens: When[] = ["sync", "sync", "sync", "tick", "immediate", "timer", "onWrite", "onRead"];
  const max = BIG ? 4 << 20 : 100_000;
  for (let i = 0; i < n; i++) {
    const x = r();
    let op: Op;
    if (x < 0.15) op = { k: "burst", count: int(r, 1, 1500), max: pick(r, [2, 30, 600]), flushEvery: pick(r, [0, 0, 1, 7]) };
    else if (x < 0.4) op = { k: "write", form: pick(r, ["str", "buf", "u8", "empty"] as const), size: logSize(r, max), flush: r() < 0.3 };
    else if (x < 0.45) op = { k: "packed", flush: r() < 0.5 };
    else if (x < 0.52) op = { k: "flush" };
    else if (x < 0.62) {
      const offset = r() < 0.5 ? 0 : int(r, 0, FILE_SIZE - 1);
      const nbytes = r() < 0.3 ? 0 : Math.min(FILE_SIZE - offset, logSize(r, FILE_SIZE));
      op = { k: "file", via: pick(r, ["path", "fd", "handle", "path", "fd", "handle", "missing", "short"] as const), offset, nbytes, flush: r() < 0.3 };
    } else if (x < 0.67) op = i > n / 2 ? { k: "end", data: r() < 0.5 ? 0 : logSize(r, 5000) } : { k: "flush" };
    else if (x < 0.75) op = i > (2 * n) / 3 ? { k: "close", flush: r() < 0.7 } : { k: "write", form: "buf", size: logSize(r, max), flush: false };
    else if (x < 0.82) op = { k: "pause" };
    else if (x < 0.87) op = { k: "resume" };
    else if (x < 0.93) op = { k: "hwm", n: pick(r, [1024, 16384, 65536, 1 << 20, Infinity]) };
    else op = { k: "limit", n: pick(r, [100_000, 300_000, 2 << 20, 64 << 20]) };
    steps.push({ when: pick(r, whens), ms: int(r, 0, 20), op });
  }
  if (r() < 0.3) steps.unshift({ when: "sync", ms: 0, op: { k: "limit", n: pick(r, [100_000, 300_000]) } });
  if (r() < 0.3) steps.unshift({ when: "sync", ms: 0, op: { k: "hwm", n: pick(r, [1024, 16384]) } });
  const peerSends: Array<[number, number]> = [];
  for (let i = int(r, 0, 3); i > 0; i--) peerSends.push([int(r, 0, 100), logSize(r, 50_000)]);
  return {
    steps,
    peerPauseMs: r() < 0.5 ? 0 : int(r, 0, BIG ? 1500 : 150),
    peerSips: r() < 0.3,
    peerEndAt: r() < 0.25 ? int(r, 0, 200) : -1,
    peerResetAt: r() < 0.1 ? int(r, 0, 300) : -1,
    peerSends,
    keepOnEnd: r() < 0.5,
    keepOnWriteError: r() < 0.6,
    echo: r() < 0.4,
  };
}

/** Data of one shape for write(), and the bytes the peer must get for it. */
function dataOf(form: "str" | "buf" | "u8" | "empty", size: number, r: Rand): { data: string | Uint8Array; bytes: Buffer } {
  if (form === "empty") return { data: pick(r, ["", Buffer.alloc(0), new Uint8Array(0)]), bytes: Buffer.alloc(0) };
  if (form === "str") {
    const parts: string[] = [];
    for (let len = 0; len < size; ) {
      const piece = pick(r, alphabet).repeat(Math.min(64, size));
      parts.push(piece);
      len += Buffer.byteLength(piece);
    }
    const text = parts.join("");
    return { data: text, bytes: Buffer.from(text, "utf8") };
  }
  // A view at an offset into a larger allocation.
  const whole = randomBytes(size + 16);
  const off = int(r, 0, 16);
  const view = form === "buf" ? whole.subarray(off, off + size) : new Uint8Array(whole.buffer, whole.byteOffset + off, size);
  return { data: view, bytes: Buffer.from(view) };
}

interface Env { dir: string; file: string; body: Buffer; tls: tls.SecureContextOptions | null; unix: boolean }

/** Plays the script of `seed`; returns what diverged from the model, and a log to replay it by. */
async function play(t: TestContext, seed: number, env: Env): Promise<{ problems: string[]; log: string[] }> {
  const r = prng(seed);
  const script = genScript(r);
  const problems: string[] = [];
  const log: string[] = [`script ${JSON.stringify({ ...script, steps: undefined })}`];
  const engine = freshEngine(t);
  const expected: Buffer[] = [];
  /** open; ended (end()); closing (close(true), onEnd's); aborted (close(false), overflow, a file error's close: a prefix only). */
  let model = "open" as "open" | "ended" | "closing" | "aborted";
  let prefixOnly = false;
  let hwm = 1 << 20;
  let limit = 64 << 20;
  const events: string[] = [];
  const fds: number[] = [];
  const handles: FileHandle[] = [];
  let fileErrors = 0;
  let userPaused = false;
  let closeAsked = false;
  let hwmChanged = false;
  let sinceWrite = false;
  let writtenAtClose = -1;
  let wakeWrite: (() => void) | null = null;
  let wakeRead: (() => void) | null = null;
  let closedResolve!: () => void;
  const closed = new Promise<void>((resolve) => (closedResolve = resolve));
  let stepsDone: Promise<void> = Promise.resolve();

  const expectThrow = (s: Stream, op: Op): boolean => {
    const gone = model === "closing" || model === "aborted" || s.closed;
    if (op.k === "end") return gone || (model === "ended" && op.data > 0);
    if (op.k === "write" || op.k === "burst" || op.k === "packed" || op.k === "file" || op.k === "flush") return gone || model === "ended";
    return false;
  };

  class Conn extends Stream {
    override onConnect(): void {
      events.push("connect");
      stepsDone = run(this);
    }
    override onRead(d: Buffer): void {
      events.push("read");
      if (userPaused) problems.push("onRead while paused by pauseReading()");
      if (closeAsked) problems.push("onRead after close()");
      if (!hwmChanged && this.bufferedAmount > this.writeHighWaterMark) problems.push(`onRead with bufferedAmount ${this.bufferedAmount} above writeHighWaterMark ${this.writeHighWaterMark}`);
      if (script.echo && model === "open") {
        expected.push(Buffer.from(d));
        sinceWrite = true;
        this.write(d);
      }
      wakeRead?.();
    }
    override onWrite(): void {
      events.push("write");
      if (this.bufferedAmount !== 0) problems.push(`onWrite with bufferedAmount ${this.bufferedAmount}`);
      sinceWrite = false;
      wakeWrite?.();
    }
    override onEnd(): void {
      events.push("end");
      if (script.keepOnEnd) return;
      if (model === "open") {
        expected.push(Buffer.from("bye"));
        this.write("bye");
      }
      if (model !== "aborted") model = "closing";
      closeAsked = true;
      super.onEnd();
    }
    override onOverflowError(err: BufferOverflowError): void {
      events.push(`overflow:${err.direction}`);
      model = "aborted";
      super.onOverflowError(err);
    }
    override onWriteError(err: Error): void {
      const code = (err as NodeJS.ErrnoException).code;
      events.push(`writeError:${code}`);
      if ((code === "ENOENT" || code === "ERR_OUT_OF_RANGE") && fileErrors > 0) {
        fileErrors--;
        if (script.keepOnWriteError) return;
      } else if (script.peerResetAt < 0) problems.push(`onWriteError ${err.message}`);
      model = "aborted";
      super.onWriteError(err);
    }
    override onReadError(err: Error): void {
      events.push(`readError:${(err as NodeJS.ErrnoException).code}`);
      model = "aborted";
      super.onReadError(err);
    }
    override onError(err: Error): void {
      problems.push(`onError ${err.stack}`);
      super.onError(err);
    }
    override onClose(): void {
      events.push("close");
      writtenAtClose = this.bytesWritten;
      assert.throws(() => this.write("late"), { code: "ERR_CHANNEL_STATE" });
      closedResolve();
      wakeWrite?.();
      wakeRead?.();
    }
  }

  const wait = (s: Stream, when: When, ms: number): Promise<void> => {
    if (when === "sync") return Promise.resolve();
    if (when === "tick") return new Promise((resolve) => process.nextTick(resolve));
    if (when === "immediate" || (when === "onWrite" && !sinceWrite && s.bufferedAmount === 0)) return new Promise((resolve) => setImmediate(resolve));
    if (when === "timer") return new Promise((resolve) => setTimeout(resolve, ms));
    if (s.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (when === "onWrite" && !s.closed && model !== "aborted") problems.push(`no onWrite within 4 s, bufferedAmount ${s.bufferedAmount}`);
        wakeWrite = wakeRead = null;
        resolve();
      }, when === "onWrite" ? 4000 : 100);
      const wake = (): void => {
        clearTimeout(timer);
        wakeWrite = wakeRead = null;
        resolve();
      };
      if (when === "onWrite") wakeWrite = wake;
      else wakeRead = wake;
    });
  };

  const apply = async (s: Stream, op: Op): Promise<void> => {
    let expect = expectThrow(s, op);
    let bytes: Buffer | null = null;
    let threw: unknown = null;
    try {
      switch (op.k) {
        case "write": {
          const d = dataOf(op.form, op.size, r);
          bytes = d.bytes;
          s.write(d.data, op.flush);
          break;
        }
        case "burst": {
          const parts: Buffer[] = [];
          try {
            for (let i = 0; i < op.count; i++) {
              const d = dataOf(pick(r, ["str", "buf", "u8", "empty"] as const), int(r, 1, op.max), r);
              s.write(d.data, op.flushEvery > 0 && i % op.flushEvery === 0);
              parts.push(d.bytes);
            }
          } finally {
            bytes = Buffer.concat(parts);
          }
          break;
        }
        case "packed": {
          const values = [int(r, 0, 0xffffffff), int(r, 0, 0xffff), int(r, 0, 255)];
          bytes = packer.pack(...values);
          s.writePacked(values, { format: pick(r, ["!IHB", packer]), flush: op.flush });
          break;
        }
        case "flush":
          s.flush();
          break;
        case "file": {
          bytes = env.body.subarray(op.offset, op.nbytes === 0 ? FILE_SIZE : op.offset + op.nbytes);
          if (op.via === "missing") {
            bytes = null;
            fileErrors++;
            s.writeFile(join(env.dir, "missing.bin"), op.nbytes, op.offset, op.flush);
          } else if (op.via === "short") {
            bytes = env.body.subarray(op.offset);
            fileErrors++;
            s.writeFile(env.file, FILE_SIZE - op.offset + 100, op.offset, op.flush);
          } else if (op.via === "path") {
            s.writeFile(env.file, op.nbytes, op.offset, op.flush);
          } else if (op.via === "fd") {
            const fd = openSync(env.file, "r");
            fds.push(fd);
            s.writeFile(fd, op.nbytes, op.offset, op.flush);
          } else {
            const handle = await openHandle(env.file, "r");
            handles.push(handle);
            expect = expectThrow(s, op); // the await may have let the stream close
            s.writeFile(handle, op.nbytes, op.offset, op.flush);
          }
          break;
        }
        case "end":
          if (op.data > 0) {
            const d = dataOf("buf", op.data, r);
            bytes = d.bytes;
            s.end(d.data);
          } else s.end();
          break;
        case "close":
          closeAsked = true;
          s.close(op.flush);
          break;
        case "pause":
          userPaused = true;
          s.pauseReading();
          break;
        case "resume":
          userPaused = false;
          s.resumeReading();
          break;
        case "hwm":
          if (op.n !== Infinity && op.n >= limit) return;
          s.writeHighWaterMark = hwm = op.n;
          hwmChanged = true;
          break;
        case "limit":
          if (hwm !== Infinity && hwm >= op.n) return;
          s.writeBufferLimit = limit = op.n;
          break;
      }
    } catch (err) {
      threw = err;
    }
    if (op.k === "file" && fileErrors > 0 && threw !== null && (op.via === "missing" || op.via === "short")) fileErrors--;
    if (op.k === "burst" && threw !== null) {
      expect = expectThrow(s, op); // the burst overflowed writeBufferLimit part way
      if (bytes !== null && bytes.length > 0) expected.push(bytes);
    }
    if (threw !== null) {
      const code = (threw as { code?: unknown }).code;
      if (!expect || code !== "ERR_CHANNEL_STATE") problems.push(`${JSON.stringify(op)} threw ${String(code)}: ${(threw as Error).message} (model ${model})`);
      return;
    }
    if (expect) problems.push(`${JSON.stringify(op)} did not throw (model ${model})`);
    if (bytes !== null && bytes.length > 0) {
      expected.push(bytes);
      sinceWrite = true;
      hwmChanged = false;
    }
    if (op.k === "file") sinceWrite = true;
    if (op.k === "end" && model === "open") model = "ended";
    if (op.k === "close") model = op.flush && model !== "aborted" ? "closing" : "aborted";
  };

  const run = async (s: Stream): Promise<void> => {
    try {
      for (const step of script.steps) {
        await wait(s, step.when, step.ms);
        log.push(`${step.when}${step.when === "timer" ? step.ms : ""} ${JSON.stringify(step.op)} [${model}${s.closed ? ", closed" : ""}]`);
        await apply(s, step.op);
      }
      if (!s.closed) {
        if (model !== "aborted") model = "closing";
        closeAsked = true;
        s.close(true);
      }
    } catch (err) {
      problems.push(`runner: ${(err as Error).stack}`);
    }
  };

  const server = new Server(Conn, { engine });
  if (env.tls !== null) server.startSSL(env.tls);
  server.listen(env.unix ? join(env.dir, `s${seed}.sock`) : ["127.0.0.1", 0]);
  await server.ready();
  const address = server.localAddress as string | [string, number];
  const target = typeof address === "string" ? { path: address } : { host: "127.0.0.1", port: address[1] };
  const sock = env.tls !== null ? tls.connect({ ...target, rejectUnauthorized: false }) : net.connect(target);
  const got: Buffer[] = [];
  let ended = false;
  let error: string | null = null;
  sock.on("data", (d: Buffer) => got.push(d));
  sock.on("end", () => (ended = true));
  sock.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  const sockClosed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
  const timers: NodeJS.Timeout[] = [];
  if (script.peerPauseMs > 0) {
    sock.pause();
    timers.push(setTimeout(() => sock.resume(), script.peerPauseMs));
  }
  if (script.peerSips) timers.push(setInterval(() => (sock.isPaused() ? sock.resume() : sock.pause()), 7));
  for (const [at, n] of script.peerSends) timers.push(setTimeout(() => sock.writable && sock.write(randomBytes(n)), at));
  if (script.peerEndAt >= 0) timers.push(setTimeout(() => sock.writable && sock.end(), script.peerEndAt));
  if (script.peerResetAt >= 0) {
    timers.push(
      setTimeout(() => {
        if (sock.destroyed) return;
        prefixOnly = true;
        if (env.tls === null && !env.unix) sock.resetAndDestroy();
        else sock.destroy();
      }, script.peerResetAt),
    );
  }
  const within = (p: Promise<void>, ms: number): Promise<boolean> =>
    Promise.race([p.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms).unref())]);
  if (!(await within(closed, 15_000))) problems.push("the stream never closed");
  for (const timer of timers) clearTimeout(timer);
  sock.resume();
  if (!(await within(sockClosed, 8000))) problems.push(`the peer's socket never closed (FIN seen: ${ended})`);
  sock.destroy();
  await stepsDone;
  for (const fd of fds) closeSync(fd);
  for (const handle of handles) await handle.close();
  server.close();

  const want = Buffer.concat(expected);
  const have = Buffer.concat(got);
  if (model === "aborted" || prefixOnly) {
    if (have.length > want.length || !have.equals(want.subarray(0, have.length))) problems.push(`the peer got ${have.length} bytes that are not a prefix of the ${want.length} written`);
  } else {
    if (!have.equals(want)) problems.push(`the peer got ${have.length} bytes, not the ${want.length} written`);
    if (!ended) problems.push(`no FIN (${error ?? "no error"})`);
    if (error !== null && error !== "EPIPE") problems.push(`the peer saw ${error}`);
    if (writtenAtClose !== want.length) problems.push(`bytesWritten ${writtenAtClose} at onClose, ${want.length} written`);
  }
  if (events.filter((e) => e === "close").length !== 1 || events.at(-1) !== "close") problems.push(`onClose not once and last: ${events.join(",")}`);
  log.push(`model ${model}${prefixOnly ? " (peer reset)" : ""}: got ${have.length} of ${want.length}, FIN ${ended}, error ${error}; events ${events.join(",")}`);
  return { problems, log };
}

function environment(t: TestContext, secure: boolean, unix: boolean): Env {
  const dir = tempDir(t, "pants-ts-wfuzz-");
  const file = join(dir, "body.bin");
  const body = randomBytes(FILE_SIZE);
  writeFileSync(file, body);
  let options: tls.SecureContextOptions | null = null;
  if (secure) {
    const certs = makeCerts();
    t.after(() => certs.cleanup());
    options = { key: certs.server.keyPem, cert: certs.server.certPem };
  }
  return { dir, file, body, tls: options, unix };
}

for (const [name, secure, unix] of [
  ["TCP", false, false],
  ["a UNIX socket", false, true],
  ["TLS", true, false],
] as const) {
  test(`write/close scripts over ${name}: the peer gets exactly the model's bytes, then a FIN; handler events as documented`, { skip: secure && !hasOpenssl() ? "no openssl" : false, timeout: 120_000 }, async (t) => {
    const env = environment(t, secure, unix);
    const failures: string[] = [];
    for (let seed = SEED; seed < SEED + RUNS; seed++) {
      const { problems, log } = await play(t, seed, env);
      if (problems.length > 0) failures.push(`seed ${seed} (WRITE_FUZZ_SEED=${seed} WRITE_FUZZ_RUNS=1):\n  ${problems.join("\n  ")}\n    ${log.join("\n    ")}`);
    }
    assert.equal(failures.length, 0, failures.join("\n"));
  });
}
