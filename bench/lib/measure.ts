/**
 * What a scenario is, and the machinery every scenario measures with:
 * starting one side's server for one measurement, running a load generator
 * against it while watching the rest of the machine, and turning the load
 * generator's RESULT line into a Sample.
 */
import { LiveProcess, benchEnv, cpuSeconds, freePort, machineCpu, parseResultLine, runToEnd } from "./proc.js";
import type { Finished, Placement } from "./proc.js";
import type { Options } from "./options.js";
import { PYTHON, SIDE_LABEL } from "./sides.js";
import type { Side, SideStatus } from "./sides.js";

/** One measurement of one side. CPU figures are percent of one core. */
export interface Sample {
  readonly value: number;
  readonly p50Us?: number;
  readonly p99Us?: number;
  /** The server, over the measured window. */
  readonly serverCpu?: number;
  /** The load generator, over the measured window. */
  readonly clientCpu?: number;
  /** Everything else on the machine while the load ran (noise). */
  readonly foreignCpu?: number;
  /** CPU time the hypervisor took from this machine while the load ran (noise). */
  readonly stealCpu?: number;
  readonly errors: number;
  /** Scenario-specific figures (see Scenario.extras and Scenario.summaryRows). */
  readonly extra: Record<string, number>;
}

export type MutableSample = { -readonly [K in keyof Sample]: Sample[K] };

/** A secondary figure shown in a scenario's table. */
export interface ExtraColumn {
  readonly key: string;
  readonly label: string;
  readonly digits?: number;
}

export interface Paths {
  /** The repository root. */
  readonly root: string;
  /** A scratch directory for this run (removed at the end). */
  readonly tmp: string;
  /** The compiled C load generator ("" when it could not be built). */
  readonly loadgen: string;
  readonly rawServer: string;
  readonly pantsServer: string;
  readonly uvloopServer: string;
  /** The raw node:net RESP server of the redis scenario. */
  readonly respRawServer: string;
  /** examples/resp-server.ts, built: the pants-ts RESP server. */
  readonly respExample: string;
  readonly tlsClient: string;
  readonly framing: string;
}

export interface Context {
  readonly options: Options;
  readonly paths: Paths;
  /** The C load generator was built with OpenSSL (-t works); else TLS load comes from the Node client. */
  readonly loadgenTls: boolean;
  readonly placement: Placement;
  /** wrk, when installed. */
  readonly wrk: string | null;
  /** redis-benchmark, when installed. */
  readonly redisBenchmark: string | null;
  /** The throwaway certificate, made before the first scenario that needs it. */
  readonly tls: { readonly cert: string; readonly key: string } | null;
  /** Which sides can run here. */
  readonly sides: ReadonlyMap<Side, SideStatus>;
  /** Children to stop if the run is interrupted. */
  readonly live: Set<LiveProcess>;
  /** A command the servers run under (valgrind, for `bench:instructions`); absent: they run as they are. */
  readonly serverPrefix?: readonly string[];
}

/** What a scenario needs besides its sides' servers. */
export type Requirement = "loadgen" | "tls" | "redis-benchmark" | "wrk";

/** A figure that gets its own line in the summary (the redis scenario's commands). */
export interface SummaryRow {
  readonly key: string;
  readonly label: string;
}

export interface Scenario {
  readonly name: string;
  readonly title: string;
  /** Unit of the headline value. */
  readonly unit: string;
  readonly lowerIsBetter?: boolean;
  readonly needs: readonly Requirement[];
  /** The sides this scenario compares, in column order (those unavailable here are left out at run time). */
  readonly sides: readonly Side[];
  /** Labels of the sides where they differ from SIDE_LABEL (TLS: pants-ts runs on node:tls). */
  readonly sideLabels?: Partial<Record<Side, string>>;
  /** Why some of the usual sides are not there (shown under its table). */
  readonly sidesNote?: string;
  /** False: not part of a --quick run unless --only names it. */
  readonly inQuick?: boolean;
  /** True: runs only when --only names it exactly (a second opinion, not part of the table). */
  readonly optIn?: boolean;
  readonly extras?: readonly ExtraColumn[];
  /** Extra figures that replace the headline in the summary, one line each. */
  readonly summaryRows?: readonly SummaryRow[];
  /** An extra figure that must be equal for every side (a checksum of what was framed). */
  readonly sameOnBothSides?: string;
  /** The load generator command, for the report. */
  client(ctx: Context): string;
  measure(side: Side, ctx: Context): Promise<Sample>;
}

export function sideLabel(scenario: Scenario, side: Side): string {
  return scenario.sideLabels?.[side] ?? SIDE_LABEL[side];
}

export const HOST = "127.0.0.1";

/**
 * Why a measurement's sample cannot stand as a figure, or null: a throughput
 * (higher is better) that is not above zero means nothing was served (wrk
 * and redis-benchmark still exit 0 then), and a figure must be a number.
 */
export function unusableSample(scenario: Pick<Scenario, "lowerIsBetter" | "unit">, sample: Pick<Sample, "value" | "errors">): string | null {
  if (!Number.isFinite(sample.value)) return `no figure (${String(sample.value)} ${scenario.unit}; ${sample.errors} errors)`;
  if (scenario.lowerIsBetter !== true && sample.value <= 0) return `nothing completed (${sample.value} ${scenario.unit}; ${sample.errors} errors)`;
  return null;
}

/** What a benchmark server does: the SCENARIO of bench/servers/*, or the RESP protocol. */
export type ServerJob = "echo-line" | "echo-raw" | "echo-raw-lent" | "http" | "tls-echo-line" | "tls-echo-raw" | "resp";

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ----------------------------------------------------------------- servers

export interface RunningServer {
  readonly pid: number;
  readonly port: number;
}

/** How to start one side's server for one job, and how to read its port from the line it prints when listening. */
interface Launch {
  readonly argv: readonly string[];
  readonly env: NodeJS.ProcessEnv;
  readonly ready: string | RegExp;
  port(line: string): number;
}

/** The environment of a server: the driver's, without a transport choice of its own. */
function baseEnv(): NodeJS.ProcessEnv {
  return benchEnv({ PORT: "0", HOST });
}

function readyPort(line: string): number {
  return Number(line.split(" ")[1]);
}

async function launch(side: Side, job: ServerJob, ctx: Context): Promise<Launch> {
  const env = baseEnv();
  const node = process.execPath;
  const jobEnv: NodeJS.ProcessEnv = { ...env, SCENARIO: job };
  if (job.startsWith("tls-")) {
    if (ctx.tls === null) throw new Error("no TLS certificate");
    jobEnv["TLS_CERT"] = ctx.tls.cert;
    jobEnv["TLS_KEY"] = ctx.tls.key;
  }
  const unsupported = () => new Error(`${SIDE_LABEL[side]} has no server for ${job}`);
  switch (side) {
    case "raw":
      if (job === "resp") return { argv: [node, ctx.paths.respRawServer], env, ready: "READY ", port: readyPort };
      return { argv: [node, ctx.paths.rawServer], env: jobEnv, ready: "READY ", port: readyPort };
    case "js":
    case "native": {
      if (job === "resp") {
        // The example prints "resp-server listening on 127.0.0.1:PORT"; asked for explicitly, the native transport fails loudly if it cannot load.
        const port = (line: string) => Number(/:(\d+)$/.exec(line)?.[1]);
        return { argv: [node, ctx.paths.respExample], env: { ...env, PANTS_TS_TRANSPORT: side }, ready: /^resp-server listening on /, port };
      }
      const expected = job.startsWith("tls-") ? "js" : side; // TLS servers always run on node:tls
      const port = (line: string) => {
        if (!line.includes(` transport=${expected}`)) throw new Error(`the pants-ts server did not use the ${expected} transport: ${line}`);
        return readyPort(line);
      };
      return { argv: [node, ctx.paths.pantsServer], env: { ...jobEnv, PANTS_TS_TRANSPORT: side }, ready: "READY ", port };
    }
    case "uvloop":
      if (job === "resp" || job.startsWith("tls-")) throw unsupported();
      return { argv: [PYTHON, ctx.paths.uvloopServer], env: jobEnv, ready: "READY ", port: readyPort };
    case "redis": {
      if (job !== "resp") throw unsupported();
      // redis-server cannot pick a port of its own: take one the OS just handed out.
      const port = await freePort();
      const argv = ["redis-server", "--port", String(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", ctx.paths.tmp, "--daemonize", "no"];
      return { argv, env, ready: /Ready to accept connections/, port: () => port };
    }
  }
}

/** Starts a fresh server of `side` for one measurement, runs `body`, and always stops the server. */
export async function withServer<T>(side: Side, job: ServerJob, ctx: Context, body: (server: RunningServer) => Promise<T>): Promise<T> {
  const spec = await launch(side, job, ctx);
  const prefix = ctx.serverPrefix ?? [];
  const proc = new LiveProcess([...prefix, ...spec.argv], ctx.placement.serverCpu, spec.env);
  ctx.live.add(proc);
  try {
    // Under valgrind a server starts tens of times slower.
    const line = await proc.waitForLine(spec.ready, prefix.length === 0 ? 15_000 : 180_000, `${SIDE_LABEL[side]} server (${job})`);
    const port = spec.port(line);
    if (!Number.isInteger(port) || port <= 0) throw new Error(`cannot read the port from the server's line: ${line}`);
    return await body({ pid: proc.pid, port });
  } finally {
    await proc.stop();
    ctx.live.delete(proc);
  }
}

// ------------------------------------------------------------------ clients

export interface Noise {
  foreignCpu?: number;
  stealCpu?: number;
}

/**
 * Runs a load generator to its end, pinned to the client CPU, and measures
 * what else the machine did meanwhile: all task CPU time minus the server's
 * and the client's own (`clientCpuSeconds` reads it from the client's output).
 */
export async function observedRun(
  ctx: Context,
  argv: readonly string[],
  serverPid: number | null,
  timeoutMs: number,
  clientCpuSeconds: (done: Finished) => number | null,
  cpu: number | null = ctx.placement.clientCpu,
): Promise<{ done: Finished; noise: Noise }> {
  const machine0 = machineCpu();
  const server0 = serverPid === null ? 0 : cpuSeconds(serverPid);
  const done = await runToEnd(argv, { cpu, timeoutMs });
  const machine1 = machineCpu();
  const server1 = serverPid === null ? 0 : cpuSeconds(serverPid);
  const noise: Noise = {};
  if (machine0 !== null && machine1 !== null && done.seconds > 0) {
    noise.stealCpu = (100 * (machine1.steal - machine0.steal)) / done.seconds;
    const client = done.code === 0 ? clientCpuSeconds(done) : null;
    if (client !== null && server0 !== null && server1 !== null) {
      const others = machine1.tasks - machine0.tasks - (server1 - server0) - client;
      noise.foreignCpu = Math.max(0, (100 * others) / done.seconds);
    }
  }
  return { done, noise };
}

export function failure(what: string, done: Finished): Error {
  return new Error(`${what} failed (${done.code === null ? `killed by ${String(done.signal)}` : `exit ${done.code}`}): ${done.stderr.trim().slice(-400)}`);
}

/** The cli_total_s field of a RESULT line: the client's CPU seconds over its life. */
export function resultCpu(done: Finished): number | null {
  try {
    const v = parseResultLine(done.stdout)["cli_total_s"];
    return typeof v === "number" ? v : null;
  } catch {
    return null;
  }
}

/** bash's `times` (last line: the children's user and system time), from the end of stdout. */
export function childrenCpuSeconds(done: Finished): number | null {
  const lines = done.stdout.trim().split("\n");
  const match = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines[lines.length - 1]?.trim() ?? "");
  if (!match) return null;
  return Number(match[1]) * 60 + Number(match[2]) + Number(match[3]) * 60 + Number(match[4]);
}

/** argv that runs `program args...` under bash and prints its CPU time (bash's `times`) after it: for clients that report none. */
export function timed(program: string, args: readonly string[]): string[] {
  return ["bash", "-c", `"$0" "$@"; rc=$?; times; exit $rc`, program, ...args];
}

export function num(result: Record<string, number | string>, key: string): number {
  const v = result[key];
  if (typeof v !== "number") throw new Error(`the load generator reported no numeric ${key}`);
  return v;
}

/** A Sample from a RESULT line whose headline is `key`. */
export function sampleOf(result: Record<string, number | string>, key: string, noise: Noise): Sample {
  const errors = ["errors", "proto_errors", "connect_failures"].reduce((sum, k) => sum + (typeof result[k] === "number" ? (result[k] as number) : 0), 0);
  const sample: MutableSample = { value: num(result, key), errors, extra: {}, ...noise };
  if (typeof result["p50_us"] === "number") sample.p50Us = result["p50_us"];
  if (typeof result["p99_us"] === "number") sample.p99Us = result["p99_us"];
  // Reported as -1 when unknown.
  if (typeof result["srv_cpu"] === "number" && result["srv_cpu"] >= 0) sample.serverCpu = result["srv_cpu"];
  if (typeof result["cli_cpu"] === "number" && result["cli_cpu"] >= 0) sample.clientCpu = result["cli_cpu"];
  return sample;
}

/** Runs the C load generator in a timed mode against `server`. */
export async function loadgen(ctx: Context, server: RunningServer, args: readonly string[], key: string): Promise<Sample> {
  const { duration, warmup } = ctx.options;
  const argv = [ctx.paths.loadgen, "-h", HOST, "-p", String(server.port), "-d", String(duration), "-w", String(warmup), "-P", String(server.pid), ...args];
  const { done, noise } = await observedRun(ctx, argv, server.pid, (duration + warmup + 45) * 1000, resultCpu);
  if (done.code !== 0) throw failure(`loadgen ${args.join(" ")}`, done);
  return sampleOf(parseResultLine(done.stdout), key, noise);
}
