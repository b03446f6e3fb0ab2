/**
 * TCP socket options: the server's noDelay/keepAliveMs for every accepted
 * connection, and setNoDelay()/setKeepAlive() per stream (server streams,
 * clients before and after their connect, TLS streams, UNIX sockets). The
 * kernel's own figures are read back (see tcpOptionsOf in helpers.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Server, Stream } from "../src/index.js";
import type { Address } from "../src/index.js";
import { cannotReadTcpOptions, connect, connectTls, freshEngine, listenLocal, tcpOptionsOf, tempDir, waitFor } from "./helpers.js";
import type { TcpOptions } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

const skip = cannotReadTcpOptions();

/** The kernel's options of a stream's socket. */
function optionsOf(stream: Stream): TcpOptions {
  const fd = stream.fileno;
  assert.ok(fd !== null, `${String(stream)} has no descriptor`);
  return tcpOptionsOf(fd);
}

/** A server whose streams record their options in onConnect, after `setup` ran on them. */
async function optionsSeenByServer(t: Parameters<typeof freshEngine>[0], options: ConstructorParameters<typeof Server>[1], setup: (s: Stream) => void = () => {}): Promise<TcpOptions> {
  const engine = freshEngine(t);
  let seen: TcpOptions | null = null;
  class Probe extends Stream {
    override onConnect() {
      setup(this);
      seen = optionsOf(this);
    }
  }
  const port = await listenLocal(new Server(Probe, { ...options, engine }), t);
  const c = await connect(["127.0.0.1", port]);
  t.after(() => c.destroy());
  await waitFor(() => seen !== null, 10_000, "the server's onConnect");
  return seen as unknown as TcpOptions;
}

test("a server's connections: TCP_NODELAY on and no keep-alive by default; noDelay: false and keepAliveMs set them", { skip }, async (t) => {
  const defaults = await optionsSeenByServer(t, {});
  assert.equal(defaults.noDelay, true);
  assert.equal(defaults.keepAlive, false);
  const set = await optionsSeenByServer(t, { noDelay: false, keepAliveMs: 45_000 });
  assert.deepEqual(set, { noDelay: false, keepAlive: true, keepIdle: 45 });
});

test("setNoDelay() and setKeepAlive() on a server's stream override the server's options, and turn off again", { skip }, async (t) => {
  const on = await optionsSeenByServer(t, {}, (s) => s.setNoDelay(false).setKeepAlive(true, 20_000));
  assert.deepEqual(on, { noDelay: false, keepAlive: true, keepIdle: 20 });
  const off = await optionsSeenByServer(t, { keepAliveMs: 30_000, noDelay: false }, (s) => s.setNoDelay().setKeepAlive(false));
  assert.equal(off.noDelay, true);
  assert.equal(off.keepAlive, false);
  // 0: keep-alive on with the system's idle time (7 200 s on Linux unless tuned).
  const systemIdle = await optionsSeenByServer(t, {}, (s) => s.setKeepAlive(true));
  assert.equal(systemIdle.keepAlive, true);
  assert.ok(systemIdle.keepIdle > 0);
});

test("a client's setNoDelay()/setKeepAlive() made before connect() or while connecting apply from the connect; after it, at once", { skip }, async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const seen: TcpOptions[] = [];
  class Client extends Stream {
    override onConnect() {
      seen.push(optionsOf(this));
      this.setKeepAlive(false).setNoDelay(true);
      seen.push(optionsOf(this));
      this.close();
    }
  }
  const early = new Client({ engine }).setKeepAlive(true, 25_000).setNoDelay(false);
  early.connect(["127.0.0.1", port]);
  const connecting = new Client({ engine }).connect(["127.0.0.1", port]);
  connecting.setKeepAlive(true, 35_000);
  connecting.setNoDelay(false);
  await Promise.all([early.ready(), connecting.ready()]);
  await waitFor(() => seen.length === 4, 10_000, "both clients' onConnect");
  const [a, aAfter, b, bAfter] = seen as [TcpOptions, TcpOptions, TcpOptions, TcpOptions];
  assert.deepEqual(a, { noDelay: false, keepAlive: true, keepIdle: 25 });
  assert.deepEqual(b, { noDelay: false, keepAlive: true, keepIdle: 35 });
  for (const after of [aAfter, bAfter]) {
    assert.equal(after.noDelay, true);
    assert.equal(after.keepAlive, false);
  }
});

test("under TLS the options reach the TCP socket beneath", { skip: skip || (!hasOpenssl() && "the openssl command is not installed") }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const engine = freshEngine(t);
  let seen: TcpOptions | null = null;
  class Probe extends Stream {
    override onConnect() {
      this.setKeepAlive(true, 40_000).setNoDelay(false);
      seen = optionsOf(this);
    }
  }
  const port = await listenLocal(new Server(Probe, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } }), t);
  const c = await connectTls(["127.0.0.1", port]);
  t.after(() => c.destroy());
  await waitFor(() => seen !== null, 10_000, "the TLS stream's onConnect");
  assert.deepEqual(seen, { noDelay: false, keepAlive: true, keepIdle: 40 });
});

test("setNoDelay()/setKeepAlive(): typed errors for bad arguments; no effect on a UNIX socket or a closed stream", async (t) => {
  const engine = freshEngine(t);
  const s = new Stream({ engine });
  assert.throws(() => s.setNoDelay("yes" as unknown as boolean), TypeError);
  assert.throws(() => s.setKeepAlive(1 as unknown as boolean), TypeError);
  assert.throws(() => s.setKeepAlive(true, -1), RangeError);
  assert.throws(() => s.setKeepAlive(true, Number.NaN), RangeError);
  assert.throws(() => s.setKeepAlive(true, "1000" as unknown as number), TypeError);
  let unixDone = false;
  class Unix extends Stream {
    override onConnect() {
      this.setNoDelay(false).setKeepAlive(true, 1000);
      this.write("ok\n");
      unixDone = true;
    }
  }
  const path = `${tempDir(t)}/s.sock`;
  const server = new Server(Unix, { engine }).listen(path as Address);
  await server.ready();
  const c = await connect(path);
  t.after(() => c.destroy());
  assert.equal(await c.readText(3), "ok\n");
  assert.ok(unixDone);
  s.close();
  s.setNoDelay(false).setKeepAlive(true, 5000); // closed: nothing to set, nothing thrown
});

test("setKeepAlive(true) with no delay leaves the idle time as it was: the server's keepAliveMs, an earlier call's, else the system's", { skip }, async (t) => {
  const fromServer = await optionsSeenByServer(t, { keepAliveMs: 30_000 }, (s) => s.setKeepAlive(true));
  assert.deepEqual(fromServer, { noDelay: true, keepAlive: true, keepIdle: 30 });
  const fromEarlier = await optionsSeenByServer(t, {}, (s) => s.setKeepAlive(true, 20_000).setKeepAlive(false).setKeepAlive(true));
  assert.deepEqual(fromEarlier, { noDelay: true, keepAlive: true, keepIdle: 20 });
});

test("a keep-alive delay under a second is one second, and one longer than the kernel takes (32 767 s) its maximum, on a stream and as keepAliveMs", { skip }, async (t) => {
  // Node would pass 0 for 500 ms (the system's two hours), and its setsockopt would fail for 40 000 s (the same).
  const short = await optionsSeenByServer(t, { keepAliveMs: 30_000 }, (s) => s.setKeepAlive(true, 500));
  assert.deepEqual(short, { noDelay: true, keepAlive: true, keepIdle: 1 });
  const long = await optionsSeenByServer(t, {}, (s) => s.setKeepAlive(true, 40_000_000));
  assert.deepEqual(long, { noDelay: true, keepAlive: true, keepIdle: 32_767 });
  const serverShort = await optionsSeenByServer(t, { keepAliveMs: 250 });
  assert.deepEqual(serverShort, { noDelay: true, keepAlive: true, keepIdle: 1 });
  const serverLong = await optionsSeenByServer(t, { keepAliveMs: 40_000_000 });
  assert.deepEqual(serverLong, { noDelay: true, keepAlive: true, keepIdle: 32_767 });
});
