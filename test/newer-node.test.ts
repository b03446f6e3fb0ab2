/**
 * What differs by Node release, run again under a newer one: CI's Node 20
 * cannot set SO_REUSEPORT through node:net, so the reusePort tests (the
 * option itself, runCluster's workers, `serve --workers --reuse-port`)
 * also run under the node that PANTS_TS_NEWER_NODE names, on both
 * transports, where node:net sets it itself; and the tests of node:net's
 * onread mode (net-reads, reuse-read-buffer), which pants-ts takes up
 * through Node's internals (src/node-reads.ts), run on node:net under it
 * too. `.ci/run` fetches the current
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

interface Rerun {
  readonly what: string;
  readonly files: readonly string[];
  /** --test-name-pattern, or null for every test of the files. */
  readonly pattern: string | null;
  readonly transports: readonly ("native" | "js")[];
  /** Tests that must pass, none skipped. */
  readonly expected: number;
  /** The release must have this, or the rerun proves nothing. */
  readonly needs: ((version: string) => string | null) | null;
}

const RERUNS: readonly Rerun[] = [
  {
    what: "the 8 reusePort tests",
    files: ["test/reuse-port.test.ts", "test/cluster.test.ts", "test/cli.test.ts"],
    pattern: "reusePort|reuse-port",
    transports: ["native", "js"],
    expected: 8,
    needs: (version) => (setsReusePort(version) ? null : "node:net that sets SO_REUSEPORT"),
  },
  {
    // node:net's onread mode is taken up through Node's internals (src/node-reads.ts).
    what: "the node:net reads tests",
    files: ["test/net-reads.test.ts", "test/reuse-read-buffer.test.ts"],
    pattern: null,
    transports: ["js"],
    expected: 18,
    needs: null,
  },
];

for (const rerun of RERUNS) {
  for (const transport of rerun.transports) {
    test(`under a newer Node (PANTS_TS_NEWER_NODE), on ${transport}: ${rerun.what} pass, none skipped`, { skip, timeout: 170_000 }, async () => {
      const version = spawnSync(newer!, ["-p", "process.versions.node"], { encoding: "utf8" }).stdout.trim();
      const missing = rerun.needs?.(version) ?? null;
      assert.equal(missing, null, `PANTS_TS_NEWER_NODE (${newer}) is Node ${version || "?"}, which lacks ${missing}`);
      // Not NODE_TEST_CONTEXT: that would make the child's runner take itself for a nested one.
      const { NODE_TEST_CONTEXT: _, ...env } = process.env;
      const args = ["--import", "tsx", "--test", "--test-reporter=tap", "--test-concurrency=1"];
      if (rerun.pattern !== null) args.push(`--test-name-pattern=${rerun.pattern}`);
      const child = spawn(newer!, [...args, ...rerun.files], {
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
      assert.equal(count("pass"), rerun.expected, out);
      assert.equal(code, 0, out);
      assert.doesNotMatch(out, /^ok \d+ .*# SKIP/m, out);
    });
  }
}
