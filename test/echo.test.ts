/**
 * Pants' own functional tests (test_echo.py, test_echo_to_all.py), ported:
 * one client, two sequential clients, two concurrent clients.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Server, Stream } from "../src/index.js";
import { connect, freshEngine, listenLocal, waitFor } from "./helpers.js";

class Echo extends Stream {
  override onRead(data: Buffer): void {
    this.write(data);
  }
}

class EchoToAll extends Stream {
  override onRead(data: Buffer): void {
    for (const channel of this.server!.channels.values()) channel.write(data);
  }
}

const payload = (name: string) => `<socket ${name} object at 0x${Math.floor(Math.random() * 2 ** 40).toString(16)}>`;

test("echo: one client", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Echo, { engine }), t);
  const c = await connect(port);
  const request = payload("a");
  c.write(request);
  assert.equal(await c.readText(request.length), request);
  c.destroy();
});

test("echo: two sequential clients", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Echo, { engine }), t);
  for (const name of ["one", "two"]) {
    const c = await connect(port);
    const request = payload(name);
    c.write(request);
    assert.equal(await c.readText(request.length), request);
    c.destroy();
  }
});

test("echo: two concurrent clients each get their own payload", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(Echo, { engine }), t);
  const a = await connect(port);
  const b = await connect(port);
  const ra = payload("a");
  const rb = payload("b");
  a.write(ra);
  b.write(rb);
  assert.equal(await a.readText(ra.length), ra);
  assert.equal(await b.readText(rb.length), rb);
  a.destroy();
  b.destroy();
});

test("echo to all: one client gets its own payload", async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(EchoToAll, { engine }), t);
  const c = await connect(port);
  const request = payload("x");
  c.write(request);
  assert.equal(await c.readText(request.length), request);
  c.destroy();
});

test("echo to all: two sequential clients; a closed client leaves channels", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(EchoToAll, { engine });
  const port = await listenLocal(server, t);
  const first = await connect(port);
  const r1 = payload("first");
  first.write(r1);
  assert.equal(await first.readText(r1.length), r1);
  first.destroy();
  await waitFor(() => server.channels.size === 0, 5000, "the first connection to leave channels");
  const second = await connect(port);
  const r2 = payload("second");
  second.write(r2);
  assert.equal(await second.readText(r2.length), r2);
  // Nothing else arrives: exactly its own payload.
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(second.received.length, 0);
  second.destroy();
});

test("echo to all: two concurrent clients both receive every message", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(EchoToAll, { engine });
  const port = await listenLocal(server, t);
  const a = await connect(port);
  const b = await connect(port);
  await waitFor(() => server.channels.size === 2, 5000, "both connections");
  const r1 = payload("1");
  a.write(r1);
  assert.equal(await a.readText(r1.length), r1);
  assert.equal(await b.readText(r1.length), r1);
  const r2 = payload("2");
  b.write(r2);
  assert.equal(await a.readText(r2.length), r2);
  assert.equal(await b.readText(r2.length), r2);
  a.destroy();
  b.destroy();
});
