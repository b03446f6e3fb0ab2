/**
 * stats.lingering (server and engine) over every way a linger ends: the
 * peer's FIN, a reset, a destroy, expiry, eviction at maxConnections (also
 * after maxConnections is lowered on a live server, with an async onAccept
 * holding places, behind a PROXY header, after STARTTLS), a server closed
 * while its sockets linger, a client stream's linger. The gauges return to
 * 0 and are never seen below it (sampled every millisecond), and a server at
 * its limit serves a new client while it has lingering sockets.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import type { Duplex } from "node:stream";
import { Engine, Server, Stream, type Address, type SslOptions } from "../src/index.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { RawClient, connect, connectTls, freshEngine, lingerWhileSending, listenLocal, sleep, waitFor } from "./helpers.js";

class Bye extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(d: Buffer) {
    if (d.toString() !== "quit") {
      this.write(`${d}\n`);
      return;
    }
    this.write("bye\n");
    this.close();
  }
}

/** Samples the gauges every millisecond: the lowest value seen. */
function sampler(t: TestContext, engine: Engine, server: Server | null): { min: () => number } {
  let min = 0;
  const timer = setInterval(() => {
    min = Math.min(min, engine.stats.lingering, server?.stats.lingering ?? 0);
  }, 1);
  t.after(() => clearInterval(timer));
  return { min: () => Math.min(min, engine.stats.lingering, server?.stats.lingering ?? 0) };
}

function tlsOpts(t: TestContext): SslOptions {
  const certs = makeCerts();
  t.after(certs.cleanup);
  return { certfile: certs.server.cert, keyfile: certs.server.key };
}

/** Under a TLS client: its TCP socket (to reset it). */
const raws = new WeakMap<RawClient, net.Socket>();

/** A client that asks the server to close and keeps its own side open: the server's socket lingers. */
async function lingerer(port: number, tls: boolean): Promise<RawClient> {
  let a: RawClient;
  if (tls) {
    const raw = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    await new Promise((r) => raw.once("connect", r));
    a = await connectTls(port, { socket: raw, allowHalfOpen: true });
    raws.set(a, raw);
  } else a = await connect(port, { allowHalfOpen: true });
  a.write("quit\n");
  await a.until(() => a.ended, 5000, "server FIN");
  return a;
}

/** Two clients lingering on `server` (listening on `port`): destroyed when the test ends. */
async function twoLingering(t: TestContext, server: Server, port: number, tls: boolean): Promise<[RawClient, RawClient]> {
  const a = await lingerer(port, tls);
  const b = await lingerer(port, tls);
  t.after(() => a.destroy());
  t.after(() => b.destroy());
  await waitFor(() => server.stats.lingering === 2, 3000, "lingering 2");
  return [a, b];
}

for (const tls of [false, true]) {
  const tag = tls ? "TLS" : "plain";
  const skip = tls && !hasOpenssl() ? "no openssl" : false;

  for (const end of ["fin", "reset", "expiry", "destroy"] as const) {
    test(`${tag}: a linger ended by ${end} leaves the gauges at 0`, { skip, timeout: 20_000 }, async (t) => {
      const engine = freshEngine(t);
      const server = new Server(Bye, { engine, maxConnections: 5, sslOptions: tls ? tlsOpts(t) : undefined });
      const port = await listenLocal(server, t);
      const s = sampler(t, engine, server);
      const a = await lingerer(port, tls);
      t.after(() => a.destroy());
      await waitFor(() => server.stats.lingering === 1, 3000, "lingering 1");
      assert.equal(engine.stats.lingering, 1);
      if (end === "fin") a.end();
      else if (end === "reset") (raws.get(a) ?? a.socket).resetAndDestroy();
      else if (end === "destroy") a.destroy();
      await waitFor(() => server.stats.lingering === 0 && engine.stats.lingering === 0, 6000, "lingering 0");
      await sleep(50);
      assert.equal(server.stats.lingering, 0);
      assert.equal(engine.stats.lingering, 0);
      assert.equal(s.min(), 0);
    });
  }

  test(`${tag}: a server closed while its sockets linger: gauges at 0 once they end`, { skip, timeout: 20_000 }, async (t) => {
    const engine = freshEngine(t);
    const server = new Server(Bye, { engine, maxConnections: 5, sslOptions: tls ? tlsOpts(t) : undefined });
    const port = await listenLocal(server, t);
    const s = sampler(t, engine, server);
    const [a, b] = await twoLingering(t, server, port, tls);
    server.close();
    await sleep(100);
    a.end();
    b.destroy();
    await waitFor(() => server.stats.lingering === 0 && engine.stats.lingering === 0, 6000, "lingering 0");
    assert.equal(s.min(), 0);
  });

  test(`${tag}: maxConnections lowered on a live server: the next client evicts every linger over it and is served`, { skip, timeout: 20_000 }, async (t) => {
    const engine = freshEngine(t);
    const server = new Server(Bye, { engine, maxConnections: 5, sslOptions: tls ? tlsOpts(t) : undefined });
    const port = await listenLocal(server, t);
    const s = sampler(t, engine, server);
    const ls: RawClient[] = [];
    for (let i = 0; i < 4; i++) {
      const a = await lingerer(port, tls);
      t.after(() => a.destroy());
      ls.push(a);
    }
    await waitFor(() => server.stats.lingering === 4, 3000, "lingering 4");
    server.maxConnections = 2;
    const c = tls ? await connectTls(port) : await connect(port);
    t.after(() => c.destroy());
    c.write("hi\n");
    assert.equal((await c.read(3)).toString(), "hi\n");
    assert.equal(server.stats.rejected, 0);
    assert.equal(server.stats.lingering, 1);
    assert.equal(engine.stats.lingering, 1);
    for (const a of ls) a.end();
    await waitFor(() => server.stats.lingering === 0 && engine.stats.lingering === 0, 6000, "lingering 0");
    assert.equal(s.min(), 0);
  });

  test(`${tag}: an async onAccept at the limit: lingers make room for the places it holds`, { skip, timeout: 20_000 }, async (t) => {
    const engine = freshEngine(t);
    class Slow extends Server {
      override async onAccept(socket: Duplex, address: Address): Promise<void> {
        await sleep(50);
        super.onAccept(socket, address);
      }
    }
    const server = new Slow(Bye, { engine, maxConnections: 2, sslOptions: tls ? tlsOpts(t) : undefined });
    const port = await listenLocal(server, t);
    const s = sampler(t, engine, server);
    await twoLingering(t, server, port, tls);
    const cs = await Promise.all([0, 1].map(async () => (tls ? connectTls(port) : connect(port))));
    for (const c of cs) {
      t.after(() => c.destroy());
      c.write("x\n");
      assert.equal((await c.read(2)).toString(), "x\n");
    }
    assert.equal(server.stats.rejected, 0);
    assert.equal(server.stats.lingering, 0);
    await waitFor(() => engine.stats.lingering === 0, 3000, "engine 0");
    assert.equal(s.min(), 0);
  });
}

test("a PROXY-protocol server at its limit with a linger serves the next client", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Bye, { engine, maxConnections: 1, proxyProtocol: true });
  const port = await listenLocal(server, t);
  const s = sampler(t, engine, server);
  const hdr = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
  const a = await connect(port, { allowHalfOpen: true });
  t.after(() => a.destroy());
  a.write(hdr + "quit\n");
  await a.until(() => a.ended, 5000, "server FIN");
  await waitFor(() => server.stats.lingering === 1, 3000, "lingering 1");
  const b = await connect(port);
  t.after(() => b.destroy());
  b.write(hdr + "hi\n");
  assert.equal((await b.read(3)).toString(), "hi\n");
  assert.equal(server.stats.rejected, 0);
  assert.equal(server.stats.lingering, 0);
  assert.equal(engine.stats.lingering, 0);
  assert.equal(s.min(), 0);
});

test("a client stream's linger: engine gauge back to 0", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const peers: net.Socket[] = [];
  const srv = net.createServer({ allowHalfOpen: true }, (c) => {
    peers.push(c);
    c.on("data", () => {});
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.after(() => {
    for (const p of peers) p.destroy();
    srv.close();
  });
  const s = sampler(t, engine, null);
  class C extends Stream {
    override onConnect() {
      this.write("x");
      this.close();
    }
  }
  new C({ engine }).connect(["127.0.0.1", (srv.address() as net.AddressInfo).port]);
  await waitFor(() => engine.stats.lingering === 1, 3000, "lingering 1");
  await waitFor(() => peers.length === 1);
  peers[0]!.end();
  await waitFor(() => engine.stats.lingering === 0, 3000, "lingering 0");
  assert.equal(s.min(), 0);
});

test("a connection closed by its own constructor lingers, and its gauges return to 0", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  class Early extends Stream {
    constructor(o: ConstructorParameters<typeof Stream>[0]) {
      super(o);
      this.write("early\n");
      this.close();
    }
  }
  const server = new Server(Early, { engine, maxConnections: 1 });
  const port = await listenLocal(server, t);
  const s = sampler(t, engine, server);
  const a = await connect(port, { allowHalfOpen: true });
  t.after(() => a.destroy());
  await a.until(() => a.ended, 5000, "server FIN");
  await sleep(100);
  assert.equal(engine.stats.lingering, 1);
  a.end();
  await waitFor(() => engine.stats.lingering === 0 && server.stats.lingering === 0, 3000, "lingering 0");
  assert.equal(s.min(), 0);
});

for (const end of ["fin", "reset", "evict", "expiry"] as const) {
  test(`a linger after STARTTLS ended by ${end}: gauges at 0`, { skip: !hasOpenssl() && "no openssl", timeout: 20_000 }, async (t) => {
    const engine = freshEngine(t);
    const o = tlsOpts(t);
    class St extends Bye {
      override onRead(d: Buffer) {
        if (d.toString() === "STARTTLS") {
          this.write("GO\n");
          this.startSSL({ ...o, server_side: true });
          return;
        }
        super.onRead(d);
      }
    }
    const server = new Server(St, { engine, maxConnections: 1 });
    const port = await listenLocal(server, t);
    const s = sampler(t, engine, server);
    const raw = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    t.after(() => raw.destroy());
    await new Promise((r) => raw.once("connect", r));
    raw.write("STARTTLS\n");
    await new Promise((r) => raw.once("data", r));
    const a = await connectTls(port, { socket: raw, allowHalfOpen: true });
    t.after(() => a.destroy());
    a.write("quit\n");
    await a.until(() => a.ended, 5000, "server FIN");
    await waitFor(() => server.stats.lingering === 1, 3000, "lingering 1");
    assert.equal(engine.stats.lingering, 1);
    if (end === "fin") a.end();
    else if (end === "reset") raw.resetAndDestroy();
    else if (end === "evict") {
      const c = await connect(port);
      t.after(() => c.destroy());
      c.write("hi\n");
      assert.equal((await c.read(3)).toString(), "hi\n");
    }
    await waitFor(() => server.stats.lingering === 0 && engine.stats.lingering === 0, 6000, "lingering 0");
    await sleep(50);
    assert.equal(s.min(), 0);
    if (end === "evict") {
      // The evicted socket is closed on the server: what the client sends now is refused.
      const keep = setInterval(() => raw.writable && a.write("more\n"), 50);
      t.after(() => clearInterval(keep));
      await a.until(() => a.closed || a.error !== null, 3000, "a closed");
    }
  });
}

test("a client refused by maxConnectionsPerPeer does not end another client's linger", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const reply = 512 * 1024; // the linger lasts while the peer keeps sending (2 s per 128 KiB written)
  class Long extends Bye {
    override onRead(d: Buffer) {
      if (d.toString() !== "quit") return super.onRead(d);
      this.write(Buffer.alloc(reply, 0x2e));
      this.close();
    }
  }
  const server = new Server(Long, { engine, maxConnections: 2, maxConnectionsPerPeer: 1 });
  const port = await listenLocal(server, t);
  // a (from 127.0.0.2) closes and keeps sending: its socket lingers.
  const a = await connect(port, { allowHalfOpen: true, localAddress: "127.0.0.2" });
  await lingerWhileSending(t, a, reply, 50);
  await waitFor(() => server.stats.lingering === 1 && server.channels.size === 0, 3000, "a lingering");
  // b (127.0.0.1) open and a lingering: the server is at its limit. b's second connection is over its per-peer limit.
  const b = await connect(port);
  t.after(() => b.destroy());
  b.write("b\n");
  assert.equal((await b.read(2)).toString(), "b\n");
  const b2 = await connect(port);
  t.after(() => b2.destroy());
  await b2.readToEnd();
  await sleep(300);
  assert.equal(a.error, null, "a still lingers: the refused connection took no place");
  assert.equal(server.stats.lingering, 1);
  // A client that is served takes a's place.
  const c = await connect(port, { localAddress: "127.0.0.3" });
  t.after(() => c.destroy());
  c.write("c\n");
  assert.equal((await c.read(2)).toString(), "c\n");
  assert.equal(server.stats.lingering, 0);
  await a.until(() => a.error !== null, 3000, "a reset (its linger ended for c)");
});
