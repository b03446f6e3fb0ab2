/**
 * The pants-ts command line (SPEC §9): serve a module's connection class
 * (or Server) on every address form, --help, bad flags (one line, exit 2),
 * TLS, workers, limits, PROXY, SIGUSR2 stats and SIGTERM draining to exit 0.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { networkInterfaces } from "node:os";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, connectTls, hasIPv6, noReusePort, passTransport, sameOnEitherTransport, tempDir, waitFor } from "./helpers.js";
import { hasOpenssl, makeCerts } from "./certs.js";
import { bin, echoesThenStops, fixture, portFrom, portInUse, root, run, serve, visitTls } from "./cli-helpers.js";
import type { Served } from "./cli-helpers.js";

test("--help documents every flag; exit 0", () => {
  const r = run(["--help"]);
  assert.equal(r.status, 0);
  for (const flag of ["serve", "--listen", "--tls-cert", "--tls-key", "--tls-reload", "--workers", "--proxy-protocol", "--reuse-port", "--max-connections", "--max-per-peer", "--peer-ipv6-prefix", "--idle-timeout", "--shutdown-timeout", "unix:/", "[::1]:4040", "SIGTERM", "SIGUSR2", "SIGHUP"]) {
    assert.ok(r.stdout.includes(flag), `--help mentions ${flag}`);
  }
  assert.equal(run(["serve", "--help"]).status, 0);
  assert.match(run(["--version"]).stdout, /^\d+\.\d+\.\d+/);
  assert.match(run(["serve", "-v"]).stdout, /^\d+\.\d+\.\d+/, "-v is listed under the options: it works there too");
});

test("bad usage: one clear line on stderr and exit 2", { skip: sameOnEitherTransport }, () => {
  const cases: Array<[string[], RegExp]> = [
    [[], /./],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["serve"], /serve needs a module/],
    [["serve", fixture("cli-echo.ts"), "--bogus"], /Unknown option '--bogus'/],
    [["serve", fixture("cli-echo.ts"), "--listen", "nowhere"], /invalid address "nowhere"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "1.2.3.4:99999"], /port must be 0-65535/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--workers", "0"], /--workers must be an integer from 1 to 1024/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--idle-timeout", "soon"], /--idle-timeout must be a positive integer/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--max-per-peer", "0"], /--max-per-peer must be a positive integer/],
    // A negative number is the option's value (parseArgs alone calls it ambiguous), and what follows still parses.
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--max-per-peer", "-1", "-q"], /^pants-ts: --max-per-peer must be a positive integer, got "-1"/],
    [["serve", fixture("cli-echo.ts"), "--max-connections", "-1", "--listen", "4040"], /^pants-ts: --max-connections must be a positive integer, got "-1"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "-w", "-2"], /^pants-ts: --workers must be an integer from 1 to 1024, got "-2"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--idle-timeout", "-0.5"], /^pants-ts: --idle-timeout must be a positive integer, got "-0.5"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--shutdown-timeout", "-1"], /^pants-ts: --shutdown-timeout must be a non-negative integer, got "-1"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "-1"], /^pants-ts: invalid address "-1"/],
    [["serve", fixture("cli-echo.ts"), "--listen", "4040", "--shutdown-timeout", "soon"], /--shutdown-timeout must be a non-negative integer/],
    [["serve", fixture("cli-echo.ts"), "--tls-key", "k.pem", "--listen", "4040"], /--tls-key needs --tls-cert/],
    [["serve", fixture("cli-echo.ts"), "--tls-reload", "10", "--listen", "4040"], /--tls-reload needs --tls-cert/],
    [["serve", fixture("cli-echo.ts"), "--tls-cert", "c.pem", "--tls-reload", "soon", "--listen", "4040"], /^pants-ts: --tls-reload must be a non-negative integer, got "soon"/],
    [["serve", fixture("cli-echo.ts")], /--listen is required/],
    [["serve", fixture("cli-bad.ts"), "--listen", "127.0.0.1:0"], /must export by default a Stream subclass or a Server/],
    [["serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--peer-ipv6-prefix", "48"], /^pants-ts: --peer-ipv6-prefix sets how --max-per-peer counts IPv6 clients; give --max-per-peer too/],
  ];
  // --workers has a sanity bound (a typo must not fork thousands of processes),
  // and every integer flag takes plain decimal digits only, up to what a number
  // holds exactly: each refused here, before a worker starts, not by runCluster
  // or a worker's Server later (exit 1).
  for (const bad of ["1025", "100000", "99999999999999999999999", "1e3", "0x10", "-1", " 4", "4.0", "+4", "1_0"]) {
    cases.push([["serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", bad], new RegExp(`^pants-ts: --workers must be an integer from 1 to 1024, got "${bad.replace(/[+.]/g, "\\$&")}"`)]);
  }
  for (const flag of ["max-connections", "max-per-peer", "idle-timeout", "shutdown-timeout"]) {
    cases.push([["serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", `--${flag}`, "99999999999999999999"], new RegExp(`^pants-ts: --${flag} must be a (positive|non-negative) integer up to 9007199254740991, got "99999999999999999999"`)]);
    cases.push([["serve", fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", `--${flag}`, "0x10"], new RegExp(`^pants-ts: --${flag} must be a (positive|non-negative) integer, got "0x10"`)]);
  }
  for (const bad of ["0", "129", "64.5", "x", "-1"]) {
    cases.push([["serve", fixture("cli-echo.ts"), "--listen", "4040", "--max-per-peer", "1", "--peer-ipv6-prefix", bad], new RegExp(`^pants-ts: --peer-ipv6-prefix must be an integer from 1 to 128, got "${bad}"`)]);
  }
  for (const [args, message] of cases) {
    const r = run(args);
    assert.equal(r.status, 2, `${args.join(" ")}: exit ${r.status}, stderr ${r.stderr}`);
    if (args.length > 0) {
      assert.match(r.stderr, message, args.join(" "));
      assert.equal(r.stderr.trim().split("\n").length, 1, `one line for ${args.join(" ")}: ${r.stderr}`);
    }
  }
});

test("bad usage that only a worker sees (--workers): one clear line on stderr and exit 2, as in one process", { skip: sameOnEitherTransport, timeout: 60_000 }, () => {
  const cases: Array<[string[], RegExp]> = [
    [[fixture("cli-echo.ts")], /--listen is required/],
    [[fixture("cli-bad.ts"), "--listen", "127.0.0.1:0"], /must export by default a Stream subclass or a Server/],
    [[fixture("cli-server.ts"), "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"], /a Server instance listens on one address/],
    [[fixture("cli-server.ts"), "--listen", "127.0.0.1:0", "--proxy-protocol"], /--proxy-protocol, --reuse-port and --idle-timeout apply to a connection class/],
    [[fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--peer-ipv6-prefix", "48"], /--peer-ipv6-prefix sets how --max-per-peer counts IPv6 clients; give --max-per-peer too/],
  ];
  for (const [args, message] of cases) {
    for (const workers of ["1", "2"]) {
      const all = ["serve", ...args, "--workers", workers];
      const r = run(all);
      assert.equal(r.status, 2, `${all.join(" ")}: exit ${r.status}, stderr ${r.stderr}`);
      assert.match(r.stderr, message, all.join(" "));
      assert.equal(r.stderr.trim().split("\n").length, 1, `one line for ${all.join(" ")}: ${r.stderr}`);
    }
  }
});

test("serve on TCP and a UNIX socket; SIGUSR2 prints stats; SIGTERM drains and exits 0", { timeout: 30_000 }, async (t) => {
  const sock = join(tempDir(t), "cli.sock");
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--listen", `unix:${sock}`], 2);
  // The transport is named: a deployment whose addon did not build runs on node:net, and says so (and why).
  const transport = process.env.PANTS_TS_TRANSPORT === "js" ? "node:net" : "native transport";
  assert.match(s.out(), new RegExp(`serving CliEcho on 127\\.0\\.0\\.1:\\d+ \\(connect: nc 127\\.0\\.0\\.1 \\d+\\), ${transport}\n`));
  assert.match(s.out(), /serving CliEcho on unix:.*cli\.sock \(connect: nc -U /);
  const tcp = await connect(portFrom(s.addresses[0]!));
  tcp.write("over tcp\n");
  assert.equal(await tcp.readText(9), "over tcp\n");
  const unix = await connect(sock);
  unix.write("over unix\n");
  assert.equal(await unix.readText(10), "over unix\n");
  s.child.kill("SIGUSR2");
  await waitFor(() => /pants-ts stats: open=2 pending=0 lingering=\d+ accepted=2/.test(s.out()), 5000, `a stats line; output ${s.out()}`);
  s.child.kill("SIGTERM");
  assert.equal((await tcp.readToEnd()).toString(), "bye\n");
  assert.equal((await unix.readToEnd()).toString(), "bye\n");
  assert.equal(await s.exited, 0);
});

test("SIGUSR2 after a server closed with connections open: they count as closed (the figures were taken before its close closed them)", { timeout: 30_000 }, async (t) => {
  // Two addresses, two servers: the second keeps the process serving once the first closes.
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"], 2);
  const port = portFrom(s.addresses[0]!);
  const a = await connect(port);
  a.write("hi\n");
  assert.equal(await a.readText(3), "hi\n");
  const b = await connect(port);
  b.write("close-server\n"); // server.close(): closes a and b without flushing
  await a.readToEnd();
  await b.readToEnd();
  s.child.kill("SIGUSR2");
  await waitFor(() => /pants-ts stats: /.test(s.out()), 5000, `a stats line; output ${s.out()}`);
  assert.match(s.out(), /pants-ts stats: open=0 pending=0 lingering=\d+ accepted=2 rejected=0 closed=2 bytesIn=16 bytesOut=3 errors=0/);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("SIGUSR2 after a server closed while an async onAccept held a connection: the stream it makes after the close counts too (accepted and closed), and so does an override failing after it, even once its socket's close freed its place", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-late-accept.ts"), "--listen", "127.0.0.1:0"]);
  const port = portFrom(s.addresses[0]!);
  const held = await connect(port, { localAddress: "127.0.0.2" }); // onAccept waits for the close
  const refused = await connect(port, { localAddress: "127.0.0.3" }); // ... then throws
  const dropped = await connect(port, { localAddress: "127.0.0.4" }); // ... then destroys its socket (the server may retire), then throws
  const a = await connect(port);
  a.write("hi\n");
  assert.equal(await a.readText(3), "hi\n");
  a.write("close-server\n"); // server.close(): closes a; then the held one is made, and closed at once
  await a.readToEnd();
  await held.readToEnd();
  await refused.readToEnd();
  await dropped.readToEnd();
  await waitFor(() => /failed after refusing/.test(s.out()), 5000, `the last override's failure; output ${s.out()}`);
  s.child.kill("SIGUSR2");
  await waitFor(() => /pants-ts stats: /.test(s.out()), 5000, `a stats line; output ${s.out()}`);
  assert.match(s.out(), /pants-ts stats: open=0 pending=0 lingering=\d+ accepted=2 rejected=0 closed=2 bytesIn=\d+ bytesOut=\d+ errors=2\n/);
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

/** A link-local IPv6 address of this host and its interface's name, if any. */
const linkLocal = Object.entries(networkInterfaces())
  .flatMap(([name, list]) => (list ?? []).map((a) => ({ name, address: a.address, scoped: a.family === "IPv6" && (a.scopeid ?? 0) > 0 })))
  .find((a) => a.address.startsWith("fe80:") && a.scoped);

test("a link-local IPv6 listen address keeps its interface in the banner and the connect hint", { skip: linkLocal === undefined && "no link-local IPv6 address", timeout: 30_000 }, async (t) => {
  const { name, address } = linkLocal!;
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", `[${address}%${name}]:0`]);
  const esc = `${address}%${name}`.replace(/[.:%]/g, "\\$&");
  assert.match(s.out(), new RegExp(`serving CliEcho on \\[${esc}\\]:\\d+ \\(connect: nc ${esc} \\d+\\)`));
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test(`--workers with --reuse-port on port 0: each worker listens itself (on ${passTransport}) on the one port the banner names, and takes connections; SIGTERM exits 0`, { timeout: 60_000, skip: noReusePort }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--workers", "2", "--reuse-port"]);
  assert.match(s.out(), /2 workers serving .* on 127\.0\.0\.1:\d+ \(connect: nc 127\.0\.0\.1 \d+\)/, s.out());
  const port = portFrom(s.addresses[0]!);
  assert.ok(port > 0, s.out());
  const ask = async (line: string): Promise<string> => {
    const c = await connect(port);
    c.write(`${line}\n`);
    await c.until(() => c.received.includes(0x0a), 5000, "a reply");
    c.destroy();
    return c.received.toString().split("\n")[0]!;
  };
  assert.equal(await ask("transport"), passTransport);
  const pids = new Set<string>();
  for (let i = 0; i < 40 && pids.size < 2; i++) pids.add(await ask("pid"));
  assert.equal(pids.size, 2, `both workers accept; output: ${s.out()}`);
  // The rolling restart's one risk, told where the kernel would take it.
  const setting = existsSync("/proc/sys/net/ipv4/tcp_migrate_req") ? readFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "latin1").trim() : null;
  const migrates = setting !== "0";
  assert.equal(/net\.ipv4\.tcp_migrate_req is 0/.test(s.out()), !migrates, s.out());
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("without --workers, SIGHUP drains as SIGTERM does and exits 0", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--shutdown-timeout", "0"]);
  const c = await connect(portFrom(s.addresses[0]!));
  c.write("hi\n");
  assert.equal(await c.readText(3), "hi\n");
  s.child.kill("SIGHUP");
  assert.equal((await c.readToEnd()).toString(), "bye\n", "onShutdown ran: the connection was drained, not cut");
  assert.equal(await s.exited, 0);
  assert.match(s.out(), /SIGHUP: draining connections \(no deadline\)/, "--shutdown-timeout 0: no deadline, as shutdown({ timeoutMs: 0 })");
});

test("a closed terminal or log reader (stdout gone) does not kill a server that is draining", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0"]);
  const c = await connect(portFrom(s.addresses[0]!));
  c.write("hi\n");
  assert.equal(await c.readText(3), "hi\n");
  // What a hangup does to a server's output: its next writes fail (EIO on a tty, EPIPE on a pipe).
  s.child.stdout!.destroy();
  s.child.stderr!.destroy();
  s.child.kill("SIGHUP");
  assert.equal((await c.readToEnd()).toString(), "bye\n", "drained, not killed");
  assert.equal(await s.exited, 0);
});

test("serve a module whose default export is a configured Server", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-server.ts"), "--listen", "127.0.0.1:0"]);
  await echoesThenStops(s, portFrom(s.addresses[0]!));
});

test("--max-connections, --idle-timeout and --proxy-protocol apply to every connection", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--max-connections", "1", "--idle-timeout", "300", "--proxy-protocol"]);
  const port = portFrom(s.addresses[0]!);
  const a = await connect(port);
  a.write("PROXY TCP4 192.0.2.5 192.0.2.1 5555 80\r\naddr\n");
  const expected = '["192.0.2.5",5555]\n';
  assert.equal(await a.readText(expected.length), expected);
  const b = await connect(port);
  assert.equal((await b.readToEnd()).length, 0, "over --max-connections: closed at accept");
  const start = Date.now();
  await a.readToEnd(5000);
  assert.ok(Date.now() - start >= 250, "closed by --idle-timeout");
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("a module whose own code closes its only server: the command says so and exits 0", { timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0"]);
  const c = await connect(portFrom(s.addresses[0]!));
  c.write("close-server\n");
  await c.readToEnd();
  assert.equal(await s.exited, 0);
  assert.match(s.out(), /\npants-ts: every server has closed; nothing left to serve, exiting\n$/);
});

test("a module path that is no file, or a directory: one line naming it, exit 2 (Node's message named the command's own cli.js as the importer)", (t) => {
  const dir = tempDir(t);
  for (const [path, message] of [
    [join(dir, "missing.mjs"), /^pants-ts: serve \S*missing\.mjs: no such file \(\S*missing\.mjs\)/],
    [dir, /^pants-ts: serve \S+: a directory; give the module file in it/],
  ] as const) {
    for (const extra of [[], ["--workers", "2"]]) {
      const r = run(["serve", path, "--listen", "127.0.0.1:0", ...extra]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /cli\.js/);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  }
});

test("a module that throws null while it loads: one line and exit 1, not a crash of the command", () => {
  const r = run(["serve", fixture("cli-throws-null.ts"), "--listen", "127.0.0.1:0"]);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr.trim(), "pants-ts: null");
});

test("a module whose top-level await nothing will settle: the command says it never finished loading (exit 13, Node's code), rather than ending without a word", () => {
  const r = run(["serve", fixture("cli-never-loads.ts"), "--listen", "127.0.0.1:0"]);
  assert.equal(r.status, 13, r.stderr);
  assert.match(r.stderr, /^pants-ts: \S*cli-never-loads\.ts never finished loading: its top-level await waits for something nothing is left to settle\n$/);
});

test("an address in use: one line naming it and the likely cause, no stack, exit 1 (in one process, and from a worker)", { timeout: 60_000 }, async (t) => {
  const port = await portInUse(t);
  // A connection class, and a module's own Server (its default onError would log the error first, with a stack).
  const runs: Array<[string, string[]]> = [["cli-echo.ts", []], ["cli-server.ts", []]];
  // Under --workers the workers share the primary's socket on node:net either way: once is enough.
  if (!sameOnEitherTransport) runs.push(["cli-echo.ts", ["--workers", "2"]], ["cli-server.ts", ["--workers", "2"]]);
  for (const [module, extra] of runs) {
    const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, "serve", fixture(module), "--listen", `127.0.0.1:${port}`, ...extra], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      child.stderr!.on("data", (d) => (stderr += d));
      child.once("exit", (status) => resolve({ status, stderr }));
    });
    const what = `serve ${module} ${extra.join(" ")}: ${r.stderr}`;
    assert.equal(r.status, 1, what);
    assert.match(r.stderr, new RegExp(`EADDRINUSE.*127\\.0\\.0\\.1:${port}.*another process listens there`), what);
    assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${what}`);
  }
});

test("--listen unix:8080 and unix:localhost:80 are socket files of those names (strings Server.listen would take for a port, a host:port)", { timeout: 30_000 }, async (t) => {
  const dir = tempDir(t);
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "unix:8080", "--listen", "unix:localhost:80"], 2, dir);
  assert.match(s.out(), /serving CliEcho on unix:\.\/8080 /, s.out());
  assert.match(s.out(), /serving CliEcho on unix:\.\/localhost:80 /, s.out());
  for (const name of ["8080", "localhost:80"]) {
    const client = await connect(join(dir, name));
    client.write("by name\n");
    assert.equal(await client.readText(8), "by name\n");
    client.destroy();
  }
});

test("--workers and a UNIX socket named like a number in the working directory (unix:8080, or its full path): one line and exit 1, not a crash of the primary (node:cluster's primary binds it by the name node:net reads as a port)", { timeout: 30_000 }, (t) => {
  const dir = tempDir(t);
  for (const listen of ["unix:8080", `unix:${join(dir, "8080")}`]) {
    const r = spawnSync(process.execPath, [bin, "serve", fixture("cli-echo.ts"), "--listen", listen, "--workers", "2"], { cwd: dir, encoding: "utf8", timeout: 20000 });
    assert.equal(r.status, 1, `--listen ${listen}: ${r.stderr}`);
    assert.match(r.stderr, /^pants-ts: a worker failed to start: .*8080.*reads as a port/, r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.equal(existsSync(join(dir, "8080")), false);
  }
});

test("a UNIX socket this user may not create: the hint is about the directory, not about ports below 1024 (one process and --workers)", { skip: process.platform !== "linux" && "Linux", timeout: 60_000 }, (t) => {
  // root may create a file anywhere: the command then runs as nobody, in a directory root owns.
  const root0 = process.getuid?.() === 0;
  const dir = tempDir(t);
  chmodSync(dir, root0 ? 0o755 : 0o555);
  const as = root0 ? { uid: 65534, gid: 65534 } : {};
  if (root0) {
    // nobody must be able to run the command from this checkout (a clone under /root may be closed to it).
    const probe = spawnSync(process.execPath, [bin, "--version"], { cwd: root, encoding: "utf8", timeout: 20000, ...as });
    if (probe.status !== 0) {
      // (Not even started, say a node binary in a directory only root may enter, as scripts/test-on-node.sh's.)
      const why = probe.error?.message ?? (probe.stderr ?? "").trim().split("\n")[0];
      t.skip(`nobody cannot run ${bin} here: ${why}`);
      return;
    }
  }
  const unprivileged = Number(readFileSync("/proc/sys/net/ipv4/ip_unprivileged_port_start", "utf8"));
  const unixHint = /\(this user may not create a file in that directory: /;
  // A path may end in ":digits" too: a worker's error is told by its port, not its message.
  const cases: Array<[string, RegExp]> = [[`unix:${join(dir, "app.sock")}`, unixHint], [`unix:${join(dir, "app:8080")}`, unixHint]];
  if (unprivileged > 80) cases.push(["127.0.0.1:80", /\(ports below 1024 need root or CAP_NET_BIND_SERVICE; /]);
  for (const [listen, hint] of cases) {
    for (const workers of ["1", "2"]) {
      const r = spawnSync(process.execPath, [bin, "serve", fixture("cli-echo.ts"), "--listen", listen, "--workers", workers], { cwd: root, encoding: "utf8", timeout: 20000, ...as });
      assert.equal(r.status, 1, `--listen ${listen} --workers ${workers}: ${r.stderr}`);
      assert.match(r.stderr, /EACCES/, r.stderr);
      assert.match(r.stderr, hint, `--listen ${listen} --workers ${workers}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  }
});

test("an IPv6 or UNIX address in use: the one line names it once, as for IPv4 (brackets; a Linux abstract name as @NAME, no NUL byte)", { timeout: 60_000 }, async (t) => {
  const net = await import("node:net");
  const held: Array<[string, string]> = [];
  const hold = async (listen: (s: import("node:net").Server) => void) => {
    const busy = net.createServer();
    t.after(() => busy.close());
    listen(busy);
    await new Promise((resolve) => busy.once("listening", resolve));
    return busy.address();
  };
  if (await hasIPv6()) {
    const { port } = (await hold((s) => s.listen(0, "::1"))) as import("node:net").AddressInfo;
    held.push([`[::1]:${port}`, `[::1]:${port}`]);
  }
  const path = join(tempDir(t), "busy.sock");
  await hold((s) => s.listen(path));
  held.push([`unix:${path}`, path]);
  if (process.platform === "linux") {
    const name = `pants-ts-busy-${process.pid}`;
    await hold((s) => s.listen(`\0${name}`));
    held.push([`unix:@${name}`, `@${name}`]);
  }
  for (const [listen, named] of held) {
    const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, "serve", fixture("cli-echo.ts"), "--listen", listen], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      child.stderr!.on("data", (d) => (stderr += d));
      child.once("exit", (status) => resolve({ status, stderr }));
    });
    assert.equal(r.status, 1, `--listen ${listen}: ${r.stderr}`);
    assert.equal(r.stderr, `pants-ts: listen EADDRINUSE: address already in use ${named} (another process listens there: stop it, or pick another address)\n`);
  }
});

test("--listen fd:N that is not open, or not a socket: one line naming the descriptor and why, exit 1 (on either transport; and with --workers, where it was a bare 'spawn EBADF')", () => {
  const cases: Array<[string, RegExp, string[]]> = [
    ["fd:999", /bad file descriptor|not open/, []],
    ["fd:0", /non-socket|not a socket/, []], // stdin: /dev/null ("ignore")
  ];
  // --workers hands sockets on the native transport only (node:net refuses it as usage).
  if (process.env.PANTS_TS_TRANSPORT !== "js") cases.push(["fd:999", /bad file descriptor fd 999 \(not open\)/, ["--workers", "2"]], ["fd:0", /non-socket fd 0 \(not a socket\)/, ["--workers", "2"]]);
  for (const [listen, why, extra] of cases) {
    const r = spawnSync(process.execPath, [bin, "serve", fixture("cli-echo.ts"), "--listen", listen, ...extra], { cwd: root, encoding: "utf8", timeout: 20000, stdio: ["ignore", "pipe", "pipe"] });
    assert.equal(r.status, 1, `--listen ${listen}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^pants-ts: listen E[A-Z]+: .*\\bfd ${listen.slice(3)}\\b`), listen);
    assert.match(r.stderr, why, listen);
    assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
  }
});

test("--max-per-peer limits the connections of one client address, for a connection class and for a module's Server", { timeout: 30_000 }, async (t) => {
  for (const module of ["cli-echo.ts", "cli-server.ts"]) {
    const s = await serve(t, [fixture(module), "--listen", "127.0.0.1:0", "--max-per-peer", "1"]);
    const port = portFrom(s.addresses[0]!);
    const a = await connect(port);
    a.write("hi\n");
    assert.equal(await a.readText(3), "hi\n");
    const b = await connect(port);
    assert.equal((await b.readToEnd()).length, 0, `${module}: a second from 127.0.0.1 is closed at accept`);
    const other = await connect(port, { localAddress: "127.0.0.2" });
    other.write("other\n");
    assert.equal(await other.readText(6), "other\n", `${module}: another address is served`);
    other.destroy();
    a.destroy();
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0);
  }
});

test("--peer-ipv6-prefix sets the network --max-per-peer counts an IPv6 client by, for a connection class and for a module's Server", { timeout: 30_000 }, async (t) => {
  const runs: Array<[string, string[]]> = [
    ["cli-echo.ts", ["--proxy-protocol", "--max-per-peer", "1"]],
    ["cli-proxy-server.ts", []], // its own proxyProtocol and maxConnectionsPerPeer: 1
  ];
  for (const [module, flags] of runs) {
    const s = await serve(t, [fixture(module), "--listen", "127.0.0.1:0", ...flags, "--peer-ipv6-prefix", "48"]);
    const port = portFrom(s.addresses[0]!);
    const from = async (source: string) => {
      const c = await connect(port);
      c.write(`PROXY TCP6 ${source} 2001:db8::1 5555 80\r\naddr\n`);
      return c;
    };
    const a = await from("2001:db8:0:1::7");
    const expected = '["2001:db8:0:1::7",5555,0,0]\n'; // an IPv6 4-tuple
    assert.equal(await a.readText(expected.length), expected, module);
    // Another /64 of the same /48: the same client under /48 (the default /64 would serve it).
    const b = await from("2001:db8:0:2::9");
    assert.equal((await b.readToEnd()).length, 0, `${module}: a second from 2001:db8::/48 is closed`);
    const other = await from("2001:db8:1::5");
    const otherExpected = '["2001:db8:1::5",5555,0,0]\n';
    assert.equal(await other.readText(otherExpected.length), otherExpected, `${module}: the next /48 is served`);
    other.destroy();
    a.destroy();
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0);
  }
});

test("--tls-cert/--tls-key serve TLS", { skip: !hasOpenssl() && "no openssl", timeout: 30_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--tls-cert", certs.server.cert, "--tls-key", certs.server.key]);
  assert.match(s.out(), /\(connect: openssl s_client -connect 127\.0\.0\.1:\d+\)/);
  const c = await connectTls(["127.0.0.1", portFrom(s.addresses[0]!)], { ca: certs.ca.certPem, servername: "localhost" });
  c.write("secure\n");
  assert.equal(await c.readText(7), "secure\n");
  c.destroy();
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--tls-reload: a renewed certificate serves new connections without a restart; a pair that does not match is said, and the old one kept (in one process, and in each worker)", { skip: !hasOpenssl() && "no openssl", timeout: 60_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const runs: string[][] = [[]];
  if (!sameOnEitherTransport) runs.push(["--workers", "2"]);
  for (const extra of runs) {
    const cert = join(certs.dir, `live${extra.length}.crt`);
    const key = join(certs.dir, `live${extra.length}.key`);
    writeFileSync(cert, certs.server.certPem);
    writeFileSync(key, certs.server.keyPem);
    const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-reload", "1", ...extra]);
    const port = portFrom(s.addresses[0]!);
    const servedAs = async (): Promise<string> => {
      const c = await connectTls(["127.0.0.1", port], { servername: "localhost" });
      const cn = String(c.tlsSocket.getPeerCertificate().subject.CN);
      c.destroy();
      return cn;
    };
    const visit = (session?: Buffer) => visitTls(t, port, { rejectUnauthorized: false }, session);
    const what = `${extra.join(" ")}: ${s.out()}`;
    assert.equal(await servedAs(), "localhost", what);
    const ticket = (await visit()).session;
    const before = await connectTls(["127.0.0.1", port], { servername: "localhost" });
    // The new certificate first, its key not yet: the pair does not load.
    writeFileSync(cert, certs.server2.certPem);
    await waitFor(() => /live\d\.crt changed but did not load \(.*mismatch.*\); still serving the certificate loaded before/.test(s.out()), 10_000, `the failure line; ${what}`);
    assert.equal(await servedAs(), "localhost", `the old certificate kept; ${what}`);
    writeFileSync(key, certs.server2.keyPem);
    // Each process (each worker) reloads on its own and says so.
    const processes = extra.length === 0 ? 1 : 2;
    await waitFor(() => (s.out().match(/reloaded the TLS certificate \S*live\d\.crt; new connections use it/g)?.length ?? 0) === processes, 10_000, `the reload lines; ${s.out()}`);
    for (let i = 0; i < 2 * processes; i++) assert.equal(await servedAs(), "localhost-rotated", s.out());
    // The same session ticket keys: a session from before the reload resumes after it (in each process).
    for (let i = 0; i < 2 * processes; i++) assert.equal((await visit(ticket)).reused, true, `a session from before the reload resumed; ${s.out()}`);
    // A connection made before the reload goes on.
    before.write("still here\n");
    assert.equal(await before.readText(11), "still here\n");
    before.destroy();
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0, what);
  }
});

test("--tls-reload: a combined PEM (--tls-cert alone) renewed in place reaches every --listen address", { skip: !hasOpenssl() && "no openssl", timeout: 30_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const pem = join(certs.dir, "combined.pem");
  writeFileSync(pem, Buffer.concat([certs.server.certPem, certs.server.keyPem]));
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--tls-cert", pem, "--tls-reload", "1"], 2);
  const servedAs = async (address: string): Promise<string> => {
    const c = await connectTls(["127.0.0.1", portFrom(address)], { servername: "localhost", rejectUnauthorized: false });
    const cn = String(c.tlsSocket.getPeerCertificate().subject.CN);
    c.destroy();
    return cn;
  };
  for (const address of s.addresses) assert.equal(await servedAs(address), "localhost", s.out());
  writeFileSync(pem, Buffer.concat([certs.server2.certPem, certs.server2.keyPem]));
  await waitFor(() => /reloaded the TLS certificate \S*combined\.pem; new connections use it/.test(s.out()), 10_000, `the reload line; ${s.out()}`);
  for (const address of s.addresses) assert.equal(await servedAs(address), "localhost-rotated", s.out());
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--tls-reload: a certificate renewed while the command starts (after it read the files, before it looked at them) is still reloaded", { skip: !hasOpenssl() && "no openssl", timeout: 30_000 }, async (t) => {
  const certs = makeCerts();
  t.after(() => certs.cleanup());
  const cert = join(certs.dir, "starting.crt");
  const key = join(certs.dir, "starting.key");
  writeFileSync(cert, certs.server.certPem);
  writeFileSync(key, certs.server.keyPem);
  const env = { CLI_TLS_CERT: cert, CLI_TLS_KEY: key, CLI_RENEW_CERT: certs.server2.cert, CLI_RENEW_KEY: certs.server2.key };
  const s = await serve(t, [fixture("cli-renews-on-listen.ts"), "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-reload", "1"], 1, root, env);
  await waitFor(() => /reloaded the TLS certificate \S*starting\.crt/.test(s.out()), 5000, `the reload line; ${s.out()}`);
  const c = await connectTls(["127.0.0.1", portFrom(s.addresses[0]!)], { servername: "localhost" });
  assert.equal(String(c.tlsSocket.getPeerCertificate().subject.CN), "localhost-rotated");
  c.destroy();
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("--listen PORT (every interface, IPv6 too) and --listen [::1]:PORT serve as the banner says", { skip: !(await hasIPv6()) && "no IPv6", timeout: 30_000 }, async (t) => {
  const s = await serve(t, [fixture("cli-echo.ts"), "--listen", "0", "--listen", "[::1]:0"], 2);
  const any = /serving CliEcho on 0\.0\.0\.0:(\d+) and \[::\]:(\d+)/.exec(s.out());
  const loop6 = /serving CliEcho on \[::1\]:(\d+) \(connect: nc ::1 \d+\)/.exec(s.out());
  assert.ok(any && loop6, s.out());
  for (const [host, port] of [["127.0.0.1", any[1]], ["::1", any[2]], ["::1", loop6[1]]] as const) {
    const c = await connect(Number(port), { host });
    c.write(`to ${host}\n`);
    assert.equal(await c.readText(4 + host.length), `to ${host}\n`);
    c.destroy();
  }
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0);
});

test("serve notes a server other hosts can reach without --idle-timeout or --max-connections; none on loopback or with both; in a cluster, once", { timeout: 60_000, skip: sameOnEitherTransport }, async (t) => {
  const note = /^pants-ts: note: (.*)$/m;
  const bare = await serve(t, [fixture("cli-echo.ts"), "--listen", "0.0.0.0:0"]);
  await waitFor(() => note.test(bare.out()), 5000, `the note; output: ${bare.out()}`);
  assert.match(bare.out(), /no --idle-timeout: .*; no --max-connections: .*SECURITY\.md/);
  const half = await serve(t, [fixture("cli-echo.ts"), "--listen", "0.0.0.0:0", "--idle-timeout", "60000"]);
  await waitFor(() => note.test(half.out()), 5000, `the note; output: ${half.out()}`);
  assert.doesNotMatch(half.out(), /no --idle-timeout/);
  assert.match(half.out(), /no --max-connections/);
  const workers = await serve(t, [fixture("cli-echo.ts"), "--listen", "0.0.0.0:0", "--workers", "2"]);
  await waitFor(() => note.test(workers.out()), 10_000, `the note; output: ${workers.out()}`);
  const quiet: Served[] = [
    await serve(t, [fixture("cli-echo.ts"), "--listen", "127.0.0.1:0"]),
    await serve(t, [fixture("cli-echo.ts"), "--listen", "0.0.0.0:0", "--idle-timeout", "60000", "--max-connections", "1000"]),
  ];
  // What the quiet ones printed is whole once they answer a client (the note follows the banner at once).
  for (const s of quiet) await echoesThenStops(s, portFrom(s.addresses[0]!));
  await echoesThenStops(workers, portFrom(workers.addresses[0]!));
  for (const s of quiet) assert.doesNotMatch(s.out(), note, s.out());
  assert.equal(workers.out().match(/pants-ts: note:/g)?.length, 1, workers.out());
});

test("--help says which flags a configured Server takes (the usage error for --idle-timeout sends the reader to --help, which did not say)", () => {
  const r = run(["--help"]);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /For a configured Server, --max-connections, --max-per-peer and\n--peer-ipv6-prefix replace its own settings/);
  assert.match(r.stdout, /--idle-timeout, --proxy-protocol and --reuse-port are usage errors/);
});
