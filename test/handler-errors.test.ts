/**
 * Handler safety (SPEC §4): a throw or a rejected promise in any handler
 * goes to onError, whose default logs and closes only that channel; an
 * exception in onError itself is logged; the process and the other
 * connections never notice.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Duplex } from "node:stream";
import { spawnSync } from "node:child_process";
import { NetStruct, Server, Stream, Struct } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";
import type { Address, Decoder, ReadDelimiter, StreamOptions } from "../src/index.js";
import { captureLogs, captureStderr, connect, freshEngine, listenLocal, sleep, waitFor } from "./helpers.js";

class Fragile extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override async onRead(line: Buffer) {
    const text = line.toString();
    if (text === "throw") throw new Error("sync boom");
    if (text === "reject") {
      await Promise.resolve();
      throw new Error("async boom");
    }
    if (text === "string") throw "not an error";
    this.write(`${text}\n`);
  }
}

for (const kind of ["throw", "reject", "string"]) {
  test(`onRead that does "${kind}": only that connection closes, the error is logged`, async (t) => {
    const logs = captureLogs(t);
    const engine = freshEngine(t);
    const server = new Server(Fragile, { engine });
    const port = await listenLocal(server, t);
    const bad = await connect(port);
    const badPort = bad.socket.localPort;
    const good = await connect(port);
    bad.write(`${kind}\n`);
    await bad.readToEnd();
    good.write("still fine\n");
    assert.equal(await good.readText(11), "still fine\n");
    assert.equal(server.listening, true);
    const errors = logs.filter((l) => l.level === "error");
    assert.equal(errors.length, 1, JSON.stringify(logs.map((l) => l.msg)));
    // Which client: the name's descriptor number is reused once it closes, the peer's address is not.
    const fields = errors[0]!.obj as { channel?: string; peer?: string };
    assert.match(String(fields.channel), /^Fragile /);
    assert.equal(fields.peer, `127.0.0.1:${badPort}`);
    assert.ok(server.stats.errors >= 1);
    good.destroy();
  });
}

test("a custom onError receives the exception and may keep the connection open", async (t) => {
  const engine = freshEngine(t);
  const seen: string[] = [];
  class Tolerant extends Fragile {
    override onError(err: Error) {
      seen.push(err.message);
    }
  }
  const port = await listenLocal(new Server(Tolerant, { engine }), t);
  const c = await connect(port);
  c.write("throw\nreject\nok\n");
  assert.equal(await c.readText(3), "ok\n");
  await waitFor(() => seen.length === 2);
  assert.deepEqual(seen.sort(), ["async boom", "sync boom"]);
  c.destroy();
});

test("a thrown value with no string form (no prototype, a throwing toString) reaches onError wrapped", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const seen: Error[] = [];
  const values: Record<string, unknown> = {
    bare: Object.create(null),
    evil: {
      toString(): string {
        throw new Error("no string");
      },
    },
  };
  class Odd extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      const [how, name] = line.toString().split(" ");
      if (how === "sync") throw values[name!];
      if (how === "async") return Promise.reject(values[name!]);
      this.write(`${line}\n`);
      return undefined;
    }
    override onError(err: Error) {
      seen.push(err);
    }
  }
  const port = await listenLocal(new Server(Odd, { engine }), t);
  const c = await connect(port);
  c.write("sync bare\nasync bare\nsync evil\nasync evil\nok\n");
  assert.equal(await c.readText(3), "ok\n");
  await waitFor(() => seen.length === 4, 3000, "four errors");
  for (const err of seen) assert.match(err.message, /threw a non-Error value/);
  assert.equal(seen.filter((e) => e.cause === values.bare).length, 2);
  assert.equal(seen.filter((e) => e.cause === values.evil).length, 2);
  c.destroy();
});

test("a toString() override that throws does not break the error paths that name the channel: logged under the class name", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Unnameable extends Fragile {
    override toString(): string {
      throw new Error("no name");
    }
    override onClose(): void {
      throw new Error("onClose boom");
    }
  }
  let accepts = 0;
  class UnnameableServer extends Server<Unnameable> {
    override toString(): string {
      throw new Error("no server name");
    }
    override onAccept(socket: Duplex, address: Address): void {
      if (++accepts === 2) throw new Error("onAccept boom");
      super.onAccept(socket, address);
    }
  }
  const server = new UnnameableServer(Unnameable, { engine });
  const port = await listenLocal(server, t);
  const bad = await connect(port);
  bad.write("throw\n"); // onRead throws, the default onError logs and closes, onClose throws
  await bad.readToEnd();
  const refused = await connect(port); // onAccept throws: the server's default onError logs
  await refused.readToEnd();
  const good = await connect(port);
  good.write("still fine\n");
  assert.equal(await good.readText(11), "still fine\n");
  good.destroy();
  await waitFor(() => server.stats.closed === 2, 2000, "both streams closed (their onClose threw)");
  await waitFor(() => logs.filter((l) => l.level === "error").length >= 4, 2000, "four errors logged");
  const text = logs.map((l) => l.msg).join("\n");
  assert.match(text, /Unnameable \(its toString\(\) threw\)/);
  assert.match(text, /UnnameableServer \(its toString\(\) threw\)/);
});

test("an onError that throws is logged, and nothing else breaks", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Worse extends Fragile {
    override onError(): void {
      throw new Error("onError boom");
    }
  }
  const server = new Server(Worse, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  c.write("throw\nnext\n");
  assert.equal(await c.readText(5), "next\n", "the next frame is still delivered");
  await waitFor(() => logs.some((l) => l.level === "error"));
  assert.ok(logs.some((l) => /onError/.test(l.msg)));
  c.destroy();
});

test("a non-Error thrown by a constructor, an onError or a timer is in the log line: wrapped in an Error, shown by the default logger", async (t) => {
  // The default logger (stderr) printed an err only if it was an Error: a
  // string or object thrown was logged as a bare "... threw." line.
  const stderr = captureStderr(t);
  const engine = freshEngine(t);
  class Unbuildable extends Stream {
    constructor(options?: StreamOptions) {
      super(options);
      throw "ctor string value";
    }
  }
  class BadOnError extends Stream {
    override onConnect() {
      throw new Error("first");
    }
    override onError() {
      throw { what: "object value" };
    }
  }
  const a = await connect(await listenLocal(new Server(Unbuildable, { engine }), t));
  const b = await connect(await listenLocal(new Server(BadOnError, { engine }), t));
  engine.callback(() => {
    throw "timer string value";
  });
  await waitFor(() => /ctor string value/.test(stderr.text()) && /object value/.test(stderr.text()) && /timer string value/.test(stderr.text()), 3000, `the three values in ${JSON.stringify(stderr.text())}`);
  // A pino-style logger gets an Error as err, whose cause is the value thrown.
  const logs = captureLogs(t);
  engine.callback(() => {
    throw 42;
  });
  await waitFor(() => logs.length > 0);
  const err = (logs[0]!.obj as { err: unknown }).err;
  assert.ok(err instanceof Error, String(err));
  assert.equal(err.cause, 42);
  a.destroy();
  b.destroy();
});

test("a peer's bytes in a handler's error message cannot forge a line of the default logger's stderr, nor send escapes to the terminal", async (t) => {
  // A handler that quotes its input in an error (a common parser idiom)
  // puts the peer's bytes in the message; the default logger wrote them
  // raw: a newline there began a line of the peer's choosing.
  const stderr = captureStderr(t);
  const engine = freshEngine(t);
  class Parser extends Stream {
    override onConnect() {
      this.readDelimiter = "\0";
    }
    override onRead(command: Buffer) {
      throw new Error(`Unknown command ${command.toString("utf8")}`);
    }
  }
  const c = await connect(await listenLocal(new Server(Parser, { engine }), t));
  c.write("x\r\npants-ts error: forged line\n    at forged frame\n\u001b[2J\u009b0m\u2028end\0");
  await c.readToEnd();
  await waitFor(() => stderr.text().includes("Unknown command"), 3000, "the handler's error on stderr");
  const text = stderr.text();
  assert.ok(!/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]/.test(text), JSON.stringify(text));
  for (const line of text.split("\n").filter((l) => l !== "")) {
    const ok = line.startsWith("pants-ts ") || line.startsWith("Error: Unknown command") || /^\s+at \S/.test(line);
    assert.ok(ok, `a line that is neither a record, the error nor a stack frame: ${JSON.stringify(line)}`);
    assert.ok(!line.startsWith("pants-ts error: forged") && !line.includes("at forged frame\u0020") && !/^\s+at forged/.test(line), line);
  }
  assert.match(text, /Unknown command x\\r\\npants-ts error: forged line\\n {4}at forged frame\\n\\u001b\[2J\\u009b0m\\u2028end\n/);
});

test("every handler is guarded: onConnect, onClose, onWrite throwing never crash", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  let closes = 0;
  class Bad extends Stream {
    override onConnect() {
      this.write("hello\n");
      throw new Error("connect boom");
    }
    override onWrite() {
      throw new Error("write boom");
    }
    override onClose() {
      closes++;
      throw new Error("close boom");
    }
  }
  const server = new Server(Bad, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  await c.readToEnd();
  await waitFor(() => closes === 1);
  assert.equal(server.listening, true);
  const again = await connect(port);
  await again.readToEnd();
  await waitFor(() => closes === 2);
});

test("onClose stays the last event when it throws or rejects: logged and counted, not passed to onError", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const events: string[] = [];
  class LastWords extends Stream {
    override onConnect() {
      this.close();
    }
    override onClose() {
      events.push("close");
      if (events.length === 1) throw new Error("close boom");
      return Promise.reject(new Error("close rejected"));
    }
    override onError(err: Error) {
      events.push(`error: ${err.message}`);
    }
  }
  const server = new Server(LastWords, { engine });
  const port = await listenLocal(server, t);
  for (const message of ["close boom", "close rejected"]) {
    const c = await connect(port);
    await c.readToEnd();
    await waitFor(() => logs.some((l) => (l.obj as { err?: Error }).err?.message === message), 3000, `the log of "${message}"`);
  }
  await sleep(50);
  assert.deepEqual(events, ["close", "close"]);
  assert.equal(server.stats.errorsByKind["handler"], 2);
});

test("an async error handler (onReadError, onConnectError) that rejects after the close is logged: onClose stays last", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const events: string[] = [];
  class Sulky extends Stream {
    override async onReadError(): Promise<void> {
      events.push("readError");
      throw new Error("read handler rejected");
    }
    override async onConnectError(): Promise<void> {
      events.push("connectError");
      throw new Error("connect handler rejected");
    }
    override onError(err: Error) {
      events.push(`error: ${err.message}`);
    }
    override onClose() {
      events.push("close");
    }
  }
  const server = new Server(Sulky, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1);
  c.socket.resetAndDestroy();
  await waitFor(() => logs.some((l) => (l.obj as { err?: Error }).err?.message === "read handler rejected"), 3000, "the read handler's log");
  server.close();
  const client = new Sulky({ engine }).connect(["127.0.0.1", port]);
  await client.ready().catch(() => {});
  await waitFor(() => logs.some((l) => (l.obj as { err?: Error }).err?.message === "connect handler rejected"), 3000, "the connect handler's log");
  await sleep(50);
  assert.deepEqual(events, ["readError", "close", "connectError", "close"]);
});

test("an async onRead that rejects for each of 2000 pipelined frames logs one error line for that client, not one per frame", async (t) => {
  // Every frame of the read is delivered before the first rejection's
  // onError closes the stream; each later rejection was an error line of
  // its own (with its stack): one client could write 10 000 error records.
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Strict extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override async onRead(line: Buffer) {
      await Promise.resolve();
      throw new Error(`Unknown command ${line.toString()}`);
    }
  }
  const server = new Server(Strict, { engine });
  const c = await connect(await listenLocal(server, t));
  c.write("x\n".repeat(2000));
  await c.readToEnd();
  await waitFor(() => logs.filter((l) => l.msg.includes("Strict")).length >= 2000, 5000, "a record of each failure");
  const errors = logs.filter((l) => l.level === "error");
  assert.equal(errors.length, 1, errors.map((l) => l.msg).join("\n"));
  assert.match(errors[0]!.msg, /^Exception raised in a handler of Strict/);
  assert.equal(logs.filter((l) => l.level === "debug" && l.msg.includes("failed again after it closed")).length, 1999);
  assert.equal(server.stats.errors, 2000, "each failure is counted");
});

test("a connection class whose constructor throws drops that connection only", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  let n = 0;
  class Flaky extends Stream {
    constructor(options?: ConstructorParameters<typeof Stream>[0]) {
      super(options);
      if (++n === 1) throw new Error("constructor boom");
    }
    override onConnect() {
      this.write("welcome\n");
    }
  }
  const server = new Server(Flaky, { engine });
  const port = await listenLocal(server, t);
  const first = await connect(port);
  await first.readToEnd();
  const second = await connect(port);
  assert.equal(await second.readText(8), "welcome\n");
  assert.equal(server.listening, true);
  assert.equal(logs.filter((l) => l.level === "error").length, 1);
  second.destroy();
});

test("a connection class whose constructor does not pass its options to super() (constructor() { super(); }): an error naming the fix, the connection closed rather than left unanswered; memoryPeer() throws it", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Forgetful extends Stream {
    lines: string[];
    constructor() {
      super();
      this.lines = [];
    }
    override onConnect() {
      this.write("welcome\n");
    }
  }
  const server = new Server(Forgetful, { engine });
  const port = await listenLocal(server, t);
  const client = await connect(port);
  t.after(() => client.socket.destroy());
  assert.equal((await client.readToEnd(2000)).length, 0);
  const errors = logs.filter((l) => l.level === "error");
  assert.equal(errors.length, 1);
  const err = (errors[0]!.obj as { err: Error }).err;
  assert.ok(err instanceof TypeError);
  assert.match(err.message, /constructor of Forgetful did not pass its options to super\(\).*constructor\(options\) \{ super\(options\);/);
  assert.equal(server.channels.size, 0);
  assert.equal(server.stats.errors, 1);
  assert.equal(server.listening, true);
  assert.throws(() => memoryPeer(Forgetful), /constructor of Forgetful did not pass its options to super\(\)/);
});

test("a Server handler that throws never stops the server; a socket its onAccept dropped is closed", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  let accepts = 0;
  class Picky extends Server {
    override onListen() {
      throw new Error("onListen boom");
    }
    override onAccept(socket: Duplex, address: Address) {
      const n = ++accepts;
      if (n === 1) throw new Error("onAccept boom");
      if (n === 2) return Promise.reject(new Error("onAccept rejected"));
      super.onAccept(socket, address);
    }
  }
  class Hello extends Stream {
    override onConnect() {
      this.write("welcome\n");
    }
  }
  const server = new Picky(Hello, { engine });
  const port = await listenLocal(server, t);
  await waitFor(() => logs.some((l) => /onListen boom/.test(String((l.obj as { err?: Error }).err?.message))));
  assert.equal(server.listening, true, "onListen threw: still listening");
  // The first connection's onAccept threw before any stream took the socket: the guard closes it.
  const dropped = await connect(port);
  t.after(() => dropped.destroy());
  assert.equal((await dropped.readToEnd(3000)).length, 0);
  assert.equal(server.listening, true, "onAccept threw: still listening");
  // The second one's onAccept returned a rejected promise: logged, its socket closed too, the server still serves.
  const second = await connect(port);
  t.after(() => second.destroy());
  assert.equal((await second.readToEnd(3000)).length, 0);
  await waitFor(() => logs.some((l) => /onAccept rejected/.test(String((l.obj as { err?: Error }).err?.message))));
  const third = await connect(port);
  assert.equal(await third.readText(8), "welcome\n");
  assert.equal(server.listening, true);
  third.destroy();
});

test("an onAccept returning a thenable whose then() throws: the error goes to onError, the socket is closed, its place under maxConnections is free", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const escaped: unknown[] = [];
  const onEscaped = (e: unknown) => escaped.push(e);
  process.on("uncaughtException", onEscaped);
  t.after(() => process.off("uncaughtException", onEscaped));
  let accepts = 0;
  class Odd extends Server {
    override onAccept(socket: Duplex, address: Address): void {
      if (++accepts > 1) return super.onAccept(socket, address);
      const thenable = {
        then(): never {
          throw new Error("then boom");
        },
      };
      return thenable as unknown as void;
    }
  }
  class Hello extends Stream {
    override onConnect() {
      this.write("welcome\n");
    }
  }
  const server = new Odd(Hello, { engine, maxConnections: 1 });
  const port = await listenLocal(server, t);
  const dropped = await connect(port);
  t.after(() => dropped.destroy());
  assert.equal((await dropped.readToEnd(3000)).length, 0);
  await waitFor(() => logs.some((l) => /then boom/.test(String((l.obj as { err?: Error }).err?.message))));
  assert.deepEqual(escaped, []);
  const next = await connect(port);
  assert.equal(await next.readText(8), "welcome\n");
  next.destroy();
});

test("an onRead returning a thenable whose then() throws, under every scan (line, size, Struct, NetStruct, Decoder): onError gets it, the next frames still come, nothing escapes", async (t) => {
  const escaped: unknown[] = [];
  const onEscaped = (e: unknown) => escaped.push(e);
  process.on("uncaughtException", onEscaped);
  t.after(() => process.off("uncaughtException", onEscaped));
  const engine = freshEngine(t);
  const struct = new Struct("!H");
  const netstruct = new NetStruct("!B$");
  const decoder: Decoder = (buf, start) =>
    buf.length - start < 1 + buf[start]! ? null : { consumed: 1 + buf[start]!, args: [buf.subarray(start + 1, start + 1 + buf[start]!)] };
  const kinds: [string, ReadDelimiter, Buffer][] = [
    ["line", "\n", Buffer.from("a\nb\nc\n")],
    ["size", 1, Buffer.from("abc")],
    ["Struct", struct, Buffer.concat([struct.pack(1), struct.pack(2), struct.pack(3)])],
    ["NetStruct", netstruct, Buffer.concat(["a", "b", "c"].map((x) => netstruct.pack(Buffer.from(x))))],
    ["Decoder", decoder, Buffer.from("\x01a\x01b\x01c", "latin1")],
  ];
  for (const [kind, delimiter, bytes] of kinds) {
    const seen: string[] = [];
    class Odd extends Stream {
      override onConnect() {
        this.readDelimiter = delimiter;
      }
      override onRead(frame: unknown) {
        seen.push(`read ${String(frame)}`);
        return { then(): never { throw new Error("then boom"); } } as unknown as void;
      }
      override onError(err: Error) {
        seen.push(`error ${err.message}`);
      }
    }
    const server = new Server(Odd, { engine });
    const port = await listenLocal(server, t);
    const c = await connect(port);
    c.write(bytes);
    await waitFor(() => seen.length >= 6, 3000, `${kind}: ${seen.join(", ")}`);
    assert.deepEqual(seen.filter((e) => e.startsWith("error")), ["error then boom", "error then boom", "error then boom"], kind);
    assert.equal(seen.filter((e) => e.startsWith("read")).length, 3, kind);
    c.destroy();
    server.close();
  }
  assert.deepEqual(escaped, []);
});

test("no unhandled rejection or uncaught exception escapes from handlers", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const escaped: unknown[] = [];
  const onUnhandled = (e: unknown) => escaped.push(e);
  process.on("unhandledRejection", onUnhandled);
  process.on("uncaughtException", onUnhandled);
  t.after(() => {
    process.off("unhandledRejection", onUnhandled);
    process.off("uncaughtException", onUnhandled);
  });
  const port = await listenLocal(new Server(Fragile, { engine }), t);
  for (let i = 0; i < 10; i++) {
    const c = await connect(port);
    c.write(i % 2 ? "reject\n" : "throw\n");
    await c.readToEnd();
  }
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(escaped, []);
});

test("a nextTick a handler queued throws after a peer's reset, async hooks on: the process 'uncaughtException' handler gets it, the process lives", () => {
  // In a child: on the native transport this aborted the process (SIGABRT, execution_async_id() == 0).
  const r = spawnSync(process.execPath, ["--import", "tsx", "test/fixtures/tick-throw-after-reset.ts"], { encoding: "utf8", timeout: 20_000, env: process.env });
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr.slice(-600)}`);
  assert.equal(r.status, 0, r.stderr.slice(-600));
  assert.deepEqual(r.stdout.trim().split("\n"), ["caught thrown in a nextTick after a reset", "survived"]);
});

test("the default onError closes without flushing: a reply queued for a peer that does not read is dropped, the stream closed at once", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const streams: Stream[] = [];
  class WritesThenThrows extends Stream {
    override onRead() {
      streams.push(this);
      this.write(Buffer.alloc(64 << 20, 0x61));
      throw new Error("after a big write");
    }
  }
  const port = await listenLocal(new Server(WritesThenThrows, { engine }), t);
  const c = await connect(port);
  c.socket.pause(); // reads nothing: a flushing close would wait for it
  c.write("go");
  await waitFor(() => streams.length === 1);
  assert.equal(streams[0]!.closed, true, "closed by the default onError, not left closing");
  c.socket.resume();
  const got = await c.readToEnd(10000);
  assert.ok(got.length < 64 << 20, `received ${got.length} bytes of 64 MiB`);
});

test("a logger that throws (or rejects) never ends the process: its records go to stderr, its failure is reported once, other connections are served", () => {
  const r = spawnSync(process.execPath, ["--import", "tsx", "test/fixtures/throwing-logger.ts"], { encoding: "utf8", timeout: 20_000, env: process.env });
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr.slice(-600)}`);
  assert.equal(r.status, 0, r.stderr.slice(-1200));
  assert.deepEqual(r.stdout.trim().split("\n"), ['boom got ""', 'ok got "echo hi\\n"', "logger called several times", "survived"]);
  // The records the logger failed on, written by the default logger instead.
  assert.match(r.stderr, /handler boom/);
  assert.match(r.stderr, /timer boom/);
  assert.match(r.stderr, /ECONNREFUSED/);
  const reports = r.stderr.match(/The logger given to setLogger\(\) failed/g) ?? [];
  assert.equal(reports.length, 1, r.stderr.slice(-1200));
  assert.match(r.stderr, /the logger's error\(\) broke/);
});
