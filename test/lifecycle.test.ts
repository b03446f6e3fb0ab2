/**
 * The order of a stream's events (SPEC §5): onConnect first and never
 * inside the call that caused it, no onRead before onConnect, onClose
 * exactly once and last, closing inside onClose a no-op.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { join } from "node:path";
import { ChannelStateError, Engine, Server, Stream } from "../src/index.js";
import type { Address } from "../src/index.js";
import type { Duplex } from "node:stream";
import { closedBeforeConnect, connect, freshEngine, listenLocal, tempDir, waitFor, sleep } from "./helpers.js";

class Recorder extends Stream {
  static log: string[] = [];
  override onConnect(): void {
    Recorder.log.push(`connect:${this.connected}`);
    this.readDelimiter = "\n";
  }
  override onRead(data: Buffer): void {
    Recorder.log.push(`read:${data.toString()}`);
    if (data.toString() === "bye") this.close();
  }
  override onClose(): void {
    Recorder.log.push(`close:${this.closed}:${this.connected}`);
    this.close(); // a no-op
    this.close(false); // a no-op
  }
}

test("server side: onConnect first (on a later tick), then onRead, then onClose once", async (t) => {
  const engine = freshEngine(t);
  Recorder.log = [];
  let constructedSync: string[] | null = null;
  class Probe extends Recorder {
    constructor(options?: ConstructorParameters<typeof Stream>[0]) {
      super(options);
      assert.equal(this.connected, true, "a server-made stream is connected when constructed");
      constructedSync = [...Recorder.log];
    }
  }
  const server = new Server(Probe, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  // Bytes sent at once must not reach onRead before onConnect.
  c.write("a\nb\nbye\nignored\n");
  await c.readToEnd();
  await waitFor(() => Recorder.log.some((l) => l.startsWith("close")));
  assert.deepEqual(constructedSync, [], "onConnect does not run inside the constructor");
  assert.deepEqual(Recorder.log, ["connect:true", "read:a", "read:b", "read:bye", "close:true:false"]);
  await sleep(20);
  assert.equal(Recorder.log.filter((l) => l.startsWith("close")).length, 1);
});

test("client side: connect() returns at once; onConnect later; ready() settles", async (t) => {
  const engine = freshEngine(t);
  class Echo extends Stream {
    override onRead(d: Buffer) {
      this.write(d);
    }
  }
  const port = await listenLocal(new Server(Echo, { engine }), t);
  const events: string[] = [];
  class Client extends Stream {
    override onConnect() {
      events.push("connect");
      this.write("ping");
    }
    override onRead(d: Buffer) {
      events.push(`read:${d}`);
      this.close();
    }
    override onClose() {
      events.push("close");
    }
  }
  const client = new Client({ engine });
  assert.equal(client.connected, false);
  assert.throws(() => client.write("x"), ChannelStateError, "write before connect");
  const ret = client.connect(["127.0.0.1", port]);
  assert.equal(ret, client, "connect() returns the stream");
  assert.equal(client.connecting, true);
  assert.equal(events.length, 0, "onConnect never runs inside connect()");
  assert.equal(await client.ready(), client);
  assert.equal(client.connected, true);
  await waitFor(() => events.includes("close"));
  assert.deepEqual(events, ["connect", "read:ping", "close"]);
  assert.equal(client.closed, true);
});

test("client side over a UNIX socket: onConnect is still asynchronous (Pants B7)", async (t) => {
  const engine = freshEngine(t);
  const dir = tempDir(t);
  const path = join(dir, "s.sock");
  const server = new Server(Stream, { engine }).listen(path);
  await server.ready();
  t.after(() => server.close());
  const events: string[] = [];
  class Client extends Stream {
    override onConnect() {
      events.push("connect");
    }
  }
  const client = new Client({ engine }).connect(path);
  assert.deepEqual(events, []);
  await client.ready();
  assert.deepEqual(events, ["connect"]);
  assert.equal(client.remoteAddress, path);
  client.close();
});

test("a stream can be closed before it connects: onClose only, ready() rejects", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const events: string[] = [];
  class Client extends Stream {
    override onConnect() {
      events.push("connect");
    }
    override onClose() {
      events.push("close");
    }
  }
  const client = new Client({ engine }).connect(["127.0.0.1", port]);
  client.close();
  await assert.rejects(client.ready(), ChannelStateError);
  await sleep(30);
  assert.deepEqual(events, ["close"]);
});

test("a server-made stream written to and closed with close(true) before its onConnect: the bytes still go, onClose only (no onWrite)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  const { Conn, ClosingServer } = closedBeforeConnect(events);
  const port = await listenLocal(new ClosingServer(Conn, { engine }), t);
  const c = await connect(port);
  assert.equal((await c.readToEnd()).toString(), "hello\n");
  await waitFor(() => events.includes("close"));
  await sleep(20);
  assert.deepEqual(events, ["close"]);
});

test("a closed stream rejects every operation with ChannelStateError", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const s = new Stream({ engine }).connect(["127.0.0.1", port]);
  await s.ready();
  s.close();
  assert.equal(s.closed, true);
  assert.throws(() => s.write("x"), ChannelStateError);
  assert.throws(() => s.flush(), ChannelStateError);
  assert.throws(() => s.writeFile("/etc/hostname"), ChannelStateError);
  assert.throws(() => s.writePacked([1], { format: "!B" }), ChannelStateError);
  assert.throws(() => s.startSSL({}), ChannelStateError);
  assert.throws(() => s.connect(["127.0.0.1", port]), ChannelStateError);
  s.close(); // twice is a no-op
});

test("connect() on a connected or connecting stream throws ChannelStateError", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const s = new Stream({ engine }).connect(["127.0.0.1", port]);
  assert.throws(() => s.connect(["127.0.0.1", port]), /connect\(\) called on active/);
  await s.ready();
  assert.throws(() => s.connect(["127.0.0.1", port]), ChannelStateError);
  s.close();
});

test("writes made while closing (close(true) pending) throw; onRead stops", async (t) => {
  const engine = freshEngine(t);
  let afterClose = 0;
  let threw: unknown = null;
  class Big extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      if (d.toString() === "go") {
        this.write(Buffer.alloc(8 << 20, 0x61));
        this.close(true);
        assert.equal(this.closing, true);
        try {
          this.write("more");
        } catch (err) {
          threw = err;
        }
      } else afterClose++;
    }
  }
  const port = await listenLocal(new Server(Big, { engine }), t);
  const c = await connect(port);
  c.write("go\nx\ny\n");
  const got = await c.readToEnd(10000);
  assert.equal(got.length, 8 << 20, "everything written before close(true) arrives");
  assert.ok(threw instanceof ChannelStateError);
  assert.equal(afterClose, 0, "no onRead after close(true)");
});

test("writable is true exactly when write() takes bytes: not before connecting, nor while connecting, closing or closed", async (t) => {
  const engine = freshEngine(t);
  const seen: Array<[string, boolean]> = [];
  class Probe extends Stream {
    override onConnect() {
      seen.push(["onConnect", this.writable]);
      this.write(Buffer.alloc(8 << 20, 0x61)); // more than the socket takes at once: close(true) drains
      this.close(true);
      seen.push(["closing", this.writable]);
      assert.throws(() => this.write("x"), ChannelStateError);
    }
    override onClose() {
      seen.push(["onClose", this.writable]);
    }
  }
  const port = await listenLocal(new Server(Probe, { engine }), t);
  const client = new Stream({ engine });
  assert.equal(client.writable, false, "before connect()");
  assert.throws(() => client.write("x"), ChannelStateError);
  client.connect(["127.0.0.1", port]);
  assert.equal(client.writable, false, "while connecting");
  await client.ready();
  assert.equal(client.writable, true, "connected");
  client.write("hello\n");
  await waitFor(() => seen.length === 3, 10_000, "the server's onClose");
  assert.deepEqual(seen, [
    ["onConnect", true],
    ["closing", false],
    ["onClose", false],
  ]);
  client.close(false);
  assert.equal(client.writable, false, "closed");
});

test("a socket option that is not a stream socket is refused with TypeError (Pants test_stream_constructor_with_invalid_socket)", async (t) => {
  const engine = freshEngine(t);
  const udp = dgram.createSocket("udp4");
  t.after(() => udp.close());
  for (const bad of [udp, {}, 42, "socket"]) {
    assert.throws(() => new Stream({ engine, socket: bad as never }), (err: Error) => err instanceof TypeError && /socket option/.test(err.message), String(bad));
  }
  assert.equal(engine.channels.size, 0, "a refused socket leaves nothing registered");
});

test("a stream that never connected: no fileno; close() still calls onClose once, and it cannot connect after (Pants on_close for every close)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class C extends Stream {
    override onClose() {
      events.push(`close:${this.connected}`);
      this.close(); // a no-op
    }
  }
  const s = new C({ engine });
  assert.equal(s.fileno, null);
  assert.equal(s.connected, false);
  assert.equal(s.closed, false);
  s.close();
  assert.equal(s.closed, true);
  await sleep(20);
  assert.deepEqual(events, ["close:false"]);
  assert.throws(() => s.connect(["127.0.0.1", 1]), /connect\(\) called on closed/);
  assert.throws(() => s.write("x"), ChannelStateError);
  s.close(); // twice is a no-op
  await sleep(10);
  assert.equal(events.length, 1);
});

test("a server-made stream whose flushed write drains before its onConnect gets that onWrite after onConnect", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  let made = 0;
  class Conn extends Stream {
    readonly id = ++made;
    override onConnect() {
      events.push(`${this.id}:connect`);
    }
    override onWrite() {
      events.push(`${this.id}:write`);
    }
  }
  class Greeting extends Server {
    override onAccept(socket: Duplex, address: Address) {
      // In the same turn an open connection writes first (the native
      // transport's write completions are then due before the new stream's
      // onConnect tick), and the new one greets at once.
      [...this.channels.values()].at(-1)?.write("news\n", true);
      super.onAccept(socket, address);
      [...this.channels.values()].at(-1)!.write("hello\n", true);
    }
  }
  const port = await listenLocal(new Greeting(Conn, { engine }), t);
  const first = await connect(port);
  t.after(() => first.destroy());
  await waitFor(() => events.includes("1:write"), 5000, "the first connection's onWrite");
  const second = await connect(port);
  t.after(() => second.destroy());
  assert.equal(await second.readText(6), "hello\n");
  await waitFor(() => events.includes("2:write"), 2000, "the second connection's onWrite");
  assert.deepEqual(events.filter((e) => e.startsWith("2:")), ["2:connect", "2:write"]);
});

test("an idle timeout due before onConnect (a manual clock advanced from onAccept) comes after onConnect", async (t) => {
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const events: string[] = [];
  class Conn extends Stream {
    override onConnect() {
      events.push("connect");
    }
    override onTimeout() {
      events.push("timeout");
      super.onTimeout(); // closes
    }
    override onClose() {
      events.push("close");
    }
  }
  class Advancing extends Server {
    override onAccept(socket: Duplex, address: Address) {
      super.onAccept(socket, address);
      this.engine.advance(1000); // past idleTimeoutMs, before the onConnect tick
    }
  }
  const port = await listenLocal(new Advancing(Conn, { engine, idleTimeoutMs: 100 }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await c.readToEnd();
  await waitFor(() => events.includes("close"), 5000, "the close");
  assert.deepEqual(events, ["connect", "timeout", "close"]);
});
