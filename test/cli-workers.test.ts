/**
 * The pants-ts command line with --workers (SPEC §9: multi-core): TLS
 * across workers, SIGHUP and SIGTERM, stats, stale UNIX sockets, and the
 * engine a module starts (test/cli.test.ts has the rest).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, connectTls, sameOnEitherTransport, sleep, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { bin, echoesThenStops, fixture, flood, portFrom, portInUse, root, run, serve, staleSocket, visitTls } from "./cli-helpers.js";

test("--workers with TLS: a client still in its handshake when SIGTERM comes gets onShutdown's goodbye and a clean close, and the command exits (--shutdown-timeout 0)", { skip: sameOnEitherTransport || !hasOpenssl() && "no openssl", timeout: 40_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "0", "--tls-cert", certs.server.cert, "--tls-key", certs.server.key]);
  const port = portFrom(s.addresses[0]!);
  const net = await import("node:net");
  const tls = await import("node:tls");
  // Connected, but its ClientHello comes only once the worker is draining.
  const raw = net.connect(port, "127.0.0.1");
  t.after(() => raw.destroy());
  raw.on("error", () => {});
  await new Promise<void>((resolve) => raw.once("connect", () => resolve()));
  await sleep(300);
  s.child.kill("SIGTERM");
  await waitFor(() => /SIGTERM: draining/.test(s.out()), 5000, `the draining line; ${s.out()}`);
  await sleep(300);
  const client = tls.connect({ socket: raw, ca: certs.ca.certPem, servername: "localhost" });
  let got = "";
  let how = "";
  client.on("data", (d: Buffer) => (got += d.toString()));
  client.once("end", () => (how ||= "end"));
  client.once("error", (err) => (how ||= err.message));
  client.once("secureConnect", () => client.write("late\n"));
  await waitFor(() => how !== "", 10_000, `the close; received ${JSON.stringify(got)}`).catch(() => {});
  assert.equal(how, "end", `received ${JSON.stringify(got)}`);
  assert.equal(got, "bye\n");
  let code: number | null | undefined;
  void s.exited.then((c) => (code = c));
  await waitFor(() => code !== undefined, 10_000, "the exit").catch(() => {});
  assert.equal(code, 0, `the command exited: ${s.out()}`);
});

test("a module's Server that serves TLS: --tls-cert beside it is a usage error; under --workers the banner says openssl s_client", { skip: sameOnEitherTransport || !hasOpenssl() && "no openssl", timeout: 60_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const env = { CLI_TLS_CERT: certs.server.cert, CLI_TLS_KEY: certs.server.key };
  for (const workers of ["1", "2"]) {
    const args = ["serve", fixture("cli-tls-server.ts"), "--listen", "127.0.0.1:0", "--workers", workers, "--tls-cert", certs.server.cert, "--tls-key", certs.server.key];
    const r = run(args, env);
    assert.equal(r.status, 2, `${args.join(" ")}: exit ${r.status}, stderr ${r.stderr}`);
    assert.match(r.stderr, /--tls-cert: the module's Server already serves TLS/);
    assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
  }
  const s = await serve(t, [fixture("cli-tls-server.ts"), "--listen", "127.0.0.1:0", "--workers", "2"], 1, root, env);
  assert.match(s.out(), /2 workers serving .* on 127\.0\.0\.1:\d+ \(connect: openssl s_client -connect 127\.0\.0\.1:\d+\)/, s.out());
  const tls = await import("node:tls");
  const client = tls.connect({ host: "127.0.0.1", port: portFrom(s.addresses[0]!), ca: certs.ca.certPem, servername: "localhost" });
  t.after(() => client.destroy());
  await new Promise<void>((resolve, reject) => client.once("secureConnect", resolve).once("error", reject));
  let got = "";
  client.on("data", (d: Buffer) => (got += d));
  client.write("over tls\n");
  await waitFor(() => got.includes("\n"), 5000, "the echo");
  assert.equal(got, "over tls\n");
});

test("--workers with a TLS certificate or key that cannot be used: one line on stderr and exit 1, as in one process", { skip: sameOnEitherTransport || !hasOpenssl() && "no openssl", timeout: 60_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const garbage = join(certs.dir, "garbage.pem");
  writeFileSync(garbage, "not a certificate\n");
  const cases: Array<[string[], RegExp]> = [
    [["--tls-cert", join(certs.dir, "missing.pem")], /Cannot read the SSL option certfile file ".*missing\.pem"/],
    [["--tls-cert", garbage, "--tls-key", certs.server.key], /Invalid TLS server certificate, key or settings/],
    [["--tls-cert", certs.server.cert, "--tls-key", certs.server2.key], /Invalid TLS server certificate, key or settings/],
  ];
  for (const [tlsArgs, message] of cases) {
    for (const workers of ["1", "3"]) {
      const args = ["serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", workers, ...tlsArgs];
      const r = run(args);
      assert.equal(r.status, 1, `${args.join(" ")}: exit ${r.status}, stderr ${r.stderr}`);
      assert.match(r.stderr, message, args.join(" "));
      assert.equal(r.stderr.trim().split("\n").length, 1, `one line for ${args.join(" ")}: ${r.stderr}`);
    }
  }
});

test("--workers with TLS: the workers share session ticket keys, so a client's session resumes on whichever worker its next connection reaches", { skip: sameOnEitherTransport || !hasOpenssl() && "no openssl", timeout: 40_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--tls-cert", certs.server.cert, "--tls-key", certs.server.key]);
  const port = portFrom(s.addresses[0]!);
  const visit = (session?: Buffer) => visitTls(t, port, { ca: certs.ca.certPem }, session);
  const first = await visit();
  assert.equal(first.reused, false);
  // The primary hands connections to the workers in turn: six reach both.
  const reused: boolean[] = [];
  for (let i = 0; i < 6; i++) reused.push((await visit(first.session)).reused);
  assert.deepEqual(reused, [true, true, true, true, true, true]);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--workers with TLS: SIGHUP picks up a renewed certificate; one that does not load keeps the old workers serving", { skip: sameOnEitherTransport || !hasOpenssl() && "no openssl", timeout: 60_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const cert = join(certs.dir, "live.crt");
  const key = join(certs.dir, "live.key");
  copyFileSync(certs.server.cert, cert);
  copyFileSync(certs.server.key, key);
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--tls-cert", cert, "--tls-key", key]);
  const port = portFrom(s.addresses[0]!);
  const served = async () => {
    const names = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const c = await connectTls(["127.0.0.1", port], { ca: certs.ca.certPem, servername: "localhost" });
      names.add(String(c.tlsSocket.getPeerCertificate().subject.CN));
      c.destroy();
    }
    return [...names];
  };
  assert.deepEqual(await served(), ["localhost"]);
  // Half a renewal (the certificate, not its key): the replacement fails, the old workers stay.
  copyFileSync(certs.server2.cert, cert);
  s.child.kill("SIGHUP");
  await waitFor(() => /replacement worker failed to start/.test(s.out()), 20_000, `the failed replacement; ${s.out()}`);
  assert.deepEqual(await served(), ["localhost"]);
  copyFileSync(certs.server2.key, key);
  s.child.kill("SIGHUP");
  // Both workers replaced: only the renewed certificate is served.
  let names: string[] = [];
  for (const until = Date.now() + 20_000; Date.now() < until; await sleep(200)) {
    names = await served();
    if (names.length === 1 && names[0] === "localhost-rotated") break;
  }
  assert.deepEqual(names, ["localhost-rotated"]);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--workers 2 serves from two processes and exits 0 on SIGTERM", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2"]);
  // The banner names the port the OS picked for port 0 (one, shared by both workers).
  assert.match(s.out(), /2 workers serving .* on 127\.0\.0\.1:\d+ \(connect: nc 127\.0\.0\.1 \d+\)/);
  const port = portFrom(s.addresses[0]!);
  assert.ok(port > 0, `the banner's port: ${s.out()}`);
  const pids = new Set<string>();
  for (let i = 0; i < 40 && pids.size < 2; i++) {
    const c = await connect(port);
    c.write("pid\n");
    await c.until(() => c.received.includes(0x0a));
    pids.add(c.received.toString().trim());
    c.destroy();
  }
  assert.equal(pids.size, 2);
  s.child.kill("SIGUSR2");
  await waitFor(() => /pants-ts stats: workers=2/.test(s.out()), 5000, `a stats line; ${s.out()}`);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--workers: the connections a crashed worker had open count as closed in the stats", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-crash-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2"]);
  const port = portFrom(s.addresses[0]!);
  // Two connections to one worker (the others leave at once).
  const byPid = new Map<string, Array<Awaited<ReturnType<typeof connect>>>>();
  let accepted = 0;
  while (![...byPid.values()].some((list) => list.length === 2)) {
    const c = await connect(port);
    accepted++;
    c.write("pid\n");
    await c.until(() => c.received.includes(0x0a));
    const pid = c.received.toString().trim();
    c.received = Buffer.alloc(0);
    byPid.set(pid, [...(byPid.get(pid) ?? []), c]);
  }
  const [a, b] = [...byPid.values()].find((list) => list.length === 2)!;
  for (const list of byPid.values()) if (list.length < 2) for (const c of list) c.destroy();
  const lines = () => s.out().split("\n").filter((l) => l.startsWith("pants-ts stats:"));
  // The workers report once a second: wait for a report with only those two open.
  await waitFor(() => {
    s.child.kill("SIGUSR2");
    return new RegExp(` open=2 pending=0 lingering=\\d+ accepted=${accepted} rejected=0 closed=${accepted - 2} `).test(lines().at(-1) ?? "");
  }, 10000, `a report with two open; ${s.out()}`);
  b!.write("crash\n");
  await a!.readToEnd();
  await waitFor(() => {
    s.child.kill("SIGUSR2");
    return /workers=2 restarts=1 /.test(lines().at(-1) ?? "");
  }, 10000, `the restart; ${s.out()}`);
  assert.match(lines().at(-1)!, new RegExp(`workers=2 restarts=1 open=0 pending=0 lingering=\\d+ accepted=${accepted} rejected=0 closed=${accepted} `));
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--workers with --shutdown-timeout 0: a worker still draining is never killed (no deadline)", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "0"]);
  // Echoes the client does not read yet: the worker's close(true) must wait for them.
  const client = await flood(s.addresses[0]!, 8 * 1024);
  s.child.kill("SIGTERM");
  await new Promise((resolve) => setTimeout(resolve, 6500)); // past the old 0 + 5 s kill
  let received = 0;
  let tail = "";
  client.on("data", (d: Buffer) => {
    received += d.length;
    tail = (tail + d.toString("latin1")).slice(-8);
  });
  client.resume();
  await new Promise<void>((resolve, reject) => {
    client.once("end", () => resolve());
    client.once("error", reject);
  });
  assert.equal(tail.endsWith("bye\n"), true, `drained to the end (${received} bytes), not killed`);
  assert.equal(await s.exited, 0);
});

test("--workers: a drained worker does not exit under its lingering connections (the peer still sending; no reset cuts the tail)", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "0"]);
  // More than the kernel buffers hold: the client is still sending when the worker's close(true) completes.
  const client = await flood(s.addresses[0]!, 48 * 1024);
  s.child.kill("SIGTERM");
  await new Promise((resolve) => setTimeout(resolve, 1000));
  let received = 0;
  let tail = "";
  let sip = 0;
  client.on("data", (d: Buffer) => {
    received += d.length;
    tail = (tail + d.toString("latin1")).slice(-8);
    // A client reading at a moderate pace (about 25 MB/s), well inside the linger.
    sip += d.length;
    if (sip >= 256 * 1024) {
      sip = 0;
      client.pause();
      setTimeout(() => client.resume(), 10);
    }
  });
  client.resume();
  const how = await new Promise<string>((resolve) => {
    client.once("end", () => resolve("end"));
    client.once("error", (err) => resolve(err.message));
  });
  assert.equal(how, "end", `${received} bytes, then`);
  assert.equal(tail.endsWith("bye\n"), true, `drained to the end (${received} bytes)`);
  assert.equal(await s.exited, 0);
});

test("SIGTERM drains and exits 0 even while the module awaits Engine.instance().start() at its top level", { timeout: 30_000 }, async (t) => {
  const child = spawn(process.execPath, [bin, "serve", fixture("cli-awaits-engine.ts")], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  await waitFor(() => /module listening on \d+\n/.test(out), 20000, `the module; output: ${out}`);
  const c = await connect(Number(/module listening on (\d+)/.exec(out)![1]));
  c.write("hi\n");
  await c.until(() => c.received.includes(0x0a), 5000, "an echo");
  c.destroy();
  child.kill("SIGTERM");
  assert.equal(await exited, 0, out);
});

test("a listen that fails after a SIGTERM came while the module loaded: still one line and exit 1; one that succeeds drains and exits 0", { timeout: 30_000 }, async (t) => {
  const port = await portInUse(t);
  for (const [listen, status] of [[`127.0.0.1:${port}`, 1], ["127.0.0.1:0", 0]] as const) {
    // The module finishes loading only on the SIGTERM: the command listens after it.
    const child = spawn(process.execPath, [bin, "serve", fixture("cli-loads-until-sigterm.ts"), "--listen", listen], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    t.after(() => child.kill("SIGKILL"));
    let out = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (out += d));
    child.stderr!.on("data", (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    await waitFor(() => /module loading\n/.test(out) || child.exitCode !== null, 20000, `the module; output: ${out}${stderr}`);
    child.kill("SIGTERM");
    assert.equal(await exited, status, `--listen ${listen}: ${out}${stderr}`);
    if (status === 0) assert.equal(stderr, "");
    else assert.match(stderr, new RegExp(`^pants-ts: listen EADDRINUSE: address already in use 127\\.0\\.0\\.1:${port} \\(another process listens there.*\\)\\n$`));
  }
});

test("--workers: SIGUSR2 sent to the whole process group (systemctl kill -s USR2) prints stats and kills no worker", { timeout: 40_000, skip: sameOnEitherTransport || process.platform === "win32" && "process groups" }, async (t) => {
  const child = spawn(process.execPath, [bin, "serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2"], { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true });
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  await waitFor(() => / workers serving /.test(out), 20000, `the banner; output: ${out}`);
  process.kill(-child.pid!, "SIGUSR2");
  await waitFor(() => /pants-ts stats: workers=2/.test(out), 5000, `a stats line; ${out}`);
  await new Promise((r) => setTimeout(r, 1000));
  assert.doesNotMatch(out, /exited \(SIGUSR2\)/, "a worker died of the SIGUSR2");
  child.kill("SIGUSR2");
  await waitFor(() => out.split("\n").filter((l) => l.startsWith("pants-ts stats:")).length >= 2, 5000, `a second stats line; ${out}`);
  assert.match(out.split("\n").filter((l) => l.startsWith("pants-ts stats:"))[1]!, /workers=2 restarts=0 /);
  child.kill("SIGTERM");
  assert.equal(await exited, 0);
});

test("--workers: a second SIGINT while draining exits now (1), as in one process", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "0"]);
  // A client that reads nothing: with no deadline, the drain waits for it.
  const client = await flood(s.addresses[0]!, 8 * 1024);
  s.child.kill("SIGINT");
  await waitFor(() => /SIGINT: draining/.test(s.out()), 5000, `the draining line; ${s.out()}`);
  s.child.kill("SIGINT");
  assert.equal(await s.exited, 1, s.out());
  assert.match(s.out(), /second SIGINT; exiting now/);
  client.destroy();
});

test("--workers: the banner names a Linux abstract socket as given (no cwd, no NUL byte)", { timeout: 40_000, skip: sameOnEitherTransport || process.platform !== "linux" && "abstract sockets" }, async (t) => {
  const name = `pants-ts-cli-${process.pid}`;
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", `unix:@${name}`, "--workers", "2"]);
  const banner = s.out().split("\n").find((l) => / workers serving /.test(l))!;
  assert.ok(banner.endsWith(` on unix:@${name}`), banner);
  await echoesThenStops(s, "\0" + name);
});

// Eight workers find the same stale socket at once; the primary, which binds
// the live one, clears the stale one for them, once. (When each worker
// unlinked it, a late unlink removed the live socket: 3 of 12 runs; with an
// inode check before the unlink, still once in a CI run.)
test("--workers: a stale UNIX socket is replaced once, not unlinked under the live one", { timeout: 120_000, skip: sameOnEitherTransport || process.platform === "win32" && "UNIX sockets" }, async (t) => {
  const dir = tempDir(t);
  for (let round = 0; round < 10; round++) {
    const sock = join(dir, `stale-${round}.sock`);
    staleSocket(sock);
    const s = await serve(t, [fixture("cli-echo.ts"), "--listen", `unix:${sock}`, "--workers", "8"]);
    assert.ok(existsSync(sock), `round ${round}: the cluster's socket was unlinked; output: ${s.out()}`);
    await echoesThenStops(s, sock);
  }
});

test("--workers: a worker slow between finding a stale UNIX socket dead and unlinking it does not unlink the live one", { timeout: 60_000, skip: sameOnEitherTransport || process.platform === "win32" && "UNIX sockets" }, async (t) => {
  const sock = join(tempDir(t), "stale.sock");
  staleSocket(sock);
  const s = await serve(t, [fixture("cli-slow-unlink.ts"), "--listen", `unix:${sock}`, "--workers", "3"]);
  // The slow workers' unlinks would have run by now (2.5 s after their probes).
  await sleep(3000);
  assert.ok(existsSync(sock), `the cluster's socket was unlinked; output: ${s.out()}`);
  await echoesThenStops(s, sock);
});

test("--workers: a stale UNIX socket at a relative path whose absolute form is too long for a socket address is replaced, as in one process", { timeout: 60_000, skip: sameOnEitherTransport || process.platform === "win32" && "UNIX sockets" }, async (t) => {
  const dir = tempDir(t);
  // node:cluster binds "s.sock" relative to the primary's cwd, as the path
  // given; its absolute form here is longer than sun_path (107 bytes).
  const long = join(dir, "d".repeat(120));
  mkdirSync(long);
  staleSocket("s.sock", long);
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "unix:s.sock", "--workers", "2"], 1, long);
  assert.match(s.out(), / workers serving /, `the cluster did not start; output: ${s.out()}`);
  // A short way to the socket for this test's client.
  symlinkSync(long, join(dir, "l"));
  await echoesThenStops(s, join(dir, "l", "s.sock"));
});

test("--workers on a UNIX socket: starting and SIGHUP's replacements make no stray connection to the workers", { timeout: 60_000, skip: sameOnEitherTransport || process.platform === "win32" && "UNIX sockets" }, async (t) => {
  const sock = join(tempDir(t), "live.sock");
  const s = await serve(t, [fixture("cli-counts-connects.ts"), "--listen", `unix:${sock}`, "--workers", "3"]);
  const lines = (prefix: string) => s.out().split("\n").filter((l) => l.startsWith(prefix)).length;
  await waitFor(() => lines("listening ") >= 3, 10000, `three workers listening; output: ${s.out()}`);
  s.child.kill("SIGHUP");
  await waitFor(() => lines("listening ") >= 6, 20000, `three replacements; output: ${s.out()}`);
  // The last old worker is told to drain only once the last replacement
  // listens: until it has exited, the echo below may reach it and get its "bye".
  const old = s.out().split("\n").filter((l) => l.startsWith("listening ")).slice(0, 3).map((l) => Number(l.slice("listening ".length)));
  const gone = (pid: number) => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  };
  await waitFor(() => old.every(gone), 20000, `the old workers' exits; output: ${s.out()}`);
  // A check for a stale socket that connects to the live one is a connection to a worker.
  assert.equal(lines("connect "), 0, `stray connections; output: ${s.out()}`);
  await echoesThenStops(s, sock);
  assert.equal(lines("connect "), 1, s.out());
  assert.equal(existsSync(sock), false, "the socket file is removed once the cluster has exited");
});

test("--workers: a module that awaits Engine.instance().start() at its top level (SPEC's example) starts: banner, and SIGHUP replaces the workers", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-awaits-engine.ts"), "--workers", "2"]);
  assert.match(s.out(), /2 workers serving /, `the workers never counted as started; output: ${s.out()}`);
  s.child.kill("SIGHUP");
  await waitFor(() => s.out().split("\n").filter((l) => l.startsWith("module listening")).length >= 4, 20000, `two replacements; ${s.out()}`);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--workers: a module that starts the engine before it has finished loading counts as started only once its servers listen", { skip: sameOnEitherTransport, timeout: 40_000 }, async (t) => {
  // The banner comes once the workers listen: with port 0 it names the port they got.
  const s = await serve(t, [fixture("cli-engine-first.ts"), "--workers", "2", "--listen", "127.0.0.1:0"]);
  assert.match(s.out(), /2 workers serving /, s.out());
  const port = portFrom(s.addresses[0]!);
  assert.notEqual(port, 0, `the banner came before the workers listened: ${s.out()}`);
  const c = await connect(["127.0.0.1", port]);
  c.socket.destroy();
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);

  // A listen that fails is a failed start (exit 1), not a crash to restart forever.
  const busy = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0"]);
  const failing = spawn(process.execPath, [bin, "serve", fixture("cli-engine-first.ts"), "--workers", "2", "--listen", busy.addresses[0]!], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => failing.kill("SIGKILL"));
  let out = "";
  failing.stdout!.on("data", (d) => (out += d));
  failing.stderr!.on("data", (d) => (out += d));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => resolve(-1), 15_000);
    failing.once("exit", (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.equal(code, 1, `expected a failed start; output: ${out.slice(0, 2000)}`);
  assert.doesNotMatch(out, /restarting in/);
});
