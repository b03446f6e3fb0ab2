/**
 * The reliability and security campaign: `npm run stress`.
 *
 *   node dist/stress/run.js [--quick] [--only NAME,...] [--json FILE] [--list]
 *
 * Runs every case (stress/cases/*) against pants-ts servers in child
 * processes, on loopback only, and prints a table
 * `case | what was tried | result | held?`. Exit code 0 only if every case
 * held (skipped cases, e.g. TLS without openssl, do not fail the run).
 *
 * --quick   the fast subset (what `npm test` runs), with smaller numbers
 * --only    cases by name, or a group (load, faults, hostile)
 * --json    also write every result, with its checks and health reports, to FILE
 * --list    print the case names and exit
 *
 * Child processes and the temp dir of the TLS certificate are removed on
 * every exit path (including Ctrl-C).
 */
import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { runCase } from "./lib/case.js";
import type { CampaignEnv, CaseResult, CaseSpec } from "./lib/case.js";
import { hasOpenssl, makeCert } from "./lib/certs.js";
import type { StressCert } from "./lib/certs.js";
import { killAll } from "./lib/proc.js";
import { loadCases } from "./cases/load.js";
import { faultCases } from "./cases/faults.js";
import { hostileCases } from "./cases/hostile.js";

const ALL: CaseSpec[] = [...loadCases, ...faultCases, ...hostileCases];

interface Flags {
  quick: boolean;
  only: string[] | null;
  json: string | null;
  list: boolean;
}

function parseFlags(argv: readonly string[]): Flags {
  const flags: Flags = { quick: false, only: null, json: null, list: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === "--quick") flags.quick = true;
    else if (a === "--list") flags.list = true;
    else if (a === "--only") flags.only = value().split(",").map((s) => s.trim()).filter((s) => s !== "");
    else if (a.startsWith("--only=")) flags.only = a.slice(7).split(",").filter((s) => s !== "");
    else if (a === "--json") flags.json = value();
    else if (a.startsWith("--json=")) flags.json = a.slice(7);
    else if (a === "--help" || a === "-h") usage(null);
    else usage(`unknown argument ${a}`);
  }
  return flags;
}

function usage(error: string | null): never {
  const text = "usage: node dist/stress/run.js [--quick] [--only NAME,...] [--json FILE] [--list]\n";
  if (error !== null) {
    process.stderr.write(`stress: ${error}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

function select(flags: Flags): CaseSpec[] {
  if (flags.only === null) return ALL.filter((c) => !flags.quick || c.quick);
  const names = new Set(ALL.map((c) => c.name));
  const groups = new Set(ALL.map((c) => c.group));
  for (const n of flags.only) {
    if (!names.has(n) && !groups.has(n as CaseSpec["group"])) usage(`no case or group named ${n}; --list shows them`);
  }
  return ALL.filter((c) => flags.only!.includes(c.name) || flags.only!.includes(c.group));
}

/** Escapes a table cell (pipes and newlines). */
function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

function heldText(r: CaseResult): string {
  if (r.skipped !== null) return "skipped";
  if (r.held) return "yes";
  // The first 200 characters of each failed check's detail (--json keeps them whole).
  const failed = r.checks.filter((c) => !c.ok).map((c) => `${c.name} (${c.detail.length > 200 ? `${c.detail.slice(0, 200)}…` : c.detail})`);
  return `**NO**: ${failed.join("; ")}`;
}

export function table(results: readonly CaseResult[]): string {
  const lines = ["| case | what was tried | result | held? |", "| --- | --- | --- | --- |"];
  for (const r of results) {
    lines.push(`| ${cell(r.name)} | ${cell(r.what)} | ${cell(r.result)} | ${cell(heldText(r))} |`);
  }
  return lines.join("\n");
}

async function main(): Promise<number> {
  const flags = parseFlags(process.argv.slice(2));
  if (flags.list) {
    for (const c of ALL) process.stdout.write(`${c.name.padEnd(24)} ${c.group.padEnd(8)} ${c.quick ? "quick" : ""}\n`);
    return 0;
  }
  const cases = select(flags);
  let cert: StressCert | null = null;
  const cleanup = (): void => {
    killAll();
    cert?.cleanup();
    cert = null;
  };
  process.on("exit", cleanup);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      cleanup();
      process.exit(130);
    });
  }
  if (hasOpenssl()) cert = makeCert();
  const env: CampaignEnv = { quick: flags.quick, cert };

  const t0 = Date.now();
  process.stdout.write(
    `pants-ts stress campaign (${flags.quick ? "quick" : "full"}): ${cases.length} cases; node ${process.version}, ` +
      `${cpus().length} CPUs (${cpus()[0]?.model ?? "unknown"})\n\n`,
  );
  const results: CaseResult[] = [];
  for (const spec of cases) {
    process.stdout.write(`  ${spec.name} ... `);
    const r = await runCase(spec, env);
    results.push(r);
    process.stdout.write(`${r.skipped !== null ? "skipped" : r.held ? "held" : "DID NOT HOLD"} (${r.seconds.toFixed(1)} s)\n`);
    if (!r.held) {
      for (const c of r.checks.filter((x) => !x.ok)) process.stdout.write(`      ✗ ${c.name}: ${c.detail}\n`);
      if (r.serverStderr.trim() !== "") process.stdout.write(`      server stderr: ${r.serverStderr.trim().slice(0, 2000)}\n`);
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  const allHeld = results.every((r) => r.held);
  process.stdout.write(`\n${table(results)}\n\n`);
  process.stdout.write(`${results.filter((r) => r.held && r.skipped === null).length} held, ${results.filter((r) => !r.held).length} did not, ${results.filter((r) => r.skipped !== null).length} skipped; ${seconds.toFixed(1)} s\n`);
  if (flags.json !== null) {
    writeFileSync(
      flags.json,
      JSON.stringify({ quick: flags.quick, node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, seconds, allHeld, results }, null, 2),
    );
  }
  return allHeld ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
    // Children are gone by now; leftover handles (none expected) must not keep us alive.
    killAll();
  },
  (err: unknown) => {
    process.stderr.write(`stress: ${(err as Error).stack ?? String(err)}\n`);
    killAll();
    process.exitCode = 2;
  },
);
