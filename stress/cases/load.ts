/**
 * Load: many concurrent connections, and connection churn, with every reply
 * checked byte for byte and the server's descriptors and heap back to their
 * baseline afterwards.
 */
import { readFileSync } from "node:fs";
import type { CaseContext, CaseSpec } from "../lib/case.js";
import type { Health, LoadReport } from "../lib/protocol.js";
import { LoadProcess, WANT_NOFILE } from "../lib/proc.js";
import { mib } from "../lib/util.js";

/** The hard descriptor limit children can raise themselves to. */
function hardNofile(): number {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "latin1"));
    if (m === null) return 1024;
    return m[2] === "unlimited" ? WANT_NOFILE : Math.min(WANT_NOFILE, Number(m[2]));
  } catch {
    return 1024;
  }
}

/** Connections for the concurrent case: the target, unless the descriptor limit forbids it. */
function concurrentPlan(quick: boolean): { conns: number; rounds: number; target: number; nofile: number } {
  const target = quick ? 2000 : 10_000;
  const nofile = hardNofile();
  // Each side needs one descriptor per connection, plus Node's own (~30) and some slack.
  return { conns: Math.min(target, nofile - 200), rounds: quick ? 3 : 10, target, nofile };
}

export const loadCases: CaseSpec[] = [
  {
    name: "load-concurrent",
    group: "load",
    quick: true,
    what: ({ quick }) => {
      const p = concurrentPlan(quick);
      return (
        `${p.conns} concurrent connections from a separate Node load process (ulimit -n ${p.nofile} for it and the server)` +
        `${p.conns < p.target ? ` — ${p.target} wanted, capped by the hard descriptor limit` : ""}; ` +
        `all open at once, then ${p.rounds} line round trips on each, every reply checked byte for byte; then all closed`
      );
    },
    server: () => ({ scenario: "echo", config: { backlog: 4096 } }),
    checkHeap: true,
    timeoutMs: ({ quick }) => (quick ? 60_000 : 180_000),
    async run(ctx) {
      const p = concurrentPlan(ctx.quick);
      const load = new LoadProcess({
        mode: "concurrent",
        port: ctx.server.port,
        conns: p.conns,
        rounds: p.rounds,
        connectConcurrency: 500,
        timeoutMs: ctx.quick ? 50_000 : 160_000,
      });
      try {
        const holding = await load.next("holding", ctx.quick ? 55_000 : 170_000);
        const during = await ctx.server.health();
        load.release();
        const done = await load.next("done", 60_000);
        ctx.check("every connection established", holding.connected === p.conns && holding.connectFailed === 0, `${holding.connected}/${p.conns}, ${holding.connectFailed} failed${holding.samples.length > 0 ? `: ${holding.samples.join(" | ")}` : ""}`);
        ctx.check("every round trip answered, byte for byte", holding.roundTrips === p.conns * p.rounds && holding.mismatches === 0 && holding.broken === 0, `${holding.roundTrips}/${p.conns * p.rounds} ok, ${holding.mismatches} mismatches, ${holding.broken} broken`);
        // The canary's connection is open too.
        ctx.check("server held them all at once", during.open >= p.conns, `${during.open} open, ${during.fds} descriptors`);
        ctx.check("load side closed cleanly", done.mismatches === 0 && done.broken === 0, `${done.mismatches} mismatches, ${done.broken} broken`);
        ctx.note(
          `${holding.connected}/${p.conns} connected, ${holding.roundTrips} round trips byte-exact in ${(holding.elapsedMs / 1000).toFixed(1)} s; ` +
            `server at peak: ${during.open} open, ${during.fds} fds, RSS ${mib(during.memory.rss)}`,
        );
      } finally {
        await load.stop();
      }
    },
  },
  {
    name: "load-churn",
    group: "load",
    quick: true,
    what: ({ quick }) =>
      `1000 connections opened and closed per second for ${quick ? 3 : 30} s (each: connect, one round trip checked byte for byte, FIN); ` +
      `server descriptors and heap (after forced GC) compared before/after`,
    server: () => ({ scenario: "echo", config: { backlog: 4096 } }),
    checkHeap: true,
    timeoutMs: ({ quick }) => (quick ? 40_000 : 120_000),
    async run(ctx) {
      const { done, total, after } = await churn(ctx, ctx.quick ? 3 : 30);
      ctx.note(
        `${done.roundTrips}/${total} connections, each one round trip, in ${(done.elapsedMs / 1000).toFixed(1)} s ` +
          `(${Math.round(done.roundTrips / (done.elapsedMs / 1000))}/s); server accepted ${after.stats.accepted}`,
      );
    },
  },
  reusePortChurn("native"),
  reusePortChurn("js"),
];

/**
 * Two servers on one port with reusePort, under churn: on the native
 * transport, or on node:net (which sets it itself from Node 22.12 and 23.1,
 * and before listens on a socket the addon bound). Each skips where it
 * would need the addon and PANTS_TS_TRANSPORT=js turns it off.
 */
function reusePortChurn(transport: "native" | "js"): CaseSpec {
  // node:net sets SO_REUSEPORT itself from Node 22.12 and 23.1; before, on sockets the addon bound.
  const [major = 0, minor = 0] = process.versions.node.split(".").map(Number);
  const netSets = major >= 24 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
  const addonOff = process.env.PANTS_TS_TRANSPORT === "js";
  return {
    name: transport === "native" ? "load-churn-reuseport" : "load-churn-reuseport-net",
    group: "load",
    quick: true,
    skip: () => {
      if (!addonOff) return null;
      if (transport === "native") return "the native transport needs the native addon, which PANTS_TS_TRANSPORT=js turns off";
      return netSets ? null : `reusePort on node:net needs Node 22.12+ (this is ${process.version}) or the native addon, which PANTS_TS_TRANSPORT=js turns off`;
    },
    what: ({ quick }) =>
      `two servers on one port with reusePort (SO_REUSEPORT), ${transport === "native" ? "on the native transport" : netSets ? "on node:net, which sets it itself" : "on node:net listening on sockets the addon bound"}: ` +
      `1000 connections opened and closed per second for ${quick ? 3 : 20} s, each one round trip checked byte for byte; both servers take a share; descriptors and heap back`,
    server: () => ({ scenario: "echo", config: { backlog: 4096, reusePort: true, transport } }),
    checkHeap: true,
    timeoutMs: ({ quick }) => (quick ? 40_000 : 100_000),
    async run(ctx) {
      const { done, total, after } = await churn(ctx, ctx.quick ? 3 : 20);
      const a = after.app["mainAccepted"] ?? 0;
      const b = after.app["twinAccepted"] ?? 0;
      // The kernel hashes each connection's addresses: two servers that share the port both take some.
      ctx.check("both servers accepted a share", a > total / 10 && b > total / 10, `${a} / ${b}`);
      ctx.note(`${done.roundTrips}/${total} connections in ${(done.elapsedMs / 1000).toFixed(1)} s; accepted ${a} by one server, ${b} by its twin`);
    },
  };
}

/**
 * 1000 connections a second for `seconds` from the load process, each one
 * round trip checked; then waits for the server to have closed them.
 */
async function churn(ctx: CaseContext, seconds: number): Promise<{ done: LoadReport; total: number; after: Health }> {
  const rate = 1000;
  const load = new LoadProcess({ mode: "churn", port: ctx.server.port, rate, seconds, maxInflight: 3000, timeoutMs: seconds * 1000 + 30_000 });
  try {
    const done = await load.next("done", seconds * 1000 + 35_000);
    const total = rate * seconds;
    ctx.check(
      "every connection made its round trip",
      done.roundTrips === total && done.connectFailed === 0 && done.mismatches === 0 && done.broken === 0,
      `${done.roundTrips}/${total} ok, ${done.connectFailed} connect failures, ${done.mismatches} mismatches, ${done.broken} broken${done.samples.length > 0 ? `: ${done.samples.join(" | ")}` : ""}`,
    );
    const after = await ctx.server.waitFor((h) => h.open <= 1, 30_000);
    return { done, total, after };
  } finally {
    await load.stop();
  }
}
