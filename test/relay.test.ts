/**
 * relay(a, b): a pants-ts proxy Server whose connection class relays to an
 * upstream it connects to. Bytes both ways intact (checksummed), bounded
 * buffers with a slow reader, one slow direction never stopping the other,
 * half-close, resets from either end, a failed upstream connect, bytes held
 * while the upstream connects, TLS on either side, and the typed errors.
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { createHash, randomBytes } from "node:crypto";
import { ChannelStateError, Server, Stream, relay } from "../src/index.js";
import type { Address, RelayOptions, RelayResult, SslOptions } from "../src/index.js";
import { RawClient, captureLogs, connect, connectTls, freePort, freshEngine, listenLocal, sleep, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

const MiB = 1024 * 1024;
const NO_OPENSSL = hasOpenssl() ? false : "the openssl command is not installed";

/** One connection through the proxy: its two streams and what relay() resolved with. */
interface Relayed {
  client: Stream;
  upstream: Stream;
  result: Promise<RelayResult>;
  events: string[];
}

/** A proxy connection class: relays each accepted connection to `target`, recording it in `relayed`. */
function proxyClass(target: () => Address, relayed: Relayed[], options?: RelayOptions & { upstreamTls?: SslOptions }): typeof Stream {
  return class Proxy extends Stream {
    readonly events: string[] = [];
    override onConnect(): void {
      const events = this.events;
      const upstream = new (class Upstream extends Stream {
        override onConnect(): void {
          events.push("upstream connect");
        }
        override onClose(): void {
          events.push("upstream close");
        }
      })({ engine: this.engine, ...(options?.upstreamTls ? { sslOptions: options.upstreamTls } : {}) }).connect(target());
      const hwm = options?.highWaterMark;
      relayed.push({ client: this, upstream, result: relay(this, upstream, hwm === undefined ? undefined : { highWaterMark: hwm }), events });
    }
    override onClose(): void {
      this.events.push("client close"); // the user's onClose is still called
    }
  };
}

/** A node:net server standing for the upstream; `handle` runs per connection (half-open allowed). */
async function upstreamServer(t: TestContext, handle: (socket: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    handle(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

/** Hashes everything a socket receives; `done` settles at its end (FIN) or close. */
class Sink {
  bytes = 0;
  ended = false;
  closed = false;
  readonly #hash = createHash("sha256");
  readonly done: Promise<void>;
  constructor(socket: net.Socket) {
    this.done = new Promise<void>((resolve) => {
      socket.on("data", (d: Buffer) => {
        this.bytes += d.length;
        this.#hash.update(d);
      });
      socket.once("end", () => {
        this.ended = true;
        resolve();
      });
      socket.once("close", () => {
        this.closed = true;
        resolve();
      });
    });
  }
  digest(): string {
    return this.#hash.digest("hex");
  }
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** A half-open raw client of the proxy. */
async function halfOpenClient(port: number): Promise<net.Socket> {
  const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  socket.on("error", () => {});
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  return socket;
}

/** Resolves with `p`, or rejects after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test("relay: several MiB of random bytes each way arrive intact, then both ends see the FIN and relay() resolves with the counts", async (t) => {
  const engine = freshEngine(t);
  const up = randomBytes(6 * MiB + 123);
  const down = randomBytes(5 * MiB + 45);
  let upstreamSink: Sink | null = null;
  const upPort = await upstreamServer(t, (socket) => {
    upstreamSink = new Sink(socket);
    socket.end(down); // all of it, then a FIN
  });
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed), { engine }), t);
  const client = await halfOpenClient(port);
  t.after(() => client.destroy());
  const clientSink = new Sink(client);
  client.end(up);
  await within(clientSink.done, 30_000, "the download");
  await waitFor(() => upstreamSink !== null, 5000, "the upstream connection");
  await within(upstreamSink!.done, 30_000, "the upload");
  assert.equal(clientSink.ended, true, "the upstream's FIN reached the client");
  assert.equal(upstreamSink!.ended, true, "the client's FIN reached the upstream");
  assert.equal(clientSink.bytes, down.length);
  assert.equal(clientSink.digest(), sha(down));
  assert.equal(upstreamSink!.bytes, up.length);
  assert.equal(upstreamSink!.digest(), sha(up));
  const [r] = relayed;
  assert.deepEqual(await within(r!.result, 5000, "relay() to resolve"), { bytesAtoB: up.length, bytesBtoA: down.length });
  assert.equal(r!.client.closed && r!.upstream.closed, true);
  assert.deepEqual(r!.events.sort(), ["client close", "upstream close", "upstream connect"], "the streams' own onConnect and onClose ran");
});

test("relay: a slow reader keeps the proxy's buffer near highWaterMark and loses nothing", async (t) => {
  const engine = freshEngine(t);
  const hwm = 256 * 1024;
  const down = randomBytes(16 * MiB);
  const upPort = await upstreamServer(t, (socket) => socket.end(down));
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed, { highWaterMark: hwm }), { engine }), t);
  const client = await halfOpenClient(port);
  t.after(() => client.destroy());
  client.pause(); // reads nothing for a while: the proxy must stop reading the upstream
  await waitFor(() => relayed.length === 1, 5000, "the proxy's connection");
  const r = relayed[0]!;
  let max = 0;
  const sample = setInterval(() => (max = Math.max(max, r.client.bufferedAmount)), 2);
  t.after(() => clearInterval(sample));
  await sleep(500);
  const stalled = max;
  // Then a reader of about 2 MiB/s: the proxy's buffer stays bounded throughout.
  const sink = new Sink(client);
  let pacing = true;
  const pace = setInterval(() => {
    client.resume();
    setTimeout(() => pacing && client.pause(), 2).unref();
  }, 10);
  t.after(() => clearInterval(pace));
  await within(
    (async () => {
      while (sink.bytes < 4 * MiB) await sleep(20);
    })(),
    30_000,
    "4 MiB at the slow reader",
  );
  pacing = false;
  clearInterval(pace);
  client.resume();
  await within(sink.done, 30_000, "the rest of the download");
  clearInterval(sample);
  client.end(); // the other direction ends too: the relay closes both
  assert.ok(stalled > 0, "the proxy did buffer while the client read nothing");
  // One chunk read past the mark at most (a read is at most 256 KiB on either transport).
  assert.ok(max <= hwm + 256 * 1024, `the proxy buffered ${max} bytes for a client reading slowly; highWaterMark is ${hwm}`);
  assert.equal(sink.bytes, down.length);
  assert.equal(sink.digest(), sha(down));
  assert.deepEqual(await within(r.result, 5000, "relay() to resolve"), { bytesAtoB: 0, bytesBtoA: down.length });
});

test("relay: a client that reads nothing until its upload is sent still gets it through (one direction never stops the other)", async (t) => {
  const engine = freshEngine(t);
  const upload = randomBytes(24 * MiB);
  const download = randomBytes(8 * MiB);
  let upstreamSink: Sink | null = null;
  const upPort = await upstreamServer(t, (socket) => {
    upstreamSink = new Sink(socket);
    socket.write(download); // a download the client will not read until its upload has left
    void upstreamSink.done.then(() => socket.end("upload complete"));
  });
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed, { highWaterMark: MiB }), { engine }), t);
  const client = await halfOpenClient(port);
  t.after(() => client.destroy());
  client.pause();
  await within(new Promise<void>((resolve) => client.end(upload, resolve)), 30_000, "the upload to be sent while the download waits");
  const sink = new Sink(client);
  client.resume();
  await within(sink.done, 30_000, "the download");
  assert.equal(upstreamSink!.bytes, upload.length);
  assert.equal(upstreamSink!.digest(), sha(upload));
  assert.equal(sink.digest(), sha(Buffer.concat([download, Buffer.from("upload complete")])));
  await within(relayed[0]!.result, 5000, "relay() to resolve");
});

/** Calls `then` with everything `socket` received once its peer has ended. */
function onceEnded(socket: net.Socket, then: (received: Buffer) => void): void {
  const chunks: Buffer[] = [];
  socket.on("data", (d: Buffer) => chunks.push(d));
  socket.once("end", () => then(Buffer.concat(chunks)));
}

test("relay: half-close both ways: the client's FIN reaches the upstream, whose reply still comes back, then its FIN", async (t) => {
  const engine = freshEngine(t);
  const seen: string[] = [];
  const upPort = await upstreamServer(t, (socket) => {
    onceEnded(socket, (request) => {
      seen.push(`request:${request}`);
      // The request ended: the (large) reply, written after the client's FIN, then ours.
      socket.write(Buffer.alloc(2 * MiB, 0x61));
      socket.end("\nreply done\n");
    });
  });
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed), { engine }), t);
  const client = new RawClient(await halfOpenClient(port));
  t.after(() => client.destroy());
  client.write("sort these\nlines\n");
  await sleep(50);
  client.end();
  const reply = await client.readToEnd(10_000);
  assert.equal(client.ended, true, "the reply ends with the upstream's FIN");
  assert.deepEqual(seen, ["request:sort these\nlines\n"]);
  assert.equal(reply.length, 2 * MiB + 12);
  assert.equal(reply.subarray(2 * MiB).toString(), "\nreply done\n");
  assert.deepEqual(await within(relayed[0]!.result, 5000, "relay() to resolve"), { bytesAtoB: 17, bytesBtoA: 2 * MiB + 12 });
});

test("relay: half-close, the upstream ends first and the client still sends after it", async (t) => {
  const engine = freshEngine(t);
  const seen: string[] = [];
  const upPort = await upstreamServer(t, (socket) => {
    onceEnded(socket, (late) => {
      seen.push(`after FIN:${late}`);
      socket.destroy();
    });
    socket.end("bye first\n");
  });
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed), { engine }), t);
  const client = new RawClient(await halfOpenClient(port));
  t.after(() => client.destroy());
  await client.until(() => client.ended, 5000, "the upstream's FIN, passed on");
  assert.equal(client.received.toString(), "bye first\n");
  assert.equal(client.closed, false, "the client's side stays open");
  client.write("still talking\n");
  client.end();
  await waitFor(() => seen.length === 1, 5000, "the upstream to get the late bytes and the FIN");
  assert.deepEqual(seen, ["after FIN:still talking\n"]);
  assert.deepEqual(await within(relayed[0]!.result, 5000, "relay() to resolve"), { bytesAtoB: 14, bytesBtoA: 10 });
});

test("relay: a reset from either end closes the other side promptly", async (t) => {
  const engine = freshEngine(t);
  const upstreams: net.Socket[] = [];
  const upPort = await upstreamServer(t, (socket) => {
    upstreams.push(socket);
    socket.write("hello\n");
  });
  const relayed: Relayed[] = [];
  const port = await listenLocal(new Server(proxyClass(() => ["127.0.0.1", upPort], relayed), { engine }), t);

  // The client resets: the upstream gets its FIN (what was queued for it first).
  const c1 = await connect(port);
  t.after(() => c1.destroy());
  await c1.until(() => c1.received.length === 6, 5000, "the greeting");
  const u1 = new Sink(upstreams[0]!);
  c1.write("last words\n");
  await waitFor(() => u1.bytes === 11, 5000, "the client's bytes at the upstream");
  const started = Date.now();
  c1.socket.resetAndDestroy();
  await within(u1.done, 2000, "the upstream to be closed after the client's reset");
  assert.ok(Date.now() - started < 1000, `closed after ${Date.now() - started} ms`);
  await within(relayed[0]!.result, 2000, "relay() to resolve");

  // The upstream resets: the client is closed, after what was already sent to it.
  const c2 = await connect(port);
  t.after(() => c2.destroy());
  await c2.until(() => c2.received.length === 6, 5000, "the greeting");
  const started2 = Date.now();
  upstreams[1]!.resetAndDestroy();
  await c2.until(() => c2.ended || c2.closed, 2000, "the client to be closed after the upstream's reset");
  assert.ok(Date.now() - started2 < 1000, `closed after ${Date.now() - started2} ms`);
  assert.equal(c2.received.toString(), "hello\n");
  await within(relayed[1]!.result, 2000, "relay() to resolve");
});

test("relay: an upstream that refuses the connection closes the client, and relay() resolves", async (t) => {
  const engine = freshEngine(t);
  const closedPort = await freePort();
  const errors: string[] = [];
  const relayed: Relayed[] = [];
  class Proxy extends Stream {
    override onConnect(): void {
      const upstream = new (class extends Stream {
        override onConnectError(err: Error): void {
          errors.push((err as { errno?: string }).errno ?? "?"); // still the user's handler
        }
      })({ engine: this.engine }).connect(["127.0.0.1", closedPort]);
      relayed.push({ client: this, upstream, result: relay(this, upstream), events: [] });
    }
  }
  const port = await listenLocal(new Server(Proxy, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  c.write("anyone there?\n");
  await c.until(() => c.ended || c.closed, 5000, "the client to be closed");
  assert.deepEqual(errors, ["ECONNREFUSED"]);
  assert.deepEqual(await within(relayed[0]!.result, 2000, "relay() to resolve"), { bytesAtoB: 0, bytesBtoA: 0 });
});

test("relay: what the client sends while the upstream's TLS handshake is slow is held, bounded, then delivered (its FIN and its reset too)", { skip: NO_OPENSSL }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const hwm = 256 * 1024;
  const sinks: Sink[] = [];
  // A TLS upstream that waits 700 ms before it starts each handshake.
  const upPort = await upstreamServer(t, (raw) => {
    raw.pause();
    setTimeout(() => {
      const secure = new tls.TLSSocket(raw, { isServer: true, key: certs.server.keyPem, cert: certs.server.certPem });
      secure.on("error", () => {});
      const sink = new Sink(secure as net.Socket);
      sinks.push(sink);
      void sink.done.then(() => !secure.destroyed && secure.end("got it\n"));
    }, 700);
  });
  const relayed: Relayed[] = [];
  const server = new Server(proxyClass(() => ["127.0.0.1", upPort], relayed, { highWaterMark: hwm, upstreamTls: { ca: certs.ca.certPem, servername: "localhost" } }), { engine });
  const port = await listenLocal(server, t);

  await t.test("8 MiB: the proxy reads about highWaterMark of it until the upstream is connected", async () => {
    const up = randomBytes(8 * MiB);
    const client = new RawClient(await halfOpenClient(port));
    t.after(() => client.destroy());
    client.end(up);
    await sleep(400);
    // The proxy stopped reading the client: it holds about highWaterMark, however much was sent.
    const read = server.stats.bytesIn;
    assert.ok(read <= hwm + 256 * 1024, `the proxy read ${read} bytes while the upstream was not connected; highWaterMark is ${hwm}`);
    await waitFor(() => sinks.length === 1, 5000, "the upstream's handshake");
    await within(sinks[0]!.done, 30_000, "the upload at the upstream");
    assert.equal(sinks[0]!.ended, true);
    assert.equal(sinks[0]!.digest(), sha(up));
    assert.equal((await client.readToEnd(10_000)).toString(), "got it\n");
    assert.deepEqual(await within(relayed[0]!.result, 5000, "relay() to resolve"), { bytesAtoB: up.length, bytesBtoA: 7 });
  });

  await t.test("a request and its FIN before the upstream is connected: both reach it, the reply comes back", async () => {
    const client = new RawClient(await halfOpenClient(port));
    t.after(() => client.destroy());
    client.end("short request");
    assert.equal((await client.readToEnd(10_000)).toString(), "got it\n");
    assert.equal(sinks[1]!.ended, true, "the FIN was passed on once the upstream connected");
    assert.equal(sinks[1]!.digest(), sha(Buffer.from("short request")));
    assert.deepEqual(await within(relayed[1]!.result, 5000, "relay() to resolve"), { bytesAtoB: 13, bytesBtoA: 7 });
  });

  await t.test("a client that resets before the upstream is connected: what it sent still goes, then the upstream is closed", async () => {
    const before = server.stats.bytesIn;
    const client = new RawClient(await halfOpenClient(port));
    client.write("fire and forget");
    await waitFor(() => relayed.length === 3 && server.stats.bytesIn === before + 15, 5000, "the bytes at the proxy");
    client.socket.resetAndDestroy();
    await within(relayed[2]!.result, 5000, "relay() to resolve");
    await waitFor(() => sinks.length === 3, 5000, "the upstream's handshake");
    await within(sinks[2]!.done, 5000, "the upstream's end");
    assert.equal(sinks[2]!.digest(), sha(Buffer.from("fire and forget")));
  });
});

test("relay: an upstream relayed while its TLS handshake runs, which then fails, still gets the default onConnectError's warning (relay() does not wait on ready())", { skip: NO_OPENSSL }, async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  // A TLS upstream that starts its handshake 300 ms after the connect, with a certificate the proxy does not trust.
  const upPort = await upstreamServer(t, (raw) => {
    raw.pause();
    setTimeout(() => new tls.TLSSocket(raw, { isServer: true, key: certs.server.keyPem, cert: certs.server.certPem }).on("error", () => {}), 300);
  });
  const relayed: Relayed[] = [];
  class Proxy extends Stream {
    override onConnect(): void {
      const upstream = new Stream({ engine: this.engine, sslOptions: { servername: "localhost" } }).connect(["127.0.0.1", upPort]);
      const client = this;
      (async () => {
        await waitFor(() => upstream.connected || upstream.closed, 5000, "the upstream's TCP connect");
        assert.equal(upstream.connected, true, "connected, its handshake under way");
        relayed.push({ client, upstream, result: relay(client, upstream), events: [] });
      })().catch((err: unknown) => client.onError(err as Error));
    }
  }
  const port = await listenLocal(new Server(Proxy, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await c.until(() => c.ended || c.closed, 5000, "the client to be closed");
  await within(relayed[0]!.result, 2000, "relay() to resolve");
  const failures = logs.filter((l) => /connect/i.test(l.msg) && l.msg.includes("127.0.0.1"));
  assert.deepEqual(failures.map((l) => l.level), ["warn"], JSON.stringify(logs.map((l) => [l.level, l.msg])));
});

test("relay: TLS termination: a TLS client, the proxy with sslOptions, a plain upstream; half-close through it", { skip: NO_OPENSSL }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const up = randomBytes(3 * MiB);
  const down = randomBytes(2 * MiB);
  let upstreamSink: Sink | null = null;
  const upPort = await upstreamServer(t, (socket) => {
    upstreamSink = new Sink(socket);
    void upstreamSink.done.then(() => socket.end(down)); // replies once the request has ended
  });
  const relayed: Relayed[] = [];
  const server = new Server(proxyClass(() => ["127.0.0.1", upPort], relayed), { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server, t);
  const client = await connectTls(port, { ca: certs.ca.certPem, servername: "localhost", rejectUnauthorized: true, allowHalfOpen: true } as tls.ConnectionOptions);
  t.after(() => client.destroy());
  const sink = new Sink(client.tlsSocket as net.Socket);
  client.end(up);
  await within(sink.done, 30_000, "the reply");
  assert.equal(upstreamSink!.ended, true, "the client's close_notify and FIN became the upstream's FIN");
  assert.equal(upstreamSink!.digest(), sha(up));
  assert.equal(sink.ended, true, "the upstream's FIN reached the TLS client");
  assert.equal(sink.digest(), sha(down));
  assert.deepEqual(await within(relayed[0]!.result, 5000, "relay() to resolve"), { bytesAtoB: up.length, bytesBtoA: down.length });
});

test("relay: a protocol gateway relays after its own handshake line (paused meanwhile); bytes behind it in the same packet go upstream", async (t) => {
  const engine = freshEngine(t);
  let sink: Sink | null = null;
  const upPort = await upstreamServer(t, (socket) => {
    sink = new Sink(socket);
    socket.once("end", () => socket.end());
    socket.write("upstream here\n");
  });
  const results: Array<Promise<RelayResult>> = [];
  class Gateway extends Stream {
    override onConnect(): void {
      this.readDelimiter = "\n";
      this.encoding = "utf8";
    }
    override onRead(line: string): void {
      const port = Number(/^CONNECT (\d+)$/.exec(line)?.[1]);
      this.write("OK\n");
      // As after an asynchronous check: paused meanwhile, the relay resumes it.
      this.pauseReading();
      setTimeout(() => results.push(relay(this, new Stream({ engine: this.engine }).connect(["127.0.0.1", port]))), 20);
    }
  }
  const port = await listenLocal(new Server(Gateway, { engine }), t);
  const c = new RawClient(await halfOpenClient(port));
  t.after(() => c.destroy());
  c.write(`CONNECT ${upPort}\nraw \xff bytes\nand more`);
  assert.equal((await c.read(17, 5000)).toString(), "OK\nupstream here\n");
  c.end();
  await waitFor(() => results.length === 1, 5000, "the relay");
  await within(results[0]!, 5000, "relay() to resolve");
  assert.equal(sink!.digest(), sha(Buffer.from("raw \xff bytes\nand more", "utf8")));
});

test("relay: the same stream twice, a closed, unconnected, ended or already relayed stream, bad options: typed errors, nothing changed", async (t) => {
  const engine = freshEngine(t);
  const upPort = await upstreamServer(t, () => {});
  const failures: unknown[] = [];
  let checked = 0;
  /** Runs the checks inside a handler, recording what failed (a throw there would only close the stream). */
  const check = (fn: () => void): void => {
    try {
      fn();
    } catch (err) {
      failures.push(err);
    }
    checked++;
  };
  class Checker extends Stream {
    override onConnect(): void {
      this.readDelimiter = "\n";
      check(() => {
        const b = new Stream({ engine: this.engine }).connect(["127.0.0.1", upPort]);
        const ownRead = this.onRead;
        assert.throws(() => relay(this, this), (e: Error & { code?: string }) => e instanceof RangeError && e.code === "ERR_INVALID_ARG_VALUE");
        assert.throws(() => relay(this, new Stream({ engine: this.engine })), ChannelStateError, "neither connected nor connecting");
        const closed = new Stream({ engine: this.engine }).connect(["127.0.0.1", upPort]);
        closed.close();
        assert.throws(() => relay(this, closed), ChannelStateError);
        assert.throws(() => relay(closed, this), ChannelStateError);
        assert.throws(() => relay(this, {} as Stream), TypeError);
        assert.throws(() => relay(this, b, { highWaterMark: 0 }), RangeError);
        assert.throws(() => relay(this, b, { highWaterMark: "1" as unknown as number }), TypeError);
        assert.throws(() => relay(this, b, null as unknown as RelayOptions), TypeError);
        // Nothing was taken over by the calls that threw.
        assert.equal(this.onRead, ownRead);
        assert.equal(this.readDelimiter, "\n");
        void relay(this, b);
        assert.notEqual(this.onRead, ownRead);
        assert.equal(this.readDelimiter, null);
        const c = new Stream({ engine: this.engine }).connect(["127.0.0.1", upPort]);
        assert.throws(() => relay(this, c), ChannelStateError, "already relayed");
        assert.throws(() => relay(c, b), ChannelStateError, "already relayed");
        c.close();
      });
    }
  }
  class Ender extends Stream {
    override onConnect(): void {
      this.end();
      check(() => assert.throws(() => relay(this, new Stream({ engine: this.engine }).connect(["127.0.0.1", upPort])), ChannelStateError, "ended"));
      this.close();
    }
  }
  const port = await listenLocal(new Server(Checker, { engine }), t);
  const c = await connect(port);
  t.after(() => c.destroy());
  await waitFor(() => checked === 1, 5000, "the checks");
  const port2 = await listenLocal(new Server(Ender, { engine }), t);
  const c2 = await connect(port2);
  t.after(() => c2.destroy());
  await c2.readToEnd();
  assert.equal(checked, 2);
  if (failures.length > 0) throw failures[0];
});

test("relay: below a stream's lower writeBufferLimit: the default highWaterMark follows it (a slow reader is paused for, not overflowed), and an explicit one at or above it is a RangeError", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const limit = 512 * 1024;
  const down = randomBytes(8 * MiB);
  const upPort = await upstreamServer(t, (socket) => socket.end(down));
  const results: Promise<RelayResult>[] = [];
  const refused: unknown[] = [];
  class Proxy extends Stream {
    override onConnect(): void {
      this.writeBufferLimit = limit;
      const upstream = new Stream({ engine: this.engine }).connect(["127.0.0.1", upPort]);
      let explicit: Promise<RelayResult> | null = null;
      try {
        explicit = relay(this, upstream, { highWaterMark: limit });
      } catch (err) {
        refused.push(err);
      }
      results.push(explicit ?? relay(this, upstream));
    }
  }
  const port = await listenLocal(new Server(Proxy, { engine }), t);
  const client = await halfOpenClient(port);
  t.after(() => client.destroy());
  client.pause(); // a reader that reads nothing for a while
  await waitFor(() => results.length === 1, 5000, "the proxy's connection");
  await sleep(500);
  const sink = new Sink(client);
  client.resume();
  await within(sink.done, 30_000, "the download");
  client.end();
  assert.equal(refused.length, 1);
  assert.ok(refused[0] instanceof RangeError && /highWaterMark .* writeBufferLimit/.test(refused[0].message), String(refused[0]));
  assert.equal(sink.bytes, down.length, "every byte through a client whose writeBufferLimit is 512 KiB");
  assert.deepEqual(await within(results[0]!, 5000, "relay() to resolve"), { bytesAtoB: 0, bytesBtoA: down.length });
});
