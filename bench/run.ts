/**
 * `npm run bench`: pants-ts, on both of its transports, side by side with
 * hand-written raw node:net / node:tls servers and asyncio + uvloop servers
 * (plus redis-server for the Redis protocol), in one invocation, one report.
 *
 * Every measurement starts a fresh server process (bench/servers/*, the RESP
 * example, or redis-server) pinned to CPU 1, drives it with a load generator
 * pinned to CPU 0 (the C loadgen, wrk, redis-benchmark, or the Node TLS
 * client), and stops it. The order of the sides rotates from one repetition
 * to the next; the median is reported. See bench/README.md.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { USAGE, parseOptions } from "./lib/options.js";
import { benchPaths, buildLoadgen, makeCertificate } from "./lib/setup.js";
import type { Options } from "./lib/options.js";
import { choosePlacement, which } from "./lib/proc.js";
import { sideLabel, unusableSample } from "./lib/measure.js";
import type { Context, Requirement, Scenario } from "./lib/measure.js";
import { CLIENT_SATURATED, NOISY, clientCheck, errorNotes, fmt, missingSides, referenceTables, scenarioTable, summaryJson, summaryTable } from "./lib/report.js";
import type { Measurement, RunRecord } from "./lib/report.js";
import { SCENARIOS, selectScenarios } from "./lib/scenarios.js";
import { ALL_SIDES, SIDE_LABEL, SIDE_WHAT, probeSides, sideOrder } from "./lib/sides.js";
import type { Side, SideStatus } from "./lib/sides.js";

const log = (line: string) => process.stderr.write(`${line}\n`);
const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));

function fail(message: string, code = 2): never {
  log(`bench: ${message}`);
  process.exit(code);
}

// ------------------------------------------------------------------ setup

const distBench = dirname(fileURLToPath(import.meta.url));
const root = resolve(distBench, "../..");

function machine(): Record<string, string> {
  let cpu = "unknown";
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "latin1"))?.[1]?.trim() ?? cpu;
  } catch {
    // not Linux
  }
  const version = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    return r.error ? "not installed" : `${r.stdout}${r.stderr}`.split("\n")[0]!.trim();
  };
  return {
    nproc: String(availableParallelism()),
    cpu,
    kernel: release(),
    node: process.version,
    wrk: which("wrk") === null ? "not installed" : version("wrk", ["-v"]).replace(/\s*Copyright.*$/, ""),
    redisBenchmark: which("redis-benchmark") === null ? "not installed" : version("redis-benchmark", ["--version"]).replace(/ \(git:.*$/, ""),
    cc: which("cc") === null ? "not installed" : version("cc", ["--version"]),
  };
}

function loadAverage(): string {
  try {
    return readFileSync("/proc/loadavg", "latin1").split(" ").slice(0, 3).join(" ");
  } catch {
    return "unknown";
  }
}

// -------------------------------------------------------------------- run

/** Why a scenario's requirement is not met here, for those that are not. */
function requirements(scenarios: readonly Scenario[], options: Options, tmp: string, wrk: string | null, redisBenchmark: string | null) {
  const unavailable = new Map<Requirement, string>();
  let loadgen = { binary: "", tls: false };
  if (scenarios.some((s) => s.needs.includes("loadgen") || s.needs.includes("tls"))) {
    try {
      loadgen = buildLoadgen(root, log);
    } catch (err) {
      unavailable.set("loadgen", (err as Error).message);
    }
  }
  let tls: Context["tls"] = null;
  if (scenarios.some((s) => s.needs.includes("tls"))) {
    try {
      tls = makeCertificate(tmp, options.cert);
    } catch (err) {
      unavailable.set("tls", (err as Error).message);
    }
  }
  if (redisBenchmark === null) unavailable.set("redis-benchmark", "redis-benchmark is not installed (Debian: apt-get install redis-tools)");
  if (wrk === null) unavailable.set("wrk", "wrk is not installed (Debian: apt-get install wrk)");
  return { unavailable, loadgen, tls };
}

function describeSide(side: Side, status: SideStatus | undefined): string {
  if (status === undefined) return "";
  return status.ok ? `${SIDE_LABEL[side]}: ${SIDE_WHAT[side]}; ${status.version}` : `${SIDE_LABEL[side]}: NOT RUN: ${status.reason}`;
}

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`);
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (options.list) {
    for (const s of SCENARIOS) {
      const quick = s.optIn === true ? "; only with --only " + s.name : s.inQuick === false ? "; not in --quick unless named" : "";
      process.stdout.write(`${s.name.padEnd(20)} ${s.title} (${s.unit}; ${s.sides.join(", ")}${quick})\n`);
    }
    return 0;
  }
  let scenarios: Scenario[];
  try {
    scenarios = selectScenarios(options.only, options.quick);
  } catch (err) {
    fail((err as Error).message);
  }

  const tmp = mkdtempSync(join(tmpdir(), "pants-ts-bench-"));
  const cleanup = () => rmSync(tmp, { recursive: true, force: true });
  const wrk = which("wrk");
  const redisBenchmark = which("redis-benchmark");
  const { unavailable, loadgen, tls } = requirements(scenarios, options, tmp, wrk, redisBenchmark);
  const paths = benchPaths(distBench, tmp, loadgen.binary);
  const used = ALL_SIDES.filter((side) => scenarios.some((s) => s.sides.includes(side)));
  const wanted = options.sides === null ? used : used.filter((side) => options.sides!.includes(side));
  log(`bench: checking the sides (${used.join(", ")})`);
  const sides = await probeSides({ root, pantsServer: paths.pantsServer, wanted, quick: options.quick && options.sides === null });
  for (const side of used) {
    const status = sides.get(side)!;
    if (!status.ok) log(`bench: ${SIDE_LABEL[side]} will not run: ${status.reason}`);
  }
  const ctx: Context = {
    options,
    paths,
    loadgenTls: loadgen.tls && !options.nodeTlsClient,
    placement: choosePlacement(options.pin),
    wrk,
    redisBenchmark,
    tls,
    sides,
    live: new Set(),
  };
  const skipped = new Map<string, string>();
  for (const s of scenarios) {
    const missing = s.needs.find((need) => unavailable.has(need));
    if (missing !== undefined) skipped.set(s.name, unavailable.get(missing)!.split("\n")[0]!);
  }

  process.on("SIGINT", () => {
    log("bench: interrupted; stopping the children it started");
    for (const p of ctx.live) p.child.kill("SIGKILL");
    cleanup();
    process.exit(130);
  });

  const info = machine();
  const started = new Date();
  const placement =
    ctx.placement.serverCpu === null
      ? "not pinned (taskset missing, one CPU, or --no-pin)"
      : `server on CPU ${ctx.placement.serverCpu}, load generator on CPU ${ctx.placement.clientCpu} (taskset)`;
  const header = [
    "# pants-ts benchmark: raw node, pants-ts (js and native transports), uvloop",
    "",
    `- machine: ${info["nproc"]} CPUs, ${info["cpu"]}, Linux ${info["kernel"]}`,
    `- node ${info["node"]}, wrk: ${info["wrk"]}, redis-benchmark: ${info["redisBenchmark"]}, cc: ${info["cc"]}`,
    `- placement: ${placement}`,
    ...used.map((side) => `- ${describeSide(side, sides.get(side))}`),
    ...(tls === null ? [] : [`- TLS: a throwaway ${options.cert === "rsa" ? "RSA-2048" : "EC P-256"} certificate; load from ${ctx.loadgenTls ? "loadgen -t (OpenSSL)" : "the Node TLS client"}`]),
    `- runs: ${options.reps} repetition(s) × ${options.duration} s after ${options.warmup} s warm-up${options.quick ? " (--quick)" : ""}; a fresh server process per run; the order of the sides rotates; medians`,
    `- started ${started.toISOString()}, load average ${loadAverage()}`,
  ].join("\n");
  process.stdout.write(`${header}\n\n`);

  const runnable = (s: Scenario) => (skipped.has(s.name) ? [] : s.sides.filter((side) => sides.get(side)?.ok === true));
  const rows: Measurement[] = [];
  const total = scenarios.reduce((sum, s) => sum + runnable(s).length * options.reps, 0);
  let n = 0;
  for (const scenario of scenarios) {
    const reason = skipped.get(scenario.name);
    if (reason !== undefined) {
      log(`${scenario.name}: skipped (${reason})`);
      continue;
    }
    for (let rep = 0; rep < options.reps; rep++) {
      for (const side of sideOrder(runnable(scenario), rep)) {
        n++;
        const tag = `[${n}/${total}] ${scenario.name} ${sideLabel(scenario, side)} rep ${rep + 1}/${options.reps}`;
        try {
          const sample = await scenario.measure(side, ctx);
          const unusable = unusableSample(scenario, sample);
          if (unusable !== null) throw new Error(unusable);
          rows.push({ scenario: scenario.name, side, rep, sample });
          const cpu = (label: string, v: number | undefined) => (v === undefined ? "" : `  ${label} ${fmt(v, 0)}%`);
          log(
            `${tag}: ${fmt(sample.value)} ${scenario.unit}${cpu("server", sample.serverCpu)}${cpu("client", sample.clientCpu)}` +
              `${cpu("other", sample.foreignCpu)}${cpu("steal", sample.stealCpu)}  errors ${sample.errors}`,
          );
        } catch (err) {
          const message = (err as Error).message;
          rows.push({ scenario: scenario.name, side, rep, error: message });
          log(`${tag}: FAILED ${message}`);
        }
        await sleep(options.quick ? 20 : 300);
      }
    }
  }

  const record: RunRecord = { scenarios, rows, sides, skipped };
  const sections: string[] = [];
  sections.push("## Scenarios");
  for (const s of scenarios) sections.push(scenarioTable(s, record, s.client(ctx)));
  sections.push("## Load generator check");
  const check = clientCheck(record);
  sections.push(
    [
      `CPU of the server and of the load generator over the measured window (percent of one core, medians). A load generator at ${CLIENT_SATURATED}%+ of its core while the server is below it limited the run: that figure is a lower bound. "other" is CPU used by anything else on the machine meanwhile and "steal" what the hypervisor took: above ~${NOISY}% the run was disturbed and its figures are unreliable.`,
      "",
      check.table,
      "",
      check.saturated.length === 0 ? "No scenario was limited by its load generator." : `Limited by the load generator: ${check.saturated.join(", ")}.`,
      check.noisy.length === 0 ? "" : `Disturbed by other load on the machine: ${check.noisy.join(", ")}.`,
    ].join("\n"),
  );
  sections.push("## Summary");
  sections.push(
    `Finished ${new Date().toISOString()}, load average ${loadAverage()}. Medians. Ratios compare the medians: above 1, the first named did better, except where lower is better (idle-memory, backpressure: above 1, it used more memory). n/a: the scenario has no such side (TLS: pants-ts always runs on node:tls, shown as js; framing: in-memory, shown as js; no uvloop TLS or RESP server).`,
  );
  sections.push(summaryTable(record));
  const errorLines = errorNotes(record);
  if (errorLines.length > 0) sections.push(["Figures from runs with errors:", ...errorLines].join("\n"));
  const missing = missingSides(record);
  if (options.quick && options.only === null) {
    for (const s of SCENARIOS.filter((s) => s.inQuick === false)) missing.push(`- ${s.name}: not in --quick (--quick --only ${s.name} runs it, shrunk).`);
  }
  if (missing.length > 0) sections.push(missing.join("\n"));
  const references = referenceTables(record);
  if (references.length > 0) sections.push(["### Against redis-server", "", ...references].join("\n"));
  process.stdout.write(`${sections.join("\n\n")}\n`);

  const failed = rows.filter((r) => r.error !== undefined);
  if (options.json !== null) {
    const document = { machine: info, placement: ctx.placement, sides: Object.fromEntries(sides), options, started: started.toISOString(), finished: new Date().toISOString(), summary: summaryJson(record), results: rows };
    writeFileSync(options.json, `${JSON.stringify(document, null, 1)}\n`);
    log(`bench: wrote ${options.json}`);
  }
  cleanup();
  if (failed.length > 0) log(`bench: ${failed.length} of ${rows.length} measurements failed`);
  return failed.length > 0 ? 1 : 0;
}

process.exitCode = await main();
