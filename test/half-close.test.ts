/**
 * end(): our side's half-close. What was written goes out, then a FIN
 * (close_notify first under TLS); the stream goes on reading until the peer
 * ends too, then onEnd and (by default) onClose. Writes after it throw.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ChannelStateError, Server, Stream } from "../src/index.js";
import type { StreamOptions } from "../src/index.js";
import type { ConnectionOptions } from "node:tls";
import { RawClient, connectTls, freshEngine, listenLocal, sleep, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

/** Answers its first line, then ends its side; records what follows. */
function halfClosingServer(events: string[], reply: (s: Stream) => void): typeof Stream {
  return class extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      events.push(`read:${line}`);
      if (events.length > 1) return;
      reply(this);
      this.end();
      events.push(`writable:${this.writable}`);
      assert.throws(() => this.write("late"), ChannelStateError);
      assert.throws(() => this.flush(), ChannelStateError);
      this.end(); // a second call does nothing
    }
    override onEnd() {
      events.push("end");
      super.onEnd();
    }
    override onClose() {
      events.push("close");
    }
  };
}

/** A raw client that keeps its side open after the server's FIN (node:net ends it by default). */
async function connectHalfOpen(port: number): Promise<RawClient> {
  const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  return new RawClient(socket);
}

/** The peer's side: reads to our FIN, then still sends a line, then ends. */
async function readThenSendAfterFin(c: RawClient, events: string[]): Promise<Buffer> {
  c.write("request\n");
  const got = await c.readToEnd(10_000);
  assert.equal(c.ended, true, "the server's FIN arrived");
  c.write("after your FIN\n");
  await waitFor(() => events.includes("read:after your FIN"), 5000, "the line sent after the server's FIN");
  c.socket.end();
  await waitFor(() => events.includes("close"), 5000, "onClose once the peer ended too");
  return got;
}

test("end() on a server's stream: the reply, then a FIN; it still reads until the peer ends; writes after it throw", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  const port = await listenLocal(new Server(halfClosingServer(events, (s) => s.write("reply\n")), { engine }), t);
  const c = await connectHalfOpen(port);
  t.after(() => c.destroy());
  assert.equal((await readThenSendAfterFin(c, events)).toString(), "reply\n");
  assert.deepEqual(events, ["read:request", "writable:false", "read:after your FIN", "end", "close"]);
});

test("end(data), as node:net's socket.end(data): the data, then the FIN; data write() refuses, or end(data) once ended, throws", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  const Ender = halfClosingServer(events, (s) => {
    assert.throws(() => s.end(42 as never), TypeError);
    s.end("bye\n");
    assert.throws(() => s.end("again\n"), ChannelStateError);
  });
  const port = await listenLocal(new Server(Ender, { engine }), t);
  const c = await connectHalfOpen(port);
  t.after(() => c.destroy());
  assert.equal((await readThenSendAfterFin(c, events)).toString(), "bye\n");
  assert.deepEqual(events, ["read:request", "writable:false", "read:after your FIN", "end", "close"]);
});

test("end(data) before onConnect throws and sends nothing: not the data, not a FIN", async (t) => {
  const engine = freshEngine(t);
  let thrown: unknown = null;
  class Early extends Stream {
    constructor(options?: StreamOptions) {
      super(options);
      try {
        this.end("early\n");
      } catch (err) {
        thrown = err;
      }
    }
    override onConnect() {
      this.write("hello\n");
      this.close();
    }
  }
  const port = await listenLocal(new Server(Early, { engine }), t);
  const c = await connectHalfOpen(port);
  t.after(() => c.destroy());
  assert.equal((await c.readToEnd(10_000)).toString(), "hello\n");
  assert.ok(thrown instanceof ChannelStateError, "end() before onConnect throws ChannelStateError");
});

test("end() after a write larger than the socket takes, and after writeFile: every byte, then the FIN", async (t) => {
  const engine = freshEngine(t);
  const dir = tempDir(t);
  const file = join(dir, "payload");
  writeFileSync(file, Buffer.alloc(3 << 20, 0x62));
  for (const how of ["write", "writeFile"] as const) {
    const events: string[] = [];
    const Big = halfClosingServer(events, (s) => (how === "write" ? s.write(Buffer.alloc(8 << 20, 0x61)) : s.writeFile(file)));
    const port = await listenLocal(new Server(Big, { engine }), t);
    const c = await connectHalfOpen(port);
    t.after(() => c.destroy());
    const got = await readThenSendAfterFin(c, events);
    assert.equal(got.length, how === "write" ? 8 << 20 : 3 << 20, how);
    assert.deepEqual(events, ["read:request", "writable:false", "read:after your FIN", "end", "close"], how);
  }
});

test("end() on a client: the server gets the request and the FIN, and its answer still arrives (request, half-close, read the response)", async (t) => {
  const engine = freshEngine(t);
  // A plain node:net server that answers only once the client has ended, as `sort` would.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("end", () => {
      const lines = Buffer.concat(chunks).toString().trim().split("\n").sort();
      socket.end(`${lines.join("\n")}\n`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  const events: string[] = [];
  class Sorter extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
      this.write("pear\napple\nfig\n");
      this.end();
    }
    override onRead(line: Buffer) {
      events.push(String(line));
    }
    override onEnd() {
      events.push("end");
      super.onEnd();
    }
    override onClose() {
      events.push("close");
    }
  }
  const client = new Sorter({ engine }).connect(["127.0.0.1", (server.address() as net.AddressInfo).port]);
  await client.ready();
  await waitFor(() => events.includes("close"), 5000, "the client's onClose");
  assert.deepEqual(events, ["apple", "fig", "pear", "end", "close"]);
});

test("end() under TLS: the reply, close_notify and FIN; the stream still reads what the peer sends after them", { skip: !hasOpenssl() && "the openssl command is not installed" }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const engine = freshEngine(t);
  const events: string[] = [];
  const Secure = halfClosingServer(events, (s) => s.write("reply\n"));
  const port = await listenLocal(new Server(Secure, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } }), t);
  // (node:tls takes allowHalfOpen as net.connect does; its types leave it out.)
  const c = await connectTls(["127.0.0.1", port], { allowHalfOpen: true } as ConnectionOptions);
  t.after(() => c.destroy());
  assert.equal((await readThenSendAfterFin(c, events)).toString(), "reply\n");
  assert.deepEqual(events, ["read:request", "writable:false", "read:after your FIN", "end", "close"]);
});

test("end() after the peer reset: the read reports the reset (ECONNRESET), not the FIN's shutdown(2) (ENOTCONN)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  let stream: Stream | null = null;
  class Paused extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead() {
      stream = this;
      this.write("reply\n");
      this.pauseReading(); // the peer's reset waits unread in the kernel
    }
    override onEnd() {
      events.push("end");
    }
    override onReadError(err: Error) {
      events.push(`read error ${(err as NodeJS.ErrnoException).code}`);
    }
    override onWriteError(err: Error) {
      events.push(`write error ${(err as NodeJS.ErrnoException).code}`);
    }
    override onClose() {
      events.push("close");
    }
  }
  const port = await listenLocal(new Server(Paused, { engine }), t);
  const c = await connectHalfOpen(port);
  t.after(() => c.destroy());
  c.write("request\n");
  assert.equal((await c.read(6)).toString(), "reply\n");
  // (On loopback the reset has reached the server's socket when this returns.)
  c.socket.resetAndDestroy();
  // Our FIN goes to a connection the peer has reset: shutdown(2) fails with ENOTCONN,
  // which says nothing the reset does not; node:net ignores it, and the read reports the reset.
  stream!.end();
  await sleep(100);
  stream!.resumeReading();
  await waitFor(() => events.includes("close"), 5000, "onClose");
  assert.deepEqual(events, ["read error ECONNRESET", "close"]);
});

test("end() before onConnect, or once closing or closed, throws ChannelStateError", async (t) => {
  const engine = freshEngine(t);
  const client = new Stream({ engine });
  assert.throws(() => client.end(), ChannelStateError);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  client.connect(["127.0.0.1", port]);
  assert.throws(() => client.end(), ChannelStateError, "while connecting");
  await client.ready();
  client.close();
  assert.throws(() => client.end(), ChannelStateError, "closed");
});

test("startSSL() after end() throws ChannelStateError (the handshake would have to write after our FIN), and the stream ends as it would have", { skip: !hasOpenssl() && "the openssl command is not installed" }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const engine = freshEngine(t);
  for (const reply of ["OK\n", "x".repeat(4 << 20)]) {
    const events: string[] = [];
    const Upgrading = halfClosingServer(events, (s) => {
      s.write(reply);
      s.end();
      try {
        s.startSSL({ certfile: certs.server.cert, keyfile: certs.server.key });
        events.push("upgrading");
      } catch (err) {
        events.push(err instanceof ChannelStateError ? "startSSL refused" : `startSSL threw ${String(err)}`);
      }
    });
    const port = await listenLocal(new Server(Upgrading, { engine }), t);
    const c = await connectHalfOpen(port);
    t.after(() => c.destroy());
    assert.equal((await readThenSendAfterFin(c, events)).length, reply.length, `${reply.length} bytes, then the FIN`);
    assert.deepEqual(events, ["read:request", "startSSL refused", "writable:false", "read:after your FIN", "end", "close"], `${reply.length} bytes`);
  }
});

/**
 * Sends "a\nb\nc\n" in one write, waits for the server's FIN, then ends too:
 * the server's stream ended in its first onRead, and what follows decides
 * when "b", "c" and the end reach it.
 */
async function endedBeforeTheRest(t: Parameters<typeof freshEngine>[0], ConnectionClass: typeof Stream, events: string[]): Promise<void> {
  const port = await listenLocal(new Server(ConnectionClass, { engine: freshEngine(t) }), t);
  const c = new RawClient(net.connect(port, "127.0.0.1"));
  t.after(() => c.socket.destroy());
  c.socket.write("a\nb\nc\n");
  await waitFor(() => c.ended, 5000, "the server's FIN");
  c.socket.end();
  await waitFor(() => events.includes("close"), 5000, `the close; ${events.join(" ")}`);
}

test("end(), then paused with frames left, then the peer's FIN: the socket is done, but the frames and onEnd still come at the resume, then the close", async (t) => {
  const events: string[] = [];
  class PausesAfterEnd extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      events.push(`read:${line}`);
      if (String(line) !== "a") return;
      this.end();
      this.pauseReading();
      setTimeout(() => {
        events.push("resume");
        this.resumeReading();
      }, 300);
    }
    override onEnd() {
      events.push("end");
      // Kept open: nothing more can come or go, so the stream closes after it.
    }
    override onClose() {
      events.push("close");
    }
  }
  await endedBeforeTheRest(t, PausesAfterEnd, events);
  assert.deepEqual(events, ["read:a", "resume", "read:b", "read:c", "end", "close"]);
});

test("end() in an async onRead, then the peer's FIN while it awaits: onEnd still comes once it settles, then the close", async (t) => {
  const events: string[] = [];
  class EndsThenAwaits extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override async onRead(line: Buffer) {
      events.push(`read:${line}`);
      if (String(line) !== "a") return;
      this.end();
      await sleep(300);
      events.push("settled");
    }
    override onEnd() {
      events.push("end");
      this.close();
    }
    override onClose() {
      events.push("close");
    }
  }
  await endedBeforeTheRest(t, EndsThenAwaits, events);
  assert.deepEqual(events, ["read:a", "read:b", "read:c", "settled", "end", "close"]);
});
