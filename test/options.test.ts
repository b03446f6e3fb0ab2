/**
 * Unknown option keys: every options object the public API takes warns,
 * once per call site and key, through the package logger, naming the
 * nearest known key; the call goes on (a wider configuration object is not
 * an error). SslOptions warn only of near-misses of pants-ts's own names,
 * never of node:tls's. Each test uses keys of its own: the warning is once
 * per process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Engine, Server, Stream, relay, runCluster } from "../src/index.js";
import type { ServerOptions, SslOptions } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { captureLogs, connect, freshEngine, listenLocal, waitFor } from "./helpers.js";

type Logs = ReturnType<typeof captureLogs>;

/** The warnings about unknown options logged so far. */
function warnings(logs: Logs): Logs {
  return logs.filter((l) => l.level === "warn" && l.msg.startsWith("Unknown option"));
}

/** The same, as "key>suggestion" ("key>" without one). */
function unknown(logs: Logs): string[] {
  return warnings(logs).map((l) => {
      const { option, suggestion } = l.obj as { option: string; suggestion?: string };
      return `${option}>${suggestion ?? ""}`;
    });
}

test("new Server(): a misspelt option warns once, naming the nearest known one; other unknown keys warn without a guess; known keys are silent", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const wider = { engine, idleTimeout: 5000, databaseUrl: "postgres://x" } as unknown as ServerOptions;
  const server = new Server(Stream, wider);
  t.after(() => server.close());
  assert.deepEqual(unknown(logs), ["idleTimeout>idleTimeoutMs", "databaseUrl>"]);
  assert.match(warnings(logs)[0]!.msg, /Unknown option "idleTimeout" given to new Server\(\) is ignored\. Did you mean idleTimeoutMs\?/);
  new Server(Stream, wider).close(); // once per process
  class ChatServer extends Server {}
  new ChatServer(Stream, { engine, maxConections: 5 } as unknown as ServerOptions).close();
  new Server(Stream, { engine, idleTimeoutMs: 5000, handshakeTimeoutMs: 1000, maxConnections: 5, noDelay: true, keepAliveMs: 0, proxyProtocol: false, reusePort: false, peerIPv6Prefix: 64, maxConnectionsPerPeer: 2 }).close();
  assert.deepEqual(unknown(logs), ["idleTimeout>idleTimeoutMs", "databaseUrl>", "maxConections>maxConnections"]);
  assert.match(warnings(logs).at(-1)!.msg, /given to new ChatServer\(\)/);
  // Still a working server: the options it knows apply.
  const port = await listenLocal(server, t);
  const c = await connect(port);
  await waitFor(() => server.channels.size === 1, 2000, "the connection");
  c.destroy();
  assert.throws(() => new Server(Stream, 5 as unknown as ServerOptions), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
});

test("shutdown() and new Engine(): a misspelt option warns; manualClock must be a boolean", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const server = new Server(Stream, { engine });
  await listenLocal(server, t);
  await server.shutdown({ timeout: 100 } as unknown as { timeoutMs: number });
  assert.deepEqual(unknown(logs), ["timeout>timeoutMs"]);
  assert.match(warnings(logs)[0]!.msg, /given to shutdown\(\)/);
  const manual = new Engine({ manualclock: true } as unknown as { manualClock: boolean });
  assert.equal(manual.manualClock, false, "the unknown key does nothing");
  assert.deepEqual(unknown(logs), ["timeout>timeoutMs", "manualclock>manualClock"]);
  assert.throws(() => new Engine({ manualClock: "yes" as unknown as boolean }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
  assert.equal(new Engine({ manualClock: true }).manualClock, true);
});

test("new Stream(), connect() and writePacked(): a misspelt option warns; a server's own accepted streams never do", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine }), t);
  class Client extends Stream {}
  const client = new Client({ engine, sslOption: {} } as unknown as { engine: Engine });
  client.connect(["127.0.0.1", port]);
  await client.ready();
  t.after(() => client.close(false));
  assert.deepEqual(unknown(logs), ["sslOption>sslOptions"]);
  assert.match(warnings(logs)[0]!.msg, /given to new Client\(\)/);
  client.writePacked([1], { format: "B", flsh: true } as unknown as { format: string });
  assert.deepEqual(unknown(logs), ["sslOption>sslOptions", "flsh>flush"]);
  const other = new Stream({ engine });
  other.connect(["127.0.0.1", port], { localAdress: ["127.0.0.1", 0] } as unknown as { localAddress: [string, number] });
  await other.ready();
  other.close(false);
  assert.deepEqual(unknown(logs), ["sslOption>sslOptions", "flsh>flush", "localAdress>localAddress"]);
  assert.match(warnings(logs).at(-1)!.msg, /given to connect\(\)/);
  assert.throws(() => new Stream("engine" as unknown as { engine: Engine }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
});

test("relay() and runCluster(): a misspelt option warns (runCluster before it refuses a bad value, without forking)", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const a = memoryPeer(Stream, { engine });
  const b = memoryPeer(Stream, { engine });
  await Promise.all([a.ready, b.ready]);
  const done = relay(a.stream, b.stream, { highWatermark: 4096 } as unknown as { highWaterMark: number });
  assert.deepEqual(unknown(logs), ["highWatermark>highWaterMark"]);
  a.stream.close(false);
  b.stream.close(false);
  await done;
  await assert.rejects(runCluster(() => {}, { workers: 0, shutdownTimeout: 5 } as unknown as { workers: number }), RangeError);
  assert.deepEqual(unknown(logs), ["highWatermark>highWaterMark", "shutdownTimeout>shutdownTimeoutMs"]);
  await assert.rejects(runCluster(() => {}, null as unknown as { workers: number }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
});

const skipTls = !hasOpenssl() && "the openssl command is not installed";

test("SslOptions: a near-miss of one of pants-ts's own names warns (certFile, ca_cert, serverSide, ...); node:tls's own keys never do", { skip: skipTls }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const nodeServerKeys: SslOptions = {
    key: certs.server.keyPem,
    cert: certs.server.certPem,
    ciphers: "HIGH:!aNULL",
    minVersion: "TLSv1.2",
    maxVersion: "TLSv1.3",
    ecdhCurve: "auto",
    honorCipherOrder: true,
    sessionTimeout: 300,
    requestCert: false,
    rejectUnauthorized: false,
    ALPNProtocols: ["h2"],
    sigalgs: "ECDSA+SHA256:RSA-PSS+SHA256:RSA+SHA256",
  };
  const server = new Server(Stream, { engine, sslOptions: { ...nodeServerKeys, keyFile: certs.server.key } as SslOptions });
  t.after(() => server.close());
  assert.deepEqual(unknown(logs), ["keyFile>keyfile"]);
  assert.match(warnings(logs)[0]!.msg, /given to the SSL options/);
  const client = new Stream({ engine });
  client.startSSL({ servername: "localhost", rejectUnauthorized: false, session: undefined, checkServerIdentity: () => undefined, caCerts: certs.ca.cert, cert_req: "CERT_NONE" } as SslOptions);
  assert.deepEqual(unknown(logs), ["keyFile>keyfile", "caCerts>ca_certs", "cert_req>cert_reqs"]);
  client.close(false);
  // An sni entry's keys are checked the same way.
  const sniServer = new Server(Stream, { engine, sslOptions: { ...nodeServerKeys, sni: { "b.test": { certfile: certs.server.cert, keyFiles: certs.server.key } } } as SslOptions });
  t.after(() => sniServer.close());
  assert.deepEqual(unknown(logs).slice(3), ["keyFiles>keyfile"]);
  assert.match(warnings(logs)[3]!.msg, /given to the sni entry for "b\.test"/);
});

test("memoryPeer() and its send(): a misspelt option warns once, naming the nearest known one; options that are not an object are a TypeError", async (t) => {
  const logs = captureLogs(t);
  const peer = memoryPeer(Stream, { manualClok: true } as unknown as Parameters<typeof memoryPeer>[1]);
  await peer.ready;
  await peer.send("x", { chunksize: 1 } as unknown as { chunkSize: number });
  assert.deepEqual(unknown(logs), ["manualClok>manualClock", "chunksize>chunkSize"]);
  assert.throws(() => memoryPeer(Stream, "fast" as unknown as object), TypeError);
  await assert.rejects(peer.send("x", 5 as unknown as object), TypeError);
  peer.stream.close();
  await peer.closed;
});

test("an anonymous Server or Stream subclass is named by its base in the warning, not as 'new ()'", (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const Anon = [class extends Server {}][0]!;
  const AnonStream = [class extends Stream {}][0]!;
  assert.equal(Anon.name, "");
  new Anon(Stream, { engine, maxConns: 5 } as unknown as ServerOptions).close();
  new AnonStream({ engine, sslOptons: {} } as unknown as ConstructorParameters<typeof Stream>[0]).close();
  assert.deepEqual(warnings(logs).map((l) => l.msg.split(" is ignored")[0]), ['Unknown option "maxConns" given to new Server()', 'Unknown option "sslOptons" given to new Stream()']);
});

test("an array or a Buffer given as options is a TypeError (ERR_INVALID_ARG_TYPE) at once, not a warning per index", { timeout: 20_000 }, async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  const big = Buffer.alloc(10_000_000);
  const started = Date.now();
  const refused = (fn: () => unknown, where: RegExp): void => {
    assert.throws(fn, (err: Error & { code?: string }) => err instanceof TypeError && err.code === "ERR_INVALID_ARG_TYPE" && where.test(err.message) && /takes an options object/.test(err.message));
  };
  refused(() => new Server(Stream, big as unknown as ServerOptions), /new Server\(\)/);
  refused(() => new Server(Stream, [1, 2] as unknown as ServerOptions), /new Server\(\)/);
  refused(() => new Server(Stream, { engine, sslOptions: big as unknown as SslOptions }), /the SSL options/);
  refused(() => new Engine(new Uint8Array(4) as unknown as ConstructorParameters<typeof Engine>[0]), /new Engine\(\)/);
  const client = new Stream({ engine });
  refused(() => client.connect(["127.0.0.1", 1], [] as unknown as Parameters<Stream["connect"]>[1]), /connect\(\)/);
  client.close();
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
});
