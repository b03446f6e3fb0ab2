/**
 * Observability: server.stats and engine.stats, diagnostics_channel
 * channels, NODE_DEBUG=pants-ts, the pluggable logger; and errors never
 * escape, even under --unhandled-rejections=strict while clients reset,
 * half-close and vanish mid-write.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { spawn } from "node:child_process";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { Duplex } from "node:stream";
import { Server, Stream, encodeProxyV1, setLogger } from "../src/index.js";
import type { Address, ReadDelimiter } from "../src/index.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { captureLogs, captureStderr, connect, freePort, freshEngine, listenLocal, sleep, waitFor } from "./helpers.js";

class Echo extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
  }
  override onRead(d: Buffer) {
    this.write(`${d}\n`);
  }
}

const root = new URL("..", import.meta.url).pathname;

test("server.stats and engine.stats count connections, bytes and errors", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Echo, { engine, maxConnections: 2 });
  const port = await listenLocal(server, t);
  const a = await connect(port);
  const b = await connect(port);
  await waitFor(() => server.channels.size === 2);
  const rejected = await connect(port);
  await rejected.readToEnd();
  a.write("hello\n");
  await a.read(6);
  assert.equal(server.stats.open, 2);
  assert.equal(server.stats.accepted, 2);
  assert.equal(server.stats.rejected, 1);
  assert.equal(server.stats.bytesIn, 6);
  assert.equal(server.stats.bytesOut, 6);
  a.destroy();
  b.destroy();
  await waitFor(() => server.stats.closed === 2);
  assert.equal(server.stats.open, 0);
  assert.equal(engine.stats.bytesIn, 6);
  assert.equal(engine.stats.closed, 2);
  assert.deepEqual(Object.keys(server.stats).sort(), ["accepted", "bytesIn", "bytesOut", "closed", "errors", "errorsByKind", "lingering", "open", "pending", "rejected"]);
});

test("stream.bytesRead and bytesWritten count each connection's bytes, as the stats do: plaintext under TLS, no PROXY header, a frame split across reads counted once", { skip: !hasOpenssl() && "the openssl command is not installed" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const accepted: Stream[] = [];
  class Counted extends Echo {
    override onConnect() {
      accepted.push(this);
      super.onConnect();
    }
  }
  class Client extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
  }
  const plain = new Server(Counted, { engine, proxyProtocol: true });
  const secure = new Server(Counted, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const plainPort = await listenLocal(plain, t);
  const securePort = await listenLocal(secure, t);
  // Behind PROXY: the header is no application byte.
  const raw = await connect(plainPort);
  raw.write("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nhel");
  await waitFor(() => accepted.length === 1);
  raw.write("lo\nworld\n");
  await raw.read(12);
  assert.equal(accepted[0]!.bytesRead, 12);
  assert.equal(accepted[0]!.bytesWritten, 12);
  // A TLS client stream and the server's stream: plaintext both ways.
  const client = new Client({ engine, sslOptions: { ca_certs: certs.ca.cert } }).connect(["localhost", securePort]);
  await client.ready();
  client.write("abc\nde\n");
  await waitFor(() => client.bytesRead === 7, 5000, "the echo");
  assert.equal(client.bytesWritten, 7);
  assert.equal(accepted[1]!.bytesRead, 7);
  assert.equal(accepted[1]!.bytesWritten, 7);
  client.close();
  raw.destroy();
  await waitFor(() => plain.stats.closed === 1 && secure.stats.closed === 1);
  assert.equal(plain.stats.bytesIn, accepted[0]!.bytesRead);
  assert.equal(secure.stats.bytesOut, accepted[1]!.bytesWritten);
  assert.equal(accepted[0]!.bytesRead, 12, "still readable once closed");
});

test("a delimiter that cannot frame (a Decoder consuming 0 bytes, a RegExp matching empty) is counted as a handler error, as a Decoder that throws is", async (t) => {
  const engine = freshEngine(t);
  const logs = captureLogs(t);
  const published: string[] = [];
  const onError = (m: unknown) => published.push(`${(m as { kind: string }).kind}:${(m as { error: Error }).error.name}`);
  subscribe("pants-ts:connection:error", onError);
  t.after(() => unsubscribe("pants-ts:connection:error", onError));
  const delimiters: Array<() => ReadDelimiter> = [
    () => () => ({ consumed: 0, args: [] }),
    () => /(?=x)/,
    () => () => {
      throw new Error("decoder bug");
    },
  ];
  for (const delimiter of delimiters) {
    class Framed extends Stream {
      override onConnect() {
        this.readDelimiter = delimiter();
      }
    }
    const server = new Server(Framed, { engine });
    const port = await listenLocal(server, t);
    const c = await connect(port);
    c.write("abxcd");
    await c.readToEnd();
    await waitFor(() => server.stats.closed === 1);
    assert.equal(server.stats.errors, 1);
    assert.deepEqual(server.stats.errorsByKind, { handler: 1 });
    server.close();
  }
  assert.deepEqual(published, ["handler:InvalidReadDelimiterError", "handler:InvalidReadDelimiterError", "handler:Error"]);
  assert.equal(engine.stats.errorsByKind.handler, 3);
  assert.equal(logs.filter((l) => l.level === "error").length, 3, "each logged once at error by the default onError");
});

test("engine.stats count what server.stats count: a connection an async onAccept handed over, reset before onConnect", async (t) => {
  const engine = freshEngine(t);
  class Late extends Server {
    override async onAccept(socket: Duplex, address: Address) {
      await sleep(50);
      super.onAccept(socket, address);
    }
  }
  const server = new Late(Echo, { engine });
  const port = await listenLocal(server, t);
  const c = await connect(port);
  c.socket.resetAndDestroy(); // while onAccept awaits
  await waitFor(() => server.stats.closed === 1, 2000, "the connection closed");
  assert.deepEqual([server.stats.accepted, server.stats.closed, server.stats.open], [1, 1, 0]);
  assert.deepEqual([engine.stats.accepted, engine.stats.closed, engine.stats.open], [1, 1, 0]);
});

test("stats.pending counts the connections that hold a place without a stream: waiting for a PROXY header, held by an async onAccept", async (t) => {
  const engine = freshEngine(t);
  const waiting: Array<() => void> = [];
  class Vetting extends Server {
    override async onAccept(socket: Duplex, address: Address) {
      await new Promise<void>((resolve) => waiting.push(resolve));
      if (Array.isArray(address) && address[0] === "198.51.100.7") socket.destroy(); // refused by the lookup
      else super.onAccept(socket, address);
    }
  }
  const server = new Vetting(Echo, { engine, proxyProtocol: true, maxConnections: 2 });
  const port = await listenLocal(server, t);
  const figures = () => [server.stats.pending, server.stats.open, engine.stats.pending, engine.stats.open];

  const a = await connect(port); // no header yet
  await waitFor(() => server.stats.pending === 1, 2000, "the connection waiting for its header is pending");
  assert.deepEqual(figures(), [1, 0, 1, 0]);
  a.write(encodeProxyV1({ family: "TCP4", source: ["203.0.113.5", 1000], destination: ["127.0.0.1", port] })); // now held by onAccept
  await sleep(20);
  assert.deepEqual(figures(), [1, 0, 1, 0], "still pending while onAccept awaits");
  const b = await connect(port);
  b.write(encodeProxyV1({ family: "TCP4", source: ["198.51.100.7", 1000], destination: ["127.0.0.1", port] }));
  await waitFor(() => server.stats.pending === 2, 2000, "two held");
  const third = await connect(port);
  assert.equal((await third.readToEnd()).length, 0, "both places taken: maxConnections 2");
  assert.equal(server.stats.rejected, 1);

  for (const resolve of waiting.splice(0)) resolve(); // a is served, b refused
  assert.equal((await b.readToEnd()).length, 0, "b refused by the override");
  await waitFor(() => server.stats.open === 1, 2000, "a has its stream");
  assert.deepEqual(figures(), [0, 1, 0, 1], "neither is pending once the overrides are done");
  await echoes(a);

  const gone = await connect(port); // leaves before its header
  await waitFor(() => server.stats.pending === 1, 2000);
  gone.destroy();
  await waitFor(() => server.stats.pending === 0, 2000, "a reset while waiting for the header gives its place back");
  a.destroy();
  await waitFor(() => server.stats.open === 0, 2000);
  assert.deepEqual(figures(), [0, 0, 0, 0]);
});

async function echoes(client: Awaited<ReturnType<typeof connect>>): Promise<void> {
  client.write("ping\n");
  assert.equal(await client.readText(5), "ping\n");
}

for (const late of [false, true]) {
  test(`a connection its constructor closes is counted accepted and closed by the server, as by the engine${late ? " (made after an async onAccept awaited)" : ""}`, async (t) => {
    const engine = freshEngine(t);
    let made = 0;
    class Picky extends Echo {
      constructor(options: ConstructorParameters<typeof Stream>[0]) {
        super(options);
        if (made++ === 0) this.close(); // turned away by the application
      }
    }
    class Late extends Server {
      override async onAccept(socket: Duplex, address: Address) {
        await sleep(20);
        super.onAccept(socket, address);
      }
    }
    const server = late ? new Late(Picky, { engine }) : new Server(Picky, { engine });
    const port = await listenLocal(server, t);
    const turnedAway = await connect(port);
    assert.equal((await turnedAway.readToEnd()).length, 0);
    const served = await connect(port);
    served.write("x\n");
    assert.equal(await served.readText(2), "x\n");
    served.destroy();
    await waitFor(() => engine.stats.closed === 2, 2000, "both connections closed");
    await sleep(20); // (a second count would come in the same turn)
    assert.deepEqual([server.stats.accepted, server.stats.closed, server.stats.open], [2, 2, 0]);
    assert.deepEqual([engine.stats.accepted, engine.stats.closed, engine.stats.open], [2, 2, 0]);
  });
}

test("engine.stats add up: open = accepted - closed, after a failed connect and a server closed while connections await onConnect", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  let server: Server | null = null;
  class Closer extends Stream {
    override onConnect() {
      if (server!.channels.size >= 3) server!.close();
    }
  }
  server = new Server(Closer, { engine });
  const port = await listenLocal(server, t);
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(port).catch(() => null)));
  await waitFor(() => !server!.listening && server!.channels.size === 0, 3000, "the server to close");
  // A client connect that fails is counted in neither.
  const refused = new Stream({ engine }).connect(["127.0.0.1", port]);
  await refused.ready().catch(() => {});
  await waitFor(() => refused.closed);
  const s = engine.stats;
  assert.equal(s.open, 0);
  assert.equal(s.accepted, server.stats.accepted);
  assert.equal(s.closed, server.stats.closed);
  assert.equal(s.open, s.accepted - s.closed);
  for (const c of clients) c?.destroy();
});

test("bytesIn counts every byte read once: a partial frame at the peer's FIN, a reset or a close, and one handed back by a framing change", async (t) => {
  // The native transport holds the start of a frame without calling JS:
  // it was never counted if the frame did not complete, and counted twice
  // when a framing change outside a delivery handed it back raw.
  const engine = freshEngine(t);
  class Lines extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead(line: Buffer) {
      this.write(`${line}\n`);
    }
  }
  const server = new Server(Lines, { engine });
  const port = await listenLocal(server, t);
  let sent = 0;
  for (const [first, end] of [
    ["hello\n", "fin"],
    ["hello\n", "reset"],
    ["hello\n", "close"],
    ["hello\nwor", "switch"],
  ] as const) {
    const c = await connect(port);
    c.write(first);
    await c.read(6);
    if (end !== "switch") c.write("wor"); // a read of its own: held by the addon, no frame complete
    sent += first.length + (end === "switch" ? 0 : 3);
    await sleep(30);
    if (end === "fin") c.end();
    else if (end === "reset") c.socket.resetAndDestroy();
    else if (end === "close") [...server.channels.values()][0]!.close(false);
    else {
      // Outside a delivery: the addon hands its partial frame back, to be framed here.
      (([...server.channels.values()][0]!) as Stream).readDelimiter = /\n/;
      c.write("ld\n");
      await c.read(6);
      sent += 3;
      c.end();
    }
    await waitFor(() => server.channels.size === 0, 2000, `the ${end} connection closed`);
    c.destroy();
    assert.equal(server.stats.bytesIn, sent, `after the ${end} connection`);
  }
  assert.equal(engine.stats.bytesIn, sent);
});

test("diagnostics_channel: connection open, close and error; server listen and close", async (t) => {
  const engine = freshEngine(t);
  const seen: string[] = [];
  const handlers: Record<string, (m: unknown) => void> = {
    "pants-ts:connection:open": () => seen.push("open"),
    "pants-ts:connection:close": () => seen.push("close"),
    "pants-ts:connection:error": (m) => seen.push(`error:${(m as { kind: string }).kind}`),
    "pants-ts:server:listen": () => seen.push("listen"),
    "pants-ts:server:close": () => seen.push("server-close"),
  };
  for (const [name, fn] of Object.entries(handlers)) subscribe(name, fn);
  t.after(() => {
    for (const [name, fn] of Object.entries(handlers)) unsubscribe(name, fn);
  });
  setLogger(null);
  t.after(() => setLogger(undefined));
  class Boom extends Echo {
    override onRead() {
      throw new Error("boom");
    }
  }
  const server = new Server(Boom, { engine });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.write("x\n");
  await c.readToEnd();
  server.close();
  await waitFor(() => seen.includes("server-close"));
  assert.deepEqual(seen, ["listen", "open", "error:handler", "close", "server-close"]);
});

test("diagnostics_channel: a connection cut in its TLS handshake is published as closed, with no open (pair them by stream)", { skip: !hasOpenssl() && "the openssl command is not installed" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const opened = new Set<unknown>();
  const closed: Array<{ stream: unknown; opened: boolean }> = [];
  const onOpen = (m: unknown) => opened.add((m as { stream: unknown }).stream);
  const onClose = (m: unknown) => {
    const stream = (m as { stream: unknown }).stream;
    closed.push({ stream, opened: opened.has(stream) });
  };
  subscribe("pants-ts:connection:open", onOpen);
  subscribe("pants-ts:connection:close", onClose);
  t.after(() => {
    unsubscribe("pants-ts:connection:open", onOpen);
    unsubscribe("pants-ts:connection:close", onClose);
  });
  setLogger(null);
  t.after(() => setLogger(undefined));
  const server = new Server(Echo, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.write("GET / HTTP/1.1\r\n\r\n"); // not a ClientHello
  await c.readToEnd();
  await waitFor(() => closed.length === 1, 2000, "the close published");
  assert.equal(opened.size, 0, "never opened");
  assert.ok(closed[0]!.stream instanceof Stream);
  assert.equal(closed[0]!.opened, false);
  assert.equal(server.stats.closed, 1);
  server.close();
});

test("diagnostics_channel: a connection refused before it was a stream (a bad PROXY header) is published too", async (t) => {
  const engine = freshEngine(t);
  const seen: Array<{ kind: string; channel: unknown }> = [];
  const onError = (m: unknown) => seen.push(m as { kind: string; channel: unknown });
  subscribe("pants-ts:connection:error", onError);
  t.after(() => unsubscribe("pants-ts:connection:error", onError));
  setLogger(null);
  t.after(() => setLogger(undefined));
  const server = new Server(Echo, { engine, proxyProtocol: true });
  const port = await listenLocal(server);
  const c = await connect(port);
  c.write("GET / HTTP/1.1\r\n\r\n");
  await c.readToEnd();
  await waitFor(() => server.stats.errorsByKind["proxy"] === 1, 2000, "the PROXY failure counted");
  assert.equal(seen.length, 1, "published once");
  assert.equal(seen[0]!.kind, "proxy");
  assert.equal(seen[0]!.channel, server, "the server is the channel: there is no stream yet");
  server.close();
});

test("NODE_DEBUG=pants-ts shows debug lines; by default ordinary resets print nothing", async () => {
  const script = `
    import { Server, Stream } from "./src/index.ts";
    const server = new Server(Stream).listen(["127.0.0.1", 0]);
    await server.ready();
    const net = await import("node:net");
    const c = net.connect(server.localAddress[1], "127.0.0.1", () => { c.resetAndDestroy(); setTimeout(() => server.close(), 100); });
  `;
  const run = (env: NodeJS.ProcessEnv) =>
    new Promise<string>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: root, env: { ...process.env, ...env } });
      let err = "";
      child.stderr.on("data", (d) => (err += d));
      child.on("exit", () => resolve(err));
    });
  const quiet = await run({ NODE_DEBUG: "" });
  assert.equal(quiet, "", "nothing on stderr for an ordinary reset");
  const debug = await run({ NODE_DEBUG: "pants-ts" });
  assert.match(debug, /PANTS-TS \d+: pants-ts debug/);
});

test("setLogger() refuses a logger without the four methods with a coded TypeError", () => {
  for (const bad of [{}, { error() {}, warn() {}, info() {} }, 5, "pino"]) {
    assert.throws(() => setLogger(bad as never), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
  }
});

test("under --unhandled-rejections=strict, resets, half-closes and vanishing clients never crash the server", { timeout: 60_000 }, async (t) => {
  const script = `
    import { Server, Stream } from "./src/index.ts";
    class Echo extends Stream {
      onConnect() { this.readDelimiter = "\\n"; }
      async onRead(d) {
        if (String(d) === "big") { for (let i = 0; i < 32; i++) this.write(Buffer.alloc(1 << 20)); return; }
        if (String(d) === "reject") throw new Error("async handler failure");
        await new Promise((r) => setTimeout(r, 1));
        if (!this.closed) this.write(d + "\\n");
      }
    }
    const server = new Server(Echo).listen(["127.0.0.1", 0]);
    await server.ready();
    process.stdout.write(server.localAddress[1] + "\\n");
  `;
  const child = spawn(process.execPath, ["--unhandled-rejections=strict", "--import", "tsx", "--input-type=module", "-e", script], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  t.after(() => child.kill("SIGKILL"));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once("exit", (code) => reject(new Error(`exited ${code}: ${stderr}`)));
  });
  for (let round = 0; round < 20; round++) {
    // Reset mid-write.
    const a = net.connect(port, "127.0.0.1");
    a.on("error", () => {});
    a.on("data", () => a.resetAndDestroy());
    a.write("big\n");
    // Half-close right after a request.
    const b = net.connect(port, "127.0.0.1");
    b.on("error", () => {});
    b.end("half\n");
    b.resume();
    // Vanish mid-request, and trigger async rejections.
    const c = net.connect(port, "127.0.0.1");
    c.on("error", () => {});
    c.write("reject\npartial");
    setTimeout(() => c.destroy(), 2);
  }
  await sleep(1000);
  const ok = await connect(port);
  ok.write("alive\n");
  assert.equal(await ok.readText(6, 5000), "alive\n");
  ok.destroy();
  assert.equal(child.exitCode, null, `the server crashed: ${stderr}`);
  assert.doesNotMatch(stderr, /Unhandled|uncaught/i);
});

test("the default logger writes warn and error lines to stderr; setLogger(null) silences it (real sockets)", async (t) => {
  const stderr = captureStderr(t);
  const engine = freshEngine(t);
  class Thrower extends Stream {
    override onRead() {
      throw new Error("handler boom");
    }
  }
  const port = await listenLocal(new Server(Thrower, { engine }), t);
  const refused = await freePort();
  /** A failed connect nobody awaits (the default onConnectError warns) and a handler that throws (the default onError logs an error). */
  const trouble = async () => {
    const client = new Stream({ engine }).connect(["127.0.0.1", refused]);
    const c = await connect(port);
    c.write("x");
    await c.readToEnd();
    await waitFor(() => client.closed);
    await sleep(20);
  };
  await trouble();
  assert.match(stderr.text(), /^pants-ts warn: .*ECONNREFUSED/m);
  assert.match(stderr.text(), /^pants-ts error: .*Thrower[^]*handler boom/m);
  stderr.clear();
  setLogger(null);
  await trouble();
  assert.equal(stderr.text(), "", "nothing once silenced");
});

test("every log record about one connection names it the same way: channel, and peer for a stream with one", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  class Named extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
      this.bufferSize = 16;
    }
    override onRead() {
      throw new Error("handler boom");
    }
  }
  const port = await listenLocal(new Server(Named, { engine, idleTimeoutMs: 150 }), t);
  const refused = await freePort();
  const client = new Stream({ engine }).connect(["127.0.0.1", refused]);
  const thrower = await connect(port);
  const flooder = await connect(port);
  const idler = await connect(port);
  const [throwerPort, flooderPort, idlerPort] = [thrower, flooder, idler].map((c) => c.socket.localPort);
  thrower.write("x\n");
  flooder.write("y".repeat(64));
  await Promise.all([thrower.readToEnd(), flooder.readToEnd(), idler.readToEnd()]);
  await waitFor(() => client.closed);
  const kinds: Array<[string, RegExp, string]> = [
    ["connect error", /^Connect failed/, `127.0.0.1:${refused}`],
    ["handler error", /^Exception raised in a handler of Named /, `127.0.0.1:${throwerPort}`],
    ["overflow", /bufferSize/, `127.0.0.1:${flooderPort}`],
    ["idle timeout", /^Idle timeout\.$/, `127.0.0.1:${idlerPort}`],
  ];
  for (const [kind, msg, peer] of kinds) {
    const record = logs.find((l) => msg.test(l.msg));
    assert.ok(record, `a ${kind} record among ${JSON.stringify(logs.map((l) => l.msg))}`);
    const fields = record.obj as { channel?: unknown; peer?: unknown };
    assert.equal(typeof fields.channel, "string", `${kind}: ${JSON.stringify(fields)}`);
    assert.equal(fields.peer, peer, kind);
  }
});

test("a logger's isLevelEnabled('debug') === false gets no debug records (none is built); turned on at run time, it gets them; one that throws counts as on", async (t) => {
  const records: Array<{ level: string; msg: string }> = [];
  let debugOn = false;
  let asked = 0;
  const make = (level: string) => (objOrMsg: unknown, msg?: string) => {
    records.push({ level, msg: typeof objOrMsg === "string" ? objOrMsg : (msg ?? "") });
  };
  const logger = {
    error: make("error"),
    warn: make("warn"),
    info: make("info"),
    debug: make("debug"),
    isLevelEnabled(level: string): boolean {
      asked++;
      if (debugOn === null) throw new Error("level lookup failed");
      return level !== "debug" || debugOn;
    },
  };
  setLogger(logger);
  t.after(() => setLogger(undefined));
  const engine = freshEngine(t);
  class Thrower extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
      this.bufferSize = 16;
    }
    override onRead() {
      throw new Error("handler boom");
    }
  }
  const port = await listenLocal(new Server(Thrower, { engine, idleTimeoutMs: 100 }), t);
  const round = async () => {
    const thrower = await connect(port);
    const flooder = await connect(port);
    const idler = await connect(port);
    thrower.write("x\n");
    flooder.write("y".repeat(64));
    await Promise.all([thrower.readToEnd(), flooder.readToEnd(), idler.readToEnd()]);
    await sleep(20);
  };
  await round();
  assert.ok(asked > 0, "isLevelEnabled was asked");
  assert.deepEqual(records.filter((r) => r.level === "debug").map((r) => r.msg), []);
  assert.equal(records.filter((r) => r.level === "error" && /handler boom|Exception raised/.test(r.msg)).length, 1, JSON.stringify(records));
  debugOn = true;
  records.length = 0;
  await round();
  const debug = records.filter((r) => r.level === "debug").map((r) => r.msg);
  assert.ok(debug.includes("Idle timeout."), JSON.stringify(debug));
  assert.ok(debug.some((m) => /bufferSize/.test(m)), JSON.stringify(debug));
  (debugOn as boolean | null) = null;
  records.length = 0;
  await round();
  assert.ok(records.some((r) => r.level === "debug" && r.msg === "Idle timeout."), JSON.stringify(records));
});
