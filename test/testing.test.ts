/**
 * pants-ts/testing: a connection class against an in-memory peer, with
 * chunked sends, reads, half-close, reset and a manual clock; the way users
 * unit-test their protocols.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BufferOverflowError, ChannelStateError, Engine, Stream } from "../src/index.js";
import { duplexPair, memoryPeer } from "../src/testing.js";

class Echo extends Stream {
  closedBy = "";
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(line: Buffer) {
    this.write(`${line}\n`);
  }
  override onClose() {
    this.closedBy = "closed";
  }
}

test("the example from the docs: send in chunks, read, half-close, closed", async () => {
  const peer = memoryPeer(Echo);
  await peer.send("hi\n", { chunkSize: 1 });
  assert.equal((await peer.read()).toString(), "hi\n");
  await peer.send("a\nb\n", { chunkSize: [1, 2] });
  assert.equal((await peer.read()).toString(), "a\nb\n");
  assert.equal((await peer.read()).length, 0, "read() returns only what is new");
  peer.end();
  await peer.closed;
  assert.equal(peer.stream.closedBy, "closed");
  assert.equal(peer.ended, true, "the stream answered the half-close with its FIN");
});

test("chunkSize: each packet arrives on its own turn, so a delimiter set after an await applies to the next packet, as over TCP", async () => {
  class Switch extends Stream {
    frames: string[] = [];
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override async onRead(data: Buffer) {
      this.frames.push(data.toString());
      await null; // only a microtask: over a socket it runs before the next packet is read
      if (typeof this.readDelimiter === "number") this.readDelimiter = "\n";
      else if (data.toString() === "N:3") this.readDelimiter = 3;
    }
  }
  const peer = memoryPeer(Switch);
  await peer.send("N:3\nxyz\n", { chunkSize: 4 });
  peer.end();
  await peer.closed;
  // Over loopback TCP, "N:3\n" then "xyz\n" as two packets: "xyz" is a 3-byte frame, then an empty line.
  assert.deepEqual(peer.stream.frames, ["N:3", "xyz", ""]);
});

test("a bad chunkSize is refused before anything is sent", async () => {
  const peer = memoryPeer(Echo);
  await assert.rejects(peer.send("a\nb\n", { chunkSize: 0 }), { name: "RangeError", code: "ERR_OUT_OF_RANGE" });
  await assert.rejects(peer.send("a\nb\n", { chunkSize: 1.5 }), { name: "RangeError" });
  await assert.rejects(peer.send("a\nb\n", { chunkSize: [2, -1] }), { name: "RangeError" });
  await assert.rejects(peer.send("a\nb\n", { chunkSize: ["2"] as unknown as number[] }), { name: "TypeError" });
  assert.equal((await peer.read()).length, 0, "nothing of the refused sends reached the stream");
  peer.end();
  await peer.closed;
});

test("send() refuses what is neither a string nor a Uint8Array with a TypeError naming it, as write() does", async () => {
  const peer = memoryPeer(Echo);
  for (const bad of [null, undefined, 42, {}, [1, 2], new ArrayBuffer(2), new DataView(new ArrayBuffer(2))]) {
    await assert.rejects(peer.send(bad as unknown as string), (err: Error) => err instanceof TypeError && /^send\(\) expects a string or a Uint8Array, got /.test(err.message), String(bad));
  }
  await peer.send(new Uint8Array([104, 105, 10]));
  assert.equal((await peer.read()).toString(), "hi\n");
  peer.end();
  await peer.closed;
});

test("reset: the stream sees ECONNRESET and closes", async () => {
  let error: NodeJS.ErrnoException | null = null;
  class C extends Echo {
    override onReadError(err: Error) {
      error = err;
    }
  }
  const peer = memoryPeer(C);
  await peer.ready;
  peer.reset();
  await peer.closed;
  assert.equal((error as NodeJS.ErrnoException | null)?.code, "ECONNRESET");
});

test("a reset after the peer's FIN goes unnoticed until the stream writes (EPIPE), as over TCP on both transports", async () => {
  const events: string[] = [];
  class HalfOpen extends Stream {
    override onEnd() {
      events.push("end"); // stays open to answer later
    }
    override onReadError(err: Error) {
      events.push(`readError:${(err as NodeJS.ErrnoException).code}`);
    }
    override onWriteError(err: Error) {
      events.push(`writeError:${(err as NodeJS.ErrnoException).code}`);
      super.onWriteError(err);
    }
    override onClose() {
      events.push("close");
    }
  }
  const peer = memoryPeer(HalfOpen);
  await peer.ready;
  peer.end();
  await peer.read(); // a turn for the FIN
  peer.reset();
  await peer.read();
  assert.deepEqual(events, ["end"]);
  assert.equal(peer.stream.closed, false, "the stream does not know of the reset yet");
  peer.stream.write("late");
  await peer.closed;
  assert.deepEqual(events, ["end", "writeError:EPIPE", "close"]);
});

test("a manual clock makes idle timeouts and engine timers deterministic", async () => {
  const events: string[] = [];
  class Idle extends Echo {
    override onConnect() {
      super.onConnect();
      this.idleTimeout = 1000;
      this.engine.defer(500, () => events.push(`defer@${this.engine.time()}`));
    }
    override onTimeout() {
      events.push(`timeout@${this.engine.time()}`);
      this.close();
    }
  }
  const peer = memoryPeer(Idle, { manualClock: true });
  await peer.ready;
  await peer.advance(400);
  assert.equal(events.length, 0);
  await peer.send("ping\n"); // activity resets the idle timer
  await peer.advance(200);
  assert.deepEqual(events, ["defer@500"]);
  await peer.advance(700); // 1300 ms: the ping at 400 keeps it alive until 1400
  assert.equal(events.length, 1, "still active within the timeout");
  await peer.advance(1000);
  await peer.closed;
  assert.equal(events.length, 2);
  assert.match(events[1]!, /^timeout@\d+$/);
  const at = Number(events[1]!.split("@")[1]);
  assert.ok(at >= 1500 && at <= 2500, `timed out at ${at}`);
  assert.throws(() => new Engine().advance(10), RangeError, "advance() needs a manual clock");
});

test("a manual clock advanced in many short steps reaches an idle timeout as one long step does", async () => {
  class Idle extends Echo {
    timedOutAt = -1;
    override onConnect() {
      super.onConnect();
      this.idleTimeout = 1000;
    }
    override onTimeout() {
      this.timedOutAt = this.engine.time();
      this.close();
    }
  }
  for (const step of [10, 100, 300]) {
    const peer = memoryPeer(Idle, { manualClock: true });
    await peer.ready;
    for (let i = 0; i < 4000 / step && !peer.stream.closed; i++) await peer.advance(step);
    assert.ok(peer.stream.timedOutAt >= 1000 && peer.stream.timedOutAt <= 1600, `steps of ${step} ms: timed out at ${peer.stream.timedOutAt}`);
  }
});

test("cycle timers on a manual clock fire once per period", () => {
  const engine = new Engine({ manualClock: true });
  const times: number[] = [];
  const timer = engine.cycle(100, () => times.push(engine.time()));
  engine.advance(350);
  timer.cancel();
  engine.advance(1000);
  assert.deepEqual(times, [100, 200, 300]);
});

test("a delay under 1 ms is 1 ms on a manual clock, as Node's timers make it: a tiny cycle never stalls advance()", () => {
  const engine = new Engine({ manualClock: true });
  engine.advance(1000);
  const times: number[] = [];
  // 1000 + 1e-20 is 1000: a cycle due there would be due again at once, forever (capped here at 50 runs).
  const tiny = engine.cycle(1e-20, () => {
    times.push(engine.time());
    if (times.length === 50) tiny.cancel();
  });
  const fired: number[] = [];
  engine.defer(0.25, () => fired.push(engine.time()));
  engine.advance(0);
  assert.deepEqual(times, [], "nothing falls due without time passing");
  assert.deepEqual(fired, []);
  engine.advance(10);
  tiny.cancel();
  assert.deepEqual(times, [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010]);
  assert.deepEqual(fired, [1001]);
  const half: number[] = [];
  const timer = engine.cycle(0.5, () => half.push(engine.time()));
  engine.advance(3);
  timer.cancel();
  assert.deepEqual(half, [1011, 1012, 1013]);
});

test("a manual clock never goes back: a timer that advances it further inside advance() leaves it there", () => {
  const engine = new Engine({ manualClock: true });
  const seen: number[] = [];
  engine.defer(5, () => {
    engine.advance(100);
    seen.push(engine.time());
  });
  engine.defer(50, () => seen.push(engine.time()));
  engine.advance(10);
  assert.deepEqual(seen, [50, 105], "the nested advance fires what falls due within it, in order");
  assert.equal(engine.time(), 105);
  engine.advance(0);
  assert.equal(engine.time(), 105);
});

test("duplexPair: what one end writes the other reads; destroy is a FIN, resetAndDestroy a reset", async () => {
  const [a, b] = duplexPair();
  const got: Buffer[] = [];
  b.on("data", (d: Buffer) => got.push(d));
  a.write("hello");
  await new Promise((r) => setImmediate(r));
  assert.equal(Buffer.concat(got).toString(), "hello");
  const ended = new Promise<void>((r) => b.once("end", r));
  a.destroy();
  await ended;
  const [c, d] = duplexPair();
  const errored = new Promise<Error>((r) => d.once("error", r));
  c.resetAndDestroy();
  assert.equal(((await errored) as NodeJS.ErrnoException).code, "ECONNRESET");
});

test("memoryPeer: send() after the peer's own end() or reset() is a ChannelStateError, not bytes dropped unseen", async () => {
  for (const how of ["end", "reset"] as const) {
    const peer = memoryPeer(Echo);
    await peer.send("a\n");
    peer[how]();
    await assert.rejects(peer.send("b\n"), (err: unknown) => err instanceof ChannelStateError && err.message.includes(`${how}()`));
    await peer.closed;
  }
  // Bytes for a stream that closed itself are dropped, as over TCP: no error.
  class Quits extends Stream {
    override onConnect() {
      this.close();
    }
  }
  const quits = memoryPeer(Quits);
  await quits.closed;
  await quits.send("late\n");
});

test("memoryPeer: closed settles after onClose, also one assigned to the instance after memoryPeer() returned", async () => {
  const peer = memoryPeer(Echo);
  const order: string[] = [];
  peer.stream.onClose = () => void order.push("onClose");
  void peer.closed.then(() => order.push("closed"));
  peer.end();
  await Promise.race([peer.closed, new Promise((_, reject) => setTimeout(() => reject(new Error("closed never settled")), 2000))]);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(order, ["onClose", "closed"]);
});

test("memoryPeer: a peer that stops reading holds the stream's writes back, as over TCP: bufferedAmount grows, writeBufferLimit applies, resumeReading delivers it all", async () => {
  const MiB = 1024 * 1024;
  const overflows: string[] = [];
  class Flood extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      if (line.toString() === "limit") this.writeBufferLimit = MiB;
      for (let i = 0; i < 4; i++) this.write(Buffer.alloc(MiB, 0x61 + i));
    }
    override onOverflowError(err: BufferOverflowError) {
      overflows.push(err.direction);
      super.onOverflowError(err);
    }
  }
  const peer = memoryPeer(Flood);
  peer.pauseReading();
  await peer.send("go\n");
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal((await peer.read()).length, 0, "nothing read while paused");
  assert.ok(peer.stream.bufferedAmount > 3 * MiB, `bufferedAmount ${peer.stream.bufferedAmount}`);
  peer.resumeReading();
  let got = 0;
  const all: Buffer[] = [];
  for (let i = 0; i < 200 && got < 4 * MiB; i++) {
    const part = await peer.read();
    all.push(part);
    got += part.length;
  }
  const received = Buffer.concat(all);
  assert.equal(received.length, 4 * MiB);
  assert.equal(received[0], 0x61);
  assert.equal(received[4 * MiB - 1], 0x64);
  assert.equal(peer.stream.bufferedAmount, 0);
  // The same flood past a 1 MiB writeBufferLimit, to a peer that does not read: a write overflow, then closed.
  const stuck = memoryPeer(Flood);
  stuck.pauseReading();
  await stuck.send("limit\n");
  await stuck.closed;
  assert.deepEqual(overflows, ["write"]);
});

test("a manual clock fires defer and cycle timers in due order, ties by creation, under heavy cancel churn", () => {
  const engine = new Engine({ manualClock: true });
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const fired: Array<[number, number]> = [];
  const expected: Array<[number, number]> = [];
  const timers: Array<{ cancel(): void }> = [];
  for (let i = 0; i < 5000; i++) {
    const delay = 1 + Math.floor(random() * 200);
    const timer = engine.defer(delay, () => fired.push([engine.time(), i]));
    if (random() < 0.7) timer.cancel();
    else expected.push([delay, i]);
    timers.push(timer);
  }
  // A cycle every 50 ms, cancelled by its own third run.
  let runs = 0;
  const cycle = engine.cycle(50, () => {
    fired.push([engine.time(), -1]);
    if (++runs === 3) cycle.cancel();
  });
  for (const t of [50, 100, 150]) expected.push([t, -1]);
  // Ties: the cycle (made last) comes after every defer due at the same time.
  expected.sort((a, b) => a[0] - b[0] || (a[1] === -1 ? 1 : b[1] === -1 ? -1 : a[1] - b[1]));
  engine.advance(73);
  engine.advance(1000);
  assert.deepEqual(fired, expected);
  assert.equal(runs, 3);
});

test("memoryPeer: a send() not awaited keeps its order: its bytes arrive whole before a later send()'s and before end()'s FIN, as a socket's writes do", async () => {
  class Collect extends Stream {
    got = "";
    events: string[] = [];
    override onRead(chunk: Buffer) {
      this.got += chunk.toString();
    }
    override onEnd() {
      this.events.push(`end after ${JSON.stringify(this.got)}`);
      this.close();
    }
  }
  const peer = memoryPeer(Collect);
  void peer.send("aaaa", { chunkSize: 1 });
  void peer.send("bbbb", { chunkSize: [1, 2] });
  const last = peer.send("cc");
  peer.end();
  await last;
  await peer.closed;
  assert.equal(peer.stream.got, "aaaabbbbcc");
  assert.deepEqual(peer.stream.events, ['end after "aaaabbbbcc"']);

  // Once ready too, and without chunkSize.
  const ready = memoryPeer(Collect);
  await ready.ready;
  void ready.send("hi\n");
  ready.end();
  await ready.closed;
  assert.deepEqual(ready.stream.events, ['end after "hi\\n"']);
});

test("memoryPeer: send() copies its bytes: a buffer the test reuses afterwards does not change the chunks the stream kept or has not read yet", async () => {
  class Keep extends Stream {
    kept: Buffer[] = [];
    override onRead(chunk: Buffer) {
      this.kept.push(chunk); // chunks are the stream's to keep (reuseReadBuffer is false)
    }
  }
  const peer = memoryPeer(Keep);
  const buf = Buffer.from("AAAA");
  await peer.send(buf);
  buf.fill("B");
  assert.equal(Buffer.concat(peer.stream.kept).toString(), "AAAA", "a chunk the stream kept");

  peer.stream.pauseReading();
  await peer.send(buf); // "BBBB", waiting unread
  buf.fill("C");
  peer.stream.resumeReading();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(Buffer.concat(peer.stream.kept).toString(), "AAAABBBB", "bytes sent while the stream was paused");
});
