/**
 * Backpressure (SPEC §5): bufferedAmount, writeHighWaterMark pauses reading
 * until onWrite, writeBufferLimit calls onOverflowError, pauseReading and
 * resumeReading. An echo under a client that never reads stays bounded.
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { BufferOverflowError, Server, Stream } from "../src/index.js";
import type { Timer } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";
import { join } from "node:path";
import { captureLogs, connect, freshEngine, listenLocal, sleep, tempDir, waitFor } from "./helpers.js";

setFlagsFromString("--expose-gc");

test("an echo under a client that sends and never reads keeps its memory bounded", async (t) => {
  const engine = freshEngine(t);
  let maxBuffered = 0;
  let stream: Stream | null = null;
  class Echo extends Stream {
    override onConnect() {
      stream = this;
    }
    override onRead(d: Buffer) {
      this.write(d);
      maxBuffered = Math.max(maxBuffered, this.bufferedAmount);
    }
  }
  const server = new Server(Echo, { engine });
  const port = await listenLocal(server, t);
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => {});
  await new Promise((r) => sock.once("connect", r));
  sock.pause(); // never reads
  const chunk = Buffer.alloc(1 << 20, 0x61);
  let sent = 0;
  const before = process.memoryUsage();
  // Offer 1 GiB; the client can only hand over what the server accepts.
  const deadline = Date.now() + 4000;
  while (sent < 1 << 30 && Date.now() < deadline) {
    if (!sock.write(chunk)) {
      await Promise.race([new Promise((r) => sock.once("drain", r)), sleep(250)]);
      if (sock.writableLength > 8 << 20) break; // the server stopped reading: backpressure works
    }
    sent += chunk.length;
  }
  await sleep(200);
  const after = process.memoryUsage();
  const growth = after.arrayBuffers + after.external - (before.arrayBuffers + before.external) - sock.writableLength;
  assert.ok(stream !== null);
  const hwm = (stream as Stream).writeHighWaterMark;
  assert.ok(maxBuffered <= hwm + (1 << 20), `the stream buffered up to ${maxBuffered} bytes (hwm ${hwm})`);
  assert.ok(growth < 64 << 20, `server-side memory grew by ${growth} bytes`);
  assert.ok(sent < 1 << 30, "the server stopped accepting bytes");
  sock.destroy();
});

test("short writes, one per turn, to peers that stopped reading cost about their bytes (they wait joined, not as a write each)", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const members: Stream[] = [];
  class Member extends Stream {
    override onConnect() {
      members.push(this);
    }
  }
  const server = new Server(Member, { engine });
  const port = await listenLocal(server, t);
  const clients: net.Socket[] = [];
  t.after(() => clients.forEach((c) => c.destroy()));
  for (let i = 0; i < 8; i++) {
    const c = net.connect(port, "127.0.0.1");
    c.on("error", () => {});
    c.pause(); // never reads
    clients.push(c);
  }
  await waitFor(() => members.length === 8, 5000, "8 members");
  const before = process.memoryUsage().rss;
  // A chat line to everyone, one per turn of the loop (as each read of a talker's line would).
  for (let turn = 0; turn < 200_000; turn++) {
    for (const m of members) m.write("<guest1> x\n");
    await new Promise((resolve) => setImmediate(resolve));
  }
  const buffered = members.reduce((n, m) => n + m.bufferedAmount, 0);
  const growth = process.memoryUsage().rss - before;
  assert.ok(buffered > 1 << 20, `the peers' buffers filled: ${buffered} bytes wait`);
  // Before: a write request per turn per peer, 18-42 times the bytes (native: 1.2 GB for 28 MB).
  assert.ok(growth < 10 * buffered + (64 << 20), `memory grew by ${growth} bytes for ${buffered} bytes waiting`);
});

test("a run of short writes the socket cannot take at once waits joined, not one object per write (a line echo stalled at writeHighWaterMark)", async (t) => {
  const engine = freshEngine(t);
  const gc = runInNewContext("gc") as () => void;
  let stream: Stream | null = null;
  class Talker extends Stream {
    override onConnect() {
      stream = this;
    }
  }
  const port = await listenLocal(new Server(Talker, { engine }), t);
  const c = await connect(port);
  c.socket.pause(); // never reads
  await waitFor(() => stream !== null, 5000, "the connection");
  const s = stream as unknown as Stream;
  // More than the kernel buffers between the two sockets: what follows waits in the stream's socket.
  s.write(Buffer.alloc(16 << 20, 0x61));
  await sleep(50);
  assert.ok(s.bufferedAmount > 1 << 20, `the socket holds what the kernel did not take (${s.bufferedAmount} bytes)`);
  // 100 000 two-byte writes in one turn (an echo's replies to one read of lines): 200 000 bytes, one run.
  const watched: WeakRef<Buffer>[] = [];
  for (let i = 0; i < 100_000; i++) {
    const line = Buffer.from("x\n");
    if (i % 100 === 0) watched.push(new WeakRef(line));
    s.write(line);
  }
  await sleep(50); // the end-of-turn flush hands the run to the socket
  gc();
  const held = watched.filter((w) => w.deref() !== undefined).length;
  // Before: the socket kept every write of the run until sent, ~100 bytes of heap each (native: a reference each too).
  assert.equal(held, 0, `${held} of ${watched.length} watched writes are still held one by one`);
  assert.ok(s.bufferedAmount > (16 << 20) - (8 << 20), "the writes still wait: the peer reads nothing");
  c.socket.destroy();
});

test("reading resumes at onWrite once the peer drains", async (t) => {
  const engine = freshEngine(t);
  class Echo extends Stream {
    override onConnect() {
      this.writeHighWaterMark = 64 * 1024;
    }
    override onRead(d: Buffer) {
      this.write(d);
    }
  }
  const port = await listenLocal(new Server(Echo, { engine }), t);
  const c = await connect(port);
  c.socket.pause();
  const total = 16 << 20;
  const block = Buffer.alloc(64 * 1024, 0x62);
  let written = 0;
  const writer = (async () => {
    while (written < total) {
      written += block.length;
      if (!c.socket.write(block)) await new Promise((r) => c.socket.once("drain", r));
    }
  })();
  await sleep(100);
  c.socket.resume();
  await writer;
  await c.read(total, 15000);
  c.destroy();
});

test("writes queued behind a writeFile count for writeHighWaterMark: reading pauses until onWrite", async (t) => {
  const file = join(tempDir(t), "big.bin");
  // Larger than the loopback socket buffers take, so the file is still being sent.
  const body = randomBytes(32 << 20);
  writeFileSync(file, body);
  for (const sameTurn of [false, true]) await fileThenWrites(t, file, body, sameTurn);
});

/**
 * writeFile, then 2 MiB of writes outside a delivery: in a later turn (the
 * end-of-turn flush finds the file in progress) or in the same turn (the
 * flush starts the file), to a peer that does not read yet.
 */
async function fileThenWrites(t: TestContext, file: string, body: Buffer, sameTurn: boolean): Promise<void> {
  const engine = freshEngine(t);
  const tail = Buffer.alloc(2 << 20, 0x74);
  const events: string[] = [];
  class Sender extends Stream {
    override onConnect() {
      if (!sameTurn) this.writeFile(file);
      setImmediate(() => {
        if (sameTurn) this.writeFile(file);
        this.write(tail);
        events.push(`wrote ${this.bufferedAmount > this.writeHighWaterMark}`);
      });
    }
    override onRead() {
      events.push(`read ${this.bufferedAmount}`);
    }
    override onWrite() {
      events.push("write");
    }
  }
  const port = await listenLocal(new Server(Sender, { engine }), t);
  const c = await connect(port);
  c.socket.pause();
  await waitFor(() => events.length > 0);
  c.socket.write("ping");
  await sleep(300);
  assert.deepEqual(events, ["wrote true"]);
  c.socket.resume();
  assert.ok((await c.read(body.length + tail.length, 15000)).equals(Buffer.concat([body, tail])));
  await waitFor(() => events.length === 3);
  assert.deepEqual(events, ["wrote true", "write", "read 0"]);
  c.destroy();
}

test("writeBufferLimit: a peer that stopped reading while we keep writing gets onOverflowError", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const overflows: BufferOverflowError[] = [];
  let closed = false;
  class Broadcaster extends Stream {
    override onConnect() {
      this.writeBufferLimit = 4 << 20;
      const timer: Timer = engine.cycle(1, (): void => {
        if (this.closed) return timer.cancel();
        for (let i = 0; i < 16; i++) this.write(Buffer.alloc(64 * 1024, 0x63));
      });
    }
    override onOverflowError(err: BufferOverflowError) {
      overflows.push(err);
      super.onOverflowError(err);
    }
    override onClose() {
      closed = true;
    }
  }
  const port = await listenLocal(new Server(Broadcaster, { engine }), t);
  const c = await connect(port);
  c.socket.pause();
  await waitFor(() => closed, 10000, "the stream to be closed by the overflow");
  assert.equal(overflows.length, 1);
  assert.equal(overflows[0]!.direction, "write");
  assert.equal(overflows[0]!.limit, 4 << 20);
  c.destroy();
});

test("replies to one read's many frames that outgrow writeBufferLimit (a pipelined batch of large GETs): reading pauses at writeHighWaterMark between frames, and a client that reads gets every byte", { timeout: 60_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const REPLY = Buffer.alloc(256 * 1024, 0x62);
  const LINES = 64; // 16 MiB of replies to 128 bytes of requests, in one read
  const overflows: BufferOverflowError[] = [];
  let maxBuffered = 0;
  class Getter extends Stream {
    constructor(...args: ConstructorParameters<typeof Stream>) {
      super(...args);
      this.readDelimiter = "\n";
      this.writeBufferLimit = 4 << 20;
    }
    override onRead() {
      this.write(REPLY);
      maxBuffered = Math.max(maxBuffered, this.bufferedAmount);
    }
    override onOverflowError(err: BufferOverflowError) {
      overflows.push(err);
      super.onOverflowError(err);
    }
  }
  const port = await listenLocal(new Server(Getter, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  c.socket.write("g\n".repeat(LINES));
  const got = await c.read(LINES * REPLY.length, 20_000); // (closed by an overflow, it times out)
  assert.deepEqual(overflows, []);
  assert.ok(got.every((b) => b === 0x62));
  assert.ok(maxBuffered <= (1 << 20) + REPLY.length, `queued up to ${maxBuffered} bytes (writeHighWaterMark 1 MiB)`);
});

test("bufferedAmount is 0 once the stream has closed, however it closed with bytes queued", async (t) => {
  const engine = freshEngine(t);
  const seen: Array<[string, number]> = [];
  let overflows = 0;
  class Big extends Stream {
    override onConnect() {
      this.writeHighWaterMark = Infinity; // keep reading the peer's commands
      this.writeBufferLimit = 24 << 20;
      this.write(Buffer.alloc(16 << 20, 0x61)); // far more than loopback takes while the peer does not read
    }
    override onRead(line: Buffer) {
      const how = line.toString().trim();
      if (how === "hard") {
        this.close(false);
        seen.push(["after close(false)", this.bufferedAmount]);
      } else if (how === "grow") {
        this.write(Buffer.alloc(16 << 20)); // past writeBufferLimit: the default onOverflowError closes
      }
    }
    override onOverflowError(err: BufferOverflowError) {
      overflows++;
      super.onOverflowError(err);
    }
    override onClose() {
      seen.push(["onClose", this.bufferedAmount]);
    }
  }
  const port = await listenLocal(new Server(Big, { engine }), t);
  const closes = () => seen.filter(([what]) => what === "onClose").length;
  // A peer that resets, one that makes the stream close(false), one that makes it overflow.
  const reset = await connect(port);
  reset.socket.pause();
  await sleep(100);
  reset.socket.resetAndDestroy();
  await waitFor(() => closes() === 1, 5000, "onClose after the reset");
  for (const [i, how] of ["hard", "grow"].entries()) {
    const c = await connect(port);
    c.socket.pause();
    await sleep(100);
    c.write(`${how}\n`);
    await waitFor(() => closes() === i + 2, 5000, `onClose after ${how}`);
    c.destroy();
  }
  assert.equal(overflows, 1);
  assert.deepEqual(seen, [
    ["onClose", 0], // reset
    ["onClose", 0], // close(false): onClose runs inside it
    ["after close(false)", 0],
    ["onClose", 0], // overflow
  ]);
});

test("writeBufferLimit at its default (64 MiB) holds for a stream with no other setting, writing 1 MiB a turn", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  let overflows = 0;
  let most = 0;
  let closed = false;
  class Broadcaster extends Stream {
    override onConnect() {
      const timer: Timer = engine.cycle(1, (): void => {
        if (this.closed) return timer.cancel();
        this.write(Buffer.alloc(1 << 20, 0x63));
        most = Math.max(most, this.bufferedAmount);
      });
    }
    override onOverflowError(err: BufferOverflowError) {
      overflows++;
      super.onOverflowError(err);
    }
    override onClose() {
      closed = true;
    }
  }
  const port = await listenLocal(new Server(Broadcaster, { engine }), t);
  const c = await connect(port);
  c.socket.pause();
  await waitFor(() => closed || most > 200 << 20, 20000, "the stream to be closed by the overflow");
  assert.equal(overflows, 1, `buffered ${most >> 20} MiB`);
  assert.ok(most < 72 << 20, `buffered ${most >> 20} MiB`);
  c.destroy();
});

test("pauseReading stops onRead until resumeReading; buffered frames then arrive in order", async () => {
  class Pausable extends Stream {
    frames: string[] = [];
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      this.frames.push(d.toString());
      if (d.toString() === "pause") this.pauseReading();
    }
  }
  const peer = memoryPeer(Pausable);
  await peer.send("a\npause\nb\nc\n");
  assert.deepEqual(peer.stream.frames, ["a", "pause"]);
  await peer.send("d\n");
  assert.deepEqual(peer.stream.frames, ["a", "pause"]);
  peer.stream.resumeReading();
  await sleep(10);
  assert.deepEqual(peer.stream.frames, ["a", "pause", "b", "c", "d"]);
});

test("resumeReading frames what arrived while paused on the next tick, before another callback of the same phase changes the delimiter (real sockets)", async (t) => {
  const engine = freshEngine(t);
  const frames: string[] = [];
  let stream: Stream | null = null;
  class PausedFirst extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
      this.pauseReading();
      stream = this;
    }
    override onRead(d: Buffer) {
      frames.push(d.toString());
    }
  }
  const port = await listenLocal(new Server(PausedFirst, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  c.write("bb\ncc\n"); // read while paused, held by the transport
  await waitFor(() => stream !== null);
  await sleep(50);
  const s = stream as unknown as Stream;
  // Two callbacks of one check phase: the resume, then 2-byte frames. The
  // lines held are cut as lines on the next tick after the resume, as
  // node:net's are (the native addon cut them only on the loop's next
  // iteration, with the new delimiter: "bb", "\nc", "c\n").
  setImmediate(() => s.resumeReading());
  setImmediate(() => {
    s.readDelimiter = 2;
  });
  await waitFor(() => frames.length >= 2, 5000, "the held frames");
  c.write("xyzw");
  await waitFor(() => frames.length >= 4, 5000, `four frames, got ${JSON.stringify(frames)}`);
  assert.deepEqual(frames, ["bb", "cc", "xy", "zw"]);
});

test("pauseReading, then the peer's FIN: the buffered frames still come first, then onEnd (real sockets)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Slow extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      events.push(`read ${d.toString()}`);
      if (d.toString() === "a") {
        this.pauseReading();
        // Long enough for the FIN to arrive while paused.
        setTimeout(() => {
          events.push("resume");
          this.resumeReading();
        }, 100);
      }
    }
    override onEnd() {
      events.push("end");
      this.close();
    }
  }
  const port = await listenLocal(new Server(Slow, { engine }), t);
  const c = await connect(port);
  c.socket.end("a\nb\nc\npartial");
  await c.readToEnd();
  assert.deepEqual(events, ["read a", "resume", "read b", "read c", "end"]);
});

/**
 * A UNIX peer that writes and closes at once: its bytes and its FIN reach
 * the server in one poll (data and hang-up together). `setup` makes the
 * stream hold frames when the FIN is read; each round must still deliver
 * every frame, then onEnd.
 */
async function framesBeforeFin(t: import("node:test").TestContext, send: string, setup: (s: Stream, frame: string, events: string[]) => void | Promise<void>): Promise<string[][]> {
  const engine = freshEngine(t);
  const rounds: string[][] = [];
  let events: string[] = [];
  class Held extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      events.push(d.toString());
      return setup(this, d.toString(), events);
    }
    override onEnd() {
      events.push("end");
      this.close();
    }
  }
  const path = join(tempDir(t), "fin.sock");
  const server = new Server(Held, { engine });
  server.listen(path);
  await server.ready();
  t.after(() => server.close());
  for (let round = 0; round < 5; round++) {
    events = [];
    const c = net.connect(path);
    c.on("error", () => {});
    await new Promise((r) => c.once("connect", r));
    c.end(send);
    c.destroy();
    await waitFor(() => events.includes("end"), 3000, `onEnd in round ${round}: ${JSON.stringify(events)}`).catch(() => {});
    rounds.push(events);
  }
  return rounds;
}

test("a readDelimiter set after an await, as the peer's FIN arrives with the bytes: the frames still come, then onEnd", async (t) => {
  const rounds = await framesBeforeFin(t, "HDR\nxxxxx", async (s, frame) => {
    if (frame !== "HDR") return;
    await null; // outside the delivery
    s.readDelimiter = 5;
  });
  for (const events of rounds) assert.deepEqual(events, ["HDR", "xxxxx", "end"]);
});

test("paused with frames held when the peer's FIN arrives: nothing until resumeReading, then the frames, then onEnd", async (t) => {
  const rounds = await framesBeforeFin(t, "PAUSE\nxxyy", (s, frame, events) => {
    if (frame !== "PAUSE") return;
    s.pauseReading();
    s.readDelimiter = 2;
    setTimeout(() => {
      events.push("resume");
      s.resumeReading();
    }, 100);
  });
  for (const events of rounds) assert.deepEqual(events, ["PAUSE", "resume", "xx", "yy", "end"]);
});

test("a readDelimiter set after a longer await (a timer), the peer's FIN already in: the frames still come, then onEnd", async (t) => {
  // The FIN is read while the handler waits: onEnd waits for the handler,
  // and the bytes it then reframes (held by the addon, or buffered) go first.
  const rounds = await framesBeforeFin(t, "HDR\nxxyy", async (s, frame) => {
    if (frame !== "HDR") return;
    await sleep(30);
    s.readDelimiter = 2;
  });
  for (const events of rounds) assert.deepEqual(events, ["HDR", "xx", "yy", "end"]);
});

test("an async onRead that pauses, awaits, changes readDelimiter and resumes, the peer's FIN already in: the frames, then onEnd", async (t) => {
  const rounds = await framesBeforeFin(t, "HDR\nxxyy", async (s, frame) => {
    if (frame !== "HDR") return;
    s.pauseReading();
    await sleep(30);
    s.readDelimiter = 2;
    s.resumeReading();
  });
  for (const events of rounds) assert.deepEqual(events, ["HDR", "xx", "yy", "end"]);
});

test("a readDelimiter set in onEnd frames the bytes the peer sent after its last frame (then the stream closes)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Tail extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      events.push(d.toString());
    }
    override onEnd() {
      events.push("end");
      this.readDelimiter = 3; // the rest is fixed-size records
      setTimeout(() => this.close(), 100);
    }
    override onClose() {
      events.push("close");
    }
  }
  const port = await listenLocal(new Server(Tail, { engine }), t);
  const c = await connect(port);
  c.socket.end("x\nabcdef");
  await waitFor(() => events.includes("close"), 3000, `onClose: ${JSON.stringify(events)}`);
  assert.deepEqual(events, ["x", "end", "abc", "def", "close"]);
});

test("a handler that pauses on every frame (a rate limiter): after the last one, the FIN still ends the stream (real sockets)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Limited extends Stream {
    override onConnect() {
      this.readDelimiter = 1;
    }
    override onRead(d: Buffer) {
      events.push(d.toString());
      this.pauseReading();
      setTimeout(() => this.resumeReading(), 20);
    }
    override onEnd() {
      events.push("end");
      this.close();
    }
  }
  const port = await listenLocal(new Server(Limited, { engine }), t);
  const c = await connect(port);
  c.socket.end("abc");
  await c.readToEnd(3000);
  await waitFor(() => events.includes("end"), 3000, `onEnd (events: ${events.join(",")})`);
  assert.deepEqual(events, ["a", "b", "c", "end"]);
  const peer = memoryPeer(Limited);
  await peer.send("xy");
  peer.end();
  await waitFor(() => peer.stream.closed, 3000, "the in-memory stream to end");
  assert.deepEqual(events.slice(4), ["x", "y", "end"]);
});

test("peers that do not read cost about writeHighWaterMark each in memory too: small queued writes pin no big buffers", async (t) => {
  const engine = freshEngine(t);
  const streams: Stream[] = [];
  class LineEcho extends Stream {
    override onConnect() {
      streams.push(this);
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      // Two small writes per line, the second flushed: each flush is a small write of its own.
      this.write(line);
      this.write("\n", true);
    }
  }
  const port = await listenLocal(new Server(LineEcho, { engine }), t);
  const lines = Buffer.alloc(8 << 20, 0x61);
  for (let i = 200; i < lines.length; i += 201) lines[i] = 0x0a;
  const before = process.memoryUsage().arrayBuffers;
  const peers: net.Socket[] = [];
  t.after(() => peers.forEach((p) => p.destroy()));
  for (let i = 0; i < 10; i++) {
    const peer = net.connect(port, "127.0.0.1");
    peer.on("error", () => {});
    await new Promise<void>((resolve) => peer.once("connect", resolve));
    peer.pause(); // never reads: the server's replies back up
    peer.write(lines);
    peers.push(peer);
  }
  await waitFor(() => streams.length === 10 && streams.every((s) => s.bufferedAmount >= s.writeHighWaterMark), 10_000, "every stream to back up");
  await sleep(200);
  const grown = process.memoryUsage().arrayBuffers - before;
  // 10 streams × ~1 MiB queued, plus read buffers; a 64 KiB buffer pinned per small queued write would be ~1.3 GB.
  assert.ok(grown < 128 << 20, `ArrayBuffers grew by ${Math.round(grown / 1048576)} MiB for 10 backed-up streams`);
});

test("writeHighWaterMark and writeBufferLimit are validated", async () => {
  const peer = memoryPeer(Stream);
  await peer.ready;
  for (const bad of [0, -1, 1.5, NaN]) {
    assert.throws(() => (peer.stream.writeHighWaterMark = bad), RangeError);
    assert.throws(() => (peer.stream.writeBufferLimit = bad), RangeError);
  }
  // Not a number at all: the wrong type (SPEC §10), for every numeric setting.
  const s = peer.stream as unknown as Record<string, unknown>;
  for (const name of ["writeHighWaterMark", "writeBufferLimit", "bufferSize", "idleTimeout"]) {
    assert.throws(() => (s[name] = "1"), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" }, name);
  }
  assert.throws(() => (peer.stream.bufferSize = 0), RangeError);
  assert.throws(() => (peer.stream.idleTimeout = -1), RangeError);
  assert.equal(peer.stream.writeHighWaterMark, 1024 * 1024);
  assert.equal(peer.stream.writeBufferLimit, 64 * 1024 * 1024);
  assert.equal(peer.stream.bufferedAmount, 0);
  peer.stream.writeHighWaterMark = Infinity; // never pause
  assert.equal(peer.stream.writeHighWaterMark, Infinity);
  assert.throws(() => (peer.stream.writeBufferLimit = Infinity), RangeError); // a bound stays a bound
});

test("writeHighWaterMark must stay below writeBufferLimit: a finite one at or above it is a RangeError (ERR_OUT_OF_RANGE) from either setter", async () => {
  const peer = memoryPeer(Stream);
  await peer.ready;
  const s = peer.stream;
  const code = { name: "RangeError", code: "ERR_OUT_OF_RANGE" };
  assert.throws(() => (s.writeHighWaterMark = 64 << 20), code, "equal to the default limit");
  assert.throws(() => (s.writeHighWaterMark = 65 << 20), code, "above the default limit");
  assert.equal(s.writeHighWaterMark, 1 << 20, "a refused value is not kept");
  s.writeHighWaterMark = 512 << 10;
  assert.throws(() => (s.writeBufferLimit = 512 << 10), code, "a limit down to the mark");
  assert.throws(() => (s.writeBufferLimit = 256 << 10), code, "a limit below the mark");
  assert.equal(s.writeBufferLimit, 64 << 20, "a refused limit is not kept");
  s.writeBufferLimit = (512 << 10) + 1;
  s.writeHighWaterMark = Infinity; // never pause: always allowed
  s.writeBufferLimit = 4096;
  assert.equal(s.writeHighWaterMark, Infinity);
  // Not set: 1 MiB, under a lower limit too (a peer that stops reading is then dropped at the limit).
  const fresh = memoryPeer(Stream);
  await fresh.ready;
  fresh.stream.writeBufferLimit = 256 << 10;
  assert.equal(fresh.stream.writeHighWaterMark, 1 << 20);
  peer.stream.close(false);
  fresh.stream.close(false);
});

test("writeHighWaterMark defaults: 1 MiB on a server's stream, Infinity on a stream that connect()ed, what was set on either", async (t) => {
  const engine = freshEngine(t);
  const seen: number[] = [];
  class Side extends Stream {
    override onConnect() {
      seen.push(this.writeHighWaterMark);
    }
  }
  const port = await listenLocal(new Server(Side, { engine }), t);
  const client = new Side({ engine });
  assert.equal(client.writeHighWaterMark, 1024 * 1024, "before connect()");
  client.connect(["127.0.0.1", port]);
  assert.equal(client.writeHighWaterMark, Infinity, "once connecting");
  await client.ready();
  await waitFor(() => seen.length === 2, 2000, "both onConnects");
  assert.deepEqual(seen.sort(), [1024 * 1024, Infinity]);
  client.writeHighWaterMark = 4096;
  assert.equal(client.writeHighWaterMark, 4096);
  const set = new Side({ engine });
  set.writeHighWaterMark = 65536; // set before connect(): kept
  set.connect(["127.0.0.1", port]);
  assert.equal(set.writeHighWaterMark, 65536);
  client.close(false);
  set.close(false);
});

for (const where of ["tcp", "unix"] as const) {
  test(`a pants-ts client that sends a burst before reading the replies gets every byte back from a pants-ts echo server (${where}): the two never wait for each other`, { timeout: 60_000 }, async (t) => {
    const engine = freshEngine(t);
    // Far above what the two ends' writeHighWaterMarks and the kernel's buffers
    // hold between them: were the client to stop reading while its burst waits,
    // the server, its echo backed up, would stop reading too, and both would wait.
    const size = where === "tcp" ? 40 * 1024 * 1024 : 8 * 1024 * 1024;
    class Echo extends Stream {
      override onRead(d: Buffer) {
        this.write(d);
      }
    }
    const server = new Server(Echo, { engine });
    let address: [string, number] | string;
    if (where === "tcp") address = ["127.0.0.1", await listenLocal(server, t)];
    else {
      address = join(tempDir(t), "echo.sock");
      server.listen(address);
      await server.ready();
      t.after(() => server.close());
    }
    let got = 0;
    class Burst extends Stream {
      override onConnect() {
        const block = Buffer.alloc(1024 * 1024, 0x62);
        for (let sent = 0; sent < size; sent += block.length) this.write(block);
      }
      override onRead(d: Buffer) {
        got += d.length;
      }
    }
    const client = new Burst({ engine }).connect(address);
    t.after(() => client.close(false));
    await waitFor(() => got === size, 30_000, `the echo of ${size} bytes (got ${got})`);
  });
}

const PUSH = 8 * 1024 * 1024;

/**
 * A server whose stream pushes PUSH bytes at connect (writeHighWaterMark
 * Infinity, so it keeps reading), and a client that does not read them:
 * resolves once more than 1 MiB of the push waits in the stream.
 */
async function backedUpPush(t: TestContext, Conn: typeof Stream): Promise<{ stream: Stream; sock: net.Socket }> {
  const engine = freshEngine(t);
  let stream: Stream | null = null;
  class Push extends Conn {
    override onConnect() {
      stream = this;
      this.writeHighWaterMark = Infinity;
      this.write(Buffer.alloc(PUSH, 0x70));
      super.onConnect();
    }
  }
  const port = await listenLocal(new Server(Push, { engine }), t);
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => {});
  t.after(() => sock.destroy());
  await new Promise((r) => sock.once("connect", r));
  sock.pause();
  await waitFor(() => stream !== null && stream.bufferedAmount > 1 << 20, 5000, "the push to back up");
  return { stream: stream!, sock };
}

test("writeHighWaterMark lowered below what already waits (from a timer): reading pauses at once, until the drain's onWrite, also with a short write held behind the push", { timeout: 30_000 }, async (t) => {
  // Before, nothing paused until the next write: onRead went on above the
  // new mark. With a short write held in the queue behind the push (it waits,
  // joined, until the socket drains), the setter left the check to that
  // flush, so onRead went on until the peer had read the whole push.
  for (const tail of ["", "tail\n"]) {
    const events: string[] = [];
    class Lines extends Stream {
      override onConnect() {
        this.readDelimiter = "\n";
      }
      override onRead(d: Buffer) {
        events.push(`read ${d} (${this.bufferedAmount > this.writeHighWaterMark ? "above" : "below"} the mark)`);
      }
      override onWrite() {
        events.push("write");
      }
    }
    const { stream, sock } = await backedUpPush(t, Lines);
    if (tail !== "") {
      stream.write(tail); // held behind the push, in the queue
      await sleep(20);
    }
    stream.writeHighWaterMark = 64 * 1024;
    sock.write("one\n");
    await sleep(100);
    assert.deepEqual(events, [], `paused: nothing read while the push waits (tail ${JSON.stringify(tail)})`);
    let received = 0;
    sock.on("data", (d: Buffer) => (received += d.length));
    sock.resume();
    await waitFor(() => events.length === 2, 10_000, "the drain, then the line");
    assert.deepEqual(events, ["write", "read one (below the mark)"]);
    await waitFor(() => received === PUSH + tail.length, 10_000, "the whole push and the tail");
  }
});

test("writeBufferLimit lowered below what already waits (from a timer): onOverflowError on the next tick, not inside the setter nor at the next write", { timeout: 30_000 }, async (t) => {
  // Before, nothing happened until the stream next wrote.
  const events: string[] = [];
  class Recording extends Stream {
    override onOverflowError(err: BufferOverflowError) {
      events.push(`overflow ${err.direction} ${err.limit}`);
      super.onOverflowError(err);
    }
    override onClose() {
      events.push("close");
    }
  }
  const { stream } = await backedUpPush(t, Recording);
  stream.writeBufferLimit = 1 << 20;
  assert.deepEqual(events, [], "not inside the setter");
  await waitFor(() => events.length === 2, 2000, "the overflow");
  assert.deepEqual(events, [`overflow write ${1 << 20}`, "close"]);
});

test("writeHighWaterMark = Infinity: a server's stream keeps reading a peer that does not read while the stream's writes wait", { timeout: 30_000 }, async (t) => {
  const engine = freshEngine(t);
  let read = 0;
  class Push extends Stream {
    override onConnect() {
      this.writeHighWaterMark = Infinity;
      this.write(Buffer.alloc(8 * 1024 * 1024, 0x70)); // a push the peer is not reading
    }
    override onRead(d: Buffer) {
      read += d.length;
    }
  }
  const port = await listenLocal(new Server(Push, { engine }), t);
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => {});
  t.after(() => sock.destroy());
  await new Promise((r) => sock.once("connect", r));
  sock.pause(); // never reads the push
  const size = 16 * 1024 * 1024;
  sock.write(Buffer.alloc(size, 0x71));
  await waitFor(() => read === size, 20_000, `the server reading all ${size} bytes (read ${read})`);
});

test("the peer's FIN while reading is paused and nothing is buffered: onEnd waits for resumeReading, or for onWrite above writeHighWaterMark (client stream, every transport)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    c.on("error", () => {});
    c.once("data", () => c.end()); // FIN at the client's first bytes; keeps reading (and dropping) the rest
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  for (const how of ["pauseReading", "writeHighWaterMark"] as const) {
    const events: string[] = [];
    class Client extends Stream {
      override onConnect() {
        if (how === "pauseReading") {
          this.pauseReading();
          this.write("go");
        } else {
          this.writeHighWaterMark = 1024 * 1024; // a client's is Infinity unless set
          this.write(Buffer.alloc(8 * 1024 * 1024)); // far above writeHighWaterMark: reading stops until onWrite
        }
      }
      override onWrite() {
        if (how === "writeHighWaterMark" && !events.includes("write")) events.push("write");
      }
      override onEnd() {
        events.push("end");
        super.onEnd();
      }
      override onClose() {
        events.push("close");
      }
    }
    const s = new Client({ engine }).connect(["127.0.0.1", port]);
    await s.ready();
    if (how === "pauseReading") {
      await sleep(200); // the FIN is in by now
      assert.equal(events.join(","), "", "nothing while paused");
      assert.equal(s.closed, false);
      events.push("resume");
      s.resumeReading();
      await waitFor(() => events.includes("close"), 5000, "the close");
      assert.deepEqual(events, ["resume", "end", "close"]);
    } else {
      await waitFor(() => events.includes("close"), 10_000, "the close");
      assert.deepEqual(events, ["write", "end", "close"]);
    }
  }
});
