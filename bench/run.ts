/**
 * `npm run bench`: pants-ts side by side with hand-written raw node:net /
 * node:tls servers, in one invocation, one report.
 *
 * Every measurement starts a fresh server process (bench/servers/raw.ts or
 * bench/servers/pants.ts) pinned to CPU 1, drives it with a load generator
 * pinned to CPU 0 (the C loadgen, wrk, or the Node TLS client), and stops it.
 * The two sides alternate within each repetition; the median is reported.
 * See bench/README.md.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { USAGE, parseOptions } from "./lib/options.js";
import type { Options } from "./lib/options.js";
import { choosePlacement, which } from "./lib/proc.js";
import { CLIENT_SATURATED, NOISY, clientCheck, fmt, ratio, scenarioTable, summarize, summaryTable } from "./lib/report.js";
import type { Measurement } from "./lib/report.js";
import { SCENARIOS, SIDE_LABEL, selectScenarios } from "./lib/scenarios.js";
import type { Context, Paths, Requirement, Scenario, Side } from "./lib/scenarios.js";

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
    cc: which("cc") === null ? "not installed" : version("cc", ["--version"]),
  };
}

/**
 * Compiles bench/loadgen.c into bench/build/loadgen (with OpenSSL when its
 * headers are there) when the binary is missing, older than the source, or
 * was built without OpenSSL that is now available. Returns the binary and
 * whether it speaks TLS.
 */
function buildLoadgen(): { binary: string; tls: boolean } {
  const source = join(root, "bench", "loadgen.c");
  const buildDir = join(root, "bench", "build");
  const binary = join(buildDir, "loadgen");
  const features = () => spawnSync(binary, ["-v"], { encoding: "utf8" }).stdout ?? "";
  const opensslHeaders = existsSync("/usr/include/openssl/ssl.h");
  if (existsSync(binary) && statSync(binary).mtimeMs >= statSync(source).mtimeMs) {
    const tls = features().includes("tls=1");
    if (tls || !opensslHeaders) return { binary, tls };
  }
  if (which("cc") === null) throw new Error("no C compiler (cc) on PATH to build bench/loadgen.c");
  mkdirSync(buildDir, { recursive: true });
  const temporary = `${binary}.${process.pid}.tmp`;
  const flags = ["-O2", "-Wall", "-Wextra", "-o", temporary, source];
  let r = spawnSync("cc", [...flags.slice(0, 3), "-DWITH_OPENSSL", ...flags.slice(3), "-lssl", "-lcrypto"], { encoding: "utf8" });
  if (r.status !== 0) {
    log("bench: building loadgen without OpenSSL (TLS load will come from the Node client)");
    r = spawnSync("cc", flags, { encoding: "utf8" });
  }
  if (r.status !== 0) throw new Error(`cc failed to build bench/loadgen.c:\n${r.stderr}`);
  if (r.stderr.trim() !== "") log(r.stderr.trim());
  renameSync(temporary, binary);
  const tls = features().includes("tls=1");
  log(`bench: built ${binary}${tls ? " (with TLS)" : ""}`);
  return { binary, tls };
}

/**
 * A throwaway self-signed certificate for the TLS scenarios. RSA-2048 by
 * default: with OpenSSL 3 a full handshake costs the client about as much
 * CPU as an EC P-256 server, so an EC certificate leaves the load generator
 * the bottleneck of tls-handshake; RSA signing puts the weight on the server.
 */
function makeCertificate(dir: string, kind: "rsa" | "ec"): { cert: string; key: string } {
  if (which("openssl") === null) throw new Error("openssl is not installed (needed to make a throwaway certificate)");
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const keyArgs = kind === "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
  const r = spawnSync("openssl", ["req", "-x509", ...keyArgs, "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl could not make a certificate: ${r.stderr}`);
  return { cert, key };
}

function loadAverage(): string {
  try {
    return readFileSync("/proc/loadavg", "latin1").split(" ").slice(0, 3).join(" ");
  } catch {
    return "unknown";
  }
}

// -------------------------------------------------------------------- run

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
    for (const s of SCENARIOS) process.stdout.write(`${s.name.padEnd(20)} ${s.title} (${s.unit})\n`);
    return 0;
  }
  let scenarios: Scenario[];
  try {
    scenarios = selectScenarios(options.only);
  } catch (err) {
    fail((err as Error).message);
  }
  if (options.native) log("bench: --native is reserved and has no effect yet");

  const tmp = mkdtempSync(join(tmpdir(), "pants-ts-bench-"));
  const unavailable = new Map<Requirement, string>();
  const wrk = which("wrk");
  let loadgen = { binary: "", tls: false };
  if (scenarios.some((s) => s.needs.includes("loadgen") || s.needs.includes("tls") || (s.name === "http" && wrk === null))) {
    try {
      loadgen = buildLoadgen();
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
  const paths: Paths = {
    root,
    loadgen: loadgen.binary,
    rawServer: join(distBench, "servers", "raw.js"),
    pantsServer: join(distBench, "servers", "pants.js"),
    tlsClient: join(distBench, "clients", "tls-client.js"),
    framing: join(distBench, "framing", "main.js"),
  };
  const ctx: Context = { options, paths, loadgenTls: loadgen.tls && !options.nodeTlsClient, placement: choosePlacement(options.pin), wrk, tls, live: new Set() };

  const cleanup = () => rmSync(tmp, { recursive: true, force: true });
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
    "# pants-ts benchmark: raw node vs pants-ts",
    "",
    `- machine: ${info["nproc"]} CPUs, ${info["cpu"]}, Linux ${info["kernel"]}`,
    `- node ${info["node"]}, wrk: ${info["wrk"]}, cc: ${info["cc"]}`,
    `- placement: ${placement}`,
    ...(tls === null ? [] : [`- TLS: a throwaway ${options.cert === "rsa" ? "RSA-2048" : "EC P-256"} certificate; load from ${ctx.loadgenTls ? "loadgen -t (OpenSSL)" : "the Node TLS client"}`]),
    `- runs: ${options.reps} repetition(s) × ${options.duration} s after ${options.warmup} s warm-up${options.quick ? " (--quick)" : ""}; a fresh server process per run; sides alternate; medians`,
    `- started ${started.toISOString()}, load average ${loadAverage()}`,
  ].join("\n");
  process.stdout.write(`${header}\n\n`);

  const rows: Measurement[] = [];
  const total = scenarios.length * options.reps * 2;
  let n = 0;
  for (const scenario of scenarios) {
    const missing = scenario.needs.find((need) => unavailable.has(need));
    for (let rep = 0; rep < options.reps; rep++) {
      const order: Side[] = rep % 2 === 0 ? ["raw", "pants"] : ["pants", "raw"];
      for (const side of order) {
        n++;
        const tag = `[${n}/${total}] ${scenario.name} ${SIDE_LABEL[side]} rep ${rep + 1}/${options.reps}`;
        if (missing !== undefined) {
          rows.push({ scenario: scenario.name, side, rep, error: `skipped: ${unavailable.get(missing)!}` });
          log(`${tag}: skipped (${unavailable.get(missing)!.split("\n")[0]!})`);
          continue;
        }
        try {
          const sample = await scenario.measure(side, ctx);
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

  const sections: string[] = [];
  sections.push("## Scenarios");
  for (const s of scenarios) sections.push(scenarioTable(s, rows, s.client(ctx)));
  sections.push("## Load generator check");
  const check = clientCheck(scenarios, rows);
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
    `Finished ${new Date().toISOString()}, load average ${loadAverage()}. Ratio = pants-ts / raw node: above 1, pants-ts did better, except where lower is better (idle-memory: above 1, pants-ts used more memory).`,
  );
  sections.push(summaryTable(scenarios, rows));
  process.stdout.write(`${sections.join("\n\n")}\n`);

  const failed = rows.filter((r) => r.error !== undefined);
  if (options.json !== null) {
    const summary = scenarios.map((s) => ({
      scenario: s.name,
      unit: s.unit,
      lowerIsBetter: s.lowerIsBetter === true,
      raw: summarize(rows, s.name, "raw"),
      pants: summarize(rows, s.name, "pants"),
      ratio: ratio(s.name, rows),
    }));
    const document = { machine: info, placement: ctx.placement, options, started: started.toISOString(), finished: new Date().toISOString(), summary, results: rows };
    writeFileSync(options.json, `${JSON.stringify(document, null, 1)}\n`);
    log(`bench: wrote ${options.json}`);
  }
  cleanup();
  if (failed.length > 0) log(`bench: ${failed.length} of ${rows.length} measurements failed`);
  return failed.length > 0 ? 1 : 0;
}

process.exitCode = await main();
