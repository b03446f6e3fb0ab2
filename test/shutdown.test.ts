/**
 * Graceful shutdown (SPEC §9): stop accepting at once, onShutdown on every
 * connection (default close(true)), resolve once all have closed, force the
 * rest at the deadline; with TLS and UNIX sockets too.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import net from "node:net";
import tls from "node:tls";
import { ChannelStateError, Engine, Server, Stream } from "../src/index.js";
import type { Address } from "../src/index.js";
import type { Duplex } from "node:stream";
import { connect, connectTls, freshEngine, listenLocal, sleep, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

class Echo extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(d: Buffer) {
    this.write(`${d}\n`);
  }
}

/** An Echo that ignores shutdown requests: only the deadline closes it. */
class Stubborn extends Echo {
  override onShutdown() {
    // ignores the request
  }
}

test("shutdown: stops accepting, drains every connection with onShutdown, resolves when all closed", async (t) => {
  const engine = freshEngine(t);
  const shutdowns: string[] = [];
  class Polite extends Echo {
    override onShutdown() {
      shutdowns.push("called");
      this.write("server going down\n");
      this.close(true);
    }
  }
  const server = new Server(Polite, { engine });
  const port = await listenLocal(server);
  const a = await connect(port);
  const b = await connect(port);
  await waitFor(() => server.channels.size === 2);
  const done = server.shutdown({ timeoutMs: 5000 });
  assert.equal(server.listening, false, "stops accepting at once");
  await assert.rejects(connect(port), /ECONNREFUSED/);
  await done;
  assert.deepEqual(shutdowns, ["called", "called"]);
  assert.equal((await a.readToEnd()).toString(), "server going down\n");
  assert.equal((await b.readToEnd()).toString(), "server going down\n");
  assert.equal(server.closed, true);
  assert.equal(server.channels.size, 0);
  assert.equal(server.shutdown(), server.shutdown(), "the same promise every time");
  assert.throws(() => server.listen(["127.0.0.1", 0]), ChannelStateError);
});

test("shutdown: a connection that will not close is forced at the deadline", async (t) => {
  const engine = freshEngine(t);
  let closes = 0;
  class Counted extends Stubborn {
    override onClose() {
      closes++;
    }
  }
  const server = new Server(Counted, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1);
  const start = Date.now();
  await server.shutdown({ timeoutMs: 200 });
  const elapsed = Date.now() - start;
  assert.ok(elapsed >= 190 && elapsed < 2000, `resolved after ${elapsed} ms`);
  assert.equal(closes, 1);
  await c.readToEnd();
});

test("shutdown({ timeoutMs: 0 }): no deadline, as every other 0 ms option; it resolves when the last connection closes", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stubborn, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1);
  let done = false;
  const finished = server.shutdown({ timeoutMs: 0 }).then(() => (done = true));
  await sleep(300);
  assert.equal(done, false, "no deadline forced the connection");
  assert.equal(server.channels.size, 1);
  c.destroy();
  await finished;
  assert.equal(server.channels.size, 0);
});

test("shutdown() called again while draining: the same promise, and an earlier deadline applies (a later one or 0 does not push it back)", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stubborn, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1);
  const start = Date.now();
  const first = server.shutdown({ timeoutMs: 0 });
  assert.throws(() => server.shutdown({ timeoutMs: -1 }), RangeError, "a second call's timeoutMs is checked too");
  assert.equal(server.shutdown({ timeoutMs: 200 }), first, "the same promise");
  assert.equal(server.shutdown({ timeoutMs: 0 }), first);
  assert.equal(server.shutdown({ timeoutMs: 60_000 }), first);
  const forced = await Promise.race([first.then(() => true), sleep(3000).then(() => false)]);
  const elapsed = Date.now() - start;
  assert.ok(forced, "the second call's 200 ms deadline forced the stubborn connection");
  assert.ok(elapsed >= 190 && elapsed < 2000, `resolved after ${elapsed} ms`);
  assert.equal(server.channels.size, 0);
  await c.readToEnd();
});

test("shutdown: the default onShutdown delivers pending writes before closing", async (t) => {
  const engine = freshEngine(t);
  const big = Buffer.alloc(8 << 20, 0x71);
  class Sender extends Stream {
    override onConnect() {
      this.write(big);
    }
  }
  const server = new Server(Sender, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.socket.pause();
  await waitFor(() => server.channels.size === 1);
  const done = server.shutdown({ timeoutMs: 10000 });
  await sleep(50);
  c.socket.resume();
  const got = await c.readToEnd(10000);
  await done;
  assert.equal(got.length, big.length);
});

test("shutdown with no connections resolves at once; on a server that never listened too", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine });
  await listenLocal(server);
  await server.shutdown();
  assert.equal(server.closed, true);
  await new Server(Echo, { engine }).shutdown();
});

test("shutdown of a UNIX socket server removes the socket file", async (t) => {
  const engine = freshEngine(t);
  const path = join(tempDir(t), "s.sock");
  const server = new Server(Echo, { engine }).listen(path);
  await server.ready();
  const c = await connect(path);
  c.write("x\n");
  assert.equal(await c.readText(2), "x\n");
  await server.shutdown({ timeoutMs: 2000 });
  await c.readToEnd();
  await waitFor(() => !existsSync(path), 2000, "the socket file to go");
});

test("shutdown with TLS connections closes them cleanly (close_notify, FIN)", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const server = new Server(Echo, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server);
  const c = await connectTls(["127.0.0.1", port]);
  c.write("hi\n");
  assert.equal(await c.readText(3), "hi\n");
  await server.shutdown({ timeoutMs: 2000 });
  await c.readToEnd();
  assert.equal(c.error, null);
});

test("shutdown while a TLS handshake runs: onConnect, then onShutdown, once it completes; the goodbye goes out, then the close (no onRead, no wait for the deadline)", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const events: string[] = [];
  class Bye extends Echo {
    override onConnect() {
      events.push("connect");
      super.onConnect();
    }
    override onRead(d: Buffer) {
      events.push(`read:${d}`);
      super.onRead(d);
    }
    override onShutdown() {
      events.push("shutdown");
      this.write("bye\n");
      this.close();
    }
  }
  const server = new Server(Bye, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server);
  // A client whose handshake has not started when the drain begins.
  const raw = net.connect(port, "127.0.0.1");
  t.after(() => raw.destroy());
  raw.on("error", () => {});
  await new Promise<void>((resolve) => raw.once("connect", () => resolve()));
  await waitFor(() => server.channels.size === 1, 5000, "the connection accepted");
  const started = Date.now();
  const drained = server.shutdown({ timeoutMs: 10_000 });
  const client = tls.connect({ socket: raw, ca: certs.ca.certPem, servername: "localhost" });
  let got = "";
  let error: Error | null = null;
  client.on("data", (d: Buffer) => (got += d.toString()));
  client.on("error", (err) => (error = err));
  client.once("secureConnect", () => client.write("late\n"));
  let ended = false;
  client.once("end", () => (ended = true));
  let done = false;
  void drained.then(() => (done = true));
  await waitFor(() => done, 5000, "the drain (its deadline is 10 s)").catch(() => {});
  assert.ok(done, `the drain still waits after ${Date.now() - started} ms (the deadline is 10 s)`);
  await waitFor(() => ended || error !== null, 5000, "the close").catch(() => {});
  assert.equal(got, "bye\n");
  assert.equal(error, null);
  assert.deepEqual(events, ["connect", "shutdown"], "onConnect is always the first event (SPEC §5)");
});

test("close(true) during a TLS handshake keeps handshakeTimeoutMs: a silent client does not hold a drain with no deadline", { skip: !hasOpenssl() && "no openssl", timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  class Bye extends Echo {
    override onShutdown() {
      this.write("bye\n");
      this.close();
    }
  }
  const server = new Server(Bye, { engine, handshakeTimeoutMs: 500, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server);
  const raw = await connect(port);
  t.after(() => raw.destroy());
  await waitFor(() => server.channels.size === 1, 5000, "the connection accepted");
  const started = Date.now();
  let done = false;
  void server.shutdown({ timeoutMs: 0 }).then(() => (done = true));
  await waitFor(() => done, 8000, "the drain").catch(() => {});
  assert.equal(server.channels.size, 0, "closed by the handshake timeout");
  assert.ok(Date.now() - started < 3000, `the drain took ${Date.now() - started} ms (handshakeTimeoutMs 500)`);
  await raw.readToEnd();
});

test("shutdown before a new connection's onConnect has run: onConnect first, then onShutdown (never onShutdown on a connection that was not opened)", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Session extends Stream {
    user: string | null = null;
    override onConnect() {
      events.push("connect");
      this.user = "alice";
    }
    override onShutdown() {
      events.push("shutdown");
      this.write(`bye ${this.user!}\n`);
      this.close(true);
    }
    override onClose() {
      events.push("close");
    }
    override onError(err: Error) {
      events.push(`error: ${err.message}`);
      super.onError(err);
    }
  }
  let drained: Promise<void> | null = null;
  class Draining extends Server {
    // The drain begins in the very turn the connection is accepted (as a SIGTERM handler can).
    override onAccept(socket: Duplex, address: Address) {
      super.onAccept(socket, address);
      drained = this.shutdown({ timeoutMs: 5000 });
    }
  }
  const server = new Draining(Session, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  t.after(() => c.destroy());
  await waitFor(() => drained !== null, 5000, "the accept");
  await drained;
  assert.equal((await c.readToEnd()).toString(), "bye alice\n");
  assert.deepEqual(events, ["connect", "shutdown", "close"]);
});

test("the defaults are 10 s: shutdown() forces what is left at 10 s, and handshakeTimeoutMs closes a TLS client silent in its handshake at 10 s (on the engine's clock)", { skip: !hasOpenssl() && "no openssl", timeout: 30_000 }, async (t) => {
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const server = new Server(Stubborn, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server);
  const silent = await connect(port); // sends no ClientHello
  const open = await connectTls(port, { ca: certs.ca.certPem, servername: "localhost" });
  open.write("up\n");
  assert.equal(await open.readText(3), "up\n");
  let resolved = false;
  const done = server.shutdown().then(() => (resolved = true));
  engine.advance(9_900);
  await sleep(100);
  assert.equal(silent.ended, false, "the silent client at 9.9 s");
  assert.equal(resolved, false, "shutdown() at 9.9 s");
  engine.advance(200);
  await silent.readToEnd(5_000);
  // The force comes from the engine's clock, not from 10 s of real time.
  await waitFor(() => resolved, 3_000, "shutdown() once the engine's clock has passed 10 s");
  await done;
  await open.readToEnd(5_000);
});

test("shutdown() with a timeoutMs beyond what a Node timer holds (2^31 ms) does not force the close at once", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stubborn, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.write("up\n");
  assert.equal(await c.readText(3), "up\n");
  void server.shutdown({ timeoutMs: 2 ** 32 });
  await sleep(200); // a Node timer given 2^32 ms fires after 1 ms
  assert.equal(c.ended || c.closed, false, "the connection was forced closed");
  c.write("still\n");
  assert.equal(await c.readText(6), "still\n");
  c.destroy();
  await waitFor(() => server.closed, 3000, "the server closed once its last connection left");
});

test("shutdown() with a timeoutMs beyond 2^31-1 ms forces the rest at that deadline, not at 2^31-1 ms (on the engine's clock)", async (t) => {
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const server = new Server(Stubborn, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.write("up\n");
  assert.equal(await c.readText(3), "up\n");
  let resolved = false;
  const done = server.shutdown({ timeoutMs: 3e9 }).then(() => (resolved = true));
  engine.advance(2 ** 31);
  await sleep(100);
  assert.equal(resolved || c.ended, false, "still draining past 2^31-1 ms");
  engine.advance(3e9 - 2 ** 31);
  await waitFor(() => resolved, 3_000, "forced at 3e9 ms");
  await done;
  await c.readToEnd(5_000);
});

test("shutdown while a connection closed before its onConnect still drains (close(true) from onAccept): onClose only, no onShutdown; what was written goes out", async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Session extends Stream {
    override onConnect() {
      events.push("connect");
    }
    override onShutdown() {
      events.push("shutdown");
      this.write("bye\n"); // a closing stream refuses writes: onError would cut the close short
    }
    override onClose() {
      events.push("close");
    }
  }
  let drained: Promise<void> | null = null;
  class Draining extends Server {
    override onAccept(socket: Duplex, address: Address) {
      super.onAccept(socket, address);
      const conn = [...this.channels.values()].at(-1)!;
      conn.write("hello\n");
      conn.close(true);
      drained = this.shutdown({ timeoutMs: 5000 });
    }
  }
  const port = await listenLocal(new Draining(Session, { engine }));
  const c = await connect(port);
  t.after(() => c.destroy());
  await waitFor(() => drained !== null, 5000, "the accept");
  await drained;
  assert.equal((await c.readToEnd()).toString(), "hello\n");
  assert.deepEqual(events, ["close"]);
});

for (const stop of ["close", "shutdown"] as const) {
  for (const how of ["super.onAccept", "its own stream"] as const) {
    test(`${stop}() while an async onAccept awaits: the stream it makes after (${how}) is closed, not kept open by the closed server`, async (t) => {
      const engine = freshEngine(t);
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      let opened = 0;
      class Counted extends Echo {
        override onConnect() {
          opened++;
          super.onConnect();
        }
      }
      class Slow extends Server {
        override async onAccept(socket: Duplex, address: Address) {
          await gate;
          if (how === "super.onAccept") super.onAccept(socket, address);
          else new Counted({ engine, socket });
        }
      }
      const server = new Slow(Counted, { engine });
      const port = await listenLocal(server, t);
      const c = await connect(port);
      t.after(() => c.destroy());
      await sleep(50); // the override awaits
      if (stop === "close") server.close();
      else await server.shutdown({ timeoutMs: 1000 });
      assert.equal(server.closed, true);
      open();
      assert.equal((await c.readToEnd(3000)).length, 0, "closed, never served");
      await waitFor(() => server.channels.size === 0 && engine.stats.open === 0, 2000, "nothing left open");
      assert.equal(opened, 0);
      assert.deepEqual([server.stats.accepted, server.stats.closed, server.stats.open], [1, 1, 0]);
      assert.deepEqual([engine.stats.accepted, engine.stats.closed, engine.stats.open], [1, 1, 0]);
    });
  }
}

test("shutdown() still draining when an async onAccept makes its stream: that stream is asked to shut down too (onConnect, then onShutdown)", async (t) => {
  const engine = freshEngine(t);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const events: string[] = [];
  let n = 0;
  class Late extends Echo {
    override onConnect() {
      events.push("connect");
      super.onConnect();
    }
    override onShutdown() {
      events.push("shutdown");
      super.onShutdown();
    }
  }
  class Slow extends Server<Echo> {
    override async onAccept(socket: Duplex, address: Address) {
      if (n++ === 0) {
        new Stubborn({ engine, socket }); // keeps the drain going
        return;
      }
      await gate;
      new Late({ engine, socket });
    }
  }
  const server = new Slow(Echo, { engine });
  const port = await listenLocal(server, t);
  const stubborn = await connect(port);
  t.after(() => stubborn.destroy());
  await waitFor(() => server.channels.size === 1);
  const c = await connect(port);
  t.after(() => c.destroy());
  await sleep(50); // the override awaits
  const done = server.shutdown({ timeoutMs: 0 });
  open();
  assert.equal((await c.readToEnd(3000)).length, 0, "shut down");
  assert.deepEqual(events, ["connect", "shutdown"]);
  stubborn.destroy();
  await done;
});

test("shutdown() while an async onAccept holds the only connection: it waits for the override, whose stream is asked to shut down (its goodbye goes out); one still held at the deadline is closed then", async (t) => {
  // shutdown() resolved at once, with the server closed: the stream the
  // override made later was closed without onShutdown and without flushing,
  // and a socket it held stayed open, after shutdown() had resolved, until it settled.
  const engine = freshEngine(t);
  const events: string[] = [];
  class Polite extends Echo {
    override onConnect() {
      events.push("connect");
      super.onConnect();
    }
    override onShutdown() {
      events.push("shutdown");
      this.write("goodbye\n");
      this.close(true);
    }
  }
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  class Slow extends Server<Polite> {
    override async onAccept(socket: Duplex, address: Address) {
      await gate;
      super.onAccept(socket, address);
    }
  }
  const server = new Slow(Polite, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await waitFor(() => server.stats.pending === 1, 5000, "the override to hold the connection");
  let resolved = false;
  const done = server.shutdown({ timeoutMs: 0 }).then(() => {
    resolved = true;
  });
  await sleep(50);
  assert.equal(resolved, false, "waits for the connection the override holds");
  open();
  assert.equal((await c.readToEnd(3000)).toString(), "goodbye\n");
  await done;
  assert.deepEqual(events, ["connect", "shutdown"]);
  assert.equal(server.closed, true);

  // Held past the deadline: closed then, and shutdown() resolves then, not before.
  const never = new Promise<void>(() => {});
  class Stuck extends Server<Polite> {
    override async onAccept() {
      await never;
    }
  }
  const stuck = new Stuck(Polite, { engine });
  const stuckPort = await listenLocal(stuck, t);
  const held = await connect(stuckPort);
  t.after(() => held.destroy());
  await waitFor(() => stuck.stats.pending === 1, 5000, "the override to hold the connection");
  let forced = false;
  const forcedDone = stuck.shutdown({ timeoutMs: 200 }).then(() => {
    forced = true;
  });
  await sleep(50);
  assert.equal(forced, false, "waits until the deadline");
  assert.equal((await held.readToEnd(3000)).length, 0, "the held socket is closed at the deadline");
  await forcedDone;
  assert.equal(stuck.stats.pending, 0);
});

test("engine.stop() while shutdown() waits for a connection an async onAccept holds: the socket is closed and shutdown() resolves, as at its deadline", async (t) => {
  // engine.stop() cancelled the deadline with its other timers and left the
  // held socket open: shutdown() never resolved (until the override settled).
  const engine = freshEngine(t);
  const never = new Promise<void>(() => {});
  class Stuck extends Server {
    override async onAccept() {
      await never;
    }
  }
  for (const timeoutMs of [60_000, 0]) {
    const server = new Stuck(Echo, { engine });
    const port = await listenLocal(server, t);
    const held = await connect(port);
    t.after(() => held.destroy());
    await waitFor(() => server.stats.pending === 1, 5000, "the override to hold the connection");
    let resolved = false;
    const done = server.shutdown({ timeoutMs }).then(() => {
      resolved = true;
    });
    await sleep(20);
    assert.equal(resolved, false, "waits for the held connection");
    engine.stop();
    assert.equal((await held.readToEnd(3000)).length, 0, `timeoutMs ${timeoutMs}: the held socket is closed`);
    await waitFor(() => resolved, 3000, `timeoutMs ${timeoutMs}: shutdown() to resolve`);
    await done;
    assert.equal(server.stats.pending, 0);
    assert.equal(server.closed, true);
  }
});
