/**
 * The canary: one well-behaved client doing round trips on its own
 * connection for the whole of a case, while the case hammers the same
 * server. Every reply is compared byte for byte with its request (the
 * servers echo frames as they arrived); one request is in flight at a
 * time, so anything lost, repeated, reordered or corrupted shows up as a
 * mismatch or an extra byte. Its lines carry sequence numbers the server
 * checks too (app.seqErrors).
 */
import type net from "node:net";
import { ByteReader, dial } from "./clients.js";
import type { DialSpec } from "./clients.js";
import type { Codec } from "./codecs.js";
import { sleep } from "./util.js";

/** Generous: a busy 2-core CI machine under a 10 000-connection load is slow, not broken. */
const REPLY_TIMEOUT_MS = 30_000;
/** Pause between round trips (keeps the canary from competing with the case for the CPU). */
const PACE_MS = 5;

export interface CanaryReport {
  roundTrips: number;
  failures: string[];
}

export class Canary {
  roundTrips = 0;
  readonly failures: string[] = [];
  #running = true;
  #loop: Promise<void> | null = null;
  #sock: net.Socket | null = null;

  constructor(
    readonly spec: DialSpec,
    readonly codec: Codec,
    /** Bytes the server sends first (the PROXY greeting), if any. */
    readonly greeting: Buffer | null,
    /** Stop after this many round trips (the warm-up); default: until stop(). */
    readonly limit = Infinity,
  ) {}

  start(): this {
    this.#loop = this.#run();
    return this;
  }

  async #run(): Promise<void> {
    let sock: net.Socket;
    try {
      sock = await dial(this.spec);
    } catch (err) {
      this.failures.push(`could not connect: ${(err as Error).message}`);
      return;
    }
    this.#sock = sock;
    const reader = new ByteReader(sock);
    try {
      if (this.greeting !== null) {
        const got = await reader.read(this.greeting.length, REPLY_TIMEOUT_MS);
        if (!got.equals(this.greeting)) {
          throw new Error(`greeting ${JSON.stringify(got.toString("latin1"))} instead of ${JSON.stringify(this.greeting.toString("latin1"))}`);
        }
      }
      for (let seq = 0; this.#running && seq < this.limit; seq++) {
        const request = this.codec.request(seq);
        sock.write(request);
        const got = await reader.read(request.length, REPLY_TIMEOUT_MS);
        if (!got.equals(request)) {
          throw new Error(`round trip ${seq}: sent ${request.toString("hex").slice(0, 80)}, got ${got.toString("hex").slice(0, 80)}`);
        }
        if (reader.pending > 0) throw new Error(`round trip ${seq}: ${reader.pending} bytes more than the reply`);
        this.roundTrips++;
        await sleep(PACE_MS);
      }
      sock.end();
      await reader.readToEnd(REPLY_TIMEOUT_MS);
    } catch (err) {
      this.failures.push((err as Error).message);
      sock.destroy();
    }
  }

  /** Resolves once the canary has finished (its limit reached, or failed). */
  async done(): Promise<CanaryReport> {
    await this.#loop;
    return { roundTrips: this.roundTrips, failures: this.failures };
  }

  /**
   * Asks for one more round trip (proof the server still answers after the
   * case), then closes the connection gracefully and reports.
   */
  async stop(): Promise<CanaryReport> {
    const target = this.roundTrips + 1;
    const deadline = Date.now() + REPLY_TIMEOUT_MS;
    while (this.roundTrips < target && this.failures.length === 0 && this.#loop !== null && Date.now() < deadline) {
      await Promise.race([sleep(10), this.#loop]);
      if (this.#sock === null && this.failures.length > 0) break;
    }
    if (this.roundTrips < target && this.failures.length === 0) this.failures.push("no round trip completed after the case");
    this.#running = false;
    await this.#loop;
    return { roundTrips: this.roundTrips, failures: this.failures };
  }
}
