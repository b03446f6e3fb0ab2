/**
 * Closing: close(true) delivers everything before the FIN, close(false)
 * drops and closes now, a peer FIN still gets its replies (Pants B2), a
 * reset closes quietly, and closing never turns into a reset that destroys
 * data the peer has not read.
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { constants as osConstants } from "node:os";
import net from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { Server, Stream } from "../src/index.js";
import { captureLogs, connect, freshEngine, listenLocal, waitFor, sleep } from "./helpers.js";

class LineEcho extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(line: Buffer) {
    this.write(Buffer.concat([line, Buffer.from("\n")]));
  }
}

test("peer half-close: replies to the last lines still arrive, then FIN (echo hi | nc)", async (t) => {
  const engine = freshEngine(t);
  let closes = 0;
  class C extends LineEcho {
    override onClose() {
      closes++;
    }
  }
  const port = await listenLocal(new Server(C, { engine }), t);
  const c = await connect(port);
  c.end("hi\nthere\n");
  const got = await c.readToEnd();
  assert.equal(got.toString(), "hi\nthere\n");
  assert.equal(c.ended, true, "the server sent a FIN, not a reset");
  assert.equal(c.error, null);
  await waitFor(() => closes === 1);
});

test("close(true) after a large write delivers every byte before the FIN", async (t) => {
  const engine = freshEngine(t);
  const data = randomBytes(16 << 20);
  class Sender extends Stream {
    override onConnect() {
      this.write(data);
      this.close(true);
    }
  }
  const port = await listenLocal(new Server(Sender, { engine }), t);
  const c = await connect(port);
  // Read slowly at first, so the server's buffer is really backed up.
  c.socket.pause();
  await sleep(100);
  c.socket.resume();
  const got = await c.readToEnd(20000);
  assert.equal(got.length, data.length);
  assert.equal(createHash("sha256").update(got).digest("hex"), createHash("sha256").update(data).digest("hex"));
  assert.equal(c.error, null);
});

test("close(true) in a later turn, with an earlier write still in the socket: every byte, then the FIN, at once", async (t) => {
  const engine = freshEngine(t);
  const data = randomBytes(16 << 20); // more than the kernel takes at once, below writeHighWaterMark
  let closedAt = 0;
  class Sender extends Stream {
    override onConnect() {
      this.writeHighWaterMark = Infinity; // no backpressure pause: nothing else waits for the drain
      this.write(data);
      setTimeout(() => this.close(true), 50);
    }
    override onClose() {
      closedAt = Date.now();
    }
  }
  const port = await listenLocal(new Server(Sender, { engine }), t);
  const c = await connect(port);
  c.socket.pause();
  await sleep(200); // the write is still queued in the server's socket when close() runs
  const resumedAt = Date.now();
  c.socket.resume();
  // Generous bounds for a slow machine, all well inside the 30 s drain
  // deadline that would close the stream if nothing reported the drain.
  const got = await c.readToEnd(20000);
  assert.equal(got.length, data.length);
  assert.ok(got.equals(data));
  assert.equal(c.ended, true, "the server sent a FIN");
  await waitFor(() => closedAt !== 0, 5000);
  assert.ok(closedAt - resumedAt < 20000, "closed once drained, not at the drain deadline");
});

test("close(false) closes at once, dropping unsent data", async (t) => {
  const engine = freshEngine(t);
  let closedAt = 0;
  class Dropper extends Stream {
    override onConnect() {
      this.write(Buffer.alloc(64 << 20));
      this.close(false);
      closedAt = this.closed ? 1 : -1;
    }
  }
  const port = await listenLocal(new Server(Dropper, { engine }), t);
  const c = await connect(port);
  const got = await c.readToEnd(10000);
  assert.equal(closedAt, 1, "closed synchronously");
  assert.ok(got.length < 64 << 20, `received ${got.length} bytes of 64 MiB`);
});

/**
 * A client sends a request line, then keeps sending while the server
 * answers it with `reply` and closes (`answer` does both). A slow reader
 * leaves the reply unread in its socket for 300 ms. What arrived, and the
 * client's error (a reset shows as ECONNRESET or EPIPE).
 */
async function replyWhileSending(
  t: TestContext,
  reply: Buffer,
  answer: (s: Stream) => void,
  slowReader: boolean,
): Promise<{ received: number; error: Error | null }> {
  const engine = freshEngine(t);
  class Replier extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead() {
      answer(this);
    }
  }
  const port = await listenLocal(new Server(Replier, { engine }), t);
  const sock = net.connect(port, "127.0.0.1");
  let received = 0;
  let error: Error | null = null;
  sock.on("data", (d: Buffer) => (received += d.length));
  sock.on("error", (e) => (error = e));
  await new Promise<void>((r) => sock.once("connect", r));
  if (slowReader) sock.pause();
  sock.write("request\n");
  const junk = Buffer.alloc(16 * 1024, 0x78);
  const pump = setInterval(() => {
    if (!sock.destroyed && sock.writable) sock.write(junk);
  }, 1);
  if (slowReader) {
    await sleep(300);
    sock.resume();
  }
  await Promise.race([
    new Promise<void>((r) => {
      sock.once("end", r);
      sock.once("close", r);
    }),
    sleep(10_000),
  ]);
  clearInterval(pump);
  sock.destroy();
  return { received, error };
}

test("closing while the peer is still sending does not reset the reply away", async (t) => {
  const reply = randomBytes(1 << 20);
  // Reply and close at once, while the client keeps sending.
  const r = await replyWhileSending(t, reply, (s) => {
    s.write(reply);
    s.close();
  }, false);
  assert.equal(r.error, null, "no reset");
  assert.equal(r.received, reply.length);
});

test("closing while the peer keeps sending and reads the reply slowly, for longer than the linger: every byte, then the FIN, no reset", { timeout: 30_000 }, async (t) => {
  const engine = freshEngine(t);
  const reply = randomBytes(6 << 20);
  class Replier extends Stream {
    override onConnect() {
      this.write(reply);
      this.close();
    }
  }
  const port = await listenLocal(new Server(Replier, { engine }), t);
  const sock = net.connect(port, "127.0.0.1");
  const chunks: Buffer[] = [];
  let ended = false;
  let error: Error | null = null;
  sock.on("error", (e) => (error = e));
  sock.on("end", () => (ended = true));
  // About 1 MiB/s: the last few MiB still sit in the kernel's buffers for
  // seconds after the stream has handed them over and closed.
  sock.on("data", (d: Buffer) => {
    chunks.push(d);
    sock.pause();
    setTimeout(() => sock.resume(), d.length / 1024);
  });
  // A client that pipelines its next requests meanwhile.
  const requests = setInterval(() => {
    if (sock.writable) sock.write("next request\n");
  }, 20);
  await new Promise<void>((r) => sock.once("close", r));
  clearInterval(requests);
  assert.equal(error, null, "no reset");
  assert.ok(ended, "a FIN");
  assert.ok(Buffer.concat(chunks).equals(reply), "every byte of the reply");
});

test("a peer that read a short reply and keeps a closed connection open by trickling bytes is cut after the first 2 s wait, not 30 s", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  class Closer extends Stream {
    override onConnect() {
      this.write("hello\n");
    }
    override onRead() {
      this.write("bye\n");
      this.close();
    }
  }
  class IdleCloser extends Closer {
    override onConnect() {
      this.idleTimeout = 100; // then close(false), after the OS took the reply
      super.onConnect();
    }
  }
  const port = await listenLocal(new Server(Closer, { engine }), t);
  const port2 = await listenLocal(new Server(IdleCloser, { engine }), t);
  const trickle = async (p: number, request: boolean): Promise<number> => {
    const sock = net.connect({ port: p, host: "127.0.0.1", allowHalfOpen: true });
    sock.on("error", () => {});
    sock.on("data", () => {});
    if (request) sock.write("request\n");
    await new Promise<void>((r) => sock.once("end", r));
    const finAt = Date.now();
    const timer = setInterval(() => sock.writable && sock.write("."), 200);
    t.after(() => {
      clearInterval(timer);
      sock.destroy();
    });
    await new Promise<void>((r) => sock.once("close", r));
    clearInterval(timer);
    return Date.now() - finAt;
  };
  const [closed, idle] = await Promise.all([trickle(port, true), trickle(port2, false)]);
  assert.ok(closed < 5000, `after close(): the linger lasted ${closed} ms`);
  assert.ok(idle < 5000, `after an idle timeout: the linger lasted ${idle} ms`);
});

test("close(false) after a reply the OS has taken, while the peer keeps sending: the reply is not reset away", async (t) => {
  const reply = randomBytes(32 * 1024);
  // An error reply, sent now, then an abort: what the OS took must still arrive.
  const r = await replyWhileSending(t, reply, (s) => {
    s.write(reply, true);
    s.close(false);
  }, true);
  assert.equal(r.error, null, "no reset");
  assert.equal(r.received, reply.length);
});

test("a peer reset closes the stream at once, logged at debug at most", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  let closed = false;
  let readError: Error | null = null;
  class C extends LineEcho {
    override onReadError(err: Error) {
      readError = err;
      super.onReadError(err);
    }
    override onClose() {
      closed = true;
    }
  }
  const server = new Server(C, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  c.write("hello\n");
  await c.read(6);
  c.socket.resetAndDestroy();
  await waitFor(() => closed, 5000, "the stream to close after a reset");
  assert.equal(server.channels.size, 0);
  const err = readError as NodeJS.ErrnoException | null;
  // Node's shape on either transport: errno (libuv's negative number), code, syscall.
  assert.deepEqual([err?.errno, err?.code, err?.syscall], [-osConstants.errno.ECONNRESET, "ECONNRESET", "read"]);
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

/** A connection class recording its read and write errors (code and system call) and its close in `events`. */
function recordingErrors(events: string[], Base: typeof Stream = Stream): typeof Stream {
  return class extends Base {
    override onReadError(err: NodeJS.ErrnoException) {
      events.push(`read error ${err.code} ${err.syscall}`);
      super.onReadError(err);
    }
    override onWriteError(err: NodeJS.ErrnoException) {
      events.push(`write error ${err.code} ${err.syscall}`);
      super.onWriteError(err);
    }
    override onClose() {
      events.push("close");
    }
  };
}

test("a peer's reset while our writes are backed up (reading paused above writeHighWaterMark) is a read error, ECONNRESET, as node:net reports it", async (t) => {
  // Both transports read ahead a little while paused (node:net into its
  // buffer, the addon into its own), so the read takes the socket's error
  // before the write does, as on a stream that was not paused.
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const events: string[] = [];
  let stream: Stream | null = null;
  class Download extends recordingErrors(events) {
    override onConnect() {
      stream = this;
      for (let i = 0; i < 64; i++) this.write(Buffer.alloc(256 * 1024, 0x41)); // 16 MiB: far more than loopback takes
    }
  }
  const port = await listenLocal(new Server(Download, { engine }), t);
  for (let round = 0; round < 3; round++) {
    events.length = 0;
    stream = null;
    const c = await connect(port);
    c.socket.pause(); // the peer stops reading
    await waitFor(() => stream !== null && stream.bufferedAmount > stream.writeHighWaterMark, 5000, "the writes to back up");
    await sleep(20);
    c.socket.resetAndDestroy();
    await waitFor(() => events.includes("close"), 5000, `the close (round ${round})`);
    assert.deepEqual(events, ["read error ECONNRESET read", "close"], `round ${round}`);
  }
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

test("a paused stream (pauseReading(), in onConnect or after a read) notices a peer's reset while paused, as a node:net socket does: onReadError ECONNRESET, onClose, no resume needed", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const events: string[] = [];
  function paused(early: boolean): typeof Stream {
    return class extends recordingErrors(events) {
      override onConnect() {
        this.readDelimiter = "\n";
        if (early) this.pauseReading(); // before the stream ever read
      }
      override onRead() {
        this.write("reply\n");
        this.pauseReading(); // and never resumed
      }
    };
  }
  for (const early of [true, false]) {
    events.length = 0;
    const port = await listenLocal(new Server(paused(early), { engine }), t);
    const c = await connect(port);
    if (!early) {
      c.write("request\n");
      assert.equal(await c.readText(6), "reply\n");
    }
    await sleep(50);
    c.socket.resetAndDestroy();
    await waitFor(() => events.includes("close"), 3000, `the close (paused ${early ? "in onConnect" : "after a read"})`);
    assert.deepEqual(events, ["read error ECONNRESET read", "close"], early ? "in onConnect" : "after a read");
  }
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

test("a peer that resets right after sending: its frames, then the reset as an error (ECONNRESET), never onEnd", async (t) => {
  // The replies' write meets the reset first and takes its ECONNRESET; the
  // read after it then finds a plain EOF, which must not pass for a FIN.
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  let events: string[] = [];
  class C extends LineEcho {
    override onRead(line: Buffer) {
      events.push(line.toString());
      super.onRead(line);
    }
    override onEnd() {
      events.push("end");
      super.onEnd();
    }
    override onReadError(err: NodeJS.ErrnoException) {
      events.push(`error ${err.code}`);
      super.onReadError(err);
    }
    override onWriteError(err: NodeJS.ErrnoException) {
      events.push(`error ${err.code}`);
      super.onWriteError(err);
    }
    override onClose() {
      events.push("close");
    }
  }
  const server = new Server(C, { engine });
  const port = await listenLocal(server, t);
  for (let round = 0; round < 5; round++) {
    events = [];
    const c = await connect(port);
    c.write("a\nb\n");
    c.socket.resetAndDestroy();
    await waitFor(() => events.includes("close"), 3000, `the stream to close (round ${round}: ${events.join(",")})`);
    const frames = events.filter((e) => e === "a" || e === "b");
    assert.deepEqual(events, [...frames, "error ECONNRESET", "close"], `round ${round}`);
  }
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

test("a client that vanishes mid-write harms no other connection", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Flood extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      if (line.toString() === "flood") {
        for (let i = 0; i < 64; i++) this.write(Buffer.alloc(256 * 1024, 0x41));
      } else this.write(Buffer.concat([line, Buffer.from("\n")]));
    }
  }
  const server = new Server(Flood, { engine });
  const port = await listenLocal(server, t);
  const victim = await connect(port);
  const bystander = await connect(port);
  victim.write("flood\n");
  await victim.until(() => victim.received.length > 0);
  victim.socket.resetAndDestroy();
  await waitFor(() => server.channels.size === 1, 5000);
  bystander.write("still here\n");
  assert.equal(await bystander.readText(11), "still here\n");
  bystander.destroy();
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

test("onClose runs once whoever closes: the peer, the stream, or the server", async (t) => {
  const engine = freshEngine(t);
  const counts = new Map<string, number>();
  class C extends Stream {
    name = "";
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      this.name = d.toString();
      if (this.name === "self") this.close();
    }
    override onClose() {
      counts.set(this.name, (counts.get(this.name) ?? 0) + 1);
      this.close();
    }
  }
  const server = new Server(C, { engine });
  const port = await listenLocal(server);
  const peer = await connect(port);
  const self = await connect(port);
  const byServer = await connect(port);
  peer.write("peer\n");
  self.write("self\n");
  byServer.write("server\n");
  await waitFor(() => [...server.channels.values()].filter((s) => s.name !== "").length === 3 || counts.has("self"));
  peer.end();
  await waitFor(() => counts.has("peer") && counts.has("self"));
  server.close();
  await waitFor(() => counts.has("server"));
  await byServer.readToEnd();
  await sleep(20);
  assert.deepEqual(Object.fromEntries(counts), { peer: 1, self: 1, server: 1 });
});

test("a handler that closes other connections whose bytes arrived with its own: each closes once, none reads after, the server serves on (Pants B11)", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const reads: string[] = [];
  const late: string[] = [];
  const closes = new Map<Stream, number>();
  class Killer extends Stream {
    override onRead(d: Buffer) {
      if (this.closed || closes.has(this)) late.push(d.toString());
      reads.push(d.toString());
      // The first to read closes every other connection, bytes pending or not.
      for (const other of this.server!.channels.values()) if (other !== this) other.close(false);
      this.write(d);
    }
    override onClose() {
      closes.set(this, (closes.get(this) ?? 0) + 1);
    }
  }
  const server = new Server(Killer, { engine });
  const port = await listenLocal(server, t);
  for (let round = 0; round < 5; round++) {
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect(port)));
    await waitFor(() => server.channels.size === 8, 5000, "eight connections");
    const before = reads.length;
    for (const c of clients) c.write("x"); // in one turn: their bytes reach the server together
    await Promise.all(clients.map((c) => c.until(() => c.ended || c.closed || c.received.length > 0, 5000, "an echo or the close")));
    await waitFor(() => server.channels.size <= 1, 5000, "the others closed");
    assert.equal(reads.length - before, 1, "only the first reader's onRead ran");
    assert.equal(clients.filter((c) => c.received.toString() === "x").length, 1);
    for (const c of clients) c.destroy();
    await waitFor(() => server.channels.size === 0, 5000);
  }
  assert.deepEqual(late, []);
  assert.equal(closes.size, 40);
  assert.ok([...closes.values()].every((n) => n === 1), "onClose exactly once each");
  assert.deepEqual(logs.filter((l) => l.level === "error" || l.level === "warn"), []);
  // The server still serves.
  const c = await connect(port);
  c.write("still");
  assert.equal(await c.readText(5), "still");
  c.destroy();
});

test("close(), end(), flush(), shutdown() and engine.stop() passed on by themselves (engine.defer(ms, this.close), process.on(\"SIGTERM\", server.close)) throw a TypeError that names the fix", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  let stream: Stream | null = null;
  class Later extends Stream {
    override onConnect() {
      stream = this;
      this.engine.defer(1, this.close);
    }
  }
  const server = new Server(Later, { engine });
  const port = await listenLocal(server, t);
  const client = await connect(port);
  t.after(() => client.socket.destroy());
  await waitFor(() => logs.some((l) => l.level === "error"), 3000, "the timer's error");
  const err = (logs.find((l) => l.level === "error")!.obj as { err: Error }).err;
  assert.ok(err instanceof TypeError);
  assert.match(err.message, /^close\(\) was called on undefined, not on a Stream: .*pass a function that calls it: \(\) => stream\.close\(\)\.$/);
  const { end, flush } = stream!;
  const { close, shutdown } = server;
  const { stop } = engine;
  const unbound = [
    [() => end(), /^end\(\) was called on undefined, not on a Stream/],
    [() => flush.call(client), /^flush\(\) was called on an object \(\[object Object\]\), not on a Stream/],
    [() => close.call(process), /^close\(\) was called on an object \(\[object process\]\), not on a Server: .*\(\) => server\.close\(\)/],
    [() => shutdown.call(process, "SIGTERM" as never), /^shutdown\(\) was called on an object \(\[object process\]\), not on a Server/],
    [() => stop(), /^stop\(\) was called on undefined, not on an Engine: .*\(\) => engine\.stop\(\)/],
  ] as const;
  for (const [call, message] of unbound) assert.throws(call, (e: Error) => e instanceof TypeError && message.test(e.message), String(message));
  assert.equal(server.listening, true);
});

test("close() given data (close(\"bye\")) or node:net's callback (server.close(cb)) throws a TypeError instead of ignoring it", async (t) => {
  const engine = freshEngine(t);
  const thrown: string[] = [];
  class Closer extends Stream {
    override onConnect() {
      for (const arg of ["bye\n", () => {}, 0]) {
        try {
          this.close(arg as never);
        } catch (err) {
          thrown.push(`${(err as Error).name}: ${(err as Error).message}`);
        }
      }
      this.write("ok\n");
      this.close();
    }
  }
  const server = new Server(Closer, { engine });
  const port = await listenLocal(server, t);
  const client = await connect(port);
  t.after(() => client.socket.destroy());
  assert.equal((await client.readToEnd()).toString(), "ok\n");
  assert.equal(thrown.length, 3, thrown.join("; "));
  for (const text of thrown) assert.match(text, /^TypeError: close\(\) expects flush to be a boolean/);
  assert.throws(() => server.close((() => {}) as never), /^TypeError: Server\.close\(\) takes no argument \(node:net's callback included\), got function .*override onClose\(\) or await server\.shutdown\(\)/);
  assert.equal(server.listening, true);
  server.close(false);
  assert.equal(server.closed, true);
});
