/**
 * What differs by Node release, run again under a newer one: CI's Node 20
 * cannot set SO_REUSEPORT through node:net, so the reusePort tests (the
 * option itself, runCluster's workers, `serve --workers --reuse-port`)
 * also run under the node that PANTS_TS_NEWER_NODE names, on both
 * transports, where node:net sets it itself. `.ci/run` fetches the current
 * LTS (Node 26) from the npm registry for this; elsewhere the test skips
 * unless the variable is set (`bash scripts/test-on-node.sh 26` runs the
 * whole suite under it instead).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { sameOnEitherTransport, setsReusePort } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;
const newer = process.env.PANTS_TS_NEWER_NODE;
const skip = sameOnEitherTransport || ((newer === undefined || newer === "") && "PANTS_TS_NEWER_NODE names no node binary (.ci/run fetches Node 26 from the npm registry)");

/** The test files and the pattern of the tests to run again, and how many of them there are. */
const FILES = ["test/reuse-port.test.ts", "test/cluster.test.ts", "test/cli.test.ts"];
const PATTERN = "reusePort|reuse-port";
const EXPECTED = 8;

for (const transport of ["native", "js"] as const) {
  test(`under a newer Node (PANTS_TS_NEWER_NODE), on ${transport}: the ${EXPECTED} reusePort tests pass, none skipped`, { skip, timeout: 170_000 }, async () => {
    const version = spawnSync(newer!, ["-p", "process.versions.node"], { encoding: "utf8" }).stdout.trim();
    assert.ok(setsReusePort(version), `PANTS_TS_NEWER_NODE (${newer}) is Node ${version || "?"}, whose node:net cannot set SO_REUSEPORT`);
    // Not NODE_TEST_CONTEXT: that would make the child's runner take itself for a nested one.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const child = spawn(newer!, ["--import", "tsx", "--test", "--test-reporter=tap", "--test-concurrency=1", `--test-name-pattern=${PATTERN}`, ...FILES], {
      cwd: root,
      env: { ...env, PANTS_TS_TRANSPORT: transport },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    const count = (name: string) => Number(new RegExp(`^# ${name} (\\d+)$`, "m").exec(out)?.[1] ?? NaN);
    assert.equal(count("fail"), 0, out);
    assert.equal(count("pass"), EXPECTED, out);
    assert.equal(code, 0, out);
    assert.doesNotMatch(out, /^ok \d+ .*# SKIP/m, out);
  });
}
