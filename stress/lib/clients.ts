/**
 * Client sockets of the stress campaign: dialing a server the way a
 * well-behaved client does (plain, TLS, or behind a PROXY header), a byte
 * reader with deadlines, and a "peer" for misbehaving clients that records
 * how the server ended the connection.
 */
import net from "node:net";
import tls from "node:tls";
import type { Duplex } from "node:stream";

/** How a well-behaved client reaches a server. */
export interface DialSpec {
  port: number;
  /** Trust this certificate and speak TLS (servername localhost). */
  tlsCa?: Buffer;
  /** Send this PROXY header first. */
  proxyHeader?: Buffer;
  /** Connect from this address (any of 127.0.0.0/8 is this host's on Linux). */
  localAddress?: string;
}

/** The PROXY v1 header the canary sends, and the greeting the echo server answers it with. */
export const CANARY_PROXY_HEADER = Buffer.from("PROXY TCP4 203.0.113.7 127.0.0.1 4242 443\r\n", "latin1");
export const CANARY_PROXY_GREETING = Buffer.from("addr 203.0.113.7 4242\n", "latin1");

/** Connects (and completes the TLS handshake); rejects on error or after `timeoutMs`. */
export function dial(spec: DialSpec, timeoutMs = 30_000): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const sock: net.Socket =
      spec.tlsCa !== undefined
        ? tls.connect({ host: "127.0.0.1", port: spec.port, ca: spec.tlsCa, servername: "localhost" })
        : net.connect({ host: "127.0.0.1", port: spec.port, noDelay: true, ...(spec.localAddress !== undefined && { localAddress: spec.localAddress }) });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once(spec.tlsCa !== undefined ? "secureConnect" : "connect", () => {
      clearTimeout(timer);
      sock.off("error", onError);
      if (spec.proxyHeader !== undefined) sock.write(spec.proxyHeader);
      resolve(sock);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(err);
    };
    sock.once("error", onError);
  });
}

/** Collects a socket's bytes; `read(n)` waits (with a deadline) for exactly n of them. */
export class ByteReader {
  #chunks: Buffer[] = [];
  #length = 0;
  ended = false;
  closed = false;
  error: Error | null = null;
  #wake: (() => void) | null = null;

  constructor(sock: Duplex) {
    sock.on("data", (d: Buffer) => {
      this.#chunks.push(d);
      this.#length += d.length;
      this.#notify();
    });
    sock.on("end", () => {
      this.ended = true;
      this.#notify();
    });
    sock.on("close", () => {
      this.closed = true;
      this.#notify();
    });
    sock.on("error", (err: Error) => {
      this.error = err;
      this.#notify();
    });
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** Bytes received and not yet read. */
  get pending(): number {
    return this.#length;
  }

  /** Exactly `n` bytes; rejects if the connection ends first or after `timeoutMs`. */
  async read(n: number, timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#length < n) {
      if (this.ended || this.closed) {
        throw new Error(`the connection ended after ${this.#length} of ${n} bytes${this.error ? ` (${this.error.message})` : ""}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms (${this.#length} of ${n} bytes)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#length);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#length = rest.length;
    return out;
  }

  /** Everything until the peer closes (or `timeoutMs`). */
  async readToEnd(timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the peer did not close within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const out = Buffer.concat(this.#chunks, this.#length);
    this.#chunks = [];
    this.#length = 0;
    return out;
  }
}

/**
 * A misbehaving client's connection: whatever it does, it counts what it
 * received and records how the connection ended (FIN, reset, or still open).
 * `maxKeep` bytes of what it receives are kept for checks; the rest is only counted.
 */
export class Peer {
  /** The socket read and written (TLS over `raw` when `tlsCa` is given). */
  readonly sock: net.Socket;
  /** The TCP connection under it. */
  readonly raw: net.Socket;
  readonly opened: Promise<boolean>;
  received = 0;
  kept: Buffer[] = [];
  #keptLength = 0;
  ended = false;
  closed = false;
  /** When the socket closed (Date.now()), else 0. */
  closedAt = 0;
  error: Error | null = null;
  readonly whenClosed: Promise<void>;

  constructor(port: number, readonly maxKeep = 1 << 20, tlsCa?: Buffer) {
    const raw = net.connect({ host: "127.0.0.1", port, noDelay: true });
    const sock = tlsCa !== undefined ? tls.connect({ socket: raw, ca: tlsCa, servername: "localhost" }) : raw;
    this.raw = raw;
    this.sock = sock;
    this.opened = new Promise<boolean>((resolve) => {
      sock.once(tlsCa !== undefined ? "secureConnect" : "connect", () => resolve(true));
      sock.once("close", () => resolve(false));
    });
    sock.on("data", (d: Buffer) => {
      this.received += d.length;
      if (this.#keptLength < this.maxKeep) {
        this.kept.push(d);
        this.#keptLength += d.length;
      }
    });
    sock.on("end", () => {
      this.ended = true;
    });
    sock.on("error", (err) => {
      this.error = err;
    });
    this.whenClosed = new Promise<void>((resolve) =>
      sock.once("close", () => {
        this.closed = true;
        this.closedAt = Date.now();
        resolve();
      }),
    );
  }

  /** The first `maxKeep` bytes received. */
  get bytes(): Buffer {
    return Buffer.concat(this.kept, this.#keptLength);
  }

  /** True once this side destroyed or reset the connection itself. */
  selfClosed = false;

  /** Closes from this side at once (a FIN, or a reset if unread data is pending). */
  destroy(): void {
    if (!this.closed) this.selfClosed = true;
    this.sock.destroy();
  }

  /** Resets the connection from this side (RST). */
  reset(): void {
    if (!this.closed) this.selfClosed = true;
    if (this.raw.destroyed) return;
    this.raw.resetAndDestroy();
  }

  /** Writes unless the socket is gone (a misbehaving client ignores write errors). */
  write(data: Buffer | string): void {
    if (!this.sock.destroyed && this.sock.writable) this.sock.write(data);
  }

  /** Waits for the close, up to `timeoutMs`; true if it closed. */
  async waitClosed(timeoutMs: number): Promise<boolean> {
    if (this.closed) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([this.whenClosed, timeout]);
    clearTimeout(timer);
    return this.closed;
  }
}

/** Waits until every peer has closed (or `timeoutMs`); returns how many are still open. */
export async function waitAllClosed(peers: readonly Peer[], timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (const p of peers) {
    if (!p.closed) await p.waitClosed(Math.max(1, deadline - Date.now()));
  }
  return peers.filter((p) => !p.closed).length;
}

/**
 * A real ClientHello, as Node's TLS client sends it to 127.0.0.1 with SNI
 * "localhost": captured by a plain TCP listener that hangs up afterwards.
 */
export async function captureClientHello(): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const hello = new Promise<Buffer>((resolve) => {
      server.once("connection", (s) => {
        let got = Buffer.alloc(0);
        s.on("data", (d: Buffer) => {
          got = Buffer.concat([got, d]);
          // A TLS record: 5-byte header with the length in bytes 3..4.
          if (got.length >= 5 && got.length >= 5 + got.readUInt16BE(3)) {
            resolve(got.subarray(0, 5 + got.readUInt16BE(3)));
            s.destroy();
          }
        });
        s.on("error", () => {});
      });
    });
    const client = tls.connect({ host: "127.0.0.1", port, servername: "localhost", rejectUnauthorized: false });
    client.on("error", () => {});
    const out = await hello;
    client.destroy();
    return out;
  } finally {
    server.close();
  }
}
