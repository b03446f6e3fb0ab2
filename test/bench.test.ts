/**
 * The benchmark harness (bench/) runs end to end: `npm run bench -- --quick`
 * on a fast subset of scenarios exits 0 and prints the summary table, with a
 * pants-ts column per transport (native only when the addon is built). It
 * checks that the harness works, never how fast anything is.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const runner = join(root, "dist", "bench", "run.js");
// One scenario through the C load generator, one over TLS, the (shrunk) backpressure flood, one in-process framing case.
const SUBSET = ["pingpong-50", "tls-echo", "backpressure", "framing-line-short"];

function onPath(program: string): boolean {
  return (process.env["PATH"] ?? "").split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, program), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const skip =
  (!existsSync(runner) && "dist/bench/run.js is missing (npm test builds it; run npm run build)") ||
  (!onPath("cc") && "no C compiler (cc) to build bench/loadgen.c") ||
  (!onPath("openssl") && "the openssl command is not installed (the TLS scenario needs a certificate)");

test("npm run bench -- --quick runs end to end and prints the summary", { skip, timeout: 110_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "pants-ts-bench-test-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const json = join(dir, "results.json");
  const child = spawn(process.execPath, [runner, "--quick", "--only", SUBSET.join(","), "--json", json], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  assert.equal(code, 0, `the benchmark failed:\n${stderr.slice(-3000)}`);

  const saved = JSON.parse(readFileSync(json, "utf8")) as {
    sides: Record<string, { ok: boolean }>;
    summary: Array<{ scenario: string; ratios: Record<string, number | null> }>;
  };
  const NATIVE = saved.sides["native"]?.ok === true; // the addon is built and loads

  assert.match(stdout, /^# pants-ts benchmark/m);
  assert.match(stdout, /machine: \d+ CPUs/);
  assert.match(stdout, /^## Summary$/m);
  // --quick leaves the uvloop column out.
  const header = NATIVE
    ? "| scenario | raw node | pants-ts js | pants-ts native | js/raw | native/raw |"
    : "| scenario | raw node | pants-ts js | js/raw |";
  assert.ok(stdout.split("\n").includes(header), `no summary header ${header}`);
  const n = String.raw`[\d,.]+`;
  for (const name of SUBSET) {
    // Two figures (raw, js), a third for native on the plain TCP scenarios; n/a for native on TLS and framing.
    const native = !NATIVE ? "" : name === "pingpong-50" || name === "backpressure" ? ` ${n} \\|` : " n/a \\|";
    assert.match(stdout, new RegExp(`^\\| ${name} \\(.+\\) \\| ${n} \\| ${n} \\|${native} `, "m"), `no summary row for ${name}`);
    assert.match(stdout, new RegExp(`^### ${name}: `, "m"), `no table for ${name}`);
  }
  assert.match(stdout, /^## Load generator check$/m);

  assert.deepEqual(saved.summary.map((s) => s.scenario), SUBSET);
  for (const s of saved.summary) {
    if (s.scenario === "backpressure") continue; // a growth of zero leaves the ratio undefined
    assert.equal(typeof s.ratios["js/raw"], "number", `${s.scenario} has no js/raw ratio`);
  }
});
