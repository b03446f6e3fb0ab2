// A plain-JS workout of the addon for memory checkers (valgrind, ASan), where
// the TypeScript test suite would be too slow. It exercises every path that
// allocates or frees: accept/connect, raw and framed reads (split delimiters,
// sizes, reset and re-framing inside onRead, overflow), lent reads, read
// blocks JS detaches, partial writes (and copies of a reused buffer's),
// writev, shutdown, resets, close from inside callbacks, a peer flooding
// past the per-turn read limit, deferred errors, descriptors adopted
// (listenFd) and refused, a throwing callback, a worker exiting with open
// handles, and finally a natural exit with handles still open (the
// environment teardown path).
//
// It drives the addon through src/native-binding.ts as the transport does
// (build it first: `npm run build`; native/check-asan.sh does).
//
//   valgrind --leak-check=full --error-exitcode=1 --suppressions=native/valgrind.supp node native/memcheck.mjs
//   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
//     node native/memcheck.mjs        (with the addon built with -fsanitize=address)
//
// Prints "memcheck: ok" and exits 0 when every check passed.
import assert from "node:assert/strict";
import net from "node:net";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";

import { loadNative, nativeLoadError } from "../dist/src/native-binding.js";

const addonPath = new URL("../build/Release/pants_native.node", import.meta.url).pathname;
const native = loadNative();
if (native === null) throw new Error(`memcheck: ${nativeLoadError()}`);
const scale = Number(process.env.MEMCHECK_SCALE ?? 1);

const handlers = new WeakMap();
const serverHandlers = new WeakMap();
let closes = 0;
const uncaught = [];
native.init({
  onConnection: (s, c) => (serverHandlers.get(s) ?? ((c) => c.close()))(c),
  // Handlers take the data as a Buffer and the pairs from index 0.
  onRead: (c, block, off, len, f, first, n) => handlers.get(c)?.read?.(Buffer.from(block, off, len), f?.subarray(first) ?? null, n),
  onEnd: (c) => handlers.get(c)?.end?.(),
  onError: (c, code, sc) => handlers.get(c)?.error?.(code, sc),
  onWritten: (c) => handlers.get(c)?.written?.(),
  onConnect: (c, code) => handlers.get(c)?.connect?.(code),
  onClose: (c) => {
    closes++;
    handlers.get(c)?.close?.();
  },
  onShutdown: (c) => handlers.get(c)?.shutdown?.(),
  onUncaught: (e) => uncaught.push(e),
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what, ms = 60_000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`memcheck: timed out waiting for ${what}`);
    await sleep(5);
  }
}
function listen(onConn) {
  const s = native.listenTcp("127.0.0.1", 0, 64, false);
  serverHandlers.set(s, onConn);
  return { s, port: s.address().port };
}
function client(port) {
  const sock = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  const st = { sock, data: [], ended: false, closed: false };
  sock.on("data", (d) => st.data.push(d));
  sock.on("end", () => (st.ended = true));
  sock.on("close", () => (st.closed = true));
  sock.on("error", () => {});
  st.text = () => Buffer.concat(st.data).toString("latin1");
  st.len = () => st.data.reduce((n, b) => n + b.length, 0);
  return st;
}
/** `n` bytes whose every 4-byte word is its own offset: a byte out of place shows. */
function counting(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE(i, i);
  return b;
}
/** The client hangs up; then the server closes its side of the connection. */
async function hangUp(cl, conn) {
  cl.sock.destroy();
  await sleep(20);
  conn.close();
}
async function trickle(sock, s) {
  for (const ch of s) {
    sock.write(ch);
    await sleep(2);
  }
}

// 1. Framed echo: delimiters split, reset and re-framing inside onRead, overflow.
{
  const frames = [];
  const { s, port } = listen((c) => {
    c.setFraming(1, Buffer.from("\r\n"), 64);
    handlers.set(c, {
      read(d, f, n) {
        if (f === null) {
          frames.push("raw:" + d.toString("latin1"));
          return;
        }
        if (n < 0) {
          frames.push("overflow:" + d.length);
          return;
        }
        for (let i = 0; i < n; i++) {
          const fr = d.subarray(f[2 * i], f[2 * i + 1]).toString("latin1");
          frames.push(fr);
          c.write(Buffer.from(fr + "\n"));
          if (fr === "SIZE") {
            c.setFraming(2, 3, 0);
            return;
          }
          if (fr === "RESET") {
            const rest = d.subarray(f[2 * i + 1] + 2);
            c.resetFraming();
            frames.push("js:" + rest.toString("latin1"));
            return;
          }
        }
      },
      end: () => c.close(),
    });
    c.readStart();
  });
  const cl = client(port);
  await until(() => cl.sock.readyState === "open", "connect");
  await trickle(cl.sock, "ab\r\ncd\r");
  cl.sock.write("\nSIZE\r\nxyzuvw");
  await until(() => frames.includes("uvw"), "size frames");
  cl.sock.end();
  await until(() => cl.closed || cl.ended, "end 1");
  cl.sock.destroy();

  const cl2 = client(port);
  await until(() => cl2.sock.readyState === "open", "connect 2");
  cl2.sock.write("one\r\nRESET\r\ntail");
  await until(() => frames.some((f) => f.startsWith("js:")), "reset");
  cl2.sock.write("+more");
  await until(() => frames.includes("raw:+more"), "raw after reset");
  cl2.sock.destroy();

  const cl3 = client(port);
  await until(() => cl3.sock.readyState === "open", "connect 3");
  cl3.sock.write("ok\r\n" + "x".repeat(200));
  await until(() => frames.some((f) => f.startsWith("overflow:")), "overflow");
  cl3.sock.destroy();
  s.close();
}

// 1a. The pending bytes taken out at the FIN (takePending, as the transport
// does when the peer ends), and on a connection with nothing pending.
{
  const taken = [];
  const { s, port } = listen((c) => {
    c.setFraming(1, Buffer.from("\n"), 1024);
    handlers.set(c, {
      read() {},
      end() {
        const p = c.takePending();
        taken.push(p === undefined ? "none" : p.toString("latin1"));
        c.close();
      },
    });
    c.readStart();
  });
  for (const [i, data] of ["a\npartial", "b\n"].entries()) {
    const cl = client(port);
    await until(() => cl.sock.readyState === "open", "connect 1a");
    cl.sock.end(data);
    await until(() => taken.length === i + 1 && cl.closed, "end 1a");
    cl.sock.destroy();
  }
  assert.deepEqual(taken, ["partial", "none"]);
  s.close();
}

// 1b. Delimiters longer than the inline 8 bytes (a heap copy), straddling
// reads, switched long -> short -> long, and a connection closed holding one.
{
  const long = "<<--record-end-->>";
  const frames = [];
  const { s, port } = listen((c) => {
    c.setFraming(1, Buffer.from(long), 256);
    handlers.set(c, {
      read(d, f, n) {
        for (let i = 0; i < n; i++) {
          const fr = d.subarray(f[2 * i], f[2 * i + 1]).toString("latin1");
          frames.push(fr);
          if (fr === "short") c.setFraming(1, Buffer.from("\n"), 256);
          else if (fr === "long") c.setFraming(1, Buffer.from(long + "!"), 256);
        }
      },
      end: () => c.close(),
    });
    c.readStart();
  });
  const cl = client(port);
  await until(() => cl.sock.readyState === "open", "connect 1b");
  await trickle(cl.sock, `one${long}short${long}`);
  await until(() => frames.length === 2, "long-delimited frames");
  cl.sock.write("two\nlong\n");
  await until(() => frames.length === 4, "short-delimited frames");
  await trickle(cl.sock, `three${long}!four${long.slice(0, 5)}`);
  await until(() => frames.length === 5, "a second long delimiter");
  assert.deepEqual(frames, ["one", "short", "two", "long", "three"]);
  cl.sock.destroy(); // closed with a long delimiter and a partial one pending
  await sleep(20);
  s.close();
}

// 1c. The read batch (one JS call for the reads of a poll phase): many
// frames per read (the table grows), and a handler that pauses, re-frames,
// resets or closes another connection whose read waits further on in the
// same batch (that read leaves the batch: P is put back).
{
  for (const action of ["setFraming", "readStop", "resetFraming", "close", "none"]) {
    const conns = [];
    const seen = new Map();
    let acted = false;
    const { s, port } = listen((c) => {
      conns.push(c);
      seen.set(c, 0);
      c.setFraming(1, Buffer.from("\n"), 1024);
      handlers.set(c, {
        read(d, f, n) {
          seen.set(c, seen.get(c) + Math.max(n, 1));
          if (acted || action === "none") return;
          acted = true;
          const other = conns.find((o) => o !== c);
          if (action === "setFraming") other.setFraming(1, Buffer.from(";"), 1024);
          else if (action === "readStop") other.readStop();
          else if (action === "resetFraming") other.resetFraming();
          else other.close();
        },
      });
      c.readStart();
    });
    const a = client(port);
    const b = client(port);
    await until(() => conns.length === 2, "two connections (1c)");
    await sleep(5);
    const many = "x;y\n".repeat(700); // 700 frames in one read: more than the table's first 1024 words
    a.sock.write(`a;b\nc;d${many}`);
    b.sock.write(`a;b\nc;d${many}`);
    await until(() => [...seen.values()].some((v) => v > 0), "a first batch (1c)");
    await sleep(30);
    if (action === "readStop") conns.forEach((c) => c.readStart());
    await sleep(20);
    a.sock.destroy();
    b.sock.destroy();
    await sleep(20);
    for (const c of conns) c.close();
    s.close();
  }
}

// 2. Partial writes, writev, shutdown, slow reader.
{
  let conn;
  let written = 0;
  let shut = false;
  const { s, port } = listen((c) => {
    conn = c;
    handlers.set(c, { written: () => written++, shutdown: () => (shut = true) });
  });
  const cl = client(port);
  cl.sock.pause();
  await until(() => conn !== undefined, "accept");
  const big = Buffer.alloc(8 * 1024 * 1024 * scale, 7);
  const parts = Array.from({ length: 20 }, (_, i) => Buffer.alloc(100_000, i));
  let left = conn.write(big) + conn.writev(parts);
  assert.ok(left > 0, "partial write");
  assert.equal(typeof conn.deliveredBytes(), "number");
  assert.equal(conn.bytesRead(), 0);
  conn.shutdown();
  assert.throws(() => conn.write(Buffer.from("x")), { code: "ERR_STREAM_WRITE_AFTER_END" });
  cl.sock.resume();
  await until(() => cl.ended && written === 1 && shut, "all bytes + FIN");
  assert.equal(cl.len(), big.length + 2_000_000);
  await until(() => conn.deliveredBytes() === -1, "every byte acknowledged");
  await hangUp(cl, conn);
  s.close();
}

// 2a. A peer that keeps the socket full: after PN_READ_RUN bytes of full
// reads in a row the addon ends the turn's reads (an empty buffer, libuv's
// UV_ENOBUFS) and reads the socket again on the next; every byte arrives.
// deliveredBytesOf() on a node:net descriptor, and its argument check.
{
  let conn;
  let got = 0;
  let ended = false;
  const { s, port } = listen((c) => {
    conn = c;
    handlers.set(c, { read: (b) => (got += b.length), end: () => (ended = true) });
    c.readStart();
  });
  const cl = client(port);
  await until(() => conn !== undefined, "accept");
  const total = 16 * 1024 * 1024 * scale;
  const block = Buffer.alloc(1024 * 1024, 3);
  for (let sent = 0; sent < total; sent += block.length) cl.sock.write(block);
  cl.sock.end();
  await until(() => ended && got === total, "every flooded byte");
  assert.equal(typeof native.deliveredBytesOf(cl.sock._handle.fd), "number");
  assert.throws(() => native.deliveredBytesOf(-1), RangeError);
  assert.throws(() => native.deliveredBytesOf("3"), TypeError);
  await hangUp(cl, conn);
  s.close();
}

// 2b. Lent reads (lendReads): an echo of them to a slow reader, so that what
// the writes queue of them is copied, and checked; a kept read is detached.
{
  let conn;
  let bytes = 0;
  let queued = 0;
  const kept = [];
  const { s, port } = listen((c) => {
    conn = c;
    c.lendReads(true);
    handlers.set(c, {
      read(d) {
        bytes += d.length;
        if (c.write(d) > 0) queued++;
        kept.push(d);
      },
    });
    c.readStart();
  });
  const cl = client(port);
  cl.sock.pause();
  const big = counting(4 * 1024 * 1024 * scale);
  await until(() => cl.sock.readyState === "open", "connect 2b");
  cl.sock.write(big);
  await until(() => bytes === big.length, "lent reads");
  cl.sock.resume();
  await until(() => cl.len() === big.length, "the echo of lent reads");
  assert.ok(Buffer.concat(cl.data).equals(big), "the echo of lent reads is intact");
  assert.ok(queued > 0, "writes of lent reads queued");
  assert.ok(kept.some((k) => k.length === 0), "a lent read is detached after its call");
  await hangUp(cl, conn);
  s.close();
}

// 2c. Lent framed reads: fixed-size frames cut from lent reads, the partial
// frame after each read kept (copied) before the block is taken back.
{
  let conn;
  const frames = [];
  const { s, port } = listen((c) => {
    conn = c;
    c.lendReads(true);
    c.setFraming(2, 40_000, 65536);
    handlers.set(c, {
      read(d, f, n) {
        for (let i = 0; i < n; i++) frames.push(Buffer.from(d.subarray(f[2 * i], f[2 * i + 1])));
      },
    });
    c.readStart();
  });
  const cl = client(port);
  const big = counting(40_000 * 50 * scale);
  await until(() => cl.sock.readyState === "open", "connect 2c");
  cl.sock.write(big);
  await until(() => frames.length === 50 * scale, "lent frames");
  assert.ok(Buffer.concat(frames).equals(big), "frames cut from lent reads are intact");
  await hangUp(cl, conn);
  s.close();
}

// 2d. Blocks JS detaches: a handler transfers the ArrayBuffer of large reads
// (the spare; later reads must not land in it), and of a framed read whose
// tail was still to be kept (that connection fails with EFAULT). Writes of a
// reused buffer with a length: what they queue is copied.
{
  let conn;
  let bytes = 0;
  const moved = [];
  const { s, port } = listen((c) => {
    conn = c;
    handlers.set(c, {
      read(d) {
        bytes += d.length;
        if (d.length > 4096 && moved.length < 16) {
          // Ours now: filled (its unread part was never written), and checked later.
          moved.push(new Uint8Array(structuredClone(d.buffer, { transfer: [d.buffer] })).fill(0x5a));
        }
      },
    });
    c.readStart();
  });
  const cl = client(port);
  await until(() => cl.sock.readyState === "open", "connect 2d");
  const piece = Buffer.alloc(40 * 1024, 9);
  for (let i = 0; i < 100 * scale; i++) {
    cl.sock.write(piece);
    await sleep(2);
  }
  await until(() => bytes === 100 * scale * piece.length, "reads after the spare was moved");
  assert.ok(moved.length > 0, "no read block was moved");
  for (const m of moved) assert.ok(m.every((b) => b === 0x5a), "a later read landed in a moved block");
  await hangUp(cl, conn);

  let failed = null;
  serverHandlers.set(s, (c) => {
    conn = c;
    c.setFraming(1, Buffer.from("\n"), 1 << 20);
    handlers.set(c, {
      read(d) {
        if (d.buffer.byteLength > 0) structuredClone(d.buffer, { transfer: [d.buffer] });
      },
      error: (code) => (failed = code),
    });
    c.readStart();
  });
  const cl2 = client(port);
  await until(() => cl2.sock.readyState === "open", "connect 2d framed");
  const lines = Buffer.alloc(200 * 1024, 0x61);
  for (let i = 100; i < lines.length; i += 1000) lines[i] = 0x0a;
  for (let i = 0; i < 20 && failed === null; i++) {
    cl2.sock.write(lines);
    await sleep(5);
  }
  await until(() => failed !== null, "EFAULT for a tail in a detached block");
  assert.equal(failed, "EFAULT");
  await hangUp(cl2, conn);

  serverHandlers.set(s, (c) => (conn = c));
  conn = undefined;
  const cl3 = client(port);
  cl3.sock.pause();
  await until(() => conn !== undefined, "accept 2d writes");
  const filler = Buffer.alloc(1024 * 1024, 1);
  let sent = 0;
  while (conn.write(filler) === 0) sent += filler.length;
  sent += filler.length;
  const scratch = Buffer.alloc(64 * 1024);
  for (let i = 0; i < 8; i++) {
    scratch.fill(0x61 + i, 0, 1000);
    assert.ok(conn.write(scratch, 1000) > 0, "queued");
  }
  scratch.fill(0);
  cl3.sock.resume();
  await until(() => cl3.len() === sent + 8000, "queued copies of a reused buffer");
  const tail = Buffer.concat(cl3.data).subarray(sent);
  for (let i = 0; i < 8; i++) assert.ok(tail.subarray(i * 1000, (i + 1) * 1000).every((b) => b === 0x61 + i), "a queued copy is intact");
  await hangUp(cl3, conn);
  s.close();
}

// 3. Close with queued writes (refs freed on cancel), close inside onRead, resets.
{
  const { s, port } = listen((c) => {
    handlers.set(c, {
      read(d) {
        if (d.toString() === "close-now") {
          c.write(Buffer.alloc(4 * 1024 * 1024)); // mostly queued (reader paused)
          c.write(Buffer.alloc(1024));
          c.close();
        }
      },
      error: () => c.close(),
      end: () => c.close(),
    });
    c.readStart();
  });
  for (let i = 0; i < 20 * scale; i++) {
    const cl = client(port);
    await until(() => cl.sock.readyState === "open", "connect");
    cl.sock.pause();
    cl.sock.write("close-now");
    await sleep(10);
    cl.sock.resume();
    await until(() => cl.ended || cl.closed, "server close");
    cl.sock.destroy();
    const cl2 = client(port);
    await until(() => cl2.sock.readyState === "open", "connect r");
    cl2.sock.resetAndDestroy();
  }
  s.close();
}

// 4. Connect paths: refused, synchronous failure, pipe, abstract, deferred write error.
{
  let results = [];
  const c1 = native.connectTcp("127.0.0.1", 1);
  handlers.set(c1, { connect: (code) => (results.push(code), c1.close()) });
  const c2 = native.connectTcp("127.0.0.1", 0);
  handlers.set(c2, { connect: (code) => (results.push(code), c2.close()) });
  await until(() => results.length === 2, "connect errors");
  assert.ok(results.every((r) => typeof r === "string"));

  const dir = mkdtempSync(join(tmpdir(), "pants-memcheck-"));
  for (const path of [join(dir, "p.sock"), `\0pants-memcheck-${process.pid}`]) {
    const s = native.listenPipe(path, 8);
    serverHandlers.set(s, (c) => {
      handlers.set(c, { read: (d) => c.write(d), end: () => (c.shutdown(), c.close()) });
      c.readStart();
    });
    let got = "";
    let closed = false;
    const c = native.connectPipe(path);
    handlers.set(c, {
      connect: () => {
        c.readStart();
        c.write(Buffer.from("pipe!"));
      },
      read: (d) => {
        got += d;
        if (got === "pipe!") c.close();
      },
      close: () => (closed = true),
    });
    await until(() => closed, "pipe round trip");
    s.close();
  }
  rmSync(dir, { recursive: true, force: true });

  // A dead socket found by writing: reported later through onError(write).
  let conn;
  const errors = [];
  const { s, port } = listen((c) => {
    conn = c;
    handlers.set(c, { error: (code, sc) => errors.push(sc) });
  });
  const cl = client(port);
  await until(() => conn !== undefined, "accept");
  cl.sock.resetAndDestroy();
  await sleep(30);
  for (let i = 0; i < 10 && errors.length === 0; i++) {
    conn.write(Buffer.alloc(1000));
    await sleep(10);
  }
  assert.ok(errors.includes("write"));
  conn.close();
  s.close();
}

// 5. A throwing callback; churn.
{
  let n = 0;
  const { s, port } = listen((c) => {
    c.setFraming(1, Buffer.from("\n"), 1024);
    handlers.set(c, {
      read(d, f, count) {
        for (let i = 0; i < count; i++) c.write(Buffer.from(d.subarray(f[2 * i], f[2 * i + 1] + 1)));
        if (++n % 7 === 0) throw new Error("boom");
      },
      end: () => c.close(),
    });
    c.readStart();
  });
  const N = 200 * scale;
  for (let i = 0; i < N; i += 10) {
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const cl = client(port);
        await until(() => cl.sock.readyState === "open", "connect");
        cl.sock.write("hello\nworld\n");
        await until(() => cl.len() >= 12, "echo");
        cl.sock.end();
        await until(() => cl.closed || cl.ended, "close");
        cl.sock.destroy();
      }),
    );
  }
  assert.ok(uncaught.length > 0);
  s.close();
}

// 5b. Bursts of connects (accepted in batches), over TCP and a pipe, and a
// server that closes itself in the middle of a batch.
{
  const dir = mkdtempSync(join(tmpdir(), "pants-memcheck-"));
  try {
    const path = join(dir, "burst.sock");
    const pipeServer = native.listenPipe(path, 128);
    const { s: tcpServer, port } = listen(() => {});
    for (const server of [tcpServer, pipeServer]) {
      serverHandlers.set(server, (c) => {
        handlers.set(c, { read: (d) => c.write(d), end: () => c.close() });
        c.readStart();
      });
    }
    const burst = (connect) =>
      Promise.all(
        Array.from({ length: 50 }, async () => {
          const sock = connect();
          sock.on("error", () => {});
          const got = [];
          sock.on("data", (d) => got.push(d));
          sock.write("burst\n");
          await until(() => Buffer.concat(got).length >= 6, "burst echo");
          sock.end();
          await new Promise((resolve) => sock.on("close", resolve));
        }),
      );
    await burst(() => net.connect({ port, host: "127.0.0.1" }));
    await burst(() => net.connect({ path }));
    tcpServer.close();
    pipeServer.close();
    let accepted = 0;
    const { s: closing, port: closingPort } = listen(() => {});
    serverHandlers.set(closing, (c) => {
      accepted++;
      closing.close();
      c.close();
    });
    const socks = Array.from({ length: 30 }, () => {
      const sock = net.connect({ port: closingPort, host: "127.0.0.1" });
      sock.on("error", () => {});
      return sock;
    });
    await until(() => socks.every((sock) => sock.destroyed || sock.readyState === "closed"), "burst after close");
    assert.equal(accepted, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// 5b. SO_REUSEPORT: two listeners on one port, a socket bound for node:net, and their error paths.
{
  const a = native.listenTcp("127.0.0.1", 0, 8, false, true);
  const port = a.address().port;
  const b = native.listenTcp("127.0.0.1", port, 8, false, true);
  const fd = native.bindTcp("127.0.0.1", port, false, true);
  assert.ok(fd > 2);
  closeSync(fd);
  // Without the option on the newcomer: refused, and nothing leaks on the way out.
  assert.throws(() => native.bindTcp("127.0.0.1", port, false, false), (err) => err.code === "EADDRINUSE");
  assert.throws(() => native.listenTcp("127.0.0.1", port, 8, false, false), (err) => err.code === "EADDRINUSE");
  assert.throws(() => native.bindTcp("not an address", port, false, true), (err) => typeof err.code === "string");
  assert.throws(() => native.bindTcp("127.0.0.1", port, "yes", true), TypeError);
  a.close();
  b.close();
}

// 5c. listenFd: a descriptor adopted (TCP here; a UNIX path, an abstract
// name and a connected socket, refused with EISCONN and left open, in a
// child, which gets them at 3, 4, 5 as systemd passes sockets), and each
// way it refuses one.
{
  const fd = native.bindTcp("127.0.0.1", 0, false, false);
  const s = native.listenFd(fd, 8);
  assert.equal(s.fd, fd);
  const port = s.address().port;
  serverHandlers.set(s, (c) => {
    handlers.set(c, { read: (d) => c.write(d), end: () => c.close() });
    c.readStart();
  });
  const cl = client(port);
  cl.sock.end("adopted");
  await until(() => cl.closed, "echo over an adopted socket");
  assert.equal(cl.text(), "adopted");
  // Already this loop's (EEXIST): neither taken nor closed.
  assert.throws(() => native.listenFd(fd, 8), (err) => err.code === "EEXIST");
  s.close();
  const closed = native.bindTcp("127.0.0.1", 0, false, false);
  closeSync(closed);
  assert.throws(() => native.listenFd(closed, 8), (err) => err.code === "EBADF");
  const dir = mkdtempSync(join(tmpdir(), "pants-memcheck-"));
  const file = openSync(join(dir, "file"), "w");
  assert.throws(() => native.listenFd(file, 8), (err) => err.code === "ENOTSOCK");
  closeSync(file);

  const bound = join(dir, "fd.sock");
  const moved = join(dir, "moved.sock");
  const abstract = `\0pants-memcheck-fd-${process.pid}`;
  const pathServer = net.createServer().listen(bound);
  const abstractServer = net.createServer().listen(abstract);
  await Promise.all([pathServer, abstractServer].map((x) => new Promise((resolve) => x.once("listening", resolve))));
  assert.throws(() => native.listenFd(pathServer._handle.fd, 8), (err) => err.code === "EEXIST");
  const { s: tcp, port: tcpPort } = listen((c) => handlers.set(c, {}));
  const connected = net.connect({ port: tcpPort, host: "127.0.0.1" });
  await new Promise((resolve) => connected.once("connect", resolve));
  const code = `
    import { fstatSync } from "node:fs";
    import { loadNative } from ${JSON.stringify(new URL("../dist/src/native-binding.js", import.meta.url).href)};
    const n = loadNative();
    const noop = () => {};
    let left = 2;
    const servers = [];
    n.init({ onConnection(s, c) { c.close(); if (--left === 0) for (const x of servers) x.close(); },
      onRead: noop, onEnd: noop, onError: noop, onWritten: noop, onConnect: noop, onClose: noop, onShutdown: noop, onUncaught: noop });
    const out = {};
    for (const fd of [3, 5]) { const s = n.listenFd(fd, 8); servers.push(s); out[fd] = s.address().path; }
    try { n.listenFd(4, 8); } catch (err) { out[4] = err.code; }
    try { fstatSync(4); out.kept = true; } catch { out.kept = false; }
    console.log(JSON.stringify(out));
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code], {
    stdio: ["ignore", "pipe", "inherit", pathServer._handle.fd, connected._handle.fd, abstractServer._handle.fd],
  });
  let said = "";
  child.stdout.on("data", (d) => (said += d));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  await until(() => said.includes("\n"), "the child's adopted sockets");
  // This process's copies go; the path is moved first, as a close unlinks it.
  renameSync(bound, moved);
  pathServer.close();
  abstractServer.close();
  assert.deepEqual(JSON.parse(said), { 3: bound, 4: "EISCONN", kept: true, 5: abstract });
  for (const target of [moved, abstract]) {
    const sock = net.connect({ path: target });
    sock.on("error", () => {});
    await new Promise((resolve) => sock.once("close", resolve));
  }
  assert.equal(await exited, 0);
  connected.destroy();
  tcp.close();
  rmSync(dir, { recursive: true, force: true });
}

// 6. A worker exiting with open handles and queued writes.
{
  const code = `
    const { parentPort } = require("node:worker_threads");
    const n = require(${JSON.stringify(addonPath)});
    const noop = () => {};
    n.init({ onConnection(s, c) { n.conn.readStart(c); n.conn.write(c, Buffer.alloc(4 << 20)); }, onReadBatch: noop, onEnd: noop,
      onError: noop, onWritten: noop, onConnect() { parentPort.postMessage("up"); }, onClose: noop, onUncaught: noop });
    const s = n.listenTcp("127.0.0.1", 0, 8, false);
    n.connectTcp("127.0.0.1", s.address().port);
  `;
  const w = new Worker(code, { eval: true });
  await new Promise((resolve, reject) => {
    w.once("message", resolve);
    w.once("error", reject);
  });
  await sleep(50);
  await w.terminate();
}

// 7. Natural exit with open (unref'd) handles: the teardown hook closes them.
{
  const { s, port } = listen((c) => {
    c.unref();
    c.readStart();
  });
  const c = native.connectTcp("127.0.0.1", port);
  handlers.set(c, {
    connect: () => {
      c.readStart();
      c.write(Buffer.from("left open"));
      c.unref();
    },
  });
  s.unref();
  await sleep(100);
}
console.log(`memcheck: ok (${closes} connections closed, ${uncaught.length} uncaught reported)`);
