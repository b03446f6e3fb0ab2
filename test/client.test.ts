/**
 * Client streams: connect errors always end in onConnectError then
 * onClose (Pants B4/B5), typed ConnectError with errno/syscall, ready()
 * rejection; a client talking to a server over every transport.
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { spawn } from "node:child_process";
import dns from "node:dns";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { ChannelStateError, ConnectError, Engine, InvalidAddressFormatError, Server, Stream, TimeoutError } from "../src/index.js";
import type { Address } from "../src/index.js";
import { captureLogs, failSetServername, freePort, freshEngine, hasIPv6, listenLocal, portOf, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { loadNative } from "../src/native-binding.js";

class Recording extends Stream {
  events: string[] = [];
  error: ConnectError | null = null;
  /** connecting, connected and closed as onConnectError saw them. */
  stateAtError: [boolean, boolean, boolean] | null = null;
  override onConnect() {
    this.events.push("connect");
  }
  override onConnectError(err: ConnectError) {
    this.events.push("connectError");
    this.error = err;
    this.stateAtError = [this.connecting, this.connected, this.closed];
  }
  override onClose() {
    this.events.push("close");
  }
}

/**
 * Makes dns.lookup answer `host` with `addresses` (IPv4, in that order) for
 * the test `t`; other names resolve as usual. Returns the options each
 * lookup of `host` was given.
 */
function fakeResolver(t: Parameters<typeof freshEngine>[0], host: string, addresses: string[], afterAnswer?: () => void): dns.LookupAllOptions[] {
  const asked: dns.LookupAllOptions[] = [];
  const real = dns.lookup;
  const fake = ((name: string, options: dns.LookupAllOptions, callback: (err: Error | null, all: dns.LookupAddress[]) => void) => {
    if (name !== host) return (real as unknown as (...a: unknown[]) => void)(name, options, callback);
    asked.push({ ...options });
    const all = addresses.map((address) => ({ address, family: 4 }));
    process.nextTick(() => {
      if (options.all) callback(null, all);
      else (callback as unknown as (e: null, a: string, f: number) => void)(null, all[0]!.address, 4);
      afterAnswer?.();
    });
    return undefined;
  }) as unknown as typeof dns.lookup;
  dns.lookup = fake;
  syncBuiltinESMExports();
  t.after(() => {
    dns.lookup = real;
    syncBuiltinESMExports();
  });
  return asked;
}

/**
 * A port on 127.0.0.1 whose connects hang: a live server (in a child process,
 * its loop blocked) whose accept queue is full, so the kernel drops SYNs.
 */
async function blackHolePort(t: Parameters<typeof freshEngine>[0]): Promise<number> {
  const busy = spawn(process.execPath, ["-e", `require("net").createServer().listen({ port: 0, host: "127.0.0.1", backlog: 1 }, function () {
    console.log(this.address().port);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 25000);
  })`], { stdio: ["ignore", "pipe", "inherit"] });
  t.after(() => busy.kill("SIGKILL"));
  const port = Number(await new Promise<string>((resolve) => busy.stdout!.once("data", (d: Buffer) => resolve(d.toString().trim()))));
  const fillers: net.Socket[] = [];
  t.after(() => fillers.forEach((c) => c.destroy()));
  let hanging = false;
  for (let i = 0; i < 16 && !hanging; i++) {
    const c = net.connect(port, "127.0.0.1");
    c.on("error", () => {});
    fillers.push(c);
    hanging = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(true), 300);
      c.once("connect", () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
  }
  assert.ok(hanging, "a connect to the full queue hangs");
  return port;
}

async function failedConnect(t: Parameters<typeof freshEngine>[0], address: Address): Promise<Recording> {
  captureLogs(t);
  const engine = freshEngine(t);
  const s = new Recording({ engine }).connect(address);
  await assert.rejects(s.ready(), ConnectError);
  await waitFor(() => s.events.includes("close"));
  assert.deepEqual(s.events, ["connectError", "close"]);
  assert.deepEqual(s.stateAtError, [false, false, false], "in onConnectError: no longer connecting (as node:net's socket in 'error'), not connected, not yet closed");
  assert.equal(s.closed, true);
  assert.ok(s.error instanceof ConnectError);
  assert.equal(s.error.code, "ERR_CONNECT");
  return s;
}

test("connection refused: onConnectError(ConnectError ECONNREFUSED), then onClose", async (t) => {
  const s = await failedConnect(t, ["127.0.0.1", await freePort()]);
  assert.equal(s.error!.errno, "ECONNREFUSED");
  assert.equal(s.error!.syscall, "connect");
  assert.ok(s.error!.cause instanceof Error);
});

test("a connect to [\"\", port] goes to this host's loopback, and its error says so (not 0.0.0.0, listen's meaning of \"\")", async (t) => {
  const port = await freePort();
  const v4 = await failedConnect(t, ["", port]);
  assert.match(v4.error!.message, new RegExp(` to 127\\.0\\.0\\.1:${port}: `), v4.error!.message);
  if (await hasIPv6()) {
    const v6 = await failedConnect(t, ["", port, 0, 0]);
    assert.match(v6.error!.message, new RegExp(` to \\[::1\\]:${port}: `), v6.error!.message);
  }
});

test("idleTimeout set before connect() bounds the connect: ConnectError ETIMEDOUT (a TimeoutError), then onClose", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await blackHolePort(t);
  const s = new Recording({ engine });
  s.idleTimeout = 300;
  const start = Date.now();
  s.connect(["127.0.0.1", port]);
  await assert.rejects(s.ready(), ConnectError);
  const took = Date.now() - start;
  await waitFor(() => s.events.includes("close"));
  assert.deepEqual(s.events, ["connectError", "close"]);
  assert.equal(s.error!.errno, "ETIMEDOUT");
  assert.equal(s.error!.syscall, "connect");
  assert.ok(s.error!.cause instanceof TimeoutError && s.error!.cause.kind === "connect", String(s.error!.cause));
  assert.ok(took >= 250 && took < 5000, `failed after ${took} ms`);
});

test("idleTimeout set again during the connect bounds it from then, not from connect(), as documented", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const port = await blackHolePort(t);
  const s = new Recording({ engine });
  s.idleTimeout = 1000;
  s.connect(["127.0.0.1", port]);
  engine.advance(600);
  s.idleTimeout = 500; // 600 ms into the connect: 500 ms more, from now
  engine.advance(300);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(s.connecting, true, `300 ms after the new timeout was set; events ${s.events.join(",")}`);
  engine.advance(300);
  await assert.rejects(s.ready(), ConnectError);
  await waitFor(() => s.events.includes("close"));
  assert.deepEqual(s.events, ["connectError", "close"]);
  assert.equal(s.error!.errno, "ETIMEDOUT");
});

/** A TCP server that accepts and never answers a ClientHello; its address. */
async function silentTlsPeer(t: TestContext): Promise<[string, number]> {
  const silent = net.createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  t.after(() => silent.close());
  return ["127.0.0.1", (silent.address() as net.AddressInfo).port];
}

test("a TLS client's handshake timeout is a ConnectError caused by TimeoutError 'handshake', not a connect timeout", async (t) => {
  captureLogs(t);
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const s = new Recording({ engine, sslOptions: { cert_reqs: "CERT_NONE" } }).connect(await silentTlsPeer(t));
  const failed = assert.rejects(s.ready(), ConnectError);
  await waitFor(() => !s.connecting, 5000, "the TCP connect");
  engine.advance(10_001);
  await failed;
  await waitFor(() => s.events.includes("close"));
  assert.deepEqual(s.events, ["connectError", "close"]);
  assert.ok(s.error!.cause instanceof TimeoutError && s.error!.cause.kind === "handshake", String(s.error!.cause));
  assert.notEqual(s.error!.errno, "ETIMEDOUT", "not reported as a TCP connect timeout");
});

test("handshakeTimeout on a client: set before connect() or during the handshake, it bounds the handshake instead of the 10 s default", async (t) => {
  captureLogs(t);
  const engine = new Engine({ manualClock: true });
  t.after(() => engine.stop());
  const target = await silentTlsPeer(t);
  const dflt = new Recording({ engine, sslOptions: { cert_reqs: "CERT_NONE" } });
  const early = new Recording({ engine, sslOptions: { cert_reqs: "CERT_NONE" } });
  assert.equal(early.handshakeTimeout, 10_000);
  early.handshakeTimeout = 2000;
  const during = new Recording({ engine, sslOptions: { cert_reqs: "CERT_NONE" } });
  for (const s of [dflt, early, during]) s.connect(target);
  await waitFor(() => !dflt.connecting && !early.connecting && !during.connecting, 5000, "the TCP connects");
  engine.advance(1000);
  during.handshakeTimeout = 500; // 1 s into its handshake: 500 ms more, from now
  engine.advance(600);
  await assert.rejects(during.ready(), ConnectError);
  assert.equal(early.closed, false, "early, 1.6 s into a 2 s handshake timeout");
  engine.advance(500);
  await assert.rejects(early.ready(), ConnectError);
  assert.ok(early.error!.cause instanceof TimeoutError && early.error!.cause.kind === "handshake", String(early.error!.cause));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(dflt.closed, false, "the default client at 2.1 s");
  engine.advance(8000);
  await assert.rejects(dflt.ready(), ConnectError);
  for (const s of [dflt, early, during]) {
    await waitFor(() => s.events.includes("close"));
    assert.deepEqual(s.events, ["connectError", "close"]);
  }
});

test("handshakeTimeout: 0 turns the limit off; typed errors for bad values", (t) => {
  const engine = freshEngine(t);
  const s = new Stream({ engine });
  s.handshakeTimeout = 0;
  assert.equal(s.handshakeTimeout, 0);
  assert.throws(() => (s.handshakeTimeout = -1), RangeError);
  assert.throws(() => (s.handshakeTimeout = Number.POSITIVE_INFINITY), RangeError);
  assert.throws(() => (s.handshakeTimeout = "10" as unknown as number), TypeError);
});

test("a TCP client's remoteAddress is its target until it connects (or when it never does), then the peer's, read once connected", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const seen: Array<[string, unknown, unknown]> = [];
  class Addresses extends Recording {
    override onConnectError(err: ConnectError) {
      seen.push(["connectError", this.remoteAddress, null]);
      super.onConnectError(err);
    }
    override onClose() {
      seen.push(["close", this.remoteAddress, null]);
      super.onClose();
    }
  }
  const refusedPort = await freePort();
  const refused = new Addresses({ engine }).connect(["127.0.0.1", refusedPort]);
  await assert.rejects(refused.ready(), ConnectError);
  await waitFor(() => refused.events.includes("close"));
  assert.deepEqual(seen, [["connectError", ["127.0.0.1", refusedPort], null], ["close", ["127.0.0.1", refusedPort], null]]);

  // Asked while connecting, then once connected: the second answer is the real one (not the first, cached).
  const server = new Server(Stream, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  const client = new Recording({ engine }).connect(["127.0.0.1", portOf(server)]);
  assert.deepEqual(client.remoteAddress, ["127.0.0.1", portOf(server)], "while connecting: the target");
  await client.ready();
  const local = client.localAddress as [string, number];
  assert.ok(Array.isArray(local) && local[0] === "127.0.0.1" && local[1] > 0, `the local address once connected: ${JSON.stringify(local)}`);
  client.close();
});

test("unknown host: ConnectError with the resolver's code, asynchronously", async (t) => {
  const s = await failedConnect(t, ["no-such-host.invalid", 80]);
  assert.ok(["ENOTFOUND", "EAI_AGAIN", "EAI_FAIL"].includes(String(s.error!.errno)), String(s.error!.errno));
});

test("a NUL byte inside a UNIX path or a host name is an invalid address, not a connect to what comes before it (the OS stops reading there)", async (t) => {
  const engine = freshEngine(t);
  const path = join(tempDir(t), "app.sock");
  const unix = new Server(null, { engine }).listen(path);
  await unix.ready();
  t.after(() => unix.close());
  const tcp = new Server(null, { engine }).listen(["127.0.0.1", 0]);
  await tcp.ready();
  t.after(() => tcp.close());
  const port = portOf(tcp);
  for (const address of [`${path}\0.other`, ["127.0.0.1\0.evil.example", port], ["localhost\0.evil.example", port], ["::1\0x", port, 0, 0]] as Address[]) {
    const c = new Stream({ engine });
    assert.throws(() => c.connect(address), InvalidAddressFormatError, `connect(${JSON.stringify(address)})`);
    assert.equal(c.connecting, false);
    assert.throws(() => new Server(null, { engine }).listen(address), InvalidAddressFormatError, `listen(${JSON.stringify(address)})`);
  }
  // Nothing reached the servers meanwhile; the path itself works.
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(unix.channels.size + tcp.channels.size, 0);
  await new Stream({ engine }).connect(path).ready();
});

test("missing UNIX socket path: ConnectError ENOENT", async (t) => {
  const dir = tempDir(t);
  const s = await failedConnect(t, join(dir, "nope.sock"));
  assert.equal(s.error!.errno, "ENOENT");
});

test("the default onConnectError logs a warning, or at debug when ready() reports the failure", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const port = await freePort();
  // Nobody asked ready(): a failed connect is worth a warning.
  const unwatched = new Stream({ engine }).connect(["127.0.0.1", port]);
  await waitFor(() => unwatched.closed);
  assert.deepEqual(logs.filter((l) => /Connect failed/.test(l.msg)).map((l) => l.level), ["warn"]);
  // The caller awaits ready(): its rejection tells them; the log stays quiet.
  logs.length = 0;
  const watched = new Stream({ engine }).connect(["127.0.0.1", port]);
  await assert.rejects(watched.ready(), ConnectError);
  assert.deepEqual(logs.filter((l) => /Connect failed/.test(l.msg)).map((l) => l.level), ["debug"]);
});

test("a TLS client meeting a plain TCP server: ConnectError's message and the default warning are one line (OpenSSL's message ends with a newline)", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const plain = net.createServer((c) => {
    c.on("error", () => {});
    c.on("data", () => c.write("-ERR unknown command\r\n"));
  });
  await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
  t.after(() => plain.close());
  const s = new Recording({ engine, sslOptions: { cert_reqs: "CERT_NONE" } }).connect(["127.0.0.1", (plain.address() as net.AddressInfo).port]);
  await waitFor(() => s.events.includes("close"));
  assert.deepEqual(s.events, ["connectError", "close"]);
  assert.equal(s.error!.errno, "ERR_SSL_WRONG_VERSION_NUMBER");
  assert.match(s.error!.message, /TLS handshake failed: .*wrong version number/);
  assert.doesNotMatch(s.error!.message, /\s$/, "no trailing newline (there was OpenSSL's)");
  const quiet = new Stream({ engine, sslOptions: { cert_reqs: "CERT_NONE" } }).connect(["127.0.0.1", (plain.address() as net.AddressInfo).port]);
  await waitFor(() => quiet.closed);
  const warned = logs.filter((l) => l.level === "warn" && /Connect failed/.test(l.msg));
  assert.equal(warned.length, 1);
  assert.doesNotMatch(warned[0]!.msg, /\n/);
});

test("ready() settles when onConnect closes the stream (close(), close(false), or a throw)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine }).listen(["127.0.0.1", 0]);
  await server.ready();
  t.after(() => server.close());
  for (const how of ["close", "close(false)", "throw"]) {
    class Quitter extends Stream {
      override onConnect() {
        if (how === "throw") throw new Error("no thanks");
        this.close(how === "close");
      }
    }
    const s = new Quitter({ engine }).connect(["127.0.0.1", portOf(server)]);
    const settled = await Promise.race([s.ready().then(() => "resolved"), new Promise((r) => setTimeout(r, 3000, "pending"))]);
    assert.equal(settled, "resolved", how);
    assert.equal(s.closed, true, how);
  }
});

test("a host name with several addresses: each is tried in turn until one connects (\"localhost\" as ::1, then 127.0.0.1)", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine }).listen(["127.0.0.1", 0]); // IPv4 only
  await server.ready();
  t.after(() => server.close());
  // A resolver that answers with an address nobody listens on first.
  fakeResolver(t, "several.example", ["127.0.0.2", "127.0.0.1"]);
  const s = new Stream({ engine }).connect(["several.example", portOf(server)]);
  await s.ready();
  assert.deepEqual(s.remoteAddress, ["127.0.0.1", portOf(server)]);
  s.close();
});

test("a host name is looked up as node:net looks it up: only this host's families (ADDRCONFIG), unless a family was asked for", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const asked = fakeResolver(t, "hinted.test", ["127.0.0.1"]);
  for (const target of [["hinted.test", port], ["hinted.test", port, 0, 0]] as Address[]) {
    const c = new Stream({ engine }).connect(target);
    await c.ready().catch(() => {});
    c.close();
  }
  const node = net.connect(port, "hinted.test");
  await new Promise((resolve) => node.once("connect", resolve).once("error", resolve));
  node.destroy();
  assert.equal(asked.length, 3, JSON.stringify(asked));
  assert.equal(asked[0]!.hints, asked[2]!.hints, "the hints node:net gives");
  assert.equal(asked[0]!.hints, dns.ADDRCONFIG);
  assert.equal(asked[1]!.family, 6, "a 4-tuple asks for IPv6");
  assert.ok(!asked[1]!.hints, "with a family given, no hints");
});

const ipv6 = await hasIPv6();

for (const kind of ["ipv4", "ipv6", "unix"] as const) {
  test(`a pants-ts client and server talk over ${kind}`, { skip: kind === "ipv6" && !ipv6 && "no IPv6" }, async (t) => {
    const engine = freshEngine(t);
    class Upper extends Stream {
      override onConnect() {
        this.readDelimiter = "\n";
      }
      override onRead(line: Buffer) {
        this.write(line.toString().toUpperCase() + "\n");
      }
    }
    const address: Address = kind === "ipv4" ? ["127.0.0.1", 0] : kind === "ipv6" ? ["::1", 0] : join(tempDir(t), "c.sock");
    const server = new Server(Upper, { engine }).listen(address);
    await server.ready();
    t.after(() => server.close());
    const replies: string[] = [];
    class Client extends Stream {
      override onConnect() {
        this.readDelimiter = "\n";
        this.write("one\ntwo\n");
      }
      override onRead(line: Buffer) {
        replies.push(line.toString());
        if (replies.length === 2) this.close();
      }
    }
    const target: Address = kind === "unix" ? (address as string) : [kind === "ipv4" ? "127.0.0.1" : "::1", portOf(server)];
    const client = new Client({ engine }).connect(target);
    await client.ready();
    await waitFor(() => client.closed);
    assert.deepEqual(replies, ["ONE", "TWO"]);
  });
}

/** A node:tls server with a.test's certificate on 127.0.0.1, recording the SNI name each client sends. */
async function aTestServer(t: TestContext): Promise<{ certs: ReturnType<typeof makeCerts>; seen: Array<string | false | null>; port: number }> {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const seen: Array<string | false | null> = [];
  const server = tls.createServer({ key: certs.sniA.keyPem, cert: certs.sniA.certPem }, (c) => {
    seen.push(c.servername);
    c.on("error", () => {});
    c.end("hello\n");
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  return { certs, seen, port: (server.address() as net.AddressInfo).port };
}

test("a TLS client connecting to an absolute host name (\"a.test.\") sends SNI without the trailing dot, as RFC 6066 requires, and verifies that name's certificate", { skip: !hasOpenssl() && "the openssl command is not installed", timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const { certs, seen, port } = await aTestServer(t);
  fakeResolver(t, "a.test.", ["127.0.0.1"]);
  const s = new Recording({ engine, sslOptions: { ca: certs.ca.certPem } }).connect(["a.test.", port]);
  await s.ready();
  assert.equal(s.authorized, true);
  await waitFor(() => seen.length === 1);
  assert.deepEqual(seen, ["a.test"]);
  s.close();
});

test("a TLS client's explicit servername \"a.test.\" is sent in SNI and verified without the trailing dot, as one taken from the host is", { skip: !hasOpenssl() && "the openssl command is not installed", timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const { certs, seen, port } = await aTestServer(t);
  const checked: string[] = [];
  const checkServerIdentity = (host: string, cert: tls.PeerCertificate) => {
    checked.push(host);
    return tls.checkServerIdentity(host, cert);
  };
  const s = new Recording({ engine, sslOptions: { ca: certs.ca.certPem, servername: "a.test.", checkServerIdentity } });
  s.connect(["127.0.0.1", port]);
  await s.ready();
  assert.equal(s.authorized, true);
  await waitFor(() => seen.length === 1);
  assert.deepEqual(seen, ["a.test"]);
  assert.deepEqual(checked, ["a.test"]);
  s.close();
});

test("startSSL() called while the connect is under way: the connection is TLS from the start (every transport)", { skip: !hasOpenssl() && "the openssl command is not installed", timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const server = tls.createServer({ key: certs.server.keyPem, cert: certs.server.certPem }, (c) => {
    c.on("error", () => {});
    c.on("data", (d) => c.end(`echo:${d}`));
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const reads: string[] = [];
  class Client extends Recording {
    override onSslHandshake() {
      this.events.push("sslHandshake");
    }
    override onConnect() {
      super.onConnect();
      this.readDelimiter = "\n";
      this.write("hi\n");
    }
    override onRead(line: Buffer) {
      reads.push(line.toString());
    }
  }
  // Synchronously after connect(), and after an await (the connect still under way).
  for (const when of ["sync", "later"] as const) {
    reads.length = 0;
    const s = new Client({ engine }).connect(["127.0.0.1", port]);
    if (when === "sync") s.startSSL({ ca: certs.ca.certPem });
    else {
      await Promise.resolve();
      assert.equal(s.connecting, true);
      s.startSSL({ ca: certs.ca.certPem });
    }
    const settled = await Promise.race([s.ready().then(() => "resolved", (e: Error) => `rejected: ${e.message}`), new Promise((r) => setTimeout(r, 5000, "pending"))]);
    assert.equal(settled, "resolved", when);
    assert.equal(s.sslEnabled, true, when);
    assert.equal(s.authorized, true, when);
    await waitFor(() => s.events.includes("close"), 5000, `${when}: the close`);
    assert.deepEqual(s.events, ["sslHandshake", "connect", "close"], when);
    assert.deepEqual(reads, ["echo:hi"], when);
  }
  // Verification stays on: the wrong host name fails as a typed connect error.
  const other = tls.createServer({ key: certs.otherHost.keyPem, cert: certs.otherHost.certPem }, (c) => c.on("error", () => {}));
  other.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => other.listen(0, "127.0.0.1", resolve));
  t.after(() => other.close());
  const bad = new Recording({ engine }).connect(["127.0.0.1", (other.address() as net.AddressInfo).port]);
  bad.startSSL({ ca: certs.ca.certPem });
  await assert.rejects(bad.ready(), ConnectError);
  await waitFor(() => bad.events.includes("close"));
  assert.deepEqual(bad.events, ["connectError", "close"]);
  assert.equal(bad.error!.errno, "ERR_TLS_CERT_ALTNAME_INVALID");
});

test("a host name whose every address refuses: ConnectError ECONNREFUSED with syscall 'connect' (every transport)", async (t) => {
  const port = await freePort();
  fakeResolver(t, "all-refuse.example", ["127.0.0.2", "127.0.0.1"]);
  const s = await failedConnect(t, ["all-refuse.example", port]);
  assert.equal(s.error!.errno, "ECONNREFUSED");
  assert.equal(s.error!.syscall, "connect");
  // The message names why, not node:net's empty AggregateError message.
  assert.match(s.error!.message, /: connect ECONNREFUSED 127\.0\.0\.\d:\d+/);
});

test("a host name whose addresses fail differently: the error is node:net's on every transport (errno of the first attempt, an AggregateError of all the attempts as cause)", async (t) => {
  const port = await freePort();
  // A TCP connect to the broadcast address fails at once (ENETUNREACH); 127.0.0.1:port refuses.
  fakeResolver(t, "mixed-failures.example", ["255.255.255.255", "127.0.0.1"]);
  const s = await failedConnect(t, ["mixed-failures.example", port]);
  assert.equal(s.error!.errno, "ENETUNREACH", "the first attempt's code, as node:net's AggregateError has it (the native transport said ECONNREFUSED, the last one's)");
  assert.equal(s.error!.syscall, "connect");
  const cause = s.error!.cause;
  assert.ok(cause instanceof AggregateError, `cause: ${String(cause)}`);
  assert.deepEqual(cause.errors.map((e: NodeJS.ErrnoException) => [e.code, e.syscall]), [["ENETUNREACH", "connect"], ["ECONNREFUSED", "connect"]]);
  assert.match(s.error!.message, new RegExp(`: connect ENETUNREACH 255\\.255\\.255\\.255:${port}[^;]*; connect ECONNREFUSED 127\\.0\\.0\\.1:${port}$`), s.error!.message);
});

/**
 * A host name `name` whose first address, 127.0.0.1:port, drops SYNs (a live
 * server whose full queue nobody accepts from) and whose second,
 * 127.0.0.2:port, answers "hello": the port, or null where 127.0.0.2 is no
 * loopback address.
 */
async function blackHoleFirst(t: TestContext, name: string): Promise<number | null> {
  const port = await blackHolePort(t);
  const good = net.createServer((c) => c.end("hello\n"));
  const listening = await new Promise<boolean>((resolve) => {
    good.once("error", () => resolve(false));
    good.listen(port, "127.0.0.2", () => resolve(true));
  });
  if (!listening) return null;
  t.after(() => good.close());
  fakeResolver(t, name, ["127.0.0.1", "127.0.0.2"]);
  return port;
}

test("a host name whose first address never answers: the next is tried after node:net's attempt timeout, not the kernel's minutes (every transport)", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await blackHoleFirst(t, "blackhole-first.example");
  if (port === null) return t.skip("127.0.0.2 is not a loopback address here");
  const start = Date.now();
  const s = new Recording({ engine }).connect(["blackhole-first.example", port]);
  const settled = await Promise.race([s.ready().then(() => "resolved", (e: Error) => `rejected: ${e.message}`), new Promise((r) => setTimeout(r, 5000, "pending"))]);
  assert.equal(settled, "resolved");
  assert.ok(Date.now() - start < 3000, `connected after ${Date.now() - start} ms`);
  assert.deepEqual(s.remoteAddress, ["127.0.0.2", port]);
  assert.deepEqual(s.events, ["connect"]);
  s.close();
  await waitFor(() => s.closed);
});

test("remoteAddress asked while a host name's connect hangs is the target, then the peer's once connected (every transport)", { timeout: 30_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await blackHoleFirst(t, "asked-early.example");
  if (port === null) return t.skip("127.0.0.2 is not a loopback address here");
  let atConnect: unknown = null;
  class Asking extends Recording {
    override onConnect() {
      atConnect = this.remoteAddress;
      super.onConnect();
    }
  }
  const s = new Asking({ engine }).connect(["asked-early.example", port]);
  const seen = new Set<string>();
  const ask = setInterval(() => s.connecting && seen.add(JSON.stringify(s.remoteAddress)), 10); // a log line, say
  t.after(() => clearInterval(ask));
  await s.ready();
  clearInterval(ask);
  assert.deepEqual([...seen], [JSON.stringify(["asked-early.example", port])], "while connecting: the target");
  assert.deepEqual(atConnect, ["127.0.0.2", port], "at onConnect: the peer");
  assert.deepEqual(s.remoteAddress, ["127.0.0.2", port]);
  s.close();
  await waitFor(() => s.closed);
});

test("remoteAddress asked in the turn before the connect callback, the kernel connected already: still the target (every transport, as node:net)", async (t) => {
  const engine = freshEngine(t);
  const server = net.createServer((c) => c.on("error", () => {}));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  let asked: unknown = "not asked";
  // The connect starts in a check phase, right after the answer. The timer
  // is due by the end of the wait, in which a loopback connect completes in
  // the kernel, and the timers phase comes before the poll phase that
  // delivers the connect: the ask sees a connected socket, a stream still connecting.
  fakeResolver(t, "early-peer.example", ["127.0.0.1"], () => {
    setTimeout(() => {
      if (s.connecting) asked = s.remoteAddress;
    }, 1);
    const until = performance.now() + 5;
    while (performance.now() < until);
  });
  let s!: Recording;
  await new Promise<void>((resolve) =>
    setImmediate(() => {
      s = new Recording({ engine }).connect(["early-peer.example", port]);
      resolve();
    }),
  );
  await s.ready();
  assert.deepEqual(asked, ["early-peer.example", port], "while connecting: the target");
  assert.deepEqual(s.remoteAddress, ["127.0.0.1", port]);
  s.close();
  await waitFor(() => s.closed);
});

test("a server that speaks first (a banner): the client's onConnect still comes first, and its delimiter frames the banner (Pants B6)", async (t) => {
  const engine = freshEngine(t);
  // A raw server whose banner leaves with the SYN-ACK's answer, so the connect
  // completion and the first bytes reach the client together.
  const raw = net.createServer((s) => {
    s.on("error", () => {});
    s.write("HELLO\r\nWORLD\r\n");
  });
  await new Promise<void>((r) => raw.listen(0, "127.0.0.1", r));
  t.after(() => raw.close());
  const port = (raw.address() as net.AddressInfo).port;
  class Client extends Stream {
    events: string[] = [];
    override onConnect() {
      this.events.push(`connect:${this.connected}`);
      this.readDelimiter = "\r\n";
    }
    override onRead(line: Buffer) {
      this.events.push(`read:${line}`);
      if (this.events.length === 3) this.close();
    }
  }
  const clients = Array.from({ length: 20 }, () => new Client({ engine }).connect(["127.0.0.1", port]));
  await waitFor(() => clients.every((c) => c.events.some((e) => e.startsWith("read"))), 5000, "every client to read the banner");
  await waitFor(() => clients.every((c) => c.closed), 5000).catch(() => {}); // the assertion below says what went wrong
  for (const c of clients) assert.deepEqual(c.events, ["connect:true", "read:HELLO", "read:WORLD"]);
  for (const c of clients) c.close();
});

test("a failed connect never reports inside connect(): refused, unknown host, missing UNIX path (Pants B5, B7)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const targets: Address[] = [["127.0.0.1", await freePort()], ["no-such-host.invalid", 80], join(tempDir(t), "nope.sock")];
  for (const address of targets) {
    const s = new Recording({ engine }).connect(address);
    assert.deepEqual(s.events, [], `nothing inside connect(${JSON.stringify(address)})`);
    assert.equal(s.closed, false);
    await assert.rejects(s.ready(), ConnectError);
    await waitFor(() => s.events.includes("close"));
    assert.deepEqual(s.events, ["connectError", "close"], JSON.stringify(address));
  }
});

test("a TLS client whose onSslHandshakeError (or onSslError) closes the stream or throws still gets onConnectError before onClose (every failed connect ends so)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  // A plain server that answers the ClientHello with text: the handshake fails.
  const plain = net.createServer((c) => {
    c.on("error", () => {});
    c.end("HELLO, THIS IS NOT TLS\r\n");
  });
  t.after(() => plain.close());
  await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
  const port = (plain.address() as net.AddressInfo).port;
  class Failing extends Recording {
    constructor(private readonly how: "close" | "close(false)" | "throw") {
      super({ engine, sslOptions: { rejectUnauthorized: false } });
    }
    override onSslHandshakeError() {
      this.events.push("sslHandshakeError");
      if (this.how === "throw") throw new Error("handler bug");
      this.close(this.how === "close");
    }
    override onError() {
      this.events.push("error");
      this.close(false);
    }
  }
  for (const how of ["close", "close(false)", "throw"] as const) {
    const s = new Failing(how).connect(["127.0.0.1", port]);
    const failure = await s.ready().then(() => null, (err: unknown) => err);
    await waitFor(() => s.events.includes("close"));
    const expected = how === "throw" ? ["sslHandshakeError", "error", "connectError", "close"] : ["sslHandshakeError", "connectError", "close"];
    assert.deepEqual(s.events, expected, how);
    assert.ok(s.error instanceof ConnectError, how);
    assert.equal(failure, s.error, `${how}: ready() rejects with the ConnectError onConnectError got`);
  }
  // TLS that cannot start at all (a check node:tls makes once it has the socket, made to fail): onSslError closes.
  const restore = failSetServername(t);
  class NoTls extends Recording {
    override onSslError() {
      this.events.push("sslError");
      this.close();
    }
  }
  const s = new NoTls({ engine, sslOptions: { servername: "x.test" } }).connect(["127.0.0.1", port]);
  await assert.rejects(s.ready(), ConnectError);
  await waitFor(() => s.events.includes("close"));
  restore();
  assert.deepEqual(s.events, ["sslError", "connectError", "close"], "onSslError closed it");
  assert.equal(engine.stats.open, 0);
  assert.equal(engine.channels.size, 0);
});

/** Pants' GoogleClient (test_simple_client.py, test_ssl.py): HEAD /, close on the answer, stop the engine in onClose. */
class HeadClient extends Stream {
  flags = { connect: false, handshake: false, read: false, close: false };
  override onSslHandshake() {
    this.flags.handshake = true;
  }
  override onConnect() {
    this.flags.connect = true;
    this.readDelimiter = "\r\n\r\n";
    this.write("HEAD / HTTP/1.1\r\n\r\n");
  }
  override onRead() {
    this.flags.read = true;
    this.close();
  }
  override onClose() {
    this.flags.close = true;
    this.engine.stop();
  }
}

/** A local stand-in for google.com: answers each request head with an empty 200. */
function headServer(engine: Engine): Server {
  class Http extends Stream {
    override onConnect() {
      this.readDelimiter = "\r\n\r\n";
    }
    override onRead() {
      this.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
  }
  return new Server(Http, { engine });
}

/** Runs `engine` until it stops, for at most `ms` (Pants joined its engine thread for 5 s). */
async function runFor(engine: Engine, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const stopped = await Promise.race([engine.start().then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return stopped;
}

test("Pants' simple client: onConnect, onRead, onClose, and engine.stop() in onClose settles start() (test_simple_client)", async (t) => {
  const serving = new Engine();
  t.after(() => serving.stop());
  const server = headServer(serving).listen(["127.0.0.1", 0]);
  await server.ready();
  const engine = freshEngine(t);
  const started = runFor(engine, 5000);
  const client = new HeadClient({ engine }).connect(["127.0.0.1", portOf(server)]); // after the engine started
  assert.equal(await started, true, "the engine stopped from onClose");
  assert.deepEqual(client.flags, { connect: true, handshake: false, read: true, close: true });
  assert.equal(engine.running, false);
});

/** Connects the unconnected `c` to 127.0.0.1:`port` from `local`, checks its source address is `from`, closes it and waits for the close. */
async function connectsFrom(c: Recording, port: number, local: Address, from: string): Promise<void> {
  c.connect(["127.0.0.1", port], { localAddress: local });
  await c.ready();
  assert.equal((c.localAddress as [string, number])[0], from);
  c.close();
  await waitFor(() => c.closed);
}

test("connect(address, { localAddress }) binds the source address and port: IPv4 (127.0.0.2), a port, a host name target, IPv6", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const peers: Address[] = [];
  class Peer extends Stream {
    override onConnect() {
      peers.push(this.remoteAddress!);
    }
  }
  const server = new Server(Peer, { engine });
  t.after(() => server.close());
  server.listen(["", 0]); // IPv4 and IPv6
  await server.ready();
  const port = portOf(server);
  const from = async (target: Address, localAddress: Address): Promise<[Address, Address]> => {
    const c = new Stream({ engine }).connect(target, { localAddress });
    await c.ready();
    await waitFor(() => peers.length > 0, 5000, "the server's onConnect");
    const seen: [Address, Address] = [c.localAddress!, peers.shift()!];
    c.close();
    return seen;
  };
  let [mine, theirs] = await from(["127.0.0.1", port], ["127.0.0.2", 0]);
  assert.equal((mine as [string, number])[0], "127.0.0.2");
  assert.equal((theirs as [string, number])[0], "127.0.0.2");
  assert.equal((theirs as [string, number])[1], (mine as [string, number])[1]);
  // A fixed source port, on any address.
  const sourcePort = await freePort();
  [mine, theirs] = await from(["127.0.0.1", port], sourcePort);
  assert.deepEqual(theirs, ["127.0.0.1", sourcePort]);
  // A host name: looked up in the local address's family.
  [, theirs] = await from(["localhost", port], ["127.0.0.3", 0]);
  assert.equal((theirs as [string, number])[0], "127.0.0.3");
  if (await hasIPv6()) {
    [mine, theirs] = await from(["::1", port, 0, 0], ["::1", 0, 0, 0]);
    assert.equal((theirs as [string, number])[0], "::1");
    [, theirs] = await from(["::1", port, 0, 0], ["", 0, 0, 0]); // any IPv6 address
    assert.equal((theirs as [string, number])[0], "::1");
  }
});

test("a TLS client binds its localAddress too", { skip: !hasOpenssl() && "the openssl command is not installed" }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  let peer: Address | null = null;
  class Peer extends Stream {
    override onConnect() {
      peer = this.remoteAddress;
    }
  }
  const port = await listenLocal(new Server(Peer, { engine, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } }), t);
  const c = new Stream({ engine, sslOptions: { ca: certs.ca.certPem, servername: "localhost" } }).connect(["127.0.0.1", port], { localAddress: ["127.0.0.4", 0] });
  await c.ready();
  await waitFor(() => peer !== null, 5000, "the server's onConnect");
  assert.equal((peer as unknown as [string, number])[0], "127.0.0.4");
  c.close();
});

test("connect()'s localAddress: a bad one throws InvalidAddressFormatError and leaves the stream unconnected; one this host lacks, or a port in use, fails the connect (onConnectError, onClose)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const c = new Recording({ engine });
  for (const bad of [["localhost", 0], "/tmp/x.sock", ["1.2.3.4", 70000], {}, ["::1", 0, 0, 0]] as unknown as Address[]) {
    assert.throws(() => c.connect(["127.0.0.1", port], { localAddress: bad }), InvalidAddressFormatError, JSON.stringify(bad));
  }
  assert.throws(() => c.connect(["::1", port, 0, 0], { localAddress: ["127.0.0.1", 0] }), /IPv4 local address cannot reach the IPv6/);
  assert.throws(() => c.connect(join(tempDir(t), "s.sock"), { localAddress: ["127.0.0.1", 0] }), /UNIX socket path has no local address/);
  assert.throws(() => c.connect(["127.0.0.1", port], null as unknown as object), TypeError);
  assert.equal(c.connecting || c.connected || c.closed, false, "still unconnected");
  // Still usable: the same stream connects from a good one.
  await connectsFrom(c, port, ["127.0.0.5", 0], "127.0.0.5");
  // TEST-NET-1 is on no interface of this host.
  const absent = new Recording({ engine }).connect(["127.0.0.1", port], { localAddress: ["192.0.2.1", 0] });
  await assert.rejects(absent.ready(), (err: Error) => err instanceof ConnectError && (err as ConnectError & { code?: string }).errno !== undefined && /EADDRNOTAVAIL/.test(err.message));
  await waitFor(() => absent.closed);
  assert.deepEqual(absent.events, ["connectError", "close"]);
  // A source port a listener holds.
  const taken = new Recording({ engine }).connect(["127.0.0.1", port], { localAddress: ["127.0.0.1", port] });
  await assert.rejects(taken.ready(), (err: Error) => err instanceof ConnectError && /EADDRINUSE/.test(err.message));
  await waitFor(() => taken.closed);
  assert.deepEqual(taken.events, ["connectError", "close"]);
});

test("connect()'s localAddress: a zone on an IPv4 literal, or an empty zone, throws InvalidAddressFormatError and leaves the stream unconnected (it threw a TypeError with the stream left connecting)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const c = new Recording({ engine });
  for (const bad of [["127.0.0.1%lo", 0], ["127.0.0.1%1", 0]] as Address[]) {
    assert.throws(() => c.connect(["127.0.0.1", port], { localAddress: bad }), InvalidAddressFormatError, JSON.stringify(bad));
    assert.equal(c.connecting || c.connected || c.closed, false, `still unconnected after ${JSON.stringify(bad)}`);
  }
  assert.throws(() => c.connect(["::1", port, 0, 0], { localAddress: ["::1%", 0] }), InvalidAddressFormatError);
  assert.equal(c.connecting || c.connected || c.closed, false, "still unconnected after an empty zone");
  await connectsFrom(c, port, ["127.0.0.6", 0], "127.0.0.6");
  assert.deepEqual(c.events, ["connect", "close"]);
});

test("connect()'s localAddress: any IPv6 address ([\"\", port, 0, 0]) for an IPv4 target throws InvalidAddressFormatError, as an IPv6 literal does (it failed the connect with EINVAL)", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const c = new Recording({ engine });
  assert.throws(() => c.connect(["127.0.0.1", port], { localAddress: ["", 0, 0, 0] }), (err: Error) => err instanceof InvalidAddressFormatError && /IPv6 local address cannot reach the IPv4/.test(err.message));
  assert.throws(() => c.connect(port, { localAddress: ["", 0, 0, 0] }), InvalidAddressFormatError);
  assert.equal(c.connecting || c.connected || c.closed, false, "still unconnected");
  // Any address of the target's family (a 2-tuple, or a port alone) still goes.
  await connectsFrom(c, port, ["", 0], "127.0.0.1");
  assert.deepEqual(c.events, ["connect", "close"]);
});

test("connect()'s localAddress with a host name, native transport: every address of the local address's family is tried in turn (the first refused, the second serves), as without one", { skip: loadNative() === null && "node:net tries only a name's first address when it binds a localAddress (its autoSelectFamily is off then)" }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  let peer: Address | null = null;
  class Peer extends Stream {
    override onConnect() {
      peer = this.remoteAddress;
    }
  }
  const port = await listenLocal(new Server(Peer, { engine }), t); // 127.0.0.1 only: 127.0.0.3 refuses
  fakeResolver(t, "two.test", ["127.0.0.3", "127.0.0.1"]);
  const c = new Recording({ engine }).connect(["two.test", port], { localAddress: ["127.0.0.2", 0] });
  await c.ready();
  await waitFor(() => peer !== null, 5000, "the server's onConnect");
  assert.equal((peer as unknown as [string, number])[0], "127.0.0.2");
  assert.deepEqual(c.events, ["connect"]);
  c.close();
});

test("write() or end() while a client is still connecting says so (it said 'called on disconnected'), and after a failed connect says that", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  const c = new Stream({ engine }).connect(["127.0.0.1", port]);
  for (const op of [() => c.write("x"), () => c.end(), () => c.flush()]) {
    assert.throws(op, (err: Error) => err instanceof ChannelStateError && /called on Stream .* while it is still connecting: it works from onConnect on/.test(err.message));
  }
  await c.ready();
  c.close();
  let failedWrite: unknown = null;
  class Refused extends Stream {
    override onConnectError() {
      try {
        this.write("x");
      } catch (err) {
        failedWrite = err;
      }
    }
  }
  const r = new Refused({ engine }).connect(["127.0.0.1", await freePort()]);
  await assert.rejects(r.ready(), ConnectError);
  assert.ok(failedWrite instanceof ChannelStateError);
  assert.doesNotMatch((failedWrite as Error).message, /still connecting/);
});
