/**
 * TLS session resumption (SPEC §8): a client gets the sessions its server
 * sends in onSslSession (after onConnect), and a later connection given one
 * as sslOptions.session resumes it (sslSessionReused, on both sides), under
 * TLS 1.2 and 1.3, first handshake or STARTTLS; servers that share
 * ticketKeys resume each other's sessions. Certificates are generated at
 * run time.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Server, Stream } from "../src/index.js";
import type { Engine, SslOptions } from "../src/index.js";
import { captureLogs, freshEngine, listenLocal, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import type { Certs } from "./certs.js";

const skip = !hasOpenssl() && "the openssl command is not installed";
const certs = (skip ? null : makeCerts()) as Certs;
process.on("exit", () => certs?.cleanup());

const VERSIONS = ["TLSv1.2", "TLSv1.3"] as const;

function serverOptions(extra: SslOptions = {}): SslOptions {
  return { certfile: certs.server.cert, keyfile: certs.server.key, ...extra };
}

function clientOptions(version: SslOptions["maxVersion"], session?: Buffer): SslOptions {
  return { ca_certs: certs.ca.cert, servername: "localhost", maxVersion: version, ...(session ? { session } : {}) };
}

/** A client that records its events and the sessions it is handed. */
class Remember extends Stream {
  events: string[] = [];
  sessions: Buffer[] = [];
  override onSslHandshake() {
    this.events.push(`handshake reused=${this.sslSessionReused}`);
  }
  override onConnect() {
    this.events.push("connect");
  }
  override onSslSession(session: Buffer) {
    this.events.push("session");
    this.sessions.push(session);
  }
}

/** A server's stream that records, at onConnect, whether its handshake resumed a session. */
function recordingServer(engine: Engine, sslOptions: SslOptions): { server: Server; reused: boolean[] } {
  const reused: boolean[] = [];
  class Served extends Stream {
    override onConnect() {
      reused.push(this.sslSessionReused);
    }
  }
  return { server: new Server(Served, { engine, sslOptions }), reused };
}

/** Connects a Remember client over TLS; waits for onConnect and, if asked, its first session. */
async function visit(engine: Engine, port: number, sslOptions: SslOptions, waitSession: boolean): Promise<Remember> {
  const c = new Remember({ engine, sslOptions });
  assert.equal(c.sslSessionReused, false, "not before the handshake");
  assert.equal(c.sslSession, null);
  c.connect(["127.0.0.1", port]);
  await c.ready();
  if (waitSession) await waitFor(() => c.sessions.length > 0, 5000, "a session from the server");
  return c;
}

for (const version of VERSIONS) {
  test(`${version}: onSslSession after onConnect; given as sslOptions.session the next connection resumes (sslSessionReused on both sides), a connection without one does not`, { skip }, async (t) => {
    const engine = freshEngine(t);
    const { server, reused } = recordingServer(engine, serverOptions());
    const port = await listenLocal(server, t);

    const first = await visit(engine, port, clientOptions(version), true);
    assert.deepEqual(first.events.slice(0, 3), ["handshake reused=false", "connect", "session"]);
    assert.equal(first.sslSessionReused, false);
    assert.equal(first.sslSession, first.sessions.at(-1), "sslSession is the latest session");
    first.close();
    assert.ok(first.sslSession !== null, "still readable once closed");

    const second = await visit(engine, port, clientOptions(version, first.sessions.at(-1)), false);
    assert.deepEqual(second.events.slice(0, 2), ["handshake reused=true", "connect"]);
    assert.equal(second.sslSessionReused, true);
    // A resumed handshake may bring no new session: sslSession is the one resumed, and resumes again.
    const again = second.sslSession;
    assert.ok(again !== null);
    second.close();
    assert.equal(second.sslSessionReused, true, "still readable once closed");

    const third = await visit(engine, port, clientOptions(version, again), false);
    assert.equal(third.sslSessionReused, true);
    third.close();

    const fresh = await visit(engine, port, clientOptions(version), true);
    assert.equal(fresh.sslSessionReused, false);
    fresh.close();

    await waitFor(() => reused.length === 4, 5000, "four server-side connections");
    assert.deepEqual(reused, [false, true, true, false]);
  });

  test(`${version} STARTTLS: the client's session comes after the upgrade's onSslHandshake, and resumes on the next connection's upgrade (the server's streams share one context, so its ticket keys, with no ticketKeys given)`, { skip }, async (t) => {
    const engine = freshEngine(t);
    const served: boolean[] = [];
    class Starttls extends Stream {
      override onConnect() {
        this.readDelimiter = "\n";
      }
      override onRead(line: Buffer) {
        if (line.toString() !== "STARTTLS") return;
        this.write("OK\n");
        this.startSSL(serverOptions());
      }
      override onSslHandshake() {
        served.push(this.sslSessionReused);
      }
    }
    const port = await listenLocal(new Server(Starttls, { engine }), t);
    class Upgrading extends Remember {
      constructor(readonly session?: Buffer) {
        super({ engine });
      }
      override onConnect() {
        super.onConnect();
        this.readDelimiter = "\n";
        this.write("STARTTLS\n");
      }
      override onRead(line: Buffer) {
        if (line.toString() === "OK") this.startSSL(clientOptions(version, this.session));
      }
    }

    const first = new Upgrading().connect(["127.0.0.1", port]);
    await waitFor(() => first.sessions.length > 0, 5000, "a session after STARTTLS");
    assert.deepEqual(first.events.slice(0, 3), ["connect", "handshake reused=false", "session"]);
    first.close();

    const second = new Upgrading(first.sslSession ?? undefined).connect(["127.0.0.1", port]);
    await waitFor(() => second.events.length >= 2, 5000, "the second upgrade");
    assert.deepEqual(second.events.slice(0, 2), ["connect", "handshake reused=true"]);
    assert.equal(second.sslSessionReused, true);
    second.close();

    await waitFor(() => served.length === 2, 5000, "both server-side upgrades");
    assert.deepEqual(served, [false, true]);
  });
}

test("TLS 1.2: a client that closes in onConnect has the session its handshake brought (sslSession, in onConnect and once closed), and it resumes", { skip }, async (t) => {
  const engine = freshEngine(t);
  const { server, reused } = recordingServer(engine, serverOptions());
  const port = await listenLocal(server, t);
  class Quick extends Remember {
    sessionInConnect: Buffer | null = null;
    override onConnect() {
      super.onConnect();
      this.sessionInConnect = this.sslSession;
      this.close();
    }
  }
  const first = new Quick({ engine, sslOptions: clientOptions("TLSv1.2") }).connect(["127.0.0.1", port]);
  await waitFor(() => first.closed, 5000, "the first client's close");
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(first.events, ["handshake reused=false", "connect"], "no onSslSession once closed");
  assert.ok(first.sslSession !== null, "the session of the handshake, readable once closed (it was null)");
  assert.ok(first.sessionInConnect !== null, "readable in onConnect already, as node:tls' getSession() is (it was null until the 'session' event)");
  const second = await visit(engine, port, clientOptions("TLSv1.2", first.sessionInConnect), false);
  assert.equal(second.sslSessionReused, true);
  second.close();
  await waitFor(() => reused.length === 2, 5000, "both server-side connections");
  assert.deepEqual(reused, [false, true]);
});

test("a client that began closing in onSslHandshake (so never gets onConnect) gets no onSslSession either: onClose only follows", { skip }, async (t) => {
  const engine = freshEngine(t);
  const { server } = recordingServer(engine, serverOptions());
  const port = await listenLocal(server, t);
  for (const version of VERSIONS) {
    class Leaves extends Remember {
      override onSslHandshake() {
        super.onSslHandshake();
        this.write("bye\n"); // still to send: the stream is closing, not closed, when the session comes
        this.close(true);
      }
      override onClose() {
        this.events.push("close");
      }
    }
    const c = new Leaves({ engine, sslOptions: clientOptions(version) }).connect(["127.0.0.1", port]);
    await waitFor(() => c.closed, 5000, "the close");
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(c.events, ["handshake reused=false", "close"], version);
  }
});

test("plain TCP: sslSessionReused is false and sslSession null, on both sides", async (t) => {
  const engine = freshEngine(t);
  const seen: Array<[boolean, Buffer | null]> = [];
  class Plain extends Stream {
    override onConnect() {
      seen.push([this.sslSessionReused, this.sslSession]);
    }
  }
  const port = await listenLocal(new Server(Plain, { engine }), t);
  const c = new Plain({ engine }).connect(["127.0.0.1", port]);
  await waitFor(() => seen.length === 2, 5000, "both sides' onConnect");
  assert.deepEqual(seen, [
    [false, null],
    [false, null],
  ]);
  c.close();
});

test("a throw or a rejected promise in onSslSession goes to onError: by default logged and that connection closed", { skip }, async (t) => {
  const logs = captureLogs(t);
  const engine = freshEngine(t);
  const { server } = recordingServer(engine, serverOptions());
  const port = await listenLocal(server, t);

  class Throws extends Stream {
    override onSslSession() {
      throw new Error("session boom");
    }
  }
  const bad = new Throws({ engine, sslOptions: clientOptions("TLSv1.3") }).connect(["127.0.0.1", port]);
  await waitFor(() => bad.closed, 5000, "the default onError's close");
  const errors = logs.filter((l) => l.level === "error");
  assert.equal(errors.length, 1, JSON.stringify(logs.map((l) => l.msg)));
  assert.equal((errors[0]!.obj as { err: Error }).err.message, "session boom");

  const seen: string[] = [];
  class Rejects extends Stream {
    override async onSslSession() {
      await Promise.resolve();
      throw new Error("async session boom");
    }
    override onError(err: Error) {
      seen.push(err.message);
    }
  }
  const tolerant = new Rejects({ engine, sslOptions: clientOptions("TLSv1.2") }).connect(["127.0.0.1", port]);
  await waitFor(() => seen.length > 0, 5000, "onError");
  assert.deepEqual(seen, ["async session boom"]);
  assert.equal(tolerant.closed, false, "a custom onError may keep the connection");
  assert.equal(server.listening, true);
  tolerant.close();
});

test("mutual TLS (CERT_REQUIRED, CERT_OPTIONAL; an SNI certificate too): a client offering its session resumes, the server still knows its certificate", { skip }, async (t) => {
  const engine = freshEngine(t);
  const clientCert: SslOptions = { certfile: certs.client.cert, keyfile: certs.client.key };
  const sni = { "a.test": { certfile: certs.sniA.cert, keyfile: certs.sniA.key } };
  for (const cert_reqs of ["CERT_REQUIRED", "CERT_OPTIONAL"] as const) {
    for (const servername of ["localhost", "a.test"]) {
      const seen: string[] = [];
      class Served extends Stream {
        override onConnect() {
          seen.push(`reused=${this.sslSessionReused} authorized=${this.authorized} cn=${String(this.peerCertificate?.subject?.CN)}`);
        }
        override onSslHandshakeError(err: Error) {
          seen.push(`handshake error: ${err.message}`);
        }
      }
      const port = await listenLocal(new Server(Served, { engine, sslOptions: serverOptions({ ca_certs: certs.ca.cert, cert_reqs, sni }) }), t);
      const what = `${cert_reqs} ${servername}`;
      for (const version of VERSIONS) {
        const options = { ...clientOptions(version), ...clientCert, servername };
        const first = await visit(engine, port, options, true);
        first.close();
        const again = new Remember({ engine, sslOptions: { ...options, session: first.sslSession ?? undefined } }).connect(["127.0.0.1", port]);
        await again.ready().catch(() => {});
        assert.equal(again.sslSessionReused, true, `${what} ${version}: ${seen.join("; ")}`);
        again.close();
      }
      await waitFor(() => seen.length === 4, 5000, "the server-side connections");
      const full = "reused=false authorized=true cn=client";
      const resumed = "reused=true authorized=true cn=client";
      assert.deepEqual(seen, [full, resumed, full, resumed], what);
    }
  }
});

test("servers sharing ticketKeys but checking client certificates differently do not resume each other's sessions: a session made without a certificate does not pass mutual TLS", { skip }, async (t) => {
  const engine = freshEngine(t);
  const ticketKeys = randomBytes(48);
  const open = recordingServer(engine, serverOptions({ ticketKeys }));
  const mutual = recordingServer(engine, serverOptions({ ticketKeys, ca_certs: certs.ca.cert, cert_reqs: "CERT_REQUIRED" }));
  const portOpen = await listenLocal(open.server, t);
  const portMutual = await listenLocal(mutual.server, t);
  for (const version of VERSIONS) {
    const first = await visit(engine, portOpen, clientOptions(version), true);
    first.close();
    const c = new Remember({ engine, sslOptions: clientOptions(version, first.sslSession ?? undefined) }).connect(["127.0.0.1", portMutual]);
    // Under TLS 1.3 the client has finished its side before the server refuses it.
    await c.ready().catch(() => {});
    await waitFor(() => c.closed, 5000, "the refusal");
    assert.equal(c.sslSessionReused, false, version);
  }
  assert.deepEqual(mutual.reused, [], "no connection passed mutual TLS");
});

test("servers sharing sslOptions.ticketKeys (a cluster's workers) resume each other's sessions; a server with its own keys makes a full handshake", { skip }, async (t) => {
  const engine = freshEngine(t);
  const ticketKeys = randomBytes(48);
  const a = recordingServer(engine, serverOptions({ ticketKeys }));
  const b = recordingServer(engine, serverOptions({ ticketKeys }));
  const other = recordingServer(engine, serverOptions());
  const portA = await listenLocal(a.server, t);
  const portB = await listenLocal(b.server, t);
  const portOther = await listenLocal(other.server, t);
  for (const version of VERSIONS) {
    const first = await visit(engine, portA, clientOptions(version), true);
    const session = first.sslSession ?? undefined;
    first.close();
    const onB = await visit(engine, portB, clientOptions(version, session), false);
    assert.equal(onB.sslSessionReused, true, `${version}: same ticketKeys`);
    onB.close();
    const onOther = await visit(engine, portOther, clientOptions(version, session), false);
    assert.equal(onOther.sslSessionReused, false, `${version}: other keys`);
    onOther.close();
  }
  await waitFor(() => b.reused.length === 2 && other.reused.length === 2, 5000, "the server-side connections");
  assert.deepEqual(b.reused, [true, true]);
  assert.deepEqual(other.reused, [false, false]);
});

/**
 * The ticket lifetime hint of a session as Node hands it out: OpenSSL's
 * DER-encoded SSL_SESSION_ASN1, a SEQUENCE whose field [9] (explicitly
 * tagged) is an INTEGER, the hint in seconds. Newer Node releases (22.x,
 * 24.x) put a header of their own before it ("\0nodejs:tls:session:1" and
 * the host): the SEQUENCE is the one that ends where the buffer does. Read
 * here rather than by `openssl sess_id`, which takes neither that header nor
 * the sessions of a newer OpenSSL than its own (those releases bundle 3.5;
 * Debian 12's command is 3.0).
 */
function lifetimeHint(session: Buffer): number | null {
  let start = 0;
  while (start < 256 && !(session[start] === 0x30 && tlvAt(session, start).end === session.length)) start++;
  return hintOf(session.subarray(start));
}

/** One DER TLV at `at`: its tag, where its contents start, and where it ends. */
function tlvAt(der: Buffer, at: number): { tag: number; start: number; end: number } {
  const tag = der[at]!;
  let length = der[at + 1]!;
  let start = at + 2;
  if (length & 0x80) {
    const bytes = length & 0x7f;
    length = 0;
    for (let i = 0; i < bytes; i++) length = length * 256 + der[start + i]!;
    start += bytes;
  }
  return { tag, start, end: start + length };
}

function hintOf(der: Buffer): number | null {
  const tlv = (at: number) => tlvAt(der, at);
  const session = tlv(0);
  assert.equal(session.tag, 0x30, "an SSL_SESSION is a SEQUENCE");
  for (let at = session.start; at < session.end; ) {
    const field = tlv(at);
    if (field.tag === 0xa9) {
      const value = tlv(field.start);
      assert.equal(value.tag, 0x02, "the hint is an INTEGER");
      let hint = 0;
      for (let i = value.start; i < value.end; i++) hint = hint * 256 + der[i]!;
      return hint;
    }
    at = field.end;
  }
  return null;
}

test("a server's sessions last 300 s unless sslOptions.sessionTimeout says otherwise, as tls.createServer's (the ticket's lifetime hint in the session)", { skip }, async (t) => {
  const engine = freshEngine(t);
  const hints: string[] = [];
  for (const extra of [{}, { sessionTimeout: 60 }]) {
    const { server } = recordingServer(engine, serverOptions(extra));
    const port = await listenLocal(server, t);
    for (const version of VERSIONS) {
      const c = await visit(engine, port, clientOptions(version), true);
      const session = c.sslSession!;
      c.close();
      hints.push(`${version}: ${lifetimeHint(session) ?? "none"}`);
    }
  }
  assert.deepEqual(hints, ["TLSv1.2: 300", "TLSv1.3: 300", "TLSv1.2: 60", "TLSv1.3: 60"]);
});

test("sslOptions.session takes null or undefined for no session, as its TSDoc says (the type took a Buffer only: `session: null`, and the guide's `session` of type Buffer | undefined under exactOptionalPropertyTypes, did not compile)", { skip }, async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Stream, { engine, sslOptions: serverOptions() }), t);
  const latest: Buffer | null = null;
  const kept: Buffer | undefined = undefined;
  // Type test: `npm run typecheck` compiles these object literals.
  const none: SslOptions[] = [{ ...clientOptions("TLSv1.3"), session: latest }, { ...clientOptions("TLSv1.3"), session: kept }];
  for (const sslOptions of none) {
    const c = new Stream({ engine, sslOptions }).connect(["127.0.0.1", port]);
    await c.ready();
    assert.equal(c.sslSessionReused, false);
    c.close();
  }
});
