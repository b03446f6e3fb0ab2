/**
 * The server option reusePort: SO_REUSEPORT on the listening sockets, so
 * several servers share one address and port and the kernel spreads the
 * connections among them; on either transport (node:net sets it itself from
 * Node 22.12 and 23.1, and before that listens on a socket the addon bound),
 * TLS included; typed errors where it cannot be. Without the addon
 * (PANTS_TS_TRANSPORT=js disables it) on an older Node the option fails
 * with ERR_REUSEPORT_UNAVAILABLE, which is what those runs check.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import { Server, Stream } from "../src/index.js";
import type { ServerOptions } from "../src/index.js";
import { captureLogs, connectTls, freshEngine, noReusePort, passTransport, portOf, tempDir } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";


/** Connects `n` times in a row; each connection ends when the server closes it. */
async function connectMany(port: number, n: number, host = "127.0.0.1"): Promise<void> {
  for (let i = 0; i < n; i++) {
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(port, host);
      c.on("error", reject);
      c.on("close", () => resolve());
      c.resume();
    });
  }
}

/** Two servers with reusePort on one port; how many connections each took. */
async function sharedPort(t: Parameters<typeof freshEngine>[0], options: ServerOptions, host: string): Promise<{ counts: number[]; port: number; servers: Server[] }> {
  const engine = freshEngine(t);
  const counts = [0, 0];
  const classes = [0, 1].map(
    (i) =>
      class extends Stream {
        override onConnect() {
          counts[i]!++;
          this.close();
        }
      },
  );
  const first = new Server(classes[0]!, { ...options, engine, reusePort: true }).listen([host, 0]);
  t.after(() => first.close());
  await first.ready();
  const port = portOf(first);
  const second = new Server(classes[1]!, { ...options, engine, reusePort: true }).listen([host, port]);
  t.after(() => second.close());
  await second.ready();
  return { counts, port, servers: [first, second] };
}

for (const transport of [undefined, "js"] as const) {
  const which = transport === undefined ? `this pass's transport (${passTransport})` : "node:net, chosen with transport: \"js\"";
  test(`reusePort on ${which}: two servers listen on one port and the kernel spreads 60 connections between them`, { skip: noReusePort }, async (t) => {
    captureLogs(t);
    const { counts, port, servers } = await sharedPort(t, transport === undefined ? {} : { transport }, "127.0.0.1");
    assert.equal(servers[0]!.transport, transport ?? passTransport);
    assert.equal(portOf(servers[1]!), port);
    await connectMany(port, 60);
    assert.equal(counts[0]! + counts[1]!, 60);
    // By the 4-tuple's hash: that one of them took all 60 has odds of 2 in 2^60.
    assert.ok(counts[0]! > 0 && counts[1]! > 0, `both servers accepted: ${counts.join(" / ")}`);
    // Without the option, a third server cannot bind the port.
    const engine = freshEngine(t);
    const third = new Server(Stream, { engine }).listen(["127.0.0.1", port]);
    t.after(() => third.close());
    await assert.rejects(third.ready(), (err: NodeJS.ErrnoException) => err.code === "EADDRINUSE");
  });
}

test("reusePort on the default address: the IPv4 socket and its IPv6 slave both share the port", { skip: noReusePort }, async (t) => {
  const engine = freshEngine(t);
  const seen: string[] = [];
  class Note extends Stream {
    override onConnect() {
      seen.push(String(this.remoteAddress));
      this.close();
    }
  }
  const first = new Server(Note, { engine, reusePort: true }).listen(0);
  t.after(() => first.close());
  await first.ready();
  const port = portOf(first);
  const second = new Server(Note, { engine, reusePort: true }).listen(port);
  t.after(() => second.close());
  await second.ready();
  const v6 = first.localAddresses.length === 2;
  assert.equal(second.localAddresses.length, first.localAddresses.length);
  await connectMany(port, 3);
  if (v6) await connectMany(port, 3, "::1");
  assert.equal(seen.length, v6 ? 6 : 3);
});

test("reusePort with TLS (on node:net): two TLS servers share a port", { skip: noReusePort || (!hasOpenssl() && "needs openssl") }, async (t) => {
  const certs = makeCerts();
  t.after(certs.cleanup);
  const engine = freshEngine(t);
  let handshakes = 0;
  class Secure extends Stream {
    override onConnect() {
      handshakes++;
      this.write("hi\n");
      this.close();
    }
  }
  const sslOptions = { certfile: certs.server.cert, keyfile: certs.server.key };
  const first = new Server(Secure, { engine, sslOptions, reusePort: true }).listen(["127.0.0.1", 0]);
  t.after(() => first.close());
  await first.ready();
  const port = portOf(first);
  const second = new Server(Secure, { engine, sslOptions, reusePort: true }).listen(["127.0.0.1", port]);
  t.after(() => second.close());
  await second.ready();
  assert.equal(first.transport, "js");
  for (let i = 0; i < 4; i++) {
    const c = await connectTls(["127.0.0.1", port], { ca: certs.ca.certPem, servername: "localhost" });
    assert.equal(await c.readText(3), "hi\n");
    c.destroy();
  }
  assert.equal(handshakes, 4);
});

test("reusePort: typed errors for a non-boolean, a UNIX path, and (on node:net before Node 22.12, without the addon) ERR_REUSEPORT_UNAVAILABLE", async (t) => {
  captureLogs(t);
  const engine = freshEngine(t);
  assert.throws(() => new Server(Stream, { engine, reusePort: "yes" as never }), (err: Error & { code?: string }) => err instanceof TypeError && /reusePort/.test(err.message));
  const unix = new Server(Stream, { engine, reusePort: true });
  t.after(() => unix.close());
  assert.throws(() => unix.listen(join(tempDir(t), "s.sock")), (err: Error & { code?: string }) => err instanceof RangeError && err.code === "ERR_INVALID_ARG_VALUE" && /UNIX/.test(err.message));
  const server = new Server(Stream, { engine, reusePort: true });
  t.after(() => server.close());
  if (passTransport === "js" && noReusePort !== false) {
    assert.throws(() => server.listen(["127.0.0.1", 0]), (err: Error & { code?: string }) => err.code === "ERR_REUSEPORT_UNAVAILABLE" && /Node 22\.12\+ or 23\.1\+ .*native addon/.test(err.message));
  } else {
    await server.listen(["127.0.0.1", 0]).ready();
  }
});
