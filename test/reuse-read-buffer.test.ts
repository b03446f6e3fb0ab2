/**
 * Stream.reuseReadBuffer: a handler that only borrows its chunks. However
 * lent bytes are kept past the call that delivered them (the stream's own
 * write queue or the addon's, another stream's queue, the read buffer of a
 * framer that runs in JavaScript), not one byte may be lost or changed; and
 * a chunk kept against the promise must never show bytes of a later read.
 * On the native transport bulk reads are lent (a chunk kept past its call
 * reads as empty); on node:net over plain TCP, the reads that land in its
 * shared buffer (its onread mode: smaller ones); node:tls's chunks, and
 * node:net's with PANTS_TS_NET_ONREAD=0, are the handler's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Server, Stream } from "../src/index.js";
import type { Decoder, Engine } from "../src/index.js";
import { freshEngine, listenLocal, prng, sleep, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import type { Certs } from "./certs.js";

const MiB = 1024 * 1024;

function sha256(...parts: readonly Buffer[]): string {
  const hash = createHash("sha256");
  for (const p of parts) hash.update(p);
  return hash.digest("hex");
}

/** Sizes from 1 byte to 256 KiB, log-uniform, seeded: the same split on every run. */
function sizes(seed: number): () => number {
  const rand = prng(seed);
  return () => Math.max(1, Math.floor(Math.exp(rand() * Math.log(256 * 1024))));
}

/** Writes `data` to `sock` in random-sized pieces (honouring backpressure), then ends. */
async function sendInPieces(sock: net.Socket, data: Buffer, seed: number): Promise<void> {
  const next = sizes(seed);
  for (let pos = 0; pos < data.length && !sock.destroyed; ) {
    const n = Math.min(next(), data.length - pos);
    if (!sock.write(data.subarray(pos, pos + n))) {
      // A server that closed on us (a failing test) ends the wait too.
      await new Promise<void>((resolve) => {
        const done = () => {
          sock.off("drain", done);
          sock.off("close", done);
          resolve();
        };
        sock.on("drain", done);
        sock.on("close", done);
      });
    }
    pos += n;
  }
  sock.end();
}

/**
 * Random bodies of 1 byte to 60 000 bytes (seeded sizes), about `total`
 * bytes in all, each sent after the header `head(body)` gives it.
 */
function messages(total: number, seed: number, head: (body: Buffer) => Buffer): { bodies: Buffer[]; wire: Buffer } {
  const next = sizes(seed);
  const bodies: Buffer[] = [];
  const parts: Buffer[] = [];
  for (let sum = 0; sum < total; ) {
    const body = randomBytes(Math.min(next(), 60_000));
    bodies.push(body);
    parts.push(head(body), body);
    sum += body.length;
  }
  return { bodies, wire: Buffer.concat(parts) };
}

/**
 * Connects to `port`, writes `data` in random-sized pieces and ends; hashes
 * what comes back. `stallEvery` > 0: stops reading for 30 ms after each
 * that many bytes received, so the server's writes back up and queue.
 */
async function exchange(port: number, data: Buffer, seed: number, stallEvery = 0): Promise<{ hash: string; bytes: number }> {
  const sock = net.connect({ host: "127.0.0.1", port });
  await new Promise<void>((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  });
  const hash = createHash("sha256");
  let bytes = 0;
  let nextStall = stallEvery;
  sock.on("data", (d: Buffer) => {
    hash.update(d);
    bytes += d.length;
    if (stallEvery > 0 && bytes >= nextStall) {
      nextStall += stallEvery;
      sock.pause();
      setTimeout(() => sock.resume(), 30);
    }
  });
  const closed = new Promise<void>((resolve, reject) => {
    sock.once("close", () => resolve());
    sock.once("error", reject);
  });
  await sendInPieces(sock, data, seed);
  await closed;
  return { hash: hash.digest("hex"), bytes };
}

/** Counts, across a test's connections, the chunks that read as empty once their onRead had returned. */
interface Tally {
  chunks: number;
  emptied: number;
}

/** Borrows its reads; closes (after its replies) when the peer ends. */
class Borrower extends Stream {
  override onConnect(): void {
    this.reuseReadBuffer = true;
  }
  override onEnd(): void {
    this.close(true);
  }
}

/** Echoes every chunk, borrowing it; looks at the previous chunk again at each read. */
function lentEcho(tally: Tally): typeof Stream {
  return class LentEcho extends Borrower {
    #last: Buffer | null = null;
    override onRead(chunk: Buffer): void {
      if (this.#last !== null && this.#last.length === 0) tally.emptied++;
      tally.chunks++;
      this.#last = chunk;
      this.write(chunk);
    }
  };
}

/** node:net's onread mode is turned off: its chunks are the handler's. */
const netOwnsChunks = process.env.PANTS_TS_NET_ONREAD === "0";

/**
 * The native transport lends bulk reads. node:net lends only the reads that
 * land in its shared buffer, which bulk reads leave (net-reads.test.ts
 * checks that it lends): here, whether any chunk was lent depends on how
 * the reads fell.
 */
function checkLending(server: Server, tally: Tally): void {
  assert.ok(tally.chunks > 10, `only ${tally.chunks} chunks were read`);
  if (server.transport === "native") assert.ok(tally.emptied > 0, "no chunk was lent (none read as empty after its call)");
  else if (netOwnsChunks) assert.equal(tally.emptied, 0, "node:net chunks are the handler's: none may change");
}

test("reuseReadBuffer: an echo returns 3 × 24 MB byte for byte, to clients that keep stalling", { timeout: 120_000 }, async (t) => {
  const engine = freshEngine(t);
  const tally: Tally = { chunks: 0, emptied: 0 };
  const server = new Server(lentEcho(tally), { engine });
  const port = await listenLocal(server, t);
  const inputs = [1, 2, 3].map(() => randomBytes(24 * MiB));
  // Stalled readers make the echo's writes queue (in the addon, which must
  // copy lent bytes, and in the stream, which must copy them before the lend ends).
  const results = await Promise.all(inputs.map((data, i) => exchange(port, data, i + 1, i === 0 ? 0 : 4 * MiB)));
  results.forEach((r, i) => {
    assert.equal(r.bytes, inputs[i]!.length, `connection ${i}: bytes back`);
    assert.equal(r.hash, sha256(inputs[i]!), `connection ${i}: what came back differs from what was sent`);
  });
  checkLending(server, tally);
});

/** Resolves, at the peer's end, to the SHA-256 of everything the one connection it takes received. */
async function hashingSink(t: { after(fn: () => unknown): void }, tlsOptions: tls.TlsOptions | null): Promise<{ port: number; hashes: Promise<string> }> {
  let settle!: (h: string) => void;
  const hashes = new Promise<string>((resolve) => (settle = resolve));
  const onConnection = (sock: net.Socket): void => {
    const hash = createHash("sha256");
    let received = 0;
    sock.on("data", (d: Buffer) => {
      hash.update(d);
      received += d.length;
      // A slow consumer now and then: the proxy's writes queue.
      if (received % (3 * MiB) < d.length) {
        sock.pause();
        setTimeout(() => sock.resume(), 20);
      }
    });
    sock.on("end", () => {
      settle(hash.digest("hex"));
      sock.end();
    });
  };
  const sink = tlsOptions === null ? net.createServer(onConnection) : tls.createServer(tlsOptions, onConnection);
  await new Promise<void>((resolve) => sink.listen(0, "127.0.0.1", resolve));
  t.after(() => sink.close());
  return { port: (sink.address() as net.AddressInfo).port, hashes };
}

let certs: Certs | null = null;
const tlsSkip = hasOpenssl() ? false : "openssl is not installed";
test.before(() => {
  if (tlsSkip === false) certs = makeCerts();
});
test.after(() => certs?.cleanup());

for (const far of ["plain", "TLS"] as const) {
  test(`reuseReadBuffer: a proxy hands lent chunks to another stream (${far}), which sends them intact after the call`, { timeout: 120_000, skip: far === "TLS" && tlsSkip }, async (t) => {
    const engine: Engine = freshEngine(t);
    const sink = await hashingSink(t, far === "TLS" ? { cert: certs!.server.certPem, key: certs!.server.keyPem } : null);
    const tally: Tally = { chunks: 0, emptied: 0 };
    // The far side first gets a file: the chunks queue behind it, in the
    // other stream, for many reads after the ones that lent them.
    const file = join(tempDir(t), "head.bin");
    const head = randomBytes(16 * MiB);
    writeFileSync(file, head);
    class Front extends Stream {
      #back: Stream | null = null;
      #last: Buffer | null = null;
      #n = 0;
      override onConnect(): void {
        this.reuseReadBuffer = true;
        this.pauseReading();
        const options = far === "TLS" ? { engine, sslOptions: { cert_reqs: "CERT_NONE" as const } } : { engine };
        const back = (this.#back = new Stream(options).connect(["127.0.0.1", sink.port]));
        void back.ready().then(() => {
          back.writeFile(file);
          this.resumeReading();
        });
      }
      override onRead(chunk: Buffer): void {
        if (this.#last !== null && this.#last.length === 0) tally.emptied++;
        tally.chunks++;
        this.#last = chunk;
        // Queued for the end of the turn (after the lend), or sent at once.
        this.#back!.write(chunk, ++this.#n % 2 === 0);
      }
      override onEnd(): void {
        this.#back!.close(true);
        this.close(true);
      }
    }
    const server = new Server(Front, { engine });
    const port = await listenLocal(server, t);
    const data = randomBytes(32 * MiB);
    await exchange(port, data, 7);
    assert.equal(await sink.hashes, sha256(head, data), "what reached the far side differs from what was sent");
    checkLending(server, tally);
  });
}

test("reuseReadBuffer: chunks kept against the promise read as before or as empty, never as later bytes", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const verdicts: string[] = [];
  class Keeper extends Borrower {
    kept: Array<{ view: Buffer; copy: Buffer }> = [];
    override onRead(chunk: Buffer): void {
      this.kept.push({ view: chunk, copy: Buffer.from(chunk) });
    }
    override onEnd(): void {
      const changed = this.kept.filter((k) => k.view.length !== 0 && !k.view.equals(k.copy)).length;
      verdicts.push(`changed=${changed}`);
      this.write(sha256(...this.kept.map((k) => k.copy)));
      this.close(true);
    }
  }
  const port = await listenLocal(new Server(Keeper, { engine }), t);
  const inputs = [1, 2, 3].map(() => randomBytes(8 * MiB));
  // Each answer is the hex SHA-256 of the copies, so its own hash is compared.
  const answers = await Promise.all(inputs.map((data, i) => exchange(port, data, 30 + i)));
  answers.forEach((a, i) => assert.equal(a.hash, sha256(Buffer.from(sha256(inputs[i]!))), `connection ${i}: the chunks as delivered`));
  assert.deepEqual(verdicts, ["changed=0", "changed=0", "changed=0"]);
});

test("reuseReadBuffer: lines framed in JavaScript (a RegExp) across lent reads arrive whole", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  class RegexLines extends Borrower {
    override onConnect(): void {
      super.onConnect();
      this.readDelimiter = /\n/; // framed here, over raw (lent) native reads
    }
    override onRead(line: Buffer): void {
      this.write(line);
      this.write("\n");
    }
  }
  const port = await listenLocal(new Server(RegexLines, { engine }), t);
  // Lines of up to 60 KiB (under bufferSize), so that most span reads.
  const next = sizes(99);
  const parts: Buffer[] = [];
  for (let total = 0; total < 16 * MiB; ) {
    const line = Buffer.alloc(Math.min(next(), 60 * 1024), 0x41 + (parts.length % 26));
    parts.push(line, Buffer.from("\n"));
    total += line.length + 1;
  }
  const data = Buffer.concat(parts);
  const r = await exchange(port, data, 5);
  assert.equal(r.bytes, data.length);
  assert.equal(r.hash, sha256(data));
});

for (const form of ["(buf)", "(buf, start)"] as const) {
  test(`reuseReadBuffer: length-prefixed frames of a Decoder ${form} across lent reads arrive whole`, { timeout: 60_000 }, async (t) => {
    const engine = freshEngine(t);
    const at = (buf: Buffer, start: number) => {
      if (buf.length - start < 4) return null;
      const end = start + 4 + buf.readUInt32BE(start);
      return buf.length < end ? null : { consumed: end - start, args: [buf.subarray(start + 4, end)] };
    };
    const decoder: Decoder = form === "(buf)" ? (buf) => at(buf, 0) : at;
    class Prefixed extends Borrower {
      override onConnect(): void {
        super.onConnect();
        this.readDelimiter = decoder; // framed here, over raw (lent) native reads
      }
      override onRead(body: Buffer): void {
        this.write(body);
      }
    }
    const port = await listenLocal(new Server(Prefixed, { engine }), t);
    // Bodies of up to 60 000 bytes (under bufferSize): most frames span reads, and most reads end inside one.
    const { bodies, wire } = messages(16 * MiB, 7, (body) => {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      return head;
    });
    const r = await exchange(port, wire, 8);
    assert.equal(r.hash, sha256(...bodies), "the bodies echoed differ from the bodies sent");
  });
}

test("reuseReadBuffer: fixed-size frames cut from lent reads echo intact, the partial frame after each read kept", { timeout: 120_000 }, async (t) => {
  const engine = freshEngine(t);
  const tally: Tally = { chunks: 0, emptied: 0 };
  class Records extends Borrower {
    #last: Buffer | null = null;
    override onConnect(): void {
      super.onConnect();
      this.readDelimiter = 40_000; // cut by the addon; most reads end inside a record
    }
    override onRead(record: Buffer): void {
      if (this.#last !== null && this.#last.length === 0) tally.emptied++;
      tally.chunks++;
      this.#last = record;
      this.write(record);
    }
  }
  const server = new Server(Records, { engine });
  const port = await listenLocal(server, t);
  const inputs = [1, 2].map(() => randomBytes(400 * 40_000));
  const results = await Promise.all(inputs.map((data, i) => exchange(port, data, 40 + i, i === 0 ? 0 : 3 * MiB)));
  results.forEach((r, i) => assert.equal(r.hash, sha256(inputs[i]!), `connection ${i}: what came back differs from what was sent`));
  checkLending(server, tally);
});

test("reuseReadBuffer: a protocol that switches between lines and sized bodies inside onRead, over lent reads", { timeout: 120_000 }, async (t) => {
  const engine = freshEngine(t);
  // Each message: its body's length as a line, then the body; the server
  // echoes the bodies. Switching delimiter inside onRead re-frames the rest
  // of a lent read in the same call.
  class Bodies extends Borrower {
    override onConnect(): void {
      super.onConnect();
      this.readDelimiter = "\n";
    }
    override onRead(data: Buffer): void {
      if (this.readDelimiter === "\n") {
        this.readDelimiter = Number(data.toString("latin1"));
      } else {
        this.write(data);
        this.readDelimiter = "\n";
      }
    }
  }
  const port = await listenLocal(new Server(Bodies, { engine }), t);
  const { bodies, wire } = messages(24 * MiB, 77, (body) => Buffer.from(`${body.length}\n`));
  const r = await exchange(port, wire, 78, 4 * MiB);
  assert.equal(r.hash, sha256(...bodies), "the bodies came back changed");
});

test("reuseReadBuffer: with an encoding, onRead gets the text of every chunk", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  class TextEcho extends Borrower {
    override onConnect(): void {
      super.onConnect();
      this.encoding = "latin1";
    }
    override onRead(text: string): void {
      this.write(Buffer.from(text, "latin1"));
    }
  }
  const port = await listenLocal(new Server(TextEcho, { engine }), t);
  const data = randomBytes(8 * MiB);
  const r = await exchange(port, data, 11);
  assert.equal(r.hash, sha256(data));
});

test("reuseReadBuffer: can be turned off again, and takes only a boolean", async (t) => {
  const engine = freshEngine(t);
  const kept: Buffer[] = [];
  const copies: Buffer[] = [];
  class OnOff extends Stream {
    override onConnect(): void {
      this.reuseReadBuffer = true;
      this.reuseReadBuffer = false;
    }
    override onRead(chunk: Buffer): void {
      kept.push(chunk);
      copies.push(Buffer.from(chunk));
    }
  }
  const port = await listenLocal(new Server(OnOff, { engine }), t);
  const sock = net.connect({ host: "127.0.0.1", port });
  t.after(() => sock.destroy());
  const data = randomBytes(4 * MiB);
  sock.write(data);
  await waitFor(() => copies.reduce((n, c) => n + c.length, 0) === data.length, 20_000, "all bytes read");
  await sleep(20);
  kept.forEach((k, i) => assert.ok(k.equals(copies[i]!), `chunk ${i} changed after its call`));

  const s = new Stream({ engine });
  assert.equal(s.reuseReadBuffer, false);
  s.reuseReadBuffer = true;
  assert.equal(s.reuseReadBuffer, true);
  for (const bad of [1, "yes", null, undefined]) {
    assert.throws(() => ((s as unknown as { reuseReadBuffer: unknown }).reuseReadBuffer = bad), TypeError);
  }
});
