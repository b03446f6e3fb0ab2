/**
 * The deployment recipe of docs/deployment.md, run as written: two
 * pants-ts processes (--proxy-protocol) behind a real HAProxy with PROXY v2
 * and health checks. The client's real address reaches the connection
 * class, and after one backend is killed and the checks notice, no new
 * connection is lost.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, freePort, sameOnEitherTransport, sleep, tempDir, waitFor } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;
const haproxy = spawnSync("haproxy", ["-v"]).status === 0;

function startBackend(port: number): { child: ChildProcess; ready: Promise<void> } {
  const child = spawn(process.execPath, [join(root, "bin", "pants-ts.js"), "serve", "test/fixtures/cli-echo.ts", "--listen", `127.0.0.1:${port}`, "--proxy-protocol"], {
    cwd: root,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`backend exited ${code}`)));
  });
  return { child, ready };
}

async function ask(port: number, line: string): Promise<string> {
  const c = await connect(port);
  c.write(`${line}\n`);
  await c.until(() => c.received.includes(0x0a), 5000, "a reply");
  const reply = c.received.toString().split("\n")[0]!;
  const localPort = c.socket.localPort;
  c.destroy();
  return line === "addr" ? `${reply} ${localPort}` : reply;
}

test("docs/deployment.md: two backends behind HAProxy with PROXY v2 and health checks", { skip: sameOnEitherTransport || !haproxy && "haproxy is not installed (apt-get install haproxy)", timeout: 60_000 }, async (t) => {
  const doc = readFileSync(join(root, "docs", "deployment.md"), "utf8");
  const block = /```text\n(global\n[\s\S]*?)```/.exec(doc);
  assert.ok(block, "the recipe has a haproxy.cfg block");
  const [front, app1, app2] = [await freePort(), await freePort(), await freePort()];
  const cfg = block[1]!.replace("127.0.0.1:8040", `127.0.0.1:${front}`).replace("127.0.0.1:4041", `127.0.0.1:${app1}`).replace("127.0.0.1:4042", `127.0.0.1:${app2}`);
  assert.notEqual(cfg, block[1], "the ports were substituted");
  const file = join(tempDir(t), "haproxy.cfg");
  writeFileSync(file, cfg);
  const b1 = startBackend(app1);
  const b2 = startBackend(app2);
  t.after(() => {
    b1.child.kill("SIGKILL");
    b2.child.kill("SIGKILL");
  });
  await Promise.all([b1.ready, b2.ready]);
  const lb = spawn("haproxy", ["-f", file, "-db"], { stdio: ["ignore", "ignore", "pipe"] });
  let lbErr = "";
  lb.stderr.on("data", (d) => (lbErr += d));
  t.after(() => lb.kill("SIGKILL"));
  await waitFor(() => /Proxy pants_front started|pants_back/.test(lbErr) || lb.exitCode !== null, 2000).catch(() => {});
  // Wait until HAProxy answers and both backends are up.
  const pids = new Set<string>();
  const deadline = Date.now() + 15000;
  while (pids.size < 2 && Date.now() < deadline) {
    const reply = await ask(front, "pid").catch(() => "");
    if (/^\d+$/.test(reply)) pids.add(reply);
    else await sleep(50);
  }
  assert.equal(pids.size, 2, `both backends serve; haproxy said: ${lbErr}`);
  // The connection class sees the client's real address and port.
  const [addr, localPort] = (await ask(front, "addr")).split(" ");
  assert.deepEqual(JSON.parse(addr!), ["127.0.0.1", Number(localPort)]);
  // Kill one backend; once the checks notice, no new connection is lost.
  b1.child.kill("SIGKILL");
  // HAProxy says when its checks take a server out (a fixed 1.5 s wait
  // assumed it); the recipe's checks (inter 200ms, fall 2) take ~400 ms.
  const killed = Date.now();
  await waitFor(() => /Server pants_back\/\S+ is DOWN/.test(lbErr), 10_000, `HAProxy to take the killed backend out; it said: ${lbErr}`);
  assert.ok(Date.now() - killed < 4000, `HAProxy's checks took ${Date.now() - killed} ms to notice (the recipe's are inter 200ms, fall 2)`);
  let failures = 0;
  const served = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const reply = await ask(front, "pid").catch(() => "");
    if (/^\d+$/.test(reply)) served.add(reply);
    else failures++;
  }
  assert.equal(failures, 0, "no connection lost after the health check noticed");
  assert.deepEqual([...served], [String(b2.child.pid)]);
});
