/**
 * Explicit resource management and cancellation: `await using` a server
 * or a stream closes it, and an AbortSignal cancels a pending connect or
 * ends a shutdown's wait, its listener removed once the operation is done.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { getEventListeners } from "node:events";
import { AbortError, ChannelStateError, ErrorCode, Server, Stream } from "../src/index.js";
import { connect, freshEngine, listenLocal, sleep, waitFor } from "./helpers.js";

class Echo extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(d: Buffer) {
    this.write(`${d}\n`);
  }
}

/** A client that records its events. */
function recorder(): { Client: typeof Stream; events: string[] } {
  const events: string[] = [];
  class Client extends Stream {
    override onConnect() {
      events.push("connect");
    }
    override onConnectError() {
      events.push("connectError");
    }
    override onClose() {
      events.push("close");
    }
  }
  return { Client, events };
}

/** A TCP server that accepts and never answers: a TLS client's handshake waits on it. */
async function silentServer(t: { after(fn: () => void): void }): Promise<{ port: number; sockets: Set<net.Socket> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
    s.resume(); // reads (and drops) the ClientHello, and so sees the client's FIN
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, sockets };
}

function assertAbortError(err: unknown, reason: unknown): true {
  assert.ok(err instanceof AbortError, `an AbortError, got ${String(err)}`);
  assert.equal(err.name, "AbortError");
  assert.equal(err.code, "ABORT_ERR");
  assert.equal(err.code, ErrorCode.ABORT);
  assert.equal(err.cause, reason);
  return true;
}

test("await using a server shuts it down when the block ends: the port refuses, its connections closed", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  let port = 0;
  let closes = 0;
  class S extends Server {
    override onClose() {
      closes++;
      super.onClose();
    }
  }
  const client = await (async () => {
    await using server = new S(Echo, { engine });
    port = await listenLocal(server);
    const c = await connect(port);
    await waitFor(() => server.channels.size === 1);
    return c;
  })();
  assert.equal(closes, 1, "onClose ran before the block's end resolved");
  await client.readToEnd();
  await assert.rejects(connect(port), /ECONNREFUSED/);
});

test("Server [Symbol.asyncDispose]: idempotent, fine on a server that never listened or has closed", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const never = new Server(Echo, { engine });
  const first = never[Symbol.asyncDispose]();
  assert.equal(never[Symbol.asyncDispose](), first, "the same promise");
  await first;
  assert.equal(never.closed, true);
  const closed = new Server(Echo, { engine });
  await listenLocal(closed);
  closed.close();
  await closed[Symbol.asyncDispose]();
  assert.equal(closed.closed, true);
});

test("[Symbol.asyncDispose] passed on by itself: a TypeError whose suggested call is valid code", () => {
  const cases: Array<[() => unknown, RegExp]> = [
    [() => Server.prototype[Symbol.asyncDispose].call(process as never), /not on a Server: .*pass a function that calls it: \(\) => server\[Symbol\.asyncDispose\]\(\)\.$/],
    [() => Stream.prototype[Symbol.asyncDispose].call({} as never), /not on a Stream: .*pass a function that calls it: \(\) => stream\[Symbol\.asyncDispose\]\(\)\.$/],
  ];
  for (const [call, message] of cases) {
    assert.throws(call, (err: unknown) => {
      assert.ok(err instanceof TypeError);
      assert.match(err.message, /^\[Symbol\.asyncDispose\]\(\) was called on /);
      assert.match(err.message, message);
      return true;
    });
  }
});

test("await using a client stream closes it and resolves once onClose has run", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine });
  const port = await listenLocal(server, t);
  const { Client, events } = recorder();
  {
    await using client = new Client({ engine }).connect(["127.0.0.1", port]);
    await client.ready();
    await waitFor(() => server.channels.size === 1);
  }
  assert.deepEqual(events, ["connect", "close"]);
  await waitFor(() => server.channels.size === 0, 5000, "the server's side to close");
  // Again, on a stream that never connected, and a second call.
  const idle = new Client({ engine });
  await idle[Symbol.asyncDispose]();
  assert.equal(idle.closed, true);
  await idle[Symbol.asyncDispose]();
});

test("connect({ signal }): aborted while the TCP connect is under way, the stream closes and ready() rejects with AbortError", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine });
  const port = await listenLocal(server, t);
  const { Client, events } = recorder();
  const ac = new AbortController();
  const client = new Client({ engine }).connect(["127.0.0.1", port], { signal: ac.signal });
  assert.equal(client.connecting, true);
  const reason = new Error("not needed any more");
  ac.abort(reason);
  assert.equal(client.closed, true, "closed at once");
  await assert.rejects(client.ready(), (err) => assertAbortError(err, reason));
  assert.deepEqual(events, ["close"], "onClose only: a cancel is no connect failure");
  assert.equal(getEventListeners(ac.signal, "abort").length, 0);
});

test("connect({ signal }): aborted during a TLS handshake the server never answers", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const silent = await silentServer(t);
  const { Client, events } = recorder();
  const ac = new AbortController();
  const client = new Client({ engine, sslOptions: { cert_reqs: "CERT_NONE" } }).connect(["127.0.0.1", silent.port], { signal: ac.signal });
  await waitFor(() => silent.sockets.size === 1, 5000, "the TCP connection");
  await sleep(50);
  assert.equal(client.closed, false, "still waiting for the handshake");
  const started = Date.now();
  ac.abort();
  await assert.rejects(client.ready(), (err) => assertAbortError(err, ac.signal.reason));
  assert.ok(Date.now() - started < 1000);
  assert.deepEqual(events, ["close"]);
  await waitFor(() => silent.sockets.size === 0, 5000, "the socket to close");
  assert.equal(getEventListeners(ac.signal, "abort").length, 0);
});

test("connect({ signal }) with an already-aborted signal opens no socket and closes on a later tick", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine });
  const port = await listenLocal(server, t);
  const { Client, events } = recorder();
  const client = new Client({ engine }).connect(["127.0.0.1", port], { signal: AbortSignal.abort("cancelled") });
  assert.deepEqual(events, [], "no event inside connect()");
  await assert.rejects(client.ready(), (err) => assertAbortError(err, "cancelled"));
  assert.deepEqual(events, ["close"]);
  assert.equal(client.closed, true);
  await sleep(50);
  assert.equal(server.stats.accepted, 0, "no connection was made");
  assert.throws(() => client.connect(["127.0.0.1", port]), ChannelStateError);
});

test("connect({ signal }): an abort after onConnect is a no-op; a signal that is no AbortSignal throws", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine });
  const port = await listenLocal(server, t);
  const lines: string[] = [];
  class Client extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(d: Buffer) {
      lines.push(d.toString());
    }
  }
  const ac = new AbortController();
  const client = new Client({ engine }).connect(["127.0.0.1", port], { signal: ac.signal });
  await client.ready();
  assert.equal(getEventListeners(ac.signal, "abort").length, 0, "removed once connected");
  ac.abort();
  client.write("still here\n");
  await waitFor(() => lines.length === 1);
  assert.deepEqual(lines, ["still here"]);
  assert.equal(client.closed, false);
  client.close();
  const bad = new Stream({ engine });
  assert.throws(() => bad.connect(["127.0.0.1", port], { signal: "stop" as unknown as AbortSignal }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
  assert.equal(bad.connecting, false, "left unconnected");
});

test("connect({ signal }) and shutdown({ signal }) take a signal of another implementation (a polyfill's: an EventTarget with aborted and reason), as node:net does", { timeout: 20_000 }, async (t) => {
  /** What polyfills build: no AbortSignal in its prototype chain. */
  class PolyfillSignal extends EventTarget {
    aborted = false;
    reason: unknown = undefined;
    abort(reason: unknown) {
      this.aborted = true;
      this.reason = reason;
      this.dispatchEvent(new Event("abort"));
    }
  }
  const engine = freshEngine(t);
  const silent = await silentServer(t);
  const { Client, events } = recorder();
  const signal = new PolyfillSignal();
  assert.equal((signal as unknown) instanceof AbortSignal, false);
  const client = new Client({ engine, sslOptions: { cert_reqs: "CERT_NONE" } }).connect(["127.0.0.1", silent.port], { signal: signal as unknown as AbortSignal });
  await waitFor(() => silent.sockets.size === 1, 5000, "the TCP connection");
  signal.abort("polyfilled");
  await assert.rejects(client.ready(), (err) => assertAbortError(err, "polyfilled"));
  assert.deepEqual(events, ["close"]);
  await waitFor(() => silent.sockets.size === 0, 5000, "the socket to close");

  class Stubborn extends Echo {
    override onShutdown() {
      // ignores the request: only the signal closes it
    }
  }
  const server = new Server(Stubborn, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1);
  const stop = new PolyfillSignal();
  let done = false;
  const drained = server.shutdown({ timeoutMs: 0, signal: stop as unknown as AbortSignal }).then(() => {
    done = true;
  });
  await sleep(50);
  assert.equal(done, false, "waits: no deadline");
  stop.abort("now");
  await drained;
  assert.equal(server.channels.size, 0);
  await c.readToEnd();
  // Something shaped like half a signal is still refused.
  const bad = new Stream({ engine });
  assert.throws(() => bad.connect(["127.0.0.1", port], { signal: { aborted: false } as unknown as AbortSignal }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
});

test("one long-lived signal over 10 000 connects (connected, refused, closed early): one listener while any is pending, none after, and no leak warning", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  // Node warns of a leak at an EventTarget's eleventh listener: 200 pending
  // connects on one signal (an application's shutdown signal) must not look like one.
  const warnings: string[] = [];
  const onWarning = (w: Error) => {
    if (w.name === "MaxListenersExceededWarning") warnings.push(w.message);
  };
  process.on("warning", onWarning);
  t.after(() => process.off("warning", onWarning));
  const server = new Server(Stream, { engine });
  const port = await listenLocal(server, t);
  const refused = new Server(Stream, { engine });
  const deadPort = await listenLocal(refused);
  refused.close();
  const ac = new AbortController();
  const signal = ac.signal;
  let most = 0;
  for (let batch = 0; batch < 50; batch++) {
    const streams: Stream[] = [];
    for (let i = 0; i < 200; i++) {
      const kind = i % 4;
      const s = new Stream({ engine }).connect(["127.0.0.1", kind === 3 ? deadPort : port], { signal });
      if (kind === 2) s.close();
      streams.push(s);
    }
    most = Math.max(most, getEventListeners(signal, "abort").length);
    const settled = await Promise.allSettled(streams.map((s) => s.ready()));
    for (const s of streams) s.close(false);
    assert.equal(settled.filter((r) => r.status === "fulfilled").length, 100);
    assert.equal(getEventListeners(signal, "abort").length, 0, `after batch ${batch}`);
  }
  assert.equal(most, 1, "one listener for the 200 pending connects");
  await new Promise((r) => setImmediate(r)); // (a warning is emitted on a later tick)
  assert.deepEqual(warnings, []);
});

test("one signal over many pending connects: one abort closes each, in the order they came, each ready() rejecting with AbortError", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine });
  const port = await listenLocal(server, t);
  const ac = new AbortController();
  const closed: number[] = [];
  class Numbered extends Stream {
    constructor(readonly n: number) {
      super({ engine });
    }
    override onClose(): void {
      closed.push(this.n);
    }
  }
  // Aborted in the tick of the connects: all 20 are still pending.
  const streams = Array.from({ length: 20 }, (_, n) => new Numbered(n).connect(["127.0.0.1", port], { signal: ac.signal }));
  assert.equal(getEventListeners(ac.signal, "abort").length, 1);
  ac.abort("enough");
  const settled = await Promise.allSettled(streams.map((s) => s.ready()));
  for (const r of settled) assert.ok(r.status === "rejected" && assertAbortError(r.reason, "enough") === true);
  await waitFor(() => closed.length === 20);
  assert.deepEqual(closed, Array.from({ length: 20 }, (_, n) => n));
  assert.equal(getEventListeners(ac.signal, "abort").length, 0);
});

test("shutdown({ signal }): an abort ends the wait, closing what is left; an already-aborted one at once", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  class Stubborn extends Echo {
    override onShutdown() {
      // ignores the request: only the deadline, or the signal, closes it
    }
  }
  for (const already of [false, true]) {
    const server = new Server(Stubborn, { engine });
    const port = await listenLocal(server);
    const client = await connect(port);
    await waitFor(() => server.channels.size === 1);
    const ac = new AbortController();
    if (already) ac.abort();
    let done = false;
    const drained = server.shutdown({ timeoutMs: 0, signal: ac.signal }).then(() => {
      done = true;
    });
    await sleep(50);
    assert.equal(done, already, already ? "resolved at once" : "waits: no deadline");
    ac.abort();
    await drained;
    assert.equal(server.channels.size, 0);
    assert.equal(server.closed, true);
    await client.readToEnd();
    assert.equal(getEventListeners(ac.signal, "abort").length, 0);
  }
  // A drain that ends by itself removes its listener.
  class Slow extends Echo {
    override onShutdown() {
      setTimeout(() => this.close(), 20);
    }
  }
  const polite = new Server(Slow, { engine });
  const politePort = await listenLocal(polite);
  const client = await connect(politePort);
  await waitFor(() => polite.channels.size === 1);
  const ac = new AbortController();
  const drained = polite.shutdown({ signal: ac.signal });
  assert.equal(getEventListeners(ac.signal, "abort").length, 1);
  await drained;
  await client.readToEnd();
  assert.equal(getEventListeners(ac.signal, "abort").length, 0, "removed once the shutdown completed");
  const server = new Server(Stubborn, { engine });
  assert.throws(() => server.shutdown({ signal: {} as AbortSignal }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
});
