/**
 * node:net's onread mode (src/node-reads.ts): on the node:net transport,
 * reads land in memory pants-ts hands over itself instead of going through
 * each socket's Readable side. Whatever mode a read lands in (the shared
 * memory, copied; a Buffer of its own after bulk reads; lent), a chunk a
 * handler keeps never changes, and a paused stream holds no more than
 * node:net would and still notices a reset. (Bytes read before the mode
 * began, a PROXY header's rest or what came with a TLS handshake's end,
 * are tested by proxy.test.ts and tls.test.ts.) Servers here ask for
 * `transport: "js"`; newer-node.test.ts runs this file again under the
 * newest Node, since the mode rests on Node's internals.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import net from "node:net";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Server, Stream } from "../src/index.js";
import { borrower, freshEngine, listenLocal, passTransport, prng, sleep, waitFor } from "./helpers.js";
import type { LendTally } from "./helpers.js";

setFlagsFromString("--expose-gc");

const KiB = 1024;
const MiB = 1024 * KiB;

async function connectRaw(port: number): Promise<net.Socket> {
  const sock = net.connect({ host: "127.0.0.1", port });
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  });
  return sock;
}

test("node:net reads: every chunk a handler keeps stays as it arrived, through small reads, bulk reads and a chunk's memory transferred away", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const kept: Buffer[] = [];
  const hashAtArrival = createHash("sha256");
  let transferred = 0;
  let ended!: () => void;
  const end = new Promise<void>((resolve) => (ended = resolve));
  class Keeper extends Stream {
    override onRead(chunk: Buffer): void {
      hashAtArrival.update(chunk);
      // Now and then the memory of a bulk chunk goes "to a worker": a copy is kept in its place.
      if (chunk.length >= 32 * KiB && kept.length % 7 === 3) {
        kept.push(Buffer.from(chunk));
        const ab = chunk.buffer as ArrayBuffer;
        new Uint8Array(structuredClone(ab, { transfer: [ab] })).fill(0x5a);
        transferred++;
        return;
      }
      kept.push(chunk);
    }
    override onEnd(): void {
      ended();
      this.close();
    }
  }
  const server = new Server(Keeper, { engine, transport: "js" });
  const port = await listenLocal(server, t);
  const sock = await connectRaw(port);
  t.after(() => sock.destroy());
  // Pieces from 1 byte to 256 KiB, some bursts and some pauses: reads of every size, in both modes.
  const rand = prng(42);
  const parts: Buffer[] = [];
  for (let total = 0; total < 24 * MiB; ) {
    const piece = randomBytes(Math.max(1, Math.floor(Math.exp(rand() * Math.log(256 * KiB)))));
    parts.push(piece);
    total += piece.length;
    if (!sock.write(piece)) await new Promise((resolve) => sock.once("drain", resolve));
    if (rand() < 0.05) await sleep(2);
  }
  sock.end();
  await end;
  const sent = createHash("sha256");
  for (const p of parts) sent.update(p);
  const expected = sent.digest("hex");
  assert.equal(hashAtArrival.digest("hex"), expected, "the chunks as onRead got them differ from what was sent");
  const now = createHash("sha256");
  for (const k of kept) now.update(k);
  assert.equal(now.digest("hex"), expected, "a kept chunk changed after its onRead (a later read landed in its memory)");
  assert.ok(kept.some((k) => k.length >= 32 * KiB), "no bulk read");
  assert.ok(kept.some((k) => k.length < 4 * KiB), "no small read");
  assert.ok(transferred > 0, "no chunk's memory was transferred");
});

test("node:net reads: a paused stream reads on only to about node:net's highWaterMark, then TCP holds the peer back; resumed, every byte arrives", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  let stream: Stream | null = null;
  let received = 0;
  class Paused extends Stream {
    override onConnect(): void {
      stream = this;
      this.pauseReading();
    }
    override onRead(chunk: Buffer): void {
      received += chunk.length;
    }
  }
  const server = new Server(Paused, { engine, transport: "js" });
  const port = await listenLocal(server, t);
  const sock = await connectRaw(port);
  t.after(() => sock.destroy());
  const total = 16 * MiB;
  sock.write(randomBytes(total));
  await waitFor(() => stream !== null);
  // Let it read what it will while paused.
  let before = -1;
  while (stream!.bytesRead !== before) {
    before = stream!.bytesRead;
    await sleep(100);
  }
  // node:net's highWaterMark (16 KiB on Node 20, 64 KiB later), and the read that crossed it.
  assert.ok(stream!.bytesRead <= 192 * KiB, `a paused stream read ${stream!.bytesRead} bytes`);
  assert.equal(received, 0, "onRead ran while paused");
  stream!.resumeReading();
  await waitFor(() => received === total, 20_000, "every byte after the resume");
});

test("node:net reads: a paused stream still notices the peer's reset at once, as a node:net socket does", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const events: string[] = [];
  class Paused extends Stream {
    override onConnect(): void {
      this.pauseReading();
    }
    override onReadError(err: Error): void {
      events.push(`readError ${(err as NodeJS.ErrnoException).code}`);
    }
    override onClose(): void {
      events.push("close");
    }
  }
  const server = new Server(Paused, { engine, transport: "js" });
  const port = await listenLocal(server, t);
  const sock = await connectRaw(port);
  sock.write("some bytes the paused stream holds\n");
  await sleep(50);
  sock.resetAndDestroy();
  await waitFor(() => events.includes("close"), 5000, "onClose while paused");
  assert.deepEqual(events, ["readError ECONNRESET", "close"]);
});

test("node:net reads: a client stream's reads are lent too (reuseReadBuffer): a chunk kept past its call reads as empty", { skip: passTransport !== "js" && "a plain client stream is native in this pass (node:net in the js pass)", timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const peer = net.createServer(async (sock) => {
    for (let i = 0; i < 20; i++) {
      sock.write(`reply ${i}\n`);
      await sleep(3);
    }
    sock.end();
  });
  await new Promise<void>((resolve) => peer.listen(0, "127.0.0.1", resolve));
  t.after(() => peer.close());
  const tally: LendTally = { chunks: 0, emptied: 0, bytes: 0 };
  const Borrower = borrower(tally);
  const client = new Borrower({ engine }).connect(["127.0.0.1", (peer.address() as net.AddressInfo).port]);
  await waitFor(() => client.closed, 5000, "the peer's end");
  const { chunks, emptied, bytes } = tally;
  assert.equal(bytes, Array.from({ length: 20 }, (_, i) => `reply ${i}\n`).join("").length);
  assert.ok(chunks > 5, `only ${chunks} reads`);
  assert.ok(emptied > 0, "no chunk was lent (none read as empty after its call)");
});

test("PANTS_TS_NET_ONREAD=0 turns node:net's onread mode off: a borrowed chunk is the handler's again; by default it is lent", { timeout: 60_000 }, () => {
  const run = (extra: NodeJS.ProcessEnv): { chunks: number; emptied: number } => {
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const r = spawnSync(process.execPath, ["--import", "tsx", "test/fixtures/net-reads-lend.ts"], { encoding: "utf8", timeout: 30_000, env: { ...env, ...extra } });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split("\n").pop()!) as { chunks: number; emptied: number };
  };
  const on = run({});
  assert.ok(on.chunks > 10 && on.emptied > 0, `default: ${JSON.stringify(on)}`);
  const off = run({ PANTS_TS_NET_ONREAD: "0" });
  assert.ok(off.chunks > 10, `off: ${JSON.stringify(off)}`);
  assert.equal(off.emptied, 0, `off: a chunk was lent: ${JSON.stringify(off)}`);
});

test("node:net reads: a handler that transfers a lent chunk's ArrayBuffer (reuseReadBuffer) takes that memory with it: nothing crashes, later reads of every connection land elsewhere", { timeout: 20_000 }, async (t) => {
  const engine = freshEngine(t);
  const got = new Map<string, string>();
  let moved: Uint8Array | null = null;
  let movedAtArrival = "";
  let movedRead = 0;
  class Mover extends Stream {
    #name = "";
    override onConnect(): void {
      this.reuseReadBuffer = true;
    }
    override onRead(chunk: Buffer): void {
      if (this.#name === "") this.#name = chunk.toString("latin1", 0, 1);
      got.set(this.#name, (got.get(this.#name) ?? "") + chunk.toString("latin1"));
      // The first read of "a" goes to a "worker", with the memory it was read into (against the promise, but no crash and no use after free).
      if (moved === null && this.#name === "a") {
        movedRead = chunk.length;
        const ab = chunk.buffer as ArrayBuffer;
        moved = new Uint8Array(structuredClone(ab, { transfer: [ab] }));
        movedAtArrival = Buffer.from(moved).toString("latin1");
      }
    }
  }
  const server = new Server(Mover, { engine, transport: "js" });
  const port = await listenLocal(server, t);
  const a = await connectRaw(port);
  const b = await connectRaw(port);
  t.after(() => {
    a.destroy();
    b.destroy();
  });
  // "a" begins with a read of bulk size (the next read would go to a Buffer of its own), then small ones.
  const sent = { a: "a".repeat(60 * KiB), b: "" };
  a.write(sent.a);
  await sleep(30);
  for (let i = 0; i < 20; i++) {
    for (const [name, sock] of [["a", a], ["b", b]] as const) {
      const line = `${name}${i}:${"x".repeat(i * 37)}\n`;
      sent[name] += line;
      sock.write(line);
    }
    await sleep(3);
  }
  await waitFor(() => got.get("a") === sent.a && got.get("b") === sent.b, 5000, "every byte of both connections");
  assert.ok(moved !== null, "no chunk was transferred");
  assert.ok(movedRead >= 32 * KiB, `the transferred read was not of bulk size: ${movedRead}`);
  assert.equal(Buffer.from(moved!).toString("latin1"), movedAtArrival, "reads landed in memory the handler had transferred away");
});

test("node:net reads: connections that sent in bulk and then went idle hold no read Buffer of their own", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const gc = runInNewContext("gc") as () => void;
  let received = 0;
  class Sink extends Stream {
    override onRead(chunk: Buffer): void {
      received += chunk.length;
    }
  }
  const server = new Server(Sink, { engine, transport: "js" });
  const port = await listenLocal(server, t);
  const settle = async (): Promise<number> => {
    await sleep(100);
    gc();
    await sleep(20);
    gc();
    return process.memoryUsage().arrayBuffers;
  };
  const before = await settle();
  const count = 200;
  // 256 KiB and a little: reads that fill 64 KiB (bulk), then a short last one.
  const body = Buffer.alloc(256 * KiB + 100, 7);
  const socks: net.Socket[] = [];
  t.after(() => socks.forEach((s) => s.destroy()));
  for (let i = 0; i < count; i++) {
    const sock = await connectRaw(port);
    socks.push(sock);
    sock.write(body);
  }
  await waitFor(() => received === count * body.length, 20_000, "every byte");
  const grown = (await settle()) - before;
  // A connection left reading into a Buffer of its own holds 64 KiB (at most 64 of them: 4 MiB).
  assert.ok(grown < 2 * MiB, `${count} idle connections hold ${(grown / MiB).toFixed(1)} MiB of ArrayBuffers`);
});
