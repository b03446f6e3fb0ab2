/**
 * The benchmark harness (bench/) runs end to end: `npm run bench -- --quick`
 * on a fast subset of scenarios exits 0 and prints the summary table. It
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
// One scenario through the C load generator, one over TLS, one in-process framing case.
const SUBSET = ["pingpong-50", "tls-echo", "framing-line-short"];

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

  assert.match(stdout, /^# pants-ts benchmark/m);
  assert.match(stdout, /machine: \d+ CPUs/);
  assert.match(stdout, /^## Summary$/m);
  assert.match(stdout, /^\| scenario \| raw node \| pants-ts \| ratio \(pants\/raw\) \|$/m);
  for (const name of SUBSET) {
    assert.match(stdout, new RegExp(`^\\| ${name} \\(.+\\) \\| [\\d,.]+ \\| [\\d,.]+ \\| [\\d.]+ \\|$`, "m"), `no summary row for ${name}`);
    assert.match(stdout, new RegExp(`^### ${name}: `, "m"), `no table for ${name}`);
  }
  assert.match(stdout, /^## Load generator check$/m);

  const saved = JSON.parse(readFileSync(json, "utf8")) as { summary: Array<{ scenario: string; ratio: number | null }> };
  assert.deepEqual(saved.summary.map((s) => s.scenario), SUBSET);
  for (const s of saved.summary) assert.equal(typeof s.ratio, "number", `${s.scenario} has no ratio`);
});
