/**
 * The benchmark scenarios. Each measures one side (raw node, pants-ts on
 * either transport, uvloop, ...) once: a fresh server process, one load run
 * against it, one Sample. The redis and backpressure scenarios have their own
 * modules.
 */
import { LiveProcess, benchEnv, cpuSeconds, parseResultLine, rssKiB, runToEnd } from "./proc.js";
import {
  HOST,
  childrenCpuSeconds,
  failure,
  loadgen,
  num,
  observedRun,
  resultCpu,
  sampleOf,
  sleep,
  timed,
  withServer,
} from "./measure.js";
import type { Context, MutableSample, RunningServer, Sample, Scenario, ServerJob } from "./measure.js";
import { NET_SIDES } from "./sides.js";
import type { Side } from "./sides.js";
import { backpressure } from "./backpressure.js";
import { redis } from "./redis.js";
import { CASES } from "../framing/cases.js";

/** TLS servers always run on node:tls, so TLS scenarios have one pants-ts side. */
export const TLS_SIDES: readonly Side[] = ["raw", "js"];
const TLS_NOTE = "one pants-ts column: TLS servers always use node:tls, whatever the transport (no uvloop TLS server)";

/** Runs the Node TLS load generator (the fallback without an OpenSSL loadgen) against `server`. */
async function nodeTlsClient(ctx: Context, server: RunningServer, args: readonly string[], key: string): Promise<Sample> {
  const { duration, warmup } = ctx.options;
  const argv = [process.execPath, ctx.paths.tlsClient, "--port", String(server.port), "--server-pid", String(server.pid), "--duration", String(duration), "--warmup", String(warmup), ...args];
  const { done, noise } = await observedRun(ctx, argv, server.pid, (duration + warmup + 45) * 1000, resultCpu);
  if (done.code !== 0) throw failure(`tls-client ${args.join(" ")}`, done);
  return sampleOf(parseResultLine(done.stdout), key, noise);
}

// ------------------------------------------------------- socket scenarios

const LINE = 64;

/**
 * The C load generator's arguments of the socket scenarios, by scenario
 * (the TLS ones without their -t): `npm run bench:instructions` drives the
 * same loads.
 */
export const LOADS = {
  "pingpong-1": ["-m", "pingpong", "-c", 1, "-s", LINE],
  "pingpong-50": ["-m", "pingpong", "-c", 50, "-s", LINE],
  "pingpong-500": ["-m", "pingpong", "-c", 500, "-s", LINE],
  pipelined: ["-m", "pipeline", "-c", 50, "-k", 16, "-s", LINE],
  churn: ["-m", "churn", "-c", 50, "-s", LINE, "-S", 64],
  http: ["-m", "pingpong", "-H", "-c", 50],
  /** Bulk echo's load (plain and TLS): 4 connections, 64 KiB writes, at most 256 KiB in flight each. */
  bulk: ["-m", "bulk", "-c", 4, "-b", 65536, "-W", 262144],
  "tls-echo": ["-m", "pingpong", "-c", 50, "-s", LINE],
  "tls-handshake": ["-m", "handshake", "-c", 16],
} as const satisfies Record<string, readonly (string | number)[]>;

function loadgenScenario(name: string, title: string, unit: string, job: ServerJob, args: readonly (string | number)[], key: string): Scenario {
  const argv = args.map(String);
  return {
    name,
    title,
    unit,
    needs: ["loadgen"],
    sides: NET_SIDES,
    client: () => `loadgen ${argv.join(" ")}`,
    measure: (side, ctx) => withServer(side, job, ctx, (server) => loadgen(ctx, server, argv, key)),
  };
}

const pingpong = (conns: 1 | 50 | 500) =>
  loadgenScenario(
    `pingpong-${conns}`,
    `line echo ping-pong, ${conns} connection${conns === 1 ? "" : "s"}, ${LINE}-byte lines, one in flight each`,
    "msgs/s",
    "echo-line",
    LOADS[`pingpong-${conns}`],
    "rate",
  );

const pipelined = loadgenScenario(
  "pipelined",
  `line echo, 50 connections, 16 ${LINE}-byte lines sent at once, then the 16 replies awaited`,
  "msgs/s",
  "echo-line",
  LOADS.pipelined,
  "rate",
);

const BULK_LOAD = LOADS.bulk;

const bulk = loadgenScenario(
  "bulk",
  "raw echo throughput, 4 connections, 64 KiB writes, at most 256 KiB in flight per connection",
  "MB/s",
  "echo-raw",
  BULK_LOAD,
  "mbps",
);

/**
 * Bulk by a handler that uses each chunk only inside its call, as the raw
 * node and uvloop echoes already do: pants-ts says so (reuseReadBuffer),
 * and its native transport then lends reads instead of giving each one a
 * Buffer of its own.
 */
const bulkLent = loadgenScenario(
  "bulk-lent",
  "bulk, with pants-ts told the handler keeps no chunk (reuseReadBuffer = true; the raw node and uvloop servers are their echo-raw, which keep none either)",
  "MB/s",
  "echo-raw-lent",
  BULK_LOAD,
  "mbps",
);

const churn = loadgenScenario(
  "churn",
  "connection churn, 50 at once: connect, one line, its echo, close",
  "conns/s",
  "echo-line",
  LOADS.churn,
  "rate",
);

// ------------------------------------------------------------------- http

function wrkLatencyUs(out: string, percentile: string): number | undefined {
  const match = new RegExp(`^\\s+${percentile}%\\s+([\\d.]+)(us|ms|s)\\s*$`, "m").exec(out);
  if (!match) return undefined;
  return Number(match[1]) * ({ us: 1, ms: 1e3, s: 1e6 } as Record<string, number>)[match[2]!]!;
}

async function runWrk(ctx: Context, server: RunningServer, seconds: number): Promise<Sample> {
  const url = `http://${HOST}:${server.port}/`;
  // wrk reports no CPU time: bash's `times` prints its children's after it exits.
  const argv = timed("wrk", ["-t1", "-c50", `-d${seconds}s`, "--latency", url]);
  const cpu0 = cpuSeconds(server.pid);
  const { done, noise } = await observedRun(ctx, argv, server.pid, (seconds + 45) * 1000, childrenCpuSeconds);
  const cpu1 = cpuSeconds(server.pid);
  if (done.code !== 0) throw failure("wrk", done);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(done.stdout);
  if (!rps) throw new Error(`cannot read wrk's output: ${done.stdout.slice(-400)}`);
  let errors = 0;
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(done.stdout);
  if (socketErrors) errors += socketErrors.slice(1).reduce((sum, v) => sum + Number(v), 0);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(done.stdout);
  if (non2xx) errors += Number(non2xx[1]);
  const sample: MutableSample = { value: Number(rps[1]), errors, extra: {}, ...noise };
  const p50 = wrkLatencyUs(done.stdout, "50");
  const p99 = wrkLatencyUs(done.stdout, "99");
  if (p50 !== undefined) sample.p50Us = p50;
  if (p99 !== undefined) sample.p99Us = p99;
  if (cpu0 !== null && cpu1 !== null) sample.serverCpu = (100 * (cpu1 - cpu0)) / done.seconds;
  const clientSeconds = childrenCpuSeconds(done);
  if (clientSeconds !== null) sample.clientCpu = (100 * clientSeconds) / done.seconds;
  return sample;
}

const HTTP_TITLE = "keep-alive HTTP/1.1, 50 connections, fixed 200 response (requests framed by \\r\\n\\r\\n)";

/**
 * The C load generator's HTTP ping-pong: on this 2-CPU machine it leaves the
 * server as the limit, where wrk (parsing, Lua hooks, latency histograms)
 * saturates its own CPU first against the faster servers.
 */
const http = loadgenScenario("http", HTTP_TITLE, "req/s", "http", LOADS.http, "rate");

/** The same servers under wrk, for its latency percentiles: only with --only http-wrk. */
const httpWrk: Scenario = {
  name: "http-wrk",
  title: `${HTTP_TITLE}, driven by wrk`,
  unit: "req/s",
  needs: ["wrk"],
  sides: NET_SIDES,
  optIn: true,
  client: () => "wrk -t1 -c50 --latency",
  measure: (side, ctx) =>
    withServer(side, "http", ctx, async (server) => {
      const { duration, warmup } = ctx.options;
      // wrk counts whole seconds: a separate run warms up when a warm-up of a second or more is asked for.
      if (warmup >= 1) await runWrk(ctx, server, Math.round(warmup));
      return runWrk(ctx, server, Math.max(1, Math.round(duration)));
    }),
};

// -------------------------------------------------------------------- TLS

/** A TLS scenario: `loadgen -t` when it was built with OpenSSL, else the Node TLS client. */
function tlsScenario(name: string, title: string, unit: string, job: ServerJob, c: readonly (string | number)[], node: readonly (string | number)[], key: string): Scenario {
  const cArgs = c.map(String);
  const nodeArgs = node.map(String);
  return {
    name,
    title,
    unit,
    needs: ["tls"],
    sides: TLS_SIDES,
    sideLabels: { js: "pants-ts (node:tls)" },
    sidesNote: TLS_NOTE,
    client: (ctx) => (ctx.loadgenTls ? `loadgen -t ${cArgs.join(" ")}` : `node clients/tls-client.js ${nodeArgs.join(" ")} (the Node TLS client)`),
    measure: (side, ctx) =>
      withServer(side, job, ctx, (server) => (ctx.loadgenTls ? loadgen(ctx, server, ["-t", ...cArgs], key) : nodeTlsClient(ctx, server, nodeArgs, key))),
  };
}

const tlsEcho = tlsScenario(
  "tls-echo",
  `line echo ping-pong over TLS, 50 connections, ${LINE}-byte lines`,
  "msgs/s",
  "tls-echo-line",
  LOADS["tls-echo"],
  ["--mode", "pingpong", "--conns", 50, "--size", LINE],
  "rate",
);

const tlsBulk = tlsScenario(
  "tls-bulk",
  "raw echo throughput over TLS, 4 connections, 64 KiB writes, 256 KiB in flight",
  "MB/s",
  "tls-echo-raw",
  BULK_LOAD,
  ["--mode", "bulk", "--conns", 4, "--block", 65536, "--window", 262144],
  "mbps",
);

const tlsHandshake = tlsScenario(
  "tls-handshake",
  "full TLS handshakes (no resumption), 16 at once: connect, handshake, close",
  "handshakes/s",
  "tls-echo-line",
  LOADS["tls-handshake"],
  ["--mode", "handshake", "--conns", 16],
  "rate",
);

// ------------------------------------------------------------------ memory

const idleMemory: Scenario = {
  name: "idle-memory",
  title:
    "memory per idle connection: server RSS growth / connections held (one line echoed on each first), read twice: " +
    "right after the connects (V8's young generation is still sized for the burst of connection setup) and after the connections sat idle (V8 shrinks it again)",
  unit: "bytes/conn",
  lowerIsBetter: true,
  needs: ["loadgen"],
  sides: NET_SIDES,
  extras: [
    { key: "settled", label: "bytes/conn after idling", digits: 0 },
    { key: "connections", label: "conns held", digits: 0 },
    { key: "rssBaseMiB", label: "RSS base MiB", digits: 1 },
    { key: "rssHeldMiB", label: "RSS held MiB", digits: 1 },
    { key: "rssSettledMiB", label: "RSS idled MiB", digits: 1 },
    { key: "rssAfterMiB", label: "RSS after close MiB", digits: 1 },
    { key: "setupSecs", label: "setup s", digits: 2 },
  ],
  summaryRows: [
    { key: "held", label: "idle-memory, 1.5 s after connecting" },
    { key: "settled", label: "idle-memory, after idling (--idle-hold, default 25 s)" },
  ],
  client: (ctx) => `loadgen -m idle -c ${ctx.options.idleConns} -q 256 (RSS read ${ctx.options.settle} s and ${ctx.options.idleHold} s after the last connect)`,
  measure: (side, ctx) =>
    withServer(side, "echo-line", ctx, async (server) => {
      const settleMs = ctx.options.settle * 1000;
      const target = ["-h", HOST, "-p", String(server.port)];
      // Warm the code paths with a short ping-pong, then take the baseline.
      const warm = await runToEnd([ctx.paths.loadgen, "-m", "pingpong", ...target, "-c", "1", "-d", "0.2", "-w", "0"], { cpu: ctx.placement.clientCpu, timeoutMs: 30_000 });
      if (warm.code !== 0) throw failure("the warm-up ping-pong", warm);
      await sleep(settleMs);
      const rss0 = rssKiB(server.pid);
      const conns = ctx.options.idleConns;
      const hold = new LiveProcess([ctx.paths.loadgen, "-m", "idle", ...target, "-c", String(conns), "-q", "256", "-T", "300"], ctx.placement.clientCpu, benchEnv());
      ctx.live.add(hold);
      try {
        const ready = await hold.waitForLine("READY ", 120_000, "idle loadgen");
        const field = (name: string) => Number(new RegExp(`${name}=([\\d.]+)`).exec(ready)?.[1] ?? "0");
        const ok = field("ok");
        await sleep(settleMs);
        const rss1 = rssKiB(server.pid);
        await sleep(Math.max(0, ctx.options.idleHold * 1000 - settleMs));
        const rss1b = rssKiB(server.pid);
        hold.closeStdin(); // loadgen closes every connection and reports
        const code = await hold.waitExit(30_000);
        if (code !== 0) throw new Error(`idle loadgen exited with ${String(code)}: ${hold.stderr.trim().slice(-300)}`);
        const result = parseResultLine(hold.drainOutput());
        await sleep(settleMs);
        const rss2 = rssKiB(server.pid);
        if (rss0 === null || rss1 === null || rss1b === null || rss2 === null) throw new Error("cannot read the server's RSS");
        if (ok === 0) throw new Error(`no connection could be opened: ${ready}`);
        const stillOpen = typeof result["still_open"] === "number" ? result["still_open"] : ok;
        const held = ((rss1 - rss0) * 1024) / ok;
        return {
          value: held,
          errors: field("failed") + (ok - stillOpen),
          extra: {
            held,
            settled: ((rss1b - rss0) * 1024) / ok,
            connections: ok,
            rssBaseMiB: rss0 / 1024,
            rssHeldMiB: rss1 / 1024,
            rssSettledMiB: rss1b / 1024,
            rssAfterMiB: rss2 / 1024,
            setupSecs: field("setup_secs"),
          },
        };
      } finally {
        await hold.stop();
        ctx.live.delete(hold);
      }
    }),
};

// ---------------------------------------------------------------- framing

function framingScenario(caseName: string, what: string): Scenario {
  return {
    name: `framing-${caseName}`,
    title: `in-process framing, ${what}: readDelimiter vs a hand-written loop`,
    unit: "MB/s",
    needs: [],
    sides: ["raw", "js"],
    sideLabels: { js: "pants-ts" },
    sidesNote: "in-memory (a Duplex, no sockets): no transport is involved, so one pants-ts column; the native transport's framing in C is measured by the socket scenarios",
    extras: [{ key: "mfps", label: "M frames/s", digits: 2 }],
    sameOnBothSides: "check",
    client: (ctx) => `node framing/main.js --case ${caseName} --secs ${ctx.options.framingSecs} (65 521-byte chunks through pants-ts/testing's duplexPair, no sockets)`,
    measure: async (side, ctx) => {
      const secs = ctx.options.framingSecs;
      const argv = [process.execPath, ctx.paths.framing, "--case", caseName, "--side", side === "raw" ? "raw" : "pants", "--secs", String(secs), "--warmup", String(Math.min(0.5, secs / 2))];
      // On the server's CPU: framing is work a server does.
      const { done, noise } = await observedRun(ctx, argv, null, (secs + 60) * 1000, resultCpu, ctx.placement.serverCpu);
      if (done.code !== 0) throw failure(`framing ${caseName} ${side}`, done);
      const result = parseResultLine(done.stdout);
      return { value: num(result, "mbps"), errors: 0, extra: { mfps: num(result, "fps") / 1e6, check: num(result, "check") }, ...noise };
    },
  };
}

// ------------------------------------------------------------------- list

export const SCENARIOS: readonly Scenario[] = [
  pingpong(1),
  pingpong(50),
  pingpong(500),
  pipelined,
  bulk,
  bulkLent,
  churn,
  http,
  httpWrk,
  tlsEcho,
  tlsBulk,
  tlsHandshake,
  idleMemory,
  backpressure,
  redis,
  ...CASES.map((c) => framingScenario(c.name, c.title)),
];

/**
 * The scenarios `--only` selects: exact names, or group prefixes ("tls" →
 * tls-*; an opt-in scenario only by its exact name). Without --only, every
 * scenario but the opt-in ones (http-wrk), and --quick leaves out those
 * marked so (redis).
 */
export function selectScenarios(only: readonly string[] | null, quick = false): Scenario[] {
  if (only === null) return SCENARIOS.filter((s) => s.optIn !== true && (!quick || s.inQuick !== false));
  const matches = (s: Scenario, o: string) => s.name === o || (s.optIn !== true && s.name.startsWith(`${o}-`));
  const unknown = only.filter((o) => !SCENARIOS.some((s) => matches(s, o)));
  if (unknown.length > 0) {
    throw new RangeError(`unknown scenario ${unknown.map((u) => JSON.stringify(u)).join(", ")}; known: ${SCENARIOS.map((s) => s.name).join(", ")}`);
  }
  return SCENARIOS.filter((s) => only.some((o) => matches(s, o)));
}
