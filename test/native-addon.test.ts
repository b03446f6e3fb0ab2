/**
 * The native addon (native/*.c) through its raw API: listening (TCP v4/v6,
 * UNIX paths, abstract names), accepting, raw echo, framing (split and
 * multi-byte delimiters, fixed sizes, the `rest` / resetFraming invariant,
 * overflow), partial writes, writev order, shutdown, reset, EOF, close from
 * inside callbacks, connecting, ref/unref, addresses, errors, teardown in a
 * worker, and a leak check over 2000 connections. Node's own node:net is the
 * peer. Skipped as a whole when the addon is not built.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { loadNative, nativeLoadError } from "../src/native-binding.js";
import type { NativeAddon, NativeConn, NativeServer } from "../src/native-binding.js";

const native = loadNative();
const skip = native === null ? `native addon unavailable: ${nativeLoadError() ?? "unknown reason"}` : false;

// ---------------------------------------------------------------------------
// One set of callbacks per process: dispatch to per-object handlers.

interface ConnHandlers {
  read?(data: Buffer, frames: Int32Array | null, count: number): void;
  end?(): void;
  error?(code: string, syscall: string): void;
  written?(): void;
  connect?(code: string | null): void;
  close?(): void;
  shutdown?(): void;
}

const connHandlers = new WeakMap<NativeConn, ConnHandlers>();
const serverHandlers = new WeakMap<NativeServer, (conn: NativeConn) => void>();
const closedCount = new WeakMap<NativeConn, number>();
const uncaught: unknown[] = [];

function addon(): NativeAddon {
  assert.ok(native !== null);
  return native;
}

// Everything a test opens, closed in after() even when a test fails midway.
const openConns = new Set<NativeConn>();
const openSockets = new Set<net.Socket>();

function on(conn: NativeConn, handlers: ConnHandlers): NativeConn {
  connHandlers.set(conn, handlers);
  openConns.add(conn);
  return conn;
}

function setup(): void {
  addon().init({
    onConnection(server, conn) {
      openConns.add(conn);
      const h = serverHandlers.get(server);
      if (h === undefined) conn.close();
      else h(conn);
    },
    // The handlers below take the data as a Buffer and the pairs from index 0.
    onRead(conn, block, offset, length, frames, first, count) {
      connHandlers.get(conn)?.read?.(Buffer.from(block, offset, length), frames?.subarray(first) ?? null, count);
    },
    onEnd(conn) {
      connHandlers.get(conn)?.end?.();
    },
    onError(conn, code, syscall) {
      connHandlers.get(conn)?.error?.(code, syscall);
    },
    onWritten(conn) {
      connHandlers.get(conn)?.written?.();
    },
    onConnect(conn, code) {
      connHandlers.get(conn)?.connect?.(code);
    },
    onClose(conn) {
      openConns.delete(conn);
      closedCount.set(conn, (closedCount.get(conn) ?? 0) + 1);
      connHandlers.get(conn)?.close?.();
    },
    onShutdown(conn) {
      connHandlers.get(conn)?.shutdown?.();
    },
    onUncaught(err) {
      uncaught.push(err);
    },
  });
}

// ---------------------------------------------------------------------------
// Helpers

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const servers: NativeServer[] = [];

function listen(onConn: (conn: NativeConn) => void, host = "127.0.0.1"): { server: NativeServer; port: number } {
  const server = addon().listenTcp(host, 0, 511, false);
  servers.push(server);
  serverHandlers.set(server, onConn);
  const a = server.address();
  assert.ok(a !== null && "port" in a);
  return { server, port: a.port };
}

/** A node:net client collecting what it receives. */
class Client {
  chunks: Buffer[] = [];
  ended = false;
  closed = false;
  error: Error | null = null;
  constructor(readonly socket: net.Socket) {
    openSockets.add(socket);
    socket.on("close", () => openSockets.delete(socket));
    socket.on("data", (d: Buffer) => this.chunks.push(d));
    socket.on("end", () => (this.ended = true));
    socket.on("close", () => (this.closed = true));
    socket.on("error", (err) => (this.error = err));
  }
  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }
  static async tcp(port: number, host = "127.0.0.1"): Promise<Client> {
    const socket = net.connect({ port, host, allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    socket.setNoDelay(true);
    return new Client(socket);
  }
  static async pipe(path: string): Promise<Client> {
    const socket = net.connect({ path, allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    return new Client(socket);
  }
  async waitFor(bytes: number, ms = 10_000): Promise<Buffer> {
    await until(() => this.chunks.reduce((n, c) => n + c.length, 0) >= bytes, `${bytes} bytes`, ms);
    return this.received;
  }
  /** Sends bytes one write at a time with a pause, so the server sees separate reads. */
  async trickle(data: string | Buffer, ms = 4): Promise<void> {
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    for (let i = 0; i < buf.length; i++) {
      this.socket.write(buf.subarray(i, i + 1));
      await sleep(ms);
    }
  }
}

/** Accepts one connection, reads with the given framing, records frames. */
function frameRecorder(kind: 0 | 1 | 2, value: Buffer | number | null, limit: number) {
  const rec = {
    conn: null as NativeConn | null,
    frames: [] as string[],
    calls: [] as Array<{ data: Buffer; frames: number[]; count: number }>,
    raw: [] as Buffer[],
  };
  const { port } = listen((conn) => {
    rec.conn = conn;
    if (kind === 1) conn.setFraming(1, value as Buffer, limit);
    else if (kind === 2) conn.setFraming(2, value as number, limit);
    on(conn, {
      read(data, frames, count) {
        if (frames === null) {
          rec.raw.push(Buffer.from(data));
          return;
        }
        const n = count < 0 ? 0 : count;
        rec.calls.push({ data: Buffer.from(data), frames: Array.from(frames.subarray(0, 2 * n + 1)), count });
        for (let i = 0; i < n; i++) rec.frames.push(data.subarray(frames[2 * i]!, frames[2 * i + 1]!).toString("latin1"));
      },
    });
    conn.readStart();
  });
  return { rec, port };
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

// ---------------------------------------------------------------------------

describe("native addon", { skip }, () => {
  before(() => setup());
  after(() => {
    for (const s of servers) s.close();
    for (const c of openConns) c.close();
    for (const s of openSockets) s.destroy();
  });

  test("loadNative honours PANTS_TS_TRANSPORT=js", () => {
    const saved = process.env.PANTS_TS_TRANSPORT;
    process.env.PANTS_TS_TRANSPORT = "js";
    try {
      assert.equal(loadNative(), null);
      assert.match(nativeLoadError() ?? "", /PANTS_TS_TRANSPORT/);
    } finally {
      if (saved === undefined) delete process.env.PANTS_TS_TRANSPORT;
      else process.env.PANTS_TS_TRANSPORT = saved;
    }
    assert.equal(loadNative(), native);
  });

  test("listen on 127.0.0.1:0, accept, raw echo, EOF -> onEnd, close -> one onClose", async () => {
    let accepted: NativeConn | null = null;
    let ended = false;
    let closes = 0;
    const { server, port } = listen((conn) => {
      accepted = conn;
      on(conn, {
        read(data, frames, count) {
          assert.equal(frames, null);
          assert.equal(count, 0);
          conn.write(data);
        },
        end() {
          ended = true;
          conn.close();
        },
        close() {
          closes++;
        },
      });
      conn.readStart();
      conn.readStart(); // idempotent
    });
    const a = server.address();
    assert.deepEqual(a, { address: "127.0.0.1", port, family: 4 });
    assert.ok(server.fd > 2);
    const c = await Client.tcp(port);
    c.socket.write("hello, ");
    c.socket.write("native world");
    assert.equal((await c.waitFor(19)).toString(), "hello, native world");
    c.socket.end();
    await until(() => closes === 1 && c.closed, "close");
    assert.ok(ended);
    assert.ok(accepted !== null);
    const conn: NativeConn = accepted;
    assert.equal(closedCount.get(conn), 1);
    // Inert after onClose.
    assert.equal(conn.fd, -1);
    assert.equal(conn.address(), null);
    assert.equal(conn.pendingBytes(), 0);
    conn.close();
    conn.readStart();
    assert.throws(() => conn.write(Buffer.from("x")), { code: "ERR_STREAM_DESTROYED" });
    await sleep(20);
    assert.equal(closedCount.get(conn), 1);
  });

  test("listen on ::1 (IPv6)", async (t) => {
    let server: NativeServer;
    try {
      server = addon().listenTcp("::1", 0, 0, true);
    } catch (err) {
      t.skip(`no IPv6 loopback: ${(err as Error).message}`);
      return;
    }
    servers.push(server);
    const a = server.address();
    assert.ok(a !== null && "port" in a);
    assert.equal(a.family, 6);
    assert.equal(a.address, "::1");
    let peer: unknown = null;
    serverHandlers.set(server, (conn) => {
      peer = conn.peerAddress();
      on(conn, { read: (data) => conn.write(data), end: () => conn.close() });
      conn.readStart();
    });
    const c = await Client.tcp(a.port, "::1");
    c.socket.write("six");
    assert.equal((await c.waitFor(3)).toString(), "six");
    assert.deepEqual(peer, { address: "::1", port: c.socket.localPort, family: 6 });
    c.socket.end();
    await until(() => c.closed, "client close");
  });

  test("UNIX socket path: listen, echo, address, unlinked on close", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pants-native-"));
    const path = join(dir, "s.sock");
    try {
      const server = addon().listenPipe(path, 16);
      assert.deepEqual(server.address(), { path });
      let connAddr: unknown = null;
      serverHandlers.set(server, (conn) => {
        connAddr = conn.address();
        on(conn, { read: (data) => conn.write(data), end: () => conn.close() });
        conn.readStart();
      });
      const c = await Client.pipe(path);
      c.socket.write("over a pipe");
      assert.equal((await c.waitFor(11)).toString(), "over a pipe");
      assert.deepEqual(connAddr, { path });
      c.socket.end();
      await until(() => c.closed, "client close");
      assert.ok(existsSync(path));
      server.close();
      server.close(); // idempotent
      await until(() => !existsSync(path), "socket file removed");
      assert.equal(server.address(), null);
      assert.equal(server.fd, -1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("abstract socket name, with connectPipe as the client", async () => {
    const name = `\0pants-native-test-${process.pid}-${randomBytes(4).toString("hex")}`;
    const server = addon().listenPipe(name, 16);
    servers.push(server);
    assert.deepEqual(server.address(), { path: name });
    serverHandlers.set(server, (conn) => {
      on(conn, { read: (data) => conn.write(Buffer.concat([Buffer.from("<"), data, Buffer.from(">")])) });
      conn.readStart();
    });
    let connected: string | null | undefined;
    let got = "";
    let closed = false;
    const client = on(addon().connectPipe(name), {
      connect(code) {
        connected = code;
        client.readStart();
        client.write(Buffer.from("abstract"));
      },
      read(data) {
        got += data.toString();
        if (got.length >= 10) client.close();
      },
      close() {
        closed = true;
      },
    });
    assert.equal(connected, undefined, "onConnect never runs inside connectPipe()");
    await until(() => closed, "client closed");
    assert.equal(connected, null);
    assert.equal(got, "<abstract>");
    // node:net reaches the same name.
    const c = await Client.pipe(name);
    c.socket.write("net");
    assert.equal((await c.waitFor(5)).toString(), "<net>");
    c.socket.destroy();
  });

  test("bytes delimiter: frames split across reads, delimiter sent byte by byte", async () => {
    const { rec, port } = frameRecorder(1, Buffer.from("\n"), 1024);
    const c = await Client.tcp(port);
    await c.trickle("ab\ncd\n\nef");
    await until(() => rec.frames.length === 3, "3 frames");
    assert.deepEqual(rec.frames, ["ab", "cd", ""]);
    c.socket.write("g\n");
    await until(() => rec.frames.length === 4, "4th frame");
    assert.equal(rec.frames[3], "efg");
    // Every call's data starts at the first undelivered byte.
    const last = rec.calls.at(-1)!;
    assert.equal(last.data.toString(), "efg\n");
    assert.deepEqual(last.frames, [0, 3, 4]);
    c.socket.destroy();
  });

  test('multi-byte delimiter "\\r\\n\\r\\n" straddling reads', async () => {
    const { rec, port } = frameRecorder(1, Buffer.from("\r\n\r\n"), 1024);
    const c = await Client.tcp(port);
    await c.trickle("GET / HTTP/1.1\r\nHost: x\r\n\r\nX\r\n\r\r\n\r\n");
    await until(() => rec.frames.length === 2, "2 frames");
    assert.deepEqual(rec.frames, ["GET / HTTP/1.1\r\nHost: x", "X\r\n\r"]);
    // Many frames and partial delimiters in one read.
    c.socket.write("a\r\n\r\nbb\r\n\r\nccc\r\n");
    await sleep(30);
    c.socket.write("\r\nd\r");
    await until(() => rec.frames.length === 5, "5 frames");
    assert.deepEqual(rec.frames.slice(2), ["a", "bb", "ccc"]);
    c.socket.write("\n\r\n");
    await until(() => rec.frames.length === 6, "6 frames");
    assert.equal(rec.frames[5], "d");
    c.socket.destroy();
  });

  test("maxDelimiter / maxFrameSize are the limits setFraming takes (the JS side frames beyond them)", async () => {
    const { maxDelimiter, maxFrameSize } = addon();
    assert.equal(maxDelimiter, 64 * 1024);
    assert.equal(maxFrameSize, 2 ** 30);
    let accepted!: NativeConn;
    const { port } = listen((c) => {
      accepted = c;
      on(c, {});
    });
    const client = await Client.tcp(port);
    await until(() => accepted !== undefined, "accepted");
    accepted.setFraming(1, Buffer.alloc(maxDelimiter, 0x2d), 1024);
    assert.throws(() => accepted.setFraming(1, Buffer.alloc(maxDelimiter + 1, 0x2d), 1024), RangeError);
    accepted.setFraming(2, maxFrameSize, maxFrameSize);
    assert.throws(() => accepted.setFraming(2, maxFrameSize + 1, Infinity), RangeError);
    client.socket.destroy();
    accepted.close();
  });

  test("delimiters longer than the 8 bytes kept inline (MIME boundaries), straddling reads, switched to and from short ones", async () => {
    const long = "\r\n--boundary42--\r\n"; // 18 bytes: held in a heap copy, not inline
    const frames: string[] = [];
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      c.setFraming(1, Buffer.from(long), 1024);
      on(c, {
        read(data, f, count) {
          for (let i = 0; i < count; i++) {
            const frame = data.subarray(f![2 * i], f![2 * i + 1]).toString("latin1");
            frames.push(frame);
            // "short" switches to a 1-byte delimiter, "long" back, "longer" to a different long one.
            // (Each is the last frame of its read: frames after a switch in the same read are
            // the caller's to re-frame, as Stream does.)
            if (frame === "short") c.setFraming(1, Buffer.from(";"), 1024);
            else if (frame === "long") c.setFraming(1, Buffer.from(long), 1024);
            else if (frame === "longer") c.setFraming(1, Buffer.from("<<<<END-OF-RECORD>>>>"), 1024);
          }
        },
      });
      c.readStart();
    });
    const c = await Client.tcp(port);
    await c.trickle(`part one${long}part-two${long.slice(0, 7)}`);
    c.socket.write(`${long.slice(7)}short${long}`);
    await until(() => frames.length === 3, "3 frames");
    c.socket.write("a;b;lo");
    await sleep(20);
    c.socket.write("ng;");
    await until(() => frames.length === 6, "6 frames");
    c.socket.write(`after long${long.slice(0, 12)}`);
    await sleep(20);
    c.socket.write(`${long.slice(12)}longer${long}`);
    await until(() => frames.length === 8, "8 frames");
    c.socket.write("x<<<<END-OF-RE");
    await sleep(20);
    c.socket.write("CORD>>>>y<<<<END-OF-RECORD>>>>");
    await until(() => frames.length === 10, "10 frames");
    assert.deepEqual(frames, ["part one", "part-two", "short", "a", "b", "long", "after long", "longer", "x", "y"]);
    assert.ok(conn.fd >= 0);
    c.socket.destroy();
  });

  test("fixed-size framing across reads", async () => {
    const { rec, port } = frameRecorder(2, 4, 0);
    const c = await Client.tcp(port);
    c.socket.write("ab");
    await sleep(20);
    c.socket.write("cdefg");
    await sleep(20);
    c.socket.write("hij");
    await until(() => rec.frames.length === 2, "2 frames");
    await sleep(20);
    assert.deepEqual(rec.frames, ["abcd", "efgh"]);
    c.socket.write("kl");
    await until(() => rec.frames.length === 3, "3 frames");
    assert.equal(rec.frames[2], "ijkl");
    assert.equal(rec.calls.at(-1)!.data.toString(), "ijkl");
    c.socket.destroy();
  });

  test("a large frame spanning many reads arrives intact", async () => {
    const { rec, port } = frameRecorder(1, Buffer.from("\n"), 8 * 1024 * 1024);
    const body = randomBytes(3 * 1024 * 1024).toString("base64"); // no "\n"
    const c = await Client.tcp(port);
    c.socket.write(body + "\nnext\n");
    await until(() => rec.frames.length === 2, "2 frames");
    assert.equal(sha(Buffer.from(rec.frames[0]!, "latin1")), sha(Buffer.from(body)));
    assert.equal(rec.frames[1], "next");
    c.socket.destroy();
  });

  test("rest / resetFraming invariant: after a reset inside onRead, data.subarray(rest) is what was pending", async () => {
    let jsBuffer = Buffer.alloc(0); // what JS frames itself after the reset
    let sawRest = -1;
    let firstData = "";
    const { port } = listen((conn) => {
      conn.setFraming(1, Buffer.from("\n"), 1024);
      let resetDone = false;
      on(conn, {
        read(data, frames, count) {
          if (!resetDone) {
            assert.ok(frames !== null && count === 2);
            firstData = data.toString();
            sawRest = frames[2 * count]!;
            conn.resetFraming();
            resetDone = true;
            jsBuffer = Buffer.from(data.subarray(sawRest));
            return;
          }
          assert.equal(frames, null); // raw after the reset
          jsBuffer = Buffer.concat([jsBuffer, data]);
        },
      });
      conn.readStart();
    });
    const c = await Client.tcp(port);
    c.socket.write("one\ntwo\nthree-part");
    await until(() => sawRest >= 0, "first read");
    assert.equal(firstData, "one\ntwo\nthree-part");
    assert.equal(sawRest, 8);
    c.socket.write("ial\nfour\n");
    await until(() => jsBuffer.length >= 19, "raw bytes");
    assert.equal(jsBuffer.toString(), "three-partial\nfour\n");
    c.socket.destroy();
  });

  for (const action of ["setFraming", "readStop", "resetFraming", "close"] as const) {
    test(`${action} from another connection's onRead, while this one's read waits in the same batch: delivered as if it came after`, async () => {
      // Reads that arrive in the same poll phase reach JS in one batch; a
      // handler earlier in it may change a connection whose read is further
      // on (framed already, with the old settings): that read must come out
      // as if it had arrived after the change.
      for (let trial = 0; trial < 10; trial++) {
        const seen = new Map<NativeConn, Array<string | null>>();
        const conns: NativeConn[] = [];
        let target: NativeConn | null = null;
        const { server, port } = listen((conn) => {
          conns.push(conn);
          seen.set(conn, []);
          conn.setFraming(1, Buffer.from("\n"), 1024);
          on(conn, {
            read(data, frames, count) {
              const got = seen.get(conn)!;
              if (frames === null) got.push(`raw:${data.toString("latin1")}`);
              else for (let i = 0; i < count; i++) got.push(data.toString("latin1", frames[2 * i]!, frames[2 * i + 1]!));
              if (target !== null) return;
              target = conns.find((c) => c !== conn)!;
              if (action === "setFraming") target.setFraming(1, Buffer.from(";"), 1024);
              else if (action === "readStop") target.readStop();
              else if (action === "resetFraming") target.resetFraming();
              else target.close();
            },
          });
          conn.readStart();
        });
        const a = await Client.tcp(port);
        const b = await Client.tcp(port);
        await until(() => conns.length === 2, "two connections");
        await sleep(5);
        // Same tick: both reads land in one poll phase, so in one batch.
        a.socket.write("a;b\nc;d\n");
        b.socket.write("a;b\nc;d\n");
        await until(() => target !== null, "a first read");
        const other = target!;
        const first = conns.find((c) => c !== other)!;
        const expectFirst = ["a;b", "c;d"];
        if (action === "setFraming") {
          await until(() => seen.get(other)!.length >= 2, "the re-framed read");
          await sleep(20);
          assert.deepEqual(seen.get(other), ["a", "b\nc"], `trial ${trial}`);
        } else if (action === "readStop") {
          await sleep(30);
          assert.deepEqual(seen.get(other), [], `trial ${trial}: nothing while paused`);
          other.readStart();
          await until(() => seen.get(other)!.length >= 2, "the held read");
          assert.deepEqual(seen.get(other), expectFirst, `trial ${trial}`);
        } else if (action === "resetFraming") {
          await until(() => seen.get(other)!.length >= 1, "the raw read");
          await sleep(20);
          assert.deepEqual(seen.get(other), ["raw:a;b\nc;d\n"], `trial ${trial}`);
        } else {
          await until(() => (closedCount.get(other) ?? 0) === 1, "the close");
          await sleep(20);
          assert.deepEqual(seen.get(other), [], `trial ${trial}: a closed connection reads nothing`);
          assert.equal(closedCount.get(other), 1);
        }
        assert.deepEqual(seen.get(first), expectFirst, `trial ${trial}: the acting connection's own frames`);
        a.socket.destroy();
        b.socket.destroy();
        for (const c of conns) c.close();
        server.close();
      }
    });
  }

  test("resetFraming after the first of several frames hands over the later frames too", async () => {
    let handed = "";
    let done = false;
    const { port } = listen((conn) => {
      conn.setFraming(1, Buffer.from("\n"), 1024);
      on(conn, {
        read(data, frames, count) {
          if (frames === null) {
            handed += data.toString();
            return;
          }
          assert.equal(count, 3);
          // Consume frame 0 only, then take over from just after its delimiter.
          const end0 = frames[1]! + 1;
          conn.resetFraming();
          handed = data.subarray(end0).toString();
          done = true;
        },
      });
      conn.readStart();
    });
    const c = await Client.tcp(port);
    c.socket.write("a\nb\nc\ntail");
    await until(() => done, "read");
    c.socket.write("+more");
    await until(() => handed.endsWith("+more"), "more");
    assert.equal(handed, "b\nc\ntail+more");
    c.socket.destroy();
  });

  /**
   * Line frames into `got`; a frame named in `switches` runs its action (a
   * setFraming, a readStop) and ends that delivery's loop, as a handler that
   * re-frames does. With `end`, onEnd is recorded as "<end>" and closes.
   */
  function reframing(c: NativeConn, got: string[], switches: Record<string, () => void>, end = false): void {
    c.setFraming(1, Buffer.from("\n"), 1024);
    on(c, {
      read(data, frames, count) {
        assert.ok(frames !== null);
        for (let i = 0; i < count; i++) {
          const f = data.subarray(frames[2 * i]!, frames[2 * i + 1]!).toString();
          got.push(f);
          const action = switches[f];
          if (action !== undefined) {
            action();
            break;
          }
        }
      },
      ...(end
        ? {
            end() {
              got.push("<end>");
              c.close();
            },
          }
        : {}),
    });
    c.readStart();
  }

  /** A pipe server in a temp dir (removed after `body`), each connection set up by `onConn`. */
  async function withPipeServer(onConn: (c: NativeConn) => void, body: (path: string) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), "pants-native-"));
    const path = join(dir, "s.sock");
    try {
      const server = addon().listenPipe(path, 16);
      servers.push(server);
      serverHandlers.set(server, onConn);
      await body(path);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** A UNIX peer that writes `data` and closes at once: the bytes and the hang-up reach the server in one poll. */
  function writeAndVanish(path: string, data: string): void {
    const c = net.connect(path);
    openSockets.add(c);
    c.on("error", () => {});
    c.on("connect", () => {
      c.write(data);
      c.destroy(); // the bytes are in the kernel: data and hang-up together
    });
  }

  test("setFraming inside onRead re-frames the pending bytes at once; a pause holds them until readStart", async () => {
    const got: string[] = [];
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      reframing(c, got, {
        // Switch to 4-byte frames; the rest of this read must not wait for more data.
        HDR: () => c.setFraming(2, 4, 0),
        PAUSE: () => {
          c.setFraming(2, 2, 0);
          c.readStop();
        },
      });
    });
    const client = await Client.tcp(port);
    client.socket.write("HDR\nabcdefgh");
    await until(() => got.length === 3, "3 frames");
    assert.deepEqual(got, ["HDR", "abcd", "efgh"]);
    conn.setFraming(1, Buffer.from("\n"), 1024);
    client.socket.write("PAUSE\nxxyy");
    await until(() => got.length === 4, "PAUSE");
    await sleep(50);
    assert.deepEqual(got.slice(3), ["PAUSE"], "nothing delivered while paused");
    conn.readStart();
    await until(() => got.length === 6, "frames after readStart");
    assert.deepEqual(got.slice(4), ["xx", "yy"]);
    client.socket.destroy();
  });

  // Data and the FIN in one poll phase (a UNIX peer that writes and closes:
  // POLLIN|POLLHUP at once). Frames the addon holds in P for a deferred
  // delivery must still come before onEnd, not be dropped by the EOF.
  test("setFraming inside onRead just before the peer's FIN: the re-framed frames still arrive, before onEnd", async () => {
    const got: string[] = [];
    await withPipeServer(
      (c) => reframing(c, got, { HDR: () => c.setFraming(2, 4, 0) }, true),
      async (path) => {
        for (let round = 0; round < 5; round++) {
          got.length = 0;
          writeAndVanish(path, "HDR\nabcdefgh");
          await until(() => got.includes("<end>"), "onEnd", 5000);
          assert.deepEqual(got, ["HDR", "abcd", "efgh", "<end>"], `round ${round}`);
        }
      },
    );
  });

  test("frames held by a pause when the peer's FIN arrives come on readStart, then onEnd", async () => {
    const got: string[] = [];
    let conn: NativeConn | null = null;
    await withPipeServer(
      (c) => {
        conn = c;
        reframing(c, got, { PAUSE: () => (c.setFraming(2, 2, 0), c.readStop()) }, true);
      },
      async (path) => {
        writeAndVanish(path, "PAUSE\nxxyy");
        await until(() => got.length >= 1, "PAUSE", 5000);
        await sleep(50);
        assert.deepEqual(got, ["PAUSE"], "nothing while paused, not even onEnd");
        conn!.readStart();
        await until(() => got.includes("<end>"), "onEnd", 5000);
        assert.deepEqual(got, ["PAUSE", "xx", "yy", "<end>"]);
      },
    );
  });

  // A large read waits while the batch of small reads of the same poll
  // phase is delivered; a handler there moves away (as to a worker) a chunk
  // it kept of the spare read block. Had the large read landed in the spare,
  // its bytes would have gone with it (a detached block handed over, or a
  // copy out of freed memory): with a batch pending, reads land in the
  // addon's own buffer, and the other connection loses nothing.
  test("a spare block detached by a batched handler before a large read of the same poll phase is delivered: the read arrives whole", async () => {
    const SPARE = 256 * 1024;
    let kept: Buffer | null = null;
    let moved: ArrayBuffer | null = null;
    let bBytes = 0;
    const bErrors: string[] = [];
    const uncaughtBefore = uncaught.length;
    const conns = new Map<string, NativeConn>();
    const { port } = listen((conn) => {
      let name = "";
      on(conn, {
        read(data) {
          if (name === "") {
            name = String.fromCharCode(data[0]!);
            conns.set(name, conn);
          }
          if (name === "B") {
            bBytes += data.length;
            return;
          }
          if (kept === null && data.length > 16 * 1024 && data.buffer.byteLength === SPARE) kept = data;
          else if (kept !== null && moved === null && data.length < 1000) {
            const ab = kept.buffer as ArrayBuffer;
            moved = structuredClone(ab, { transfer: [ab] }); // "to a worker"
          }
        },
        error(code, syscall) {
          if (name === "B") bErrors.push(`${syscall} ${code}`);
          conn.close();
        },
      });
      conn.readStart();
    });
    const a = await Client.tcp(port);
    const b = await Client.tcp(port);
    b.socket.write("B");
    await until(() => conns.has("B"), "B");
    a.socket.write(Buffer.alloc(64 * 1024, 0x41)); // bulk: the addon makes a spare block
    await until(() => conns.has("A"), "A");
    await sleep(30);
    a.socket.write(Buffer.alloc(20 * 1024, 0x41)); // lands in the spare; handed over as a view of it
    await until(() => kept !== null, "a chunk viewing the spare");
    await sleep(30);
    a.socket.write(Buffer.alloc(100, 0x41)); // small: batched; its handler moves the spare away
    b.socket.write(Buffer.alloc(40 * 1024, 0x42)); // large, into the spare, in the same poll phase
    const until2 = Date.now() + 100;
    while (Date.now() < until2); // both arrive before the loop polls again
    await until(() => bErrors.length > 0 || bBytes === 1 + 40 * 1024, "B's read or its error", 3000).catch(() => {});
    assert.ok(moved !== null, "the spare was moved away");
    assert.deepEqual(uncaught.slice(uncaughtBefore), [], "no exception from handing over a detached block");
    assert.deepEqual(bErrors, [], "B's connection is not affected");
    assert.equal(bBytes, 1 + 40 * 1024, "B's read arrives whole");
    a.socket.destroy();
    b.socket.destroy();
  });

  test("overflow: count -1 with data at the oversized frame, then raw", async () => {
    const { rec, port } = frameRecorder(1, Buffer.from("\n"), 10);
    const c = await Client.tcp(port);
    c.socket.write("short\n" + "x".repeat(50));
    await until(() => rec.calls.some((k) => k.count === -1), "overflow");
    assert.deepEqual(rec.frames, ["short"]);
    const ov = rec.calls.find((k) => k.count === -1)!;
    assert.equal(ov.data.toString(), "x".repeat(50));
    assert.equal(ov.frames[0], 0);
    c.socket.write("after\n");
    await until(() => rec.raw.length > 0, "raw read");
    assert.equal(Buffer.concat(rec.raw).toString(), "after\n");
    c.socket.destroy();
  });

  test("overflow of a complete frame longer than the limit; never buffers past limit + one read", async () => {
    const { rec, port } = frameRecorder(1, Buffer.from("\n"), 10);
    const c = await Client.tcp(port);
    c.socket.write("0123456789ABCDEF\nok\n");
    await until(() => rec.calls.length === 1, "overflow");
    assert.equal(rec.calls[0]!.count, -1);
    assert.equal(rec.calls[0]!.data.toString(), "0123456789ABCDEF\nok\n");
    c.socket.destroy();

    // Trickled: the overflow is reported as soon as the frame passes the limit.
    const t2 = frameRecorder(1, Buffer.from("\r\n"), 4);
    const c2 = await Client.tcp(t2.port);
    await c2.trickle("abcde\r");
    await until(() => t2.rec.calls.length === 1, "overflow 2");
    assert.equal(t2.rec.calls[0]!.count, -1);
    // 5 bytes with a possible delimiter start: "abcde" + "\r" is 6 > 4 + 1.
    assert.equal(t2.rec.calls[0]!.data.toString(), "abcde\r");
    c2.socket.destroy();
  });

  test("partial writes: 64 MiB to a slow reader returns > 0, onWritten later, bytes in order", async () => {
    const big = randomBytes(64 * 1024 * 1024);
    let left = -1;
    let pendingAfter = -1;
    let written = 0;
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      on(c, { written: () => written++ });
    });
    const client = await Client.tcp(port);
    client.socket.pause();
    await until(() => conn !== undefined, "accept");
    left = conn.write(big);
    pendingAfter = conn.pendingBytes();
    assert.ok(left > 0, "the socket cannot take 64 MiB at once");
    // uv_write itself may already push a little more out: pendingBytes() is the live figure.
    assert.ok(pendingAfter > 0 && pendingAfter <= left, `${pendingAfter} <= ${left}`);
    // TCP_INFO (Linux): bytes are out in the kernel, so the peer's acknowledged count is known.
    if (process.platform === "linux") assert.ok(conn.deliveredBytes() >= 0, "delivered bytes known while bytes are out");
    await sleep(200);
    assert.equal(written, 0, "no onWritten while the reader is paused");
    client.socket.resume();
    const received = await client.waitFor(big.length, 120_000); // generous: valgrind runs are slow
    await until(() => written === 1, "onWritten");
    assert.equal(received.length, big.length);
    assert.equal(sha(received), sha(big));
    assert.equal(conn.pendingBytes(), 0);
    // Everything acknowledged: nothing is out.
    await until(() => conn.deliveredBytes() === -1, "every byte acknowledged");
    // A small write now goes out at once: 0 left, no onWritten.
    assert.equal(conn.write(Buffer.from("!")), 0);
    await client.waitFor(big.length + 1);
    await sleep(20);
    assert.equal(written, 1);
    client.socket.destroy();
  });

  test("lendReads: a bulk read is lent for its call only (it reads as empty after); what a write queues of it is copied", async () => {
    const big = randomBytes(16 * 1024 * 1024);
    const kept: Buffer[] = [];
    let queued = 0;
    let bytes = 0;
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      assert.throws(() => c.lendReads("yes" as unknown as boolean), TypeError);
      c.lendReads(true);
      on(c, {
        read(data) {
          if (c.write(data) > 0) queued++; // the paused reader below makes the echo queue
          kept.push(data);
          bytes += data.length;
        },
      });
      c.readStart();
    });
    const client = await Client.tcp(port);
    client.socket.pause();
    client.socket.write(big);
    await until(() => bytes > 0, "reads");
    await sleep(300);
    client.socket.resume();
    const received = await client.waitFor(big.length, 120_000);
    assert.equal(sha(received), sha(big), "the echo, queued from lent reads, is intact");
    assert.ok(queued > 0, "no write was queued");
    assert.ok(kept.some((k) => k.length === 0), "no read was lent (none reads as empty after its call)");

    // Off again: what a handler keeps stays as it was.
    const copies: Buffer[] = [];
    kept.length = 0;
    conn.lendReads(false);
    on(conn, {
      read(data) {
        kept.push(data);
        copies.push(Buffer.from(data));
      },
    });
    client.socket.write(big);
    await until(() => copies.reduce((n, c) => n + c.length, 0) >= big.length, "reads", 60_000);
    kept.forEach((k, i) => assert.ok(k.equals(copies[i]!), `read ${i} changed after its call`));
    client.socket.destroy();
  });

  test("writev and write keep their order, queued or not", async () => {
    let conn!: NativeConn;
    let writtenCalls = 0;
    const { port } = listen((c) => {
      conn = c;
      on(c, { written: () => writtenCalls++ });
    });
    const client = await Client.tcp(port);
    client.socket.pause();
    await until(() => conn !== undefined, "accept");
    const parts: Buffer[] = [];
    for (let i = 0; i < 40; i++) parts.push(Buffer.alloc(256 * 1024 + i, i)); // 10 MiB: more than the socket takes
    let queued = 0;
    queued += conn.writev(parts.slice(0, 20));
    queued += conn.write(parts[20]!);
    queued += conn.writev(parts.slice(21, 39));
    queued += conn.writev([]);
    queued += conn.write(parts[39]!);
    assert.ok(queued > 0);
    client.socket.resume();
    const all = Buffer.concat(parts);
    const got = await client.waitFor(all.length, 120_000);
    assert.equal(sha(got), sha(all));
    await until(() => writtenCalls === 1, "onWritten once");
    assert.throws(() => conn.writev(["nope" as unknown as Buffer]), {
      name: "TypeError",
      message: /element 0/,
    });
    assert.throws(() => conn.write("nope" as unknown as Buffer), {
      name: "TypeError",
      message: /write\(\) expects a Buffer/,
    });
    client.socket.destroy();
  });

  test("write(data, length) writes the first length bytes; a bad length is a RangeError", async () => {
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
    });
    const client = await Client.tcp(port);
    await until(() => conn !== undefined, "accept");
    const data = Buffer.from("abcdefgh");
    assert.equal(conn.write(data, 3), 0);
    assert.equal(conn.write(data, 0), 0);
    assert.equal(conn.write(data, undefined), 0);
    assert.equal(conn.write(data.subarray(6), 2), 0);
    for (const bad of [-1, 9, 1.5, Number.NaN, "3" as unknown as number]) {
      assert.throws(() => conn.write(data, bad), { name: "RangeError", code: "ERR_OUT_OF_RANGE" }, String(bad));
    }
    assert.equal((await client.waitFor(13, 5000)).toString(), "abcabcdefghgh");
    client.socket.destroy();
  });

  test("write(data, length) copies what it queues: the caller may reuse data at once", async () => {
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
    });
    const client = await Client.tcp(port);
    client.socket.pause();
    await until(() => conn !== undefined, "accept");
    // Fill the socket until writes queue, then queue a few small ones from one reused buffer.
    const filler = randomBytes(1024 * 1024);
    let sent = 0;
    while (conn.write(filler) === 0) sent += filler.length;
    sent += filler.length;
    const scratch = Buffer.alloc(64 * 1024);
    const expected: Buffer[] = [];
    for (let i = 0; i < 4; i++) {
      scratch.fill(0x61 + i, 0, 100);
      assert.equal(conn.write(scratch, 100), 100, "queued behind the filler");
      expected.push(Buffer.from(scratch.subarray(0, 100)));
    }
    scratch.fill(0); // reused at once: the queued writes kept copies
    client.socket.resume();
    const received = await client.waitFor(sent + 400, 30_000);
    assert.equal(received.subarray(sent).toString(), Buffer.concat(expected).toString());
    client.socket.destroy();
  });

  test("shutdown: the client sees FIN after every byte; writing afterwards throws", async () => {
    const payload = randomBytes(4 * 1024 * 1024);
    let shutdownDone = false;
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      on(c, { shutdown: () => (shutdownDone = true) });
      c.write(payload);
      c.shutdown();
      c.shutdown(); // idempotent
    });
    const client = await Client.tcp(port);
    await until(() => client.ended, "FIN", 120_000);
    assert.equal(sha(client.received), sha(payload));
    await until(() => shutdownDone, "onShutdown");
    assert.throws(() => conn.write(Buffer.from("late")), { code: "ERR_STREAM_WRITE_AFTER_END" });
    // Half-open: the server can still read.
    let got = "";
    on(conn, { read: (d) => (got += d.toString()), end: () => conn.close() });
    conn.readStart();
    client.socket.end("bye");
    await until(() => got === "bye" && client.closed, "half-open read");
  });

  test("peer reset -> onError ECONNRESET (read)", async () => {
    let error: [string, string] | null = null;
    const { port } = listen((c) => {
      on(c, {
        error: (code, syscall) => {
          error = [code, syscall];
          c.close();
        },
      });
      c.readStart();
    });
    const client = await Client.tcp(port);
    client.socket.write("x");
    await sleep(20);
    client.socket.resetAndDestroy();
    await until(() => error !== null, "onError");
    assert.deepEqual(error, ["ECONNRESET", "read"]);
  });

  test("writing to a reset peer reports onError(write), asynchronously", async () => {
    const errors: Array<[string, string]> = [];
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      on(c, { error: (code, syscall) => errors.push([code, syscall]) });
    });
    const client = await Client.tcp(port);
    await until(() => conn !== undefined, "accept");
    client.socket.resetAndDestroy();
    await sleep(50);
    // Not reading, so the reset is found by writing.
    for (let i = 0; i < 5 && errors.length === 0; i++) {
      conn.write(Buffer.alloc(1024));
      assert.equal(errors.length, 0, "never inside write()");
      await sleep(20);
    }
    await until(() => errors.length > 0, "write error");
    assert.equal(errors[0]![1], "write");
    assert.ok(["ECONNRESET", "EPIPE"].includes(errors[0]![0]), errors[0]![0]);
    assert.equal(errors.length, 1, "reported once");
    conn.close();
  });

  test("close() inside onRead: no more reads, exactly one onClose, nothing leaks", async () => {
    let reads = 0;
    let closes = 0;
    let conn!: NativeConn;
    const { port } = listen((c) => {
      conn = c;
      c.setFraming(1, Buffer.from("\n"), 100);
      on(c, {
        read(_data, _frames, count) {
          reads++;
          assert.equal(count, 3);
          c.close();
          c.close();
          c.resetFraming(); // no-ops after close
          c.readStart();
          assert.throws(() => c.write(Buffer.from("x")), { code: "ERR_STREAM_DESTROYED" });
        },
        close: () => closes++,
      });
      c.readStart();
    });
    const client = await Client.tcp(port);
    client.socket.write("1\n2\n3\n4");
    await until(() => closes === 1 && client.ended, "closed");
    assert.equal(reads, 1);
    assert.equal(closedCount.get(conn), 1);
  });

  // A small read is batched and reaches JS just before the next event of
  // the poll phase; when its handler closes the connection that event is
  // for, the event is not delivered: after close() only onClose.
  test("closed by a batched read's handler while its connect completes in the same poll phase: only onClose follows", async () => {
    const upstream = net.createServer(() => {});
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
    const upstreamPort = (upstream.address() as net.AddressInfo).port;
    let client: NativeConn | null = null;
    const events: string[] = [];
    const { port } = listen((conn) => {
      on(conn, {
        read() {
          if (client === null) return;
          client.close();
          events.push("close()");
        },
      });
      conn.readStart();
    });
    const c = await Client.tcp(port);
    await sleep(30);
    try {
      for (let round = 0; round < 5; round++) {
        events.length = 0;
        c.socket.write("x"); // read in the same poll phase as the connect completes
        let closed = false;
        const b: NativeConn = on(addon().connectTcp("127.0.0.1", upstreamPort), {
          connect: (code) => events.push(`connect ${code}`),
          written: () => events.push("written"),
          close: () => (closed = true),
        });
        client = b;
        await until(() => closed, "the client's onClose");
        client = null;
        assert.deepEqual(events, ["close()"], `round ${round}`);
      }
    } finally {
      c.socket.destroy();
      upstream.close();
    }
  });

  test("close() inside onClose/onEnd/onConnect is harmless", async () => {
    let closes = 0;
    const { port } = listen((c) => {
      on(c, {
        end: () => {
          c.close();
          c.close();
        },
        close: () => {
          closes++;
          c.close();
        },
      });
      c.readStart();
    });
    let clientCloses = 0;
    const client = on(addon().connectTcp("127.0.0.1", port), {
      connect: () => {
        client.shutdown();
        client.readStart();
      },
      end: () => client.close(),
      close: () => {
        clientCloses++;
        client.close();
      },
    });
    await until(() => closes === 1 && clientCloses === 1, "both closed");
  });

  test("connectTcp: refused -> onConnect ECONNREFUSED, asynchronously", async () => {
    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    let result: string | null | undefined;
    let closed = false;
    const conn = on(addon().connectTcp("127.0.0.1", port), {
      connect: (code) => {
        result = code;
        conn.close();
      },
      close: () => (closed = true),
    });
    assert.equal(result, undefined, "not inside connectTcp()");
    await until(() => closed, "closed");
    assert.equal(result, "ECONNREFUSED");
  });

  test("connectTcp to an unroutable address reports through onConnect, never by throwing", async () => {
    let result: string | null | undefined;
    let closed = false;
    // Port 0 cannot be connected to: the error comes from connect(2) at once.
    const conn = on(addon().connectTcp("127.0.0.1", 0), {
      connect: (code) => {
        result = code;
        conn.close();
      },
      close: () => (closed = true),
    });
    assert.equal(result, undefined);
    await until(() => closed, "closed");
    assert.equal(typeof result, "string");
    assert.throws(() => addon().connectTcp("not-an-ip", 80), { name: "TypeError" });
  });

  test("connectTcp success: addresses match the server's view, echo round trip", async () => {
    const server = net.createServer((s) => {
      s.on("data", (d) => s.write(d));
      s.on("end", () => s.end());
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    let serverSawPort: number | undefined;
    server.once("connection", (sock: net.Socket) => (serverSawPort = sock.remotePort));
    let connected: string | null | undefined;
    let got = "";
    let ended = false;
    let local = null as ReturnType<NativeConn["address"]>;
    const conn = on(addon().connectTcp("127.0.0.1", port), {
      connect: (code) => {
        connected = code;
        local = conn.address();
        conn.readStart();
        assert.equal(conn.write(Buffer.from("ping")), 0);
      },
      read: (d) => {
        got += d.toString();
        if (got === "ping") conn.shutdown();
      },
      end: () => {
        ended = true;
        conn.close();
      },
    });
    try {
      await until(() => ended, "end");
      assert.equal(connected, null);
      assert.equal(got, "ping");
      assert.ok(local !== null && "port" in local);
      assert.equal(local.port, serverSawPort);
    } finally {
      server.close();
    }
  });

  test("address / peerAddress / fd / options on both ends", async () => {
    let accepted!: NativeConn;
    const { port } = listen((c) => {
      accepted = c;
    });
    let connected = false;
    const client = on(addon().connectTcp("127.0.0.1", port), { connect: () => (connected = true) });
    await until(() => connected && accepted !== undefined, "connected");
    const ca = client.address();
    const cp = client.peerAddress();
    const sa = accepted.address();
    const sp = accepted.peerAddress();
    assert.deepEqual(cp, { address: "127.0.0.1", port, family: 4 });
    assert.deepEqual(sa, { address: "127.0.0.1", port, family: 4 });
    assert.deepEqual(sp, ca);
    assert.ok(client.fd > 2 && accepted.fd > 2 && client.fd !== accepted.fd);
    accepted.setNoDelay(false);
    accepted.setNoDelay(true);
    accepted.setKeepAlive(true, 30);
    accepted.setKeepAlive(true, 0);
    accepted.setKeepAlive(false);
    assert.throws(() => accepted.setKeepAlive("yes" as unknown as boolean), { name: "TypeError" });
    client.close();
    accepted.close();
    await until(() => closedCount.get(client) === 1 && closedCount.get(accepted) === 1, "closed");
  });

  test("EADDRINUSE carries .code and .syscall", () => {
    const { port } = listen(() => {});
    assert.throws(() => addon().listenTcp("127.0.0.1", port, 511, false), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, "EADDRINUSE");
      assert.ok(err.syscall === "listen" || err.syscall === "bind");
      assert.match(err.message, /EADDRINUSE/);
      return true;
    });
    assert.throws(() => addon().listenTcp("999.1.1.1", 0, 511, false), { code: "EINVAL" });
    const dir = mkdtempSync(join(tmpdir(), "pants-native-"));
    try {
      const path = join(dir, "dup.sock");
      const s = addon().listenPipe(path, 1);
      assert.throws(() => addon().listenPipe(path, 1), { code: "EADDRINUSE", syscall: "bind" });
      s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a callback that throws goes to onUncaught and nothing breaks", async () => {
    const before = uncaught.length;
    let closes = 0;
    const { port } = listen((c) => {
      on(c, {
        read: (d) => {
          c.write(d);
          throw new Error("boom in onRead");
        },
        close: () => closes++,
      });
      c.readStart();
    });
    const client = await Client.tcp(port);
    client.socket.write("still echoed");
    assert.equal((await client.waitFor(12)).toString(), "still echoed");
    await until(() => uncaught.length > before, "onUncaught");
    assert.match(String((uncaught[before] as Error).message), /boom in onRead/);
    client.socket.destroy();
  });

  test("objects cannot be constructed or misused from JS", () => {
    const { server } = listen(() => {});
    const Ctor = server.constructor as new () => unknown;
    assert.throws(() => new Ctor(), { name: "TypeError" });
    const fakeConn = Object.create(Object.getPrototypeOf(server)) as NativeServer;
    assert.throws(() => fakeConn.close(), { name: "TypeError" });
  });

  test("unref'd server and connections let the process exit (also tears down open handles)", () => {
    const addonPath = join(process.cwd(), "build", "Release", "pants_native.node");
    const script = `
      const n = require(${JSON.stringify(addonPath)});
      const noop = () => {};
      let accepted = null;
      n.init({ onConnection(s, c) { accepted = c; n.conn.unref(c); n.conn.readStart(c); }, onReadBatch: noop, onEnd: noop,
        onError: noop, onWritten: noop, onConnect(c) { n.conn.readStart(c); n.conn.unref(c); console.log("connected"); },
        onClose: noop, onUncaught(e) { console.error(e); process.exitCode = 1; } });
      const s = n.listenTcp("127.0.0.1", 0, 16, false);
      const port = s.address().port;
      s.unref();
      n.connectTcp("127.0.0.1", port);
      process.on("exit", () => console.log("exit", accepted !== null));
    `;
    const r = spawnSync(process.execPath, ["-e", script], { timeout: 10_000, encoding: "utf8" });
    assert.equal(r.signal, null, "the process exits by itself");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /connected/);
    assert.match(r.stdout, /exit true/);

    const refScript = script.replace("n.conn.readStart(c); n.conn.unref(c);", "n.conn.readStart(c);");
    assert.notEqual(refScript, script);
    const r2 = spawnSync(process.execPath, ["-e", refScript], { timeout: 1500, encoding: "utf8" });
    assert.equal(r2.signal, "SIGTERM", "a ref'd connection keeps the process alive");
  });

  test("raw ids: an id kept after onClose names nothing, and its slot is not taken again while few are free; a non-number id is a TypeError", () => {
    const addonPath = join(process.cwd(), "build", "Release", "pants_native.node");
    const script = `
      const n = require(${JSON.stringify(addonPath)});
      const noop = () => {};
      const out = {};
      let round = 0, first = [], server;
      const closed = new Set();
      const accepted = [];
      n.init({
        onConnection(s, id) { accepted.push(id); n.conn.readStart(id); },
        onReadBatch: noop, onEnd: noop, onError: noop, onWritten: noop,
        onConnect(id, code) { if (code !== null) { console.error("connect", code); process.exit(1); } next(id); },
        onClose(id) {
          closed.add(id);
          if (round === 1 && first.every((x) => closed.has(x))) { round = 2; n.connectTcp("127.0.0.1", port); }
        },
        onUncaught(e) { console.error(e); process.exit(1); },
      });
      server = n.listenTcp("127.0.0.1", 0, 16, false);
      const port = server.address().port;
      n.connectTcp("127.0.0.1", port);
      function next(client) {
        setTimeout(() => {
          const live = [client, accepted[accepted.length - 1]];
          if (round === 0) {
            first = live;
            round = 1;
            for (const id of live) n.conn.close(id);
            return;
          }
          // Round 2: fewer than 256 slots are free, so fresh slots are taken (see the next test).
          out.sameSlots = live.map((id) => id & 0x3fffff).sort().join() === first.map((id) => id & 0x3fffff).sort().join();
          out.newIds = live.every((id) => !first.includes(id));
          const stale = first[0];
          try { n.conn.write(stale, Buffer.from("x")); out.write = "no throw"; } catch (e) { out.write = e.code; }
          out.fd = n.conn.fd(stale);
          out.address = n.conn.address(stale);
          out.pending = n.conn.pendingBytes(stale);
          out.delivered = n.conn.deliveredBytes(stale);
          out.read = n.conn.bytesRead(stale);
          for (const id of first) { n.conn.close(id); n.conn.readStop(id); n.conn.setNoDelay(id, true); }
          out.liveFds = live.every((id) => n.conn.fd(id) >= 0);
          try { n.conn.write("1", Buffer.from("x")); out.badId = "no throw"; } catch (e) { out.badId = e.name; }
          try { n.conn.fd(-5); out.negative = n.conn.fd(-5); } catch (e) { out.negative = e.name; }
          out.huge = n.conn.fd(0x7fffffff);
          console.log(JSON.stringify(out));
          for (const id of live) n.conn.close(id);
          server.close();
        }, 20);
      }
    `;
    const r = spawnSync(process.execPath, ["-e", script], { timeout: 10_000, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      sameSlots: false,
      newIds: true,
      write: "ERR_STREAM_DESTROYED",
      fd: -1,
      address: null,
      pending: 0,
      delivered: -1,
      read: 0,
      liveFds: true,
      badId: "TypeError",
      negative: -1,
      huge: -1,
    });
  });

  test("raw ids: 600 connections one after another never repeat an id; every stale id names nothing while the last is open", () => {
    const addonPath = join(process.cwd(), "build", "Release", "pants_native.node");
    // One connection at a time, as a server with one client at a time sees
    // them: each takes the slot the one before freed, unless slots are reused
    // only well apart. With 9 generation bits, reuse of one slot would give
    // connection 513 the id of connection 1.
    const script = `
      const n = require(${JSON.stringify(addonPath)});
      const net = require("node:net");
      const noop = () => {};
      const ids = [];
      let port, server;
      n.init({
        onConnection(s, id) {
          ids.push(id);
          if (ids.length < 600) n.conn.close(id);
          else check(id);
        },
        onReadBatch: noop, onEnd: noop, onError: noop, onWritten: noop, onConnect: noop,
        onClose() { next(); },
        onUncaught(e) { console.error(e); process.exit(1); },
      });
      server = n.listenTcp("127.0.0.1", 0, 16, false);
      port = server.address().port;
      function next() { net.connect(port, "127.0.0.1").on("error", noop).on("close", noop).on("connect", function () { this.destroy(); }); }
      function check(live) {
        const stale = ids.slice(0, -1);
        const slots = new Set(stale.map((id) => id & 0x3fffff));
        console.log(JSON.stringify({
          count: ids.length,
          distinct: new Set(ids).size,
          liveSlotReused: slots.has(live & 0x3fffff),
          liveFd: n.conn.fd(live) >= 0,
          staleNamingLive: stale.filter((id) => n.conn.fd(id) >= 0 || n.conn.address(id) !== null).length,
        }));
        n.conn.close(live);
        server.close();
      }
      next();
    `;
    const r = spawnSync(process.execPath, ["-e", script], { timeout: 30_000, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { count: 600, distinct: 600, liveSlotReused: true, liveFd: true, staleNamingLive: 0 });
  });

  test("a worker that exits with open handles tears down cleanly", async () => {
    const addonPath = join(process.cwd(), "build", "Release", "pants_native.node");
    const code = `
      const { parentPort } = require("node:worker_threads");
      const n = require(${JSON.stringify(addonPath)});
      const noop = () => {};
      n.init({ onConnection(s, c) { n.conn.readStart(c); n.conn.write(c, Buffer.alloc(8 << 20)); }, onReadBatch: noop, onEnd: noop,
        onError: noop, onWritten: noop, onConnect(c) { parentPort.postMessage("connected"); },
        onClose: noop, onUncaught: noop });
      const s = n.listenTcp("127.0.0.1", 0, 16, false);
      n.connectTcp("127.0.0.1", s.address().port);
    `;
    for (let i = 0; i < 3; i++) {
      const w = new Worker(code, { eval: true });
      await new Promise<void>((resolve, reject) => {
        w.once("message", () => resolve());
        w.once("error", reject);
      });
      await sleep(20);
      const exitCode = await w.terminate();
      assert.equal(exitCode, 1);
    }
  });

  test("a burst of connects is accepted in batches (several per turn of the loop), every connection served, over TCP and a UNIX socket", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pants-native-"));
    const N = 200;
    try {
      for (const kind of ["tcp", "pipe"] as const) {
        // A counter bumped once per turn of the loop (the check phase):
        // connections accepted in the same turn see the same value.
        let turn = 0;
        let ticking = true;
        const tick = () => {
          turn++;
          if (ticking) setImmediate(tick);
        };
        setImmediate(tick);
        const perTurn = new Map<number, number>();
        const onConn = (conn: NativeConn) => {
          perTurn.set(turn, (perTurn.get(turn) ?? 0) + 1);
          on(conn, { read: (data) => conn.write(data), end: () => conn.close() });
          conn.readStart();
        };
        const path = join(dir, "burst.sock");
        let server: NativeServer;
        let connect: () => net.Socket;
        if (kind === "tcp") {
          const l = listen(onConn);
          server = l.server;
          connect = () => net.connect({ port: l.port, host: "127.0.0.1" });
        } else {
          server = addon().listenPipe(path, 511);
          servers.push(server);
          serverHandlers.set(server, onConn);
          connect = () => net.connect({ path });
        }
        try {
          const clients = Array.from({ length: N }, (_, i) => {
            const c = new Client(connect());
            c.socket.write(`hello ${i}\n`);
            return c;
          });
          await Promise.all(clients.map(async (c, i) => assert.equal((await c.waitFor(`hello ${i}\n`.length)).toString(), `hello ${i}\n`)));
          for (const c of clients) c.socket.end();
          await until(() => clients.every((c) => c.closed), "clients closed");
        } finally {
          ticking = false;
          server.close();
        }
        let accepted = 0;
        for (const n of perTurn.values()) accepted += n;
        assert.equal(accepted, N, kind);
        assert.ok(Math.max(...perTurn.values()) > 1, `${kind}: one connection per turn (${perTurn.size} turns for ${N})`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a server closed by onConnection in the middle of a burst accepts nothing more", async () => {
    let accepted = 0;
    const { server, port } = listen((conn) => {
      accepted++;
      server.close();
      conn.close();
    });
    const clients = Array.from({ length: 50 }, () => new Client(net.connect({ port, host: "127.0.0.1" })));
    await until(() => clients.every((c) => c.closed), "clients closed");
    await sleep(50);
    assert.equal(accepted, 1);
    assert.equal(server.fd, -1);
  });

  test("leak check: 2000 accept / echo / close cycles, one onClose each, bounded RSS", async () => {
    const N = 2000;
    const accepted: NativeConn[] = [];
    let serverCloses = 0;
    const { port } = listen((c) => {
      accepted.push(c);
      on(c, {
        read: (d) => c.write(d),
        end: () => c.close(),
        close: () => serverCloses++,
      });
      c.setFraming(1, Buffer.from("\n"), 1024);
      c.setFraming(0, null, 0);
      c.readStart();
    });
    const msg = Buffer.from("x".repeat(200) + "\n");
    async function cycle(): Promise<void> {
      await new Promise<void>((resolve, reject) => {
        const s = net.connect({ port, host: "127.0.0.1" });
        let got = 0;
        s.on("connect", () => s.write(msg));
        s.on("data", (d) => {
          got += d.length;
          if (got >= msg.length) s.end();
        });
        s.on("close", () => resolve());
        s.on("error", reject);
      });
    }
    // Warm up, then measure.
    for (let i = 0; i < 200; i++) await cycle();
    await until(() => serverCloses === 200, "warm-up closes");
    const rss0 = process.memoryUsage().rss;
    const parallel = 20;
    for (let i = 0; i < N; i += parallel) await Promise.all(Array.from({ length: parallel }, () => cycle()));
    await until(() => serverCloses === N + 200, "all closes");
    const rss1 = process.memoryUsage().rss;
    assert.equal(accepted.length, N + 200);
    for (const c of accepted) assert.equal(closedCount.get(c), 1);
    const growth = rss1 - rss0;
    assert.ok(growth < 64 * 1024 * 1024, `RSS grew by ${(growth / 1048576).toFixed(1)} MiB`);
  });
});

// An addon built against a Node whose libuv has uv_pipe_bind2 (1.46) may be
// loaded by an older Node 20 whose libuv does not (20.0: 1.44): the first
// UNIX listen there ended the process ("symbol lookup error: undefined
// symbol: uv_pipe_bind2"). Checked on the built file: those references are
// weak, and used only when the running libuv has them.
const nmMissing = spawnSync("nm", ["--version"]).error !== undefined && "nm (binutils) is not installed";
test("the addon's references to libuv 1.46's uv_pipe_bind2 and uv_pipe_connect2 are weak: it loads and listens under an older Node 20 too", { skip: skip || (process.platform !== "linux" && "ELF (Linux) only") || nmMissing }, () => {
  const addonPath = join(new URL("..", import.meta.url).pathname, "build", "Release", "pants_native.node");
  const nm = spawnSync("nm", ["-D", addonPath], { encoding: "utf8" });
  assert.equal(nm.status, 0, nm.stderr);
  const refs = nm.stdout.split("\n").filter((line) => /\buv_pipe_(bind2|connect2)$/.test(line)).map((line) => line.trim());
  // Built against older headers, the addon does not refer to them at all.
  for (const ref of refs) assert.match(ref, /^w /, `a strong reference: ${ref}`);
});
