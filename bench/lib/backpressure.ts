/**
 * The backpressure scenario: one client writes 1 GiB to a raw echo server
 * and never reads the echo, like a peer that stopped reading. A server that
 * stops reading while its writes are backed up holds a bounded amount; one
 * that keeps reading buffers everything it cannot send. Measured: the peak
 * growth of the server's RSS (VmRSS sampled every 50 ms), and where the bytes
 * went when the client could write no more (loadgen -m flood).
 */
import { parseResultLine, rssKiB, runToEnd } from "./proc.js";
import { HOST, failure, observedRun, resultCpu, sleep, withServer } from "./measure.js";
import type { Scenario } from "./measure.js";
import { NET_SIDES } from "./sides.js";

const MiB = 1024 * 1024;
const SAMPLE_MS = 50;

export const backpressure: Scenario = {
  name: "backpressure",
  title: "a client writes 1 GiB (--flood-mib) to a raw echo server and never reads: peak growth of the server's RSS",
  unit: "MiB RSS growth",
  lowerIsBetter: true,
  needs: ["loadgen"],
  sides: NET_SIDES,
  sidesNote:
    "accepted = bytes the server read before it stopped reading (sent - the client's send queue - the server's receive queue); " +
    "held = accepted bytes not yet handed back to the kernel (accepted - the server's send queue - the client's receive queue), i.e. in the server's memory; " +
    "stopped = 1 when the server stopped reading (the client could write nothing for the stall time), 0 when it took everything; closed = 1 when the server closed the connection",
  extras: [
    { key: "acceptedMiB", label: "accepted MiB", digits: 2 },
    { key: "heldMiB", label: "held MiB", digits: 2 },
    { key: "sentMiB", label: "sent MiB", digits: 1 },
    { key: "stopped", label: "stopped", digits: 0 },
    { key: "closed", label: "closed", digits: 0 },
    { key: "floodSecs", label: "writing s", digits: 2 },
    { key: "rssBaseMiB", label: "RSS base MiB", digits: 1 },
    { key: "rssPeakMiB", label: "RSS peak MiB", digits: 1 },
  ],
  client: (ctx) => `loadgen -m flood -n ${ctx.options.floodMiB * MiB} -T ${ctx.options.floodStall} (after a short ping-pong to warm the server up)`,
  measure: (side, ctx) =>
    withServer(side, "echo-raw", ctx, async (server) => {
      const target = ["-h", HOST, "-p", String(server.port)];
      // Warm the code paths with a short line ping-pong (small buffers: the baseline stays the server's idle footprint).
      const warm = await runToEnd([ctx.paths.loadgen, "-m", "pingpong", ...target, "-c", "1", "-d", "0.2", "-w", "0"], { cpu: ctx.placement.clientCpu, timeoutMs: 30_000 });
      if (warm.code !== 0) throw failure("the warm-up ping-pong", warm);
      await sleep(ctx.options.settle * 1000);
      const base = rssKiB(server.pid);
      if (base === null) throw new Error("cannot read the server's RSS");
      let peak = base;
      const sample = () => {
        const rss = rssKiB(server.pid);
        if (rss !== null && rss > peak) peak = rss;
      };
      const timer = setInterval(sample, SAMPLE_MS);
      const argv = [ctx.paths.loadgen, "-m", "flood", ...target, "-n", String(ctx.options.floodMiB * MiB), "-T", String(ctx.options.floodStall)];
      let run: Awaited<ReturnType<typeof observedRun>>;
      try {
        run = await observedRun(ctx, argv, server.pid, 660_000, resultCpu);
      } finally {
        clearInterval(timer);
      }
      sample();
      const { done, noise } = run;
      if (done.code !== 0) throw failure("loadgen -m flood", done);
      const result = parseResultLine(done.stdout);
      const field = (key: string) => (typeof result[key] === "number" ? result[key] : NaN);
      const extra: Record<string, number> = {
        sentMiB: field("sent") / MiB,
        stopped: field("stalled"),
        closed: field("closed"),
        floodSecs: field("flood_secs"),
        rssBaseMiB: base / 1024,
        rssPeakMiB: peak / 1024,
      };
      // Known only while the connection is open (not when the server closed it).
      if (typeof result["accepted"] === "number") extra["acceptedMiB"] = result["accepted"] / MiB;
      if (typeof result["held"] === "number") extra["heldMiB"] = result["held"] / MiB;
      return { value: (peak - base) / 1024, errors: 0, extra, ...noise };
    }),
};
