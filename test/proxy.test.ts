/**
 * PROXY protocol v1/v2 on a server (proxyProtocol: true): remoteAddress is
 * the real client, already in onConnect; LOCAL/UNKNOWN keep the peer's
 * address; a missing, slow or malformed header closes that connection only.
 * Hand-made headers, and a real HAProxy (send-proxy, send-proxy-v2).
 */
import { test } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ProxyTlvType, Server, Stream, encodeProxyV1, encodeProxyV2, parseProxySsl } from "../src/index.js";
import { captureLogs, connect, freePort, freshEngine, listenLocal, sleep, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

/** Replies with the address it sees in onConnect, then echoes lines. */
class Who extends Stream {
  override onConnect() {
    this.readDelimiter = "\n";
    this.write(`${JSON.stringify(this.remoteAddress)}\n`);
  }
  override onRead(d: Buffer) {
    this.write(`echo:${d}\n`);
  }
}

async function firstLine(c: Awaited<ReturnType<typeof connect>>): Promise<unknown> {
  await c.until(() => c.received.includes(0x0a), 5000, "a line");
  const i = c.received.indexOf(0x0a);
  const line = c.received.subarray(0, i).toString();
  c.received = c.received.subarray(i + 1);
  return JSON.parse(line);
}

test("PROXY v1 TCP4/TCP6 set remoteAddress before onConnect; payload after the header is delivered", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Who, { engine, proxyProtocol: true }), t);
  const v4 = await connect(port);
  v4.write(Buffer.concat([Buffer.from("PROXY TCP4 203.0.113.9 10.0.0.1 56324 443\r\n"), Buffer.from("same packet\n")]));
  assert.deepEqual(await firstLine(v4), ["203.0.113.9", 56324]);
  assert.equal(await v4.readText(17), "echo:same packet\n");
  v4.destroy();
  const v6 = await connect(port);
  v6.write("PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n");
  assert.deepEqual(await firstLine(v6), ["2001:db8::7", 4000, 0, 0]);
  v6.destroy();
});

test("PROXY v1 UNKNOWN and v2 LOCAL keep the real peer's address", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Who, { engine, proxyProtocol: true }), t);
  const unknown = await connect(port);
  unknown.write("PROXY UNKNOWN whatever\r\n");
  const addr = (await firstLine(unknown)) as [string, number];
  assert.equal(addr[0], "127.0.0.1");
  assert.equal(addr[1], unknown.socket.localPort);
  unknown.destroy();
  const local = await connect(port);
  local.write(encodeProxyV2({ command: "LOCAL" }));
  assert.equal(((await firstLine(local)) as [string, number])[1], local.socket.localPort);
  local.destroy();
});

test("a v2 LOCAL header whose CRC32C does not match closes that connection, as HAProxy 3.0+ does; a matching one is served", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine, proxyProtocol: true });
  const port = await listenLocal(server, t);
  const header = encodeProxyV2({ command: "LOCAL", tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: Buffer.from("check-1") }], checksum: true });
  const good = await connect(port);
  good.write(header);
  assert.equal(((await firstLine(good)) as [string, number])[1], good.socket.localPort);
  good.destroy();
  const corrupt = Buffer.from(header);
  corrupt[corrupt.length - 8] ^= 0x20; // a byte of the unique id
  const bad = await connect(port);
  bad.write(Buffer.concat([corrupt, Buffer.from("hello\n")]));
  assert.equal((await bad.readToEnd(2000)).length, 0, "nothing served");
  assert.equal(server.stats.errorsByKind.proxy, 1);
});

test("a v2 PROXY header with UNSPEC in one nibble only (0x10, 0x01) keeps the real peer's address, its block ignored", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Who, { engine, proxyProtocol: true });
  const port = await listenLocal(server, t);
  const v2 = (fam: number, body: Buffer): Buffer => {
    const fixed = Buffer.from(encodeProxyV2({ command: "PROXY" }).subarray(0, 16));
    fixed[13] = fam;
    fixed.writeUInt16BE(body.length, 14);
    return Buffer.concat([fixed, body]);
  };
  // 0x10 announces IPv4 with no transport: 8 bytes of addresses and no ports is as good a reading as 12.
  for (const header of [v2(0x10, Buffer.from([203, 0, 113, 9, 10, 0, 0, 1])), v2(0x01, Buffer.alloc(0))]) {
    const c = await connect(port);
    c.write(Buffer.concat([header, Buffer.from("after\n")]));
    assert.deepEqual(await firstLine(c), ["127.0.0.1", c.socket.localPort]);
    assert.equal(await c.readText(11), "echo:after\n");
    c.destroy();
  }
  assert.equal(server.stats.errorsByKind.proxy ?? 0, 0);
});

test("PROXY v2 INET, INET6 and UNIX; TLVs are skipped", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Who, { engine, proxyProtocol: true }), t);
  const cases: Array<[Buffer, unknown]> = [
    [encodeProxyV2({ command: "PROXY", source: ["198.51.100.4", 1234], destination: ["10.0.0.1", 443], tlvs: [{ type: 0x01, value: Buffer.from("h2") }, { type: 0xe0, value: Buffer.alloc(40, 7) }] }), ["198.51.100.4", 1234]],
    [encodeProxyV2({ command: "PROXY", source: ["2001:db8::42", 5555, 0, 0], destination: ["2001:db8::1", 443, 0, 0] }), ["2001:db8::42", 5555, 0, 0]],
    [encodeProxyV2({ command: "PROXY", source: "/run/client.sock", destination: "/run/server.sock" }), "/run/client.sock"],
  ];
  for (const [header, expected] of cases) {
    const c = await connect(port);
    // Split the header across packets: it must be reassembled.
    c.write(header.subarray(0, 7));
    await new Promise((r) => setTimeout(r, 10));
    c.write(Buffer.concat([header.subarray(7), Buffer.from("after\n")]));
    assert.deepEqual(await firstLine(c), expected);
    assert.equal(await c.readText(11), "echo:after\n");
    c.destroy();
  }
});

test("a missing, malformed or slow PROXY header closes that connection only, quietly", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const server = new Server(Who, { engine, proxyProtocol: true, handshakeTimeoutMs: 200 });
  const port = await listenLocal(server, t);
  const good = await connect(port);
  good.write(encodeProxyV1({ family: "TCP4", source: ["192.0.2.1", 1000], destination: ["192.0.2.2", 80] }));
  assert.deepEqual(await firstLine(good), ["192.0.2.1", 1000]);
  const missing = await connect(port);
  missing.write("GET / HTTP/1.0\r\n\r\n");
  assert.equal((await missing.readToEnd(2000)).length, 0, "no guessing: nothing served without a header");
  const malformed = await connect(port);
  malformed.write("PROXY TCP4 256.1.1.1 10.0.0.1 1 2\r\n");
  assert.equal((await malformed.readToEnd(2000)).length, 0);
  const slow = await connect(port);
  slow.write("PROXY TCP4 192.0.2.1");
  const start = Date.now();
  assert.equal((await slow.readToEnd(3000)).length, 0);
  assert.ok(Date.now() - start >= 150, "closed by the header timeout");
  const badV2 = await connect(port);
  badV2.write(Buffer.concat([encodeProxyV2({ command: "PROXY", source: ["1.2.3.4", 1], destination: ["5.6.7.8", 2] }).subarray(0, 12), Buffer.from([0x23, 0x11, 0, 12])]));
  assert.equal((await badV2.readToEnd(2000)).length, 0);
  good.write("still\n");
  assert.equal(await good.readText(11), "echo:still\n");
  assert.equal(server.stats.rejected, 4);
  assert.equal(server.stats.errorsByKind.proxy, 4);
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
  good.destroy();
});

test("a peer that resets before its PROXY header is whole frees its slot at once, with no header deadline too", async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  // No header deadline, one slot: the reset's wait was held for ever, and every later client refused.
  const server = new Server(Who, { engine, proxyProtocol: true, handshakeTimeoutMs: 0, maxConnections: 1 });
  const port = await listenLocal(server, t);
  for (const partial of ["PROXY TCP4 192.0.2", encodeProxyV2({ command: "PROXY", source: ["1.2.3.4", 1], destination: ["5.6.7.8", 2] }).subarray(0, 20)]) {
    const rejected = server.stats.rejected;
    const c = await connect(port);
    c.write(partial);
    await sleep(50); // the server has read the partial header
    c.socket.resetAndDestroy();
    await waitFor(() => server.stats.rejected === rejected + 1, 3000, "the reset connection dropped");
    const good = await connect(port);
    good.write(encodeProxyV1({ family: "TCP4", source: ["192.0.2.1", 1000], destination: ["192.0.2.2", 80] }));
    assert.deepEqual(await firstLine(good), ["192.0.2.1", 1000], "served in the freed slot");
    good.destroy();
    await waitFor(() => server.stats.open === 0, 3000, "the good client gone");
  }
  assert.equal(server.stats.errorsByKind.proxy, 2);
  assert.equal(server.stats.accepted, 2);
  assert.deepEqual(logs.filter((l) => l.level === "warn" || l.level === "error"), []);
});

test("a PROXY v2 header whose 64 KiB block arrives in small pieces is joined once, not once per read", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Who, { engine, proxyProtocol: true }), t);
  const header = encodeProxyV2({ command: "PROXY", source: ["198.51.100.4", 1234], destination: ["10.0.0.1", 443], tlvs: [{ type: 0xe0, value: Buffer.alloc(65535 - 12 - 3, 7) }] });
  assert.equal(header.length, 16 + 65535);
  const c = await connect(port);
  // Count the bytes the server joins while the block dribbles in (the client joins nothing meanwhile).
  const concat = Buffer.concat;
  let joined = 0;
  Buffer.concat = (list: readonly Uint8Array[], total?: number) => {
    const out = concat(list, total);
    joined += out.length;
    return out;
  };
  try {
    for (let off = 0; off < header.length; off += 1024) {
      c.write(header.subarray(off, off + 1024));
      await new Promise((r) => setTimeout(r, 2));
    }
    c.write("after\n");
    assert.deepEqual(await firstLine(c), ["198.51.100.4", 1234]);
  } finally {
    Buffer.concat = concat;
  }
  assert.equal(await c.readText(11), "echo:after\n");
  // Joined again on every read, the block cost 64 joins of 32 KiB on average.
  assert.ok(joined < 4 * header.length, `${joined} bytes joined for a ${header.length}-byte header`);
  c.destroy();
});

/** TLS over `raw` (its PROXY header sent) to a Who server: the address line it answers with. */
async function addressOverTls(raw: net.Socket): Promise<unknown> {
  const secure = tls.connect({ socket: raw, rejectUnauthorized: false });
  try {
    let got = "";
    secure.on("data", (d) => (got += d));
    await waitFor(() => got.includes("\n"), 5000, "the address line over TLS");
    return JSON.parse(got.trim());
  } finally {
    secure.destroy();
  }
}

test("PROXY header, then TLS", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const port = await listenLocal(new Server(Who, { engine, proxyProtocol: true, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } }), t);
  const raw = net.connect(port, "127.0.0.1");
  await new Promise((r) => raw.once("connect", r));
  raw.write(encodeProxyV1({ family: "TCP4", source: ["192.0.2.77", 7777], destination: ["192.0.2.2", 443] }));
  assert.deepEqual(await addressOverTls(raw), ["192.0.2.77", 7777]);
});

test("stream.proxyHeader: the header's destination and TLVs reach the connection class from onConnect, on plain and TLS servers; null without proxyProtocol", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const engine = freshEngine(t);
  const seen: unknown[] = [];
  class Inspect extends Stream {
    override onConnect() {
      const h = this.proxyHeader;
      seen.push(
        h === null
          ? null
          : {
              version: h.version,
              command: h.command,
              destination: h.destination,
              tlvs: h.tlvs.map((tlv) => [tlv.type, tlv.value.toString("latin1")]),
              remote: this.remoteAddress,
            },
      );
      this.close();
    }
  }
  const v2 = encodeProxyV2({
    command: "PROXY",
    source: ["198.51.100.4", 1234],
    destination: ["10.0.0.1", 443],
    tlvs: [
      { type: ProxyTlvType.ALPN, value: Buffer.from("h2") },
      { type: ProxyTlvType.AUTHORITY, value: Buffer.from("example.com") },
      { type: ProxyTlvType.UNIQUE_ID, value: Buffer.from("req-42") },
    ],
    checksum: true,
  });
  const v1 = encodeProxyV1({ family: "TCP4", source: ["192.0.2.7", 7], destination: ["192.0.2.8", 8] });
  const plain = await listenLocal(new Server(Inspect, { engine, proxyProtocol: true }), t);
  for (const header of [v2, v1, encodeProxyV2({ command: "LOCAL" })]) {
    const c = await connect(plain);
    c.write(header);
    await c.readToEnd();
  }
  await waitFor(() => seen.length === 3);
  const crc = (seen[0] as { tlvs: Array<[number, string]> }).tlvs.pop();
  assert.equal(crc?.[0], ProxyTlvType.CRC32C);
  assert.deepEqual(seen[0], {
    version: 2,
    command: "PROXY",
    destination: ["10.0.0.1", 443],
    tlvs: [
      [ProxyTlvType.ALPN, "h2"],
      [ProxyTlvType.AUTHORITY, "example.com"],
      [ProxyTlvType.UNIQUE_ID, "req-42"],
    ],
    remote: ["198.51.100.4", 1234],
  });
  assert.deepEqual(seen[1], { version: 1, command: "PROXY", destination: ["192.0.2.8", 8], tlvs: [], remote: ["192.0.2.7", 7] });
  const local = seen[2] as { command: string; remote: unknown };
  assert.equal(local.command, "LOCAL");
  assert.equal((local.remote as [string])[0], "127.0.0.1", "LOCAL keeps the real peer");
  // Behind PROXY on a TLS server, too.
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const secure = await listenLocal(new Server(Inspect, { engine, proxyProtocol: true, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } }), t);
  const raw = net.connect(secure, "127.0.0.1");
  raw.on("error", () => {});
  await new Promise((r) => raw.once("connect", r));
  raw.write(v1);
  const tlsClient = tls.connect({ socket: raw, rejectUnauthorized: false });
  tlsClient.on("error", () => {});
  await waitFor(() => seen.length === 4, 5000, "the TLS stream's onConnect");
  tlsClient.destroy();
  assert.deepEqual(seen[3], seen[1]);
  // No proxyProtocol: null.
  const none = await listenLocal(new Server(Inspect, { engine }), t);
  const c = await connect(none);
  await c.readToEnd();
  await waitFor(() => seen.length === 5);
  assert.equal(seen[4], null);
});

test("behind PROXY, the TLS handshake's deadline counts from the accept, not from the header's end", { skip: !hasOpenssl() && "no openssl" }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const server = new Server(Who, { engine, proxyProtocol: true, handshakeTimeoutMs: 2000, sslOptions: { certfile: certs.server.cert, keyfile: certs.server.key } });
  const port = await listenLocal(server, t);
  const header = encodeProxyV1({ family: "TCP4", source: ["192.0.2.77", 7777], destination: ["192.0.2.2", 443] });
  // A slow header, then a TLS record that never completes: closed by the one deadline from the accept
  // (2 s), where the handshake's own 2 s used to start at the header's end (about 3 s in all).
  const stalled = net.connect(port, "127.0.0.1");
  stalled.on("error", () => {});
  await new Promise((r) => stalled.once("connect", r));
  const start = Date.now();
  stalled.write(header.subarray(0, 10));
  await sleep(1000);
  stalled.write(Buffer.concat([header.subarray(10), Buffer.from([0x16, 0x03])]));
  await new Promise((r) => stalled.once("close", r));
  const took = Date.now() - start;
  assert.ok(took >= 1900 && took < 2700, `closed ${took} ms after the accept (handshakeTimeoutMs 2000)`);
  assert.equal(server.stats.errorsByKind.tls, 1);
  // A slow header still leaves the rest of the deadline to a handshake that does complete.
  const raw = net.connect(port, "127.0.0.1");
  await new Promise((r) => raw.once("connect", r));
  raw.write(header.subarray(0, 10));
  await sleep(1000);
  raw.write(header.subarray(10));
  assert.deepEqual(await addressOverTls(raw), ["192.0.2.77", 7777]);
});

// --- A real HAProxy in front ------------------------------------------------

const haproxy = spawnSync("haproxy", ["-v"]).status === 0;

/** Runs HAProxy in TCP mode with these frontends and backends until the test ends; returns what it has said on stderr so far. */
function startHaproxy(t: TestContext, sections: string[]): () => string {
  const cfg = join(tempDir(t), "haproxy.cfg");
  const head = ["global", "  maxconn 256", "defaults", "  mode tcp", "  timeout connect 2s", "  timeout client 10s", "  timeout server 10s"];
  writeFileSync(cfg, [...head, ...sections, ""].join("\n"));
  const child = spawn("haproxy", ["-f", cfg, "-db"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  t.after(() => child.kill("SIGKILL"));
  return () => stderr;
}

test("behind a real HAProxy with send-proxy and send-proxy-v2, the client's real address arrives", { skip: !haproxy && "haproxy is not installed (apt-get install haproxy)", timeout: 30_000 }, async (t) => {
  const engine = freshEngine(t);
  const backend = await listenLocal(new Server(Who, { engine, proxyProtocol: true }), t);
  const v1Port = await freePort();
  const v2Port = await freePort();
  const stderr = startHaproxy(t, [
    `frontend v1`,
    `  bind 127.0.0.1:${v1Port}`,
    "  default_backend pants_v1",
    `frontend v2`,
    `  bind 127.0.0.1:${v2Port}`,
    "  default_backend pants_v2",
    "backend pants_v1",
    `  server s1 127.0.0.1:${backend} send-proxy`,
    "backend pants_v2",
    `  server s1 127.0.0.1:${backend} send-proxy-v2`,
  ]);
  for (const port of [v1Port, v2Port]) {
    let c: Awaited<ReturnType<typeof connect>> | null = null;
    const deadline = Date.now() + 5000;
    while (c === null) {
      c = await connect(port).catch(() => null);
      if (c === null) {
        if (Date.now() > deadline) throw new Error(`haproxy did not start: ${stderr()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const addr = (await firstLine(c)) as [string, number];
    assert.deepEqual(addr, ["127.0.0.1", c.socket.localPort], `port ${port}`);
    c.write("through haproxy\n");
    assert.equal(await c.readText(21), "echo:through haproxy\n");
    c.destroy();
  }
});

test("behind a real HAProxy that terminates TLS (send-proxy-v2-ssl-cn), parseProxySsl gives the client certificate's CN and verify result", { skip: (!haproxy || !hasOpenssl()) && "needs haproxy and openssl", timeout: 30_000 }, async (t) => {
  const engine = freshEngine(t);
  const certs = makeCerts();
  t.after(certs.cleanup);
  class Tells extends Stream {
    override onConnect() {
      const tlv = this.proxyHeader?.tlvs.find((x) => x.type === ProxyTlvType.SSL);
      const ssl = tlv ? parseProxySsl(tlv.value) : null;
      this.write(`${JSON.stringify(ssl && { tls: ssl.tls, cert: ssl.certOnConnection, verified: ssl.verified, cn: ssl.cn, version: ssl.version, types: ssl.tlvs.map((x) => x.type) })}\n`);
      this.close(true);
    }
  }
  const backend = await listenLocal(new Server(Tells, { engine, proxyProtocol: true }), t);
  const front = await freePort();
  const stderr = startHaproxy(t, [
    "frontend tls",
    `  bind 127.0.0.1:${front} ssl crt ${certs.combined} ca-file ${certs.ca.cert} verify optional`,
    "  default_backend pants",
    "backend pants",
    `  server s1 127.0.0.1:${backend} send-proxy-v2-ssl-cn`,
  ]);
  const ask = async (withCert: boolean): Promise<unknown> => {
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        const socket = tls.connect({ host: "127.0.0.1", port: front, servername: "localhost", ca: certs.ca.certPem, ...(withCert ? { cert: certs.client.certPem, key: certs.client.keyPem } : {}) });
        let text = "";
        socket.on("data", (d: Buffer) => (text += d.toString()));
        await new Promise<void>((resolve, reject) => {
          socket.once("end", resolve);
          socket.once("error", reject);
        });
        socket.destroy();
        return JSON.parse(text);
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`no answer through haproxy (${String(err)}): ${stderr()}`);
        await sleep(50);
      }
    }
  };
  assert.deepEqual(await ask(true), { tls: true, cert: true, verified: true, cn: "client", version: "TLSv1.3", types: [ProxyTlvType.SSL_VERSION, ProxyTlvType.SSL_CN] });
  const anonymous = (await ask(false)) as { tls: boolean; cert: boolean; cn: string | null };
  assert.deepEqual([anonymous.tls, anonymous.cert, anonymous.cn], [true, false, null]);
});
