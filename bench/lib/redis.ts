/**
 * The redis scenario: redis-benchmark (pipelined, 50 connections) against
 * the pants-ts RESP example (examples/resp-server.ts) on both transports,
 * the same server hand-written on raw node:net (bench/servers/resp-raw.ts),
 * and a real redis-server started for the measurement on loopback.
 */
import { cpuSeconds, runToEnd } from "./proc.js";
import { HOST, childrenCpuSeconds, failure, observedRun, timed, withServer } from "./measure.js";
import type { Context, MutableSample, Scenario } from "./measure.js";

/** The tests `-t ping,set,get` runs, as redis-benchmark names them. */
const TESTS = ["PING_INLINE", "PING_MBULK", "SET", "GET"] as const;

const PIPELINE = 16;
const CONNS = 50;

function benchmarkArgs(port: number, requests: number): string[] {
  return ["-h", HOST, "-p", String(port), "-t", "ping,set,get", "-P", String(PIPELINE), "-q", "-n", String(requests), "-c", String(CONNS)];
}

/**
 * The requests/s of each test from redis-benchmark -q's output (progress
 * lines end in "\r", results in "\n"), and the errors it printed.
 */
export function parseRedisBenchmark(out: string): { rates: Map<string, number>; errors: number } {
  const rates = new Map<string, number>();
  let errors = 0;
  for (const line of out.split(/[\r\n]+/)) {
    const match = /^\s*([A-Z_]+): ([\d.]+) requests per second/.exec(line);
    if (match) rates.set(match[1]!, Number(match[2]));
    else if (/error/i.test(line)) errors++;
  }
  return { rates, errors };
}

export const redis: Scenario = {
  name: "redis",
  title: `Redis protocol: redis-benchmark -t ping,set,get, ${CONNS} connections, ${PIPELINE} commands pipelined`,
  unit: "req/s",
  needs: ["redis-benchmark"],
  sides: ["raw", "js", "native", "redis"],
  sideLabels: {
    raw: "raw node (servers/resp-raw.ts)",
    js: "pants-ts js (examples/resp-server)",
    native: "pants-ts native (examples/resp-server)",
    redis: "redis-server",
  },
  sidesNote: "the headline is the harmonic mean of the four tests (all requests / total time); no uvloop RESP server; redis-server is the reference",
  inQuick: false,
  extras: TESTS.map((t) => ({ key: t, label: `${t} req/s`, digits: 0 })),
  summaryRows: TESTS.map((t) => ({ key: t, label: `redis ${t}` })),
  client: (ctx) => `redis-benchmark -t ping,set,get -P ${PIPELINE} -q -n ${ctx.options.redisRequests} -c ${CONNS}`,
  measure: (side, ctx: Context) =>
    withServer(side, "resp", ctx, async (server) => {
      const bin = ctx.redisBenchmark;
      if (bin === null) throw new Error("redis-benchmark is not installed");
      const requests = ctx.options.redisRequests;
      if (ctx.options.warmup > 0) {
        // A tenth of the load first, so that the measured run finds the server's code warm.
        const warm = await runToEnd([bin, ...benchmarkArgs(server.port, Math.max(1000, Math.round(requests / 10)))], { cpu: ctx.placement.clientCpu, timeoutMs: 300_000 });
        if (warm.code !== 0) throw failure("the warm-up redis-benchmark", warm);
      }
      const cpu0 = cpuSeconds(server.pid);
      const { done, noise } = await observedRun(ctx, timed(bin, benchmarkArgs(server.port, requests)), server.pid, 600_000, childrenCpuSeconds);
      const cpu1 = cpuSeconds(server.pid);
      if (done.code !== 0) throw failure("redis-benchmark", done);
      const { rates, errors } = parseRedisBenchmark(done.stdout);
      const missing = TESTS.filter((t) => !rates.has(t));
      if (missing.length > 0) throw new Error(`redis-benchmark reported no ${missing.join(", ")}: ${done.stdout.replace(/\r/g, "\n").trim().slice(-400)}`);
      const extra: Record<string, number> = {};
      for (const t of TESTS) extra[t] = rates.get(t)!;
      // All requests over the time they took: the harmonic mean of the tests' rates.
      const value = TESTS.length / TESTS.reduce((sum, t) => sum + 1 / rates.get(t)!, 0);
      const sample: MutableSample = { value, errors, extra, ...noise };
      if (cpu0 !== null && cpu1 !== null) sample.serverCpu = (100 * (cpu1 - cpu0)) / done.seconds;
      const clientSeconds = childrenCpuSeconds(done);
      if (clientSeconds !== null) sample.clientCpu = (100 * clientSeconds) / done.seconds;
      return sample;
    }),
};
