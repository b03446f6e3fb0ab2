/** Command-line options of `npm run bench` (bench/run.ts). */
import { parseArgs } from "node:util";
import { ALL_SIDES } from "./sides.js";
import type { Side } from "./sides.js";

export interface Options {
  readonly quick: boolean;
  readonly reps: number;
  /** Measured seconds per run. */
  readonly duration: number;
  /** Warm-up seconds per run (load, not measured). */
  readonly warmup: number;
  /** Scenario names or group prefixes to run; null: all. */
  readonly only: readonly string[] | null;
  readonly json: string | null;
  /** The sides (columns) to run, or null: every one available (--quick: without uvloop). */
  readonly sides: readonly Side[] | null;
  /** Key type of the throwaway TLS certificate. */
  readonly cert: "rsa" | "ec";
  /** Drive the TLS scenarios with the Node TLS client even when loadgen speaks TLS. */
  readonly nodeTlsClient: boolean;
  readonly pin: boolean;
  readonly list: boolean;
  readonly help: boolean;
  /** Connections held by the idle-memory scenario. */
  readonly idleConns: number;
  /** Seconds the idle-memory scenario keeps its connections idle before its second reading. */
  readonly idleHold: number;
  /** Seconds per framing micro-benchmark measurement. */
  readonly framingSecs: number;
  /** Seconds to let a server settle before reading its RSS. */
  readonly settle: number;
  /** redis-benchmark -n: requests per test. */
  readonly redisRequests: number;
  /** MiB the backpressure scenario's client writes. */
  readonly floodMiB: number;
  /** Seconds without progress after which the backpressure client decides the server stopped reading. */
  readonly floodStall: number;
}

export const USAGE = `usage: npm run bench -- [options]

  --quick             1 repetition, 0.5 s runs, 1 000 idle connections, a 64 MiB flood,
                      no uvloop column and no redis scenario unless asked for (a smoke run, < 1 min)
  -r, --reps N        repetitions per scenario and side (default 3); the median is reported
  -d, --duration S    measured seconds per run (default 5)
  -w, --warmup S      warm-up seconds before each measured window (default 1)
  --only A,B,...      scenarios to run: names, or group prefixes (pingpong, tls, framing, redis, backpressure, ...)
  --sides A,B,...     columns to run: ${ALL_SIDES.join(", ")} (default: every one available)
  --list              list the scenarios and exit
  --json FILE         also write every measurement and the summary as JSON
  --idle-conns N      connections in the idle-memory scenario (default 10 000)
  --idle-hold S       seconds idle before the idle-memory scenario's second reading (default 25)
  --redis-requests N  redis-benchmark -n, requests per test (default 300 000; --quick 50 000)
  --flood-mib N       MiB the backpressure client writes without reading (default 1024; --quick 64)
  --no-pin            do not pin the server and the load generator to CPUs
  --cert rsa|ec       the throwaway TLS certificate: RSA-2048 (default) or EC P-256
  --node-tls-client   drive the TLS scenarios with the Node client even when loadgen has OpenSSL
  -h, --help          this text`;

function positive(name: string, raw: string | undefined, fallback: number, integer: boolean): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new RangeError(`${name} wants a positive ${integer ? "integer" : "number"}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

export function parseOptions(argv: readonly string[]): Options {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: "boolean", default: false },
      reps: { type: "string", short: "r" },
      duration: { type: "string", short: "d" },
      warmup: { type: "string", short: "w" },
      only: { type: "string" },
      json: { type: "string" },
      sides: { type: "string" },
      "node-tls-client": { type: "boolean", default: false },
      cert: { type: "string", default: "rsa" },
      "no-pin": { type: "boolean", default: false },
      list: { type: "boolean", default: false },
      "idle-conns": { type: "string" },
      "idle-hold": { type: "string" },
      "redis-requests": { type: "string" },
      "flood-mib": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const quick = values.quick === true;
  const duration = positive("--duration", values.duration, quick ? 0.5 : 5, false);
  let warmup = quick ? 0.2 : 1;
  if (values.warmup !== undefined) {
    warmup = Number(values.warmup);
    if (!Number.isFinite(warmup) || warmup < 0) throw new RangeError(`--warmup wants seconds >= 0, got ${JSON.stringify(values.warmup)}`);
  }
  if (values.cert !== "rsa" && values.cert !== "ec") throw new RangeError(`--cert wants rsa or ec, got ${JSON.stringify(values.cert)}`);
  const list = (raw: string | undefined) =>
    raw === undefined
      ? null
      : raw
          .split(",")
          .map((s) => s.trim())
          .filter((s) => s !== "");
  const only = list(values.only);
  const sides = list(values.sides);
  const unknownSides = (sides ?? []).filter((s) => !(ALL_SIDES as readonly string[]).includes(s));
  if (unknownSides.length > 0) throw new RangeError(`unknown side ${unknownSides.map((s) => JSON.stringify(s)).join(", ")}; known: ${ALL_SIDES.join(", ")}`);
  return {
    quick,
    reps: positive("--reps", values.reps, quick ? 1 : 3, true),
    duration,
    warmup,
    only: only !== null && only.length > 0 ? only : null,
    json: values.json ?? null,
    sides: sides !== null && sides.length > 0 ? (sides as Side[]) : null,
    nodeTlsClient: values["node-tls-client"] === true,
    cert: values.cert,
    pin: values["no-pin"] !== true,
    list: values.list === true,
    help: values.help === true,
    idleConns: positive("--idle-conns", values["idle-conns"], quick ? 1000 : 10_000, true),
    idleHold: positive("--idle-hold", values["idle-hold"], quick ? 0.5 : 25, false),
    framingSecs: quick ? 0.2 : Math.min(2, duration),
    settle: quick ? 0.2 : 1.5,
    redisRequests: positive("--redis-requests", values["redis-requests"], quick ? 50_000 : 300_000, true),
    floodMiB: positive("--flood-mib", values["flood-mib"], quick ? 64 : 1024, true),
    floodStall: quick ? 0.5 : 1,
  };
}
