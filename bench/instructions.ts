/**
 * `npm run bench:instructions`: how many instructions each server runs per
 * unit of work (a message, a request, a connection, a KiB echoed), counted
 * by valgrind's callgrind over the measured window only.
 *
 * Throughput on a shared VM moves by ±15 % from run to run (see the README);
 * on a quiet machine an instruction count repeats within about 1 %, so a few
 * per cent between two servers can be told apart (bench/README.md says what
 * still moves it).
 * It counts user space only (Node, V8's generated code, libuv, OpenSSL, the
 * addon): the kernel's share, the same system calls on every side, is not in
 * it, so these ratios are wider than the throughput ratios of `npm run bench`.
 *
 * Each measurement starts the server under `valgrind --tool=callgrind`, loads
 * it with the C load generator for the warm-up, and counts from the start of
 * the measured window to its end (loadgen's -x hook runs callgrind_control).
 */
import { readFileSync, writeFileSync, chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { HOST, loadgen, withServer } from "./lib/measure.js";
import type { Context, ServerJob } from "./lib/measure.js";
import { parseOptions } from "./lib/options.js";
import { choosePlacement, which } from "./lib/proc.js";
import { fmt } from "./lib/report.js";
import { benchPaths, buildLoadgen, makeCertificate } from "./lib/setup.js";
import { LOADS, TLS_SIDES } from "./lib/scenarios.js";
import { SIDE_LABEL, probeSides } from "./lib/sides.js";
import type { Side } from "./lib/sides.js";

const log = (line: string) => process.stderr.write(`${line}\n`);

/** One job, counted per unit of work. */
interface Job {
  readonly name: string;
  readonly title: string;
  /** What one unit of work is. */
  readonly per: string;
  readonly job: ServerJob;
  readonly loadgen: readonly string[];
  /** The RESULT field that counts the units (bytes are counted per KiB). */
  readonly units: "count" | "bytes";
  readonly sides: readonly Side[];
  /** Warm-up seconds this job needs at least (its connections' TLS handshakes run tens of times slower under valgrind). */
  readonly minWarmup?: number;
}

const SIDES: readonly Side[] = ["raw", "js", "native"];
const load = (name: keyof typeof LOADS, tls = false) => [...(tls ? ["-t"] : []), ...LOADS[name].map(String)];
/** Below this many units in the window, a figure says more about the server's idle costs than about its work. */
const FEW_UNITS = 5_000;

const JOBS: readonly Job[] = [
  { name: "pingpong-1", title: "line echo, 1 connection, 64-byte lines", per: "message", job: "echo-line", loadgen: load("pingpong-1"), units: "count", sides: SIDES },
  { name: "pingpong-50", title: "line echo, 50 connections, 64-byte lines", per: "message", job: "echo-line", loadgen: load("pingpong-50"), units: "count", sides: SIDES },
  { name: "pipelined", title: "line echo, 50 connections, 16 lines sent at once", per: "message", job: "echo-line", loadgen: load("pipelined"), units: "count", sides: SIDES },
  { name: "churn", title: "connect, one line, its echo, close; 50 at once", per: "connection", job: "echo-line", loadgen: load("churn"), units: "count", sides: SIDES },
  { name: "http", title: "keep-alive HTTP responder, 50 connections", per: "request", job: "http", loadgen: load("http"), units: "count", sides: SIDES },
  { name: "bulk", title: "raw echo, 4 connections, 64 KiB writes", per: "KiB", job: "echo-raw", loadgen: load("bulk"), units: "bytes", sides: SIDES },
  { name: "tls-echo", title: "line echo over TLS, 50 connections", per: "message", job: "tls-echo-line", loadgen: load("tls-echo", true), units: "count", sides: TLS_SIDES, minWarmup: 20 },
  { name: "tls-handshake", title: "full TLS handshakes, 16 at once", per: "handshake", job: "tls-echo-line", loadgen: load("tls-handshake", true), units: "count", sides: TLS_SIDES },
];

const USAGE = `usage: npm run bench:instructions -- [options]

  --quick             pingpong-50 only (unless --only), 3 s warm-up, 1 s window: a smoke run
  --only A,B,...      jobs: ${JOBS.map((j) => j.name).join(", ")}
  --sides A,B,...     raw, js, native (default: every one available)
  -d, --duration S    counted seconds per server (default 10)
  -w, --warmup S      load before counting starts, so V8 has optimised the hot code
                      (default 10, 30 on Node 26+; tls-echo takes at least 20 for its 50 handshakes)
  -h, --help          this text

Needs valgrind (Debian: apt-get install valgrind), cc and, for the TLS jobs, openssl.`;

interface Counted {
  readonly instructions: number;
  readonly units: number;
}

/** The total of a callgrind dump (its "summary:" line). */
function dumpTotal(file: string): number {
  const match = /^summary:\s+(\d+)/m.exec(readFileSync(file, "latin1"));
  if (match === null) throw new Error(`no summary line in the callgrind dump ${file}`);
  return Number(match[1]);
}

/** Counts one job on one side: a fresh server under callgrind, counted over loadgen's measured window. */
async function count(job: Job, side: Side, ctx: Context, tmp: string): Promise<Counted> {
  const out = join(tmp, `callgrind.${job.name}.${side}.out`);
  // Its own vgdb prefix, in the scratch directory: where callgrind_control finds this server and no other.
  const vgdb = join(tmp, `vgdb.${job.name}.${side}`);
  const traced: Context = { ...ctx, serverPrefix: ["valgrind", "--tool=callgrind", `--callgrind-out-file=${out}`, `--vgdb-prefix=${vgdb}`] };
  return withServer(side, job.job, traced, async (server) => {
    // loadgen runs "HOOK start" and "HOOK end" around its measured window: zero the counters, then dump them.
    const hook = join(tmp, `hook.${server.pid}.sh`);
    // valgrind names its control FIFOs after $HOST, which the servers also read (their listening address, HOST).
    const control = (action: string) => `HOST=${HOST} exec callgrind_control --vgdb-prefix=${vgdb} ${action} ${server.pid} >/dev/null`;
    writeFileSync(hook, `#!/bin/sh\ncase "$1" in\n  start) ${control("--zero")} ;;\n  end) ${control("--dump")} ;;\nesac\nexit 1\n`);
    chmodSync(hook, 0o755);
    const warmup = ctx.options.quick ? ctx.options.warmup : Math.max(ctx.options.warmup, job.minWarmup ?? 0);
    const sample = await loadgen({ ...ctx, options: { ...ctx.options, warmup } }, server, [...job.loadgen, "-x", hook], job.units);
    const units = job.units === "bytes" ? sample.value / 1024 : sample.value;
    if (!(units > 0)) throw new Error("nothing completed in the counted window");
    return { instructions: dumpTotal(`${out}.1`), units };
  });
}

function fail(message: string): never {
  log(`bench:instructions: ${message}`);
  process.exit(2);
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        quick: { type: "boolean", default: false },
        only: { type: "string" },
        sides: { type: "string" },
        duration: { type: "string", short: "d" },
        warmup: { type: "string", short: "w" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
    }));
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const quick = values.quick;
  // Under valgrind V8 takes seconds to optimise the hot code: a shorter warm-up counts its compiler's work per message.
  // Even a smoke run needs a few seconds: under Node 26 a server answered nothing
  // from 0.5 to 1 s into its load (V8 still compiling), where Node 20 answered a few hundred messages.
  // Node 26's optimising compiler, its threads serialised by valgrind, needed
  // about 25 s of load: after 10 s pants-ts js still counted 33 662 per
  // message on pingpong-50, and 13 027 after 40 s (13 029 after 70).
  const settled = Number(process.versions.node.split(".")[0]) >= 26 ? "30" : "10";
  const options = { ...parseOptions(["-d", values.duration ?? (quick ? "1" : "10"), "-w", values.warmup ?? (quick ? "3" : settled)]), quick };
  const names = values.only?.split(",").map((s) => s.trim()).filter((s) => s !== "") ?? (quick ? ["pingpong-50"] : JOBS.map((j) => j.name));
  const unknown = names.filter((n) => !JOBS.some((j) => j.name === n));
  if (unknown.length > 0) fail(`unknown job ${unknown.join(", ")} (${JOBS.map((j) => j.name).join(", ")})`);
  const jobs = JOBS.filter((j) => names.includes(j.name));
  const wantedSides = values.sides?.split(",").map((s) => s.trim()) ?? SIDES;
  const badSide = wantedSides.find((s) => !(SIDES as readonly string[]).includes(s));
  if (badSide !== undefined) fail(`unknown side ${badSide} (${SIDES.join(", ")})`);
  for (const program of ["valgrind", "callgrind_control"]) {
    if (which(program) === null) fail(`${program} is not installed (Debian: apt-get install valgrind)`);
  }

  const distBench = dirname(fileURLToPath(import.meta.url));
  const root = resolve(distBench, "../..");
  const tmp = mkdtempSync(join(tmpdir(), "pants-ts-instructions-"));
  try {
    const built = buildLoadgen(root, log);
    const needsTls = jobs.some((j) => j.loadgen.includes("-t"));
    if (needsTls && !built.tls) fail("the TLS jobs need loadgen built with OpenSSL (Debian: apt-get install libssl-dev)");
    const tls = needsTls ? makeCertificate(tmp, "rsa") : null;
    const paths = benchPaths(distBench, tmp, built.binary);
    const sides = await probeSides({ root, pantsServer: paths.pantsServer, wanted: wantedSides as Side[], quick: false });
    const ctx: Context = { options, paths, loadgenTls: built.tls, placement: choosePlacement(true), wrk: null, redisBenchmark: null, tls, sides, live: new Set() };
    process.on("SIGINT", () => {
      for (const p of ctx.live) p.child.kill("SIGKILL");
      rmSync(tmp, { recursive: true, force: true });
      process.exit(130);
    });

    const columns = SIDES.filter((s) => wantedSides.includes(s) && sides.get(s)?.ok === true);
    for (const s of wantedSides as Side[]) {
      const status = sides.get(s);
      if (status !== undefined && !status.ok) log(`bench:instructions: ${SIDE_LABEL[s]} will not run: ${status.reason}`);
    }
    const results = new Map<string, Counted>();
    let failed = 0;
    for (const job of jobs) {
      for (const side of job.sides.filter((s) => columns.includes(s))) {
        try {
          const c = await count(job, side, ctx, tmp);
          results.set(`${job.name}/${side}`, c);
          log(`${job.name} ${SIDE_LABEL[side]}: ${fmt(c.instructions / c.units, 0)} instructions per ${job.per} (${fmt(c.units, 0)} counted)`);
        } catch (err) {
          failed++;
          log(`${job.name} ${SIDE_LABEL[side]}: FAILED ${(err as Error).message}`);
        }
      }
    }

    const others = columns.filter((s) => s !== "raw");
    const lines = [
      "# pants-ts: instructions per unit of work (callgrind)",
      "",
      `User-space instructions the server ran per unit, over ${options.duration} s of load after ${options.warmup} s of warm-up, on ${HOST}; kernel work is not counted. Lower is better; side/raw below 1: that side ran fewer instructions than the raw node server doing the same job.`,
      "",
      `| job | per | ${columns.map((s) => SIDE_LABEL[s]).join(" | ")} | ${others.map((s) => `${s}/raw`).join(" | ")} |`,
      `|---|---|${columns.map(() => "---:").join("|")}|${others.map(() => "---:").join("|")}|`,
    ];
    for (const job of jobs) {
      const per = (side: Side) => {
        const c = results.get(`${job.name}/${side}`);
        return c === undefined ? null : c.instructions / c.units;
      };
      const raw = per("raw");
      const cells = columns.map((s) => (job.sides.includes(s) ? (per(s) === null ? "failed" : fmt(per(s)!, 0)) : "n/a"));
      const ratios = others.map((s) => {
        const v = per(s);
        return v === null || raw === null ? (job.sides.includes(s) ? "-" : "n/a") : fmt(v / raw, 2);
      });
      lines.push(`| ${job.name} (${job.title}) | ${job.per} | ${cells.join(" | ")} | ${ratios.join(" | ")} |`);
    }
    const few = [...results].filter(([, c]) => c.units < FEW_UNITS).map(([key, c]) => `${key.replace("/", " ")} (${fmt(c.units, 0)})`);
    if (few.length > 0) {
      lines.push("", `Fewer than ${fmt(FEW_UNITS, 0)} units counted, so time-driven work weighs on the figure: ${few.join(", ")}. Run longer (-d) on a quieter machine.`);
    }
    process.stdout.write(`${lines.join("\n")}\n`);
    return failed > 0 ? 1 : 0;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

process.exitCode = await main();
