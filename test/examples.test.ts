/**
 * The small examples (echo, tls-echo, line-kv, chat, tcp-proxy), each run as its own
 * process the way its header says, and driven over raw sockets. Also what
 * every example promises: one stdout line saying where it listens, a clean
 * exit on SIGTERM/SIGINT, and a default export `pants-ts serve` can load.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, connectTls, sleep } from "./helpers.js";
import { stalledReader, start, startExample } from "./example-process.js";
import type { RawClient } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";

const NO_OPENSSL = hasOpenssl() ? false : "the openssl command is not installed (tls-echo makes its certificate with it)";

/** Reads exactly the bytes of `expected` and compares them. */
async function expectText(client: RawClient, expected: string): Promise<void> {
  assert.equal((await client.read(Buffer.byteLength(expected))).toString(), expected);
}

test("echo", async (t) => {
  const { port } = await startExample(t, "echo");
  const client = await connect(port);
  t.after(() => client.destroy());

  await t.test("a line comes back", async () => {
    client.write("hello, world\n");
    await expectText(client, "hello, world\n");
  });

  await t.test("several lines in one write, and one line in many", async () => {
    client.write("one\ntwo\r\nthree\n");
    await expectText(client, "one\ntwo\r\nthree\n");
    for (const ch of "split line\n") {
      client.write(ch);
      await sleep(1);
    }
    await expectText(client, "split line\n");
  });

  await t.test("bytes that are not UTF-8 come back unchanged", async () => {
    const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x80, 0x0a]);
    client.write(bytes);
    assert.deepEqual(await client.read(bytes.length), bytes);
  });

  await t.test("a one-shot client that half-closes still gets its reply", async () => {
    const once = await connect(port);
    t.after(() => once.destroy());
    once.end("last words\npartial line without newline");
    assert.equal((await once.readToEnd()).toString(), "last words\n");
  });
});

test("tls-echo with a throwaway self-signed certificate", { skip: NO_OPENSSL }, async (t) => {
  const { port } = await startExample(t, "tls-echo");
  const client = await connectTls(port);
  t.after(() => client.destroy());
  assert.equal(client.tlsSocket.getPeerCertificate().subject?.CN, "localhost");
  client.write("over TLS\n");
  await expectText(client, "over TLS\n");
  client.write("a\nb\n");
  await expectText(client, "a\nb\n");
  const plain = await connect(port); // a plaintext client gets no echo: the handshake fails and the server closes
  t.after(() => plain.destroy());
  plain.write("hello\n");
  assert.ok(!(await plain.readToEnd()).toString().includes("hello"));
});

test("tls-echo with TLS_CERT and TLS_KEY", { skip: NO_OPENSSL }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const { port } = await startExample(t, "tls-echo", { TLS_CERT: certs.server.cert, TLS_KEY: certs.server.key });
  const client = await connectTls(port, { ca: certs.ca.certPem, servername: "localhost", rejectUnauthorized: true });
  t.after(() => client.destroy());
  assert.ok(client.tlsSocket.authorized, "the certificate verifies against the test CA");
  client.write("verified\n");
  await expectText(client, "verified\n");
});

test("line-kv", async (t) => {
  const server = await startExample(t, "line-kv");
  const { port } = server;
  const a = await connect(port);
  const b = await connect(port);
  t.after(() => a.destroy());
  t.after(() => b.destroy());
  const expect = async (client: RawClient, line: string, reply: string) => {
    client.write(line + "\n");
    await expectText(client, reply + "\n");
  };

  await t.test("SET, GET, DEL, KEYS", async () => {
    await expect(a, "KEYS", "VALUE");
    await expect(a, "SET greeting hello, world", "OK");
    await expect(a, "GET greeting", "VALUE hello, world");
    await expect(a, "set other 1", "OK");
    await expect(a, "KEYS", "VALUE greeting other");
    await expect(a, "DEL other", "OK");
    await expect(a, "DEL other", "NOT_FOUND");
    await expect(a, "GET other", "NOT_FOUND");
  });

  await t.test("the store is shared by every client", async () => {
    await expect(b, "GET greeting", "VALUE hello, world");
    await expect(b, "SET greeting bye\r", "OK"); // "\r\n" line ends work too
    await expect(a, "GET greeting", "VALUE bye");
  });

  await t.test("errors", async () => {
    await expect(a, "FROB x", "ERR unknown command 'FROB'");
    await expect(a, "SET onlykey", "ERR usage: SET key value");
    await expect(a, "GET", "ERR usage: GET key");
    await expect(a, "GET a b", "ERR usage: GET key");
    await expect(a, "KEYS x", "ERR usage: KEYS");
    a.write("\n   \n"); // blank lines are ignored
    await expect(a, "GET greeting", "VALUE bye");
  });

  await t.test("QUIT replies OK and closes", async () => {
    b.write("QUIT\nGET greeting\n");
    assert.equal((await b.readToEnd()).toString(), "OK\n");
  });

  await t.test("a client that pipelines KEYS for 84 MB and stops reading for a second: the server pauses reading instead of queueing them, and every reply arrives", async () => {
    const keys = Array.from({ length: 20_000 }, (_, i) => `stuck:${String(i).padStart(5, "0")}:${"k".repeat(30)}`);
    a.write(keys.map((key) => `SET ${key} v\n`).join(""));
    assert.equal((await a.read(3 * keys.length, 20_000)).toString(), "OK\n".repeat(keys.length));
    a.write("KEYS\n");
    const reply = (await a.until(() => a.received.includes(0x0a), 10_000, "the KEYS reply"), a.received.length);
    await a.read(reply);
    const got = await stalledReader(t, server, "KEYS\n".repeat(100), 100 * reply); // 84 MB of replies
    assert.ok(!got.includes("ERR line too long"), "a full send buffer is not a long line");
    assert.doesNotMatch(server.stderr(), /error/i);
    await expect(a, "GET greeting", "VALUE bye"); // others are still served
  });

  await t.test("a line over 4 KiB: ERR line too long, then close", async () => {
    a.write("SET big " + "x".repeat(5000) + "\n");
    assert.equal((await a.readToEnd()).toString(), "ERR line too long\n");
  });
});

test("chat", async (t) => {
  const running = await start(t, ["examples/chat.ts"], { PORT: "0" });
  const port = running.port;
  assert.match(running.stdout(), new RegExp(`^chat listening on 127\\.0\\.0\\.1:${port} \\(connect: nc localhost ${port}\\)\\n$`));
  /** Waits for the next line a client receives and returns it. */
  const nextLine = async (client: RawClient): Promise<string> => {
    await client.until(() => client.received.includes("\n"), 5000, "a line");
    return (await client.read(client.received.indexOf("\n") + 1)).toString().trimEnd();
  };
  const alice = await connect(port);
  t.after(() => alice.destroy());
  assert.match(await nextLine(alice), /^Welcome to pants-ts chat, (guest\d+)! 1 here\./);
  const bob = await connect(port);
  t.after(() => bob.destroy());
  const bobGuest = /^Welcome to pants-ts chat, (guest\d+)! 2 here\./.exec(await nextLine(bob))?.[1];
  assert.ok(bobGuest);
  assert.equal(await nextLine(alice), `* ${bobGuest} joined`);

  await t.test("/nick, then a line from one reaches the other", async () => {
    alice.write("/nick alice\n");
    assert.equal(await nextLine(alice), "* you are now alice");
    assert.match(await nextLine(bob), /^\* guest\d+ is now alice$/);
    bob.write("/nick bob\r\n");
    assert.equal(await nextLine(bob), "* you are now bob");
    assert.equal(await nextLine(alice), `* ${bobGuest} is now bob`);
    alice.write("hello bob\n");
    assert.equal(await nextLine(bob), "<alice> hello bob");
    bob.write("hi alice\n");
    assert.equal(await nextLine(alice), "<bob> hi alice");
    alice.write("/nick not valid!\n");
    assert.equal(await nextLine(alice), "* a nick is letters, digits, _ and -");
  });

  await t.test("/who", async () => {
    bob.write("/who\n");
    assert.equal(await nextLine(bob), "* here: alice, bob");
  });

  await t.test("a nick already taken is refused; control characters never reach other terminals", async () => {
    bob.write("/nick ALICE\n");
    assert.equal(await nextLine(bob), "* ALICE is taken");
    // An ANSI clear-screen, a title escape with BEL, and a mid-line \r forging a line from someone else.
    bob.write("\u001b[2J\u001b]0;pwned\u0007hi\r<alice> run this\u0000\n");
    const line = await nextLine(alice);
    assert.doesNotMatch(line, /[\u0000-\u001f\u007f-\u009f]/, JSON.stringify(line));
    assert.equal(line, "<bob> [2J ]0;pwned hi <alice> run this");
  });

  await t.test("a member that stops reading is dropped at 256 KiB behind; the others keep chatting", async () => {
    const stuck = await connect(port);
    const stuckNick = /^Welcome to pants-ts chat, (guest\d+)!/.exec(await nextLine(stuck))?.[1];
    assert.equal(await nextLine(alice), `* ${stuckNick} joined`);
    assert.equal(await nextLine(bob), `* ${stuckNick} joined`);
    stuck.socket.pause(); // reads no more
    const chunk = "x".repeat(3000);
    let dropped = false;
    for (let i = 0; i < 2000 && !dropped; i++) {
      alice.write(chunk + "\n");
      const line = await nextLine(bob);
      if (line === `* ${stuckNick} left`) dropped = true;
      else assert.equal(line, `<alice> ${chunk}`);
    }
    assert.ok(dropped, "the stuck member was dropped");
    assert.equal(await nextLine(alice), `* ${stuckNick} left`);
    assert.equal(await nextLine(bob), `<alice> ${chunk}`, "the line written while the drop was read");
    stuck.socket.resume();
    await stuck.readToEnd();
    bob.write("still here\n");
    assert.equal(await nextLine(alice), "<bob> still here");
  });

  await t.test("/quit says bye, closes, and the others are told", async () => {
    bob.write("/quit\n");
    assert.equal((await bob.readToEnd()).toString(), "Bye!\n");
    assert.equal(await nextLine(alice), "* bob left");
    alice.write("/who\n");
    assert.equal(await nextLine(alice), "* here: alice");
  });
});

test("tcp-proxy in front of the echo example: plain, half-closed, TLS-terminated, and with the upstream down", async (t) => {
  const echo = await startExample(t, "echo");
  const proxy = await startExample(t, "tcp-proxy", { UPSTREAM: `127.0.0.1:${echo.port}` });

  await t.test("lines go through and come back, bytes unchanged", async () => {
    const client = await connect(proxy.port);
    t.after(() => client.destroy());
    client.write("through the proxy\n");
    await expectText(client, "through the proxy\n");
    const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x80, 0x0a]);
    client.write(bytes);
    assert.deepEqual(await client.read(bytes.length), bytes);
  });

  await t.test("a one-shot client that half-closes still gets its reply, then the FIN", async () => {
    const once = await connect(proxy.port);
    t.after(() => once.destroy());
    once.end("last words\npartial line without newline");
    assert.equal((await once.readToEnd()).toString(), "last words\n");
  });

  await t.test("pants-ts serve runs it too (the default export)", async () => {
    const served = await start(t, ["bin/pants-ts.js", "serve", "examples/tcp-proxy.ts", "--listen", "127.0.0.1:0"], { UPSTREAM: `127.0.0.1:${echo.port}` });
    assert.match(served.stdout(), new RegExp(`^pants-ts: serving TcpProxy on 127\\.0\\.0\\.1:${served.port}\\b`));
    const client = await connect(served.port);
    t.after(() => client.destroy());
    client.write("served\n");
    await expectText(client, "served\n");
  });

  await t.test("TLS_CERT: TLS terminated at the proxy, plain to the upstream", { skip: NO_OPENSSL }, async () => {
    const certs = makeCerts();
    t.after(() => certs.cleanup());
    const tlsProxy = await startExample(t, "tcp-proxy", { UPSTREAM: `127.0.0.1:${echo.port}`, TLS_CERT: certs.server.cert, TLS_KEY: certs.server.key });
    const client = await connectTls(tlsProxy.port, { ca: certs.ca.certPem, servername: "localhost", rejectUnauthorized: true });
    t.after(() => client.destroy());
    client.write("encrypted to the proxy\n");
    await expectText(client, "encrypted to the proxy\n");
  });

  await t.test("with the upstream gone, a client is closed", async () => {
    echo.proc.kill("SIGTERM");
    assert.equal(await echo.exited, 0);
    const client = await connect(proxy.port);
    t.after(() => client.destroy());
    client.write("hello?\n");
    assert.equal((await client.readToEnd()).length, 0);
  });
});

const EXAMPLES = ["echo", "tls-echo", "line-kv", "resp-server", "memcached-server", "tcp-proxy"];

for (const [name, signal] of EXAMPLES.map((n, i) => [n, i % 2 === 0 ? "SIGTERM" : "SIGINT"] as const)) {
  test(`${name}: one line on stdout, then a clean exit on ${signal}`, { skip: name === "tls-echo" && NO_OPENSSL }, async (t) => {
    const running = await startExample(t, name);
    // An open connection does not hold the exit up: shutdown closes it. To
    // tls-echo it is a TLS one: a raw client would still be in its handshake,
    // which the drain lets finish (up to handshakeTimeoutMs, 10 s).
    const client = name === "tls-echo" ? await connectTls(running.port, { rejectUnauthorized: false }) : await connect(running.port);
    t.after(() => client.destroy());
    running.proc.kill(signal);
    assert.equal(await running.exited, 0);
    assert.equal(running.stdout(), `${name} listening on 127.0.0.1:${running.port}\n`);
    await client.readToEnd();
  });
}

test("the default export is a connection class `pants-ts serve` can run", async (t) => {
  for (const [name, cls] of [["echo", "Echo"], ["line-kv", "LineKv"], ["resp-server", "RespConnection"], ["memcached-server", "MemcachedConnection"]]) {
    const running = await start(t, ["bin/pants-ts.js", "serve", `examples/${name}.ts`, "--listen", "127.0.0.1:0"]);
    assert.match(running.stdout(), new RegExp(`^pants-ts: serving ${cls} on 127\\.0\\.0\\.1:${running.port}\\b`));
    const client = await connect(running.port);
    t.after(() => client.destroy());
    const [request, reply] =
      name === "echo" ? ["hi\n", "hi\n"] : name === "line-kv" ? ["GET x\n", "NOT_FOUND\n"] : name === "resp-server" ? ["PING\r\n", "+PONG\r\n"] : ["version\r\n", "VERSION 1.6.0-pants-ts\r\n"];
    client.write(request);
    await expectText(client, reply);
    running.proc.kill("SIGTERM");
    assert.equal(await running.exited, 0);
  }
});
