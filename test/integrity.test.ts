/**
 * Data integrity: 200 MB of random bytes through a pants-ts echo server, in
 * random-sized writes, plain and TLS, compared by SHA-256; and close(true)
 * after a 50 MB write delivers every byte before the FIN, even to a client
 * that only starts reading seconds later.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import { Server, Stream } from "../src/index.js";
import { freshEngine, listenLocal, prng, sleep } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import type { Certs } from "./certs.js";

const MiB = 1024 * 1024;

/** Every chunk back as it came (pants-ts stops reading on its own while the client is slow). */
class ChunkEcho extends Stream {
  override onRead(chunk: Buffer): void {
    this.write(chunk);
  }
}

/** Chunk sizes from 1 byte to 256 KiB, log-uniform: many tiny writes and some large ones. */
function chunkSize(rand: () => number): number {
  return Math.max(1, Math.floor(Math.exp(rand() * Math.log(256 * 1024))));
}

/**
 * Writes `total` random bytes to `sock` in random-sized chunks (honouring
 * backpressure) while hashing what comes back; ends once all came back.
 */
async function roundTrip(sock: net.Socket, total: number, seed: number): Promise<{ sent: string; received: string; receivedBytes: number }> {
  const sentHash = createHash("sha256");
  const receivedHash = createHash("sha256");
  let receivedBytes = 0;
  const done = new Promise<void>((resolve, reject) => {
    sock.on("data", (d: Buffer) => {
      receivedHash.update(d);
      receivedBytes += d.length;
      if (receivedBytes >= total) sock.end();
    });
    sock.once("close", () => resolve());
    sock.once("error", reject);
  });
  const rand = prng(seed);
  let block = randomBytes(4 * MiB);
  let offset = 0;
  for (let sent = 0; sent < total; ) {
    const n = Math.min(chunkSize(rand), total - sent);
    if (offset + n > block.length) {
      block = randomBytes(4 * MiB);
      offset = 0;
    }
    const chunk = block.subarray(offset, offset + n);
    offset += n;
    sentHash.update(chunk);
    sent += n;
    if (!sock.write(chunk)) await new Promise<void>((resolve) => sock.once("drain", resolve));
  }
  await done;
  return { sent: sentHash.digest("hex"), received: receivedHash.digest("hex"), receivedBytes };
}

function connected(sock: net.Socket, event: "connect" | "secureConnect"): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    sock.once(event, () => resolve(sock));
    sock.once("error", reject);
  });
}

let certs: Certs | null = null;
const tlsSkip = hasOpenssl() ? false : "openssl is not installed";

test.before(() => {
  if (tlsSkip === false) certs = makeCerts();
});
test.after(() => certs?.cleanup());

test("200 MB of random data round-trips byte for byte (plain TCP)", { timeout: 120_000 }, async (t) => {
  const engine = freshEngine(t);
  const port = await listenLocal(new Server(ChunkEcho, { engine }), t);
  const sock = await connected(net.connect({ host: "127.0.0.1", port }), "connect");
  const total = 200 * MiB;
  const r = await roundTrip(sock, total, 1);
  assert.equal(r.receivedBytes, total);
  assert.equal(r.received, r.sent, "SHA-256 of what came back differs from what was sent");
});

test("200 MB of random data round-trips byte for byte (TLS)", { timeout: 120_000, skip: tlsSkip }, async (t) => {
  const engine = freshEngine(t);
  const server = new Server(ChunkEcho, { engine, sslOptions: { certfile: certs!.server.cert, keyfile: certs!.server.key } });
  const port = await listenLocal(server, t);
  const sock = await connected(tls.connect({ host: "127.0.0.1", port, ca: certs!.ca.certPem, servername: "localhost" }), "secureConnect");
  const total = 200 * MiB;
  const r = await roundTrip(sock, total, 2);
  assert.equal(r.receivedBytes, total);
  assert.equal(r.received, r.sent, "SHA-256 of what came back differs from what was sent");
});

/**
 * Keeps every chunk (raw) or line (framed by "\n") it is given, as given,
 * without copying; when the client ends, answers with the SHA-256 of them
 * all (lines with their "\n" put back) and closes.
 */
function keeper(lines: boolean): typeof Stream {
  return class Keeper extends Stream {
    kept: Buffer[] = [];
    override onConnect(): void {
      if (lines) this.readDelimiter = "\n";
    }
    override onRead(data: Buffer): void {
      this.kept.push(data);
      if (lines) this.kept.push(NEWLINE);
    }
    override onEnd(): void {
      const hash = createHash("sha256");
      for (const b of this.kept) hash.update(b);
      this.write(hash.digest("hex"));
      this.close(true);
    }
  };
}
const NEWLINE = Buffer.from("\n");

/** Sends `data` in random-sized writes, ends, and returns the server's answer. */
async function sendAndHash(port: number, data: Buffer, seed: number): Promise<string> {
  const sock = await connected(net.connect({ host: "127.0.0.1", port }), "connect");
  let answer = "";
  sock.setEncoding("latin1");
  sock.on("data", (text: string) => (answer += text));
  const closed = new Promise<void>((resolve, reject) => {
    sock.once("close", () => resolve());
    sock.once("error", reject);
  });
  const rand = prng(seed);
  for (let pos = 0; pos < data.length; ) {
    const n = Math.min(chunkSize(rand), data.length - pos);
    if (!sock.write(data.subarray(pos, pos + n))) await new Promise<void>((resolve) => sock.once("drain", resolve));
    pos += n;
  }
  sock.end();
  await closed;
  return answer;
}

for (const lines of [false, true]) {
  test(`${lines ? "lines" : "chunks"} a handler keeps stay intact while later reads, of three connections at once, arrive`, { timeout: 60_000 }, async (t) => {
    // Reads may be handed over in memory shared with later reads (the
    // native transport carves them from one buffer): what a handler keeps
    // must never be overwritten by what arrives next, on any connection.
    const engine = freshEngine(t);
    const port = await listenLocal(new Server(keeper(lines), { engine }), t);
    const inputs = [1, 2, 3].map((i) => {
      if (!lines) return randomBytes(12 * MiB);
      // Lines of 1 byte to 40 KiB, none holding "\n".
      const parts: Buffer[] = [];
      const rand = prng(10 + i);
      for (let total = 0; total < 12 * MiB; ) {
        const line = Buffer.alloc(1 + Math.floor(rand() * 40 * 1024), 0x61 + ((total >> 10) % 26));
        parts.push(line, NEWLINE);
        total += line.length + 1;
      }
      return Buffer.concat(parts);
    });
    const answers = await Promise.all(inputs.map((data, i) => sendAndHash(port, data, 20 + i)));
    answers.forEach((answer, i) => assert.equal(answer, createHash("sha256").update(inputs[i]!).digest("hex"), `connection ${i}`));
  });
}

/**
 * On connect, writes `data` in random-sized pieces and calls close(true)
 * at once: everything must still reach the client, then a FIN.
 */
function writeThenClose(data: Buffer): typeof Stream {
  return class WriteThenClose extends Stream {
    override onConnect(): void {
      const rand = prng(3);
      for (let pos = 0; pos < data.length; ) {
        const n = Math.min(chunkSize(rand), data.length - pos);
        this.write(data.subarray(pos, pos + n));
        pos += n;
      }
      this.close(true);
    }
  };
}

/** Reads everything after `delayMs` of not reading; resolves at the FIN with the hash. */
async function readAllLate(sock: net.Socket, delayMs: number): Promise<{ hash: string; bytes: number; fin: boolean; error: Error | null }> {
  sock.pause();
  const hash = createHash("sha256");
  let bytes = 0;
  let fin = false;
  let error: Error | null = null;
  const closed = new Promise<void>((resolve) => sock.once("close", () => resolve()));
  sock.on("data", (d: Buffer) => {
    hash.update(d);
    bytes += d.length;
  });
  sock.on("end", () => {
    fin = true;
  });
  sock.on("error", (err) => {
    error = err;
  });
  await sleep(delayMs);
  sock.resume();
  await closed;
  return { hash: hash.digest("hex"), bytes, fin, error };
}

for (const mode of ["plain", "TLS"] as const) {
  test(`close(true) after a 50 MB write delivers every byte before the FIN (${mode}, client reads 3 s late)`, { timeout: 120_000, skip: mode === "TLS" ? tlsSkip : false }, async (t) => {
    const engine = freshEngine(t);
    const data = randomBytes(50 * MiB);
    const expected = createHash("sha256").update(data).digest("hex");
    const options = mode === "TLS" ? { engine, sslOptions: { certfile: certs!.server.cert, keyfile: certs!.server.key } } : { engine };
    const port = await listenLocal(new Server(writeThenClose(data), options), t);
    const sock =
      mode === "TLS"
        ? await connected(tls.connect({ host: "127.0.0.1", port, ca: certs!.ca.certPem, servername: "localhost" }), "secureConnect")
        : await connected(net.connect({ host: "127.0.0.1", port }), "connect");
    const r = await readAllLate(sock, 3000);
    assert.equal(r.error, null, `the connection failed: ${String(r.error)}`);
    assert.equal(r.bytes, data.length, "bytes received before the close");
    assert.equal(r.hash, expected, "SHA-256 of what arrived differs from what was written");
    assert.ok(r.fin, "the stream ended with a FIN, not a reset");
  });
}

test("a handler that transfers its chunks' memory (as to a worker) loses no later byte and sees it unchanged", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const moved: Uint8Array[] = [];
  class Mover extends Stream {
    override onRead(chunk: Buffer): void {
      this.write(Buffer.from(chunk)); // a copy goes back; the chunk's memory goes to "the worker"
      if (chunk.length > 4096 && moved.length < 64) {
        const ab = chunk.buffer as ArrayBuffer;
        // The handler's memory now: filled with a mark that must stay.
        moved.push(new Uint8Array(structuredClone(ab, { transfer: [ab] })).fill(0x5a));
      }
    }
  }
  const port = await listenLocal(new Server(Mover, { engine }), t);
  const sock = await connected(net.connect({ host: "127.0.0.1", port }), "connect");
  t.after(() => sock.destroy());
  const data = randomBytes(8 * MiB);
  const back = createHash("sha256");
  let receivedBytes = 0;
  sock.on("data", (d: Buffer) => {
    back.update(d);
    receivedBytes += d.length;
  });
  // 40 KiB at a time, a little apart: reads smaller than a read buffer, so later reads would land beside a moved one.
  for (let pos = 0; pos < data.length; pos += 40 * 1024) {
    sock.write(data.subarray(pos, pos + 40 * 1024));
    await sleep(2);
  }
  for (let waited = 0; receivedBytes < data.length && waited < 10_000; waited += 10) await sleep(10);
  assert.equal(receivedBytes, data.length);
  assert.equal(back.digest("hex"), createHash("sha256").update(data).digest("hex"), "what came back differs from what was sent");
  assert.ok(moved.length > 0, "no chunk was moved");
  moved.forEach((m, i) => assert.ok(m.every((b) => b === 0x5a), `memory moved away with chunk ${i} changed afterwards (a later read landed in it)`));
});

test("a handler that transfers a frame's memory costs the other connections nothing: their frames of the same turn arrive whole", async (t) => {
  const engine = freshEngine(t);
  const streams: Stream[] = [];
  const got: string[] = [];
  let mover: Stream | null = null;
  let pauseOther = false;
  class Lines extends Stream {
    override onConnect(): void {
      this.readDelimiter = "\n";
      streams.push(this);
    }
    override onRead(line: Buffer): void {
      got.push(`${streams.indexOf(this)}:${line.toString("latin1")}`);
      if (this !== mover) return;
      mover = null;
      const ab = line.buffer as ArrayBuffer;
      new Uint8Array(structuredClone(ab, { transfer: [ab] })).fill(0x5a); // "the worker" reuses it
      if (pauseOther) {
        const other = streams[1]!;
        other.pauseReading();
        setTimeout(() => other.resumeReading(), 20);
      }
    }
  }
  const port = await listenLocal(new Server(Lines, { engine }), t);
  const c0 = await connected(net.connect({ host: "127.0.0.1", port }), "connect");
  t.after(() => c0.destroy());
  while (streams.length < 1) await sleep(2);
  const c1 = await connected(net.connect({ host: "127.0.0.1", port }), "connect");
  t.after(() => c1.destroy());
  while (streams.length < 2) await sleep(2);
  for (const pause of [false, true]) {
    got.length = 0;
    c1.write("partial-"); // held back by the server, waiting for its "\n"
    await sleep(30);
    mover = streams[0]!;
    pauseOther = pause;
    c0.write("a\n"); // both read in one turn of the server's loop
    c1.write("rest\n");
    for (let waited = 0; got.length < 2 && waited < 2000; waited += 5) await sleep(5);
    await sleep(30);
    assert.deepEqual(got, ["0:a", "1:partial-rest"], pause ? "the other stream paused by the handler" : "the other stream reading on");
  }
});
