/**
 * The stress campaign's load generator: a Node process of its own (started
 * by stress/lib/proc.ts with `ulimit -n` raised and an IPC channel), so the
 * server under test and the load each get a core and a descriptor table.
 *
 * Why Node and not a C epoll client: every reply must be checked byte for
 * byte against what that connection sent, which is a few lines here; 10 000
 * sockets are well within one Node process (about 2 KiB of JavaScript state
 * each); and `npm test` then needs no C compiler. A C client would only
 * matter for throughput benchmarks, which bench/ does.
 *
 *   node dist/stress/load.js --job JSON
 *
 * Jobs (protocol.ts LoadJob):
 *   concurrent  open `conns` connections (at most `connectConcurrency`
 *               connecting at once), keep them all open, then on every one
 *               run `rounds` line round trips (all connections at once);
 *               report "holding", wait for "release", close all, report "done".
 *   churn       open `rate` connections per second for `seconds`: each
 *               connects, makes one round trip, closes (FIN); report "done".
 */
import net from "node:net";
import { readFileSync } from "node:fs";
import type { LoadJob, LoadReport, LoadRequest } from "./lib/protocol.js";

const i = process.argv.indexOf("--job");
const job = JSON.parse(process.argv[i + 1] ?? "null") as LoadJob | null;
if (job === null) {
  process.stderr.write("usage: load.js --job JSON\n");
  process.exit(2);
}

/** This process's soft descriptor limit, from /proc/self/limits. */
function nofile(): number {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "latin1"));
    return m ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
}

const report: LoadReport = {
  phase: "holding",
  attempted: 0,
  connected: 0,
  connectFailed: 0,
  roundTrips: 0,
  mismatches: 0,
  broken: 0,
  samples: [],
  elapsedMs: 0,
  nofile: nofile(),
};
const started = Date.now();

function sample(text: string): void {
  if (report.samples.length < 5) report.samples.push(text);
}

function send(phase: LoadReport["phase"]): void {
  report.phase = phase;
  report.elapsedMs = Date.now() - started;
  if (process.send !== undefined && process.connected) process.send({ ...report, samples: [...report.samples] });
}

process.on("disconnect", () => process.exit(0));

// A small fast PRNG (xorshift32) for payloads: reproducible, no crypto cost.
let seed = 0x9e3779b9 ^ process.pid;
function rand(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 0x1_0000_0000;
}
const ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";

/** A fresh line: unique per connection and round, 20 to 120 bytes. */
function line(conn: number, round: number): Buffer {
  const n = 8 + Math.floor(rand() * 100);
  let body = "";
  for (let k = 0; k < n; k++) body += ALPHABET[Math.floor(rand() * 64)];
  return Buffer.from(`L${conn} ${round} ${body}\n`, "latin1");
}

/** One client connection doing sequential round trips, each reply compared byte for byte. */
class Conn {
  readonly sock: net.Socket;
  #expect: Buffer | null = null;
  #got: Buffer[] = [];
  #gotLength = 0;
  #onReply: (() => void) | null = null;
  ok = true;
  closed = false;
  onClose: (() => void) | null = null;

  constructor(
    readonly id: number,
    port: number,
    onConnect: (c: Conn) => void,
    onConnectFail: (c: Conn, err: Error) => void,
  ) {
    const sock = net.connect({ host: "127.0.0.1", port, noDelay: true });
    this.sock = sock;
    let connected = false;
    sock.once("connect", () => {
      connected = true;
      onConnect(this);
    });
    sock.on("data", (d: Buffer) => this.#onData(d));
    sock.on("error", (err) => {
      if (!connected) onConnectFail(this, err);
      else if (this.#expect !== null) this.#fail(`conn ${this.id}: ${err.message}`);
    });
    sock.on("close", () => {
      this.closed = true;
      if (this.#expect !== null) this.#fail(`conn ${this.id}: closed while waiting for a reply`);
      this.onClose?.();
    });
  }

  #fail(why: string): void {
    if (!this.ok) return;
    this.ok = false;
    report.broken++;
    sample(why);
    const cb = this.#onReply;
    this.#onReply = null;
    this.#expect = null;
    cb?.();
  }

  #onData(d: Buffer): void {
    const expect = this.#expect;
    if (expect === null) {
      report.mismatches++;
      sample(`conn ${this.id}: ${d.length} unexpected bytes`);
      this.ok = false;
      return;
    }
    this.#got.push(d);
    this.#gotLength += d.length;
    if (this.#gotLength < expect.length) return;
    const got = Buffer.concat(this.#got, this.#gotLength);
    this.#got = [];
    this.#gotLength = 0;
    this.#expect = null;
    if (got.equals(expect)) report.roundTrips++;
    else {
      report.mismatches++;
      this.ok = false;
      sample(`conn ${this.id}: sent ${JSON.stringify(expect.toString("latin1"))}, got ${JSON.stringify(got.toString("latin1").slice(0, 200))}`);
    }
    const cb = this.#onReply;
    this.#onReply = null;
    cb?.();
  }

  /** Sends one line; `done` runs when the reply is complete (or the connection failed). */
  roundTrip(round: number, done: () => void): void {
    if (!this.ok || this.closed) return done();
    const request = line(this.id, round);
    this.#expect = request;
    this.#onReply = done;
    this.sock.write(request);
  }
}

function finishAfter(timeoutMs: number): void {
  setTimeout(() => {
    sample(`the job did not finish within ${timeoutMs} ms`);
    send("done");
    process.exit(0);
  }, timeoutMs).unref();
}

function runConcurrent(j: Extract<LoadJob, { mode: "concurrent" }>): void {
  finishAfter(j.timeoutMs);
  const conns: Conn[] = [];
  let next = 0;
  let settled = 0;
  let connecting = 0;

  const startMore = (): void => {
    while (next < j.conns && connecting < j.connectConcurrency) {
      connecting++;
      report.attempted++;
      conns.push(
        new Conn(
          next++,
          j.port,
          () => {
            connecting--;
            report.connected++;
            settled++;
            afterSettle();
          },
          (c, err) => {
            connecting--;
            report.connectFailed++;
            sample(`conn ${c.id}: connect failed: ${err.message}`);
            settled++;
            afterSettle();
          },
        ),
      );
    }
  };
  const afterSettle = (): void => {
    if (settled < j.conns) startMore();
    else void roundTrips();
  };

  const roundTrips = async (): Promise<void> => {
    // Every connection is open now: run the rounds on all of them at once.
    const live = conns.filter((c) => !c.closed && c.ok);
    await Promise.all(
      live.map(
        (c) =>
          new Promise<void>((resolve) => {
            let round = 0;
            const step = (): void => {
              if (round >= j.rounds || !c.ok) return resolve();
              c.roundTrip(round++, step);
            };
            step();
          }),
      ),
    );
    send("holding");
    process.on("message", (m: LoadRequest) => {
      if (m.op !== "release") return;
      let open = conns.filter((c) => !c.closed).length;
      const done = (): void => {
        send("done");
        process.exit(0);
      };
      if (open === 0) return done();
      for (const c of conns) {
        if (c.closed) continue;
        c.onClose = () => {
          if (--open === 0) done();
        };
        c.sock.end();
      }
    });
  };

  startMore();
}

function runChurn(j: Extract<LoadJob, { mode: "churn" }>): void {
  finishAfter(j.timeoutMs);
  const total = Math.round(j.rate * j.seconds);
  let launched = 0;
  let inflight = 0;
  const t0 = Date.now();

  const launchOne = (): void => {
    const id = launched++;
    inflight++;
    report.attempted++;
    const conn = new Conn(
      id,
      j.port,
      (c) => {
        report.connected++;
        c.roundTrip(0, () => c.sock.end());
      },
      (c, err) => {
        report.connectFailed++;
        sample(`conn ${c.id}: connect failed: ${err.message}`);
      },
    );
    // A close before the reply is counted by Conn as broken; connect failures apart.
    conn.onClose = () => {
      inflight--;
      maybeDone();
    };
  };

  const maybeDone = (): void => {
    if (launched === total && inflight === 0) {
      clearInterval(timer);
      send("done");
      process.exit(0);
    }
  };

  // Every 10 ms, start as many connections as the schedule says are due.
  const timer = setInterval(() => {
    const due = Math.min(total, Math.floor(((Date.now() - t0) / 1000) * j.rate));
    while (launched < due && inflight < j.maxInflight) launchOne();
    maybeDone();
  }, 10);
}

if (job.mode === "concurrent") runConcurrent(job);
else runChurn(job);
