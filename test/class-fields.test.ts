/**
 * Class fields over Stream's and Server's accessors. JavaScript defines a
 * class field on the instance, in front of the base class's setter:
 * `class Echo extends Stream { readDelimiter = "\n" }` would frame nothing,
 * silently. pants-ts sets each such field through its setter (its checks
 * included) before it reads it, and warns once per class (TypeScript
 * reports the field as error TS2610, hence the `@ts-expect-error`s: this is
 * the JavaScript idiom under test).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Server, Stream } from "../src/index.js";
import { captureLogs, connect, freshEngine, listenLocal, waitFor } from "./helpers.js";

type Logs = ReturnType<typeof captureLogs>;

/** The class-field warnings logged so far, as "Class: field, field". */
function fieldWarnings(logs: Logs): string[] {
  return logs
    .filter((l) => l.level === "warn" && l.msg.includes(" as class field"))
    .map((l) => {
      const { class: name, fields } = l.obj as { class: string; fields: string[] };
      return `${name}: ${fields.join(", ")}`;
    });
}

test("a server's connection class declaring readDelimiter, bufferSize and idleTimeout as class fields: each takes effect through its setter; one warning per class", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const frames: string[] = [];
  const closedIdle: boolean[] = [];
  class Fielded extends Stream {
    // @ts-expect-error TS2610: the JavaScript idiom under test
    readDelimiter = "\n";
    // @ts-expect-error TS2610
    bufferSize = 64;
    // @ts-expect-error TS2610
    idleTimeout = 300;
    count = 0; // a field of the class's own, after them: untouched
    override onRead(line: Buffer) {
      this.count++;
      frames.push(`${line.toString()}#${this.count}`);
    }
    override onTimeout() {
      closedIdle.push(!Object.hasOwn(this, "readDelimiter") && this.readDelimiter === "\n" && this.bufferSize === 64);
      this.close();
    }
  }
  const port = await listenLocal(new Server(Fielded, { engine }), t);
  const a = await connect(port);
  const b = await connect(port);
  t.after(() => {
    a.destroy();
    b.destroy();
  });
  a.socket.write("one\ntwo\n");
  b.socket.write("three\n");
  await waitFor(() => frames.length === 3, 5000, "three frames");
  assert.deepEqual(frames.sort(), ["one#1", "three#1", "two#2"]);
  // bufferSize 64: a line longer than that is an overflow (the stream closes).
  const c = await connect(port);
  t.after(() => c.destroy());
  c.socket.write("x".repeat(100));
  await waitFor(() => c.closed, 5000, "the long line to close the stream");
  // idleTimeout 300 ms: a and b idle out.
  await waitFor(() => closedIdle.length === 2, 5000, "both idle streams to time out");
  assert.deepEqual(closedIdle, [true, true]);
  assert.deepEqual(fieldWarnings(logs), ["Fielded: readDelimiter, bufferSize, idleTimeout"]);
});

test("class fields on a client stream take effect at connect(), and on a stream over a socket of one's own before onConnect", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  class Greeter extends Stream {
    override onConnect() {
      this.write("hello\nworld\n");
    }
  }
  const port = await listenLocal(new Server(Greeter, { engine }), t);
  const got: string[] = [];
  class Client extends Stream {
    // @ts-expect-error TS2610
    readDelimiter = "\n";
    override onRead(line: Buffer) {
      got.push(`client:${line.toString()}`);
    }
  }
  const client = new Client({ engine }).connect(["127.0.0.1", port]);
  t.after(() => client.close());
  class Adopted extends Stream {
    // @ts-expect-error TS2610
    readDelimiter = "\n";
    override onRead(line: Buffer) {
      got.push(`adopted:${line.toString()}`);
    }
  }
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => {});
  const adopted = new Adopted({ engine, socket: sock });
  t.after(() => adopted.close());
  await waitFor(() => got.length === 4, 5000, "four lines");
  assert.deepEqual(got.sort(), ["adopted:hello", "adopted:world", "client:hello", "client:world"]);
});

test("a class field a setter refuses: the accepted stream is closed and the error logged and counted; on a client, connect() throws it; on a Server, listen() does", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const events: string[] = [];
  class Bad extends Stream {
    // @ts-expect-error TS2610
    bufferSize = -1;
    override onConnect() {
      events.push("connect");
    }
    override onClose() {
      events.push("close");
    }
  }
  const server = new Server(Bad, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await waitFor(() => events.length > 0 && c.closed, 5000, "the stream to close");
  assert.deepEqual(events, ["close"]);
  assert.equal(server.stats.errorsByKind.handler, 1);
  assert.ok(logs.some((l) => l.level === "error" && /class field of Bad .*refused.*bufferSize/s.test(l.msg)), JSON.stringify(logs.map((l) => l.msg)));

  const client = new Bad({ engine });
  assert.throws(() => client.connect(["127.0.0.1", port]), RangeError);
  assert.equal(client.connecting, false);
  client.close();

  class Capped extends Server {
    // @ts-expect-error TS2610
    maxConnections = -1;
  }
  assert.throws(() => new Capped(Stream, { engine }).listen(["127.0.0.1", 0]), RangeError);
});

test("a Server subclass declaring maxConnections as a class field: the limit holds", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class One extends Server {
    // @ts-expect-error TS2610
    maxConnections = 1;
  }
  const server = new One(Stream, { engine });
  const port = await listenLocal(server, t);
  const a = await connect(port);
  t.after(() => a.destroy());
  await waitFor(() => server.stats.accepted === 1, 5000, "the first connection");
  const b = await connect(port);
  t.after(() => b.destroy());
  await waitFor(() => b.closed, 5000, "the second connection to be turned away");
  assert.equal(server.stats.rejected, 1);
  assert.equal(server.maxConnections, 1);
  assert.deepEqual(fieldWarnings(logs), ["One: maxConnections"]);
});

test("a class field over a read-only getter (bytesRead) is left alone and warned of, once per class", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Counting extends Stream {
    // @ts-expect-error TS2610
    bytesRead = 0;
  }
  const port = await listenLocal(new Server(Counting, { engine }), t);
  const a = await connect(port);
  const b = await connect(port);
  t.after(() => {
    a.destroy();
    b.destroy();
  });
  await waitFor(() => fieldWarnings(logs).length > 0, 5000, "the warning");
  await waitFor(() => engine.stats.accepted >= 2, 5000, "both connections");
  assert.deepEqual(fieldWarnings(logs), ["Counting: bytesRead"]);
  assert.ok(logs.some((l) => l.msg.includes("read-only getter") && l.msg.includes("rename it")));
});

test("a stream over a socket of one's own whose onClose is an arrow-function field still knows the peer's address after the peer's reset", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const peer = net.createServer((s) => setTimeout(() => s.resetAndDestroy(), 50));
  await new Promise<void>((r) => peer.listen(0, "127.0.0.1", () => r()));
  t.after(() => peer.close());
  const port = (peer.address() as net.AddressInfo).port;
  const seen: unknown[] = [];
  class Watcher extends Stream {
    override onClose = (): void => {
      seen.push(this.remoteAddress);
    };
  }
  const sock = net.connect(port, "127.0.0.1");
  await new Promise((r) => sock.once("connect", r));
  new Watcher({ engine, socket: sock });
  await waitFor(() => seen.length === 1, 5000, "onClose");
  assert.deepEqual(seen, [["127.0.0.1", port]]);
});
